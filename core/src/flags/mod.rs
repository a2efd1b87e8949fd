//! Feature flags: deploy dark, release later, kill in seconds — the sans-IO core.
//!
//! Deploying code and releasing a feature are two decisions. The code ships with the feature
//! off; an operator then turns it on for a share of the fleet, widens it, or kills it, without
//! a redeploy. Flags are not part of a release, so a redeploy never resets them.
//!
//! ```text
//! operator (ota flag ...)        fleet server                         device (ota-agent)
//! -----------------------        ------------                         ------------------
//! set / kill / revive  ------->  FlagSet::apply(name, edit, by, now)
//!                                  -> FlagChange (audit: who, when, old -> new)
//!                                FlagSet::evaluate(device, filter?)
//!                                  -> DeviceFlags  --retained, QoS 1-->  DeviceFlags::from_cbor
//!                                     on ota/v1/flags/devices/{id}       FlagStore::offer
//!                                                                          -> FlagUpdate (file bytes)
//!                                                                        write file atomically
//!                                                                        FlagStore::commit
//! applications                                                           DeviceFlags::from_file
//! ```
//!
//! - [`FlagDefinition`]: a default, ordered [`Rule`]s (server filter + sticky percent), and a
//!   kill switch. Killed → off everywhere; otherwise the first rule that takes the device (its
//!   filter matches **and** the device is in its percent cohort) gives the value; else the
//!   default.
//! - [`cohort_point`]: the sticky cohort hash of (flag, device). A device is in a `p` cohort
//!   iff its point is below `p`, so widening 5 % → 20 % keeps the first 5 % and narrowing keeps
//!   a subset; different flags pick independent cohorts.
//! - [`FlagSet`]: the fleet's flags and its monotonic flag-state version; [`FlagSet::apply`]
//!   turns an operator's [`FlagEdit`] into a [`FlagChange`] audit record.
//! - [`DeviceFlags`]: the evaluated flags of one device, retained on [`topic`]
//!   (`ota/v1/flags/devices/{id}`), so an offline device gets the current flags on reconnect.
//! - [`FlagStore`]: the device's applier: stale and duplicate versions are ignored; a newer one
//!   yields the bytes of the flag file that applications read ([`DeviceFlags::to_file`]).
//!
//! The full description (model, evaluation order, key tables, the file format, and what the
//! server and agent shells do) is `docs/flags.md`.

mod definition;
mod device;
mod error;
mod file;
mod name;
mod set;

use alloc::format;
use alloc::string::String;

pub use definition::{Cause, Evaluation, FlagDefinition, Rule};
pub use device::{DeviceFlags, FlagStore, FlagUpdate, Ignored};
pub use error::FlagError;
pub use file::{FILE_FORMAT, FlagFileError};
pub use name::{FlagName, FlagNameError};
pub use set::{FlagChange, FlagChangeKind, FlagEdit, FlagSet};

use crate::wire::{DeviceId, TopicError};

/// Bounds on flags, so that every flag payload, record and file has a small maximum size.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct FlagLimits;

impl FlagLimits {
    /// Most flags in a fleet (and so in one device's [`DeviceFlags`]).
    pub const MAX_FLAGS: usize = 256;
    /// Most rules of one flag.
    pub const MAX_RULES: usize = 16;
    /// Longest rule filter expression, in bytes.
    pub const MAX_FILTER_BYTES: usize = 1024;
    /// Longest operator name in a [`FlagChange`], in bytes.
    pub const MAX_OPERATOR_BYTES: usize = 128;
    /// Largest [`DeviceFlags`] payload, in bytes (256 flags of 64-byte names need about 17 KiB).
    pub const MAX_DEVICE_FLAGS_BYTES: usize = 32 * 1024;
    /// Largest [`FlagDefinition`] record, in bytes (16 rules of 1 KiB filters need about 17 KiB).
    pub const MAX_DEFINITION_BYTES: usize = 32 * 1024;
    /// Largest [`FlagChange`] record, in bytes (two definitions).
    pub const MAX_CHANGE_BYTES: usize = 64 * 1024;
    /// Largest persisted [`FlagSet`], in bytes (256 definitions).
    pub const MAX_SET_BYTES: usize = 8 * 1024 * 1024;
    /// Largest device flag file, in bytes.
    pub const MAX_FILE_BYTES: usize = 32 * 1024;
}

/// The domain of flag cohort salts: the rollout cohort hash is salted with `flag:{name}`. The
/// fleet server's rollout ids are decimal numbers, so a flag salt never equals a rollout id and
/// flag cohorts are independent of rollout waves.
const SALT_PREFIX: &str = "flag:";

/// The sticky cohort point of `device` for flag `flag`, in `[0, 2^64)`.
///
/// It is the rollout planner's cohort hash ([`crate::rollout::cohort_point`]) salted with
/// `flag:{name}`:
///
/// ```text
/// point = u64be(first 8 bytes of SHA-256("ota/rollout-cohort/v1" 0x00
///                || u64be(len("flag:" name)) || "flag:" name || device id))
/// ```
///
/// A device is in a cohort of share `p` iff `point / 2^64 < p`
/// ([`crate::rollout::in_share`]). The point depends only on the flag name and the device id,
/// so cohorts are sticky (widening keeps every device that was on, narrowing keeps a subset)
/// and independent across flags. `core/tests/flags.rs` pins golden values: changing the hash
/// would reshuffle every percent rollout of every fleet.
pub fn cohort_point(flag: &FlagName, device: &DeviceId) -> u64 {
    let salt = format!("{SALT_PREFIX}{flag}");
    crate::rollout::cohort_point(&salt, device.as_str())
}

/// The retained topic of `device`'s evaluated flags in the default namespace:
/// `ota/v1/flags/devices/{id}` (server to device, retained, QoS 1, payload [`DeviceFlags`]).
/// The device subscribes to it. [`Topics::flags`](crate::wire::Topics::flags) for any prefix.
pub fn topic(device: &DeviceId) -> String {
    crate::wire::Topics::default().flags(device)
}

/// The wildcard over every device's flags topic in the default namespace:
/// `ota/v1/flags/devices/+` (for tools that watch what was published; the server itself does
/// not need to subscribe).
pub fn fleet_filter() -> String {
    crate::wire::Topics::default().flags_filter()
}

/// Whether publications on the flags topic are retained: yes, so that a device that was
/// offline gets its current flags when it (re)subscribes.
pub const RETAINED: bool = true;

/// [`Topics::parse_flags_topic`](crate::wire::Topics::parse_flags_topic) in the default
/// namespace.
pub fn parse_topic(topic: &str) -> Result<DeviceId, TopicError> {
    crate::wire::Topics::default().parse_flags_topic(topic)
}

//! One device's evaluated flags (the retained payload) and the device-side applier.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use minicbor::{Decode, Encode};

use super::{FlagLimits, FlagName};
use crate::wire::codec::bound;
use crate::wire::{DeviceId, WireError, WireMessage};

/// The evaluated flags of one device, published by the server on
/// [`topic`](super::topic) (`ota/v1/flags/devices/{id}`), retained, QoS 1. Also what the agent
/// writes to the device's flag file ([`to_file`](Self::to_file)).
///
/// A flag that is not in `flags` is off for the device ([`is_enabled`](Self::is_enabled)):
/// code deployed before its flag exists stays dark.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct DeviceFlags {
    /// Protocol version ([`PROTOCOL_VERSION`](crate::wire::PROTOCOL_VERSION)).
    #[n(0)]
    pub v: u16,
    /// The device these flags are for (must equal the topic's id and the device's own).
    #[n(1)]
    pub device_id: String,
    /// The fleet flag-state version they were evaluated at; monotonic. A device ignores
    /// flags whose version is not above the one it applied.
    #[n(2)]
    pub version: u64,
    /// Every flag of the fleet, on or off, by name. At most [`FlagLimits::MAX_FLAGS`]; names
    /// are unique (a CBOR map with a repeated name is malformed).
    #[cbor(n(3), default, with = "flag_map")]
    pub flags: BTreeMap<FlagName, bool>,
}

impl DeviceFlags {
    /// Whether flag `name` is on (an unknown flag is off).
    pub fn is_enabled(&self, name: &str) -> bool {
        self.flags.get(name).copied().unwrap_or(false)
    }

    /// The value of flag `name`, `None` if the device has no such flag.
    pub fn get(&self, name: &str) -> Option<bool> {
        self.flags.get(name).copied()
    }
}

impl WireMessage for DeviceFlags {
    const NAME: &'static str = "device flags";
    const MAX_BYTES: usize = FlagLimits::MAX_DEVICE_FLAGS_BYTES;

    fn check_limits(&self) -> Result<(), WireError> {
        DeviceId::check(&self.device_id)?;
        bound("flags", self.flags.len(), FlagLimits::MAX_FLAGS)
    }
}

/// The CBOR of a flag map: a map of name → bool that refuses repeated names (a repeated name
/// would make the payload's meaning depend on the decoder).
mod flag_map {
    use alloc::collections::BTreeMap;

    use minicbor::decode::{self, Decoder};
    use minicbor::encode::{self, Encoder, Write};

    use crate::flags::FlagName;

    pub(super) fn encode<Ctx, W: Write>(
        v: &BTreeMap<FlagName, bool>,
        e: &mut Encoder<W>,
        ctx: &mut Ctx,
    ) -> Result<(), encode::Error<W::Error>> {
        e.encode_with(v, ctx)?;
        Ok(())
    }

    pub(super) fn decode<Ctx>(
        d: &mut Decoder<'_>,
        ctx: &mut Ctx,
    ) -> Result<BTreeMap<FlagName, bool>, decode::Error> {
        let p = d.position();
        let mut map = BTreeMap::new();
        for entry in d.map_iter_with::<Ctx, FlagName, bool>(ctx)? {
            let (name, on) = entry?;
            if map.insert(name, on).is_some() {
                return Err(decode::Error::message("a flag name is repeated").at(p));
            }
        }
        Ok(map)
    }
}

/// Why the device's [`FlagStore`] ignored incoming flags. Ignoring is normal (QoS 1
/// duplicates, the retained copy redelivered on every reconnect), not an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Ignored {
    /// The version equals the applied one: a duplicate or the retained redelivery.
    #[error("flags version {version} is already applied")]
    Duplicate {
        /// The version.
        version: u64,
    },
    /// The version is below the applied one: a late or replayed message.
    #[error("flags version {incoming} is older than the applied {applied}")]
    Stale {
        /// The applied version.
        applied: u64,
        /// The incoming version.
        incoming: u64,
    },
    /// The flags are for another device.
    #[error("flags for device {0:?} are not for this device")]
    OtherDevice(String),
}

/// The device's applier of [`DeviceFlags`]: sans-IO, the agent does the file I/O.
///
/// ```text
/// agent start:    FlagStore::from_file(id, bytes of the flag file)   (or FlagStore::new(id))
/// on a payload:   DeviceFlags::from_cbor(payload)?     refused -> log, drop
///                 store.offer(flags)                    Ignored -> drop (normal)
///                   -> FlagUpdate                       write update.file() atomically
///                 store.commit(update)                  only after the write succeeded
/// ```
///
/// [`offer`](Self::offer) does not change the store, so a failed write leaves it as it was and
/// the next delivery (the retained copy, on reconnect) retries. Versions only grow:
/// duplicates, replays and late messages are ignored, and so is an update committed after a
/// newer one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagStore {
    device_id: DeviceId,
    current: Option<DeviceFlags>,
}

/// Flags the [`FlagStore`] accepted: the flags, and the flag file to write before
/// [`FlagStore::commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagUpdate {
    flags: DeviceFlags,
    file: String,
    changed: Vec<(FlagName, Option<bool>, Option<bool>)>,
}

impl FlagUpdate {
    /// The accepted flags.
    pub fn flags(&self) -> &DeviceFlags {
        &self.flags
    }

    /// The bytes of the flag file (see [`DeviceFlags::to_file`]).
    pub fn file(&self) -> &[u8] {
        self.file.as_bytes()
    }

    /// The flags whose value changed, as (name, before, after) in name order; `None` is a flag
    /// the device did not have (before) or no longer has (after). For the agent's log.
    pub fn changed(&self) -> &[(FlagName, Option<bool>, Option<bool>)] {
        &self.changed
    }
}

impl FlagStore {
    /// A store with no flags applied (version 0: the first flags from the server apply).
    pub fn new(device_id: DeviceId) -> Self {
        FlagStore {
            device_id,
            current: None,
        }
    }

    /// A store restored from the flag file the agent wrote earlier. A file for another device
    /// is refused; the agent then starts with [`FlagStore::new`] and the retained flags.
    pub fn from_file(device_id: DeviceId, file: &[u8]) -> Result<Self, super::FlagFileError> {
        let flags = DeviceFlags::from_file(file)?;
        if flags.device_id != device_id.as_str() {
            return Err(super::FlagFileError::OtherDevice);
        }
        Ok(FlagStore {
            device_id,
            current: Some(flags),
        })
    }

    /// The device's id.
    pub fn device_id(&self) -> &DeviceId {
        &self.device_id
    }

    /// The applied flags, if any.
    pub fn current(&self) -> Option<&DeviceFlags> {
        self.current.as_ref()
    }

    /// The applied version (0 if none).
    pub fn version(&self) -> u64 {
        self.current.as_ref().map_or(0, |f| f.version)
    }

    /// Decides on incoming flags: a newer version for this device gives the [`FlagUpdate`] to
    /// write; anything else is [`Ignored`]. Does not change the store.
    pub fn offer(&self, incoming: DeviceFlags) -> Result<FlagUpdate, Ignored> {
        if incoming.device_id != self.device_id.as_str() {
            return Err(Ignored::OtherDevice(incoming.device_id));
        }
        let applied = self.version();
        if self.current.is_some() && incoming.version == applied {
            return Err(Ignored::Duplicate { version: applied });
        }
        if incoming.version < applied {
            return Err(Ignored::Stale {
                applied,
                incoming: incoming.version,
            });
        }
        let empty = BTreeMap::new();
        let before = self.current.as_ref().map_or(&empty, |f| &f.flags);
        let changed = diff(before, &incoming.flags);
        Ok(FlagUpdate {
            file: incoming.to_file(),
            flags: incoming,
            changed,
        })
    }

    /// Records that `update`'s file was written. Returns whether the store moved; an update
    /// that is no longer newer (another one was committed first) is dropped.
    pub fn commit(&mut self, update: FlagUpdate) -> bool {
        let newer = self.current.is_none() || update.flags.version > self.version();
        if newer && update.flags.device_id == self.device_id.as_str() {
            self.current = Some(update.flags);
            true
        } else {
            false
        }
    }
}

/// The flags whose value differs between `before` and `after`.
fn diff(
    before: &BTreeMap<FlagName, bool>,
    after: &BTreeMap<FlagName, bool>,
) -> Vec<(FlagName, Option<bool>, Option<bool>)> {
    let mut names: Vec<&FlagName> = before.keys().chain(after.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter_map(|name| {
            let (b, a) = (before.get(name).copied(), after.get(name).copied());
            (b != a).then(|| (name.clone(), b, a))
        })
        .collect()
}

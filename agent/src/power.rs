//! Battery and charger state from the Linux power-supply sysfs tree.
//!
//! sysinfo has no battery API, so the agent reads `/sys/class/power_supply` itself (the path is
//! configurable, for tests and unusual boards). Each entry is a supply with attribute files:
//!
//! | file | values used |
//! |---|---|
//! | `type` | `Battery`, `Mains`, `USB`, `USB_*`, `Wireless`, `UPS`… |
//! | `online` | `1` / `0` (chargers) |
//! | `present` | `0` hides a battery slot without a battery |
//! | `capacity` | 0–100 (batteries) |
//! | `status` | `Charging`, `Discharging`, `Full`, `Not charging`, `Unknown` (batteries) |
//!
//! The reading is conservative:
//!
//! - `battery_percent` is the lowest capacity of the present batteries (`None`: no battery,
//!   the device is mains powered);
//! - `charging` is true when a battery reports `Charging` or `Full`;
//! - `mains_online` is true when any non-battery supply is online, or when there is no battery
//!   at all.
//!
//! A supply whose files are missing or garbage is ignored (with a log line); only a tree that
//! cannot be listed at all is an error. An ignored *battery* still counts as a battery: the
//! device is not assumed mains powered because its battery is unreadable. Nothing here panics on what the kernel (or a test)
//! writes.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The default location of the power-supply tree.
pub const DEFAULT_POWER_SUPPLY_PATH: &str = "/sys/class/power_supply";

/// The attribute files are tiny; anything longer is garbage.
const MAX_ATTR: u64 = 256;

/// The power state the core machine's power gate looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PowerReading {
    /// The lowest charge of the present batteries, in percent; `None` when there is no battery.
    pub battery_percent: Option<u8>,
    /// A battery reports `Charging` or `Full`.
    pub charging: bool,
    /// External power is present (a non-battery supply online, or no battery at all).
    pub mains_online: bool,
}

/// Why the power state could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PowerError {
    /// The power-supply directory cannot be listed.
    #[error("cannot read the power supplies in {path}: {source}")]
    Unreadable {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Reads a power-supply sysfs tree (see the [module documentation](self)).
#[derive(Debug, Clone)]
pub struct PowerSupplies {
    root: PathBuf,
}

impl Default for PowerSupplies {
    fn default() -> Self {
        Self::new(DEFAULT_POWER_SUPPLY_PATH)
    }
}

/// A supply's attribute, trimmed; `None` when missing, too long or not UTF-8.
fn attr(supply: &Path, name: &str) -> Option<String> {
    let path = supply.join(name);
    let meta = fs::metadata(&path).ok()?;
    // sysfs reports 4096 for every attribute; regular files (tests) report their size.
    if meta.len() > 4096 {
        return None;
    }
    let bytes = fs::read(&path).ok()?;
    let bytes = bytes.get(..bytes.len().min(MAX_ATTR as usize))?;
    Some(std::str::from_utf8(bytes).ok()?.trim().to_owned())
}

/// A battery as read, or why it is ignored.
fn battery(supply: &Path) -> Result<Option<(u8, bool)>, &'static str> {
    if attr(supply, "present").as_deref() == Some("0") {
        return Ok(None);
    }
    let capacity = attr(supply, "capacity").ok_or("no readable capacity")?;
    let capacity: u8 = capacity.parse().map_err(|_| "capacity is not a number")?;
    if capacity > 100 {
        return Err("capacity above 100");
    }
    let status = attr(supply, "status").unwrap_or_default();
    let charging = matches!(status.as_str(), "Charging" | "Full");
    Ok(Some((capacity, charging)))
}

impl PowerSupplies {
    /// A reader of the tree at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        PowerSupplies { root: root.into() }
    }

    /// The tree's location.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads every supply once.
    pub fn read(&self) -> Result<PowerReading, PowerError> {
        let entries = fs::read_dir(&self.root).map_err(|source| PowerError::Unreadable {
            path: self.root.clone(),
            source,
        })?;
        let mut supplies: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        supplies.sort();

        let mut battery_percent: Option<u8> = None;
        let mut charging = false;
        let mut external_online = false;
        let mut any_battery = false;
        for supply in &supplies {
            let Some(kind) = attr(supply, "type") else {
                tracing::debug!(supply = %supply.display(), "power supply without a readable type: ignored");
                continue;
            };
            if kind == "Battery" {
                match battery(supply) {
                    Ok(Some((capacity, is_charging))) => {
                        any_battery = true;
                        battery_percent =
                            Some(battery_percent.map_or(capacity, |b| b.min(capacity)));
                        charging |= is_charging;
                    }
                    // An empty battery slot is no battery.
                    Ok(None) => {}
                    Err(why) => {
                        any_battery = true;
                        tracing::warn!(supply = %supply.display(), why, "battery ignored");
                    }
                }
            } else if attr(supply, "online").as_deref() == Some("1") {
                external_online = true;
            }
        }
        Ok(PowerReading {
            battery_percent,
            charging,
            mains_online: external_online || !any_battery,
        })
    }
}

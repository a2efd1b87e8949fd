//! A simulated battery and charger: a fake Linux power-supply sysfs tree the agent reads
//! (its `power.power_supply_path`), changed by the demo over time.
//!
//! ```text
//! <dir>/BAT0/type      Battery
//! <dir>/BAT0/capacity  0..100
//! <dir>/BAT0/status    Charging | Discharging
//! <dir>/AC/type        Mains
//! <dir>/AC/online      1 | 0
//! ```

use std::path::{Path, PathBuf};

use crate::LabError;

/// The fake power-supply tree of one device.
#[derive(Debug, Clone)]
pub struct Battery {
    dir: PathBuf,
}

impl Battery {
    /// Creates the tree under `dir` with the battery at `percent`, the charger plugged in or not.
    pub fn create(dir: &Path, percent: u8, plugged: bool) -> Result<Self, LabError> {
        let battery = Battery {
            dir: dir.to_path_buf(),
        };
        battery.write("BAT0/type", "Battery")?;
        battery.write("AC/type", "Mains")?;
        battery.set(percent, plugged)?;
        Ok(battery)
    }

    /// The tree's root (the agent's `power_supply_path`).
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Sets the charge and whether the charger is plugged in (then the battery charges).
    pub fn set(&self, percent: u8, plugged: bool) -> Result<(), LabError> {
        self.write("BAT0/capacity", &percent.min(100).to_string())?;
        self.write(
            "BAT0/status",
            if plugged { "Charging" } else { "Discharging" },
        )?;
        self.write("AC/online", if plugged { "1" } else { "0" })
    }

    /// Writes one attribute the way the kernel shows it (value and a newline), replacing the
    /// file atomically so the agent never reads half a value.
    fn write(&self, attr: &str, value: &str) -> Result<(), LabError> {
        let path = self.dir.join(attr);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| LabError::io("create", parent, e))?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("{value}\n")).map_err(|e| LabError::io("write", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| LabError::io("rename", &path, e))
    }
}

//! What the device reports about itself: OS, kernel, architecture, host name, memory, and the
//! free space of the data directory's file system (also the input of the disk-space gate).
//!
//! OS, kernel, host name and memory come from sysinfo; a field it cannot read is `None` rather
//! than an error (inventory is informative). Free space is read with `statvfs` on the data
//! directory itself, so it is exact whatever the mount layout (bind mounts, overlays, tmpfs),
//! where matching sysinfo's disk list by mount point is not.

use std::io;
use std::path::{Path, PathBuf};

use sysinfo::{MemoryRefreshKind, RefreshKind, System};

/// A snapshot of the device's identity and resources.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Inventory {
    /// The OS name (e.g. "Debian GNU/Linux").
    pub os_name: Option<String>,
    /// The OS version (e.g. "12").
    pub os_version: Option<String>,
    /// The kernel version (e.g. "6.1.0-18-arm64").
    pub kernel_version: Option<String>,
    /// The CPU architecture (e.g. "aarch64").
    pub arch: String,
    /// The host name.
    pub hostname: Option<String>,
    /// Total RAM in bytes (0 when unknown).
    pub memory_total_bytes: u64,
    /// Free space available to the agent on the data directory's file system, in bytes.
    pub data_free_bytes: Option<u64>,
    /// Total size of the data directory's file system, in bytes.
    pub data_total_bytes: Option<u64>,
}

/// Why the disk space could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InventoryError {
    /// `statvfs` on the path failed (it does not exist, or no permission).
    #[error("cannot read the file system of {path}: {source}")]
    Statvfs {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Space of a file system, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpace {
    /// Bytes available to an unprivileged writer.
    pub available: u64,
    /// The file system's size.
    pub total: u64,
}

/// The space of the file system holding `path` (which must exist).
pub fn disk_space(path: &Path) -> Result<DiskSpace, InventoryError> {
    let st = rustix::fs::statvfs(path).map_err(|e| InventoryError::Statvfs {
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    let unit = if st.f_frsize > 0 {
        st.f_frsize
    } else {
        st.f_bsize
    };
    Ok(DiskSpace {
        available: st.f_bavail.saturating_mul(unit),
        total: st.f_blocks.saturating_mul(unit),
    })
}

/// Whether `needed` bytes fit on the file system holding `path` (the `CheckDisk` action).
pub fn has_free_space(path: &Path, needed: u64) -> Result<bool, InventoryError> {
    Ok(disk_space(path)?.available >= needed)
}

impl Inventory {
    /// Collects the inventory; `data_dir` names the file system whose space is reported.
    pub fn collect(data_dir: &Path) -> Self {
        let memory_total_bytes = System::new_with_specifics(
            RefreshKind::nothing().with_memory(MemoryRefreshKind::nothing().with_ram()),
        )
        .map(|s| s.total_memory())
        .unwrap_or(0);
        let space = disk_space(data_dir).ok();
        Inventory {
            os_name: System::name().ok(),
            os_version: System::os_version().ok(),
            kernel_version: System::kernel_version().ok(),
            arch: System::cpu_arch(),
            hostname: System::host_name().ok(),
            memory_total_bytes,
            data_free_bytes: space.map(|s| s.available),
            data_total_bytes: space.map(|s| s.total),
        }
    }
}

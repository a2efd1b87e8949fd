//! The `ab` installer: two root-filesystem slots (block devices, partitions or image files)
//! and a [`Bootloader`].
//!
//! An install writes the slot the core machine names (always the one not booted):
//!
//! 1. the verified artifact is streamed from the cache into the slot through one fixed
//!    [`SLOT_CHUNK`] buffer, hashed as it is written (memory stays flat for any slot size);
//!    the slot must be at least as large as the artifact (its size is its length: a block
//!    device's size or an image file's length) and is never created or truncated;
//! 2. the slot is fsynced, then read back (`size` bytes) and hashed again: both hashes must be
//!    the signed digest, or the install fails and the bootloader is not touched;
//! 3. the bootloader is told to try the slot once.
//!
//! The shell then persists the journal (`Rebooting`) and runs [`AbInstaller::reboot`]. After
//! the reboot [`AbInstaller::booted_slot`] reads which slot the kernel was booted from (the
//! `ota.slot=` or `rauc.slot=` parameter of the kernel command line) and the machine decides.
//!
//! The slot is written with `std::fs`, not through the agent's
//! [`Storage`](crate::storage::Storage): it is not a file of the agent's data directory, and a
//! power cut while writing it is harmless by construction (the bootloader still boots the old
//! slot; the journal still says `Installing`, so the write is redone).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ota_core::digest::{Digest, Hasher};
use ota_core::update::Slot;

use super::{InstallError, InstallRequest, Installed, io_err, run_checked};
use crate::bootloader::Bootloader;
use crate::process::CommandSpec;

/// The size of the one buffer a slot is written and read back through.
pub const SLOT_CHUNK: usize = 1024 * 1024;

/// Kernel command line parameters that name the booted slot, in the order they are looked for.
pub const SLOT_PARAMETERS: [&str; 2] = ["ota.slot=", "rauc.slot="];

/// Installs into A/B slots (see the [module documentation](self)).
#[derive(Debug, Clone)]
pub struct AbInstaller {
    slot_a: PathBuf,
    slot_b: PathBuf,
    bootloader: Bootloader,
    reboot: CommandSpec,
    cmdline: PathBuf,
    timeout: Option<Duration>,
}

impl AbInstaller {
    /// Slots `a` and `b`, `bootloader`, and the `reboot` command; the booted slot is read from
    /// `/proc/cmdline`.
    pub fn new(
        a: impl Into<PathBuf>,
        b: impl Into<PathBuf>,
        bootloader: Bootloader,
        reboot: CommandSpec,
    ) -> Self {
        AbInstaller {
            slot_a: a.into(),
            slot_b: b.into(),
            bootloader,
            reboot,
            cmdline: PathBuf::from("/proc/cmdline"),
            timeout: None,
        }
    }

    /// Reads the kernel command line from `path` instead of `/proc/cmdline`.
    pub fn with_cmdline(mut self, path: impl Into<PathBuf>) -> Self {
        self.cmdline = path.into();
        self
    }

    /// With a limit for the reboot command.
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// The bootloader backend.
    pub fn bootloader(&self) -> &Bootloader {
        &self.bootloader
    }

    /// The device or file of `slot`.
    pub fn slot_path(&self, slot: Slot) -> &Path {
        match slot {
            Slot::A => &self.slot_a,
            Slot::B => &self.slot_b,
        }
    }

    /// The slot the running system was booted from, by its kernel command line.
    pub fn booted_slot(&self) -> Result<Slot, InstallError> {
        let text = std::fs::read_to_string(&self.cmdline).map_err(io_err("read", &self.cmdline))?;
        booted_slot_of(&text).ok_or_else(|| InstallError::BootedSlotUnknown {
            path: self.cmdline.clone(),
        })
    }

    /// Writes the artifact into `slot`, reads it back against the digest, then tells the
    /// bootloader to try `slot` once.
    pub async fn install(
        &self,
        req: &InstallRequest<'_>,
        slot: Slot,
    ) -> Result<Installed, InstallError> {
        let artifact = req.artifact.to_path_buf();
        let dest = self.slot_path(slot).to_path_buf();
        let digest = req.digest;
        let target = dest.clone();
        tokio::task::spawn_blocking(move || write_slot(&artifact, &target, digest))
            .await
            .map_err(|e| io_err("write", &dest)(io::Error::other(e.to_string())))??;
        self.bootloader.try_once(slot).await?;
        Ok(Installed {
            path: dest,
            previous: None,
        })
    }

    /// Runs the reboot command. It normally does not return (the device goes down); an error
    /// means the device is not rebooting.
    pub async fn reboot(&self) -> Result<(), InstallError> {
        run_checked(&self.reboot, &[], self.timeout).await
    }
}

/// The slot a kernel command line names (see [`SLOT_PARAMETERS`]).
pub fn booted_slot_of(cmdline: &str) -> Option<Slot> {
    SLOT_PARAMETERS.iter().find_map(|param| {
        cmdline
            .split_ascii_whitespace()
            .find_map(|word| word.strip_prefix(param))
            .and_then(|name| name.parse().ok())
    })
}

/// Streams `artifact` into `slot` (hashing as it writes), fsyncs, reads it back and checks
/// both hashes against `digest`.
fn write_slot(artifact: &Path, slot: &Path, digest: Digest) -> Result<(), InstallError> {
    let mut src = File::open(artifact).map_err(io_err("open", artifact))?;
    let size = src.metadata().map_err(io_err("stat", artifact))?.len();
    let mut dst = OpenOptions::new()
        .read(true)
        .write(true)
        .open(slot)
        .map_err(io_err("open", slot))?;
    let capacity = dst.seek(SeekFrom::End(0)).map_err(io_err("seek", slot))?;
    if capacity < size {
        return Err(InstallError::SlotTooSmall {
            path: slot.to_path_buf(),
            capacity,
            size,
        });
    }
    dst.seek(SeekFrom::Start(0)).map_err(io_err("seek", slot))?;
    let mut buf = vec![0u8; SLOT_CHUNK];
    let mut written = Hasher::new();
    loop {
        let n = src.read(&mut buf).map_err(io_err("read", artifact))?;
        if n == 0 {
            break;
        }
        let chunk = buf.get(..n).unwrap_or_default();
        written.update(chunk);
        dst.write_all(chunk).map_err(io_err("write", slot))?;
    }
    dst.sync_all().map_err(io_err("fsync", slot))?;
    check(slot, digest, written.finish())?;

    dst.seek(SeekFrom::Start(0)).map_err(io_err("seek", slot))?;
    let mut back = Hasher::new();
    let mut left = size;
    while left > 0 {
        let want = usize::try_from(left.min(SLOT_CHUNK as u64)).unwrap_or(SLOT_CHUNK);
        let chunk = buf.get_mut(..want).unwrap_or_default();
        dst.read_exact(chunk).map_err(io_err("read back", slot))?;
        back.update(chunk);
        left -= want as u64;
    }
    check(slot, digest, back.finish())
}

fn check(slot: &Path, expected: Digest, actual: Digest) -> Result<(), InstallError> {
    if actual == expected {
        Ok(())
    } else {
        Err(InstallError::SlotMismatch {
            path: slot.to_path_buf(),
            expected,
            actual,
        })
    }
}

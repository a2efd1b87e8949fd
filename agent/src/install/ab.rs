//! The `ab` installer: two root-filesystem slots (block devices, partitions or image files)
//! and a [`Bootloader`].
//!
//! An install writes the slot the core machine names (always the one not booted):
//!
//! 1. the cached artifact is streamed into the slot through one fixed
//!    [`SLOT_CHUNK`] buffer, hashed as it is written (memory stays flat for any slot size);
//!    the slot must be at least as large as the artifact (its size is its length: a block
//!    device's size or an image file's length) and is never created or truncated;
//!    the bytes read must hash to the signed digest, or the install fails with
//!    [`InstallError::ArtifactMismatch`] (the cached artifact is damaged);
//! 2. the slot is fsynced, its written range is dropped from the page cache
//!    (`posix_fadvise(POSIX_FADV_DONTNEED)`), and it is read back (`size` bytes) and hashed
//!    again: both hashes must be the signed digest, or the install fails and the bootloader is
//!    not touched. Dropping the clean pages first makes the read-back come from the device,
//!    not from the copies the write left in memory; after the read-back the range is dropped
//!    again, so a slot of any size does not crowd the page cache;
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

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ota_core::digest::{Digest, Hasher};
use ota_core::update::Slot;

use super::{InstallError, InstallRequest, Installed, artifact_check, io_err, run_checked};
use crate::bootloader::Bootloader;
use crate::process::CommandSpec;

/// The size of the one buffer a slot is written and read back through.
pub const SLOT_CHUNK: usize = 1024 * 1024;

/// Kernel command line parameters that name the booted slot, in the order they are looked for.
pub const SLOT_PARAMETERS: [&str; 2] = ["ota.slot=", "rauc.slot="];

/// A function run on the slot's path after it is written and fsynced, before it is read back
/// (see [`AbInstaller::with_read_back_hook`]).
pub type ReadBackHook = Arc<dyn Fn(&Path) + Send + Sync>;

/// Installs into A/B slots (see the [module documentation](self)).
#[derive(Clone)]
pub struct AbInstaller {
    slot_a: PathBuf,
    slot_b: PathBuf,
    bootloader: Bootloader,
    reboot: CommandSpec,
    cmdline: PathBuf,
    timeout: Option<Duration>,
    read_back_hook: Option<ReadBackHook>,
}

impl fmt::Debug for AbInstaller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AbInstaller")
            .field("slot_a", &self.slot_a)
            .field("slot_b", &self.slot_b)
            .field("bootloader", &self.bootloader)
            .field("reboot", &self.reboot)
            .field("cmdline", &self.cmdline)
            .field("timeout", &self.timeout)
            .field("read_back_hook", &self.read_back_hook.is_some())
            .finish()
    }
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
            read_back_hook: None,
        }
    }

    /// Runs `hook` on the slot after it is written and fsynced, before it is read back: tests
    /// damage the slot there to prove that the read-back reads what the slot holds.
    pub fn with_read_back_hook(mut self, hook: ReadBackHook) -> Self {
        self.read_back_hook = Some(hook);
        self
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
        let hook = self.read_back_hook.clone();
        tokio::task::spawn_blocking(move || write_slot(&artifact, &target, digest, hook))
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

/// Streams `artifact` into `slot` (hashing as it writes), fsyncs, drops the written range from
/// the page cache, reads it back and checks both hashes against `digest`.
fn write_slot(
    artifact: &Path,
    slot: &Path,
    digest: Digest,
    hook: Option<ReadBackHook>,
) -> Result<(), InstallError> {
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
    artifact_check(artifact, digest, written.finish())?;
    dst.sync_all().map_err(io_err("fsync", slot))?;
    if let Some(hook) = hook {
        hook(slot);
    }

    drop_cached(&dst, size).map_err(io_err("drop the page cache of", slot))?;
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
    drop_cached(&dst, size).map_err(io_err("drop the page cache of", slot))?;
    let actual = back.finish();
    if actual != digest {
        return Err(InstallError::SlotMismatch {
            path: slot.to_path_buf(),
            expected: digest,
            actual,
        });
    }
    Ok(())
}

/// Drops the first `len` bytes of `file` from the page cache (`POSIX_FADV_DONTNEED`). The
/// pages must be clean (fsynced) to be dropped; the next read of them comes from the device.
fn drop_cached(file: &File, len: u64) -> io::Result<()> {
    let Some(len) = NonZeroU64::new(len) else {
        return Ok(());
    };
    rustix::fs::fadvise(file, 0, Some(len), rustix::fs::Advice::DontNeed).map_err(io::Error::from)
}

//! Installers: put a verified, cached artifact into service.
//!
//! - [`FilesInstaller`]: the artifact is copied from the cache to `<root>/releases/<digest>`
//!   (never hard-linked: the cache copy shares no inode with anything the application can
//!   write, so damage to one is never damage to the other, issue 19.8), hashed as it is
//!   copied: the copy is renamed into place only when the bytes copied hash to the signed
//!   digest (else [`InstallError::ArtifactMismatch`]), so the check and the copy read the
//!   artifact once and check the very bytes installed (the copy is fsynced in the background
//!   every 16 MiB while it is written, and once more before the rename); then the
//!   `<root>/current` symlink is switched atomically to it (a temporary symlink renamed over
//!   `current`, then an fsync of `<root>`), then an optional restart command runs. Rolling back
//!   is installing the known-good digest again: its release file is kept if it still hashes to
//!   the digest, and copied afresh from the (re-verified) cache if it does not.
//! - [`CommandInstaller`]: runs a user command with `OTA_ARTIFACT` (the cached file's path),
//!   `OTA_VERSION` and `OTA_DIGEST` in its environment; a non-zero exit is an install failure
//!   that carries the tail of its stderr.
//!
//! - [`AbInstaller`] (`ab.rs`): A/B root-filesystem slots and a bootloader; the install
//!   ends in a reboot, see its documentation.
//!
//! The files and `ab` installers verify the artifact as they read it
//! ([`Installer::hashes_while_installing`]); the command installer cannot (the command reads
//! the file itself), so the artifact is re-hashed before it runs.
//!
//! [`Installer`] is the configured one of the three. Commands run the same way for both (and for
//! the restart command): without a shell, stdin closed, killed after an optional timeout.

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ota_core::digest::{Digest, Hasher};
use ota_core::update::Slot;

mod ab;

pub use ab::{AbInstaller, ReadBackHook, SLOT_CHUNK, SLOT_PARAMETERS, booted_slot_of};

use crate::process::{self, CommandSpec, Ended};
use crate::storage::{BackgroundSync, SharedStorage, for_each_chunk, hash_file};

/// Why an install failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstallError {
    /// A disk operation failed.
    #[error("install {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A command could not be started (not found, not executable).
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The install command (or the restart command) exited unsuccessfully.
    #[error("{program} failed ({status}): {stderr_tail}")]
    CommandFailed {
        /// The program.
        program: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The end of its stderr (at most [`process::STDERR_TAIL`] bytes).
        stderr_tail: String,
    },
    /// The install command (or the restart command) ran past its timeout and was killed.
    #[error("{program} timed out")]
    CommandTimedOut {
        /// The program.
        program: String,
    },
    /// The artifact read from the cache does not hash to the signed digest (damaged since it
    /// was downloaded): nothing was installed.
    #[error("{path} does not hold the artifact: sha256 {actual}, expected {expected}")]
    ArtifactMismatch {
        /// The cached artifact.
        path: PathBuf,
        /// The signed digest.
        expected: Digest,
        /// What its bytes hash to.
        actual: Digest,
    },
    /// The `ab` installer's slot is smaller than the artifact.
    #[error("slot {path} holds {capacity} bytes, the artifact has {size}")]
    SlotTooSmall {
        /// The slot's device or file.
        path: PathBuf,
        /// Its size.
        capacity: u64,
        /// The artifact's size.
        size: u64,
    },
    /// What was read back from a slot after writing it does not hash to the signed digest.
    #[error("slot {path} does not hold the artifact: sha256 {actual}, expected {expected}")]
    SlotMismatch {
        /// The slot's device or file.
        path: PathBuf,
        /// The signed digest.
        expected: Digest,
        /// What the slot's bytes hash to.
        actual: Digest,
    },
    /// The kernel command line names no slot (`ota.slot=` or `rauc.slot=`, `A` or `B`).
    #[error("{path} names no boot slot (ota.slot=A|B or rauc.slot=A|B)")]
    BootedSlotUnknown {
        /// The command line file.
        path: PathBuf,
    },
    /// The `ab` installer was asked to install without a slot, or another installer with one.
    #[error("the configured installer does not match the update machine's boot_slots setting")]
    SlotMismatchConfig,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> InstallError + use<> {
    let path = path.to_path_buf();
    move |source| InstallError::Io { op, path, source }
}

/// What to install.
#[derive(Debug, Clone, Copy)]
pub struct InstallRequest<'a> {
    /// The verified artifact (its path in the cache).
    pub artifact: &'a Path,
    /// Its signed digest.
    pub digest: Digest,
    /// The release's version string.
    pub version: &'a str,
}

impl InstallRequest<'_> {
    fn env(&self) -> [(&'static str, String); 3] {
        [
            ("OTA_ARTIFACT", self.artifact.display().to_string()),
            ("OTA_VERSION", self.version.to_owned()),
            ("OTA_DIGEST", self.digest.to_string()),
        ]
    }
}

/// The result of a successful install.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Installed {
    /// Where the release now lives (`<root>/releases/<digest>` for the files installer, the
    /// cached artifact for the command installer).
    pub path: PathBuf,
    /// What `current` pointed to before the switch (files installer only).
    pub previous: Option<PathBuf>,
}

/// Runs `spec` with the request's environment; maps its failure to an [`InstallError`].
async fn run_for(
    spec: &CommandSpec,
    req: &InstallRequest<'_>,
    timeout: Option<Duration>,
) -> Result<(), InstallError> {
    let env = req.env();
    let env: Vec<(&str, &OsStr)> = env.iter().map(|(k, v)| (*k, OsStr::new(v))).collect();
    run_checked(spec, &env, timeout).await
}

/// Runs `spec` with `env` added; maps its failure to an [`InstallError`].
pub(crate) async fn run_checked(
    spec: &CommandSpec,
    env: &[(&str, &OsStr)],
    timeout: Option<Duration>,
) -> Result<(), InstallError> {
    match process::run(spec, env, timeout).await {
        Err(source) => Err(InstallError::Spawn {
            program: spec.program.clone(),
            source,
        }),
        Ok(Ended::TimedOut) => Err(InstallError::CommandTimedOut {
            program: spec.program.clone(),
        }),
        Ok(Ended::Exited {
            status,
            stderr_tail,
        }) => {
            if status.success() {
                Ok(())
            } else {
                Err(InstallError::CommandFailed {
                    program: spec.program.clone(),
                    status,
                    stderr_tail,
                })
            }
        }
    }
}

/// Installs into `<root>/releases/<digest>` and switches `<root>/current` (see the
/// [module documentation](self)).
#[derive(Debug, Clone)]
pub struct FilesInstaller {
    storage: SharedStorage,
    root: PathBuf,
    restart: Option<CommandSpec>,
    timeout: Option<Duration>,
    /// The last file [`FilesInstaller::running_digest`] hashed: its path, size and digest.
    hashed: Arc<Mutex<Option<(PathBuf, u64, Digest)>>>,
}

/// The read and write size of a copy across file systems.
const COPY_CHUNK: usize = 64 * 1024;

impl FilesInstaller {
    /// A files installer under `root`, writing through `storage`.
    pub fn new(storage: SharedStorage, root: impl Into<PathBuf>) -> Self {
        FilesInstaller {
            storage,
            root: root.into(),
            restart: None,
            timeout: None,
            hashed: Arc::default(),
        }
    }

    /// With a restart command, run after the switch.
    pub fn with_restart_command(mut self, restart: Option<CommandSpec>) -> Self {
        self.restart = restart;
        self
    }

    /// With a timeout for the restart command.
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// The `current` symlink.
    pub fn current_link(&self) -> PathBuf {
        self.root.join("current")
    }

    /// Where the release `digest` is (or would be) kept.
    pub fn release_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("releases").join(digest.to_string())
    }

    /// What `current` points to, if it exists.
    pub fn current(&self) -> Result<Option<PathBuf>, InstallError> {
        let link = self.current_link();
        self.storage
            .read_link(&link)
            .map_err(io_err("read link", &link))
    }

    /// The digest of the release `current` points to (issue 12.7, drift): the name of a
    /// `<root>/releases/<digest>` file, else the SHA-256 of whatever file it points to (a
    /// link re-pointed by hand; hashed again only when the target's path or size changes);
    /// `None` without a `current` link.
    pub async fn running_digest(&self) -> Result<Option<Digest>, InstallError> {
        let Some(target) = self.current()? else {
            return Ok(None);
        };
        let target = self.root.join(target);
        let named = target
            .parent()
            .is_some_and(|dir| dir == self.root.join("releases"))
            .then(|| target.file_name()?.to_str()?.parse::<Digest>().ok())
            .flatten();
        if let Some(digest) = named {
            return Ok(Some(digest));
        }
        let len = self
            .storage
            .len(&target)
            .map_err(io_err("stat", &target))?
            .ok_or_else(|| io_err("stat", &target)(io::ErrorKind::NotFound.into()))?;
        let memo = |h: &Option<(PathBuf, u64, Digest)>| {
            h.as_ref()
                .filter(|(path, size, _)| *path == target && *size == len)
                .map(|(_, _, d)| *d)
        };
        if let Some(digest) = memo(&self.lock_hashed()) {
            return Ok(Some(digest));
        }
        let digest = hash_file(&*self.storage, &target, COPY_CHUNK)
            .await
            .map_err(io_err("hash", &target))?;
        *self.lock_hashed() = Some((target, len, digest));
        Ok(Some(digest))
    }

    fn lock_hashed(&self) -> std::sync::MutexGuard<'_, Option<(PathBuf, u64, Digest)>> {
        self.hashed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Installs the artifact: release file, atomic switch of `current`, restart command.
    pub async fn install(&self, req: &InstallRequest<'_>) -> Result<Installed, InstallError> {
        let st = &self.storage;
        let releases = self.root.join("releases");
        st.create_dir_all(&releases)
            .map_err(io_err("create directory", &releases))?;
        let dest = self.release_path(&req.digest);
        if self.intact(&dest, &req.digest).await? {
            // The release file is reused (a rollback); the cache entry is checked all the same
            // (issue 19.8): a damaged one is reported, and the machine evicts it. An absent one
            // is no obstacle here.
            match hash_file(&**st, req.artifact, COPY_CHUNK).await {
                Ok(actual) => artifact_check(req.artifact, req.digest, actual)?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("read", req.artifact)(e)),
            }
        } else {
            self.place(req, &dest, &releases).await?;
        }

        // Switch `current`: a fresh temporary symlink renamed over it.
        let previous = self.current()?;
        let link = self.current_link();
        let tmp = self.root.join("current.tmp");
        remove_if_present(&**st, &tmp)?;
        let target = Path::new("releases").join(req.digest.to_string());
        st.symlink(&target, &tmp).map_err(io_err("symlink", &tmp))?;
        st.rename(&tmp, &link).map_err(io_err("rename", &tmp))?;
        st.sync_dir(&self.root)
            .map_err(io_err("fsync", &self.root))?;

        if let Some(restart) = &self.restart {
            run_for(restart, req, self.timeout).await?;
        }
        Ok(Installed {
            path: dest,
            previous,
        })
    }

    /// Whether the release file `dest` exists and hashes to `digest` (a release file the
    /// application damaged is replaced, never reused).
    async fn intact(&self, dest: &Path, digest: &Digest) -> Result<bool, InstallError> {
        match hash_file(&*self.storage, dest, COPY_CHUNK).await {
            Ok(actual) => Ok(actual == *digest),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("read", dest)(e)),
        }
    }

    /// Removes the installed copy of `digest` (`<root>/releases/<digest>`) unless `current`
    /// points to it; whether a file was removed. Cache eviction calls it, so an evicted
    /// release leaves no copy behind.
    pub fn remove_release(&self, digest: &Digest) -> Result<bool, InstallError> {
        let rel = Path::new("releases").join(digest.to_string());
        let path = self.release_path(digest);
        if let Some(current) = self.current()?
            && (current == rel || current == path)
        {
            return Ok(false);
        }
        match self.storage.remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("remove", &path)(e)),
        }
    }

    /// Puts a copy of the artifact at `dest` (never a hard link, see the
    /// [module documentation](self)): written under a temporary name while hashed, checked
    /// against the signed digest, fsynced, renamed, directory fsynced. A mismatch removes the
    /// temporary copy.
    async fn place(
        &self,
        req: &InstallRequest<'_>,
        dest: &Path,
        dir: &Path,
    ) -> Result<(), InstallError> {
        let st = &self.storage;
        let artifact = req.artifact;
        let tmp = dest.with_extension("tmp");
        remove_if_present(&**st, &tmp)?;
        st.create(&tmp).map_err(io_err("create", &tmp))?;
        let mut write_err = None;
        let mut hasher = Hasher::new();
        let mut sync = BackgroundSync::new(st.clone(), &tmp, 0);
        let mut written = 0u64;
        for_each_chunk(&**st, artifact, COPY_CHUNK, None, |chunk| {
            hasher.update(chunk);
            written += chunk.len() as u64;
            st.append(&tmp, chunk)
                .and_then(|()| sync.wrote(written))
                .inspect_err(|e| {
                    write_err = Some(io::Error::new(e.kind(), e.to_string()));
                })
        })
        .await
        .map_err(|e| match write_err.take() {
            Some(w) => io_err("write", &tmp)(w),
            None => io_err("read", artifact)(e),
        })?;
        sync.finish().map_err(io_err("fsync", &tmp))?;
        if let Err(e) = artifact_check(artifact, req.digest, hasher.finish()) {
            remove_if_present(&**st, &tmp)?;
            return Err(e);
        }
        st.sync_file(&tmp).map_err(io_err("fsync", &tmp))?;
        st.rename(&tmp, dest).map_err(io_err("rename", &tmp))?;
        st.sync_dir(dir).map_err(io_err("fsync", dir))?;
        Ok(())
    }
}

/// [`InstallError::ArtifactMismatch`] unless `actual`, the hash of the bytes read from the
/// artifact at `path`, is its signed digest `expected`.
fn artifact_check(path: &Path, expected: Digest, actual: Digest) -> Result<(), InstallError> {
    if actual == expected {
        Ok(())
    } else {
        Err(InstallError::ArtifactMismatch {
            path: path.to_path_buf(),
            expected,
            actual,
        })
    }
}

/// Removes `path` (nothing to do when it is absent).
fn remove_if_present(st: &dyn crate::storage::Storage, path: &Path) -> Result<(), InstallError> {
    match st.remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", path)(e)),
    }
}

/// Installs by running a user command (see the [module documentation](self)).
#[derive(Debug, Clone)]
pub struct CommandInstaller {
    command: CommandSpec,
    timeout: Option<Duration>,
}

impl CommandInstaller {
    /// An installer running `command`.
    pub fn new(command: CommandSpec) -> Self {
        CommandInstaller {
            command,
            timeout: None,
        }
    }

    /// With a timeout after which the command is killed and the install fails.
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs the command; exit 0 is success.
    pub async fn install(&self, req: &InstallRequest<'_>) -> Result<Installed, InstallError> {
        run_for(&self.command, req, self.timeout).await?;
        Ok(Installed {
            path: req.artifact.to_path_buf(),
            previous: None,
        })
    }
}

/// The configured installer.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Installer {
    /// Release files and a `current` symlink.
    Files(FilesInstaller),
    /// A user command.
    Command(CommandInstaller),
    /// A/B slots and a bootloader.
    Ab(AbInstaller),
}

impl Installer {
    /// Removes what an install of `digest` left outside the cache, if anything (see
    /// [`FilesInstaller::remove_release`]); whether something was removed.
    pub fn remove_release(&self, digest: &Digest) -> Result<bool, InstallError> {
        match self {
            Installer::Files(i) => i.remove_release(digest),
            Installer::Command(_) | Installer::Ab(_) => Ok(false),
        }
    }

    /// The digest of the release the installer actually runs, where it can tell (the files
    /// installer, see [`FilesInstaller::running_digest`]; the command and `ab` installers
    /// cannot: `None`; the `ab` installer's booted slot is what counts).
    pub async fn running_digest(&self) -> Result<Option<Digest>, InstallError> {
        match self {
            Installer::Files(i) => i.running_digest().await,
            Installer::Command(_) | Installer::Ab(_) => Ok(None),
        }
    }

    /// Whether [`install`](Self::install) hashes the artifact as it reads it and fails with
    /// [`InstallError::ArtifactMismatch`] when it is not the signed one (the files and `ab`
    /// installers); the command installer does not read it, so its caller re-hashes it first.
    pub fn hashes_while_installing(&self) -> bool {
        !matches!(self, Installer::Command(_))
    }

    /// Installs the artifact with the configured installer; `slot` (from the machine's
    /// `Install` action) is the slot the `ab` installer writes, and must be `None` for the
    /// others.
    pub async fn install(
        &self,
        req: &InstallRequest<'_>,
        slot: Option<Slot>,
    ) -> Result<Installed, InstallError> {
        match (self, slot) {
            (Installer::Files(i), None) => i.install(req).await,
            (Installer::Command(i), None) => i.install(req).await,
            (Installer::Ab(i), Some(slot)) => i.install(req, slot).await,
            _ => Err(InstallError::SlotMismatchConfig),
        }
    }

    /// The `ab` installer, if that is the one configured.
    pub fn ab(&self) -> Option<&AbInstaller> {
        match self {
            Installer::Ab(i) => Some(i),
            _ => None,
        }
    }
}

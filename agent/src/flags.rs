//! Feature flags on the device: the flag file the agent keeps and applications read.
//!
//! The agent applies the retained `ota/v1/flags/devices/{id}` payload with core's applier
//! ([`FlagStore`]) and replaces `<data_dir>/flags` atomically ([`FlagFile::replace`]: write
//! `flags.tmp`, fsync, rename over `flags`, fsync the directory), so a reader sees the old file
//! or the new one, never a mix. The file carries the fleet flag version (`VERSION=`), and is
//! not part of a release: an update, a rollback or a redeploy leaves it alone.
//!
//! Applications read it with [`Flags::load`]:
//!
//! ```no_run
//! # fn main() -> Result<(), ota_agent::flags::FlagsError> {
//! let flags = ota_agent::Flags::load("/var/lib/ota-agent/flags")?;
//! if flags.is_enabled("dark-mode") {
//!     // the new code path
//! }
//! # Ok(())
//! # }
//! ```
//!
//! A flag missing from the file is off, so code deployed before its flag exists stays dark.
//! The format is described in `docs/flags.md` (`grep -qx 'dark-mode=on' <file>` works too).

use std::io::Read as _;
use std::path::{Path, PathBuf};

use ota_core::flags::{DeviceFlags, FlagFileError, FlagLimits, FlagStore, FlagUpdate};
use ota_core::wire::DeviceId;

use crate::storage::{ReplaceError, SharedStorage, replace_file};

/// The flag file's name in the data directory.
pub const FILE_NAME: &str = "flags";
/// The temporary file written before the rename.
const TEMP_NAME: &str = "flags.tmp";

/// Why the flag file cannot be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlagsError {
    /// The file cannot be read (missing: the agent has not received flags yet).
    #[error("cannot read the flag file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file's contents are refused (bad format, too large).
    #[error("bad flag file {path}: {source}")]
    Format {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: FlagFileError,
    },
    /// Writing the new file failed (the old one is left in place).
    #[error("cannot {op} {path}: {source}")]
    Write {
        /// The step (`write`, `fsync`, `rename`).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A device's evaluated flags, as read from its flag file (for applications on the device).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flags(DeviceFlags);

impl Flags {
    /// Reads the flag file at `path` (at most 32 KiB).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, FlagsError> {
        let path = path.as_ref();
        let read = |source| FlagsError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read)?;
        let mut bytes = Vec::new();
        file.take(FlagLimits::MAX_FILE_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(read)?;
        DeviceFlags::from_file(&bytes)
            .map(Flags)
            .map_err(|source| FlagsError::Format {
                path: path.to_path_buf(),
                source,
            })
    }

    /// Whether flag `name` is on (an unknown flag is off).
    pub fn is_enabled(&self, name: &str) -> bool {
        self.0.is_enabled(name)
    }

    /// The value of flag `name`, `None` if the device has no such flag.
    pub fn get(&self, name: &str) -> Option<bool> {
        self.0.get(name)
    }

    /// The fleet flag version the file was evaluated at.
    pub fn version(&self) -> u64 {
        self.0.version
    }

    /// The device the file is for.
    pub fn device_id(&self) -> &str {
        &self.0.device_id
    }

    /// Every flag and its value, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, bool)> {
        self.0.flags.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// One line of JSON: `{"device":..,"version":..,"flags":{name: bool}}`.
    pub fn to_json(&self) -> String {
        self.0.to_json()
    }
}

/// The agent's side: applies incoming flags and keeps the file.
#[derive(Debug)]
pub(crate) struct FlagFile {
    storage: SharedStorage,
    dir: PathBuf,
    store: FlagStore,
}

impl FlagFile {
    /// Opens the flag file of `device` in `dir`; a missing or refused file starts empty (the
    /// retained message restores it).
    pub(crate) fn open(storage: SharedStorage, dir: &Path, device: DeviceId) -> Self {
        let path = dir.join(FILE_NAME);
        let store = match storage.read(&path) {
            Ok(bytes) => FlagStore::from_file(device.clone(), &bytes).unwrap_or_else(|e| {
                tracing::warn!("ignoring the flag file {}: {e}", path.display());
                FlagStore::new(device)
            }),
            Err(_) => FlagStore::new(device),
        };
        FlagFile {
            storage,
            dir: dir.to_path_buf(),
            store,
        }
    }

    /// Handles one payload from the flags topic: applied (file replaced, then committed), or
    /// ignored (duplicate, stale, another device's, malformed, empty).
    pub(crate) fn on_payload(&mut self, payload: &[u8]) {
        if payload.is_empty() {
            return;
        }
        let incoming = match ota_core::wire::WireMessage::from_cbor(payload) {
            Ok(flags) => flags,
            Err(e) => {
                tracing::warn!("ignored device flags that do not decode: {e}");
                return;
            }
        };
        let update = match self.store.offer(incoming) {
            Ok(update) => update,
            Err(why) => {
                tracing::debug!("device flags ignored: {why:?}");
                return;
            }
        };
        match self.replace(&update) {
            Ok(()) => {
                for (name, before, after) in update.changed() {
                    tracing::info!(flag = %name, ?before, ?after, "flag changed");
                }
                self.store.commit(update);
            }
            Err(e) => tracing::error!("{e}; the flags are applied on the next delivery"),
        }
    }

    /// Replaces the file atomically with the update's bytes.
    fn replace(&self, update: &FlagUpdate) -> Result<(), FlagsError> {
        replace_file(
            &*self.storage,
            &self.dir,
            FILE_NAME,
            TEMP_NAME,
            update.file(),
        )
        .map_err(|e: ReplaceError| FlagsError::Write {
            op: e.op,
            path: e.path,
            source: e.source,
        })
    }
}

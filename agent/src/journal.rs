//! Atomic persistence of the update machine's state bytes, and the boot counter.
//!
//! A [`Journal`] keeps one record (opaque bytes: the core machine encodes its state) in a
//! directory, under a name (`state` by default):
//!
//! | file | content |
//! |---|---|
//! | `<name>` | the current record |
//! | `<name>.prev` | the record before it (the last good state if `<name>` is ever damaged) |
//! | `<name>.tmp` | a record being written (ignored when loading) |
//!
//! Every file is framed: the magic `OTAJ`, a format byte (1), the payload length (u32 little
//! endian), the payload, then the SHA-256 of the payload. A truncated, torn or bit-flipped file
//! fails that check and is reported as [`JournalError::Corrupt`], never silently returned.
//!
//! [`store`](Journal::store) writes `<name>.tmp`, fsyncs it, renames a *valid* `<name>` to
//! `<name>.prev`, renames `<name>.tmp` to `<name>`, then fsyncs the directory. A damaged
//! `<name>` is never rotated into `<name>.prev`, so `<name>.prev` always holds the last good
//! record. [`load`](Journal::load) returns:
//!
//! | `<name>` | `<name>.prev` | result |
//! |---|---|---|
//! | valid | any | `Ok(Some(current))` |
//! | absent | absent | `Ok(None)` (first start) |
//! | absent | valid | `Ok(Some(prev))`: a crash between the two renames; the store did not complete |
//! | corrupt (or absent with a corrupt `.prev`) | any | `Err(Corrupt)`; [`load_previous`](Journal::load_previous) still gives the last good record |
//!
//! The [`BootCounter`] is a journal named `boot` whose record is a u64, incremented at each
//! agent start.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use ota_core::digest::Digest;

use crate::storage::SharedStorage;

const MAGIC: &[u8; 4] = b"OTAJ";
const FORMAT: u8 = 1;
const HEADER: usize = 4 + 1 + 4;
const TRAILER: usize = 32;
/// The largest record a journal accepts (the machine's state is a few hundred bytes).
pub const MAX_RECORD: usize = 1 << 20;

/// Why the journal could not load or store a record.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// A disk operation failed.
    #[error("journal {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A journal file is damaged (truncated, torn, bad checksum, unknown format).
    #[error("journal file {path} is corrupt: {reason}")]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The record to store is larger than [`MAX_RECORD`].
    #[error("journal record of {0} bytes exceeds the limit of {MAX_RECORD}")]
    TooLarge(usize),
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> JournalError + use<> {
    let path = path.to_path_buf();
    move |source| JournalError::Io { op, path, source }
}

/// Frames a payload (see the [module documentation](self)).
fn encode(payload: &[u8]) -> Result<Vec<u8>, JournalError> {
    if payload.len() > MAX_RECORD {
        return Err(JournalError::TooLarge(payload.len()));
    }
    let len = u32::try_from(payload.len()).map_err(|_| JournalError::TooLarge(payload.len()))?;
    let mut out = Vec::with_capacity(HEADER + payload.len() + TRAILER);
    out.extend_from_slice(MAGIC);
    out.push(FORMAT);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(Digest::of(payload).as_bytes());
    Ok(out)
}

/// Checks a frame and returns its payload.
fn decode(bytes: &[u8]) -> Result<&[u8], &'static str> {
    let (header, rest) = bytes.split_at_checked(HEADER).ok_or("truncated header")?;
    let (magic, header) = header.split_at(4);
    if magic != MAGIC {
        return Err("bad magic");
    }
    let (format, len) = header.split_at(1);
    if format != [FORMAT] {
        return Err("unknown format version");
    }
    let len: [u8; 4] = len.try_into().map_err(|_| "truncated header")?;
    let len = usize::try_from(u32::from_le_bytes(len)).map_err(|_| "bad length")?;
    if len > MAX_RECORD {
        return Err("length exceeds the limit");
    }
    if rest.len() != len + TRAILER {
        return Err("length does not match the file size");
    }
    let (payload, sum) = rest.split_at(len);
    if Digest::of(payload).as_bytes().as_slice() != sum {
        return Err("checksum mismatch");
    }
    Ok(payload)
}

/// One atomically replaced record in a directory (see the [module documentation](self)).
#[derive(Debug, Clone)]
pub struct Journal {
    storage: SharedStorage,
    dir: PathBuf,
    current: PathBuf,
    prev: PathBuf,
    tmp: PathBuf,
}

impl Journal {
    /// The journal of the machine's state: `state` in `dir`. Creates `dir` if needed.
    pub fn open(storage: SharedStorage, dir: &Path) -> Result<Self, JournalError> {
        Self::open_named(storage, dir, "state")
    }

    /// A journal named `name` in `dir`. Creates `dir` if needed.
    pub fn open_named(
        storage: SharedStorage,
        dir: &Path,
        name: &str,
    ) -> Result<Self, JournalError> {
        storage
            .create_dir_all(dir)
            .map_err(io_err("create directory", dir))?;
        let with = |suffix: &str| {
            let mut n = OsString::from(name);
            n.push(suffix);
            dir.join(n)
        };
        Ok(Journal {
            current: with(""),
            prev: with(".prev"),
            tmp: with(".tmp"),
            dir: dir.to_path_buf(),
            storage,
        })
    }

    /// The file holding the current record.
    pub fn path(&self) -> &Path {
        &self.current
    }

    /// Reads and checks one file: `Ok(None)` when absent.
    fn read_file(&self, path: &Path) -> Result<Option<Vec<u8>>, JournalError> {
        let bytes = match self.storage.read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", path)(e)),
        };
        match decode(&bytes) {
            Ok(payload) => Ok(Some(payload.to_vec())),
            Err(reason) => Err(JournalError::Corrupt {
                path: path.to_path_buf(),
                reason,
            }),
        }
    }

    /// The last stored record (see the table in the [module documentation](self)).
    pub fn load(&self) -> Result<Option<Vec<u8>>, JournalError> {
        match self.read_file(&self.current)? {
            Some(payload) => Ok(Some(payload)),
            None => self.read_file(&self.prev),
        }
    }

    /// The record before the current one (`<name>.prev`): the last good state when
    /// [`load`](Self::load) reports the current file corrupt.
    pub fn load_previous(&self) -> Result<Option<Vec<u8>>, JournalError> {
        self.read_file(&self.prev)
    }

    /// Replaces the record atomically and durably: after a crash at any point, [`load`]
    /// returns either the old record or the new one.
    ///
    /// [`load`]: Self::load
    pub fn store(&self, payload: &[u8]) -> Result<(), JournalError> {
        let framed = encode(payload)?;
        let st = &self.storage;
        st.create(&self.tmp).map_err(io_err("create", &self.tmp))?;
        st.append(&self.tmp, &framed)
            .map_err(io_err("write", &self.tmp))?;
        st.sync_file(&self.tmp)
            .map_err(io_err("fsync", &self.tmp))?;
        // Keep the current record as the previous one, unless it is damaged: then the
        // existing .prev is the last good record and stays.
        if matches!(self.read_file(&self.current), Ok(Some(_))) {
            st.rename(&self.current, &self.prev)
                .map_err(io_err("rename", &self.current))?;
        }
        st.rename(&self.tmp, &self.current)
            .map_err(io_err("rename", &self.tmp))?;
        st.sync_dir(&self.dir).map_err(io_err("fsync", &self.dir))?;
        Ok(())
    }
}

/// Counts agent starts, persisted like a [`Journal`] (file `boot` in the data directory).
///
/// Deadlines that must survive a reboot are stored as wall time plus this counter, so the
/// machine can tell a time read in an earlier boot from one read in this boot.
#[derive(Debug, Clone)]
pub struct BootCounter {
    journal: Journal,
}

impl BootCounter {
    /// The boot counter kept in `dir`. Creates `dir` if needed.
    pub fn open(storage: SharedStorage, dir: &Path) -> Result<Self, JournalError> {
        Ok(BootCounter {
            journal: Journal::open_named(storage, dir, "boot")?,
        })
    }

    /// The current count, without incrementing (0 before the first start).
    pub fn current(&self) -> Result<u64, JournalError> {
        let record = match self.journal.load() {
            Ok(r) => r,
            // A damaged counter falls back to the last good value.
            Err(JournalError::Corrupt { .. }) => match self.journal.load_previous()? {
                Some(r) => Some(r),
                None => {
                    return Err(JournalError::Corrupt {
                        path: self.journal.path().to_path_buf(),
                        reason: "boot counter damaged and no previous value",
                    });
                }
            },
            Err(e) => return Err(e),
        };
        match record {
            None => Ok(0),
            Some(bytes) => {
                let raw: [u8; 8] =
                    bytes
                        .as_slice()
                        .try_into()
                        .map_err(|_| JournalError::Corrupt {
                            path: self.journal.path().to_path_buf(),
                            reason: "boot counter is not 8 bytes",
                        })?;
                Ok(u64::from_le_bytes(raw))
            }
        }
    }

    /// Increments the counter durably and returns the new value (1 at the first start). A
    /// damaged counter continues from its last good value.
    pub fn increment(&self) -> Result<u64, JournalError> {
        let next = self.current()?.saturating_add(1);
        self.journal.store(&next.to_le_bytes())?;
        Ok(next)
    }
}

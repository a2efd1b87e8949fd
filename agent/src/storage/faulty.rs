//! [`FaultyStorage`]: a [`Storage`] double with a fault hook for the crash tests. Built only
//! for tests and with the `test-support` feature (the agent's own integration tests turn it on),
//! never into the shipped agent.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use super::{FsStorage, Storage};

/// The fault a [`FaultyStorage`] injects at its N-th mutating operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// The N-th mutating operation fails (without touching the disk); the ones after it work.
    Fail,
    /// The power is lost at the N-th mutating operation: it and every later operation (reads
    /// too) fail without touching the disk.
    PowerLoss {
        /// Also drop what was not durable when the power went: every file written since its
        /// last [`sync_file`](Storage::sync_file) is cut back to the length it had then (to
        /// zero if it was never synced), and every rename or symlink made since the last
        /// [`sync_dir`](Storage::sync_dir) of its directory is undone.
        drop_unsynced: bool,
    },
}

impl Fault {
    /// Every kind of fault, for tests that inject each one at every step.
    pub const ALL: [Fault; 3] = [
        Fault::Fail,
        Fault::PowerLoss {
            drop_unsynced: false,
        },
        Fault::PowerLoss {
            drop_unsynced: true,
        },
    ];
}

/// One mutating operation, as recorded by [`FaultyStorage::log`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    /// [`Storage::create_dir_all`].
    CreateDirAll(PathBuf),
    /// [`Storage::create`].
    Create(PathBuf),
    /// [`Storage::append`] of that many bytes.
    Append(PathBuf, usize),
    /// [`Storage::truncate`] to that length.
    Truncate(PathBuf, u64),
    /// [`Storage::sync_file`].
    SyncFile(PathBuf),
    /// [`Storage::rename`].
    Rename(PathBuf, PathBuf),
    /// [`Storage::sync_dir`].
    SyncDir(PathBuf),
    /// [`Storage::remove_file`].
    RemoveFile(PathBuf),
    /// [`Storage::symlink`] (target, link).
    Symlink(PathBuf, PathBuf),
}

/// A directory entry change not yet made durable by a `sync_dir`.
#[derive(Debug)]
struct PendingEntry {
    dir: PathBuf,
    undo: Undo,
}

#[derive(Debug)]
enum Undo {
    /// A rename `from -> to`; `replaced` is the content `to` had (if it was a regular file).
    Rename {
        from: PathBuf,
        to: PathBuf,
        replaced: Option<Replaced>,
    },
    /// A link created at this path (symlink or hard link): removed on power loss.
    Created(PathBuf),
}

#[derive(Debug)]
enum Replaced {
    File(Vec<u8>),
    Symlink(PathBuf),
}

#[derive(Debug, Default)]
struct FaultState {
    mutations: u64,
    plan: Option<(u64, Fault)>,
    powered_off: bool,
    log: Vec<Op>,
    /// Files written since their last sync: path -> durable length.
    dirty: HashMap<PathBuf, u64>,
    pending: Vec<PendingEntry>,
}

/// A [`Storage`] double around [`FsStorage`] with a fault hook, for crash tests.
///
/// It counts mutating operations (1, 2, …) and, when a [`Fault`] is planned at N, injects it at
/// the N-th. The idea is embassy-boot's `MemFlash` with its `pending_write_successes`, used:
/// see the crash tests of the journal and the cache. A power loss with `drop_unsynced` copies the
/// old content of files that a rename replaces, so keep those files small in tests.
#[derive(Debug, Default)]
pub struct FaultyStorage {
    inner: FsStorage,
    state: Mutex<FaultState>,
}

/// The error of every operation a [`FaultyStorage`] refuses.
fn injected(what: &str) -> io::Error {
    io::Error::other(format!("injected fault: {what}"))
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

impl FaultyStorage {
    /// A double that never fails (until [`set_fault`](Self::set_fault)).
    pub fn new() -> Self {
        Self::default()
    }

    /// A double that injects `fault` at the `at`-th mutating operation (counting from 1).
    pub fn with_fault(at: u64, fault: Fault) -> Self {
        let s = Self::new();
        s.set_fault(at, fault);
        s
    }

    /// Plans `fault` at the `at`-th mutating operation, counted from the creation of the double.
    pub fn set_fault(&self, at: u64, fault: Fault) {
        self.lock().plan = Some((at, fault));
    }

    /// The number of mutating operations attempted so far (the faulted one included).
    pub fn mutations(&self) -> u64 {
        self.lock().mutations
    }

    /// Whether a planned power loss happened.
    pub fn is_powered_off(&self) -> bool {
        self.lock().powered_off
    }

    /// The mutating operations performed (the faulted and refused ones excluded).
    pub fn log(&self) -> Vec<Op> {
        self.lock().log.clone()
    }

    fn lock(&self) -> MutexGuard<'_, FaultState> {
        // A test that panicked while holding the lock leaves valid state: keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Refuses any operation after a power loss.
    fn check_power(&self) -> io::Result<()> {
        if self.lock().powered_off {
            return Err(injected("power is off"));
        }
        Ok(())
    }

    /// Counts a mutating operation and decides whether it runs.
    fn mutate(&self, op: Op) -> io::Result<MutexGuard<'_, FaultState>> {
        let mut st = self.lock();
        if st.powered_off {
            return Err(injected("power is off"));
        }
        st.mutations += 1;
        let n = st.mutations;
        match st.plan {
            Some((at, Fault::Fail)) if at == n => Err(injected("operation failed")),
            Some((at, Fault::PowerLoss { drop_unsynced })) if at == n => {
                st.powered_off = true;
                if drop_unsynced {
                    self.drop_unsynced(&mut st);
                }
                Err(injected("power lost"))
            }
            _ => {
                st.log.push(op);
                Ok(st)
            }
        }
    }

    /// Applies a power loss to the disk: undoes directory changes not synced, then cuts files
    /// back to their durable length.
    fn drop_unsynced(&self, st: &mut FaultState) {
        // Best effort: this runs on the test's own files; errors would only weaken the test.
        while let Some(p) = st.pending.pop() {
            match p.undo {
                Undo::Rename { from, to, replaced } => {
                    let _ = fs::rename(&to, &from);
                    if let Some(d) = st.dirty.remove(&to) {
                        st.dirty.insert(from, d);
                    }
                    match replaced {
                        Some(Replaced::File(bytes)) => {
                            let _ = fs::write(&to, bytes);
                        }
                        Some(Replaced::Symlink(target)) => {
                            let _ = std::os::unix::fs::symlink(target, &to);
                        }
                        None => {}
                    }
                }
                Undo::Created(link) => {
                    let _ = fs::remove_file(link);
                }
            }
        }
        for (path, durable) in st.dirty.drain() {
            if let Ok(f) = OpenOptions::new().write(true).open(&path) {
                let _ = f.set_len(durable);
            }
        }
    }

    fn mark_dirty(st: &mut FaultState, path: &Path, created: bool) {
        if created {
            st.dirty.insert(path.to_path_buf(), 0);
        } else if !st.dirty.contains_key(path) {
            let len = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            st.dirty.insert(path.to_path_buf(), len);
        }
    }
}

impl Storage for FaultyStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let _st = self.mutate(Op::CreateDirAll(dir.to_path_buf()))?;
        // Directory creation is treated as durable at once (it happens at start-up).
        self.inner.create_dir_all(dir)
    }

    fn create(&self, path: &Path) -> io::Result<()> {
        let mut st = self.mutate(Op::Create(path.to_path_buf()))?;
        self.inner.create(path)?;
        Self::mark_dirty(&mut st, path, true);
        Ok(())
    }

    fn append(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut st = self.mutate(Op::Append(path.to_path_buf(), bytes.len()))?;
        Self::mark_dirty(&mut st, path, false);
        self.inner.append(path, bytes)
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut st = self.mutate(Op::Truncate(path.to_path_buf(), len))?;
        Self::mark_dirty(&mut st, path, false);
        self.inner.truncate(path, len)?;
        // Whatever is durable now is at most `len` bytes long.
        if let Some(d) = st.dirty.get_mut(path) {
            *d = (*d).min(len);
        }
        Ok(())
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        let mut st = self.mutate(Op::SyncFile(path.to_path_buf()))?;
        self.inner.sync_file(path)?;
        st.dirty.remove(path);
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.mutate(Op::Rename(from.to_path_buf(), to.to_path_buf()))?;
        let replaced = match fs::symlink_metadata(to) {
            Ok(m) if m.file_type().is_symlink() => fs::read_link(to).ok().map(Replaced::Symlink),
            Ok(_) => fs::read(to).ok().map(Replaced::File),
            Err(_) => None,
        };
        self.inner.rename(from, to)?;
        st.dirty.remove(to);
        if let Some(d) = st.dirty.remove(from) {
            st.dirty.insert(to.to_path_buf(), d);
        }
        st.pending.push(PendingEntry {
            dir: parent_of(to),
            undo: Undo::Rename {
                from: from.to_path_buf(),
                to: to.to_path_buf(),
                replaced,
            },
        });
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.mutate(Op::SyncDir(dir.to_path_buf()))?;
        self.inner.sync_dir(dir)?;
        // The directory's own entries are durable now. A rename across directories is
        // considered durable once its target directory is synced.
        st.pending.retain(|p| p.dir != dir);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut st = self.mutate(Op::RemoveFile(path.to_path_buf()))?;
        self.inner.remove_file(path)?;
        // A removal is treated as durable at once (the pessimistic case for a cache).
        st.dirty.remove(path);
        Ok(())
    }

    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        let mut st = self.mutate(Op::Symlink(target.to_path_buf(), link.to_path_buf()))?;
        self.inner.symlink(target, link)?;
        st.pending.push(PendingEntry {
            dir: parent_of(link),
            undo: Undo::Created(link.to_path_buf()),
        });
        Ok(())
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.check_power()?;
        self.inner.read(path)
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn Read + Send>> {
        self.check_power()?;
        self.inner.open_read(path)
    }

    fn len(&self, path: &Path) -> io::Result<Option<u64>> {
        self.check_power()?;
        self.inner.len(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        self.check_power()?;
        self.inner.list(dir)
    }

    fn read_link(&self, link: &Path) -> io::Result<Option<PathBuf>> {
        self.check_power()?;
        self.inner.read_link(link)
    }
}

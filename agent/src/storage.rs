//! The one door through which every disk write of the agent goes.
//!
//! The journal, the cache, the downloader and the files installer never touch `std::fs` for a
//! write: they call a [`Storage`]. In production that is [`FsStorage`] (real files, real fsync,
//! real rename, fsync of the directory). In tests it is a `FaultyStorage` (built only for tests
//! and with the `test-support` feature, never in the shipped agent), which counts every
//! mutating operation and injects a fault at the N-th one: an error, or a power loss after which
//! nothing is performed any more and (optionally) everything not yet made durable is dropped.
//! A test runs a scenario once to learn the number of mutating operations, then once for every
//! N from 1 to that number, and checks that the state found on disk afterwards is always
//! acceptable (old or new, never torn).
//!
//! The trait is synchronous and path based: every call is one small system call or a handful,
//! which the agent's single-threaded runtime can afford. Long loops (hashing a cached artifact,
//! a download, a copy) are written by the callers in chunks, yielding to the runtime between
//! chunks. The fsyncs of [`FsStorage`] may still take long (tens of milliseconds on a busy disk):
//! on a multi-threaded runtime they run in `block_in_place`, so agents that share a runtime
//! with other work (the demo: hundreds of agents and the fleet server in one process) do not
//! stall it.
//!
//! | operation | mutating (counted) |
//! |---|---|
//! | [`create_dir_all`](Storage::create_dir_all), [`create`](Storage::create), [`append`](Storage::append), [`truncate`](Storage::truncate), [`sync_file`](Storage::sync_file), [`rename`](Storage::rename), [`sync_dir`](Storage::sync_dir), [`remove_file`](Storage::remove_file), [`symlink`](Storage::symlink) | yes |
//! | [`read`](Storage::read), [`open_read`](Storage::open_read), [`len`](Storage::len), [`list`](Storage::list), [`read_link`](Storage::read_link) | no |

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[cfg(any(test, feature = "test-support"))]
mod faulty;
#[cfg(any(test, feature = "test-support"))]
pub use faulty::{Fault, FaultyStorage, Op};

/// A storage shared between the agent's modules.
pub type SharedStorage = Arc<dyn Storage>;

/// Disk operations of the agent. Every method that changes the disk is listed as "mutating" in
/// the [module documentation](self); reads are not counted by the tests' `FaultyStorage`.
pub trait Storage: fmt::Debug + Send + Sync {
    /// Creates a directory and its missing parents (no error when it exists).
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Creates a file, or truncates it to zero length when it exists.
    fn create(&self, path: &Path) -> io::Result<()>;
    /// Appends bytes at the end of an existing file.
    fn append(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// Cuts an existing file down to `len` bytes (no effect when it is not longer).
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    /// Makes a file's data and metadata durable (`fsync`).
    fn sync_file(&self, path: &Path) -> io::Result<()>;
    /// Renames `from` to `to` atomically, replacing `to` when it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes a directory's entries durable (`fsync` of the directory): needed after a rename,
    /// a create or a removal for it to survive a power loss.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Removes a file or a symlink.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Creates a symlink at `link` pointing to `target` (fails when `link` exists).
    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()>;
    /// Reads a whole (small) file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Opens a file for streaming reads.
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn Read + Send>>;
    /// The length of a file, or `None` when it does not exist.
    fn len(&self, path: &Path) -> io::Result<Option<u64>>;
    /// The names of a directory's entries (empty when the directory does not exist).
    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>>;
    /// The target of a symlink, or `None` when there is nothing at `link`.
    fn read_link(&self, link: &Path) -> io::Result<Option<PathBuf>>;
}

/// A failed step of [`replace_file`]: the step (`write`, `fsync`, `rename`), its path, why.
#[derive(Debug)]
pub(crate) struct ReplaceError {
    pub(crate) op: &'static str,
    pub(crate) path: PathBuf,
    pub(crate) source: io::Error,
}

/// Replaces `dir/name` with `bytes` atomically: writes `dir/tmp`, fsyncs it, renames it over
/// `dir/name`, fsyncs `dir`. A reader (or a restart after a power loss) sees the old file or
/// the new one, never a mix. A failure leaves the old file in place.
pub(crate) fn replace_file(
    st: &dyn Storage,
    dir: &Path,
    name: &str,
    tmp: &str,
    bytes: &[u8],
) -> Result<(), ReplaceError> {
    let tmp = dir.join(tmp);
    let path = dir.join(name);
    let err = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| ReplaceError { op, path, source }
    };
    st.create(&tmp).map_err(err("write", &tmp))?;
    st.append(&tmp, bytes).map_err(err("write", &tmp))?;
    st.sync_file(&tmp).map_err(err("fsync", &tmp))?;
    st.rename(&tmp, &path).map_err(err("rename", &tmp))?;
    st.sync_dir(dir).map_err(err("fsync", dir))
}

/// Runs `f`, a call that may block for long (an `fsync`: tens of milliseconds on a busy disk,
/// seconds on slow flash). On a multi-threaded tokio runtime the worker thread first hands its
/// other tasks to another thread (`block_in_place`), so that agents sharing a runtime with
/// other work (the demo and the end-to-end tests run hundreds of agents and the fleet server
/// in one process) do not stall it; anywhere else (the agent's own single-threaded runtime,
/// no runtime at all) `f` simply runs.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// The real file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct FsStorage;

impl FsStorage {
    /// The real file system, shared.
    pub fn shared() -> SharedStorage {
        Arc::new(FsStorage)
    }
}

fn not_found_is_none<T>(r: io::Result<T>) -> io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

impl Storage for FsStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn create(&self, path: &Path) -> io::Result<()> {
        File::create(path).map(drop)
    }

    fn append(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut f = OpenOptions::new().append(true).open(path)?;
        f.write_all(bytes)
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let f = OpenOptions::new().write(true).open(path)?;
        if f.metadata()?.len() > len {
            f.set_len(len)?;
        }
        Ok(())
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        // Opened for writing: some systems refuse fsync on a read-only descriptor.
        blocking(|| OpenOptions::new().write(true).open(path)?.sync_all())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        blocking(|| File::open(dir)?.sync_all())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        std::os::unix::fs::symlink(target, link)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn Read + Send>> {
        Ok(Box::new(File::open(path)?))
    }

    fn len(&self, path: &Path) -> io::Result<Option<u64>> {
        Ok(not_found_is_none(fs::metadata(path))?.map(|m| m.len()))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        let Some(entries) = not_found_is_none(fs::read_dir(dir))? else {
            return Ok(Vec::new());
        };
        let mut names = Vec::new();
        for entry in entries {
            names.push(entry?.file_name());
        }
        names.sort();
        Ok(names)
    }

    fn read_link(&self, link: &Path) -> io::Result<Option<PathBuf>> {
        not_found_is_none(fs::read_link(link))
    }
}

/// Bytes written between two background fsyncs of a long write ([`BackgroundSync`]).
pub(crate) const SYNC_EVERY: u64 = 16 * 1024 * 1024;

/// Makes a file that is being written (a download, a copy) reach the disk while it is written:
/// after every [`SYNC_EVERY`] bytes, an fsync of it starts on a blocking thread (one at a time)
/// and the writer goes on. The final fsync, which the writer still does before the file is
/// renamed into place, then finds only the last part to write, instead of the whole file
/// after the transfer. Only a speed-up: no durability decision rests on these fsyncs, and they
/// are mutating operations of the [`Storage`] like any other.
#[derive(Debug)]
pub(crate) struct BackgroundSync {
    storage: SharedStorage,
    path: PathBuf,
    next: u64,
    running: Option<std::sync::mpsc::Receiver<io::Result<()>>>,
}

impl BackgroundSync {
    /// For the file at `path`, `len` bytes long now.
    pub(crate) fn new(storage: SharedStorage, path: &Path, len: u64) -> Self {
        BackgroundSync {
            storage,
            path: path.to_path_buf(),
            next: len.saturating_add(SYNC_EVERY),
            running: None,
        }
    }

    /// The file is `len` bytes long now: starts an fsync when one is due and none runs. Fails
    /// with the error of an earlier fsync (the file's data may not reach the disk).
    pub(crate) fn wrote(&mut self, len: u64) -> io::Result<()> {
        if len < self.next {
            return Ok(());
        }
        if let Some(rx) = &self.running {
            match rx.try_recv() {
                Err(std::sync::mpsc::TryRecvError::Empty) => return Ok(()),
                Ok(result) => result?,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    return Err(io::Error::other("the background fsync ended abnormally"));
                }
            }
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let (storage, path) = (self.storage.clone(), self.path.clone());
        tokio::task::spawn_blocking(move || {
            // The receiver may be gone (the writer stopped): nothing waits for this answer.
            let _ = tx.send(storage.sync_file(&path));
        });
        self.running = Some(rx);
        self.next = len.saturating_add(SYNC_EVERY);
        Ok(())
    }

    /// Waits for the fsync in flight, if any, and returns its error: call it before the final
    /// fsync (an error an earlier fsync reported is not reported again).
    pub(crate) fn finish(mut self) -> io::Result<()> {
        match self.running.take() {
            None => Ok(()),
            Some(rx) => blocking(|| rx.recv())
                .map_err(|_| io::Error::other("the background fsync ended abnormally"))?,
        }
    }
}

/// Reads `path` to its end in chunks of `chunk` bytes, calling `f` on each and yielding to the
/// runtime between chunks (constant memory; keeps the single-threaded agent responsive).
pub(crate) async fn for_each_chunk(
    storage: &dyn Storage,
    path: &Path,
    chunk: usize,
    limit: Option<u64>,
    mut f: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<u64> {
    let mut reader = storage.open_read(path)?;
    let mut buf = vec![0u8; chunk.max(1)];
    let mut total = 0u64;
    loop {
        let want = match limit {
            Some(l) => usize::try_from(l - total)
                .unwrap_or(usize::MAX)
                .min(buf.len()),
            None => buf.len(),
        };
        if want == 0 {
            return Ok(total);
        }
        let n = match reader.read(buf.get_mut(..want).unwrap_or_default()) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(total);
        }
        f(buf.get(..n).unwrap_or_default())?;
        total += n as u64;
        tokio::task::yield_now().await;
    }
}

/// The SHA-256 of the file at `path`, streamed with [`for_each_chunk`] (constant memory).
pub(crate) async fn hash_file(
    storage: &dyn Storage,
    path: &Path,
    chunk: usize,
) -> io::Result<ota_core::digest::Digest> {
    let mut hasher = ota_core::digest::Hasher::new();
    for_each_chunk(storage, path, chunk, None, |c| {
        hasher.update(c);
        Ok(())
    })
    .await?;
    Ok(hasher.finish())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::blocking;

    /// Issue 19 ("under load, nothing is lost"): 500 demo agents and the fleet server share one
    /// runtime, and every journal write fsynced on a worker thread, so heartbeat acks waited
    /// for other agents' fsyncs and trials timed out. A blocking call must leave the other
    /// tasks of a multi-threaded runtime running, even with a single worker.
    #[test]
    fn issue19_an_fsync_does_not_stall_the_other_tasks_of_a_shared_runtime() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let other_task_ran = runtime.block_on(async {
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            tokio::spawn(async move {
                // Queued on this (only) worker, behind the blocking call below.
                tokio::spawn(async move {
                    let _ = tx.send(());
                });
                // The bound only ends a failing run; it is not what the test measures.
                blocking(|| rx.recv_timeout(Duration::from_secs(10)).is_ok())
            })
            .await
            .unwrap()
        });
        assert!(
            other_task_ran,
            "the other task waited for the blocking call"
        );
    }
}

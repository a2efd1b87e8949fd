//! File helpers: bounded reads, atomic writes with a chosen mode, and streaming a file in
//! constant memory.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use ota_core::delta::{ChunkIndex, ChunkParams};
use ota_core::digest::{Digest, Hasher};

use crate::error::CliError;
use crate::progress::Progress;

/// Size of the one buffer a file is streamed through.
///
/// 64 KiB: the buffer stays in the L2 cache between the read and the hash (measured: a 1 MiB
/// buffer hashes ~1.8x slower than 64 KiB on a SHA-NI x86_64, see `scripts/bench-release.sh`).
pub(crate) const STREAM_BUFFER: usize = 64 * 1024;

/// Reads a whole file of at most `limit` bytes; a larger file is refused without reading it all.
pub(crate) fn read_bounded(
    path: &Path,
    limit: u64,
    what: &'static str,
) -> Result<Vec<u8>, CliError> {
    let read_err = |source| CliError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > limit {
        return Err(CliError::TooLarge {
            path: path.to_path_buf(),
            what,
            limit,
        });
    }
    Ok(bytes)
}

/// How [`write_atomic`] treats an existing file at the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Overwrite {
    /// Replace it.
    Allow,
    /// Refuse with [`CliError::Exists`] (checked atomically by the final rename).
    Refuse,
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, created with
/// `mode` (so a private key is never readable by others, even briefly), fsynced, then renamed
/// over `path`; the directory is fsynced after the rename. A reader sees the old file or the
/// whole new one, never a torn write.
pub(crate) fn write_atomic(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    overwrite: Overwrite,
) -> Result<(), CliError> {
    let write_err = |source| CliError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = parent_dir(path);
    let mut builder = tempfile::Builder::new();
    builder.prefix(".ota-").suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(mode));
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut tmp = builder.tempfile_in(&dir).map_err(write_err)?;
    tmp.write_all(bytes).map_err(write_err)?;
    tmp.as_file().sync_all().map_err(write_err)?;
    let persisted = match overwrite {
        Overwrite::Allow => tmp.persist(path),
        Overwrite::Refuse => tmp.persist_noclobber(path),
    };
    if let Err(e) = persisted {
        return Err(if e.error.kind() == io::ErrorKind::AlreadyExists {
            CliError::Exists(path.to_path_buf())
        } else {
            write_err(e.error)
        });
    }
    sync_dir(&dir).map_err(write_err)
}

/// The directory a path lives in (`.` for a bare file name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Streams a file through one [`STREAM_BUFFER`]-sized buffer, handing each chunk to `sink`, with
/// a progress bar on a terminal. Returns the number of bytes read.
pub(crate) fn stream_file(
    path: &Path,
    label: &str,
    mut sink: impl FnMut(&[u8]) -> Result<(), CliError>,
) -> Result<u64, CliError> {
    let read_err = |source| CliError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if meta.is_dir() {
        return Err(read_err(io::Error::new(
            io::ErrorKind::IsADirectory,
            "is a directory",
        )));
    }
    let progress = Progress::new(meta.is_file().then_some(meta.len()), label);
    let mut buf = vec![0u8; STREAM_BUFFER];
    let mut total = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_err(e)),
        };
        let chunk = buf.get(..n).unwrap_or_default();
        sink(chunk)?;
        total += n as u64;
        progress.inc(n as u64);
    }
    progress.finish();
    Ok(total)
}

/// What [`hash_and_index`] read: the file's SHA-256, its size and its chunk index.
#[derive(Debug)]
pub(crate) struct Indexed {
    /// SHA-256 of the whole file.
    pub(crate) digest: Digest,
    /// Size in bytes.
    pub(crate) size: u64,
    /// The file's content-defined chunks ([`ota_agent::delta::index_reader`]).
    pub(crate) index: ChunkIndex,
}

/// Reads a file once, hashing it and cutting it into chunks with `params` together, with a
/// progress bar on a terminal. A read error is [`CliError::Read`]; a file the index cannot
/// describe (over [`ChunkIndex::MAX_BYTES`] of index) is a usage error.
pub(crate) fn hash_and_index(
    path: &Path,
    label: &str,
    params: ChunkParams,
) -> Result<Indexed, CliError> {
    let read_err = |source| CliError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if meta.is_dir() {
        return Err(read_err(io::Error::new(
            io::ErrorKind::IsADirectory,
            "is a directory",
        )));
    }
    let progress = Progress::new(meta.is_file().then_some(meta.len()), label);
    let mut tee = HashingReader {
        file,
        hasher: Hasher::new(),
        size: 0,
        progress: &progress,
        failed: false,
    };
    let index = match ota_agent::delta::index_reader(&mut tee, params, |_| {}) {
        Ok(index) => index,
        Err(e) if tee.failed => return Err(read_err(e)),
        Err(e) => {
            return Err(CliError::Usage(format!(
                "cannot build the chunk index of {}: {e} (sign with --no-chunk-index)",
                path.display()
            )));
        }
    };
    let HashingReader { hasher, size, .. } = tee;
    progress.finish();
    Ok(Indexed {
        digest: hasher.finish(),
        size,
        index,
    })
}

/// A reader that hashes and counts everything it reads from a file (so the chunker and the
/// hash share one pass), and remembers whether the file itself failed.
struct HashingReader<'p> {
    file: File,
    hasher: Hasher,
    size: u64,
    progress: &'p Progress,
    /// A read of the file failed (as opposed to the chunker refusing what it read).
    failed: bool,
}

impl Read for HashingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = loop {
            match self.file.read(buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.failed = true;
                    return Err(e);
                }
            }
        };
        self.hasher.update(buf.get(..n).unwrap_or_default());
        self.size += n as u64;
        self.progress.inc(n as u64);
        Ok(n)
    }
}

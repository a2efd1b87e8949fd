//! Images a delta copies chunks from: files that should hold a known release's artifact in
//! their first `size` bytes — the cached artifacts, and the `ab` installer's running slot
//! (a partition is usually larger than the image it holds, so only the release's signed
//! size is read).
//!
//! The chunk index of an image is kept in `cache/index/<digest>.chunks`, under the digest of
//! the release it holds, so an image is cut once per chunk-bound setting: whichever of the
//! cached artifact, the running slot or the signed index of a delta download wrote it first,
//! it describes the same bytes. An index is kept only for bytes that hash to the release's
//! digest: an image whose bytes differ (a damaged slot) is cut for this delta only, and its
//! index is never kept.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use ota_core::delta::{ChunkIndex, ChunkParams};
use ota_core::digest::{Digest, Hasher};

use super::chunker;
use crate::cache::Cache;

/// A file expected to hold the artifact `digest` (`size` bytes) at its start: a cached
/// artifact, or the running slot of the `ab` installer. Never trusted: every chunk copied from
/// it is re-hashed against the signed index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedImage {
    /// The file or block device.
    pub path: PathBuf,
    /// The release whose artifact the file should hold.
    pub digest: Digest,
    /// The artifact's signed size: the only bytes of the file that are read.
    pub size: u64,
}

/// Why an image offers no chunks, or not the ones its release would (logged; the delta goes
/// on with the other seeds, or the download in full).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SeedError {
    /// The file could not be opened or read.
    #[error("cannot read the seed {path}: {source}")]
    Read {
        /// The file or device.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file ends before the release's size.
    #[error("the seed {path} holds {len} bytes, release {digest} has {size}")]
    Short {
        /// The file or device.
        path: PathBuf,
        /// Bytes it holds.
        len: u64,
        /// The release it should hold.
        digest: Digest,
        /// The release's size.
        size: u64,
    },
    /// The file's first `size` bytes are not the release's artifact (damaged or overwritten):
    /// its chunks are offered for this delta, every copy re-hashed, and its index is not kept.
    #[error("the seed {path} does not hold release {digest} (sha256 {actual})")]
    NotTheRelease {
        /// The file or device.
        path: PathBuf,
        /// The release it should hold.
        digest: Digest,
        /// What its first `size` bytes hash to.
        actual: Digest,
    },
    /// A held chunk no longer hashes to its signed SHA-256 (the file was damaged or changed
    /// since it was indexed): it is fetched instead, nothing of it is written.
    #[error("the seed {path} changed at offset {offset}: that chunk is fetched instead")]
    Changed {
        /// The file or device.
        path: PathBuf,
        /// Where the chunk starts in it.
        offset: u64,
    },
}

impl SeedImage {
    /// The chunk index of the image cut with `params`: the kept one when it matches the
    /// bounds and size, else the image cut now, and kept when its bytes are the release (else
    /// [`SeedError::NotTheRelease`] is logged and the index serves this delta only).
    pub(crate) fn index(
        &self,
        cache: &Cache,
        params: ChunkParams,
    ) -> Result<ChunkIndex, SeedError> {
        let kept = cache.index_path(&self.digest);
        if let Ok(bytes) = std::fs::read(&kept)
            && let Ok(index) = ChunkIndex::from_cbor(&bytes)
            && index.params == params
            && index.artifact_size == self.size
        {
            return Ok(index);
        }
        let (index, actual) = self.cut(params)?;
        if actual != self.digest {
            let e = SeedError::NotTheRelease {
                path: self.path.clone(),
                digest: self.digest,
                actual,
            };
            tracing::warn!("delta: {e}; its index is not kept");
        } else if let Err(e) = cache.keep_index(&self.digest, &index.to_cbor()) {
            tracing::warn!("delta: cannot keep the index of {}: {e}", self.digest);
        }
        Ok(index)
    }

    /// Cuts the first `size` bytes into chunks and hashes them whole, in one read.
    fn cut(&self, params: ChunkParams) -> Result<(ChunkIndex, Digest), SeedError> {
        let read_err = |source| SeedError::Read {
            path: self.path.clone(),
            source,
        };
        let file = File::open(&self.path).map_err(read_err)?;
        let mut reader = HashingReader {
            inner: BufReader::with_capacity(1 << 16, file).take(self.size),
            hasher: Hasher::new(),
            len: 0,
        };
        let index = chunker::index_reader(&mut reader, params, |_| {}).map_err(read_err)?;
        if reader.len < self.size {
            return Err(SeedError::Short {
                path: self.path.clone(),
                len: reader.len,
                digest: self.digest,
                size: self.size,
            });
        }
        Ok((index, reader.hasher.finish()))
    }
}

/// The images of every cached artifact except `target`.
pub(crate) fn cached_images(cache: &Cache, target: &Digest) -> Vec<SeedImage> {
    let entries = cache.list().unwrap_or_else(|e| {
        tracing::warn!("delta: cannot list the cache: {e}");
        Vec::new()
    });
    entries
        .into_iter()
        .filter(|e| e.digest != *target)
        .map(|e| SeedImage {
            path: cache.path(&e.digest),
            digest: e.digest,
            size: e.size,
        })
        .collect()
}

/// The index of a whole file of unknown content (a `download.delta_seeds` entry), cut now.
pub(crate) fn file_index(path: &Path, params: ChunkParams) -> Result<ChunkIndex, SeedError> {
    chunker::index_file(path, params).map_err(|source| SeedError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Hashes and counts what passes through.
struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
    len: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let read = buf.get(..n).unwrap_or_default();
        self.hasher.update(read);
        self.len += read.len() as u64;
        Ok(n)
    }
}

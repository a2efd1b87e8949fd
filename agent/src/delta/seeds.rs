//! The chunks a device already holds: every cached artifact (cut with the new release's chunker
//! bounds; each artifact's index is kept in `cache/index/<digest>.chunks` so it is cut once),
//! the configured seed files (`download.delta_seeds`, e.g. the running root filesystem), and the
//! chunks already written to the artifact being built.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;

use ota_core::delta::{ChunkIndex, ChunkParams};
use ota_core::digest::Digest;

use super::chunker;
use crate::cache::Cache;

/// Most chunks remembered (about 60 bytes each: at most ~12 MB, or ~12 GiB of seed files at
/// the default 64 KiB average); chunks beyond it are simply not offered as seeds.
const MAX_SEED_CHUNKS: usize = 200_000;

/// Where one chunk's bytes are.
#[derive(Debug, Clone, Copy)]
struct Loc {
    file: usize,
    offset: u64,
    len: u32,
}

/// The device's own chunks, by SHA-256.
#[derive(Debug, Default)]
pub(crate) struct Seeds {
    files: Vec<PathBuf>,
    chunks: HashMap<[u8; 32], Loc>,
}

impl Seeds {
    /// The chunks of every cached artifact except `target`, and of every `extra` file, cut with
    /// `params`. Blocking (reads and hashes files); a file that cannot be read is skipped with a
    /// warning: seeds only save bytes, they are never trusted (each copy is re-hashed).
    pub(crate) fn gather(
        cache: &Cache,
        target: &Digest,
        params: ChunkParams,
        extra: &[PathBuf],
    ) -> Seeds {
        let mut seeds = Seeds::default();
        let entries = cache.list().unwrap_or_else(|e| {
            tracing::warn!("delta: cannot list the cache: {e}");
            Vec::new()
        });
        for entry in entries.iter().filter(|e| e.digest != *target) {
            let path = cache.path(&entry.digest);
            match cached_index(cache, &entry.digest, entry.size, params) {
                Ok(index) => seeds.add_index(path, &index),
                Err(e) => {
                    tracing::warn!(path = %path.display(), "delta: cannot index a cached artifact: {e}")
                }
            }
        }
        for path in extra {
            match chunker::index_file(path, params) {
                Ok(index) => seeds.add_index(path.clone(), &index),
                Err(e) => {
                    tracing::warn!(path = %path.display(), "delta: cannot index a seed file: {e}")
                }
            }
        }
        seeds
    }

    /// Registers a file and returns its number for [`add`](Self::add).
    pub(crate) fn add_file(&mut self, path: PathBuf) -> usize {
        self.files.push(path);
        self.files.len() - 1
    }

    /// Registers a chunk of `file` (the first location of equal chunks wins).
    pub(crate) fn add(&mut self, file: usize, offset: u64, len: u32, sha256: [u8; 32]) {
        if self.chunks.len() < MAX_SEED_CHUNKS {
            self.chunks
                .entry(sha256)
                .or_insert(Loc { file, offset, len });
        }
    }

    fn add_index(&mut self, path: PathBuf, index: &ChunkIndex) {
        let file = self.add_file(path);
        for (chunk, range) in index.chunks.iter().zip(index.ranges()) {
            self.add(file, range.start, chunk.len, chunk.sha256);
        }
    }

    /// Whether a chunk with this SHA-256 is held.
    pub(crate) fn contains(&self, sha256: &[u8; 32]) -> bool {
        self.chunks.contains_key(sha256)
    }

    /// Number of distinct chunks held.
    pub(crate) fn len(&self) -> usize {
        self.chunks.len()
    }

    /// Reads the held chunk `sha256` into `buf` and checks it: `Ok(false)` when it is not held
    /// or its bytes changed since it was indexed (then it must be fetched).
    pub(crate) fn read(&self, sha256: &[u8; 32], buf: &mut Vec<u8>) -> io::Result<bool> {
        let Some(loc) = self.chunks.get(sha256) else {
            return Ok(false);
        };
        let Some(path) = self.files.get(loc.file) else {
            return Ok(false);
        };
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(loc.offset))?;
        buf.clear();
        buf.resize(loc.len as usize, 0);
        match file.read_exact(buf) {
            Ok(()) => Ok(Digest::of(buf).0 == *sha256),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// The index of the cached artifact `digest` cut with `params`: the kept one when it matches,
/// else cut now and kept for next time.
fn cached_index(
    cache: &Cache,
    digest: &Digest,
    size: u64,
    params: ChunkParams,
) -> io::Result<ChunkIndex> {
    let path = cache.index_path(digest);
    if let Ok(bytes) = std::fs::read(&path)
        && let Ok(index) = ChunkIndex::from_cbor(&bytes)
        && index.params == params
        && index.artifact_size == size
    {
        return Ok(index);
    }
    let index = chunker::index_file(&cache.path(digest), params)?;
    if let Err(e) = cache.keep_index(digest, &index.to_cbor()) {
        tracing::warn!("delta: cannot keep the index of {digest}: {e}");
    }
    Ok(index)
}

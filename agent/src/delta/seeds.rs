//! The chunks a device already holds: every cached artifact and the `ab` installer's running
//! slot (images of known releases, [`super::image`]), the configured seed files
//! (`download.delta_seeds`, e.g. the running root filesystem), and the chunks already written
//! to the artifact being built. Only chunks the new index names are remembered.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;

use ota_core::delta::ChunkIndex;
use ota_core::digest::Digest;

use super::image::{SeedError, SeedImage, cached_images, file_index};
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

/// The SHA-256s of the chunks of the artifact being built, sorted: a seed chunk is remembered
/// only when it is one of them (32 bytes per chunk, for the time the seeds are gathered).
struct Wanted(Vec<[u8; 32]>);

impl Wanted {
    /// The chunks `index` names.
    fn of(index: &ChunkIndex) -> Wanted {
        let mut hashes: Vec<[u8; 32]> = index.chunks.iter().map(|c| c.sha256).collect();
        hashes.sort_unstable();
        hashes.dedup();
        Wanted(hashes)
    }

    fn contains(&self, sha256: &[u8; 32]) -> bool {
        self.0.binary_search(sha256).is_ok()
    }
}

impl Seeds {
    /// The wanted chunks of every cached artifact except `target`, of the running slot
    /// `slot` (when the `ab` installer runs one), and of every `extra` file, cut with the new
    /// index's bounds. Blocking (reads and hashes files); a seed that cannot be read is
    /// skipped with its [`SeedError`] logged: seeds only save bytes, they are never trusted
    /// (each copy is re-hashed).
    pub(crate) fn gather(
        cache: &Cache,
        target: &Digest,
        new: &ChunkIndex,
        slot: Option<SeedImage>,
        extra: &[PathBuf],
    ) -> Seeds {
        let wanted = Wanted::of(new);
        let mut seeds = Seeds::default();
        for image in cached_images(cache, target).into_iter().chain(slot) {
            match image.index(cache, new.params) {
                Ok(index) => seeds.add_index(image.path, &index, &wanted),
                Err(e) => tracing::warn!("delta: {e}"),
            }
        }
        for path in extra {
            match file_index(path, new.params) {
                Ok(index) => seeds.add_index(path.clone(), &index, &wanted),
                Err(e) => tracing::warn!("delta: {e}"),
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

    fn add_index(&mut self, path: PathBuf, index: &ChunkIndex, wanted: &Wanted) {
        let file = self.add_file(path);
        for (chunk, range) in index.chunks.iter().zip(index.ranges()) {
            if wanted.contains(&chunk.sha256) {
                self.add(file, range.start, chunk.len, chunk.sha256);
            }
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

    /// Reads the held chunk `sha256` into `buf` and checks it against its SHA-256: `Ok(false)`
    /// when it is not held; an error when it cannot be read or its bytes changed since it was
    /// indexed ([`SeedError::Changed`]). Either way the chunk must be fetched.
    pub(crate) fn read(&self, sha256: &[u8; 32], buf: &mut Vec<u8>) -> Result<bool, SeedError> {
        let Some(loc) = self.chunks.get(sha256) else {
            return Ok(false);
        };
        let Some(path) = self.files.get(loc.file) else {
            return Ok(false);
        };
        let read_err = |source| SeedError::Read {
            path: path.clone(),
            source,
        };
        let mut file = File::open(path).map_err(read_err)?;
        file.seek(SeekFrom::Start(loc.offset)).map_err(read_err)?;
        buf.clear();
        buf.resize(loc.len as usize, 0);
        let changed = || SeedError::Changed {
            path: path.clone(),
            offset: loc.offset,
        };
        match file.read_exact(buf) {
            Ok(()) if Digest::of(buf).0 == *sha256 => Ok(true),
            Ok(()) => Err(changed()),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(changed()),
            Err(e) => Err(read_err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use ota_core::delta::ChunkParams;

    use super::*;
    use crate::delta::chunker::index_reader;
    use crate::storage::FsStorage;
    use crate::test_support::pseudo_random_bytes as bytes;

    /// Issue 18, memory: the seed table holds the held chunks the new index names, not every
    /// chunk of every image (an unrelated cached release adds nothing).
    #[test]
    fn issue18_only_chunks_the_new_index_names_are_remembered() {
        let params = ChunkParams {
            min: 2048,
            avg: 8192,
            max: 32_768,
        };
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(FsStorage::shared(), dir.path()).unwrap();
        let old = bytes(400_000, 1);
        let unrelated = bytes(400_000, 4);
        let mut new = old[..200_000].to_vec();
        new.extend(bytes(100_000, 6));
        for b in [&old, &unrelated] {
            std::fs::write(cache.path(&Digest::of(b)), b).unwrap();
        }
        let new_index = index_reader(&new[..], params, |_| {}).unwrap();
        let old_index = index_reader(&old[..], params, |_| {}).unwrap();
        let named = |c: &&ota_core::delta::ChunkEntry| {
            new_index.chunks.iter().any(|n| n.sha256 == c.sha256)
        };
        let shared = old_index.chunks.iter().filter(named).count();
        assert!(shared > 0 && shared < old_index.chunks.len() / 2);
        let seeds = Seeds::gather(&cache, &Digest::of(&new), &new_index, None, &[]);
        assert_eq!(seeds.len(), shared);
    }
}

//! The content-addressed artifact cache.
//!
//! | path | content |
//! |---|---|
//! | `<data>/cache/<sha256 hex>` | a complete artifact, named by its digest |
//! | `<data>/cache/partial/<sha256 hex>.part` | a download in progress (a prefix of the artifact) |
//! | `<data>/cache/partial/<sha256 hex>.validator` | the HTTP validator (ETag or Last-Modified) of the partial's first response |
//! | `<data>/cache/index/<sha256 hex>.chunks` | the chunk index of a cached artifact (delta updates; rebuilt from the artifact when absent or stale) |
//!
//! An artifact enters the cache only through [`Cache::insert_from_partial`]: fsync of the
//! partial, atomic rename to its final name, fsync of the directory. So a name in the cache is
//! either absent or a complete file that was verified when it was written; [`Cache::rehash`]
//! re-checks it (bit rot, tampering) before an install from the cache. Which entries to keep is
//! the core machine's decision ([`Cache::evict`] executes it). All reads are streamed in
//! constant memory.

use std::io;
use std::path::{Path, PathBuf};

use ota_core::digest::Digest;

use crate::storage::{SharedStorage, hash_file};

/// The read size used to hash cached files.
pub const HASH_CHUNK: usize = 64 * 1024;

/// Why a cache operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// A disk operation failed.
    #[error("cache {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// [`Cache::insert_from_partial`] found no partial file for the digest.
    #[error("no partial download for {0}")]
    NoPartial(Digest),
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CacheError + use<> {
    let path = path.to_path_buf();
    move |source| CacheError::Io { op, path, source }
}

/// One complete artifact in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheEntry {
    /// Its name (its digest, unless the file was damaged).
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
}

/// The artifact cache under `<data>/cache` (see the [module documentation](self)).
#[derive(Debug, Clone)]
pub struct Cache {
    storage: SharedStorage,
    dir: PathBuf,
    partial_dir: PathBuf,
    index_dir: PathBuf,
}

impl Cache {
    /// The cache of the data directory `data_dir`; creates `cache/` and `cache/partial/`.
    pub fn open(storage: SharedStorage, data_dir: &Path) -> Result<Self, CacheError> {
        let dir = data_dir.join("cache");
        let partial_dir = dir.join("partial");
        let index_dir = dir.join("index");
        storage
            .create_dir_all(&partial_dir)
            .map_err(io_err("create directory", &partial_dir))?;
        Ok(Cache {
            storage,
            dir,
            partial_dir,
            index_dir,
        })
    }

    /// The storage the cache writes through.
    pub fn storage(&self) -> &SharedStorage {
        &self.storage
    }

    /// The cache directory (`<data>/cache`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the complete artifact `digest` lives (whether or not it is there).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.to_string())
    }

    /// Where a download of `digest` accumulates.
    pub fn partial_path(&self, digest: &Digest) -> PathBuf {
        self.partial_dir.join(format!("{digest}.part"))
    }

    /// Where the HTTP validator of a partial download of `digest` is kept.
    pub fn validator_path(&self, digest: &Digest) -> PathBuf {
        self.partial_dir.join(format!("{digest}.validator"))
    }

    /// Where the chunk index of the artifact `digest` is kept (see [`keep_index`](Self::keep_index)).
    pub fn index_path(&self, digest: &Digest) -> PathBuf {
        self.index_dir.join(format!("{digest}.chunks"))
    }

    /// Keeps the chunk index of the artifact `digest` (write to a temporary name, fsync,
    /// rename; `cache/index/` is made on first use). An index is only a hint: it is checked against the artifact's size and chunker
    /// bounds before use, and every chunk read through it is re-hashed.
    pub fn keep_index(&self, digest: &Digest, bytes: &[u8]) -> Result<(), CacheError> {
        let path = self.index_path(digest);
        let tmp = self.index_dir.join(format!("{digest}.chunks.tmp"));
        let st = &self.storage;
        st.create_dir_all(&self.index_dir)
            .map_err(io_err("create directory", &self.index_dir))?;
        st.create(&tmp).map_err(io_err("create", &tmp))?;
        st.append(&tmp, bytes).map_err(io_err("write", &tmp))?;
        st.sync_file(&tmp).map_err(io_err("fsync", &tmp))?;
        st.rename(&tmp, &path).map_err(io_err("rename", &tmp))
    }

    /// Whether a complete artifact named `digest` is present (not re-hashed: see
    /// [`rehash`](Self::rehash)).
    pub fn contains(&self, digest: &Digest) -> Result<bool, CacheError> {
        let path = self.path(digest);
        Ok(self
            .storage
            .len(&path)
            .map_err(io_err("stat", &path))?
            .is_some())
    }

    /// The complete artifacts present, sorted by digest. Files whose name is not a digest
    /// (left-overs) are skipped.
    pub fn list(&self) -> Result<Vec<CacheEntry>, CacheError> {
        let names = self
            .storage
            .list(&self.dir)
            .map_err(io_err("list", &self.dir))?;
        let mut out = Vec::new();
        for name in names {
            let Some(digest) = name.to_str().and_then(|s| s.parse::<Digest>().ok()) else {
                continue;
            };
            let path = self.path(&digest);
            if let Some(size) = self.storage.len(&path).map_err(io_err("stat", &path))? {
                out.push(CacheEntry { digest, size });
            }
        }
        Ok(out)
    }

    /// The length of the partial download of `digest`, or `None` when there is none.
    pub fn partial_len(&self, digest: &Digest) -> Result<Option<u64>, CacheError> {
        let path = self.partial_path(digest);
        self.storage.len(&path).map_err(io_err("stat", &path))
    }

    /// Streams the cached artifact `digest` through SHA-256: `Ok(true)` when it hashes to its
    /// name, `Ok(false)` when it does not or is absent. Constant memory; yields to the runtime
    /// between chunks.
    pub async fn rehash(&self, digest: &Digest) -> Result<bool, CacheError> {
        let path = self.path(digest);
        match hash_file(&*self.storage, &path, HASH_CHUNK).await {
            Ok(actual) => Ok(actual == *digest),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    /// The `HashCached` check: the cached artifact `digest` exists, is `size` bytes long and
    /// hashes to `digest`. A wrong size answers `false` without reading the file.
    pub async fn verify_entry(&self, digest: &Digest, size: u64) -> Result<bool, CacheError> {
        if self.has_size(digest, size)? {
            self.rehash(digest).await
        } else {
            Ok(false)
        }
    }

    /// Whether the cached artifact `digest` exists and is `size` bytes long (not read).
    pub fn has_size(&self, digest: &Digest, size: u64) -> Result<bool, CacheError> {
        let path = self.path(digest);
        Ok(self.storage.len(&path).map_err(io_err("stat", &path))? == Some(size))
    }

    /// Moves the (verified) partial download of `digest` into the cache: fsync of the partial,
    /// atomic rename to `<data>/cache/<digest>`, fsync of the cache directory; then removes its
    /// validator. The caller has checked the bytes (the downloader does, with the signed
    /// digest and size).
    pub fn insert_from_partial(&self, digest: &Digest) -> Result<PathBuf, CacheError> {
        let part = self.partial_path(digest);
        let dest = self.path(digest);
        let st = &self.storage;
        match st.sync_file(&part) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(CacheError::NoPartial(*digest));
            }
            Err(e) => return Err(io_err("fsync", &part)(e)),
        }
        st.rename(&part, &dest).map_err(io_err("rename", &part))?;
        st.sync_dir(&self.dir).map_err(io_err("fsync", &self.dir))?;
        self.remove_if_present(&self.validator_path(digest))?;
        Ok(dest)
    }

    /// Removes the partial download of `digest` and its validator (nothing to do if absent).
    pub fn remove_partial(&self, digest: &Digest) -> Result<(), CacheError> {
        self.remove_if_present(&self.partial_path(digest))?;
        self.remove_if_present(&self.validator_path(digest))
    }

    /// Removes the cached artifact `digest` and any partial download of it, durably (fsync of
    /// the cache directory). Evicting an absent entry is not an error.
    pub fn evict(&self, digest: &Digest) -> Result<(), CacheError> {
        let path = self.path(digest);
        let removed = self.remove_if_present(&path);
        self.remove_partial(digest)?;
        self.remove_if_present(&self.index_path(digest))?;
        removed?;
        self.storage
            .sync_dir(&self.dir)
            .map_err(io_err("fsync", &self.dir))
    }

    fn remove_if_present(&self, path: &Path) -> Result<(), CacheError> {
        match self.storage.remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", path)(e)),
        }
    }
}

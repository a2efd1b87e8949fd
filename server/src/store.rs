//! The artifact store: immutable blobs named by their SHA-256, on local files or S3.
//!
//! Uploads go through [`ArtifactUpload`], which hashes every chunk with core's
//! [`ArtifactVerifier`] *before* writing it, refuses the first chunk that passes the signed size,
//! and only makes the object visible when the whole artifact hashed to the signed digest: it is
//! written as a multipart upload (a staging file renamed into place on local disk, an S3
//! multipart upload completed at the end), and aborted on any error. Nothing half-written is
//! ever served. A second upload of a stored digest is verified but writes nothing.
//!
//! Reads stream in bounded chunks ([`ArtifactStore::get`]), with an optional byte range.

use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use ota_core::digest::Digest;
use ota_core::release::{ArtifactVerifier, ReleaseError};

use crate::config::StoreLocation;

/// Size of the parts an upload is written in (and so the memory it holds per upload).
const PART_SIZE: usize = 5 * 1024 * 1024;
/// Parts in flight at once per upload.
const MAX_PARTS_IN_FLIGHT: usize = 2;

/// Why the artifact store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not be set up (bad location, missing credentials).
    #[error("cannot open the artifact store: {0}")]
    Open(String),
    /// The underlying object store failed.
    #[error("artifact store error: {0}")]
    Backend(#[from] object_store::Error),
    /// No artifact with this digest is stored.
    #[error("artifact {0} not found")]
    NotFound(Digest),
    /// The requested range starts at or past the end of the artifact.
    #[error("range not satisfiable for an artifact of {size} bytes")]
    RangeNotSatisfiable {
        /// The artifact's size.
        size: u64,
    },
}

/// Why an upload was refused or failed. Nothing was made visible.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UploadError {
    /// The bytes are not the signed artifact: too long, too short or a different digest.
    #[error(transparent)]
    Verify(ReleaseError),
    /// The client's body failed (disconnect, malformed multipart).
    #[error("upload body failed: {0}")]
    Body(String),
    /// Writing to the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The artifact store.
#[derive(Clone)]
pub struct ArtifactStore {
    inner: Arc<dyn ObjectStore>,
    describe: String,
}

impl fmt::Debug for ArtifactStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ArtifactStore({})", self.describe)
    }
}

/// A streamed artifact (or a range of it).
pub struct ArtifactBody {
    /// The artifact's full size.
    pub size: u64,
    /// The byte range this body covers.
    pub range: Range<u64>,
    /// The bytes, in bounded chunks.
    pub stream: BoxStream<'static, Result<Bytes, StoreError>>,
}

impl fmt::Debug for ArtifactBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArtifactBody")
            .field("size", &self.size)
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

/// What a finished upload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PutOutcome {
    /// The artifact is now stored.
    Stored,
    /// It was already stored; the upload was verified and discarded.
    AlreadyPresent,
}

impl ArtifactStore {
    /// Opens the store `location` names (creating a local directory if needed).
    pub fn open(location: &StoreLocation) -> Result<Self, StoreError> {
        match location {
            StoreLocation::Local(dir) => Self::local(dir),
            StoreLocation::S3 {
                bucket,
                prefix,
                region,
                endpoint,
                allow_http,
            } => {
                let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
                if let Some(region) = region {
                    builder = builder.with_region(region);
                }
                if let Some(endpoint) = endpoint {
                    builder = builder.with_endpoint(endpoint);
                }
                if *allow_http {
                    builder = builder.with_allow_http(true);
                }
                let s3 = builder
                    .build()
                    .map_err(|e| StoreError::Open(e.to_string()))?;
                let describe = format!("s3://{bucket}/{prefix}");
                let inner: Arc<dyn ObjectStore> = if prefix.is_empty() {
                    Arc::new(s3)
                } else {
                    Arc::new(PrefixStore::new(s3, prefix.as_str()))
                };
                Ok(ArtifactStore { inner, describe })
            }
        }
    }

    /// A store of files under `dir` (created if missing). Staging files of uploads a killed
    /// server left behind (`<sha256>#<n>`) are removed: no upload runs before the store is
    /// opened, and a local store belongs to one server.
    pub fn local(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Open(format!("{}: {e}", dir.display())))?;
        remove_staging_files(dir);
        let fs = LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| StoreError::Open(format!("{}: {e}", dir.display())))?;
        Ok(ArtifactStore {
            inner: Arc::new(fs),
            describe: format!("file://{}", dir.display()),
        })
    }

    /// A store over any object store (tests, in-memory stores).
    pub fn from_object_store(inner: Arc<dyn ObjectStore>, describe: impl Into<String>) -> Self {
        ArtifactStore {
            inner,
            describe: describe.into(),
        }
    }

    /// Where it is, for logs (`file:///...`, `s3://bucket/prefix`).
    pub fn describe(&self) -> &str {
        &self.describe
    }

    fn path(digest: &Digest) -> ObjectPath {
        ObjectPath::from(digest.to_string())
    }

    /// The size of artifact `digest`, or `None` if it is not stored.
    pub async fn head(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        match self.inner.head(&Self::path(digest)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Streams artifact `digest`, or the bytes `range` of it (its end is clamped to the size).
    /// An empty range, or one starting at or past the end, is
    /// [`StoreError::RangeNotSatisfiable`].
    pub async fn get(
        &self,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<ArtifactBody, StoreError> {
        let size = self
            .head(digest)
            .await?
            .ok_or(StoreError::NotFound(*digest))?;
        let range = match range {
            None => 0..size,
            Some(r) if r.start >= size || r.start >= r.end => {
                return Err(StoreError::RangeNotSatisfiable { size });
            }
            Some(r) => r.start..r.end.min(size),
        };
        if range.is_empty() {
            // An empty artifact: nothing to fetch (stores refuse empty ranges).
            return Ok(ArtifactBody {
                size,
                range,
                stream: futures_util::stream::empty().boxed(),
            });
        }
        let options = GetOptions {
            range: Some(GetRange::Bounded(range.clone())),
            ..GetOptions::default()
        };
        let result = match self.inner.get_opts(&Self::path(digest), options).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Err(StoreError::NotFound(*digest)),
            Err(e) => return Err(e.into()),
        };
        let stream = result
            .into_stream()
            .map(|chunk| chunk.map_err(StoreError::from))
            .boxed();
        Ok(ArtifactBody {
            size,
            range,
            stream,
        })
    }

    /// Starts a verified upload of the artifact `verifier` expects.
    pub async fn begin_upload(
        &self,
        verifier: ArtifactVerifier,
        digest: Digest,
    ) -> Result<ArtifactUpload, StoreError> {
        let path = Self::path(&digest);
        let writer = if self.head(&digest).await?.is_some() {
            None
        } else {
            let upload = self.inner.put_multipart(&path).await?;
            Some(WriteMultipart::new_with_chunk_size(upload, PART_SIZE))
        };
        Ok(ArtifactUpload {
            store: self.clone(),
            path,
            verifier,
            writer,
        })
    }
}

/// An upload in progress: feed it with [`write`](Self::write), then
/// [`finish`](Self::finish). Dropping it without finishing discards what was written.
pub struct ArtifactUpload {
    store: ArtifactStore,
    path: ObjectPath,
    verifier: ArtifactVerifier,
    /// `None` when the artifact is already stored: the bytes are only verified.
    writer: Option<WriteMultipart>,
}

impl fmt::Debug for ArtifactUpload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArtifactUpload")
            .field("path", &self.path)
            .field("bytes_seen", &self.verifier.bytes_seen())
            .field("already_present", &self.writer.is_none())
            .finish()
    }
}

impl ArtifactUpload {
    /// Bytes accepted so far.
    pub fn bytes_seen(&self) -> u64 {
        self.verifier.bytes_seen()
    }

    /// Hashes and writes the next chunk. A chunk that passes the signed size is refused
    /// before anything of it is written; the caller should then [`abort`](Self::abort).
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), UploadError> {
        self.verifier.update(chunk).map_err(UploadError::Verify)?;
        if let Some(writer) = &mut self.writer {
            writer
                .wait_for_capacity(MAX_PARTS_IN_FLIGHT)
                .await
                .map_err(StoreError::from)?;
            writer.write(chunk);
        }
        Ok(())
    }

    /// Checks size and digest; only then makes the artifact visible. On any error the upload
    /// is aborted.
    pub async fn finish(self) -> Result<PutOutcome, UploadError> {
        let ArtifactUpload {
            store,
            path,
            verifier,
            writer,
        } = self;
        let size = verifier.bytes_seen();
        if let Err(e) = verifier.finish() {
            if let Some(writer) = writer {
                let _ = writer.abort().await;
            }
            return Err(UploadError::Verify(e));
        }
        let Some(writer) = writer else {
            return Ok(PutOutcome::AlreadyPresent);
        };
        if size == 0 {
            // A multipart upload of zero parts is refused by some stores: put the empty object.
            let _ = writer.abort().await;
            store
                .inner
                .put(&path, PutPayload::default())
                .await
                .map_err(StoreError::from)?;
            return Ok(PutOutcome::Stored);
        }
        writer.finish().await.map_err(StoreError::from)?;
        Ok(PutOutcome::Stored)
    }

    /// Discards the upload.
    pub async fn abort(self) {
        if let Some(writer) = self.writer {
            let _ = writer.abort().await;
        }
    }
}

/// Removes the staging files (`<sha256 hex>#<n>`, the local store's multipart uploads) in
/// `dir`; returns how many. Failures are logged, not fatal: a leftover only wastes space.
fn remove_staging_files(dir: &Path) -> usize {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!("cannot list {} for stale uploads: {e}", dir.display());
            return 0;
        }
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some((digest, n)) = name.to_str().and_then(|n| n.split_once('#')) else {
            continue;
        };
        let staging = digest.parse::<Digest>().is_ok()
            && !n.is_empty()
            && n.bytes().all(|b| b.is_ascii_digit());
        if !staging {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => removed += 1,
            Err(e) => tracing::warn!("cannot remove stale upload {}: {e}", entry.path().display()),
        }
    }
    if removed > 0 {
        tracing::info!(
            "removed {removed} stale upload staging file(s) in {}",
            dir.display()
        );
    }
    removed
}

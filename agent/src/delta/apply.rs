//! One delta download: fetch and check the signed chunk index, then build the artifact in the
//! partial file, chunk by chunk, copying what the device holds and fetching the rest with
//! Range requests. Every chunk is checked against its signed SHA-256 before it is written, so
//! a hostile mirror is caught at its first wrong chunk; the downloader's streaming verifier
//! checks the whole artifact at the end as for a full download.
//!
//! Any failure returns a [`DeltaError`]; the downloader then continues with a plain download
//! from the end of the chunks already written (they are verified, so nothing is lost).

use std::path::PathBuf;
use std::sync::Arc;

use ota_core::delta::{self, ChunkIndex, ChunkIndexError, PlanLimits, Step};
use ota_core::digest::Digest;
use ota_core::release::ChunkIndexRef;
use reqwest::StatusCode;
use reqwest::header::RANGE;

use super::seeds::Seeds;
use crate::download::{
    Cursor, DownloadError, DownloadRequest, Downloader, KeptPrefix, Progress, RateWindow,
    check_content_range,
};

/// Why a delta download stopped (the downloader falls back to a full download).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeltaError {
    /// The artifact URL does not end in the artifact's digest, so the index's URL (the same
    /// location named by the index's digest) cannot be derived.
    #[error("the artifact URL does not end in its digest: no index URL")]
    NoIndexUrl,
    /// The index could not be fetched.
    #[error("chunk index: HTTP status {0}")]
    IndexStatus(u16),
    /// The index server sent more bytes than the signed index size.
    #[error("chunk index longer than its signed size of {0} bytes")]
    IndexTooLong(u64),
    /// The index bytes were refused (wrong digest, malformed, out of bounds).
    #[error("chunk index refused: {0}")]
    Index(#[from] ChunkIndexError),
    /// The index describes an artifact of another size than the signed one.
    #[error("chunk index covers {index} bytes, the signed artifact has {signed}")]
    IndexSize {
        /// Size in the index.
        index: u64,
        /// Signed artifact size.
        signed: u64,
    },
    /// The delta would fetch as many bytes as the rest of a full download.
    #[error("a delta would fetch {delta} bytes, a full download {full}")]
    NotWorthIt {
        /// Bytes the delta would fetch.
        delta: u64,
        /// Bytes a full download would fetch.
        full: u64,
    },
    /// The mirror answered a Range request with something else than 206.
    #[error("range request answered with HTTP status {0}")]
    RangeRefused(u16),
    /// A fetched chunk's bytes do not match the signed index: a hostile or broken mirror. The
    /// chunk was not written.
    #[error("chunk {chunk} from the mirror does not match its signed digest")]
    ChunkMismatch {
        /// The chunk's position in the index.
        chunk: usize,
    },
    /// A range body ended before its chunks were complete, or went past them.
    #[error("range body of {got} bytes, expected {expected}")]
    BodyLength {
        /// Bytes received.
        got: u64,
        /// Bytes asked for.
        expected: u64,
    },
    /// Transport, storage or verification failure while building the artifact.
    #[error(transparent)]
    Download(#[from] DownloadError),
}

/// What a completed delta cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeltaStats {
    /// Bytes of the chunk index fetched.
    pub index_bytes: u64,
    /// Bytes of chunks fetched.
    pub fetched_bytes: u64,
    /// Bytes of chunks copied from the device's own files.
    pub copied_bytes: u64,
    /// Range requests made.
    pub requests: u64,
}

/// The URL of the chunk index beside `artifact_url`: its last path segment (the artifact's
/// digest, as `/artifacts/{sha256}` names it on the fleet server and content-addressed
/// mirrors) replaced by the index's digest. `None` when the URL does not end in the digest.
pub fn index_url(artifact_url: &str, artifact: &Digest, index: &Digest) -> Option<String> {
    let mut url = reqwest::Url::parse(artifact_url).ok()?;
    let last = url.path_segments()?.next_back()?.to_owned();
    if !last.eq_ignore_ascii_case(&artifact.to_string()) {
        return None;
    }
    url.path_segments_mut().ok()?.pop().push(&index.to_string());
    Some(url.into())
}

/// Bytes of the first `chunks` chunks of `index` that `seeds` hold.
fn held_bytes(index: &ChunkIndex, chunks: usize, seeds: &Seeds) -> u64 {
    index
        .chunks
        .iter()
        .take(chunks)
        .filter(|chunk| seeds.contains(&chunk.sha256))
        .map(|chunk| u64::from(chunk.len))
        .sum()
}

impl Downloader {
    /// Builds `req`'s artifact into its partial file by delta, from `cursor` on (see the
    /// [module documentation](self)). `received` counts every body byte, index included.
    pub(crate) async fn delta(
        &self,
        req: &DownloadRequest,
        index_ref: ChunkIndexRef,
        cursor: &mut Cursor,
        received: &mut u64,
        kept: &mut KeptPrefix,
        progress: &mut impl FnMut(Progress),
    ) -> Result<DeltaStats, DeltaError> {
        let url =
            index_url(&req.url, &req.digest, &index_ref.digest()).ok_or(DeltaError::NoIndexUrl)?;
        let bytes = self.fetch_index(&url, index_ref.size, received).await?;
        // Shared with the blocking task that gathers the seeds (the index may be 8 MiB).
        let index = Arc::new(ChunkIndex::from_signed_cbor(&bytes, index_ref.digest())?);
        if index.artifact_size != req.size {
            return Err(DeltaError::IndexSize {
                index: index.artifact_size,
                signed: req.size,
            });
        }
        let mut stats = DeltaStats {
            index_bytes: bytes.len() as u64,
            ..DeltaStats::default()
        };
        drop(bytes);
        if let Err(e) = self.cache.keep_index(&req.digest, &index.to_cbor()) {
            tracing::warn!("delta: cannot keep the index of {}: {e}", req.digest);
        }

        // Resume at a chunk boundary: the partial's whole chunks stay (they were verified).
        let (_, boundary) = index.whole_chunks_within(cursor.offset);
        if boundary < cursor.offset {
            *cursor = self
                .resume_point(&req.clone().with_resume_from(boundary))
                .await?;
        }
        let (done_chunks, start) = index.whole_chunks_within(cursor.offset);
        let part = self.cache.partial_path(&req.digest);
        if start == 0 {
            self.start_partial(&req.digest, &reqwest::header::HeaderMap::new())?;
        }

        let mut seeds = self.gather_seeds(req, &index).await?;
        // The kept prefix was built by an earlier attempt: the chunks the device's own files
        // hold were copied then, not fetched (reported as such: `Downloaded::fetched_bytes`).
        kept.len = kept.len.min(start);
        kept.copied = held_bytes(&index, done_chunks, &seeds);
        let partial = seeds.add_file(part.clone());
        for (chunk, range) in index.chunks.iter().zip(index.ranges()).take(done_chunks) {
            seeds.add(partial, range.start, chunk.len, chunk.sha256);
        }
        let plan = delta::plan(
            &index,
            done_chunks,
            |h| seeds.contains(h),
            PlanLimits::DEFAULT,
        );
        let full = req.size - start;
        if plan.fetch_bytes >= full {
            return Err(DeltaError::NotWorthIt {
                delta: plan.fetch_bytes,
                full,
            });
        }
        tracing::info!(
            digest = %req.digest,
            seed_chunks = seeds.len(),
            fetch = plan.fetch_bytes,
            copy = plan.copy_bytes,
            requests = plan.requests(),
            "delta download"
        );

        let mut buf = Vec::new();
        for step in plan.steps {
            let (chunks, bytes) = match step {
                Step::Copy { chunk } => {
                    let Some(entry) = index.chunks.get(chunk) else {
                        break;
                    };
                    let held = seeds.read(&entry.sha256, &mut buf).unwrap_or_else(|e| {
                        tracing::warn!("delta: {e}");
                        false
                    });
                    let start = cursor.offset;
                    if held {
                        stats.copied_bytes += u64::from(entry.len);
                        self.write_chunk(req, &part, &buf, cursor, progress)?;
                        seeds.add(partial, start, entry.len, entry.sha256);
                        continue;
                    }
                    // The seed changed since it was cut, or cannot be read: fetch this chunk.
                    (chunk..chunk + 1, start..start + u64::from(entry.len))
                }
                Step::Fetch { chunks, bytes } => (chunks, bytes),
            };
            self.fetch_run(
                req,
                &index,
                chunks.clone(),
                bytes,
                cursor,
                received,
                progress,
                &mut stats,
            )
            .await?;
            // A later repeat of these chunks is copied from the partial.
            let written = index.chunks.iter().zip(index.ranges());
            for (entry, range) in written.skip(chunks.start).take(chunks.len()) {
                seeds.add(partial, range.start, entry.len, entry.sha256);
            }
        }
        Ok(stats)
    }

    /// The device's own files that hold chunks of `index` (cached artifacts, the running
    /// slot, the configured extra seeds), gathered on a blocking task.
    async fn gather_seeds(
        &self,
        req: &DownloadRequest,
        index: &Arc<ChunkIndex>,
    ) -> Result<Seeds, DownloadError> {
        let cache = self.cache.clone();
        let (digest, slot, extra) = (
            req.digest,
            req.running_slot.clone(),
            self.delta_seeds.clone(),
        );
        let new = Arc::clone(index);
        tokio::task::spawn_blocking(move || Seeds::gather(&cache, &digest, &new, slot, &extra))
            .await
            .map_err(|e| DownloadError::Storage {
                op: "index seeds",
                path: PathBuf::new(),
                source: std::io::Error::other(e),
            })
    }

    /// For a partial download found complete (the power went after its last write): the bytes
    /// of it the device's own files hold — a delta copied them, it did not fetch them. The
    /// chunk index is the one kept in the cache, else fetched again (counted in `received`).
    /// 0 when the release names no index or it cannot be had.
    pub(crate) async fn copied_in_complete_partial(
        &self,
        req: &DownloadRequest,
        received: &mut u64,
    ) -> u64 {
        let Some(index_ref) = req.chunk_index else {
            return 0;
        };
        let kept = self
            .cache
            .storage()
            .read(&self.cache.index_path(&req.digest));
        let index = match kept
            .ok()
            .and_then(|bytes| ChunkIndex::from_signed_cbor(&bytes, index_ref.digest()).ok())
        {
            Some(index) => index,
            None => {
                let Some(url) = index_url(&req.url, &req.digest, &index_ref.digest()) else {
                    return 0;
                };
                let fetched = self.fetch_index(&url, index_ref.size, received).await;
                match fetched.map(|b| ChunkIndex::from_signed_cbor(&b, index_ref.digest())) {
                    Ok(Ok(index)) => index,
                    _ => return 0,
                }
            }
        };
        let index = Arc::new(index);
        match self.gather_seeds(req, &index).await {
            Ok(seeds) => held_bytes(&index, index.chunks.len(), &seeds),
            Err(e) => {
                tracing::warn!("delta: {e}");
                0
            }
        }
    }

    /// GETs the index, at most `size` bytes.
    async fn fetch_index(
        &self,
        url: &str,
        size: u64,
        received: &mut u64,
    ) -> Result<Vec<u8>, DeltaError> {
        let mut response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(DownloadError::from_reqwest)?;
        if response.status() != StatusCode::OK {
            return Err(DeltaError::IndexStatus(response.status().as_u16()));
        }
        let mut bytes = Vec::new();
        let mut window = RateWindow::start();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(DownloadError::from_reqwest)?
        {
            window.check(self.min_rate, chunk.len() as u64)?;
            *received += chunk.len() as u64;
            if bytes.len() as u64 + chunk.len() as u64 > size {
                return Err(DeltaError::IndexTooLong(size));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }

    /// Fetches the neighbouring `chunks` (artifact bytes `bytes`) with one Range request,
    /// checking and writing each chunk as it completes.
    #[allow(clippy::too_many_arguments)]
    async fn fetch_run(
        &self,
        req: &DownloadRequest,
        index: &ChunkIndex,
        chunks: std::ops::Range<usize>,
        bytes: std::ops::Range<u64>,
        cursor: &mut Cursor,
        received: &mut u64,
        progress: &mut impl FnMut(Progress),
        stats: &mut DeltaStats,
    ) -> Result<(), DeltaError> {
        let part = self.cache.partial_path(&req.digest);
        let expected = bytes.end - bytes.start;
        let mut response = self
            .client
            .get(&req.url)
            .header(RANGE, format!("bytes={}-{}", bytes.start, bytes.end - 1))
            .send()
            .await
            .map_err(DownloadError::from_reqwest)?;
        if response.status() != StatusCode::PARTIAL_CONTENT {
            return Err(DeltaError::RangeRefused(response.status().as_u16()));
        }
        check_content_range(response.headers(), bytes.start)?;
        stats.requests += 1;
        let mut entries = index
            .chunks
            .iter()
            .enumerate()
            .skip(chunks.start)
            .take(chunks.len());
        let mut current = entries.next();
        let mut buf: Vec<u8> = Vec::new();
        let mut got = 0u64;
        let mut window = RateWindow::start();
        while let Some(body) = response
            .chunk()
            .await
            .map_err(DownloadError::from_reqwest)?
        {
            window.check(self.min_rate, body.len() as u64)?;
            *received += body.len() as u64;
            got += body.len() as u64;
            if got > expected {
                return Err(DeltaError::BodyLength { got, expected });
            }
            let mut rest: &[u8] = &body;
            while let Some((i, entry)) = current {
                let want = entry.len as usize - buf.len();
                let (head, tail) = rest.split_at(want.min(rest.len()));
                buf.extend_from_slice(head);
                rest = tail;
                if buf.len() < entry.len as usize {
                    break;
                }
                if Digest::of(&buf).0 != entry.sha256 {
                    return Err(DeltaError::ChunkMismatch { chunk: i });
                }
                stats.fetched_bytes += u64::from(entry.len);
                self.write_chunk(req, &part, &buf, cursor, progress)?;
                buf.clear();
                current = entries.next();
            }
        }
        if got != expected {
            return Err(DeltaError::BodyLength { got, expected });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue18_the_index_url_replaces_the_artifact_digest() {
        let a = Digest([0xaa; 32]);
        let i = Digest([0x11; 32]);
        let url = format!("https://mirror.example/ota/artifacts/{a}?x=1");
        assert_eq!(
            index_url(&url, &a, &i).as_deref(),
            Some(format!("https://mirror.example/ota/artifacts/{i}?x=1").as_str())
        );
        assert_eq!(index_url("https://mirror.example/fw.bin", &a, &i), None);
        assert_eq!(index_url("not a url", &a, &i), None);
    }
}

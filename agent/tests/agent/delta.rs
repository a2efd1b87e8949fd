//! Delta downloads (issue 18) against a real HTTP server serving an artifact and its chunk
//! index at `/artifacts/{sha256}`, as the fleet server and content-addressed mirrors do.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ota_agent::cache::Cache;
use ota_agent::delta::{SeedImage, index_reader};
use ota_agent::download::{DownloadConfig, DownloadRequest, Downloader, ErrorClass};
use ota_agent::storage::{Fault, FaultyStorage, FsStorage, SharedStorage};
use ota_core::delta::{ChunkIndex, ChunkParams};
use ota_core::digest::Digest;
use ota_core::release::ChunkIndexRef;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use crate::util::{artifact, read_head, respond, tempdir};

/// How the delta server misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault18 {
    /// A well-behaved mirror.
    None,
    /// Flips a byte in every bounded range (`bytes=a-b`) response: a hostile mirror.
    TamperRanges,
    /// Flips a byte in every response of the artifact.
    TamperAll,
    /// Ignores Range: 200 with the whole body.
    IgnoreRange,
    /// Serves other bytes at the index's address.
    WrongIndex,
}

/// A request as the delta server saw it: the path's first 8 hex characters and the Range.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hit {
    path: String,
    range: Option<String>,
}

pub struct Mirror {
    pub url: String,
    pub index_ref: ChunkIndexRef,
    sent: Arc<AtomicU64>,
    hits: Arc<Mutex<Vec<Hit>>>,
}

impl Mirror {
    fn request(&self, body: &[u8]) -> DownloadRequest {
        DownloadRequest::new(self.url.clone(), Digest::of(body), body.len() as u64)
            .with_chunk_index(Some(self.index_ref))
    }
    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }
}

/// Serves `body` and its chunk index (cut with `params`) on 127.0.0.1:0.
pub async fn mirror(body: Vec<u8>, params: ChunkParams, fault: Fault18) -> Mirror {
    let index = index_reader(&body[..], params, |_| {}).unwrap().to_cbor();
    let index_ref = ChunkIndexRef {
        sha256: Digest::of(&index).0,
        size: index.len() as u64,
    };
    let served_index = if fault == Fault18::WrongIndex {
        let mut other = index.clone();
        other[10] ^= 1;
        other
    } else {
        index.clone()
    };
    let digest = Digest::of(&body);
    let files: Arc<HashMap<String, (Vec<u8>, bool)>> = Arc::new(HashMap::from([
        (format!("/artifacts/{digest}"), (body, true)),
        (
            format!("/artifacts/{}", Digest::of(&index)),
            (served_index, false),
        ),
    ]));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let hits = Arc::new(Mutex::new(Vec::new()));
    let (s, h) = (sent.clone(), hits.clone());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (files, sent, hits) = (files.clone(), s.clone(), h.clone());
            tokio::spawn(async move {
                let Some(req) = read_head(&mut socket).await else {
                    return;
                };
                let range = req.header("Range");
                hits.lock().unwrap().push(Hit {
                    path: req.path.trim_start_matches("/artifacts/")[..8].to_owned(),
                    range: range.clone(),
                });
                let Some((body, is_artifact)) = files.get(&req.path) else {
                    respond(&mut socket, 404, &[("Content-Length", "0".into())], b"").await;
                    return;
                };
                let total = body.len();
                let parsed = range
                    .as_deref()
                    .and_then(|r| r.strip_prefix("bytes="))
                    .and_then(|r| r.split_once('-'))
                    .and_then(|(a, b)| {
                        let a: usize = a.parse().ok()?;
                        let b = if b.is_empty() {
                            total - 1
                        } else {
                            b.parse().ok()?
                        };
                        Some((a, b.min(total - 1)))
                    })
                    .filter(|_| fault != Fault18::IgnoreRange);
                let bounded = range.as_deref().is_some_and(|r| !r.ends_with('-'));
                let (status, mut slice, extra) = match parsed {
                    Some((a, b)) => (
                        206,
                        body[a..=b].to_vec(),
                        vec![("Content-Range", format!("bytes {a}-{b}/{total}"))],
                    ),
                    None => (200, body.clone(), vec![]),
                };
                let tamper = *is_artifact
                    && (fault == Fault18::TamperAll || (fault == Fault18::TamperRanges && bounded));
                if tamper && !slice.is_empty() {
                    let i = slice.len() / 2;
                    slice[i] ^= 0x40;
                }
                let mut headers = vec![("Content-Length", slice.len().to_string())];
                headers.extend(extra);
                respond(&mut socket, status, &headers, &slice).await;
                sent.fetch_add(slice.len() as u64, Ordering::SeqCst);
                let _ = socket.shutdown().await;
            });
        }
    });
    Mirror {
        url: format!("http://{addr}/artifacts/{digest}"),
        index_ref,
        sent,
        hits,
    }
}

fn downloader_on(storage: SharedStorage, data: &Path) -> Downloader {
    let cache = Cache::open(storage, data).unwrap();
    Downloader::new(cache, &DownloadConfig::new()).unwrap()
}

/// Puts `bytes` in the cache of `data` as the agent does (`cache/<sha256>`).
fn cache_artifact(data: &Path, bytes: &[u8]) {
    let cache = Cache::open(FsStorage::shared(), data).unwrap();
    fs::write(cache.path(&Digest::of(bytes)), bytes).unwrap();
}

#[test]
fn issue18_an_insertion_changes_only_the_chunks_around_it() {
    let params = ChunkParams::DEFAULT;
    let old = artifact(2 << 20, 7);
    let mut new = old.clone();
    new.splice(1 << 20..1 << 20, artifact(1000, 9));
    let a = index_reader(&old[..], params, |_| {}).unwrap();
    let b = index_reader(&new[..], params, |_| {}).unwrap();
    assert_eq!(a.artifact_size, old.len() as u64);
    assert_eq!(b.artifact_size, new.len() as u64);
    let known: std::collections::HashSet<_> = a.chunks.iter().map(|c| c.sha256).collect();
    let missing: u64 = b
        .chunks
        .iter()
        .filter(|c| !known.contains(&c.sha256))
        .map(|c| u64::from(c.len))
        .sum();
    assert!(missing > 0, "the inserted bytes are new");
    assert!(
        missing <= 2 * u64::from(params.max),
        "an insertion re-cuts at most the chunks around it, not {missing} bytes"
    );
}

#[test]
fn issue18_bad_chunker_parameters_are_an_error_not_a_panic() {
    let params = ChunkParams {
        min: 1,
        avg: 2,
        max: 3,
    };
    assert!(index_reader(&b"abc"[..], params, |_| {}).is_err());
}

/// An old release and a new one that changes 64 KiB in place and inserts 3 KiB elsewhere.
fn pair() -> (Vec<u8>, Vec<u8>) {
    let old = artifact(4 << 20, 181);
    let mut new = old.clone();
    new[1 << 20..(1 << 20) + 65_536].copy_from_slice(&artifact(65_536, 182));
    new.splice(3 << 20..3 << 20, artifact(3_000, 183));
    (old, new)
}

#[tokio::test]
async fn issue18_a_delta_fetches_only_the_chunks_the_cache_lacks() {
    let (old, new) = pair();
    let m = mirror(new.clone(), ChunkParams::DEFAULT, Fault18::None).await;
    let dir = tempdir();
    cache_artifact(dir.path(), &old);
    let dl = downloader_on(FsStorage::shared(), dir.path());
    let done = dl.download(&m.request(&new), |_| {}).await.unwrap();
    assert_eq!(fs::read(&done.path).unwrap(), new);
    let stats = done.delta.expect("built by delta");
    assert_eq!(done.received, stats.index_bytes + stats.fetched_bytes);
    assert_eq!(m.sent.load(Ordering::SeqCst), done.received);
    assert!(
        stats.fetched_bytes < new.len() as u64 / 8,
        "two local changes fetch a few chunks, not {} of {} bytes",
        stats.fetched_bytes,
        new.len()
    );
    assert_eq!(stats.fetched_bytes + stats.copied_bytes, new.len() as u64);
    // Every artifact request was a bounded range; the index was fetched once, whole.
    let hits = m.hits();
    assert_eq!(hits.iter().filter(|h| h.range.is_none()).count(), 1);
    assert!(hits.iter().filter(|h| h.range.is_some()).count() as u64 == stats.requests);
    // The new artifact's index is kept: the next delta need not cut it again.
    assert!(dl.cache().index_path(&Digest::of(&new)).exists());
}

#[tokio::test]
async fn issue18_a_hostile_mirror_is_caught_at_the_chunk_and_the_download_goes_on_in_full() {
    let (old, new) = pair();
    let m = mirror(new.clone(), ChunkParams::DEFAULT, Fault18::TamperRanges).await;
    let dir = tempdir();
    cache_artifact(dir.path(), &old);
    let dl = downloader_on(FsStorage::shared(), dir.path());
    let done = dl.download(&m.request(&new), |_| {}).await.unwrap();
    assert_eq!(
        fs::read(&done.path).unwrap(),
        new,
        "no wrong chunk was written"
    );
    assert_eq!(done.delta, None);
    // After the refused range, the rest came in full from the end of the good chunks.
    let hits = m.hits();
    let open = hits
        .iter()
        .filter_map(|h| h.range.as_deref())
        .find(|r| r.ends_with('-'))
        .expect("a full download from the verified prefix");
    let from: u64 = open["bytes=".len()..open.len() - 1].parse().unwrap();
    assert!(from > 0 && from < new.len() as u64 / 2, "resumed at {from}");

    // A mirror that tampers everything never gets a wrong artifact into the cache.
    let m = mirror(new.clone(), ChunkParams::DEFAULT, Fault18::TamperAll).await;
    let dir = tempdir();
    cache_artifact(dir.path(), &old);
    let dl = downloader_on(FsStorage::shared(), dir.path());
    let err = dl.download(&m.request(&new), |_| {}).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Verify, "{err}");
    assert!(!dl.cache().contains(&Digest::of(&new)).unwrap());
}

#[tokio::test]
async fn issue18_any_delta_failure_falls_back_to_a_full_download() {
    let (old, new) = pair();
    for fault in [Fault18::IgnoreRange, Fault18::WrongIndex] {
        let m = mirror(new.clone(), ChunkParams::DEFAULT, fault).await;
        let dir = tempdir();
        cache_artifact(dir.path(), &old);
        let dl = downloader_on(FsStorage::shared(), dir.path());
        let done = dl.download(&m.request(&new), |_| {}).await.unwrap();
        assert_eq!(fs::read(&done.path).unwrap(), new, "{fault:?}");
        assert_eq!(done.delta, None, "{fault:?}");
    }
    // An empty cache: a delta would fetch everything, so the download is full at once.
    let m = mirror(new.clone(), ChunkParams::DEFAULT, Fault18::None).await;
    let dir = tempdir();
    let dl = downloader_on(FsStorage::shared(), dir.path());
    let done = dl.download(&m.request(&new), |_| {}).await.unwrap();
    assert_eq!(done.delta, None);
    assert_eq!(
        done.received,
        new.len() as u64 + m.index_ref.size,
        "never more than a full download plus the index"
    );
}

/// A power loss at every write of a delta (partial, index, cache), then a restart: the new
/// downloader resumes from the verified whole chunks and the cache ends with the right bytes.
/// The old release is in the cache, or only in the running slot (`ab` installer).
#[tokio::test]
async fn issue18_a_power_loss_at_any_write_of_a_delta_then_a_restart_completes_it() {
    let old = artifact(300_000, 191);
    let mut new = old.clone();
    new[150_000..160_000].copy_from_slice(&artifact(10_000, 192));
    let params = ChunkParams {
        min: 2048,
        avg: 8192,
        max: 32_768,
    };
    let m = mirror(new.clone(), params, Fault18::None).await;
    for in_slot in [false, true] {
        // A device holding `old`, and the request it gets.
        let device = || {
            let dir = tempdir();
            let req = if in_slot {
                let slot = slot_image(dir.path(), &old, old.len() + 5000);
                m.request(&new).with_running_slot(Some(slot))
            } else {
                cache_artifact(dir.path(), &old);
                m.request(&new)
            };
            (dir, req)
        };
        let total = {
            let (dir, req) = device();
            let faulty = Arc::new(FaultyStorage::new());
            let done = downloader_on(faulty.clone(), dir.path())
                .download(&req, |_| {})
                .await
                .unwrap();
            assert!(done.delta.is_some());
            faulty.mutations()
        };
        assert!(total > 10, "a delta writes chunk by chunk ({total} writes)");
        let opening = {
            let faulty = Arc::new(FaultyStorage::new());
            Cache::open(faulty.clone(), tempdir().path()).unwrap();
            faulty.mutations()
        };
        for n in opening + 1..=total {
            let (dir, req) = device();
            let faulty = Arc::new(FaultyStorage::with_fault(
                n,
                Fault::PowerLoss {
                    drop_unsynced: n % 2 == 0,
                },
            ));
            let sent_before = m.sent.load(Ordering::SeqCst);
            let first = downloader_on(faulty.clone(), dir.path())
                .download(&req, |_| {})
                .await;
            let err = first.expect_err("the power went");
            assert_eq!(
                err.class(),
                ErrorClass::Local,
                "slot {in_slot}, op {n}: {err}"
            );
            let dl = downloader_on(FsStorage::shared(), dir.path());
            let done = dl.download(&req, |_| {}).await.unwrap();
            assert_eq!(fs::read(&done.path).unwrap(), new, "slot {in_slot}, op {n}");
            assert!(dl.cache().rehash(&req.digest).await.unwrap(), "op {n}");
            assert!(
                done.received < new.len() as u64 / 2,
                "slot {in_slot}, op {n}: the restart is a delta again ({} bytes)",
                done.received
            );
            // What the device reports as fetched over both attempts is at most what the
            // mirror sent (the kept prefix's copied chunks are not counted as fetched).
            let sent = m.sent.load(Ordering::SeqCst) - sent_before;
            assert!(
                done.fetched_bytes() <= sent,
                "slot {in_slot}, op {n}: reports {} fetched, the mirror sent {sent} (kept {}, of it copied {})",
                done.fetched_bytes(),
                done.resumed_from,
                done.resumed_copied
            );
        }
    }
}

/// The running slot of an `ab` device in `dir`: `image` followed by other bytes up to `len`
/// (a partition is larger than the image it holds).
fn slot_image(dir: &Path, image: &[u8], len: usize) -> SeedImage {
    let mut bytes = image.to_vec();
    bytes.extend(artifact(len - image.len(), 77));
    let path = dir.join("slot-a.img");
    fs::write(&path, &bytes).unwrap();
    SeedImage {
        path,
        digest: Digest::of(image),
        size: image.len() as u64,
    }
}

#[tokio::test]
async fn issue18_the_running_slot_is_a_chunk_source_cut_up_to_its_image() {
    let (old, new) = pair();
    let m = mirror(new.clone(), ChunkParams::DEFAULT, Fault18::None).await;
    let dir = tempdir();
    let slot = slot_image(dir.path(), &old, old.len() + (1 << 20));
    let dl = downloader_on(FsStorage::shared(), &dir.path().join("data"));
    let req = m.request(&new).with_running_slot(Some(slot.clone()));
    let done = dl.download(&req, |_| {}).await.unwrap();
    assert_eq!(fs::read(&done.path).unwrap(), new);
    let stats = done.delta.expect("built by delta from the slot alone");
    assert!(
        stats.fetched_bytes < new.len() as u64 / 8,
        "the slot held all but two changes, yet {} of {} bytes were fetched",
        stats.fetched_bytes,
        new.len()
    );
    assert_eq!(stats.fetched_bytes + stats.copied_bytes, new.len() as u64);
    assert_eq!(done.received, stats.index_bytes + stats.fetched_bytes);
    // The slot held the release: its index is kept under the release's digest, and it covers
    // the image, not the partition behind it.
    let kept = fs::read(dl.cache().index_path(&slot.digest)).unwrap();
    let kept = ChunkIndex::from_cbor(&kept).unwrap();
    assert_eq!(
        kept,
        index_reader(&old[..], ChunkParams::DEFAULT, |_| {}).unwrap()
    );

    // A slot that cannot be read, or ends before its image: the download goes on in full.
    let missing = SeedImage {
        path: dir.path().join("no-such-slot"),
        ..slot.clone()
    };
    let short = SeedImage {
        size: old.len() as u64 + (2 << 20),
        ..slot.clone()
    };
    for bad in [missing, short] {
        let data = tempdir();
        let dl = downloader_on(FsStorage::shared(), data.path());
        let req = m.request(&new).with_running_slot(Some(bad.clone()));
        let done = dl.download(&req, |_| {}).await.unwrap();
        assert_eq!(fs::read(&done.path).unwrap(), new, "{bad:?}");
        assert_eq!(done.delta, None, "{bad:?}");
        assert!(!dl.cache().index_path(&bad.digest).exists(), "{bad:?}");
    }
}

/// A running slot with a few bytes flipped in one chunk the new release shares: that chunk is
/// fetched, nothing wrong is written. Whether the slot is cut anew (the damaged chunk is not
/// offered, and the damaged slot's index is not kept) or its kept index still names the
/// damaged chunk (the copy is re-hashed against the signed index and refused).
#[tokio::test]
async fn issue18_a_damaged_running_slot_costs_its_damaged_chunk_and_writes_nothing_wrong() {
    let (old, new) = pair();
    let params = ChunkParams::DEFAULT;
    let m = mirror(new.clone(), params, Fault18::None).await;
    let old_index = index_reader(&old[..], params, |_| {}).unwrap();
    let new_index = index_reader(&new[..], params, |_| {}).unwrap();
    let (chunk, range) = old_index
        .chunks
        .iter()
        .zip(old_index.ranges())
        .find(|(_, r)| r.contains(&(2 << 20)))
        .unwrap();
    assert!(new_index.chunks.iter().any(|c| c.sha256 == chunk.sha256));
    let clean = {
        let dir = tempdir();
        let slot = slot_image(dir.path(), &old, old.len() + 4096);
        let dl = downloader_on(FsStorage::shared(), &dir.path().join("data"));
        let req = m.request(&new).with_running_slot(Some(slot));
        let done = dl.download(&req, |_| {}).await.unwrap();
        done.delta.unwrap().fetched_bytes
    };
    for kept in [false, true] {
        let dir = tempdir();
        let slot = slot_image(dir.path(), &old, old.len() + 4096);
        let dl = downloader_on(FsStorage::shared(), &dir.path().join("data"));
        if kept {
            dl.cache()
                .keep_index(&slot.digest, &old_index.to_cbor())
                .unwrap();
        }
        let mut bytes = fs::read(&slot.path).unwrap();
        let mid = usize::try_from((range.start + range.end) / 2).unwrap();
        for b in &mut bytes[mid..mid + 3] {
            *b ^= 0x5a;
        }
        fs::write(&slot.path, &bytes).unwrap();
        let req = m.request(&new).with_running_slot(Some(slot.clone()));
        let done = dl.download(&req, |_| {}).await.unwrap();
        assert_eq!(fs::read(&done.path).unwrap(), new, "kept {kept}");
        let stats = done.delta.expect("still a delta");
        assert_eq!(stats.fetched_bytes + stats.copied_bytes, new.len() as u64);
        if kept {
            assert_eq!(
                stats.fetched_bytes,
                clean + u64::from(chunk.len),
                "exactly the damaged chunk more"
            );
        } else {
            assert!(stats.fetched_bytes >= clean + u64::from(chunk.len));
            assert!(
                !dl.cache().index_path(&slot.digest).exists(),
                "the index of a damaged slot is not kept"
            );
        }
    }
}

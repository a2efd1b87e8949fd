use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ota_agent::cache::Cache;
use ota_agent::download::{
    DownloadConfig, DownloadError, DownloadRequest, Downloader, ErrorClass, MinRate, Progress,
};
use ota_agent::release::ReleaseError;
use ota_agent::storage::{Fault, FaultyStorage, FsStorage, SharedStorage};
use ota_agent::tls::TlsError;

use crate::util::{Mode, Seen, artifact, digest_of, serve, tempdir};

const SIZE: usize = 3 * 1024 * 1024 + 12_345;
const CHUNK: usize = 64 * 1024;

fn downloader(data: &Path) -> Downloader {
    downloader_on(FsStorage::shared(), data)
}

fn downloader_on(storage: SharedStorage, data: &Path) -> Downloader {
    let cache = Cache::open(storage, data).unwrap();
    Downloader::new(cache, &DownloadConfig::new().with_chunk_size(CHUNK)).unwrap()
}

fn request(url: String, body: &[u8]) -> DownloadRequest {
    DownloadRequest::new(url, digest_of(body), body.len() as u64)
}

#[tokio::test]
async fn fresh_download_lands_verified_in_the_cache() {
    let body = artifact(SIZE, 10);
    let server = serve(body.clone(), Mode::Normal).await;
    let dir = tempdir();
    let dl = downloader(dir.path());
    let req = request(server.url(), &body);

    let mut reports: Vec<Progress> = Vec::new();
    let done = dl.download(&req, |p| reports.push(p)).await.unwrap();
    assert_eq!(done.resumed_from, 0);
    assert_eq!(done.received, SIZE as u64);
    assert_eq!(fs::read(&done.path).unwrap(), body);
    assert!(dl.cache().rehash(&req.digest).await.unwrap());
    assert_eq!(dl.cache().partial_len(&req.digest).unwrap(), None);
    assert!(!dl.cache().validator_path(&req.digest).exists());

    assert!(reports.windows(2).all(|w| w[0].done <= w[1].done));
    assert_eq!(reports.last().unwrap().done, SIZE as u64);
    assert!(reports.iter().all(|p| p.total == SIZE as u64));
    assert_eq!(
        server.seen(),
        vec![Seen {
            range: None,
            if_range: None,
            status: 200
        }]
    );
}

#[tokio::test]
async fn a_cut_connection_resumes_with_range_and_if_range_in_a_new_downloader() {
    let body = artifact(SIZE, 11);
    let k = 1_000_000 + 777;
    let server = serve(body.clone(), Mode::CutAfter(k)).await;
    let dir = tempdir();
    let req = request(server.url(), &body);

    let err = downloader(dir.path())
        .download(&req, |_| {})
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Retryable, "{err}");
    assert!(err.is_retryable());
    let kept = fs::metadata(
        dir.path()
            .join(format!("cache/partial/{}.part", req.digest)),
    )
    .unwrap()
    .len();
    assert!(kept as usize <= k);
    assert_eq!(server.sent(), k as u64);

    // As after an agent restart: a new downloader over the same data directory.
    server.set_mode(Mode::Normal);
    let done = downloader(dir.path()).download(&req, |_| {}).await.unwrap();
    assert_eq!(done.resumed_from, kept);
    let refetched = k as u64 - done.resumed_from;
    assert!(refetched <= CHUNK as u64, "re-fetched {refetched} bytes");
    assert_eq!(done.received, SIZE as u64 - kept);
    assert_eq!(fs::read(&done.path).unwrap(), body);
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].range.as_deref(), Some(&*format!("bytes={kept}-")));
    assert_eq!(seen[1].if_range.as_deref(), Some("\"v1\""));
    assert_eq!(seen[1].status, 206);
}

#[tokio::test]
async fn an_agent_killed_mid_download_refetches_at_most_one_chunk() {
    let body = artifact(SIZE, 12);
    let k = 2_000_000 + 1;
    let server = serve(body.clone(), Mode::StallAfter(k)).await;
    let dir = tempdir();
    let req = request(server.url(), &body);

    // The download is dropped (the agent dies) once everything the server sent is written,
    // up to the chunk still buffered.
    let written = (k / CHUNK * CHUNK) as u64;
    let (tx, mut rx) = tokio::sync::watch::channel(0u64);
    let dl = downloader(dir.path());
    tokio::select! {
        r = dl.download(&req, |p| { tx.send_replace(p.done); }) => panic!("stalled download ended: {r:?}"),
        r = rx.wait_for(|d| *d >= written) => { r.unwrap(); }
    }
    drop(dl);

    server.set_mode(Mode::Normal);
    let done = downloader(dir.path()).download(&req, |_| {}).await.unwrap();
    let refetched = k as u64 - done.resumed_from;
    assert!(refetched <= CHUNK as u64, "re-fetched {refetched} bytes");
    assert_eq!(fs::read(&done.path).unwrap(), body);
}

#[tokio::test]
async fn a_server_ignoring_range_restarts_from_zero() {
    let body = artifact(500_000, 13);
    let server = serve(body.clone(), Mode::CutAfter(200_000)).await;
    let dir = tempdir();
    let req = request(server.url(), &body);
    downloader(dir.path())
        .download(&req, |_| {})
        .await
        .unwrap_err();

    server.set_mode(Mode::IgnoreRange);
    let done = downloader(dir.path()).download(&req, |_| {}).await.unwrap();
    assert_eq!(done.resumed_from, 0);
    assert_eq!(done.received, body.len() as u64);
    assert_eq!(fs::read(&done.path).unwrap(), body);
    let seen = server.seen();
    assert!(seen[1].range.is_some());
    assert_eq!(seen[1].status, 200);
}

#[tokio::test]
async fn a_changed_entity_fails_if_range_and_restarts_from_zero() {
    let body = artifact(500_000, 14);
    let server = serve(body.clone(), Mode::CutAfter(300_000)).await;
    let dir = tempdir();
    let req = request(server.url(), &body);
    downloader(dir.path())
        .download(&req, |_| {})
        .await
        .unwrap_err();

    server.set_mode(Mode::Normal);
    server.set_etag("\"v2\"");
    let done = downloader(dir.path()).download(&req, |_| {}).await.unwrap();
    assert_eq!(done.resumed_from, 0);
    let seen = server.seen();
    assert_eq!(seen[1].if_range.as_deref(), Some("\"v1\""));
    assert_eq!(seen[1].status, 200);
    assert_eq!(fs::read(&done.path).unwrap(), body);
}

#[tokio::test]
async fn range_not_satisfiable_discards_the_partial_and_restarts() {
    let body = artifact(300_000, 15);
    let server = serve(body.clone(), Mode::CutAfter(100_000)).await;
    let dir = tempdir();
    let req = request(server.url(), &body);
    downloader(dir.path())
        .download(&req, |_| {})
        .await
        .unwrap_err();

    server.set_mode(Mode::RangeNotSatisfiable);
    let done = downloader(dir.path()).download(&req, |_| {}).await.unwrap();
    assert_eq!(done.resumed_from, 0);
    let statuses: Vec<u16> = server.seen().iter().map(|s| s.status).collect();
    assert_eq!(statuses, vec![200, 416, 200]);
    assert_eq!(fs::read(&done.path).unwrap(), body);
}

#[tokio::test]
async fn tampered_bytes_fail_verification_and_discard_the_partial() {
    let body = artifact(400_000, 16);
    let server = serve(body.clone(), Mode::Tampered).await;
    let dir = tempdir();
    let req = request(server.url(), &body);
    let dl = downloader(dir.path());
    let err = dl.download(&req, |_| {}).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Verify);
    assert!(matches!(
        err,
        DownloadError::Verify(ReleaseError::DigestMismatch { .. })
    ));
    assert!(err.release_error().is_some());
    assert!(!dl.cache().contains(&req.digest).unwrap());
    assert_eq!(dl.cache().partial_len(&req.digest).unwrap(), None);
}

#[tokio::test]
async fn bytes_past_the_signed_size_are_refused() {
    let body = artifact(400_000, 17);
    let server = serve(body.clone(), Mode::TooLong(100_000)).await;
    let dir = tempdir();
    let req = request(server.url(), &body);
    let dl = downloader(dir.path());
    let mut max_done = 0;
    let err = dl
        .download(&req, |p| max_done = max_done.max(p.done))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            DownloadError::Verify(ReleaseError::ArtifactTooLong { expected: 400_000 })
        ),
        "{err}"
    );
    assert!(max_done <= 400_000);
    assert!(!dl.cache().contains(&req.digest).unwrap());
    assert_eq!(dl.cache().partial_len(&req.digest).unwrap(), None);
}

#[tokio::test]
async fn a_short_entity_is_a_size_mismatch() {
    let body = artifact(100_000, 18);
    let server = serve(body.clone(), Mode::Normal).await;
    let dir = tempdir();
    let mut longer = body.clone();
    longer.extend_from_slice(b"missing tail");
    let req = request(server.url(), &longer);
    let err = downloader(dir.path())
        .download(&req, |_| {})
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        DownloadError::Verify(ReleaseError::SizeMismatch { .. })
    ));
}

#[tokio::test]
async fn a_partial_longer_than_the_artifact_is_discarded() {
    let body = artifact(100_000, 19);
    let server = serve(body.clone(), Mode::Normal).await;
    let dir = tempdir();
    let req = request(server.url(), &body);
    let dl = downloader(dir.path());
    fs::write(dl.cache().partial_path(&req.digest), vec![0u8; 150_000]).unwrap();
    let done = dl.download(&req, |_| {}).await.unwrap();
    assert_eq!(done.resumed_from, 0);
    assert_eq!(server.seen()[0].range, None);
}

#[tokio::test]
async fn a_complete_partial_needs_no_request() {
    let body = artifact(100_000, 20);
    let server = serve(body.clone(), Mode::Normal).await;
    let dir = tempdir();
    let req = request(server.url(), &body);
    let dl = downloader(dir.path());
    fs::write(dl.cache().partial_path(&req.digest), &body).unwrap();
    let done = dl.download(&req, |_| {}).await.unwrap();
    assert_eq!(done.received, 0);
    assert!(server.seen().is_empty());
    assert!(dl.cache().rehash(&req.digest).await.unwrap());
}

#[tokio::test]
async fn statuses_are_classified() {
    let body = artifact(1000, 21);
    let dir = tempdir();
    for (code, class) in [
        (503, ErrorClass::Retryable),
        (500, ErrorClass::Retryable),
        (429, ErrorClass::Retryable),
        (404, ErrorClass::Fatal),
        (403, ErrorClass::Fatal),
        (204, ErrorClass::Fatal),
    ] {
        let server = serve(body.clone(), Mode::Status(code)).await;
        let err = downloader(dir.path())
            .download(&request(server.url(), &body), |_| {})
            .await
            .unwrap_err();
        assert_eq!(err.class(), class, "HTTP {code}: {err}");
    }
}

#[tokio::test]
async fn connection_refused_is_retryable_and_a_bad_url_is_fatal() {
    let body = artifact(1000, 22);
    let dir = tempdir();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let err = downloader(dir.path())
        .download(&request(format!("http://{addr}/artifact"), &body), |_| {})
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Retryable, "{err}");

    let err = downloader(dir.path())
        .download(&request("not a url".into(), &body), |_| {})
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Fatal, "{err}");
}

#[tokio::test]
async fn a_stalled_transfer_times_out_as_retryable() {
    let body = artifact(200_000, 23);
    let server = serve(body.clone(), Mode::StallAfter(50_000)).await;
    let dir = tempdir();
    let cache = Cache::open(FsStorage::shared(), dir.path()).unwrap();
    let config = DownloadConfig::new()
        .with_chunk_size(CHUNK)
        .with_timeouts(Duration::from_secs(5), Duration::from_millis(200));
    let err = Downloader::new(cache, &config)
        .unwrap()
        .download(&request(server.url(), &body), |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, DownloadError::Timeout(_)), "{err}");
    assert_eq!(err.class(), ErrorClass::Retryable);
}

/// Issue 7 (slow retrieval): a mirror that trickles bytes fast enough to beat the read
/// timeout but below the minimum rate is cut, retryably, and what arrived is kept.
#[tokio::test]
async fn issue7_a_trickling_mirror_is_cut_for_the_minimum_rate() {
    let body = artifact(200_000, 29);
    let mode = Mode::Trickle {
        after: 70_000,
        bytes: 100,
        every_ms: 20,
    };
    let server = serve(body.clone(), mode).await;
    let dir = tempdir();
    let cache = Cache::open(FsStorage::shared(), dir.path()).unwrap();
    let config = DownloadConfig::new()
        .with_chunk_size(CHUNK)
        .with_timeouts(Duration::from_secs(5), Duration::from_secs(5))
        .with_min_rate(Some(MinRate {
            bytes_per_second: 50_000,
            window: Duration::from_millis(400),
        }));
    let dl = Downloader::new(cache, &config).unwrap();
    let req = request(server.url(), &body);
    let err = dl.download(&req, |_| {}).await.unwrap_err();
    assert!(matches!(err, DownloadError::TooSlow { .. }), "{err}");
    assert_eq!(err.class(), ErrorClass::Retryable);
    // The first full chunk was written: the retry resumes after it.
    assert!(dl.cache().partial_len(&req.digest).unwrap().unwrap() >= CHUNK as u64);
    // Without the guard the same mirror completes (5,000 bytes/s).
    let dir = tempdir();
    let cache = Cache::open(FsStorage::shared(), dir.path()).unwrap();
    let patient = Downloader::new(cache, &config.clone().with_min_rate(None)).unwrap();
    let small = artifact(72_000, 30);
    let server = serve(small.clone(), mode).await;
    let done = patient
        .download(&request(server.url(), &small), |_| {})
        .await
        .unwrap();
    assert_eq!(fs::read(&done.path).unwrap(), small);
}

#[test]
fn a_missing_ca_file_is_fatal() {
    let dir = tempdir();
    let cache = Cache::open(FsStorage::shared(), dir.path()).unwrap();
    let config = DownloadConfig::new().with_ca_file(dir.path().join("missing.pem"));
    let err = Downloader::new(cache.clone(), &config).unwrap_err();
    assert!(matches!(
        err,
        DownloadError::TlsSetup(TlsError::Read { .. })
    ));
    fs::write(dir.path().join("bad.pem"), b"not pem").unwrap();
    let config = DownloadConfig::new().with_ca_file(dir.path().join("bad.pem"));
    let err = Downloader::new(cache, &config).unwrap_err();
    assert_eq!(err.class(), ErrorClass::Fatal);
}

/// A power loss at any write of a download, then an agent restart: the new downloader
/// completes the download and the cache holds the right bytes.
#[tokio::test]
async fn a_power_loss_at_any_write_then_a_restart_completes_the_download() {
    let body = artifact(200_000, 24);
    let server = serve(body.clone(), Mode::Normal).await;
    let req = request(server.url(), &body);
    let small = |storage: SharedStorage, data: &Path| {
        let cache = Cache::open(storage, data).unwrap();
        Downloader::new(cache, &DownloadConfig::new().with_chunk_size(16 * 1024)).unwrap()
    };
    let total = {
        let dir = tempdir();
        let faulty = Arc::new(FaultyStorage::new());
        small(faulty.clone(), dir.path())
            .download(&req, |_| {})
            .await
            .unwrap();
        faulty.mutations()
    };
    for n in 2..=total {
        let dir = tempdir();
        let faulty = Arc::new(FaultyStorage::with_fault(
            n,
            Fault::PowerLoss {
                drop_unsynced: true,
            },
        ));
        let err = small(faulty.clone(), dir.path())
            .download(&req, |_| {})
            .await
            .unwrap_err();
        assert_eq!(err.class(), ErrorClass::Local, "op {n}: {err}");

        let dl = small(FsStorage::shared(), dir.path());
        let done = dl.download(&req, |_| {}).await.unwrap();
        assert_eq!(fs::read(&done.path).unwrap(), body, "op {n}");
        assert!(dl.cache().rehash(&req.digest).await.unwrap());
    }
}

/// A partial whose bytes were damaged (e.g. zeros after a power loss) cannot be detected until
/// the end: the digest check fails, the partial is discarded, and the next attempt starts over.
#[tokio::test]
async fn a_damaged_partial_fails_once_then_downloads_cleanly() {
    let body = artifact(300_000, 25);
    let server = serve(body.clone(), Mode::Normal).await;
    let dir = tempdir();
    let req = request(server.url(), &body);
    let dl = downloader(dir.path());
    fs::write(dl.cache().partial_path(&req.digest), vec![0u8; 100_000]).unwrap();
    let err = dl.download(&req, |_| {}).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Verify);
    assert_eq!(dl.cache().partial_len(&req.digest).unwrap(), None);
    let done = dl.download(&req, |_| {}).await.unwrap();
    assert_eq!(done.resumed_from, 0);
    assert_eq!(fs::read(&done.path).unwrap(), body);
}

/// The core machine's `Download { resume_from }`: keep that many bytes, truncate the rest.
#[tokio::test]
async fn resume_from_truncates_the_partial() {
    let body = artifact(400_000, 26);
    let server = serve(body.clone(), Mode::Normal).await;
    let dir = tempdir();
    let dl = downloader(dir.path());
    let req = request(server.url(), &body);
    // 300 000 good bytes on disk, then garbage the machine does not vouch for.
    let mut partial = body[..300_000].to_vec();
    partial.extend_from_slice(&[0xEE; 50_000]);
    fs::write(dl.cache().partial_path(&req.digest), &partial).unwrap();
    let done = dl
        .download(&req.clone().with_resume_from(250_000), |_| {})
        .await
        .unwrap();
    assert_eq!(done.resumed_from, 250_000);
    assert_eq!(done.received, 150_000);
    assert_eq!(server.seen()[0].range.as_deref(), Some("bytes=250000-"));
    assert_eq!(fs::read(&done.path).unwrap(), body);
    assert!(dl.cache().verify_entry(&req.digest, 400_000).await.unwrap());
    assert!(!dl.cache().verify_entry(&req.digest, 399_999).await.unwrap());
}

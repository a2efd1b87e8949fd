//! Issue 7: artifact downloads over HTTPS with a pinned CA (test CAs made at test time by
//! `firmware_fixtures::pki`), on the real downloader and the whole agent.

use std::fs;
use std::path::Path;

use firmware_fixtures::pki::{CertFiles, TestCa};
use ota_agent::Agent;
use ota_agent::cache::Cache;
use ota_agent::download::{DownloadConfig, DownloadError, DownloadRequest, Downloader, ErrorClass};
use ota_agent::storage::FsStorage;
use ota_core::wire::{ExecutionState, FailurePhase};

use crate::fleet::{Device, Fleet, broker, desired, options, release, settled};
use crate::util::{Mode, Seen, artifact, digest_of, serve, serve_mtls, serve_tls, tempdir};

const SIZE: usize = 700_000;

/// A CA (its files in `dir`) and a server certificate of it for 127.0.0.1.
fn pki(dir: &Path, name: &str) -> (TestCa, CertFiles) {
    let ca = TestCa::new(dir, name).unwrap();
    let cert = ca.server_cert().unwrap();
    (ca, cert)
}

fn downloader(data: &Path, config: DownloadConfig) -> Downloader {
    let cache = Cache::open(FsStorage::shared(), data).unwrap();
    Downloader::new(cache, &config.with_chunk_size(64 * 1024)).unwrap()
}

fn pinned(ca: &TestCa) -> DownloadConfig {
    DownloadConfig::new().with_ca_file(ca.ca_file())
}

fn request(url: String, body: &[u8]) -> DownloadRequest {
    DownloadRequest::new(url, digest_of(body), body.len() as u64)
}

/// Nothing of `req` is in the cache: no artifact, no partial, no validator.
fn nothing_cached(dl: &Downloader, req: &DownloadRequest) {
    let cache = dl.cache();
    assert!(!cache.contains(&req.digest).unwrap());
    assert_eq!(cache.partial_len(&req.digest).unwrap(), None);
    assert!(!cache.validator_path(&req.digest).exists());
}

#[tokio::test]
async fn issue7_https_download_with_the_pinned_ca_is_verified_and_cached() {
    let dir = tempdir();
    let (ca, cert) = pki(dir.path(), "issue7 fleet CA");
    let body = artifact(SIZE, 70);
    let server = serve_tls(body.clone(), Mode::Normal, &cert).await;
    assert!(server.url().starts_with("https://127.0.0.1:"));
    let dl = downloader(dir.path(), pinned(&ca));
    let req = request(server.url(), &body);

    let done = dl.download(&req, |_| {}).await.unwrap();
    assert_eq!(fs::read(&done.path).unwrap(), body);
    assert!(dl.cache().rehash(&req.digest).await.unwrap());
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn issue7_https_server_not_certified_by_the_pinned_ca_is_refused_and_nothing_is_cached() {
    let dir = tempdir();
    let (pinned_ca, _) = pki(dir.path(), "pinned");
    let (_, foreign) = pki(dir.path(), "other");
    let body = artifact(SIZE, 71);
    let dl = downloader(dir.path(), pinned(&pinned_ca));

    // A certificate from a CA that is not the pinned one.
    let server = serve_tls(body.clone(), Mode::Normal, &foreign).await;
    let req = request(server.url(), &body);
    let err = dl.download(&req, |_| {}).await.unwrap_err();
    match &err {
        DownloadError::Tls { host, reason } => {
            assert_eq!(host, "127.0.0.1");
            assert!(reason.contains("UnknownIssuer"), "{reason}");
        }
        other => panic!("expected a TLS error, got {other:?}"),
    }
    assert!(
        err.to_string()
            .contains("TLS handshake with 127.0.0.1 failed")
    );
    assert_eq!(err.class(), ErrorClass::Fatal);
    assert!(server.seen().is_empty(), "no request left the client");
    nothing_cached(&dl, &req);

    // A certificate of the pinned CA that is not a server certificate (client usage only).
    let client_only = pinned_ca.client_cert("not-a-server").unwrap();
    let server = serve_tls(body.clone(), Mode::Normal, &client_only).await;
    let req = request(server.url(), &body);
    let err = dl.download(&req, |_| {}).await.unwrap_err();
    assert!(matches!(&err, DownloadError::Tls { .. }), "{err:?}");
    nothing_cached(&dl, &req);

    // A plain-HTTP server behind an https:// URL (it answers the TLS hello with HTTP).
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/artifact", plain.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = plain.accept().await {
            let reply = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
            let _ = tokio::io::AsyncWriteExt::write_all(&mut socket, reply).await;
        }
    });
    let req = request(url, &body);
    let err = dl.download(&req, |_| {}).await.unwrap_err();
    assert!(matches!(&err, DownloadError::Tls { .. }), "{err:?}");
    nothing_cached(&dl, &req);
}

#[tokio::test]
async fn issue7_a_cut_https_download_resumes_with_range() {
    let dir = tempdir();
    let (ca, cert) = pki(dir.path(), "resume");
    let body = artifact(SIZE, 72);
    let k = 300_000;
    let server = serve_tls(body.clone(), Mode::CutAfter(k), &cert).await;
    let config = pinned(&ca);
    let req = request(server.url(), &body);

    let err = downloader(dir.path(), config.clone())
        .download(&req, |_| {})
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    server.set_mode(Mode::Normal);
    let dl = downloader(dir.path(), config);
    let done = dl.download(&req, |_| {}).await.unwrap();
    assert_eq!(fs::read(&done.path).unwrap(), body);
    assert!(done.resumed_from > 0 && done.resumed_from <= k as u64);
    assert_eq!(done.received, SIZE as u64 - done.resumed_from);
    assert_eq!(
        server.seen()[1],
        Seen {
            range: Some(format!("bytes={}-", done.resumed_from)),
            if_range: Some("\"v1\"".into()),
            status: 206
        }
    );
}

#[tokio::test]
async fn issue7_require_https_refuses_plain_http_urls() {
    let body = artifact(10_000, 73);
    let server = serve(body.clone(), Mode::Normal).await;
    let dir = tempdir();
    let dl = downloader(dir.path(), DownloadConfig::new().with_require_https(true));
    let req = request(server.url(), &body);
    let err = dl.download(&req, |_| {}).await.unwrap_err();
    assert!(
        matches!(&err, DownloadError::InsecureUrl { url } if *url == server.url()),
        "{err:?}"
    );
    assert_eq!(err.class(), ErrorClass::Fatal);
    assert!(server.seen().is_empty());
    nothing_cached(&dl, &req);

    // By default plain HTTP stays allowed: the signed digest protects the bytes.
    let dl = downloader(dir.path(), DownloadConfig::new());
    assert_eq!(
        fs::read(dl.download(&req, |_| {}).await.unwrap().path).unwrap(),
        body
    );
}

#[tokio::test]
async fn issue7_https_client_certificate_for_a_server_that_demands_one() {
    let dir = tempdir();
    let (ca, cert) = pki(dir.path(), "mtls");
    let clients = TestCa::new(dir.path(), "devices").unwrap();
    let body = artifact(50_000, 74);
    let server = serve_mtls(body.clone(), &cert, &clients.ca_file()).await;
    let req = request(server.url(), &body);

    let anonymous = downloader(dir.path(), pinned(&ca));
    let err = anonymous.download(&req, |_| {}).await.unwrap_err();
    assert!(matches!(err, DownloadError::Tls { .. }), "{err:?}");
    nothing_cached(&anonymous, &req);

    let id = clients.client_cert("dev-1").unwrap();
    let config = pinned(&ca).with_client_identity(id.cert, id.key);
    let done = downloader(dir.path(), config)
        .download(&req, |_| {})
        .await
        .unwrap();
    assert_eq!(fs::read(&done.path).unwrap(), body);
}

#[test]
fn issue7_bad_tls_files_fail_the_downloader_at_start() {
    let dir = tempdir();
    let cache = Cache::open(FsStorage::shared(), dir.path()).unwrap();
    let ca = TestCa::new(dir.path(), "files").unwrap();
    let ca_file = ca.ca_file();
    let CertFiles { cert, key } = ca.client_cert("d").unwrap();
    let other_key = ca.client_cert("e").unwrap().key;
    let bad: [(DownloadConfig, &str); 3] = [
        (
            DownloadConfig::new().with_ca_file(&key),
            "no PEM certificate",
        ),
        (
            DownloadConfig::new()
                .with_ca_file(&ca_file)
                .with_client_identity(&cert, &ca_file),
            "no PEM private key",
        ),
        (
            DownloadConfig::new()
                .with_ca_file(&ca_file)
                .with_client_identity(&cert, &other_key),
            "refused",
        ),
    ];
    for (config, want) in bad {
        let err = Downloader::new(cache.clone(), &config).unwrap_err();
        assert!(matches!(err, DownloadError::TlsSetup(_)), "{err:?}");
        assert!(err.to_string().contains(want), "{err}");
        assert!(!err.to_string().contains("PRIVATE KEY"), "{err}");
    }
}

/// The whole agent with `[download] ca_file` pinned: an artifact server of another CA is
/// refused (the device reports a download failure naming TLS, nothing is installed or
/// cached); the next desired state, on a server of the pinned CA, installs.
#[tokio::test]
async fn issue7_agent_with_a_pinned_ca_refuses_a_foreign_server_then_installs_over_https() {
    let url = format!("mqtt://{}", broker());
    let fleet = Fleet::start(&url).await;
    let v1 = release("1.0.0", 1, 50_000);
    let v2 = release("2.0.0", 2, 200_000);
    let dir = tempdir();
    let (ca, cert) = pki(dir.path(), "fleet");
    let (_, foreign) = pki(dir.path(), "mirror");
    let good = serve_tls(v2.artifact.clone(), Mode::Normal, &cert).await;
    let rogue = serve_tls(v2.artifact.clone(), Mode::Normal, &foreign).await;
    let health = "[health]\nkind = \"command\"\nprogram = \"true\"\ninterval = \"50ms\"\n";
    let mut dev = Device::new("https", &url, &v1, health).await;
    dev.config.download.ca_file = Some(ca.ca_file());
    let agent = Agent::start(dev.config.clone(), options()).await.unwrap();
    fleet
        .wait("online", |s| {
            s.status.get(&dev.id).is_some_and(|st| st.online)
        })
        .await;

    fleet
        .desire(&dev.id, &desired(1, &v2, vec![rogue.url()]))
        .await;
    let failed = fleet.wait_event(&dev.id, 1, "failed").await;
    match &failed.kind {
        ExecutionState::Failed { phase, reason } => {
            assert_eq!(*phase, FailurePhase::Download);
            assert!(
                reason.contains("TLS handshake with 127.0.0.1 failed"),
                "{reason}"
            );
            assert!(reason.contains("UnknownIssuer"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(rogue.seen().is_empty());
    assert_eq!(dev.current(), Some(v1.digest()));
    let cache = dev.data().join("cache");
    assert!(!cache.join(v2.digest().to_string()).exists());
    assert!(!cache.join(format!("partial/{}.part", v2.digest())).exists());

    fleet
        .desire(&dev.id, &desired(2, &v2, vec![good.url()]))
        .await;
    fleet.wait_event(&dev.id, 2, "succeeded").await;
    let s = agent.wait_for(|s| settled(s, 2)).await;
    assert_eq!(s.machine.running.map(|r| r.digest), Some(v2.digest()));
    assert_eq!(dev.current(), Some(v2.digest()));
    agent.shutdown().await.unwrap();
}

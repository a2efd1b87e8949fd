//! Issue 7: the HTTPS listener (`[http] tls_cert`, `tls_key`): the API and the artifacts over
//! TLS, with a client that pins the test CA.

use ed25519_dalek::pkcs8::EncodePublicKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use firmware_fixtures::pki::TestCa;
use ota_core::digest::Digest;
use ota_server::config::{Config, TrustConfig};
use ota_server::{Server, ServerError};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, RANGE};

use crate::util::{self, Options, TestServer, artifact, release};

async fn https_server() -> TestServer {
    TestServer::start_opts(Options {
        https: true,
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn issue7_https_serves_the_api_and_artifacts_with_ranges() {
    let t = https_server().await;
    let base = format!("https://{}", t.server.http_addr());
    assert_eq!(t.server.base_url(), base);
    assert_eq!(
        t.server.public_url(),
        base,
        "devices get https:// artifact URLs"
    );

    let art = artifact(200_000, 9);
    let r = t.publish(release("1.0.0", &art, &[1]), art.clone()).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let path = format!("/artifacts/{}", Digest::of(&art));
    let r = t.client.get(t.url(&path)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), art.as_slice());

    let r = t
        .client
        .get(t.url(&path))
        .header(RANGE, "bytes=150000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()[CONTENT_RANGE], "bytes 150000-199999/200000");
    assert_eq!(r.bytes().await.unwrap().as_ref(), &art[150_000..]);
}

#[tokio::test]
async fn issue7_https_refuses_untrusting_and_plain_http_clients_and_keeps_serving() {
    let t = https_server().await;
    let healthz = t.url("/healthz");

    let dir = tempfile::tempdir().unwrap();
    let other = TestCa::new(dir.path(), "other").unwrap();
    let pem = std::fs::read(other.ca_file()).unwrap();
    let stranger = reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem).unwrap())
        .build()
        .unwrap();
    let err = stranger.get(&healthz).send().await.unwrap_err();
    assert!(err.is_connect(), "{err:?}");

    let plain = format!("http://{}/healthz", t.server.http_addr());
    assert!(reqwest::Client::new().get(plain).send().await.is_err());

    let r = t.client.get(&healthz).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let health: serde_json::Value = r.json().await.unwrap();
    assert_eq!(health["status"], "ok", "{health}");
}

#[tokio::test]
async fn issue7_https_needs_a_certificate_and_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "pair").unwrap();
    let cert = ca.server_cert().unwrap();
    let toml = format!(
        "[http]\ntls_cert = {:?}\n[trust]\nkeys = [\"k.pub\"]\n",
        cert.cert.display()
    );
    let e = Config::from_toml(&toml, dir.path()).unwrap_err();
    assert!(e.to_string().contains("http.tls_cert"), "{e}");

    // A key that is not the certificate's: the server does not start.
    let other = ca.client_cert("someone").unwrap();
    let key = dir.path().join("k.pub");
    let pem = util::key(1)
        .verifying_key()
        .to_public_key_pem(LineEnding::LF);
    std::fs::write(&key, pem.unwrap()).unwrap();
    let mut config = Config::new(dir.path().join("data"), TrustConfig::new(vec![key], 1));
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.http.tls_cert = Some(cert.cert);
    config.http.tls_key = Some(other.key);
    match Server::start(config).await {
        Err(ServerError::HttpTls(e)) => assert!(!e.to_string().contains("PRIVATE KEY"), "{e}"),
        Err(other) => panic!("expected an HTTPS error, got {other}"),
        Ok(_) => panic!("started with a mismatched key"),
    }
}

#[tokio::test]
async fn issue16_the_console_cookie_is_secure_under_tls() {
    let t = https_server().await;
    let response = t
        .client_no_redirects
        .post(t.url("/login"))
        .form(&[("token", util::TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let cookie = response.headers()[reqwest::header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    for attribute in ["Secure", "HttpOnly", "SameSite=Strict"] {
        assert!(
            cookie.split(';').any(|a| a.trim() == attribute),
            "{attribute}: {cookie}"
        );
    }
}

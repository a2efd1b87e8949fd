//! Fixture helpers: temp dirs, deterministic artifacts, a real HTTP(S) artifact server.
//!
//! The server is a small HTTP/1.1 server written on tokio's TCP types (one request per
//! connection, `Connection: close`), so a test controls exactly which bytes reach the socket
//! before a cut: what it wrote is what the client can read. [`serve_tls`] runs the same
//! server behind rustls with a certificate from a test CA ([`firmware_fixtures::pki`]).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use firmware_fixtures::pki::CertFiles;
use ota_core::digest::Digest;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

pub use ota_agent::test_support::pseudo_random_bytes as artifact;

/// How the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Range, If-Range, 206, ETag: a well-behaved server.
    Normal,
    /// Like Normal, but each response's body is cut (connection closed) after this many bytes.
    CutAfter(usize),
    /// Like Normal, but after this many body bytes the response stalls until the client leaves.
    StallAfter(usize),
    /// Like Normal, but after `after` body bytes the rest trickles: `bytes` every `every_ms`
    /// (fast enough to beat a read timeout, too slow for a minimum rate).
    Trickle {
        after: usize,
        bytes: usize,
        every_ms: u64,
    },
    /// Ignores Range: always 200 with the whole body.
    IgnoreRange,
    /// Answers 416 to every ranged request.
    RangeNotSatisfiable,
    /// Serves the body with one byte flipped.
    Tampered,
    /// Serves the body followed by this many extra bytes.
    TooLong(usize),
    /// Answers this status with an empty body.
    Status(u16),
}

/// A request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub range: Option<String>,
    pub if_range: Option<String>,
    pub status: u16,
}

pub struct ServerState {
    pub body: Vec<u8>,
    pub etag: Mutex<String>,
    pub mode: Mutex<Mode>,
    pub seen: Mutex<Vec<Seen>>,
    /// Body bytes written to sockets, over all responses.
    pub sent: AtomicU64,
}

pub struct TestServer {
    pub addr: SocketAddr,
    scheme: &'static str,
    pub state: Arc<ServerState>,
    accept: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub fn url(&self) -> String {
        format!("{}://{}/artifact", self.scheme, self.addr)
    }
    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }
    pub fn set_etag(&self, etag: &str) {
        *self.state.etag.lock().unwrap() = etag.to_owned();
    }
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }
    pub fn sent(&self) -> u64 {
        self.state.sent.load(Ordering::SeqCst)
    }
    /// Stops listening: new connections are refused (the artifact server is gone).
    pub fn stop(&self) {
        self.accept.abort();
    }
}

/// Starts a server on 127.0.0.1:0 serving `body` at `/artifact`, `200 ok` at `/healthz` and
/// `503` at `/sick`.
pub async fn serve(body: Vec<u8>, mode: Mode) -> TestServer {
    start(body, mode, None).await
}

/// [`serve`] over HTTPS with `cert` (for 127.0.0.1); a client that does not trust its CA
/// fails the handshake and never sends a request.
pub async fn serve_tls(body: Vec<u8>, mode: Mode, cert: &CertFiles) -> TestServer {
    start(body, mode, Some(tls_acceptor(cert, None))).await
}

/// [`serve_tls`] that also demands a client certificate issued by `client_ca` (a PEM file).
pub async fn serve_mtls(body: Vec<u8>, cert: &CertFiles, client_ca: &Path) -> TestServer {
    start(
        body,
        Mode::Normal,
        Some(tls_acceptor(cert, Some(client_ca))),
    )
    .await
}

/// A rustls acceptor (aws-lc-rs) for a test certificate, verifying clients against
/// `client_ca` when given.
fn tls_acceptor(cert: &CertFiles, client_ca: Option<&Path>) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(&cert.cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&cert.key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca_file) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in CertificateDer::pem_file_iter(ca_file).unwrap() {
                roots.add(ca.unwrap()).unwrap();
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(chain, key).unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

async fn start(body: Vec<u8>, mode: Mode, tls: Option<tokio_rustls::TlsAcceptor>) -> TestServer {
    let state = Arc::new(ServerState {
        body,
        etag: Mutex::new("\"v1\"".to_owned()),
        mode: Mutex::new(mode),
        seen: Mutex::new(Vec::new()),
        sent: AtomicU64::new(0),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let st = state.clone();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let accept = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let st = st.clone();
            match tls.clone() {
                None => drop(tokio::spawn(connection(socket, st))),
                Some(acceptor) => drop(tokio::spawn(async move {
                    // A refused handshake is the client's verdict: nothing to serve.
                    if let Ok(stream) = acceptor.accept(socket).await {
                        connection(stream, st).await;
                    }
                })),
            }
        }
    });
    TestServer {
        addr,
        scheme,
        state,
        accept,
    }
}

/// A parsed request head.
pub struct Request {
    pub path: String,
    headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }
}

pub async fn read_head(socket: &mut (impl AsyncRead + Unpin)) -> Option<Request> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = socket.read(&mut byte).await.ok()?;
        if n == 0 || buf.len() > 64 * 1024 {
            return None;
        }
        buf.extend_from_slice(&byte[..n]);
    }
    let text = String::from_utf8(buf).ok()?;
    let mut lines = text.split("\r\n");
    let path = lines.next()?.split(' ').nth(1)?.to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Some(Request { path, headers })
}

pub async fn respond(
    socket: &mut (impl AsyncWrite + Unpin),
    status: u16,
    headers: &[(&str, String)],
    body: &[u8],
) {
    let mut head = format!("HTTP/1.1 {status} X\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = socket.write_all(head.as_bytes()).await;
    let _ = socket.write_all(body).await;
}

async fn connection(mut socket: impl AsyncRead + AsyncWrite + Unpin, state: Arc<ServerState>) {
    let Some(req) = read_head(&mut socket).await else {
        return;
    };
    match req.path.as_str() {
        "/healthz" => {
            respond(&mut socket, 200, &[("Content-Length", "2".into())], b"ok").await;
            return;
        }
        "/sick" => {
            respond(&mut socket, 503, &[("Content-Length", "0".into())], b"").await;
            return;
        }
        "/artifact" => {}
        _ => {
            respond(&mut socket, 404, &[("Content-Length", "0".into())], b"").await;
            return;
        }
    }

    let mode = *state.mode.lock().unwrap();
    let etag = state.etag.lock().unwrap().clone();
    let range = req.header("Range");
    let if_range = req.header("If-Range");
    let log = |status: u16| {
        state.seen.lock().unwrap().push(Seen {
            range: range.clone(),
            if_range: if_range.clone(),
            status,
        })
    };

    if let Mode::Status(code) = mode {
        log(code);
        respond(&mut socket, code, &[("Content-Length", "0".into())], b"").await;
        return;
    }
    let mut body = state.body.clone();
    match mode {
        Mode::Tampered => {
            let i = body.len() / 2;
            body[i] ^= 0x40;
        }
        Mode::TooLong(extra) => body.extend(std::iter::repeat_n(0xAA, extra)),
        _ => {}
    }
    let total = body.len();
    let requested = range.as_deref().and_then(|v| {
        v.strip_prefix("bytes=")?
            .strip_suffix('-')?
            .parse::<usize>()
            .ok()
    });
    if requested.is_some() && mode == Mode::RangeNotSatisfiable {
        log(416);
        let headers = [
            ("Content-Range", format!("bytes */{total}")),
            ("Content-Length", "0".into()),
        ];
        respond(&mut socket, 416, &headers, b"").await;
        return;
    }
    let validator_ok = if_range.as_deref().is_none_or(|v| v == etag);
    let start = requested.filter(|_| mode != Mode::IgnoreRange && validator_ok);
    let (status, slice) = match start {
        Some(s) if s >= total => {
            log(416);
            respond(&mut socket, 416, &[("Content-Length", "0".into())], b"").await;
            return;
        }
        Some(s) => (206, &body[s..]),
        None => (200, &body[..]),
    };
    log(status);

    let mut headers = vec![
        ("Content-Length", slice.len().to_string()),
        ("ETag", etag.clone()),
        ("Accept-Ranges", "bytes".into()),
    ];
    if let Some(s) = start {
        headers.push(("Content-Range", format!("bytes {s}-{}/{total}", total - 1)));
    }
    let limit = match mode {
        Mode::CutAfter(k) | Mode::StallAfter(k) | Mode::Trickle { after: k, .. } => {
            k.min(slice.len())
        }
        _ => slice.len(),
    };
    respond(&mut socket, status, &headers, &slice[..limit]).await;
    state.sent.fetch_add(limit as u64, Ordering::SeqCst);
    if let Mode::Trickle {
        bytes, every_ms, ..
    } = mode
    {
        for piece in slice[limit..].chunks(bytes.max(1)) {
            tokio::time::sleep(Duration::from_millis(every_ms)).await;
            if socket.write_all(piece).await.is_err() {
                return;
            }
            state.sent.fetch_add(piece.len() as u64, Ordering::SeqCst);
        }
    }
    if matches!(mode, Mode::StallAfter(_)) {
        // Hold the connection open, sending nothing, until the client goes away.
        let mut sink = [0u8; 64];
        while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
    }
    // Dropping the socket closes the connection (a cut when fewer bytes than announced).
    let _ = socket.shutdown().await;
}

pub fn digest_of(bytes: &[u8]) -> Digest {
    Digest::of(bytes)
}

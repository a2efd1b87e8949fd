//! The resumable HTTP(S) artifact downloader.
//!
//! [`Downloader::download`] fetches one artifact into the [`Cache`]:
//!
//! 1. If a partial download exists, it is cut to [`DownloadRequest::resume_from`] (when given)
//!    and re-hashed through an [`ArtifactVerifier`] (a partial longer than the signed size is
//!    discarded).
//! 2. The request asks for the rest: `Range: bytes=N-`, with `If-Range:` the validator of the
//!    partial's first response (a strong ETag, else Last-Modified; kept beside the partial).
//!    A `206` must start at `N` (`Content-Range`). A `200` means the server ignored the range
//!    or the entity changed: the partial is truncated and the download restarts from zero. A
//!    `416` means the partial does not fit the server's entity: it is discarded and the
//!    download restarts from zero, once.
//! 3. Body bytes are hashed, buffered to [`DownloadConfig::chunk_size`] and appended to the
//!    partial. A byte past the signed size stops the download with
//!    [`ReleaseError::ArtifactTooLong`]; nothing past the signed size is ever written.
//! 4. At the end the verifier must accept size and digest; the partial is then fsynced and
//!    renamed into the cache ([`Cache::insert_from_partial`]). While the body streams in, the
//!    partial is fsynced in the background every 16 MiB
//!    ([`BackgroundSync`](crate::storage::BackgroundSync)), so the disk writes while the
//!    network delivers and the final fsync has only the tail left.
//!
//! # HTTPS
//!
//! With [`DownloadConfig::ca_file`] set, HTTPS artifact servers are verified against **only**
//! that CA bundle (pinned: no system or built-in root is trusted, see [`crate::tls`]); without
//! it, against the platform's roots. A failed handshake (unknown issuer, wrong host name, a
//! server that does not speak TLS) is [`DownloadError::Tls`], before any byte is written.
//! Plain `http://` URLs stay allowed unless [`DownloadConfig::require_https`]: the signed
//! digest protects the bytes either way, TLS adds confidentiality and keeps a network
//! attacker from wasting the device's bandwidth.
//!
//! A transfer slower than [`DownloadConfig::min_rate`] on average over a whole window is cut
//! with [`DownloadError::TooSlow`] (retryable), so a mirror cannot hold an update by trickling
//! bytes just fast enough to beat the read timeout.
//!
//! When the connection breaks, the bytes received so far are written and fsynced before the
//! error is returned, so a later call (from a new downloader, after an agent restart) resumes
//! where this one stopped. A verification failure discards the partial: its bytes cannot be
//! trusted as a prefix. Retrying is the core machine's decision; [`DownloadError::class`] tells
//! it what kind of failure happened.
//!
//! # Delta
//!
//! When the signed release names a chunk index ([`DownloadRequest::chunk_index`]) and
//! [`DownloadConfig::delta`] is on, the artifact is first built by [`crate::delta`]: chunks the
//! device already holds are copied, the others fetched with Range requests, each checked
//! against the signed index before it is written. On any failure the download goes on in full
//! from the end of the chunks written, so a delta never costs a retry.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ota_core::digest::Digest;
use ota_core::release::{ArtifactVerifier, ChunkIndexRef, ReleaseError};
use reqwest::StatusCode;
use reqwest::header::{
    CONTENT_RANGE, ETAG, HeaderMap, HeaderValue, IF_RANGE, LAST_MODIFIED, RANGE,
};

use crate::cache::{Cache, CacheError};
use crate::delta::{DeltaStats, SeedImage};
use crate::storage::{BackgroundSync, for_each_chunk};
use crate::tls::{TlsError, TlsFiles};

/// Settings of the downloader.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DownloadConfig {
    /// Bytes buffered before each write to the partial file (and the read size when re-hashing
    /// a partial). At most this much is lost (re-fetched) if the agent dies mid-download.
    pub chunk_size: usize,
    /// Limit for establishing a connection.
    pub connect_timeout: Duration,
    /// Limit for waiting on the next bytes of a response; a stalled transfer fails with
    /// [`DownloadError::Timeout`] (retryable).
    pub read_timeout: Duration,
    /// The pinned CA bundle (PEM) for HTTPS artifact servers: when set, only these
    /// certificates are trust anchors; when `None`, the platform's roots.
    pub ca_file: Option<PathBuf>,
    /// A client certificate chain (PEM) presented to HTTPS artifact servers (mutual TLS),
    /// with [`client_key`](Self::client_key).
    pub client_cert: Option<PathBuf>,
    /// The private key (PEM) of [`client_cert`](Self::client_cert).
    pub client_key: Option<PathBuf>,
    /// Refuse `http://` artifact URLs (and redirects to them) with
    /// [`DownloadError::InsecureUrl`]; off by default (the signed digest protects the bytes).
    pub require_https: bool,
    /// The slow-retrieval guard: a transfer slower than this is cut ([`DownloadError::TooSlow`],
    /// retryable); `None` turns it off.
    pub min_rate: Option<MinRate>,
    /// Build artifacts by delta when their release has a chunk index (on by default).
    pub delta: bool,
    /// Files whose chunks a delta may copy besides the cached artifacts (e.g. the running root
    /// filesystem's block device); read only, re-hashed at every use.
    pub delta_seeds: Vec<PathBuf>,
}

/// A minimum transfer rate, judged over a window: a mirror that trickles bytes just fast
/// enough to beat the read timeout cannot hold an update forever (TUF's slow-retrieval
/// attack).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinRate {
    /// Least average body bytes per second over a window.
    pub bytes_per_second: u64,
    /// The window the average is taken over.
    pub window: Duration,
}

impl MinRate {
    /// The default guard: 1 KiB/s averaged over 60 s (a 2G cellular link does several KiB/s).
    pub const DEFAULT: MinRate = MinRate {
        bytes_per_second: 1024,
        window: Duration::from_secs(60),
    };

    /// Whether `bytes` received over `elapsed` is below the rate.
    fn too_slow(&self, bytes: u64, elapsed: Duration) -> bool {
        u128::from(bytes) * 1000 < u128::from(self.bytes_per_second) * elapsed.as_millis()
    }
}

impl Default for DownloadConfig {
    fn default() -> Self {
        DownloadConfig {
            chunk_size: 64 * 1024,
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            ca_file: None,
            client_cert: None,
            client_key: None,
            require_https: false,
            min_rate: Some(MinRate::DEFAULT),
            delta: true,
            delta_seeds: Vec::new(),
        }
    }
}

impl DownloadConfig {
    /// The defaults: 64 KiB chunks, 30 s to connect, 60 s without bytes, at least 1 KiB/s
    /// over 60 s.
    pub fn new() -> Self {
        Self::default()
    }

    /// With another chunk size (at least one byte).
    pub fn with_chunk_size(mut self, chunk_size: usize) -> Self {
        self.chunk_size = chunk_size.max(1);
        self
    }

    /// With other timeouts.
    pub fn with_timeouts(mut self, connect: Duration, read: Duration) -> Self {
        self.connect_timeout = connect;
        self.read_timeout = read;
        self
    }

    /// With a pinned CA bundle (PEM): HTTPS servers must chain to it, and only to it.
    pub fn with_ca_file(mut self, ca_file: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(ca_file.into());
        self
    }

    /// With a client certificate chain and its private key (PEM files), for mutual TLS.
    pub fn with_client_identity(
        mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        self.client_cert = Some(cert.into());
        self.client_key = Some(key.into());
        self
    }

    /// Refuse (or allow) plain `http://` artifact URLs.
    pub fn with_require_https(mut self, require_https: bool) -> Self {
        self.require_https = require_https;
        self
    }

    /// With delta downloads on or off, and the extra seed files a delta may copy chunks from.
    pub fn with_delta(mut self, delta: bool, seeds: Vec<PathBuf>) -> Self {
        self.delta = delta;
        self.delta_seeds = seeds;
        self
    }

    /// The slow-retrieval guard (`None` turns it off).
    pub fn with_min_rate(mut self, min_rate: Option<MinRate>) -> Self {
        self.min_rate = min_rate;
        self
    }
}

/// What to download: the URL and what the signed manifest says about the artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadRequest {
    /// The artifact's URL (any mirror: the digest makes mirrors untrusted).
    pub url: String,
    /// The signed SHA-256 of the artifact.
    pub digest: Digest,
    /// The signed size of the artifact in bytes.
    pub size: u64,
    /// Keep at most this many bytes of the partial download (the rest is truncated) and resume
    /// after them; `None` keeps the whole partial. This is the `resume_from` of the core
    /// machine's `Download` action, which learnt the partial's length earlier.
    pub resume_from: Option<u64>,
    /// The signed reference to the artifact's chunk index, when the release has one.
    pub chunk_index: Option<ChunkIndexRef>,
    /// The running slot of the `ab` installer and the release it holds: a delta copies chunks
    /// from it as from the cached artifacts.
    pub running_slot: Option<SeedImage>,
}

impl DownloadRequest {
    /// A request that resumes from whatever partial download is on disk.
    pub fn new(url: impl Into<String>, digest: Digest, size: u64) -> Self {
        DownloadRequest {
            url: url.into(),
            digest,
            size,
            resume_from: None,
            chunk_index: None,
            running_slot: None,
        }
    }

    /// Builds the artifact by delta from the chunk index `index` (when delta is on).
    pub fn with_chunk_index(mut self, index: Option<ChunkIndexRef>) -> Self {
        self.chunk_index = index;
        self
    }

    /// Lets a delta copy chunks from the running slot `slot` (see
    /// [`running_slot`](Self::running_slot)).
    pub fn with_running_slot(mut self, slot: Option<SeedImage>) -> Self {
        self.running_slot = slot;
        self
    }

    /// Keep at most `resume_from` bytes of the partial download.
    pub fn with_resume_from(mut self, resume_from: u64) -> Self {
        self.resume_from = Some(resume_from);
        self
    }
}

/// Download progress, reported after each write to the partial file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the artifact on disk and verified as a prefix so far.
    pub done: u64,
    /// The artifact's signed size.
    pub total: u64,
}

/// A completed download.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Downloaded {
    /// The artifact's path in the cache.
    pub path: PathBuf,
    /// The offset the transfer (re)started from: the length of the verified partial kept from
    /// earlier attempts (0 for a fresh download or after a restart from zero).
    pub resumed_from: u64,
    /// Bytes of that kept prefix which a delta found in the device's own files (cached
    /// artifacts, the running slot): the earlier attempt copied them, it did not fetch them.
    /// 0 when no delta looked at the prefix (a full download, or a delta that failed first).
    pub resumed_copied: u64,
    /// Body bytes received over the network by this call (a delta's index included).
    pub received: u64,
    /// What the delta cost, when the artifact was built by delta to the end.
    pub delta: Option<DeltaStats>,
}

/// The part of a partial download kept from earlier attempts, as this call found it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct KeptPrefix {
    /// Its length: the transfer (re)started from here.
    pub(crate) len: u64,
    /// Bytes of it a delta found in the device's own files (copied, not fetched, back then).
    pub(crate) copied: u64,
}

impl Downloaded {
    /// The artifact's network cost over every attempt, as the device reports it: what this
    /// call received, plus the kept prefix less what a delta copied into it. The prefix's own
    /// delta index and retransmissions of earlier attempts are not known here and not counted.
    pub fn fetched_bytes(&self) -> u64 {
        self.received + self.resumed_from.saturating_sub(self.resumed_copied)
    }
}

/// The kind of a [`DownloadError`], for the core machine's retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorClass {
    /// Transient: connection refused or reset, timeout, 5xx, 408, 429. Retry later, resuming.
    Retryable,
    /// The bytes are not the signed artifact (digest, size, too long). The partial was
    /// discarded; the release (or this mirror) is bad.
    Verify,
    /// Retrying the same request will not help: 4xx, a bad URL, a TLS setup error, a server
    /// whose certificate is not trusted.
    Fatal,
    /// A local disk error (full, read-only, I/O error): not the server's fault.
    Local,
}

/// Why a download failed. [`class`](Self::class) groups the causes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DownloadError {
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// The TLS files (pinned CA, client certificate or key) cannot be used.
    #[error("download TLS setup: {0}")]
    TlsSetup(#[from] TlsError),
    /// The TLS handshake with the artifact server failed: its certificate does not chain to
    /// the trusted CA (pinned or platform), names another host or has expired, or the server
    /// does not speak TLS. Nothing was downloaded.
    #[error("TLS handshake with {host} failed: {reason}")]
    Tls {
        /// The server's host (from the URL).
        host: String,
        /// The TLS library's cause (e.g. "invalid peer certificate: UnknownIssuer").
        reason: String,
    },
    /// HTTPS is needed (an `https://` artifact URL, or `download.require_https`) but there is
    /// no CA certificate to verify servers with: no `download.ca_file` and none on the system.
    #[error(
        "HTTPS needs CA certificates and the system has none: set download.ca_file (a PEM bundle)"
    )]
    NoCaCertificates,
    /// A plain `http://` URL (or a redirect to one) while `require_https` is on.
    #[error("refusing the plain-HTTP artifact URL {url}: download.require_https is on")]
    InsecureUrl {
        /// The refused URL.
        url: String,
    },
    /// The request cannot be made (bad URL, unsupported scheme, redirect loop).
    #[error("invalid download request: {0}")]
    InvalidRequest(#[source] reqwest::Error),
    /// No bytes arrived within the connect or read timeout.
    #[error("download timed out: {}", with_causes(.0))]
    Timeout(#[source] reqwest::Error),
    /// The connection failed or broke (refused, reset, closed mid-body).
    #[error("download connection failed: {}", with_causes(.0))]
    Network(#[source] reqwest::Error),
    /// The transfer was slower than the configured minimum rate over a whole window (a slow
    /// or malicious mirror); the bytes received so far are kept for the retry.
    #[error(
        "download too slow: {bytes} bytes in {:.1} s, below the minimum of {min_bytes_per_second} bytes/s",
        .elapsed.as_secs_f64()
    )]
    TooSlow {
        /// Body bytes received in the window.
        bytes: u64,
        /// How long the window lasted.
        elapsed: Duration,
        /// The configured minimum.
        min_bytes_per_second: u64,
    },
    /// The server answered with a transient error status (5xx, 408, 429).
    #[error("server error: HTTP {0}")]
    ServerStatus(u16),
    /// The server refused the request (4xx other than a handled 416).
    #[error("request refused: HTTP {0}")]
    ClientStatus(u16),
    /// The server answered with a status the downloader does not handle (1xx, 3xx, 204, a
    /// 206 to a request without a range, a 416 twice).
    #[error("unexpected HTTP status {0}")]
    UnexpectedStatus(u16),
    /// A 206 whose `Content-Range` is missing or does not start where the request asked.
    #[error("bad Content-Range for a resume at {expected_start}: {header:?}")]
    BadContentRange {
        /// The offset asked for.
        expected_start: u64,
        /// The header received (empty when absent).
        header: String,
    },
    /// The bytes are not the signed artifact (digest mismatch, size mismatch, too long).
    #[error("artifact verification failed: {0}")]
    Verify(#[source] ReleaseError),
    /// A cache operation failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// Writing or reading the partial download failed.
    #[error("download {op} {path}: {source}")]
    Storage {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl DownloadError {
    /// The kind of failure (see [`ErrorClass`]).
    pub fn class(&self) -> ErrorClass {
        match self {
            DownloadError::Timeout(_)
            | DownloadError::Network(_)
            | DownloadError::TooSlow { .. }
            | DownloadError::ServerStatus(_)
            | DownloadError::BadContentRange { .. } => ErrorClass::Retryable,
            DownloadError::Verify(_) => ErrorClass::Verify,
            DownloadError::Client(_)
            | DownloadError::TlsSetup(_)
            | DownloadError::NoCaCertificates
            | DownloadError::Tls { .. }
            | DownloadError::InsecureUrl { .. }
            | DownloadError::InvalidRequest(_)
            | DownloadError::ClientStatus(_)
            | DownloadError::UnexpectedStatus(_) => ErrorClass::Fatal,
            DownloadError::Cache(_) | DownloadError::Storage { .. } => ErrorClass::Local,
        }
    }

    /// Whether a later attempt may succeed without anything changing ([`ErrorClass::Retryable`]).
    pub fn is_retryable(&self) -> bool {
        self.class() == ErrorClass::Retryable
    }

    /// The verification failure, for [`ErrorClass::Verify`] errors (what the core machine's
    /// `handle_download_failed` wants to know).
    pub fn release_error(&self) -> Option<&ReleaseError> {
        match self {
            DownloadError::Verify(e) => Some(e),
            _ => None,
        }
    }

    pub(crate) fn from_reqwest(e: reqwest::Error) -> Self {
        if let Some(reason) = tls_cause(&e) {
            let host = e
                .url()
                .and_then(|u| u.host_str())
                .unwrap_or("the artifact server")
                .to_owned();
            DownloadError::Tls { host, reason }
        } else if e.is_builder() || e.is_redirect() {
            DownloadError::InvalidRequest(e)
        } else if e.is_timeout() {
            DownloadError::Timeout(e)
        } else {
            DownloadError::Network(e)
        }
    }
}

fn storage_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> DownloadError + use<> {
    let path = path.to_path_buf();
    move |source| DownloadError::Storage { op, path, source }
}

/// `e` and its causes in one line (reqwest's own message omits them: "error sending request
/// for url (...)" says nothing of a refused connection or a reset), for the device's report.
fn with_causes(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

/// The TLS library's error somewhere in `e`'s source chain (a failed handshake), as text.
fn tls_cause(e: &reqwest::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        // The handshake error comes wrapped in io::Errors, whose `source` skips the wrapped
        // error itself: step into it instead.
        source = match err.downcast_ref::<io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

/// An HTTP client, and whether it can verify HTTPS servers.
#[derive(Debug, Clone)]
pub struct HttpClient {
    pub(crate) client: reqwest::Client,
    https: bool,
}

impl HttpClient {
    /// Whether the client has trust anchors for HTTPS (a CA file, or the system's roots):
    /// without them it speaks plain HTTP only.
    pub fn https(&self) -> bool {
        self.https
    }
}

/// Builds the client `make` describes, verifying HTTPS servers with the platform's roots. On a
/// system without CA certificates (a minimal device image) a client is built all the same, with
/// no trust anchor: plain HTTP works, every TLS handshake fails, and [`HttpClient::https`] is
/// false so callers can refuse `https://` URLs with an error naming the setting.
pub(crate) fn platform_client(
    make: impl Fn() -> reqwest::ClientBuilder,
) -> Result<HttpClient, reqwest::Error> {
    // reqwest builds its TLS configuration from the process default provider.
    crate::tls::install_default_provider();
    match make().build() {
        Ok(client) => Ok(HttpClient {
            client,
            https: true,
        }),
        Err(e) => match (
            crate::tls::system_roots(),
            crate::tls::client_config_trusting_nothing(),
        ) {
            (Err(TlsError::NoSystemRoots), Ok(tls)) => Ok(HttpClient {
                client: make().tls_backend_preconfigured(tls).build()?,
                https: false,
            }),
            _ => Err(e),
        },
    }
}

/// Whether `url` starts with `https://` (any case).
pub(crate) fn is_https(url: &str) -> bool {
    url.get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
}

/// The HTTP client of `config` (timeouts, pinned CA, client identity; reads the TLS files).
/// Without TLS files it verifies with the platform's roots; on a system without any, it is a
/// plain-HTTP client (see [`HttpClient::https`]) unless `require_https` is on
/// ([`DownloadError::NoCaCertificates`]).
pub fn http_client(config: &DownloadConfig) -> Result<HttpClient, DownloadError> {
    let builder = || {
        reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            .https_only(config.require_https)
    };
    let files = TlsFiles {
        ca_file: config.ca_file.as_deref(),
        client_cert: config.client_cert.as_deref(),
        client_key: config.client_key.as_deref(),
    };
    if files.any() {
        let mut tls = crate::tls::client_config(files)?;
        // The artifact servers speak HTTP/1.1 (the client has no HTTP/2).
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let client = builder()
            .tls_backend_preconfigured(tls)
            .build()
            .map_err(DownloadError::Client)?;
        return Ok(HttpClient {
            client,
            https: true,
        });
    }
    let client = platform_client(builder).map_err(DownloadError::Client)?;
    if config.require_https && !client.https {
        return Err(DownloadError::NoCaCertificates);
    }
    Ok(client)
}

/// Downloads artifacts into a [`Cache`], resuming partial downloads (see the
/// [module documentation](self)).
#[derive(Debug, Clone)]
pub struct Downloader {
    pub(crate) client: reqwest::Client,
    pub(crate) cache: Cache,
    https: bool,
    require_https: bool,
    chunk_size: usize,
    pub(crate) min_rate: Option<MinRate>,
    delta: bool,
    pub(crate) delta_seeds: Vec<PathBuf>,
}

/// Where a download stands: the verifier over the bytes on disk.
pub(crate) struct Cursor {
    verifier: ArtifactVerifier,
    pub(crate) offset: u64,
}

impl Downloader {
    /// A downloader writing into `cache`.
    pub fn new(cache: Cache, config: &DownloadConfig) -> Result<Self, DownloadError> {
        Ok(Self::with_client(cache, http_client(config)?, config))
    }

    /// A downloader writing into `cache` with `client` (made by [`http_client`] from the same
    /// `config`): the agent builds the client, which reads the TLS files, before it touches
    /// its data directory.
    pub fn with_client(cache: Cache, client: HttpClient, config: &DownloadConfig) -> Self {
        Downloader {
            client: client.client,
            cache,
            https: client.https,
            require_https: config.require_https,
            chunk_size: config.chunk_size.max(1),
            min_rate: config
                .min_rate
                .filter(|r| r.bytes_per_second > 0 && !r.window.is_zero()),
            delta: config.delta,
            delta_seeds: config.delta_seeds.clone(),
        }
    }

    /// The cache this downloader fills.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Downloads `req` into the cache, resuming a partial download, and returns the cached
    /// artifact. `progress` is called with the bytes done after each write.
    pub async fn download(
        &self,
        req: &DownloadRequest,
        mut progress: impl FnMut(Progress),
    ) -> Result<Downloaded, DownloadError> {
        let https = is_https(&req.url);
        if self.require_https && !https {
            return Err(DownloadError::InsecureUrl {
                url: req.url.clone(),
            });
        }
        if https && !self.https {
            return Err(DownloadError::NoCaCertificates);
        }
        let total = req.size;
        let mut cursor = self.resume_point(req).await?;
        let mut kept = KeptPrefix {
            len: cursor.offset,
            copied: 0,
        };
        let mut received = 0u64;
        let mut restarted = false;
        progress(Progress {
            done: cursor.offset,
            total,
        });

        let mut delta = None;
        if let Some(index) = req
            .chunk_index
            .filter(|_| self.delta && cursor.offset < total)
        {
            match self
                .delta(
                    req,
                    index,
                    &mut cursor,
                    &mut received,
                    &mut kept,
                    &mut progress,
                )
                .await
            {
                Ok(stats) => delta = Some(stats),
                Err(e) => tracing::info!(
                    digest = %req.digest,
                    offset = cursor.offset,
                    "delta download stopped, going on in full: {e}"
                ),
            }
            // A delta that cut the partial back and then stopped kept less.
            kept.len = kept.len.min(cursor.offset);
        } else if self.delta && total > 0 && kept.len == total {
            kept.copied = self.copied_in_complete_partial(req, &mut received).await;
        }

        while cursor.offset < total {
            let mut request = self.client.get(&req.url);
            if cursor.offset > 0 {
                request = request.header(RANGE, format!("bytes={}-", cursor.offset));
                if let Some(validator) = self.read_validator(&req.digest) {
                    request = request.header(IF_RANGE, validator);
                }
            }
            let mut response = request.send().await.map_err(DownloadError::from_reqwest)?;
            let status = response.status();
            match status {
                StatusCode::PARTIAL_CONTENT if cursor.offset > 0 => {
                    check_content_range(response.headers(), cursor.offset)?;
                }
                StatusCode::OK => {
                    if cursor.offset > 0 {
                        tracing::info!(
                            digest = %req.digest,
                            offset = cursor.offset,
                            "server sent the whole artifact: restarting from zero"
                        );
                    }
                    self.start_partial(&req.digest, response.headers())?;
                    cursor = Cursor {
                        verifier: ArtifactVerifier::new(req.digest, total),
                        offset: 0,
                    };
                    kept = KeptPrefix::default();
                    progress(Progress { done: 0, total });
                }
                StatusCode::RANGE_NOT_SATISFIABLE if cursor.offset > 0 && !restarted => {
                    tracing::info!(digest = %req.digest, "range not satisfiable: restarting from zero");
                    self.cache.remove_partial(&req.digest)?;
                    cursor = Cursor {
                        verifier: ArtifactVerifier::new(req.digest, total),
                        offset: 0,
                    };
                    kept = KeptPrefix::default();
                    restarted = true;
                    continue;
                }
                s if s.is_server_error()
                    || s == StatusCode::REQUEST_TIMEOUT
                    || s == StatusCode::TOO_MANY_REQUESTS =>
                {
                    return Err(DownloadError::ServerStatus(s.as_u16()));
                }
                s if s.is_client_error() => return Err(DownloadError::ClientStatus(s.as_u16())),
                s => return Err(DownloadError::UnexpectedStatus(s.as_u16())),
            }
            self.transfer(
                req,
                &mut response,
                &mut cursor,
                &mut received,
                &mut progress,
            )
            .await?;
            // A body that ended before the signed size is a short entity: the checks below
            // report it (a retry would fetch the same bytes).
            break;
        }

        let path = self.cache.partial_path(&req.digest);
        let Cursor { verifier, .. } = cursor;
        if let Err(e) = verifier.finish() {
            self.cache.remove_partial(&req.digest)?;
            return Err(DownloadError::Verify(e));
        }
        if self.cache.partial_len(&req.digest)?.is_none() {
            // An empty artifact never got a partial file.
            let st = self.cache.storage();
            st.create(&path).map_err(storage_err("create", &path))?;
        }
        let path = self.cache.insert_from_partial(&req.digest)?;
        Ok(Downloaded {
            path,
            resumed_from: kept.len,
            resumed_copied: kept.copied,
            received,
            delta,
        })
    }

    /// Re-hashes the partial download (if any) and returns where to resume.
    pub(crate) async fn resume_point(
        &self,
        req: &DownloadRequest,
    ) -> Result<Cursor, DownloadError> {
        let mut verifier = ArtifactVerifier::new(req.digest, req.size);
        let fresh = Cursor {
            verifier: verifier.clone(),
            offset: 0,
        };
        let len = match self.cache.partial_len(&req.digest)? {
            None | Some(0) => return Ok(fresh),
            Some(len) if len > req.size => {
                tracing::warn!(digest = %req.digest, len, "partial longer than the artifact: discarded");
                self.cache.remove_partial(&req.digest)?;
                return Ok(fresh);
            }
            Some(len) => len,
        };
        let path = self.cache.partial_path(&req.digest);
        let len = match req.resume_from {
            Some(keep) if keep < len => {
                let st = self.cache.storage();
                st.truncate(&path, keep)
                    .map_err(storage_err("truncate", &path))?;
                keep
            }
            _ => len,
        };
        if len == 0 {
            return Ok(fresh);
        }
        let read = for_each_chunk(
            &**self.cache.storage(),
            &path,
            self.chunk_size,
            Some(len),
            |chunk| verifier.update(chunk).map_err(io::Error::other),
        )
        .await
        .map_err(storage_err("read", &path))?;
        if read != len {
            // The file shrank under us: start over rather than trust it.
            self.cache.remove_partial(&req.digest)?;
            return Ok(fresh);
        }
        Ok(Cursor {
            verifier,
            offset: len,
        })
    }

    /// Truncates (or creates) the partial file and records the response's validator.
    pub(crate) fn start_partial(
        &self,
        digest: &Digest,
        headers: &HeaderMap,
    ) -> Result<(), DownloadError> {
        let st = self.cache.storage();
        let part = self.cache.partial_path(digest);
        st.create(&part).map_err(storage_err("create", &part))?;
        let vpath = self.cache.validator_path(digest);
        match validator_of(headers) {
            Some(v) => {
                st.create(&vpath).map_err(storage_err("create", &vpath))?;
                st.append(&vpath, v.as_bytes())
                    .map_err(storage_err("write", &vpath))?;
                st.sync_file(&vpath).map_err(storage_err("fsync", &vpath))?;
            }
            None => match st.remove_file(&vpath) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(storage_err("remove", &vpath)(e)),
            },
        }
        Ok(())
    }

    /// The validator kept beside the partial, if any and well-formed.
    fn read_validator(&self, digest: &Digest) -> Option<HeaderValue> {
        let bytes = self
            .cache
            .storage()
            .read(&self.cache.validator_path(digest))
            .ok()?;
        HeaderValue::from_bytes(&bytes).ok()
    }

    /// Streams the body into the partial file.
    async fn transfer(
        &self,
        req: &DownloadRequest,
        response: &mut reqwest::Response,
        cursor: &mut Cursor,
        received: &mut u64,
        progress: &mut impl FnMut(Progress),
    ) -> Result<(), DownloadError> {
        let part = self.cache.partial_path(&req.digest);
        let mut buf: Vec<u8> = Vec::with_capacity(self.chunk_size);
        let mut window = RateWindow::start();
        let mut sync = BackgroundSync::new(self.cache.storage().clone(), &part, cursor.offset);
        loop {
            let failure = match response.chunk().await {
                Ok(Some(bytes)) => match window.check(self.min_rate, bytes.len() as u64) {
                    Ok(()) => Ok(bytes),
                    Err(slow) => Err(slow),
                },
                Ok(None) => break,
                Err(e) => Err(DownloadError::from_reqwest(e)),
            };
            let bytes = match failure {
                Ok(bytes) => bytes,
                Err(e) => {
                    // Keep what arrived: the next attempt resumes after it.
                    self.flush(req, &part, &mut buf, cursor, progress)?;
                    let st = self.cache.storage();
                    st.sync_file(&part).map_err(storage_err("fsync", &part))?;
                    return Err(e);
                }
            };
            *received += bytes.len() as u64;
            let room = cursor.verifier.remaining() - buf.len() as u64;
            if bytes.len() as u64 > room {
                // More than signed: refuse, keep nothing.
                self.cache.remove_partial(&req.digest)?;
                return Err(DownloadError::Verify(ReleaseError::ArtifactTooLong {
                    expected: req.size,
                }));
            }
            let mut rest: &[u8] = &bytes;
            while !rest.is_empty() {
                let take = (self.chunk_size - buf.len()).min(rest.len());
                let (head, tail) = rest.split_at(take);
                buf.extend_from_slice(head);
                rest = tail;
                if buf.len() >= self.chunk_size {
                    self.flush(req, &part, &mut buf, cursor, progress)?;
                }
            }
            sync.wrote(cursor.offset)
                .map_err(storage_err("fsync", &part))?;
        }
        self.flush(req, &part, &mut buf, cursor, progress)?;
        sync.finish().map_err(storage_err("fsync", &part))
    }

    /// Hashes and appends one verified chunk of a delta.
    pub(crate) fn write_chunk(
        &self,
        req: &DownloadRequest,
        part: &Path,
        chunk: &[u8],
        cursor: &mut Cursor,
        progress: &mut impl FnMut(Progress),
    ) -> Result<(), DownloadError> {
        let mut buf = chunk.to_vec();
        self.flush(req, part, &mut buf, cursor, progress)
    }

    /// Hashes and appends the buffered bytes.
    fn flush(
        &self,
        req: &DownloadRequest,
        part: &Path,
        buf: &mut Vec<u8>,
        cursor: &mut Cursor,
        progress: &mut impl FnMut(Progress),
    ) -> Result<(), DownloadError> {
        if buf.is_empty() {
            return Ok(());
        }
        cursor.verifier.update(buf).map_err(DownloadError::Verify)?;
        self.cache
            .storage()
            .append(part, buf)
            .map_err(storage_err("write", part))?;
        cursor.offset += buf.len() as u64;
        buf.clear();
        progress(Progress {
            done: cursor.offset,
            total: req.size,
        });
        Ok(())
    }
}

/// The bytes received since the current rate window started (tokio's clock, so tests with
/// paused time cover it).
pub(crate) struct RateWindow {
    since: tokio::time::Instant,
    bytes: u64,
}

impl RateWindow {
    pub(crate) fn start() -> Self {
        RateWindow {
            since: crate::clock::monotonic_now(),
            bytes: 0,
        }
    }

    /// Counts `bytes` just received; at the end of each window, fails if the window's average
    /// is below `min`, else starts the next window.
    pub(crate) fn check(&mut self, min: Option<MinRate>, bytes: u64) -> Result<(), DownloadError> {
        let Some(min) = min else {
            return Ok(());
        };
        self.bytes += bytes;
        let elapsed = self.since.elapsed();
        if elapsed < min.window {
            return Ok(());
        }
        if min.too_slow(self.bytes, elapsed) {
            return Err(DownloadError::TooSlow {
                bytes: self.bytes,
                elapsed,
                min_bytes_per_second: min.bytes_per_second,
            });
        }
        *self = RateWindow::start();
        Ok(())
    }
}

/// The validator to send back in `If-Range`: a strong ETag, else Last-Modified (a weak ETag
/// must not be used for a range).
fn validator_of(headers: &HeaderMap) -> Option<HeaderValue> {
    if let Some(etag) = headers.get(ETAG)
        && !etag.as_bytes().starts_with(b"W/")
    {
        return Some(etag.clone());
    }
    headers.get(LAST_MODIFIED).cloned()
}

/// Checks that a 206 starts where the request asked (`Content-Range: bytes N-M/T`).
pub(crate) fn check_content_range(headers: &HeaderMap, offset: u64) -> Result<(), DownloadError> {
    let raw = headers.get(CONTENT_RANGE);
    let text = raw.and_then(|v| v.to_str().ok()).unwrap_or_default();
    let start = text
        .strip_prefix("bytes ")
        .and_then(|r| r.split_once('-'))
        .and_then(|(start, _)| start.trim().parse::<u64>().ok());
    if start == Some(offset) {
        Ok(())
    } else {
        Err(DownloadError::BadContentRange {
            expected_start: offset,
            header: text.to_owned(),
        })
    }
}

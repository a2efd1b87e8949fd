//! `server.toml`: the fleet server's configuration.
//!
//! Every key, its default and an example file are in `docs/server.md`. Unknown keys are
//! refused (a typo must not silently fall back to a default). Relative paths are resolved
//! against the directory of the configuration file ([`Config::load`]) or the base directory
//! given to [`Config::from_toml`].
//!
//! The server holds **no signing key**: the trust set is public keys and a threshold.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Component, Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use ed25519_dalek::pkcs8::DecodePublicKey;
use ota_core::release::{TrustSet, TrustSetError};
use ota_core::wire::Topics;
use serde::Deserialize;

pub use crate::limits::LimitsConfig;

/// Default HTTP listen address.
pub const DEFAULT_HTTP_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080));
/// Default port of the embedded MQTT broker (and of `mqtt://host` without a port).
pub const DEFAULT_MQTT_PORT: u16 = 1883;
/// Default port of `mqtts://host` without a port.
pub const DEFAULT_MQTTS_PORT: u16 = 8883;
/// Default MQTT listen address of the embedded broker.
pub const DEFAULT_MQTT_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, DEFAULT_MQTT_PORT));
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "./ota-data";
/// Shortest operator token accepted, in bytes.
pub const MIN_TOKEN_LEN: usize = 16;
/// Largest key file read, in bytes (a PEM ed25519 public key is about 113 bytes).
const MAX_KEY_FILE: u64 = 16 * 1024;

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A file (the configuration or a key) could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed, has an unknown key or a value of the wrong type (the message
    /// names the key and line).
    #[error("invalid server.toml: {0}")]
    Parse(String),
    /// A key has a value the server cannot use.
    #[error("invalid server.toml: {key}: {reason}")]
    Invalid {
        /// The key, e.g. `database.url`.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A trust-set key file is not an ed25519 SubjectPublicKeyInfo PEM public key.
    #[error("trust key {path}: {reason}")]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The keys and threshold do not make a trust set.
    #[error("trust set: {0}")]
    TrustSet(#[from] TrustSetError),
}

pub(crate) fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// The whole `server.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// Where the default SQLite database and local artifact store live (`./ota-data`).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The HTTP API and artifact server.
    #[serde(default)]
    pub http: HttpConfig,
    /// MQTT: the embedded broker or an external one.
    #[serde(default)]
    pub mqtt: MqttConfig,
    /// The database.
    #[serde(default)]
    pub database: DatabaseConfig,
    /// The artifact store.
    #[serde(default)]
    pub store: StoreConfig,
    /// The fleet trust set: public keys and threshold (required).
    pub trust: TrustConfig,
    /// Operator bearer tokens.
    #[serde(default)]
    pub operators: Vec<OperatorConfig>,
    /// Webhooks: every committed audit event is POSTed to each as JSON, with retries
    /// ([`crate::webhook`]).
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    /// What one client or device may cost the server: connection caps, timeouts, message
    /// budgets ([`crate::limits`]).
    #[serde(default)]
    pub limits: LimitsConfig,
    /// High availability: several replicas on one PostgreSQL database (`docs/ha.md`). Without
    /// it the server is the only replica and takes the coordinator lease at start.
    #[serde(default)]
    pub ha: Option<HaConfig>,
}

/// Default `[ha] lease_ttl_secs`.
pub const DEFAULT_LEASE_TTL_SECS: u64 = 10;

fn default_lease_ttl() -> u64 {
    DEFAULT_LEASE_TTL_SECS
}

/// `[ha]`: this replica of a server that runs as several (`docs/ha.md`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct HaConfig {
    /// This replica's id, unique among the replicas (default: the host name and process id).
    #[serde(default)]
    pub replica_id: Option<String>,
    /// The URL the other replicas forward coordinator commands to (default: `http.public_url`,
    /// else the bound address).
    #[serde(default)]
    pub advertise_url: Option<String>,
    /// How long the coordinator lease lasts without renewal, seconds (renewed every third).
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl_secs: u64,
    /// The leader removes a replica from the list (`ota server status`) once its last
    /// heartbeat is older than this, seconds (default: 10 × `lease_ttl_secs`; at least
    /// `lease_ttl_secs`). A replica that stops cleanly removes itself at once.
    #[serde(default)]
    pub forget_replica_after_secs: Option<u64>,
}

impl HaConfig {
    /// `[ha]` with every default.
    pub fn new() -> Self {
        HaConfig {
            replica_id: None,
            advertise_url: None,
            lease_ttl_secs: DEFAULT_LEASE_TTL_SECS,
            forget_replica_after_secs: None,
        }
    }

    /// `forget_replica_after_secs`, or its default: 10 × `lease_ttl_secs`.
    pub fn forget_replica_after(&self) -> std::time::Duration {
        std::time::Duration::from_secs(
            self.forget_replica_after_secs
                .unwrap_or(self.lease_ttl_secs.saturating_mul(10)),
        )
    }
}

impl Default for HaConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// A TOML error as "line N, column M: message", without the quoted source line that the
/// error's `Display` adds: that line may hold a token.
fn parse_error(error: &toml::de::Error, text: &str) -> ConfigError {
    let message = error.message().trim_end();
    match error.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            ConfigError::Parse(format!("line {line}, column {column}: {message}"))
        }
        None => ConfigError::Parse(message.to_string()),
    }
}

/// `base.join(path)` without `.` components (`/etc/ota` + `./data` is `/etc/ota/data`).
fn join_clean(base: &Path, path: &Path) -> PathBuf {
    let joined: PathBuf = base
        .join(path)
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect();
    if joined.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        joined
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from(DEFAULT_DATA_DIR)
}

impl Config {
    /// A configuration with every default, the given data directory and trust set, and no
    /// operators (for `ota demo` and tests, which then adjust the public fields).
    pub fn new(data_dir: impl Into<PathBuf>, trust: TrustConfig) -> Self {
        Config {
            data_dir: data_dir.into(),
            http: HttpConfig::default(),
            mqtt: MqttConfig::default(),
            database: DatabaseConfig::default(),
            store: StoreConfig::default(),
            trust,
            operators: Vec::new(),
            webhooks: Vec::new(),
            limits: LimitsConfig::default(),
            ha: None,
        }
    }

    /// Reads and validates `path`; relative paths in it are relative to its directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Self::from_toml(&text, base)
    }

    /// Parses and validates TOML text; relative paths are resolved against `base_dir`.
    pub fn from_toml(text: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| parse_error(&e, text))?;
        config.resolve_paths(base_dir);
        config.validate()?;
        Ok(config)
    }

    /// Makes the data directory, key and TLS paths absolute against `base_dir` (paths that are
    /// already absolute are kept).
    pub fn resolve_paths(&mut self, base_dir: &Path) {
        self.data_dir = join_clean(base_dir, &self.data_dir);
        for key in &mut self.trust.keys {
            *key = join_clean(base_dir, key);
        }
        for file in [&mut self.http.tls_cert, &mut self.http.tls_key]
            .into_iter()
            .flatten()
        {
            *file = join_clean(base_dir, file);
        }
        self.mqtt.resolve_paths(base_dir);
    }

    /// Checks every value that can be checked without touching the network or key files.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.database_url()?;
        self.store_location()?;
        if self.http.tls_cert.is_some() != self.http.tls_key.is_some() {
            return Err(invalid("http.tls_cert", "tls_cert and tls_key go together"));
        }
        if let Some(url) = &self.http.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(invalid(
                "http.public_url",
                "must be an http:// or https:// URL",
            ));
        }
        if let MqttBroker::External { host, .. } = &self.mqtt.broker
            && host.is_empty()
        {
            return Err(invalid("mqtt.url", "the host is empty"));
        }
        if self.trust.keys.is_empty() {
            return Err(invalid("trust.keys", "at least one public key is needed"));
        }
        if self.trust.threshold == 0 || self.trust.threshold > self.trust.keys.len() {
            return Err(invalid(
                "trust.threshold",
                format!("must be 1..={} (the number of keys)", self.trust.keys.len()),
            ));
        }
        let mut names = HashSet::new();
        let mut tokens = HashSet::new();
        for op in &self.operators {
            if op.name.trim().is_empty() {
                return Err(invalid("operators.name", "an operator name is empty"));
            }
            if op.token.len() < MIN_TOKEN_LEN {
                return Err(invalid(
                    "operators.token",
                    format!(
                        "the token of operator {:?} is shorter than {MIN_TOKEN_LEN} bytes",
                        op.name
                    ),
                ));
            }
            if op
                .token
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(invalid(
                    "operators.token",
                    format!(
                        "the token of operator {:?} contains whitespace or control characters",
                        op.name
                    ),
                ));
            }
            if !names.insert(op.name.as_str()) {
                return Err(invalid(
                    "operators.name",
                    format!("operator {:?} is listed twice", op.name),
                ));
            }
            if !tokens.insert(op.token.as_str()) {
                return Err(invalid(
                    "operators.token",
                    format!("operator {:?} reuses another operator's token", op.name),
                ));
            }
        }
        self.limits.validate()?;
        if let Some(ha) = &self.ha {
            if matches!(self.mqtt.broker, MqttBroker::Embedded { .. }) {
                return Err(invalid(
                    "ha",
                    "replicas need an external MQTT broker (mqtt.url): each embedded broker \
                     would hold only its own devices (see docs/ha.md)",
                ));
            }
            if ha.advertise_url.is_none() && self.http.listen.ip().is_unspecified() {
                return Err(invalid(
                    "ha.advertise_url",
                    format!(
                        "needed when http.listen is {} (the other replicas cannot reach an \
                         unspecified address)",
                        self.http.listen
                    ),
                ));
            }
            if ha.lease_ttl_secs < 3 {
                return Err(invalid("ha.lease_ttl_secs", "must be at least 3 seconds"));
            }
            if ha
                .forget_replica_after_secs
                .is_some_and(|secs| secs < ha.lease_ttl_secs)
            {
                return Err(invalid(
                    "ha.forget_replica_after_secs",
                    "must be at least ha.lease_ttl_secs (a live standby writes its heartbeat \
                     every third of it)",
                ));
            }
            if ha
                .replica_id
                .as_deref()
                .is_some_and(|id| id.trim().is_empty())
            {
                return Err(invalid("ha.replica_id", "is empty"));
            }
            if let Some(url) = &ha.advertise_url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return Err(invalid(
                    "ha.advertise_url",
                    "must be an http:// or https:// URL",
                ));
            }
        }
        for hook in &self.webhooks {
            if !(hook.url.starts_with("http://") || hook.url.starts_with("https://")) {
                return Err(invalid(
                    "webhooks.url",
                    "must be an http:// or https:// URL",
                ));
            }
            if let Some(kind) = hook
                .events
                .iter()
                .find(|k| !crate::event_kinds::is_known(k))
            {
                return Err(invalid(
                    "webhooks.events",
                    format!(
                        "{kind:?} is not an event kind (see docs/api.md: {})",
                        crate::event_kinds::EventKind::names()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The database URL: `database.url`, or a SQLite file `ota.db` under the data directory.
    pub fn database_url(&self) -> Result<String, ConfigError> {
        match &self.database.url {
            None => Ok(format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("ota.db").display()
            )),
            Some(url)
                if url.starts_with("sqlite:")
                    || url.starts_with("postgres://")
                    || url.starts_with("postgresql://") =>
            {
                Ok(url.clone())
            }
            Some(_) => Err(invalid(
                "database.url",
                "must start with sqlite:, postgres:// or postgresql://",
            )),
        }
    }

    /// Where artifacts are stored: `store.url` parsed, or `artifacts/` under the data directory.
    pub fn store_location(&self) -> Result<StoreLocation, ConfigError> {
        let Some(url) = &self.store.url else {
            return Ok(StoreLocation::Local(self.data_dir.join("artifacts")));
        };
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(invalid("store.url", "s3:// URL without a bucket"));
            }
            return Ok(StoreLocation::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
                region: self.store.region.clone(),
                endpoint: self.store.endpoint.clone(),
                allow_http: self.store.allow_http,
            });
        }
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(invalid("store.url", "file:// URLs need an absolute path"));
            }
            return Ok(StoreLocation::Local(PathBuf::from(path)));
        }
        Err(invalid("store.url", "must start with s3:// or file://"))
    }
}

/// Where the artifact store lives, resolved from [`StoreConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreLocation {
    /// Files under this directory.
    Local(PathBuf),
    /// An S3 (or S3-compatible) bucket; credentials come from the standard `AWS_*` environment
    /// variables.
    S3 {
        /// The bucket.
        bucket: String,
        /// The key prefix inside the bucket (no leading or trailing `/`; may be empty).
        prefix: String,
        /// The region (`store.region`, else `AWS_REGION`).
        region: Option<String>,
        /// A custom endpoint for S3-compatible servers (`store.endpoint`).
        endpoint: Option<String>,
        /// Allow plain-HTTP endpoints (`store.allow_http`).
        allow_http: bool,
    },
}

/// `[http]`: the REST API and artifact server.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct HttpConfig {
    /// Listen address (`127.0.0.1:8080`); port 0 picks a free port.
    #[serde(default = "default_http_listen")]
    pub listen: SocketAddr,
    /// The base URL devices use to download artifacts (`https://ota.example.com`); defaults to
    /// `http://` (or `https://` with TLS) + the bound address.
    #[serde(default)]
    pub public_url: Option<String>,
    /// The server's certificate chain (PEM): with `tls_key`, the listener speaks HTTPS only
    /// (API and artifacts).
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `tls_cert`; keep the file private (0600).
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

impl HttpConfig {
    /// The certificate and key files when HTTPS is configured.
    pub fn tls(&self) -> Option<(&Path, &Path)> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            _ => None,
        }
    }
}

fn default_http_listen() -> SocketAddr {
    DEFAULT_HTTP_LISTEN
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: DEFAULT_HTTP_LISTEN,
            public_url: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// `[mqtt]`: the broker (embedded or external) and the fleet's topic namespace.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawMqtt")]
#[non_exhaustive]
pub struct MqttConfig {
    /// The embedded broker (`listen`) or an external broker (`url`).
    pub broker: MqttBroker,
    /// `topic_prefix`: every ota topic is `{topic_prefix}/...` (default `ota/v1`); the
    /// fleet's agents use the same (`broker.topic_prefix`). Fleets with different prefixes
    /// share a broker without seeing each other's messages.
    pub topics: Topics,
}

/// Where the fleet's MQTT broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MqttBroker {
    /// Run the embedded broker in-process on this address (port 0 picks a free port).
    Embedded {
        /// Listen address of the front door devices connect to.
        listen: SocketAddr,
        /// TLS and device authentication of the front door.
        security: BrokerSecurity,
    },
    /// Connect to an external broker (`mqtt://host:port` or `mqtts://host:port`).
    External {
        /// Broker host name or address.
        host: String,
        /// Broker port.
        port: u16,
        /// TLS and credentials of the server's connection.
        client: ClientSecurity,
        /// `failover_urls`: more nodes of the same broker cluster, `(host, port)`, with the
        /// scheme, TLS and credentials of `url`. After every failed or lost connection the
        /// server moves to the next of `url`, `failover_urls...` (round robin).
        failover: Vec<(String, u16)>,
    },
}

/// The embedded broker's front door: TLS and device authentication (`[mqtt]` keys next to
/// `listen`). Authentication and the per-device ACL are on when `device_secret_file` or
/// `tls_client_ca` is set; otherwise the broker is open (see `docs/security.md`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BrokerSecurity {
    /// `tls_cert`: the front door's certificate chain (PEM); TLS is on when set.
    pub tls_cert: Option<PathBuf>,
    /// `tls_key`: its private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// `tls_client_ca`: clients must present a certificate issued by this CA, whose CN is their
    /// client id (device id).
    pub tls_client_ca: Option<PathBuf>,
    /// `device_secret_file`: the secret device passwords derive from (created 0600 if
    /// missing); devices log in with username = device id and `ota server device-credential`.
    pub device_secret_file: Option<PathBuf>,
}

impl BrokerSecurity {
    /// Whether the front door authenticates devices and enforces the ACL.
    pub fn authenticates(&self) -> bool {
        self.tls_client_ca.is_some() || self.device_secret_file.is_some()
    }
}

/// The server's connection to an external broker (`[mqtt]` keys next to `url`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientSecurity {
    /// TLS (`mqtts://`).
    pub tls: bool,
    /// `ca_file`: verify the broker against this CA bundle only (pinned); default: the system
    /// roots.
    pub ca_file: Option<PathBuf>,
    /// `client_cert`: a client certificate chain (PEM), with `client_key`.
    pub client_cert: Option<PathBuf>,
    /// `client_key`: its private key (PEM).
    pub client_key: Option<PathBuf>,
    /// `username`.
    pub username: Option<String>,
    /// `password_file`: a file holding the password (trailing newline ignored).
    pub password_file: Option<PathBuf>,
    /// `device_secret_file`: the secret `ota server device-credential` derives device
    /// passwords from, for the external broker's password file (created 0600 if missing). The
    /// server itself never reads it: the external broker authenticates the devices.
    pub device_secret_file: Option<PathBuf>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig::embedded(DEFAULT_MQTT_LISTEN)
    }
}

impl MqttConfig {
    /// The embedded broker on `listen`, open (no TLS, no authentication), default topics.
    pub fn embedded(listen: SocketAddr) -> Self {
        MqttConfig::with_broker(MqttBroker::Embedded {
            listen,
            security: BrokerSecurity::default(),
        })
    }

    /// `broker` with the default topic namespace.
    pub fn with_broker(broker: MqttBroker) -> Self {
        MqttConfig {
            broker,
            topics: Topics::default(),
        }
    }

    /// `mqtt.device_secret_file`: the secret device passwords derive from, for the embedded
    /// broker's front door or an external broker's password file alike.
    pub fn device_secret_file(&self) -> Option<&Path> {
        match &self.broker {
            MqttBroker::Embedded { security, .. } => security.device_secret_file.as_deref(),
            MqttBroker::External { client, .. } => client.device_secret_file.as_deref(),
        }
    }

    /// Parses an external broker URL `mqtt://host[:port]` or `mqtts://host[:port]` (port 1883,
    /// or 8883 with TLS); no TLS files or credentials.
    pub fn external(url: &str) -> Result<Self, ConfigError> {
        let (host, port, tls) = broker_address(url, "mqtt.url")?;
        Ok(MqttConfig::with_broker(MqttBroker::External {
            host,
            port,
            client: ClientSecurity {
                tls,
                ..ClientSecurity::default()
            },
            failover: Vec::new(),
        }))
    }

    /// `ota server --mqtt URL` (repeatable, `docs/server.md`): an external broker at `urls[0]`
    /// instead of the configured broker, with `urls[1..]` as its failover nodes. The TLS files
    /// and credentials of a configured external broker are kept, and so are its
    /// `failover_urls` when exactly one URL is given (they must then use that URL's scheme);
    /// two or more URLs replace them. No URL changes nothing.
    pub fn override_external(&mut self, urls: &[String]) -> Result<(), ConfigError> {
        let Some((first, more)) = urls.split_first() else {
            return Ok(());
        };
        let (host, port, tls) = broker_address(first, "mqtt.url")?;
        let (mut client, kept) = match &self.broker {
            MqttBroker::External {
                client, failover, ..
            } => (client.clone(), failover.clone()),
            MqttBroker::Embedded { .. } => (ClientSecurity::default(), Vec::new()),
        };
        let failover = if more.is_empty() {
            if !kept.is_empty() && client.tls != tls {
                return Err(invalid(
                    "mqtt.failover_urls",
                    format!(
                        "they use the scheme of mqtt.url, not that of {first:?}: give every \
                         node with --mqtt"
                    ),
                ));
            }
            kept
        } else {
            failover_nodes(more, tls, &format!("{first:?}"))?
        };
        client.tls = tls;
        self.broker = MqttBroker::External {
            host,
            port,
            client,
            failover,
        };
        Ok(())
    }

    fn resolve_paths(&mut self, base_dir: &Path) {
        let paths: Vec<&mut PathBuf> = match &mut self.broker {
            MqttBroker::Embedded { security: s, .. } => [
                &mut s.tls_cert,
                &mut s.tls_key,
                &mut s.tls_client_ca,
                &mut s.device_secret_file,
            ]
            .into_iter()
            .flatten()
            .collect(),
            MqttBroker::External { client: c, .. } => [
                &mut c.ca_file,
                &mut c.client_cert,
                &mut c.client_key,
                &mut c.password_file,
                &mut c.device_secret_file,
            ]
            .into_iter()
            .flatten()
            .collect(),
        };
        for path in paths {
            *path = join_clean(base_dir, path);
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMqtt {
    listen: Option<SocketAddr>,
    topic_prefix: Option<String>,
    url: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    device_secret_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    username: Option<String>,
    password_file: Option<PathBuf>,
    #[serde(default)]
    failover_urls: Vec<String>,
}

impl TryFrom<RawMqtt> for MqttConfig {
    type Error = String;

    fn try_from(raw: RawMqtt) -> Result<Self, Self::Error> {
        let topics = match &raw.topic_prefix {
            Some(prefix) => Topics::new(prefix).map_err(|e| format!("mqtt.topic_prefix: {e}"))?,
            None => Topics::default(),
        };
        Ok(MqttConfig {
            broker: MqttBroker::try_from(raw)?,
            topics,
        })
    }
}

impl TryFrom<RawMqtt> for MqttBroker {
    type Error = String;

    fn try_from(raw: RawMqtt) -> Result<Self, Self::Error> {
        // `device_secret_file` serves both: the embedded broker checks device passwords with
        // it, and `ota server device-credential` derives them from it for an external broker.
        let embedded_keys =
            raw.tls_cert.is_some() || raw.tls_key.is_some() || raw.tls_client_ca.is_some();
        let external_keys = raw.ca_file.is_some()
            || raw.client_cert.is_some()
            || raw.client_key.is_some()
            || raw.username.is_some()
            || raw.password_file.is_some();
        match (raw.listen, raw.url) {
            (Some(_), Some(_)) => Err(
                "set either mqtt.listen (embedded broker) or mqtt.url (external broker), not both"
                    .into(),
            ),
            (None, Some(url)) => {
                if embedded_keys {
                    return Err(
                        "mqtt.tls_cert, tls_key and tls_client_ca configure the embedded \
                                broker: not with mqtt.url"
                            .into(),
                    );
                }
                let mut config = MqttConfig::external(&url)
                    .map_err(|e| e.to_string())?
                    .broker;
                if let MqttBroker::External {
                    client, failover, ..
                } = &mut config
                {
                    failover.extend(
                        failover_nodes(&raw.failover_urls, client.tls, "mqtt.url")
                            .map_err(|e| e.to_string())?,
                    );
                    if !client.tls && (raw.ca_file.is_some() || raw.client_cert.is_some()) {
                        return Err("mqtt.ca_file and client_cert need an mqtts:// URL".into());
                    }
                    if raw.client_cert.is_some() != raw.client_key.is_some() {
                        return Err("mqtt.client_cert and client_key go together".into());
                    }
                    if raw.password_file.is_some() && raw.username.is_none() {
                        return Err("mqtt.password_file needs mqtt.username".into());
                    }
                    client.ca_file = raw.ca_file;
                    client.client_cert = raw.client_cert;
                    client.client_key = raw.client_key;
                    client.username = raw.username;
                    client.password_file = raw.password_file;
                    client.device_secret_file = raw.device_secret_file;
                }
                Ok(config)
            }
            (listen, None) => {
                if external_keys || !raw.failover_urls.is_empty() {
                    return Err("mqtt.ca_file, client_cert, client_key, username, \
                                password_file and failover_urls configure an external broker: \
                                they need mqtt.url"
                        .into());
                }
                if raw.tls_cert.is_some() != raw.tls_key.is_some() {
                    return Err("mqtt.tls_cert and tls_key go together".into());
                }
                if raw.tls_client_ca.is_some() && raw.tls_cert.is_none() {
                    return Err("mqtt.tls_client_ca needs TLS (mqtt.tls_cert and tls_key)".into());
                }
                Ok(MqttBroker::Embedded {
                    listen: listen.unwrap_or(DEFAULT_MQTT_LISTEN),
                    security: BrokerSecurity {
                        tls_cert: raw.tls_cert,
                        tls_key: raw.tls_key,
                        tls_client_ca: raw.tls_client_ca,
                        device_secret_file: raw.device_secret_file,
                    },
                })
            }
        }
    }
}

/// `[database]`. Its `Debug` hides the URL's password.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct DatabaseConfig {
    /// `sqlite://path?mode=rwc` or `postgres://user@host/db`; default: SQLite file
    /// `<data_dir>/ota.db`.
    #[serde(default)]
    pub url: Option<String>,
    /// Most pooled connections (default [`DatabaseConfig::pool_size`]).
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// Longest wait for a pooled connection, seconds (default 10, at least 1): a query waiting
    /// longer fails, and the fleet coordinator turns read-only until the database answers.
    #[serde(default)]
    pub acquire_timeout_secs: Option<u64>,
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &self.url.as_deref().map(crate::db::redact_url))
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout_secs", &self.acquire_timeout_secs)
            .finish()
    }
}

impl DatabaseConfig {
    /// The longest wait for a pooled connection: `acquire_timeout_secs` (at least one
    /// second), else [`crate::db::DEFAULT_ACQUIRE_TIMEOUT`].
    pub fn acquire_timeout(&self) -> std::time::Duration {
        self.acquire_timeout_secs
            .map_or(crate::db::DEFAULT_ACQUIRE_TIMEOUT, |s| {
                std::time::Duration::from_secs(s.max(1))
            })
    }

    /// The pool size for `url`: `max_connections` if set, else 2 for SQLite (one writer at a
    /// time anyway; each connection is a thread, and fewer threads keep the server's memory
    /// down) and 8 for PostgreSQL.
    pub fn pool_size(&self, url: &str) -> u32 {
        self.max_connections
            .unwrap_or(if url.starts_with("sqlite:") { 2 } else { 8 })
    }
}

/// `[store]`: where artifacts live.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct StoreConfig {
    /// `s3://bucket/prefix` or `file:///absolute/dir`; default: `<data_dir>/artifacts`.
    #[serde(default)]
    pub url: Option<String>,
    /// S3 region (else `AWS_REGION` / `AWS_DEFAULT_REGION`).
    #[serde(default)]
    pub region: Option<String>,
    /// S3-compatible endpoint URL (else `AWS_ENDPOINT`).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Allow a plain-HTTP S3 endpoint (false).
    #[serde(default)]
    pub allow_http: bool,
}

/// `[trust]`: the fleet trust set. Public keys only: the server holds no signing key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TrustConfig {
    /// SubjectPublicKeyInfo PEM files of the trusted ed25519 keys (what `ota key gen` writes
    /// as `NAME.pub`, or `openssl pkey -pubout`).
    pub keys: Vec<PathBuf>,
    /// How many distinct trusted keys must sign a release.
    #[serde(default = "default_threshold")]
    pub threshold: usize,
}

fn default_threshold() -> usize {
    1
}

impl TrustConfig {
    /// A trust configuration of these key files and threshold.
    pub fn new(keys: Vec<PathBuf>, threshold: usize) -> Self {
        TrustConfig { keys, threshold }
    }

    /// Reads the key files and builds the trust set.
    pub fn load(&self) -> Result<TrustSet, ConfigError> {
        let keys = self
            .keys
            .iter()
            .map(|path| read_public_key(path))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrustSet::new(keys, self.threshold)?)
    }
}

/// Reads one SPKI PEM ed25519 public key, refusing private keys explicitly.
pub fn read_public_key(path: &Path) -> Result<VerifyingKey, ConfigError> {
    let key_error = |reason: &str| ConfigError::KeyFile {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let meta = std::fs::metadata(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.len() > MAX_KEY_FILE {
        return Err(key_error("too large to be a public key file"));
    }
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if text.contains("PRIVATE KEY-----") {
        return Err(key_error(
            "is a private key: the server needs public keys only (NAME.pub)",
        ));
    }
    VerifyingKey::from_public_key_pem(&text)
        .map_err(|_| key_error("not an ed25519 SubjectPublicKeyInfo PEM public key"))
}

/// An operator role: what an operator's token may change. Every role may read (`GET`) the
/// whole API; the changing endpoints each need one role ([`crate::http`] has the table), and
/// `admin` may do everything. One operator has one role: give a person who needs two roles
/// two operators (two names and tokens), or `admin`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Role {
    /// May do everything (the default, as before roles existed).
    #[default]
    Admin,
    /// Publishes releases (and trust sets).
    Publisher,
    /// Steers the fleet: creates, pauses, resumes and aborts rollouts, sets device labels,
    /// sets, kills, revives and deletes flags.
    Operator,
    /// Approves rollouts that need a second operator (forced reinstalls); nothing else.
    Approver,
}

impl Role {
    /// The role's name in `server.toml` and in error messages (`publisher`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Publisher => "publisher",
            Role::Operator => "operator",
            Role::Approver => "approver",
        }
    }

    /// Whether an operator of this role may do what needs `needed`: `admin` may do
    /// everything, every other role only what needs exactly it.
    pub fn grants(self, needed: Role) -> bool {
        self == Role::Admin || self == needed
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[[operators]]`: one operator and their bearer token.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct OperatorConfig {
    /// The operator's name, recorded as the `actor` of audit events.
    pub name: String,
    /// The bearer token (at least [`MIN_TOKEN_LEN`] bytes; keep the file private).
    pub token: String,
    /// The role (`admin`, the default).
    #[serde(default)]
    pub role: Role,
}

impl OperatorConfig {
    /// An operator with the default role (`admin`).
    pub fn new(name: impl Into<String>, token: impl Into<String>) -> Self {
        Self::with_role(name, token, Role::default())
    }

    /// An operator with `role`.
    pub fn with_role(name: impl Into<String>, token: impl Into<String>, role: Role) -> Self {
        OperatorConfig {
            name: name.into(),
            token: token.into(),
            role,
        }
    }
}

impl std::fmt::Debug for OperatorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorConfig")
            .field("name", &self.name)
            .field("token", &"<redacted>")
            .field("role", &self.role)
            .finish()
    }
}

/// `[[webhooks]]`: a URL that receives audit events as JSON (delivered in order by a
/// background task per webhook, with retries; a failing webhook never blocks a rollout: see
/// [`crate::webhook`]). Its `Debug` shows only the URL's origin ([`WebhookConfig::origin`]).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct WebhookConfig {
    /// Where to POST events.
    pub url: String,
    /// Event kinds to deliver; empty means all. An unknown kind is refused at load
    /// ([`crate::event_kinds::ALL`]).
    #[serde(default)]
    pub events: Vec<String>,
}

impl WebhookConfig {
    /// The URL as logs show it: scheme, host and port only. Webhook URLs often carry their
    /// secret in the path or query (`https://hooks.example.com/services/T0/B0/SECRET`) or as
    /// `user:password@`; none of that is shown.
    pub fn origin(&self) -> String {
        let (scheme, rest) = self.url.split_once("://").unwrap_or(("", &self.url));
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let host = authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host);
        let hidden = if rest.len() > authority.len() || authority.contains('@') {
            "/…"
        } else {
            ""
        };
        format!("{scheme}://{host}{hidden}")
    }
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.origin())
            .field("events", &self.events)
            .finish()
    }
}

/// Host, port and TLS of the broker URL `url` (`mqtt://host[:port]`, `mqtts://host[:port]`),
/// the configuration key `key` named in errors.
/// The failover nodes of an external broker: each of `urls` as `(host, port)`, refused unless
/// it uses the main URL's scheme (`tls`; `main` names that URL in the error).
fn failover_nodes(
    urls: &[String],
    tls: bool,
    main: &str,
) -> Result<Vec<(String, u16)>, ConfigError> {
    urls.iter()
        .map(|url| {
            let (host, port, node_tls) = broker_address(url, "mqtt.failover_urls")?;
            if node_tls != tls {
                return Err(invalid(
                    "mqtt.failover_urls",
                    format!("{url:?} must use the scheme of {main}"),
                ));
            }
            Ok((host, port))
        })
        .collect()
}

fn broker_address(url: &str, key: &'static str) -> Result<(String, u16, bool), ConfigError> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("mqtt://") {
        (false, rest)
    } else {
        return Err(invalid(key, "must start with mqtt:// or mqtts://"));
    };
    let default_port = if tls {
        DEFAULT_MQTTS_PORT
    } else {
        DEFAULT_MQTT_PORT
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains('/') || rest.contains('@') {
        return Err(invalid(
            key,
            "must be mqtt[s]://host[:port], without path or credentials",
        ));
    }
    let (host, port) = match rest.rsplit_once(':') {
        // `[::1]:1883` or `host:1883`; a bare IPv6 address needs brackets.
        Some((host, port)) if !host.is_empty() && !port.contains(']') => {
            let port = port
                .parse::<u16>()
                .map_err(|_| invalid(key, format!("invalid port {port:?}")))?;
            (host, port)
        }
        _ => (rest, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(invalid(key, "the host is empty"));
    }
    Ok((host.to_string(), port, tls))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_has_defaults() {
        let c = Config::from_toml("[trust]\nkeys = [\"a.pub\"]\n", Path::new("/etc/ota")).unwrap();
        assert_eq!(c.data_dir, Path::new("/etc/ota/ota-data"));
        assert_eq!(c.http.listen, DEFAULT_HTTP_LISTEN);
        assert_eq!(c.mqtt, MqttConfig::default());
        assert_eq!(c.trust.keys, vec![PathBuf::from("/etc/ota/a.pub")]);
        assert_eq!(c.trust.threshold, 1);
        assert!(
            c.database_url()
                .unwrap()
                .starts_with("sqlite:///etc/ota/ota-data/ota.db")
        );
        assert_eq!(
            c.store_location().unwrap(),
            StoreLocation::Local(PathBuf::from("/etc/ota/ota-data/artifacts"))
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e =
            Config::from_toml("[trust]\nkeys=[\"a\"]\nthresold=1\n", Path::new("/")).unwrap_err();
        assert!(e.to_string().contains("thresold"), "{e}");
        let e =
            Config::from_toml("colour = 1\n[trust]\nkeys=[\"a\"]\n", Path::new("/")).unwrap_err();
        assert!(matches!(e, ConfigError::Parse(_)));
    }

    #[test]
    fn mqtt_external_and_embedded() {
        let c = Config::from_toml(
            "[mqtt]\nurl = \"mqtt://broker.example:1884\"\n[trust]\nkeys=[\"a\"]\n",
            Path::new("/"),
        )
        .unwrap();
        assert_eq!(
            c.mqtt.broker,
            MqttBroker::External {
                host: "broker.example".into(),
                port: 1884,
                client: ClientSecurity::default(),
                failover: Vec::new(),
            }
        );
        assert_eq!(c.mqtt.topics, Topics::default());
        assert_eq!(
            MqttConfig::external("mqtt://[::1]").unwrap().broker,
            MqttBroker::External {
                host: "::1".into(),
                port: 1883,
                client: ClientSecurity::default(),
                failover: Vec::new(),
            }
        );
        // Issue 15: more nodes of the broker cluster, same scheme.
        let c = Config::from_toml(
            "[mqtt]\nurl = \"mqtt://n1:1883\"\nfailover_urls = [\"mqtt://n2\", \"mqtt://[::1]:1885\"]\n[trust]\nkeys=[\"a\"]\n",
            Path::new("/"),
        )
        .unwrap();
        let MqttBroker::External { failover, .. } = &c.mqtt.broker else {
            panic!("{:?}", c.mqtt)
        };
        assert_eq!(
            failover,
            &[("n2".to_string(), 1883), ("::1".to_string(), 1885)]
        );
        for bad in [
            "url = \"mqtt://n1\"\nfailover_urls = [\"mqtts://n2\"]",
            "url = \"mqtt://n1\"\nfailover_urls = [\"http://n2\"]",
            "failover_urls = [\"mqtt://n2\"]",
        ] {
            let toml = format!("[mqtt]\n{bad}\n[trust]\nkeys=[\"a\"]\n");
            assert!(Config::from_toml(&toml, Path::new("/")).is_err(), "{bad}");
        }
        // `ota server --mqtt`: one URL keeps the configured failover nodes, credentials and
        // topics; several replace the nodes; a scheme the kept nodes do not use is refused.
        let mut c = Config::from_toml(
            "[mqtt]\nurl = \"mqtt://n1:1883\"\nfailover_urls = [\"mqtt://n2\"]\nusername = \"ota\"\ntopic_prefix = \"t/v1\"\n[trust]\nkeys=[\"a\"]\n",
            Path::new("/"),
        )
        .unwrap();
        c.mqtt.override_external(&[]).unwrap();
        c.mqtt
            .override_external(&["mqtt://other:1884".to_string()])
            .unwrap();
        let MqttBroker::External {
            host,
            port,
            client,
            failover,
        } = &c.mqtt.broker
        else {
            panic!("{:?}", c.mqtt)
        };
        assert_eq!((host.as_str(), *port), ("other", 1884));
        assert_eq!(failover, &[("n2".to_string(), 1883)], "kept");
        assert_eq!(client.username.as_deref(), Some("ota"));
        assert_eq!(c.mqtt.topics.prefix(), "t/v1");
        let err = c
            .mqtt
            .override_external(&["mqtts://other".to_string()])
            .unwrap_err();
        assert!(err.to_string().contains("failover_urls"), "{err}");
        let nodes = ["mqtts://a", "mqtts://b:8884", "mqtts://c"].map(String::from);
        c.mqtt.override_external(&nodes).unwrap();
        let MqttBroker::External {
            host,
            client,
            failover,
            ..
        } = &c.mqtt.broker
        else {
            panic!("{:?}", c.mqtt)
        };
        assert_eq!(host, "a");
        assert!(client.tls);
        assert_eq!(
            failover,
            &[("b".to_string(), 8884), ("c".to_string(), 8883)],
            "replaced"
        );
        let mixed = ["mqtt://a", "mqtts://b"].map(String::from);
        assert!(c.mqtt.override_external(&mixed).is_err());
        let mut embedded = MqttConfig::default();
        embedded
            .override_external(&["mqtt://x".to_string()])
            .unwrap();
        assert!(matches!(
            &embedded.broker,
            MqttBroker::External { failover, .. } if failover.is_empty()
        ));
        // Issue 15: the fleet's topic namespace.
        let c = Config::from_toml(
            "[mqtt]\ntopic_prefix = \"acme/staging/ota/v1\"\n[trust]\nkeys=[\"a\"]\n",
            Path::new("/"),
        )
        .unwrap();
        assert_eq!(c.mqtt.topics.prefix(), "acme/staging/ota/v1");
        for bad in ["", "a/+/b", "a/", "ota/#"] {
            let toml = format!("[mqtt]\ntopic_prefix = {bad:?}\n[trust]\nkeys=[\"a\"]\n");
            let e = Config::from_toml(&toml, Path::new("/")).unwrap_err();
            assert!(e.to_string().contains("topic_prefix"), "{bad:?}: {e}");
        }
        assert!(MqttConfig::external("http://x").is_err());
        assert!(MqttConfig::external("mqtt://x:99999").is_err());
        let both = "[mqtt]\nurl = \"mqtt://b\"\nlisten = \"127.0.0.1:0\"\n[trust]\nkeys=[\"a\"]\n";
        assert!(Config::from_toml(both, Path::new("/")).is_err());
    }

    #[test]
    fn issue15_ha_section() {
        let external = "[mqtt]\nurl = \"mqtt://b\"\n[trust]\nkeys=[\"a\"]\n";
        let c = Config::from_toml(external, Path::new("/")).unwrap();
        assert!(c.ha.is_none(), "no [ha]: the one-replica server");
        let c = Config::from_toml(&format!("{external}[ha]\n"), Path::new("/")).unwrap();
        let ha = c.ha.unwrap();
        assert_eq!(ha.lease_ttl_secs, DEFAULT_LEASE_TTL_SECS);
        assert_eq!((ha.replica_id, ha.advertise_url), (None, None));
        let full = format!(
            "{external}[ha]\nreplica_id = \"api-1\"\nadvertise_url = \"http://10.0.0.1:8080\"\nlease_ttl_secs = 5\n"
        );
        let ha = Config::from_toml(&full, Path::new("/"))
            .unwrap()
            .ha
            .unwrap();
        assert_eq!(ha.replica_id.as_deref(), Some("api-1"));
        assert_eq!(ha.lease_ttl_secs, 5);
        assert_eq!(
            ha.forget_replica_after().as_secs(),
            50,
            "10 × the TTL by default"
        );
        let set = Config::from_toml(
            &format!("{full}forget_replica_after_secs = 5\n"),
            Path::new("/"),
        )
        .unwrap();
        assert_eq!(set.ha.unwrap().forget_replica_after().as_secs(), 5);
        // Replicas need one external broker: the embedded one is refused.
        let anywhere = format!("[http]\nlisten = \"0.0.0.0:8080\"\n{external}[ha]\n");
        let e = Config::from_toml(&anywhere, Path::new("/")).unwrap_err();
        assert!(e.to_string().contains("ha.advertise_url"), "{e}");
        let embedded = "[trust]\nkeys=[\"a\"]\n[ha]\n";
        let e = Config::from_toml(embedded, Path::new("/")).unwrap_err();
        assert!(e.to_string().contains("external MQTT broker"), "{e}");
        for bad in [
            "lease_ttl_secs = 2",
            "forget_replica_after_secs = 9",
            "replica_id = \" \"",
            "advertise_url = \"10.0.0.1:8080\"",
            "colour = 1",
        ] {
            let toml = format!("{external}[ha]\n{bad}\n");
            assert!(Config::from_toml(&toml, Path::new("/")).is_err(), "{bad}");
        }
    }

    #[test]
    fn issue7_mqtt_tls_and_credentials_keys() {
        let c = Config::from_toml(
            "[mqtt]\nlisten = \"0.0.0.0:8883\"\ntls_cert = \"tls/broker.crt\"\ntls_key = \"tls/broker.key\"\ntls_client_ca = \"tls/devices-ca.pem\"\ndevice_secret_file = \"mqtt.secret\"\n[trust]\nkeys=[\"a\"]\n",
            Path::new("/etc/ota"),
        )
        .unwrap();
        let MqttBroker::Embedded { security, .. } = &c.mqtt.broker else {
            panic!("{:?}", c.mqtt)
        };
        assert_eq!(
            security.tls_cert.as_deref(),
            Some(Path::new("/etc/ota/tls/broker.crt"))
        );
        assert_eq!(
            security.device_secret_file.as_deref(),
            Some(Path::new("/etc/ota/mqtt.secret"))
        );
        assert!(security.authenticates());
        let c = Config::from_toml(
            "[mqtt]\nurl = \"mqtts://broker.example\"\nca_file = \"ca.pem\"\nusername = \"ota-server\"\npassword_file = \"mqtt.password\"\n[trust]\nkeys=[\"a\"]\n",
            Path::new("/etc/ota"),
        )
        .unwrap();
        let MqttBroker::External { port, client, .. } = &c.mqtt.broker else {
            panic!("{:?}", c.mqtt)
        };
        assert_eq!(*port, DEFAULT_MQTTS_PORT);
        assert!(client.tls);
        assert_eq!(
            client.ca_file.as_deref(),
            Some(Path::new("/etc/ota/ca.pem"))
        );
        for bad in [
            "url = \"mqtt://b\"\nca_file = \"ca.pem\"",
            "url = \"mqtts://b\"\nclient_cert = \"c.pem\"",
            "url = \"mqtts://b\"\npassword_file = \"p\"",
            "url = \"mqtts://b\"\ntls_cert = \"c.pem\"",
            "listen = \"127.0.0.1:0\"\nusername = \"x\"",
            "listen = \"127.0.0.1:0\"\ntls_cert = \"c.pem\"",
            "listen = \"127.0.0.1:0\"\ntls_client_ca = \"ca.pem\"",
        ] {
            let text = format!("[mqtt]\n{bad}\n[trust]\nkeys=[\"a\"]\n");
            assert!(Config::from_toml(&text, Path::new("/")).is_err(), "{bad}");
        }
    }

    #[test]
    fn store_and_database_urls() {
        let c = Config::from_toml(
            "[store]\nurl = \"s3://fleet/ota/artifacts/\"\n[database]\nurl = \"postgres://db/ota\"\n[trust]\nkeys=[\"a\"]\n",
            Path::new("/"),
        )
        .unwrap();
        assert_eq!(
            c.store_location().unwrap(),
            StoreLocation::S3 {
                bucket: "fleet".into(),
                prefix: "ota/artifacts".into(),
                region: None,
                endpoint: None,
                allow_http: false
            }
        );
        assert_eq!(c.database_url().unwrap(), "postgres://db/ota");
        let bad = "[database]\nurl = \"mysql://x\"\n[trust]\nkeys=[\"a\"]\n";
        assert!(Config::from_toml(bad, Path::new("/")).is_err());
    }

    #[test]
    fn operators_are_validated() {
        let ok =
            "[trust]\nkeys=[\"a\"]\n[[operators]]\nname=\"alice\"\ntoken=\"0123456789abcdef\"\n";
        let c = Config::from_toml(ok, Path::new("/")).unwrap();
        assert_eq!(c.operators[0].role, Role::Admin);
        assert!(!format!("{:?}", c.operators[0]).contains("0123456789abcdef"));
        let short = "[trust]\nkeys=[\"a\"]\n[[operators]]\nname=\"alice\"\ntoken=\"short\"\n";
        assert!(Config::from_toml(short, Path::new("/")).is_err());
        let role = "[trust]\nkeys=[\"a\"]\n[[operators]]\nname=\"a\"\ntoken=\"0123456789abcdef\"\nrole=\"root\"\n";
        assert!(Config::from_toml(role, Path::new("/")).is_err());
    }

    /// `[[operators]]` entries, one per `(name, token, role)`.
    fn with_operators(ops: &[(&str, &str, &str)]) -> String {
        let mut text = "[trust]\nkeys=[\"a\"]\n".to_string();
        for (name, token, role) in ops {
            text.push_str(&format!(
                "[[operators]]\nname={name:?}\ntoken={token:?}\nrole={role:?}\n"
            ));
        }
        text
    }

    #[test]
    fn issue7_roles_parse_and_tokens_are_checked() {
        let c = Config::from_toml(
            &with_operators(&[
                ("a", "token-a-0123456789", "admin"),
                ("p", "token-p-0123456789", "publisher"),
                ("o", "token-o-0123456789", "operator"),
                ("v", "token-v-0123456789", "approver"),
            ]),
            Path::new("/"),
        )
        .unwrap();
        let roles: Vec<Role> = c.operators.iter().map(|o| o.role).collect();
        assert_eq!(
            roles,
            [Role::Admin, Role::Publisher, Role::Operator, Role::Approver]
        );
        assert_eq!(Role::Approver.to_string(), "approver");

        let refused = |ops: &[(&str, &str, &str)], needle: &str| {
            let e = Config::from_toml(&with_operators(ops), Path::new("/")).unwrap_err();
            let text = e.to_string();
            assert!(text.contains(needle), "{text}");
            // The message names the operator, never the token.
            for (_, token, _) in ops {
                assert!(!text.contains(token), "{text}");
            }
        };
        refused(&[("a", "fifteen-bytes-x", "admin")], "shorter than 16");
        refused(&[("a", "sixteen bytes xx", "admin")], "whitespace");
        refused(
            &[
                ("a", "the-same-token-0123", "admin"),
                ("b", "the-same-token-0123", "approver"),
            ],
            "reuses another operator's token",
        );
        refused(
            &[
                ("a", "token-a-0123456789", "admin"),
                ("a", "token-b-0123456789", "operator"),
            ],
            "listed twice",
        );
    }

    #[test]
    fn issue12_unknown_webhook_event_kinds_are_refused() {
        let hook = |events: &str| {
            format!(
                "[trust]\nkeys = [\"a.pub\"]\n[[webhooks]]\nurl = \"https://h.example/x\"\nevents = {events}\n"
            )
        };
        let c = Config::from_toml(
            &hook("[\"rollout-aborted\", \"wave-held\"]"),
            Path::new("/"),
        )
        .unwrap();
        assert_eq!(c.webhooks[0].events, ["rollout-aborted", "wave-held"]);
        let e = Config::from_toml(
            &hook("[\"rollout-aborted\", \"rollout-abort\"]"),
            Path::new("/"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("webhooks.events"), "{e}");
        assert!(e.contains("\"rollout-abort\" is not an event kind"), "{e}");
    }

    #[test]
    fn issue7_debug_of_the_config_shows_no_secret() {
        let text = format!(
            "{}[database]\nurl = \"postgres://ota:db-pass-SECRET@db/ota?password=q-SECRET\"\n\
             [[webhooks]]\nurl = \"https://hook-user:hook-pass-SECRET@hooks.example.com/services/T0/path-SECRET?k=q2-SECRET\"\n",
            with_operators(&[("alice", "token-alice-SECRET-0123", "admin")])
        );
        let c = Config::from_toml(&text, Path::new("/")).unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains("SECRET"), "{debug}");
        // What is shown is still useful.
        assert!(
            debug.contains("postgres://ota:***@db/ota?password=***"),
            "{debug}"
        );
        assert!(debug.contains("https://hooks.example.com/…"), "{debug}");
        assert!(debug.contains("alice"), "{debug}");
        assert_eq!(
            c.webhooks[0].origin(),
            "https://hooks.example.com/…",
            "userinfo, path and query are hidden"
        );
    }

    #[test]
    fn issue7_parse_errors_do_not_quote_the_line() {
        let text = "[trust]\nkeys=[\"a\"]\n[[operators]]\nname=\"a\"\ntoken=\"first-SECRET-0123456\"\ntoken=\"second-SECRET-0123456\"\n";
        let e = Config::from_toml(text, Path::new("/")).unwrap_err();
        let message = e.to_string();
        assert!(!message.contains("SECRET"), "{message}");
        assert!(message.contains("line 6"), "{message}");
    }
}

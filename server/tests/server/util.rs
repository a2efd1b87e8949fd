//! Fixture helpers: TEST-ONLY keys, releases, a server on port 0 in a temp directory.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ed25519_dalek::pkcs8::EncodePublicKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ota_core::digest::Digest;
use ota_core::release::{FORMAT_VERSION, Manifest, SigningKey, sign};
use ota_server::clock::{Clock, ManualClock};
use ota_server::config::{Config, MqttBroker, MqttConfig, OperatorConfig, Role, TrustConfig};
use ota_server::{RunningServer, Server};
use reqwest::multipart::{Form, Part};
use reqwest::{RequestBuilder, Response, StatusCode};
use tempfile::TempDir;

/// The fixed "now" of every test server (unix seconds).
pub(crate) const NOW: u64 = 1_750_000_000;
/// Operator `alice`'s token.
pub(crate) const TOKEN: &str = "alice-token-0123456789";
/// Operator `bob`'s token.
pub(crate) const BOB_TOKEN: &str = "bob-token-0123456789ab";
/// Tokens of the operators with one role each (`alice` and `bob` are admins).
pub(crate) const PUBLISHER_TOKEN: &str = "pat-publisher-token-0123";
/// Operator `otto`, role `operator`.
pub(crate) const OPERATOR_TOKEN: &str = "otto-operator-token-0123";
/// Operator `ada`, role `approver`.
pub(crate) const APPROVER_TOKEN: &str = "ada-approver-token-01234";

/// TEST-ONLY signing key `n` (seed: SHA-256 of a public label; never trust it anywhere).
pub(crate) fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&Digest::of(format!("ota-server TEST-ONLY key {n}").as_bytes()).0)
}

/// A deterministic artifact of `len` bytes.
pub(crate) fn artifact(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i >> 8) as u8))
        .collect()
}

/// A manifest for `artifact`.
pub(crate) fn manifest(version: &str, artifact: &[u8]) -> Manifest {
    Manifest {
        format_version: FORMAT_VERSION,
        product: "gateway-fw".into(),
        version: version.into(),
        security_version: 1,
        artifact_sha256: Digest::of(artifact).0,
        artifact_size: artifact.len() as u64,
        hardware: vec!["gw-a".into(), "gw-b".into()],
        created: NOW - 1000,
        expires: None,
        installer: Some("files".into()),
        metadata: BTreeMap::new(),
        chunk_index: None,
    }
}

/// A release of `artifact` signed by `keys`.
pub(crate) fn release(version: &str, artifact: &[u8], keys: &[u8]) -> Vec<u8> {
    let keys: Vec<SigningKey> = keys.iter().map(|&n| key(n)).collect();
    sign(&manifest(version, artifact), &keys)
}

/// Writes the public keys of TEST-ONLY keys 1, 2 and 3 into `dir`; answers their files.
pub(crate) fn write_trust_keys(dir: &std::path::Path) -> Vec<PathBuf> {
    [1u8, 2, 3]
        .iter()
        .map(|&n| {
            let path = dir.join(format!("key{n}.pub"));
            let pem = key(n)
                .verifying_key()
                .to_public_key_pem(LineEnding::LF)
                .unwrap();
            std::fs::write(&path, pem).unwrap();
            path
        })
        .collect()
}

/// How a test server is set up.
#[derive(Debug, Clone, Default)]
pub(crate) struct Options {
    /// Trust threshold (1 when 0).
    pub(crate) threshold: usize,
    /// Database URL (default: SQLite under the temp dir).
    pub(crate) database_url: Option<String>,
    /// External broker `mqtt://host:port` (default: the embedded broker on port 0).
    pub(crate) mqtt_url: Option<String>,
    /// A hand-advanced clock instead of the fixed one.
    pub(crate) manual_clock: bool,
    /// Webhook URLs.
    pub(crate) webhooks: Vec<String>,
    /// Serve HTTPS with a certificate of a fresh test CA; the client pins that CA.
    pub(crate) https: bool,
    /// `[limits]` (default: the defaults).
    pub(crate) limits: Option<ota_server::config::LimitsConfig>,
    /// `database.acquire_timeout_secs`.
    pub(crate) db_acquire_timeout_secs: Option<u64>,
    /// `[ha]` (default: none, the one-replica server).
    pub(crate) ha: Option<ota_server::config::HaConfig>,
    /// `mqtt.topic_prefix` (default `ota/v1`).
    pub(crate) topic_prefix: Option<String>,
    /// Device passwords and the per-device ACL on the embedded broker's front door
    /// (`mqtt.device_secret_file` in the temp dir; [`TestServer::device_secret`]).
    pub(crate) device_passwords: bool,
}

/// A server on 127.0.0.1:0 in a temp directory, trusting keys 1, 2 and 3.
pub(crate) struct TestServer {
    /// Keeps the temp directory alive.
    _dir: TempDir,
    /// The server.
    pub(crate) server: RunningServer,
    /// An HTTP client.
    pub(crate) client: reqwest::Client,
    /// A client like [`Self::client`] that shows redirects instead of following them.
    pub(crate) client_no_redirects: reqwest::Client,
    /// The hand-advanced clock, with [`Options::manual_clock`].
    pub(crate) manual: Option<ManualClock>,
    config: Config,
    clock: Clock,
}

impl TestServer {
    /// Threshold 1, SQLite.
    pub(crate) async fn start() -> Self {
        Self::start_with(1, None).await
    }

    /// Trust threshold `threshold`, database `database_url` (default SQLite under the temp dir).
    pub(crate) async fn start_with(threshold: usize, database_url: Option<String>) -> Self {
        Self::start_opts(Options {
            threshold,
            database_url,
            ..Options::default()
        })
        .await
    }

    /// A server set up per `opts`.
    pub(crate) async fn start_opts(opts: Options) -> Self {
        let threshold = opts.threshold.max(1);
        let database_url = opts.database_url.clone();
        let dir = tempfile::tempdir().unwrap();
        let keys = write_trust_keys(dir.path());
        let mut config = Config::new(dir.path().join("data"), TrustConfig::new(keys, threshold));
        config.http.listen = "127.0.0.1:0".parse().unwrap();
        config.mqtt = MqttConfig::embedded("127.0.0.1:0".parse().unwrap());
        config.operators = vec![
            OperatorConfig::new("alice", TOKEN),
            OperatorConfig::new("bob", BOB_TOKEN),
            OperatorConfig::with_role("pat", PUBLISHER_TOKEN, Role::Publisher),
            OperatorConfig::with_role("otto", OPERATOR_TOKEN, Role::Operator),
            OperatorConfig::with_role("ada", APPROVER_TOKEN, Role::Approver),
        ];
        config.database.url = database_url;
        if let Some(limits) = &opts.limits {
            config.limits = limits.clone();
        }
        config.database.acquire_timeout_secs = opts.db_acquire_timeout_secs;
        if let Some(url) = &opts.mqtt_url {
            config.mqtt = MqttConfig::external(url).unwrap();
        }
        if opts.device_passwords
            && let MqttBroker::Embedded { security, .. } = &mut config.mqtt.broker
        {
            security.device_secret_file = Some(dir.path().join("device.secret"));
        }
        if let Some(prefix) = &opts.topic_prefix {
            config.mqtt.topics = ota_core::wire::Topics::new(prefix).unwrap();
        }
        config.ha = opts.ha.clone();
        for url in &opts.webhooks {
            let hook: ota_server::config::WebhookConfig =
                toml::from_str(&format!("url = {url:?}")).unwrap();
            config.webhooks.push(hook);
        }
        let mut client = reqwest::Client::builder();
        let mut no_redirects =
            reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
        if opts.https {
            let ca = firmware_fixtures::pki::TestCa::new(dir.path(), "http").unwrap();
            let cert = ca.server_cert().unwrap();
            config.http.tls_cert = Some(cert.cert);
            config.http.tls_key = Some(cert.key);
            let pem = std::fs::read(ca.ca_file()).unwrap();
            let certs = reqwest::Certificate::from_pem_bundle(&pem).unwrap();
            client = client.tls_certs_only(certs.clone());
            no_redirects = no_redirects.tls_certs_only(certs);
        }
        let (clock, manual) = if opts.manual_clock {
            let (clock, manual) = Clock::manual(NOW);
            (clock, Some(manual))
        } else {
            (Clock::fixed(NOW), None)
        };
        let server = Server::start_with_clock(config.clone(), clock.clone())
            .await
            .unwrap();
        TestServer {
            _dir: dir,
            server,
            client: client.build().unwrap(),
            client_no_redirects: no_redirects.build().unwrap(),
            manual,
            config,
            clock,
        }
    }

    /// The server's database URL.
    pub(crate) fn database_url(&self) -> String {
        self.config.database_url().unwrap()
    }

    /// Where the server's MQTT broker is: (host, port).
    pub(crate) fn mqtt(&self) -> (String, u16) {
        match (self.server.mqtt_addr(), &self.config.mqtt.broker) {
            (Some(addr), _) => (addr.ip().to_string(), addr.port()),
            (None, MqttBroker::External { host, port, .. }) => (host.clone(), *port),
            _ => panic!("no broker"),
        }
    }

    /// The secret device passwords derive from ([`Options::device_passwords`]).
    pub(crate) fn device_secret(&self) -> ota_server::broker::credentials::DeviceSecret {
        let path = self
            .config
            .mqtt
            .device_secret_file()
            .expect("device passwords on");
        ota_server::broker::credentials::DeviceSecret::load_or_create(path).unwrap()
    }

    /// Stops the server and starts it again on the same data directory and database (and
    /// the same broker: the embedded one cannot be stopped, so the new server connects to it
    /// as an external broker).
    pub(crate) async fn restart(self) -> Self {
        let (host, port) = self.mqtt();
        let TestServer {
            _dir,
            server,
            client,
            client_no_redirects,
            manual,
            mut config,
            clock,
        } = self;
        server.shutdown().await.unwrap();
        config.mqtt.broker = MqttBroker::External {
            host,
            port,
            client: Default::default(),
            failover: Vec::new(),
        };
        let server = Server::start_with_clock(config.clone(), clock.clone())
            .await
            .unwrap();
        TestServer {
            _dir,
            server,
            client,
            client_no_redirects,
            manual,
            config,
            clock,
        }
    }

    /// An authenticated POST with a JSON body, as `token`.
    pub(crate) fn post_as(
        &self,
        token: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> RequestBuilder {
        self.client
            .post(self.url(path))
            .bearer_auth(token)
            .json(body)
    }

    /// Advances the hand-driven clock by `d`; returns once the coordinator fired the timers
    /// due by then.
    pub(crate) async fn advance(&self, d: std::time::Duration) {
        self.manual.as_ref().expect("manual clock").advance(d).await;
    }

    /// The absolute URL of `path`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{}", self.server.base_url(), path)
    }

    /// An authenticated GET.
    pub(crate) fn get(&self, path: &str) -> RequestBuilder {
        self.client.get(self.url(path)).bearer_auth(TOKEN)
    }

    /// An authenticated GET whose answer is read as JSON.
    pub(crate) async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        self.get(path).send().await.unwrap().json().await.unwrap()
    }

    /// Publishes `release` + `artifact` as alice.
    pub(crate) async fn publish(&self, release: Vec<u8>, artifact: Vec<u8>) -> Response {
        let form = Form::new()
            .part("release", Part::bytes(release))
            .part("artifact", Part::bytes(artifact));
        self.publish_form(form).await
    }

    /// Publishes with the artifact streamed in `chunks` (chunked, no length given).
    pub(crate) async fn publish_streamed(
        &self,
        release: Vec<u8>,
        chunks: Vec<Vec<u8>>,
    ) -> Response {
        let stream = futures_util::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>));
        let form = Form::new()
            .part("release", Part::bytes(release))
            .part("artifact", Part::stream(reqwest::Body::wrap_stream(stream)));
        self.publish_form(form).await
    }

    /// Posts a multipart form to the publish endpoint as alice.
    pub(crate) async fn publish_form(&self, form: Form) -> Response {
        self.client
            .post(self.url("/api/v1/releases"))
            .bearer_auth(TOKEN)
            .multipart(form)
            .send()
            .await
            .unwrap()
    }

    /// Events of `kind`, via the repository.
    pub(crate) async fn events_of_kind(&self, kind: &str) -> Vec<ota_server::db::EventRecord> {
        let mut filter = ota_server::db::EventFilter::default();
        filter.kind = Some(ota_server::event_kinds::EventKind::parse(kind).expect("an event kind"));
        self.server.db().list_events(&filter).await.unwrap()
    }
}

/// The status and `cause` of a JSON error response (and checks its shape).
pub(crate) async fn error_of(response: Response) -> (StatusCode, String) {
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap();
    let cause = body["cause"].as_str().unwrap().to_string();
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    (status, cause)
}

/// A fresh PostgreSQL schema for one test, from `OTA_TEST_DATABASE_URL`.
pub(crate) struct PgSchema {
    admin_url: String,
    schema: String,
    /// The URL whose connections use only this schema.
    pub(crate) url: String,
}

impl PgSchema {
    /// Creates the schema; panics with a clear message when the variable is missing.
    pub(crate) async fn create() -> Self {
        let admin_url = std::env::var("OTA_TEST_DATABASE_URL")
            .expect("set OTA_TEST_DATABASE_URL=postgres://... to run the PostgreSQL tests");
        // The wall clock only makes the schema name unique across runs on a shared database.
        #[allow(clippy::disallowed_methods)]
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let schema = format!("ota_test_{}_{}", std::process::id(), nanos);
        let pool = sqlx::postgres::PgPool::connect(&admin_url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        let sep = if admin_url.contains('?') { '&' } else { '?' };
        let url = format!("{admin_url}{sep}options[search_path]={schema}");
        PgSchema {
            admin_url,
            schema,
            url,
        }
    }

    /// Drops the schema.
    pub(crate) async fn drop(self) {
        let pool = sqlx::postgres::PgPool::connect(&self.admin_url)
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA {} CASCADE",
            self.schema
        )))
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
    }
}

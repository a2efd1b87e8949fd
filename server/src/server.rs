//! Starting and stopping the whole server in-process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::broker::credentials::{DeviceSecret, SecretError};
use crate::broker::{BrokerError, BrokerSettings, DoorAuth, EmbeddedBroker};
use crate::clock::Clock;
use crate::config::{
    BrokerSecurity, ClientSecurity, Config, ConfigError, LimitsConfig, MqttBroker,
};
use crate::db::{Db, DbError, redact_url};
use crate::fleet::{Fleet, FleetStartError, Shared};
use crate::ha::{CoordinatorSpec, HaTask, ReplicaSpec};
use crate::http::{self, AppState};
use crate::lease::LeaseTiming;
use crate::limits::{Caps, FdLimit, fit_to_fd_limit};
use crate::mqtt::{LinkSpec, MqttEndpoint};
use crate::store::{ArtifactStore, StoreError};
use crate::tls::TlsError;
use crate::trust::{FleetTrust, TrustError};

/// How long [`RunningServer::shutdown`] lets in-flight requests (long downloads) finish before
/// cutting them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The configuration is invalid, or a trust key cannot be read.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data directory cannot be created.
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The database cannot be opened or migrated.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The artifact store cannot be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The HTTP listen address cannot be bound.
    #[error("cannot listen for HTTP on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The embedded MQTT broker could not start.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// An MQTT TLS file (certificate, key, CA) is unusable.
    #[error("MQTT TLS: {0}")]
    MqttTls(#[from] TlsError),
    /// The broker's device secret file cannot be read or created.
    #[error(transparent)]
    DeviceSecret(#[from] SecretError),
    /// The stored trust-set update cannot be read.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// The fleet coordinator could not start (broker unreachable, state unreadable).
    #[error(transparent)]
    Fleet(#[from] FleetStartError),
    /// The HTTPS certificate or key (`http.tls_cert`, `http.tls_key`) cannot be used.
    #[error("HTTPS: {0}")]
    HttpTls(#[source] crate::tls::TlsError),
    /// The HTTP server failed while running.
    #[error("HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
    /// The HTTP server task panicked or was cut after [`SHUTDOWN_GRACE`].
    #[error("HTTP server task ended abnormally: {0}")]
    Task(String),
}

/// The fleet server. See [`Server::start`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Server;

impl Server {
    /// Starts the server described by `config` on the current tokio runtime, reading the
    /// system clock: opens (and migrates) the database, opens the artifact store, loads the
    /// trust set, binds the HTTP listener (port 0 picks a free port), starts the embedded MQTT
    /// broker when `mqtt.listen` is configured (see [`crate::broker`]) and serves until
    /// [`RunningServer::shutdown`].
    pub async fn start(config: Config) -> Result<RunningServer, ServerError> {
        Self::start_with_clock(config, Clock::system()).await
    }

    /// [`Server::start`] with a chosen clock (tests, fixtures with a fixed "now").
    pub async fn start_with_clock(
        config: Config,
        clock: Clock,
    ) -> Result<RunningServer, ServerError> {
        config.validate()?;
        let fds = crate::limits::raise_fd_limit();
        let caps = connection_caps(&config, fds);
        let configured = config.trust.load()?;
        std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let database_url = config.database_url()?;
        // A transaction idle for a lease TTL is ended by PostgreSQL: a frozen leader's batch
        // holds the lease row no longer than its lease lasts.
        let ha = config.ha.clone().unwrap_or_default();
        let db = Db::connect_with(
            &database_url,
            config.database.pool_size(&database_url),
            config.database.acquire_timeout(),
            std::time::Duration::from_secs(ha.lease_ttl_secs),
        )
        .await?;
        let trust = FleetTrust::load(configured, &db).await?;
        let store = ArtifactStore::open(&config.store_location()?)?;
        let tls = match config.http.tls() {
            Some((cert, key)) => {
                Some(crate::https::server_config(cert, key).map_err(ServerError::HttpTls)?)
            }
            None => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let listener = tokio::net::TcpListener::bind(config.http.listen)
            .await
            .map_err(|source| ServerError::Bind {
                addr: config.http.listen,
                source,
            })?;
        let http_addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: config.http.listen,
            source,
        })?;

        // Refusals by the broker's front door are counted with the fleet's counters.
        let shared = Arc::new(Shared::default());
        let topics = config.mqtt.topics.clone();
        let broker = match &config.mqtt.broker {
            MqttBroker::Embedded { listen, security } => Some(
                EmbeddedBroker::start_with(
                    broker_settings(*listen, security, &config.limits, caps.mqtt)?
                        .with_topics(topics.clone()),
                    shared.clone(),
                )
                .await?,
            ),
            MqttBroker::External { .. } => None,
        };
        let endpoint = match (&config.mqtt.broker, &broker) {
            (_, Some(b)) => {
                let internal = b.internal();
                MqttEndpoint {
                    credentials: Some((internal.username.clone(), internal.password.clone())),
                    ..MqttEndpoint::plain(internal.addr.ip().to_string(), internal.addr.port())
                }
            }
            (
                MqttBroker::External {
                    host,
                    port,
                    client,
                    failover,
                },
                None,
            ) => MqttEndpoint {
                failover: failover.clone(),
                ..client_endpoint(host, *port, client)?
            },
            (MqttBroker::Embedded { listen, .. }, None) => {
                MqttEndpoint::plain(listen.ip().to_string(), listen.port())
            }
        };
        let public_url = config
            .http
            .public_url
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{http_addr}"));
        let webhooks = if config.webhooks.is_empty() {
            Vec::new()
        } else {
            let (sink, tasks) = crate::webhook::start(config.webhooks.clone(), shared.clone());
            db.set_event_sink(Some(sink));
            tasks
        };
        let link = LinkSpec {
            endpoint,
            topics,
            device_budget: config.limits.device_budget(),
        };
        let fleet = Fleet::detached(shared);
        let replica = ReplicaSpec {
            id: ha
                .replica_id
                .clone()
                .unwrap_or_else(crate::ha::default_replica_id),
            url: ha
                .advertise_url
                .clone()
                .unwrap_or_else(|| format!("{scheme}://{http_addr}")),
            timing: LeaseTiming::from_ttl_secs(ha.lease_ttl_secs),
            force_first: config.ha.is_none(),
            forget_after_ms: i64::try_from(ha.forget_replica_after().as_millis())
                .unwrap_or(i64::MAX),
        };
        let replica_id = replica.id.clone();
        let ha_task = crate::ha::start(
            CoordinatorSpec {
                handle: fleet.clone(),
                db: db.clone(),
                clock: clock.clone(),
                link: link.clone(),
                public_url: public_url.clone(),
                keys: trust.clone(),
            },
            replica,
        )
        .await?;

        if config.operators.is_empty() {
            tracing::warn!("no operators configured: every /api/v1 request will be refused");
        }
        tracing::info!(
            %http_addr,
            https = tls.is_some(),
            mqtt = %broker.as_ref().map_or_else(|| link.endpoint.to_string(), |b| {
                let scheme = if b.tls() { "mqtts" } else { "mqtt" };
                format!("{scheme}://{} (embedded)", b.addr())
            }),
            database = %redact_url(&database_url),
            store = store.describe(),
            replica = %replica_id,
            leader = fleet.shared().coordination().leader,
            keys = trust.view().keys.len(),
            threshold = trust.view().threshold,
            trust_sequence = trust.view().sequence,
            "ota server started"
        );

        let state = AppState::new(
            db.clone(),
            store.clone(),
            trust,
            config.operators.clone(),
            clock,
            fleet,
        );
        let app = http::router(state.clone(), tls.is_some());
        let (stop_tx, stop_rx) = watch::channel(false);
        let listen = http::listen::Listen::new(
            &config.limits,
            caps.http,
            tls.map(|tls| tokio_rustls::TlsAcceptor::from(Arc::new(tls))),
        );
        let task = tokio::spawn(http::listen::serve(listener, app, listen, stop_rx));
        Ok(RunningServer {
            scheme,
            http_addr,
            public_url,
            state,
            broker,
            ha_task: Some(ha_task),
            webhooks,
            stop: ShutdownHandle(Arc::new(stop_tx)),
            task,
        })
    }
}

/// Asks a running server to stop; cheap to clone (e.g. into a Ctrl-C handler).
#[derive(Debug, Clone)]
pub struct ShutdownHandle(Arc<watch::Sender<bool>>);

impl ShutdownHandle {
    /// Requests a graceful shutdown: stop accepting, let in-flight requests finish.
    pub fn shutdown(&self) {
        self.0.send_replace(true);
    }
}

/// A started server. Dropping it (and every [`ShutdownHandle`]) stops it.
#[derive(Debug)]
pub struct RunningServer {
    scheme: &'static str,
    http_addr: SocketAddr,
    public_url: String,
    state: AppState,
    broker: Option<EmbeddedBroker>,
    ha_task: Option<HaTask>,
    webhooks: Vec<JoinHandle<()>>,
    stop: ShutdownHandle,
    task: JoinHandle<std::io::Result<()>>,
}

impl RunningServer {
    /// The bound HTTP address (the real port when the configuration said 0).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// `http://` (`https://` with TLS) + [`http_addr`](Self::http_addr), for in-process
    /// clients.
    pub fn base_url(&self) -> String {
        format!("{}://{}", self.scheme, self.http_addr)
    }

    /// The base URL devices download artifacts from (`http.public_url`, else
    /// [`base_url`](Self::base_url)).
    pub fn public_url(&self) -> &str {
        &self.public_url
    }

    /// Where the embedded MQTT broker accepts local connections (`None` with an external
    /// broker). The broker keeps running after [`shutdown`](Self::shutdown): rumqttd cannot be
    /// stopped (upstream #771).
    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.broker.as_ref().map(EmbeddedBroker::local_addr)
    }

    /// Whether the embedded broker's front door speaks TLS (`false` with an external broker).
    pub fn mqtt_tls(&self) -> bool {
        self.broker.as_ref().is_some_and(EmbeddedBroker::tls)
    }

    /// How to reach the embedded broker past its front door (the server's own access; for
    /// tests and tools in the same process). `None` with an external broker.
    pub fn mqtt_internal(&self) -> Option<&crate::broker::InternalAccess> {
        self.broker.as_ref().map(EmbeddedBroker::internal)
    }

    /// The database.
    pub fn db(&self) -> &Db {
        self.state.db()
    }

    /// The artifact store.
    pub fn store(&self) -> &ArtifactStore {
        self.state.store()
    }

    /// The handlers' shared state.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// A handle that stops the server from elsewhere.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.stop.clone()
    }

    /// Stops gracefully: no new connections, in-flight requests get [`SHUTDOWN_GRACE`] to
    /// finish, then the database pool is closed.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        self.stop.shutdown();
        self.join().await
    }

    /// Serves until a [`ShutdownHandle`] asks to stop (or the server fails), then finishes
    /// like [`shutdown`](Self::shutdown).
    pub async fn wait(mut self) -> Result<(), ServerError> {
        let mut rx = self.stop.0.subscribe();
        tokio::select! {
            _ = rx.wait_for(|stop| *stop) => self.join().await,
            result = &mut self.task => {
                self.stop_background().await;
                self.state.db().close().await;
                flatten(result)
            }
        }
    }

    /// The fleet coordinator handle.
    pub fn fleet(&self) -> &crate::fleet::Fleet {
        self.state.fleet()
    }

    async fn stop_background(&mut self) {
        if let Some(ha) = self.ha_task.take() {
            ha.stop().await;
        }
        for hook in self.webhooks.drain(..) {
            hook.abort();
        }
    }

    async fn join(mut self) -> Result<(), ServerError> {
        let result = match tokio::time::timeout(SHUTDOWN_GRACE, &mut self.task).await {
            Ok(result) => flatten(result),
            Err(_) => {
                self.task.abort();
                tracing::warn!("in-flight requests cut after the shutdown grace period");
                Ok(())
            }
        };
        self.stop_background().await;
        self.state.db().close().await;
        tracing::info!("ota server stopped");
        result
    }
}

fn flatten(result: Result<std::io::Result<()>, tokio::task::JoinError>) -> Result<(), ServerError> {
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ServerError::Serve(e)),
        Err(e) => Err(ServerError::Task(e.to_string())),
    }
}

/// The connection caps of `config`, shrunk (with a warning) when the descriptor limit cannot
/// hold them (see [`crate::limits::fit_to_fd_limit`]).
fn connection_caps(config: &Config, fds: FdLimit) -> Caps {
    let wanted = Caps {
        http: config.limits.http_max_connections,
        mqtt: match config.mqtt.broker {
            MqttBroker::Embedded { .. } => config.limits.mqtt_max_connections,
            MqttBroker::External { .. } => 0,
        },
    };
    let caps = fit_to_fd_limit(wanted, fds.soft);
    if caps != wanted {
        tracing::warn!(
            soft = ?fds.soft,
            hard = ?fds.hard,
            http = caps.http,
            mqtt = caps.mqtt,
            "the open-file limit cannot hold the configured connection caps ([limits]): \
             lowered to fit (raise the hard limit, e.g. LimitNOFILE= in the systemd unit)"
        );
    } else {
        tracing::debug!(soft = ?fds.soft, hard = ?fds.hard, "open-file limit");
    }
    caps
}

/// The front door's settings from `[mqtt]` (reads the TLS files and the device secret).
fn broker_settings(
    listen: SocketAddr,
    security: &BrokerSecurity,
    limits: &LimitsConfig,
    max_connections: usize,
) -> Result<BrokerSettings, ServerError> {
    let mut settings = BrokerSettings::open(listen)
        .with_max_connections(max_connections)
        .with_device_budget(limits.device_budget());
    if let (Some(cert), Some(key)) = (&security.tls_cert, &security.tls_key) {
        settings = settings.with_tls(Arc::new(crate::tls::server_config(
            cert,
            key,
            security.tls_client_ca.as_deref(),
        )?));
    }
    if security.tls_client_ca.is_some() {
        settings = settings.with_auth(DoorAuth::Certificate);
    } else if let Some(path) = &security.device_secret_file {
        settings = settings.with_auth(DoorAuth::Password(DeviceSecret::load_or_create(path)?));
    }
    Ok(settings)
}

/// The server's connection to an external broker (reads the TLS files and the password file).
fn client_endpoint(
    host: &str,
    port: u16,
    client: &ClientSecurity,
) -> Result<MqttEndpoint, ServerError> {
    let tls = if client.tls {
        let files = crate::tls::TlsFiles {
            ca_file: client.ca_file.as_deref(),
            client_cert: client.client_cert.as_deref(),
            client_key: client.client_key.as_deref(),
        };
        Some(Arc::new(crate::tls::client_config(files)?))
    } else {
        None
    };
    let password = match &client.password_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?
            .trim_end_matches(['\r', '\n'])
            .to_owned(),
        None => String::new(),
    };
    Ok(MqttEndpoint {
        host: host.to_owned(),
        port,
        tls,
        credentials: client.username.clone().map(|user| (user, password)),
        failover: Vec::new(),
    })
}

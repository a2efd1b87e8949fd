//! The embedded MQTT broker: rumqttd running in-process on its own threads, behind a front door.
//!
//! rumqttd has no clean shutdown (upstream issue #771): once started, the broker lives until the
//! process exits, so [`EmbeddedBroker`] only reports where it listens. It speaks MQTT 3.1.1 and
//! keeps sessions in memory only.
//!
//! rumqttd itself listens on a private loopback address and port and accepts only clients that
//! present a per-process random internal secret (its `external_auth` hook): the fleet server's
//! own client ([`EmbeddedBroker::internal`]) and the [front door](front_door). The front door
//! is what devices reach on `mqtt.listen`: plain TCP or TLS ([`BrokerSettings::tls`]), and,
//! unless [`DoorAuth::Open`], device authentication (a per-device password derived from a
//! server-held secret, [`credentials`], or a client certificate whose CN is the device id) and
//! the per-device topic ACL of [`acl`]. Nothing reaches rumqttd without passing it.
//!
//! rumqttd cannot report the port it bound, so [`EmbeddedBroker::start_with`] first binds a
//! std listener on port 0, reads the port the OS chose, drops the listener and gives that port
//! to rumqttd. Between the drop and rumqttd's bind another listener could take the port. On
//! `127.0.0.1` that happened (CI, many servers in one test process): a neighbour's open front
//! door took the port, it answers the readiness check (it swaps in its own internal secret), and
//! this server's clients ended up on the neighbour's broker. So on Linux, where all of
//! `127.0.0.0/8` is the loopback, the probe binds a random address `127.x.y.z` instead
//! ([`private_loopback`]): a listener on `127.0.0.1` or another address never conflicts with
//! it, and only a wildcard (`0.0.0.0`) listener that draws the same port in that instant can
//! take it, in which case rumqttd's bind fails and start fails with
//! [`BrokerError::NotListening`]. Where the probe cannot bind such an address (other systems),
//! `127.0.0.1` is used. The front door binds `mqtt.listen` itself (port 0 works).

pub mod acl;
mod cert_name;
pub mod credentials;
pub mod front_door;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::BytesMut;
use ota_core::budget::BudgetSpec;
use ota_core::wire::Topics;
use rumqttd::{Broker, ConnectionSettings, RouterConfig, ServerSettings};

pub use front_door::DoorAuth;

use crate::fleet::Shared;
use credentials::SecretError;
use front_door::{Door, DoorAuthView};

/// Largest MQTT payload the broker accepts (a desired state may carry a signed release,
/// at most 64 KiB, plus its envelope).
pub const MAX_PAYLOAD: usize = 256 * 1024;
/// Connections rumqttd accepts beyond the front door's cap (the fleet server's own client,
/// readiness checks, test observers).
const INTERNAL_CONNECTIONS: usize = 16;
/// Size of one in-memory commit-log segment of a subscription filter.
const SEGMENT_BYTES: usize = 2 * 1024 * 1024;
/// Segments kept per subscription filter.
const SEGMENTS: usize = 8;
/// How many times [`EmbeddedBroker::start_with`] checks that the broker accepts connections.
const READY_ATTEMPTS: u32 = 250;
/// Pause between readiness checks (so at most about 5 s in all).
const READY_PAUSE: Duration = Duration::from_millis(20);
/// The username of the fleet server's own connection (any name works with the secret).
pub const INTERNAL_USER: &str = "ota-server";

/// Why the embedded broker could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// Picking a free port failed.
    #[error("cannot pick a free port on {addr}: {source}")]
    PickPort {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The front door cannot listen on `mqtt.listen`.
    #[error("cannot listen for MQTT on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The internal secret could not be generated.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The broker thread could not be spawned.
    #[error("cannot spawn the broker thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// The broker never accepted a connection (the port is taken); rumqttd logs the cause.
    #[error("the embedded MQTT broker is not listening on {0} (port taken?)")]
    NotListening(SocketAddr),
}

/// How the embedded broker faces its clients (see the [module documentation](self)).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BrokerSettings {
    /// Where the front door listens (port 0 picks a free port).
    pub listen: SocketAddr,
    /// TLS on the front door (`mqtt.tls_cert`/`tls_key`, and `tls_client_ca` for client
    /// certificates).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Device authentication and ACL.
    pub auth: DoorAuth,
    /// Most simultaneous connections at the front door; more are closed at once.
    pub max_connections: usize,
    /// What one device may publish (per device id of the topic): excess is dropped and
    /// counted, a device that persists is disconnected.
    pub device_budget: BudgetSpec,
    /// The fleet's topic namespace (`mqtt.topic_prefix`): the device ACL and the budgets
    /// read topics in it.
    pub topics: Topics,
}

impl BrokerSettings {
    /// Plain TCP, no authentication, no ACL (trusted networks, the demo, tests).
    pub fn open(listen: SocketAddr) -> Self {
        BrokerSettings {
            listen,
            tls: None,
            auth: DoorAuth::Open,
            max_connections: crate::limits::LimitsConfig::default().mqtt_max_connections,
            device_budget: crate::limits::LimitsConfig::default().device_budget(),
            topics: Topics::default(),
        }
    }

    /// These settings with this topic namespace.
    pub fn with_topics(mut self, topics: Topics) -> Self {
        self.topics = topics;
        self
    }

    /// These settings with this connection cap.
    pub fn with_max_connections(mut self, max: usize) -> Self {
        self.max_connections = max;
        self
    }

    /// These settings with this per-device message budget.
    pub fn with_device_budget(mut self, budget: BudgetSpec) -> Self {
        self.device_budget = budget;
        self
    }

    /// These settings with TLS.
    pub fn with_tls(mut self, tls: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(tls);
        self
    }

    /// These settings with this authentication.
    pub fn with_auth(mut self, auth: DoorAuth) -> Self {
        self.auth = auth;
        self
    }
}

/// How the fleet server's own client reaches rumqttd, past the front door. `Debug` hides the
/// password.
#[derive(Clone)]
pub struct InternalAccess {
    /// rumqttd's private address (`127.0.0.1`).
    pub addr: SocketAddr,
    /// The username ([`INTERNAL_USER`]).
    pub username: String,
    /// The per-process internal secret.
    pub password: String,
}

impl std::fmt::Debug for InternalAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InternalAccess")
            .field("addr", &self.addr)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A running embedded broker (it runs until the process exits; the front door until the tokio
/// runtime that started it stops).
#[derive(Debug)]
pub struct EmbeddedBroker {
    addr: SocketAddr,
    tls: bool,
    internal: InternalAccess,
    _thread: JoinHandle<()>,
}

/// Constant-time equality of two secrets.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl EmbeddedBroker {
    /// Starts the broker with an open, plain-TCP front door on `listen` (port 0 picks a free
    /// port) and waits until it accepts connections.
    pub async fn start(listen: SocketAddr) -> Result<Self, BrokerError> {
        Self::start_with(BrokerSettings::open(listen), Arc::new(Shared::default())).await
    }

    /// Starts rumqttd on a private loopback port and the front door described by `settings`;
    /// refusals are counted in `shared`'s counters.
    pub async fn start_with(
        settings: BrokerSettings,
        shared: Arc<Shared>,
    ) -> Result<Self, BrokerError> {
        let password = credentials::random_hex(32)?;
        let internal_addr = {
            let private = SocketAddr::from((private_loopback()?, 0));
            let probe = match TcpListener::bind(private) {
                Ok(probe) => Ok(probe),
                Err(_) => TcpListener::bind((Ipv4Addr::LOCALHOST, 0)),
            };
            let pick = |source| BrokerError::PickPort {
                addr: private,
                source,
            };
            probe.map_err(pick)?.local_addr().map_err(pick)?
        };
        let config = broker_config(
            internal_addr,
            password.clone(),
            settings.max_connections + INTERNAL_CONNECTIONS,
        );
        let thread = std::thread::Builder::new()
            .name("ota-mqtt-broker".into())
            .spawn(move || {
                let mut broker = Broker::new(config);
                if let Err(e) = broker.start() {
                    tracing::error!("embedded MQTT broker stopped: {e}");
                }
            })
            .map_err(BrokerError::Spawn)?;
        let internal = InternalAccess {
            addr: internal_addr,
            username: INTERNAL_USER.to_owned(),
            password,
        };
        let mut ready = false;
        for _ in 0..READY_ATTEMPTS {
            if mqtt_handshake(&internal).await {
                ready = true;
                break;
            }
            if thread.is_finished() {
                break;
            }
            tokio::time::sleep(READY_PAUSE).await;
        }
        if !ready {
            return Err(BrokerError::NotListening(internal_addr));
        }
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .map_err(|source| BrokerError::Bind {
                addr: settings.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| BrokerError::Bind {
            addr: settings.listen,
            source,
        })?;
        let tls = settings.tls.is_some();
        tracing::info!(
            %addr,
            tls,
            auth = ?DoorAuthView(&settings.auth),
            "embedded MQTT broker listening"
        );
        if matches!(settings.auth, DoorAuth::Open) {
            tracing::warn!(
                %addr,
                "the embedded MQTT broker is open: any client may use any topic (set \
                 mqtt.device_secret_file or mqtt.tls_client_ca)"
            );
        }
        let door = Door {
            tls: settings.tls.map(tokio_rustls::TlsAcceptor::from),
            auth: settings.auth,
            upstream: internal_addr,
            internal_password: internal.password.as_str().into(),
            shared,
            gate: crate::limits::ConnectionGate::new(settings.max_connections, 0),
            budgets: std::sync::Mutex::new(front_door::DeviceBudgets::new(settings.device_budget)),
            topics: settings.topics,
        };
        tokio::spawn(front_door::serve(listener, Arc::new(door)));
        Ok(EmbeddedBroker {
            addr,
            tls,
            internal,
            _thread: thread,
        })
    }

    /// The address the front door listens on (with the real port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// An address clients on this host can connect to (`0.0.0.0` becomes `127.0.0.1`).
    pub fn local_addr(&self) -> SocketAddr {
        reachable(self.addr)
    }

    /// Whether the front door speaks TLS.
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// How the fleet server's own client (or a test observer) reaches rumqttd directly.
    pub fn internal(&self) -> &InternalAccess {
        &self.internal
    }
}

/// CONNACK, session not present, accepted.
const CONNACK_OK: [u8; 4] = [0x20, 0x02, 0x00, 0x00];
/// DISCONNECT.
const DISCONNECT: [u8; 2] = [0xe0, 0x00];

/// Whether rumqttd accepts the internal credentials at `access.addr` (a plain TCP accept is not
/// enough: it could be another program).
/// A random loopback address `127.x.y.z` (x in 1..=254, z in 1..=254) for rumqttd's private
/// listener (see the [module documentation](self) for why not `127.0.0.1`).
fn private_loopback() -> Result<Ipv4Addr, BrokerError> {
    let mut bytes = [0u8; 3];
    credentials::fill_random(&mut bytes)?;
    let [x, y, z] = bytes;
    Ok(Ipv4Addr::new(127, 1 + x % 254, y, 1 + z % 254))
}

async fn mqtt_handshake(access: &InternalAccess) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut connect = rumqttc::mqttbytes::v4::Connect::new("ota-ready-check");
    connect.keep_alive = 60;
    connect.set_login(access.username.clone(), access.password.clone());
    let mut out = BytesMut::new();
    if rumqttc::mqttbytes::v4::Packet::Connect(connect)
        .write(&mut out, front_door::MAX_PACKET)
        .is_err()
    {
        return false;
    }
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(access.addr).await?;
        stream.write_all(&out).await?;
        let mut ack = [0u8; 4];
        stream.read_exact(&mut ack).await?;
        let _ = stream.write_all(&DISCONNECT).await;
        Ok::<bool, std::io::Error>(ack == CONNACK_OK)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Ok(true))
    )
}

/// A wildcard listen address is not connectable: use loopback of the same family.
fn reachable(addr: SocketAddr) -> SocketAddr {
    let mut a = addr;
    if a.ip().is_unspecified() {
        a.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    a
}

fn broker_config(addr: SocketAddr, password: String, max_connections: usize) -> rumqttd::Config {
    let mut connections = ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: MAX_PAYLOAD,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let secret: Arc<[u8]> = password.into_bytes().into();
    connections.set_auth_handler(move |_client_id, _username, given: String| {
        let ok = same_secret(given.as_bytes(), &secret);
        async move { ok }
    });
    let server = ServerSettings {
        name: "ota-v4".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    let router = RouterConfig {
        max_connections,
        max_outgoing_packet_count: 200,
        // Every subscription filter keeps a commit log of what it routed, in memory, until
        // the oldest segment is dropped. 100 MB x 10 would keep a whole rollout's messages;
        // 2 MiB x 8 bounds each filter to 16 MiB, still tens of thousands of messages behind
        // the fastest consumer (the server drains its filters continuously).
        max_segment_size: SEGMENT_BYTES,
        max_segment_count: SEGMENTS,
        ..RouterConfig::default()
    };
    rumqttd::Config {
        id: 0,
        router,
        v4: Some(HashMap::from([("1".to_string(), server)])),
        ..rumqttd::Config::default()
    }
}

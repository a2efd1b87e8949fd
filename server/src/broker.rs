//! The embedded MQTT broker: rumqttd running in-process on its own threads.
//!
//! rumqttd has no clean shutdown (upstream issue #771): once started, the broker lives until the
//! process exits, so [`EmbeddedBroker`] only reports where it listens. It speaks MQTT 3.1.1, with
//! no TLS and no authentication: bind it to a trusted network (or put devices behind a TLS
//! terminating proxy). Sessions are in memory only.
//!
//! Port 0 picks a free port: the broker cannot report the port it bound, so
//! [`EmbeddedBroker::start`] first binds a std listener on the same address with port 0, reads the
//! port the OS chose, drops the listener and gives that port to rumqttd. Between the drop and
//! rumqttd's bind another process could take the port (a tiny race); start then fails with
//! [`BrokerError::NotListening`] rather than talking to a stranger's socket silently.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::thread::JoinHandle;
use std::time::Duration;

use rumqttd::{Broker, ConnectionSettings, RouterConfig, ServerSettings};

/// Largest MQTT payload the broker accepts (a desired state may carry a signed release,
/// at most 64 KiB, plus its envelope).
pub const MAX_PAYLOAD: usize = 256 * 1024;
/// Most simultaneous MQTT connections.
pub const MAX_CONNECTIONS: usize = 10_000;
/// Size of one in-memory commit-log segment of a subscription filter.
const SEGMENT_BYTES: usize = 2 * 1024 * 1024;
/// Segments kept per subscription filter.
const SEGMENTS: usize = 8;
/// How many times [`EmbeddedBroker::start`] checks that the broker accepts connections.
const READY_ATTEMPTS: u32 = 250;
/// Pause between readiness checks (so at most about 5 s in all).
const READY_PAUSE: Duration = Duration::from_millis(20);

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
    /// The broker thread could not be spawned.
    #[error("cannot spawn the broker thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// The broker never accepted a connection (the port is taken, or the address is not
    /// local); rumqttd logs the cause.
    #[error("the embedded MQTT broker is not listening on {0} (port taken?)")]
    NotListening(SocketAddr),
}

/// A running embedded broker (it runs until the process exits).
#[derive(Debug)]
pub struct EmbeddedBroker {
    addr: SocketAddr,
    _thread: JoinHandle<()>,
}

impl EmbeddedBroker {
    /// Starts rumqttd on `listen` (port 0 picks a free port) and waits until it accepts TCP
    /// connections.
    pub async fn start(listen: SocketAddr) -> Result<Self, BrokerError> {
        let addr = if listen.port() == 0 {
            let probe = TcpListener::bind(listen).map_err(|source| BrokerError::PickPort {
                addr: listen,
                source,
            })?;
            let addr = probe.local_addr().map_err(|source| BrokerError::PickPort {
                addr: listen,
                source,
            })?;
            drop(probe);
            addr
        } else {
            listen
        };
        let config = broker_config(addr);
        let thread = std::thread::Builder::new()
            .name("ota-mqtt-broker".into())
            .spawn(move || {
                let mut broker = Broker::new(config);
                if let Err(e) = broker.start() {
                    tracing::error!("embedded MQTT broker stopped: {e}");
                }
            })
            .map_err(BrokerError::Spawn)?;
        let connect_to = reachable(addr);
        for _ in 0..READY_ATTEMPTS {
            if mqtt_handshake(connect_to).await {
                tracing::info!(%addr, "embedded MQTT broker listening");
                return Ok(EmbeddedBroker {
                    addr,
                    _thread: thread,
                });
            }
            if thread.is_finished() {
                break;
            }
            tokio::time::sleep(READY_PAUSE).await;
        }
        Err(BrokerError::NotListening(addr))
    }

    /// The address the broker listens on (with the real port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// An address clients on this host can connect to (`0.0.0.0` becomes `127.0.0.1`).
    pub fn local_addr(&self) -> SocketAddr {
        reachable(self.addr)
    }
}

/// MQTT 3.1.1 CONNECT, clean session, keep-alive 60 s, client id `ota-ready-check`.
const READY_CONNECT: &[u8] = &[
    0x10, 27, // CONNECT, remaining length
    0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, // variable header
    0x00, 15, b'o', b't', b'a', b'-', b'r', b'e', b'a', b'd', b'y', b'-', b'c', b'h', b'e', b'c',
    b'k',
];
/// CONNACK, session not present, accepted.
const CONNACK_OK: [u8; 4] = [0x20, 0x02, 0x00, 0x00];
/// DISCONNECT.
const DISCONNECT: [u8; 2] = [0xe0, 0x00];

/// Whether an MQTT broker accepts a connection at `addr` (a plain TCP accept is not enough: it
/// could be another program).
async fn mqtt_handshake(addr: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(READY_CONNECT).await?;
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

fn broker_config(addr: SocketAddr) -> rumqttd::Config {
    let connections = ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: MAX_PAYLOAD,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = ServerSettings {
        name: "ota-v4".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    let router = RouterConfig {
        max_connections: MAX_CONNECTIONS,
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

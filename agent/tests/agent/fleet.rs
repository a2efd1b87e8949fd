//! Shell-test fixtures: an in-process MQTT broker on port 0, a TCP proxy that can cut the
//! agent off the broker, a small fake fleet server, signed test releases and test devices.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use firmware_fixtures::TestKey;
use ota_agent::agent::AgentOptions;
use ota_agent::config::AgentConfig;
use ota_agent::install::{FilesInstaller, InstallRequest};
use ota_agent::mqtt::Backoff;
use ota_agent::storage::FsStorage;
use ota_core::digest::Digest;
use ota_core::release::{ChunkIndexRef, FORMAT_VERSION, Manifest, sign};
use ota_core::wire::{
    DesiredState, Event, ExecutionState, Heartbeat, HeartbeatAck, PROTOCOL_VERSION, ReportedState,
    Status, TopicKind, WireMessage, parse_device_topic,
};
use rumqttc::{AsyncClient, Event as MqttEvent, Incoming, MqttOptions, QoS};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::util::artifact;

pub const HW: &str = firmware_fixtures::HARDWARE_CLASS;
pub const CHUNK: usize = 64 * 1024;
/// Generous bound on how long a test waits for something that takes milliseconds.
pub const PATIENCE: Duration = Duration::from_secs(30);

// ---- broker --------------------------------------------------------------------------------

/// An in-process rumqttd on 127.0.0.1 with a free port (it lives until the process exits).
pub fn start_broker() -> SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let server = rumqttd::ServerSettings {
        name: "agent-tests".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections: rumqttd::ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: 256 * 1024,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 1000,
            max_outgoing_packet_count: 200,
            max_segment_size: 16 * 1024 * 1024,
            max_segment_count: 10,
            ..Default::default()
        },
        v4: Some(HashMap::from([("1".to_owned(), server)])),
        ..Default::default()
    };
    std::thread::spawn(move || {
        let _ = rumqttd::Broker::new(config).start();
    });
    // Ready when it answers an MQTT CONNECT with a CONNACK.
    // Bounded by attempts, not by reading a clock.
    let poll = Duration::from_millis(20);
    for _ in 0..PATIENCE.as_millis() / poll.as_millis() {
        if mqtt_ready(addr) {
            return addr;
        }
        std::thread::sleep(poll);
    }
    panic!("the test broker never accepted a connection on {addr}");
}

fn mqtt_ready(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    // CONNECT, MQTT 3.1.1, clean session, keep-alive 10 s, client id "ready".
    let connect = [
        0x10, 17, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 10, 0, 5, b'r', b'e', b'a', b'd', b'y',
    ];
    let mut ack = [0u8; 4];
    s.write_all(&connect).is_ok() && s.read_exact(&mut ack).is_ok() && ack == [0x20, 2, 0, 0]
}

/// The shared broker of this test binary.
pub fn broker() -> SocketAddr {
    static BROKER: std::sync::OnceLock<SocketAddr> = std::sync::OnceLock::new();
    *BROKER.get_or_init(start_broker)
}

// ---- proxy ---------------------------------------------------------------------------------

/// A TCP forwarder in front of the broker: `cut` drops every connection and refuses new ones
/// until `restore` (a broker that vanished and came back).
pub struct Proxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    /// Connections forwarded so far.
    forwarded: Arc<AtomicUsize>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    _accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let forwarded = Arc::new(AtomicUsize::new(0));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (c, k, f) = (cut.clone(), conns.clone(), forwarded.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if c.load(Ordering::SeqCst) {
                    let _ = inbound.shutdown().await;
                    continue;
                }
                f.fetch_add(1, Ordering::SeqCst);
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                k.lock().unwrap().push(task);
            }
        });
        Proxy {
            addr,
            cut,
            forwarded,
            conns,
            _accept: accept,
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }

    /// How many connections it forwarded (refused ones do not count).
    pub fn forwarded(&self) -> usize {
        self.forwarded.load(Ordering::SeqCst)
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for task in self.conns.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

// ---- fleet server --------------------------------------------------------------------------

/// What the fake fleet server saw.
#[derive(Default)]
pub struct Seen {
    pub events: Vec<(String, Event)>,
    pub reported: HashMap<String, ReportedState>,
    pub status: HashMap<String, Status>,
    pub heartbeats: Vec<(String, Heartbeat)>,
    pub garbage: usize,
    /// Barrier tokens that came back (see [`Fleet::barrier`]).
    pub barriers: Vec<Vec<u8>>,
}

/// A tiny fleet server: records events, reported states and statuses of every device, echoes
/// heartbeats (while `acking`), and publishes retained desired states.
pub struct Fleet {
    pub client: AsyncClient,
    pub seen: Arc<Mutex<Seen>>,
    pub changed: Arc<Notify>,
    pub acking: Arc<AtomicBool>,
    /// This fleet's own barrier topic (see [`Fleet::barrier`]).
    barrier_topic: String,
    _poll: JoinHandle<()>,
}

impl Fleet {
    /// Connects to the broker at `url` (mqtt://host:port).
    pub async fn start(url: &str) -> Fleet {
        init_logs();
        let (host, port, _) = ota_agent::mqtt::parse_broker_url(url).unwrap();
        let id = format!("fleet-{}", unique());
        let barrier_topic = format!("ota-test/barrier/{id}");
        let mut options = MqttOptions::new(id, host, port);
        options.set_max_packet_size(256 * 1024, 256 * 1024);
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(options, 256);
        for kind in [
            TopicKind::Events,
            TopicKind::Reported,
            TopicKind::Status,
            TopicKind::Heartbeat,
        ] {
            client
                .subscribe(kind.fleet_filter(), QoS::AtLeastOnce)
                .await
                .unwrap();
        }
        client
            .subscribe(&barrier_topic, QoS::AtLeastOnce)
            .await
            .unwrap();
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let changed = Arc::new(Notify::new());
        let acking = Arc::new(AtomicBool::new(true));
        let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel::<(String, Vec<u8>)>();
        let acker = client.clone();
        tokio::spawn(async move {
            while let Some((topic, payload)) = ack_rx.recv().await {
                let _ = acker.publish(topic, QoS::AtLeastOnce, false, payload).await;
            }
        });
        let (s, n, a) = (seen.clone(), changed.clone(), acking.clone());
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready_tx = Some(ready_tx);
        let mut subacks = 0;
        let poll = tokio::spawn(async move {
            loop {
                let ev = match eventloop.poll().await {
                    Ok(ev) => ev,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let p = match ev {
                    MqttEvent::Incoming(Incoming::SubAck(_)) => {
                        subacks += 1;
                        if subacks == 5
                            && let Some(tx) = ready_tx.take()
                        {
                            let _ = tx.send(());
                        }
                        continue;
                    }
                    MqttEvent::Incoming(Incoming::Publish(p)) => p,
                    _ => continue,
                };
                if p.payload.is_empty() {
                    continue; // a cleared retained message
                }
                if p.topic.starts_with("ota-test/barrier/") {
                    s.lock().unwrap().barriers.push(p.payload.to_vec());
                    n.notify_waiters();
                    continue;
                }
                let Ok((device, kind)) = parse_device_topic(&p.topic) else {
                    continue;
                };
                let device = device.as_str().to_owned();
                let mut seen = s.lock().unwrap();
                match kind {
                    TopicKind::Events => match Event::from_cbor(&p.payload) {
                        Ok(e) => seen.events.push((device, e)),
                        Err(_) => seen.garbage += 1,
                    },
                    TopicKind::Reported => match ReportedState::from_cbor(&p.payload) {
                        Ok(r) => {
                            seen.reported.insert(device, r);
                        }
                        Err(_) => seen.garbage += 1,
                    },
                    TopicKind::Status => match Status::from_cbor(&p.payload) {
                        Ok(st) => {
                            seen.status.insert(device, st);
                        }
                        Err(_) => seen.garbage += 1,
                    },
                    TopicKind::Heartbeat => match Heartbeat::from_cbor(&p.payload) {
                        Ok(hb) => {
                            seen.heartbeats.push((device.clone(), hb));
                            if a.load(Ordering::SeqCst) {
                                let ack = HeartbeatAck {
                                    v: PROTOCOL_VERSION,
                                    seq: hb.seq,
                                }
                                .to_cbor();
                                let topic = format!("ota/v1/devices/{device}/heartbeat/ack");
                                let _ = ack_tx.send((topic, ack));
                            }
                        }
                        Err(_) => seen.garbage += 1,
                    },
                    _ => {}
                }
                drop(seen);
                n.notify_waiters();
            }
        });
        tokio::time::timeout(PATIENCE, ready_rx)
            .await
            .unwrap()
            .unwrap();
        Fleet {
            client,
            seen,
            changed,
            acking,
            barrier_topic,
            _poll: poll,
        }
    }

    /// Publishes a retained desired state for `device`.
    pub async fn desire(&self, device: &str, desired: &DesiredState) {
        self.publish_desired_bytes(device, desired.to_cbor(), true)
            .await;
    }

    /// Publishes raw bytes on `device`'s desired topic.
    pub async fn publish_desired_bytes(&self, device: &str, payload: Vec<u8>, retain: bool) {
        self.client
            .publish(
                format!("ota/v1/devices/{device}/desired"),
                QoS::AtLeastOnce,
                retain,
                payload,
            )
            .await
            .unwrap();
    }

    /// Clears the retained messages of `device` (desired, reported, status).
    pub async fn clear(&self, device: &str) {
        for kind in ["desired", "reported", "status"] {
            self.client
                .publish(
                    format!("ota/v1/devices/{device}/{kind}"),
                    QoS::AtLeastOnce,
                    true,
                    Vec::new(),
                )
                .await
                .unwrap();
        }
        // Back only once the broker processed the clears (a restarted agent must not be
        // handed the old retained desired state).
        self.barrier().await;
    }

    /// Returns once the broker processed everything this fleet published before: a token
    /// published on the fleet's own barrier topic came back (one connection's packets are
    /// processed in order).
    pub async fn barrier(&self) {
        let token = unique().into_bytes();
        self.client
            .publish(&self.barrier_topic, QoS::AtLeastOnce, false, token.clone())
            .await
            .unwrap();
        self.wait("the barrier token", |s| s.barriers.contains(&token))
            .await;
    }

    /// Waits (real time, bounded) until `pred` holds for what was seen.
    pub async fn wait(&self, what: &str, pred: impl Fn(&Seen) -> bool) {
        let waited = tokio::time::timeout(PATIENCE, async {
            loop {
                let notified = self.changed.notified();
                if pred(&self.seen.lock().unwrap()) {
                    return;
                }
                // A short poll as well: a notification may come between the check and the wait.
                let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "timed out waiting for {what}");
    }

    /// Waits for an event of `device` for `generation` whose state is named `state`.
    pub async fn wait_event(&self, device: &str, generation: u64, state: &str) -> Event {
        self.wait(&format!("{device} generation {generation} {state}"), |s| {
            s.events
                .iter()
                .any(|(d, e)| d == device && e.generation == generation && e.kind.name() == state)
        })
        .await;
        self.events(device)
            .into_iter()
            .find(|e| e.generation == generation && e.kind.name() == state)
            .unwrap()
    }

    pub fn events(&self, device: &str) -> Vec<Event> {
        self.seen
            .lock()
            .unwrap()
            .events
            .iter()
            .filter(|(d, _)| d == device)
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// The names of `device`'s events for `generation`, progress left out, in order.
    pub fn states(&self, device: &str, generation: u64) -> Vec<&'static str> {
        self.events(device)
            .into_iter()
            .filter(|e| e.generation == generation)
            .map(|e| e.kind.name())
            .filter(|n| *n != "downloading")
            .collect()
    }
}

/// Logs of the agents under test, shown for failing tests (`RUST_LOG=debug` for more).
pub fn init_logs() {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    let targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|s| s.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_target("ota_agent", LevelFilter::INFO));
    let layer = tracing_subscriber::fmt::layer().with_test_writer();
    let _ = tracing_subscriber::registry()
        .with(layer.with_filter(targets))
        .try_init();
}

/// A process-wide unique number (device ids, client ids).
pub fn unique() -> String {
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(0);
    // The wall clock only makes ids unique across test runs on a shared broker (retained
    // messages outlive a run); no decision depends on it.
    #[allow(clippy::disallowed_methods)]
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{}-{}-{}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::SeqCst)
    )
}

// ---- releases ------------------------------------------------------------------------------

/// A release and its artifact.
#[derive(Clone)]
pub struct Rel {
    pub version: String,
    pub artifact: Vec<u8>,
    pub signed: Vec<u8>,
}

impl Rel {
    pub fn digest(&self) -> Digest {
        Digest::of(&self.artifact)
    }
}

/// A release of `len` deterministic bytes, signed by `keys`.
pub fn release_signed(version: &str, security_version: u32, len: usize, keys: &[TestKey]) -> Rel {
    let artifact = artifact(len, u64::from(security_version) * 7919 + len as u64);
    release_of(version, security_version, artifact, None, keys)
}

/// A release of `artifact`, naming the chunk index `chunk_index` (delta updates), signed by
/// `keys`.
pub fn release_of(
    version: &str,
    security_version: u32,
    artifact: Vec<u8>,
    chunk_index: Option<ChunkIndexRef>,
    keys: &[TestKey],
) -> Rel {
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        product: firmware_fixtures::PRODUCT.to_owned(),
        version: version.to_owned(),
        security_version,
        artifact_sha256: Digest::of(&artifact).0,
        artifact_size: artifact.len() as u64,
        hardware: vec![HW.to_owned()],
        created: firmware_fixtures::CREATED,
        expires: None,
        installer: Some("files".to_owned()),
        metadata: Default::default(),
        chunk_index,
    };
    let keys: Vec<_> = keys.iter().map(|k| k.signing_key()).collect();
    Rel {
        version: version.to_owned(),
        signed: sign(&manifest, &keys),
        artifact,
    }
}

/// A release signed by the trusted test key A.
pub fn release(version: &str, security_version: u32, len: usize) -> Rel {
    release_signed(version, security_version, len, &[TestKey::A])
}

pub fn desired(generation: u64, rel: &Rel, urls: Vec<String>) -> DesiredState {
    DesiredState {
        v: PROTOCOL_VERSION,
        generation,
        rollout_id: Some("rollout-1".to_owned()),
        release: rel.signed.clone(),
        artifact_urls: urls,
        force_reinstall: false,
    }
}

// ---- devices -------------------------------------------------------------------------------

/// A device on disk: `data/` (agent), `app/` (files installer root, the factory release
/// installed), `factory/` (the factory release and artifact).
pub struct Device {
    pub dir: tempfile::TempDir,
    pub id: String,
    pub config: AgentConfig,
}

impl Device {
    /// A device running `factory` (installed under `app/`), connecting to `broker_url`.
    pub async fn new(prefix: &str, broker_url: &str, factory: &Rel, extra_toml: &str) -> Device {
        let dir = tempfile::tempdir().unwrap();
        let id = format!("{prefix}-{}", unique());
        Self::in_dir(dir, id, broker_url, factory, extra_toml).await
    }

    pub async fn in_dir(
        dir: tempfile::TempDir,
        id: String,
        broker_url: &str,
        factory: &Rel,
        extra_toml: &str,
    ) -> Device {
        let root = dir.path();
        std::fs::create_dir_all(root.join("factory")).unwrap();
        std::fs::write(root.join("factory/release"), &factory.signed).unwrap();
        std::fs::write(root.join("factory/artifact"), &factory.artifact).unwrap();
        let app = root.join("app");
        std::fs::create_dir_all(&app).unwrap();
        // The factory image is installed: app/current -> releases/<factory digest>.
        let installer = FilesInstaller::new(FsStorage::shared(), &app);
        installer
            .install(&InstallRequest {
                artifact: &root.join("factory/artifact"),
                digest: factory.digest(),
                version: &factory.version,
            })
            .await
            .unwrap();
        let extra_toml = extra_toml.replace("{root}", &root.display().to_string());
        let key = firmware_fixtures::path(&TestKey::A.public_pem_file());
        let toml = format!(
            r#"
device_id = "{id}"
hardware_class = "{HW}"
data_dir = "{data}"
trial_timeout = "10m"
heartbeat_interval = "30s"
{extra_toml}

[trust]
keys = [{{ file = "{key}" }}]

[broker]
url = "{broker_url}"
keep_alive = "30s"

[installer]
kind = "files"
root = "{app}"

[download]
chunk_size = {CHUNK}
retries = 3
backoff = "20ms"
max_backoff = "100ms"
connect_timeout = "5s"
read_timeout = "10s"
disk_margin_bytes = 0

[factory]
release = "{release}"
artifact = "{artifact}"
"#,
            data = root.join("data").display(),
            key = key.display(),
            app = app.display(),
            release = root.join("factory/release").display(),
            artifact = root.join("factory/artifact").display(),
        );
        std::fs::write(root.join("config.toml"), &toml).unwrap();
        let config = AgentConfig::from_toml_str(&toml).unwrap();
        Device { dir, id, config }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn data(&self) -> PathBuf {
        self.root().join("data")
    }

    pub fn app(&self) -> PathBuf {
        self.root().join("app")
    }

    /// The digest `app/current` points to.
    pub fn current(&self) -> Option<Digest> {
        let target = std::fs::read_link(self.app().join("current")).ok()?;
        target.file_name()?.to_str()?.parse().ok()
    }
}

/// Options with short timers and a fixed boot id.
pub fn options() -> AgentOptions {
    AgentOptions::new()
        .with_boot_id("boot-1")
        .with_reconnect_backoff(Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
        })
        .with_persist_retry(Duration::from_millis(10))
        .with_power_poll_interval(Duration::from_millis(50))
        .with_machine_tweak(|c| {
            c.probe_interval = Duration::from_millis(50);
            c.progress_interval = Duration::from_millis(0);
        })
}

/// Whether the agent finished a generation: idle, acted on at least `generation`, and a final
/// result recorded for it.
pub fn settled(s: &ota_agent::AgentStatus, generation: u64) -> bool {
    s.machine.stage == ota_core::update::Stage::Idle
        && s.machine.last_generation >= generation
        && s.machine
            .last_result
            .as_ref()
            .is_some_and(|r| r.generation >= generation && r.state.is_final())
}

/// The final state name of the last result.
pub fn last_state(s: &ota_agent::AgentStatus) -> &'static str {
    s.machine
        .last_result
        .as_ref()
        .map_or("none", |r| r.state.name())
}

pub fn rejected_cause(e: &Event) -> Option<ota_core::wire::RejectCause> {
    match &e.kind {
        ExecutionState::Rejected { cause, .. } => Some(*cause),
        _ => None,
    }
}

//! A simulated fleet speaking the real MQTT protocol (ota-core's wire messages): devices that
//! answer desired states by reporting execution states per a script. Shared by the
//! integration tests and the fleet benchmark (`examples/fleet_sim.rs`).
//!
//! Two ways to reach the broker:
//!
//! - **multiplexed** ([`Sim::connect`]): many devices share one MQTT connection (each subscribes
//!   to its own `desired` and `heartbeat/ack` topics, or the connection subscribes once with a
//!   wildcard; offline is published as the retained `Status` the last will would publish), so
//!   ten thousand devices do not need ten thousand sockets;
//! - **real agents** ([`Sim::agents`]): every device has its own connection, session and
//!   subscriptions, as `ota-agent` (agent/src/mqtt.rs) has; see [`AgentLink`] for what is the
//!   same and what is simplified.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test and benchmark helper: a failure here is a failing test"
)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ota_core::digest::Digest;
use ota_core::flags::{DeviceFlags, FlagStore};
use ota_core::release::SignedRelease;
use ota_core::wire::{
    DesiredState, DeviceId, Event, ExecutionState, FailurePhase, Heartbeat, HeartbeatAck,
    Inventory, PROTOCOL_VERSION, PowerReading, RejectCause, ReportedState, RollbackReason,
    RunningRelease, Status, TopicKind, Topics, Transfer, UpdateOutcome, WireMessage,
};
use ota_server::broker::credentials::DeviceSecret;
use rumqttc::{
    AsyncClient, Event as MqttEvent, EventLoop, LastWill, MqttOptions, Packet, QoS, SubscribeFilter,
};
use tokio::sync::{Semaphore, mpsc};

/// How a simulated device answers a desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behavior {
    /// notified, downloading, installing, trial, succeeded.
    Succeed,
    /// notified, downloading, (installing,) failed in this phase.
    Fail(FailurePhase),
    /// notified, downloading, installing, trial, rolled-back (probe failed).
    RollBack,
    /// notified, then deferred-power (waits for a charger forever).
    Defer,
    /// Refuses the release (bad signature, say).
    Reject,
    /// Receives the desired state and says nothing (a hung device).
    Silent,
    /// A/B slots: notified, downloading, installing, rebooting, then nothing until
    /// [`Sim::come_back`] (the device is rebooting into its new slot).
    Reboot,
}

/// A desired state a device received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Its generation.
    pub generation: u64,
    /// The rollout id it carried.
    pub rollout_id: Option<String>,
    /// The release's artifact digest.
    pub digest: Digest,
    /// Forced reinstall.
    pub force: bool,
    /// The signed release bytes as received.
    pub release: Vec<u8>,
    /// The artifact URLs.
    pub urls: Vec<String>,
}

/// One simulated device's state.
#[derive(Debug, Clone)]
pub struct SimDevice {
    /// Id.
    pub id: DeviceId,
    /// Hardware class.
    pub hw: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Running release.
    pub running: Option<RunningRelease>,
    /// Known-good release.
    pub known_good: Option<RunningRelease>,
    /// Last generation acted on.
    pub generation: u64,
    /// Script.
    pub behavior: Behavior,
    /// Every distinct desired state acted on or ignored (by generation).
    pub seen: Vec<Seen>,
    /// Duplicate deliveries (same generation again).
    pub duplicates: u32,
    /// The last outcome.
    pub last_result: Option<UpdateOutcome>,
    /// Heartbeat acks received.
    pub acks: Vec<u64>,
    /// Whether it fetches the artifact over HTTP and checks its digest.
    pub download: bool,
    /// Its feature flags, applied with core's device applier.
    pub flags: FlagStore,
    /// When it last applied new flags.
    pub flags_applied_at: Option<Instant>,
}

/// How the devices of a [`Sim`] reach the broker.
#[derive(Clone)]
enum Clients {
    /// One connection for every device ([`Sim::connect`]).
    Shared(AsyncClient),
    /// One connection per device, by device id ([`Sim::agents`]).
    PerDevice(Arc<AgentLink>, Arc<Mutex<HashMap<String, AsyncClient>>>),
}

/// How each device of [`Sim::agents`] connects. Mirrors `ota-agent` (agent/src/mqtt.rs,
/// agent/src/shell.rs): client id = device id; with a device secret, username = device id and
/// password = the server's derived device password (what `ota server device-credential`
/// provisions); keep-alive, packet size (256 KiB), inflight window (32), request channel (64),
/// TCP no-delay; a retained QoS 1 last will `Status { online: false }` on `status`; the first
/// connection clean, reconnects resuming the session; on every connect a subscription to
/// `desired`, `heartbeat/ack`, the flags topic and `trust`, then the retained online
/// `Status`, and once the subscription is acknowledged the retained reported state and a
/// heartbeat; a heartbeat every `heartbeat` while connected; reconnects after a wait doubling
/// from 1 s to 60 s.
///
/// Simplified: received messages are acknowledged at once (the agent acknowledges a desired
/// state once its decision is journaled); the execution states come from the device's
/// [`Behavior`] script, without the trial's heartbeat round trip; no TLS, no failover brokers;
/// the reconnect wait has no jitter.
pub struct AgentLink {
    /// Broker host.
    pub host: String,
    /// The fleet's topics (`mqtt.topic_prefix`).
    pub topics: Topics,
    /// Broker port.
    pub port: u16,
    /// MQTT keep-alive (the agent's default `broker.keep_alive`: 30 s).
    pub keep_alive: Duration,
    /// Pause between heartbeats (the agent's default `heartbeat_interval`: 30 s).
    pub heartbeat: Duration,
    /// The broker's device secret (`mqtt.device_secret_file`), when it requires device passwords.
    pub secret: Option<DeviceSecret>,
    /// Most first connection attempts in flight at once (a fleet does not boot in one instant).
    pub connecting: Arc<Semaphore>,
}

/// What a real-agent device's poll task tells its shell task.
enum LinkUp {
    /// CONNACK: subscriptions sent.
    Connected,
    /// SUBACK: the subscriptions stand.
    Subscribed,
    /// The connection is lost.
    Lost,
}

/// A simulated fleet on one MQTT connection, or on one per device ([`Sim::agents`]).
#[derive(Clone)]
pub struct Sim {
    clients: Clients,
    topics: Topics,
    inbox: mpsc::UnboundedSender<(String, bytes::Bytes)>,
    wildcard: bool,
    devices: Arc<Mutex<HashMap<String, SimDevice>>>,
    clock: Arc<AtomicU64>,
    /// Messages published by the simulated devices.
    pub published: Arc<AtomicU64>,
    /// Messages received by the simulated devices.
    pub received: Arc<AtomicU64>,
}

impl Sim {
    /// Connects to the broker at `host:port` as client `client_id`, for a fleet on `topics`;
    /// each device subscribes to its own topics.
    pub async fn connect(host: &str, port: u16, client_id: &str, topics: &Topics) -> Sim {
        Self::connect_with(host, port, client_id, topics, false).await
    }

    /// Like [`connect`](Self::connect); with `wildcard` the connection subscribes once to every
    /// device's `desired` and `heartbeat/ack` (`PREFIX/devices/+/...`) and keeps what is for its
    /// devices, instead of two subscriptions per device (rumqttd matches every new topic against
    /// every filter, which is slow with tens of thousands of filters).
    pub async fn connect_with(
        host: &str,
        port: u16,
        client_id: &str,
        topics: &Topics,
        wildcard: bool,
    ) -> Sim {
        let mut options = MqttOptions::new(client_id, host, port);
        options
            .set_keep_alive(Duration::from_secs(60))
            .set_clean_session(true)
            .set_max_packet_size(256 * 1024, 256 * 1024)
            .set_inflight(500);
        let (client, mut eventloop) = AsyncClient::new(options, 64 * 1024);
        let (tx, rx) = mpsc::unbounded_channel::<(String, bytes::Bytes)>();
        let (conn_tx, mut conn_rx) = mpsc::unbounded_channel::<()>();
        let sim = Sim::start(
            Clients::Shared(client.clone()),
            topics.clone(),
            tx.clone(),
            wildcard,
            rx,
        );
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                        if tx.send((p.topic, p.payload)).is_err() {
                            break;
                        }
                    }
                    Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                        let _ = conn_tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(30), conn_rx.recv())
            .await
            .expect("simulator connects to the broker");
        if wildcard {
            let filters = [
                topics.fleet_filter(TopicKind::Desired),
                topics.fleet_filter(TopicKind::HeartbeatAck),
                topics.flags_filter(),
            ]
            .map(|t| SubscribeFilter::new(t, QoS::AtLeastOnce));
            client.subscribe_many(filters).await.unwrap();
        }
        sim
    }

    /// A fleet whose devices each get their own connection, as real agents (see
    /// [`AgentLink`]); [`add_devices`](Self::add_devices) connects them.
    pub fn agents(link: AgentLink) -> Sim {
        let (tx, rx) = mpsc::unbounded_channel();
        let topics = link.topics.clone();
        let clients = Clients::PerDevice(Arc::new(link), Arc::default());
        Sim::start(clients, topics, tx, false, rx)
    }

    /// The shared state, and the task that handles every message the devices receive.
    fn start(
        clients: Clients,
        topics: Topics,
        inbox: mpsc::UnboundedSender<(String, bytes::Bytes)>,
        wildcard: bool,
        mut rx: mpsc::UnboundedReceiver<(String, bytes::Bytes)>,
    ) -> Sim {
        let sim = Sim {
            clients,
            topics,
            inbox,
            wildcard,
            devices: Arc::new(Mutex::new(HashMap::new())),
            clock: Arc::new(AtomicU64::new(1_750_000_000_000)),
            published: Arc::new(AtomicU64::new(0)),
            received: Arc::new(AtomicU64::new(0)),
        };
        let handler = sim.clone();
        tokio::spawn(async move {
            while let Some((topic, payload)) = rx.recv().await {
                handler.received.fetch_add(1, Ordering::Relaxed);
                handler.on_message(&topic, &payload).await;
            }
        });
        sim
    }

    /// The connection that carries `topic` (a device topic in per-device mode).
    fn client(&self, topic: &str) -> AsyncClient {
        match &self.clients {
            Clients::Shared(client) => client.clone(),
            Clients::PerDevice(_, clients) => {
                let (id, _) = self
                    .topics
                    .parse_device_topic(topic)
                    .unwrap_or_else(|e| panic!("{topic}: not a device topic: {e:?}"));
                clients.lock().unwrap()[id.as_str()].clone()
            }
        }
    }

    /// Every connection.
    fn all_clients(&self) -> Vec<AsyncClient> {
        match &self.clients {
            Clients::Shared(client) => vec![client.clone()],
            Clients::PerDevice(_, clients) => clients.lock().unwrap().values().cloned().collect(),
        }
    }

    fn now(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    async fn publish(&self, topic: String, payload: Vec<u8>, retain: bool) {
        self.published.fetch_add(1, Ordering::Relaxed);
        self.client(&topic)
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await
            .unwrap();
    }

    /// Publishes raw bytes on a topic (bad-input tests).
    pub async fn publish_raw(&self, topic: &str, payload: Vec<u8>, retain: bool) {
        self.publish(topic.to_string(), payload, retain).await;
    }

    /// Adds devices (subscribing to their topics) and brings them online: status online, then
    /// the full reported state (as the agent does on connect). In per-device mode
    /// ([`Sim::agents`]) each device connects on its own and does that itself once connected.
    pub async fn add_devices(&self, devices: Vec<SimDevice>) {
        {
            let mut map = self.devices.lock().unwrap();
            for d in &devices {
                map.insert(d.id.as_str().to_string(), d.clone());
            }
        }
        if let Clients::PerDevice(link, clients) = &self.clients {
            for d in &devices {
                let (client, eventloop) = self.agent_connection(link, &d.id);
                clients
                    .lock()
                    .unwrap()
                    .insert(d.id.as_str().to_string(), client.clone());
                let (up_tx, up_rx) = mpsc::unbounded_channel();
                tokio::spawn(
                    self.clone()
                        .agent_shell(d.id.clone(), link.heartbeat, up_rx),
                );
                tokio::spawn(self.clone().agent_poll(
                    d.id.clone(),
                    eventloop,
                    client,
                    link.clone(),
                    up_tx,
                ));
            }
            return;
        }
        let per_device: &[SimDevice] = if self.wildcard { &[] } else { &devices };
        for chunk in per_device.chunks(100) {
            let filters: Vec<SubscribeFilter> = chunk
                .iter()
                .flat_map(|d| {
                    let [desired, ack, flags, _trust] = self.topics.subscriptions(&d.id);
                    [desired, ack, flags]
                })
                .map(|t| SubscribeFilter::new(t, QoS::AtLeastOnce))
                .collect();
            // Shared mode here: any topic names the one connection.
            self.client("").subscribe_many(filters).await.unwrap();
        }
        for d in &devices {
            self.set_online(d.id.as_str(), true).await;
            self.publish_reported(d.id.as_str()).await;
        }
    }

    /// Publishes the device's retained status (offline is what its last will says).
    pub async fn set_online(&self, id: &str, online: bool) {
        let id = DeviceId::new(id).unwrap();
        self.publish(
            self.topics.device(&id, TopicKind::Status),
            self.status(online),
            true,
        )
        .await;
    }

    /// A `Status` message, now.
    fn status(&self, online: bool) -> Vec<u8> {
        Status {
            v: PROTOCOL_VERSION,
            online,
            at: self.now(),
        }
        .to_cbor()
    }

    /// The connection of device `id` in per-device mode, set up as `ota-agent` sets up its own
    /// (see [`AgentLink`]).
    fn agent_connection(&self, link: &AgentLink, id: &DeviceId) -> (AsyncClient, EventLoop) {
        let mut options = MqttOptions::new(id.as_str(), link.host.as_str(), link.port);
        options
            .set_clean_session(true)
            .set_keep_alive(link.keep_alive)
            .set_max_packet_size(256 * 1024, 256 * 1024)
            .set_request_channel_capacity(64)
            .set_inflight(32)
            .set_last_will(LastWill::new(
                self.topics.device(id, TopicKind::Status),
                self.status(false),
                QoS::AtLeastOnce,
                true,
            ));
        if let Some(secret) = &link.secret {
            options.set_credentials(id.as_str(), secret.password(id));
        }
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        (client, eventloop)
    }

    /// A real-agent device's poll task: owns its event loop (publishing from here could
    /// deadlock, as in the agent), subscribes on every CONNACK, hands received messages to the
    /// fleet's handler and connection changes to [`agent_shell`](Self::agent_shell).
    async fn agent_poll(
        self,
        id: DeviceId,
        mut eventloop: EventLoop,
        client: AsyncClient,
        link: Arc<AgentLink>,
        up: mpsc::UnboundedSender<LinkUp>,
    ) {
        // Held until the first connection attempt ends (CONNACK or error).
        let mut first = Some(link.connecting.clone().acquire_owned().await.unwrap());
        let mut wait = Duration::from_secs(1);
        loop {
            match eventloop.poll().await {
                Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                    drop(first.take());
                    wait = Duration::from_secs(1);
                    eventloop.mqtt_options.set_clean_session(false);
                    let filters = self
                        .topics
                        .subscriptions(&id)
                        .map(|t| SubscribeFilter::new(t, QoS::AtLeastOnce));
                    // Queued messages may fill the request channel: then subscribe from a
                    // task, as the agent does.
                    if client.try_subscribe_many(filters.clone()).is_err() {
                        let client = client.clone();
                        tokio::spawn(async move { client.subscribe_many(filters).await });
                    }
                    let _ = up.send(LinkUp::Connected);
                }
                Ok(MqttEvent::Incoming(Packet::SubAck(_))) => {
                    let _ = up.send(LinkUp::Subscribed);
                }
                Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                    if self.inbox.send((p.topic, p.payload)).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    drop(first.take());
                    let _ = up.send(LinkUp::Lost);
                    // The next attempt's last will carries a fresh time, as the agent's does.
                    eventloop.mqtt_options.set_last_will(LastWill::new(
                        self.topics.device(&id, TopicKind::Status),
                        self.status(false),
                        QoS::AtLeastOnce,
                        true,
                    ));
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(60));
                }
            }
        }
    }

    /// A real-agent device's shell task: on connect the online status, once subscribed the
    /// reported state and a heartbeat, then a heartbeat every `every` while connected.
    async fn agent_shell(
        self,
        id: DeviceId,
        every: Duration,
        mut up: mpsc::UnboundedReceiver<LinkUp>,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut connected = false;
        let mut seq = 0;
        loop {
            tokio::select! {
                event = up.recv() => match event {
                    None => return,
                    Some(LinkUp::Connected) => self.set_online(id.as_str(), true).await,
                    Some(LinkUp::Subscribed) => {
                        connected = true;
                        self.publish_reported(id.as_str()).await;
                        seq += 1;
                        self.heartbeat(id.as_str(), seq).await;
                        tick.reset();
                    }
                    Some(LinkUp::Lost) => connected = false,
                },
                _ = tick.tick(), if connected => {
                    seq += 1;
                    self.heartbeat(id.as_str(), seq).await;
                }
            }
        }
    }

    /// Publishes the device's full reported state.
    pub async fn publish_reported(&self, id: &str) {
        let Some(d) = self.device(id) else { return };
        let r = ReportedState {
            v: PROTOCOL_VERSION,
            device_id: id.to_string(),
            agent_version: "sim-1".into(),
            hardware_class: d.hw.clone(),
            running: d.running.clone(),
            known_good: d.known_good.clone(),
            trial: None,
            cached: Vec::new(),
            last_result: d.last_result.clone(),
            power: Some(PowerReading::MAINS),
            inventory: Inventory {
                os: "simOS".into(),
                arch: "x86_64".into(),
                hostname: id.to_string(),
                ..Inventory::default()
            },
            labels: d.labels.clone(),
            generation: d.generation,
            security_floor: 0,
        };
        self.publish(
            self.topics.device(&d.id, TopicKind::Reported),
            r.to_cbor(),
            true,
        )
        .await;
    }

    /// Sends a heartbeat with `seq` and no health (an agent without a probe).
    pub async fn heartbeat(&self, id: &str, seq: u64) {
        self.heartbeat_with_health(id, seq, None).await;
    }

    /// Sends a heartbeat with `seq` saying `healthy` (an agent with a probe).
    pub async fn heartbeat_with_health(&self, id: &str, seq: u64, healthy: Option<bool>) {
        let hb = Heartbeat {
            v: PROTOCOL_VERSION,
            seq,
            at: self.now(),
            healthy,
        };
        let id = DeviceId::new(id).unwrap();
        self.publish(
            self.topics.device(&id, TopicKind::Heartbeat),
            hb.to_cbor(),
            false,
        )
        .await;
    }

    /// A copy of a device's state.
    pub fn device(&self, id: &str) -> Option<SimDevice> {
        self.devices.lock().unwrap().get(id).cloned()
    }

    /// Changes a device's script.
    pub fn set_behavior(&self, id: &str, behavior: Behavior) {
        if let Some(d) = self.devices.lock().unwrap().get_mut(id) {
            d.behavior = behavior;
        }
    }

    /// Sets the generation a device reports (a forged or corrupt one, say).
    pub fn set_generation(&self, id: &str, generation: u64) {
        if let Some(d) = self.devices.lock().unwrap().get_mut(id) {
            d.generation = generation;
        }
    }

    /// Changes what a device runs (by hand, outside any rollout: drift), and reports it.
    pub async fn install_by_hand(&self, id: &str, release: RunningRelease) {
        if let Some(d) = self.devices.lock().unwrap().get_mut(id) {
            d.running = Some(release);
        }
        self.publish_reported(id).await;
    }

    /// Ids of every device.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.devices.lock().unwrap().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Whether device `id` has flag `name` on (by the flags it applied).
    pub fn flag(&self, id: &str, name: &str) -> bool {
        self.device(id)
            .and_then(|d| d.flags.current().map(|f| f.is_enabled(name)))
            .unwrap_or(false)
    }

    /// The version of the flags device `id` applied (0: none).
    pub fn flags_version(&self, id: &str) -> u64 {
        self.device(id).map_or(0, |d| d.flags.version())
    }

    /// Disconnects from the broker (the devices stop receiving; use a new [`Sim`] to bring
    /// them back).
    pub async fn disconnect(&self) {
        for client in self.all_clients() {
            let _ = client.disconnect().await;
        }
    }

    /// Clears every retained message of these devices (external brokers outlive tests).
    pub async fn clear_retained(&self) {
        for id in self.ids() {
            let id = DeviceId::new(&id).unwrap();
            self.client(&self.topics.device(&id, TopicKind::Status))
                .publish(self.topics.flags(&id), QoS::AtLeastOnce, true, Vec::new())
                .await
                .unwrap();
            for kind in [TopicKind::Desired, TopicKind::Reported, TopicKind::Status] {
                let topic = self.topics.device(&id, kind);
                self.client(&topic)
                    .publish(topic, QoS::AtLeastOnce, true, Vec::new())
                    .await
                    .unwrap();
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    async fn on_message(&self, topic: &str, payload: &[u8]) {
        if let Ok(id) = self.topics.parse_flags_topic(topic) {
            if let Ok(flags) = DeviceFlags::from_cbor(payload)
                && let Some(d) = self.devices.lock().unwrap().get_mut(id.as_str())
                && let Ok(update) = d.flags.offer(flags)
            {
                d.flags.commit(update);
                // A figure for the fleet benchmark (flag propagation time), not a decision.
                #[allow(clippy::disallowed_methods)]
                let applied = Instant::now();
                d.flags_applied_at = Some(applied);
            }
            return;
        }
        let Ok((id, kind)) = self.topics.parse_device_topic(topic) else {
            return;
        };
        match kind {
            TopicKind::Desired if !payload.is_empty() => {
                if let Ok(desired) = DesiredState::from_cbor(payload) {
                    self.on_desired(&id, desired).await;
                }
            }
            TopicKind::HeartbeatAck => {
                if let Ok(ack) = HeartbeatAck::from_cbor(payload)
                    && let Some(d) = self.devices.lock().unwrap().get_mut(id.as_str())
                {
                    d.acks.push(ack.seq);
                }
            }
            _ => {}
        }
    }

    async fn on_desired(&self, id: &DeviceId, desired: DesiredState) {
        let Ok(release) = SignedRelease::decode(&desired.release) else {
            return;
        };
        let m = &release.manifest;
        let target = RunningRelease {
            version: m.version.clone(),
            digest: m.artifact_digest(),
            security_version: m.security_version,
        };
        let seen = Seen {
            generation: desired.generation,
            rollout_id: desired.rollout_id.clone(),
            digest: target.digest,
            force: desired.force_reinstall,
            urls: desired.artifact_urls.clone(),
            release: desired.release.clone(),
        };
        let (behavior, identical, download) = {
            let mut map = self.devices.lock().unwrap();
            let Some(d) = map.get_mut(id.as_str()) else {
                return;
            };
            if desired.generation <= d.generation {
                d.duplicates += 1;
                return;
            }
            d.generation = desired.generation;
            d.seen.push(seen.clone());
            let identical = d.running.as_ref().map(|r| r.digest) == Some(target.digest);
            (d.behavior.clone(), identical, d.download)
        };
        let mut steps: Vec<ExecutionState> = Vec::new();
        if identical && !desired.force_reinstall {
            steps.push(ExecutionState::SkippedIdentical);
        } else {
            let size = m.artifact_size;
            let downloading = |done| ExecutionState::Downloading { done, total: size };
            match &behavior {
                Behavior::Silent => return,
                Behavior::Reject => steps.push(ExecutionState::Rejected {
                    cause: RejectCause::BadSignature,
                    detail: "simulated bad signature".into(),
                }),
                Behavior::Defer => {
                    steps.push(ExecutionState::Notified);
                    steps.push(ExecutionState::DeferredPower {
                        reading: PowerReading {
                            battery_percent: Some(5),
                            charging: false,
                            mains_online: false,
                        },
                    });
                }
                Behavior::Reboot => {
                    steps.push(ExecutionState::Notified);
                    steps.push(downloading(m.artifact_size));
                    steps.push(ExecutionState::Installing);
                    steps.push(ExecutionState::Rebooting);
                }
                Behavior::Succeed | Behavior::RollBack | Behavior::Fail(_) => {
                    steps.push(ExecutionState::Notified);
                    steps.push(downloading(0));
                    if download && !identical {
                        match fetch(&seen.urls, &target.digest).await {
                            Ok(()) => {}
                            Err(e) => {
                                steps.push(ExecutionState::Failed {
                                    phase: FailurePhase::Download,
                                    reason: e,
                                });
                                self.report(id, &seen, steps, None).await;
                                return;
                            }
                        }
                    }
                    match &behavior {
                        Behavior::Fail(FailurePhase::Download) => {
                            steps.push(ExecutionState::Failed {
                                phase: FailurePhase::Download,
                                reason: "simulated: mirror unreachable".into(),
                            });
                        }
                        Behavior::Fail(FailurePhase::Verify) => {
                            steps.push(downloading(size));
                            steps.push(ExecutionState::Failed {
                                phase: FailurePhase::Verify,
                                reason: "simulated: digest mismatch".into(),
                            });
                        }
                        Behavior::Fail(phase) => {
                            steps.push(downloading(size));
                            steps.push(ExecutionState::Installing);
                            steps.push(ExecutionState::Failed {
                                phase: *phase,
                                reason: "simulated: installer exit 1".into(),
                            });
                        }
                        Behavior::RollBack => {
                            steps.push(downloading(size));
                            steps.push(ExecutionState::Installing);
                            steps.push(ExecutionState::Trial);
                            steps.push(ExecutionState::RolledBack {
                                reason: RollbackReason::ProbeFailed,
                                detail: "simulated: probe failed".into(),
                            });
                        }
                        _ => {
                            steps.push(downloading(size));
                            steps.push(ExecutionState::Installing);
                            steps.push(ExecutionState::Trial);
                            steps.push(ExecutionState::Succeeded);
                        }
                    }
                }
            }
        }
        let committed = matches!(steps.last(), Some(ExecutionState::Succeeded));
        self.report(id, &seen, steps, committed.then_some(target))
            .await;
    }

    /// A device of [`Behavior::Reboot`] is back from its reboot on the new slot: it reports
    /// `trial`, then `succeeded` for its last desired state, and runs that release.
    pub async fn come_back(&self, id: &str) {
        let seen = self.device(id).unwrap().seen.last().cloned().unwrap();
        let release = SignedRelease::decode(&seen.release).unwrap().manifest;
        let running = RunningRelease {
            version: release.version.clone(),
            digest: seen.digest,
            security_version: release.security_version,
        };
        let steps = vec![ExecutionState::Trial, ExecutionState::Succeeded];
        self.report(&DeviceId::new(id).unwrap(), &seen, steps, Some(running))
            .await;
    }

    /// The device regresses after it committed the release of its last desired state: its
    /// health probe fails and it reports `rolled-back` for that desired state (what it runs is
    /// left as it is: the simulator keeps no release history).
    pub async fn regress(&self, id: &str) {
        let seen = self.device(id).unwrap().seen.last().cloned().unwrap();
        let state = ExecutionState::RolledBack {
            reason: RollbackReason::ProbeFailed,
            detail: "simulated: probe failed after commit".into(),
        };
        self.report(&DeviceId::new(id).unwrap(), &seen, vec![state], None)
            .await;
    }

    /// Publishes each step as an event about desired state `seen`, then the reported state.
    async fn report(
        &self,
        id: &DeviceId,
        seen: &Seen,
        steps: Vec<ExecutionState>,
        committed: Option<RunningRelease>,
    ) {
        let mut last = None;
        // Once past `downloading`, every outcome carries what the download cost, as an agent
        // reports it: a delta fetching a quarter of the artifact plus 100 bytes of index.
        let size = SignedRelease::decode(&seen.release).map_or(0, |r| r.manifest.artifact_size);
        let mut transfer = None;
        for state in steps {
            let downloading = matches!(state, ExecutionState::Downloading { .. });
            if downloading {
                transfer = Some(sim_transfer(size));
            }
            let outcome = UpdateOutcome {
                generation: seen.generation,
                rollout_id: seen.rollout_id.clone(),
                digest: Some(seen.digest),
                state,
                at: self.now(),
                transfer: if downloading { None } else { transfer },
            };
            let event = Event::from_outcome(id, &outcome);
            self.publish(
                self.topics.device(id, TopicKind::Events),
                event.to_cbor(),
                false,
            )
            .await;
            last = Some(outcome);
        }
        {
            let mut map = self.devices.lock().unwrap();
            if let Some(d) = map.get_mut(id.as_str()) {
                if let Some(release) = committed {
                    d.running = Some(release.clone());
                    d.known_good = Some(release);
                }
                d.last_result = last;
            }
        }
        self.publish_reported(id.as_str()).await;
    }
}

/// What the simulator reports a download of an artifact of `size` bytes cost.
pub fn sim_transfer(size: u64) -> Transfer {
    Transfer {
        fetched: size / 4 + 100,
        size,
    }
}

/// Fetches the artifact from the first URL with a `Range` request for the whole body and
/// checks its digest (what an agent does, minus resuming).
async fn fetch(urls: &[String], digest: &Digest) -> Result<(), String> {
    let url = urls.first().ok_or("no artifact URL")?;
    let response = reqwest::Client::new()
        .get(url)
        .header("Range", "bytes=0-")
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if response.status().as_u16() != 206 {
        return Err(format!("expected 206, got {}", response.status()));
    }
    let bytes = response.bytes().await.map_err(|e| e.to_string())?;
    if Digest::of(&bytes) != *digest {
        return Err("artifact digest mismatch".into());
    }
    Ok(())
}

/// A device `id` of class `hw` running `running` (also its known-good), with `behavior`.
pub fn device(
    id: &str,
    hw: &str,
    running: Option<RunningRelease>,
    behavior: Behavior,
) -> SimDevice {
    SimDevice {
        id: DeviceId::new(id).unwrap(),
        hw: hw.to_string(),
        labels: BTreeMap::from([("ring".to_string(), "test".to_string())]),
        known_good: running.clone(),
        running,
        generation: 0,
        behavior,
        seen: Vec::new(),
        duplicates: 0,
        last_result: None,
        acks: Vec::new(),
        download: false,
        flags: FlagStore::new(DeviceId::new(id).unwrap()),
        flags_applied_at: None,
    }
}

/// The `RunningRelease` a device reports for a signed release.
pub fn running_of(release: &[u8]) -> RunningRelease {
    let m = SignedRelease::decode(release).unwrap().manifest;
    RunningRelease {
        version: m.version.clone(),
        digest: m.artifact_digest(),
        security_version: m.security_version,
    }
}

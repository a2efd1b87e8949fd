//! The MQTT link between the shell and the fleet server's broker.
//!
//! rumqttc's `EventLoop` must be polled continuously, and `AsyncClient::publish().await` from the
//! task that polls it deadlocks once the request channel is full. So the link is two tasks that
//! talk to the shell through channels:
//!
//! - the **poll task** owns the `EventLoop`: it forwards incoming desired states and heartbeat
//!   acks to the shell, reports connects and disconnects, and after a connection error sleeps
//!   with an exponential, capped, jittered backoff before the next attempt (rumqttc has none);
//! - the **outbox task** hands queued messages to the client, in order, only while connected.
//!
//! The [`Outbox`] is the agent's own queue. While the broker is unreachable, events and reported
//! states wait there (a newer reported state replaces an unsent older one: it is retained and
//! complete, so only the newest matters); when the connection returns they are published in
//! order with QoS 1. Heartbeats are only sent while connected (a stale one proves nothing).
//!
//! Session: client id = device id; a retained last will `Status { online: false }` on
//! `status`; a retained `Status { online: true }` published first on every connect; a
//! subscription to `desired`, `heartbeat/ack`, `ota/v1/trust` and the device's flags topic made on every connect.
//!
//! The first connection of an agent process uses a clean session; every reconnect after it
//! resumes a persistent session (`clean_session = false`: the broker keeps the subscriptions
//! and the QoS 1 messages for the device while the connection is down). The clean start makes
//! the broker deliver the retained desired state to the fresh subscription, so an agent that
//! died between receiving a desired state and journaling its decision always sees it again,
//! whatever the broker does with a resumed session's unacknowledged messages and retained
//! messages (rumqttd resends neither; Mosquitto does). Within a process the desired state is
//! acknowledged (PUBACK, manual acks) only after the decision it caused is journaled.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ota_core::wire::{DeviceId, PROTOCOL_VERSION, Status, TopicKind, Topics, WireMessage};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, LastWill, MqttOptions, Outgoing, QoS,
    SubscribeReasonCode, TlsConfiguration, Transport,
};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::BrokerConfig;

/// The largest MQTT packet accepted or sent (a desired state holds a release of at most 64 KiB;
/// the wire codec refuses payloads over 128 KiB anyway).
pub const MAX_PACKET: usize = 256 * 1024;
/// Most messages the outbox keeps while offline; past it the oldest progress events, then the
/// oldest events, are dropped (the retained reported state always carries the latest result).
pub const MAX_QUEUED: usize = 1024;
/// How long a graceful shutdown waits for the offline status and the DISCONNECT to leave.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Why the MQTT link could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MqttError {
    /// The broker URL is not `mqtt://host[:port]` or `mqtts://host[:port]`.
    #[error("bad broker URL {url:?}: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A TLS file (CA bundle, client certificate or key) cannot be read.
    #[error("cannot read {path}: {source}")]
    TlsFile {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `broker.password_file` cannot be read, is not a regular file, is larger than
    /// [`MAX_PASSWORD_FILE`] or is not UTF-8 (the error never shows its content).
    #[error("cannot read the broker password file {path}: {source}")]
    PasswordFile {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A broker URL is `mqtts://` but there is no CA certificate to verify the broker with:
    /// no `broker.ca_file` and none on the system.
    #[error(
        "broker URL {url} uses TLS and the system has no CA certificates: set broker.ca_file (a PEM bundle)"
    )]
    NoCaCertificates {
        /// The `mqtts://` URL.
        url: String,
    },
    /// The TLS configuration is unusable (no certificate in a PEM file, a bad key...).
    #[error("broker TLS: {0}")]
    Tls(String),
}

/// Reconnect backoff: the wait doubles after every failed attempt, from `initial` up to `max`,
/// and is reset by a successful connect. Each wait is jittered to between half and all of it,
/// so a fleet that lost its broker does not come back in lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first wait.
    pub initial: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

/// What kind of message an outbox entry is (for coalescing and dropping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `status` (online/offline).
    Status,
    /// `reported` (coalesced: only the newest unsent one is kept).
    Reported,
    /// A download progress event (dropped first when the outbox is full).
    Progress,
    /// Any other event.
    Event,
    /// A heartbeat.
    Heartbeat,
}

/// One message waiting to be published.
#[derive(Debug, Clone)]
pub(crate) struct Message {
    pub(crate) topic: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) retain: bool,
    pub(crate) kind: Kind,
}

/// The queue between the shell and the outbox task (see the [module documentation](self)).
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    queue: Mutex<VecDeque<Message>>,
    /// Received QoS 1 messages to acknowledge, in arrival order (some brokers, rumqttd among
    /// them, drop a client that acknowledges out of order).
    acks: Mutex<VecDeque<rumqttc::Publish>>,
    notify: Notify,
}

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, VecDeque<Message>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `msg` at the end (a reported state replaces any unsent one).
    pub(crate) fn push(&self, msg: Message) {
        {
            let mut q = self.lock();
            if msg.kind == Kind::Reported {
                q.retain(|m| m.kind != Kind::Reported);
            }
            q.push_back(msg);
            while q.len() > MAX_QUEUED {
                let victim = q
                    .iter()
                    .position(|m| m.kind == Kind::Progress)
                    .or_else(|| q.iter().position(|m| m.kind != Kind::Reported));
                match victim {
                    Some(i) => {
                        q.remove(i);
                    }
                    None => break,
                }
                tracing::warn!("MQTT outbox full: dropped the oldest queued event");
            }
        }
        self.notify.notify_one();
    }

    /// Queues `msg` first (the online status after a connect).
    fn push_front(&self, msg: Message) {
        self.lock().push_front(msg);
        self.notify.notify_one();
    }

    fn pop(&self) -> Option<Message> {
        self.lock().pop_front()
    }

    fn acks(&self) -> MutexGuard<'_, VecDeque<rumqttc::Publish>> {
        self.acks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push_ack(&self, p: rumqttc::Publish) {
        self.acks().push_back(p);
        self.notify.notify_one();
    }

    fn unpop(&self, msg: Message) {
        self.lock().push_front(msg);
    }

    /// Messages waiting.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// A desired state as received, to acknowledge (PUBACK) once the shell has acted on it.
#[derive(Debug)]
pub(crate) struct Delivery {
    pub(crate) payload: Vec<u8>,
    /// When it arrived (for the decision latency).
    pub(crate) received: tokio::time::Instant,
    publish: rumqttc::Publish,
    /// The connection it came on (an acknowledgement is only valid on that one).
    epoch: u64,
}

/// What the link tells the shell.
#[derive(Debug)]
pub(crate) enum LinkEvent {
    /// Connected (CONNACK received, subscriptions acknowledged).
    Connected,
    /// The connection is lost (a reconnect is under way).
    Disconnected(String),
    /// A connection attempt failed (TLS refused, bad credentials, broker unreachable); the
    /// next attempt follows the backoff.
    ConnectFailed(String),
    /// A message on `desired`: [`Link::ack`] it once acted on.
    Desired(Delivery),
    /// A message on `heartbeat/ack` ([`Link::ack`] it too: acknowledgements go in order).
    HeartbeatAck(Delivery),
    /// A message on the device's flags topic (`ota/v1/flags/devices/{id}`; ack it too).
    Flags(Delivery),
    /// A message on the fleet-wide trust topic (`ota/v1/trust`; ack it too).
    Trust(Delivery),
    /// A message on a topic the agent does not use (acknowledged and ignored).
    Other(Delivery),
}

/// Where and how to connect, resolved from the configuration: one set of options per broker
/// URL (`broker.url`, then `broker.failover_urls`), tried round robin.
#[derive(Clone)]
pub(crate) struct LinkSettings {
    pub(crate) brokers: Brokers,
    /// The fleet's topic namespace (`broker.topic_prefix`).
    pub(crate) topics: Topics,
    pub(crate) device: DeviceId,
    pub(crate) backoff: Backoff,
}

impl std::fmt::Debug for LinkSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkSettings")
            .field("brokers", &self.brokers.addresses())
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// The brokers an agent may connect to, in order, and the one it uses now. After every failed
/// or lost connection the link moves to the next one (round robin), after the backoff wait.
#[derive(Clone)]
pub(crate) struct Brokers {
    first: MqttOptions,
    more: Vec<MqttOptions>,
    /// 0: `first`; i: `more[i - 1]`.
    current: usize,
}

impl Brokers {
    /// `first` (`broker.url`), then `more` (`broker.failover_urls`); starts with `first`.
    fn new(first: MqttOptions, more: Vec<MqttOptions>) -> Self {
        Brokers {
            first,
            more,
            current: 0,
        }
    }

    /// The options of the broker in use.
    fn current(&self) -> &MqttOptions {
        match self.current.checked_sub(1) {
            Some(i) => self.more.get(i).unwrap_or(&self.first),
            None => &self.first,
        }
    }

    /// Moves to the next broker (round robin) and answers its options.
    fn advance(&mut self) -> &MqttOptions {
        self.current = (self.current + 1) % (self.more.len() + 1);
        self.current()
    }

    /// Every broker's `(host, port)`, in order.
    fn addresses(&self) -> Vec<(String, u16)> {
        std::iter::once(&self.first)
            .chain(&self.more)
            .map(MqttOptions::broker_address)
            .collect()
    }
}

fn status_payload(online: bool, at_ms: u64) -> Vec<u8> {
    Status {
        v: PROTOCOL_VERSION,
        online,
        at: at_ms,
    }
    .to_cbor()
}

/// Host and port from `mqtt://host[:port]` / `mqtts://host[:port]`; whether TLS is on.
pub fn parse_broker_url(url: &str) -> Result<(String, u16, bool), MqttError> {
    let bad = |reason| MqttError::BadUrl {
        url: url.to_owned(),
        reason,
    };
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else {
        return Err(bad("the scheme must be mqtt:// or mqtts://"));
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains('/') || rest.contains('@') {
        return Err(bad(
            "only host and port are allowed (credentials go in [broker])",
        ));
    }
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or(bad("unclosed '[' in the host"))?;
        match after.strip_prefix(':') {
            Some(p) => (host, p.parse().map_err(|_| bad("bad port"))?),
            None if after.is_empty() => (host, default_port),
            None => return Err(bad("garbage after the host")),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| bad("bad port"))?),
            None => (rest, default_port),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    Ok((host.to_owned(), port, tls))
}

/// The rustls client configuration for `mqtts://` ([`crate::tls`]: the CA file pinned, else
/// the system's roots; the optional client certificate).
fn tls_config(b: &BrokerConfig, url: &str) -> Result<Arc<rustls::ClientConfig>, MqttError> {
    let files = crate::tls::TlsFiles {
        ca_file: b.ca_file.as_deref(),
        client_cert: b.client_cert.as_deref(),
        client_key: b.client_key.as_deref(),
    };
    match crate::tls::client_config(files) {
        Ok(config) => Ok(Arc::new(config)),
        Err(crate::tls::TlsError::Read { path, source }) => {
            Err(MqttError::TlsFile { path, source })
        }
        Err(crate::tls::TlsError::NoSystemRoots) => Err(MqttError::NoCaCertificates {
            url: url.to_owned(),
        }),
        Err(e) => Err(MqttError::Tls(e.to_string())),
    }
}

impl LinkSettings {
    /// Resolves the broker configuration for `device`.
    pub(crate) fn new(
        broker: &BrokerConfig,
        device: DeviceId,
        keep_alive: Duration,
        backoff: Backoff,
    ) -> Result<Self, MqttError> {
        let first = broker_options(broker, &broker.url, &device, keep_alive)?;
        let more = broker
            .failover_urls
            .iter()
            .map(|url| broker_options(broker, url, &device, keep_alive))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(LinkSettings {
            brokers: Brokers::new(first, more),
            topics: broker.topics(),
            device,
            backoff,
        })
    }
}

/// The connection options for the broker at `url` (TLS and credentials from `broker`).
fn broker_options(
    broker: &BrokerConfig,
    url: &str,
    device: &DeviceId,
    keep_alive: Duration,
) -> Result<MqttOptions, MqttError> {
    let (host, port, tls) = parse_broker_url(url)?;
    let mut options = MqttOptions::new(device.as_str(), host, port);
    options
        // The first connection of a process is clean (see the module documentation);
        // the poll task switches to a persistent session after it.
        .set_clean_session(true)
        .set_keep_alive(keep_alive.max(Duration::from_secs(5)))
        .set_max_packet_size(MAX_PACKET, MAX_PACKET)
        .set_request_channel_capacity(64)
        .set_inflight(32)
        .set_manual_acks(true);
    if let Some(user) = &broker.username {
        let password = match &broker.password_file {
            Some(path) => read_password_file(path)?,
            None => broker.password.clone().unwrap_or_default(),
        };
        options.set_credentials(user.clone(), password);
    }
    if tls {
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls_config(broker, url)?,
        )));
    }
    Ok(options)
}

/// The largest broker password file read (issue 19.10: a huge or endless file must not fill
/// the agent's memory).
pub const MAX_PASSWORD_FILE: u64 = 4096;

/// Reads `broker.password_file`: a regular file of at most [`MAX_PASSWORD_FILE`] bytes of
/// UTF-8, trailing newline dropped. The error never shows the content.
fn read_password_file(path: &Path) -> Result<String, MqttError> {
    use std::io::Read;
    let err = |source| MqttError::PasswordFile {
        path: path.to_path_buf(),
        source,
    };
    let invalid = |reason: &str| err(std::io::Error::new(std::io::ErrorKind::InvalidData, reason));
    let file = std::fs::File::open(path).map_err(err)?;
    if !file.metadata().map_err(err)?.is_file() {
        return Err(invalid("not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(MAX_PASSWORD_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(err)?;
    if bytes.len() as u64 > MAX_PASSWORD_FILE {
        return Err(invalid("larger than MAX_PASSWORD_FILE (4096 bytes)"));
    }
    let text = String::from_utf8(bytes).map_err(|_| invalid("not UTF-8"))?;
    Ok(text.trim_end_matches(['\r', '\n']).to_owned())
}

/// A running MQTT link (two tasks; see the [module documentation](self)).
#[derive(Debug)]
pub(crate) struct Link {
    client: AsyncClient,
    outbox: Arc<Outbox>,
    connected: watch::Receiver<bool>,
    disconnect_sent: Arc<Notify>,
    stopping: Arc<AtomicBool>,
    epoch: Arc<AtomicU64>,
    topics: Topics,
    device: DeviceId,
    poll_task: JoinHandle<()>,
    outbox_task: JoinHandle<()>,
}

impl Link {
    /// Starts the link's tasks on `handle`; events go to `events`. `now_ms` is the wall time
    /// the last will carries (refreshed on every reconnect through `clock`).
    pub(crate) fn start(
        settings: LinkSettings,
        handle: &tokio::runtime::Handle,
        events: mpsc::UnboundedSender<LinkEvent>,
        clock: impl Fn() -> u64 + Send + 'static,
    ) -> Self {
        let LinkSettings {
            brokers,
            topics,
            device,
            backoff,
        } = settings;
        let mut options = brokers.current().clone();
        let status_topic = topics.device(&device, TopicKind::Status);
        options.set_last_will(LastWill::new(
            status_topic.clone(),
            status_payload(false, clock()),
            QoS::AtLeastOnce,
            true,
        ));
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        // Small messages, sent as they come: no Nagle delay (40 ms with delayed ACKs).
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        let outbox = Arc::new(Outbox::default());
        let (connected_tx, connected) = watch::channel(false);
        let disconnect_sent = Arc::new(Notify::new());
        let stopping = Arc::new(AtomicBool::new(false));
        let epoch = Arc::new(AtomicU64::new(0));

        let poll = Poller {
            epoch: epoch.clone(),
            eventloop,
            client: client.clone(),
            outbox: outbox.clone(),
            connected: connected_tx,
            events,
            topics: topics.clone(),
            device: device.clone(),
            brokers,
            backoff,
            disconnect_sent: disconnect_sent.clone(),
            stopping: stopping.clone(),
            clock: Box::new(clock),
        };
        let poll_task = handle.spawn(poll.run());
        let outbox_task = handle.spawn(run_outbox(
            client.clone(),
            outbox.clone(),
            connected.clone(),
        ));
        Link {
            client,
            outbox,
            connected,
            disconnect_sent,
            stopping,
            epoch,
            topics,
            device,
            poll_task,
            outbox_task,
        }
    }

    /// Whether the connection is up.
    pub(crate) fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// Messages waiting in the outbox.
    pub(crate) fn queued(&self) -> usize {
        self.outbox.len()
    }

    /// Acknowledges a received message the shell has acted on (for a desired state: its
    /// decision journaled). Messages must be acknowledged in the order they arrived.
    pub(crate) fn ack(&self, delivery: Delivery) {
        if self.is_connected() && delivery.epoch == self.epoch.load(Ordering::SeqCst) {
            self.outbox.push_ack(delivery.publish);
        }
    }

    /// Queues a message of `kind` for `topic` (QoS 1; retained per the topic's kind).
    pub(crate) fn publish(&self, topic: TopicKind, payload: Vec<u8>, kind: Kind) {
        if kind == Kind::Heartbeat && !self.is_connected() {
            return;
        }
        self.outbox.push(Message {
            topic: self.topics.device(&self.device, topic),
            payload,
            retain: topic.retained(),
            kind,
        });
    }

    /// Graceful stop: a retained offline status and a DISCONNECT (so the broker does not send
    /// the last will), bounded by a short grace period; then both tasks end.
    pub(crate) async fn shutdown(self, now_ms: u64) {
        self.stopping.store(true, Ordering::SeqCst);
        if self.is_connected() {
            let topic = self.topics.device(&self.device, TopicKind::Status);
            let goodbye = async {
                let _ = self
                    .client
                    .publish(topic, QoS::AtLeastOnce, true, status_payload(false, now_ms))
                    .await;
                let sent = self.disconnect_sent.notified();
                let _ = self.client.disconnect().await;
                sent.await;
            };
            if tokio::time::timeout(SHUTDOWN_GRACE, goodbye).await.is_err() {
                tracing::warn!("MQTT disconnect did not complete in time");
            }
        }
        self.kill();
    }

    /// Stops both tasks at once, without saying goodbye (the broker will publish the last will
    /// when it notices).
    pub(crate) fn kill(&self) {
        self.poll_task.abort();
        self.outbox_task.abort();
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The outbox task: publishes queued messages in order while connected.
async fn run_outbox(
    client: AsyncClient,
    outbox: Arc<Outbox>,
    mut connected: watch::Receiver<bool>,
) {
    loop {
        if !*connected.borrow_and_update() {
            if connected.changed().await.is_err() {
                return;
            }
            continue;
        }
        let ack = outbox.acks().pop_front();
        if let Some(p) = ack {
            if client.ack(&p).await.is_err() {
                return;
            }
            continue;
        }
        let Some(msg) = outbox.pop() else {
            tokio::select! {
                () = outbox.notify.notified() => {}
                changed = connected.changed() => if changed.is_err() { return },
            }
            continue;
        };
        let res = client
            .publish(
                msg.topic.clone(),
                QoS::AtLeastOnce,
                msg.retain,
                msg.payload.clone(),
            )
            .await;
        if let Err(e) = res {
            // The event loop is gone (shutting down): keep the message for nobody.
            tracing::debug!("MQTT publish not queued: {e}");
            outbox.unpop(msg);
            return;
        }
    }
}

/// The poll task's state.
struct Poller {
    epoch: Arc<AtomicU64>,
    eventloop: EventLoop,
    client: AsyncClient,
    outbox: Arc<Outbox>,
    connected: watch::Sender<bool>,
    events: mpsc::UnboundedSender<LinkEvent>,
    topics: Topics,
    device: DeviceId,
    brokers: Brokers,
    backoff: Backoff,
    disconnect_sent: Arc<Notify>,
    stopping: Arc<AtomicBool>,
    clock: Box<dyn Fn() -> u64 + Send>,
}

impl Poller {
    async fn run(mut self) {
        let desired = self.topics.device(&self.device, TopicKind::Desired);
        let ack = self.topics.device(&self.device, TopicKind::HeartbeatAck);
        let flags = self.topics.flags(&self.device);
        let trust = self.topics.trust();
        let mut wait = self.backoff.initial;
        let mut failures = 0u32;
        let mut awaiting_suback = false;
        // A cheap, per-device jitter source (no cryptographic need).
        let mut jitter = self
            .device
            .as_str()
            .bytes()
            .fold(0x9E37_79B9_7F4A_7C15u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
            });
        loop {
            if self.events.is_closed() {
                return;
            }
            match self.eventloop.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(ack_packet))) => {
                    // Reconnects resume this session: messages for the device wait in the
                    // broker while the connection is down.
                    self.eventloop.mqtt_options.set_clean_session(false);
                    self.epoch.fetch_add(1, Ordering::SeqCst);
                    wait = self.backoff.initial;
                    failures = 0;
                    tracing::info!(
                        session_present = ack_packet.session_present,
                        "connected to the MQTT broker"
                    );
                    let filters = self
                        .topics
                        .subscriptions(&self.device)
                        .into_iter()
                        .map(|t| rumqttc::SubscribeFilter::new(t, QoS::AtLeastOnce));
                    let filters: Vec<_> = filters.collect();
                    if self.client.try_subscribe_many(filters.clone()).is_err() {
                        let client = self.client.clone();
                        tokio::spawn(async move {
                            let _ = client.subscribe_many(filters).await;
                        });
                    }
                    self.outbox.push_front(Message {
                        topic: self.topics.device(&self.device, TopicKind::Status),
                        payload: status_payload(true, (self.clock)()),
                        retain: true,
                        kind: Kind::Status,
                    });
                    let _ = self.connected.send(true);
                    // The shell hears of the connection once the subscriptions stand.
                    awaiting_suback = true;
                }
                Ok(Event::Incoming(Incoming::SubAck(ack))) if awaiting_suback => {
                    if ack
                        .return_codes
                        .iter()
                        .all(|c| matches!(c, SubscribeReasonCode::Success(_)))
                    {
                        awaiting_suback = false;
                        let _ = self.events.send(LinkEvent::Connected);
                    } else {
                        // A clustered broker refuses subscriptions while it cannot store
                        // them (NATS during a JetStream leader election, docs/ha.md): ask
                        // again after the reconnect wait, still waiting for a SUBACK.
                        tracing::warn!(
                            "the MQTT broker refused a subscription; retrying in {wait:?}"
                        );
                        let filters: Vec<_> = self
                            .topics
                            .subscriptions(&self.device)
                            .into_iter()
                            .map(|t| rumqttc::SubscribeFilter::new(t, QoS::AtLeastOnce))
                            .collect();
                        let client = self.client.clone();
                        let retry = wait;
                        tokio::spawn(async move {
                            tokio::time::sleep(retry).await;
                            let _ = client.subscribe_many(filters).await;
                        });
                        wait = (wait * 2).min(self.backoff.max);
                    }
                }
                Ok(Event::Incoming(Incoming::Publish(p))) => {
                    // Every message goes to the shell, which acknowledges them in order once
                    // it acted on them (a desired state: once its decision is journaled).
                    let is_desired = p.topic == desired;
                    let is_ack = p.topic == ack;
                    let is_flags = p.topic == flags;
                    let is_trust = p.topic == trust;
                    let delivery = Delivery {
                        payload: p.payload.to_vec(),
                        received: crate::clock::monotonic_now(),
                        publish: p,
                        epoch: self.epoch.load(Ordering::SeqCst),
                    };
                    let event = if is_desired {
                        LinkEvent::Desired(delivery)
                    } else if is_ack {
                        LinkEvent::HeartbeatAck(delivery)
                    } else if is_flags {
                        LinkEvent::Flags(delivery)
                    } else if is_trust {
                        LinkEvent::Trust(delivery)
                    } else {
                        LinkEvent::Other(delivery)
                    };
                    let _ = self.events.send(event);
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                    self.disconnect_sent.notify_waiters();
                    self.disconnect_sent.notify_one();
                }
                Ok(_) => {}
                Err(e) => {
                    awaiting_suback = false;
                    // Acknowledgements belong to the connection that is gone.
                    self.outbox.acks().clear();
                    let was_connected = *self.connected.borrow();
                    if was_connected {
                        let _ = self.connected.send(false);
                        let _ = self.events.send(LinkEvent::Disconnected(e.to_string()));
                    } else {
                        let _ = self.events.send(LinkEvent::ConnectFailed(e.to_string()));
                    }
                    if self.stopping.load(Ordering::SeqCst)
                        || matches!(e, ConnectionError::RequestsDone)
                    {
                        return;
                    }
                    failures = failures.saturating_add(1);
                    if was_connected {
                        tracing::warn!("MQTT connection lost: {e}; reconnecting");
                    } else if failures == 1 {
                        // Never connected (or not since the last loss): a refused or failed
                        // connection, not a lost one.
                        let (host, port) = self.eventloop.mqtt_options.broker_address();
                        tracing::warn!(
                            "cannot connect to the MQTT broker at {host}:{port}: {e}; retrying"
                        );
                    } else {
                        tracing::debug!(attempt = failures, "MQTT reconnect failed: {e}");
                    }
                    // The next attempt goes to the next broker (round robin; the same one
                    // when there is only one), resuming the session if this process connected
                    // before, with a last will that carries a fresh time.
                    let resume = !self.eventloop.mqtt_options.clean_session();
                    let mut next = self.brokers.advance().clone();
                    next.set_clean_session(!resume);
                    next.set_last_will(LastWill::new(
                        self.topics.device(&self.device, TopicKind::Status),
                        status_payload(false, (self.clock)()),
                        QoS::AtLeastOnce,
                        true,
                    ));
                    self.eventloop.mqtt_options = next;
                    jitter ^= jitter << 13;
                    jitter ^= jitter >> 7;
                    jitter ^= jitter << 17;
                    let half = wait / 2;
                    let extra_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
                    let extra = Duration::from_millis(jitter % extra_ms.saturating_add(1));
                    tokio::time::sleep(half + extra).await;
                    wait = (wait * 2).min(self.backoff.max);
                }
            }
        }
    }
}

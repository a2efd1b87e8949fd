//! The server's MQTT client: one rumqttc connection to the embedded or an external broker.
//!
//! rumqttc makes progress only while its `EventLoop` is polled, and `AsyncClient::publish`
//! waits for room in the request channel that the same loop drains: publishing from the
//! polling task would deadlock. So the loop is polled in its own task ([`MqttLink::start`]),
//! which hands what it receives to the fleet coordinator through a *bounded* channel
//! ([`INBOUND_QUEUE`]): when the coordinator falls behind, the task waits for room, stops
//! reading the socket and the broker holds (or, at its own bounds, drops) what follows. The
//! coordinator publishes through the cloned [`AsyncClient`] without ever waiting on it (its
//! outbox, `fleet/outbox.rs`), so the two never wait on each other.
//!
//! Before the channel, every device message is charged to the budget of the device its topic
//! names ([`ota_core::budget`]): what a device sends beyond its budget is dropped there and
//! counted in `ota_mqtt_messages_dropped_total`, so one flooding device (behind an external
//! broker, or past the embedded broker's front door) cannot fill the queue the other devices'
//! heartbeats wait in.
//!
//! The connection is plain TCP or TLS ([`MqttEndpoint::tls`], rustls with the aws-lc-rs
//! provider), with optional username and password: the embedded broker's internal secret, or
//! the credentials configured for an external broker.
//!
//! Connection errors are retried with exponential backoff (0.2 s doubling to 10 s), each
//! attempt at the next node of the broker cluster when several are configured
//! (`mqtt.failover_urls`, round robin). Sessions are clean, so the coordinator subscribes again
//! after every `ConnAck` ([`Inbound::Connected`]); a refused subscription is asked for again
//! after the same backoff ([`Inbound::SubscribeRefused`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ota_core::budget::{BudgetSpec, Budgets, Verdict};
use ota_core::wire::Topics;
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, SubscribeReasonCode, TlsConfiguration,
    Transport,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::fleet::{Counters, Shared};

/// Largest MQTT packet sent or accepted (a desired state carries a signed release of at most
/// 64 KiB; the broker accepts 256 KiB).
pub const MAX_PACKET: usize = 256 * 1024;
/// First reconnect delay.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Longest reconnect delay.
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Messages waiting for the coordinator; beyond, the subscriber stops reading the socket.
pub const INBOUND_QUEUE: usize = 4096;

/// What the polling task hands to the coordinator.
#[derive(Debug)]
#[non_exhaustive]
pub enum Inbound {
    /// Connected (again): subscribe and republish retained desired states.
    Connected,
    /// The broker acknowledged a subscription.
    Subscribed,
    /// The broker refused a subscription (after a backoff wait): subscribe again.
    SubscribeRefused,
    /// The connection broke; rumqttc reconnects on the next poll.
    Disconnected(String),
    /// A message on a subscribed topic.
    Message {
        /// The topic.
        topic: String,
        /// The payload.
        payload: Bytes,
    },
}

/// Where and how the server's client connects. `Debug` hides the password.
#[derive(Clone)]
pub struct MqttEndpoint {
    /// Broker host name or address (also the TLS server name).
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// TLS, when set.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Username and password, when set.
    pub credentials: Option<(String, String)>,
    /// More nodes of the same broker cluster, `(host, port)` (`mqtt.failover_urls`), with the
    /// same TLS and credentials: after every failed or lost connection the link moves to the
    /// next of `host`, `failover...` (round robin).
    pub failover: Vec<(String, u16)>,
}

/// How the coordinator's MQTT link reaches the fleet: the broker, the fleet's topic namespace
/// and the message budget of each device.
#[derive(Debug, Clone)]
pub struct LinkSpec {
    /// Where the broker is.
    pub endpoint: MqttEndpoint,
    /// The fleet's topic namespace (`mqtt.topic_prefix`).
    pub topics: Topics,
    /// What each device may publish (per device id of the topic); the excess is dropped.
    pub device_budget: BudgetSpec,
}

impl MqttEndpoint {
    /// Plain TCP, no credentials.
    pub fn plain(host: impl Into<String>, port: u16) -> Self {
        MqttEndpoint {
            host: host.into(),
            port,
            tls: None,
            credentials: None,
            failover: Vec::new(),
        }
    }
}

impl std::fmt::Display for MqttEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls.is_some() { "mqtts" } else { "mqtt" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

impl std::fmt::Debug for MqttEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttEndpoint")
            .field("url", &self.to_string())
            .field("username", &self.credentials.as_ref().map(|(u, _)| u))
            .field("failover", &self.failover)
            .finish_non_exhaustive()
    }
}

/// The MQTT connection: a client handle plus its polling task.
#[derive(Debug)]
pub struct MqttLink {
    client: AsyncClient,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Where the polling task hands what it receives: to the coordinator (waiting for room),
/// device messages only within their budgets.
struct Sink {
    inbound: mpsc::Sender<Inbound>,
    budgets: Budgets<String>,
    epoch: tokio::time::Instant,
    /// The fleet's topic namespace (budgets are per device id of the topic).
    topics: Topics,
    shared: Arc<Shared>,
}

impl MqttLink {
    /// Connects to `spec`'s broker as `client_id` and starts polling; everything received goes
    /// to `inbound` (see the [module documentation](self)). Each device (of a topic in the
    /// spec's namespace) gets the spec's budget; what is
    /// dropped over it is counted in `shared`.
    pub fn start(
        spec: &LinkSpec,
        client_id: &str,
        inbound: mpsc::Sender<Inbound>,
        shared: Arc<Shared>,
    ) -> Self {
        let endpoint = &spec.endpoint;
        let first = options(endpoint, client_id, &endpoint.host, endpoint.port);
        let brokers: Vec<MqttOptions> = std::iter::once(first.clone())
            .chain(
                endpoint
                    .failover
                    .iter()
                    .map(|(host, port)| options(endpoint, client_id, host, *port)),
            )
            .collect();
        let (client, eventloop) = AsyncClient::new(first, 16 * 1024);
        let (stop, stop_rx) = watch::channel(false);
        let sink = Sink {
            inbound,
            budgets: Budgets::new(spec.device_budget),
            epoch: crate::clock::monotonic_now(),
            topics: spec.topics.clone(),
            shared,
        };
        let task = tokio::spawn(poll(eventloop, brokers, sink, stop_rx));
        MqttLink { client, stop, task }
    }

    /// The client handle (cheap to clone). Never publish from the polling task.
    pub fn client(&self) -> &AsyncClient {
        &self.client
    }

    /// Disconnects (so the broker does not publish a will or keep the session) and stops the
    /// polling task.
    pub async fn stop(self) {
        if self.client.try_disconnect().is_ok() {
            // Let the polling task send the DISCONNECT.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}

/// The connection options of the broker node `host:port` of `endpoint`.
fn options(endpoint: &MqttEndpoint, client_id: &str, host: &str, port: u16) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, host, port);
    if let Some((user, password)) = &endpoint.credentials {
        options.set_credentials(user.clone(), password.clone());
    }
    if let Some(tls) = &endpoint.tls {
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls.clone(),
        )));
    }
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET)
        .set_inflight(200);
    options
}

/// Polls `eventloop` until `stop` (or until nobody listens any more), handing events to
/// `sink`. After every failed or lost connection the next attempt goes to the next of
/// `brokers` (round robin; the event loop starts with the first).
async fn poll(
    mut eventloop: EventLoop,
    brokers: Vec<MqttOptions>,
    mut sink: Sink,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = BACKOFF_MIN;
    let mut current = 0;
    loop {
        let event = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            event = eventloop.poll() => event,
        };
        let inbound = match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = BACKOFF_MIN;
                let (host, port) = eventloop.mqtt_options.broker_address();
                tracing::info!("connected to the MQTT broker at {host}:{port}");
                Inbound::Connected
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .all(|c| matches!(c, SubscribeReasonCode::Success(_)))
                {
                    Inbound::Subscribed
                } else {
                    // A clustered broker refuses subscriptions while it cannot store them
                    // (NATS during a JetStream leader election, docs/ha.md): ask again later.
                    tracing::warn!(
                        "the MQTT broker refused a subscription; retrying in {backoff:?}"
                    );
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    Inbound::SubscribeRefused
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => Inbound::Message {
                topic: p.topic,
                payload: p.payload,
            },
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!("MQTT connection error: {e}; retrying in {backoff:?}");
                let inbound = Inbound::Disconnected(e.to_string());
                let delivered = tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    delivered = sink.deliver(inbound) => delivered,
                };
                if !delivered {
                    break;
                }
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                if brokers.len() > 1 {
                    current = (current + 1) % brokers.len();
                    if let Some(next) = brokers.get(current) {
                        let (host, port) = next.broker_address();
                        tracing::info!("next MQTT connection attempt: {host}:{port}");
                        eventloop.mqtt_options = next.clone();
                    }
                }
                continue;
            }
        };
        let delivered = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            delivered = sink.deliver(inbound) => delivered,
        };
        if !delivered {
            // The coordinator is gone: nobody listens any more.
            break;
        }
    }
}

impl Sink {
    /// Hands `inbound` on, waiting for room; false when nobody listens any more.
    async fn deliver(&mut self, inbound: Inbound) -> bool {
        if let Inbound::Message { topic, .. } = &inbound
            && let Ok((device, _)) = self.topics.parse_device_topic(topic)
        {
            let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
            if self.budgets.take(device.as_str().to_owned(), now) != Verdict::Pass {
                Counters::inc(&self.shared.counters.mqtt_dropped);
                return true;
            }
        }
        self.inbound.send(inbound).await.is_ok()
    }
}

/// Publishes with QoS 1 (every ota message), retained or not.
pub async fn publish(
    client: &AsyncClient,
    topic: String,
    payload: Vec<u8>,
    retain: bool,
) -> Result<(), rumqttc::ClientError> {
    client
        .publish(topic, QoS::AtLeastOnce, retain, payload)
        .await
}

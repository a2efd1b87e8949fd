//! The server's MQTT client: one rumqttc connection to the embedded or an external broker.
//!
//! rumqttc makes progress only while its `EventLoop` is polled, and `AsyncClient::publish`
//! waits for room in the request channel that the same loop drains: publishing from the
//! polling task would deadlock. So the loop is polled in its own task ([`MqttLink::start`]),
//! which never waits on anyone: every incoming publish goes into an unbounded channel to the
//! fleet coordinator, which publishes through the cloned [`AsyncClient`].
//!
//! Connection errors are retried with exponential backoff (0.2 s doubling to 10 s). Sessions
//! are clean, so the coordinator subscribes again after every `ConnAck`
//! ([`Inbound::Connected`]).

use std::time::Duration;

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Largest MQTT packet sent or accepted (a desired state carries a signed release of at most
/// 64 KiB; the broker accepts 256 KiB).
pub const MAX_PACKET: usize = 256 * 1024;
/// First reconnect delay.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Longest reconnect delay.
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// What the polling task hands to the coordinator.
#[derive(Debug)]
#[non_exhaustive]
pub enum Inbound {
    /// Connected (again): subscribe and republish retained desired states.
    Connected,
    /// The broker acknowledged a subscription.
    Subscribed,
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

/// The MQTT connection: a client handle plus its polling task.
#[derive(Debug)]
pub struct MqttLink {
    client: AsyncClient,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl MqttLink {
    /// Connects to `host:port` as `client_id` and starts polling; everything received goes to
    /// `inbound`.
    pub fn start(
        host: &str,
        port: u16,
        client_id: &str,
        inbound: mpsc::UnboundedSender<Inbound>,
    ) -> Self {
        let mut options = MqttOptions::new(client_id, host, port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET)
            .set_inflight(200);
        let (client, mut eventloop) = AsyncClient::new(options, 16 * 1024);
        let (stop, mut stop_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut backoff = BACKOFF_MIN;
            loop {
                let event = tokio::select! {
                    _ = stop_rx.wait_for(|s| *s) => break,
                    event = eventloop.poll() => event,
                };
                let sent = match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        backoff = BACKOFF_MIN;
                        inbound.send(Inbound::Connected)
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => inbound.send(Inbound::Subscribed),
                    Ok(Event::Incoming(Packet::Publish(p))) => inbound.send(Inbound::Message {
                        topic: p.topic,
                        payload: p.payload,
                    }),
                    Ok(_) => Ok(()),
                    Err(e) => {
                        tracing::warn!("MQTT connection error: {e}; retrying in {backoff:?}");
                        let sent = inbound.send(Inbound::Disconnected(e.to_string()));
                        tokio::select! {
                            _ = stop_rx.wait_for(|s| *s) => break,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        sent
                    }
                };
                if sent.is_err() {
                    // The coordinator is gone: nobody listens any more.
                    break;
                }
            }
        });
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

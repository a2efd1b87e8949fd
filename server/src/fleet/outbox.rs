//! The coordinator's publishes, handed to the MQTT client without ever waiting on it.
//!
//! rumqttc's `publish().await` waits for room in the request channel that the client's polling
//! task drains; that task in turn waits for room in the bounded inbound queue the coordinator
//! drains ([`crate::mqtt`]). If the coordinator waited on a publish while the polling task
//! waited on the queue, both would wait for ever. So the coordinator only *tries* to publish:
//! what the client has no room for waits here, in order (a newer retained message never
//! overtakes an older one), and is handed on by [`Outbox::flush`] on the coordinator's next
//! turn, while it goes on draining the inbound queue.

use std::collections::VecDeque;
use std::time::Duration;

use rumqttc::{AsyncClient, ClientError, QoS};

use super::Counters;

/// How soon the coordinator comes back to flush a non-empty outbox.
pub(super) const RETRY: Duration = Duration::from_millis(10);

/// Publishes waiting for room in the client's request channel (see the
/// [module documentation](self)).
#[derive(Debug, Default)]
pub(super) struct Outbox {
    waiting: VecDeque<(String, Vec<u8>, bool)>,
}

impl Outbox {
    /// Publishes `payload` on `topic` (QoS 1) now if nothing waits and the client has room;
    /// queues it otherwise.
    pub(super) fn publish(
        &mut self,
        client: &AsyncClient,
        counters: &Counters,
        topic: String,
        payload: Vec<u8>,
        retain: bool,
    ) {
        self.waiting.push_back((topic, payload, retain));
        self.flush(client, counters);
    }

    /// Hands on what waits, in order, until the client has no more room.
    pub(super) fn flush(&mut self, client: &AsyncClient, counters: &Counters) {
        while let Some((topic, payload, retain)) = self.waiting.pop_front() {
            match client.try_publish(topic, QoS::AtLeastOnce, retain, payload) {
                Ok(()) => Counters::inc(&counters.mqtt_published),
                Err(ClientError::TryRequest(rumqttc::Request::Publish(p))) => {
                    self.waiting
                        .push_front((p.topic, p.payload.to_vec(), p.retain));
                    return;
                }
                Err(e) => tracing::error!("cannot publish: {e}"),
            }
        }
    }

    /// Whether nothing waits.
    pub(super) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

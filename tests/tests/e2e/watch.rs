//! Watchers of every device's desired state, as devices see them: one MQTT client per broker
//! address, and the split-brain check over what they received.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ota_core::wire::{DesiredState, DeviceId, TopicKind, Topics, WireMessage};
use ota_demo::lab::Lab;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};

/// What the watchers received: topic and payload of every desired state.
pub type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// Starts one watcher per broker address in `brokers`, subscribed (QoS 1) to every device's
/// desired state in `topics`; returns once every subscription is granted. A watcher whose
/// broker dies stops receiving; the others see everything. Abort the tasks returned to stop
/// them.
pub async fn watch_desired(
    brokers: &[SocketAddr],
    topics: &Topics,
) -> (Seen, Vec<tokio::task::JoinHandle<()>>) {
    let seen: Seen = Arc::default();
    let mut tasks = Vec::new();
    let filter = topics.fleet_filter(TopicKind::Desired);
    for (i, addr) in brokers.iter().enumerate() {
        let options = MqttOptions::new(
            format!("{}-watch-{i}", topics.prefix().replace('/', "-")),
            "127.0.0.1",
            addr.port(),
        );
        let (client, mut events) = AsyncClient::new(options, 64);
        let (granted_tx, mut granted_rx) = tokio::sync::watch::channel(false);
        let seen = seen.clone();
        let filter = filter.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client.subscribe(&filter, QoS::AtLeastOnce).await;
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        if ack
                            .return_codes
                            .iter()
                            .all(|c| matches!(c, SubscribeReasonCode::Success(_)))
                        {
                            granted_tx.send_replace(true);
                        } else {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            let _ = client.subscribe(&filter, QoS::AtLeastOnce).await;
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        seen.lock()
                            .unwrap()
                            .push((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }));
        let granted =
            tokio::time::timeout(crate::world::PATIENCE, granted_rx.wait_for(|g| *g)).await;
        assert!(
            matches!(granted, Ok(Ok(_))),
            "watcher on broker {addr} not subscribed"
        );
    }
    (seen, tasks)
}

/// Stops the watchers and asserts what they saw: per device and generation one content
/// (release, rollout, force flag; the mirror URLs are not compared), and a desired state
/// for every device of `lab`. Answers how many desired states they received.
pub fn one_content_per_generation(
    (seen, watchers): (Seen, Vec<tokio::task::JoinHandle<()>>),
    topics: &Topics,
    lab: &Lab,
) -> usize {
    for watcher in watchers {
        watcher.abort();
    }
    let seen = seen.lock().unwrap().clone();
    let received = seen.len();
    let mut states: BTreeMap<(String, u64), Vec<DesiredState>> = BTreeMap::new();
    for (topic, payload) in seen {
        let mut desired = DesiredState::from_cbor(&payload).unwrap();
        desired.artifact_urls.clear();
        let slot = states.entry((topic, desired.generation)).or_default();
        if !slot.contains(&desired) {
            slot.push(desired);
        }
    }
    for ((topic, generation), contents) in &states {
        assert_eq!(
            contents.len(),
            1,
            "{topic} generation {generation}: {contents:#?}"
        );
    }
    for d in lab.devices() {
        let wanted = topics.device(&DeviceId::new(d.id()).unwrap(), TopicKind::Desired);
        assert!(
            states.keys().any(|(topic, _)| *topic == wanted),
            "no desired state seen for {}",
            d.id()
        );
    }
    received
}

//! Database outages: the coordinator goes read-only, keeps what devices send, waits for
//! the database and resumes from it.

use std::collections::{BTreeSet, HashSet};

use bytes::Bytes;
use ota_core::fleet::RolloutId;
use ota_core::rollout::StateCounts;
use ota_core::wire::TopicKind;
use rumqttc::AsyncClient;
use tokio::sync::{mpsc, watch};

use super::inbound::{Link, heartbeat_ack};
use super::{Actor, Batch, Degraded, LinkProgress, RELOAD_FIRST_WAIT, RELOAD_MAX_WAIT, Stored};
use crate::fleet::{Command, FleetError, Snapshot};
use crate::mqtt::Inbound;

impl Actor {
    /// Drops the in-memory state (it may hold changes that were not stored) and turns
    /// read-only, keeping `raw` (device messages) and `flag_devices` for when the database
    /// is back.
    pub(super) fn degrade(&mut self, raw: Vec<(String, Bytes)>, flag_devices: BTreeSet<String>) {
        if self.degraded.is_none() {
            tracing::error!(
                "the fleet coordinator is read-only until the database answers again (rollout and flag changes get 503)"
            );
        }
        self.read_failed = false;
        self.rollouts.clear();
        self.owner.clear();
        self.devices.clear();
        self.generations.forget_all();
        let degraded = self.degraded.get_or_insert_with(Degraded::default);
        for (topic, payload) in raw {
            degraded.keep(&self.topics, topic, payload);
        }
        degraded.flag_devices.extend(flag_devices);
    }

    /// While read-only: loads the state again (waiting longer after each failure) until it
    /// loads whole, answering meanwhile heartbeats (acks) and commands (503), keeping device
    /// messages and taking note of the clock's jumps. Returns what was kept, or `None` when
    /// the coordinator stops.
    pub(super) async fn wait_for_db(
        &mut self,
        client: &AsyncClient,
        inbound: &mut mpsc::Receiver<Inbound>,
        commands: &mut mpsc::Receiver<Command>,
        stop: &mut watch::Receiver<bool>,
        ready: &watch::Sender<LinkProgress>,
    ) -> Option<(Stored, Degraded)> {
        let mut wait = RELOAD_FIRST_WAIT;
        loop {
            let db = self.db.clone();
            let now = self.clock.timestamp();
            let load = async move {
                tokio::time::sleep(wait).await;
                Stored::load(&db, now).await
            };
            tokio::pin!(load);
            let loaded = loop {
                tokio::select! {
                    biased;
                    _ = stop.changed() => return None,
                    cmd = commands.recv() => self.command_read_only(cmd?, client).await,
                    msg = inbound.recv() => self.inbound_read_only(msg?, client, ready).await,
                    // The timers fire once the state is back (`resume`), by the clock then.
                    () = self.jumps.moved() => {
                        let seen = self.jumps.seen();
                        self.jumps.acted(seen);
                    }
                    loaded = &mut load => break loaded,
                }
            };
            match loaded {
                Ok(stored) => {
                    let kept = self.degraded.take().unwrap_or_default();
                    return Some((stored, kept));
                }
                Err(e) => {
                    tracing::warn!("the database is still unavailable: {e}");
                    wait = (wait * 2).min(RELOAD_MAX_WAIT);
                }
            }
        }
    }

    /// Leaves read-only: swaps in the state loaded whole, republishes what a reconnect
    /// meanwhile may have lost, and hands the kept device messages to `batch`.
    pub(super) async fn resume(
        &mut self,
        (stored, kept): (Stored, Degraded),
        client: &AsyncClient,
        batch: &mut Batch,
    ) {
        self.apply(stored);
        tracing::info!(
            kept = kept.latest.len() + kept.events.len(),
            dropped = kept.dropped,
            "the database answers again: the fleet coordinator resumes"
        );
        if self.connected {
            self.republish_all(client).await;
        }
        batch.flag_devices.extend(kept.flag_devices);
        for (topic, payload) in kept.events.into_iter().chain(kept.latest) {
            self.message(&topic, payload, batch).await;
        }
    }

    /// A command while read-only: reads served from memory, changes refused.
    pub(super) async fn command_read_only(&mut self, cmd: Command, client: &AsyncClient) {
        match cmd {
            Command::FlagList { reply } => {
                let _ = reply.send(self.flags.list());
            }
            Command::FlagShow { reply, .. } => {
                let _ = reply.send(Err(FleetError::Unavailable));
            }
            Command::Flag { reply, .. } => {
                let _ = reply.send(Err(FleetError::Unavailable));
            }
            Command::Create { reply, .. } | Command::Operate { reply, .. } => {
                let _ = reply.send(Err(FleetError::Unavailable));
            }
            Command::ReleaseChanged { digest } => {
                self.releases.remove(&digest);
            }
            Command::DeviceChanged { id } => {
                if let Some(degraded) = &mut self.degraded {
                    degraded.flag_devices.insert(id);
                }
            }
            Command::TrustChanged { payload } => {
                if let Some(payload) = self.accept_trust(payload) {
                    let topic = self.topics.trust();
                    self.publish(client, topic, payload, true).await;
                }
            }
        }
    }

    /// An MQTT input while read-only: heartbeats acked, device messages kept.
    pub(super) async fn inbound_read_only(
        &mut self,
        msg: Inbound,
        client: &AsyncClient,
        ready: &watch::Sender<LinkProgress>,
    ) {
        match self.link_event(msg, client, ready).await {
            // Desired states, flags and trust are republished once the database is back.
            Link::Connected | Link::Handled => {}
            Link::Message { topic, payload } => {
                let heartbeat = match self.topics.parse_device_topic(&topic) {
                    Ok((id, TopicKind::Heartbeat)) => heartbeat_ack(&self.topics, &id, &payload)
                        .ok()
                        .map(|(_, ack)| ack),
                    _ => None,
                };
                match heartbeat {
                    Some((topic, ack)) => self.publish(client, topic, ack, false).await,
                    None if payload.is_empty() => {}
                    None => {
                        if let Some(degraded) = &mut self.degraded {
                            degraded.keep(&self.topics, topic, payload);
                        }
                    }
                }
            }
        }
    }

    /// Forgets rollouts that need no more driving, and frees their devices.
    pub(super) fn unload_finished(&mut self) {
        let done: Vec<RolloutId> = self
            .rollouts
            .iter()
            .filter(|(_, l)| !l.planner.needs_driving())
            .map(|(id, _)| *id)
            .collect();
        for id in &done {
            self.rollouts.remove(id);
        }
        let active: HashSet<RolloutId> = self
            .rollouts
            .iter()
            .filter(|(_, l)| l.planner.state().is_active())
            .map(|(id, _)| *id)
            .collect();
        self.owner.retain(|_, rid| active.contains(rid));
    }

    pub(super) fn update_snapshot(&self) {
        let mut executions = StateCounts::default();
        let mut active = 0;
        for l in self.rollouts.values() {
            if l.planner.state().is_active() {
                active += 1;
                executions.merge(&l.planner.status().totals);
            }
        }
        self.shared.set_snapshot(Snapshot {
            executions,
            mqtt_connected: self.connected,
            active_rollouts: active,
            db_unavailable: self.degraded.is_some(),
        });
    }
}

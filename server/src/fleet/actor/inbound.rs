//! What devices send: routing each MQTT message to the device memo, the generation
//! ledger and the planners (core `fleet`), refusing what is malformed or forged.

use bytes::Bytes;
use ota_core::budget::Verdict;
use ota_core::fleet::{Delivery, DriftChange, deliver};
use ota_core::wire::{
    DeviceId, Event, Heartbeat, HeartbeatAck, PROTOCOL_VERSION, ReportedState, Status, TopicKind,
    Topics, TrustOutcome, TrustReport, UpdateOutcome, WireMessage,
};
use rumqttc::AsyncClient;
use serde_json::json;
use tokio::sync::watch;

use super::{Actor, Batch, LinkProgress, MAX_TRANSFER_BYTES, memo_of, result_name, subscribe};
use crate::db::{DeviceReport, NewEvent, TransferRecord};
use crate::event_kinds::EventKind;
use crate::fleet::{Counters, LAST_SEEN_RESOLUTION_SECS, REJECT_EVENTS_PER_MINUTE};
use crate::mqtt::Inbound;

/// What is left to do after [`Actor::link_event`].
pub(super) enum Link {
    /// Connected (and subscribing): publish what devices must find retained.
    Connected,
    /// A message from a device.
    Message {
        /// Its topic.
        topic: String,
        /// Its payload.
        payload: Bytes,
    },
    /// Nothing more.
    Handled,
}

impl Actor {
    pub(super) async fn inbound(
        &mut self,
        msg: Inbound,
        client: &AsyncClient,
        ready: &watch::Sender<LinkProgress>,
        batch: &mut Batch,
    ) {
        match self.link_event(msg, client, ready).await {
            Link::Connected => self.republish_all(client).await,
            Link::Message { topic, payload } => self.message(&topic, payload, batch).await,
            Link::Handled => {}
        }
    }

    /// What the MQTT link reports, the same whether the coordinator is read-only or not:
    /// (re)subscribes on a connect or a refused subscription, marks the coordinator ready once
    /// subscribed, counts messages. Answers what is left to do.
    pub(super) async fn link_event(
        &mut self,
        msg: Inbound,
        client: &AsyncClient,
        ready: &watch::Sender<LinkProgress>,
    ) -> Link {
        match msg {
            Inbound::Connected => {
                self.connected = true;
                ready.send_if_modified(|p| {
                    let first = *p < LinkProgress::Answered;
                    if first {
                        *p = LinkProgress::Answered;
                    }
                    first
                });
                subscribe(client, &self.topics).await;
                return Link::Connected;
            }
            Inbound::Subscribed => {
                ready.send_replace(LinkProgress::Subscribed);
                tracing::info!("subscribed to the fleet's MQTT topics");
            }
            Inbound::SubscribeRefused => subscribe(client, &self.topics).await,
            Inbound::Disconnected(e) => {
                self.connected = false;
                tracing::debug!("MQTT disconnected: {e}");
            }
            Inbound::Message { topic, payload } => {
                Counters::inc(&self.counters().mqtt_received);
                return Link::Message { topic, payload };
            }
        }
        Link::Handled
    }

    /// Publishes every stored desired state, the devices' flags and the trust-set update in
    /// force again (all retained).
    pub(super) async fn republish_all(&mut self, client: &AsyncClient) {
        self.republish_desired(client).await;
        for (id, payload) in self.flags.all() {
            let topic = self.topics.flags(&id);
            self.publish(client, topic, payload, true).await;
        }
        if let Some(payload) = self.trust.clone() {
            let topic = self.topics.trust();
            self.publish(client, topic, payload, true).await;
        }
    }

    /// Publishes every stored desired state again (retained, same generation): after a
    /// (re)connect, the broker may have lost them (the embedded broker keeps retained
    /// messages in memory only), and devices ignore generations they acted on. If the
    /// database cannot be read, the coordinator turns read-only and does it once it is back.
    pub(super) async fn republish_desired(&mut self, client: &AsyncClient) {
        let rows = match self.db.list_desired().await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!("cannot read desired states to republish: {e}");
                self.read_failed |= e.is_unavailable();
                return;
            }
        };
        for row in rows {
            let Ok(id) = DeviceId::new(&row.device_id) else {
                continue;
            };
            let topic = self.topics.device(&id, TopicKind::Desired);
            self.publish(client, topic, row.payload, true).await;
        }
    }

    pub(super) async fn message(&mut self, topic: &str, payload: Bytes, batch: &mut Batch) {
        let (id, kind) = match self.topics.parse_device_topic(topic) {
            Ok(parsed) => parsed,
            Err(e) => {
                self.reject(None, topic, &e.to_string(), batch);
                return;
            }
        };
        if payload.is_empty() {
            // A cleared retained message (e.g. a decommissioned device): nothing to do.
            return;
        }
        if kind != TopicKind::Heartbeat {
            batch.raw.push((topic.to_string(), payload.clone()));
        }
        match kind {
            TopicKind::Reported => match ReportedState::from_cbor(&payload) {
                Ok(r) if r.device_id == id.as_str() => {
                    let acknowledged = r.acknowledged_generation();
                    let outcome = r.last_result.as_ref();
                    if self.acknowledges_issued(&id, acknowledged, outcome, topic, batch) {
                        self.on_reported(&id, r, &payload, batch);
                    } else {
                        self.reissue_above_watermark(&id, batch).await;
                    }
                }
                Ok(r) => self.reject(
                    Some(&id),
                    topic,
                    &format!("reported state names device {:?}", r.device_id),
                    batch,
                ),
                Err(e) => self.reject(Some(&id), topic, &e.to_string(), batch),
            },
            TopicKind::Events => match Event::from_cbor(&payload) {
                Ok(e) if e.device_id == id.as_str() => {
                    if !self.is_known(&id).await {
                        self.reject(Some(&id), topic, "event from an unknown device", batch);
                    } else {
                        // (A refused event moves the watermark; the reported state that
                        // follows it sends the desired state again if need be.)
                        let outcome = e.outcome();
                        if self.acknowledges_issued(&id, e.generation, Some(&outcome), topic, batch)
                        {
                            self.note_transfer(&id, &outcome, batch);
                            self.route(&id, &outcome, topic, batch);
                        }
                    }
                }
                Ok(e) => self.reject(
                    Some(&id),
                    topic,
                    &format!("event names device {:?}", e.device_id),
                    batch,
                ),
                Err(e) => self.reject(Some(&id), topic, &e.to_string(), batch),
            },
            TopicKind::Status => match Status::from_cbor(&payload) {
                Ok(s) => self.on_status(&id, s.online, batch),
                Err(e) => self.reject(Some(&id), topic, &e.to_string(), batch),
            },
            TopicKind::Heartbeat => match heartbeat_ack(&self.topics, &id, &payload) {
                Ok((heartbeat, ack)) => {
                    self.on_heartbeat(&id, heartbeat.healthy, batch);
                    batch.acks.push(ack);
                }
                Err(e) => self.reject(Some(&id), topic, &e, batch),
            },
            TopicKind::Trust => match TrustReport::from_cbor(&payload) {
                Ok(r) if r.device_id == id.as_str() => {
                    // The set in force on the device is state: recorded even when its event
                    // is rate-limited.
                    batch
                        .trust_sequences
                        .insert(id.as_str().to_owned(), r.sequence);
                    if self.event_allowed(id.as_str(), trust_event_kind(&r.outcome)) {
                        on_trust_report(&id, &r, self.clock.now_i64(), batch);
                    }
                }
                Ok(r) => self.reject(
                    Some(&id),
                    topic,
                    &format!("trust report names device {:?}", r.device_id),
                    batch,
                ),
                Err(e) => self.reject(Some(&id), topic, &e.to_string(), batch),
            },
            _ => {}
        }
    }

    pub(super) async fn is_known(&mut self, id: &DeviceId) -> bool {
        if self.devices.get(id.as_str()).is_some_and(|m| m.registered) {
            return true;
        }
        // Rows written behind the coordinator's back (e.g. by tools) count too.
        match self.db.get_device(id.as_str()).await {
            Ok(Some(d)) => {
                let memo = memo_of(&d);
                let known = memo.registered;
                self.devices.insert(d.id, memo);
                known
            }
            Ok(None) => false,
            Err(e) => {
                tracing::error!("cannot read device {id}: {e}");
                self.read_failed |= e.is_unavailable();
                false
            }
        }
    }

    /// Whether `device` may have another audit event of `kind` now: at most
    /// [`DEVICE_EVENTS_PER_MINUTE`] a minute per device and kind (bursts of as many); the rest
    /// are counted in `ota_events_suppressed_total`.
    pub(super) fn event_allowed(&mut self, device: &str, kind: EventKind) -> bool {
        let now = self.clock.now_millis();
        match self.event_budgets.take((device.to_owned(), kind), now) {
            Verdict::Pass => true,
            _ => {
                Counters::inc(&self.counters().events_suppressed);
                false
            }
        }
    }

    /// Records a refused message (rate-limited in all and per device) and counts it.
    pub(super) fn reject(
        &mut self,
        device: Option<&DeviceId>,
        topic: &str,
        reason: &str,
        batch: &mut Batch,
    ) {
        if let Some(event) = self.reject_event(device.map(DeviceId::as_str), topic, reason) {
            batch.events.push(event);
        }
    }

    /// Counts a refused message; its `mqtt-rejected` audit event unless over the rate limit.
    pub(super) fn reject_event(
        &mut self,
        device: Option<&str>,
        topic: &str,
        reason: &str,
    ) -> Option<NewEvent> {
        Counters::inc(&self.counters().mqtt_rejected);
        tracing::debug!(topic, "MQTT message refused: {reason}");
        if device.is_some_and(|d| !self.event_allowed(d, EventKind::MqttRejected)) {
            return None;
        }
        let now = self.clock.now_millis();
        if now.saturating_sub(self.reject_window.0) >= 60_000 {
            self.reject_window = (now, 0);
        }
        if self.reject_window.1 >= REJECT_EVENTS_PER_MINUTE {
            return None;
        }
        self.reject_window.1 += 1;
        let actor = device.map_or_else(|| "mqtt".to_string(), |d| format!("device:{d}"));
        let mut event = NewEvent::new(self.clock.now_i64(), actor, EventKind::MqttRejected)
            .details(
                json!({ "topic": ota_core::wire::truncate_text(topic, 256), "reason": reason }),
            );
        if let Some(d) = device {
            event = event.device(d);
        }
        Some(event)
    }

    /// A heartbeat is a sign of life: `last_seen` moves when the stored one is stale, and a
    /// device held offline is online again (the rule:
    /// [`ota_core::fleet::DeviceMemo::handle_heartbeat`]; without it a stale retained
    /// `offline` will would keep the device offline, and unnotified by rollouts, until it
    /// reconnects). Its health (issue 17) when it changed, for the gates of the rollouts it is
    /// in.
    pub(super) fn on_heartbeat(&mut self, id: &DeviceId, healthy: Option<bool>, batch: &mut Batch) {
        let Some(memo) = self.devices.get_mut(id.as_str()) else {
            return;
        };
        let seen = memo.handle_heartbeat(healthy);
        if self.clock.now_i64().saturating_sub(memo.last_seen) >= LAST_SEEN_RESOLUTION_SECS {
            batch.seen.insert(id.as_str().to_string());
        }
        if seen.came_online {
            self.presence_changed(id, true, batch);
        }
        let Some(healthy) = healthy.filter(|_| seen.health_changed) else {
            return;
        };
        let now = self.clock.timestamp();
        for loaded in self.rollouts.values_mut() {
            if loaded.planner.device_state(id).is_some()
                && loaded
                    .planner
                    .handle_device_health(id, healthy, now)
                    .is_ok()
            {
                loaded.dirty = true;
            }
        }
    }

    pub(super) fn on_status(&mut self, id: &DeviceId, online: bool, batch: &mut Batch) {
        let memo = self.devices.entry(id.as_str().to_string()).or_default();
        memo.handle_presence(online);
        self.presence_changed(id, online, batch);
    }

    /// Stores the device's presence (as the memo holds it now) and tells every rollout that
    /// targets it.
    fn presence_changed(&mut self, id: &DeviceId, online: bool, batch: &mut Batch) {
        batch.presence.insert(id.as_str().to_string());
        // Told every time (idempotent in the planner): after a restart the planner's view of
        // presence may be older than the registry's.
        let now = self.clock.timestamp();
        for loaded in self.rollouts.values_mut() {
            if loaded.planner.device_state(id).is_none() {
                continue;
            }
            let result = if online {
                loaded.planner.handle_device_online(id, now)
            } else {
                loaded.planner.handle_device_offline(id, now)
            };
            if result.is_ok() {
                loaded.dirty = true;
            }
        }
    }

    pub(super) fn on_reported(
        &mut self,
        id: &DeviceId,
        r: ReportedState,
        raw: &[u8],
        batch: &mut Batch,
    ) {
        let key = id.as_str().to_string();
        let owned = self.owner.contains_key(&key);
        let now = self.clock.now_i64();
        let memo = self.devices.entry(key.clone()).or_default();
        let seen = memo.handle_report(&r, owned);
        let last_committed = memo.last_committed;
        let running = r.running.as_ref().map(|x| x.digest);
        let known_good = r.known_good.as_ref().map(|x| x.digest);
        if seen.first {
            batch.events.push(
                NewEvent::new(now, format!("device:{id}"), EventKind::DeviceRegistered)
                    .device(id.as_str())
                    .details(json!({
                        "hardware_class": r.hardware_class,
                        "running": running.map(|d| d.to_string()),
                        "agent_version": r.agent_version,
                    })),
            );
        }
        let drift_kind = seen.drift.map(|change| match change {
            DriftChange::Drifted => EventKind::DeviceDrifted,
            DriftChange::Cleared => EventKind::DeviceDriftCleared,
        });
        if let Some(kind) = drift_kind
            && self.event_allowed(id.as_str(), kind)
        {
            batch.events.push(
                NewEvent::new(now, "server", kind)
                    .device(id.as_str())
                    .details(json!({
                        "running": running.map(|d| d.to_string()),
                        "last_committed": last_committed.map(|d| d.to_string()),
                    })),
            );
        }
        let report = DeviceReport {
            hardware_class: Some(r.hardware_class.clone()),
            labels: r.labels.clone(),
            running_version: r.running.as_ref().map(|x| x.version.clone()),
            running_digest: running,
            known_good_digest: known_good,
            last_committed_digest: last_committed,
            last_result: r.last_result.as_ref().map(|o| result_name(&o.state)),
            power: r.power.map(|p| {
                json!({
                    "battery_percent": p.battery_percent,
                    "charging": p.charging,
                    "mains_online": p.mains_online,
                })
            }),
            inventory: Some(json!({
                "os": r.inventory.os,
                "kernel": r.inventory.kernel,
                "arch": r.inventory.arch,
                "hostname": r.inventory.hostname,
                "memory_total": r.inventory.memory_total,
                "disk_free": r.inventory.disk_free,
                "agent_version": r.agent_version,
                "security_floor": r.security_floor,
                "cached": r.cached.len(),
            })),
            reported: Some(raw.to_vec()),
        };
        batch.flag_devices.insert(key.clone());
        batch.reports.insert(key, report);
        if let Some(outcome) = &r.last_result {
            let topic = self.topics.device(id, TopicKind::Reported);
            self.note_transfer(id, outcome, batch);
            self.route(id, outcome, &topic, batch);
        }
    }

    /// Queues the download cost an outcome carries, the first time the device reports one
    /// for its generation (the database keeps the first per device and generation too, so a
    /// repeat after a restart counts once). Figures above [`MAX_TRANSFER_BYTES`] are ignored.
    pub(super) fn note_transfer(&mut self, id: &DeviceId, o: &UpdateOutcome, batch: &mut Batch) {
        let Some(t) = o.transfer else {
            return;
        };
        if t.fetched > MAX_TRANSFER_BYTES || t.size > MAX_TRANSFER_BYTES {
            tracing::debug!(device = %id, "transfer figures out of range: not recorded");
            return;
        }
        let Some(memo) = self.devices.get_mut(id.as_str()) else {
            return;
        };
        if !memo.note_transfer(o.generation, t) {
            return;
        }
        batch.transfers.push(TransferRecord {
            device_id: id.as_str().to_string(),
            generation: o.generation,
            rollout_id: o.rollout(),
            digest: o.digest,
            fetched: t.fetched,
            size: t.size,
        });
    }

    /// Hands an execution report to the rollout it belongs to.
    pub(super) fn route(
        &mut self,
        id: &DeviceId,
        o: &UpdateOutcome,
        topic: &str,
        batch: &mut Batch,
    ) {
        let Some(rid) = o.rollout() else {
            return;
        };
        let Some(loaded) = self.rollouts.get_mut(&rid) else {
            // A finished rollout: nothing to drive.
            return;
        };
        let now = self.clock.timestamp();
        match deliver(&mut loaded.planner, &self.generations, id, o, now) {
            Delivery::Refused(e) => {
                let reason = format!("rollout {rid}: {e}");
                self.reject(Some(id), topic, &reason, batch);
            }
            delivery => loaded.dirty |= delivery.changed(),
        }
    }
}

/// Heartbeat `payload` from `id` and its acknowledgement (topic in `topics`, payload); else
/// why not.
pub(super) fn heartbeat_ack(
    topics: &Topics,
    id: &DeviceId,
    payload: &[u8],
) -> Result<(Heartbeat, (String, Vec<u8>)), String> {
    let h = Heartbeat::from_cbor(payload).map_err(|e| e.to_string())?;
    let ack = HeartbeatAck {
        v: PROTOCOL_VERSION,
        seq: h.seq,
    };
    Ok((
        h,
        (topics.device(id, TopicKind::HeartbeatAck), ack.to_cbor()),
    ))
}

/// The audit event kind of a device's answer to a trust-set update.
pub(super) fn trust_event_kind(outcome: &TrustOutcome) -> EventKind {
    match outcome {
        TrustOutcome::Rotated { .. } => EventKind::TrustRotated,
        TrustOutcome::Rejected { .. } => EventKind::TrustRejected,
    }
}

/// A device's answer to a trust-set update, as a `trust-rotated` or `trust-rejected` audit
/// event at `now` (the device's own time is in `at_ms`).
pub(super) fn on_trust_report(id: &DeviceId, r: &TrustReport, now: i64, batch: &mut Batch) {
    let mut details = json!({ "sequence": r.sequence, "offered": r.offered, "at_ms": r.at });
    let extra = match &r.outcome {
        TrustOutcome::Rotated { keys, threshold } => {
            json!({ "keys": keys, "threshold": threshold })
        }
        TrustOutcome::Rejected { cause, detail } => {
            json!({ "cause": cause.name(), "detail": detail })
        }
    };
    if let (Some(map), serde_json::Value::Object(extra)) = (details.as_object_mut(), extra) {
        map.extend(extra);
    }
    batch.events.push(
        NewEvent::new(now, format!("device:{id}"), trust_event_kind(&r.outcome))
            .device(id.as_str())
            .details(details),
    );
}

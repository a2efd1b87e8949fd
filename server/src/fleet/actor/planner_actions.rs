//! What the planners ask for: desired states to issue and publish, rollbacks and
//! cancels after an abort, audit events of wave and state changes.

use std::sync::Arc;

use ota_core::digest::Digest;
use ota_core::fleet::targeting::NO_RELEASE;
use ota_core::fleet::{RollbackCheck, RolloutId};
use ota_core::rollout::{DesiredKind, NoRollbackCause, PlannerAction};
use ota_core::wire::{
    DesiredState, DeviceId, ExecutionState, FailurePhase, PROTOCOL_VERSION, TopicKind, Transfer,
    WireMessage,
};
use serde_json::json;

use super::{Actor, Batch};
use crate::db::{DesiredRecord, NewEvent};
use crate::event_kinds::EventKind;
use crate::fleet::view::{abort_json, counts_json, insert_failure, no_rollback_json};

impl Actor {
    /// Drains the actions of every changed planner into `batch`.
    pub(super) async fn drain(&mut self, actor: &str, batch: &mut Batch) {
        let dirty: Vec<RolloutId> = self
            .rollouts
            .iter()
            .filter(|(_, l)| l.dirty)
            .map(|(id, _)| *id)
            .collect();
        for rid in dirty {
            let mut actions = Vec::new();
            if let Some(loaded) = self.rollouts.get_mut(&rid) {
                while let Some(a) = loaded.planner.poll_action() {
                    actions.push(a);
                }
            }
            for action in actions {
                self.act(rid, action, actor, batch).await;
            }
        }
    }

    pub(super) async fn act(
        &mut self,
        rid: RolloutId,
        action: PlannerAction,
        actor: &str,
        batch: &mut Batch,
    ) {
        let now = self.clock.now_i64();
        let Some(loaded) = self.rollouts.get(&rid) else {
            return;
        };
        let release = loaded.record.release_digest;
        let force = loaded.planner.spec().force_reinstall;
        let status = loaded.planner.status();
        let success_min = loaded.planner.spec().success_min;
        let event = |kind: EventKind| NewEvent::new(now, actor, kind).rollout(rid);
        match action {
            PlannerAction::Notify { device_id } => {
                if self
                    .owner
                    .get(device_id.as_str())
                    .is_some_and(|o| *o != rid)
                {
                    // A late device of a completed rollout, now in a newer one.
                    return;
                }
                self.publish_desired(&device_id, rid, release, force, DesiredKind::Notify, batch)
                    .await;
            }
            PlannerAction::Rollback {
                device_id,
                to_digest,
            } => {
                if let Some(cause) = self.rollback_refusal(rid, &device_id, to_digest).await {
                    self.no_rollback_target(rid, &device_id, to_digest, cause, actor, batch);
                    return;
                }
                let audit = event(EventKind::DeviceRollback);
                self.send_back(
                    rid,
                    &device_id,
                    to_digest,
                    DesiredKind::Rollback,
                    audit,
                    batch,
                )
                .await;
            }
            PlannerAction::Cancel {
                device_id,
                to_digest,
            } if to_digest == NO_RELEASE => {
                // The device ran nothing when the rollout began: a cancel would point nowhere,
                // so it goes on with the release and is listed as left on it.
                if let Some(loaded) = self.rollouts.get_mut(&rid)
                    && loaded
                        .planner
                        .handle_no_rollback_target(&device_id, NoRollbackCause::NoKnownGood)
                        .is_ok()
                {
                    loaded.dirty = true;
                }
                batch.events.push(
                    event(EventKind::DeviceCancel)
                        .device(device_id.as_str())
                        .details(json!({
                            "to": null,
                            "sent": false,
                            "reason": "the device ran no release: there is nothing to cancel to",
                        })),
                );
            }
            PlannerAction::Cancel {
                device_id,
                to_digest,
            } => {
                let audit = event(EventKind::DeviceCancel);
                self.send_back(
                    rid,
                    &device_id,
                    to_digest,
                    DesiredKind::Cancel,
                    audit,
                    batch,
                )
                .await;
            }
            PlannerAction::WaveStarted { index } => {
                let members = status.waves.get(index).map_or(0, |w| w.cumulative_members);
                batch.events.push(
                    event(EventKind::WaveStarted)
                        .details(json!({ "wave": index, "members": members })),
                );
            }
            PlannerAction::WaveAdvanced { from, to } => {
                batch.events.push(
                    event(EventKind::WaveAdvanced).details(json!({ "from": from, "to": to })),
                );
            }
            PlannerAction::WaveHeld {
                index,
                succeeded,
                executed,
            } => {
                batch.events.push(event(EventKind::WaveHeld).details(json!({
                    "wave": index, "succeeded": succeeded, "executed": executed,
                    "success_min": success_min.to_string(),
                })));
            }
            PlannerAction::Completed => {
                let totals = status.totals;
                batch.events.push(
                    event(EventKind::RolloutCompleted)
                        .details(json!({ "totals": counts_json(&totals) })),
                );
            }
            PlannerAction::Aborted { reason } => {
                batch.events.push(
                    event(EventKind::RolloutAborted)
                        .details(json!({ "reason": abort_json(&reason) })),
                );
            }
            PlannerAction::Recalled {
                device_id,
                to_digest,
                state,
                report,
            } => {
                let mut details = json!({
                    "to": to_digest.to_string(),
                    "recall": state.name(),
                    "state": report.name(),
                });
                if let Some(map) = details.as_object_mut() {
                    insert_failure(map, &report);
                }
                batch.events.push(
                    NewEvent::new(
                        now,
                        format!("device:{device_id}"),
                        EventKind::DeviceRecalled,
                    )
                    .rollout(rid)
                    .device(device_id.as_str())
                    .details(details),
                );
            }
            PlannerAction::StateChanged {
                device_id,
                old,
                new,
            } => {
                let who = match new {
                    ExecutionState::Notified | ExecutionState::TimedOut => "server".to_string(),
                    _ => format!("device:{device_id}"),
                };
                let mut details = json!({ "from": old.name(), "to": new.name() });
                if let Some(map) = details.as_object_mut() {
                    insert_failure(map, &new);
                }
                // The download's cost, on the states that follow a completed download
                // (judged by the state: a batch may hold the device's later events already),
                // when the device reported one for the desired state it is acting on.
                let transfer = self
                    .devices
                    .get(device_id.as_str())
                    .and_then(|m| m.transfer)
                    .filter(|(g, _)| self.generations.issued(&device_id) == *g)
                    .filter(|_| after_download(&new));
                if let (Some((_, t)), Some(map)) = (transfer, details.as_object_mut()) {
                    map.insert("transfer".into(), transfer_json(&t));
                }
                batch.events.push(
                    NewEvent::new(now, who, EventKind::DeviceStateChanged)
                        .rollout(rid)
                        .device(device_id.as_str())
                        .details(details),
                );
            }
            _ => {}
        }
    }

    /// Sends `device` back to `to` after rollout `rid`'s abort (a rollback or a cancel):
    /// `audit` (the batch's `device-rollback` or `device-cancel` event of the rollout) names
    /// the device and target, then the desired state goes out.
    async fn send_back(
        &mut self,
        rid: RolloutId,
        device: &DeviceId,
        to: Digest,
        kind: DesiredKind,
        audit: NewEvent,
        batch: &mut Batch,
    ) {
        batch.events.push(
            audit
                .device(device.as_str())
                .details(json!({ "to": to.to_string() })),
        );
        self.publish_desired(device, rid, to, false, kind, batch)
            .await;
    }

    /// Why `device` would refuse to go back to `to` (its known-good release) after rollout
    /// `rid` aborted: core's [`RollbackCheck`] over the releases as published here, the
    /// device's reported floor and the trust set in force. `None`: the device will accept it.
    pub(super) async fn rollback_refusal(
        &mut self,
        rid: RolloutId,
        device: &DeviceId,
        to: Digest,
    ) -> Option<NoRollbackCause> {
        let target_release = self.release_bytes(&to).await;
        let (committed, release) = self.rollouts.get(&rid).map_or((false, None), |loaded| {
            let state = loaded.planner.device_state(device);
            let committed = matches!(state, Some(ExecutionState::Succeeded));
            (committed, Some(loaded.record.release_digest))
        });
        let rollout_release = match release {
            Some(digest) if committed => self.release_bytes(&digest).await,
            _ => None,
        };
        let trust = self.keys.set();
        RollbackCheck {
            target: to,
            target_release: target_release.as_deref().map(Vec::as_slice),
            committed,
            rollout_release: rollout_release.as_deref().map(Vec::as_slice),
            reported_floor: self
                .devices
                .get(device.as_str())
                .map_or(0, |m| m.security_floor),
            trust: &trust,
            now: self.clock.now(),
        }
        .refusal()
    }

    /// Records that `device` stays on rollout `rid`'s release: no rollback target it would
    /// accept (`cause`). Nothing is sent to it; the rollout lists it and a
    /// `no-rollback-target` event says so.
    pub(super) fn no_rollback_target(
        &mut self,
        rid: RolloutId,
        device: &DeviceId,
        to: Digest,
        cause: NoRollbackCause,
        actor: &str,
        batch: &mut Batch,
    ) {
        let mut details = no_rollback_json(device.as_str(), &cause);
        if let Some(map) = details.as_object_mut() {
            let to = (to != NO_RELEASE).then(|| to.to_string());
            map.insert("to".into(), json!(to));
        }
        tracing::warn!(rollout = %rid, device = %device, cause = cause.name(), "no rollback target");
        if let Some(loaded) = self.rollouts.get_mut(&rid)
            && loaded
                .planner
                .handle_no_rollback_target(device, cause)
                .is_ok()
        {
            loaded.dirty = true;
        }
        batch.events.push(
            NewEvent::new(self.clock.now_i64(), actor, EventKind::NoRollbackTarget)
                .rollout(rid)
                .device(device.as_str())
                .details(details),
        );
    }

    /// Queues the desired state "run `digest`" for `device` (a new generation), to be stored
    /// and published with the batch. Without the release's bytes (never published here), an
    /// event says so instead.
    pub(super) async fn publish_desired(
        &mut self,
        device: &DeviceId,
        rid: RolloutId,
        digest: Digest,
        force_reinstall: bool,
        kind: DesiredKind,
        batch: &mut Batch,
    ) {
        let now = self.clock.now_i64();
        // Why no desired state could be issued: the device keeps the one it has.
        let unavailable = |error: String| {
            NewEvent::new(now, "server", EventKind::DesiredUnavailable)
                .rollout(rid)
                .device(device.as_str())
                .details(json!({
                    "kind": kind.name(),
                    "digest": digest.to_string(),
                    "error": error,
                }))
        };
        let Some(bytes) = self.release_bytes(&digest).await else {
            batch.events.push(unavailable(
                "the release is not published on this server: the device keeps its desired state"
                    .into(),
            ));
            return;
        };
        // Reports acknowledge only generations issued here, so the last one issued (or the
        // device's watermark above it) is the highest the device knows.
        let generation = match self.generations.issue(device, digest) {
            Ok(g) => g,
            Err(e) => {
                batch.events.push(unavailable(e.to_string()));
                return;
            }
        };
        self.supersede_recalls(device, rid);
        let desired = DesiredState {
            v: PROTOCOL_VERSION,
            generation,
            rollout_id: Some(rid.to_string()),
            release: bytes.to_vec(),
            artifact_urls: vec![format!("{}/artifacts/{digest}", self.public_url)],
            force_reinstall,
        };
        let payload = desired.to_cbor();
        batch.desired.push(DesiredRecord::new(
            device.as_str(),
            generation,
            Some(rid),
            digest,
            kind,
            payload.clone(),
            now,
        ));
        batch
            .publish
            .push((self.topics.device(device, TopicKind::Desired), payload));
    }

    /// A desired state of rollout `rid` goes to `device`: an aborted rollout that sent it back
    /// and still waits for its answer will not get one (the device acts on the newer state),
    /// so that recall is superseded.
    pub(super) fn supersede_recalls(&mut self, device: &DeviceId, rid: RolloutId) {
        for (id, loaded) in self.rollouts.iter_mut() {
            if *id != rid && loaded.planner.handle_recall_superseded(device) {
                loaded.dirty = true;
            }
        }
    }

    pub(super) async fn release_bytes(&mut self, digest: &Digest) -> Option<Arc<Vec<u8>>> {
        if *digest == NO_RELEASE {
            return None;
        }
        if let Some(cached) = self.releases.get(digest) {
            return cached.clone();
        }
        match self.db.get_release_bytes(digest).await {
            Ok(found) => {
                let found = found.map(Arc::new);
                self.releases.insert(*digest, found.clone());
                found
            }
            Err(e) => {
                tracing::error!("cannot read release {digest}: {e}");
                self.read_failed |= e.is_unavailable();
                None
            }
        }
    }
}

/// Whether a device in execution state `state` has the artifact in its cache: the states that
/// can carry a download's cost.
pub(super) fn after_download(state: &ExecutionState) -> bool {
    matches!(
        state,
        ExecutionState::Installing
            | ExecutionState::Trial
            | ExecutionState::Succeeded
            | ExecutionState::RolledBack { .. }
            | ExecutionState::Failed {
                phase: FailurePhase::Install | FailurePhase::Trial,
                ..
            }
    )
}

/// A download's cost in an audit event's details.
pub(super) fn transfer_json(t: &Transfer) -> serde_json::Value {
    json!({
        "fetched_bytes": t.fetched,
        "full_bytes": t.size,
        "saved_bytes": t.saved(),
    })
}

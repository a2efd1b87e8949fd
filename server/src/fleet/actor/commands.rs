//! Operator commands: create, approve, pause, resume and abort rollouts, flag edits and
//! views.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ota_core::digest::Digest;
use ota_core::filter::Filter;
use ota_core::flags::{FlagEdit, FlagName};
use ota_core::fleet::targeting::{FleetKnowledge, Selection};
use ota_core::fleet::{DeviceMemo, RolloutId, targeting};
use ota_core::release::SignedTrustUpdate;
use ota_core::rollout::{Rollout, RolloutSpec, RolloutState, RolloutStatus};
use ota_core::wire::DeviceId;
use serde_json::json;

use super::{Actor, Batch, Loaded, Reply, strip};
use crate::db::{DbTx, NewEvent, NewRollout, ReleaseRecord, RolloutRecord};
use crate::event_kinds::EventKind;
use crate::fleet::flags::{FlagDetail, FlagEditResult, FlagView};
use crate::fleet::view::RolloutView;
use crate::fleet::{Command, FleetError, Op, RolloutRequest, percent};

impl Actor {
    pub(super) async fn command(
        &mut self,
        cmd: Command,
        batch: &mut Batch,
        tx: &mut Option<DbTx>,
        replies: &mut Vec<Reply>,
    ) {
        match cmd {
            Command::Flag {
                name,
                edit,
                operator,
                reply,
            } => match self.edit_flag(&name, edit, &operator, batch).await {
                Ok(result) => replies.push(Reply::Flag(reply, Box::new(Ok(result)))),
                Err(e) => {
                    let e = Err(e);
                    self.note(&e);
                    let _ = reply.send(e);
                }
            },
            Command::FlagList { reply } => {
                let _ = reply.send(self.flags.list());
            }
            Command::FlagShow {
                name,
                device,
                reply,
            } => {
                let result = self.show_flag(&name, device.as_deref()).await;
                self.note(&result);
                let _ = reply.send(result);
            }
            Command::ReleaseChanged { digest } => {
                self.releases.remove(&digest);
            }
            Command::DeviceChanged { id } => {
                batch.flag_devices.insert(id);
            }
            Command::TrustChanged { payload } => {
                if let Some(payload) = self.accept_trust(payload) {
                    batch.trust = Some(payload);
                }
            }
            Command::Create {
                request,
                operator,
                reply,
            } => {
                let result = self.create(request, &operator, batch, tx).await;
                self.note(&result);
                match result {
                    Ok(id) => {
                        self.drain(&operator, batch).await;
                        replies.push(Reply::View(reply, Box::new(self.view_of(id, true))));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::Operate {
                id,
                op,
                operator,
                reply,
            } => match self.operate(id, &op, &operator, batch).await {
                Ok(()) => {
                    self.drain(&operator, batch).await;
                    replies.push(Reply::View(reply, Box::new(self.view_of(id, false))));
                }
                Err(e) => {
                    let e = Err(e);
                    self.note(&e);
                    let _ = reply.send(e);
                }
            },
        }
    }

    /// Takes a stored trust-set update as the one in force unless a newer one is (two
    /// rotations' notices may arrive out of order: the retained message must be the update
    /// in force); returns it to publish.
    pub(super) fn accept_trust(&mut self, payload: Vec<u8>) -> Option<Vec<u8>> {
        let sequence = |p: &[u8]| {
            SignedTrustUpdate::decode(p)
                .map(|s| s.update.sequence)
                .unwrap_or(0)
        };
        if self
            .trust
            .as_deref()
            .is_none_or(|current| sequence(&payload) > sequence(current))
        {
            self.trust = Some(payload.clone());
            return Some(payload);
        }
        None
    }

    /// Notes a command's failure to read the database: the batch is not stored.
    pub(super) fn note<T>(&mut self, result: &Result<T, FleetError>) {
        if let Err(FleetError::Db(e)) = result
            && e.is_unavailable()
        {
            self.read_failed = true;
        }
    }

    /// Applies an operator's flag edit: the change, its audit record and event go into the
    /// batch, and so do the flags of every device they change (published after the commit).
    pub(super) async fn edit_flag(
        &mut self,
        name: &FlagName,
        edit: FlagEdit,
        operator: &str,
        batch: &mut Batch,
    ) -> Result<FlagEditResult, FleetError> {
        let records = if self.flags.needs_records(name.as_str(), &edit) {
            Some(self.db.list_devices().await?)
        } else {
            None
        };
        let now = self.clock.timestamp();
        let Some((change, publish)) =
            self.flags
                .apply(name, edit, operator, now, records.as_deref())?
        else {
            return Ok(FlagEditResult {
                changed: false,
                version: self.flags.version(),
                flag: self.flags.view(name.as_str()),
                published: 0,
            });
        };
        let old = change.old.as_ref().map(FlagView::from);
        let new = change.new.as_ref().map(FlagView::from);
        batch.events.push(
            NewEvent::new(
                self.clock.now_i64(),
                operator,
                EventKind::of_flag_change(change.kind()),
            )
            .details(json!({
                "flag": name.as_str(),
                "version": change.version,
                "at_ms": change.at.as_unix_millis(),
                "old": old,
                "new": new,
            })),
        );
        let result = FlagEditResult {
            changed: true,
            version: change.version,
            flag: new,
            published: publish.len() as u64,
        };
        batch.publish.extend(
            publish
                .into_iter()
                .map(|(id, payload)| (self.topics.flags(&id), payload)),
        );
        batch.flag_changes.push(change);
        Ok(result)
    }

    pub(super) async fn show_flag(
        &mut self,
        name: &str,
        device: Option<&str>,
    ) -> Result<FlagDetail, FleetError> {
        let record = match device {
            Some(id) => Some(
                self.db
                    .get_device(id)
                    .await?
                    .ok_or_else(|| FleetError::DeviceNotFound(id.to_string()))?,
            ),
            None => None,
        };
        self.flags.show(name, record.as_ref())
    }

    pub(super) fn view_of(&self, id: RolloutId, created: bool) -> Result<RolloutView, FleetError> {
        let loaded = self
            .rollouts
            .get(&id)
            .ok_or(FleetError::RolloutNotFound(id))?;
        let mut view = RolloutView::new(&loaded.record, &loaded.planner, loaded.version.clone());
        if created {
            view.excluded = loaded.record.spec.get("excluded").cloned();
            view.conflicts = loaded.record.spec.get("conflicts").cloned();
            view.warnings = loaded.record.spec.get("warnings").cloned();
        }
        Ok(view)
    }

    pub(super) async fn resolve_release(
        &self,
        wanted: &str,
    ) -> Result<(ReleaseRecord, Vec<u8>), FleetError> {
        let wanted = wanted.trim();
        let record = if let Ok(digest) = wanted.parse::<Digest>() {
            self.db.get_release(&digest).await?
        } else {
            let matches: Vec<ReleaseRecord> = self
                .db
                .list_releases()
                .await?
                .into_iter()
                .filter(|r| r.version == wanted)
                .collect();
            if matches.len() > 1 {
                return Err(FleetError::AmbiguousRelease(wanted.to_string()));
            }
            matches.into_iter().next()
        };
        let record = record.ok_or_else(|| FleetError::ReleaseNotFound(wanted.to_string()))?;
        let bytes = self
            .db
            .get_release_bytes(&record.digest)
            .await?
            .ok_or_else(|| FleetError::ReleaseNotFound(wanted.to_string()))?;
        Ok((record, bytes))
    }

    pub(super) async fn create(
        &mut self,
        req: RolloutRequest,
        operator: &str,
        batch: &mut Batch,
        tx_slot: &mut Option<DbTx>,
    ) -> Result<RolloutId, FleetError> {
        let (release, bytes) = self.resolve_release(&req.release).await?;
        let warnings = expiry_warnings(&release, &req, self.clock.now())?;
        let filter_text = req.filter.trim();
        let filter = Filter::parse(if filter_text.is_empty() {
            "all"
        } else {
            filter_text
        })
        .map_err(|e| FleetError::BadFilter(e.to_string()))?;
        let mut spec = RolloutSpec::new("0", release.digest, operator);
        spec.waves = req
            .waves
            .iter()
            .map(|w| percent(*w, "a wave"))
            .collect::<Result<_, _>>()?;
        spec.bake_time = Duration::from_secs(req.bake_secs);
        spec.success_min = percent(req.success_min, "success-min")?;
        spec.max_failure = percent(req.max_failure, "max-failure")?;
        spec.min_executed = req.min_executed;
        spec.rate_per_minute = req.rate_per_minute;
        spec.inactivity_timeout = Duration::from_secs(req.inactivity_timeout_secs);
        spec.max_deferral = Duration::from_secs(req.max_deferral_secs);
        spec.force_reinstall = req.force_reinstall;
        spec.dry_run = req.dry_run;
        spec.validate()?;

        let registry = self.db.list_devices().await?;
        let known = Known {
            owner: &self.owner,
            devices: &self.devices,
        };
        let Selection {
            targets,
            matched,
            incompatible,
            conflicts,
        } = targeting::select(&registry, &filter, &release.hardware, &known);
        let conflicts: Vec<(String, RolloutId)> = conflicts
            .into_iter()
            .map(|(device, rollout)| (device.as_str().to_string(), rollout))
            .collect();
        if targets.is_empty() {
            return Err(FleetError::NoTargets {
                matched,
                incompatible,
            });
        }
        // A dry run notifies nobody, so it may plan over devices another rollout holds: it
        // answers the plan with the devices a real create would be refused for.
        if !conflicts.is_empty() && !req.dry_run {
            return Err(FleetError::Conflict(conflicts));
        }
        let mut spec_json = serde_json::to_value(&req).unwrap_or_else(|_| json!({}));
        if let Some(map) = spec_json.as_object_mut() {
            map.insert("release".into(), json!(release.digest.to_string()));
            map.insert(
                "excluded".into(),
                json!({ "incompatible_hardware": incompatible }),
            );
            if !warnings.is_empty() {
                map.insert("warnings".into(), json!(warnings));
            }
            if req.dry_run {
                let list: Vec<_> = conflicts
                    .iter()
                    .map(|(device, rollout)| json!({ "device": device, "rollout": rollout }))
                    .collect();
                map.insert("conflicts".into(), json!(list));
            }
        }
        let now = self.clock.now_i64();
        let mut tx = self.db.begin().await?;
        let new = NewRollout::new(
            release.digest,
            filter_text,
            spec_json.clone(),
            Vec::new(),
            RolloutStatus::AwaitingApproval,
            operator,
        );
        let id = tx.insert_rollout(&new, now).await?;
        spec.id = id.to_string();
        let planner = Rollout::new(spec, targets, self.clock.timestamp())?;
        let status = planner.status();
        let state = planner.state().name();
        batch.events.push(
            NewEvent::new(now, operator, EventKind::RolloutCreated)
                .rollout(id)
                .details(json!({
                    "release": release.digest.to_string(),
                    "version": release.version,
                    "filter": filter_text,
                    "targets": status.deploys + status.redeploys,
                    "deploys": status.deploys,
                    "redeploys": status.redeploys,
                    "excluded_incompatible_hardware": incompatible,
                    "dry_run": req.dry_run,
                    "conflicts": conflicts.len(),
                    "force_reinstall": req.force_reinstall,
                    "state": state,
                    "warnings": warnings,
                })),
        );
        if matches!(planner.state(), RolloutState::Running { .. }) {
            batch.events.push(
                NewEvent::new(now, operator, EventKind::RolloutStarted)
                    .rollout(id)
                    .details(json!({ "deploys": status.deploys, "redeploys": status.redeploys })),
            );
        }
        let record = RolloutRecord {
            id,
            release_digest: release.digest,
            filter: filter_text.to_string(),
            spec: spec_json,
            state: Vec::new(),
            status: planner.state().status(),
            created_by: operator.to_string(),
            approved_by: None,
            created_at: now,
            updated_at: now,
        };
        self.releases.insert(release.digest, Some(Arc::new(bytes)));
        self.insert_loaded(Loaded {
            record,
            planner,
            version: Some(release.version.clone()),
            dirty: true,
        });
        *tx_slot = Some(tx);
        Ok(id)
    }

    pub(super) async fn operate(
        &mut self,
        id: RolloutId,
        op: &Op,
        operator: &str,
        batch: &mut Batch,
    ) -> Result<(), FleetError> {
        if !self.rollouts.contains_key(&id) {
            let record = self
                .db
                .get_rollout(id)
                .await?
                .ok_or(FleetError::RolloutNotFound(id))?;
            let planner = Rollout::from_cbor(&record.state)?;
            let version = self
                .db
                .get_release(&record.release_digest)
                .await?
                .map(|r| r.version);
            // Kept until the end of this batch (a finished rollout is unloaded again).
            self.rollouts.insert(
                id,
                Loaded {
                    record: strip(record),
                    planner,
                    version,
                    dirty: false,
                },
            );
        }
        let now_ts = self.clock.timestamp();
        let now = self.clock.now_i64();
        let loaded = self
            .rollouts
            .get_mut(&id)
            .ok_or(FleetError::RolloutNotFound(id))?;
        let before = loaded.planner.state().clone();
        let kind = match op {
            Op::Approve => {
                loaded.planner.approve(operator, now_ts)?;
                batch.approved.push((id, operator.to_string()));
                loaded.record.approved_by = Some(operator.to_string());
                EventKind::RolloutApproved
            }
            Op::Pause => {
                loaded.planner.pause(now_ts)?;
                EventKind::RolloutPaused
            }
            Op::Resume => {
                loaded.planner.resume(now_ts)?;
                EventKind::RolloutResumed
            }
            Op::Abort(reason) => {
                let reason = if reason.trim().is_empty() {
                    format!("aborted by {operator}")
                } else {
                    reason.clone()
                };
                loaded.planner.abort(reason, now_ts)?;
                EventKind::RolloutAbortRequested
            }
        };
        if *loaded.planner.state() == before {
            // Idempotent repeat (pause of a paused rollout, ...): nothing to record.
            return Ok(());
        }
        loaded.dirty = true;
        batch.events.push(
            NewEvent::new(now, operator, kind)
                .rollout(id)
                .details(json!({
                    "from": before.name(),
                    "to": loaded.planner.state().name(),
                })),
        );
        if matches!(op, Op::Approve) {
            let status = loaded.planner.status();
            batch.events.push(
                NewEvent::new(now, operator, EventKind::RolloutStarted)
                    .rollout(id)
                    .details(json!({ "deploys": status.deploys, "redeploys": status.redeploys })),
            );
        }
        Ok(())
    }
}

/// Refuses a release that expired by `now` (unix seconds): devices would refuse it. Answers
/// a warning when it expires before the rollout can plausibly finish (one bake per wave).
pub(super) fn expiry_warnings(
    release: &ReleaseRecord,
    req: &RolloutRequest,
    now: u64,
) -> Result<Vec<String>, FleetError> {
    let Some(expires) = release.expires else {
        return Ok(Vec::new());
    };
    if now >= expires {
        return Err(FleetError::ReleaseExpired {
            version: release.version.clone(),
            expires,
        });
    }
    let waves = u64::try_from(req.waves.len()).unwrap_or(u64::MAX);
    let plausible = waves.saturating_mul(req.bake_secs);
    if now.saturating_add(plausible) > expires {
        return Ok(vec![format!(
            "release {} expires at {expires} (unix seconds), in {} s: before the rollout can \
             plausibly finish ({waves} wave(s) x {} s bake = {plausible} s); devices refuse it \
             once expired",
            release.version,
            expires - now,
            req.bake_secs,
        )]);
    }
    Ok(Vec::new())
}

/// What the coordinator knows of the fleet beyond the registry, for target selection: which
/// rollout holds a device and its presence as last heard.
struct Known<'a> {
    owner: &'a HashMap<String, RolloutId>,
    devices: &'a HashMap<String, DeviceMemo>,
}

impl FleetKnowledge<RolloutId> for Known<'_> {
    fn holder(&self, device: &DeviceId) -> Option<RolloutId> {
        self.owner.get(device.as_str()).copied()
    }
    fn presence(&self, device: &DeviceId) -> Option<bool> {
        self.devices.get(device.as_str()).map(|m| m.online)
    }
}

//! The JSON view of a rollout (`GET /api/v1/rollouts/{id}` and every rollout command's
//! answer), built from its row and its planner.

use ota_core::fleet::RolloutId;
use ota_core::rollout::{
    AbortReason, ExecutionState, NoRollbackCause, RecallCounts, Rollout, RolloutState,
    RolloutStatus, StateCounts, TargetView, WavePhase, WavePhaseKind,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::db::{RolloutRecord, TransferTotals};

/// A rollout: its row, its state and its counts per wave. Deserializes from the API's JSON
/// (clients may read it typed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RolloutView {
    /// The rollout id.
    pub id: RolloutId,
    /// The release's artifact sha256.
    pub release: String,
    /// The release's version, when known.
    pub version: Option<String>,
    /// The device filter.
    pub filter: String,
    /// Where it is: `dry-run`, `awaiting-approval`, `running`, `paused`, `completed` or
    /// `aborted` on the wire.
    pub status: RolloutStatus,
    /// The current wave, while running or paused.
    pub current_wave: Option<usize>,
    /// The current wave's phase (`notifying`, `baking` or `held` on the wire), while running
    /// or paused.
    pub phase: Option<WavePhaseKind>,
    /// When the bake ends (unix seconds, rounded up), while baking.
    pub bake_until: Option<u64>,
    /// Why it aborted.
    pub abort_reason: Option<Value>,
    /// After an abort: the devices left on the release because no rollback target they would
    /// accept exists, as `[{ "device", "cause", "message", ... }]` (see [`no_rollback_json`]);
    /// absent when there is none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub no_rollback_target: Vec<Value>,
    /// After an abort: the devices it sent back (rollback or cancel), as `{ "sent", "pending",
    /// "back", "failed", "superseded" }` (see [`recall_json`]); absent when it sent none back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recall: Option<Value>,
    /// Who created it.
    pub created_by: String,
    /// Who approved the forced reinstall.
    pub approved_by: Option<String>,
    /// Creation time, unix seconds.
    pub created_at: i64,
    /// Last change, unix seconds.
    pub updated_at: i64,
    /// The spec as requested (percentages, seconds).
    pub spec: Value,
    /// Target devices.
    pub targets: u32,
    /// Targets that install the release (another digest running).
    pub deploys: u32,
    /// Targets already running it (they report skipped-identical unless forced).
    pub redeploys: u32,
    /// Targets offline now.
    pub offline: u32,
    /// Counts per execution state over all targets.
    pub totals: Value,
    /// Per wave.
    pub waves: Vec<WaveView>,
    /// What the targets' downloads of the release cost (one per device and desired state, as
    /// first reported): filled by the API from the database, absent only when a command's
    /// answer could not read it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downloads: Option<TransferTotals>,
    /// Devices the filter matched but that were left out, by reason (only when created).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub excluded: Option<Value>,
    /// Only in a dry run's create answer: the targets already in another active rollout, as
    /// `[{ "device": ID, "rollout": ID }]` (a real create over them is refused with 409).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conflicts: Option<Value>,
    /// Only in the create answer: warnings (e.g. the release expires before the rollout can
    /// plausibly finish), as a list of sentences.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warnings: Option<Value>,
}

/// One wave of a [`RolloutView`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WaveView {
    /// Index, from 0.
    pub index: usize,
    /// Cumulative share, percent.
    pub share: f64,
    /// Devices first joining in this wave.
    pub members: u32,
    /// Devices in this wave and the earlier ones.
    pub cumulative_members: u32,
    /// Members that install the release.
    pub deploys: u32,
    /// Members already running it.
    pub redeploys: u32,
    /// Members not settled yet.
    pub unsettled: u32,
    /// Succeeded members gone offline: they hold the gate until back (or max-deferral).
    pub succeeded_offline: u32,
    /// Succeeded members whose heartbeats say their health probe fails now: no successes for
    /// the gate until they say healthy again.
    pub succeeded_unhealthy: u32,
    /// When it started (unix seconds).
    pub started_at: Option<u64>,
    /// Counts per execution state of its members.
    pub counts: Value,
}

/// Counts as JSON: one key per state; `failed` broken down by phase; `executed` and
/// `failures` added.
pub fn counts_json(c: &StateCounts) -> Value {
    let mut counts: serde_json::Map<String, Value> = c
        .by_state()
        .into_iter()
        .map(|(name, n)| (name.to_string(), json!(n)))
        .collect();
    let failed: serde_json::Map<String, Value> = c
        .failed_by_phase()
        .into_iter()
        .map(|(phase, n)| (phase.name().to_string(), json!(n)))
        .collect();
    counts.insert("failed".into(), Value::Object(failed));
    counts.insert("executed".into(), json!(c.executed()));
    counts.insert("failures".into(), json!(c.failures()));
    Value::Object(counts)
}

/// An abort reason as JSON.
pub fn abort_json(reason: &AbortReason) -> Value {
    match reason {
        AbortReason::FailureThreshold {
            failures,
            executed,
            max_failure,
        } => json!({
            "kind": "failure-threshold",
            "failures": failures,
            "executed": executed,
            "max_failure": max_failure.to_string(),
            "message": format!(
                "{failures} of {executed} executed devices failed, above max-failure {max_failure}"
            ),
        }),
        AbortReason::Operator { reason } => json!({
            "kind": "operator",
            "message": reason,
        }),
        _ => json!({ "kind": "other" }),
    }
}

/// An aborted rollout's recall counts: `{ "sent", "pending", "back", "failed", "superseded" }`
/// (pending: no final report on where the device was sent yet; failed: its return failed, it
/// may still run the release; superseded: another rollout's desired state replaced it first).
pub fn recall_json(c: &RecallCounts) -> Value {
    json!({
        "sent": c.sent(),
        "pending": c.pending,
        "back": c.back,
        "failed": c.failed,
        "superseded": c.superseded,
    })
}

/// A device with no rollback target as JSON: `device`, `cause` (kebab-case), a `message`
/// for people, and the cause's figures (`security_version` and `floor`, or `expires`).
pub fn no_rollback_json(device: &str, cause: &NoRollbackCause) -> Value {
    let message = match cause {
        NoRollbackCause::NoKnownGood => {
            "the device ran no release before this rollout: nothing to go back to".to_string()
        }
        NoRollbackCause::Unpublished => {
            "its known-good release is not published on this server".to_string()
        }
        NoRollbackCause::Untrusted => "the trust set in force does not verify its known-good \
            release (countersign it with the current keys)"
            .to_string(),
        NoRollbackCause::SecurityFloor {
            security_version,
            floor,
        } => format!(
            "its known-good release has security version {security_version}, below the \
             device's floor {floor}: the device refuses it as a downgrade"
        ),
        NoRollbackCause::Expired { expires } => {
            format!("its known-good release expired at {expires} (unix seconds)")
        }
        _ => "its known-good release cannot be used".to_string(),
    };
    let mut v = json!({ "device": device, "cause": cause.name(), "message": message });
    if let Some(map) = v.as_object_mut() {
        match cause {
            NoRollbackCause::SecurityFloor {
                security_version,
                floor,
            } => {
                map.insert("security_version".into(), json!(security_version));
                map.insert("floor".into(), json!(floor));
            }
            NoRollbackCause::Expired { expires } => {
                map.insert("expires".into(), json!(expires));
            }
            _ => {}
        }
    }
    v
}

fn share_percent(bp: u16) -> f64 {
    f64::from(bp) / 100.0
}

impl RolloutView {
    /// The view of `record` whose planner is `planner`; `version` is the release's version.
    pub fn new(record: &RolloutRecord, planner: &Rollout, version: Option<String>) -> Self {
        let status = planner.status();
        let (phase, bake_until) = match &status.state {
            RolloutState::Running { phase, .. } | RolloutState::Paused { phase, .. } => {
                let until = match phase {
                    WavePhase::Baking { until } => Some(until.as_unix_secs_ceil()),
                    _ => None,
                };
                (Some(phase.kind()), until)
            }
            _ => (None, None),
        };
        let abort_reason = match &status.state {
            RolloutState::Aborted { reason } => Some(abort_json(reason)),
            _ => None,
        };
        let waves = status
            .waves
            .iter()
            .map(|w| WaveView {
                index: w.index,
                share: share_percent(w.share.as_basis_points()),
                members: w.members,
                cumulative_members: w.cumulative_members,
                deploys: w.deploys,
                redeploys: w.redeploys,
                unsettled: w.unsettled,
                succeeded_offline: w.succeeded_offline,
                succeeded_unhealthy: w.succeeded_unhealthy,
                started_at: w.started_at.map(|t| t.as_unix_secs()),
                counts: counts_json(&w.counts),
            })
            .collect();
        RolloutView {
            id: record.id,
            release: record.release_digest.to_string(),
            version,
            filter: record.filter.clone(),
            status: status.state.status(),
            current_wave: status.current_wave,
            phase,
            bake_until,
            abort_reason,
            no_rollback_target: status
                .no_rollback_target
                .iter()
                .map(|n| no_rollback_json(n.device_id.as_str(), &n.cause))
                .collect(),
            recall: (status.recall.sent() > 0).then(|| recall_json(&status.recall)),
            created_by: record.created_by.clone(),
            approved_by: status.approved_by.clone().or(record.approved_by.clone()),
            created_at: record.created_at,
            updated_at: record.updated_at,
            spec: record.spec.clone(),
            targets: status.deploys + status.redeploys,
            deploys: status.deploys,
            redeploys: status.redeploys,
            offline: status.offline,
            totals: counts_json(&status.totals),
            waves,
            downloads: None,
            excluded: None,
            conflicts: None,
            warnings: None,
        }
    }
}

/// Adds a failed, rejected or rolled-back state's phase or cause and reason to a JSON object
/// (audit event details, a target's entry).
pub(crate) fn insert_failure(
    map: &mut serde_json::Map<String, serde_json::Value>,
    state: &ExecutionState,
) {
    match state {
        ExecutionState::Failed { phase, reason } => {
            map.insert("phase".into(), json!(phase.name()));
            map.insert("reason".into(), json!(reason));
        }
        ExecutionState::Rejected { cause, detail } => {
            map.insert("cause".into(), json!(cause.name()));
            map.insert("reason".into(), json!(detail));
        }
        ExecutionState::RolledBack { reason, detail } => {
            map.insert("cause".into(), json!(reason.name()));
            map.insert("reason".into(), json!(detail));
        }
        _ => {}
    }
}

/// One target of a rollout as JSON: `device`, `wave` (0-based), `state` (kebab-case) with the
/// failure's `phase` or `cause` and `reason`, and after an abort that sent it back
/// `recall: { "to", "state" }`.
pub fn target_json(t: &TargetView<'_>) -> Value {
    let mut entry = json!({
        "device": t.device_id.as_str(),
        "wave": t.wave,
        "state": t.state.name(),
    });
    if let Some(map) = entry.as_object_mut() {
        insert_failure(map, t.state);
        if let Some((to, state)) = t.recall {
            map.insert(
                "recall".into(),
                json!({ "to": to.to_string(), "state": state.name() }),
            );
        }
    }
    entry
}

//! The planner state machine: [`Rollout`].

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;
use core::mem::discriminant;
use core::time::Duration;

use minicbor::{Decode, Encode};

use super::cohort::{assign_cohorts, cohort_of, cohort_point};
use super::counts::{is_deferred, is_in_flight, took_release};
use super::no_rollback::{NoRollback, NoRollbackCause};
use super::recall::{Recall, RecallCounts, RecallState};
use super::status::{RolloutStatus, WavePhaseKind};
use super::{DesiredKind, MAX_WAVES, Ratio, RolloutError, RolloutSpec, StateCounts, Target};
use crate::digest::Digest;
use crate::time::Timestamp;
use crate::wire::{DeviceId, ExecutionState};

/// The width of the notification rate window.
const RATE_WINDOW: Duration = Duration::from_secs(60);
/// The planner state format this build writes and reads.
const STATE_VERSION: u16 = 1;

/// Where a rollout is (see the transition table in the [module docs](super)).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[non_exhaustive]
pub enum RolloutState {
    /// A dry run: the plan is computed, no device is ever notified. Final.
    #[n(0)]
    DryRun,
    /// A forced reinstall waits for a second operator's [`Rollout::approve`].
    #[n(1)]
    AwaitingApproval,
    /// Wave `wave` is under way.
    #[n(2)]
    Running {
        /// The current wave's index.
        #[n(0)]
        wave: usize,
        /// Where the current wave is.
        #[n(1)]
        phase: WavePhase,
    },
    /// Paused by an operator: no device is notified and no gate is passed; devices already
    /// notified carry on, their reports and timeouts are still handled, and the failure
    /// threshold still aborts.
    #[n(3)]
    Paused {
        /// The current wave's index.
        #[n(0)]
        wave: usize,
        /// Where the current wave is.
        #[n(1)]
        phase: WavePhase,
    },
    /// Every wave passed its gate. Devices that show up late are still notified and their
    /// reports recorded, but nothing is gated or aborted any more.
    #[n(4)]
    Completed,
    /// Aborted (by the failure threshold or an operator). Final: nothing is notified, gated
    /// or aborted again, but reports on the release still update the devices' states (the
    /// counts stay true), and the devices the abort sent back are followed until they are
    /// back ([`Status::recall`], [`Rollout::handle_recall_report`]).
    #[n(5)]
    Aborted {
        /// Why.
        #[n(0)]
        reason: AbortReason,
    },
}

impl RolloutState {
    /// The state without its details: what the server stores, lists and counts by.
    pub fn status(&self) -> RolloutStatus {
        match self {
            RolloutState::DryRun => RolloutStatus::DryRun,
            RolloutState::AwaitingApproval => RolloutStatus::AwaitingApproval,
            RolloutState::Running { .. } => RolloutStatus::Running,
            RolloutState::Paused { .. } => RolloutStatus::Paused,
            RolloutState::Completed => RolloutStatus::Completed,
            RolloutState::Aborted { .. } => RolloutStatus::Aborted,
        }
    }

    /// The state's kebab-case name ([`RolloutStatus::name`]).
    pub fn name(&self) -> &'static str {
        self.status().name()
    }

    /// Whether the rollout holds its targets ([`RolloutStatus::is_active`]).
    pub fn is_active(&self) -> bool {
        self.status().is_active()
    }

    /// The current wave, while running or paused.
    pub fn wave(&self) -> Option<usize> {
        match self {
            RolloutState::Running { wave, .. } | RolloutState::Paused { wave, .. } => Some(*wave),
            _ => None,
        }
    }
}

/// Where the current wave is.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[non_exhaustive]
pub enum WavePhase {
    /// Members are being notified (at the rate limit) and run the update; the wave waits until
    /// every member has settled (a final state, or deferred/unreachable past max-deferral).
    #[n(0)]
    Notifying,
    /// Every member settled; the wave is watched until `until` (the bake time after the last
    /// member settled; no bake at all when no member of this wave executed the release).
    #[n(1)]
    Baking {
        /// When the gate is judged.
        #[n(0)]
        until: Timestamp,
    },
    /// The gate was judged and not met (success below success-min). Re-judged on every
    /// report; an operator may abort.
    #[n(2)]
    Held,
}

impl WavePhase {
    /// The phase without its details, by name.
    pub fn kind(&self) -> WavePhaseKind {
        match self {
            WavePhase::Notifying => WavePhaseKind::Notifying,
            WavePhase::Baking { .. } => WavePhaseKind::Baking,
            WavePhase::Held => WavePhaseKind::Held,
        }
    }
}

/// Why a rollout aborted.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[non_exhaustive]
pub enum AbortReason {
    /// Failures exceeded max-failure after min-executed devices executed.
    #[n(0)]
    FailureThreshold {
        /// Failed devices (rejected, failed, rolled back, timed out).
        #[n(0)]
        failures: u32,
        /// Executed devices (succeeded + failures).
        #[n(1)]
        executed: u32,
        /// The spec's max-failure.
        #[n(2)]
        max_failure: Ratio,
    },
    /// An operator aborted.
    #[n(1)]
    Operator {
        /// The operator's reason.
        #[n(0)]
        reason: String,
    },
}

/// What the server must do, drained with [`Rollout::poll_action`].
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[non_exhaustive]
pub enum PlannerAction {
    /// Publish the device's desired state: this rollout's release (with `force_reinstall` from
    /// the spec).
    #[n(0)]
    Notify {
        /// The device.
        #[cbor(n(0), with = "crate::rollout::codec::device_id")]
        device_id: DeviceId,
    },
    /// The rollout aborted and the device took the release: set its desired state back to its
    /// known-good release.
    #[n(1)]
    Rollback {
        /// The device.
        #[cbor(n(0), with = "crate::rollout::codec::device_id")]
        device_id: DeviceId,
        /// The known-good release's artifact digest.
        #[n(1)]
        to_digest: Digest,
    },
    /// The rollout aborted and the device was notified but never wrote the release: set its
    /// desired state back to what it runs, so it stops.
    #[n(2)]
    Cancel {
        /// The device.
        #[cbor(n(0), with = "crate::rollout::codec::device_id")]
        device_id: DeviceId,
        /// The digest the device ran when the rollout was created.
        #[n(1)]
        to_digest: Digest,
    },
    /// A wave started: its new members are queued for notification.
    #[n(3)]
    WaveStarted {
        /// The wave's index.
        #[n(0)]
        index: usize,
    },
    /// Wave `from` passed its gate; wave `to` starts next.
    #[n(4)]
    WaveAdvanced {
        /// The wave that passed.
        #[n(0)]
        from: usize,
        /// The next wave.
        #[n(1)]
        to: usize,
    },
    /// A wave's gate was judged and not met (alert an operator).
    #[n(5)]
    WaveHeld {
        /// The wave's index.
        #[n(0)]
        index: usize,
        /// Succeeded devices in the wave (cumulative).
        #[n(1)]
        succeeded: u32,
        /// Executed devices in the wave (cumulative).
        #[n(2)]
        executed: u32,
    },
    /// The last wave passed its gate.
    #[n(6)]
    Completed,
    /// The rollout aborted.
    #[n(7)]
    Aborted {
        /// Why.
        #[n(0)]
        reason: AbortReason,
    },
    /// A device's execution state changed (for the audit log).
    #[n(8)]
    StateChanged {
        /// The device.
        #[cbor(n(0), with = "crate::rollout::codec::device_id")]
        device_id: DeviceId,
        /// The state before.
        #[n(1)]
        old: ExecutionState,
        /// The state now.
        #[n(2)]
        new: ExecutionState,
    },
    /// A device the abort sent back reported a final state on its recall target: it is back,
    /// or its return failed (for the audit log).
    #[n(9)]
    Recalled {
        /// The device.
        #[cbor(n(0), with = "crate::rollout::codec::device_id")]
        device_id: DeviceId,
        /// Where it was sent back to.
        #[n(1)]
        to_digest: Digest,
        /// Its recall state now.
        #[n(2)]
        state: RecallState,
        /// The state it reported on the target.
        #[n(3)]
        report: ExecutionState,
    },
}

/// What [`Rollout::handle_report`] did with a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReportOutcome {
    /// The device's state changed.
    Applied,
    /// Same state kind with newer details (download progress, a new power reading): recorded,
    /// and it counts as activity for the inactivity timeout.
    Progress,
    /// The device is already in exactly this state: nothing changed.
    Duplicate,
    /// The report is older than what is known (e.g. a final state followed by a progress
    /// state, or download progress going backwards): nothing changed.
    Stale,
    /// The rollout does not take the report: a report on the release in a dry run or while
    /// awaiting approval, or a recall report that is not about a device's recall target.
    Ignored,
}

/// Counts and progress of one wave's cohort (the devices that first join in this wave).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WaveStatus {
    /// The wave's index.
    pub index: usize,
    /// The wave's cumulative share of the targets.
    pub share: Ratio,
    /// Devices that first join in this wave.
    pub members: u32,
    /// Devices in this wave including the earlier ones.
    pub cumulative_members: u32,
    /// Members whose running digest differs from the release.
    pub deploys: u32,
    /// Members already running the release.
    pub redeploys: u32,
    /// Members per execution state.
    pub counts: StateCounts,
    /// Members that have not settled yet (they block the gate once the wave started).
    pub unsettled: u32,
    /// Succeeded members that went offline while the rollout ran: no longer reporting, they
    /// hold the gate of this wave and later ones until they are back online or have been away
    /// for max-deferral.
    pub succeeded_offline: u32,
    /// Succeeded members whose heartbeats say their health probe fails now: not successes for
    /// the gate until they say healthy again.
    pub succeeded_unhealthy: u32,
    /// When the wave started, if it did.
    pub started_at: Option<Timestamp>,
}

/// A snapshot of a rollout for operators ([`Rollout::status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Status {
    /// The rollout's id.
    pub id: String,
    /// Where the rollout is.
    pub state: RolloutState,
    /// The current wave, while running or paused.
    pub current_wave: Option<usize>,
    /// Per wave cohort.
    pub waves: Vec<WaveStatus>,
    /// Over all targets.
    pub totals: StateCounts,
    /// Targets whose running digest differs from the release (they will install it).
    pub deploys: u32,
    /// Targets already running the release (they report skipped-identical, or reinstall when
    /// forced).
    pub redeploys: u32,
    /// Targets currently offline.
    pub offline: u32,
    /// The operator who approved a forced reinstall.
    pub approved_by: Option<String>,
    /// After an abort: the devices left on the release because no rollback target they would
    /// accept exists, with why.
    pub no_rollback_target: Vec<NoRollback>,
    /// After an abort: the devices it sent back (rollback or cancel), by where they are.
    pub recall: RecallCounts,
}

/// One target as the rollout sees it ([`Rollout::targets`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct TargetView<'a> {
    /// The device.
    pub device_id: &'a DeviceId,
    /// The first wave it is in.
    pub wave: usize,
    /// Its execution state in this rollout.
    pub state: &'a ExecutionState,
    /// After an abort that sent it back: where to, and its recall state.
    pub recall: Option<(Digest, RecallState)>,
}

/// One target device's planner record (persisted).
#[derive(Debug, Clone, Encode, Decode)]
#[cbor(map)]
struct Device {
    #[cbor(n(0), with = "crate::rollout::codec::device_id")]
    id: DeviceId,
    #[n(1)]
    running: Digest,
    #[n(2)]
    known_good: Digest,
    /// The first wave the device is in.
    #[n(3)]
    cohort: usize,
    #[n(4)]
    state: ExecutionState,
    #[n(5)]
    online: bool,
    /// Reached a final state or waited past max-deferral once: never blocks a gate again.
    #[n(6)]
    settled: bool,
    /// Reported a state showing it wrote the release.
    #[n(7)]
    took_release: bool,
    /// Its desired state was set to the release (it left `queued`).
    #[n(8)]
    notified: bool,
    /// Last state change, progress, or return online: the inactivity timeout's base.
    #[n(9)]
    since: Timestamp,
    /// Since when it has been deferred, or unreachable in a started wave.
    #[n(10)]
    waiting_since: Option<Timestamp>,
    /// Since when it has been offline after it succeeded, while running or paused: it holds
    /// the gate until it is back online or this is max-deferral old. Optional, so states
    /// written before the field existed decode (as `None`) and states without any such device
    /// encode exactly as before.
    #[n(11)]
    away_since: Option<Timestamp>,
    /// Since when it has said "unhealthy" in its heartbeats after it succeeded, while running
    /// or paused: not a success for the gate until it says healthy again (issue 17). Optional,
    /// like `away_since`.
    #[n(12)]
    unhealthy_since: Option<Timestamp>,
    /// After an abort that sent the device back: where to and where it is. Optional, like
    /// `away_since`.
    #[n(13)]
    recall: Option<Recall>,
    /// The newest report taken from the device on the release: its generation and device
    /// time ([`Rollout::is_fresh_report`]). Optional, like `away_since`.
    #[n(14)]
    newest_report: Option<(u64, u64)>,
    /// The same for its reports on its recall target ([`Rollout::is_fresh_recall_report`]).
    #[n(15)]
    newest_recall_report: Option<(u64, u64)>,
}

/// Everything that is persisted; the rest of [`Rollout`] is derived from it.
#[derive(Debug, Clone, Encode, Decode)]
#[cbor(map)]
struct Persisted {
    #[n(0)]
    version: u16,
    #[n(1)]
    spec: RolloutSpec,
    #[n(2)]
    state: RolloutState,
    #[n(3)]
    created_at: Timestamp,
    #[n(4)]
    approved_by: Option<String>,
    #[n(5)]
    wave_started: Vec<Option<Timestamp>>,
    /// Sorted by device id at creation; added targets are appended.
    #[n(6)]
    devices: Vec<Device>,
    /// Notification times within the last rate window.
    #[n(7)]
    rate_log: VecDeque<Timestamp>,
    /// Actions not yet drained.
    #[n(8)]
    actions: VecDeque<PlannerAction>,
    /// After an abort: devices left on the release, with no rollback target they would
    /// accept. Optional, so states written before the field existed decode (as `None`) and
    /// states without any such device encode exactly as before.
    #[n(9)]
    no_rollback: Option<Vec<NoRollback>>,
}

/// The kinds of per-device timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    /// In flight with no progress for the inactivity timeout: becomes timed-out.
    Inactivity,
    /// Deferred or unreachable for max-deferral: stops blocking the gate.
    Release,
    /// Succeeded, then offline for max-deferral: stops holding the gate.
    Away,
}

/// Per wave cohort aggregates, maintained incrementally.
#[derive(Debug, Clone, Default)]
struct Cohort {
    counts: StateCounts,
    members: u32,
    redeploys: u32,
    /// Members not settled.
    unsettled: u32,
    /// Members with `away_since` set.
    away: u32,
    /// Members with `unhealthy_since` set.
    unhealthy: u32,
}

/// The fleet server's rollout planner for one rollout: sans-IO, deterministic given (state,
/// inputs, `now`), and persistable whole with [`to_cbor`](Self::to_cbor) /
/// [`from_cbor`](Self::from_cbor).
///
/// Inputs go in through `handle_*` and the operator methods, each taking `now`; what the
/// server must do comes out of [`poll_action`](Self::poll_action); the next deadline comes out
/// of [`poll_timeout`](Self::poll_timeout), to be fed back to
/// [`handle_timeout`](Self::handle_timeout). See the [module docs](super) for the rules.
///
/// Costs: creation and each wave start are O(N log N); a report, a presence change or a
/// notification is O(log N + waves); [`status`](Self::status) is O(waves).
#[derive(Debug, Clone)]
pub struct Rollout {
    p: Persisted,
    index: BTreeMap<DeviceId, u32>,
    points: Vec<u64>,
    cohorts: Vec<Cohort>,
    /// Online queued devices, in notification order: (cohort, point, device).
    queue: BTreeSet<(usize, u64, u32)>,
    /// The timer table: (deadline, device, kind).
    timers: BTreeSet<(Timestamp, u32, TimerKind)>,
    /// Each device's entry in `timers`, if any.
    deadlines: Vec<Option<(Timestamp, TimerKind)>>,
    /// Targets currently offline.
    offline: u32,
    /// The devices' recall states, counted.
    recalls: RecallCounts,
}

impl Rollout {
    /// Creates a rollout of `spec` over `targets` at `now`.
    ///
    /// Assigns cohorts, counts deploys and redeploys, and then: a dry run stays
    /// [`RolloutState::DryRun`]; a forced reinstall waits in
    /// [`RolloutState::AwaitingApproval`]; anything else starts wave 0 at once (its first
    /// notifications are ready in [`poll_action`](Self::poll_action)).
    pub fn new(
        spec: RolloutSpec,
        targets: Vec<Target>,
        now: Timestamp,
    ) -> Result<Self, RolloutError> {
        spec.validate()?;
        if u32::try_from(targets.len()).is_err() {
            return Err(RolloutError::TooManyDevices);
        }
        let mut sorted: BTreeMap<DeviceId, Target> = BTreeMap::new();
        for t in targets {
            if sorted.contains_key(&t.device_id) {
                return Err(RolloutError::DuplicateDevice(t.device_id));
            }
            sorted.insert(t.device_id.clone(), t);
        }
        let cohorts = assign_cohorts(&spec.id, &spec.waves, sorted.keys().map(DeviceId::as_str));
        let devices = sorted
            .into_values()
            .zip(cohorts)
            .map(|(t, cohort)| Device {
                id: t.device_id,
                running: t.running_digest,
                known_good: t.known_good,
                cohort,
                state: ExecutionState::Queued,
                online: t.online,
                settled: false,
                took_release: false,
                notified: false,
                since: now,
                waiting_since: None,
                away_since: None,
                unhealthy_since: None,
                recall: None,
                newest_report: None,
                newest_recall_report: None,
            })
            .collect();
        let state = if spec.dry_run {
            RolloutState::DryRun
        } else {
            RolloutState::AwaitingApproval
        };
        let start = !spec.dry_run && !spec.force_reinstall;
        let wave_started = alloc::vec![None; spec.waves.len()];
        let mut rollout = Rollout::from_persisted(Persisted {
            version: STATE_VERSION,
            spec,
            state,
            created_at: now,
            approved_by: None,
            wave_started,
            devices,
            rate_log: VecDeque::new(),
            actions: VecDeque::new(),
            no_rollback: None,
        })?;
        if start {
            rollout.start(now);
        }
        Ok(rollout)
    }

    /// The spec.
    pub fn spec(&self) -> &RolloutSpec {
        &self.p.spec
    }

    /// Where the rollout is.
    pub fn state(&self) -> &RolloutState {
        &self.p.state
    }

    /// Whether the coordinator must keep driving this rollout: an active one; a completed one
    /// while some target is still queued (late devices are notified); an aborted one while
    /// some device it sent back has not reported where it was sent (its reports keep the
    /// rollout's counts and recall true).
    pub fn needs_driving(&self) -> bool {
        match self.state() {
            RolloutState::Completed => self.status().totals.queued > 0,
            RolloutState::Aborted { .. } => self.status().recall.pending > 0,
            state => state.is_active(),
        }
    }

    /// A device's execution state, if it is a target.
    pub fn device_state(&self, device: &DeviceId) -> Option<&ExecutionState> {
        self.device(device).map(|d| &d.state)
    }

    /// Every target device, in the order they were added.
    pub fn devices(&self) -> impl Iterator<Item = &DeviceId> {
        self.p.devices.iter().map(|d| &d.id)
    }

    /// Every target as the rollout sees it (its execution state, its wave, its recall), in
    /// the planner's order (by id for the targets given at creation, then the ones added).
    pub fn targets(&self) -> impl Iterator<Item = TargetView<'_>> {
        self.p.devices.iter().map(|d| TargetView {
            device_id: &d.id,
            wave: d.cohort,
            state: &d.state,
            recall: d.recall.map(|r| (r.to, r.state)),
        })
    }

    /// A device's wave cohort (the first wave it is in), if it is a target.
    pub fn device_wave(&self, device: &DeviceId) -> Option<usize> {
        self.device(device).map(|d| d.cohort)
    }

    /// The next action for the server, in order; `None` when there is nothing to do now.
    pub fn poll_action(&mut self) -> Option<PlannerAction> {
        self.p.actions.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called (an inactivity or
    /// deferral deadline, the end of a bake, or a free slot in the rate window); `None` when no
    /// timer is armed.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let device = self.timers.first().map(|(t, _, _)| *t);
        let bake = match &self.p.state {
            RolloutState::Running {
                phase: WavePhase::Baking { until },
                ..
            } => Some(*until),
            _ => None,
        };
        let rate = match (self.notify_limit(), self.p.rate_log.front()) {
            (Some(limit), Some(oldest))
                if self.p.rate_log.len() >= self.rate()
                    && self.queue.first().is_some_and(|(c, _, _)| *c <= limit) =>
            {
                Some(oldest.saturating_add(RATE_WINDOW))
            }
            _ => None,
        };
        [device, bake, rate].into_iter().flatten().min()
    }

    /// Fires every timer due at `now`: in-flight devices without progress become timed-out,
    /// deferred or unreachable devices stop blocking the gate, succeeded devices away for
    /// max-deferral stop holding it, bakes end, rate slots free up.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        while let Some(&(at, idx, kind)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            if let Some(d) = self.deadlines.get_mut(idx as usize) {
                *d = None;
            }
            match kind {
                TimerKind::Inactivity => self.set_state(idx, ExecutionState::TimedOut, now),
                TimerKind::Release => {
                    self.settle(idx);
                    self.refresh_timer(idx);
                }
                TimerKind::Away => {
                    self.clear_away(idx);
                    self.refresh_timer(idx);
                }
            }
        }
        self.step(now);
    }

    /// A device reported an execution state (only reports about this rollout's release: the
    /// server filters on the report's rollout id and digest).
    ///
    /// Idempotent: a duplicate changes nothing. Final states stick, except `succeeded` →
    /// `rolled-back` (a device that regressed) and `timed-out` → anything (a late device).
    pub fn handle_report(
        &mut self,
        device: &DeviceId,
        state: ExecutionState,
        now: Timestamp,
    ) -> Result<ReportOutcome, RolloutError> {
        let idx = self.lookup(device)?;
        if matches!(state, ExecutionState::Queued | ExecutionState::TimedOut) {
            return Err(RolloutError::NotReportable(state.name()));
        }
        if matches!(
            self.p.state,
            RolloutState::DryRun | RolloutState::AwaitingApproval
        ) {
            return Ok(ReportOutcome::Ignored);
        }
        let Some(dev) = self.p.devices.get_mut(idx as usize) else {
            return Err(RolloutError::UnknownDevice(device.clone()));
        };
        let old = &dev.state;
        if *old == state {
            return Ok(ReportOutcome::Duplicate);
        }
        if discriminant(old) == discriminant(&state) {
            let forward = match (old, &state) {
                (
                    ExecutionState::Downloading { done: before, .. },
                    ExecutionState::Downloading { done: after, .. },
                ) => after > before,
                _ => !old.is_final(),
            };
            if !forward {
                return Ok(ReportOutcome::Stale);
            }
            dev.state = state;
            dev.since = now;
            self.refresh_timer(idx);
            return Ok(ReportOutcome::Progress);
        }
        let accepted = match old {
            ExecutionState::TimedOut => true,
            ExecutionState::Succeeded => matches!(state, ExecutionState::RolledBack { .. }),
            other => !other.is_final(),
        };
        if !accepted {
            return Ok(ReportOutcome::Stale);
        }
        self.set_state(idx, state, now);
        if !matches!(self.p.state, RolloutState::Aborted { .. }) {
            self.step(now);
        }
        Ok(ReportOutcome::Applied)
    }

    /// After an abort: a device it sent back reported `state` on the release `digest` (the
    /// server routes a report of this rollout whose digest is not the release's here). Moves
    /// the device's recall along the table in [`RecallState`]'s module docs and, when that
    /// changes it, queues [`PlannerAction::Recalled`]. [`ReportOutcome::Ignored`] when the
    /// rollout is not aborted or `digest` is not where the device was sent back to;
    /// [`ReportOutcome::Duplicate`] when nothing changed. Idempotent.
    pub fn handle_recall_report(
        &mut self,
        device: &DeviceId,
        digest: Digest,
        state: ExecutionState,
    ) -> Result<ReportOutcome, RolloutError> {
        let idx = self.lookup(device)?;
        if matches!(state, ExecutionState::Queued | ExecutionState::TimedOut) {
            return Err(RolloutError::NotReportable(state.name()));
        }
        if !matches!(self.p.state, RolloutState::Aborted { .. }) {
            return Ok(ReportOutcome::Ignored);
        }
        let Some(d) = self.p.devices.get_mut(idx as usize) else {
            return Err(RolloutError::UnknownDevice(device.clone()));
        };
        let Some(recall) = d.recall.as_mut().filter(|r| r.to == digest) else {
            return Ok(ReportOutcome::Ignored);
        };
        let Some(next) = recall.state.after(&state) else {
            return Ok(ReportOutcome::Duplicate);
        };
        self.recalls.remove(recall.state);
        self.recalls.add(next);
        recall.state = next;
        self.p.actions.push_back(PlannerAction::Recalled {
            device_id: device.clone(),
            to_digest: digest,
            state: next,
            report: state,
        });
        Ok(ReportOutcome::Applied)
    }

    /// Where the abort sent `device` back, and how (a rollback if it took the release, a
    /// cancel if not), while its recall is pending: what to send it again if it never acted on
    /// the desired state that sent it back.
    pub fn pending_recall(&self, device: &DeviceId) -> Option<(Digest, DesiredKind)> {
        let d = self.device(device)?;
        let recall = d.recall.filter(|r| r.state == RecallState::Pending)?;
        let kind = if d.took_release {
            DesiredKind::Rollback
        } else {
            DesiredKind::Cancel
        };
        Some((recall.to, kind))
    }

    /// Whether a report of `device` on this rollout's release (for [`Rollout::handle_report`]),
    /// for `generation` and made at device time `at`, is at least as new as every one this
    /// rollout took from it; if so it is now the newest. Stored with the rollout, so a
    /// restarted server still drops a report older than one it took before (an event that was
    /// still on its way). True for a device that is no target (the handlers refuse it).
    pub fn is_fresh_report(&mut self, device: &DeviceId, generation: u64, at: u64) -> bool {
        self.take_if_newer(device, generation, at, |d| &mut d.newest_report)
    }

    /// The same for a report on the release an abort sent `device` back to (for
    /// [`Rollout::handle_recall_report`]). Kept apart: the device's last reports on the
    /// release (an older generation) may arrive after its first ones on the recall, and still
    /// tell where it got with the release.
    pub fn is_fresh_recall_report(&mut self, device: &DeviceId, generation: u64, at: u64) -> bool {
        self.take_if_newer(device, generation, at, |d| &mut d.newest_recall_report)
    }

    fn take_if_newer(
        &mut self,
        device: &DeviceId,
        generation: u64,
        at: u64,
        newest: impl FnOnce(&mut Device) -> &mut Option<(u64, u64)>,
    ) -> bool {
        let Some(dev) = self
            .index
            .get(device)
            .and_then(|idx| self.p.devices.get_mut(*idx as usize))
        else {
            return true;
        };
        let newest = newest(dev);
        let key = (generation, at);
        if newest.is_some_and(|seen| key < seen) {
            return false;
        }
        *newest = Some(key);
        true
    }

    /// After an abort: the server sent `device` a newer desired state (another rollout's)
    /// before it answered the one that sent it back, so its recall is
    /// [`RecallState::Superseded`]. Whether anything changed (a device not sent back, or whose
    /// recall is over, is left alone). Idempotent.
    pub fn handle_recall_superseded(&mut self, device: &DeviceId) -> bool {
        let Some(idx) = self.index.get(device).copied() else {
            return false;
        };
        let Some(recall) = self
            .p
            .devices
            .get_mut(idx as usize)
            .and_then(|d| d.recall.as_mut())
        else {
            return false;
        };
        let Some(next) = recall.state.superseded() else {
            return false;
        };
        self.recalls.remove(recall.state);
        self.recalls.add(next);
        recall.state = next;
        true
    }

    /// The device connected (its status went online). Queued devices are only notified while
    /// online; an in-flight device's inactivity timer restarts (it now sees its desired
    /// state); a succeeded device stops holding the gate. Idempotent.
    pub fn handle_device_online(
        &mut self,
        device: &DeviceId,
        now: Timestamp,
    ) -> Result<(), RolloutError> {
        let idx = self.lookup(device)?;
        // Only an offline device is away, so this is a no-op for a duplicate.
        self.clear_away(idx);
        let point = self.point(idx);
        let aborted = matches!(
            self.p.state,
            RolloutState::Aborted { .. } | RolloutState::DryRun
        );
        let Some(dev) = self.p.devices.get_mut(idx as usize) else {
            return Err(RolloutError::UnknownDevice(device.clone()));
        };
        if dev.online {
            return Ok(());
        }
        dev.online = true;
        self.offline = self.offline.saturating_sub(1);
        if dev.state == ExecutionState::Queued {
            dev.waiting_since = None;
            if !aborted {
                self.queue.insert((dev.cohort, point, idx));
            }
        } else if is_in_flight(&dev.state) {
            dev.since = now;
        }
        self.refresh_timer(idx);
        self.step(now);
        Ok(())
    }

    /// The device disconnected (its last will). A queued device is not notified while
    /// offline; in a started wave it counts as unreachable and stops blocking the gate after
    /// max-deferral. A succeeded device of a running or paused rollout is no longer reporting
    /// its health: it holds the gate until it is back online, or for max-deferral. Idempotent.
    pub fn handle_device_offline(
        &mut self,
        device: &DeviceId,
        now: Timestamp,
    ) -> Result<(), RolloutError> {
        let idx = self.lookup(device)?;
        let point = self.point(idx);
        let started = self.current_wave();
        let Some(dev) = self.p.devices.get_mut(idx as usize) else {
            return Err(RolloutError::UnknownDevice(device.clone()));
        };
        if !dev.online {
            return Ok(());
        }
        dev.online = false;
        self.offline += 1;
        if dev.state == ExecutionState::Queued {
            self.queue.remove(&(dev.cohort, point, idx));
            if started.is_some_and(|w| dev.cohort <= w) && !dev.settled {
                dev.waiting_since = Some(now);
            }
        } else if dev.state == ExecutionState::Succeeded && started.is_some() {
            dev.away_since = Some(now);
            if let Some(c) = self.cohorts.get_mut(dev.cohort) {
                c.away += 1;
            }
        }
        self.refresh_timer(idx);
        self.step(now);
        Ok(())
    }

    /// The device's heartbeat said what its health probe last answered about the release it
    /// runs (issue 17: agents keep probing after the commit). A succeeded device of a running
    /// or paused rollout that says "unhealthy" is no success for the gate until it says
    /// healthy again (a held wave is judged again at once). Other devices' health changes
    /// nothing here: their reports tell. Idempotent.
    pub fn handle_device_health(
        &mut self,
        device: &DeviceId,
        healthy: bool,
        now: Timestamp,
    ) -> Result<(), RolloutError> {
        let idx = self.lookup(device)?;
        if healthy {
            self.clear_unhealthy(idx);
        } else {
            let started = self.current_wave().is_some();
            let Some(d) = self.p.devices.get_mut(idx as usize) else {
                return Err(RolloutError::UnknownDevice(device.clone()));
            };
            if started && d.state == ExecutionState::Succeeded && d.unhealthy_since.is_none() {
                d.unhealthy_since = Some(now);
                if let Some(c) = self.cohorts.get_mut(d.cohort) {
                    c.unhealthy += 1;
                }
            }
        }
        self.step(now);
        Ok(())
    }

    /// Adds a target to a created rollout (e.g. a device enrolled that matches the rollout's
    /// filter). Its cohort comes from its own hash only, so no other device moves; if its wave
    /// has started, it is queued for notification (and blocks that wave's gate like any member).
    pub fn add_target(&mut self, target: Target, now: Timestamp) -> Result<(), RolloutError> {
        if matches!(
            self.p.state,
            RolloutState::DryRun | RolloutState::Aborted { .. }
        ) {
            return Err(self.invalid("add a target to"));
        }
        if self.index.contains_key(&target.device_id) {
            return Err(RolloutError::DuplicateDevice(target.device_id));
        }
        let idx = u32::try_from(self.p.devices.len()).map_err(|_| RolloutError::TooManyDevices)?;
        let point = cohort_point(&self.p.spec.id, target.device_id.as_str());
        let cohort = cohort_of(point, &self.p.spec.waves);
        self.p.devices.push(Device {
            id: target.device_id.clone(),
            running: target.running_digest,
            known_good: target.known_good,
            cohort,
            state: ExecutionState::Queued,
            online: target.online,
            settled: false,
            took_release: false,
            notified: false,
            since: now,
            waiting_since: None,
            away_since: None,
            unhealthy_since: None,
            recall: None,
            newest_report: None,
            newest_recall_report: None,
        });
        self.index.insert(target.device_id, idx);
        self.points.push(point);
        self.deadlines.push(None);
        let redeploy = target.running_digest == self.p.spec.release;
        if let Some(c) = self.cohorts.get_mut(cohort) {
            c.members += 1;
            c.unsettled += 1;
            c.redeploys += u32::from(redeploy);
            c.counts.add(&ExecutionState::Queued);
        }
        if target.online {
            self.queue.insert((cohort, point, idx));
        } else {
            self.offline += 1;
            if self.current_wave().is_some_and(|w| cohort <= w)
                && let Some(d) = self.p.devices.get_mut(idx as usize)
            {
                d.waiting_since = Some(now);
            }
            self.refresh_timer(idx);
        }
        self.step(now);
        Ok(())
    }

    /// Approves a forced reinstall and starts wave 0. The approver must not be the creator.
    pub fn approve(&mut self, operator: &str, now: Timestamp) -> Result<(), RolloutError> {
        if self.p.state != RolloutState::AwaitingApproval {
            return Err(self.invalid("approve"));
        }
        if operator.is_empty() || operator.len() > crate::wire::WireLimits::MAX_ID_BYTES {
            return Err(RolloutError::BadOperator);
        }
        if operator == self.p.spec.created_by {
            return Err(RolloutError::SelfApproval);
        }
        self.p.approved_by = Some(String::from(operator));
        self.start(now);
        Ok(())
    }

    /// Pauses a running rollout (idempotent on a paused one).
    pub fn pause(&mut self, now: Timestamp) -> Result<(), RolloutError> {
        let _ = now;
        match &self.p.state {
            RolloutState::Running { wave, phase } => {
                self.p.state = RolloutState::Paused {
                    wave: *wave,
                    phase: phase.clone(),
                };
                Ok(())
            }
            RolloutState::Paused { .. } => Ok(()),
            _ => Err(self.invalid("pause")),
        }
    }

    /// Resumes a paused rollout (idempotent on a running one): notifications and gates carry
    /// on from where they were.
    pub fn resume(&mut self, now: Timestamp) -> Result<(), RolloutError> {
        match &self.p.state {
            RolloutState::Paused { wave, phase } => {
                self.p.state = RolloutState::Running {
                    wave: *wave,
                    phase: phase.clone(),
                };
                self.step(now);
                Ok(())
            }
            RolloutState::Running { .. } => Ok(()),
            _ => Err(self.invalid("resume")),
        }
    }

    /// Aborts the rollout for an operator's `reason`: every device that took the release is
    /// sent back to its known-good release (idempotent on an aborted rollout).
    pub fn abort(&mut self, reason: impl Into<String>, now: Timestamp) -> Result<(), RolloutError> {
        match &self.p.state {
            RolloutState::AwaitingApproval
            | RolloutState::Running { .. }
            | RolloutState::Paused { .. } => {
                self.abort_with(
                    AbortReason::Operator {
                        reason: reason.into(),
                    },
                    now,
                );
                Ok(())
            }
            RolloutState::Aborted { .. } => Ok(()),
            _ => Err(self.invalid("abort")),
        }
    }

    /// Counts per state per wave, failures by phase, the current wave, deploys vs redeploys.
    pub fn status(&self) -> Status {
        let mut totals = StateCounts::default();
        let mut cumulative = 0u32;
        let mut waves = Vec::with_capacity(self.cohorts.len());
        for (index, (c, share)) in self.cohorts.iter().zip(&self.p.spec.waves).enumerate() {
            totals.merge(&c.counts);
            cumulative += c.members;
            waves.push(WaveStatus {
                index,
                share: *share,
                members: c.members,
                cumulative_members: cumulative,
                deploys: c.members.saturating_sub(c.redeploys),
                redeploys: c.redeploys,
                counts: c.counts,
                unsettled: c.unsettled,
                succeeded_offline: c.away,
                succeeded_unhealthy: c.unhealthy,
                started_at: self.p.wave_started.get(index).copied().flatten(),
            });
        }
        let redeploys = self.cohorts.iter().map(|c| c.redeploys).sum();
        Status {
            id: self.p.spec.id.clone(),
            state: self.p.state.clone(),
            current_wave: self.p.state.wave(),
            waves,
            totals,
            deploys: cumulative.saturating_sub(redeploys),
            redeploys,
            offline: self.offline,
            approved_by: self.p.approved_by.clone(),
            no_rollback_target: self.p.no_rollback.clone().unwrap_or_default(),
            recall: self.recalls,
        }
    }

    /// Records that `device`, sent back by this rollout's abort ([`PlannerAction::Rollback`]),
    /// has no rollback target it would accept (the server found why: `cause`): it stays on
    /// the release and is listed in [`Status::no_rollback_target`], and no longer counts in
    /// [`Status::recall`] (nothing is sent to it). Idempotent (the latest cause wins). Only for
    /// targets of an aborted rollout.
    pub fn handle_no_rollback_target(
        &mut self,
        device: &DeviceId,
        cause: NoRollbackCause,
    ) -> Result<(), RolloutError> {
        if !matches!(self.p.state, RolloutState::Aborted { .. }) {
            return Err(self.invalid("record a missing rollback target"));
        }
        let idx = self.lookup(device)?;
        // Nothing is sent to the device: it is no longer followed as sent back.
        if let Some(recall) = self
            .p
            .devices
            .get_mut(idx as usize)
            .and_then(|d| d.recall.take())
        {
            self.recalls.remove(recall.state);
        }
        let list = self.p.no_rollback.get_or_insert_with(Vec::new);
        match list.iter_mut().find(|n| n.device_id == *device) {
            Some(entry) => entry.cause = cause,
            None => list.push(NoRollback {
                device_id: device.clone(),
                cause,
            }),
        }
        Ok(())
    }

    /// Encodes the whole planner state (spec, devices, timers' bases, rate window, undrained
    /// actions) as CBOR, for the server's database.
    pub fn to_cbor(&self) -> Vec<u8> {
        // Encoding into a Vec cannot fail: the writer is infallible.
        minicbor::to_vec(&self.p).unwrap_or_default()
    }

    /// Decodes a planner state written by [`to_cbor`](Self::to_cbor) and rebuilds its
    /// indexes; the rollout continues exactly where it was.
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, RolloutError> {
        let mut d = minicbor::Decoder::new(bytes);
        let p: Persisted = d
            .decode()
            .map_err(|_| RolloutError::Corrupt("not a rollout state"))?;
        if d.position() != bytes.len() {
            return Err(RolloutError::Corrupt("trailing bytes"));
        }
        Self::from_persisted(p)
    }

    // ----- internals -----

    /// Validates persisted state and builds the derived indexes.
    fn from_persisted(p: Persisted) -> Result<Self, RolloutError> {
        if p.version != STATE_VERSION {
            return Err(RolloutError::UnsupportedVersion(p.version));
        }
        p.spec.validate()?;
        let waves = p.spec.waves.len();
        if p.wave_started.len() != waves {
            return Err(RolloutError::Corrupt(
                "wave start list does not match the waves",
            ));
        }
        if p.state.wave().is_some_and(|w| w >= waves) {
            return Err(RolloutError::Corrupt("current wave out of range"));
        }
        if u32::try_from(p.devices.len()).is_err() {
            return Err(RolloutError::TooManyDevices);
        }
        let mut rollout = Rollout {
            index: BTreeMap::new(),
            points: Vec::with_capacity(p.devices.len()),
            cohorts: alloc::vec![Cohort::default(); waves],
            queue: BTreeSet::new(),
            timers: BTreeSet::new(),
            deadlines: alloc::vec![None; p.devices.len()],
            offline: 0,
            recalls: RecallCounts::default(),
            p,
        };
        let aborted = matches!(
            rollout.p.state,
            RolloutState::Aborted { .. } | RolloutState::DryRun
        );
        for (idx, d) in (0u32..).zip(&rollout.p.devices) {
            if rollout.index.insert(d.id.clone(), idx).is_some() {
                return Err(RolloutError::DuplicateDevice(d.id.clone()));
            }
            let point = cohort_point(&rollout.p.spec.id, d.id.as_str());
            rollout.points.push(point);
            let c = rollout
                .cohorts
                .get_mut(d.cohort)
                .ok_or(RolloutError::Corrupt("device cohort out of range"))?;
            c.members += 1;
            c.redeploys += u32::from(d.running == rollout.p.spec.release);
            c.unsettled += u32::from(!d.settled);
            if d.away_since.is_some() {
                if d.online || d.state != ExecutionState::Succeeded {
                    return Err(RolloutError::Corrupt(
                        "an away device must be offline and succeeded",
                    ));
                }
                c.away += 1;
            }
            if d.unhealthy_since.is_some() {
                if d.state != ExecutionState::Succeeded {
                    return Err(RolloutError::Corrupt(
                        "an unhealthy device must be succeeded",
                    ));
                }
                c.unhealthy += 1;
            }
            c.counts.add(&d.state);
            if let Some(recall) = &d.recall {
                rollout.recalls.add(recall.state);
            }
            rollout.offline += u32::from(!d.online);
            if !aborted && d.online && d.state == ExecutionState::Queued {
                rollout.queue.insert((d.cohort, point, idx));
            }
        }
        rollout.rebuild_timers();
        Ok(rollout)
    }

    /// Starts wave 0 (after creation, or after approval).
    fn start(&mut self, now: Timestamp) {
        self.p.state = RolloutState::Running {
            wave: 0,
            phase: WavePhase::Notifying,
        };
        self.start_wave(0, now);
        self.step(now);
    }

    /// Marks wave `index` started: its offline queued members start their unreachable clock.
    fn start_wave(&mut self, index: usize, now: Timestamp) {
        if let Some(s) = self.p.wave_started.get_mut(index) {
            *s = Some(now);
        }
        self.p
            .actions
            .push_back(PlannerAction::WaveStarted { index });
        for idx in 0..self.p.devices.len() as u32 {
            let Some(d) = self.p.devices.get_mut(idx as usize) else {
                continue;
            };
            if d.cohort != index {
                continue;
            }
            if d.state == ExecutionState::Queued && !d.online && !d.settled {
                d.waiting_since = Some(now);
            }
            self.refresh_timer(idx);
        }
    }

    /// Runs the gates until nothing changes, then notifies what the rate allows.
    fn step(&mut self, now: Timestamp) {
        // Each round either returns false or moves to a later phase or wave, so this ends well
        // before the bound.
        for _ in 0..(3 * MAX_WAVES + 3) {
            if !self.advance_once(now) {
                break;
            }
        }
        self.pump(now);
    }

    /// One gate evaluation; true if the phase or wave changed.
    fn advance_once(&mut self, now: Timestamp) -> bool {
        let (wave, phase, paused) = match &self.p.state {
            RolloutState::Running { wave, phase } => (*wave, phase.clone(), false),
            RolloutState::Paused { wave, phase } => (*wave, phase.clone(), true),
            _ => return false,
        };
        if let Some(reason) = self.failure_threshold_crossed() {
            self.abort_with(reason, now);
            return false;
        }
        let unsettled = self.through(wave).map(|c| c.unsettled).sum::<u32>();
        match phase {
            WavePhase::Notifying => {
                if unsettled > 0 {
                    return false;
                }
                let executed = self.cohorts.get(wave).map_or(0, |c| c.counts.executed());
                let until = if executed > 0 {
                    now.saturating_add(self.p.spec.bake_time)
                } else {
                    now
                };
                self.set_phase(WavePhase::Baking { until });
                true
            }
            // Only a target added to a started wave can unsettle it again.
            WavePhase::Baking { .. } | WavePhase::Held if unsettled > 0 => {
                self.set_phase(WavePhase::Notifying);
                true
            }
            WavePhase::Baking { until } => {
                if paused || now < until {
                    return false;
                }
                if self.gate_passes(wave) {
                    self.advance_wave(wave, now);
                    return true;
                }
                let (succeeded, executed) = self.success(wave);
                self.set_phase(WavePhase::Held);
                self.p.actions.push_back(PlannerAction::WaveHeld {
                    index: wave,
                    succeeded,
                    executed,
                });
                false
            }
            WavePhase::Held => {
                if paused || !self.gate_passes(wave) {
                    return false;
                }
                self.advance_wave(wave, now);
                true
            }
        }
    }

    /// Cohorts 0..=wave.
    fn through(&self, wave: usize) -> impl Iterator<Item = &Cohort> {
        self.cohorts.iter().take(wave.saturating_add(1))
    }

    /// (succeeded, executed) over the wave (cumulative); a succeeded member that says it is
    /// unhealthy now is executed but no success.
    fn success(&self, wave: usize) -> (u32, u32) {
        self.through(wave).fold((0, 0), |(s, e), c| {
            (
                s + c.counts.succeeded.saturating_sub(c.unhealthy),
                e + c.counts.executed(),
            )
        })
    }

    /// The gate: no succeeded member away (offline, not yet past max-deferral), and success
    /// among executed members ≥ success-min (vacuous with none executed).
    fn gate_passes(&self, wave: usize) -> bool {
        let away = self.through(wave).map(|c| c.away).sum::<u32>();
        let (succeeded, executed) = self.success(wave);
        away == 0 && (executed == 0 || self.p.spec.success_min.is_met_by(succeeded, executed))
    }

    fn failure_threshold_crossed(&self) -> Option<AbortReason> {
        let mut totals = StateCounts::default();
        let mut redeploys = 0;
        let mut members = 0;
        for c in &self.cohorts {
            totals.merge(&c.counts);
            redeploys += c.redeploys;
            members += c.members;
        }
        let installing = if self.p.spec.force_reinstall {
            members
        } else {
            members.saturating_sub(redeploys)
        };
        let min = self.p.spec.min_executed.min(installing).max(1);
        let (failures, executed) = (totals.failures(), totals.executed());
        (executed >= min && self.p.spec.max_failure.is_exceeded_by(failures, executed)).then_some(
            AbortReason::FailureThreshold {
                failures,
                executed,
                max_failure: self.p.spec.max_failure,
            },
        )
    }

    fn set_phase(&mut self, new: WavePhase) {
        match &mut self.p.state {
            RolloutState::Running { phase, .. } | RolloutState::Paused { phase, .. } => {
                *phase = new
            }
            _ => {}
        }
    }

    fn advance_wave(&mut self, wave: usize, now: Timestamp) {
        let next = wave + 1;
        if next < self.p.spec.waves.len() {
            self.p.actions.push_back(PlannerAction::WaveAdvanced {
                from: wave,
                to: next,
            });
            self.p.state = RolloutState::Running {
                wave: next,
                phase: WavePhase::Notifying,
            };
            self.start_wave(next, now);
        } else {
            self.p.state = RolloutState::Completed;
            self.p.actions.push_back(PlannerAction::Completed);
            self.rebuild_timers();
        }
    }

    fn abort_with(&mut self, reason: AbortReason, now: Timestamp) {
        let _ = now;
        self.p.state = RolloutState::Aborted {
            reason: reason.clone(),
        };
        self.p.actions.push_back(PlannerAction::Aborted { reason });
        let release = self.p.spec.release;
        let force = self.p.spec.force_reinstall;
        for d in self.p.devices.iter_mut() {
            if !d.notified || (d.running == release && !force) {
                continue;
            }
            let (to, action) = if d.took_release {
                // A device that rolled back by itself already runs its known-good release:
                // sending it there again would only overwrite its real outcome.
                if d.known_good == release || matches!(d.state, ExecutionState::RolledBack { .. }) {
                    continue;
                }
                let to_digest = d.known_good;
                let device_id = d.id.clone();
                (
                    to_digest,
                    PlannerAction::Rollback {
                        device_id,
                        to_digest,
                    },
                )
            } else if d.running != release {
                let to_digest = d.running;
                let device_id = d.id.clone();
                (
                    to_digest,
                    PlannerAction::Cancel {
                        device_id,
                        to_digest,
                    },
                )
            } else {
                continue;
            };
            d.recall = Some(Recall {
                to,
                state: RecallState::Pending,
            });
            self.recalls.add(RecallState::Pending);
            self.p.actions.push_back(action);
        }
        self.queue.clear();
        self.rebuild_timers();
    }

    /// The highest cohort that may be notified now (`None`: nobody).
    fn notify_limit(&self) -> Option<usize> {
        match &self.p.state {
            RolloutState::Running { wave, .. } => Some(*wave),
            RolloutState::Completed => Some(usize::MAX),
            _ => None,
        }
    }

    fn rate(&self) -> usize {
        self.p.spec.rate_per_minute as usize
    }

    /// Notifies queued devices of started waves, in (cohort, point) order, while the sliding
    /// 60 s window has room.
    fn pump(&mut self, now: Timestamp) {
        let Some(limit) = self.notify_limit() else {
            return;
        };
        while let Some(oldest) = self.p.rate_log.front() {
            if oldest.saturating_add(RATE_WINDOW) <= now {
                self.p.rate_log.pop_front();
            } else {
                break;
            }
        }
        while self.p.rate_log.len() < self.rate() {
            let Some(&(cohort, _, idx)) = self.queue.first() else {
                break;
            };
            if cohort > limit {
                break;
            }
            self.queue.pop_first();
            self.p.rate_log.push_back(now);
            self.set_state(idx, ExecutionState::Notified, now);
            if let Some(d) = self.p.devices.get(idx as usize) {
                self.p.actions.push_back(PlannerAction::Notify {
                    device_id: d.id.clone(),
                });
            }
        }
    }

    /// Moves a device to a new state kind, keeping counts, queue, timers and flags in step,
    /// and records the change for the audit log.
    fn set_state(&mut self, idx: u32, new: ExecutionState, now: Timestamp) {
        let point = self.point(idx);
        // Away and unhealthy are only ever a succeeded device's conditions.
        self.clear_away(idx);
        self.clear_unhealthy(idx);
        let Some(d) = self.p.devices.get_mut(idx as usize) else {
            return;
        };
        let old = core::mem::replace(&mut d.state, new.clone());
        if let Some(c) = self.cohorts.get_mut(d.cohort) {
            c.counts.remove(&old);
            c.counts.add(&new);
        }
        if old == ExecutionState::Queued {
            self.queue.remove(&(d.cohort, point, idx));
        }
        d.notified = true;
        d.since = now;
        d.waiting_since = if !is_deferred(&new) {
            None
        } else if is_deferred(&old) {
            d.waiting_since.or(Some(now))
        } else {
            Some(now)
        };
        d.took_release |= took_release(&new);
        let id = d.id.clone();
        if new.is_final() {
            self.settle(idx);
        }
        self.refresh_timer(idx);
        self.p.actions.push_back(PlannerAction::StateChanged {
            device_id: id,
            old,
            new,
        });
    }

    /// The device stops blocking gates (once).
    fn settle(&mut self, idx: u32) {
        if let Some(d) = self.p.devices.get_mut(idx as usize)
            && !d.settled
        {
            d.settled = true;
            if let Some(c) = self.cohorts.get_mut(d.cohort) {
                c.unsettled = c.unsettled.saturating_sub(1);
            }
        }
    }

    /// The device stops holding the gate as a succeeded device away.
    fn clear_away(&mut self, idx: u32) {
        if let Some(d) = self.p.devices.get_mut(idx as usize)
            && d.away_since.take().is_some()
            && let Some(c) = self.cohorts.get_mut(d.cohort)
        {
            c.away = c.away.saturating_sub(1);
        }
    }

    /// The device is no longer an unhealthy succeeded device.
    fn clear_unhealthy(&mut self, idx: u32) {
        if let Some(d) = self.p.devices.get_mut(idx as usize)
            && d.unhealthy_since.take().is_some()
            && let Some(c) = self.cohorts.get_mut(d.cohort)
        {
            c.unhealthy = c.unhealthy.saturating_sub(1);
        }
    }

    /// The current wave while running or paused.
    fn current_wave(&self) -> Option<usize> {
        self.p.state.wave()
    }

    /// The device's timer, if one applies (see [`TimerKind`]).
    fn deadline(&self, idx: u32) -> Option<(Timestamp, TimerKind)> {
        let d = self.p.devices.get(idx as usize)?;
        let spec = &self.p.spec;
        match &self.p.state {
            RolloutState::Running { .. }
            | RolloutState::Paused { .. }
            | RolloutState::Completed => {}
            _ => return None,
        }
        if let Some(since) = d.away_since {
            return self
                .current_wave()
                .is_some()
                .then(|| (since.saturating_add(spec.max_deferral), TimerKind::Away));
        }
        if is_in_flight(&d.state) {
            return Some((
                d.since.saturating_add(spec.inactivity_timeout),
                TimerKind::Inactivity,
            ));
        }
        let started = self.current_wave().is_some_and(|w| d.cohort <= w);
        let waiting = is_deferred(&d.state) || (d.state == ExecutionState::Queued && !d.online);
        (started && waiting && !d.settled).then(|| {
            let base = d.waiting_since.unwrap_or(d.since);
            (base.saturating_add(spec.max_deferral), TimerKind::Release)
        })
    }

    /// Re-derives one device's timer-table entry.
    fn refresh_timer(&mut self, idx: u32) {
        let new = self.deadline(idx);
        let Some(slot) = self.deadlines.get_mut(idx as usize) else {
            return;
        };
        if *slot == new {
            return;
        }
        if let Some((at, kind)) = slot.take() {
            self.timers.remove(&(at, idx, kind));
        }
        if let Some((at, kind)) = new {
            self.timers.insert((at, idx, kind));
        }
        *slot = new;
    }

    fn rebuild_timers(&mut self) {
        self.timers.clear();
        self.deadlines.iter_mut().for_each(|d| *d = None);
        for idx in 0..self.p.devices.len() as u32 {
            self.refresh_timer(idx);
        }
    }

    fn point(&self, idx: u32) -> u64 {
        self.points.get(idx as usize).copied().unwrap_or_default()
    }

    fn lookup(&self, device: &DeviceId) -> Result<u32, RolloutError> {
        self.index
            .get(device)
            .copied()
            .ok_or_else(|| RolloutError::UnknownDevice(device.clone()))
    }

    fn device(&self, device: &DeviceId) -> Option<&Device> {
        self.index
            .get(device)
            .and_then(|idx| self.p.devices.get(*idx as usize))
    }

    fn invalid(&self, operation: &'static str) -> RolloutError {
        RolloutError::InvalidOperation {
            operation,
            state: self.p.state.name(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every state maps to its own status, in lifecycle order (`/metrics` and the
    /// coordinator's loaded statuses read [`RolloutStatus::ALL`]).
    #[test]
    fn every_state_has_its_own_status() {
        let states = [
            RolloutState::DryRun,
            RolloutState::AwaitingApproval,
            RolloutState::Running {
                wave: 0,
                phase: WavePhase::Notifying,
            },
            RolloutState::Paused {
                wave: 0,
                phase: WavePhase::Notifying,
            },
            RolloutState::Completed,
            RolloutState::Aborted {
                reason: AbortReason::Operator {
                    reason: String::new(),
                },
            },
        ];
        let statuses: Vec<RolloutStatus> = states.iter().map(RolloutState::status).collect();
        assert_eq!(statuses, RolloutStatus::ALL);
    }
}

//! The fleet server's rollout planner: cohorts, waves, gates, abort — pure and sans-IO.
//!
//! A [`Rollout`] decides which target devices get a release and when; the server persists its
//! state ([`Rollout::to_cbor`]) and moves messages. It never reads a clock: every input takes
//! `now` ([`Timestamp`], unix milliseconds). The full description, with examples, is in
//! `docs/rollouts.md`.
//!
//! ```text
//! server                                   planner
//! ------                                   -------
//! Rollout::new(spec, targets, now)  ---->  cohorts, deploys/redeploys, wave 0 starts
//! device report / online / offline  ---->  handle_report / handle_device_online / _offline
//! report on a recall target         ---->  handle_recall_report (after an abort)
//! operator                          ---->  approve / pause / resume / abort / add_target
//! sleep_until(poll_timeout())       ---->  handle_timeout(now)
//! publish, audit, persist           <----  poll_action(): Notify, Rollback, Cancel, WaveStarted,
//!                                          WaveAdvanced, WaveHeld, Completed, Aborted, StateChanged,
//!                                          Recalled
//! ```
//!
//! # Rollout states
//!
//! | from                          | event                                                      | to                                |
//! |-------------------------------|------------------------------------------------------------|-----------------------------------|
//! | (created)                     | `new`, dry run                                             | dry-run (final)                   |
//! | (created)                     | `new`, forced reinstall                                    | awaiting-approval                 |
//! | (created)                     | `new`                                                      | running(0, notifying)             |
//! | awaiting-approval             | `approve(op)`, op ≠ creator                                | running(0, notifying)             |
//! | awaiting-approval             | `approve(creator)`                                         | awaiting-approval (`SelfApproval`)|
//! | running(i, notifying)         | every member of waves 0..=i settled, wave i executed ≥ 1   | running(i, baking until now+bake) |
//! | running(i, notifying)         | every member settled, nobody in wave i executed            | running(i, baking until now)      |
//! | running(i, baking)            | bake over, gate met, i < last                              | running(i+1, notifying)           |
//! | running(i, baking)            | bake over, gate met, i = last                              | completed                         |
//! | running(i, baking)            | bake over, gate not met                                    | running(i, held)                  |
//! | running(i, held)              | a report, presence or health change or timer meets the gate| as from baking with gate met      |
//! | running(i, baking \| held)     | a target added to waves 0..=i                              | running(i, notifying)             |
//! | running(i, p)                 | `pause`                                                    | paused(i, p)                      |
//! | paused(i, p)                  | `resume`                                                   | running(i, p), gates re-judged    |
//! | running \| paused             | failures / executed > max-failure, executed ≥ min-executed | aborted(failure threshold)        |
//! | awaiting-approval \| running \| paused | `abort(reason)`                                   | aborted(operator)                 |
//!
//! While paused, the phase may still go from notifying to baking (devices already notified
//! carry on, timers run), but no device is notified and no gate is passed. Completed, aborted
//! and dry-run are final; a completed rollout still notifies devices that come online late.
//!
//! # Device execution states
//!
//! The per-device state is [`crate::wire::ExecutionState`] (re-exported here), the same enum
//! agents report: `queued` (planner only) → `notified` → `deferred-*` / `downloading` /
//! `installing` / `trial` → `succeeded` | `skipped-identical` | `rejected` | `failed(phase)` |
//! `rolled-back` | `timed-out` (planner only). Final states stick, except `succeeded` →
//! `rolled-back` (a regression) and `timed-out` → anything (a late device). Identical reports
//! are duplicates and change nothing; same-kind reports with newer details (download bytes)
//! are progress.
//!
//! # Rules
//!
//! - **Cohorts** ([`cohort_point`]): a device is in wave `i` iff its hash fraction is below
//!   wave `i`'s share; sticky under target-set changes; the first wave is never empty.
//! - **Settled**: a device in a started wave is settled once it reached a final state, or once
//!   it was deferred (or queued while offline) for `max_deferral`. A wave's phase leaves
//!   notifying when all its members (cumulative) are settled; settled is for good.
//! - **Gate**: after the bake, succeeded / executed over the wave's (cumulative) members ≥
//!   `success_min`, where executed = succeeded + rejected + failed + rolled-back + timed-out.
//!   Skipped-identical and deferred devices are no evidence; with no executed device the gate
//!   is met at once, and a wave none of whose own members executed has no bake. A succeeded
//!   device that later rolls back leaves the succeeded count, so the gate sees it. A succeeded
//!   device that goes offline while running or paused is *away* and holds the gate (it is no
//!   longer reporting) until it is back online or has been away for `max_deferral`. A
//!   succeeded device whose heartbeats say its health probe fails
//!   ([`Rollout::handle_device_health`]) is executed but no success until it says healthy
//!   again; it is no failure for the abort threshold (the agent keeps the release it
//!   committed, and the operator sees it in [`WaveStatus::succeeded_unhealthy`]).
//! - **Abort**: failures / executed over the whole rollout > `max_failure` once executed ≥
//!   `min(min_executed, devices that will install)`. Every notified device that took the
//!   release (reached installing or later) gets [`PlannerAction::Rollback`] to its known-good
//!   release, except devices that rolled back by themselves (they already run it); notified
//!   devices that never wrote it get [`PlannerAction::Cancel`] back to what they run. The
//!   server checks each rollback target against what the device would accept (trust set in
//!   force, security floor, expiry); a device with none is recorded with
//!   [`Rollout::handle_no_rollback_target`] and listed in [`Status::no_rollback_target`].
//! - **Recall** (after an abort, [`RecallState`]): every device sent back by a rollback or a
//!   cancel is *pending* until it reports a final state on the digest it was sent back to
//!   ([`Rollout::handle_recall_report`]): `succeeded` / `skipped-identical` → *back*,
//!   `rejected` / `failed` / `rolled-back` → *failed* (a later success still makes it back).
//!   [`Status::recall`] counts them, so an aborted rollout says how many devices are back, not
//!   only `aborted`. Reports on the release itself keep updating the device states after the
//!   abort (a device that finishes its trial shows as succeeded, then its rollback as back).
//! - **Timeouts**: an in-flight device (notified, downloading, installing, trial) with no state
//!   change or progress for `inactivity_timeout` becomes timed-out.
//! - **Rate**: at most `rate_per_minute` notifications in any sliding 60 s window; queued
//!   devices are notified in (wave, hash) order, online ones only.

mod codec;
mod cohort;
mod counts;
mod desired_kind;
mod error;
mod no_rollback;
mod planner;
mod recall;
mod spec;
mod status;

pub use cohort::{assign_cohorts, cohort_of, cohort_point, in_share};
pub use counts::{FAILURE_PHASES, STATE_NAMES, StateCounts};
pub use desired_kind::DesiredKind;
pub use error::RolloutError;
pub use no_rollback::{NoRollback, NoRollbackCause};
pub use planner::{
    AbortReason, PlannerAction, ReportOutcome, Rollout, RolloutState, Status, TargetView,
    WavePhase, WaveStatus,
};
pub use recall::{RecallCounts, RecallState};
pub use spec::{DEFAULT_MIN_EXECUTED, MAX_WAVES, Ratio, RolloutSpec, Target};
pub use status::{RolloutStatus, WavePhaseKind};

/// The per-device execution states, shared with the wire protocol.
pub use crate::wire::{ExecutionState, FailurePhase};

pub use crate::time::Timestamp;

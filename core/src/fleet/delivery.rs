//! An outcome report's way into the rollout its `rollout_id` names: [routing](super::routing)
//! (is it the rollout's at all, its device state or the recall of an abort), then freshness
//! (a report older than one the rollout already took on the same route is dropped:
//! [`Rollout::is_fresh_report`], [`Rollout::is_fresh_recall_report`], stored with the rollout
//! so it holds across a server restart), then the planner.
//!
//! | step | drops it as |
//! |---|---|
//! | [`route`](super::routing::route) says not ours | [`Delivery::NotOurs`] |
//! | older, by `(generation, device time)`, than the newest report the rollout took from the device on the same route | [`Delivery::Stale`] |
//! | the planner refuses it (not a target, not reportable) | [`Delivery::Refused`] |
//! | otherwise | [`Delivery::Handled`] with what the planner made of it |
//!
//! A report that acknowledges a generation never issued to the device is not delivered at all
//! (the shell refuses it, and [`Generations::acknowledge`] may move the device's watermark);
//! [`reissue_above_watermark`] then says what the rollout must send the device again, above the
//! watermark.

use super::Generations;
use super::routing::{self, RolloutFacts, Route};
use crate::digest::Digest;
use crate::rollout::{DesiredKind, ReportOutcome, Rollout, RolloutError, RolloutState};
use crate::time::Timestamp;
use crate::wire::{DeviceId, ExecutionState, UpdateOutcome};

/// What became of an outcome report (see the [module documentation](self)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Not the rollout's: dropped.
    NotOurs,
    /// Older than a report of the device the rollout already took on the same route: dropped.
    Stale,
    /// The planner took it.
    Handled(ReportOutcome),
    /// The planner refused it (the shell records the refusal).
    Refused(RolloutError),
}

impl Delivery {
    /// Whether the planner's state changed (it has actions to poll, and state to store).
    pub fn changed(&self) -> bool {
        matches!(
            self,
            Delivery::Handled(ReportOutcome::Applied | ReportOutcome::Progress)
        )
    }
}

/// Hands outcome `o` of `device` to `planner` (the rollout `o` names), at `now`.
pub fn deliver(
    planner: &mut Rollout,
    generations: &Generations,
    device: &DeviceId,
    o: &UpdateOutcome,
    now: Timestamp,
) -> Delivery {
    let facts = RolloutFacts {
        release: planner.spec().release,
        aborted: matches!(planner.state(), RolloutState::Aborted { .. }),
        holds_device: planner.device_state(device).is_some(),
    };
    let recall = match routing::route(o, facts, generations.issued(device)) {
        Route::NotOurs => return Delivery::NotOurs,
        Route::Report => None,
        Route::Recall(to) => Some(to),
    };
    let (generation, at) = (o.generation, o.at);
    let handled = match recall {
        Some(to) if planner.is_fresh_recall_report(device, generation, at) => {
            planner.handle_recall_report(device, to, o.state.clone())
        }
        None if planner.is_fresh_report(device, generation, at) => {
            planner.handle_report(device, o.state.clone(), now)
        }
        _ => return Delivery::Stale,
    };
    match handled {
        Ok(outcome) => Delivery::Handled(outcome),
        Err(e) => Delivery::Refused(e),
    }
}

/// What `planner`'s rollout must issue to `device` again, if anything: the device acted on a
/// generation above the last one issued to it, or on another release under it
/// ([`Generations::is_ahead`]: someone else's desired state reached it first), so it ignores
/// the one it holds. While the rollout is active and waits for the device (it was notified,
/// and its state there is not final): the rollout's release. After an abort, while the device's recall is
/// pending: where the abort sent it back ([`Rollout::pending_recall`]).
pub fn reissue_above_watermark(
    generations: &Generations,
    planner: &Rollout,
    device: &DeviceId,
) -> Option<(Digest, DesiredKind)> {
    if !generations.is_ahead(device) {
        return None;
    }
    // Notified and not done: a device still queued gets the release with its wave, not here.
    let waits = planner.state().is_active()
        && planner
            .device_state(device)
            .is_some_and(|s| *s != ExecutionState::Queued && !s.is_final());
    if waits {
        return Some((planner.spec().release, DesiredKind::Notify));
    }
    planner.pending_recall(device)
}

//! An outcome report's way into the rollout its `rollout_id` names: [routing](super::routing)
//! (is it the rollout's at all, its device state or the recall of an abort), then
//! [freshness](super::Generations::is_fresh_outcome) (an older report than one already seen
//! is dropped), then the planner.
//!
//! | step | drops it as |
//! |---|---|
//! | [`route`](super::routing::route) says not ours | [`Delivery::NotOurs`] |
//! | older than the newest outcome seen from the device | [`Delivery::Stale`] |
//! | the planner refuses it (not a target, not reportable) | [`Delivery::Refused`] |
//! | otherwise | [`Delivery::Handled`] with what the planner made of it |

use super::Generations;
use super::routing::{self, RolloutFacts, Route};
use crate::rollout::{ReportOutcome, Rollout, RolloutError, RolloutState};
use crate::time::Timestamp;
use crate::wire::{DeviceId, UpdateOutcome};

/// What became of an outcome report (see the [module documentation](self)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Not the rollout's: dropped.
    NotOurs,
    /// Older than an outcome of the device already seen: dropped.
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
    generations: &mut Generations,
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
    if !generations.is_fresh_outcome(device, o.generation, o.at) {
        return Delivery::Stale;
    }
    let handled = match recall {
        Some(to) => planner.handle_recall_report(device, to, o.state.clone()),
        None => planner.handle_report(device, o.state.clone(), now),
    };
    match handled {
        Ok(outcome) => Delivery::Handled(outcome),
        Err(e) => Delivery::Refused(e),
    }
}

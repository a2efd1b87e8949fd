//! Where a device's outcome report goes, once the shell found the rollout its `rollout_id`
//! names and that rollout is still driven.
//!
//! | the outcome's digest | the rollout | route |
//! |---|---|---|
//! | the rollout's release | any | [`Route::Report`]: the device's state in this rollout |
//! | another release | aborted | [`Route::Recall`]: where the abort sent the device back to |
//! | another release | not aborted | [`Route::NotOurs`] |
//! | none (a release the device could not decode), state `rejected` | holds the device, and the outcome answers the last generation issued to it | [`Route::Report`] |
//! | none, otherwise | | [`Route::NotOurs`] |
//!
//! A routed report still goes through the rollout's freshness check before the planner sees
//! it ([`super::delivery`]).

use crate::digest::Digest;
use crate::wire::{ExecutionState, UpdateOutcome};

/// Where an outcome goes (see the [module documentation](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// To the rollout's planner, as the device's state in it.
    Report,
    /// To the aborted rollout's recall: the device reports on the release it was sent back to.
    Recall(Digest),
    /// Not this rollout's: dropped.
    NotOurs,
}

/// What routing needs to know of the rollout the outcome names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RolloutFacts {
    /// The rollout's release.
    pub release: Digest,
    /// Whether it was aborted.
    pub aborted: bool,
    /// Whether the device is one of its targets.
    pub holds_device: bool,
}

/// Routes outcome `o` of a device to whom the last generation issued is `issued`.
pub fn route(o: &UpdateOutcome, rollout: RolloutFacts, issued: u64) -> Route {
    match o.digest {
        Some(digest) if digest == rollout.release => Route::Report,
        Some(digest) if rollout.aborted => Route::Recall(digest),
        Some(_) => Route::NotOurs,
        None if matches!(o.state, ExecutionState::Rejected { .. })
            && o.generation == issued
            && rollout.holds_device =>
        {
            Route::Report
        }
        None => Route::NotOurs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::RejectCause;

    fn outcome(digest: Option<u8>, state: ExecutionState, generation: u64) -> UpdateOutcome {
        UpdateOutcome {
            generation,
            rollout_id: None,
            digest: digest.map(|n| Digest([n; 32])),
            state,
            at: 0,
            transfer: None,
        }
    }

    fn rollout(aborted: bool) -> RolloutFacts {
        RolloutFacts {
            release: Digest([1; 32]),
            aborted,
            holds_device: true,
        }
    }

    #[test]
    fn outcomes_are_routed_by_digest_and_abort() {
        let ok = ExecutionState::Succeeded;
        assert_eq!(
            route(&outcome(Some(1), ok.clone(), 3), rollout(false), 3),
            Route::Report
        );
        assert_eq!(
            route(&outcome(Some(1), ok.clone(), 3), rollout(true), 3),
            Route::Report
        );
        assert_eq!(
            route(&outcome(Some(2), ok.clone(), 4), rollout(true), 4),
            Route::Recall(Digest([2; 32]))
        );
        assert_eq!(
            route(&outcome(Some(2), ok, 4), rollout(false), 4),
            Route::NotOurs
        );
    }

    #[test]
    fn an_undecodable_release_is_ours_only_for_the_last_generation() {
        let rejected = ExecutionState::Rejected {
            cause: RejectCause::Malformed,
            detail: alloc::string::String::new(),
        };
        assert_eq!(
            route(&outcome(None, rejected.clone(), 5), rollout(false), 5),
            Route::Report
        );
        assert_eq!(
            route(&outcome(None, rejected.clone(), 4), rollout(false), 5),
            Route::NotOurs
        );
        let stranger = RolloutFacts {
            holds_device: false,
            ..rollout(false)
        };
        assert_eq!(
            route(&outcome(None, rejected, 5), stranger, 5),
            Route::NotOurs
        );
        assert_eq!(
            route(
                &outcome(None, ExecutionState::Succeeded, 5),
                rollout(false),
                5
            ),
            Route::NotOurs
        );
    }
}

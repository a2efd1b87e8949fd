//! After an abort: the devices the planner sent back ([`PlannerAction::Rollback`] or
//! [`PlannerAction::Cancel`]) and where each of them is, so an aborted rollout tells how much of
//! the fleet is back instead of only saying `aborted`.
//!
//! | recall state | report on the recall target (its digest)             | to      |
//! |--------------|------------------------------------------------------|---------|
//! | pending      | `succeeded`, `skipped-identical`                     | back    |
//! | pending      | `rejected`, `failed`, `rolled-back`                  | failed  |
//! | failed       | `succeeded`, `skipped-identical` (a later attempt)   | back    |
//! | pending, failed | any other state                                   | (same)  |
//! | pending, failed | a newer desired state (another rollout) was sent  | superseded |
//! | back, superseded | anything                                         | (same)  |
//!
//! [`PlannerAction::Rollback`]: super::PlannerAction::Rollback
//! [`PlannerAction::Cancel`]: super::PlannerAction::Cancel

use minicbor::{Decode, Encode};

use crate::digest::Digest;
use crate::wire::ExecutionState;

/// Where a device sent back by an abort is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
#[non_exhaustive]
pub enum RecallState {
    /// Sent back; the device has not reported a final state on its recall target yet (it may
    /// be offline, or still running the release).
    #[n(0)]
    Pending,
    /// The device reported that it runs its recall target (`succeeded` or `skipped-identical`
    /// on it).
    #[n(1)]
    Back,
    /// The device reported a final failure on its recall target (`rejected`, `failed`,
    /// `rolled-back`): it may still run the aborted rollout's release.
    #[n(2)]
    Failed,
    /// Before the device answered, a newer desired state (another rollout's) replaced the one
    /// that sent it back: it will act on that one instead, so this recall is over.
    #[n(3)]
    Superseded,
}

impl RecallState {
    /// The state's kebab-case name (API, events, CLI).
    pub fn name(self) -> &'static str {
        match self {
            RecallState::Pending => "pending",
            RecallState::Back => "back",
            RecallState::Failed => "failed",
            RecallState::Superseded => "superseded",
        }
    }

    /// The state after the device reported `report` on its recall target; `None` when the
    /// report changes nothing (the table in the [module docs](self)).
    pub fn after(self, report: &ExecutionState) -> Option<RecallState> {
        let next = match report {
            ExecutionState::Succeeded | ExecutionState::SkippedIdentical => RecallState::Back,
            ExecutionState::Rejected { .. }
            | ExecutionState::Failed { .. }
            | ExecutionState::RolledBack { .. } => RecallState::Failed,
            _ => return None,
        };
        let open = matches!(self, RecallState::Pending | RecallState::Failed);
        (open && self != next).then_some(next)
    }

    /// The state after a newer desired state replaced the recall's; `None` when it changes
    /// nothing (the recall is already over).
    pub fn superseded(self) -> Option<RecallState> {
        matches!(self, RecallState::Pending | RecallState::Failed)
            .then_some(RecallState::Superseded)
    }
}

/// One device's recall: the release it was sent back to and where it is (persisted with the
/// planner's device record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub(crate) struct Recall {
    /// The digest the device was sent back to (its known-good release, or what it ran).
    #[n(0)]
    pub(crate) to: Digest,
    /// Where it is.
    #[n(1)]
    pub(crate) state: RecallState,
}

/// How many devices an abort sent back, by [`RecallState`] ([`super::Status::recall`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecallCounts {
    /// Sent back, no final report on the target yet.
    pub pending: u32,
    /// Back on their recall target.
    pub back: u32,
    /// Their return failed: they may still run the release.
    pub failed: u32,
    /// A newer desired state replaced theirs before they answered.
    pub superseded: u32,
}

impl RecallCounts {
    /// Every device the abort sent back (and still counts as sent: see
    /// [`super::Rollout::handle_no_rollback_target`]).
    pub fn sent(&self) -> u32 {
        self.pending + self.back + self.failed + self.superseded
    }

    /// Counts one more device in `state`.
    pub(crate) fn add(&mut self, state: RecallState) {
        *self.slot(state) += 1;
    }

    /// Counts one device fewer in `state`.
    pub(crate) fn remove(&mut self, state: RecallState) {
        let slot = self.slot(state);
        *slot = slot.saturating_sub(1);
    }

    fn slot(&mut self, state: RecallState) -> &mut u32 {
        match state {
            RecallState::Pending => &mut self.pending,
            RecallState::Back => &mut self.back,
            RecallState::Failed => &mut self.failed,
            RecallState::Superseded => &mut self.superseded,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{FailurePhase, RejectCause, RollbackReason};
    use alloc::string::String;

    #[test]
    fn the_recall_table_holds() {
        let failed = ExecutionState::Failed {
            phase: FailurePhase::Download,
            reason: String::from("x"),
        };
        let rejected = ExecutionState::Rejected {
            cause: RejectCause::Malformed,
            detail: String::new(),
        };
        let rolled = ExecutionState::RolledBack {
            reason: RollbackReason::ProbeFailed,
            detail: String::new(),
        };
        use RecallState::*;
        for ok in [ExecutionState::Succeeded, ExecutionState::SkippedIdentical] {
            assert_eq!(Pending.after(&ok), Some(Back));
            assert_eq!(Failed.after(&ok), Some(Back));
            assert_eq!(Back.after(&ok), None);
        }
        for bad in [&failed, &rejected, &rolled] {
            assert_eq!(Pending.after(bad), Some(Failed));
            assert_eq!(Failed.after(bad), None);
            assert_eq!(Back.after(bad), None);
        }
        for busy in [
            ExecutionState::Notified,
            ExecutionState::Installing,
            ExecutionState::Trial,
        ] {
            assert_eq!(Pending.after(&busy), None);
            assert_eq!(Failed.after(&busy), None);
        }
        assert_eq!(Pending.superseded(), Some(Superseded));
        assert_eq!(Failed.superseded(), Some(Superseded));
        assert_eq!(Back.superseded(), None);
        assert_eq!(Superseded.superseded(), None);
        assert_eq!(Superseded.after(&ExecutionState::Succeeded), None);
    }

    #[test]
    fn counts_add_and_remove() {
        let mut c = RecallCounts::default();
        c.add(RecallState::Pending);
        c.add(RecallState::Pending);
        c.remove(RecallState::Pending);
        c.add(RecallState::Back);
        c.remove(RecallState::Failed);
        c.add(RecallState::Superseded);
        assert_eq!(
            (c.pending, c.back, c.failed, c.superseded, c.sent()),
            (1, 1, 0, 1, 3)
        );
    }
}

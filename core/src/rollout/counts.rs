//! Per-state device counts and how the planner classifies execution states.

use crate::wire::{ExecutionState, FailurePhase};

/// How many devices are in each execution state (failures broken down by phase).
///
/// Maintained incrementally by the planner (one increment and one decrement per state change).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct StateCounts {
    /// In a wave, not yet sent the desired state (or not yet in a started wave).
    pub queued: u32,
    /// Sent the desired state (or acknowledged it), no progress yet.
    pub notified: u32,
    /// Waiting for power.
    pub deferred_power: u32,
    /// Waiting for a maintenance window.
    pub deferred_window: u32,
    /// Waiting for disk space.
    pub deferred_disk: u32,
    /// Downloading the artifact.
    pub downloading: u32,
    /// Installing.
    pub installing: u32,
    /// Rebooting into a new boot slot (not back yet: never a success).
    pub rebooting: u32,
    /// On trial.
    pub trial: u32,
    /// Committed the release.
    pub succeeded: u32,
    /// Already ran the release: nothing done (no evidence about the release).
    pub skipped_identical: u32,
    /// Refused the release before fetching anything (a failure of the release to verify).
    pub rejected: u32,
    /// Failed while downloading.
    pub failed_download: u32,
    /// Failed verifying the artifact.
    pub failed_verify: u32,
    /// Failed installing.
    pub failed_install: u32,
    /// Failed the trial without a known-good release to go back to.
    pub failed_trial: u32,
    /// Failed the trial (or later) and went back to the known-good release.
    pub rolled_back: u32,
    /// No progress within the inactivity timeout.
    pub timed_out: u32,
}

/// The names of the counted states that are not failures, in table order: the keys of a
/// rollout's counts (the failures are counted by [`FailurePhase`], see
/// [`StateCounts::failed_by_phase`]). The names are [`ExecutionState::name`]s.
pub const STATE_NAMES: [&str; 14] = [
    "queued",
    "notified",
    "deferred-power",
    "deferred-window",
    "deferred-disk",
    "downloading",
    "installing",
    "rebooting",
    "trial",
    "succeeded",
    "skipped-identical",
    "rejected",
    "rolled-back",
    "timed-out",
];

/// The failure phases, in table order.
pub const FAILURE_PHASES: [FailurePhase; 4] = [
    FailurePhase::Download,
    FailurePhase::Verify,
    FailurePhase::Install,
    FailurePhase::Trial,
];

impl StateCounts {
    /// How many devices are in each state of [`STATE_NAMES`], in that order.
    pub fn by_state(&self) -> [(&'static str, u32); 14] {
        let n = [
            self.queued,
            self.notified,
            self.deferred_power,
            self.deferred_window,
            self.deferred_disk,
            self.downloading,
            self.installing,
            self.rebooting,
            self.trial,
            self.succeeded,
            self.skipped_identical,
            self.rejected,
            self.rolled_back,
            self.timed_out,
        ];
        let mut out = [("", 0); 14];
        for (slot, (name, n)) in out.iter_mut().zip(STATE_NAMES.into_iter().zip(n)) {
            *slot = (name, n);
        }
        out
    }

    /// How many devices failed in each phase of [`FAILURE_PHASES`], in that order.
    pub fn failed_by_phase(&self) -> [(FailurePhase, u32); 4] {
        [
            (FailurePhase::Download, self.failed_download),
            (FailurePhase::Verify, self.failed_verify),
            (FailurePhase::Install, self.failed_install),
            (FailurePhase::Trial, self.failed_trial),
        ]
    }

    /// The count of devices in `state`'s kind.
    pub fn get(&self, state: &ExecutionState) -> u32 {
        let mut copy = *self;
        *copy.slot(state)
    }

    /// Devices in a deferred state (power, window, disk).
    pub fn deferred(&self) -> u32 {
        self.deferred_power + self.deferred_window + self.deferred_disk
    }

    /// Devices notified and working (notified, downloading, installing, rebooting, trial).
    pub fn in_flight(&self) -> u32 {
        self.notified + self.downloading + self.installing + self.rebooting + self.trial
    }

    /// Failed devices of every phase.
    pub fn failed(&self) -> u32 {
        self.failed_download + self.failed_verify + self.failed_install + self.failed_trial
    }

    /// Failures that count against the release: rejected, failed (any phase), rolled back,
    /// timed out.
    pub fn failures(&self) -> u32 {
        self.rejected + self.failed() + self.rolled_back + self.timed_out
    }

    /// Devices that executed the release and so are evidence about it: succeeded plus
    /// [`failures`](Self::failures). Skipped-identical and deferred devices are not.
    pub fn executed(&self) -> u32 {
        self.succeeded + self.failures()
    }

    /// Every device counted.
    pub fn total(&self) -> u32 {
        self.queued + self.in_flight() + self.deferred() + self.skipped_identical + self.executed()
    }

    /// Adds another set of counts (for totals over waves).
    pub fn merge(&mut self, other: &StateCounts) {
        let StateCounts {
            queued,
            notified,
            deferred_power,
            deferred_window,
            deferred_disk,
            downloading,
            installing,
            rebooting,
            trial,
            succeeded,
            skipped_identical,
            rejected,
            failed_download,
            failed_verify,
            failed_install,
            failed_trial,
            rolled_back,
            timed_out,
        } = *other;
        self.queued += queued;
        self.notified += notified;
        self.deferred_power += deferred_power;
        self.deferred_window += deferred_window;
        self.deferred_disk += deferred_disk;
        self.downloading += downloading;
        self.installing += installing;
        self.rebooting += rebooting;
        self.trial += trial;
        self.succeeded += succeeded;
        self.skipped_identical += skipped_identical;
        self.rejected += rejected;
        self.failed_download += failed_download;
        self.failed_verify += failed_verify;
        self.failed_install += failed_install;
        self.failed_trial += failed_trial;
        self.rolled_back += rolled_back;
        self.timed_out += timed_out;
    }

    pub(crate) fn add(&mut self, state: &ExecutionState) {
        let slot = self.slot(state);
        *slot = slot.saturating_add(1);
    }

    pub(crate) fn remove(&mut self, state: &ExecutionState) {
        let slot = self.slot(state);
        *slot = slot.saturating_sub(1);
    }

    fn slot(&mut self, state: &ExecutionState) -> &mut u32 {
        match state {
            ExecutionState::Queued => &mut self.queued,
            ExecutionState::Notified => &mut self.notified,
            ExecutionState::DeferredPower { .. } => &mut self.deferred_power,
            ExecutionState::DeferredWindow { .. } => &mut self.deferred_window,
            ExecutionState::DeferredDisk { .. } => &mut self.deferred_disk,
            ExecutionState::Downloading { .. } => &mut self.downloading,
            ExecutionState::Installing => &mut self.installing,
            ExecutionState::Rebooting => &mut self.rebooting,
            ExecutionState::Trial => &mut self.trial,
            ExecutionState::Succeeded => &mut self.succeeded,
            ExecutionState::SkippedIdentical => &mut self.skipped_identical,
            ExecutionState::Rejected { .. } => &mut self.rejected,
            ExecutionState::Failed { phase, .. } => match phase {
                FailurePhase::Download => &mut self.failed_download,
                FailurePhase::Verify => &mut self.failed_verify,
                FailurePhase::Install => &mut self.failed_install,
                FailurePhase::Trial => &mut self.failed_trial,
            },
            ExecutionState::RolledBack { .. } => &mut self.rolled_back,
            ExecutionState::TimedOut => &mut self.timed_out,
        }
    }
}

/// Notified and working: the inactivity timeout applies.
pub(crate) fn is_in_flight(s: &ExecutionState) -> bool {
    matches!(
        s,
        ExecutionState::Notified
            | ExecutionState::Downloading { .. }
            | ExecutionState::Installing
            | ExecutionState::Rebooting
            | ExecutionState::Trial
    )
}

/// Deferred by the device: max-deferral applies, never a failure.
pub(crate) fn is_deferred(s: &ExecutionState) -> bool {
    matches!(
        s,
        ExecutionState::DeferredPower { .. }
            | ExecutionState::DeferredWindow { .. }
            | ExecutionState::DeferredDisk { .. }
    )
}

/// A state that shows the device wrote the new release (so an abort sends it back).
pub(crate) fn took_release(s: &ExecutionState) -> bool {
    matches!(
        s,
        ExecutionState::Installing
            | ExecutionState::Rebooting
            | ExecutionState::Trial
            | ExecutionState::Succeeded
            | ExecutionState::RolledBack { .. }
            | ExecutionState::Failed {
                phase: FailurePhase::Install | FailurePhase::Trial,
                ..
            }
    )
}

#[cfg(test)]
mod tests {
    use alloc::string::String;

    use super::*;
    use crate::wire::{PowerReading, RejectCause, RollbackReason};

    /// Every named state counts under its own [`ExecutionState::name`], at its place in
    /// [`STATE_NAMES`]; failures count under their phase.
    #[test]
    fn the_state_table_follows_the_states_names() {
        let states = [
            ExecutionState::Queued,
            ExecutionState::Notified,
            ExecutionState::DeferredPower {
                reading: PowerReading::MAINS,
            },
            ExecutionState::DeferredWindow { opens_at: None },
            ExecutionState::DeferredDisk { needed: 1, free: 0 },
            ExecutionState::Downloading { done: 0, total: 1 },
            ExecutionState::Installing,
            ExecutionState::Rebooting,
            ExecutionState::Trial,
            ExecutionState::Succeeded,
            ExecutionState::SkippedIdentical,
            ExecutionState::Rejected {
                cause: RejectCause::Other,
                detail: String::new(),
            },
            ExecutionState::RolledBack {
                reason: RollbackReason::ProbeFailed,
                detail: String::new(),
            },
            ExecutionState::TimedOut,
        ];
        for (i, state) in states.iter().enumerate() {
            let mut c = StateCounts::default();
            c.add(state);
            let by_state = c.by_state();
            assert_eq!(by_state[i], (state.name(), 1), "{state:?}");
            assert_eq!(by_state.iter().map(|(_, n)| n).sum::<u32>(), 1);
            assert!(c.failed_by_phase().iter().all(|(_, n)| *n == 0));
        }
        for phase in FAILURE_PHASES {
            let mut c = StateCounts::default();
            c.add(&ExecutionState::Failed {
                phase,
                reason: String::new(),
            });
            assert!(c.by_state().iter().all(|(_, n)| *n == 0));
            assert!(c.failed_by_phase().contains(&(phase, 1)));
        }
    }
}

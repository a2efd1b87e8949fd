//! A rollout's status: its [`RolloutState`](super::RolloutState) by name only, what the server
//! stores in the `rollouts` table, lists and counts by (`/metrics`).

/// Where a rollout is, without the details (wave, phase, abort reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RolloutStatus {
    /// A dry run: planned, never notifies anyone.
    DryRun,
    /// Waiting for an approver.
    AwaitingApproval,
    /// Notifying and gating waves.
    Running,
    /// Paused by an operator.
    Paused,
    /// Every wave went through.
    Completed,
    /// Stopped for good (by an operator or a gate).
    Aborted,
}

impl RolloutStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [RolloutStatus; 6] = [
        RolloutStatus::DryRun,
        RolloutStatus::AwaitingApproval,
        RolloutStatus::Running,
        RolloutStatus::Paused,
        RolloutStatus::Completed,
        RolloutStatus::Aborted,
    ];

    /// The status's kebab-case name as stored and shown (`awaiting-approval`).
    pub const fn name(self) -> &'static str {
        match self {
            RolloutStatus::DryRun => "dry-run",
            RolloutStatus::AwaitingApproval => "awaiting-approval",
            RolloutStatus::Running => "running",
            RolloutStatus::Paused => "paused",
            RolloutStatus::Completed => "completed",
            RolloutStatus::Aborted => "aborted",
        }
    }

    /// The status named `name` ([`RolloutStatus::name`]), if any.
    pub fn parse(name: &str) -> Option<RolloutStatus> {
        RolloutStatus::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Whether a rollout in this status holds its targets: awaiting approval, running or
    /// paused. A device is held by at most one such rollout (a new rollout over it is a
    /// conflict).
    pub const fn is_active(self) -> bool {
        matches!(
            self,
            RolloutStatus::AwaitingApproval | RolloutStatus::Running | RolloutStatus::Paused
        )
    }
}

impl core::fmt::Display for RolloutStatus {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_nothing_else_does() {
        for status in RolloutStatus::ALL {
            assert_eq!(RolloutStatus::parse(status.name()), Some(status));
        }
        assert_eq!(RolloutStatus::parse("Running"), None);
        assert_eq!(RolloutStatus::parse("created"), None);
        assert_eq!(RolloutStatus::parse(""), None);
    }
}

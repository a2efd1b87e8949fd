//! Which planner action a desired state carries out: the `kind` the server stores with every
//! desired state it publishes, and names in its `desired-unavailable` events.

/// Why a desired state was published to a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DesiredKind {
    /// The rollout's release ([`super::PlannerAction::Notify`]).
    Notify,
    /// Back to the known-good release after an abort ([`super::PlannerAction::Rollback`]).
    Rollback,
    /// Back to what the device ran, after an abort, for a device that never wrote the release
    /// ([`super::PlannerAction::Cancel`]).
    Cancel,
}

impl DesiredKind {
    /// Every kind.
    pub const ALL: [DesiredKind; 3] = [
        DesiredKind::Notify,
        DesiredKind::Rollback,
        DesiredKind::Cancel,
    ];

    /// The kind's name as stored and shown: `notify`, `rollback`, `cancel`.
    pub fn name(self) -> &'static str {
        match self {
            DesiredKind::Notify => "notify",
            DesiredKind::Rollback => "rollback",
            DesiredKind::Cancel => "cancel",
        }
    }

    /// The kind named `name` ([`DesiredKind::name`]), if any.
    pub fn parse(name: &str) -> Option<DesiredKind> {
        DesiredKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl core::fmt::Display for DesiredKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_nothing_else_does() {
        for kind in DesiredKind::ALL {
            assert_eq!(DesiredKind::parse(kind.name()), Some(kind));
        }
        assert_eq!(DesiredKind::parse("Notify"), None);
        assert_eq!(DesiredKind::parse(""), None);
    }
}

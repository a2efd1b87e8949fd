//! Which planner action a desired state carries out: the `kind` the server stores with every
//! desired state it publishes, and names in its `desired-unavailable` events.

crate::named_enum! {
    /// Why a desired state was published to a device (its name: `notify`, `rollback`,
    /// `cancel`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum DesiredKind {
        /// The rollout's release ([`super::PlannerAction::Notify`]).
        Notify => "notify",
        /// Back to the known-good release after an abort ([`super::PlannerAction::Rollback`]).
        Rollback => "rollback",
        /// Back to what the device ran, after an abort, for a device that never wrote the
        /// release ([`super::PlannerAction::Cancel`]).
        Cancel => "cancel",
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

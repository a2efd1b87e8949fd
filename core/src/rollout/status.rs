//! A rollout's status: its [`RolloutState`](super::RolloutState) by name only, what the server
//! stores in the `rollouts` table, lists and counts by (`/metrics`); and its current wave's
//! phase by name ([`WavePhaseKind`]), what the rollout view shows.

crate::named_enum! {
    /// Where a rollout is, without the details (wave, phase, abort reason). Its name is
    /// kebab-case (`awaiting-approval`); `ALL` is in lifecycle order.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub enum RolloutStatus {
        /// A dry run: planned, never notifies anyone.
        DryRun => "dry-run",
        /// Waiting for an approver.
        AwaitingApproval => "awaiting-approval",
        /// Notifying and gating waves.
        Running => "running",
        /// Paused by an operator.
        Paused => "paused",
        /// Every wave went through.
        Completed => "completed",
        /// Stopped for good (by an operator or a gate).
        Aborted => "aborted",
    }
}

#[cfg(feature = "serde")]
crate::named_enum::serde_by_name!(RolloutStatus);

crate::named_enum! {
    /// A [`WavePhase`](super::WavePhase) without its details (the bake's end): where the
    /// current wave is, by name.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum WavePhaseKind {
        /// Members are being notified and run the update.
        Notifying => "notifying",
        /// Every member settled; the wave is watched until the bake ends.
        Baking => "baking",
        /// The gate was judged and not met.
        Held => "held",
    }
}

#[cfg(feature = "serde")]
crate::named_enum::serde_by_name!(WavePhaseKind);

impl RolloutStatus {
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

#[cfg(all(test, feature = "serde"))]
mod serde_tests {
    use alloc::string::ToString;

    use serde::Deserialize;
    use serde::de::IntoDeserializer;
    use serde::de::value::Error;

    use super::*;

    fn read<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, Error> {
        T::deserialize(IntoDeserializer::<Error>::into_deserializer(text))
    }

    #[test]
    fn statuses_and_phases_read_from_their_names_only() {
        for status in RolloutStatus::ALL {
            assert_eq!(read(status.name()), Ok(status));
        }
        for phase in WavePhaseKind::ALL {
            assert_eq!(read(phase.name()), Ok(phase));
        }
        let err = read::<RolloutStatus>("Running").unwrap_err().to_string();
        assert_eq!(err, "not a RolloutStatus: \"Running\"");
        assert!(read::<WavePhaseKind>("baked").is_err());
    }
}

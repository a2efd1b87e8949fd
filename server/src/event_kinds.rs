//! The kinds of audit events the server records: the one list that `[[webhooks]].events`,
//! `GET /api/v1/events?kind=` and `ota events --kind` are checked against, and that
//! docs/api.md's table of kinds documents (a test compares the two).

use ota_core::flags::FlagChangeKind;

ota_core::named_enum! {
    /// An audit event's kind, stored and shown by its kebab-case name ([`EventKind::name`]).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub enum EventKind {
        /// A release was published.
        ReleasePublished => "release-published",
        /// A release was refused at publish.
        ReleaseRejected => "release-rejected",
        /// A countersignature replaced a release's signatures.
        ReleaseResigned => "release-resigned",
        /// A rollout was created (dry runs too).
        RolloutCreated => "rollout-created",
        /// A rollout started notifying devices.
        RolloutStarted => "rollout-started",
        /// A second operator approved a rollout.
        RolloutApproved => "rollout-approved",
        /// An operator paused a rollout.
        RolloutPaused => "rollout-paused",
        /// An operator resumed a rollout.
        RolloutResumed => "rollout-resumed",
        /// An operator asked for an abort.
        RolloutAbortRequested => "rollout-abort-requested",
        /// A wave started.
        WaveStarted => "wave-started",
        /// A wave passed its gate.
        WaveAdvanced => "wave-advanced",
        /// A wave's gate was judged and not met.
        WaveHeld => "wave-held",
        /// A rollout completed.
        RolloutCompleted => "rollout-completed",
        /// A rollout aborted.
        RolloutAborted => "rollout-aborted",
        /// A target's execution state changed.
        DeviceStateChanged => "device-state-changed",
        /// An abort sent a device back to its known-good release.
        DeviceRollback => "device-rollback",
        /// An abort sent a device that never wrote the release back to what it runs.
        DeviceCancel => "device-cancel",
        /// A device an abort sent back got there, failed to, or was superseded.
        DeviceRecalled => "device-recalled",
        /// An abort had no release the device would accept to send it back to.
        NoRollbackTarget => "no-rollback-target",
        /// No desired state could be issued to a device (its release is not published here).
        DesiredUnavailable => "desired-unavailable",
        /// A device reported for the first time.
        DeviceRegistered => "device-registered",
        /// A device runs something other than its last committed release.
        DeviceDrifted => "device-drifted",
        /// A drifted device runs its last committed release again.
        DeviceDriftCleared => "device-drift-cleared",
        /// A device's MQTT message was refused.
        MqttRejected => "mqtt-rejected",
        /// An operator set or removed a device's server labels.
        DeviceLabelsSet => "device-labels-set",
        /// A trust-set update was accepted by the server, or taken by a device.
        TrustRotated => "trust-rotated",
        /// A trust-set update was refused by the server, or by a device.
        TrustRejected => "trust-rejected",
        /// A request was refused for its role or its CSRF token.
        AccessDenied => "access-denied",
        /// A feature flag was created.
        FlagCreated => "flag-created",
        /// A feature flag was changed.
        FlagUpdated => "flag-updated",
        /// A feature flag was killed.
        FlagKilled => "flag-killed",
        /// A killed feature flag was revived.
        FlagRevived => "flag-revived",
        /// A feature flag was deleted.
        FlagDeleted => "flag-deleted",
    }
}

impl EventKind {
    /// The kind of the event recording a flag change of kind `change`.
    pub fn of_flag_change(change: FlagChangeKind) -> EventKind {
        match change {
            FlagChangeKind::Created => EventKind::FlagCreated,
            FlagChangeKind::Updated => EventKind::FlagUpdated,
            FlagChangeKind::Killed => EventKind::FlagKilled,
            FlagChangeKind::Revived => EventKind::FlagRevived,
            FlagChangeKind::Deleted => EventKind::FlagDeleted,
        }
    }

    /// Every kind's name, comma-separated (for error messages that list them).
    pub fn names() -> String {
        let names: Vec<&str> = EventKind::ALL.iter().map(|k| k.name()).collect();
        names.join(", ")
    }
}

impl serde::Serialize for EventKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// Whether `kind` names an event kind the server records.
pub fn is_known(kind: &str) -> bool {
    EventKind::parse(kind).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kinds docs/api.md's table names (first column, several per row), plus the flag
    /// kinds it writes as `flag-created|updated|...`.
    fn documented() -> Vec<String> {
        let doc = include_str!("../../docs/api.md");
        let start = doc.find("| kind | when | details |").unwrap();
        let mut kinds: Vec<String> = doc[start..]
            .lines()
            .skip(2)
            .take_while(|l| l.starts_with('|') || l.trim().is_empty())
            .filter_map(|l| l.split('|').nth(1))
            .flat_map(|cell| cell.split('`').skip(1).step_by(2).map(str::to_owned))
            .filter(|k| !k.contains(':') && !k.contains(' '))
            .collect();
        let flags = doc.find("`flag-created|").unwrap();
        let list = doc[flags + 1..].split('`').next().unwrap();
        let names = list.trim_start_matches("flag-").split('|');
        kinds.extend(names.map(|n| format!("flag-{n}")));
        kinds.sort();
        kinds.dedup();
        kinds
    }

    #[test]
    fn issue12_the_kinds_are_the_documented_ones() {
        let mut ours: Vec<String> = EventKind::ALL.iter().map(|k| k.name().to_owned()).collect();
        ours.sort();
        assert_eq!(ours, documented());
        use ota_core::flags::FlagChangeKind as K;
        for kind in [K::Created, K::Updated, K::Killed, K::Revived, K::Deleted] {
            assert_eq!(
                EventKind::of_flag_change(kind).name(),
                format!("flag-{}", kind.name())
            );
        }
        assert!(!is_known("rollout-abort"));
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.name()), Some(kind));
        }
    }
}

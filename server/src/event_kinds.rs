//! The kinds of audit events the server records: the one list that `[[webhooks]].events`,
//! `GET /api/v1/events?kind=` and `ota events --kind` are checked against, and that
//! docs/api.md's table of kinds documents (a test compares the two).

/// Every audit event kind, as stored in the event's `kind`.
pub const ALL: &[&str] = &[
    "release-published",
    "release-rejected",
    "release-resigned",
    "rollout-created",
    "rollout-started",
    "rollout-approved",
    "rollout-paused",
    "rollout-resumed",
    "rollout-abort-requested",
    "wave-started",
    "wave-advanced",
    "wave-held",
    "rollout-completed",
    "rollout-aborted",
    "device-state-changed",
    "device-rollback",
    "device-cancel",
    "device-recalled",
    "no-rollback-target",
    "desired-unavailable",
    "device-registered",
    "device-drifted",
    "device-drift-cleared",
    "mqtt-rejected",
    "device-labels-set",
    "trust-rotated",
    "trust-rejected",
    "access-denied",
    "flag-created",
    "flag-updated",
    "flag-killed",
    "flag-revived",
    "flag-deleted",
];

/// Whether `kind` is an event kind the server records.
pub fn is_known(kind: &str) -> bool {
    ALL.contains(&kind)
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
        let mut ours: Vec<String> = ALL.iter().map(|k| (*k).to_owned()).collect();
        ours.sort();
        assert_eq!(ours, documented());
        use ota_core::flags::FlagChangeKind as K;
        for kind in [K::Created, K::Updated, K::Killed, K::Revived, K::Deleted] {
            assert!(is_known(&format!("flag-{}", kind.name())), "{kind:?}");
        }
        assert!(!is_known("rollout-abort"));
    }
}

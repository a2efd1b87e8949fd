//! Which devices a new rollout targets, and where an abort would send each of them back.
//!
//! The shell hands over the registry (any [`Candidate`]) and what the coordinator knows of
//! each device (the rollout that holds it, its presence); [`select`] answers the targets and
//! why the others were left out. The rules, in order, per device:
//!
//! | rule | outcome |
//! |---|---|
//! | the rollout's filter does not match | not counted |
//! | (it matches) | counted in [`Selection::matched`] |
//! | its id is not a valid device id (a row written by another tool) | left out |
//! | it reported no hardware class, or one the release does not list | [`Selection::incompatible`] |
//! | another active rollout holds it | a [`Selection::conflicts`] entry (and a target: a dry run plans over it) |
//! | otherwise | a [`Target`]: running digest ([`NO_RELEASE`] when it never ran one), known-good = reported known-good, else last committed, else running; online as the coordinator last heard, else as the registry says |

use alloc::string::String;
use alloc::vec::Vec;

use crate::digest::Digest;
use crate::filter::{DeviceFacts, Filter};
use crate::rollout::Target;
use crate::wire::DeviceId;

/// The digest standing for "no release" (a device that never ran one).
pub const NO_RELEASE: Digest = Digest([0; 32]);

/// A device of the registry, as targeting sees it.
pub trait Candidate: DeviceFacts {
    /// The known-good release it last reported.
    fn known_good(&self) -> Option<Digest>;
    /// The last release the server saw it commit.
    fn last_committed(&self) -> Option<Digest>;
}

/// What the coordinator knows of a device beyond its registry row.
pub trait FleetKnowledge<R> {
    /// The active rollout that holds `device`, if any.
    fn holder(&self, device: &DeviceId) -> Option<R>;
    /// Whether `device` is connected, as the coordinator last heard (`None`: never heard).
    fn presence(&self, device: &DeviceId) -> Option<bool>;
}

/// The answer of [`select`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection<R> {
    /// The targets, in the registry's order.
    pub targets: Vec<Target>,
    /// Devices the filter matched.
    pub matched: usize,
    /// Matched devices left out for their hardware class.
    pub incompatible: usize,
    /// Targets another active rollout holds: the device and that rollout.
    pub conflicts: Vec<(DeviceId, R)>,
}

/// Selects the targets of a rollout of a release for `hardware` (its manifest's classes) over
/// `filter` (see the [module documentation](self) for the rules).
pub fn select<'a, C, R>(
    registry: impl IntoIterator<Item = &'a C>,
    filter: &Filter,
    hardware: &[String],
    fleet: &impl FleetKnowledge<R>,
) -> Selection<R>
where
    C: Candidate + 'a,
{
    let mut selection = Selection {
        targets: Vec::new(),
        matched: 0,
        incompatible: 0,
        conflicts: Vec::new(),
    };
    for device in registry {
        if !filter.matches(device) {
            continue;
        }
        selection.matched += 1;
        let Ok(id) = DeviceId::new(device.id()) else {
            continue;
        };
        let compatible = device
            .hardware_class()
            .is_some_and(|hw| hardware.iter().any(|h| h == hw));
        if !compatible {
            selection.incompatible += 1;
            continue;
        }
        if let Some(other) = fleet.holder(&id) {
            selection.conflicts.push((id.clone(), other));
        }
        let running = device.running_digest().unwrap_or(NO_RELEASE);
        let known_good = device
            .known_good()
            .or(device.last_committed())
            .unwrap_or(running);
        let online = fleet.presence(&id).unwrap_or(device.online());
        selection
            .targets
            .push(Target::new(id, running, known_good).with_online(online));
    }
    selection
}

#[cfg(test)]
mod tests {
    use alloc::collections::BTreeMap;
    use alloc::vec;

    use super::*;

    #[derive(Default)]
    struct Row {
        id: &'static str,
        hw: Option<&'static str>,
        running: Option<Digest>,
        known_good: Option<Digest>,
        committed: Option<Digest>,
        online: bool,
    }

    impl DeviceFacts for Row {
        fn id(&self) -> &str {
            self.id
        }
        fn hardware_class(&self) -> Option<&str> {
            self.hw
        }
        fn running_version(&self) -> Option<&str> {
            None
        }
        fn running_digest(&self) -> Option<Digest> {
            self.running
        }
        fn last_result(&self) -> Option<&str> {
            None
        }
        fn label(&self, _: &str) -> Option<&str> {
            None
        }
        fn online(&self) -> bool {
            self.online
        }
        fn drifted(&self) -> bool {
            false
        }
    }

    impl Candidate for Row {
        fn known_good(&self) -> Option<Digest> {
            self.known_good
        }
        fn last_committed(&self) -> Option<Digest> {
            self.committed
        }
    }

    #[derive(Default)]
    struct Fleet {
        holders: BTreeMap<DeviceId, u32>,
        presence: BTreeMap<DeviceId, bool>,
    }

    impl FleetKnowledge<u32> for Fleet {
        fn holder(&self, device: &DeviceId) -> Option<u32> {
            self.holders.get(device).copied()
        }
        fn presence(&self, device: &DeviceId) -> Option<bool> {
            self.presence.get(device).copied()
        }
    }

    fn d(n: u8) -> Digest {
        Digest([n; 32])
    }

    fn id(s: &str) -> DeviceId {
        DeviceId::new(s).unwrap()
    }

    #[test]
    fn targets_are_matched_compatible_devices_with_their_way_back() {
        let rows = vec![
            Row {
                id: "a",
                hw: Some("gw-a"),
                running: Some(d(1)),
                known_good: Some(d(2)),
                committed: Some(d(3)),
                online: true,
            },
            Row {
                id: "b",
                hw: Some("gw-a"),
                running: Some(d(1)),
                committed: Some(d(3)),
                ..Row::default()
            },
            Row {
                id: "c",
                hw: Some("gw-a"),
                running: Some(d(1)),
                ..Row::default()
            },
            Row {
                id: "d",
                hw: Some("gw-a"),
                ..Row::default()
            },
            Row {
                id: "e",
                hw: Some("gw-b"),
                ..Row::default()
            },
            Row {
                id: "f",
                ..Row::default()
            },
            Row {
                id: "bad/id",
                hw: Some("gw-a"),
                ..Row::default()
            },
        ];
        let all = Filter::parse("all").unwrap();
        let fleet = Fleet::default();
        let s = select(&rows, &all, &[String::from("gw-a")], &fleet);
        assert_eq!(s.matched, 7);
        assert_eq!(s.incompatible, 2, "gw-b and no class");
        assert!(s.conflicts.is_empty());
        let way_back: Vec<_> = s
            .targets
            .iter()
            .map(|t| {
                (
                    t.device_id.as_str(),
                    t.running_digest,
                    t.known_good,
                    t.online,
                )
            })
            .collect();
        assert_eq!(
            way_back,
            vec![
                ("a", d(1), d(2), true),
                ("b", d(1), d(3), false),
                ("c", d(1), d(1), false),
                ("d", NO_RELEASE, NO_RELEASE, false),
            ]
        );
    }

    #[test]
    fn the_filter_holders_and_presence_are_applied() {
        let rows = vec![
            Row {
                id: "a",
                hw: Some("gw-a"),
                online: false,
                ..Row::default()
            },
            Row {
                id: "b",
                hw: Some("gw-a"),
                online: true,
                ..Row::default()
            },
        ];
        let mut fleet = Fleet::default();
        fleet.holders.insert(id("b"), 7);
        fleet.presence.insert(id("a"), true);
        fleet.presence.insert(id("b"), false);
        let s = select(
            &rows,
            &Filter::parse("all").unwrap(),
            &[String::from("gw-a")],
            &fleet,
        );
        assert_eq!(s.conflicts, vec![(id("b"), 7)]);
        assert_eq!(s.targets.len(), 2, "a dry run plans over held devices");
        assert!(s.targets[0].online, "the coordinator heard it come online");
        assert!(!s.targets[1].online, "the coordinator heard it leave");
        let only_a = select(
            &rows,
            &Filter::parse("id=a").unwrap(),
            &[String::from("gw-a")],
            &fleet,
        );
        assert_eq!(only_a.matched, 1);
        assert_eq!(only_a.targets.len(), 1);
    }
}

//! Feature flags: sticky percent cohorts, evaluation order, the kill switch, the fleet flag set
//! and its audit records, the device-side applier, the wire payloads and the device flag file.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests may unwrap and panic, fixture helpers included: a failing unwrap is a failing test"
)]

use std::collections::BTreeMap;

use minicbor::Encoder;
use ota_core::flags::{
    Cause, DeviceFlags, FILE_FORMAT, FlagChange, FlagChangeKind, FlagDefinition, FlagEdit,
    FlagError, FlagFileError, FlagLimits, FlagName, FlagNameError, FlagSet, FlagStore, Ignored,
    Rule, cohort_point, fleet_filter, parse_topic, topic,
};
use ota_core::rollout::{Ratio, in_share};
use ota_core::time::Timestamp;
use ota_core::wire::{
    DeviceId, DeviceIdError, PROTOCOL_VERSION, TopicError, WireError, WireMessage,
    parse_device_topic,
};
use proptest::prelude::*;

// ----- fixtures -----

const T0: Timestamp = Timestamp::from_unix_secs(1_750_000_000);

fn at(secs: u64) -> Timestamp {
    Timestamp::from_unix_millis(T0.as_unix_millis() + secs * 1000)
}

fn name(s: &str) -> FlagName {
    FlagName::new(s).unwrap()
}

fn id(i: usize) -> DeviceId {
    DeviceId::new(&format!("dev-{i:05}")).unwrap()
}

fn ids(n: usize) -> Vec<DeviceId> {
    (0..n).map(id).collect()
}

/// A flag that is on for `percent` of every device, off otherwise.
fn percent_flag(flag: &str, percent: Ratio) -> FlagDefinition {
    let mut def = FlagDefinition::new(name(flag), false);
    def.rules.push(Rule {
        filter: None,
        on: true,
        percent: Some(percent),
    });
    def
}

/// The devices among `ids` that have `def` on (no filters involved).
fn on_set(def: &FlagDefinition, ids: &[DeviceId]) -> Vec<DeviceId> {
    ids.iter()
        .filter(|d| def.evaluate(d, |_| panic!("no filter to match")))
        .cloned()
        .collect()
}

fn no_filter(_: &str) -> bool {
    panic!("no rule has a filter")
}

fn set(on: bool, filter: Option<&str>, percent: Option<Ratio>) -> FlagEdit {
    FlagEdit::Set {
        on,
        filter: filter.map(String::from),
        percent,
    }
}

fn device_flags(device: &str, version: u64, flags: &[(&str, bool)]) -> DeviceFlags {
    DeviceFlags {
        v: PROTOCOL_VERSION,
        device_id: device.into(),
        version,
        flags: flags.iter().map(|(n, on)| (name(n), *on)).collect(),
    }
}

/// A CBOR map with integer keys, built by hand for hostile payloads.
fn cbor_map(entries: usize, body: impl FnOnce(&mut Encoder<&mut Vec<u8>>)) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut e = Encoder::new(&mut buf);
    e.map(entries as u64).unwrap();
    body(&mut e);
    buf
}

// ----- cohorts -----

/// The flag cohort hash is the rollout cohort hash salted with `flag:{name}`. These values were
/// checked against an independent SHA-256 (Python's hashlib) of the formula in docs/flags.md.
/// If this test fails, every percent rollout of every fleet would reshuffle: do not "fix" the
/// constants, version the hash instead.
#[test]
fn cohort_points_are_pinned() {
    let point = |f: &str, d: &str| cohort_point(&name(f), &DeviceId::new(d).unwrap());
    assert_eq!(point("dark-mode", "gw-0001"), 0x6506_5da8_d2ab_6156);
    assert_eq!(point("new-ui", "gw-0001"), 0x3f32_4510_44d9_5d6c);
    assert_eq!(point("dark-mode", "dev-00042"), 0xfbbd_e451_f30c_1e63);
    assert_eq!(
        point("dark-mode", "gw-0001"),
        ota_core::rollout::cohort_point("flag:dark-mode", "gw-0001")
    );
}

#[test]
fn widening_keeps_everyone_on_and_narrowing_keeps_a_subset() {
    let fleet = ids(5000);
    let steps = [0u16, 1, 5, 20, 50, 99, 100];
    let sets: Vec<Vec<DeviceId>> = steps
        .iter()
        .map(|p| on_set(&percent_flag("rollout-me", Ratio::percent(*p)), &fleet))
        .collect();
    for pair in sets.windows(2) {
        let (small, large) = (&pair[0], &pair[1]);
        assert!(small.len() <= large.len());
        // Widening: every device of the smaller cohort is still on. Narrowing (the reverse):
        // the smaller cohort is a subset of the larger one.
        assert!(small.iter().all(|d| large.contains(d)));
    }
    assert!(sets[0].is_empty());
    assert_eq!(sets[steps.len() - 1].len(), fleet.len());
    // Basis points work too: 0.5 % sits inside 1 %.
    let half = on_set(&percent_flag("rollout-me", Ratio::basis_points(50)), &fleet);
    assert!(half.iter().all(|d| sets[1].contains(d)));
}

#[test]
fn ten_percent_of_ten_thousand_is_within_one_and_a_half_points() {
    let fleet = ids(10_000);
    for flag in ["dark-mode", "new-ui", "a", "beta.checkout_v2"] {
        let on = on_set(&percent_flag(flag, Ratio::percent(10)), &fleet).len();
        assert!((850..=1150).contains(&on), "{flag}: {on} of 10000 at 10%");
    }
    let half = on_set(&percent_flag("dark-mode", Ratio::percent(50)), &fleet).len();
    assert!((4850..=5150).contains(&half), "{half} of 10000 at 50%");
}

#[test]
fn different_flags_pick_independent_cohorts() {
    let fleet = ids(10_000);
    let a = on_set(&percent_flag("dark-mode", Ratio::percent(50)), &fleet);
    let b = on_set(&percent_flag("new-ui", Ratio::percent(50)), &fleet);
    let both = a.iter().filter(|d| b.contains(d)).count();
    // Independent halves overlap on about a quarter; the same cohort would overlap on a half.
    assert!((2200..=2800).contains(&both), "overlap {both}");
    // A flag's cohort is not a rollout's either, even when the flag is named like a rollout id.
    let flag_7 = on_set(&percent_flag("7", Ratio::percent(50)), &fleet);
    let rollout_7: Vec<&DeviceId> = fleet
        .iter()
        .filter(|d| {
            in_share(
                ota_core::rollout::cohort_point("7", d.as_str()),
                Ratio::percent(50),
            )
        })
        .collect();
    let shared = flag_7.iter().filter(|d| rollout_7.contains(d)).count();
    assert!((2200..=2800).contains(&shared), "overlap {shared}");
}

// ----- evaluation -----

#[test]
fn the_first_rule_that_takes_the_device_wins() {
    let mut def = FlagDefinition::new(name("new-ui"), true);
    def.rules = vec![
        // Lab devices: off.
        Rule {
            filter: Some("label:ring=lab".into()),
            on: false,
            percent: None,
        },
        // gw-a hardware: on for half of them.
        Rule {
            filter: Some("hw=gw-a".into()),
            on: true,
            percent: Some(Ratio::percent(50)),
        },
        // gw-a devices outside that half: off.
        Rule {
            filter: Some("hw=gw-a".into()),
            on: false,
            percent: None,
        },
    ];
    let lab = |f: &str| f == "label:ring=lab" || f == "hw=gw-a";
    let gw_a = |f: &str| f == "hw=gw-a";
    let other = |_: &str| false;
    let fleet = ids(400);
    let in_half: Vec<bool> = fleet
        .iter()
        .map(|d| def.in_cohort(d, Ratio::percent(50)))
        .collect();
    assert!(in_half.iter().any(|x| *x) && in_half.iter().any(|x| !*x));
    for (d, half) in fleet.iter().zip(in_half) {
        // The lab rule comes first, even for lab devices that are also gw-a in the cohort.
        let e = def.explain(d, lab);
        assert_eq!((e.on, e.cause), (false, Cause::Rule(0)));
        // gw-a devices in the cohort are taken by rule 1, the others fall through to rule 2.
        let e = def.explain(d, gw_a);
        if half {
            assert_eq!((e.on, e.cause), (true, Cause::Rule(1)));
        } else {
            assert_eq!((e.on, e.cause), (false, Cause::Rule(2)));
        }
        // Nobody else matches a filter: the default.
        assert_eq!(
            def.explain(d, other),
            ota_core::flags::Evaluation {
                on: true,
                cause: Cause::Default
            }
        );
    }
}

#[test]
fn the_filter_predicate_is_asked_only_when_needed() {
    let mut def = FlagDefinition::new(name("x"), false);
    def.rules = vec![
        Rule::everyone(true),
        Rule {
            filter: Some("never-asked".into()),
            on: false,
            percent: None,
        },
    ];
    // The first rule has no filter and takes everyone: the predicate is never called.
    assert!(def.evaluate(&id(1), no_filter));
    def.killed = true;
    assert!(!def.evaluate(&id(1), no_filter));
    let mut asked = Vec::new();
    def.killed = false;
    def.rules.reverse();
    assert!(def.evaluate(&id(1), |f| {
        asked.push(f.to_owned());
        false
    }));
    assert_eq!(asked, ["never-asked"]);
}

#[test]
fn the_kill_switch_turns_every_device_off_at_once() {
    let fleet = ids(2000);
    let mut flags = FlagSet::new(T0);
    let n = name("checkout-v2");
    flags
        .apply(&n, set(true, None, None), "alice", at(1))
        .unwrap();
    flags
        .apply(&n, set(false, Some("hw=old"), None), "alice", at(2))
        .unwrap();
    flags
        .apply(&name("other"), set(true, None, None), "alice", at(3))
        .unwrap();
    let before: usize = fleet
        .iter()
        .filter(|d| flags.evaluate(d, |_| false).is_enabled("checkout-v2"))
        .count();
    assert_eq!(before, fleet.len());

    let change = flags
        .apply(&n, FlagEdit::Kill, "bob", at(4))
        .unwrap()
        .unwrap();
    assert_eq!(change.kind(), FlagChangeKind::Killed);
    assert_eq!(change.by, "bob");
    for d in &fleet {
        // Whatever the filters say.
        let evaluated = flags.evaluate(d, |_| true);
        assert!(!evaluated.is_enabled("checkout-v2"));
        assert_eq!(evaluated.get("checkout-v2"), Some(false));
        assert!(evaluated.is_enabled("other"), "other flags are untouched");
        assert_eq!(evaluated.version, change.version);
    }
    // Killing again changes nothing: no new version, no audit record.
    assert_eq!(flags.apply(&n, FlagEdit::Kill, "bob", at(5)).unwrap(), None);
    // Setting a killed flag keeps it killed...
    let edit = flags
        .apply(&n, set(true, Some("hw=new"), None), "carol", at(6))
        .unwrap()
        .unwrap();
    assert_eq!(edit.kind(), FlagChangeKind::Updated);
    assert!(!flags.evaluate(&id(0), |_| true).is_enabled("checkout-v2"));
    // ...until it is revived: default and rules apply again.
    let revive = flags
        .apply(&n, FlagEdit::Revive, "bob", at(7))
        .unwrap()
        .unwrap();
    assert_eq!(revive.kind(), FlagChangeKind::Revived);
    assert!(flags.evaluate(&id(0), |_| false).is_enabled("checkout-v2"));
    assert!(
        !flags
            .evaluate(&id(0), |f| f == "hw=old")
            .is_enabled("checkout-v2")
    );
}

// ----- the fleet's flag set -----

#[test]
fn edits_make_versioned_audit_records_and_repeats_change_nothing() {
    let mut flags = FlagSet::new(T0);
    assert_eq!(flags.version(), T0.as_unix_millis());
    let n = name("dark-mode");

    // Created: on for 5 %.
    let created = flags
        .apply(
            &n,
            set(true, None, Some(Ratio::percent(5))),
            "alice",
            at(10),
        )
        .unwrap()
        .unwrap();
    assert_eq!(created.kind(), FlagChangeKind::Created);
    assert_eq!(created.old, None);
    assert_eq!(created.at, at(10));
    // The version is at least the wall clock, and above the previous one.
    assert_eq!(created.version, at(10).as_unix_millis());
    let def = flags.get("dark-mode").unwrap();
    assert_eq!(def.version, created.version);
    assert!(!def.default);
    assert_eq!(
        def.rules,
        [Rule {
            filter: None,
            on: true,
            percent: Some(Ratio::percent(5))
        }]
    );

    // The same request again (a retry) changes nothing.
    assert_eq!(
        flags
            .apply(
                &n,
                set(true, None, Some(Ratio::percent(5))),
                "alice",
                at(11)
            )
            .unwrap(),
        None
    );
    assert_eq!(flags.version(), created.version);

    // Widening replaces the rule with the same (absent) filter.
    let widened = flags
        .apply(
            &n,
            set(true, None, Some(Ratio::percent(20))),
            "alice",
            at(12),
        )
        .unwrap()
        .unwrap();
    assert_eq!(widened.kind(), FlagChangeKind::Updated);
    assert_eq!(
        widened.old.as_ref().unwrap().rules[0].percent,
        Some(Ratio::percent(5))
    );
    assert_eq!(widened.new.as_ref().unwrap().rules.len(), 1);

    // A filtered rule is appended after it.
    flags
        .apply(&n, set(false, Some("hw=gw-old"), None), "alice", at(13))
        .unwrap()
        .unwrap();
    assert_eq!(flags.get("dark-mode").unwrap().rules.len(), 2);
    flags
        .apply(
            &n,
            FlagEdit::RemoveRule {
                filter: Some("hw=gw-old".into()),
            },
            "alice",
            at(14),
        )
        .unwrap()
        .unwrap();
    assert_eq!(
        flags.apply(
            &n,
            FlagEdit::RemoveRule {
                filter: Some("hw=gw-old".into())
            },
            "alice",
            at(15)
        ),
        Err(FlagError::NoSuchRule(n.clone()))
    );

    // `set --on` without filter and percent: on for everyone, rules cleared.
    let all = flags
        .apply(&n, set(true, None, None), "alice", at(16))
        .unwrap()
        .unwrap();
    let def = all.new.as_ref().unwrap();
    assert!(def.default && def.rules.is_empty());

    // A clock that went backwards still moves the version forward.
    let back = flags
        .apply(&n, set(false, None, None), "alice", T0)
        .unwrap()
        .unwrap();
    assert_eq!(back.version, all.version + 1);

    // Delete.
    let deleted = flags
        .apply(&n, FlagEdit::Delete, "alice", at(17))
        .unwrap()
        .unwrap();
    assert_eq!(deleted.kind(), FlagChangeKind::Deleted);
    assert_eq!(deleted.new, None);
    assert!(flags.is_empty());
    assert!(flags.evaluate(&id(1), no_filter).flags.is_empty());

    // Versions only grew.
    let versions = [
        created.version,
        widened.version,
        all.version,
        back.version,
        deleted.version,
    ];
    assert!(versions.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn bad_edits_are_refused_and_leave_the_set_unchanged() {
    let mut flags = FlagSet::new(T0);
    let n = name("x");
    for edit in [FlagEdit::Kill, FlagEdit::Revive, FlagEdit::Delete] {
        assert_eq!(
            flags.apply(&n, edit, "alice", at(1)),
            Err(FlagError::UnknownFlag(n.clone()))
        );
    }
    assert_eq!(
        flags.apply(&n, set(true, Some("  "), None), "alice", at(1)),
        Err(FlagError::EmptyFilter)
    );
    let long = "a".repeat(FlagLimits::MAX_FILTER_BYTES + 1);
    assert_eq!(
        flags.apply(&n, set(true, Some(&long), None), "alice", at(1)),
        Err(FlagError::FilterTooLong {
            len: long.len(),
            limit: FlagLimits::MAX_FILTER_BYTES
        })
    );
    assert_eq!(
        flags.apply(
            &n,
            set(true, None, Some(Ratio::percent(101))),
            "alice",
            at(1)
        ),
        Err(FlagError::BadPercent(Ratio::percent(101)))
    );
    assert_eq!(
        flags.apply(&n, set(true, None, None), "", at(1)),
        Err(FlagError::BadOperator {
            limit: FlagLimits::MAX_OPERATOR_BYTES
        })
    );
    let rules = (0..=FlagLimits::MAX_RULES)
        .map(|i| Rule {
            filter: Some(format!("id=dev-{i}")),
            on: true,
            percent: None,
        })
        .collect();
    assert_eq!(
        flags.apply(
            &n,
            FlagEdit::Replace {
                default: false,
                rules
            },
            "alice",
            at(1)
        ),
        Err(FlagError::TooManyRules {
            limit: FlagLimits::MAX_RULES
        })
    );
    assert!(flags.is_empty());
    assert_eq!(flags.version(), T0.as_unix_millis());

    for i in 0..FlagLimits::MAX_FLAGS {
        flags
            .apply(
                &name(&format!("f{i}")),
                set(true, None, None),
                "alice",
                at(2),
            )
            .unwrap();
    }
    assert_eq!(
        flags.apply(&name("one-too-many"), set(true, None, None), "alice", at(3)),
        Err(FlagError::TooManyFlags {
            limit: FlagLimits::MAX_FLAGS
        })
    );
    // Editing an existing flag at the limit is fine.
    flags
        .apply(&name("f0"), set(false, None, None), "alice", at(3))
        .unwrap()
        .unwrap();
}

#[test]
fn flag_names_are_validated() {
    for good in ["a", "dark-mode", "beta.checkout_v2", "0", &"a".repeat(64)] {
        assert!(FlagName::new(good).is_ok(), "{good:?}");
    }
    assert_eq!(FlagName::new(""), Err(FlagNameError::Empty));
    assert_eq!(
        FlagName::new(&"a".repeat(65)),
        Err(FlagNameError::TooLong { len: 65, max: 64 })
    );
    for (bad, c) in [
        ("Dark", 'D'),
        ("a b", ' '),
        ("a=b", '='),
        ("a/b", '/'),
        ("a+", '+'),
        ("é", 'é'),
    ] {
        assert_eq!(FlagName::new(bad), Err(FlagNameError::BadCharacter(c)));
    }
    assert_eq!(FlagName::new(".."), Err(FlagNameError::DotName));
    assert_eq!("ok".parse::<FlagName>().unwrap().as_str(), "ok");
}

#[test]
fn a_flag_set_survives_persistence_both_ways() {
    let mut flags = FlagSet::new(T0);
    flags
        .apply(
            &name("b"),
            set(true, None, Some(Ratio::percent(10))),
            "alice",
            at(1),
        )
        .unwrap();
    flags
        .apply(&name("a"), set(false, Some("hw=x"), None), "alice", at(2))
        .unwrap();
    flags
        .apply(&name("a"), FlagEdit::Kill, "bob", at(3))
        .unwrap();

    // Whole, as CBOR.
    let decoded = FlagSet::from_cbor(&flags.to_cbor()).unwrap();
    assert_eq!(decoded, flags);
    // Row by row.
    let rows: Vec<Vec<u8>> = flags.iter().map(WireMessage::to_cbor).collect();
    let rebuilt = FlagSet::from_definitions(
        flags.version(),
        rows.iter().map(|r| FlagDefinition::from_cbor(r).unwrap()),
    )
    .unwrap();
    assert_eq!(rebuilt, flags);
    // A stored version behind its definitions is raised (the version never goes back).
    let behind = FlagSet::from_definitions(0, flags.iter().cloned()).unwrap();
    assert_eq!(behind.version(), flags.version());
    // A restored backup renews its version above what devices applied, without a change.
    let mut restored = FlagSet::from_cbor(&flags.to_cbor()).unwrap();
    let renewed = restored.renew_version(at(3600)).unwrap();
    assert_eq!(renewed, at(3600).as_unix_millis());
    assert_eq!(restored.renew_version(T0).unwrap(), renewed + 1);
    assert!(restored.iter().eq(flags.iter()));
    assert_eq!(restored.evaluate(&id(1), |_| true).version, renewed + 1);
    let twice = flags.iter().chain(flags.iter()).cloned();
    assert_eq!(
        FlagSet::from_definitions(0, twice),
        Err(FlagError::DuplicateFlag(name("a")))
    );
}

// ----- the device side -----

#[test]
fn the_store_applies_newer_flags_and_ignores_duplicates_and_stale_ones() {
    let me = DeviceId::new("gw-0001").unwrap();
    let mut store = FlagStore::new(me.clone());
    assert_eq!(store.version(), 0);

    let v5 = device_flags("gw-0001", 5, &[("a", true), ("b", false)]);
    let update = store.offer(v5.clone()).unwrap();
    assert_eq!(update.flags(), &v5);
    assert_eq!(
        update.changed(),
        [
            (name("a"), None, Some(true)),
            (name("b"), None, Some(false))
        ]
    );
    // Offering does not change the store (the file is not written yet).
    assert_eq!(store.current(), None);
    assert!(store.commit(update.clone()));
    assert_eq!(store.current(), Some(&v5));

    // The QoS 1 duplicate and the retained redelivery.
    assert_eq!(
        store.offer(v5.clone()),
        Err(Ignored::Duplicate { version: 5 })
    );
    // Even with different contents, the version decides.
    assert_eq!(
        store.offer(device_flags("gw-0001", 5, &[("a", false)])),
        Err(Ignored::Duplicate { version: 5 })
    );
    // A late or replayed older message.
    assert_eq!(
        store.offer(device_flags("gw-0001", 4, &[("a", false)])),
        Err(Ignored::Stale {
            applied: 5,
            incoming: 4
        })
    );
    // Someone else's flags.
    assert_eq!(
        store.offer(device_flags("gw-0002", 9, &[])),
        Err(Ignored::OtherDevice("gw-0002".into()))
    );
    assert!(
        !store.commit(update),
        "committing the same update twice is a no-op"
    );

    // Two updates prepared out of order: the older one cannot win.
    let v7 = store
        .offer(device_flags("gw-0001", 7, &[("a", false), ("c", true)]))
        .unwrap();
    let v6 = store
        .offer(device_flags("gw-0001", 6, &[("a", true)]))
        .unwrap();
    assert_eq!(
        v7.changed(),
        [
            (name("a"), Some(true), Some(false)),
            (name("b"), Some(false), None),
            (name("c"), None, Some(true))
        ]
    );
    assert!(store.commit(v7));
    assert!(!store.commit(v6));
    assert_eq!(store.version(), 7);
    assert!(!store.current().unwrap().is_enabled("a"));
    assert!(store.current().unwrap().is_enabled("c"));
    assert!(!store.current().unwrap().is_enabled("never-heard-of"));
}

#[test]
fn a_restarted_agent_resumes_from_its_flag_file() {
    let me = DeviceId::new("gw-0001").unwrap();
    let mut store = FlagStore::new(me.clone());
    let update = store
        .offer(device_flags("gw-0001", 42, &[("a", true)]))
        .unwrap();
    let file = update.file().to_vec();
    assert!(store.commit(update));

    let restarted = FlagStore::from_file(me.clone(), &file).unwrap();
    assert_eq!(restarted, store);
    // The retained copy of what it already applied is a duplicate.
    assert_eq!(
        restarted.offer(device_flags("gw-0001", 42, &[("a", true)])),
        Err(Ignored::Duplicate { version: 42 })
    );
    assert_eq!(
        FlagStore::from_file(DeviceId::new("gw-0002").unwrap(), &file),
        Err(FlagFileError::OtherDevice)
    );
}

/// An offline device converges: whatever it missed, the retained message is the latest state,
/// and it applies exactly once.
#[test]
fn an_offline_device_converges_on_the_retained_flags() {
    let mut flags = FlagSet::new(T0);
    let me = id(7);
    let mut store = FlagStore::new(me.clone());
    let mut retained = None;
    for (i, p) in [1u16, 5, 20, 100].into_iter().enumerate() {
        flags
            .apply(
                &name("dark-mode"),
                set(true, None, Some(Ratio::percent(p))),
                "alice",
                at(i as u64),
            )
            .unwrap();
        // The server republishes the retained message on every change; the device is offline.
        retained = Some(flags.evaluate(&me, no_filter).to_cbor());
    }
    let payload = retained.unwrap();
    let update = store
        .offer(DeviceFlags::from_cbor(&payload).unwrap())
        .unwrap();
    assert!(update.flags().is_enabled("dark-mode"));
    assert!(store.commit(update));
    // The broker delivers the retained copy again on the next reconnect.
    assert!(matches!(
        store.offer(DeviceFlags::from_cbor(&payload).unwrap()),
        Err(Ignored::Duplicate { .. })
    ));
}

// ----- the device flag file -----

#[test]
fn the_flag_file_is_a_stable_line_format() {
    let flags = device_flags(
        "gw-0001",
        1_750_000_000_123,
        &[("new-ui", false), ("dark-mode", true)],
    );
    let file = flags.to_file();
    assert_eq!(
        file,
        "OTA_FLAGS=1\nDEVICE=gw-0001\nVERSION=1750000000123\ndark-mode=on\nnew-ui=off\n"
    );
    assert_eq!(FILE_FORMAT, 1);
    assert_eq!(DeviceFlags::from_file(file.as_bytes()).unwrap(), flags);
    assert_eq!(
        flags.to_json(),
        r#"{"device":"gw-0001","version":1750000000123,"flags":{"dark-mode":true,"new-ui":false}}"#
    );
    let empty = device_flags("gw-0001", 0, &[]);
    assert_eq!(
        empty.to_json(),
        r#"{"device":"gw-0001","version":0,"flags":{}}"#
    );
    assert_eq!(
        DeviceFlags::from_file(empty.to_file().as_bytes()).unwrap(),
        empty
    );

    // Readers are lenient where a newer writer may differ: comments, blank lines, CRLF,
    // unknown uppercase keys, any order.
    let lenient = "OTA_FLAGS=1\r\n# comment\n\nWRITTEN_BY=ota-agent 9.9\ndark-mode=on\r\nnew-ui=off\nVERSION=1750000000123\nDEVICE=gw-0001";
    assert_eq!(DeviceFlags::from_file(lenient.as_bytes()).unwrap(), flags);
}

#[test]
fn bad_flag_files_give_typed_errors() {
    let cases: &[(&str, FlagFileError)] = &[
        ("", FlagFileError::MissingHeader),
        ("DEVICE=a\n", FlagFileError::MissingHeader),
        ("OTA_FLAGS=x\n", FlagFileError::MissingHeader),
        (
            "OTA_FLAGS=2\nDEVICE=a\nVERSION=1\n",
            FlagFileError::UnsupportedFormat {
                found: 2,
                supported: 1,
            },
        ),
        (
            "OTA_FLAGS=0\n",
            FlagFileError::UnsupportedFormat {
                found: 0,
                supported: 1,
            },
        ),
        (
            "OTA_FLAGS=1\nDEVICE=a\nVERSION=1\nx\n",
            FlagFileError::BadLine { line: 4 },
        ),
        (
            "OTA_FLAGS=1\nDEVICE=a\nVERSION=1\nx=yes\n",
            FlagFileError::BadValue { line: 4 },
        ),
        (
            "OTA_FLAGS=1\nDEVICE=a\nVERSION=1\nx=on\nx=off\n",
            FlagFileError::DuplicateFlag { line: 5 },
        ),
        (
            "OTA_FLAGS=1\nDEVICE=a\nVERSION=1\nb@d=on\n",
            FlagFileError::BadName {
                line: 4,
                cause: FlagNameError::BadCharacter('@'),
            },
        ),
        (
            "OTA_FLAGS=1\nDEVICE=a b\n",
            FlagFileError::BadDevice {
                line: 2,
                cause: DeviceIdError::BadCharacter(' '),
            },
        ),
        (
            "OTA_FLAGS=1\nDEVICE=a\nVERSION=-1\n",
            FlagFileError::BadVersion { line: 3 },
        ),
        (
            "OTA_FLAGS=1\nDEVICE=a\nVERSION=99999999999999999999\n",
            FlagFileError::BadVersion { line: 3 },
        ),
        (
            "OTA_FLAGS=1\nDEVICE=a\nDEVICE=b\n",
            FlagFileError::DuplicateKey { line: 3 },
        ),
        ("OTA_FLAGS=1\nVERSION=1\n", FlagFileError::MissingDevice),
        ("OTA_FLAGS=1\nDEVICE=a\n", FlagFileError::MissingVersion),
    ];
    for (file, err) in cases {
        assert_eq!(
            DeviceFlags::from_file(file.as_bytes()).as_ref(),
            Err(err),
            "{file:?}"
        );
    }
    assert_eq!(
        DeviceFlags::from_file(&[0xff, 0xfe]),
        Err(FlagFileError::NotUtf8)
    );
    let huge = vec![b'#'; FlagLimits::MAX_FILE_BYTES + 1];
    assert_eq!(
        DeviceFlags::from_file(&huge),
        Err(FlagFileError::TooLarge {
            size: huge.len(),
            limit: FlagLimits::MAX_FILE_BYTES
        })
    );
    let mut many = String::from("OTA_FLAGS=1\nDEVICE=a\nVERSION=1\n");
    for i in 0..=FlagLimits::MAX_FLAGS {
        many.push_str(&format!("f{i}=on\n"));
    }
    assert_eq!(
        DeviceFlags::from_file(many.as_bytes()),
        Err(FlagFileError::TooManyFlags {
            limit: FlagLimits::MAX_FLAGS
        })
    );
}

// ----- topics -----

#[test]
fn the_flags_topic_is_per_device_under_the_reserved_tree() {
    let me = DeviceId::new("gw-0001.lab_A").unwrap();
    assert_eq!(topic(&me), "ota/v1/flags/devices/gw-0001.lab_A");
    assert_eq!(fleet_filter(), "ota/v1/flags/devices/+");
    assert_eq!(parse_topic(&topic(&me)), Ok(me.clone()));
    // The update protocol's parser keeps refusing the flags tree.
    assert_eq!(parse_device_topic(&topic(&me)), Err(TopicError::Reserved));
    assert_eq!(
        parse_topic("ota/v1/devices/gw/desired"),
        Err(TopicError::WrongPrefix)
    );
    assert_eq!(parse_topic("ota/v1/flags/other"), Err(TopicError::Unknown));
    assert_eq!(
        parse_topic("ota/v1/flags/devices/gw/extra"),
        Err(TopicError::Unknown)
    );
    assert_eq!(
        parse_topic("ota/v1/flags/devices/+"),
        Err(TopicError::BadDeviceId(DeviceIdError::BadCharacter('+')))
    );
    assert_eq!(
        parse_topic("ota/v1/flags/devices/"),
        Err(TopicError::BadDeviceId(DeviceIdError::Empty))
    );
}

// ----- wire: round trips and hostile bytes -----

fn sample_change() -> FlagChange {
    let mut flags = FlagSet::new(T0);
    flags
        .apply(
            &name("dark-mode"),
            set(
                true,
                Some("label:ring=canary"),
                Some(Ratio::basis_points(250)),
            ),
            "alice",
            at(1),
        )
        .unwrap();
    flags
        .apply(&name("dark-mode"), FlagEdit::Kill, "bob", at(2))
        .unwrap()
        .unwrap()
}

#[test]
fn payloads_round_trip() {
    let flags = device_flags("gw-0001", 77, &[("a", true), ("b", false)]);
    assert_eq!(DeviceFlags::from_cbor(&flags.to_cbor()).unwrap(), flags);
    let change = sample_change();
    assert_eq!(FlagChange::from_cbor(&change.to_cbor()).unwrap(), change);
    let def = change.new.clone().unwrap();
    assert_eq!(FlagDefinition::from_cbor(&def.to_cbor()).unwrap(), def);

    // The key table of docs/flags.md: {0: v, 1: device_id, 2: version, 3: {name: bool}}.
    let expected = cbor_map(4, |e| {
        e.u8(0).unwrap().u16(1).unwrap();
        e.u8(1).unwrap().str("gw-0001").unwrap();
        e.u8(2).unwrap().u64(77).unwrap();
        e.u8(3).unwrap().map(2).unwrap();
        e.str("a").unwrap().bool(true).unwrap();
        e.str("b").unwrap().bool(false).unwrap();
    });
    assert_eq!(flags.to_cbor(), expected);
    // A missing flag map is an empty one; unknown keys are ignored.
    let minimal = cbor_map(4, |e| {
        e.u8(0).unwrap().u16(1).unwrap();
        e.u8(1).unwrap().str("gw-0001").unwrap();
        e.u8(2).unwrap().u64(3).unwrap();
        e.u8(99).unwrap().str("from the future").unwrap();
    });
    assert_eq!(
        DeviceFlags::from_cbor(&minimal).unwrap(),
        device_flags("gw-0001", 3, &[])
    );
}

#[test]
fn hostile_payloads_give_typed_errors() {
    let good = device_flags("gw-0001", 77, &[("a", true), ("b", false)]).to_cbor();
    // Every truncation.
    for end in 0..good.len() {
        assert!(
            DeviceFlags::from_cbor(&good[..end]).is_err(),
            "prefix of {end} bytes accepted"
        );
    }
    let mut trailing = good.clone();
    trailing.push(0);
    assert_eq!(
        DeviceFlags::from_cbor(&trailing),
        Err(WireError::TrailingData {
            what: "device flags",
            extra: 1
        })
    );
    // Oversized.
    let huge = vec![0u8; FlagLimits::MAX_DEVICE_FLAGS_BYTES + 1];
    assert_eq!(
        DeviceFlags::from_cbor(&huge),
        Err(WireError::TooLarge {
            what: "device flags",
            size: huge.len(),
            limit: FlagLimits::MAX_DEVICE_FLAGS_BYTES
        })
    );
    // Wrong or missing version.
    for v in [0u16, 2, 60_000] {
        let bytes = cbor_map(3, |e| {
            e.u8(0).unwrap().u16(v).unwrap();
            e.u8(1).unwrap().str("gw-0001").unwrap();
            e.u8(2).unwrap().u64(1).unwrap();
        });
        assert_eq!(
            DeviceFlags::from_cbor(&bytes),
            Err(WireError::UnsupportedVersion {
                what: "device flags",
                found: v,
                supported: 1
            })
        );
    }
    let unversioned = cbor_map(1, |e| {
        e.u8(1).unwrap().str("gw-0001").unwrap();
    });
    assert_eq!(
        DeviceFlags::from_cbor(&unversioned),
        Err(WireError::MissingVersion("device flags"))
    );
    // Not a flag name, a repeated name, a non-bool value: malformed.
    let with_flags = |body: &dyn Fn(&mut Encoder<&mut Vec<u8>>)| {
        cbor_map(4, |e| {
            e.u8(0).unwrap().u16(1).unwrap();
            e.u8(1).unwrap().str("gw-0001").unwrap();
            e.u8(2).unwrap().u64(1).unwrap();
            e.u8(3).unwrap();
            body(e);
        })
    };
    for body in [
        &(|e: &mut Encoder<&mut Vec<u8>>| {
            e.map(1)
                .unwrap()
                .str("Bad Name")
                .unwrap()
                .bool(true)
                .unwrap();
        }) as &dyn Fn(&mut Encoder<&mut Vec<u8>>),
        &|e| {
            e.map(1)
                .unwrap()
                .str(&"a".repeat(65))
                .unwrap()
                .bool(true)
                .unwrap();
        },
        &|e| {
            e.map(2).unwrap();
            e.str("a").unwrap().bool(true).unwrap();
            e.str("a").unwrap().bool(false).unwrap();
        },
        &|e| {
            e.map(1).unwrap().str("a").unwrap().u8(1).unwrap();
        },
    ] {
        assert_eq!(
            DeviceFlags::from_cbor(&with_flags(body)),
            Err(WireError::Malformed("device flags"))
        );
    }
    // Too many flags.
    let many = with_flags(&|e| {
        e.map(FlagLimits::MAX_FLAGS as u64 + 1).unwrap();
        for i in 0..=FlagLimits::MAX_FLAGS {
            e.str(&format!("f{i}")).unwrap().bool(true).unwrap();
        }
    });
    assert_eq!(
        DeviceFlags::from_cbor(&many),
        Err(WireError::LimitExceeded {
            what: "flags",
            limit: FlagLimits::MAX_FLAGS
        })
    );
    // A bad device id.
    let bad_id = cbor_map(3, |e| {
        e.u8(0).unwrap().u16(1).unwrap();
        e.u8(1).unwrap().str("gw/1").unwrap();
        e.u8(2).unwrap().u64(1).unwrap();
    });
    assert_eq!(
        DeviceFlags::from_cbor(&bad_id),
        Err(WireError::BadDeviceId(DeviceIdError::BadCharacter('/')))
    );
    // A map claiming 2^64-1 flags, and 100k nested arrays under an unknown key.
    let claim = cbor_map(4, |e| {
        e.u8(0).unwrap().u16(1).unwrap();
        e.u8(1).unwrap().str("gw-0001").unwrap();
        e.u8(2).unwrap().u64(1).unwrap();
        e.u8(3).unwrap().map(u64::MAX).unwrap();
    });
    assert!(DeviceFlags::from_cbor(&claim).is_err());
    let mut deep = cbor_map(2, |e| {
        e.u8(0).unwrap().u16(1).unwrap();
        e.u8(99).unwrap();
    });
    deep.extend(std::iter::repeat_n(0x81, 20_000));
    deep.push(0x00);
    assert!(DeviceFlags::from_cbor(&deep).is_err());
}

#[test]
fn hostile_definitions_and_changes_give_typed_errors() {
    let change = sample_change();
    let mut over = change.clone();
    over.new.as_mut().unwrap().rules[0].percent = Some(Ratio::basis_points(10_001));
    assert_eq!(
        FlagChange::from_cbor(&over.to_cbor()),
        Err(WireError::LimitExceeded {
            what: "flag rule percent (basis points)",
            limit: 10_000
        })
    );
    let mut nested_version = change.clone();
    nested_version.old.as_mut().unwrap().v = 9;
    assert_eq!(
        FlagChange::from_cbor(&nested_version.to_cbor()),
        Err(WireError::UnsupportedVersion {
            what: "flag definition",
            found: 9,
            supported: 1
        })
    );
    let mut other_flag = change.clone();
    other_flag.flag = name("not-dark-mode");
    assert_eq!(
        FlagChange::from_cbor(&other_flag.to_cbor()),
        Err(WireError::Malformed("flag change"))
    );
    let mut nothing = change.clone();
    (nothing.old, nothing.new) = (None, None);
    assert_eq!(
        FlagChange::from_cbor(&nothing.to_cbor()),
        Err(WireError::Malformed("flag change"))
    );
    let mut anonymous = change.clone();
    anonymous.by = String::new();
    assert!(matches!(
        FlagChange::from_cbor(&anonymous.to_cbor()),
        Err(WireError::LimitExceeded { .. })
    ));
    let mut def = change.new.unwrap();
    def.rules = vec![Rule::everyone(true); FlagLimits::MAX_RULES + 1];
    assert_eq!(
        FlagDefinition::from_cbor(&def.to_cbor()),
        Err(WireError::LimitExceeded {
            what: "flag rules",
            limit: FlagLimits::MAX_RULES
        })
    );
    // A persisted set with the same flag twice.
    let one = FlagDefinition::new(name("a"), true);
    let dup = cbor_map(3, |e| {
        e.u8(0).unwrap().u16(1).unwrap();
        e.u8(1).unwrap().u64(1).unwrap();
        e.u8(2).unwrap().array(2).unwrap();
        e.encode(&one).unwrap().encode(&one).unwrap();
    });
    assert_eq!(
        FlagSet::from_cbor(&dup),
        Err(WireError::Malformed("flag set"))
    );
}

// ----- properties -----

fn device_id_strategy() -> impl Strategy<Value = DeviceId> {
    "[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}".prop_map(|s| DeviceId::new(&s).unwrap())
}

fn flag_name_strategy() -> impl Strategy<Value = FlagName> {
    "[a-z0-9_-][a-z0-9._-]{0,63}".prop_map(|s| FlagName::new(&s).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn arbitrary_bytes_never_panic_a_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = DeviceFlags::from_cbor(&bytes);
        let _ = FlagChange::from_cbor(&bytes);
        let _ = FlagDefinition::from_cbor(&bytes);
        let _ = FlagSet::from_cbor(&bytes);
        let _ = DeviceFlags::from_file(&bytes);
    }

    #[test]
    fn mutated_payloads_never_panic(index in any::<prop::sample::Index>(), xor in 1u8..=255) {
        let payloads = [
            device_flags("gw-0001", 77, &[("a", true), ("b", false)]).to_cbor(),
            sample_change().to_cbor(),
            device_flags("gw-0001", 77, &[("a", true)]).to_file().into_bytes(),
        ];
        for mut bytes in payloads {
            let i = index.index(bytes.len());
            bytes[i] ^= xor;
            let _ = DeviceFlags::from_cbor(&bytes);
            let _ = FlagChange::from_cbor(&bytes);
            let _ = DeviceFlags::from_file(&bytes);
        }
    }

    #[test]
    fn arbitrary_text_never_panics_the_file_reader(text in "(OTA_FLAGS=1\n)?\\PC{0,300}") {
        let _ = DeviceFlags::from_file(text.as_bytes());
    }

    #[test]
    fn cohorts_are_nested_for_any_flag_and_device(
        flag in flag_name_strategy(),
        device in device_id_strategy(),
        a in 0u16..=10_000,
        b in 0u16..=10_000,
    ) {
        let (small, large) = (a.min(b), a.max(b));
        let def = percent_flag(flag.as_str(), Ratio::basis_points(small));
        let wider = percent_flag(flag.as_str(), Ratio::basis_points(large));
        if def.evaluate(&device, no_filter) {
            prop_assert!(wider.evaluate(&device, no_filter));
        }
    }

    #[test]
    fn evaluated_flags_round_trip_through_the_wire_and_the_file(
        device in device_id_strategy(),
        flags in proptest::collection::btree_map(flag_name_strategy(), any::<bool>(), 0..40),
        version in any::<u64>(),
    ) {
        let flags = DeviceFlags {
            v: PROTOCOL_VERSION,
            device_id: device.as_str().into(),
            version,
            flags: flags.into_iter().collect::<BTreeMap<_, _>>(),
        };
        prop_assert_eq!(&DeviceFlags::from_cbor(&flags.to_cbor()).unwrap(), &flags);
        prop_assert_eq!(&DeviceFlags::from_file(flags.to_file().as_bytes()).unwrap(), &flags);
    }
}

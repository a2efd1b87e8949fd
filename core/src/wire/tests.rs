//! Round trips, hostile bytes and arbitrary bytes for every payload.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use minicbor::Encoder;
use proptest::prelude::*;

use super::*;
use crate::digest::Digest;
use crate::fleet::RolloutId;

fn release() -> RunningRelease {
    RunningRelease {
        version: "2.0.0".into(),
        digest: Digest::of(b"image"),
        security_version: 3,
    }
}

fn desired() -> DesiredState {
    DesiredState {
        v: PROTOCOL_VERSION,
        generation: 7,
        rollout_id: Some("r-1".into()),
        release: vec![0xd8, 0x62, 0x84],
        artifact_urls: vec!["https://a.example/x".into(), "https://b.example/x".into()],
        force_reinstall: true,
    }
}

fn reported() -> ReportedState {
    ReportedState {
        v: PROTOCOL_VERSION,
        device_id: "gw-1".into(),
        agent_version: "0.1.0".into(),
        hardware_class: "gw-a".into(),
        running: Some(release()),
        known_good: Some(release()),
        trial: None,
        cached: vec![Digest::of(b"image"), Digest::of(b"old")],
        last_result: Some(UpdateOutcome {
            generation: 7,
            rollout_id: Some("r-1".into()),
            digest: Some(Digest::of(b"image")),
            state: ExecutionState::Failed {
                phase: FailurePhase::Verify,
                reason: "digest mismatch".into(),
            },
            at: 1_750_000_000_000,
            transfer: None,
        }),
        power: Some(PowerReading {
            battery_percent: Some(80),
            charging: true,
            mains_online: true,
        }),
        inventory: Inventory {
            os: "Debian 13".into(),
            kernel: "6.12".into(),
            arch: "aarch64".into(),
            hostname: "gw-1".into(),
            memory_total: 1 << 30,
            disk_free: 1 << 33,
        },
        labels: BTreeMap::from([("site".into(), "lab".into())]),
        generation: 7,
        security_floor: 3,
    }
}

fn every_state() -> Vec<ExecutionState> {
    vec![
        ExecutionState::Queued,
        ExecutionState::Notified,
        ExecutionState::DeferredPower {
            reading: PowerReading::MAINS,
        },
        ExecutionState::DeferredWindow { opens_at: Some(5) },
        ExecutionState::DeferredDisk {
            needed: 10,
            free: 5,
        },
        ExecutionState::Downloading { done: 1, total: 2 },
        ExecutionState::Installing,
        ExecutionState::Trial,
        ExecutionState::Succeeded,
        ExecutionState::SkippedIdentical,
        ExecutionState::Rejected {
            cause: RejectCause::Downgrade,
            detail: "floor".into(),
        },
        ExecutionState::Failed {
            phase: FailurePhase::Download,
            reason: "x".into(),
        },
        ExecutionState::RolledBack {
            reason: RollbackReason::ProbeTimeout,
            detail: "y".into(),
        },
        ExecutionState::TimedOut,
        ExecutionState::Rebooting,
    ]
}

fn round_trip<T: WireMessage + PartialEq + core::fmt::Debug>(msg: &T) {
    let bytes = msg.to_cbor();
    assert_eq!(&T::from_cbor(&bytes).unwrap(), msg);
    // Every strict prefix is refused with an error, never a panic.
    for cut in 0..bytes.len() {
        assert!(
            T::from_cbor(&bytes[..cut]).is_err(),
            "prefix {cut} accepted"
        );
    }
}

#[test]
fn every_message_round_trips_and_refuses_truncation() {
    round_trip(&desired());
    round_trip(&reported());
    for kind in every_state() {
        round_trip(&Event {
            v: PROTOCOL_VERSION,
            device_id: "gw-1".into(),
            generation: 7,
            rollout_id: None,
            at: 1,
            kind,
            digest: Some(Digest::of(b"image")),
            transfer: None,
        });
    }
    for healthy in [None, Some(true), Some(false)] {
        round_trip(&Heartbeat {
            v: PROTOCOL_VERSION,
            seq: 42,
            at: 1,
            healthy,
        });
    }
    round_trip(&HeartbeatAck {
        v: PROTOCOL_VERSION,
        seq: 42,
    });
    round_trip(&Status {
        v: PROTOCOL_VERSION,
        online: false,
        at: 1,
    });
}

#[test]
fn state_names_are_kebab_case_and_finality_is_right() {
    let names: Vec<&str> = every_state().iter().map(ExecutionState::name).collect();
    assert_eq!(
        names,
        [
            "queued",
            "notified",
            "deferred-power",
            "deferred-window",
            "deferred-disk",
            "downloading",
            "installing",
            "trial",
            "succeeded",
            "skipped-identical",
            "rejected",
            "failed",
            "rolled-back",
            "timed-out",
            "rebooting"
        ]
    );
    assert!(ExecutionState::SkippedIdentical.is_success());
    assert!(!ExecutionState::Trial.is_final());
}

#[test]
fn desired_state_key_table_is_stable() {
    // {0: 1, 1: 7, 2: "r-1", 3: h'd86284', 4: [..], 5: true}
    let bytes = desired().to_cbor();
    let mut d = minicbor::Decoder::new(&bytes);
    assert_eq!(d.map().unwrap(), Some(6));
    let keys: Vec<u64> = (0..6)
        .map(|_| {
            let k = d.u64().unwrap();
            d.skip().unwrap();
            k
        })
        .collect();
    assert_eq!(keys, [0, 1, 2, 3, 4, 5]);
    assert_eq!(bytes[..4], [0xa6, 0x00, 0x01, 0x01]);
}

/// Writes one value of a hand-made payload.
type Value<'a> = &'a dyn Fn(&mut Encoder<Vec<u8>>);

/// Encodes a map from raw (key, value writer) pairs, for hand-made payloads.
fn map(entries: &[(u64, Value<'_>)]) -> Vec<u8> {
    let mut e = Encoder::new(Vec::new());
    e.map(entries.len() as u64).unwrap();
    for (k, value) in entries {
        e.u64(*k).unwrap();
        value(&mut e);
    }
    e.into_writer()
}

#[test]
fn a_newer_version_is_a_typed_error_even_with_another_shape() {
    let v2 = map(&[
        (1, &|e| {
            e.str("a different shape").unwrap();
        }),
        (0, &|e| {
            e.u16(2).unwrap();
        }),
    ]);
    assert_eq!(
        HeartbeatAck::from_cbor(&v2),
        Err(WireError::UnsupportedVersion {
            what: "heartbeat ack",
            found: 2,
            supported: 1
        })
    );
    let v0 = map(&[
        (0, &|e| {
            e.u16(0).unwrap();
        }),
        (1, &|e| {
            e.u64(1).unwrap();
        }),
    ]);
    assert!(matches!(
        HeartbeatAck::from_cbor(&v0),
        Err(WireError::UnsupportedVersion { found: 0, .. })
    ));
    let none = map(&[(1, &|e| {
        e.u64(1).unwrap();
    })]);
    assert_eq!(
        HeartbeatAck::from_cbor(&none),
        Err(WireError::MissingVersion("heartbeat ack"))
    );
    assert_eq!(
        HeartbeatAck::from_cbor(&[0x01]),
        Err(WireError::Malformed("heartbeat ack"))
    );
}

#[test]
fn unknown_keys_are_ignored_and_defaults_apply() {
    let bytes = map(&[
        (0, &|e| {
            e.u16(1).unwrap();
        }),
        (1, &|e| {
            e.u64(9).unwrap();
        }),
        (3, &|e| {
            e.bytes(b"rel").unwrap();
        }),
        (99, &|e| {
            e.array(2).unwrap().str("future").unwrap().u8(1).unwrap();
        }),
    ]);
    let d = DesiredState::from_cbor(&bytes).unwrap();
    assert_eq!(d.generation, 9);
    assert!(d.artifact_urls.is_empty());
    assert!(!d.force_reinstall);
    assert_eq!(d.rollout_id, None);
}

#[test]
fn oversized_payloads_and_fields_are_refused() {
    let huge = vec![0u8; WireLimits::MAX_PAYLOAD_BYTES + 1];
    assert!(matches!(
        DesiredState::from_cbor(&huge),
        Err(WireError::TooLarge { .. })
    ));
    let mut big_release = desired();
    big_release.release = vec![0; WireLimits::MAX_RELEASE_BYTES + 1];
    assert_eq!(
        DesiredState::from_cbor(&big_release.to_cbor()),
        Err(WireError::LimitExceeded {
            what: "embedded release",
            limit: WireLimits::MAX_RELEASE_BYTES
        })
    );
    let mut many_urls = desired();
    many_urls.artifact_urls = vec![String::from("u"); WireLimits::MAX_URLS + 1];
    assert!(matches!(
        DesiredState::from_cbor(&many_urls.to_cbor()),
        Err(WireError::LimitExceeded { .. })
    ));
    let mut bad_id = reported();
    bad_id.device_id = "a/#".into();
    assert!(matches!(
        ReportedState::from_cbor(&bad_id.to_cbor()),
        Err(WireError::BadDeviceId(_))
    ));
    let mut battery = reported();
    battery.power = Some(PowerReading {
        battery_percent: Some(101),
        ..PowerReading::MAINS
    });
    assert!(ReportedState::from_cbor(&battery.to_cbor()).is_err());
    let mut trailing = HeartbeatAck {
        v: PROTOCOL_VERSION,
        seq: 1,
    }
    .to_cbor();
    trailing.push(0);
    assert_eq!(
        HeartbeatAck::from_cbor(&trailing),
        Err(WireError::TrailingData {
            what: "heartbeat ack",
            extra: 1
        })
    );
}

#[test]
fn hostile_nesting_and_length_claims_do_not_hurt() {
    // An unknown key whose value nests 100k arrays deep, and a list claiming 2^64-1 entries.
    let mut deep = vec![0xa2, 0x00, 0x01, 0x18, 0x63];
    deep.extend(core::iter::repeat_n(0x81, 100_000));
    deep.push(0x00);
    assert!(HeartbeatAck::from_cbor(&deep).is_err());
    let claim = [
        0xa2, 0x00, 0x01, 0x04, 0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    ];
    assert!(DesiredState::from_cbor(&claim).is_err());
}

#[test]
fn issue7_trust_reports_round_trip_and_bound_their_detail() {
    let id = DeviceId::new("gw-1").unwrap();
    round_trip(&TrustReport::new(
        &id,
        7,
        Some(2),
        2,
        TrustOutcome::Rotated {
            keys: 3,
            threshold: 2,
        },
    ));
    let rejected = |detail: String| {
        TrustReport::new(
            &id,
            7,
            None,
            1,
            TrustOutcome::Rejected {
                cause: TrustRejectCause::TooFewSignatures,
                detail,
            },
        )
    };
    round_trip(&rejected("1 valid of 2 required".into()));
    assert_eq!(
        TrustReport::from_cbor(&rejected("x".repeat(WireLimits::MAX_TEXT_BYTES + 1)).to_cbor()),
        Err(WireError::LimitExceeded {
            what: "trust detail",
            limit: WireLimits::MAX_TEXT_BYTES
        })
    );
    assert_eq!(rejected(String::new()).outcome.name(), "trust-rejected");
}

#[test]
fn issue7_trust_update_errors_map_to_their_causes() {
    use crate::release::{ReleaseError, TrustUpdateError};
    let cases = [
        (
            TrustUpdateError::Envelope(ReleaseError::UnknownKey),
            "unknown-key",
        ),
        (
            TrustUpdateError::Envelope(ReleaseError::ThresholdNotMet {
                valid: 1,
                required: 2,
            }),
            "too-few-signatures",
        ),
        (
            TrustUpdateError::Stale {
                sequence: 1,
                current: 1,
            },
            "stale",
        ),
        (TrustUpdateError::InvalidKey, "invalid-trust-set"),
        (TrustUpdateError::Malformed, "malformed"),
        (
            TrustUpdateError::Envelope(ReleaseError::Malformed("x")),
            "malformed",
        ),
    ];
    for (e, name) in cases {
        assert_eq!(TrustRejectCause::from(&e).name(), name, "{e}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn arbitrary_bytes_never_panic_any_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = DesiredState::from_cbor(&bytes);
        let _ = ReportedState::from_cbor(&bytes);
        let _ = Event::from_cbor(&bytes);
        let _ = Heartbeat::from_cbor(&bytes);
        let _ = HeartbeatAck::from_cbor(&bytes);
        let _ = Status::from_cbor(&bytes);
        let _ = TrustReport::from_cbor(&bytes);
        let _ = crate::update::PersistedState::from_cbor(&bytes);
    }

    #[test]
    fn mutated_messages_never_panic(index in any::<prop::sample::Index>(), xor in 1u8..=255) {
        for mut bytes in [desired().to_cbor(), reported().to_cbor()] {
            let i = index.index(bytes.len());
            bytes[i] ^= xor;
            let _ = DesiredState::from_cbor(&bytes);
            let _ = ReportedState::from_cbor(&bytes);
        }
    }

    #[test]
    fn topic_parser_never_panics(topic in "\\PC{0,80}") {
        let _ = parse_device_topic(&topic);
    }
}

/// The rows of the table that follows `heading` in docs/protocol.md: (value, first word).
fn protocol_table(heading: &str) -> Vec<(u64, String)> {
    let doc = include_str!("../../../docs/protocol.md");
    let start = doc
        .find(heading)
        .expect("table heading in docs/protocol.md");
    doc[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let word = cells[2].split_whitespace().next().unwrap_or("");
            (cells[1].parse().unwrap(), String::from(word))
        })
        .collect()
}

#[test]
fn issue12_cause_names_are_protocol_kebab_case() {
    let reject = [
        RejectCause::Malformed,
        RejectCause::TooLarge,
        RejectCause::UnsupportedAlgorithm,
        RejectCause::UnknownKey,
        RejectCause::BadSignature,
        RejectCause::ThresholdNotMet,
        RejectCause::Expired,
        RejectCause::IncompatibleHardware,
        RejectCause::Downgrade,
        RejectCause::Other,
        RejectCause::GenerationJump,
        RejectCause::JournalDamaged,
    ];
    let phases = [
        FailurePhase::Download,
        FailurePhase::Verify,
        FailurePhase::Install,
        FailurePhase::Trial,
    ];
    let reasons = [
        RollbackReason::ProbeFailed,
        RollbackReason::ProbeTimeout,
        RollbackReason::ServerUnreachable,
        RollbackReason::RebootDuringTrial,
        RollbackReason::TrialTimeout,
        RollbackReason::BootFailed,
    ];
    let index = |bytes: Vec<u8>| -> u64 { minicbor::decode(&bytes).unwrap() };
    let ours = |names: Vec<(Vec<u8>, &str)>| -> Vec<(u64, String)> {
        names
            .into_iter()
            .map(|(cbor, name)| (index(cbor), String::from(name)))
            .collect()
    };
    assert_eq!(
        ours(
            reject
                .iter()
                .map(|c| (minicbor::to_vec(c).unwrap(), c.name()))
                .collect()
        ),
        protocol_table("RejectCause values:")
    );
    assert_eq!(
        ours(
            phases
                .iter()
                .map(|p| (minicbor::to_vec(p).unwrap(), p.name()))
                .collect()
        ),
        protocol_table("FailurePhase values:")
    );
    assert_eq!(
        ours(
            reasons
                .iter()
                .map(|r| (minicbor::to_vec(r).unwrap(), r.name()))
                .collect()
        ),
        protocol_table("RollbackReason values:")
    );
    assert_eq!(RollbackReason::ProbeTimeout.name(), "probe-timeout");
    assert_eq!(RejectCause::UnknownKey.name(), "unknown-key");
}

#[test]
fn an_outcome_names_its_rollout_only_when_the_id_is_a_fleet_servers() {
    let outcome = |id: Option<&str>| UpdateOutcome {
        generation: 1,
        rollout_id: id.map(Into::into),
        digest: None,
        state: ExecutionState::Succeeded,
        at: 0,
        transfer: None,
    };
    assert_eq!(outcome(Some("42")).rollout(), RolloutId::new(42));
    for other in [None, Some("r-1"), Some("0"), Some("-3"), Some("")] {
        assert_eq!(outcome(other).rollout(), None, "{other:?}");
    }
}

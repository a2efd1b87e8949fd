//! Writes the seed corpus of the `wire_decode` target: one valid encoding of every payload
//! and record it decodes (several shapes of the richer ones), named after what they hold.
//!
//! ```sh
//! cd core/fuzz && cargo +nightly run --example wire_seeds -- corpus/wire_decode
//! ```
//!
//! Deterministic: the same build writes the same bytes (fixed keys, times and ids).

use std::collections::BTreeMap;
use std::path::PathBuf;

use ota_core::digest::Digest;
use ota_core::flags::{FlagEdit, FlagName, FlagSet};
use ota_core::release::{SigningKey, TrustUpdate, sign_trust_update};
use ota_core::rollout::{Ratio, Timestamp};
use ota_core::update::{InFlight, Job, PERSIST_VERSION, PersistedState, ReleaseInfo};
use ota_core::wire::{
    DesiredState, DeviceId, Event, ExecutionState, FailurePhase, Heartbeat, HeartbeatAck,
    Inventory, PROTOCOL_VERSION, PowerReading, RejectCause, ReportedState, RollbackReason,
    RunningRelease, Status, TrustOutcome, TrustRejectCause, Transfer, TrustReport, UpdateOutcome,
    WireMessage,
};

/// A real signed release from the firmware fixtures, embedded in desired states.
const RELEASE: &[u8] = include_bytes!("../../../firmware-fixtures/data/v2.release");

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or("corpus/wire_decode".into()),
    );
    std::fs::create_dir_all(&dir)?;
    let mut seeds: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: &str, bytes: Vec<u8>| seeds.push((name.to_owned(), bytes));

    let desired = DesiredState {
        v: PROTOCOL_VERSION,
        generation: 7,
        rollout_id: Some("42".into()),
        release: RELEASE.to_vec(),
        artifact_urls: vec!["https://a.example/x".into(), "http://b.example/x".into()],
        force_reinstall: false,
    };
    add("desired", desired.to_cbor());
    add(
        "desired-minimal",
        DesiredState {
            rollout_id: None,
            release: vec![0xd8, 0x62, 0x84],
            artifact_urls: vec![],
            force_reinstall: true,
            ..desired.clone()
        }
        .to_cbor(),
    );

    let running = RunningRelease {
        version: "2.0.0".into(),
        digest: Digest::of(b"image"),
        security_version: 3,
    };
    let states = [
        ExecutionState::Queued,
        ExecutionState::Notified,
        ExecutionState::DeferredPower {
            reading: PowerReading {
                battery_percent: Some(12),
                charging: false,
                mains_online: false,
            },
        },
        ExecutionState::DeferredWindow {
            opens_at: Some(1_750_000_000_000),
        },
        ExecutionState::DeferredDisk {
            needed: 10 << 20,
            free: 5 << 20,
        },
        ExecutionState::Downloading {
            done: 1 << 20,
            total: 2 << 20,
        },
        ExecutionState::Installing,
        ExecutionState::Trial,
        ExecutionState::Succeeded,
        ExecutionState::SkippedIdentical,
        ExecutionState::Rejected {
            cause: RejectCause::Downgrade,
            detail: "below floor".into(),
        },
        ExecutionState::Failed {
            phase: FailurePhase::Verify,
            reason: "digest mismatch".into(),
        },
        ExecutionState::RolledBack {
            reason: RollbackReason::ProbeTimeout,
            detail: "probe timed out".into(),
        },
        ExecutionState::TimedOut,
    ];
    let outcome = UpdateOutcome {
        generation: 7,
        rollout_id: Some("42".into()),
        digest: Some(Digest::of(b"image")),
        state: states[11].clone(),
        at: 1_750_000_000_000,
        transfer: Some(Transfer {
            fetched: 1 << 18,
            size: 1 << 20,
        }),
    };
    let reported = ReportedState {
        v: PROTOCOL_VERSION,
        device_id: "gw-1".into(),
        agent_version: "0.1.0".into(),
        hardware_class: "gw-a".into(),
        running: Some(running.clone()),
        known_good: Some(running.clone()),
        trial: Some(running.clone()),
        cached: vec![Digest::of(b"image"), Digest::of(b"old")],
        last_result: Some(outcome.clone()),
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
        labels: BTreeMap::from([
            ("site".into(), "lab".into()),
            ("ring".into(), "canary".into()),
        ]),
        generation: 7,
        security_floor: 3,
    };
    add("reported", reported.to_cbor());
    add(
        "reported-minimal",
        ReportedState {
            running: None,
            known_good: None,
            trial: None,
            cached: vec![],
            last_result: None,
            power: None,
            inventory: Inventory::default(),
            labels: BTreeMap::new(),
            ..reported.clone()
        }
        .to_cbor(),
    );

    let device = DeviceId::new("gw-1")?;
    for state in &states {
        let outcome = UpdateOutcome {
            state: state.clone(),
            ..outcome.clone()
        };
        add(
            &format!("event-{}", state.name()),
            Event::from_outcome(&device, &outcome).to_cbor(),
        );
    }
    add(
        "status-online",
        Status {
            v: PROTOCOL_VERSION,
            online: true,
            at: 1_750_000_000_000,
        }
        .to_cbor(),
    );
    add(
        "status-offline",
        Status {
            v: PROTOCOL_VERSION,
            online: false,
            at: 0,
        }
        .to_cbor(),
    );
    add(
        "heartbeat",
        Heartbeat {
            v: PROTOCOL_VERSION,
            seq: 9,
            at: 1_750_000_000_000,
        }
        .to_cbor(),
    );
    add(
        "heartbeat-ack",
        HeartbeatAck {
            v: PROTOCOL_VERSION,
            seq: 9,
        }
        .to_cbor(),
    );
    add(
        "trust-rotated",
        TrustReport::new(
            &device,
            1_750_000_000_000,
            Some(2),
            2,
            TrustOutcome::Rotated {
                keys: 3,
                threshold: 2,
            },
        )
        .to_cbor(),
    );
    add(
        "trust-rejected",
        TrustReport::new(
            &device,
            1_750_000_000_000,
            None,
            2,
            TrustOutcome::Rejected {
                cause: TrustRejectCause::TooFewSignatures,
                detail: "signature threshold not met: 1 valid of 2 required".into(),
            },
        )
        .to_cbor(),
    );

    // Flags: a set with a few flags, the audit records of its edits, a device's evaluation
    // (payload and file), each definition.
    let mut set = FlagSet::new(Timestamp::from_unix_millis(1_750_000_000_000));
    let edits = [
        (
            "dark-mode",
            FlagEdit::Set {
                on: true,
                filter: None,
                percent: None,
            },
        ),
        (
            "new-ui",
            FlagEdit::Set {
                on: true,
                filter: None,
                percent: Some(Ratio::percent(5)),
            },
        ),
        (
            "new-ui",
            FlagEdit::Set {
                on: true,
                filter: Some("hw=gw-a".into()),
                percent: Some(Ratio::percent(20)),
            },
        ),
        ("dark-mode", FlagEdit::Kill),
    ];
    for (i, (name, edit)) in edits.into_iter().enumerate() {
        let name = FlagName::new(name)?;
        let at = Timestamp::from_unix_millis(1_750_000_000_000 + i as u64);
        if let Some(change) = set.apply(&name, edit, "alice", at)? {
            add(&format!("flag-change-{i}"), change.to_cbor());
        }
    }
    for def in set.iter() {
        add(&format!("flag-definition-{}", def.name), def.to_cbor());
    }
    add("flag-set", set.to_cbor());
    let flags = set.evaluate(&device, |f| f == "hw=gw-a");
    add("device-flags", flags.to_cbor());
    add("device-flags-file", flags.to_file().into_bytes());

    // A key rotation: one key to two, threshold 2, signed by the current key.
    let current = SigningKey::from_bytes(&[1u8; 32]);
    let next = [
        SigningKey::from_bytes(&[2u8; 32]),
        SigningKey::from_bytes(&[3u8; 32]),
    ];
    let keys: Vec<_> = next.iter().map(SigningKey::verifying_key).collect();
    let update = TrustUpdate::new(2, &keys, 2, 1_750_000_000);
    add("trust-update", sign_trust_update(&update, &[current]));

    // The agent's persisted state, one per operation in flight.
    let info = ReleaseInfo {
        version: "2.0.0".into(),
        digest: Digest::of(b"image"),
        security_version: 3,
        size: 1 << 20,
        installer: Some("files".into()),
        chunk_index: None,
    };
    let job = Job {
        generation: 7,
        rollout_id: Some("42".into()),
        release: info.clone(),
        urls: vec!["https://a.example/x".into()],
        force: false,
        transfer: None,
    };
    let in_flight = [
        None,
        Some(InFlight::Pending { job: job.clone() }),
        Some(InFlight::Installing {
            job: job.clone(),
            attempt: 1,
        }),
        Some(InFlight::Trial {
            job: job.clone(),
            started_ms: 1,
            deadline_ms: 600_001,
            boot_count: 3,
            reboots: 0,
        }),
        Some(InFlight::RollingBack {
            job: job.clone(),
            target: info.clone(),
            outcome: states[12].clone(),
        }),
    ];
    for (i, in_flight) in in_flight.into_iter().enumerate() {
        let state = PersistedState {
            v: PERSIST_VERSION,
            security_floor: 3,
            running: Some(info.clone()),
            known_good: Some(info.clone()),
            cache: vec![info.clone()],
            last_generation: 7,
            in_flight,
            last_result: Some(outcome.clone()),
        };
        add(&format!("persisted-{i}"), state.to_cbor());
    }

    // Topics (the same target parses the input as a topic too).
    for topic in [
        "ota/v1/devices/gw-1/desired",
        "ota/v1/devices/gw-1/heartbeat/ack",
        "ota/v1/flags/devices/gw-1",
    ] {
        add(&topic.replace('/', "_"), topic.as_bytes().to_vec());
    }

    let n = seeds.len();
    for (name, bytes) in seeds {
        std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
    }
    println!("wrote {n} seeds to {}", dir.display());
    Ok(())
}

//! The agent's update machine, driven by a deterministic simulator: a shell double that answers
//! every action from a tiny simulated world (cache, partial files, mirrors, power, disk, probe,
//! server) and jumps `now` to `poll_timeout()` (like quinn-proto's `Pair::drive`).
//!
//! On every action the simulator also checks the write-ahead rule (the last `Persist` protects
//! the side effect) and that every persisted state, event and reported state survives its CBOR
//! round trip.
//!
//! One test (at least) per rule of `docs/update-machine.md`, then duplicates, recovery and
//! determinism.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "the simulator is test code: a failing unwrap or panic is a failing test"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use ota_core::digest::Digest;
use ota_core::release::{Manifest, ReleaseError, TrustSet, sign};
use ota_core::update::{
    Action, Config, DownloadError, FloorRecord, InFlight, InstallError, MAX_GENERATION_STEP,
    MaintenanceWindow, MaintenanceWindows, PersistedState, PowerPolicy, ProbeResult, ReleaseInfo,
    RetryPolicy, Slot, Stage, Timestamp, UpdateMachine, Weekdays,
};
use ota_core::wire::{
    DesiredState, DeviceId, Event, ExecutionState, FailurePhase, Inventory, PROTOCOL_VERSION,
    PowerReading, RejectCause, ReportedState, RollbackReason, Transfer, WireMessage,
};
use proptest::prelude::*;

/// 2025-06-15 15:06:40 UTC (a Sunday), unix ms.
const NOW: u64 = 1_750_000_000_000;
const SIZE: u64 = 1_000_000;
const MINUTE: Duration = Duration::from_secs(60);
const MIRROR_A: &str = "https://a.example/artifact";
const MIRROR_B: &str = "https://b.example/artifact";

// ---- releases ----------------------------------------------------------------------------

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn manifest(version: &str, security_version: u32) -> Manifest {
    Manifest {
        format_version: ota_core::release::FORMAT_VERSION,
        product: "gateway-fw".into(),
        version: version.into(),
        security_version,
        artifact_sha256: digest(version).0,
        artifact_size: SIZE,
        hardware: vec!["gw-a".into()],
        created: 1_700_000_000,
        expires: Some(1_800_000_000),
        installer: Some("files".into()),
        metadata: BTreeMap::new(),
        chunk_index: None,
    }
}

/// The (fake) artifact digest of a version: the simulator never hashes, it trusts the shell's
/// streaming verifier.
fn digest(version: &str) -> Digest {
    Digest::of(version.as_bytes())
}

fn info(version: &str, security_version: u32) -> ReleaseInfo {
    ReleaseInfo::from_manifest(&manifest(version, security_version))
}

fn desired_bytes(generation: u64, release: Vec<u8>) -> DesiredState {
    DesiredState {
        v: PROTOCOL_VERSION,
        generation,
        rollout_id: Some("rollout-1".into()),
        release,
        artifact_urls: vec![MIRROR_A.into(), MIRROR_B.into()],
        force_reinstall: false,
    }
}

fn desired(generation: u64, version: &str, security_version: u32) -> DesiredState {
    desired_bytes(
        generation,
        sign(&manifest(version, security_version), &[key(1)]),
    )
}

fn factory() -> ReleaseInfo {
    info("1.0.0", 1)
}

fn config() -> Config {
    let trust = TrustSet::new(vec![key(1).verifying_key()], 1).unwrap();
    let mut c = Config::new(DeviceId::new("gw-1").unwrap(), "gw-a", trust);
    c.factory = Some(factory());
    c.retry.jitter_seed = 7;
    c
}

// ---- the simulated shell -----------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mirror {
    Good,
    Tampered,
    Down,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    Healthy,
    NotYet,
    Fail,
}

#[derive(Debug, Clone)]
struct Sim {
    config: Config,
    m: UpdateMachine,
    now: Timestamp,
    boot: u32,
    /// Every action, with the time it was taken.
    log: Vec<(Timestamp, Action)>,
    persisted: Option<PersistedState>,
    // The world.
    cache: BTreeSet<Digest>,
    corrupt: BTreeSet<Digest>,
    partial: BTreeMap<Digest, u64>,
    mirrors: BTreeMap<String, Mirror>,
    power: PowerReading,
    disk_free: u64,
    probe: Probe,
    server_up: bool,
    connected: bool,
    failing_installs: BTreeSet<Digest>,
    hold_downloads: bool,
    hold_installs: bool,
    installed: Option<Digest>,
    downloaded_bytes: u64,
    /// Boot slots: what each slot holds, the bootloader's default and one-time try.
    slots: BTreeMap<Slot, Digest>,
    boot_default: Slot,
    boot_try: Option<Slot>,
    booted: Slot,
    /// Slots whose system does not come up (a broken init, a crash before the commit).
    unbootable: BTreeSet<Slot>,
    reboot_requested: bool,
    reboot_fails: bool,
}

impl Sim {
    fn new(config: Config) -> Self {
        let now = Timestamp(NOW);
        let m = UpdateMachine::recover(config.clone(), None, 1, now);
        let mut sim = Sim {
            m,
            now,
            boot: 1,
            log: Vec::new(),
            persisted: None,
            cache: config.factory.iter().map(|f| f.digest).collect(),
            installed: config.factory.as_ref().map(|f| f.digest),
            config,
            corrupt: BTreeSet::new(),
            partial: BTreeMap::new(),
            mirrors: BTreeMap::from([
                (MIRROR_A.into(), Mirror::Good),
                (MIRROR_B.into(), Mirror::Good),
            ]),
            power: PowerReading::MAINS,
            disk_free: 1 << 40,
            probe: Probe::Healthy,
            server_up: true,
            connected: false,
            failing_installs: BTreeSet::new(),
            hold_downloads: false,
            hold_installs: false,
            downloaded_bytes: 0,
            slots: BTreeMap::new(),
            boot_default: Slot::A,
            boot_try: None,
            booted: Slot::A,
            unbootable: BTreeSet::new(),
            reboot_requested: false,
            reboot_fails: false,
        };
        if let Some(f) = &sim.config.factory {
            sim.slots.insert(Slot::A, f.digest);
        }
        sim.run();
        sim.observe_boot();
        sim.connect();
        sim
    }

    /// Boot slots: the shell tells the machine which slot booted.
    fn observe_boot(&mut self) {
        if self.config.boot_slots {
            self.m.handle_boot_observed(self.booted, self.now);
            self.run();
        }
    }

    /// The bootloader's choice at power-on, as the documented scripts make it: a pending try
    /// is consumed and booted; a slot that does not come up is reset by the watchdog and the
    /// next power-on boots the default.
    fn power_on(&mut self) {
        let first = self.boot_try.take().unwrap_or(self.boot_default);
        self.booted = if self.unbootable.contains(&first) {
            self.boot_default
        } else {
            first
        };
        self.installed = self.slots.get(&self.booted).copied();
    }

    /// Performs the reboot the machine asked for (at `now`).
    fn reboot(&mut self, now: Timestamp) {
        assert!(self.reboot_requested, "no reboot was requested");
        self.reboot_requested = false;
        self.power_on();
        self.restart(true, now);
    }

    fn connect(&mut self) {
        self.connected = true;
        self.m.handle_connected(self.now);
        self.run();
    }

    fn disconnect(&mut self) {
        self.connected = false;
        self.m.handle_disconnected(self.now);
        self.run();
    }

    fn offer(&mut self, d: DesiredState) {
        self.m.handle_desired(d, self.now);
        self.run();
    }

    /// A crash (or reboot when `reboot`) and a restart at `now` from the persisted state.
    fn restart(&mut self, reboot: bool, now: Timestamp) {
        if reboot {
            self.boot += 1;
        }
        self.now = now;
        self.connected = false;
        self.m =
            UpdateMachine::recover(self.config.clone(), self.persisted.clone(), self.boot, now);
        self.run();
        self.observe_boot();
        self.connect();
    }

    /// Answers actions until there are none.
    fn run(&mut self) {
        for _ in 0..100_000 {
            let Some(action) = self.m.poll_action() else {
                return;
            };
            self.check_write_ahead(&action);
            self.log.push((self.now, action.clone()));
            self.respond(action);
        }
        panic!("the machine never stops acting");
    }

    /// Runs, then jumps time to each wake-up until `d` has passed.
    fn drive(&mut self, d: Duration) {
        let until = self.now.saturating_add(d);
        for _ in 0..1_000_000 {
            self.run();
            match self.m.poll_timeout() {
                Some(t) if t <= until => {
                    self.now = self.now.max(t);
                    self.m.handle_timeout(self.now);
                }
                _ => {
                    self.now = until;
                    return self.run();
                }
            }
        }
        panic!("time never reaches its end");
    }

    fn respond(&mut self, action: Action) {
        let now = self.now;
        match action {
            Action::Persist(state) => {
                assert_eq!(
                    PersistedState::from_cbor(&state.to_cbor()).as_ref(),
                    Ok(&*state),
                    "persisted state round-trips"
                );
                self.persisted = Some(*state);
            }
            Action::PublishEvent(event) => {
                assert_eq!(Event::from_cbor(&event.to_cbor()), Ok(event));
            }
            Action::PublishReported => {
                let r = self
                    .m
                    .reported_state("0.1.0", Inventory::default(), BTreeMap::new());
                assert_eq!(ReportedState::from_cbor(&r.to_cbor()), Ok(r));
            }
            Action::ReadPower => self.m.handle_power(self.power, now),
            Action::CheckDisk { .. } => self.m.handle_disk(self.disk_free, now),
            Action::HashCached { digest, .. } => {
                let ok = self.cache.contains(&digest) && !self.corrupt.contains(&digest);
                self.m.handle_cache_hashed(digest, ok, now);
            }
            Action::InspectPartial { digest } => {
                let len = self.partial.get(&digest).copied().unwrap_or(0);
                self.m.handle_partial(digest, len, now);
            }
            Action::Download {
                url,
                digest,
                size,
                resume_from,
                chunk_index: _,
            } => self.download(&url, digest, size, resume_from),
            Action::DiscardPartial { digest } => {
                self.partial.remove(&digest);
            }
            Action::Install {
                release,
                slot: Some(slot),
                ..
            } => {
                assert_ne!(slot, self.booted, "never write the booted slot");
                let result = if self.failing_installs.contains(&release.digest) {
                    Err(InstallError::new("slot read-back mismatch"))
                } else {
                    self.slots.insert(slot, release.digest);
                    self.boot_try = Some(slot);
                    Ok(())
                };
                self.m.handle_install_done(release.digest, result, now);
            }
            Action::Reboot => {
                if self.reboot_fails {
                    self.m.handle_reboot_failed("reboot: not permitted", now);
                } else {
                    self.reboot_requested = true;
                }
            }
            Action::BootSlot { slot } => {
                self.boot_default = slot;
                self.boot_try = None;
            }
            Action::Commit { .. } if self.config.boot_slots => {
                self.boot_default = self.booted;
            }
            Action::Install { release, .. } => {
                if self.hold_installs {
                    return;
                }
                let result = if !self.cache.contains(&release.digest) {
                    Err(InstallError::new("not in the cache"))
                } else if self.corrupt.contains(&release.digest) {
                    // The shell re-hashes before every install (issue 19.8).
                    Err(InstallError::corrupt_artifact("digest mismatch"))
                } else if self.failing_installs.contains(&release.digest) {
                    Err(InstallError::new("disk full"))
                } else {
                    self.installed = Some(release.digest);
                    Ok(())
                };
                self.m.handle_install_done(release.digest, result, now);
            }
            Action::Commit { .. } => {}
            Action::ObserveRunning => self.m.handle_observed_running(self.installed, now),
            Action::Evict { digest } => {
                self.cache.remove(&digest);
            }
            Action::RunProbe { .. } => match self.probe {
                Probe::Healthy => self.m.handle_probe(ProbeResult::Healthy, now),
                Probe::NotYet => self
                    .m
                    .handle_probe(ProbeResult::NotYet("service starting".into()), now),
                Probe::Fail => self
                    .m
                    .handle_probe(ProbeResult::Failed("service crashed".into()), now),
            },
            Action::CheckHealth { .. } => {
                let result = match self.probe {
                    Probe::Healthy => ProbeResult::Healthy,
                    Probe::NotYet | Probe::Fail => ProbeResult::NotYet("service down".into()),
                };
                self.m.handle_health(result, now);
            }
            Action::SendHeartbeat { seq, .. } => {
                if self.connected && self.server_up {
                    self.m.handle_heartbeat_ack(seq, now);
                }
            }
            other => panic!("unexpected action {other:?}"),
        }
    }

    fn download(&mut self, url: &str, digest: Digest, size: u64, resume_from: u64) {
        let now = self.now;
        if self.hold_downloads {
            // The transfer runs (half of what is left lands on disk) and never finishes.
            let half = resume_from + (size - resume_from) / 2;
            self.partial.insert(digest, half);
            self.downloaded_bytes += half - resume_from;
            return;
        }
        match self.mirrors.get(url).copied().unwrap_or(Mirror::Down) {
            Mirror::Good => {
                self.downloaded_bytes += size - resume_from;
                self.m.handle_download_progress(digest, size / 2, now);
                self.m.handle_download_progress(digest, size, now);
                self.partial.remove(&digest);
                self.cache.insert(digest);
                self.corrupt.remove(&digest);
                self.m.handle_download_complete(digest, size, now);
            }
            Mirror::Tampered => {
                self.downloaded_bytes += size - resume_from;
                let e = ReleaseError::DigestMismatch {
                    expected: digest,
                    actual: Digest::of(b"evil"),
                };
                self.m
                    .handle_download_failed(digest, DownloadError::Verify(e), now);
            }
            Mirror::Down => {
                let e = DownloadError::Transient("connection refused".into());
                self.m.handle_download_failed(digest, e, now);
            }
        }
    }

    /// The write-ahead rule: the last persisted state already records what a side effect does.
    fn check_write_ahead(&self, action: &Action) {
        let p = self.persisted.as_ref();
        let in_flight = p.and_then(|p| p.in_flight.as_ref());
        match action {
            Action::Download { digest, .. } => assert!(
                matches!(in_flight, Some(InFlight::Pending { job }) if job.release.digest == *digest),
                "Download without a persisted Pending job"
            ),
            Action::Install {
                release,
                rollback: false,
                ..
            } => assert!(
                matches!(in_flight, Some(InFlight::Installing { job, .. }) if job.release.digest == release.digest),
                "Install without a persisted Installing"
            ),
            Action::Install {
                release,
                rollback: true,
                ..
            } => assert!(
                matches!(in_flight, Some(InFlight::RollingBack { target, .. }) if target.digest == release.digest),
                "rollback Install without a persisted RollingBack"
            ),
            Action::Reboot => assert!(
                matches!(in_flight, Some(InFlight::Rebooting { .. })),
                "Reboot without a persisted Rebooting"
            ),
            Action::Commit { digest } => {
                let p = p.unwrap();
                assert_eq!(p.known_good.as_ref().map(|k| k.digest), Some(*digest));
                assert!(p.in_flight.is_none());
            }
            Action::Evict { digest } => {
                let p = p.unwrap();
                assert!(
                    !p.cache.iter().any(|r| r.digest == *digest),
                    "evicted while indexed"
                );
                // Only a file that failed its re-hash may go while running or known-good.
                if !self.corrupt.contains(digest) {
                    for kept in [&p.running, &p.known_good].into_iter().flatten() {
                        assert_ne!(
                            kept.digest, *digest,
                            "evicted the running or known-good release"
                        );
                    }
                }
            }
            _ => {}
        }
    }

    // ---- what happened --------------------------------------------------------------------

    fn actions(&self) -> impl Iterator<Item = &Action> {
        self.log.iter().map(|(_, a)| a)
    }

    fn count(&self, pred: impl Fn(&Action) -> bool) -> usize {
        self.actions().filter(|a| pred(a)).count()
    }

    fn downloads(&self) -> Vec<(Timestamp, String, u64)> {
        self.log
            .iter()
            .filter_map(|(t, a)| match a {
                Action::Download {
                    url, resume_from, ..
                } => Some((*t, url.clone(), *resume_from)),
                _ => None,
            })
            .collect()
    }

    fn installs(&self) -> Vec<(Digest, bool)> {
        self.actions()
            .filter_map(|a| match a {
                Action::Install {
                    release, rollback, ..
                } => Some((release.digest, *rollback)),
                _ => None,
            })
            .collect()
    }

    fn events(&self) -> Vec<&Event> {
        self.actions()
            .filter_map(|a| match a {
                Action::PublishEvent(e) => Some(e),
                _ => None,
            })
            .collect()
    }

    /// The event state names of one generation, in order.
    fn states(&self, generation: u64) -> Vec<&'static str> {
        self.events()
            .into_iter()
            .filter(|e| e.generation == generation)
            .map(|e| e.kind.name())
            .collect()
    }

    fn last_state_is_final(&self) -> bool {
        self.m.status().current.is_some_and(|c| c.state.is_final())
    }

    fn last_state(&self) -> ExecutionState {
        self.m.status().last_result.unwrap().state
    }

    fn running(&self) -> Option<Digest> {
        self.m.status().running.map(|r| r.digest)
    }

    fn known_good(&self) -> Option<Digest> {
        self.m.status().known_good.map(|r| r.digest)
    }

    /// Forgets the log (to look only at what follows).
    fn clear_log(&mut self) {
        self.log.clear();
    }
}

fn is_network(a: &Action) -> bool {
    matches!(
        a,
        Action::Download { .. } | Action::InspectPartial { .. } | Action::CheckDisk { .. }
    )
}

// ---- a plain update ------------------------------------------------------------------------

#[test]
fn an_update_goes_through_every_state_and_commits() {
    let mut sim = Sim::new(config());
    sim.offer(desired(1, "2.0.0", 2));
    sim.drive(MINUTE);
    assert_eq!(
        sim.states(1),
        [
            "notified",
            "downloading",
            "downloading",
            "downloading",
            "installing",
            "trial",
            "succeeded"
        ]
    );
    assert_eq!(sim.running(), Some(digest("2.0.0")));
    assert_eq!(sim.known_good(), Some(digest("2.0.0")));
    assert_eq!(sim.installed, Some(digest("2.0.0")));
    assert_eq!(sim.m.status().security_floor, 2, "the floor rose at commit");
    assert_eq!(sim.count(|a| matches!(a, Action::Commit { .. })), 1);
    assert_eq!(sim.downloaded_bytes, SIZE);
    assert_eq!(sim.m.status().stage, Stage::Idle);
    let reported = sim
        .m
        .reported_state("0.1.0", Inventory::default(), BTreeMap::new());
    assert_eq!(reported.generation, 1);
    assert_eq!(reported.security_floor, 2);
    assert_eq!(reported.running.unwrap().version, "2.0.0");
    assert_eq!(
        reported.last_result.unwrap().state,
        ExecutionState::Succeeded
    );
}

/// Issue 13 (found by the whole-fleet simulation): the steps of a job that happen in the same
/// millisecond get event times one apart, so the server's `(generation, at)` order never takes
/// two events that overtook each other in the wrong order.
#[test]
fn issue13_each_event_of_a_job_is_stamped_later_than_the_one_before() {
    let mut sim = Sim::new(config());
    sim.offer(desired(1, "2.0.0", 2));
    sim.drive(MINUTE);
    let times: Vec<u64> = sim
        .events()
        .into_iter()
        .filter(|e| e.generation == 1)
        .map(|e| e.at)
        .collect();
    assert_eq!(times.len(), 7, "{times:?}");
    assert_eq!(times[0], NOW, "the first one at the time it happened");
    assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
    let reported = sim
        .m
        .reported_state("0.1.0", Inventory::default(), BTreeMap::new());
    assert_eq!(reported.last_result.map(|o| o.at), times.last().copied());
}

#[test]
fn issue18_the_download_cost_is_reported_with_every_later_event_of_the_job() {
    let mut sim = Sim::new(config());
    sim.offer(desired(1, "2.0.0", 2));
    sim.drive(MINUTE);
    let transfer_of = |sim: &Sim, generation: u64, state: &str| {
        sim.events()
            .iter()
            .filter(|e| e.generation == generation && e.kind.name() == state)
            .map(|e| e.transfer)
            .collect::<Vec<_>>()
    };
    let full = Some(Transfer {
        fetched: SIZE,
        size: SIZE,
    });
    assert!(
        transfer_of(&sim, 1, "downloading")
            .iter()
            .all(Option::is_none)
    );
    for state in ["installing", "trial", "succeeded"] {
        assert_eq!(transfer_of(&sim, 1, state), [full], "{state}");
    }
    let reported = sim
        .m
        .reported_state("0.1.0", Inventory::default(), BTreeMap::new());
    assert_eq!(reported.last_result.unwrap().transfer, full);

    // Rolled back, then offered again: installed from the cache, nothing fetched.
    sim.probe = Probe::Fail;
    sim.offer(desired(2, "3.0.0", 3));
    sim.probe = Probe::Healthy;
    sim.offer(desired(3, "3.0.0", 3));
    sim.drive(MINUTE);
    assert_eq!(sim.last_state(), ExecutionState::Succeeded);
    assert_eq!(transfer_of(&sim, 3, "succeeded"), [None]);
}

// ---- rule 1: verify before fetching anything ---------------------------------------------

#[test]
fn rule1_invalid_releases_are_rejected_before_anything_is_fetched() {
    let expired = {
        let mut m = manifest("2.0.0", 2);
        m.expires = Some(NOW / 1000 - 1);
        sign(&m, &[key(1)])
    };
    let other_hardware = {
        let mut m = manifest("2.0.0", 2);
        m.hardware = vec!["gw-b".into()];
        sign(&m, &[key(1)])
    };
    let cases = [
        (
            sign(&manifest("2.0.0", 2), &[key(9)]),
            RejectCause::UnknownKey,
        ),
        (expired, RejectCause::Expired),
        (other_hardware, RejectCause::IncompatibleHardware),
        (
            sign(&manifest("0.9.0", 0), &[key(1)]),
            RejectCause::Downgrade,
        ),
        (b"not a release".to_vec(), RejectCause::Malformed),
    ];
    for (bytes, expected) in cases {
        let mut sim = Sim::new(config());
        sim.clear_log();
        sim.offer(desired_bytes(1, bytes));
        sim.drive(MINUTE);
        assert_eq!(sim.states(1), ["rejected"]);
        assert!(
            matches!(sim.last_state(), ExecutionState::Rejected { cause, .. } if cause == expected)
        );
        assert_eq!(
            sim.count(|a| is_network(a)
                || matches!(
                    a,
                    Action::HashCached { .. } | Action::ReadPower | Action::Install { .. }
                )),
            0,
            "nothing fetched or installed for {expected:?}"
        );
        assert_eq!(sim.m.status().last_generation, 1, "a rejection is acted on");
    }
}

#[test]
fn issue7_a_rotated_trust_set_is_used_for_every_later_offer() {
    let mut sim = Sim::new(config());
    sim.m
        .set_trust(TrustSet::new(vec![key(2).verifying_key()], 1).unwrap());
    assert_eq!(
        sim.m.config().trust,
        TrustSet::new(vec![key(2).verifying_key()], 1).unwrap()
    );
    // Signed only by the revoked key 1: rejected before anything is fetched.
    sim.clear_log();
    sim.offer(desired(1, "2.0.0", 2));
    sim.drive(MINUTE);
    assert!(matches!(
        sim.last_state(),
        ExecutionState::Rejected {
            cause: RejectCause::UnknownKey,
            ..
        }
    ));
    assert_eq!(sim.count(is_network), 0);
    // Signed by the new key: installed and committed.
    sim.offer(desired_bytes(2, sign(&manifest("2.0.0", 2), &[key(2)])));
    sim.drive(MINUTE);
    assert_eq!(sim.last_state(), ExecutionState::Succeeded);
}

#[test]
fn rule1_duplicates_and_replayed_generations_are_ignored() {
    let mut sim = Sim::new(config());
    sim.offer(desired(2, "2.0.0", 2));
    sim.drive(MINUTE);
    let before = sim.log.len();
    // A QoS 1 duplicate, and an older generation replayed.
    sim.offer(desired(2, "2.0.0", 2));
    sim.offer(desired(1, "3.0.0", 3));
    sim.drive(Duration::from_secs(10));
    let after: Vec<_> = sim.log[before..]
        .iter()
        .filter(|(_, a)| !matches!(a, Action::SendHeartbeat { .. }))
        .collect();
    assert!(after.is_empty(), "ignored idempotently: {after:?}");
    assert_eq!(sim.installs(), [(digest("2.0.0"), false)]);
}

#[test]
fn rule1_a_replayed_old_release_can_never_downgrade() {
    let mut sim = Sim::new(config());
    sim.offer(desired(1, "2.0.0", 2));
    sim.drive(MINUTE);
    // The server (or an attacker with broker access) re-sends the old release with a fresh
    // generation: the persisted floor refuses it.
    sim.offer(desired(2, "1.5.0", 1));
    assert!(matches!(
        sim.last_state(),
        ExecutionState::Rejected {
            cause: RejectCause::Downgrade,
            ..
        }
    ));
    assert_eq!(sim.running(), Some(digest("2.0.0")));
}

// ---- rule 2: identical redeploy ----------------------------------------------------------

#[test]
fn rule2_the_running_release_again_is_skipped_with_zero_bytes() {
    let mut sim = Sim::new(config());
    sim.clear_log();
    sim.offer(desired(1, "1.0.0", 1));
    sim.drive(MINUTE);
    assert_eq!(sim.states(1), ["skipped-identical"]);
    assert!(sim.last_state().is_success(), "counted as a success");
    assert_eq!(sim.downloaded_bytes, 0);
    assert_eq!(
        sim.count(|a| is_network(a) || matches!(a, Action::Install { .. })),
        0
    );
}

#[test]
fn rule2_a_forced_reinstall_rehashes_the_cache_and_never_downloads() {
    let mut sim = Sim::new(config());
    sim.clear_log();
    let mut d = desired(1, "1.0.0", 1);
    d.force_reinstall = true;
    sim.offer(d);
    sim.drive(MINUTE);
    let hashed = sim
        .actions()
        .position(|a| matches!(a, Action::HashCached { digest: d, .. } if *d == digest("1.0.0")))
        .expect("the cached file is re-hashed");
    let installed = sim
        .actions()
        .position(|a| {
            matches!(
                a,
                Action::Install {
                    rollback: false,
                    ..
                }
            )
        })
        .expect("and installed");
    assert!(hashed < installed);
    assert_eq!(sim.count(is_network), 0, "no download");
    assert_eq!(sim.last_state(), ExecutionState::Succeeded);
}

#[test]
fn rule2_a_forced_reinstall_with_a_corrupt_cache_entry_downloads() {
    let mut sim = Sim::new(config());
    sim.corrupt.insert(digest("1.0.0"));
    let mut d = desired(1, "1.0.0", 1);
    d.force_reinstall = true;
    sim.offer(d);
    sim.drive(MINUTE);
    assert_eq!(sim.downloads().len(), 1);
    assert_eq!(sim.last_state(), ExecutionState::Succeeded);
}

// ---- rule 3: cached release --------------------------------------------------------------

#[test]
fn rule3_a_cached_release_installs_without_downloading() {
    let mut sim = Sim::new(config());
    // 2.0.0 is downloaded, fails its trial and is rolled back: it stays in the cache.
    sim.probe = Probe::Fail;
    sim.offer(desired(1, "2.0.0", 2));
    assert!(matches!(
        sim.last_state(),
        ExecutionState::RolledBack { .. }
    ));
    // Fixed, the server offers it again.
    sim.probe = Probe::Healthy;
    sim.clear_log();
    sim.offer(desired(2, "2.0.0", 2));
    sim.drive(MINUTE);
    assert_eq!(sim.count(is_network), 0, "installed from the cache");
    assert_eq!(
        sim.count(|a| matches!(a, Action::HashCached { digest: d, .. } if *d == digest("2.0.0"))),
        1,
        "after re-hashing it"
    );
    assert_eq!(sim.installs(), [(digest("2.0.0"), false)]);
    assert_eq!(sim.last_state(), ExecutionState::Succeeded);
    assert_eq!(sim.running(), Some(digest("2.0.0")));
}

// ---- rule 4: power -----------------------------------------------------------------------

#[test]
fn rule4_low_battery_defers_rechecks_and_resumes_on_the_charger() {
    let mut c = config();
    c.power = PowerPolicy {
        min_battery_percent: 20,
        require_charging_below_percent: 50,
        recheck_interval: Duration::from_secs(5 * 60),
    };
    let mut sim = Sim::new(c);
    let low = PowerReading {
        battery_percent: Some(10),
        charging: false,
        mains_online: false,
    };
    sim.power = low;
    sim.offer(desired(1, "2.0.0", 2));
    sim.drive(Duration::from_secs(12 * 60));
    assert_eq!(
        sim.states(1),
        ["notified", "deferred-power"],
        "reported once"
    );
    assert!(
        matches!(sim.last_state_current(), ExecutionState::DeferredPower { reading } if reading == low)
    );
    assert_eq!(
        sim.count(|a| matches!(a, Action::ReadPower)),
        3,
        "re-checked every 5 min"
    );
    assert_eq!(sim.count(is_network), 0);
    // The charger is plugged in: the shell pushes the reading, the update goes on at once.
    sim.power = PowerReading {
        battery_percent: Some(11),
        charging: true,
        mains_online: true,
    };
    sim.m.handle_power(sim.power, sim.now);
    sim.drive(MINUTE);
    assert_eq!(sim.last_state(), ExecutionState::Succeeded);
}

impl Sim {
    fn last_state_current(&self) -> ExecutionState {
        self.m.status().current.unwrap().state
    }
}

// ---- rule 5: maintenance windows ---------------------------------------------------------

#[test]
fn rule5_outside_the_window_waits_for_the_next_opening() {
    let mut c = config();
    // Every day 02:00-04:00 local, UTC+0. Now is Sunday 15:06 UTC.
    c.windows = MaintenanceWindows {
        utc_offset_minutes: 0,
        windows: vec![MaintenanceWindow {
            days: Weekdays::ALL,
            start_minute: 120,
            end_minute: 240,
        }],
    };
    let mut sim = Sim::new(c);
    sim.offer(desired(1, "2.0.0", 2));
    let opening = 1_750_039_200_000; // Monday 02:00 UTC
    assert_eq!(
        sim.last_state_current(),
        ExecutionState::DeferredWindow {
            opens_at: Some(opening)
        }
    );
    sim.drive(Duration::from_secs(24 * 3600));
    let downloads = sim.downloads();
    assert_eq!(downloads.len(), 1);
    assert_eq!(
        downloads[0].0,
        Timestamp(opening),
        "downloaded when the window opened"
    );
    assert_eq!(sim.last_state(), ExecutionState::Succeeded);
}

// ---- rule 6: disk space ------------------------------------------------------------------

#[test]
fn rule6_too_little_disk_defers_and_rechecks() {
    let mut sim = Sim::new(config());
    sim.disk_free = 100;
    sim.offer(desired(1, "2.0.0", 2));
    sim.drive(Duration::from_secs(30 * 60));
    let needed = SIZE + sim.config.disk_margin_bytes;
    assert_eq!(
        sim.last_state_current(),
        ExecutionState::DeferredDisk { needed, free: 100 }
    );
    assert_eq!(sim.states(1), ["notified", "deferred-disk"]);
    assert_eq!(sim.count(|a| matches!(a, Action::CheckDisk { .. })), 7);
    assert!(sim.downloads().is_empty());
    sim.disk_free = needed;
    sim.drive(Duration::from_secs(5 * 60));
    assert_eq!(sim.last_state(), ExecutionState::Succeeded);
}

// ---- rule 7: download ----------------------------------------------------------------------

fn retry_config() -> Config {
    let mut c = config();
    c.retry = RetryPolicy {
        max_retries: 3,
        initial_backoff: Duration::from_secs(4),
        max_backoff: Duration::from_secs(60),
        jitter_seed: 7,
    };
    c
}

#[test]
fn rule7_transient_failures_back_off_over_the_mirrors_then_fail() {
    let mut sim = Sim::new(retry_config());
    sim.mirrors.insert(MIRROR_A.into(), Mirror::Down);
    sim.mirrors.insert(MIRROR_B.into(), Mirror::Down);
    sim.offer(desired(1, "2.0.0", 2));
    sim.drive(Duration::from_secs(10 * 60));
    let downloads = sim.downloads();
    let urls: Vec<&str> = downloads.iter().map(|(_, u, _)| u.as_str()).collect();
    assert_eq!(
        urls,
        [MIRROR_A, MIRROR_B, MIRROR_A, MIRROR_B],
        "1 + 3 retries, rotating"
    );
    for (i, pair) in downloads.windows(2).enumerate() {
        let gap = pair[1].0.saturating_duration_since(pair[0].0);
        let base = Duration::from_secs(4 << i);
        assert!(
            gap >= base / 2 && gap <= base,
            "retry {i}: {gap:?} not in [{:?}, {base:?}]",
            base / 2
        );
    }
    assert!(matches!(
        sim.last_state(),
        ExecutionState::Failed {
            phase: FailurePhase::Download,
            ..
        }
    ));
    assert_eq!(sim.running(), Some(digest("1.0.0")));
}

#[test]
fn rule7_a_flaky_mirror_is_retried_on_the_next_one() {
    let mut sim = Sim::new(retry_config());
    sim.mirrors.insert(MIRROR_A.into(), Mirror::Down);
    sim.offer(desired(1, "2.0.0", 2));
    sim.drive(MINUTE);
    let urls: Vec<String> = sim.downloads().into_iter().map(|(_, u, _)| u).collect();
    assert_eq!(urls, [MIRROR_A, MIRROR_B]);
    assert_eq!(sim.last_state(), ExecutionState::Succeeded);
}

#[test]
fn rule7_a_tampering_mirror_is_dropped_and_the_next_one_used_at_once() {
    let mut sim = Sim::new(retry_config());
    sim.mirrors.insert(MIRROR_A.into(), Mirror::Tampered);
    sim.offer(desired(1, "2.0.0", 2));
    sim.drive(MINUTE);
    let downloads = sim.downloads();
    assert_eq!(downloads.len(), 2);
    assert_eq!(downloads[1].1, MIRROR_B);
    assert_eq!(
        downloads[1].0, downloads[0].0,
        "no backoff after a verify failure"
    );
    assert_eq!(downloads[1].2, 0, "the tampered bytes are not resumed");
    assert_eq!(sim.last_state(), ExecutionState::Succeeded);
}

#[test]
fn rule7_tampered_bytes_everywhere_fail_verify_without_retrying() {
    let mut sim = Sim::new(retry_config());
    sim.mirrors.insert(MIRROR_A.into(), Mirror::Tampered);
    sim.mirrors.insert(MIRROR_B.into(), Mirror::Tampered);
    sim.offer(desired(1, "2.0.0", 2));
    sim.drive(Duration::from_secs(10 * 60));
    assert_eq!(sim.downloads().len(), 2, "each mirror once");
    assert!(matches!(
        sim.last_state(),
        ExecutionState::Failed { phase: FailurePhase::Verify, ref reason } if reason.contains("digest mismatch")
    ));
    assert_eq!(sim.count(|a| matches!(a, Action::Install { .. })), 0);
}

#[test]
fn rule7_progress_events_are_rate_limited() {
    let mut sim = Sim::new(config());
    sim.hold_downloads = true;
    sim.offer(desired(1, "2.0.0", 2));
    let d = digest("2.0.0");
    let events_before = sim.events().len();
    // 1000 progress reports at the same instant: one event per 5 %.
    for i in 1..=1000 {
        sim.m.handle_download_progress(d, i * 1000, sim.now);
    }
    sim.run();
    assert_eq!(sim.events().len() - events_before, 20);
    // A slow trickle: 1 byte every 200 ms gives one event per second.
    let start = sim.events().len();
    for _ in 0..50 {
        sim.now = sim.now.saturating_add(Duration::from_millis(200));
        sim.m.handle_download_progress(d, SIZE, sim.now);
    }
    sim.run();
    assert_eq!(sim.events().len() - start, 0, "no change, no event");
    for i in 0..50u64 {
        sim.now = sim.now.saturating_add(Duration::from_millis(200));
        sim.m.handle_download_progress(d, 10 + i, sim.now);
    }
    sim.run();
    assert!((9..=11).contains(&(sim.events().len() - start)));
}

// ---- rule 8: install -----------------------------------------------------------------------

#[test]
fn rule8_an_install_failure_reinstalls_the_known_good_release() {
    let mut sim = Sim::new(config());
    sim.failing_installs.insert(digest("2.0.0"));
    sim.offer(desired(1, "2.0.0", 2));
    sim.drive(MINUTE);
    assert_eq!(
        sim.installs(),
        [(digest("2.0.0"), false), (digest("1.0.0"), true)]
    );
    assert!(matches!(
        sim.last_state(),
        ExecutionState::Failed { phase: FailurePhase::Install, ref reason } if reason.contains("disk full")
    ));
    assert_eq!(sim.running(), Some(digest("1.0.0")));
    assert_eq!(sim.installed, Some(digest("1.0.0")));
    assert_eq!(
        sim.m.status().security_floor,
        1,
        "the floor only rises on commit"
    );
}

// ---- rule 9: trial -------------------------------------------------------------------------

#[test]
fn rule9_commit_needs_both_the_probe_and_a_server_heartbeat() {
    let mut sim = Sim::new(config());
    sim.disconnect();
    sim.offer(desired(1, "2.0.0", 2));
    sim.drive(MINUTE);
    assert_eq!(sim.m.status().stage, Stage::Trial);
    let trial = sim.m.status().trial.unwrap();
    assert!(trial.probe_passed && !trial.server_reached);
    assert_eq!(sim.known_good(), Some(digest("1.0.0")));
    sim.connect();
    assert_eq!(sim.last_state(), ExecutionState::Succeeded);
    assert_eq!(sim.known_good(), Some(digest("2.0.0")));
}

#[test]
fn rule9_acks_of_heartbeats_sent_before_the_trial_do_not_count() {
    let mut sim = Sim::new(config());
    let old_seq = sim
        .actions()
        .find_map(|a| match a {
            Action::SendHeartbeat { seq, .. } => Some(*seq),
            _ => None,
        })
        .unwrap();
    sim.server_up = false;
    sim.offer(desired(1, "2.0.0", 2));
    sim.drive(Duration::from_secs(5));
    sim.m.handle_heartbeat_ack(old_seq, sim.now);
    sim.m.handle_heartbeat_ack(u64::MAX, sim.now);
    sim.run();
    assert_eq!(
        sim.m.status().stage,
        Stage::Trial,
        "stale or unknown acks prove nothing"
    );
    sim.server_up = true;
    sim.drive(MINUTE);
    assert_eq!(sim.last_state(), ExecutionState::Succeeded);
}

#[test]
fn rule9_trial_timeout_rolls_back_from_the_cache_without_network() {
    let mut sim = Sim::new(config());
    sim.server_up = false;
    sim.offer(desired(1, "2.0.0", 2));
    sim.drive(Duration::from_secs(5));
    let deadline = sim.m.status().trial.unwrap().deadline;
    // The network is gone for good: the rollback must need none of it.
    sim.disconnect();
    sim.mirrors.clear();
    sim.clear_log();
    sim.drive(Duration::from_secs(11 * 60));
    assert_eq!(sim.count(is_network), 0);
    assert_eq!(sim.installs(), [(digest("1.0.0"), true)]);
    assert!(matches!(
        sim.last_state(),
        ExecutionState::RolledBack {
            reason: RollbackReason::ServerUnreachable,
            ..
        }
    ));
    let rolled_back_at = sim.m.status().last_result.unwrap().at;
    assert_eq!(rolled_back_at, deadline.0, "exactly at the trial deadline");
    // The report was handed to the shell (which queues it until the connection returns).
    assert!(sim.events().iter().any(|e| e.kind.name() == "rolled-back"));
    assert_eq!(sim.running(), Some(digest("1.0.0")));
    assert_eq!(sim.known_good(), Some(digest("1.0.0")));
    assert_eq!(sim.m.status().security_floor, 1);
}

#[test]
fn rule9_a_failing_probe_rolls_back_at_once() {
    let mut sim = Sim::new(config());
    sim.probe = Probe::Fail;
    sim.offer(desired(1, "2.0.0", 2));
    sim.run();
    assert!(matches!(
        sim.last_state(),
        ExecutionState::RolledBack { reason: RollbackReason::ProbeFailed, ref detail } if detail.contains("crashed")
    ));
    assert_eq!(sim.installed, Some(digest("1.0.0")));
}

#[test]
fn rule9_a_probe_that_never_passes_times_out() {
    let mut sim = Sim::new(config());
    sim.probe = Probe::NotYet;
    sim.offer(desired(1, "2.0.0", 2));
    sim.drive(Duration::from_secs(11 * 60));
    assert!(matches!(
        sim.last_state(),
        ExecutionState::RolledBack { reason: RollbackReason::ProbeTimeout, ref detail } if detail.contains("service starting")
    ));
    // Probed every 10 s for 10 minutes.
    assert_eq!(sim.count(|a| matches!(a, Action::RunProbe { .. })), 60);
}

/// A configuration with a two-minute minimum soak.
fn soak_config() -> Config {
    let mut c = config();
    c.trial_min = 2 * MINUTE;
    c
}

#[test]
fn issue17_trial_min_holds_the_commit_until_the_soak_ends_and_keeps_probing() {
    let mut sim = Sim::new(soak_config());
    sim.offer(desired(1, "2.0.0", 2));
    sim.drive(MINUTE);
    let trial = sim.m.status().trial.expect("still soaking");
    assert!(trial.probe_passed && trial.server_reached);
    let started = trial.soak_end.0 - 2 * 60 * 1000;
    assert_eq!(sim.known_good(), Some(digest("1.0.0")));
    // Probed at the start and every 10 s since: the soak watches health, not one answer.
    assert_eq!(sim.count(|a| matches!(a, Action::RunProbe { .. })), 7);
    // An agent restart during the soak keeps the original end.
    sim.restart(false, sim.now.saturating_add(Duration::from_secs(10)));
    assert_eq!(sim.m.status().trial.unwrap().soak_end, trial.soak_end);
    sim.drive(2 * MINUTE);
    assert_eq!(sim.last_state(), ExecutionState::Succeeded);
    assert_eq!(
        sim.m.status().last_result.unwrap().at,
        started + 2 * 60 * 1000,
        "committed exactly when the soak ended"
    );
    assert_eq!(sim.known_good(), Some(digest("2.0.0")));
}

#[test]
fn issue17_a_relapse_during_the_soak_holds_the_commit_and_a_failure_rolls_back() {
    // "Not yet" after a pass: no commit at the end of the soak, a commit once healthy again.
    let mut sim = Sim::new(soak_config());
    sim.offer(desired(1, "2.0.0", 2));
    sim.drive(Duration::from_secs(30));
    sim.probe = Probe::NotYet;
    sim.drive(2 * MINUTE);
    let trial = sim.m.status().trial.expect("the soak ended unproven");
    assert!(!trial.probe_passed);
    assert_eq!(trial.last_probe_error.as_deref(), Some("service starting"));
    sim.probe = Probe::Healthy;
    sim.drive(Duration::from_secs(10));
    assert_eq!(sim.last_state(), ExecutionState::Succeeded);

    // A crash during the soak rolls back at the next probe.
    let mut sim = Sim::new(soak_config());
    sim.offer(desired(1, "2.0.0", 2));
    sim.drive(Duration::from_secs(30));
    sim.probe = Probe::Fail;
    sim.drive(Duration::from_secs(10));
    assert!(matches!(
        sim.last_state(),
        ExecutionState::RolledBack {
            reason: RollbackReason::ProbeFailed,
            ..
        }
    ));
    assert_eq!(sim.installed, Some(digest("1.0.0")));
}

#[test]
fn issue17_probe_failures_in_a_row_roll_back_before_the_deadline() {
    let mut c = config();
    c.probe_failures_to_rollback = 3;
    let mut sim = Sim::new(c.clone());
    sim.probe = Probe::NotYet;
    sim.offer(desired(1, "2.0.0", 2));
    let start = sim.now;
    sim.drive(11 * MINUTE);
    let last = sim.m.status().last_result.unwrap();
    assert!(matches!(
        last.state,
        ExecutionState::RolledBack { reason: RollbackReason::ProbeFailed, ref detail }
            if detail.contains("3 times in a row") && detail.contains("service starting")
    ));
    // The third answer, 20 s in: not the 10-minute deadline.
    assert_eq!(last.at, start.0 + 20_000);
    assert_eq!(sim.count(|a| matches!(a, Action::RunProbe { .. })), 3);

    // A healthy answer in between starts the count again.
    let mut sim = Sim::new(c);
    sim.probe = Probe::NotYet;
    sim.server_up = false;
    sim.offer(desired(1, "2.0.0", 2));
    sim.drive(Duration::from_secs(15));
    sim.m.handle_probe(ProbeResult::Healthy, sim.now);
    sim.run();
    assert_eq!(sim.m.status().stage, Stage::Trial);
}

fn heartbeats_health(sim: &Sim) -> Vec<Option<bool>> {
    sim.actions()
        .filter_map(|a| match a {
            Action::SendHeartbeat { healthy, .. } => Some(*healthy),
            _ => None,
        })
        .collect()
}

#[test]
fn issue17_after_the_commit_heartbeats_keep_reporting_health() {
    let mut c = config();
    c.watch_health = true;
    let mut sim = Sim::new(c);
    sim.offer(desired(1, "2.0.0", 2));
    sim.drive(Duration::from_secs(5));
    assert_eq!(sim.last_state(), ExecutionState::Succeeded);
    sim.clear_log();
    sim.drive(MINUTE);
    // A check with every heartbeat; each heartbeat carries the latest answer.
    assert_eq!(sim.count(|a| matches!(a, Action::CheckHealth { .. })), 2);
    assert_eq!(heartbeats_health(&sim), [Some(true), Some(true)]);
    sim.probe = Probe::NotYet;
    sim.clear_log();
    sim.drive(MINUTE);
    // A heartbeat carries the answer of the check started with the one before it (answers
    // arrive after the heartbeat is built): one interval of lag.
    assert_eq!(heartbeats_health(&sim), [Some(true), Some(false)]);
    assert_eq!(sim.m.status().healthy, Some(false));
    // The release stays committed: health after the commit informs the server, it does not
    // roll back by itself.
    assert_eq!(sim.known_good(), Some(digest("2.0.0")));
    assert_eq!(sim.m.status().stage, Stage::Idle);

    // Without watch_health no check runs and heartbeats carry no health.
    let mut sim = Sim::new(config());
    sim.offer(desired(1, "2.0.0", 2));
    sim.drive(MINUTE);
    assert_eq!(sim.count(|a| matches!(a, Action::CheckHealth { .. })), 0);
    assert!(heartbeats_health(&sim).iter().all(Option::is_none));
}

#[test]
fn a_desired_state_during_a_trial_waits_and_installs_once() {
    let mut sim = Sim::new(config());
    sim.probe = Probe::NotYet;
    sim.offer(desired(1, "2.0.0", 2));
    sim.drive(Duration::from_secs(5));
    sim.offer(desired(2, "3.0.0", 3));
    sim.offer(desired(2, "3.0.0", 3));
    assert_eq!(sim.m.status().queued_generation, Some(2));
    assert_eq!(sim.m.status().stage, Stage::Trial);
    sim.probe = Probe::Healthy;
    sim.drive(MINUTE);
    assert_eq!(
        sim.installs(),
        [(digest("2.0.0"), false), (digest("3.0.0"), false)]
    );
    assert_eq!(sim.states(1).last(), Some(&"succeeded"));
    assert_eq!(sim.states(2).last(), Some(&"succeeded"));
    assert_eq!(sim.running(), Some(digest("3.0.0")));
}

#[test]
fn a_newer_desired_state_supersedes_a_deferred_one() {
    let mut sim = Sim::new(config());
    sim.disk_free = 0;
    sim.offer(desired(1, "2.0.0", 2));
    sim.disk_free = 1 << 40;
    sim.offer(desired(2, "3.0.0", 3));
    sim.drive(MINUTE);
    assert_eq!(sim.installs(), [(digest("3.0.0"), false)]);
    assert_eq!(sim.running(), Some(digest("3.0.0")));
}

// ---- rule 10: cache ------------------------------------------------------------------------

#[test]
fn rule10_the_cache_keeps_n_releases_never_the_running_or_known_good_one() {
    let mut c = config();
    c.cache_capacity = 2;
    let mut sim = Sim::new(c);
    for (generation, version) in [(1, "2.0.0"), (2, "3.0.0"), (3, "4.0.0")] {
        sim.offer(desired(generation, version, generation as u32 + 1));
        sim.drive(MINUTE);
        assert_eq!(sim.last_state(), ExecutionState::Succeeded);
        assert!(sim.cache.contains(&sim.running().unwrap()));
        assert!(sim.cache.contains(&sim.known_good().unwrap()));
        assert!(sim.m.status().cache.len() <= 2);
    }
    let evicted: Vec<Digest> = sim
        .actions()
        .filter_map(|a| match a {
            Action::Evict { digest } => Some(*digest),
            _ => None,
        })
        .collect();
    assert_eq!(evicted, [digest("1.0.0"), digest("2.0.0")]);
    let listed: BTreeSet<Digest> = sim.m.status().cache.iter().map(|r| r.digest).collect();
    assert_eq!(listed, sim.cache, "the index matches the disk");
}

// ---- rule 11: crash safety -----------------------------------------------------------------

#[test]
fn rule11_an_interrupted_download_resumes_from_the_partial_file() {
    let mut sim = Sim::new(config());
    sim.hold_downloads = true;
    sim.offer(desired(1, "2.0.0", 2));
    sim.run();
    assert_eq!(sim.partial.get(&digest("2.0.0")), Some(&(SIZE / 2)));
    assert!(matches!(
        sim.persisted.as_ref().unwrap().in_flight,
        Some(InFlight::Pending { .. })
    ));
    sim.hold_downloads = false;
    sim.clear_log();
    sim.restart(true, sim.now.saturating_add(MINUTE));
    sim.drive(MINUTE);
    let downloads = sim.downloads();
    assert_eq!(downloads.len(), 1);
    assert_eq!(downloads[0].2, SIZE / 2, "resumed, not restarted");
    assert_eq!(sim.downloaded_bytes, SIZE, "every byte fetched once");
    assert_eq!(sim.last_state(), ExecutionState::Succeeded);
}

#[test]
fn rule11_an_interrupted_install_is_redone_then_rolled_back() {
    let mut sim = Sim::new(config());
    sim.hold_installs = true;
    sim.offer(desired(1, "2.0.0", 2));
    sim.run();
    // Power loss during the install: it is redone once...
    sim.restart(true, sim.now.saturating_add(MINUTE));
    assert_eq!(
        sim.installs(),
        [(digest("2.0.0"), false), (digest("2.0.0"), false)]
    );
    assert_eq!(
        sim.count(is_network),
        3,
        "no download for the redo (1 inspect, 1 disk, 1 fetch)"
    );
    // ...and after a second interruption, the known-good release comes back.
    sim.hold_installs = false;
    sim.restart(true, sim.now.saturating_add(MINUTE));
    assert_eq!(sim.installs().last(), Some(&(digest("1.0.0"), true)));
    assert!(matches!(
        sim.last_state(),
        ExecutionState::Failed { phase: FailurePhase::Install, ref reason } if reason.contains("interrupted 2 times")
    ));
    assert_eq!(sim.running(), Some(digest("1.0.0")));
}

#[test]
fn rule11_an_interrupted_rollback_is_redone() {
    let mut sim = Sim::new(config());
    sim.probe = Probe::Fail;
    sim.hold_installs = false;
    sim.offer(desired(1, "2.0.0", 2));
    // Stop right before the rollback install completes: replay the persisted RollingBack.
    let mut persisted = sim.persisted.clone().unwrap();
    persisted.in_flight = Some(InFlight::RollingBack {
        job: ota_core::update::Job {
            generation: 1,
            rollout_id: None,
            release: info("2.0.0", 2),
            urls: vec![],
            force: false,
            transfer: None,
        },
        target: factory(),
        outcome: ExecutionState::RolledBack {
            reason: RollbackReason::ProbeFailed,
            detail: "crashed".into(),
        },
    });
    sim.persisted = Some(persisted);
    sim.clear_log();
    sim.restart(true, sim.now);
    assert_eq!(sim.installs(), [(digest("1.0.0"), true)]);
    assert!(matches!(
        sim.last_state(),
        ExecutionState::RolledBack { .. }
    ));
}

fn in_trial(c: Config) -> (Sim, Timestamp) {
    let mut sim = Sim::new(c);
    sim.probe = Probe::NotYet;
    sim.offer(desired(1, "2.0.0", 2));
    sim.drive(Duration::from_secs(2 * 60));
    let deadline = sim.m.status().trial.unwrap().deadline;
    assert!(matches!(
        sim.persisted.as_ref().unwrap().in_flight,
        Some(InFlight::Trial { deadline_ms, boot_count: 1, .. }) if deadline_ms == deadline.0
    ));
    (sim, deadline)
}

#[test]
fn rule11_a_trial_whose_deadline_passed_while_off_rolls_back_from_the_cache() {
    let (mut sim, deadline) = in_trial(config());
    sim.mirrors.clear();
    sim.clear_log();
    sim.restart(true, deadline.saturating_add(Duration::from_secs(3600)));
    assert_eq!(sim.count(is_network), 0);
    assert_eq!(sim.installs(), [(digest("1.0.0"), true)]);
    assert!(matches!(
        sim.last_state(),
        ExecutionState::RolledBack {
            reason: RollbackReason::TrialTimeout,
            ..
        }
    ));
    assert_eq!(sim.running(), Some(digest("1.0.0")));
}

#[test]
fn rule11_a_trial_still_running_after_an_agent_restart_keeps_its_deadline() {
    let (mut sim, deadline) = in_trial(config());
    sim.restart(false, sim.now.saturating_add(MINUTE));
    let trial = sim.m.status().trial.expect("still on trial");
    assert_eq!(
        trial.deadline, deadline,
        "the original deadline, not a fresh one"
    );
    assert!(!trial.probe_passed, "a restarted trial proves itself again");
    sim.probe = Probe::Healthy;
    sim.drive(Duration::from_secs(20));
    assert_eq!(sim.last_state(), ExecutionState::Succeeded);
    assert_eq!(sim.installs(), [(digest("2.0.0"), false)]);
}

#[test]
fn rule11_a_reboot_during_a_trial_rolls_back_by_default() {
    let (mut sim, _) = in_trial(config());
    sim.restart(true, sim.now.saturating_add(MINUTE));
    assert!(matches!(
        sim.last_state(),
        ExecutionState::RolledBack {
            reason: RollbackReason::RebootDuringTrial,
            ..
        }
    ));
    assert_eq!(sim.running(), Some(digest("1.0.0")));
}

#[test]
fn rule11_an_allowed_reboot_with_an_untrustworthy_clock_restarts_the_trial_window() {
    let mut c = config();
    c.trial_max_reboots = 1;
    let (mut sim, deadline) = in_trial(c);
    // Plausible clock: the original deadline holds.
    sim.restart(true, sim.now.saturating_add(MINUTE));
    assert_eq!(sim.m.status().trial.unwrap().deadline, deadline);
    // No RTC: the clock restarts near the epoch (allow this second reboot too): the remaining
    // time is unknowable, so the trial gets a full window from now.
    let mut c2 = sim.config.clone();
    c2.trial_max_reboots = 2;
    sim.config = c2;
    let early = Timestamp(60_000);
    sim.restart(true, early);
    let trial = sim.m.status().trial.expect("still on trial");
    assert_eq!(
        trial.deadline,
        early.saturating_add(Duration::from_secs(600))
    );
    sim.probe = Probe::Healthy;
    sim.drive(Duration::from_secs(20));
    assert_eq!(sim.last_state(), ExecutionState::Succeeded);
}

#[test]
fn rule11_the_last_result_is_published_again_after_a_restart() {
    let mut sim = Sim::new(config());
    sim.offer(desired(1, "2.0.0", 2));
    sim.drive(MINUTE);
    sim.clear_log();
    sim.restart(true, sim.now.saturating_add(MINUTE));
    assert_eq!(sim.states(1), ["succeeded"]);
    assert_eq!(sim.m.status().last_generation, 1);
    // And the retained desired state, redelivered on reconnect, is a no-op.
    sim.offer(desired(1, "2.0.0", 2));
    assert_eq!(sim.states(1), ["succeeded"]);
}

// ---- issue 19: one message must never end a device's updates ---------------------------------

#[test]
fn issue19_generation_overflow_is_rejected() {
    let mut sim = Sim::new(config());
    sim.offer(desired(1, "2.0.0", 2));
    sim.drive(MINUTE);
    assert_eq!(sim.known_good(), Some(digest("2.0.0")));
    sim.clear_log();
    // Anyone with the server's MQTT rights publishes generation u64::MAX: refused, reported
    // once (not again on a redelivery), and the device keeps its generation.
    sim.offer(desired(u64::MAX, "3.0.0", 3));
    sim.offer(desired(u64::MAX, "3.0.0", 3));
    let refused: Vec<_> = sim.events().into_iter().cloned().collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].generation, u64::MAX);
    assert!(matches!(
        refused[0].kind,
        ExecutionState::Rejected {
            cause: RejectCause::GenerationJump,
            ..
        }
    ));
    assert!(sim.installs().is_empty());
    assert_eq!(sim.m.status().last_generation, 1);
    assert_eq!(sim.persisted.as_ref().unwrap().last_generation, 1);
    assert!(matches!(sim.last_state(), ExecutionState::Succeeded));
    // The server's next desired state still works: the device is not jammed.
    sim.offer(desired(2, "3.0.0", 3));
    sim.drive(MINUTE);
    assert_eq!(sim.known_good(), Some(digest("3.0.0")));
    assert_eq!(sim.m.status().last_generation, 2);
    // The largest allowed step is accepted; one more is not.
    sim.offer(desired(2 + MAX_GENERATION_STEP + 1, "4.0.0", 4));
    assert_eq!(sim.m.status().last_generation, 2);
    sim.offer(desired(2 + MAX_GENERATION_STEP, "4.0.0", 4));
    sim.drive(MINUTE);
    assert_eq!(sim.known_good(), Some(digest("4.0.0")));
    assert_eq!(sim.m.status().last_generation, 2 + MAX_GENERATION_STEP);
}

#[test]
fn issue19_a_generation_jump_does_not_disturb_the_job_in_flight() {
    let mut sim = Sim::new(config());
    sim.hold_downloads = true;
    sim.offer(desired(1, "2.0.0", 2));
    sim.offer(desired(u64::MAX, "3.0.0", 3));
    assert!(matches!(sim.m.status().stage, Stage::Downloading { .. }));
    assert_eq!(sim.m.status().job.unwrap().generation, 1);
    assert_eq!(sim.count(|a| matches!(a, Action::DiscardPartial { .. })), 0);
}

#[test]
fn issue19_a_corrupt_known_good_is_refused_at_rollback() {
    let mut sim = Sim::new(config());
    // The known-good (factory) file in the cache is damaged; the new release fails its probe.
    sim.corrupt.insert(digest("1.0.0"));
    sim.probe = Probe::Fail;
    sim.offer(desired(1, "2.0.0", 2));
    sim.drive(MINUTE);
    assert_eq!(
        sim.installs(),
        [(digest("2.0.0"), false), (digest("1.0.0"), true)]
    );
    // Nothing was installed from the damaged file, and the failure says so: not a success.
    assert_eq!(sim.installed, Some(digest("2.0.0")));
    assert!(matches!(
        sim.last_state(),
        ExecutionState::Failed { phase: FailurePhase::Verify, ref reason }
            if reason.contains("known-good 1.0.0")
    ));
    assert_eq!(sim.running(), Some(digest("2.0.0")));
    assert!(
        !sim.m
            .status()
            .cache
            .iter()
            .any(|r| r.digest == digest("1.0.0"))
    );
    assert_eq!(
        sim.count(|a| matches!(a, Action::Evict { digest: d } if *d == digest("1.0.0"))),
        1
    );
}

#[test]
fn issue19_a_cache_entry_damaged_after_its_check_is_never_installed() {
    let mut c = config();
    c.power = PowerPolicy {
        min_battery_percent: 20,
        require_charging_below_percent: 50,
        recheck_interval: Duration::from_secs(5 * 60),
    };
    let mut sim = Sim::new(c);
    sim.offer(desired(1, "2.0.0", 2));
    sim.drive(MINUTE);
    sim.offer(desired(2, "3.0.0", 3));
    sim.drive(MINUTE);
    // 2.0.0 is cached: re-hashed fine, then the update waits for power...
    sim.power = PowerReading {
        battery_percent: Some(10),
        charging: false,
        mains_online: false,
    };
    sim.offer(desired(3, "2.0.0", 4));
    sim.drive(MINUTE);
    sim.clear_log();
    // ...while the file is damaged. The install re-hashes it and refuses.
    sim.corrupt.insert(digest("2.0.0"));
    sim.power = PowerReading::MAINS;
    sim.drive(Duration::from_secs(6 * 60));
    assert_eq!(sim.installs(), [(digest("2.0.0"), false)]);
    assert!(matches!(
        sim.last_state(),
        ExecutionState::Failed {
            phase: FailurePhase::Verify,
            ..
        }
    ));
    assert_eq!(sim.installed, Some(digest("3.0.0")));
    assert_eq!(sim.running(), Some(digest("3.0.0")));
    assert_eq!(sim.known_good(), Some(digest("3.0.0")));
}

#[test]
fn issue19_journal_loss_keeps_the_floor_and_the_running_release() {
    let mut sim = Sim::new(config());
    sim.offer(desired(1, "2.0.0", 124));
    sim.drive(MINUTE);
    let journal = sim.persisted.clone().unwrap();
    let record = FloorRecord::of(&journal);
    assert_eq!(
        FloorRecord::from_cbor(&record.to_cbor()).as_ref(),
        Ok(&record)
    );
    // Both journal copies lost: the record stands in for them, the factory is not re-seeded.
    let restored = FloorRecord::reconcile(None, Some(&record)).unwrap();
    let m = UpdateMachine::recover(config(), Some(restored), 2, sim.now);
    let s = m.status();
    assert_eq!(s.security_floor, 124);
    assert_eq!(s.running.unwrap().digest, digest("2.0.0"));
    assert_eq!(s.known_good.unwrap().digest, digest("2.0.0"));
    assert_eq!(s.last_generation, 1);
    assert!(s.cache.iter().any(|r| r.digest == digest("2.0.0")));
    // A journal restored from an older copy never lowers the floor.
    let mut old = journal.clone();
    old.security_floor = 1;
    let merged = FloorRecord::reconcile(Some(old), Some(&record)).unwrap();
    assert_eq!(merged.security_floor, 124);
    assert_eq!(
        FloorRecord::reconcile(Some(journal.clone()), None),
        Some(journal)
    );
    assert_eq!(FloorRecord::reconcile(None, None), None);
}

#[test]
fn issue19_a_damaged_journal_halts_updates_and_says_so() {
    let mut m = UpdateMachine::halted(config(), "state: checksum mismatch", 3, Timestamp(NOW));
    m.handle_connected(Timestamp(NOW));
    m.handle_desired(desired(7, "2.0.0", 2), Timestamp(NOW));
    let actions: Vec<Action> = std::iter::from_fn(|| m.poll_action()).collect();
    assert!(
        !actions.iter().any(|a| matches!(
            a,
            Action::Persist(_)
                | Action::Install { .. }
                | Action::Download { .. }
                | Action::HashCached { .. }
        )),
        "{actions:?}"
    );
    let rejected: Vec<u64> = actions
        .iter()
        .filter_map(|a| match a {
            Action::PublishEvent(e)
                if matches!(
                    e.kind,
                    ExecutionState::Rejected {
                        cause: RejectCause::JournalDamaged,
                        ..
                    }
                ) =>
            {
                Some(e.generation)
            }
            _ => None,
        })
        .collect();
    assert_eq!(rejected, [0, 7]);
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::SendHeartbeat { .. }))
    );
    let r = m.reported_state("0.1.0", Inventory::default(), BTreeMap::new());
    assert!(r.running.is_none());
    assert!(matches!(
        r.last_result.unwrap().state,
        ExecutionState::Rejected { cause: RejectCause::JournalDamaged, ref detail } if detail.contains("checksum")
    ));
    assert_eq!(RejectCause::JournalDamaged.name(), "journal-damaged");
}

// ---- determinism and robustness ----------------------------------------------------------------

#[test]
fn the_same_inputs_give_the_same_actions() {
    let scenario = || {
        let mut sim = Sim::new(retry_config());
        sim.mirrors.insert(MIRROR_A.into(), Mirror::Down);
        sim.mirrors.insert(MIRROR_B.into(), Mirror::Down);
        sim.offer(desired(1, "2.0.0", 2));
        sim.drive(Duration::from_secs(3600));
        sim.log
    };
    assert_eq!(scenario(), scenario());
}

#[derive(Debug, Clone)]
enum Op {
    Desired(u64, u8, bool),
    Power(Option<u8>, bool),
    Disk(u64),
    Hashed(u8, bool),
    Partial(u8, u64),
    Progress(u8, u64),
    Complete(u8),
    Failed(u8, bool),
    Installed(u8, bool),
    Probe(u8),
    Ack(u64),
    Connected(bool),
    Advance(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..6u64, 0..4u8, any::<bool>()).prop_map(|(g, v, f)| Op::Desired(g, v, f)),
        (proptest::option::of(0..=100u8), any::<bool>()).prop_map(|(b, c)| Op::Power(b, c)),
        any::<u64>().prop_map(Op::Disk),
        (0..4u8, any::<bool>()).prop_map(|(v, ok)| Op::Hashed(v, ok)),
        (0..4u8, any::<u64>()).prop_map(|(v, n)| Op::Partial(v, n)),
        (0..4u8, any::<u64>()).prop_map(|(v, n)| Op::Progress(v, n)),
        (0..4u8).prop_map(Op::Complete),
        (0..4u8, any::<bool>()).prop_map(|(v, t)| Op::Failed(v, t)),
        (0..4u8, any::<bool>()).prop_map(|(v, ok)| Op::Installed(v, ok)),
        (0..3u8).prop_map(Op::Probe),
        any::<u64>().prop_map(Op::Ack),
        any::<bool>().prop_map(Op::Connected),
        (0..2_000_000u32).prop_map(Op::Advance),
    ]
}

fn version(v: u8) -> String {
    format!("{}.0.0", v + 1)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any sequence of inputs, in any order and at any time, never panics the machine, never
    /// loses the known-good release from the cache index, and never lowers the floor.
    #[test]
    fn arbitrary_inputs_never_panic_or_break_invariants(ops in proptest::collection::vec(op(), 0..60)) {
        let mut m = UpdateMachine::recover(config(), None, 1, Timestamp(NOW));
        let mut now = Timestamp(NOW);
        let mut floor = 0;
        let mut corrupted = BTreeSet::new();
        for op in ops {
            match op {
                Op::Desired(g, v, force) => {
                    let mut d = desired(g, &version(v), u32::from(v) + 1);
                    d.force_reinstall = force;
                    m.handle_desired(d, now);
                }
                Op::Power(b, c) => m.handle_power(PowerReading { battery_percent: b, charging: c, mains_online: c }, now),
                Op::Disk(f) => m.handle_disk(f, now),
                Op::Hashed(v, ok) => {
                    if !ok {
                        corrupted.insert(digest(&version(v)));
                    }
                    m.handle_cache_hashed(digest(&version(v)), ok, now);
                }
                Op::Partial(v, n) => m.handle_partial(digest(&version(v)), n, now),
                Op::Progress(v, n) => m.handle_download_progress(digest(&version(v)), n, now),
                Op::Complete(v) => m.handle_download_complete(digest(&version(v)), 0, now),
                Op::Failed(v, transient) => {
                    let e = if transient {
                        DownloadError::Transient("x".into())
                    } else {
                        DownloadError::Verify(ReleaseError::SizeMismatch { expected: 1, actual: 2 })
                    };
                    m.handle_download_failed(digest(&version(v)), e, now);
                }
                Op::Installed(v, ok) => {
                    let r = if ok { Ok(()) } else { Err(InstallError::new("x")) };
                    m.handle_install_done(digest(&version(v)), r, now);
                }
                Op::Probe(p) => m.handle_probe(match p {
                    0 => ProbeResult::Healthy,
                    1 => ProbeResult::NotYet("x".into()),
                    _ => ProbeResult::Failed("x".into()),
                }, now),
                Op::Ack(seq) => m.handle_heartbeat_ack(seq, now),
                Op::Connected(true) => m.handle_connected(now),
                Op::Connected(false) => m.handle_disconnected(now),
                Op::Advance(ms) => {
                    now = now.saturating_add(Duration::from_millis(u64::from(ms)));
                    m.handle_timeout(now);
                }
            }
            while let Some(a) = m.poll_action() {
                if let Action::Persist(p) = a {
                    let decoded = PersistedState::from_cbor(&p.to_cbor());
                    prop_assert_eq!(decoded, Ok(*p));
                }
            }
            let s = m.status();
            prop_assert!(s.security_floor >= floor);
            floor = s.security_floor;
            if let Some(kg) = &s.known_good {
                prop_assert!(
                    corrupted.contains(&kg.digest) || s.cache.iter().any(|r| r.digest == kg.digest),
                    "the known-good release left the cache index"
                );
            }
        }
    }
}

// ---- issue 12.7: drift --------------------------------------------------------------------

impl Sim {
    /// The `running` digest of the state the agent would report now.
    fn reported_running(&self) -> Option<Digest> {
        self.m
            .reported_state("0.1.0", Inventory::default(), BTreeMap::new())
            .running
            .map(|r| r.digest)
    }

    fn observations(&self) -> usize {
        self.count(|a| matches!(a, Action::ObserveRunning))
    }

    /// Someone points the installer at `digest` by hand; the agent restarts a second later.
    fn switch_by_hand_and_restart(&mut self, digest: Digest) {
        self.installed = Some(digest);
        let later = self.now.saturating_add(Duration::from_secs(1));
        self.restart(false, later);
    }
}

/// A device that updated to 2.0.0 and committed it.
fn on_v2() -> Sim {
    let mut sim = Sim::new(config());
    sim.offer(desired(1, "2.0.0", 2));
    sim.drive(MINUTE);
    sim
}

#[test]
fn issue12_a_release_switched_by_hand_is_reported_as_running_after_a_restart() {
    let mut sim = on_v2();
    assert_eq!(sim.reported_running(), Some(digest("2.0.0")));
    // Someone re-points the installer at the factory release and restarts the agent.
    sim.clear_log();
    sim.switch_by_hand_and_restart(digest("1.0.0"));
    assert_eq!(sim.observations(), 1, "asked once at the (re)connect");
    let reported = sim
        .m
        .reported_state("0.1.0", Inventory::default(), BTreeMap::new());
    let running = reported.running.unwrap();
    assert_eq!(running.digest, digest("1.0.0"));
    assert_eq!(
        running.version, "1.0.0",
        "a known release keeps its version"
    );
    assert_eq!(reported.known_good.unwrap().digest, digest("2.0.0"));
    assert_eq!(
        sim.running(),
        Some(digest("2.0.0")),
        "the journal is not rewritten by an observation"
    );
    assert!(
        sim.actions().any(|a| matches!(a, Action::PublishReported)),
        "the drift is published"
    );
}

#[test]
fn issue12_drift_is_noticed_while_running_and_cleared_when_switched_back() {
    let mut sim = on_v2();
    // A release the device never saw: reported by digest, version unknown.
    let foreign = Digest::of(b"hand-made image");
    sim.installed = Some(foreign);
    sim.clear_log();
    sim.drive(Duration::from_secs(2 * 60));
    let observed = sim.observations();
    assert!(
        (1..=2).contains(&observed),
        "observed with heartbeats at most once a minute: {observed}"
    );
    let reported = sim
        .m
        .reported_state("0.1.0", Inventory::default(), BTreeMap::new());
    let running = reported.running.unwrap();
    assert_eq!(
        (running.digest, running.version.as_str()),
        (foreign, "unknown")
    );
    // Switched back by hand: the next observation clears it.
    sim.installed = Some(digest("2.0.0"));
    sim.drive(Duration::from_secs(2 * 60));
    assert_eq!(sim.reported_running(), Some(digest("2.0.0")));
}

#[test]
fn issue12_no_observation_counts_during_an_update() {
    let mut sim = Sim::new(config());
    sim.hold_downloads = true;
    sim.offer(desired(1, "2.0.0", 2));
    sim.clear_log();
    sim.drive(Duration::from_secs(5 * 60));
    assert_eq!(sim.observations(), 0, "not asked while downloading");
    // An answer that arrives anyway (asked just before the offer) changes nothing.
    sim.m
        .handle_observed_running(Some(Digest::of(b"elsewhere")), sim.now);
    assert_eq!(sim.reported_running(), Some(digest("1.0.0")));
}

#[test]
fn issue12_an_installer_that_cannot_tell_changes_nothing() {
    let mut sim = Sim::new(config());
    sim.installed = Some(digest("3.0.0"));
    sim.m.handle_observed_running(None, sim.now);
    assert_eq!(sim.reported_running(), Some(digest("1.0.0")));
}

#[test]
fn issue12_offering_a_drifted_device_its_release_again_repairs_the_drift() {
    let mut sim = on_v2();
    sim.switch_by_hand_and_restart(Digest::of(b"hand-made image"));
    assert_eq!(sim.reported_running(), Some(Digest::of(b"hand-made image")));
    sim.clear_log();
    sim.offer(desired(2, "2.0.0", 2));
    sim.drive(MINUTE);
    assert_eq!(
        sim.installs(),
        [(digest("2.0.0"), false)],
        "installed again from the cache, not skipped as identical"
    );
    assert_eq!(sim.installed, Some(digest("2.0.0")));
    assert_eq!(sim.reported_running(), Some(digest("2.0.0")));
    assert_eq!(sim.last_state(), ExecutionState::Succeeded);
}

#[test]
fn issue12_a_refused_offer_does_not_make_the_drift_flap() {
    let mut sim = on_v2();
    let hand_made = Digest::of(b"hand-made image");
    sim.switch_by_hand_and_restart(hand_made);
    // A release signed by an unknown key: refused and journaled, nothing installed.
    sim.offer(desired_bytes(2, sign(&manifest("3.0.0", 3), &[key(9)])));
    assert!(matches!(sim.last_state(), ExecutionState::Rejected { .. }));
    assert_eq!(
        sim.reported_running(),
        Some(hand_made),
        "still reported as running what the installer runs"
    );
}

// ---- issue 17: A/B boot slots ---------------------------------------------------------------

fn slots_config() -> Config {
    let mut c = config();
    c.boot_slots = true;
    c
}

/// A device on slot A with 2.0.0 offered: written to B, read back, tried once, rebooting.
fn slots_rebooting() -> Sim {
    let mut sim = Sim::new(slots_config());
    sim.offer(desired(1, "2.0.0", 2));
    assert_eq!(sim.m.status().stage, Stage::Rebooting);
    assert_eq!(sim.slots.get(&Slot::B), Some(&digest("2.0.0")));
    assert_eq!(sim.boot_try, Some(Slot::B));
    assert!(sim.reboot_requested);
    sim
}

#[test]
fn issue17_ab_the_new_slot_boots_proves_itself_and_only_then_succeeds() {
    let mut sim = slots_rebooting();
    let mut states = sim.states(1);
    states.dedup();
    assert_eq!(
        states,
        ["notified", "downloading", "installing", "rebooting"]
    );
    assert!(!sim.last_state_is_final());
    let reboot_at = sim.now.saturating_add(MINUTE);
    sim.reboot(reboot_at);
    assert_eq!(sim.booted, Slot::B);
    assert_eq!(sim.last_state(), ExecutionState::Succeeded);
    assert_eq!(sim.boot_default, Slot::B, "the commit marked slot B good");
    let p = sim.persisted.clone().unwrap();
    assert_eq!(p.known_good.map(|k| k.digest), Some(digest("2.0.0")));
    assert!(p.in_flight.is_none());
    // Only one Install, into B; the known-good release was never reinstalled.
    assert_eq!(sim.installs(), [(digest("2.0.0"), false)]);
    assert_eq!(sim.states(1).last(), Some(&"succeeded"));
}

#[test]
fn issue17_ab_trial_min_soaks_on_the_new_slot() {
    let mut c = slots_config();
    c.trial_min = 5 * MINUTE;
    let mut sim = Sim::new(c);
    sim.offer(desired(1, "2.0.0", 2));
    sim.reboot(sim.now);
    assert_eq!(sim.m.status().stage, Stage::Trial);
    sim.drive(4 * MINUTE);
    assert_eq!(sim.m.status().stage, Stage::Trial);
    assert_eq!(sim.boot_default, Slot::A, "not committed during the soak");
    sim.drive(2 * MINUTE);
    assert_eq!(sim.last_state(), ExecutionState::Succeeded);
    assert_eq!(sim.boot_default, Slot::B);
}

#[test]
fn issue17_ab_a_slot_that_never_boots_is_reported_boot_failed_from_the_old_slot() {
    let mut sim = slots_rebooting();
    sim.unbootable.insert(Slot::B);
    sim.reboot(sim.now);
    assert_eq!(sim.booted, Slot::A);
    let ExecutionState::RolledBack { reason, detail } = sim.last_state() else {
        panic!("not rolled back: {:?}", sim.last_state());
    };
    assert_eq!(reason, RollbackReason::BootFailed);
    assert!(
        detail.contains("slot B") && detail.contains("2.0.0"),
        "{detail}"
    );
    assert_eq!(sim.boot_default, Slot::A, "the old slot stays good");
    assert_eq!(sim.running(), Some(digest("1.0.0")));
    let p = sim.persisted.clone().unwrap();
    assert_eq!(p.known_good.map(|k| k.digest), Some(digest("1.0.0")));
    assert_eq!(p.security_floor, 1, "the floor did not rise");
}

#[test]
fn issue17_ab_a_crash_before_the_commit_falls_back_and_is_boot_failed() {
    let mut c = slots_config();
    c.trial_min = 5 * MINUTE;
    let mut sim = Sim::new(c);
    sim.offer(desired(1, "2.0.0", 2));
    sim.reboot(sim.now);
    assert_eq!(sim.m.status().stage, Stage::Trial);
    // The new system hangs during its soak: the watchdog resets it; no try is left.
    sim.reboot_requested = true;
    sim.reboot(sim.now.saturating_add(MINUTE));
    assert_eq!(sim.booted, Slot::A);
    assert!(matches!(
        sim.last_state(),
        ExecutionState::RolledBack {
            reason: RollbackReason::BootFailed,
            ..
        }
    ));
}

#[test]
fn issue17_ab_a_failing_trial_marks_the_new_slot_bad_and_reboots_back() {
    let mut sim = slots_rebooting();
    sim.probe = Probe::Fail;
    sim.reboot(sim.now);
    assert_eq!(sim.m.status().stage, Stage::Rebooting);
    assert_eq!(sim.boot_default, Slot::A, "slot A is the default again");
    assert!(sim.reboot_requested);
    assert_eq!(
        sim.persisted
            .as_ref()
            .unwrap()
            .in_flight
            .as_ref()
            .map(|f| matches!(
                f,
                InFlight::Rebooting {
                    slot: Slot::A,
                    outcome: Some(_),
                    ..
                }
            )),
        Some(true)
    );
    sim.reboot(sim.now);
    assert_eq!(sim.booted, Slot::A);
    let ExecutionState::RolledBack { reason, .. } = sim.last_state() else {
        panic!("not rolled back: {:?}", sim.last_state());
    };
    assert_eq!(reason, RollbackReason::ProbeFailed, "the probe's cause");
    assert_eq!(sim.running(), Some(digest("1.0.0")));
    assert!(sim.persisted.as_ref().unwrap().in_flight.is_none());
}

#[test]
fn issue17_ab_a_failing_trial_reboots_back_even_with_no_known_good_release_recorded() {
    // A device that came with an image in slot A but no `[factory]` release: the old slot is
    // still what ran before, so a failed trial on B boots A again (found by the QEMU boot
    // test: B was kept as the default and reported rolled back without a reboot).
    let mut c = slots_config();
    c.factory = None;
    let mut sim = Sim::new(c);
    sim.offer(desired(1, "2.0.0", 2));
    assert!(sim.reboot_requested);
    sim.probe = Probe::Fail;
    sim.reboot(sim.now);
    assert_eq!(sim.booted, Slot::B);
    assert_eq!(sim.m.status().stage, Stage::Rebooting);
    assert_eq!(sim.boot_default, Slot::A, "slot A is the default again");
    assert!(sim.reboot_requested);
    sim.reboot(sim.now);
    assert_eq!(sim.booted, Slot::A);
    let ExecutionState::RolledBack { reason, .. } = sim.last_state() else {
        panic!("not rolled back: {:?}", sim.last_state());
    };
    assert_eq!(reason, RollbackReason::ProbeFailed);
    assert!(sim.persisted.as_ref().unwrap().in_flight.is_none());
}

#[test]
fn issue17_ab_a_trial_timeout_on_the_new_slot_reboots_back_with_its_cause() {
    let mut sim = slots_rebooting();
    sim.server_up = false;
    sim.reboot(sim.now);
    sim.drive(11 * MINUTE);
    assert!(sim.reboot_requested);
    sim.reboot(sim.now);
    assert!(matches!(
        sim.last_state(),
        ExecutionState::RolledBack {
            reason: RollbackReason::ServerUnreachable,
            ..
        }
    ));
    assert_eq!(sim.booted, Slot::A);
}

#[test]
fn issue17_ab_a_failed_slot_write_keeps_the_booted_slot_and_never_reboots() {
    let mut sim = Sim::new(slots_config());
    sim.failing_installs.insert(digest("2.0.0"));
    sim.offer(desired(1, "2.0.0", 2));
    assert!(matches!(
        sim.last_state(),
        ExecutionState::Failed {
            phase: FailurePhase::Install,
            ..
        }
    ));
    assert!(!sim.reboot_requested);
    assert_eq!(sim.count(|a| matches!(a, Action::Reboot)), 0);
    assert_eq!(sim.boot_default, Slot::A);
    assert_eq!(sim.boot_try, None);
}

#[test]
fn issue17_ab_a_reboot_command_that_fails_ends_the_job_on_the_old_slot() {
    let mut sim = Sim::new(slots_config());
    sim.reboot_fails = true;
    sim.offer(desired(1, "2.0.0", 2));
    assert!(matches!(
        sim.last_state(),
        ExecutionState::Failed {
            phase: FailurePhase::Install,
            ..
        }
    ));
    assert_eq!(sim.boot_try, None, "the try was cancelled");
    assert_eq!(sim.boot_default, Slot::A);
}

#[test]
fn issue17_ab_an_agent_restart_before_the_reboot_asks_for_it_again() {
    let mut sim = slots_rebooting();
    sim.reboot_requested = false;
    sim.restart(false, sim.now);
    assert!(sim.reboot_requested, "the reboot is asked for again");
    assert_eq!(sim.m.status().stage, Stage::Rebooting);
    sim.reboot(sim.now);
    assert_eq!(sim.last_state(), ExecutionState::Succeeded);
}

/// Power cut after every action of the whole A/B update, each followed by power-on: the device
/// always boots a slot holding a release it knows, and once the journal is idle again it
/// names that slot's release as running and (for a success) known-good.
#[test]
fn issue17_ab_power_cut_at_every_step_boots_a_good_slot_and_the_journal_agrees() {
    let mut cuts = 0;
    for probe in [Probe::Healthy, Probe::Fail] {
        // Learn how many actions the scenario takes.
        let full = {
            let mut sim = slots_rebooting();
            sim.probe = probe;
            sim.reboot(sim.now);
            if sim.reboot_requested {
                sim.reboot(sim.now);
            }
            sim.log.len()
        };
        for cut in 1..full {
            let mut sim = Sim::new(slots_config());
            sim.probe = probe;
            sim.m.handle_desired(desired(1, "2.0.0", 2), sim.now);
            let mut steps = sim.log.len();
            // Run, one action at a time, then cut the power after action `cut`.
            let mut cut_done = false;
            for _ in 0..10 {
                while steps < cut {
                    let Some(action) = sim.m.poll_action() else {
                        break;
                    };
                    sim.check_write_ahead(&action);
                    sim.log.push((sim.now, action.clone()));
                    sim.respond(action);
                    steps += 1;
                }
                if steps >= cut {
                    cut_done = true;
                    break;
                }
                if sim.reboot_requested {
                    sim.reboot_requested = false;
                    sim.power_on();
                    sim.boot += 1;
                    sim.m = UpdateMachine::recover(
                        sim.config.clone(),
                        sim.persisted.clone(),
                        sim.boot,
                        sim.now,
                    );
                    sim.m.handle_boot_observed(sim.booted, sim.now);
                    sim.connected = false;
                    sim.m.handle_connected(sim.now);
                } else {
                    break;
                }
            }
            if !cut_done {
                continue;
            }
            cuts += 1;
            // Power cut and power-on; then let everything finish.
            sim.reboot_requested = false;
            sim.power_on();
            sim.restart(true, sim.now);
            for _ in 0..3 {
                if sim.reboot_requested {
                    sim.reboot(sim.now);
                }
            }
            sim.drive(11 * MINUTE);
            if sim.reboot_requested {
                sim.reboot(sim.now);
            }
            let booted = sim.slots.get(&sim.booted).copied();
            assert!(
                booted == Some(digest("1.0.0")) || booted == Some(digest("2.0.0")),
                "cut {cut}: booted slot {} holds {booted:?}",
                sim.booted
            );
            let p = sim.persisted.clone().unwrap();
            assert!(p.in_flight.is_none(), "cut {cut}: {:?}", p.in_flight);
            assert_eq!(
                p.running.map(|r| r.digest),
                booted,
                "cut {cut}: the journal's running release is the booted slot's"
            );
            assert_eq!(
                p.known_good.map(|r| r.digest),
                booted,
                "cut {cut}: the known-good release is the booted slot's"
            );
            assert_eq!(
                sim.boot_default, sim.booted,
                "cut {cut}: the bootloader's default is the slot that runs"
            );
            if probe == Probe::Fail {
                assert_eq!(booted, Some(digest("1.0.0")), "cut {cut}");
            }
        }
    }
    assert!(cuts > 40, "only {cuts} cuts were made");
}

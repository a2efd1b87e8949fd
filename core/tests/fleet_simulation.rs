//! The whole fleet in simulated time (issue 13), in the style of quinn-proto's `Pair`: a
//! thousand agents — each the agent's real [`UpdateMachine`] behind a small shell double — and
//! the fleet's decisions as the server takes them (core `fleet`: the generation ledger, the
//! device memos, [`deliver`], [`reissue_above_watermark`]; the rollout planner), with a seeded
//! network between them that delays, duplicates, reorders and drops messages, and restarts
//! devices and the server.
//!
//! What the server here is: the coordinator's rules as core holds them, driven the way
//! `server/src/fleet/actor` drives them (reports acknowledged against the ledger, outcomes
//! delivered, what a rollout waits for sent again above a device's watermark, planner actions
//! turned into desired states of a new generation, presence and heartbeats fed to the
//! planner). What it simplifies: one rollout; downloads and installs take no time; heartbeats
//! every 60 s (the agent's default is 30 s: fewer messages, the same trial rule); every
//! message is its own batch and is stored at once (a restart restores the planner from its
//! CBOR and the ledger from the desired states, as the server does from its tables, and loses
//! the watermarks as it does); no audit rate limits, no flags, no database outage.
//!
//! The network is MQTT as the fleet uses it: desired and reported states are retained (delayed,
//! duplicated and reordered, never lost: the broker keeps the last one and hands it over on a
//! reconnect), events, heartbeats and acks are QoS 1 on a clean session (delayed, duplicated,
//! reordered and sometimes lost). At seeded times devices lose power (the machine recovers
//! from what it persisted), get desired states from around the server (an MQTT client with
//! their rights: a release signed by a key they do not trust, above their generation, or of
//! the very generation the server just issued them, arriving first), and the server restarts.
//!
//! Invariants checked on every seed: every target ends in a final state (a silent one as
//! `timed-out`, the planner's "unreachable"); every device ends on the release of the last
//! desired state issued to it (or on its known-good one if it gave that job up), having acted
//! on that generation (or a later one from around the server), and never acted on an older one
//! after a newer; an abort brings back every device that took the bad release, or the rollout
//! says its recall failed; the planner's audit trail (`StateChanged`) has one event per
//! transition, each starting where the last ended, and a job only moves forward.
//!
//! `OTA_SIM_SEEDS` (default 200), `OTA_SIM_FIRST_SEED` (default 0) and `OTA_SIM_DEVICES`
//! (default 1000) make a longer run or replay one seed:
//! `OTA_SIM_SEEDS=5000 cargo test -p ota-core --test fleet_simulation --release`.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "the simulation is test code: a failing unwrap or panic is a failing test"
)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use ota_core::digest::Digest;
use ota_core::fleet::{
    Delivery, DeviceMemo, Generations, RolloutId, deliver, reissue_above_watermark,
};
use ota_core::release::{Manifest, TrustSet, sign};
use ota_core::rollout::{
    PlannerAction, Ratio, RecallState, Rollout, RolloutSpec, RolloutState, Target,
};
use ota_core::update::{
    Action, Config, PersistedState, ProbeResult, ReleaseInfo, Timestamp, UpdateMachine,
};
use ota_core::wire::{
    DesiredState, DeviceId, Event, ExecutionState, Heartbeat, HeartbeatAck, Inventory,
    PROTOCOL_VERSION, ReportedState, UpdateOutcome, WireMessage,
};

/// 2025-06-15 15:06:40 UTC, unix ms.
const START: u64 = 1_750_000_000_000;
/// How long a seed may run, in simulated time.
const HORIZON: Duration = Duration::from_secs(6 * 3600);
const MIRROR: &str = "https://mirror.example/artifact";
const OLD: &str = "1.0.0";
const NEW: &str = "2.0.0";

// ---- a seeded random source ------------------------------------------------------------------

/// SplitMix64: small, fast and the same on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

// ---- releases ----------------------------------------------------------------------------------

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

fn manifest(version: &str) -> Manifest {
    Manifest {
        format_version: ota_core::release::FORMAT_VERSION,
        product: "gateway-fw".into(),
        version: version.into(),
        // The same security version: an abort may send devices back to the old release.
        security_version: 1,
        artifact_sha256: digest(version).0,
        artifact_size: 4096,
        hardware: vec!["gw-a".into()],
        created: 1_700_000_000,
        expires: None,
        installer: Some("files".into()),
        metadata: BTreeMap::new(),
        chunk_index: None,
    }
}

/// The artifact digest of a version (the shell double never hashes bytes).
fn digest(version: &str) -> Digest {
    Digest::of(version.as_bytes())
}

/// The version of an artifact digest, for messages.
fn name(d: Digest) -> &'static str {
    [OLD, NEW]
        .into_iter()
        .find(|v| digest(v) == d)
        .unwrap_or("?")
}

/// The signed releases the server can send, by artifact digest.
fn releases() -> BTreeMap<Digest, Vec<u8>> {
    [OLD, NEW]
        .into_iter()
        .map(|v| (digest(v), sign(&manifest(v), &[key()])))
        .collect()
}

// ---- the network -------------------------------------------------------------------------------

/// A message on its way.
#[derive(Debug, Clone)]
enum Msg {
    /// Device → server: a topic and its CBOR payload.
    Up(usize, Up, Vec<u8>),
    /// Server → device.
    Down(usize, Down, Vec<u8>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Up {
    Reported,
    Event,
    Heartbeat,
    Online,
    Offline,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Down {
    Desired,
    Ack,
}

impl Msg {
    /// Retained messages are never lost: the broker keeps the last one.
    fn is_retained(&self) -> bool {
        matches!(
            self,
            Msg::Up(_, Up::Reported | Up::Online | Up::Offline, _) | Msg::Down(_, Down::Desired, _)
        )
    }
}

/// Faults of one seed, in percent per message.
#[derive(Debug, Clone, Copy)]
struct Faults {
    drop: u64,
    duplicate: u64,
    /// The longest delay, ms (delays are uniform: messages overtake each other).
    max_delay: u64,
}

struct Network {
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    messages: BTreeMap<u64, Msg>,
    seq: u64,
    faults: Faults,
    /// The seed's random source (faults, restarts).
    rng: Rng,
}

impl Network {
    fn send(&mut self, now: u64, msg: Msg) {
        if !msg.is_retained() && self.rng.chance(self.faults.drop) {
            return;
        }
        let copies = if self.rng.chance(self.faults.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let at = now + 1 + self.rng.below(self.faults.max_delay);
            self.seq += 1;
            self.queue.push(Reverse((at, self.seq)));
            self.messages.insert(self.seq, msg.clone());
        }
    }

    fn next_at(&self) -> Option<u64> {
        self.queue.peek().map(|Reverse((at, _))| *at)
    }

    fn pop(&mut self) -> Option<Msg> {
        let Reverse((_, seq)) = self.queue.pop()?;
        self.messages.remove(&seq)
    }
}

// ---- a device: the agent's machine behind a shell double --------------------------------------

struct Device {
    id: DeviceId,
    config: Config,
    m: UpdateMachine,
    persisted: Option<PersistedState>,
    boot: u32,
    cache: BTreeSet<Digest>,
    installed: Option<Digest>,
    /// Its health probe fails on the new release.
    bad: bool,
    connected: bool,
    /// The desired state the broker holds for it (retained), as bytes.
    retained: Option<Vec<u8>>,
    /// The generations it acted on, in the order of its events.
    acted: Vec<u64>,
    /// Every release it installed.
    installs: Vec<Digest>,
    /// The highest generation injected around the server that reached it.
    injected: u64,
    /// The last state it announced for each generation.
    outcomes: BTreeMap<u64, ExecutionState>,
}

impl Device {
    fn new(i: usize, trust: &TrustSet, bad: bool, now: Timestamp) -> Device {
        let id = DeviceId::new(&format!("gw-{i:05}")).unwrap();
        let mut config = Config::new(id.clone(), "gw-a", trust.clone());
        let old = ReleaseInfo::from_manifest(&manifest(OLD));
        config.factory = Some(old.clone());
        config.heartbeat_interval = Duration::from_secs(60);
        config.retry.jitter_seed = i as u64;
        let m = UpdateMachine::recover(config.clone(), None, 1, now);
        Device {
            id,
            config,
            m,
            persisted: None,
            boot: 1,
            cache: BTreeSet::from([old.digest]),
            installed: Some(old.digest),
            bad,
            connected: false,
            retained: None,
            acted: Vec::new(),
            installs: Vec::new(),
            injected: 0,
            outcomes: BTreeMap::new(),
        }
    }

    /// Its health probe's answer: healthy, or `sick` when it is bad and runs the new release.
    fn probe(&self, sick: impl FnOnce() -> ProbeResult) -> ProbeResult {
        if self.bad && self.installed == Some(digest(NEW)) {
            sick()
        } else {
            ProbeResult::Healthy
        }
    }

    /// Answers the machine's actions until there are none; what it publishes goes to `net`.
    fn run(&mut self, i: usize, now: Timestamp, net: &mut Network) {
        for _ in 0..10_000 {
            let Some(action) = self.m.poll_action() else {
                return;
            };
            self.respond(i, action, now, net);
        }
        panic!("device {} never stops acting", self.id);
    }

    fn respond(&mut self, i: usize, action: Action, now: Timestamp, net: &mut Network) {
        let t = now.as_unix_millis();
        match action {
            Action::Persist(state) => self.persisted = Some(*state),
            Action::PublishEvent(e) => {
                if self.acted.last() != Some(&e.generation) {
                    self.acted.push(e.generation);
                }
                self.outcomes.insert(e.generation, e.kind.clone());
                if self.connected {
                    net.send(t, Msg::Up(i, Up::Event, e.to_cbor()));
                }
            }
            Action::PublishReported => {
                if self.connected {
                    let r = self
                        .m
                        .reported_state("sim", Inventory::default(), BTreeMap::new());
                    net.send(t, Msg::Up(i, Up::Reported, r.to_cbor()));
                }
            }
            Action::ReadPower => self
                .m
                .handle_power(ota_core::wire::PowerReading::MAINS, now),
            Action::CheckDisk { .. } => self.m.handle_disk(1 << 40, now),
            Action::HashCached { digest, .. } => {
                let ok = self.cache.contains(&digest);
                self.m.handle_cache_hashed(digest, ok, now);
            }
            Action::InspectPartial { digest } => self.m.handle_partial(digest, 0, now),
            Action::Download { digest, size, .. } => {
                self.cache.insert(digest);
                self.m.handle_download_progress(digest, size, now);
                self.m.handle_download_complete(digest, size, now);
            }
            Action::DiscardPartial { .. } | Action::Commit { .. } => {}
            Action::Install { release, .. } => {
                let result = if self.cache.contains(&release.digest) {
                    self.installed = Some(release.digest);
                    self.installs.push(release.digest);
                    Ok(())
                } else {
                    Err(ota_core::update::InstallError::new("not in the cache"))
                };
                self.m.handle_install_done(release.digest, result, now);
            }
            Action::ObserveRunning => self.m.handle_observed_running(self.installed, now),
            Action::Evict { digest } => {
                self.cache.remove(&digest);
            }
            Action::RunProbe { .. } => {
                let result = self.probe(|| ProbeResult::Failed("service crashed".into()));
                self.m.handle_probe(result, now);
            }
            Action::CheckHealth { .. } => {
                let result = self.probe(|| ProbeResult::NotYet("service down".into()));
                self.m.handle_health(result, now);
            }
            Action::SendHeartbeat { seq, healthy } => {
                if self.connected {
                    let h = Heartbeat {
                        v: PROTOCOL_VERSION,
                        seq,
                        at: t,
                        healthy,
                    };
                    net.send(t, Msg::Up(i, Up::Heartbeat, h.to_cbor()));
                }
            }
            other => panic!("unexpected action {other:?}"),
        }
    }

    /// Connects: the broker hands over the retained desired state; the last will is armed.
    fn connect(&mut self, i: usize, now: Timestamp, net: &mut Network) {
        self.connected = true;
        let t = now.as_unix_millis();
        net.send(t, Msg::Up(i, Up::Online, Vec::new()));
        if let Some(bytes) = self.retained.clone() {
            net.send(t, Msg::Down(i, Down::Desired, bytes));
        }
        self.m.handle_connected(now);
        self.run(i, now, net);
    }

    /// A power cut and a restart from what the machine persisted (the disk keeps the cache
    /// and the installed release); the broker publishes the last will meanwhile.
    fn restart(&mut self, i: usize, now: Timestamp, net: &mut Network) {
        self.connected = false;
        net.send(now.as_unix_millis(), Msg::Up(i, Up::Offline, Vec::new()));
        self.boot += 1;
        self.m =
            UpdateMachine::recover(self.config.clone(), self.persisted.clone(), self.boot, now);
        self.run(i, now, net);
        self.connect(i, now, net);
    }
}

// ---- the server: core's fleet rules, driven as the coordinator drives them ---------------------

struct Server {
    rid: RolloutId,
    planner: Rollout,
    generations: Generations,
    memos: BTreeMap<DeviceId, DeviceMemo>,
    releases: BTreeMap<Digest, Vec<u8>>,
    /// The stored desired states: generation and release, by device.
    desired: BTreeMap<DeviceId, (u64, Digest)>,
    /// The audit trail of device transitions, by device.
    audit: BTreeMap<DeviceId, Vec<(ExecutionState, ExecutionState)>>,
    /// Reports refused: they acknowledge a generation never issued, or answer the last one
    /// about another release.
    refused: u64,
    /// Each device's index in the fleet.
    index: BTreeMap<DeviceId, usize>,
}

impl Server {
    fn new(devices: &[Device], spec: RolloutSpec, now: Timestamp) -> Server {
        let old = digest(OLD);
        let targets = devices
            .iter()
            .map(|d| Target::new(d.id.clone(), old, old).with_online(false))
            .collect();
        Server {
            rid: RolloutId::new(1).unwrap(),
            planner: Rollout::new(spec, targets, now).unwrap(),
            generations: Generations::new(),
            memos: BTreeMap::new(),
            releases: releases(),
            desired: BTreeMap::new(),
            audit: BTreeMap::new(),
            refused: 0,
            index: devices
                .iter()
                .enumerate()
                .map(|(i, d)| (d.id.clone(), i))
                .collect(),
        }
    }

    /// A restart: the planner from its stored bytes, the ledger from the stored desired
    /// states; then the broker hands over every retained reported state and presence, and the
    /// server publishes every stored desired state again (retained, same generation).
    fn restart(&mut self, devices: &mut [Device], now: Timestamp, net: &mut Network) {
        self.planner = Rollout::from_cbor(&self.planner.to_cbor()).unwrap();
        self.generations = Generations::new();
        for (id, (generation, release)) in &self.desired {
            self.generations
                .restore(id.clone(), *generation, Some(*release));
        }
        let t = now.as_unix_millis();
        for (i, d) in devices.iter_mut().enumerate() {
            let presence = if d.connected { Up::Online } else { Up::Offline };
            net.send(t, Msg::Up(i, presence, Vec::new()));
            if let Some(bytes) = &d.retained {
                net.send(t, Msg::Down(i, Down::Desired, bytes.clone()));
            }
            let r =
                d.m.reported_state("sim", Inventory::default(), BTreeMap::new());
            net.send(t, Msg::Up(i, Up::Reported, r.to_cbor()));
        }
    }

    fn receive(
        &mut self,
        i: usize,
        kind: Up,
        bytes: &[u8],
        devices: &mut [Device],
        now: Timestamp,
        net: &mut Network,
    ) {
        let id = devices[i].id.clone();
        match kind {
            Up::Reported => {
                let r = ReportedState::from_cbor(bytes).unwrap();
                let outcome = r.last_result.as_ref();
                if !self.acknowledges_issued(&id, r.acknowledged_generation(), outcome) {
                    // What a rollout still waits for goes out again, above the watermark.
                    if let Some((to, _)) =
                        reissue_above_watermark(&self.generations, &self.planner, &id)
                    {
                        self.issue(&id, to, devices, now, net);
                    }
                    return;
                }
                let held =
                    self.planner.state().is_active() && self.planner.device_state(&id).is_some();
                self.memos
                    .entry(id.clone())
                    .or_default()
                    .handle_report(&r, held);
                if let Some(o) = &r.last_result {
                    self.deliver(&id, o, now);
                }
            }
            Up::Event => {
                let e = Event::from_cbor(bytes).unwrap();
                let outcome = e.outcome();
                // (A refused event moves the watermark only: the reported state follows.)
                if !self.acknowledges_issued(&id, e.generation, Some(&outcome)) {
                    return;
                }
                self.deliver(&id, &outcome, now);
            }
            Up::Heartbeat => {
                let h = Heartbeat::from_cbor(bytes).unwrap();
                let memo = self.memos.entry(id.clone()).or_default();
                if memo.handle_heartbeat(h.healthy).came_online {
                    let _ = self.planner.handle_device_online(&id, now);
                }
                let ack = HeartbeatAck {
                    v: PROTOCOL_VERSION,
                    seq: h.seq,
                };
                net.send(now.as_unix_millis(), Msg::Down(i, Down::Ack, ack.to_cbor()));
            }
            Up::Online | Up::Offline => {
                let online = kind == Up::Online;
                self.memos
                    .entry(id.clone())
                    .or_default()
                    .handle_presence(online);
                let _ = if online {
                    self.planner.handle_device_online(&id, now)
                } else {
                    self.planner.handle_device_offline(&id, now)
                };
            }
        }
        self.drain(devices, now, net);
    }

    /// Whether a report acknowledging `generation` (with `outcome`) may be taken: only a
    /// generation issued to the device, and an outcome about the release issued under it.
    /// Otherwise it is refused (the server records it), and the ledger keeps the device's
    /// watermark.
    fn acknowledges_issued(
        &mut self,
        id: &DeviceId,
        generation: u64,
        outcome: Option<&UpdateOutcome>,
    ) -> bool {
        let ok = self
            .generations
            .acknowledge(id, generation, outcome)
            .is_ok();
        self.refused += u64::from(!ok);
        ok
    }

    fn deliver(&mut self, id: &DeviceId, o: &UpdateOutcome, now: Timestamp) {
        if o.rollout() != Some(self.rid) {
            return;
        }
        if let Delivery::Refused(e) = deliver(&mut self.planner, &self.generations, id, o, now) {
            panic!("{id}: the planner refused {o:?}: {e}");
        }
    }

    /// The planner's actions: desired states of a new generation, stored and published.
    fn drain(&mut self, devices: &mut [Device], now: Timestamp, net: &mut Network) {
        while let Some(action) = self.planner.poll_action() {
            match action {
                PlannerAction::Notify { device_id } => {
                    let release = self.planner.spec().release;
                    self.issue(&device_id, release, devices, now, net);
                }
                PlannerAction::Rollback {
                    device_id,
                    to_digest,
                }
                | PlannerAction::Cancel {
                    device_id,
                    to_digest,
                } => {
                    self.issue(&device_id, to_digest, devices, now, net);
                }
                PlannerAction::StateChanged {
                    device_id,
                    old,
                    new,
                } => {
                    self.audit.entry(device_id).or_default().push((old, new));
                }
                _ => {}
            }
        }
    }

    fn issue(
        &mut self,
        id: &DeviceId,
        release: Digest,
        devices: &mut [Device],
        now: Timestamp,
        net: &mut Network,
    ) {
        let generation = self.generations.issue(id, release).unwrap();
        let desired = DesiredState {
            v: PROTOCOL_VERSION,
            generation,
            rollout_id: Some(self.rid.to_string()),
            release: self.releases[&release].clone(),
            artifact_urls: vec![MIRROR.into()],
            force_reinstall: false,
        };
        self.desired.insert(id.clone(), (generation, release));
        let i = self.index[id];
        let bytes = desired.to_cbor();
        devices[i].retained = Some(bytes.clone());
        net.send(now.as_unix_millis(), Msg::Down(i, Down::Desired, bytes));
    }

    /// Whether the rollout has nothing left to do: completed with every target final, or
    /// aborted with every device it sent back answered.
    fn settled(&self) -> bool {
        let status = self.planner.status();
        match self.planner.state() {
            RolloutState::Completed => self.planner.targets().all(|t| t.state.is_final()),
            RolloutState::Aborted { .. } => status.recall.pending == 0,
            _ => false,
        }
    }
}

/// A desired state from around the server (an MQTT client with the device's rights) for
/// `generation`: a release signed by a key the devices do not trust.
fn injected(generation: u64) -> Vec<u8> {
    DesiredState {
        v: PROTOCOL_VERSION,
        generation,
        rollout_id: None,
        release: sign(&manifest("6.6.6"), &[SigningKey::from_bytes(&[66; 32])]),
        artifact_urls: vec![MIRROR.into()],
        force_reinstall: false,
    }
    .to_cbor()
}

/// Something that happens to the fleet at a seeded time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Incident {
    /// Device `i` loses power and restarts.
    PowerCut(usize),
    /// Device `i` gets a desired state from around the server, this many generations above
    /// the last it acted on.
    Injected(usize, u64),
    /// The server restarts from what it stored.
    ServerRestart,
}

// ---- one seed ----------------------------------------------------------------------------------

fn spec() -> RolloutSpec {
    let mut spec = RolloutSpec::new("1", digest(NEW), "sim");
    spec.waves = vec![Ratio::percent(10), Ratio::percent(50), Ratio::percent(100)];
    spec.bake_time = Duration::from_secs(120);
    spec.rate_per_minute = 600;
    spec.inactivity_timeout = Duration::from_secs(900);
    spec.max_deferral = Duration::from_secs(900);
    spec
}

/// What a seed ended with.
#[derive(Debug, Clone, Copy)]
struct Ending {
    /// The rollout's state.
    state: &'static str,
    /// Reports the server refused ([`Server::refused`]).
    refused: u64,
    /// Devices an abort sent back whose recall failed.
    failed_recalls: u64,
}

/// Runs one seed with `n` devices.
fn run_seed(seed: u64, n: usize) -> Ending {
    let mut rng = Rng(seed);
    let faults = Faults {
        drop: rng.below(6),
        duplicate: rng.below(6),
        max_delay: 50 + rng.below(5_000),
    };
    // In percent of the server's desired states: one from around the server, of the same
    // generation, reaches the device first.
    let collisions = rng.below(3);
    // One seed in two ships a release that fails the health probe on a share of the devices.
    let bad_share = if seed % 2 == 1 { 5 + rng.below(30) } else { 0 };
    let trust = TrustSet::new(vec![key().verifying_key()], 1).unwrap();
    let start = Timestamp(START);
    let mut devices: Vec<Device> = (0..n)
        .map(|i| Device::new(i, &trust, rng.chance(bad_share), start))
        .collect();
    let mut server = Server::new(&devices, spec(), start);
    // Incidents: a few devices lose power at random times, as many get a desired state from
    // around the server (an injected one, above the generation they acted on, of a release
    // signed by a key they do not trust), the server restarts once or twice.
    let mut incidents: BTreeSet<(u64, Incident)> = BTreeSet::new();
    for _ in 0..(n / 50).max(1) {
        let i = rng.below(n as u64) as usize;
        incidents.insert((START + rng.below(1_800_000), Incident::PowerCut(i)));
        let i = rng.below(n as u64) as usize;
        let above = 1 + rng.below(50);
        incidents.insert((START + rng.below(1_800_000), Incident::Injected(i, above)));
    }
    for _ in 0..1 + rng.below(2) {
        incidents.insert((START + rng.below(1_800_000), Incident::ServerRestart));
    }
    let mut net = Network {
        queue: BinaryHeap::new(),
        messages: BTreeMap::new(),
        seq: 0,
        faults,
        rng,
    };
    let mut timers: BTreeSet<(Timestamp, usize)> = BTreeSet::new();
    let mut timer_of: Vec<Option<Timestamp>> = vec![None; n];
    let reschedule = |i: usize,
                      d: &Device,
                      timers: &mut BTreeSet<(Timestamp, usize)>,
                      timer_of: &mut [Option<Timestamp>]| {
        if let Some(old) = timer_of[i].take() {
            timers.remove(&(old, i));
        }
        if let Some(t) = d.m.poll_timeout() {
            timers.insert((t, i));
            timer_of[i] = Some(t);
        }
    };
    for (i, d) in devices.iter_mut().enumerate() {
        d.run(i, start, &mut net);
        d.connect(i, start, &mut net);
        reschedule(i, d, &mut timers, &mut timer_of);
    }
    server.drain(&mut devices, start, &mut net);
    let end = START + HORIZON.as_millis() as u64;
    let mut settled_at = None;
    let mut last = START;
    loop {
        let candidates = [
            net.next_at(),
            timers.first().map(|(t, _)| t.as_unix_millis()),
            server.planner.poll_timeout().map(|t| t.as_unix_millis()),
            incidents.first().map(|(t, _)| *t),
        ];
        let Some(t) = candidates.into_iter().flatten().min() else {
            break;
        };
        if t > end {
            break;
        }
        if settled_at.is_none() && server.settled() {
            settled_at = Some(t);
        }
        // Once settled (every target answered for good), five more minutes: whatever is
        // still on the way arrives, late duplicates included.
        if settled_at.is_some_and(|s| t > s + 300_000) {
            break;
        }
        last = t;
        let now = Timestamp(t);
        if incidents.first().is_some_and(|(at, _)| *at == t) {
            match incidents.pop_first().unwrap().1 {
                Incident::PowerCut(i) => {
                    devices[i].restart(i, now, &mut net);
                    reschedule(i, &devices[i], &mut timers, &mut timer_of);
                }
                Incident::Injected(i, above) => {
                    let generation = devices[i].m.status().last_generation + above;
                    net.send(t, Msg::Down(i, Down::Desired, injected(generation)));
                }
                Incident::ServerRestart => server.restart(&mut devices, now, &mut net),
            }
        } else if net.next_at() == Some(t) {
            match net.pop().unwrap() {
                Msg::Up(i, kind, bytes) => {
                    server.receive(i, kind, &bytes, &mut devices, now, &mut net);
                }
                Msg::Down(i, kind, bytes) => {
                    let d = &mut devices[i];
                    if !d.connected {
                        continue;
                    }
                    match kind {
                        Down::Desired => {
                            let desired = DesiredState::from_cbor(&bytes).unwrap();
                            // The race of the e2e rotation test: a desired state from around
                            // the server, of the very generation the server just issued,
                            // arrives first.
                            if desired.rollout_id.is_some() && net.rng.chance(collisions) {
                                let first = injected(desired.generation);
                                let first = DesiredState::from_cbor(&first).unwrap();
                                d.injected = d.injected.max(first.generation);
                                d.m.handle_desired(first, now);
                            }
                            if desired.rollout_id.is_none() {
                                d.injected = d.injected.max(desired.generation);
                            }
                            d.m.handle_desired(desired, now);
                        }
                        Down::Ack => {
                            let ack = HeartbeatAck::from_cbor(&bytes).unwrap();
                            d.m.handle_heartbeat_ack(ack.seq, now);
                        }
                    }
                    d.run(i, now, &mut net);
                    reschedule(i, &devices[i], &mut timers, &mut timer_of);
                }
            }
        } else if timers
            .first()
            .is_some_and(|(at, _)| at.as_unix_millis() == t)
        {
            let (_, i) = timers.pop_first().unwrap();
            timer_of[i] = None;
            let d = &mut devices[i];
            d.m.handle_timeout(now);
            d.run(i, now, &mut net);
            reschedule(i, &devices[i], &mut timers, &mut timer_of);
        } else {
            server.planner.handle_timeout(now);
            server.drain(&mut devices, now, &mut net);
        }
    }
    if std::env::var_os("OTA_SIM_VERBOSE").is_some() {
        eprintln!(
            "seed {seed}: {} messages, ended at +{} s",
            net.seq,
            (last - START) / 1000
        );
    }
    let failed_recalls = check(seed, &server, &devices);
    Ending {
        state: server.planner.state().name(),
        refused: server.refused,
        failed_recalls,
    }
}

// ---- the invariants ----------------------------------------------------------------------------

/// Checks the invariants of a seed's end; answers how many recalls failed.
fn check(seed: u64, server: &Server, devices: &[Device]) -> u64 {
    let mut failed_recalls = 0;
    let ctx = |d: &Device| format!("seed {seed}, device {}", d.id);
    assert!(
        server.settled(),
        "seed {seed}: the rollout never settled: {:?}",
        server.planner.status()
    );
    let aborted = matches!(server.planner.state(), RolloutState::Aborted { .. });
    for d in devices {
        // Every target ends in a final state (timed-out is the planner's "unreachable").
        let state = server.planner.device_state(&d.id).unwrap();
        if !aborted {
            assert!(state.is_final(), "{}: ends {state:?}", ctx(d));
        }
        // The last desired state issued wins: the device acted on that generation and runs
        // its release, and never acted on an older generation after a newer one.
        let (issued, release) = server
            .desired
            .get(&d.id)
            .copied()
            .unwrap_or((0, digest(OLD)));
        let status = d.m.status();
        // (Above it only if a desired state from around the server reached it after its job.)
        assert_eq!(
            status.last_generation,
            issued.max(d.injected),
            "{}: acted on",
            ctx(d)
        );
        let gave_up = d.outcomes.get(&issued).is_some_and(|s| {
            matches!(
                s,
                ExecutionState::RolledBack { .. } | ExecutionState::Failed { .. }
            )
        });
        // (Giving up a job, the agent goes back to its known-good release.)
        let known_good = status.known_good.as_ref().map(|k| k.digest);
        let expected = if gave_up {
            known_good.unwrap()
        } else {
            release
        };
        assert_eq!(
            d.installed.map(name),
            Some(name(expected)),
            "{}: runs (issued {issued} for {}, outcomes {:?}, planner {state:?}, audit {:?}, installs {:?})",
            ctx(d),
            name(release),
            d.outcomes,
            server.audit.get(&d.id),
            d.installs.iter().copied().map(name).collect::<Vec<_>>(),
        );
        assert!(
            d.acted.windows(2).all(|w| w[0] <= w[1]),
            "{}: acted on {:?}",
            ctx(d),
            d.acted
        );
        // Only the rollout's release, or the known-good one after it.
        let first_new = d.installs.iter().position(|r| *r == digest(NEW));
        for (k, installed) in d.installs.iter().enumerate() {
            let back = *installed == digest(OLD) && first_new.is_some_and(|f| f < k);
            assert!(
                *installed == digest(NEW) || back,
                "{}: installed {:?}",
                ctx(d),
                d.installs
            );
        }
        // An abort brings back every device that took the bad release, or the rollout says
        // its recall failed (the device reported why: a power cut during the trial of the
        // release it was sent back to makes the agent return to its known-good one, the
        // aborted release it had committed).
        if aborted {
            let recall = server
                .planner
                .targets()
                .find(|t| *t.device_id == d.id)
                .and_then(|t| t.recall);
            let failed = matches!(recall, Some((_, RecallState::Failed)));
            assert!(
                d.installed == Some(digest(OLD)) || failed,
                "{}: not back after the abort (recall {recall:?}, outcomes {:?})",
                ctx(d),
                d.outcomes
            );
            failed_recalls += u64::from(failed);
        }
        // One audit event per transition, each starting where the last ended.
        let trail = server
            .audit
            .get(&d.id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        // (Download progress is no transition: states compare by name.) A job only goes
        // forward: a device's events that overtook each other on the way are never taken in
        // the wrong order, not even after a server restart.
        let mut at = ExecutionState::Queued.name();
        for (old, new) in trail {
            assert_eq!(old.name(), at, "{}: audit trail {trail:?}", ctx(d));
            assert_ne!(old.name(), new.name(), "{}: audit trail {trail:?}", ctx(d));
            let late = matches!(old, ExecutionState::TimedOut);
            let regressed = matches!(
                (old, new),
                (ExecutionState::Succeeded, ExecutionState::RolledBack { .. })
            );
            assert!(
                late || regressed || step(new) > step(old),
                "{}: went back in audit trail {trail:?}",
                ctx(d)
            );
            at = new.name();
        }
        assert_eq!(
            at,
            state.name(),
            "{}: the audit trail ends where the planner is",
            ctx(d)
        );
    }
    failed_recalls
}

/// How far along its job a device in `state` is.
fn step(state: &ExecutionState) -> u8 {
    match state {
        ExecutionState::Queued => 0,
        ExecutionState::Notified => 1,
        ExecutionState::DeferredPower { .. }
        | ExecutionState::DeferredWindow { .. }
        | ExecutionState::DeferredDisk { .. } => 2,
        ExecutionState::Downloading { .. } => 3,
        ExecutionState::Installing | ExecutionState::Rebooting => 4,
        ExecutionState::Trial => 5,
        _ => 6,
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn issue13_the_whole_fleet_keeps_its_invariants_on_every_seed() {
    let first = env("OTA_SIM_FIRST_SEED", 0);
    let seeds = env("OTA_SIM_SEEDS", 200);
    let n = env("OTA_SIM_DEVICES", 1000) as usize;
    let threads = std::thread::available_parallelism().map_or(1, |p| p.get()) as u64;
    // Seeds are handed out one at a time: the seeds that abort run longer.
    let next = std::sync::atomic::AtomicU64::new(0);
    let endings: Vec<Ending> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if k >= seeds {
                            return done;
                        }
                        let seed = first + k;
                        done.push(run_seed(seed, n));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let aborted = endings.iter().filter(|e| e.state == "aborted").count();
    let completed = endings.iter().filter(|e| e.state == "completed").count();
    let refused: u64 = endings.iter().map(|e| e.refused).sum();
    let failed_recalls: u64 = endings.iter().map(|e| e.failed_recalls).sum();
    eprintln!(
        "{seeds} seeds x {n} devices: {completed} completed, {aborted} aborted; \
         {refused} reports refused (a generation not issued, or not its release), {failed_recalls} failed recalls"
    );
    assert_eq!(completed + aborted, seeds as usize);
    assert!(completed > 0 && aborted > 0, "both endings are exercised");
    assert!(
        refused > 0,
        "desired states from around the server reached devices"
    );
}

//! The rollout planner, driven by a deterministic fleet simulator over simulated time: the
//! driver jumps `now` to the next device report or `poll_timeout()`, like quinn-proto's
//! `Pair::drive`.
#![allow(
    clippy::unwrap_used,
    reason = "tests may unwrap, fixture helpers included: a failing unwrap is a failing test"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ota_core::digest::Digest;
use ota_core::rollout::{
    AbortReason, ExecutionState, FailurePhase, NoRollbackCause, PlannerAction, Ratio, RecallState,
    ReportOutcome, Rollout, RolloutError, RolloutSpec, RolloutState, Target, Timestamp, WavePhase,
    assign_cohorts, cohort_of, cohort_point, in_share,
};
use ota_core::wire::{DeviceId, PowerReading, RejectCause, RollbackReason};
use proptest::prelude::*;

// ----- fixtures -----

const T0: Timestamp = Timestamp::from_unix_secs(1_750_000_000);

fn mins(m: u64) -> Duration {
    Duration::from_secs(60 * m)
}

fn at(d: Duration) -> Timestamp {
    T0.saturating_add(d)
}

fn release() -> Digest {
    Digest::of(b"release 2.0.0")
}

fn old_release() -> Digest {
    Digest::of(b"release 1.0.0")
}

fn known_good() -> Digest {
    Digest::of(b"release 1.0.0 known good")
}

fn id(i: usize) -> DeviceId {
    DeviceId::new(&format!("dev-{i:05}")).unwrap()
}

fn ids(n: usize) -> Vec<DeviceId> {
    (0..n).map(id).collect()
}

fn targets(n: usize) -> Vec<Target> {
    ids(n)
        .into_iter()
        .map(|d| Target::new(d, old_release(), known_good()))
        .collect()
}

fn spec(waves: &[u16]) -> RolloutSpec {
    let mut s = RolloutSpec::new("rollout-42", release(), "alice");
    s.waves = waves.iter().map(|p| Ratio::percent(*p)).collect();
    s.bake_time = mins(10);
    s.rate_per_minute = 10_000;
    s
}

fn downloading(done: u64) -> ExecutionState {
    ExecutionState::Downloading { done, total: 100 }
}

fn deferred_power() -> ExecutionState {
    ExecutionState::DeferredPower {
        reading: PowerReading {
            battery_percent: Some(5),
            charging: false,
            mains_online: false,
        },
    }
}

fn failed(phase: FailurePhase) -> ExecutionState {
    ExecutionState::Failed {
        phase,
        reason: "boom".into(),
    }
}

fn rolled_back() -> ExecutionState {
    ExecutionState::RolledBack {
        reason: RollbackReason::ProbeFailed,
        detail: "probe failed".into(),
    }
}

fn rejected() -> ExecutionState {
    ExecutionState::Rejected {
        cause: RejectCause::BadSignature,
        detail: "bad signature".into(),
    }
}

/// How a simulated device behaves once notified (times relative to the notification).
#[derive(Debug, Clone)]
enum Script {
    /// Download, install, trial, commit at +6 min.
    Succeed,
    /// Report skipped-identical at +30 s.
    Identical,
    /// Fail in `phase` at +5 min.
    Fail(FailurePhase),
    /// Trial fails and the device rolls back at +5 min.
    RollBack,
    /// Refuse the release at +30 s.
    Reject,
    /// Never report.
    Silent,
    /// Deferred for power at +1 min for the duration, then succeed.
    Defer(Duration),
    /// Deferred for power at +1 min, forever.
    DeferForever,
    /// A/B slots: installing at +3 min, rebooting at +4 min, back on the new slot and on
    /// trial at +20 min, committed at +22 min.
    RebootThenSucceed,
}

impl Script {
    fn steps(&self) -> Vec<(Duration, ExecutionState)> {
        let s = |secs| Duration::from_secs(secs);
        let success = |base: Duration| {
            vec![
                (base + mins(1), downloading(50)),
                (base + mins(2), downloading(100)),
                (base + mins(3), ExecutionState::Installing),
                (base + mins(4), ExecutionState::Trial),
                (base + mins(6), ExecutionState::Succeeded),
            ]
        };
        match self {
            Script::Succeed => success(Duration::ZERO),
            Script::Identical => vec![(s(30), ExecutionState::SkippedIdentical)],
            Script::Fail(FailurePhase::Download) => {
                vec![
                    (mins(1), downloading(10)),
                    (mins(5), failed(FailurePhase::Download)),
                ]
            }
            Script::Fail(phase) => vec![
                (mins(1), downloading(100)),
                (mins(3), ExecutionState::Installing),
                (mins(5), failed(*phase)),
            ],
            Script::RollBack => vec![
                (mins(1), downloading(100)),
                (mins(3), ExecutionState::Installing),
                (mins(4), ExecutionState::Trial),
                (mins(5), rolled_back()),
            ],
            Script::Reject => vec![(s(30), rejected())],
            Script::Silent => vec![],
            Script::Defer(d) => {
                let mut v = vec![(mins(1), deferred_power())];
                v.extend(success(mins(1) + *d));
                v
            }
            Script::DeferForever => vec![(mins(1), deferred_power())],
            Script::RebootThenSucceed => vec![
                (mins(1), downloading(100)),
                (mins(3), ExecutionState::Installing),
                (mins(4), ExecutionState::Rebooting),
                (mins(20), ExecutionState::Trial),
                (mins(22), ExecutionState::Succeeded),
            ],
        }
    }
}

/// A deterministic fleet: scripted devices, a report queue ordered by (time, sequence), and
/// the planner; every action is logged with its time.
#[derive(Clone)]
struct Sim {
    r: Rollout,
    now: Timestamp,
    log: Vec<(Timestamp, PlannerAction)>,
    scripts: BTreeMap<DeviceId, Script>,
    default_script: Script,
    events: BTreeMap<(Timestamp, u64), (DeviceId, ExecutionState)>,
    seq: u64,
    /// Deliver every report twice (QoS 1 duplicates).
    duplicate_reports: bool,
    /// Encode and decode the planner after every step (a server restarting all the time).
    restart_every_step: bool,
}

impl Sim {
    fn new(spec: RolloutSpec, targets: Vec<Target>) -> Sim {
        Sim {
            r: Rollout::new(spec, targets, T0).unwrap(),
            now: T0,
            log: vec![],
            scripts: BTreeMap::new(),
            default_script: Script::Succeed,
            events: BTreeMap::new(),
            seq: 0,
            duplicate_reports: false,
            restart_every_step: false,
        }
    }

    fn script(mut self, device: DeviceId, script: Script) -> Sim {
        self.scripts.insert(device, script);
        self
    }

    fn drain(&mut self) {
        while let Some(action) = self.r.poll_action() {
            if let PlannerAction::Notify { device_id } = &action {
                let script = self
                    .scripts
                    .get(device_id)
                    .unwrap_or(&self.default_script)
                    .clone();
                for (delay, state) in script.steps() {
                    self.seq += 1;
                    self.events.insert(
                        (self.now.saturating_add(delay), self.seq),
                        (device_id.clone(), state),
                    );
                }
            }
            self.log.push((self.now, action));
        }
    }

    fn next_wakeup(&self) -> Option<Timestamp> {
        let event = self.events.keys().next().map(|(t, _)| *t);
        [self.r.poll_timeout(), event].into_iter().flatten().min()
    }

    /// Runs until nothing is scheduled at or before `end`, then sets the clock to `end`.
    fn run_until(&mut self, end: Timestamp) {
        self.drain();
        while let Some(next) = self.next_wakeup() {
            if next > end {
                break;
            }
            self.now = next.max(self.now);
            while let Some(entry) = self.events.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                let (device, state) = entry.remove();
                let first = self
                    .r
                    .handle_report(&device, state.clone(), self.now)
                    .unwrap();
                if self.duplicate_reports {
                    let again = self.r.handle_report(&device, state, self.now).unwrap();
                    assert!(
                        matches!(
                            again,
                            ReportOutcome::Duplicate
                                | ReportOutcome::Ignored
                                | ReportOutcome::Stale
                        ),
                        "a duplicate of an {first:?} report was {again:?}"
                    );
                }
            }
            self.r.handle_timeout(self.now);
            if self.restart_every_step {
                self.r = Rollout::from_cbor(&self.r.to_cbor()).unwrap();
            }
            self.drain();
        }
        self.now = end.max(self.now);
    }

    /// Runs until nothing is scheduled any more.
    fn run(&mut self) {
        self.run_until(Timestamp(u64::MAX));
    }

    fn times_of(&self, pred: impl Fn(&PlannerAction) -> bool) -> Vec<Timestamp> {
        self.log
            .iter()
            .filter(|(_, a)| pred(a))
            .map(|(t, _)| *t)
            .collect()
    }

    fn first_time(&self, pred: impl Fn(&PlannerAction) -> bool) -> Option<Timestamp> {
        self.times_of(pred).into_iter().next()
    }

    /// The time of the last final-state change of a device of `cohort`.
    fn last_final_in_cohort(&self, cohort: usize) -> Timestamp {
        self.log
            .iter()
            .filter_map(|(t, a)| match a {
                PlannerAction::StateChanged { device_id, new, .. }
                    if new.is_final() && self.r.device_wave(device_id) == Some(cohort) =>
                {
                    Some(*t)
                }
                _ => None,
            })
            .max()
            .unwrap()
    }

    fn members_of(&self, cohort: usize, n: usize) -> Vec<DeviceId> {
        ids(n)
            .into_iter()
            .filter(|d| self.r.device_wave(d) == Some(cohort))
            .collect()
    }
}

fn is_advanced(from: usize) -> impl Fn(&PlannerAction) -> bool {
    move |a| matches!(a, PlannerAction::WaveAdvanced { from: f, .. } if *f == from)
}

fn is_completed(a: &PlannerAction) -> bool {
    matches!(a, PlannerAction::Completed)
}

fn is_notify(a: &PlannerAction) -> bool {
    matches!(a, PlannerAction::Notify { .. })
}

// ----- cohorts -----

#[test]
fn cohorts_are_deterministic_and_independent_of_order() {
    let waves = spec(&[1, 5, 25, 100]).waves;
    let names: Vec<String> = ids(1000).iter().map(|d| d.to_string()).collect();
    let a = assign_cohorts("rollout-42", &waves, names.iter().map(String::as_str));
    let b = assign_cohorts("rollout-42", &waves, names.iter().map(String::as_str));
    assert_eq!(a, b);
    let mut reversed = assign_cohorts("rollout-42", &waves, names.iter().rev().map(String::as_str));
    reversed.reverse();
    assert_eq!(a, reversed, "the order of the target list does not matter");
    let other = assign_cohorts("rollout-43", &waves, names.iter().map(String::as_str));
    assert_ne!(a, other, "another rollout picks other canaries");

    // The planner stores the same cohorts.
    let r = Rollout::new(spec(&[1, 5, 25, 100]), targets(1000), T0).unwrap();
    for (i, d) in ids(1000).iter().enumerate() {
        assert_eq!(r.device_wave(d), Some(a[i]));
    }
}

#[test]
fn cohorts_are_sticky_when_targets_are_added() {
    let s = spec(&[1, 5, 25, 100]);
    let small = Rollout::new(s.clone(), targets(1000), T0).unwrap();
    let large = Rollout::new(s.clone(), targets(1500), T0).unwrap();
    for d in ids(1000) {
        assert_eq!(small.device_wave(&d), large.device_wave(&d), "{d} moved");
    }
    // Adding targets to a live rollout moves nobody either, and the newcomer gets the wave
    // its hash gives.
    let mut live = Rollout::new(s.clone(), targets(1000), T0).unwrap();
    for i in 1000..1100 {
        live.add_target(Target::new(id(i), old_release(), known_good()), T0)
            .unwrap();
    }
    for i in 0..1100 {
        assert_eq!(live.device_wave(&id(i)), large.device_wave(&id(i)));
    }
    assert_eq!(
        live.add_target(Target::new(id(3), old_release(), known_good()), T0),
        Err(RolloutError::DuplicateDevice(id(3)))
    );
}

#[test]
fn waves_are_cumulative() {
    let waves = spec(&[1, 5, 25, 100]).waves;
    for d in ids(2000) {
        let point = cohort_point("rollout-42", d.as_str());
        let cohort = cohort_of(point, &waves);
        for (i, w) in waves.iter().enumerate() {
            assert_eq!(in_share(point, *w), i >= cohort, "{d} wave {i}");
        }
    }
    let status = Rollout::new(spec(&[1, 5, 25, 100]), targets(2000), T0)
        .unwrap()
        .status();
    let cumulative: Vec<u32> = status.waves.iter().map(|w| w.cumulative_members).collect();
    assert!(cumulative.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(cumulative.last(), Some(&2000));
}

#[test]
fn wave_sizes_for_1_5_25_100_percent_of_1000_devices() {
    let status = Rollout::new(spec(&[1, 5, 25, 100]), targets(1000), T0)
        .unwrap()
        .status();
    let sizes: Vec<u32> = status.waves.iter().map(|w| w.cumulative_members).collect();
    // Binomial around share × N (within 4 sigma) ...
    for (size, (expected, sigma)) in sizes.iter().zip([(10.0, 3.1), (50.0, 6.9), (250.0, 13.7)]) {
        let size = f64::from(*size);
        assert!((size - expected).abs() <= 4.0 * sigma, "{sizes:?}");
    }
    assert_eq!(sizes[3], 1000);
    // ... and pinned: the cohort hash is a persisted contract, a change must be deliberate.
    assert_eq!(sizes, [10, 43, 252, 1000]);
    assert_eq!(status.deploys, 1000);
    assert_eq!(status.redeploys, 0);
}

#[test]
fn the_first_wave_is_never_empty() {
    for n in 1..60 {
        let r = Rollout::new(spec(&[1, 100]), targets(n), T0).unwrap();
        let first = r.status().waves[0].members;
        assert!(first >= 1, "{n} devices: empty first wave");
    }
    let empty = Rollout::new(spec(&[1, 100]), vec![], T0).unwrap();
    assert_eq!(empty.state(), &RolloutState::Completed);
}

// ----- gates -----

#[test]
fn a_wave_advances_exactly_one_bake_time_after_its_last_member_settled() {
    let mut sim = Sim::new(spec(&[10, 100]), targets(100));
    sim.run();
    assert_eq!(sim.r.state(), &RolloutState::Completed);
    let settled0 = sim.last_final_in_cohort(0);
    let advanced = sim.first_time(is_advanced(0)).unwrap();
    assert_eq!(advanced, settled0.saturating_add(mins(10)));
    let settled1 = sim.last_final_in_cohort(1);
    assert_eq!(
        sim.first_time(is_completed).unwrap(),
        settled1.saturating_add(mins(10))
    );

    // One millisecond before the bake ends, the wave is still baking.
    let mut early = Sim::new(spec(&[10, 100]), targets(100));
    early.run_until(advanced.saturating_sub(Duration::from_millis(1)));
    assert!(matches!(
        early.r.state(),
        RolloutState::Running {
            wave: 0,
            phase: WavePhase::Baking { .. }
        }
    ));
    assert_eq!(early.first_time(is_advanced(0)), None);
}

#[test]
fn a_gate_below_success_min_holds_the_wave() {
    let mut s = spec(&[50, 100]);
    s.max_failure = Ratio::percent(50);
    let mut sim = Sim::new(s, targets(40));
    let wave0 = sim.members_of(0, 40);
    assert!(wave0.len() >= 10, "{}", wave0.len());
    sim = sim
        .script(wave0[0].clone(), Script::Fail(FailurePhase::Download))
        .script(wave0[1].clone(), Script::Fail(FailurePhase::Verify));
    sim.run();
    assert_eq!(
        sim.r.state(),
        &RolloutState::Running {
            wave: 0,
            phase: WavePhase::Held
        }
    );
    let held = sim
        .log
        .iter()
        .find_map(|(_, a)| match a {
            PlannerAction::WaveHeld {
                index,
                succeeded,
                executed,
            } => Some((*index, *succeeded, *executed)),
            _ => None,
        })
        .unwrap();
    let n = wave0.len() as u32;
    assert_eq!(held, (0, n - 2, n));
    assert_eq!(sim.first_time(is_advanced(0)), None);
    let status = sim.r.status();
    assert_eq!(status.totals.failed_download, 1);
    assert_eq!(status.totals.failed_verify, 1);
    // Nobody of wave 1 was notified.
    for d in sim.members_of(1, 40) {
        assert_eq!(sim.r.device_state(&d), Some(&ExecutionState::Queued));
    }
    // The operator gives up.
    sim.r.abort("success too low", sim.now).unwrap();
    assert!(matches!(sim.r.state(), RolloutState::Aborted { .. }));
}

#[test]
fn a_held_gate_passes_when_a_late_device_succeeds() {
    let mut s = spec(&[50, 100]);
    s.max_failure = Ratio::percent(50);
    s.success_min = Ratio::FULL;
    let mut sim = Sim::new(s, targets(40));
    let wave0 = sim.members_of(0, 40);
    sim = sim.script(wave0[0].clone(), Script::Silent);
    sim.run();
    // The silent device timed out at +30 min: the wave is held below 100 %.
    assert_eq!(
        sim.r.device_state(&wave0[0]),
        Some(&ExecutionState::TimedOut)
    );
    assert_eq!(
        sim.r.state(),
        &RolloutState::Running {
            wave: 0,
            phase: WavePhase::Held
        }
    );
    // The late device reports success: the gate is met at once.
    sim.r
        .handle_report(&wave0[0], ExecutionState::Succeeded, sim.now)
        .unwrap();
    assert_eq!(sim.first_time(is_advanced(0)), None);
    sim.drain();
    assert_eq!(sim.first_time(is_advanced(0)), Some(sim.now));
    sim.run();
    assert_eq!(sim.r.state(), &RolloutState::Completed);
}

#[test]
fn a_succeeded_device_that_rolls_back_counts_against_the_gate() {
    let mut s = spec(&[50, 100]);
    s.max_failure = Ratio::percent(50);
    let mut sim = Sim::new(s, targets(40));
    let wave0 = sim.members_of(0, 40);
    sim.run_until(at(mins(8)));
    assert!(matches!(
        sim.r.state(),
        RolloutState::Running {
            wave: 0,
            phase: WavePhase::Baking { .. }
        }
    ));
    // During the bake, two devices regress.
    for d in &wave0[..2] {
        assert_eq!(
            sim.r.handle_report(d, rolled_back(), sim.now).unwrap(),
            ReportOutcome::Applied
        );
    }
    sim.run();
    assert!(matches!(
        sim.r.state(),
        RolloutState::Running {
            wave: 0,
            phase: WavePhase::Held
        }
    ));
    assert_eq!(sim.r.status().totals.rolled_back, 2);
}

#[test]
fn deferred_devices_are_counted_apart_and_stop_blocking_after_max_deferral() {
    let mut s = spec(&[50, 100]);
    s.max_deferral = Duration::from_secs(2 * 3600);
    let mut sim = Sim::new(s, targets(40));
    let wave0 = sim.members_of(0, 40);
    sim = sim
        .script(wave0[0].clone(), Script::DeferForever)
        .script(wave0[1].clone(), Script::DeferForever)
        .script(wave0[2].clone(), Script::Defer(mins(30)));
    sim.run_until(at(mins(90)));
    // Everyone else settled long ago, but the wave waits for the deferred devices.
    let status = sim.r.status();
    assert_eq!(status.totals.deferred_power, 2);
    assert_eq!(status.totals.failures(), 0);
    assert_eq!(status.waves[0].unsettled, 2);
    assert!(matches!(
        sim.r.state(),
        RolloutState::Running {
            wave: 0,
            phase: WavePhase::Notifying
        }
    ));
    sim.run();
    // Deferred at +1 min, released at +1 min + 2 h, then the bake.
    assert_eq!(
        sim.first_time(is_advanced(0)).unwrap(),
        at(mins(1) + Duration::from_secs(2 * 3600) + mins(10))
    );
    assert_eq!(sim.r.state(), &RolloutState::Completed);
    let status = sim.r.status();
    assert_eq!(
        status.totals.deferred_power, 2,
        "still deferred, not failed"
    );
    assert_eq!(status.totals.failures(), 0);
    assert_eq!(status.totals.succeeded, 38);
}

#[test]
fn a_rollout_of_redeploys_only_passes_its_gates_at_once() {
    let t: Vec<Target> = ids(200)
        .into_iter()
        .map(|d| Target::new(d, release(), release()))
        .collect();
    let mut s = spec(&[1, 5, 25, 100]);
    s.bake_time = Duration::from_secs(3600);
    let mut sim = Sim::new(s, t);
    sim.default_script = Script::Identical;
    let status = sim.r.status();
    assert_eq!((status.deploys, status.redeploys), (0, 200));
    sim.run();
    assert_eq!(sim.r.state(), &RolloutState::Completed);
    // Each wave takes only the 30 s its devices need to report skipped-identical: no bake.
    assert_eq!(
        sim.first_time(is_completed).unwrap(),
        at(Duration::from_secs(4 * 30))
    );
    assert_eq!(sim.r.status().totals.skipped_identical, 200);
}

// ----- abort -----

/// 200 devices, waves 50 / 100 %; in wave 0 ten devices fail their install at +5 min and five
/// never report.
fn failing_fleet(min_executed: u32) -> (Sim, Vec<DeviceId>, Vec<DeviceId>) {
    let mut s = spec(&[50, 100]);
    s.min_executed = min_executed;
    let mut sim = Sim::new(s, targets(200));
    let wave0 = sim.members_of(0, 200);
    let failing: Vec<DeviceId> = wave0[..10].to_vec();
    let silent: Vec<DeviceId> = wave0[10..15].to_vec();
    for d in &failing {
        sim = sim.script(d.clone(), Script::Fail(FailurePhase::Install));
    }
    for d in &silent {
        sim = sim.script(d.clone(), Script::Silent);
    }
    (sim, failing, silent)
}

#[test]
fn failures_past_max_failure_abort_and_send_devices_back() {
    let (mut sim, failing, silent) = failing_fleet(10);
    sim.run();
    let RolloutState::Aborted { reason } = sim.r.state().clone() else {
        panic!("not aborted: {:?}", sim.r.state());
    };
    assert_eq!(
        reason,
        AbortReason::FailureThreshold {
            failures: 10,
            executed: 10,
            max_failure: Ratio::percent(5)
        }
    );
    // Aborted at the tenth failure, not before.
    let aborted_at = sim
        .first_time(|a| matches!(a, PlannerAction::Aborted { .. }))
        .unwrap();
    assert_eq!(aborted_at, at(mins(5)));

    let wave0: BTreeSet<DeviceId> = sim.members_of(0, 200).into_iter().collect();
    let silent: BTreeSet<DeviceId> = silent.into_iter().collect();
    let mut rolled = BTreeSet::new();
    let mut cancelled = BTreeSet::new();
    for (_, a) in &sim.log {
        match a {
            PlannerAction::Rollback {
                device_id,
                to_digest,
            } => {
                assert_eq!(*to_digest, known_good());
                rolled.insert(device_id.clone());
            }
            PlannerAction::Cancel {
                device_id,
                to_digest,
            } => {
                assert_eq!(*to_digest, old_release());
                cancelled.insert(device_id.clone());
            }
            _ => {}
        }
    }
    // Everyone in wave 0 had reached installing (or failed installing) except the silent ones.
    let took: BTreeSet<DeviceId> = wave0.difference(&silent).cloned().collect();
    assert_eq!(rolled, took);
    assert!(failing.iter().all(|d| rolled.contains(d)));
    assert_eq!(cancelled, silent);
    // Wave 1 was never notified: nothing to undo.
    let status = sim.r.status();
    assert_eq!(status.waves[1].counts.queued, status.waves[1].members);
    // Reports after the abort still follow the rules: a final state sticks.
    assert_eq!(
        sim.r
            .handle_report(&failing[0], ExecutionState::Succeeded, sim.now)
            .unwrap(),
        ReportOutcome::Stale
    );
    // Every device sent back is followed.
    assert_eq!(
        sim.r.status().recall.pending as usize,
        rolled.len() + cancelled.len()
    );
}

/// Truthful states after an abort: reports on the release keep the counts true (a device that
/// finishes its trial after the abort shows as succeeded, not as `trial` for ever), nothing
/// is driven any more, and every device sent back is followed until it reports on where it
/// was sent (back, or failed), across a restart.
#[test]
fn an_aborted_rollout_follows_every_device_it_sent_back() {
    let mut r = Rollout::new(spec(&[100]), targets(4), T0).unwrap();
    assert_eq!(
        r.handle_recall_report(&id(0), known_good(), ExecutionState::Succeeded)
            .unwrap(),
        ReportOutcome::Ignored,
        "no recall before an abort"
    );
    while r.poll_action().is_some() {}
    let t = at(mins(1));
    for s in [ExecutionState::Installing, ExecutionState::Trial] {
        r.handle_report(&id(0), s, t).unwrap();
    }
    for s in [ExecutionState::Installing, ExecutionState::Succeeded] {
        r.handle_report(&id(1), s, t).unwrap();
    }
    r.handle_report(&id(2), downloading(10), t).unwrap();
    r.abort("stop", t).unwrap();
    let mut sent = BTreeMap::new();
    while let Some(a) = r.poll_action() {
        match a {
            PlannerAction::Rollback {
                device_id,
                to_digest,
            }
            | PlannerAction::Cancel {
                device_id,
                to_digest,
            } => {
                sent.insert(device_id, to_digest);
            }
            _ => {}
        }
    }
    assert_eq!(sent.len(), 4, "{sent:?}");
    assert_eq!(sent[&id(0)], known_good());
    assert_eq!(sent[&id(2)], old_release());
    assert_eq!(r.status().recall.pending, 4);
    assert!(!r.state().is_active(), "an aborted rollout holds no device");
    assert!(r.needs_driving(), "but is driven while a recall is pending");

    // id 0's trial ends after the abort: counted as succeeded, nothing is driven.
    let t = at(mins(2));
    assert_eq!(
        r.handle_report(&id(0), ExecutionState::Succeeded, t)
            .unwrap(),
        ReportOutcome::Applied
    );
    let status = r.status();
    assert_eq!((status.totals.trial, status.totals.succeeded), (0, 2));
    let actions: Vec<PlannerAction> = std::iter::from_fn(|| r.poll_action()).collect();
    assert!(
        actions
            .iter()
            .all(|a| matches!(a, PlannerAction::StateChanged { .. })),
        "{actions:?}"
    );

    // Then it installs its known-good release: back.
    let recall = |r: &mut Rollout, d: usize, to: Digest, s: ExecutionState| {
        r.handle_recall_report(&id(d), to, s).unwrap()
    };
    assert_eq!(
        recall(&mut r, 0, known_good(), ExecutionState::Installing),
        ReportOutcome::Duplicate
    );
    assert_eq!(
        recall(&mut r, 0, known_good(), ExecutionState::Succeeded),
        ReportOutcome::Applied
    );
    assert!(matches!(
        r.poll_action(),
        Some(PlannerAction::Recalled {
            state: RecallState::Back,
            ..
        })
    ));
    // id 1's return fails, then a later attempt succeeds.
    let failed = ExecutionState::Failed {
        phase: FailurePhase::Download,
        reason: "mirror down".into(),
    };
    assert_eq!(
        recall(&mut r, 1, known_good(), failed.clone()),
        ReportOutcome::Applied
    );
    assert_eq!(r.status().recall.failed, 1);
    assert_eq!(
        recall(&mut r, 1, known_good(), failed),
        ReportOutcome::Duplicate
    );
    // A cancelled download: the device still ran its old release.
    assert_eq!(
        recall(&mut r, 2, old_release(), ExecutionState::SkippedIdentical),
        ReportOutcome::Applied
    );
    // A report on another digest is no recall report.
    assert_eq!(
        recall(&mut r, 3, known_good(), ExecutionState::Succeeded),
        ReportOutcome::Ignored
    );
    assert_eq!(
        r.handle_recall_report(&id(3), old_release(), ExecutionState::TimedOut),
        Err(RolloutError::NotReportable("timed-out"))
    );
    let counts = r.status().recall;
    assert_eq!((counts.pending, counts.back, counts.failed), (1, 2, 1));

    // Persisted and restored: the same recall.
    let mut r = Rollout::from_cbor(&r.to_cbor()).unwrap();
    assert_eq!(r.status().recall, counts);
    assert_eq!(
        recall(&mut r, 1, known_good(), ExecutionState::Succeeded),
        ReportOutcome::Applied
    );
    // A device with no rollback target is not sent back, so it is not followed.
    r.handle_no_rollback_target(&id(3), NoRollbackCause::Unpublished)
        .unwrap();
    let counts = r.status().recall;
    assert_eq!(
        (counts.pending, counts.back, counts.failed, counts.sent()),
        (0, 3, 0, 3)
    );
    assert!(
        !r.needs_driving(),
        "nothing pending: the coordinator may let it go"
    );
    // A device already back is not superseded by a newer rollout's desired state.
    assert!(!r.handle_recall_superseded(&id(0)));
    assert!(!r.handle_recall_superseded(&id(99)));
}

/// A device sent back that gets another rollout's desired state before it answered will act
/// on that one: its recall is superseded, no longer pending.
#[test]
fn a_newer_desired_state_supersedes_a_pending_recall() {
    let mut r = Rollout::new(spec(&[100]), targets(2), T0).unwrap();
    while r.poll_action().is_some() {}
    r.abort("stop", T0).unwrap();
    assert_eq!(r.status().recall.pending, 2);
    assert!(r.handle_recall_superseded(&id(0)));
    assert!(!r.handle_recall_superseded(&id(0)), "idempotent");
    let counts = r.status().recall;
    assert_eq!(
        (counts.pending, counts.superseded, counts.sent()),
        (1, 1, 2)
    );
    // Its late answer to the recall changes nothing any more.
    assert_eq!(
        r.handle_recall_report(&id(0), old_release(), ExecutionState::SkippedIdentical)
            .unwrap(),
        ReportOutcome::Duplicate
    );
    let r = Rollout::from_cbor(&r.to_cbor()).unwrap();
    assert_eq!(r.status().recall, counts);
}

/// Issue 12.3: a device that fell back by itself (probe failure, timeout) already runs its
/// known-good release; the abort sends it nothing, so its real outcome stays its last result.
#[test]
fn issue12_abort_does_not_roll_back_a_device_that_rolled_back_by_itself() {
    let mut sim = Sim::new(spec(&[100]), targets(4)).script(id(0), Script::RollBack);
    sim.run_until(at(mins(5)));
    assert!(matches!(
        sim.r.device_state(&id(0)),
        Some(ExecutionState::RolledBack { .. })
    ));
    sim.r.abort("stop", sim.now).unwrap();
    while let Some(a) = sim.r.poll_action() {
        sim.log.push((sim.now, a));
    }
    let rolled: Vec<&DeviceId> = sim
        .log
        .iter()
        .filter_map(|(_, a)| match a {
            PlannerAction::Rollback { device_id, .. } => Some(device_id),
            _ => None,
        })
        .collect();
    assert!(!rolled.contains(&&id(0)), "{rolled:?}");
    // The devices still installing do go back.
    assert_eq!(rolled.len(), 3, "{rolled:?}");
}

/// Issues 12.1 and 19.9: a device with no rollback target it would accept is recorded on the
/// aborted rollout (and survives a restart); only aborted rollouts and targets take it.
#[test]
fn issue12_no_rollback_target_is_recorded_and_persisted() {
    let mut r = Rollout::new(spec(&[100]), targets(3), T0).unwrap();
    let floor = NoRollbackCause::SecurityFloor {
        security_version: 1,
        floor: 2,
    };
    assert!(r.handle_no_rollback_target(&id(0), floor.clone()).is_err());
    r.abort("stop", T0).unwrap();
    assert!(
        r.handle_no_rollback_target(&id(99), NoRollbackCause::Untrusted)
            .is_err()
    );
    r.handle_no_rollback_target(&id(0), NoRollbackCause::Untrusted)
        .unwrap();
    r.handle_no_rollback_target(&id(0), floor.clone()).unwrap();
    r.handle_no_rollback_target(&id(1), NoRollbackCause::NoKnownGood)
        .unwrap();
    let r = Rollout::from_cbor(&r.to_cbor()).unwrap();
    let list = r.status().no_rollback_target;
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].device_id, id(0));
    assert_eq!(list[0].cause, floor);
    assert_eq!(list[0].cause.name(), "security-floor");
    assert_eq!(list[1].cause.name(), "no-known-good");
}

#[test]
fn no_abort_before_min_executed_devices_finished() {
    let (mut sim, _, _) = failing_fleet(20);
    sim.run_until(at(mins(5)));
    // Ten failures out of ten executed: 100 %, but fewer than 20 executed.
    assert!(matches!(sim.r.state(), RolloutState::Running { .. }));
    sim.run();
    // At +6 min successes arrive; the abort comes with the 20th executed device.
    assert_eq!(
        sim.r.state(),
        &RolloutState::Aborted {
            reason: AbortReason::FailureThreshold {
                failures: 10,
                executed: 20,
                max_failure: Ratio::percent(5)
            }
        }
    );
}

#[test]
fn rejected_and_rolled_back_devices_are_failures() {
    let mut s = spec(&[100]);
    s.min_executed = 8;
    s.max_failure = Ratio::percent(25);
    let mut sim = Sim::new(s, targets(8))
        .script(id(0), Script::Reject)
        .script(id(1), Script::RollBack);
    sim.run();
    // 2 failures of 8 executed = 25 %: not above max-failure, but below success-min: held.
    let status = sim.r.status();
    assert_eq!(status.totals.rejected, 1);
    assert_eq!(status.totals.rolled_back, 1);
    assert_eq!(status.totals.failures(), 2);
    assert!(matches!(
        sim.r.state(),
        RolloutState::Running {
            phase: WavePhase::Held,
            ..
        }
    ));
}

// ----- timeouts -----

#[test]
fn a_silent_device_times_out_after_the_inactivity_timeout() {
    let mut s = spec(&[100]);
    s.max_failure = Ratio::percent(50);
    let mut sim = Sim::new(s, targets(5)).script(id(3), Script::Silent);
    sim.run();
    let timed_out = sim
        .first_time(|a| {
            matches!(a, PlannerAction::StateChanged { new: ExecutionState::TimedOut, device_id, .. } if *device_id == id(3))
        })
        .unwrap();
    assert_eq!(timed_out, at(mins(30)));
    assert_eq!(sim.r.status().totals.timed_out, 1);
    // A late report from the device is taken.
    assert_eq!(
        sim.r
            .handle_report(&id(3), ExecutionState::Succeeded, sim.now)
            .unwrap(),
        ReportOutcome::Applied
    );
    assert_eq!(sim.r.status().totals.timed_out, 0);
}

#[test]
fn progress_and_reconnects_reset_the_inactivity_timer() {
    let mut r = Rollout::new(spec(&[100]), targets(1), T0).unwrap();
    let d = id(0);
    assert_eq!(r.poll_timeout(), Some(at(mins(30))));
    r.handle_report(&d, downloading(10), at(mins(20))).unwrap();
    assert_eq!(r.poll_timeout(), Some(at(mins(50))));
    assert_eq!(
        r.handle_report(&d, downloading(20), at(mins(40))).unwrap(),
        ReportOutcome::Progress
    );
    assert_eq!(r.poll_timeout(), Some(at(mins(70))));
    // Progress going backwards is stale, and changes nothing.
    assert_eq!(
        r.handle_report(&d, downloading(15), at(mins(45))).unwrap(),
        ReportOutcome::Stale
    );
    assert_eq!(r.poll_timeout(), Some(at(mins(70))));
    r.handle_device_offline(&d, at(mins(50))).unwrap();
    r.handle_device_online(&d, at(mins(60))).unwrap();
    assert_eq!(r.poll_timeout(), Some(at(mins(90))));
    r.handle_timeout(at(mins(89)));
    assert_eq!(r.device_state(&d), Some(&downloading(20)));
    r.handle_timeout(at(mins(90)));
    assert_eq!(r.device_state(&d), Some(&ExecutionState::TimedOut));
}

// ----- rate -----

#[test]
fn at_most_rate_devices_are_notified_per_minute() {
    let mut s = spec(&[100]);
    s.rate_per_minute = 200;
    let mut sim = Sim::new(s, targets(1000));
    sim.run();
    assert_eq!(sim.r.state(), &RolloutState::Completed);
    let times = sim.times_of(is_notify);
    assert_eq!(times.len(), 1000);
    // Per simulated minute ...
    let mut per_minute: BTreeMap<u64, usize> = BTreeMap::new();
    for t in &times {
        *per_minute
            .entry(t.saturating_duration_since(T0).as_secs() / 60)
            .or_default() += 1;
    }
    assert!(per_minute.values().all(|n| *n <= 200), "{per_minute:?}");
    assert_eq!(per_minute.len(), 5);
    // ... and in any sliding 60 s window.
    for w in times.windows(201) {
        assert!(w[200].saturating_duration_since(w[0]) >= Duration::from_secs(60));
    }
}

/// Fires every timer up to `end` (for tests that drive a planner by hand).
fn drive_until(r: &mut Rollout, end: Timestamp) {
    while let Some(t) = r.poll_timeout().filter(|t| *t <= end) {
        r.handle_timeout(t);
    }
}

fn notified(r: &mut Rollout) -> Vec<DeviceId> {
    std::iter::from_fn(|| r.poll_action())
        .filter_map(|a| match a {
            PlannerAction::Notify { device_id } => Some(device_id),
            _ => None,
        })
        .collect()
}

#[test]
fn offline_devices_wait_for_presence_and_stop_blocking_after_max_deferral() {
    let mut s = spec(&[100]);
    // A forced reinstall waits for approval: time to learn presence before wave 0 starts.
    s.force_reinstall = true;
    s.max_deferral = Duration::from_secs(3600);
    let mut r = Rollout::new(s, targets(3), T0).unwrap();
    r.handle_device_offline(&id(1), T0).unwrap();
    r.handle_device_offline(&id(2), T0).unwrap();
    r.approve("bob", T0).unwrap();
    assert_eq!(notified(&mut r), vec![id(0)]);
    assert_eq!(r.status().offline, 2);

    // Presence events are idempotent.
    let before = r.to_cbor();
    r.handle_device_offline(&id(1), T0).unwrap();
    r.handle_device_online(&id(0), T0).unwrap();
    assert_eq!(r.to_cbor(), before);

    r.handle_device_online(&id(1), at(mins(5))).unwrap();
    assert_eq!(notified(&mut r), vec![id(1)]);
    for d in [id(0), id(1)] {
        r.handle_report(&d, ExecutionState::Succeeded, at(mins(10)))
            .unwrap();
    }
    // id(2) is unreachable: it blocks the wave for max-deferral after the wave started.
    drive_until(&mut r, at(mins(59)));
    assert!(matches!(
        r.state(),
        RolloutState::Running {
            phase: WavePhase::Notifying,
            ..
        }
    ));
    drive_until(&mut r, at(mins(60)));
    assert_eq!(
        r.state(),
        &RolloutState::Running {
            wave: 0,
            phase: WavePhase::Baking {
                until: at(mins(70))
            }
        }
    );
    drive_until(&mut r, at(mins(70)));
    assert_eq!(r.state(), &RolloutState::Completed);
    // A straggler that shows up after completion still gets the release.
    let _ = notified(&mut r);
    r.handle_device_online(&id(2), at(mins(90))).unwrap();
    assert_eq!(notified(&mut r), vec![id(2)]);
}

// ----- operator -----

#[test]
fn pause_stops_notifications_and_gates_and_resume_continues() {
    let mut s = spec(&[10, 100]);
    s.rate_per_minute = 20;
    let mut sim = Sim::new(s, targets(300));
    sim.run_until(at(Duration::from_secs(30)));
    sim.r.pause(sim.now).unwrap();
    sim.r.pause(sim.now).unwrap(); // idempotent
    let paused_at = sim.now;
    sim.run_until(at(mins(300)));
    assert!(
        sim.times_of(is_notify).iter().all(|t| *t <= paused_at),
        "notified while paused"
    );
    // The wave settled and even baked during the pause, but did not advance.
    assert_eq!(sim.first_time(is_advanced(0)), None);
    assert!(matches!(
        sim.r.state(),
        RolloutState::Paused { wave: 0, .. }
    ));
    let unnotified = sim.r.status().waves[0].counts.queued;
    assert!(
        unnotified > 0,
        "the pause came before wave 0 was fully notified"
    );
    sim.r.resume(sim.now).unwrap();
    sim.run();
    assert_eq!(sim.r.state(), &RolloutState::Completed);
    assert!(sim.first_time(is_advanced(0)).unwrap() > at(mins(300)));
    assert_eq!(sim.r.status().totals.succeeded, 300);
    assert_eq!(
        sim.r.approve("bob", sim.now),
        Err(RolloutError::InvalidOperation {
            operation: "approve",
            state: "completed"
        })
    );
    assert!(sim.r.pause(sim.now).is_err());
}

#[test]
fn a_forced_reinstall_needs_a_second_operator() {
    let mut s = spec(&[100]);
    s.force_reinstall = true;
    let mixed: Vec<Target> = ids(10)
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            let running = if i < 4 { release() } else { old_release() };
            Target::new(d, running, running)
        })
        .collect();
    let mut r = Rollout::new(s, mixed, T0).unwrap();
    assert_eq!(r.state(), &RolloutState::AwaitingApproval);
    assert_eq!(r.poll_action(), None);
    let status = r.status();
    assert_eq!((status.deploys, status.redeploys), (6, 4));
    assert_eq!(
        r.handle_report(&id(0), ExecutionState::Installing, T0)
            .unwrap(),
        ReportOutcome::Ignored
    );
    assert_eq!(r.approve("alice", T0), Err(RolloutError::SelfApproval));
    assert_eq!(r.state(), &RolloutState::AwaitingApproval);
    assert!(r.resume(T0).is_err());
    r.approve("bob", at(mins(1))).unwrap();
    assert_eq!(r.status().approved_by.as_deref(), Some("bob"));
    assert_eq!(
        r.poll_action(),
        Some(PlannerAction::WaveStarted { index: 0 })
    );
    let notified = std::iter::from_fn(|| r.poll_action())
        .filter(is_notify)
        .count();
    assert_eq!(notified, 10);
    assert!(r.approve("carol", at(mins(1))).is_err());
}

#[test]
fn a_dry_run_plans_and_never_notifies() {
    let mut s = spec(&[1, 5, 25, 100]);
    s.dry_run = true;
    let t: Vec<Target> = ids(1000)
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            let running = if i % 10 == 0 {
                release()
            } else {
                old_release()
            };
            Target::new(d, running, running)
        })
        .collect();
    let mut r = Rollout::new(s, t, T0).unwrap();
    assert_eq!(r.state(), &RolloutState::DryRun);
    assert_eq!(r.poll_action(), None);
    assert_eq!(r.poll_timeout(), None);
    let status = r.status();
    assert_eq!((status.deploys, status.redeploys), (900, 100));
    assert_eq!(status.waves.iter().map(|w| w.members).sum::<u32>(), 1000);
    assert_eq!(
        status
            .waves
            .iter()
            .map(|w| w.deploys + w.redeploys)
            .collect::<Vec<_>>(),
        status.waves.iter().map(|w| w.members).collect::<Vec<_>>()
    );
    assert!(r.approve("bob", T0).is_err());
    assert!(r.abort("no", T0).is_err());
}

#[test]
fn invalid_specs_and_inputs_are_typed_errors() {
    let check = |f: fn(&mut RolloutSpec), e: RolloutError| {
        let mut s = spec(&[1, 100]);
        f(&mut s);
        assert_eq!(Rollout::new(s, targets(3), T0).err(), Some(e));
    };
    check(|s| s.waves.clear(), RolloutError::NoWaves);
    check(
        |s| s.waves = vec![Ratio::percent(5), Ratio::percent(5), Ratio::FULL],
        RolloutError::WavesNotIncreasing { index: 1 },
    );
    check(
        |s| s.waves = vec![Ratio::percent(5), Ratio::percent(50)],
        RolloutError::LastWaveNotFull,
    );
    check(
        |s| s.waves = vec![Ratio::percent(0), Ratio::FULL],
        RolloutError::WavesNotIncreasing { index: 0 },
    );
    check(
        |s| s.success_min = Ratio::percent(101),
        RolloutError::RatioOutOfRange("success-min"),
    );
    check(|s| s.rate_per_minute = 0, RolloutError::ZeroRate);
    check(
        |s| s.inactivity_timeout = Duration::ZERO,
        RolloutError::ZeroInactivityTimeout,
    );
    let mut dup = targets(3);
    dup.push(dup[0].clone());
    assert_eq!(
        Rollout::new(spec(&[100]), dup, T0).err(),
        Some(RolloutError::DuplicateDevice(id(0)))
    );
    let mut r = Rollout::new(spec(&[100]), targets(3), T0).unwrap();
    assert_eq!(
        r.handle_report(&id(9), ExecutionState::Succeeded, T0),
        Err(RolloutError::UnknownDevice(id(9)))
    );
    assert_eq!(
        r.handle_report(&id(0), ExecutionState::TimedOut, T0),
        Err(RolloutError::NotReportable("timed-out"))
    );
    assert!(Rollout::from_cbor(b"\xa0").is_err());
    assert!(Rollout::from_cbor(&[0xff; 8]).is_err());
    let mut bytes = r.to_cbor();
    bytes.push(0);
    assert_eq!(
        Rollout::from_cbor(&bytes).err(),
        Some(RolloutError::Corrupt("trailing bytes"))
    );
}

// ----- persistence and idempotency -----

/// A fleet with a bit of everything: failures under the threshold, deferrals, silent devices,
/// redeploys, and a rate that spreads notifications over minutes.
fn busy_fleet(max_failure: u16) -> Sim {
    let mut s = spec(&[10, 50, 100]);
    s.rate_per_minute = 40;
    s.max_failure = Ratio::percent(max_failure);
    s.success_min = Ratio::percent(70);
    s.max_deferral = Duration::from_secs(3600);
    let t: Vec<Target> = ids(300)
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            let running = if i % 7 == 0 { release() } else { old_release() };
            Target::new(d, running, known_good())
        })
        .collect();
    let mut sim = Sim::new(s, t);
    for i in 0..300 {
        let script = match i % 23 {
            _ if i % 7 == 0 => Script::Identical,
            1 => Script::Fail(FailurePhase::Download),
            2 => Script::Silent,
            3 => Script::DeferForever,
            4 => Script::Defer(mins(20)),
            5 => Script::RollBack,
            _ => Script::Succeed,
        };
        sim.scripts.insert(id(i), script);
    }
    sim
}

#[test]
fn the_busy_fleet_completes_or_aborts_by_its_threshold() {
    let mut sim = busy_fleet(30);
    sim.run();
    assert_eq!(sim.r.state(), &RolloutState::Completed);
    let status = sim.r.status();
    assert_eq!(status.totals.total(), 300);
    assert!(status.totals.timed_out > 0 && status.totals.deferred_power > 0);
    assert!(status.totals.skipped_identical > 0 && status.totals.rolled_back > 0);
    assert_eq!(
        sim.times_of(|a| matches!(a, PlannerAction::WaveAdvanced { .. }))
            .len(),
        2
    );

    let mut strict = busy_fleet(20);
    strict.run();
    assert!(matches!(
        strict.r.state(),
        RolloutState::Aborted {
            reason: AbortReason::FailureThreshold { .. }
        }
    ));
    assert!(
        strict
            .log
            .iter()
            .any(|(_, a)| matches!(a, PlannerAction::Rollback { .. }))
    );
}

#[test]
fn encode_decode_mid_rollout_then_continue_gives_the_same_outcome() {
    for max_failure in [20, 30] {
        same_outcome_across_restarts(max_failure);
    }
}

fn same_outcome_across_restarts(max_failure: u16) {
    let mut reference = busy_fleet(max_failure);
    reference.run();

    for cut in [mins(1), mins(7), mins(45), mins(200)] {
        let mut sim = busy_fleet(max_failure);
        sim.run_until(at(cut));
        let bytes = sim.r.to_cbor();
        sim.r = Rollout::from_cbor(&bytes).unwrap();
        assert_eq!(
            sim.r.to_cbor(),
            bytes,
            "decoding then encoding is the identity"
        );
        sim.run();
        assert_eq!(sim.log, reference.log, "cut at {cut:?}");
        assert_eq!(sim.r.to_cbor(), reference.r.to_cbor());
    }

    // Even a server that restarts after every single step.
    let mut restarting = busy_fleet(max_failure);
    restarting.restart_every_step = true;
    restarting.run();
    assert_eq!(restarting.log, reference.log);
    assert_eq!(restarting.r.to_cbor(), reference.r.to_cbor());
}

#[test]
fn encode_decode_keeps_undrained_actions_and_approval_state() {
    let mut s = spec(&[100]);
    s.force_reinstall = true;
    let mut r = Rollout::new(s, targets(5), T0).unwrap();
    let r2 = Rollout::from_cbor(&r.to_cbor()).unwrap();
    assert_eq!(r2.state(), &RolloutState::AwaitingApproval);
    r.approve("bob", T0).unwrap();
    let mut r3 = Rollout::from_cbor(&r.to_cbor()).unwrap();
    let a: Vec<_> = std::iter::from_fn(|| r.poll_action()).collect();
    let b: Vec<_> = std::iter::from_fn(|| r3.poll_action()).collect();
    assert_eq!(a, b);
    assert!(!a.is_empty());
}

#[test]
fn duplicated_reports_change_nothing() {
    let mut once = busy_fleet(30);
    once.run();
    let mut twice = busy_fleet(30);
    twice.duplicate_reports = true;
    twice.run();
    assert_eq!(twice.log, once.log);
    assert_eq!(twice.r.to_cbor(), once.r.to_cbor());

    let mut r = Rollout::new(spec(&[100]), targets(2), T0).unwrap();
    r.handle_report(&id(0), ExecutionState::Succeeded, at(mins(1)))
        .unwrap();
    while r.poll_action().is_some() {}
    let before = r.to_cbor();
    for _ in 0..3 {
        assert_eq!(
            r.handle_report(&id(0), ExecutionState::Succeeded, at(mins(2)))
                .unwrap(),
            ReportOutcome::Duplicate
        );
        // A stale progress report after the final state changes nothing either.
        assert_eq!(
            r.handle_report(&id(0), ExecutionState::Installing, at(mins(2)))
                .unwrap(),
            ReportOutcome::Stale
        );
    }
    assert_eq!(r.to_cbor(), before);
    assert_eq!(r.poll_action(), None);
}

#[test]
fn ten_thousand_devices_roll_out() {
    let mut s = spec(&[1, 5, 25, 100]);
    s.rate_per_minute = 2000;
    let mut sim = Sim::new(s, targets(10_000));
    sim.run();
    assert_eq!(sim.r.state(), &RolloutState::Completed);
    assert_eq!(sim.r.status().totals.succeeded, 10_000);
    assert_eq!(sim.times_of(is_notify).len(), 10_000);
    let bytes = sim.r.to_cbor();
    assert!(bytes.len() < 1_500_000, "{} bytes", bytes.len());
    println!("state of 10 000 devices: {} bytes", bytes.len());
}

// ----- properties -----

fn any_report() -> impl Strategy<Value = ExecutionState> {
    prop_oneof![
        Just(ExecutionState::Notified),
        Just(deferred_power()),
        (0u64..100).prop_map(downloading),
        Just(ExecutionState::Installing),
        Just(ExecutionState::Trial),
        Just(ExecutionState::Succeeded),
        Just(ExecutionState::SkippedIdentical),
        Just(rejected()),
        Just(failed(FailurePhase::Install)),
        Just(rolled_back()),
    ]
}

fn prop_spec() -> RolloutSpec {
    let mut s = spec(&[20, 60, 100]);
    s.rate_per_minute = 3;
    s.bake_time = mins(5);
    s.max_deferral = mins(30);
    s.max_failure = Ratio::percent(30);
    s.min_executed = 5;
    s
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any report sequence, applied once, applied with every report duplicated, or applied
    /// by a planner decoded from CBOR before every input, gives the same actions and state;
    /// counts always add up.
    #[test]
    fn reports_are_idempotent_and_persistence_is_exact(
        ops in proptest::collection::vec((0usize..12, any_report(), 0u64..600_000, any::<bool>()), 1..80)
    ) {
        let mut once = Rollout::new(prop_spec(), targets(12), T0).unwrap();
        let mut twice = once.clone();
        let mut restarted = once.clone();
        let (mut log1, mut log2, mut log3) = (vec![], vec![], vec![]);
        let mut now = T0;
        for (device, state, dt, presence) in ops {
            now = now.saturating_add(Duration::from_millis(dt));
            let d = id(device);
            restarted = Rollout::from_cbor(&restarted.to_cbor()).unwrap();
            if presence {
                for r in [&mut once, &mut twice, &mut restarted] {
                    if device % 2 == 0 {
                        r.handle_device_offline(&d, now).unwrap();
                    } else {
                        r.handle_device_online(&id(device - 1), now).unwrap();
                    }
                }
            }
            let a = once.handle_report(&d, state.clone(), now).unwrap();
            let b = twice.handle_report(&d, state.clone(), now).unwrap();
            let b2 = twice.handle_report(&d, state.clone(), now).unwrap();
            let c = restarted.handle_report(&d, state, now).unwrap();
            prop_assert_eq!(a, b);
            prop_assert_eq!(a, c);
            prop_assert!(
                matches!(b2, ReportOutcome::Duplicate | ReportOutcome::Ignored | ReportOutcome::Stale),
                "{:?}", b2
            );
            for r in [&mut once, &mut twice, &mut restarted] {
                r.handle_timeout(now);
            }
            log1.extend(std::iter::from_fn(|| once.poll_action()));
            log2.extend(std::iter::from_fn(|| twice.poll_action()));
            log3.extend(std::iter::from_fn(|| restarted.poll_action()));
            let status = once.status();
            prop_assert_eq!(status.totals.total(), 12);
            for w in &status.waves {
                prop_assert_eq!(w.counts.total(), w.members);
                prop_assert!(w.unsettled <= w.members);
            }
        }
        prop_assert_eq!(&log1, &log2);
        prop_assert_eq!(&log1, &log3);
        prop_assert_eq!(once.to_cbor(), twice.to_cbor());
        prop_assert_eq!(once.to_cbor(), restarted.to_cbor());
    }

    /// A device's cohort depends only on the rollout id and its own id: any other targets
    /// added change only the one device the non-empty-first-wave rule may pick.
    #[test]
    fn cohorts_are_sticky(base in proptest::collection::btree_set("[a-z0-9]{1,12}", 1..40),
                          extra in proptest::collection::btree_set("[A-Z0-9]{1,12}", 0..40)) {
        let waves = spec(&[1, 5, 25, 100]).waves;
        let all: Vec<&str> = base.iter().chain(extra.iter()).map(String::as_str).collect();
        let small = assign_cohorts("r", &waves, base.iter().map(String::as_str));
        let large = assign_cohorts("r", &waves, all.iter().copied());
        let moved = small.iter().zip(&large).filter(|(a, b)| a != b).count();
        prop_assert!(moved <= 1);
        for (name, cohort) in base.iter().zip(&small) {
            let pure = cohort_of(cohort_point("r", name), &waves);
            prop_assert!(*cohort == pure || *cohort == 0);
        }
        prop_assert!(small.contains(&0));
    }

    /// No rollout ever notifies more than its rate in a sliding minute.
    #[test]
    fn the_rate_holds_under_any_presence_churn(
        churn in proptest::collection::vec((0usize..50, 0u64..120_000), 0..60),
        rate in 1u32..20,
    ) {
        let mut s = spec(&[100]);
        s.rate_per_minute = rate;
        let mut r = Rollout::new(s, targets(50), T0).unwrap();
        let mut now = T0;
        let mut times = vec![];
        let mut drain = |r: &mut Rollout, now| {
            times.extend(std::iter::from_fn(|| r.poll_action()).filter(is_notify).map(|_| now));
        };
        drain(&mut r, now);
        for (device, dt) in churn {
            now = now.saturating_add(Duration::from_millis(dt));
            while let Some(t) = r.poll_timeout().filter(|t| *t <= now) {
                r.handle_timeout(t);
                drain(&mut r, t);
            }
            if device % 3 == 0 {
                r.handle_device_offline(&id(device), now).unwrap();
            } else {
                r.handle_device_online(&id(device / 3 * 3), now).unwrap();
            }
            drain(&mut r, now);
        }
        let n = rate as usize;
        for w in times.windows(n + 1) {
            prop_assert!(w[n].saturating_duration_since(w[0]) >= Duration::from_secs(60));
        }
    }
}

/// Issue 4: the server knows which targets are offline when it creates a rollout; they are
/// not notified (nor counted as in flight) until they come online.
#[test]
fn offline_targets_wait_until_online() {
    let targets: Vec<Target> = ids(3)
        .into_iter()
        .enumerate()
        .map(|(i, d)| Target::new(d, old_release(), known_good()).with_online(i != 1))
        .collect();
    let mut r = Rollout::new(spec(&[100]), targets, T0).unwrap();
    let mut notified = BTreeSet::new();
    while let Some(a) = r.poll_action() {
        if let PlannerAction::Notify { device_id } = a {
            notified.insert(device_id);
        }
    }
    assert_eq!(notified, BTreeSet::from([id(0), id(2)]));
    assert_eq!(r.status().offline, 1);
    assert_eq!(r.device_state(&id(1)), Some(&ExecutionState::Queued));
    // Round trip keeps the presence.
    let mut r = Rollout::from_cbor(&r.to_cbor()).unwrap();
    assert_eq!(r.status().offline, 1);
    r.handle_device_online(&id(1), at(mins(1))).unwrap();
    let notify: Vec<_> = std::iter::from_fn(|| r.poll_action())
        .filter(|a| matches!(a, PlannerAction::Notify { .. }))
        .collect();
    assert_eq!(notify, [PlannerAction::Notify { device_id: id(1) }]);
    assert_eq!(r.devices().count(), 3);
}

fn is_held(a: &PlannerAction) -> bool {
    matches!(a, PlannerAction::WaveHeld { .. })
}

/// Issue 4: a wave of 40 devices, two waves, every device succeeds by +6 min; the bake of
/// wave 0 ends at +16 min.
fn baking_fleet(max_deferral: Duration) -> (Sim, Vec<DeviceId>) {
    let mut s = spec(&[50, 100]);
    s.max_deferral = max_deferral;
    let mut sim = Sim::new(s, targets(40));
    let wave0 = sim.members_of(0, 40);
    sim.run_until(at(mins(8)));
    assert!(matches!(
        sim.r.state(),
        RolloutState::Running {
            wave: 0,
            phase: WavePhase::Baking { .. }
        }
    ));
    (sim, wave0)
}

/// Issue 4: "the devices that succeeded are still healthy (reporting, not rolled back)": a
/// succeeded device that goes offline during the bake is no longer reporting, so it holds the
/// gate until it is back.
#[test]
fn issue4_a_succeeded_device_offline_during_the_bake_holds_the_gate_until_it_is_back() {
    let (mut sim, wave0) = baking_fleet(Duration::from_secs(24 * 3600));
    let away = wave0[0].clone();
    sim.r.handle_device_offline(&away, sim.now).unwrap();
    sim.run_until(at(mins(30)));
    assert_eq!(
        sim.r.state(),
        &RolloutState::Running {
            wave: 0,
            phase: WavePhase::Held
        }
    );
    assert_eq!(sim.first_time(is_held), Some(at(mins(16))));
    assert_eq!(sim.r.status().waves[0].succeeded_offline, 1);
    assert_eq!(sim.r.device_state(&away), Some(&ExecutionState::Succeeded));
    for d in sim.members_of(1, 40) {
        assert_eq!(sim.r.device_state(&d), Some(&ExecutionState::Queued));
    }
    // A restart keeps the absence.
    sim.r = Rollout::from_cbor(&sim.r.to_cbor()).unwrap();
    assert_eq!(sim.r.status().waves[0].succeeded_offline, 1);

    // Other presence changes do not release it; its return does, at once.
    sim.r.handle_device_online(&wave0[1], sim.now).unwrap();
    sim.drain();
    assert_eq!(sim.first_time(is_advanced(0)), None);
    sim.r.handle_device_online(&away, sim.now).unwrap();
    sim.drain();
    assert_eq!(sim.first_time(is_advanced(0)), Some(at(mins(30))));
    assert_eq!(sim.r.status().waves[0].succeeded_offline, 0);
    sim.run();
    assert_eq!(sim.r.state(), &RolloutState::Completed);
}

/// Issue 17: agents keep probing after the commit, so the bake gate watches health: succeeded
/// devices whose heartbeats say "unhealthy" are no successes (the wave holds) until they say
/// healthy again; they are no failures for the abort threshold.
#[test]
fn issue17_succeeded_devices_that_turn_unhealthy_hold_the_gate_until_healthy_again() {
    let (mut sim, wave0) = baking_fleet(Duration::from_secs(24 * 3600));
    let sick = &wave0[..3];
    for d in sick {
        sim.r.handle_device_health(d, false, sim.now).unwrap();
        // Duplicates change nothing.
        sim.r.handle_device_health(d, false, sim.now).unwrap();
    }
    // Health of a device that has not succeeded (queued in wave 1) is no evidence.
    let later = sim.members_of(1, 40)[0].clone();
    sim.r.handle_device_health(&later, false, sim.now).unwrap();
    sim.run_until(at(mins(30)));
    assert_eq!(
        sim.r.state(),
        &RolloutState::Running {
            wave: 0,
            phase: WavePhase::Held
        }
    );
    let status = sim.r.status();
    assert_eq!(status.waves[0].succeeded_unhealthy, 3);
    assert_eq!(status.waves[1].succeeded_unhealthy, 0);
    assert_eq!(status.totals.succeeded, wave0.len() as u32);
    // A restart keeps it.
    sim.r = Rollout::from_cbor(&sim.r.to_cbor()).unwrap();
    assert_eq!(sim.r.status().waves[0].succeeded_unhealthy, 3);
    // They recover one by one: the wave passes once the last one is healthy again.
    for d in &sick[..2] {
        sim.r.handle_device_health(d, true, sim.now).unwrap();
    }
    sim.drain();
    assert_eq!(sim.first_time(is_advanced(0)), None, "still one unhealthy");
    sim.r.handle_device_health(&sick[2], true, sim.now).unwrap();
    sim.drain();
    assert_eq!(sim.first_time(is_advanced(0)), Some(at(mins(30))));
    assert_eq!(sim.r.status().waves[0].succeeded_unhealthy, 0);

    // An unhealthy device that then rolls back is a failure, no longer unhealthy-succeeded.
    let (mut sim, wave0) = baking_fleet(Duration::from_secs(24 * 3600));
    sim.r
        .handle_device_health(&wave0[0], false, sim.now)
        .unwrap();
    sim.r
        .handle_report(&wave0[0], rolled_back(), sim.now)
        .unwrap();
    let status = sim.r.status();
    assert_eq!(status.waves[0].succeeded_unhealthy, 0);
    assert_eq!(status.totals.rolled_back, 1);
}

/// Issue 4: a succeeded device away for good stops holding the gate after max-deferral, like
/// a deferred device; it still counts as succeeded.
#[test]
fn issue4_a_succeeded_device_away_past_max_deferral_stops_holding_the_gate() {
    let (mut sim, wave0) = baking_fleet(Duration::from_secs(3600));
    sim.r.handle_device_offline(&wave0[0], sim.now).unwrap();
    sim.run_until(at(mins(60)));
    assert!(sim.first_time(is_held).is_some());
    assert_eq!(sim.first_time(is_advanced(0)), None);
    sim.run();
    assert_eq!(
        sim.first_time(is_advanced(0)),
        Some(at(mins(8) + Duration::from_secs(3600)))
    );
    assert_eq!(sim.r.state(), &RolloutState::Completed);
    assert_eq!(sim.r.status().totals.succeeded, 40);
    assert_eq!(sim.r.status().waves[0].succeeded_offline, 0);
}

/// Issue 4: a succeeded device that rolls back while away is a failure, not away any more.
#[test]
fn issue4_an_away_device_that_rolls_back_counts_as_a_failure() {
    let (mut sim, wave0) = baking_fleet(Duration::from_secs(24 * 3600));
    sim.r.handle_device_offline(&wave0[0], sim.now).unwrap();
    sim.r
        .handle_report(&wave0[0], rolled_back(), sim.now)
        .unwrap();
    let status = sim.r.status();
    assert_eq!(status.waves[0].succeeded_offline, 0);
    assert_eq!(status.totals.rolled_back, 1);
}

/// Issue 4: a planner state written before succeeded devices could be away (by commit
/// 0a5c515: `spec(&[100])` with max-deferral 1 h over `targets(3)`, all succeeded at +5 min,
/// baking until +15 min). States still decode, re-encode to the same bytes, and continue with
/// the new gate.
const STATE_BEFORE_AWAY: &str = "a8000101ad006a726f6c6c6f75742d343201582035124b4e7639daa4ea09f22f5b32a86751347a1a032197f5208068d3ac1baabc0265616c6963650381192710041a000927c00519251c061901f4070a08192710091a001b77400a1a0036ee800bf40cf402820282008201811b00000197742e97a0031b000001977420dc0005811b000001977420dc000683aa00696465762d3030303030015820a047e0ee923ff6e212e917678e0eec2b6d372ec55cb24ede8df18ad099c9e7900258202ac2f807eac3521a32e76f079026709e49dba9e05eba400012594ef2c5c3e7ef0300048208a005f506f507f508f5091b0000019774256fe0aa00696465762d3030303031015820a047e0ee923ff6e212e917678e0eec2b6d372ec55cb24ede8df18ad099c9e7900258202ac2f807eac3521a32e76f079026709e49dba9e05eba400012594ef2c5c3e7ef0300048208a005f506f507f508f5091b0000019774256fe0aa00696465762d3030303032015820a047e0ee923ff6e212e917678e0eec2b6d372ec55cb24ede8df18ad099c9e7900258202ac2f807eac3521a32e76f079026709e49dba9e05eba400012594ef2c5c3e7ef0300048208a005f506f507f508f5091b0000019774256fe007800880";

#[test]
fn issue4_planner_states_written_before_the_away_field_still_decode() {
    let bytes: Vec<u8> = (0..STATE_BEFORE_AWAY.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&STATE_BEFORE_AWAY[i..i + 2], 16).unwrap())
        .collect();
    let mut r = Rollout::from_cbor(&bytes).unwrap();
    assert_eq!(r.to_cbor(), bytes);
    assert_eq!(
        r.state(),
        &RolloutState::Running {
            wave: 0,
            phase: WavePhase::Baking {
                until: at(mins(15))
            }
        }
    );
    r.handle_device_offline(&id(1), at(mins(10))).unwrap();
    drive_until(&mut r, at(mins(20)));
    assert_eq!(
        r.state(),
        &RolloutState::Running {
            wave: 0,
            phase: WavePhase::Held
        }
    );
    r.handle_device_online(&id(1), at(mins(20))).unwrap();
    assert_eq!(r.state(), &RolloutState::Completed);
}

// ----- issue 17: truthful commit across a reboot -----

#[test]
fn issue17_a_rebooting_device_is_in_flight_and_never_counts_until_it_commits() {
    let mut sim = Sim::new(spec(&[50, 100]), targets(20));
    sim.default_script = Script::RebootThenSucceed;
    sim.run_until(T0.saturating_add(mins(10)));
    let wave0 = sim.members_of(0, 20);
    let status = sim.r.status();
    assert_eq!(status.totals.rebooting, wave0.len() as u32, "{status:?}");
    assert_eq!(status.totals.succeeded, 0);
    assert_eq!(status.totals.in_flight(), wave0.len() as u32);
    for d in &wave0 {
        assert_eq!(sim.r.device_state(d), Some(&ExecutionState::Rebooting));
        assert!(!ExecutionState::Rebooting.is_final());
    }
    assert_eq!(
        sim.first_time(is_advanced(0)),
        None,
        "no wave advances on a reboot"
    );
    sim.run();
    assert_eq!(sim.r.state(), &RolloutState::Completed);
    // Wave 0 advanced only a bake time after its last device committed, from the new slot.
    let settled0 = sim.last_final_in_cohort(0);
    assert!(settled0 >= T0.saturating_add(mins(22)));
    assert_eq!(
        sim.first_time(is_advanced(0)),
        Some(settled0.saturating_add(mins(10)))
    );
}

/// Issue 13 (found by the whole-fleet simulation): the newest report taken from each device is
/// stored with the rollout, so after a restart an older one still on its way is stale; reports
/// on the release and on the recall target are told apart.
#[test]
fn issue13_the_newest_report_survives_a_restart() {
    let mut r = Rollout::new(spec(&[100]), targets(2), at(mins(0))).unwrap();
    let d = id(0);
    assert!(r.is_fresh_report(&d, 1, 500));
    assert!(r.is_fresh_report(&d, 1, 500), "the same one again");
    assert!(!r.is_fresh_report(&d, 1, 499));
    assert!(!r.is_fresh_report(&d, 0, 900), "an older generation");
    let mut r = Rollout::from_cbor(&r.to_cbor()).unwrap();
    assert!(
        !r.is_fresh_report(&d, 1, 499),
        "still stale after the restart"
    );
    assert!(r.is_fresh_recall_report(&d, 2, 600));
    assert!(!r.is_fresh_recall_report(&d, 2, 599));
    assert!(
        r.is_fresh_report(&d, 1, 501),
        "the release's last reports may come after the recall's first"
    );
    assert!(r.is_fresh_report(&id(1), 1, 1), "each device on its own");
    assert!(
        r.is_fresh_report(&id(7), 0, 0),
        "no target: for the handlers to refuse"
    );
}

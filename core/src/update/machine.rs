//! The [`UpdateMachine`]: its state, the shell-facing inputs that are not specific to one phase,
//! the outputs, and the bookkeeping every phase shares (persisting, reporting, concluding).

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::backoff::Jitter;
use super::state::{Phase, Stage, TrialStatus};
use super::timer::TimerTable;
use super::{
    Action, Config, MAX_GENERATION_STEP, OBSERVE_RUNNING_INTERVAL, PERSIST_VERSION, PersistedState,
    ReleaseInfo, Status, Timer, Timestamp,
};
use crate::digest::Digest;
use crate::release::TrustSet;
use crate::wire::{
    DesiredState, Event, ExecutionState, Inventory, PROTOCOL_VERSION, PowerReading, RejectCause,
    ReportedState, RunningRelease, UpdateOutcome, WireError, WireMessage,
};

/// The agent's update machine: sans-IO and deterministic given (state, input, now).
///
/// Inputs go in through the `handle_*` methods, each taking `now`; what the shell must do
/// comes out of [`poll_action`](Self::poll_action); the next deadline comes out of
/// [`poll_timeout`](Self::poll_timeout), at which the shell calls
/// [`handle_timeout`](Self::handle_timeout). Build it with [`recover`](Self::recover) (also
/// for a factory-fresh device). The transition table is in the [module docs](super).
#[derive(Debug, Clone)]
pub struct UpdateMachine {
    pub(super) config: Config,
    pub(super) boot_count: u32,
    // Persisted facts.
    pub(super) floor: u32,
    pub(super) running: Option<ReleaseInfo>,
    pub(super) known_good: Option<ReleaseInfo>,
    pub(super) cache: Vec<ReleaseInfo>,
    pub(super) last_generation: u64,
    pub(super) last_result: Option<UpdateOutcome>,
    // Volatile state.
    pub(super) phase: Phase,
    pub(super) current: Option<UpdateOutcome>,
    pub(super) queued: Option<DesiredState>,
    /// The last generation refused as a jump (reported once, not on every redelivery).
    pub(super) refused_jump: Option<u64>,
    /// Why the machine is halted (a damaged journal, see [`UpdateMachine::halted`]).
    pub(super) halted: Option<String>,
    pub(super) power: Option<PowerReading>,
    /// What the installer actually runs when it differs from `running` (drift, issue 12.7).
    pub(super) observed: Option<Digest>,
    /// When the shell was last asked what the installer runs.
    pub(super) observed_at: Option<Timestamp>,
    pub(super) connected: bool,
    /// The boot slot the shell saw boot (boot slots only, `handle_boot_observed`).
    pub(super) booted: Option<super::Slot>,
    /// The health probe's latest answer about the running release (`watch_health` only).
    pub(super) health: Option<bool>,
    /// A [`Action::CheckHealth`] is unanswered.
    pub(super) health_check_running: bool,
    pub(super) next_seq: u64,
    pub(super) timers: TimerTable,
    pub(super) jitter: Jitter,
    pub(super) actions: VecDeque<Action>,
}

impl UpdateMachine {
    /// A machine with nothing known yet (see [`recover`](Self::recover)).
    pub(super) fn blank(config: Config, boot_count: u32) -> Self {
        let jitter = Jitter::new(config.retry.jitter_seed, boot_count);
        UpdateMachine {
            config,
            boot_count,
            floor: 0,
            running: None,
            known_good: None,
            cache: Vec::new(),
            last_generation: 0,
            last_result: None,
            phase: Phase::Idle,
            current: None,
            queued: None,
            refused_jump: None,
            halted: None,
            power: None,
            observed: None,
            observed_at: None,
            connected: false,
            booted: None,
            health: None,
            health_check_running: false,
            // Sequence numbers never repeat across boots, so a late ack from a previous boot
            // cannot pass for a fresh one.
            next_seq: u64::from(boot_count) << 32,
            timers: TimerTable::default(),
            jitter,
            actions: VecDeque::new(),
        }
    }

    // ---- outputs -------------------------------------------------------------------------

    /// The next thing the shell must do, in order. Drain it after every input.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When the shell must call [`handle_timeout`](Self::handle_timeout) next.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.timers.next().map(|(_, at)| at)
    }

    /// Fires every timer due at `now` (each at most once per call).
    pub fn handle_timeout(&mut self, now: Timestamp) {
        for timer in Timer::ALL {
            if self.timers.take_expired(timer, now) {
                self.on_timer(timer, now);
            }
        }
    }

    fn on_timer(&mut self, timer: Timer, now: Timestamp) {
        match timer {
            Timer::PowerRecheck | Timer::WindowOpen | Timer::DiskRecheck => {
                self.on_gate_timer(timer, now);
            }
            Timer::DownloadRetry => self.on_retry_timer(),
            Timer::Probe => self.on_probe_timer(now),
            Timer::TrialDeadline => self.on_trial_deadline(now),
            Timer::TrialSoak => self.try_commit(now),
            Timer::Heartbeat => {
                if self.connected {
                    self.check_health();
                    self.send_heartbeat(now);
                }
            }
        }
    }

    /// A snapshot for `ota-agent status`.
    pub fn status(&self) -> Status {
        Status {
            stage: Stage::of(&self.phase),
            job: self.phase.in_flight().map(|f| f.job().clone()),
            running: self.running.clone(),
            known_good: self.known_good.clone(),
            security_floor: self.floor,
            last_generation: self.last_generation,
            queued_generation: self.queued.as_ref().map(|q| q.generation),
            cache: self.cache.clone(),
            current: self.current.clone(),
            last_result: self.last_result.clone(),
            trial: match &self.phase {
                Phase::Trial(t) => Some(TrialStatus {
                    release: t.job.release.clone(),
                    deadline: t.deadline,
                    soak_end: self.soak_end(t),
                    probe_passed: t.probe_passed,
                    last_probe_error: t.last_probe_error.clone(),
                    server_reached: t.server_reached,
                }),
                _ => None,
            },
            power: self.power,
            healthy: self.health,
            connected: self.connected,
            next_timer: self.timers.next(),
        }
    }

    /// The reported state, completed with the host facts only the shell knows.
    pub fn reported_state(
        &self,
        agent_version: &str,
        inventory: Inventory,
        labels: BTreeMap<String, String>,
    ) -> ReportedState {
        ReportedState {
            v: PROTOCOL_VERSION,
            device_id: String::from(self.config.device_id.as_str()),
            agent_version: String::from(agent_version),
            hardware_class: self.config.hardware_class.clone(),
            running: match self.observed {
                Some(digest) => Some(self.observed_release(digest)),
                None => self.running.as_ref().map(ReleaseInfo::running),
            },
            known_good: self.known_good.as_ref().map(ReleaseInfo::running),
            trial: match &self.phase {
                Phase::Trial(t) => Some(t.job.release.running()),
                _ => None,
            },
            cached: self.cache.iter().map(|r| r.digest).collect(),
            last_result: self.current.clone().or_else(|| self.last_result.clone()),
            power: self.power,
            inventory,
            labels,
            generation: self.last_generation,
            security_floor: self.floor,
        }
    }

    /// The state as it would be persisted now.
    pub fn persisted_state(&self) -> PersistedState {
        PersistedState {
            v: PERSIST_VERSION,
            security_floor: self.floor,
            running: self.running.clone(),
            known_good: self.known_good.clone(),
            cache: self.cache.clone(),
            last_generation: self.last_generation,
            in_flight: self.phase.in_flight(),
            last_result: self.last_result.clone(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Replaces the trust set releases are verified against (a key rotation the shell has
    /// verified and persisted, see [`crate::release::TrustState`]). Every desired state offered
    /// from now on is verified against it; a release already verified and in flight goes on
    /// (it was signed by keys trusted when it was offered).
    pub fn set_trust(&mut self, trust: TrustSet) {
        self.config.trust = trust;
    }

    // ---- inputs not tied to one phase ----------------------------------------------------

    /// A desired state arrived (already decoded; see
    /// [`handle_desired_bytes`](Self::handle_desired_bytes)).
    ///
    /// A [halted](Self::halted) machine answers every desired state with
    /// `rejected{journal-damaged}` and does nothing else. Otherwise it is idempotent: a
    /// generation at or below the last one acted on (or the one queued) is ignored. A generation more than [`MAX_GENERATION_STEP`] above the last one acted on is
    /// refused: event `rejected{generation-jump}`, nothing else changes (the job in flight goes
    /// on). During an install, trial or rollback it is queued (only the newest) and offered
    /// when that ends; otherwise it supersedes whatever was being prepared.
    pub fn handle_desired(&mut self, desired: DesiredState, now: Timestamp) {
        if let Some(detail) = self.halted.clone() {
            return self.announce(UpdateOutcome {
                generation: desired.generation,
                rollout_id: desired.rollout_id,
                digest: None,
                state: ExecutionState::Rejected {
                    cause: RejectCause::JournalDamaged,
                    detail,
                },
                at: now.0,
                transfer: None,
            });
        }
        let Some(step) = desired.generation.checked_sub(self.last_generation) else {
            return;
        };
        if step == 0 {
            return;
        }
        if step > MAX_GENERATION_STEP {
            return self.refuse_jump(&desired, now);
        }
        if self.phase.is_busy() {
            if self
                .queued
                .as_ref()
                .is_none_or(|q| desired.generation > q.generation)
            {
                self.queued = Some(desired);
            }
            return;
        }
        self.offer(desired, now);
    }

    /// Reports a desired state whose generation jumps too far (see
    /// [`MAX_GENERATION_STEP`]), once per generation.
    fn refuse_jump(&mut self, desired: &DesiredState, now: Timestamp) {
        if self.refused_jump == Some(desired.generation) {
            return;
        }
        self.refused_jump = Some(desired.generation);
        let detail = format!(
            "generation {} is more than {MAX_GENERATION_STEP} above the last one acted on ({}); \
             the device keeps its generation",
            desired.generation, self.last_generation
        );
        let outcome = UpdateOutcome {
            generation: desired.generation,
            rollout_id: desired.rollout_id.clone(),
            digest: None,
            state: ExecutionState::Rejected {
                cause: RejectCause::GenerationJump,
                detail,
            },
            at: now.0,
            transfer: None,
        };
        let event = Event::from_outcome(&self.config.device_id, &outcome);
        self.push(Action::PublishEvent(event));
    }

    /// Decodes a desired-state payload and hands it to
    /// [`handle_desired`](Self::handle_desired). A payload that does not decode changes
    /// nothing: the error is for the shell to log.
    pub fn handle_desired_bytes(
        &mut self,
        payload: &[u8],
        now: Timestamp,
    ) -> Result<(), WireError> {
        let desired = DesiredState::from_cbor(payload)?;
        self.handle_desired(desired, now);
        Ok(())
    }

    /// A power reading, answering [`Action::ReadPower`] or pushed by the shell whenever the
    /// supply changes.
    pub fn handle_power(&mut self, reading: PowerReading, now: Timestamp) {
        self.power = Some(reading);
        self.on_power(reading, now);
    }

    /// The MQTT connection is up (again): ask what the installer runs (when idle), republish
    /// the reported state and send a heartbeat.
    pub fn handle_connected(&mut self, now: Timestamp) {
        self.connected = true;
        self.observed_at = None;
        self.observe_running(now);
        self.push(Action::PublishReported);
        self.send_heartbeat(now);
    }

    /// Asks the shell what the installer actually runs ([`Action::ObserveRunning`]) when idle
    /// and not asked within [`OBSERVE_RUNNING_INTERVAL`].
    pub(super) fn observe_running(&mut self, now: Timestamp) {
        let due = self
            .observed_at
            .is_none_or(|at| now.saturating_duration_since(at) >= OBSERVE_RUNNING_INTERVAL);
        if due && matches!(self.phase, Phase::Idle) {
            self.observed_at = Some(now);
            self.push(Action::ObserveRunning);
        }
    }

    /// The installer's answer to [`Action::ObserveRunning`]: the digest it actually runs, or
    /// `None` when it cannot tell (the command installer). While idle, a digest other than the
    /// journal's running release is reported as `running` (the server marks the device
    /// drifted); the journal is not changed, so a rollback still targets the known-good
    /// release. An answer that arrives during an update, or none, changes nothing.
    pub fn handle_observed_running(&mut self, digest: Option<Digest>, _now: Timestamp) {
        let Some(digest) = digest else { return };
        if !matches!(self.phase, Phase::Idle) {
            return;
        }
        let observed = (self.running.as_ref().map(|r| r.digest) != Some(digest)).then_some(digest);
        if observed != self.observed {
            self.observed = observed;
            self.push(Action::PublishReported);
        }
    }

    /// The installer is about to switch what runs: what was observed before no longer holds.
    pub(super) fn forget_observed(&mut self) {
        self.observed = None;
    }

    /// The release the installer was observed to run: its version and security version when
    /// the device knows the digest (known-good or cached), else version `unknown`.
    fn observed_release(&self, digest: Digest) -> RunningRelease {
        self.known_good
            .iter()
            .chain(self.cache.iter())
            .find(|r| r.digest == digest)
            .map_or_else(
                || RunningRelease {
                    version: String::from("unknown"),
                    digest,
                    security_version: 0,
                },
                ReleaseInfo::running,
            )
    }

    /// The MQTT connection is down: heartbeats stop; reports keep queuing in the shell.
    pub fn handle_disconnected(&mut self, _now: Timestamp) {
        self.connected = false;
        self.timers.stop(Timer::Heartbeat);
    }

    // ---- shared bookkeeping --------------------------------------------------------------

    pub(super) fn push(&mut self, action: Action) {
        self.actions.push_back(action);
    }

    /// Queues the current state for persistence (before the side effects that follow).
    pub(super) fn persist(&mut self) {
        // Observe again at the next heartbeat once idle; what was observed stays reported
        // until then (no drift flapping on a journal write that installs nothing).
        self.observed_at = None;
        let state = self.persisted_state();
        self.push(Action::Persist(Box::new(state)));
    }

    /// Publishes an execution state unless it repeats the current one. Progress updates get an
    /// event only; every other state also republishes the reported state.
    ///
    /// Within a job, each event is stamped strictly later than the one before, even when both
    /// happen in the same millisecond (or the clock stepped back): the fleet server orders a
    /// device's reports by (generation, time) and drops older ones, so two events of a job
    /// that overtake each other on the way are never taken in the wrong order.
    pub(super) fn announce(&mut self, mut outcome: UpdateOutcome) {
        if let Some(c) = self
            .current
            .as_ref()
            .filter(|c| c.generation == outcome.generation)
        {
            if c.state == outcome.state {
                return;
            }
            outcome.at = outcome.at.max(c.at.saturating_add(1));
        }
        let progress = matches!(outcome.state, ExecutionState::Downloading { .. });
        self.push(Action::PublishEvent(Event::from_outcome(
            &self.config.device_id,
            &outcome,
        )));
        self.current = Some(outcome);
        if !progress {
            self.push(Action::PublishReported);
        }
    }

    /// Ends the job with a final outcome: back to idle, persisted with the outcome, then
    /// `effects` (which the persisted state protects), then the report, then the queued
    /// desired state if any.
    pub(super) fn conclude(
        &mut self,
        outcome: UpdateOutcome,
        effects: Vec<Action>,
        now: Timestamp,
    ) {
        self.phase = Phase::Idle;
        self.stop_job_timers();
        self.last_result = Some(outcome.clone());
        self.persist();
        self.actions.extend(effects);
        self.announce(outcome);
        if let Some(next) = self.queued.take() {
            self.handle_desired(next, now);
        }
    }

    /// Disarms every timer that belongs to a job (not the heartbeat).
    pub(super) fn stop_job_timers(&mut self) {
        for t in Timer::ALL {
            if t != Timer::Heartbeat {
                self.timers.stop(t);
            }
        }
    }

    /// Evicts least recently used cache entries beyond the capacity, sparing the running and
    /// known-good releases and `also`. The caller persists before pushing the returned
    /// [`Action::Evict`]s.
    pub(super) fn evict_over_capacity(&mut self, also: Option<Digest>) -> Vec<Action> {
        let protected: Vec<Digest> = [&self.running, &self.known_good]
            .into_iter()
            .flatten()
            .map(|r| r.digest)
            .chain(also)
            .collect();
        super::cache::evict_over(&mut self.cache, self.config.cache_capacity, &protected)
            .into_iter()
            .map(|digest| Action::Evict { digest })
            .collect()
    }
}

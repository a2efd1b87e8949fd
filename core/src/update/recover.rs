//! Start-up: rebuild the machine from the persisted state and finish or undo what a crash or
//! power loss interrupted (rule 11).

use alloc::format;

use super::cache;
use super::machine::UpdateMachine;
use super::state::{Phase, TrialState};
use super::{Action, Config, InFlight, Job, PersistedState, Timestamp};
use crate::wire::{
    ExecutionState, FailurePhase, RejectCause, RollbackReason, UpdateOutcome, WireLimits,
    truncate_text,
};

impl UpdateMachine {
    /// Builds the machine at start-up from the last persisted state (`None` on a
    /// factory-fresh device, which then runs `config.factory`), in boot number `boot_count`
    /// (a counter the shell increments on every boot, e.g. from the bootloader or a file),
    /// at `now`.
    ///
    /// | persisted in flight | what happens |
    /// |---|---|
    /// | nothing | idle; the last final result is published again (idempotent) |
    /// | `Pending` (gated or downloading) | preparation restarts: cache check, gates, then `InspectPartial` and a resumed `Download` |
    /// | `Installing`, attempts left | the install is redone (installers are idempotent) |
    /// | `Installing`, attempts used up | rollback to known-good, `failed{phase: install}` |
    /// | `RollingBack` | the known-good install is redone |
    /// | `Trial`, deadline passed | rollback, `rolled-back{trial-timeout}` |
    /// | `Trial`, same boot, before the deadline | the trial resumes with the original deadline |
    /// | `Trial`, rebooted more than `trial_max_reboots` | rollback, `rolled-back{reboot-during-trial}` |
    /// | `Trial`, rebooted within the allowance, clock plausible | the trial resumes with the original deadline |
    /// | `Trial`, rebooted within the allowance, clock earlier than the trial start | the trial restarts with a full `trial_timeout` from now |
    ///
    /// A trial always has to prove itself again (probe and heartbeat) after a restart; the
    /// deadline is wall time plus boot count, never a monotonic instant. The known-good
    /// release is never evicted, so a rollback needs no network.
    pub fn recover(
        config: Config,
        persisted: Option<PersistedState>,
        boot_count: u32,
        now: Timestamp,
    ) -> Self {
        let mut m = UpdateMachine::blank(config, boot_count);
        let Some(p) = persisted else {
            if let Some(factory) = m.config.factory.clone() {
                cache::admit(&mut m.cache, factory.clone());
                m.floor = factory.security_version;
                m.running = Some(factory.clone());
                m.known_good = Some(factory);
            }
            m.persist();
            m.push(Action::PublishReported);
            return m;
        };
        m.floor = p.security_floor;
        m.running = p.running;
        m.known_good = p.known_good;
        m.cache = p.cache;
        m.last_generation = p.last_generation;
        m.last_result = p.last_result;
        match p.in_flight {
            None => m.resume_idle(),
            Some(InFlight::Pending { job }) => m.prepare(job, now),
            Some(InFlight::Installing { job, attempt }) => m.resume_install(job, attempt, now),
            Some(InFlight::RollingBack {
                job,
                target,
                outcome,
            }) => m.begin_rollback(job, target, outcome),
            Some(InFlight::Trial {
                job,
                started_ms,
                deadline_ms,
                boot_count: trial_boot,
                reboots,
            }) => {
                let trial = TrialState {
                    job,
                    started: Timestamp(started_ms),
                    deadline: Timestamp(deadline_ms),
                    boot_count: trial_boot,
                    reboots,
                    probe_passed: false,
                    probe_running: false,
                    probe_failures: 0,
                    last_probe_error: None,
                    first_seq: None,
                    server_reached: false,
                };
                m.resume_trial(trial, now);
            }
        }
        m
    }

    /// A machine for a device whose journal is damaged beyond repair: both copies fail their
    /// checksum and no [`FloorRecord`](super::FloorRecord) stands in for them (issue 19.7).
    /// Without its security floor and running release the device must not update, and crashing
    /// would only be a silent restart loop. So the machine stays up and says so: its reported
    /// state's last result is `rejected{journal-damaged}` (generation 0, `detail`), every
    /// desired state is answered the same way, heartbeats go on, and it never persists
    /// anything (the damaged files stay as they are for the operator).
    pub fn halted(config: Config, detail: &str, boot_count: u32, now: Timestamp) -> Self {
        let mut m = UpdateMachine::blank(config, boot_count);
        let detail = truncate_text(detail, WireLimits::MAX_TEXT_BYTES);
        m.halted = Some(detail.clone());
        m.announce(UpdateOutcome {
            generation: 0,
            rollout_id: None,
            digest: None,
            state: ExecutionState::Rejected {
                cause: RejectCause::JournalDamaged,
                detail,
            },
            at: now.0,
            transfer: None,
        });
        m
    }

    /// Nothing in flight: publish the last result again, in case it never left the device.
    fn resume_idle(&mut self) {
        if let Some(last) = self.last_result.clone() {
            self.announce(last);
        } else {
            self.push(Action::PublishReported);
        }
    }

    fn resume_install(&mut self, job: Job, attempt: u32, now: Timestamp) {
        if attempt < self.config.max_install_attempts {
            return self.install_attempt(job, attempt + 1, now);
        }
        let state = ExecutionState::Failed {
            phase: FailurePhase::Install,
            reason: format!("install interrupted {attempt} times"),
        };
        self.roll_back(job, state, now);
    }

    fn resume_trial(&mut self, mut trial: TrialState, now: Timestamp) {
        // Same phase for the helpers that roll back a trial.
        self.phase = Phase::Trial(trial.clone());
        if now >= trial.deadline {
            return self.fail_trial(
                RollbackReason::TrialTimeout,
                "the trial deadline passed while the agent was down",
                now,
            );
        }
        if trial.boot_count != self.boot_count {
            trial.reboots += 1;
            if trial.reboots > self.config.trial_max_reboots {
                let detail = format!("rebooted {} time(s) during the trial", trial.reboots);
                return self.fail_trial(RollbackReason::RebootDuringTrial, &detail, now);
            }
            if now < trial.started {
                // The wall clock went backwards across the reboot (no RTC, no time sync yet):
                // the remaining time is unknowable, so the trial gets a full window from now.
                // Nothing is committed without probe and heartbeat anyway.
                trial.started = now;
                trial.deadline = now.saturating_add(self.config.trial_timeout);
            }
            trial.boot_count = self.boot_count;
        }
        self.enter_trial(trial, now);
    }
}

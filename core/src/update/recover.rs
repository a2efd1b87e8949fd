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
    /// | `Rebooting`; with boot slots also `Installing` and `Trial` | waits for `handle_boot_observed` ([`Slot`](super::Slot) has the table) |
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
            // Boot slots: what happens to an operation that writes or boots a slot depends
            // on which slot booted; `handle_boot_observed` decides.
            Some(f @ (InFlight::Installing { .. } | InFlight::Trial { .. }))
                if m.config.boot_slots =>
            {
                m.phase = Phase::Booting(f);
            }
            Some(f @ InFlight::Rebooting { .. }) => m.phase = Phase::Booting(f),
            Some(f) => m.resume(f, now),
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

    /// Resumes the operation `in_flight` (see the table of [`recover`](Self::recover)).
    pub(super) fn resume(&mut self, in_flight: InFlight, now: Timestamp) {
        match in_flight {
            InFlight::Pending { job } => self.prepare(job, now),
            InFlight::Installing { job, attempt, .. } => self.resume_install(job, attempt, now),
            InFlight::RollingBack {
                job,
                target,
                outcome,
            } => self.begin_rollback(job, target, outcome),
            InFlight::Trial {
                job,
                started_ms,
                deadline_ms,
                boot_count,
                reboots,
                slot,
            } => {
                let window = (Timestamp(started_ms), Timestamp(deadline_ms));
                let trial = TrialState::new(job, window, boot_count, reboots, slot);
                self.resume_trial(trial, now);
            }
            // Only reached through `handle_boot_observed`, which handles it itself.
            InFlight::Rebooting {
                job,
                slot,
                boot_count,
                outcome,
            } => {
                self.phase = Phase::Booting(InFlight::Rebooting {
                    job,
                    slot,
                    boot_count,
                    outcome,
                });
            }
        }
    }

    /// Nothing in flight: publish the last result again, in case it never left the device.
    fn resume_idle(&mut self) {
        if let Some(last) = self.last_result.clone() {
            self.announce(last);
        } else {
            self.push(Action::PublishReported);
        }
    }

    pub(super) fn resume_install(&mut self, job: Job, attempt: u32, now: Timestamp) {
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

//! Install, trial, commit and rollback (rules 8 to 10).

use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

use super::cache;
use super::machine::UpdateMachine;
use super::offer::reason;
use super::state::{Phase, TrialState};
use super::{Action, InstallError, Job, ProbeResult, ReleaseInfo, Slot, Timer, Timestamp};
use crate::digest::Digest;
use crate::wire::{ExecutionState, FailurePhase, RollbackReason, WireLimits, truncate_text};

impl UpdateMachine {
    /// Rule 8: install the prepared (cached, verified) artifact.
    pub(super) fn install(&mut self, now: Timestamp) {
        let Phase::Preparing(p) = &self.phase else {
            return;
        };
        let job = p.job.clone();
        cache::touch(&mut self.cache, &job.release.digest);
        if self.config.boot_slots && self.booted.is_none() {
            let state = ExecutionState::Failed {
                phase: FailurePhase::Install,
                reason: "the booted slot is unknown: nothing was written".into(),
            };
            return self.conclude(job.outcome(state, now.0), Vec::new(), now);
        }
        self.install_attempt(job, 1, now);
    }

    /// Persists `Installing` (write-ahead), then asks the shell to install.
    pub(super) fn install_attempt(&mut self, job: Job, attempt: u32, now: Timestamp) {
        self.stop_job_timers();
        let release = job.release.clone();
        let slot = if self.config.boot_slots {
            self.booted.map(Slot::other)
        } else {
            None
        };
        self.phase = Phase::Installing {
            job: job.clone(),
            attempt,
            slot,
        };
        self.persist();
        self.announce(job.outcome(ExecutionState::Installing, now.0));
        self.forget_observed();
        self.health = None;
        self.push(Action::Install {
            release,
            rollback: false,
            slot,
        });
    }

    /// The installer finished, answering [`Action::Install`]. Success puts the release on
    /// trial; failure reinstalls the known-good release (`failed{phase: install}`). A cached
    /// artifact that failed its re-hash before the install ([`InstallError::CorruptArtifact`])
    /// changed nothing on the device: it leaves the cache and the job ends `failed{verify}`
    /// without a rollback (of a rollback: the device keeps running what it ran).
    pub fn handle_install_done(
        &mut self,
        digest: Digest,
        result: Result<(), InstallError>,
        now: Timestamp,
    ) {
        let (job, rollback) = match &self.phase {
            Phase::Installing { job, slot, .. } if job.release.digest == digest => {
                if let (Some(slot), Ok(())) = (slot, &result) {
                    return self.reboot_into(job.clone(), *slot, now);
                }
                (job.clone(), None)
            }
            Phase::RollingBack {
                job,
                target,
                outcome,
            } if target.digest == digest => (job.clone(), Some((target.clone(), outcome.clone()))),
            _ => return,
        };
        if let Err(e @ InstallError::CorruptArtifact(_)) = &result {
            return self.refuse_corrupt(job, digest, rollback.map(|(t, _)| t), e, now);
        }
        let Some((target, outcome)) = rollback else {
            return match result {
                Ok(()) => self.start_trial(job, now),
                Err(e) => {
                    let state = ExecutionState::Failed {
                        phase: FailurePhase::Install,
                        reason: reason(&e),
                    };
                    self.roll_back(job, state, now)
                }
            };
        };
        let state = match result {
            Ok(()) => {
                self.running = Some(target);
                outcome
            }
            Err(e) => {
                // The device runs something unknown now; the known-good release stays
                // recorded and cached, so the next desired state can still restore it.
                self.running = None;
                let why = format!("reinstalling known-good {} failed: {e}", target.version);
                ExecutionState::Failed {
                    phase: FailurePhase::Install,
                    reason: truncate_text(&why, WireLimits::MAX_TEXT_BYTES),
                }
            }
        };
        self.conclude(job.outcome(state, now.0), Vec::new(), now);
    }

    /// The cached artifact `digest` failed its re-hash before an install (or the rollback to
    /// `rollback_target`): nothing was installed. It leaves the cache index (persisted before
    /// the file is evicted) and the job ends `failed{verify}`.
    fn refuse_corrupt(
        &mut self,
        job: Job,
        digest: Digest,
        rollback_target: Option<ReleaseInfo>,
        e: &InstallError,
        now: Timestamp,
    ) {
        let mut effects = Vec::new();
        if cache::remove(&mut self.cache, &digest) {
            effects.push(Action::Evict { digest });
        }
        let why = match rollback_target {
            Some(t) => format!("cannot roll back to known-good {}: {e}", t.version),
            None => format!("{e}"),
        };
        let state = ExecutionState::Failed {
            phase: FailurePhase::Verify,
            reason: truncate_text(&why, WireLimits::MAX_TEXT_BYTES),
        };
        self.conclude(job.outcome(state, now.0), effects, now);
    }

    /// Rule 9: the installed release runs on trial until the probe passes and the server acks
    /// a heartbeat, or the deadline passes.
    pub(super) fn start_trial(&mut self, job: Job, now: Timestamp) {
        self.running = Some(job.release.clone());
        let slot = if self.config.boot_slots {
            self.booted
        } else {
            None
        };
        let window = (now, now.saturating_add(self.config.trial_timeout));
        let trial = TrialState::new(job, window, self.boot_count, 0, slot);
        self.enter_trial(trial, now);
    }

    /// Enters (or, after a restart, resumes) a trial: persist, arm the deadline, probe, and
    /// heartbeat if connected.
    pub(super) fn enter_trial(&mut self, trial: TrialState, now: Timestamp) {
        let job = trial.job.clone();
        self.timers.set(Timer::TrialDeadline, trial.deadline);
        let soak_end = self.soak_end(&trial);
        if soak_end > now {
            self.timers.set(Timer::TrialSoak, soak_end);
        }
        self.phase = Phase::Trial(trial);
        self.persist();
        self.announce(job.outcome(ExecutionState::Trial, now.0));
        self.run_probe();
        if self.connected {
            self.send_heartbeat(now);
        }
    }

    fn run_probe(&mut self) {
        if let Phase::Trial(t) = &mut self.phase {
            t.probe_running = true;
            let digest = t.job.release.digest;
            self.timers.stop(Timer::Probe);
            self.push(Action::RunProbe { digest });
        }
    }

    /// When `trial`'s minimum soak ends (`trial_min` after its start).
    pub(super) fn soak_end(&self, trial: &TrialState) -> Timestamp {
        trial.started.saturating_add(self.config.trial_min)
    }

    /// Probes again while the release is unproven, or proven but still soaking.
    pub(super) fn on_probe_timer(&mut self, now: Timestamp) {
        if let Phase::Trial(t) = &self.phase
            && !t.probe_running
            && (!t.probe_passed || now < self.soak_end(t))
        {
            self.run_probe();
        }
    }

    /// The health probe's answer, to [`Action::RunProbe`]. "Healthy" proves the release (and,
    /// while the minimum soak lasts, the probe runs again after `probe_interval`); "not yet"
    /// unproves it again and probes later, or rolls back once `probe_failures_to_rollback`
    /// answers in a row said so; "failed" rolls back at once.
    pub fn handle_probe(&mut self, result: ProbeResult, now: Timestamp) {
        let soak_end = match &self.phase {
            Phase::Trial(t) if t.probe_running => self.soak_end(t),
            _ => return,
        };
        self.note_health(&result);
        let limit = self.config.probe_failures_to_rollback;
        let next_probe = now.saturating_add(self.config.probe_interval);
        let Phase::Trial(t) = &mut self.phase else {
            return;
        };
        t.probe_running = false;
        match result {
            ProbeResult::Healthy => {
                t.probe_passed = true;
                t.probe_failures = 0;
                t.last_probe_error = None;
                if now < soak_end {
                    self.timers.set(Timer::Probe, next_probe);
                }
                self.try_commit(now);
            }
            ProbeResult::NotYet(why) => {
                t.probe_passed = false;
                t.probe_failures = t.probe_failures.saturating_add(1);
                t.last_probe_error = Some(truncate_text(&why, WireLimits::MAX_TEXT_BYTES));
                if limit > 0 && t.probe_failures >= limit {
                    let detail = format!("the health probe failed {limit} times in a row: {why}");
                    return self.fail_trial(RollbackReason::ProbeFailed, &detail, now);
                }
                self.timers.set(Timer::Probe, next_probe);
            }
            ProbeResult::Failed(why) => {
                self.fail_trial(RollbackReason::ProbeFailed, &why, now);
            }
        }
    }

    /// Sends the next heartbeat and re-arms the heartbeat timer.
    pub(super) fn send_heartbeat(&mut self, now: Timestamp) {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Phase::Trial(t) = &mut self.phase {
            t.first_seq.get_or_insert(seq);
        }
        self.push(Action::SendHeartbeat {
            seq,
            healthy: self.health,
        });
        self.observe_running(now);
        let at = now.saturating_add(self.config.heartbeat_interval);
        self.timers.set(Timer::Heartbeat, at);
    }

    /// The fleet server echoed heartbeat `seq`. During a trial, an ack of a heartbeat sent
    /// during that trial proves the server is reachable from the new release.
    pub fn handle_heartbeat_ack(&mut self, seq: u64, now: Timestamp) {
        if seq >= self.next_seq {
            return;
        }
        if let Phase::Trial(t) = &mut self.phase
            && t.first_seq.is_some_and(|first| seq >= first)
        {
            t.server_reached = true;
            self.try_commit(now);
        }
    }

    /// Commits when the three conditions hold (the probe's latest answer was healthy, the
    /// server answered a heartbeat of this trial, the minimum soak is over): known-good = the
    /// release, the floor rises to its security version, the cache is trimmed, `succeeded` is
    /// reported.
    pub(super) fn try_commit(&mut self, now: Timestamp) {
        let Phase::Trial(t) = &self.phase else {
            return;
        };
        if !(t.probe_passed && t.server_reached && now >= self.soak_end(t)) {
            return;
        }
        let job = t.job.clone();
        let release = job.release.clone();
        self.floor = self.floor.max(release.security_version);
        self.running = Some(release.clone());
        self.known_good = Some(release.clone());
        let mut effects = vec![Action::Commit {
            digest: release.digest,
        }];
        effects.extend(self.evict_over_capacity(None));
        let outcome = job.outcome(ExecutionState::Succeeded, now.0);
        self.conclude(outcome, effects, now);
    }

    pub(super) fn on_trial_deadline(&mut self, now: Timestamp) {
        let Phase::Trial(t) = &self.phase else {
            return;
        };
        let timeout = self.config.trial_timeout.as_secs();
        let (why, detail) = if t.probe_passed && t.server_reached {
            // Only when trial_min is not shorter than trial_timeout (a misconfiguration the
            // agent refuses): the soak never ended.
            (
                RollbackReason::TrialTimeout,
                format!(
                    "the minimum soak ({}s) did not end within the trial timeout ({timeout}s)",
                    self.config.trial_min.as_secs()
                ),
            )
        } else if t.probe_passed {
            (
                RollbackReason::ServerUnreachable,
                format!("no heartbeat ack from the fleet server within {timeout}s"),
            )
        } else {
            let last = t.last_probe_error.as_deref().unwrap_or("no answer");
            (
                RollbackReason::ProbeTimeout,
                format!("health probe did not pass within {timeout}s: {last}"),
            )
        };
        self.fail_trial(why, &detail, now);
    }

    /// The trial failed: roll back and report `rolled-back`.
    pub(super) fn fail_trial(&mut self, why: RollbackReason, detail: &str, now: Timestamp) {
        let Phase::Trial(trial) = &self.phase else {
            return;
        };
        let trial = trial.clone();
        let state = ExecutionState::RolledBack {
            reason: why,
            detail: truncate_text(detail, WireLimits::MAX_TEXT_BYTES),
        };
        if trial.slot.is_some() {
            // Boot slots: the old slot still holds what ran before (the known-good release,
            // or the image the device came with when none was ever recorded): boot it again.
            return self.reboot_back(&trial, state);
        }
        self.roll_back(trial.job, state, now);
    }

    /// Reinstalls the known-good release from the cache (no network), then reports `outcome`.
    /// Without a known-good release to go back to, `job` stays and the outcome becomes
    /// `failed{phase: trial}` (or stays the install failure).
    /// With boot slots (an install into the slot not booted failed) nothing needs
    /// reinstalling: the booted slot stays the bootloader's default (`BootSlot`) and the
    /// outcome is reported.
    pub(super) fn roll_back(&mut self, job: Job, outcome: ExecutionState, now: Timestamp) {
        if let (true, Some(slot)) = (self.config.boot_slots, self.booted) {
            let effects = vec![Action::BootSlot { slot }];
            return self.conclude(job.outcome(outcome, now.0), effects, now);
        }
        match self.known_good.clone() {
            Some(target) if target.digest != job.release.digest => {
                self.begin_rollback(job, target, outcome);
            }
            _ => {
                let state = match outcome {
                    ExecutionState::RolledBack { detail, .. } => {
                        let why = format!("no known-good release to roll back to: {detail}");
                        ExecutionState::Failed {
                            phase: FailurePhase::Trial,
                            reason: truncate_text(&why, WireLimits::MAX_TEXT_BYTES),
                        }
                    }
                    other => other,
                };
                self.conclude(job.outcome(state, now.0), Vec::new(), now);
            }
        }
    }

    /// Persists `RollingBack` (write-ahead), then asks for the known-good install.
    pub(super) fn begin_rollback(
        &mut self,
        job: Job,
        target: ReleaseInfo,
        outcome: ExecutionState,
    ) {
        self.stop_job_timers();
        let release = target.clone();
        self.phase = Phase::RollingBack {
            job,
            target,
            outcome,
        };
        self.persist();
        self.forget_observed();
        self.health = None;
        self.push(Action::Install {
            release,
            rollback: true,
            slot: None,
        });
    }
}

//! The two boot slots of an A/B device, and what the machine does across the reboot into one.
//!
//! With [`Config::boot_slots`](super::Config::boot_slots) (the agent's `ab` installer) an
//! install writes the slot that is not booted, the shell sets the bootloader to try it once,
//! and the machine persists [`InFlight::Rebooting`](super::InFlight::Rebooting) before it asks
//! for the reboot. After every start the shell tells the machine which slot booted
//! ([`UpdateMachine::handle_boot_observed`]), and the machine decides from that alone:
//!
//! | persisted in flight | booted slot | next | actions |
//! |---|---|---|---|
//! | `Installing{slot}` | `slot` (the try was set, the power went before the journal said `Rebooting`) | trial on `slot` | as for an install ok |
//! | `Installing{slot}` | the other | installing (redo, or roll back after `max_install_attempts`) | `Install{slot}` |
//! | `Rebooting{slot, outcome: none}`, same boot | — | rebooting | `Reboot` (again) |
//! | `Rebooting{slot, outcome: none}`, rebooted | `slot` | trial on `slot` | `Persist` (Trial), event `trial`, probe, heartbeat |
//! | `Rebooting{slot, outcome: none}`, rebooted | the other | idle | `Persist`, `BootSlot{booted}` (keep it good), event `rolled-back{boot-failed}` |
//! | `Rebooting{slot, outcome}`, same boot | — | rebooting | `BootSlot{slot}`, `Reboot` (again) |
//! | `Rebooting{slot, outcome}`, rebooted | `slot` (the old one) | idle | `Persist`, event `outcome` (`rolled-back{…}`) |
//! | `Rebooting{slot, outcome}`, rebooted | the other (still the failed one) | idle | `Persist`, event `failed{trial}` |
//! | `Trial{slot}` | `slot` | as without slots (resume or roll back, see `recover`) | |
//! | `Trial{slot}` | the other (crashed before the commit, the bootloader fell back) | idle | `Persist`, `BootSlot{booted}`, event `rolled-back{boot-failed}` |
//! | anything else | any | unchanged (the booted slot is remembered for the next install) | |
//!
//! And while running:
//!
//! | state | input | next | actions |
//! |---|---|---|---|
//! | installing | install ok | rebooting | `Persist` (Rebooting), event `rebooting`, `Reboot` |
//! | installing | install failed | idle | `Persist`, `BootSlot{booted}` (cancel the try), event `failed{install}` |
//! | rebooting | reboot command failed | idle | `Persist`, `BootSlot{booted}`, event `failed{install}` (or `failed{trial}` when rebooting back) |
//! | trial | probe failed / not yet N times / deadline | rebooting back | `Persist` (Rebooting{old slot, outcome}), `BootSlot{old}`, `Reboot` |
//! | trial | proven | idle | `Persist` (known-good, floor), `Commit` (mark the booted slot good), event `succeeded` |

use alloc::format;
use alloc::vec;
use core::fmt;
use core::str::FromStr;

use minicbor::{Decode, Encode};

use super::machine::UpdateMachine;
use super::state::{Phase, TrialState};
use super::{Action, InFlight, Job, Timestamp};
use crate::wire::{ExecutionState, FailurePhase, RollbackReason, WireLimits, truncate_text};

/// One of the two boot slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
#[cbor(index_only)]
pub enum Slot {
    /// Slot A.
    #[n(0)]
    A,
    /// Slot B.
    #[n(1)]
    B,
}

impl Slot {
    /// The slot's name as bootloaders and kernel command lines spell it (`A`, `B`).
    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "A",
            Slot::B => "B",
        }
    }

    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A slot name that is neither `A` nor `B` (in either case).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a boot slot (A or B): {0:?}")]
pub struct SlotNameError(pub alloc::string::String);

impl FromStr for Slot {
    type Err = SlotNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "A" | "a" => Ok(Slot::A),
            "B" | "b" => Ok(Slot::B),
            other => Err(SlotNameError(other.into())),
        }
    }
}

impl UpdateMachine {
    /// The shell observed which slot booted (kernel command line or bootloader environment).
    /// With [`Config::boot_slots`](super::Config::boot_slots) the shell calls it once at every
    /// start, before anything else; the [module table](self) says what follows. Without
    /// slots, or in a phase that does not wait for it, it only remembers the slot.
    pub fn handle_boot_observed(&mut self, slot: Slot, now: Timestamp) {
        self.booted = Some(slot);
        let Phase::Booting(in_flight) = &self.phase else {
            return;
        };
        let in_flight = in_flight.clone();
        match in_flight {
            InFlight::Installing {
                job,
                attempt,
                slot: target,
            } => {
                if target == Some(slot) {
                    self.start_trial(job, now);
                } else {
                    self.resume_install(job, attempt, now);
                }
            }
            InFlight::Rebooting {
                job,
                slot: target,
                boot_count,
                outcome,
            } => self.arrive(job, target, boot_count, outcome, slot, now),
            InFlight::Trial {
                job,
                slot: Some(target),
                ..
            } if target != slot => {
                self.phase = Phase::Idle;
                self.boot_failed(job, target, slot, now);
            }
            other => self.resume(other, now),
        }
    }

    /// A reboot requested in boot `boot_count` towards `target` and the slot that booted.
    fn arrive(
        &mut self,
        job: Job,
        target: Slot,
        boot_count: u32,
        outcome: Option<ExecutionState>,
        booted: Slot,
        now: Timestamp,
    ) {
        if boot_count == self.boot_count {
            // Only the agent restarted: the reboot never happened.
            self.phase = Phase::Rebooting {
                job,
                slot: target,
                boot_count,
                outcome: outcome.clone(),
            };
            if outcome.is_some() {
                self.push(Action::BootSlot { slot: target });
            }
            self.push(Action::Reboot);
            return;
        }
        match (outcome, booted == target) {
            (None, true) => self.start_trial(job, now),
            (None, false) => self.boot_failed(job, target, booted, now),
            (Some(outcome), true) => {
                self.running = self.known_good.clone();
                self.conclude(job.outcome(outcome, now.0), vec![], now);
            }
            (Some(_), false) => {
                self.running = Some(job.release.clone());
                let why = format!(
                    "the trial failed, but the bootloader booted slot {booted} again instead \
                     of slot {target}"
                );
                let state = ExecutionState::Failed {
                    phase: FailurePhase::Trial,
                    reason: truncate_text(&why, WireLimits::MAX_TEXT_BYTES),
                };
                self.conclude(job.outcome(state, now.0), vec![], now);
            }
        }
    }

    /// The bootloader brought `booted` back instead of `target` (the new system never came up,
    /// or crashed before its commit): `rolled-back{boot-failed}`, the booted slot stays good.
    fn boot_failed(&mut self, job: Job, target: Slot, booted: Slot, now: Timestamp) {
        self.running = self.known_good.clone();
        let why = format!(
            "slot {target} (release {}) did not come up to its commit; the bootloader booted \
             slot {booted} again",
            job.release.version
        );
        let state = ExecutionState::RolledBack {
            reason: RollbackReason::BootFailed,
            detail: truncate_text(&why, WireLimits::MAX_TEXT_BYTES),
        };
        let effects = vec![Action::BootSlot { slot: booted }];
        self.conclude(job.outcome(state, now.0), effects, now);
    }

    /// The slot install of `job` is done (written, read back, the try set): persist
    /// `Rebooting` (write-ahead), report `rebooting`, reboot.
    pub(super) fn reboot_into(&mut self, job: Job, slot: Slot, now: Timestamp) {
        self.stop_job_timers();
        self.phase = Phase::Rebooting {
            job: job.clone(),
            slot,
            boot_count: self.boot_count,
            outcome: None,
        };
        self.persist();
        self.announce(job.outcome(ExecutionState::Rebooting, now.0));
        self.push(Action::Reboot);
    }

    /// The trial on the new slot failed: persist `Rebooting` back to the old slot with the
    /// outcome to report there, make the old slot the bootloader's default, reboot.
    pub(super) fn reboot_back(&mut self, trial: &TrialState, outcome: ExecutionState) {
        let Some(slot) = trial.slot.map(Slot::other) else {
            return;
        };
        self.stop_job_timers();
        self.phase = Phase::Rebooting {
            job: trial.job.clone(),
            slot,
            boot_count: self.boot_count,
            outcome: Some(outcome),
        };
        self.persist();
        self.forget_observed();
        self.health = None;
        self.push(Action::BootSlot { slot });
        self.push(Action::Reboot);
    }

    /// The reboot command failed, answering [`Action::Reboot`]: the device stays on the slot
    /// it booted, which the bootloader keeps as its default (`BootSlot`), and the job ends
    /// `failed` (`install` for a reboot into a new release, `trial` for a reboot back).
    pub fn handle_reboot_failed(&mut self, reason: &str, now: Timestamp) {
        let Phase::Rebooting { job, outcome, .. } = &self.phase else {
            return;
        };
        let (job, back) = (job.clone(), outcome.is_some());
        let phase = if back {
            FailurePhase::Trial
        } else {
            FailurePhase::Install
        };
        let why = format!("the reboot command failed: {reason}");
        let state = ExecutionState::Failed {
            phase,
            reason: truncate_text(&why, WireLimits::MAX_TEXT_BYTES),
        };
        let effects = self
            .booted
            .map(|slot| vec![Action::BootSlot { slot }])
            .unwrap_or_default();
        self.conclude(job.outcome(state, now.0), effects, now);
    }
}

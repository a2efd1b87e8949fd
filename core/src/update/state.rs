//! The machine's in-memory state (what it is doing now) and the public status snapshot.

use alloc::string::String;
use alloc::vec::Vec;

use super::{InFlight, Job, ReleaseInfo, Slot, Timer, Timestamp};
use crate::wire::{ExecutionState, PowerReading, UpdateOutcome};

/// What the machine is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Nothing in flight.
    Idle,
    /// A job is accepted and not yet installing.
    Preparing(Prep),
    /// The installer runs (`slot`: the boot slot it writes, with boot slots).
    Installing {
        job: Job,
        attempt: u32,
        slot: Option<Slot>,
    },
    /// Boot slots: the device reboots into `slot` (`outcome: None`: the new release, to try
    /// it; `Some`: back to the old slot after a failed trial, `outcome` reported there).
    Rebooting {
        job: Job,
        slot: Slot,
        boot_count: u32,
        outcome: Option<ExecutionState>,
    },
    /// Boot slots, at start-up: the persisted operation waits for
    /// `handle_boot_observed` to say which slot booted.
    Booting(InFlight),
    /// The new release runs on trial.
    Trial(TrialState),
    /// The known-good release is being reinstalled.
    RollingBack {
        job: Job,
        target: ReleaseInfo,
        outcome: ExecutionState,
    },
}

impl Phase {
    /// The operation to persist for this phase.
    pub(crate) fn in_flight(&self) -> Option<InFlight> {
        match self {
            Phase::Idle => None,
            Phase::Preparing(p) => Some(InFlight::Pending { job: p.job.clone() }),
            Phase::Installing { job, attempt, slot } => Some(InFlight::Installing {
                job: job.clone(),
                attempt: *attempt,
                slot: *slot,
            }),
            Phase::Rebooting {
                job,
                slot,
                boot_count,
                outcome,
            } => Some(InFlight::Rebooting {
                job: job.clone(),
                slot: *slot,
                boot_count: *boot_count,
                outcome: outcome.clone(),
            }),
            Phase::Booting(in_flight) => Some(in_flight.clone()),
            Phase::Trial(t) => Some(InFlight::Trial {
                job: t.job.clone(),
                started_ms: t.started.0,
                deadline_ms: t.deadline.0,
                boot_count: t.boot_count,
                reboots: t.reboots,
                slot: t.slot,
            }),
            Phase::RollingBack {
                job,
                target,
                outcome,
            } => Some(InFlight::RollingBack {
                job: job.clone(),
                target: target.clone(),
                outcome: outcome.clone(),
            }),
        }
    }

    /// Whether a new desired state must wait for this phase to end (it cannot be interrupted).
    pub(crate) fn is_busy(&self) -> bool {
        matches!(
            self,
            Phase::Installing { .. }
                | Phase::Trial(_)
                | Phase::RollingBack { .. }
                | Phase::Rebooting { .. }
                | Phase::Booting(_)
        )
    }
}

/// A job between acceptance and install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Prep {
    pub(crate) job: Job,
    /// The artifact is in the cache and verified: no download needed.
    pub(crate) from_cache: bool,
    pub(crate) step: Step,
    pub(crate) download: DownloadState,
}

/// Where a [`Prep`] stands: which answer or timer it waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Waiting for `handle_cache_hashed`.
    HashCache,
    /// Waiting for `handle_power`.
    ReadPower,
    /// Power too low: waiting for `Timer::PowerRecheck` or a better `handle_power`.
    PowerDeferred,
    /// Outside the windows: waiting for `Timer::WindowOpen`.
    WindowDeferred,
    /// Waiting for `handle_disk`.
    CheckDisk,
    /// Not enough disk: waiting for `Timer::DiskRecheck`.
    DiskDeferred,
    /// Waiting for `handle_partial`.
    InspectPartial,
    /// Waiting for progress, completion or failure.
    Downloading { done: u64 },
    /// Waiting for `Timer::DownloadRetry`.
    RetryWait,
}

/// Retry bookkeeping of one job's download.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DownloadState {
    /// Transient failures so far.
    pub(crate) retries: u32,
    /// Index of the mirror in use.
    pub(crate) mirror: usize,
    /// Mirrors that served bytes failing verification: never asked again for this job.
    pub(crate) bad_mirrors: Vec<usize>,
    /// When and at how many bytes the last progress event was sent.
    pub(crate) last_progress: Option<(Timestamp, u64)>,
}

impl DownloadState {
    /// The next usable mirror after the current one (wrapping, the current one last), if any.
    pub(crate) fn next_mirror(&self, mirrors: usize) -> Option<usize> {
        (1..=mirrors)
            .map(|i| (self.mirror + i) % mirrors)
            .find(|m| !self.bad_mirrors.contains(m))
    }
}

/// A release on trial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TrialState {
    pub(crate) job: Job,
    pub(crate) started: Timestamp,
    pub(crate) deadline: Timestamp,
    pub(crate) boot_count: u32,
    pub(crate) reboots: u32,
    /// The boot slot the release runs from (boot slots only).
    pub(crate) slot: Option<Slot>,
    /// Whether the probe's latest answer was healthy.
    pub(crate) probe_passed: bool,
    pub(crate) probe_running: bool,
    /// "Not yet" answers in a row (not persisted: a restart counts afresh).
    pub(crate) probe_failures: u32,
    pub(crate) last_probe_error: Option<String>,
    /// The first heartbeat sequence number sent during this trial: only acks at or above it
    /// prove the server is reachable now.
    pub(crate) first_seq: Option<u64>,
    pub(crate) server_reached: bool,
}

impl TrialState {
    /// A trial of `job` from `started` to `deadline`, set in boot `boot_count` after `reboots`
    /// reboots, on boot slot `slot`: nothing proven yet (probe and heartbeat flags are never
    /// persisted, a trial proves itself again after every restart).
    pub(crate) fn new(
        job: Job,
        (started, deadline): (Timestamp, Timestamp),
        boot_count: u32,
        reboots: u32,
        slot: Option<Slot>,
    ) -> Self {
        TrialState {
            job,
            started,
            deadline,
            boot_count,
            reboots,
            slot,
            probe_passed: false,
            probe_running: false,
            probe_failures: 0,
            last_probe_error: None,
            first_seq: None,
            server_reached: false,
        }
    }
}

/// The machine's stage, for `ota-agent status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// Nothing in flight.
    Idle,
    /// Re-hashing a cached artifact.
    CheckingCache,
    /// Reading the power supply.
    ReadingPower,
    /// Waiting for power.
    DeferredPower,
    /// Waiting for a maintenance window.
    DeferredWindow,
    /// Measuring free disk space.
    CheckingDisk,
    /// Waiting for disk space.
    DeferredDisk,
    /// Downloading (or about to resume).
    Downloading {
        /// Bytes on disk.
        done: u64,
        /// Artifact size.
        total: u64,
    },
    /// Waiting to retry a failed download.
    RetryWait,
    /// Installing.
    Installing,
    /// On trial.
    Trial,
    /// Reinstalling the known-good release.
    RollingBack,
    /// Rebooting into a boot slot (the new release, or back to the old one).
    Rebooting,
    /// Started with a boot-slot operation in flight, waiting to learn which slot booted.
    Booting,
}

/// Trial details in a [`Status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrialStatus {
    /// The release on trial.
    pub release: ReleaseInfo,
    /// When the trial times out.
    pub deadline: Timestamp,
    /// When the minimum soak (`trial_min`) ends: the release commits no earlier.
    pub soak_end: Timestamp,
    /// The health probe's latest answer was healthy.
    pub probe_passed: bool,
    /// The last "not yet" of the probe.
    pub last_probe_error: Option<String>,
    /// The fleet server acknowledged a heartbeat sent during the trial.
    pub server_reached: bool,
}

/// A snapshot of the machine, for `ota-agent status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// What the machine is doing.
    pub stage: Stage,
    /// The job in flight.
    pub job: Option<Job>,
    /// The release running now.
    pub running: Option<ReleaseInfo>,
    /// The last committed release.
    pub known_good: Option<ReleaseInfo>,
    /// The security floor.
    pub security_floor: u32,
    /// The last desired-state generation acted on.
    pub last_generation: u64,
    /// A desired state waiting for the current install or trial to end.
    pub queued_generation: Option<u64>,
    /// The cache index, least recently used first.
    pub cache: Vec<ReleaseInfo>,
    /// The latest execution state (in progress or final).
    pub current: Option<UpdateOutcome>,
    /// The last final outcome.
    pub last_result: Option<UpdateOutcome>,
    /// Trial details, during a trial.
    pub trial: Option<TrialStatus>,
    /// The latest power reading.
    pub power: Option<PowerReading>,
    /// The health probe's latest answer about the running release, as heartbeats report it
    /// (`watch_health` only).
    pub healthy: Option<bool>,
    /// Whether the MQTT connection is up.
    pub connected: bool,
    /// The next timer to fire.
    pub next_timer: Option<(Timer, Timestamp)>,
}

impl Stage {
    /// The stage's stable kebab-case name.
    pub fn name(&self) -> &'static str {
        match self {
            Stage::Idle => "idle",
            Stage::CheckingCache => "checking-cache",
            Stage::ReadingPower => "reading-power",
            Stage::DeferredPower => "deferred-power",
            Stage::DeferredWindow => "deferred-window",
            Stage::CheckingDisk => "checking-disk",
            Stage::DeferredDisk => "deferred-disk",
            Stage::Downloading { .. } => "downloading",
            Stage::RetryWait => "retry-wait",
            Stage::Installing => "installing",
            Stage::Trial => "trial",
            Stage::RollingBack => "rolling-back",
            Stage::Rebooting => "rebooting",
            Stage::Booting => "booting",
        }
    }

    pub(crate) fn of(phase: &Phase) -> Stage {
        match phase {
            Phase::Idle => Stage::Idle,
            Phase::Preparing(p) => match p.step {
                Step::HashCache => Stage::CheckingCache,
                Step::ReadPower => Stage::ReadingPower,
                Step::PowerDeferred => Stage::DeferredPower,
                Step::WindowDeferred => Stage::DeferredWindow,
                Step::CheckDisk => Stage::CheckingDisk,
                Step::DiskDeferred => Stage::DeferredDisk,
                Step::InspectPartial => Stage::Downloading {
                    done: 0,
                    total: p.job.release.size,
                },
                Step::Downloading { done } => Stage::Downloading {
                    done,
                    total: p.job.release.size,
                },
                Step::RetryWait => Stage::RetryWait,
            },
            Phase::Installing { .. } => Stage::Installing,
            Phase::Trial(_) => Stage::Trial,
            Phase::RollingBack { .. } => Stage::RollingBack,
            Phase::Rebooting { .. } => Stage::Rebooting,
            Phase::Booting(_) => Stage::Booting,
        }
    }
}

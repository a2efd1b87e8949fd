//! What the agent persists (write-ahead, through [`super::Action::Persist`]) so that a crash or
//! power loss at any point resumes safely in [`super::UpdateMachine::recover`].

use alloc::string::String;
use alloc::vec::Vec;

use minicbor::{Decode, Encode};

use super::Slot;
use crate::digest::Digest;
use crate::release::{ChunkIndexRef, Limits, Manifest};
use crate::wire::codec::bound as limit;
use crate::wire::{
    ExecutionState, RunningRelease, Transfer, UpdateOutcome, WireError, WireLimits, WireMessage,
};

/// The format version of [`PersistedState`] (key `0`), independent of the protocol version.
pub const PERSIST_VERSION: u16 = 1;

/// A release the device knows: enough to install it from the cache and to report it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct ReleaseInfo {
    /// The manifest's version string.
    #[n(0)]
    pub version: String,
    /// The artifact's digest (its name in the cache, `cache/<digest>`).
    #[n(1)]
    pub digest: Digest,
    /// The manifest's security version.
    #[n(2)]
    pub security_version: u32,
    /// The artifact's size in bytes.
    #[n(3)]
    pub size: u64,
    /// The manifest's installer hint.
    #[n(4)]
    pub installer: Option<String>,
    /// The signed reference to the artifact's chunk index, when the release has one (a delta
    /// download fetches only the chunks the device lacks).
    #[n(5)]
    pub chunk_index: Option<ChunkIndexRef>,
}

impl ReleaseInfo {
    /// The release a (verified) manifest describes.
    pub fn from_manifest(m: &Manifest) -> Self {
        ReleaseInfo {
            version: m.version.clone(),
            digest: m.artifact_digest(),
            security_version: m.security_version,
            size: m.artifact_size,
            installer: m.installer.clone(),
            chunk_index: m.chunk_index,
        }
    }

    /// The release as reported on the wire.
    pub fn running(&self) -> RunningRelease {
        RunningRelease {
            version: self.version.clone(),
            digest: self.digest,
            security_version: self.security_version,
        }
    }

    fn check_limits(&self) -> Result<(), WireError> {
        limit(
            "release version",
            self.version.len(),
            Limits::MAX_NAME_BYTES,
        )?;
        let installer = self.installer.as_ref().map_or(0, String::len);
        limit("installer hint", installer, Limits::MAX_INSTALLER_BYTES)
    }
}

/// An accepted desired state: a verified release and where to fetch it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Job {
    /// The desired state's generation.
    #[n(0)]
    pub generation: u64,
    /// The desired state's rollout id.
    #[n(1)]
    pub rollout_id: Option<String>,
    /// The verified release.
    #[n(2)]
    pub release: ReleaseInfo,
    /// The artifact mirrors, in order.
    #[n(3)]
    #[cbor(default)]
    pub urls: Vec<String>,
    /// Whether the desired state forced a reinstall.
    #[n(4)]
    #[cbor(default)]
    pub force: bool,
    /// What the download cost, once the artifact is in the cache (none when it was already
    /// cached).
    #[n(5)]
    pub transfer: Option<Transfer>,
}

impl Job {
    /// An outcome of this job.
    pub fn outcome(&self, state: ExecutionState, at: u64) -> UpdateOutcome {
        UpdateOutcome {
            generation: self.generation,
            rollout_id: self.rollout_id.clone(),
            digest: Some(self.release.digest),
            state,
            at,
            transfer: self.transfer,
        }
    }

    fn check_limits(&self) -> Result<(), WireError> {
        self.release.check_limits()?;
        let id = self.rollout_id.as_ref().map_or(0, String::len);
        limit("rollout id", id, WireLimits::MAX_ID_BYTES)?;
        limit("artifact URL list", self.urls.len(), WireLimits::MAX_URLS)?;
        for url in &self.urls {
            limit("artifact URL", url.len(), WireLimits::MAX_URL_BYTES)?;
        }
        Ok(())
    }
}

/// The operation in flight when the state was persisted.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub enum InFlight {
    /// Accepted, not yet installing: checking the cache, waiting on a gate (power, window,
    /// disk), or downloading. Recovery re-runs the gates and resumes the partial download.
    #[n(0)]
    Pending {
        /// The job.
        #[n(0)]
        job: Job,
    },
    /// Installing `job` (attempt number `attempt`, 1-based). Recovery redoes the install from
    /// the cache until `max_install_attempts`, then rolls back.
    #[n(1)]
    Installing {
        /// The job.
        #[n(0)]
        job: Job,
        /// Which attempt this is.
        #[n(1)]
        attempt: u32,
        /// The boot slot being written (boot slots only).
        #[n(2)]
        slot: Option<Slot>,
    },
    /// Installed and on trial. The deadline is wall time plus the boot it was set in, never a
    /// monotonic instant.
    #[n(2)]
    Trial {
        /// The job.
        #[n(0)]
        job: Job,
        /// When the trial (or its restart after an untrustworthy clock) began, unix ms.
        #[n(1)]
        started_ms: u64,
        /// When the trial times out, unix ms.
        #[n(2)]
        deadline_ms: u64,
        /// The boot count the deadline was set in.
        #[n(3)]
        boot_count: u32,
        /// Reboots the trial has survived.
        #[n(4)]
        reboots: u32,
        /// The boot slot the release runs from (boot slots only).
        #[n(5)]
        slot: Option<Slot>,
    },
    /// Reinstalling `target` (the known-good release) after `job` failed; `outcome` is reported
    /// once it is back.
    #[n(3)]
    RollingBack {
        /// The job that failed.
        #[n(0)]
        job: Job,
        /// The release being reinstalled.
        #[n(1)]
        target: ReleaseInfo,
        /// The final state to report when the rollback is done.
        #[n(2)]
        outcome: ExecutionState,
    },
    /// Boot slots: the reboot into `slot` was requested in boot `boot_count`. `outcome: None`:
    /// `slot` holds the new release (written, read back, tried once by the bootloader);
    /// `Some`: the trial failed and `slot` is the old one, `outcome` is reported once it runs.
    #[n(4)]
    Rebooting {
        /// The job.
        #[n(0)]
        job: Job,
        /// The slot the device reboots into.
        #[n(1)]
        slot: Slot,
        /// The boot count when the reboot was requested (the same count after a restart:
        /// the reboot never happened).
        #[n(2)]
        boot_count: u32,
        /// The final state to report once back on the old slot (a failed trial).
        #[n(3)]
        outcome: Option<ExecutionState>,
    },
}

impl InFlight {
    /// The job in flight.
    pub fn job(&self) -> &Job {
        match self {
            InFlight::Pending { job }
            | InFlight::Installing { job, .. }
            | InFlight::Trial { job, .. }
            | InFlight::RollingBack { job, .. }
            | InFlight::Rebooting { job, .. } => job,
        }
    }
}

/// Everything the update machine must not forget across a crash or reboot. The shell stores
/// every [`super::Action::Persist`] atomically (write to a temporary file, fsync, rename)
/// before it performs the actions that follow it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct PersistedState {
    /// Format version ([`PERSIST_VERSION`]).
    #[n(0)]
    pub v: u16,
    /// The security floor: releases below it are refused. Rises on every commit.
    #[n(1)]
    pub security_floor: u32,
    /// The release running now (`None`: unknown, e.g. a factory-fresh device).
    #[n(2)]
    pub running: Option<ReleaseInfo>,
    /// The last committed release: what a rollback reinstalls. Never evicted from the cache.
    #[n(3)]
    pub known_good: Option<ReleaseInfo>,
    /// The cache index, least recently used first. Each entry is a verified artifact at
    /// `cache/<digest>`.
    #[n(4)]
    #[cbor(default)]
    pub cache: Vec<ReleaseInfo>,
    /// The last desired-state generation acted on (duplicates and replays at or below it are
    /// ignored).
    #[n(5)]
    #[cbor(default)]
    pub last_generation: u64,
    /// The operation in flight.
    #[n(6)]
    pub in_flight: Option<InFlight>,
    /// The last final outcome, re-published after a restart until the server has it (reports
    /// are idempotent).
    #[n(7)]
    pub last_result: Option<UpdateOutcome>,
}

impl PersistedState {
    /// Most cache entries a persisted state may list.
    pub const MAX_CACHE_ENTRIES: usize = WireLimits::MAX_CACHED;
}

impl WireMessage for PersistedState {
    const NAME: &'static str = "persisted state";
    const VERSION: u16 = PERSIST_VERSION;

    fn check_limits(&self) -> Result<(), WireError> {
        for r in [&self.running, &self.known_good].into_iter().flatten() {
            r.check_limits()?;
        }
        limit("cache index", self.cache.len(), Self::MAX_CACHE_ENTRIES)?;
        for r in &self.cache {
            r.check_limits()?;
        }
        if let Some(f) = &self.in_flight {
            f.job().check_limits()?;
        }
        Ok(())
    }
}

/// The format version of [`FloorRecord`] (key `0`).
pub const FLOOR_VERSION: u16 = 1;

/// What must survive the loss of the journal (issue 19.7): the security floor, the running and
/// known-good releases and the generation watermark. The shell keeps it in a file of its own
/// beside the journal, written atomically after every journal write that changes it, and reads
/// it at start-up through [`FloorRecord::reconcile`].
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct FloorRecord {
    /// Format version ([`FLOOR_VERSION`]).
    #[n(0)]
    pub v: u16,
    /// The security floor. Never lowered: at start-up the higher of this and the journal's
    /// floor is in force.
    #[n(1)]
    pub security_floor: u32,
    /// The release running.
    #[n(2)]
    pub running: Option<ReleaseInfo>,
    /// The last committed release.
    #[n(3)]
    pub known_good: Option<ReleaseInfo>,
    /// The last desired-state generation acted on.
    #[n(4)]
    #[cbor(default)]
    pub last_generation: u64,
}

impl FloorRecord {
    /// The record of a persisted state.
    pub fn of(state: &PersistedState) -> Self {
        FloorRecord {
            v: FLOOR_VERSION,
            security_floor: state.security_floor,
            running: state.running.clone(),
            known_good: state.known_good.clone(),
            last_generation: state.last_generation,
        }
    }

    /// The state to recover from, given what the journal and the floor record hold at start-up:
    ///
    /// | journal | floor record | recovered from |
    /// |---|---|---|
    /// | a state | none | the journal (a record is written from it) |
    /// | a state | a record | the journal, its floor raised to the record's if that is higher (a journal restored from an older copy never lowers the floor) |
    /// | none (both copies lost) | a record | the record: floor, running and known-good releases and generation; cache index = those two releases (each re-hashed before any install); nothing in flight |
    /// | none | none | nothing: a factory-fresh device |
    pub fn reconcile(
        journal: Option<PersistedState>,
        floor: Option<&FloorRecord>,
    ) -> Option<PersistedState> {
        match (journal, floor) {
            (Some(mut state), Some(f)) => {
                state.security_floor = state.security_floor.max(f.security_floor);
                Some(state)
            }
            (Some(state), None) => Some(state),
            (None, Some(f)) => {
                let mut cache: Vec<ReleaseInfo> = Vec::new();
                for r in [&f.known_good, &f.running].into_iter().flatten() {
                    if !cache.iter().any(|c| c.digest == r.digest) {
                        cache.push(r.clone());
                    }
                }
                Some(PersistedState {
                    v: PERSIST_VERSION,
                    security_floor: f.security_floor,
                    running: f.running.clone(),
                    known_good: f.known_good.clone(),
                    cache,
                    last_generation: f.last_generation,
                    in_flight: None,
                    last_result: None,
                })
            }
            (None, None) => None,
        }
    }
}

impl WireMessage for FloorRecord {
    const NAME: &'static str = "floor record";
    const VERSION: u16 = FLOOR_VERSION;

    fn check_limits(&self) -> Result<(), WireError> {
        for r in [&self.running, &self.known_good].into_iter().flatten() {
            r.check_limits()?;
        }
        Ok(())
    }
}

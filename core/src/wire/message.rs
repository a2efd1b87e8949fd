//! The payloads: desired state, reported state, events, heartbeats and status.
//!
//! Every struct is a CBOR map with integer keys (`#[n(k)]`); key `0` is always the version `v`.
//! Key numbers are forever: a field may be added (optional, or with a default) under a new key,
//! never renumbered.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use minicbor::{Decode, Encode};

use super::codec::{bound, name, rollout_id, text};
use super::{DeviceId, PROTOCOL_VERSION, WireError, WireLimits, WireMessage};
use crate::digest::Digest;
use crate::fleet::RolloutId;
use crate::release::ReleaseError;

/// What the fleet server wants a device to run (`ota/v1/devices/{id}/desired`, retained).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct DesiredState {
    /// Protocol version ([`PROTOCOL_VERSION`]).
    #[n(0)]
    pub v: u16,
    /// Monotonic per device, set by the server. A device ignores a desired state whose
    /// generation is not above the last one it acted on (QoS 1 duplicates, replays).
    #[n(1)]
    pub generation: u64,
    /// The rollout this desired state belongs to, if any (echoed in events).
    #[n(2)]
    pub rollout_id: Option<String>,
    /// The signed release bytes (a COSE_Sign envelope), verified by the device.
    #[cbor(n(3), with = "minicbor::bytes")]
    pub release: Vec<u8>,
    /// HTTP(S) URLs serving the artifact, tried in order. Untrusted: the signed digest checks
    /// the bytes.
    #[n(4)]
    #[cbor(default)]
    pub artifact_urls: Vec<String>,
    /// Reinstall even if the device already runs this release.
    #[n(5)]
    #[cbor(default)]
    pub force_reinstall: bool,
}

impl WireMessage for DesiredState {
    const NAME: &'static str = "desired state";

    fn check_limits(&self) -> Result<(), WireError> {
        rollout_id(self.rollout_id.as_ref())?;
        bound(
            "embedded release",
            self.release.len(),
            WireLimits::MAX_RELEASE_BYTES,
        )?;
        bound(
            "artifact URL list",
            self.artifact_urls.len(),
            WireLimits::MAX_URLS,
        )?;
        for url in &self.artifact_urls {
            bound("artifact URL", url.len(), WireLimits::MAX_URL_BYTES)?;
        }
        Ok(())
    }
}

/// A release as a device reports it: enough to name it in a fleet view.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct RunningRelease {
    /// The manifest's version string.
    #[n(0)]
    pub version: String,
    /// The artifact digest.
    #[n(1)]
    pub digest: Digest,
    /// The manifest's security version.
    #[n(2)]
    pub security_version: u32,
}

impl RunningRelease {
    fn check_limits(&self) -> Result<(), WireError> {
        name("release version", &self.version)
    }
}

/// A device's power supply, as the agent read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Encode, Decode)]
#[cbor(map)]
pub struct PowerReading {
    /// Battery charge, 0 to 100; `None` when the device has no battery (mains powered).
    #[n(0)]
    pub battery_percent: Option<u8>,
    /// The battery is charging.
    #[n(1)]
    #[cbor(default)]
    pub charging: bool,
    /// An external supply (charger, mains adapter) is online.
    #[n(2)]
    #[cbor(default)]
    pub mains_online: bool,
}

impl PowerReading {
    /// A device without a battery: mains powered.
    pub const MAINS: PowerReading = PowerReading {
        battery_percent: None,
        charging: false,
        mains_online: true,
    };

    fn check_limits(&self) -> Result<(), WireError> {
        bound(
            "battery percent",
            usize::from(self.battery_percent.unwrap_or(0)),
            100,
        )
    }
}

/// Host facts in a reported state (filled by the agent shell).
#[derive(Debug, Clone, PartialEq, Eq, Default, Encode, Decode)]
#[cbor(map)]
pub struct Inventory {
    /// Operating system name and version.
    #[n(0)]
    #[cbor(default)]
    pub os: String,
    /// Kernel version.
    #[n(1)]
    #[cbor(default)]
    pub kernel: String,
    /// CPU architecture (e.g. `aarch64`).
    #[n(2)]
    #[cbor(default)]
    pub arch: String,
    /// Host name.
    #[n(3)]
    #[cbor(default)]
    pub hostname: String,
    /// Total memory, bytes.
    #[n(4)]
    #[cbor(default)]
    pub memory_total: u64,
    /// Free space on the cache's disk, bytes.
    #[n(5)]
    #[cbor(default)]
    pub disk_free: u64,
}

impl Inventory {
    fn check_limits(&self) -> Result<(), WireError> {
        name("os", &self.os)?;
        name("kernel", &self.kernel)?;
        name("arch", &self.arch)?;
        name("hostname", &self.hostname)
    }
}

/// Why a device refused a release before fetching anything (from [`ReleaseError`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
#[cbor(index_only)]
pub enum RejectCause {
    /// The release bytes are malformed (or trailing bytes, or an unknown format version).
    #[n(0)]
    Malformed,
    /// The release exceeds a size bound.
    #[n(1)]
    TooLarge,
    /// A signature uses an unsupported algorithm.
    #[n(2)]
    UnsupportedAlgorithm,
    /// No signature is by a trusted key.
    #[n(3)]
    UnknownKey,
    /// A signature by a trusted key does not verify.
    #[n(4)]
    BadSignature,
    /// Fewer trusted keys signed than the threshold.
    #[n(5)]
    ThresholdNotMet,
    /// The release expired.
    #[n(6)]
    Expired,
    /// The release is not for this hardware class.
    #[n(7)]
    IncompatibleHardware,
    /// The release's security version is below the device's floor (anti-rollback).
    #[n(8)]
    Downgrade,
    /// Any other cause (see the detail text).
    #[n(9)]
    Other,
    /// The desired state's generation jumps more than
    /// [`MAX_GENERATION_STEP`](crate::update::MAX_GENERATION_STEP) above the last one the
    /// device acted on: accepting it would let one message end the device's updates for good
    /// (nothing newer than `u64::MAX` exists). The device keeps its generation.
    #[n(10)]
    GenerationJump,
    /// Both copies of the device's journal are damaged and no floor record can stand in for
    /// them: the agent runs without updating (it cannot know its security floor or what it
    /// runs) until an operator repairs it (`docs/agent.md`). Its reported state's last result
    /// says so too.
    #[n(11)]
    JournalDamaged,
}

impl RejectCause {
    /// The cause's stable kebab-case name (events, logs, CLI, JSON, docs/protocol.md).
    pub fn name(self) -> &'static str {
        match self {
            RejectCause::Malformed => "malformed",
            RejectCause::TooLarge => "too-large",
            RejectCause::UnsupportedAlgorithm => "unsupported-algorithm",
            RejectCause::UnknownKey => "unknown-key",
            RejectCause::BadSignature => "bad-signature",
            RejectCause::ThresholdNotMet => "threshold-not-met",
            RejectCause::Expired => "expired",
            RejectCause::IncompatibleHardware => "incompatible-hardware",
            RejectCause::Downgrade => "downgrade",
            RejectCause::Other => "other",
            RejectCause::GenerationJump => "generation-jump",
            RejectCause::JournalDamaged => "journal-damaged",
        }
    }
}

impl From<&ReleaseError> for RejectCause {
    fn from(e: &ReleaseError) -> Self {
        match e {
            ReleaseError::Malformed(_)
            | ReleaseError::TrailingData(_)
            | ReleaseError::UnsupportedFormat(_) => RejectCause::Malformed,
            ReleaseError::LimitExceeded { .. } => RejectCause::TooLarge,
            ReleaseError::UnsupportedAlgorithm(_) => RejectCause::UnsupportedAlgorithm,
            ReleaseError::UnknownKey => RejectCause::UnknownKey,
            ReleaseError::BadSignature(_) => RejectCause::BadSignature,
            ReleaseError::ThresholdNotMet { .. } => RejectCause::ThresholdNotMet,
            ReleaseError::Expired { .. } => RejectCause::Expired,
            ReleaseError::IncompatibleHardware => RejectCause::IncompatibleHardware,
            ReleaseError::Downgrade { .. } => RejectCause::Downgrade,
            _ => RejectCause::Other,
        }
    }
}

/// The phase an update failed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
#[cbor(index_only)]
pub enum FailurePhase {
    /// Fetching the artifact (every mirror and retry exhausted).
    #[n(0)]
    Download,
    /// The artifact's bytes did not match the signed digest or size: a tampered mirror, or a
    /// cached copy that failed its re-hash just before an install or a rollback (nothing was
    /// installed then).
    #[n(1)]
    Verify,
    /// The installer failed (the known-good release was reinstalled if there is one).
    #[n(2)]
    Install,
    /// The trial failed and no known-good release was there to roll back to.
    #[n(3)]
    Trial,
}

impl FailurePhase {
    /// The phase's stable kebab-case name (events, logs, CLI, JSON, docs/protocol.md).
    pub fn name(self) -> &'static str {
        match self {
            FailurePhase::Download => "download",
            FailurePhase::Verify => "verify",
            FailurePhase::Install => "install",
            FailurePhase::Trial => "trial",
        }
    }
}

/// Why a trial ended in a rollback to the known-good release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
#[cbor(index_only)]
pub enum RollbackReason {
    /// The health probe failed definitively.
    #[n(0)]
    ProbeFailed,
    /// The health probe had not passed when the trial timed out.
    #[n(1)]
    ProbeTimeout,
    /// The fleet server never acknowledged a heartbeat before the trial timed out.
    #[n(2)]
    ServerUnreachable,
    /// The device rebooted during the trial (more often than allowed).
    #[n(3)]
    RebootDuringTrial,
    /// The trial deadline passed while the agent or the device was down.
    #[n(4)]
    TrialTimeout,
    /// Boot slots: the new slot never came up to its commit (it did not boot, or crashed or
    /// hung before the commit) and the bootloader booted the old slot again.
    #[n(5)]
    BootFailed,
}

impl RollbackReason {
    /// The reason's stable kebab-case name (events, logs, CLI, JSON, docs/protocol.md).
    pub fn name(self) -> &'static str {
        match self {
            RollbackReason::ProbeFailed => "probe-failed",
            RollbackReason::ProbeTimeout => "probe-timeout",
            RollbackReason::ServerUnreachable => "server-unreachable",
            RollbackReason::RebootDuringTrial => "reboot-during-trial",
            RollbackReason::TrialTimeout => "trial-timeout",
            RollbackReason::BootFailed => "boot-failed",
        }
    }
}

/// One execution state of a device for a desired state. The same enum is used in events, in
/// the reported state's last result, and by the server for its per-device execution states
/// (which adds [`Queued`](Self::Queued) and [`TimedOut`](Self::TimedOut), never sent by an agent).
///
/// The enum is closed within a protocol version: a newer variant from a newer agent is a decode
/// error for an older server, so servers are upgraded before agents.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub enum ExecutionState {
    /// Server side only: the device is in a rollout wave but has not been sent the desired state.
    #[n(0)]
    Queued,
    /// The device received and verified the desired state and will act on it.
    #[n(1)]
    Notified,
    /// Waiting for power (battery low, charger needed).
    #[n(2)]
    DeferredPower {
        /// The power reading that blocked the update.
        #[n(0)]
        reading: PowerReading,
    },
    /// Waiting for a maintenance window.
    #[n(3)]
    DeferredWindow {
        /// When the next window opens, unix ms (`None`: no window ever opens).
        #[n(0)]
        opens_at: Option<u64>,
    },
    /// Waiting for disk space.
    #[n(4)]
    DeferredDisk {
        /// Bytes needed (artifact size plus margin).
        #[n(0)]
        needed: u64,
        /// Bytes free.
        #[n(1)]
        free: u64,
    },
    /// Downloading the artifact.
    #[n(5)]
    Downloading {
        /// Bytes downloaded so far.
        #[n(0)]
        done: u64,
        /// The artifact size.
        #[n(1)]
        total: u64,
    },
    /// Installing.
    #[n(6)]
    Installing,
    /// Installed and on trial (health probe and server heartbeat pending).
    #[n(7)]
    Trial,
    /// Committed: the release is the new known-good one. Final.
    #[n(8)]
    Succeeded,
    /// The release is the one already running: nothing was downloaded. Final, a success.
    #[n(9)]
    SkippedIdentical,
    /// The release was refused before anything was fetched. Final.
    #[n(10)]
    Rejected {
        /// The cause, for aggregation.
        #[n(0)]
        cause: RejectCause,
        /// The verifier's message.
        #[n(1)]
        detail: String,
    },
    /// The update failed. Final.
    #[n(11)]
    Failed {
        /// Where it failed.
        #[n(0)]
        phase: FailurePhase,
        /// A human-readable reason.
        #[n(1)]
        reason: String,
    },
    /// The trial failed and the known-good release was reinstalled. Final.
    #[n(12)]
    RolledBack {
        /// Why.
        #[n(0)]
        reason: RollbackReason,
        /// A human-readable detail.
        #[n(1)]
        detail: String,
    },
    /// Server side only: the device did not finish in the rollout's time budget.
    #[n(13)]
    TimedOut,
    /// Boot slots: the new release is written to the slot not booted and read back, the
    /// bootloader tries it once, and the device reboots into it. Not final: the device reports
    /// `trial` and then `succeeded` only from the new slot, or `rolled-back{boot-failed}`
    /// from the old one.
    #[n(14)]
    Rebooting,
}

impl ExecutionState {
    /// The state's stable kebab-case name (logs, CLI, docs).
    pub fn name(&self) -> &'static str {
        match self {
            ExecutionState::Queued => "queued",
            ExecutionState::Notified => "notified",
            ExecutionState::DeferredPower { .. } => "deferred-power",
            ExecutionState::DeferredWindow { .. } => "deferred-window",
            ExecutionState::DeferredDisk { .. } => "deferred-disk",
            ExecutionState::Downloading { .. } => "downloading",
            ExecutionState::Installing => "installing",
            ExecutionState::Trial => "trial",
            ExecutionState::Succeeded => "succeeded",
            ExecutionState::SkippedIdentical => "skipped-identical",
            ExecutionState::Rejected { .. } => "rejected",
            ExecutionState::Failed { .. } => "failed",
            ExecutionState::RolledBack { .. } => "rolled-back",
            ExecutionState::TimedOut => "timed-out",
            ExecutionState::Rebooting => "rebooting",
        }
    }

    /// Whether the state ends the device's work on a desired state.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            ExecutionState::Succeeded
                | ExecutionState::SkippedIdentical
                | ExecutionState::Rejected { .. }
                | ExecutionState::Failed { .. }
                | ExecutionState::RolledBack { .. }
                | ExecutionState::TimedOut
        )
    }

    /// Whether the state is a final success (succeeded or skipped-identical).
    pub fn is_success(&self) -> bool {
        matches!(
            self,
            ExecutionState::Succeeded | ExecutionState::SkippedIdentical
        )
    }

    fn check_limits(&self) -> Result<(), WireError> {
        match self {
            ExecutionState::DeferredPower { reading } => reading.check_limits(),
            ExecutionState::Rejected { detail: t, .. }
            | ExecutionState::Failed { reason: t, .. }
            | ExecutionState::RolledBack { detail: t, .. } => text("reason", t),
            _ => Ok(()),
        }
    }
}

/// A device's execution state for one desired state, with what it refers to.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct UpdateOutcome {
    /// The desired state's generation.
    #[n(0)]
    pub generation: u64,
    /// The desired state's rollout id.
    #[n(1)]
    pub rollout_id: Option<String>,
    /// The release's artifact digest (absent when the release could not be decoded).
    #[n(2)]
    pub digest: Option<Digest>,
    /// The execution state.
    #[n(3)]
    pub state: ExecutionState,
    /// When the device entered the state, unix ms.
    #[n(4)]
    pub at: u64,
    /// What the download cost, once the artifact is in the device's cache (absent when
    /// nothing was downloaded for this desired state).
    #[n(5)]
    pub transfer: Option<Transfer>,
}

/// What downloading an artifact cost: bytes fetched over the network (a delta update fetches
/// only the chunks the device lacked, plus the chunk index) against the artifact's full size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Encode, Decode)]
#[cbor(map)]
pub struct Transfer {
    /// Body bytes received over the network, chunk index included.
    #[n(0)]
    pub fetched: u64,
    /// The artifact's signed size.
    #[n(1)]
    pub size: u64,
}

impl Transfer {
    /// Bytes a full download would have fetched beyond what was fetched (0 when the delta
    /// cost more, which the agent avoids).
    pub fn saved(&self) -> u64 {
        self.size.saturating_sub(self.fetched)
    }
}

impl UpdateOutcome {
    /// The rollout this outcome answers, when its `rollout_id` is a fleet server's rollout id
    /// (`None` when it carries none, or one that is not a positive decimal integer).
    pub fn rollout(&self) -> Option<RolloutId> {
        self.rollout_id.as_deref().and_then(|r| r.parse().ok())
    }

    fn check_limits(&self) -> Result<(), WireError> {
        rollout_id(self.rollout_id.as_ref())?;
        self.state.check_limits()
    }
}

/// A device's state as the fleet sees it (`ota/v1/devices/{id}/reported`, retained). The agent
/// republishes it whole whenever it changes and on every (re)connect.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct ReportedState {
    /// Protocol version ([`PROTOCOL_VERSION`]).
    #[n(0)]
    pub v: u16,
    /// The device id (the server checks it equals the topic's).
    #[n(1)]
    pub device_id: String,
    /// The agent's version.
    #[n(2)]
    pub agent_version: String,
    /// The device's hardware class.
    #[n(3)]
    pub hardware_class: String,
    /// The release running now.
    #[n(4)]
    pub running: Option<RunningRelease>,
    /// The last committed release (what a rollback reinstalls).
    #[n(5)]
    pub known_good: Option<RunningRelease>,
    /// The release on trial, if any (then equal to `running`).
    #[n(6)]
    pub trial: Option<RunningRelease>,
    /// Digests in the device's local artifact cache.
    #[n(7)]
    #[cbor(default)]
    pub cached: Vec<Digest>,
    /// The latest execution state (in progress or final) of the last desired state acted on.
    #[n(8)]
    pub last_result: Option<UpdateOutcome>,
    /// The latest power reading.
    #[n(9)]
    pub power: Option<PowerReading>,
    /// Host facts.
    #[n(10)]
    #[cbor(default)]
    pub inventory: Inventory,
    /// Free-form labels from the agent's configuration (cohort selection).
    #[n(11)]
    #[cbor(default)]
    pub labels: BTreeMap<String, String>,
    /// The last desired-state generation the device acted on.
    #[n(12)]
    #[cbor(default)]
    pub generation: u64,
    /// The device's security floor (anti-rollback).
    #[n(13)]
    #[cbor(default)]
    pub security_floor: u32,
}

impl ReportedState {
    /// The highest desired-state generation this report says the device acted on: its own
    /// generation or its last result's (a fleet server accepts the report only if it issued
    /// that generation to the device).
    pub fn acknowledged_generation(&self) -> u64 {
        self.last_result
            .as_ref()
            .map_or(self.generation, |o| o.generation.max(self.generation))
    }
}

impl WireMessage for ReportedState {
    const NAME: &'static str = "reported state";

    fn check_limits(&self) -> Result<(), WireError> {
        DeviceId::check(&self.device_id)?;
        name("agent version", &self.agent_version)?;
        name("hardware class", &self.hardware_class)?;
        for r in [&self.running, &self.known_good, &self.trial]
            .into_iter()
            .flatten()
        {
            r.check_limits()?;
        }
        bound("cached list", self.cached.len(), WireLimits::MAX_CACHED)?;
        if let Some(outcome) = &self.last_result {
            outcome.check_limits()?;
        }
        if let Some(power) = &self.power {
            power.check_limits()?;
        }
        self.inventory.check_limits()?;
        bound("labels", self.labels.len(), WireLimits::MAX_LABELS)?;
        for (k, v) in &self.labels {
            name("label key", k)?;
            bound("label value", v.len(), WireLimits::MAX_LABEL_VALUE_BYTES)?;
        }
        Ok(())
    }
}

/// A progress or state event (`ota/v1/devices/{id}/events`, not retained).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Event {
    /// Protocol version ([`PROTOCOL_VERSION`]).
    #[n(0)]
    pub v: u16,
    /// The device id.
    #[n(1)]
    pub device_id: String,
    /// The desired state's generation.
    #[n(2)]
    pub generation: u64,
    /// The desired state's rollout id.
    #[n(3)]
    pub rollout_id: Option<String>,
    /// When, unix ms.
    #[n(4)]
    pub at: u64,
    /// The execution state entered.
    #[n(5)]
    pub kind: ExecutionState,
    /// The release's artifact digest, when known.
    #[n(6)]
    pub digest: Option<Digest>,
    /// What the download cost, once the artifact is in the device's cache.
    #[n(7)]
    pub transfer: Option<Transfer>,
}

impl Event {
    /// The event announcing `outcome` for a device.
    pub fn from_outcome(device_id: &DeviceId, outcome: &UpdateOutcome) -> Self {
        Event {
            v: PROTOCOL_VERSION,
            device_id: String::from(device_id.as_str()),
            generation: outcome.generation,
            rollout_id: outcome.rollout_id.clone(),
            at: outcome.at,
            kind: outcome.state.clone(),
            digest: outcome.digest,
            transfer: outcome.transfer,
        }
    }

    /// The event as an outcome (what the server stores per device and generation).
    pub fn outcome(&self) -> UpdateOutcome {
        UpdateOutcome {
            generation: self.generation,
            rollout_id: self.rollout_id.clone(),
            digest: self.digest,
            state: self.kind.clone(),
            at: self.at,
            transfer: self.transfer,
        }
    }
}

impl WireMessage for Event {
    const NAME: &'static str = "event";

    fn check_limits(&self) -> Result<(), WireError> {
        DeviceId::check(&self.device_id)?;
        rollout_id(self.rollout_id.as_ref())?;
        self.kind.check_limits()
    }
}

/// A device's heartbeat (`ota/v1/devices/{id}/heartbeat`, not retained).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Heartbeat {
    /// Protocol version ([`PROTOCOL_VERSION`]).
    #[n(0)]
    pub v: u16,
    /// Sequence number, echoed by the server's [`HeartbeatAck`].
    #[n(1)]
    pub seq: u64,
    /// When it was sent, unix ms.
    #[n(2)]
    pub at: u64,
    /// The health probe's latest answer about the running release (`true`: healthy), when the
    /// agent watches health (a probe is configured); absent otherwise. After a commit it keeps
    /// coming, so the fleet server's bake gate sees health, not just presence.
    #[n(3)]
    pub healthy: Option<bool>,
}

impl WireMessage for Heartbeat {
    const NAME: &'static str = "heartbeat";

    fn check_limits(&self) -> Result<(), WireError> {
        Ok(())
    }
}

/// The server's echo of a heartbeat (`ota/v1/devices/{id}/heartbeat/ack`, not retained): proof
/// that the fleet server itself, not only the broker, is reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct HeartbeatAck {
    /// Protocol version ([`PROTOCOL_VERSION`]).
    #[n(0)]
    pub v: u16,
    /// The heartbeat's sequence number.
    #[n(1)]
    pub seq: u64,
}

impl WireMessage for HeartbeatAck {
    const NAME: &'static str = "heartbeat ack";

    fn check_limits(&self) -> Result<(), WireError> {
        Ok(())
    }
}

/// Online or offline (`ota/v1/devices/{id}/status`, retained). The agent publishes online after
/// connecting; its MQTT last will publishes offline (with `at` = the connect time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Status {
    /// Protocol version ([`PROTOCOL_VERSION`]).
    #[n(0)]
    pub v: u16,
    /// Whether the agent is connected.
    #[n(1)]
    pub online: bool,
    /// When, unix ms.
    #[n(2)]
    pub at: u64,
}

impl WireMessage for Status {
    const NAME: &'static str = "status";

    fn check_limits(&self) -> Result<(), WireError> {
        Ok(())
    }
}

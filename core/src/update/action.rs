//! What the machine asks the shell to do.

use alloc::boxed::Box;
use alloc::string::String;

use super::{PersistedState, ReleaseInfo, Slot};
use crate::digest::Digest;
use crate::release::ChunkIndexRef;
use crate::wire::Event;

/// One thing the shell must do, in the order [`super::UpdateMachine::poll_action`] returns
/// them. Each request is answered (if at all) through the `handle_*` method named in its doc.
///
/// Ordering is part of the contract: a [`Persist`](Action::Persist) comes before the side
/// effect it protects (write-ahead), so the shell must finish storing it before it performs any
/// later action.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Store this state durably (atomically replacing the previous one) before going on.
    Persist(Box<PersistedState>),
    /// Publish this event on `events` (QoS 1, not retained). Queue it while offline.
    PublishEvent(Event),
    /// Publish a fresh [`super::UpdateMachine::reported_state`] on `reported` (QoS 1,
    /// retained). Several in a row may be coalesced into one.
    PublishReported,
    /// Read the power supply; answer with `handle_power`.
    ReadPower,
    /// Measure free space on the cache's disk; answer with `handle_disk`.
    CheckDisk {
        /// Bytes the download needs (artifact size plus the configured margin).
        needed: u64,
    },
    /// Re-hash `cache/<digest>` (it must be `size` bytes and hash to `digest`); answer with
    /// `handle_cache_hashed`.
    HashCached {
        /// The cached artifact.
        digest: Digest,
        /// Its signed size.
        size: u64,
    },
    /// Report how many bytes of the partial download of `digest` are on disk; answer with
    /// `handle_partial`.
    InspectPartial {
        /// The artifact.
        digest: Digest,
    },
    /// Download the artifact from `url` into the partial file of `digest`, keeping its first
    /// `resume_from` bytes (truncating anything after them) and fetching the rest with an HTTP
    /// Range request. Hash while writing with an [`crate::release::ArtifactVerifier`]; on
    /// success move the file to `cache/<digest>`. Answer with `handle_download_progress`,
    /// then `handle_download_complete` or `handle_download_failed`.
    Download {
        /// The mirror to use (untrusted).
        url: String,
        /// The signed digest.
        digest: Digest,
        /// The signed size.
        size: u64,
        /// Bytes already on disk to keep.
        resume_from: u64,
        /// The signed chunk index of the artifact, when the release has one: fetch the index
        /// beside the artifact, copy the chunks the device already holds, and fetch only the
        /// rest (falling back to a full download on any failure).
        chunk_index: Option<ChunkIndexRef>,
    },
    /// Stop any transfer of `digest` and delete its partial file.
    DiscardPartial {
        /// The artifact.
        digest: Digest,
    },
    /// Install `release` from `cache/<digest>` and activate it; answer with
    /// `handle_install_done`. No network is needed. The shell first re-hashes the cached file
    /// against the release's digest and size, every time (a rollback too): a mismatch installs
    /// nothing and is answered with [`super::InstallError::CorruptArtifact`].
    Install {
        /// The release.
        release: ReleaseInfo,
        /// Whether this reinstalls the known-good release after a failure.
        rollback: bool,
        /// Boot slots: the slot to write (always the one not booted). The `ab` installer
        /// streams the artifact into it, reads it back against the digest, then sets the
        /// bootloader to try it once.
        slot: Option<Slot>,
    },
    /// Boot slots: run the reboot command. The device reboots into the slot the bootloader
    /// was told to try (or to boot); a command that fails is answered with
    /// `handle_reboot_failed`, and after the reboot the shell answers with
    /// `handle_boot_observed`.
    Reboot,
    /// Boot slots: make `slot` the bootloader's default and cancel any pending try of the
    /// other one (keep the old slot good after a fallback, go back to it after a failed
    /// trial). Idempotent.
    BootSlot {
        /// The slot to boot from now on.
        slot: Slot,
    },
    /// The trial passed: make `digest` permanent (the `ab` installer marks the booted slot
    /// good in the bootloader). Idempotent; a no-op for installers without a bootloader.
    Commit {
        /// The committed release.
        digest: Digest,
    },
    /// Delete `cache/<digest>` (already removed from the persisted index).
    Evict {
        /// The artifact.
        digest: Digest,
    },
    /// Run the health probe against the release on trial; answer with `handle_probe`.
    RunProbe {
        /// The release on trial.
        digest: Digest,
    },
    /// Run the health probe against the running release after its commit (`watch_health`);
    /// answer with `handle_health`.
    CheckHealth {
        /// The running release.
        digest: Digest,
    },
    /// Publish a heartbeat with this sequence number (if still connected); the server's ack
    /// comes back through `handle_heartbeat_ack`.
    SendHeartbeat {
        /// The sequence number.
        seq: u64,
        /// The health probe's latest answer about the running release (`watch_health` only).
        healthy: Option<bool>,
    },
    /// Find out which release the installer actually runs (the files installer's `current`
    /// link) and answer with `handle_observed_running`; an installer that cannot tell answers
    /// `None`.
    ObserveRunning,
}

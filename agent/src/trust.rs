//! Key rotation on the device: the trust record and the updates from `ota/v1/trust`.
//!
//! The fleet server publishes the last accepted signed trust-set update, retained, on
//! [`TRUST_TOPIC`]. The agent verifies each delivery against the trust set it has (the
//! configured keys, or the last accepted update) with core's [`TrustState`]: `k` current keys
//! must have signed it and its sequence must be above the current one. An accepted update is
//! stored first, atomically, as `<data_dir>/trust` (the envelope bytes: `trust.tmp`, fsync,
//! rename, fsync of the directory), then put in force; from then on the record overrides the
//! configured keys, also after a restart. A refused update changes nothing. Either way the
//! agent answers with a [`TrustReport`] (`trust-rotated` or `trust-rejected` and its cause).
//!
//! The same update delivered again (the retained message on every reconnect) is ignored
//! silently; an *older* one is refused as `stale`. A record that is world-writable or does not
//! decode stops the agent at start: falling back to the configured keys would bring revoked
//! keys back.

use std::path::{Path, PathBuf};

use ota_core::release::{SignedTrustUpdate, TrustSet, TrustState, TrustUpdateError};
use ota_core::wire::{
    DeviceId, TRUST_TOPIC, TrustOutcome, TrustRejectCause, TrustReport, WireLimits, truncate_text,
};

use crate::config::is_world_writable;
use crate::storage::{SharedStorage, replace_file};

/// The trust record's name in the data directory.
pub const FILE_NAME: &str = "trust";
/// The temporary file written before the rename.
const TEMP_NAME: &str = "trust.tmp";

/// Why the trust record cannot be used at start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustFileError {
    /// The record exists but cannot be read.
    #[error("cannot read the trust record {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The record is not a trust-set update this build reads.
    #[error("bad trust record {path}: {source}")]
    Format {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: TrustUpdateError,
    },
    /// Every user may write the record: anyone on the device could make the agent trust their
    /// key. `chmod o-w` it.
    #[error("{path} is world-writable: refusing to trust it (chmod o-w {path})")]
    WorldWritable {
        /// The file.
        path: PathBuf,
    },
}

/// What handling one delivery on [`TRUST_TOPIC`] gave.
#[derive(Debug)]
pub(crate) struct Handled {
    /// The report to publish.
    pub(crate) report: TrustReport,
    /// The new trust set, when the update was accepted.
    pub(crate) rotated: Option<TrustSet>,
}

/// The agent's trust state and its record.
#[derive(Debug)]
pub(crate) struct TrustFile {
    storage: SharedStorage,
    dir: PathBuf,
    device: DeviceId,
    state: TrustState,
}

impl TrustFile {
    /// The trust state of the device: the record in `dir` if there is one, else `configured`.
    pub(crate) fn open(
        storage: SharedStorage,
        dir: &Path,
        device: DeviceId,
        configured: TrustSet,
    ) -> Result<Self, TrustFileError> {
        let path = dir.join(FILE_NAME);
        let state = match storage.len(&path) {
            Ok(None) => TrustState::initial(configured),
            Ok(Some(_)) => {
                if is_world_writable(&path) {
                    return Err(TrustFileError::WorldWritable { path });
                }
                let bytes = storage.read(&path).map_err(|source| TrustFileError::Read {
                    path: path.clone(),
                    source,
                })?;
                TrustState::from_record(&bytes)
                    .map_err(|source| TrustFileError::Format { path, source })?
            }
            Err(source) => return Err(TrustFileError::Read { path, source }),
        };
        Ok(TrustFile {
            storage,
            dir: dir.to_path_buf(),
            device,
            state,
        })
    }

    /// The trust state in force.
    pub(crate) fn state(&self) -> &TrustState {
        &self.state
    }

    /// Handles one payload from [`TRUST_TOPIC`] at `now_ms`: `None` for an empty payload (a
    /// cleared retained message) or the update in force delivered again.
    pub(crate) fn on_payload(&mut self, payload: &[u8], now_ms: u64) -> Option<Handled> {
        if payload.is_empty() {
            return None;
        }
        let offered = SignedTrustUpdate::decode(payload)
            .ok()
            .map(|s| s.update.sequence);
        if offered.is_some_and(|s| s == self.state.sequence()) && self.state.sequence() > 0 {
            tracing::debug!(sequence = ?offered, "the trust set in force, delivered again");
            return None;
        }
        let rejected = |cause: TrustRejectCause, detail: String| TrustOutcome::Rejected {
            cause,
            detail: truncate_text(&detail, WireLimits::MAX_TEXT_BYTES),
        };
        let (outcome, rotated) = match self.state.check(payload) {
            Err(e) => {
                tracing::warn!(topic = TRUST_TOPIC, "trust-set update refused: {e}");
                (rejected(TrustRejectCause::from(&e), e.to_string()), None)
            }
            Ok(rotation) => {
                match replace_file(&*self.storage, &self.dir, FILE_NAME, TEMP_NAME, payload) {
                    Err(e) => {
                        let detail = format!(
                            "cannot {} {}: {}; the trust set is unchanged",
                            e.op,
                            e.path.display(),
                            e.source
                        );
                        tracing::error!("{detail}");
                        (rejected(TrustRejectCause::Storage, detail), None)
                    }
                    Ok(()) => {
                        let set = rotation.next.set().clone();
                        let signers: Vec<String> =
                            rotation.signers.iter().map(ToString::to_string).collect();
                        self.state.accept(rotation);
                        tracing::info!(
                            sequence = self.state.sequence(),
                            keys = set.keys().count(),
                            threshold = set.threshold(),
                            signed_by = ?signers,
                            "trust set rotated"
                        );
                        let outcome = TrustOutcome::Rotated {
                            keys: u32::try_from(set.keys().count()).unwrap_or(u32::MAX),
                            threshold: u32::try_from(set.threshold()).unwrap_or(u32::MAX),
                        };
                        (outcome, Some(set))
                    }
                }
            }
        };
        Some(Handled {
            report: TrustReport::new(
                &self.device,
                now_ms,
                offered,
                self.state.sequence(),
                outcome,
            ),
            rotated,
        })
    }
}

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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ota_core::release::{SigningKey, TrustUpdate, sign_trust_update};

    use super::*;
    use crate::storage::{Fault, FaultyStorage, FsStorage};

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn set(seed: u8) -> TrustSet {
        TrustSet::new(vec![key(seed).verifying_key()], 1).unwrap()
    }

    /// {1} → {2}, sequence 1, signed by 1.
    fn rotation() -> Vec<u8> {
        let update = TrustUpdate::new(1, &[key(2).verifying_key()], 1, 0);
        sign_trust_update(&update, &[key(1)])
    }

    fn device() -> DeviceId {
        DeviceId::new("gw-1").unwrap()
    }

    fn open(storage: SharedStorage, dir: &Path) -> Result<TrustFile, TrustFileError> {
        TrustFile::open(storage, dir, device(), set(1))
    }

    #[test]
    fn issue7_a_rotation_is_persisted_and_loaded_at_start_and_a_duplicate_is_silent() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = open(FsStorage::shared(), dir.path()).unwrap();
        let handled = file.on_payload(&rotation(), 5).unwrap();
        assert_eq!(handled.rotated, Some(set(2)));
        assert!(matches!(
            handled.report.outcome,
            TrustOutcome::Rotated { .. }
        ));
        assert_eq!(
            (handled.report.offered, handled.report.sequence),
            (Some(1), 1)
        );
        assert!(file.on_payload(&rotation(), 6).is_none(), "redelivery");
        assert!(
            file.on_payload(&[], 6).is_none(),
            "cleared retained message"
        );
        let reopened = open(FsStorage::shared(), dir.path()).unwrap();
        assert_eq!(reopened.state().sequence(), 1);
        assert_eq!(reopened.state().set(), &set(2));
    }

    #[test]
    fn issue7_a_refused_update_changes_nothing_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = open(FsStorage::shared(), dir.path()).unwrap();
        let by_stranger = sign_trust_update(
            &TrustUpdate::new(1, &[key(3).verifying_key()], 1, 0),
            &[key(3)],
        );
        for (bytes, cause) in [
            (by_stranger, TrustRejectCause::UnknownKey),
            (b"junk".to_vec(), TrustRejectCause::Malformed),
        ] {
            let handled = file.on_payload(&bytes, 1).unwrap();
            assert!(handled.rotated.is_none());
            assert!(
                matches!(handled.report.outcome, TrustOutcome::Rejected { cause: c, .. } if c == cause)
            );
            assert_eq!(file.state().sequence(), 0);
        }
        assert!(!dir.path().join(FILE_NAME).exists(), "nothing written");
    }

    #[test]
    fn issue7_a_damaged_or_world_writable_record_stops_the_agent() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, b"damaged").unwrap();
        assert!(matches!(
            open(FsStorage::shared(), dir.path()),
            Err(TrustFileError::Format { .. })
        ));
        std::fs::write(&path, rotation()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(matches!(
            open(FsStorage::shared(), dir.path()),
            Err(TrustFileError::WorldWritable { .. })
        ));
    }

    /// Under a failure or a power loss at every write step, the agent keeps its set and reports
    /// `storage`; after a restart it finds the old set or the whole new one.
    #[test]
    fn issue7_the_record_is_old_or_new_under_every_fault() {
        let total = {
            let dir = tempfile::tempdir().unwrap();
            let faulty = Arc::new(FaultyStorage::new());
            let mut file = open(faulty.clone(), dir.path()).unwrap();
            assert!(file.on_payload(&rotation(), 1).unwrap().rotated.is_some());
            faulty.mutations()
        };
        assert!(
            total >= 5,
            "write, write, fsync, rename, fsync dir: {total}"
        );
        for fault in Fault::ALL {
            for n in 1..=total {
                let dir = tempfile::tempdir().unwrap();
                let faulty = Arc::new(FaultyStorage::with_fault(n, fault));
                let mut file = open(faulty.clone(), dir.path()).unwrap();
                let handled = file.on_payload(&rotation(), 1).unwrap();
                assert!(handled.rotated.is_none(), "{fault:?} at {n}");
                assert!(matches!(
                    handled.report.outcome,
                    TrustOutcome::Rejected {
                        cause: TrustRejectCause::Storage,
                        ..
                    }
                ));
                assert_eq!(file.state().sequence(), 0);
                let after = open(FsStorage::shared(), dir.path()).unwrap();
                let (sequence, trusted) = (after.state().sequence(), after.state().set().clone());
                assert!(
                    (sequence, &trusted) == (0, &set(1)) || (sequence, &trusted) == (1, &set(2)),
                    "{fault:?} at {n}/{total}: {sequence}"
                );
            }
        }
    }
}

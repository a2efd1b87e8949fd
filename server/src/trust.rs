//! Key rotation on the fleet server: the trust set in force and how it changes.
//!
//! The server starts from the configured `[trust]` keys, or from the newest accepted update
//! in the database (`trust_updates`), which overrides them. `POST /api/v1/trust` hands it a
//! signed trust-set update; [`FleetTrust::rotate`] verifies it against the set in force (core's
//! [`TrustState`]: `k` current keys signed it, its sequence is above the current one), stores it
//! with its `trust-rotated` audit event in one transaction, and only then puts it in force: every
//! release published from then on is verified against the new set. The fleet coordinator
//! republishes the stored update, retained, on `ota/v1/trust` (after each rotation and each
//! broker reconnect). The server never holds a signing key: it can relay an update, not make
//! one.

use std::sync::{Arc, RwLock};

use ota_core::release::{TrustSet, TrustState, TrustUpdateError};
use ota_core::wire::TrustRejectCause;
use serde::Serialize;
use serde_json::json;

use crate::db::{Db, DbError, NewEvent};
use crate::event_kinds::EventKind;

/// Why the trust set could not be loaded or rotated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// The update is refused (the trust set in force is unchanged).
    #[error("{source}")]
    Refused {
        /// Why.
        #[source]
        source: TrustUpdateError,
    },
    /// The stored update does not decode (the database was edited by hand or is damaged).
    #[error("the stored trust-set update does not decode: {0}")]
    Corrupt(#[source] TrustUpdateError),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl TrustError {
    /// The refusal's cause, if it is one.
    pub fn cause(&self) -> Option<TrustRejectCause> {
        match self {
            TrustError::Refused { source } => Some(TrustRejectCause::from(source)),
            _ => None,
        }
    }
}

/// The trust set in force, as `GET /api/v1/trust` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrustView {
    /// The sequence of the update in force (0: the configured `[trust]` keys).
    pub sequence: u64,
    /// How many keys must sign a release.
    pub threshold: usize,
    /// The key ids (hex, first 16 bytes of the SHA-256 of the raw public key).
    pub keys: Vec<String>,
    /// Whether the set comes from an accepted update (`false`: the configuration).
    pub rotated: bool,
}

#[derive(Debug)]
struct Current {
    state: TrustState,
    /// The signed bytes of the update in force (`None`: the configured keys).
    payload: Option<Vec<u8>>,
}

/// The fleet's trust set, shared by the HTTP handlers; cheap to clone.
#[derive(Debug, Clone)]
pub struct FleetTrust {
    current: Arc<RwLock<Current>>,
    /// Serializes rotations (verify, store, switch).
    rotating: Arc<tokio::sync::Mutex<()>>,
}

impl FleetTrust {
    /// The trust set in force: the newest stored update, else `configured`.
    pub async fn load(configured: TrustSet, db: &Db) -> Result<Self, TrustError> {
        let payload = db.latest_trust_update().await?;
        let state = match &payload {
            Some(bytes) => TrustState::from_record(bytes).map_err(TrustError::Corrupt)?,
            None => TrustState::initial(configured),
        };
        Ok(FleetTrust {
            current: Arc::new(RwLock::new(Current { state, payload })),
            rotating: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    fn read<T>(&self, f: impl FnOnce(&Current) -> T) -> T {
        // A poisoned lock still holds a consistent value: writers only assign whole values.
        let guard = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&guard)
    }

    /// The trust set releases are verified against now.
    pub fn set(&self) -> TrustSet {
        self.read(|c| c.state.set().clone())
    }

    /// The signed bytes of the update in force, to publish on `ota/v1/trust` (`None`: never
    /// rotated).
    pub fn payload(&self) -> Option<Vec<u8>> {
        self.read(|c| c.payload.clone())
    }

    /// The set in force, for display.
    pub fn view(&self) -> TrustView {
        self.read(|c| TrustView {
            sequence: c.state.sequence(),
            threshold: c.state.set().threshold(),
            keys: c.state.set().keys().map(|(id, _)| id.to_string()).collect(),
            rotated: c.payload.is_some(),
        })
    }

    /// Verifies `bytes` against the set in force, stores the update and its `trust-rotated`
    /// audit event (by `actor`, at `now` unix seconds), then puts it in force. A refused update
    /// changes nothing (the caller records the refusal).
    pub async fn rotate(
        &self,
        db: &Db,
        bytes: &[u8],
        now: i64,
        actor: &str,
    ) -> Result<TrustView, TrustError> {
        let _one_at_a_time = self.rotating.lock().await;
        let current = self.read(|c| c.state.clone());
        let rotation = current
            .check(bytes)
            .map_err(|source| TrustError::Refused { source })?;
        let next = rotation.next.clone();
        let signers: Vec<String> = rotation.signers.iter().map(ToString::to_string).collect();
        let mut tx = db.begin().await?;
        tx.insert_trust_update(next.sequence(), bytes, now, actor)
            .await?;
        let event = NewEvent::new(now, actor, EventKind::TrustRotated).details(json!({
            "sequence": next.sequence(),
            "previous_sequence": current.sequence(),
            "threshold": next.set().threshold(),
            "keys": next.set().keys().map(|(id, _)| id.to_string()).collect::<Vec<_>>(),
            "signed_by": signers,
        }));
        tx.append_event(&event).await?;
        tx.commit().await?;
        {
            let mut guard = self
                .current
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            guard.state = next;
            guard.payload = Some(bytes.to_vec());
        }
        Ok(self.view())
    }

    /// Puts in force the newest update in `db` if it is newer than the one in force: another
    /// replica accepted it (issue 15, `docs/ha.md`; standbys refresh at every lease attempt).
    pub async fn refresh(&self, db: &Db) -> Result<(), TrustError> {
        let _one_at_a_time = self.rotating.lock().await;
        let Some(bytes) = db.latest_trust_update().await? else {
            return Ok(());
        };
        if self.read(|c| c.payload.as_deref() == Some(bytes.as_slice())) {
            return Ok(());
        }
        let state = TrustState::from_record(&bytes).map_err(TrustError::Corrupt)?;
        if state.sequence() <= self.read(|c| c.state.sequence()) {
            return Ok(());
        }
        let mut guard = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.state = state;
        guard.payload = Some(bytes);
        Ok(())
    }
}

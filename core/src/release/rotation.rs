//! Key rotation: a trust-set update (new keys and threshold) signed by `k` of the current keys.
//!
//! It travels in the same COSE_Sign envelope as a release, with its own content type
//! ([`TRUST_UPDATE_CONTENT_TYPE`]) so that neither can be passed off as the other. Its
//! `sequence` must grow: a replayed older update is refused. A device verifies it against the
//! trust set it has, then persists the new set and uses it from then on; keys left out are
//! revoked.

use alloc::vec::Vec;

use ed25519_dalek::{SigningKey, VerifyingKey};
use minicbor::bytes::ByteArray;
use minicbor::{Decode, Encode};

use super::envelope::Envelope;
use super::sign::sign_payload;
use super::verify::verify_signers;
use super::{KeyId, Limits, ReleaseError, SignatureEntry, TrustSet, TrustSetError};

/// The content type of a trust-set update envelope.
pub const TRUST_UPDATE_CONTENT_TYPE: &str = "application/vnd.ota.trust-set+cbor";

/// The trust-set update format version this build writes and reads.
pub const TRUST_UPDATE_FORMAT_VERSION: u16 = 1;

/// The signed content of a trust-set update (CBOR map, integer keys).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct TrustUpdate {
    /// Format version ([`TRUST_UPDATE_FORMAT_VERSION`]).
    #[n(0)]
    pub format_version: u16,
    /// Monotonic sequence number: a device accepts only a sequence above the one it has.
    #[n(1)]
    pub sequence: u64,
    /// The new ed25519 public keys (raw 32 bytes each).
    #[n(2)]
    pub keys: Vec<ByteArray<32>>,
    /// The new threshold `k`.
    #[n(3)]
    pub threshold: u32,
    /// Creation time, unix seconds (informational).
    #[n(4)]
    pub created: u64,
}

impl TrustUpdate {
    /// An update to `keys` with threshold `threshold` and sequence `sequence`.
    pub fn new(sequence: u64, keys: &[VerifyingKey], threshold: u32, created: u64) -> Self {
        TrustUpdate {
            format_version: TRUST_UPDATE_FORMAT_VERSION,
            sequence,
            keys: keys.iter().map(|k| ByteArray::from(k.to_bytes())).collect(),
            threshold,
            created,
        }
    }

    /// The trust set this update describes, checked (valid points, no duplicates, possible
    /// threshold).
    pub fn trust_set(&self) -> Result<TrustSet, TrustUpdateError> {
        let keys = self
            .keys
            .iter()
            .map(|k| VerifyingKey::from_bytes(k))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| TrustUpdateError::InvalidKey)?;
        let threshold = usize::try_from(self.threshold).unwrap_or(usize::MAX);
        TrustSet::new(keys, threshold).map_err(TrustUpdateError::InvalidTrustSet)
    }
}

/// Why a trust-set update was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrustUpdateError {
    /// The envelope or its signatures failed (malformed, unknown key, bad signature, threshold
    /// not met under the *current* trust set).
    #[error("trust-set update refused: {0}")]
    Envelope(ReleaseError),
    /// The payload is not a trust-set update of a known format.
    #[error("trust-set update refused: malformed content")]
    Malformed,
    /// The format version is not one this build understands.
    #[error("trust-set update refused: unsupported format version {0}")]
    UnsupportedFormat(u16),
    /// The sequence is not above the device's (a replayed or stale update).
    #[error("trust-set update refused: sequence {sequence} is not above the current {current}")]
    Stale {
        /// The update's sequence.
        sequence: u64,
        /// The device's current sequence.
        current: u64,
    },
    /// A key of the new set is not a valid ed25519 public key.
    #[error("trust-set update refused: a new key is not a valid ed25519 public key")]
    InvalidKey,
    /// The new set itself is unusable (impossible threshold, duplicate key, too many keys).
    #[error("trust-set update refused: {0}")]
    InvalidTrustSet(TrustSetError),
}

/// A decoded, not yet verified trust-set update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedTrustUpdate {
    /// The update as decoded (unverified until [`SignedTrustUpdate::verify`] succeeds).
    pub update: TrustUpdate,
    body_protected: Vec<u8>,
    payload: Vec<u8>,
    signatures: Vec<SignatureEntry>,
}

impl SignedTrustUpdate {
    /// Decodes a trust-set update envelope (bounded like a release).
    pub fn decode(bytes: &[u8]) -> Result<Self, TrustUpdateError> {
        let envelope = Envelope::decode(bytes, TRUST_UPDATE_CONTENT_TYPE)
            .map_err(TrustUpdateError::Envelope)?;
        let update: TrustUpdate =
            minicbor::decode(envelope.payload).map_err(|_| TrustUpdateError::Malformed)?;
        if update.keys.len() > Limits::MAX_TRUSTED_KEYS {
            return Err(TrustUpdateError::InvalidTrustSet(
                TrustSetError::TooManyKeys(Limits::MAX_TRUSTED_KEYS),
            ));
        }
        Ok(SignedTrustUpdate {
            update,
            body_protected: envelope.body_protected.to_vec(),
            payload: envelope.payload.to_vec(),
            signatures: envelope.signatures,
        })
    }

    /// Verifies the update against the device's `current` trust set and sequence: `k` distinct
    /// current keys must have signed it, its sequence must be above `current_sequence`, and the
    /// new set must be usable. Returns the new trust set and the signers.
    pub fn verify(
        &self,
        current: &TrustSet,
        current_sequence: u64,
    ) -> Result<(TrustSet, Vec<KeyId>), TrustUpdateError> {
        let signers = verify_signers(
            &self.body_protected,
            &self.payload,
            &self.signatures,
            current,
        )
        .map_err(TrustUpdateError::Envelope)?;
        if self.update.format_version != TRUST_UPDATE_FORMAT_VERSION {
            return Err(TrustUpdateError::UnsupportedFormat(
                self.update.format_version,
            ));
        }
        if self.update.sequence <= current_sequence {
            return Err(TrustUpdateError::Stale {
                sequence: self.update.sequence,
                current: current_sequence,
            });
        }
        Ok((self.update.trust_set()?, signers))
    }
}

/// Signs a trust-set update with every key in `keys` (which must be `k` of the current keys for
/// devices to accept it) and returns the encoded envelope.
pub fn sign_trust_update(update: &TrustUpdate, keys: &[SigningKey]) -> Vec<u8> {
    // Encoding into a Vec cannot fail: the writer is infallible.
    let payload = minicbor::to_vec(update).unwrap_or_default();
    sign_payload(TRUST_UPDATE_CONTENT_TYPE, &payload, keys)
}

/// The trust set in force and the sequence of the update that installed it (`0`: the
/// configured set, no update accepted yet). What a device and the fleet server keep.
///
/// Applying an update is two-phase so that a shell persists before it switches:
/// [`check`](Self::check) verifies without changing anything, the shell stores the update's
/// bytes, then [`accept`](Self::accept) switches. A rejected update changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustState {
    set: TrustSet,
    sequence: u64,
}

/// An update that [`TrustState::check`] verified, not yet in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustRotation {
    /// The state once the update is accepted.
    pub next: TrustState,
    /// The current keys that signed the update.
    pub signers: Vec<KeyId>,
}

impl TrustState {
    /// The configured trust set, before any update (sequence 0).
    pub fn initial(set: TrustSet) -> Self {
        TrustState { set, sequence: 0 }
    }

    /// The state a previously accepted update installed, from its stored envelope bytes.
    ///
    /// The signatures are not checked again (they were checked against a set that may have
    /// been rotated away since): the record is trusted as the holder's own file, and must be
    /// protected like the configuration.
    pub fn from_record(bytes: &[u8]) -> Result<Self, TrustUpdateError> {
        let update = SignedTrustUpdate::decode(bytes)?.update;
        if update.format_version != TRUST_UPDATE_FORMAT_VERSION {
            return Err(TrustUpdateError::UnsupportedFormat(update.format_version));
        }
        Ok(TrustState {
            set: update.trust_set()?,
            sequence: update.sequence,
        })
    }

    /// The trust set releases (and the next update) are verified against.
    pub fn set(&self) -> &TrustSet {
        &self.set
    }

    /// The sequence of the update in force (`0`: none yet).
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// Decodes and verifies an update (envelope bytes) against this state; changes nothing.
    pub fn check(&self, bytes: &[u8]) -> Result<TrustRotation, TrustUpdateError> {
        let signed = SignedTrustUpdate::decode(bytes)?;
        let (set, signers) = signed.verify(&self.set, self.sequence)?;
        Ok(TrustRotation {
            next: TrustState {
                set,
                sequence: signed.update.sequence,
            },
            signers,
        })
    }

    /// Puts a checked update in force (after the shell persisted it).
    pub fn accept(&mut self, rotation: TrustRotation) {
        *self = rotation.next;
    }
}

//! The trust set: the ed25519 public keys a device (or the fleet server) accepts, and how many
//! of them must sign.

use alloc::vec::Vec;
use core::fmt;

use ed25519_dalek::VerifyingKey;

use super::Limits;
use crate::digest::Digest;

/// A key id: the first 16 bytes of the SHA-256 of the raw 32-byte ed25519 public key. Carried in
/// each COSE_Signature's unprotected `kid` header; it only routes a signature to a key, it is
/// never trusted by itself.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub [u8; 16]);

impl KeyId {
    /// The key id of a public key.
    pub fn of(key: &VerifyingKey) -> Self {
        let d = Digest::of(key.as_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(d.0.get(..16).unwrap_or(&[0u8; 16]));
        KeyId(id)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// Why a trust set cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrustSetError {
    /// The threshold is zero or larger than the number of keys.
    #[error("threshold {threshold} is impossible with {keys} keys (need 1..={keys})")]
    BadThreshold {
        /// The requested threshold.
        threshold: usize,
        /// The number of distinct keys.
        keys: usize,
    },
    /// The same key is listed twice (it would otherwise count twice toward the threshold).
    #[error("key {0} is listed twice")]
    DuplicateKey(KeyId),
    /// More keys than [`Limits::MAX_TRUSTED_KEYS`].
    #[error("too many keys: at most {0}")]
    TooManyKeys(usize),
}

/// Trusted ed25519 keys and the threshold `k`: a release is valid with valid signatures from `k`
/// distinct keys of the set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustSet {
    keys: Vec<(KeyId, VerifyingKey)>,
    threshold: usize,
}

impl TrustSet {
    /// A trust set of `keys` with threshold `threshold`.
    pub fn new(keys: Vec<VerifyingKey>, threshold: usize) -> Result<Self, TrustSetError> {
        if keys.len() > Limits::MAX_TRUSTED_KEYS {
            return Err(TrustSetError::TooManyKeys(Limits::MAX_TRUSTED_KEYS));
        }
        let mut entries: Vec<(KeyId, VerifyingKey)> = Vec::with_capacity(keys.len());
        for key in keys {
            let id = KeyId::of(&key);
            if entries.iter().any(|(_, k)| *k == key) {
                return Err(TrustSetError::DuplicateKey(id));
            }
            entries.push((id, key));
        }
        if threshold == 0 || threshold > entries.len() {
            return Err(TrustSetError::BadThreshold {
                threshold,
                keys: entries.len(),
            });
        }
        Ok(TrustSet {
            keys: entries,
            threshold,
        })
    }

    /// The threshold `k`.
    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// The trusted keys with their ids.
    pub fn keys(&self) -> impl Iterator<Item = (&KeyId, &VerifyingKey)> {
        self.keys.iter().map(|(id, k)| (id, k))
    }

    /// The trusted key with this key id, if any.
    pub fn key(&self, kid: &[u8]) -> Option<(KeyId, &VerifyingKey)> {
        self.keys
            .iter()
            .find(|(id, _)| id.0.as_slice() == kid)
            .map(|(id, k)| (*id, k))
    }
}

//! The deterministic **TEST-ONLY** signing keys.
//!
//! Each key's 32-byte ed25519 seed is the SHA-256 of a fixed, public label, e.g.
//! `SHA-256("ota TEST-ONLY key A — never use in production")`. Anyone can recompute them: they
//! prove nothing about who signed, and must never be trusted by a real device or server.

use ed25519_dalek::{SigningKey, VerifyingKey};
use ota_core::release::KeyId;
use sha2::{Digest as _, Sha256};

/// One of the four deterministic TEST-ONLY keys. **Never use in production**: the seeds are
/// public.
///
/// `A`, `B` and `C` form the fixtures' trust set ([`crate::trust_set`]); `Unknown` is never
/// trusted (it signs `unknown-key.release`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TestKey {
    /// `test-only-a`: trusted; signs most fixtures.
    A,
    /// `test-only-b`: trusted; signs `v2-again.release`.
    B,
    /// `test-only-c`: trusted; co-signs `v2-threshold-2of3.release` with A.
    C,
    /// `test-only-unknown`: NOT in the trust set; signs `unknown-key.release`.
    Unknown,
}

impl TestKey {
    /// Every test-only key, trusted ones first.
    pub const ALL: [TestKey; 4] = [TestKey::A, TestKey::B, TestKey::C, TestKey::Unknown];

    /// The keys of the fixtures' trust set (a, b, c).
    pub const TRUSTED: [TestKey; 3] = [TestKey::A, TestKey::B, TestKey::C];

    /// The key's name, also the stem of its files under `keys/` (e.g. `test-only-a`).
    pub fn name(self) -> &'static str {
        match self {
            TestKey::A => "test-only-a",
            TestKey::B => "test-only-b",
            TestKey::C => "test-only-c",
            TestKey::Unknown => "test-only-unknown",
        }
    }

    /// The public label whose SHA-256 is the key's seed.
    pub fn seed_label(self) -> &'static str {
        match self {
            TestKey::A => "ota TEST-ONLY key A — never use in production",
            TestKey::B => "ota TEST-ONLY key B — never use in production",
            TestKey::C => "ota TEST-ONLY key C — never use in production",
            TestKey::Unknown => "ota TEST-ONLY key UNKNOWN — never use in production",
        }
    }

    /// The 32-byte ed25519 seed: SHA-256 of [`seed_label`](Self::seed_label).
    pub fn seed(self) -> [u8; 32] {
        Sha256::digest(self.seed_label().as_bytes()).into()
    }

    /// The TEST-ONLY signing key.
    pub fn signing_key(self) -> SigningKey {
        SigningKey::from_bytes(&self.seed())
    }

    /// The public key.
    pub fn verifying_key(self) -> VerifyingKey {
        self.signing_key().verifying_key()
    }

    /// The key id releases carry for this key.
    pub fn key_id(self) -> KeyId {
        KeyId::of(&self.verifying_key())
    }

    /// Path of the PKCS#8 PEM private key, relative to [`crate::data_dir`]
    /// (`keys/test-only-a.key`).
    pub fn private_pem_file(self) -> String {
        format!("keys/{}.key", self.name())
    }

    /// Path of the SPKI PEM public key, relative to [`crate::data_dir`]
    /// (`keys/test-only-a.pub`).
    pub fn public_pem_file(self) -> String {
        format!("keys/{}.pub", self.name())
    }

    /// Path of the raw 32-byte public key, relative to [`crate::data_dir`]
    /// (`keys/test-only-a.pub.raw`), for tests that do not parse PEM.
    pub fn public_raw_file(self) -> String {
        format!("keys/{}.pub.raw", self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_distinct_and_stable() {
        let ids: std::collections::BTreeSet<_> = TestKey::ALL.iter().map(|k| k.key_id()).collect();
        assert_eq!(ids.len(), 4);
        assert_eq!(TestKey::A.seed(), TestKey::A.seed());
        assert_ne!(TestKey::A.seed(), TestKey::B.seed());
    }
}

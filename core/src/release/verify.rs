//! Verification of a decoded release: signatures against the trust set, then the device policy.

use alloc::string::String;
use alloc::vec::Vec;

use ed25519_dalek::Signature;

use super::envelope::sig_structure;
use super::{
    FORMAT_VERSION, KeyId, Manifest, ReleaseError, SignatureEntry, SignedRelease, TrustSet,
};

/// What the verifier checks beyond signatures. Time is an argument: the core never reads a clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The device's hardware class; `None` skips the check (fleet server, `ota release verify`
    /// without `--hw`).
    pub hardware_class: Option<String>,
    /// The device's security floor: releases with a lower `security_version` are refused.
    pub security_floor: u32,
    /// Now, in unix seconds, for the expiry check.
    pub now: u64,
}

/// A release whose signatures met the threshold and whose manifest passed the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedRelease {
    /// The verified manifest.
    pub manifest: Manifest,
    /// The distinct trusted keys whose signatures verified, in envelope order.
    pub signers: Vec<KeyId>,
}

impl SignedRelease {
    /// Checks the signatures: at least `threshold` distinct trusted keys must have signed, each
    /// checked with `verify_strict`. A key that signs twice counts once.
    ///
    /// Errors, in order of precedence: [`ReleaseError::BadSignature`] if a signature claiming a
    /// trusted key fails, [`ReleaseError::UnknownKey`] if no signature is by a trusted key,
    /// otherwise [`ReleaseError::ThresholdNotMet`].
    pub fn verify_signatures(&self, trust: &TrustSet) -> Result<Vec<KeyId>, ReleaseError> {
        verify_signers(&self.body_protected, &self.payload, &self.signatures, trust)
    }

    /// Verifies the signatures, then checks the manifest against `policy`: format version,
    /// expiry, hardware class and security floor, in that order.
    pub fn verify(
        &self,
        trust: &TrustSet,
        policy: &Policy,
    ) -> Result<VerifiedRelease, ReleaseError> {
        let signers = self.verify_signatures(trust)?;
        let m = &self.manifest;
        if m.format_version != FORMAT_VERSION {
            return Err(ReleaseError::UnsupportedFormat(m.format_version));
        }
        if let Some(expires) = m.expires
            && policy.now >= expires
        {
            return Err(ReleaseError::Expired {
                expires,
                now: policy.now,
            });
        }
        if let Some(hw) = &policy.hardware_class
            && !m.hardware.iter().any(|h| h == hw)
        {
            return Err(ReleaseError::IncompatibleHardware);
        }
        if m.security_version < policy.security_floor {
            return Err(ReleaseError::Downgrade {
                security_version: m.security_version,
                floor: policy.security_floor,
            });
        }
        Ok(VerifiedRelease {
            manifest: m.clone(),
            signers,
        })
    }
}

/// Counts the distinct trusted keys whose signatures over (`body_protected`, `payload`) verify
/// with `verify_strict`; see [`SignedRelease::verify_signatures`] for the error precedence.
pub(crate) fn verify_signers(
    body_protected: &[u8],
    payload: &[u8],
    signatures: &[SignatureEntry],
    trust: &TrustSet,
) -> Result<Vec<KeyId>, ReleaseError> {
    let mut signers: Vec<KeyId> = Vec::new();
    let mut bad = None;
    for entry in signatures {
        let Some((id, key)) = trust.key(&entry.kid) else {
            continue;
        };
        let message = sig_structure(body_protected, &entry.protected, payload);
        let signature = Signature::from_bytes(&entry.signature);
        if key.verify_strict(&message, &signature).is_ok() {
            if !signers.contains(&id) {
                signers.push(id);
            }
        } else if bad.is_none() {
            bad = Some(id);
        }
    }
    if signers.len() >= trust.threshold() {
        return Ok(signers);
    }
    match bad {
        Some(id) => Err(ReleaseError::BadSignature(id)),
        None if signers.is_empty() => Err(ReleaseError::UnknownKey),
        None => Err(ReleaseError::ThresholdNotMet {
            valid: signers.len(),
            required: trust.threshold(),
        }),
    }
}

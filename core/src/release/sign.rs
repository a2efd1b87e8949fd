//! Signing: how `ota release sign` (and the fixture generator) build a release.

use alloc::vec::Vec;

use ed25519_dalek::{Signer, SigningKey};

use super::envelope::{body_protected_header, sig_structure, signature_protected_header};
use super::{KeyId, Manifest, SignatureEntry, SignedRelease};

/// Signs `manifest` with every key in `keys` (one COSE_Signature each, in order) and returns the
/// encoded release. ed25519 signatures are deterministic, so the same inputs give the same bytes.
pub fn sign(manifest: &Manifest, keys: &[SigningKey]) -> Vec<u8> {
    let body_protected = body_protected_header();
    let payload = manifest.to_cbor();
    let protected = signature_protected_header();
    let message = sig_structure(&body_protected, &protected, &payload);
    let signatures = keys
        .iter()
        .map(|key| SignatureEntry {
            protected: protected.clone(),
            kid: KeyId::of(&key.verifying_key()).0.to_vec(),
            signature: key.sign(&message).to_bytes(),
        })
        .collect();
    SignedRelease {
        body_protected,
        payload,
        manifest: manifest.clone(),
        signatures,
    }
    .encode()
}

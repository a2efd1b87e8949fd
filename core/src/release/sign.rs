//! Signing: how `ota release sign` (and the fixture generator) build a release.

use alloc::vec::Vec;

use ed25519_dalek::{Signer, SigningKey};

use super::envelope::{
    CONTENT_TYPE, body_protected_header, encode_envelope, sig_structure, signature_protected_header,
};
use super::{KeyId, Manifest, SignatureEntry};

/// Signs `manifest` with every key in `keys` (one COSE_Signature each, in order) and returns the
/// encoded release. ed25519 signatures are deterministic, so the same inputs give the same bytes.
pub fn sign(manifest: &Manifest, keys: &[SigningKey]) -> Vec<u8> {
    sign_payload(CONTENT_TYPE, &manifest.to_cbor(), keys)
}

/// Signs `payload`, a document of `content_type`, with every key and encodes the envelope.
pub(crate) fn sign_payload(content_type: &str, payload: &[u8], keys: &[SigningKey]) -> Vec<u8> {
    let body_protected = body_protected_header(content_type);
    let protected = signature_protected_header();
    let message = sig_structure(&body_protected, &protected, payload);
    let signatures: Vec<SignatureEntry> = keys
        .iter()
        .map(|key| SignatureEntry {
            protected: protected.clone(),
            kid: KeyId::of(&key.verifying_key()).0.to_vec(),
            signature: key.sign(&message).to_bytes(),
        })
        .collect();
    encode_envelope(&body_protected, payload, &signatures)
}

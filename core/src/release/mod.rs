//! The signed release format and its verification.
//!
//! A release is a COSE_Sign envelope (RFC 9052, CBOR tag 98) whose payload is a CBOR
//! [`Manifest`] with integer keys, signed with EdDSA (ed25519) by one or more keys. A device (or
//! the fleet server) accepts it only with `k` valid signatures from distinct keys of its
//! [`TrustSet`], then checks it against its [`Policy`] (hardware class, expiry, security floor).
//! The artifact the manifest names is then checked byte by byte by an [`ArtifactVerifier`].
//!
//! The exact byte layout is written down in `docs/release-format.md`.
//!
//! ```text
//! bytes --decode--> SignedRelease --verify(trust, policy)--> VerifiedRelease
//!                                                          |
//!            artifact bytes --ArtifactVerifier(sha256, size)--> ok | DigestMismatch | ...
//! ```

mod artifact;
mod envelope;
mod error;
mod limits;
mod manifest;
mod rotation;
mod sign;
mod trust;
mod verify;

pub use artifact::ArtifactVerifier;
/// The ed25519 key types, re-exported so shells need not name ed25519-dalek.
pub use ed25519_dalek::{SigningKey, VerifyingKey};
pub use envelope::{SignatureEntry, SignedRelease};
pub use error::ReleaseError;
pub use limits::Limits;
pub use manifest::{ChunkIndexRef, FORMAT_VERSION, Manifest};
pub use rotation::{
    SignedTrustUpdate, TRUST_UPDATE_CONTENT_TYPE, TRUST_UPDATE_FORMAT_VERSION, TrustRotation,
    TrustState, TrustUpdate, TrustUpdateError, sign_trust_update,
};
pub use sign::sign;
pub use trust::{KeyId, TrustSet, TrustSetError};
pub use verify::{Policy, VerifiedRelease};

//! The one error type of release decoding and verification.

use crate::digest::Digest;

/// Why a release or its artifact was refused. One variant per cause, so a device can report it
/// and an operator can act on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReleaseError {
    /// The bytes are not a well-formed release (bad CBOR, wrong structure, truncated).
    #[error("malformed release: {0}")]
    Malformed(&'static str),
    /// A size or count bound of [`crate::release::Limits`] is exceeded.
    #[error("release too large: {what} exceeds the limit of {limit}")]
    LimitExceeded {
        /// What was too large.
        what: &'static str,
        /// The limit it exceeded.
        limit: usize,
    },
    /// Bytes follow the end of the release.
    #[error("malformed release: {0} unexpected bytes after the end of the release")]
    TrailingData(usize),
    /// The manifest's format version is not one this build understands.
    #[error("unsupported manifest format version {0}")]
    UnsupportedFormat(u16),
    /// A signature uses an algorithm other than EdDSA (COSE alg -8).
    #[error("unsupported signature algorithm {0} (only EdDSA, -8, is accepted)")]
    UnsupportedAlgorithm(i64),
    /// No signature is by a key of the trust set.
    #[error("signed by an unknown key: no signature is by a trusted key")]
    UnknownKey,
    /// A signature claiming a trusted key id does not verify.
    #[error("bad signature from trusted key {0}")]
    BadSignature(crate::release::KeyId),
    /// Fewer distinct trusted keys signed than the threshold requires.
    #[error("signature threshold not met: {valid} valid of {required} required")]
    ThresholdNotMet {
        /// Distinct trusted keys with a valid signature.
        valid: usize,
        /// The trust set's threshold.
        required: usize,
    },
    /// The release expired.
    #[error("release expired at {expires} (now {now}, unix seconds)")]
    Expired {
        /// The manifest's expiry.
        expires: u64,
        /// The time of the check.
        now: u64,
    },
    /// The release is not for this hardware class.
    #[error("release is not compatible with hardware class of this device")]
    IncompatibleHardware,
    /// The release's security version is below the device's floor (anti-rollback).
    #[error("downgrade refused: security version {security_version} is below the floor {floor}")]
    Downgrade {
        /// The release's security version.
        security_version: u32,
        /// The device's floor.
        floor: u32,
    },
    /// The artifact's bytes do not hash to the signed digest.
    #[error("artifact digest mismatch: signed {expected}, got {actual}")]
    DigestMismatch {
        /// The signed digest.
        expected: Digest,
        /// The digest of the bytes received.
        actual: Digest,
    },
    /// The artifact ended before the signed size.
    #[error("artifact size mismatch: signed {expected} bytes, got {actual}")]
    SizeMismatch {
        /// The signed size.
        expected: u64,
        /// The bytes received.
        actual: u64,
    },
    /// More artifact bytes arrived than were signed (endless-data attack).
    #[error("artifact longer than signed: more than {expected} bytes")]
    ArtifactTooLong {
        /// The signed size.
        expected: u64,
    },
    /// Reading the artifact failed.
    #[error("reading the artifact failed: {0:?}")]
    Read(embedded_io::ErrorKind),
}

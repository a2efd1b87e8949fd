//! The table of every fixture: which release file is checked against which artifact file, with
//! which threshold, and what must come out.
//!
//! Every fixture is checked in the same world: the trust set {a, b, c} of
//! [`crate::trust_set`] with the fixture's [`Fixture::threshold`], and the device policy of
//! [`crate::policy`] (hardware `gw-a`, floor 1, now 1 750 000 000). Every hostile release is the
//! v2 manifest changed in exactly one respect (besides its `fixture` metadata tag), so it fails
//! with exactly one, its own, [`ReleaseError`] variant; no two hostile fixtures share a variant.

use std::fmt;
use std::path::Path;

use ota_core::digest::Digest;
use ota_core::release::{ArtifactVerifier, Policy, ReleaseError, SignedRelease, TrustSet};

use crate::{data_dir, policy, read_in};

/// What checking a fixture must produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// The release verifies and the artifact matches it.
    Valid,
    /// The check fails with this variant of [`ReleaseError`].
    Fails(ExpectedError),
}

impl Expected {
    /// Whether `outcome` (of [`check`] or [`Fixture::evaluate`]) is what this expects.
    pub fn matches(&self, outcome: &Result<Digest, ReleaseError>) -> bool {
        match (self, outcome) {
            (Expected::Valid, Ok(_)) => true,
            (Expected::Fails(want), Err(e)) => want.matches(e),
            _ => false,
        }
    }
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expected::Valid => f.write_str("valid"),
            Expected::Fails(e) => write!(f, "`ReleaseError::{e}`"),
        }
    }
}

/// The [`ReleaseError`] variants a fixture can be expected to produce (every variant but
/// `Read`, which no file can provoke).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ExpectedError {
    /// [`ReleaseError::Malformed`].
    Malformed,
    /// [`ReleaseError::LimitExceeded`].
    LimitExceeded,
    /// [`ReleaseError::TrailingData`].
    TrailingData,
    /// [`ReleaseError::UnsupportedFormat`].
    UnsupportedFormat,
    /// [`ReleaseError::UnsupportedAlgorithm`].
    UnsupportedAlgorithm,
    /// [`ReleaseError::UnknownKey`].
    UnknownKey,
    /// [`ReleaseError::BadSignature`].
    BadSignature,
    /// [`ReleaseError::ThresholdNotMet`].
    ThresholdNotMet,
    /// [`ReleaseError::Expired`].
    Expired,
    /// [`ReleaseError::IncompatibleHardware`].
    IncompatibleHardware,
    /// [`ReleaseError::Downgrade`].
    Downgrade,
    /// [`ReleaseError::DigestMismatch`].
    DigestMismatch,
    /// [`ReleaseError::SizeMismatch`].
    SizeMismatch,
    /// [`ReleaseError::ArtifactTooLong`].
    ArtifactTooLong,
}

impl ExpectedError {
    /// The variant of `error`, or `None` for a variant no fixture produces.
    pub fn of(error: &ReleaseError) -> Option<Self> {
        Some(match error {
            ReleaseError::Malformed(_) => Self::Malformed,
            ReleaseError::LimitExceeded { .. } => Self::LimitExceeded,
            ReleaseError::TrailingData(_) => Self::TrailingData,
            ReleaseError::UnsupportedFormat(_) => Self::UnsupportedFormat,
            ReleaseError::UnsupportedAlgorithm(_) => Self::UnsupportedAlgorithm,
            ReleaseError::UnknownKey => Self::UnknownKey,
            ReleaseError::BadSignature(_) => Self::BadSignature,
            ReleaseError::ThresholdNotMet { .. } => Self::ThresholdNotMet,
            ReleaseError::Expired { .. } => Self::Expired,
            ReleaseError::IncompatibleHardware => Self::IncompatibleHardware,
            ReleaseError::Downgrade { .. } => Self::Downgrade,
            ReleaseError::DigestMismatch { .. } => Self::DigestMismatch,
            ReleaseError::SizeMismatch { .. } => Self::SizeMismatch,
            ReleaseError::ArtifactTooLong { .. } => Self::ArtifactTooLong,
            _ => return None,
        })
    }

    /// Whether `error` is this variant.
    pub fn matches(self, error: &ReleaseError) -> bool {
        Self::of(error) == Some(self)
    }
}

impl fmt::Display for ExpectedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One fixture: a release file checked against an artifact file, and what must come out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fixture {
    /// Short name, e.g. `v2` or `tampered-artifact`.
    pub name: &'static str,
    /// The release file, relative to [`crate::data_dir`] (e.g. `v2.release`).
    pub release: &'static str,
    /// The artifact file checked against it, relative to [`crate::data_dir`].
    pub artifact: &'static str,
    /// The threshold `k` of the trust set {a, b, c} it is checked with.
    pub threshold: usize,
    /// What checking it must produce.
    pub expected: Expected,
    /// How it was made (shown in `data/README.md`).
    pub how: &'static str,
}

impl Fixture {
    /// Whether it is a good fixture (expected to verify).
    pub fn is_good(&self) -> bool {
        self.expected == Expected::Valid
    }

    /// The trust set it is checked with: keys a, b, c and [`Self::threshold`].
    pub fn trust_set(&self) -> anyhow::Result<TrustSet> {
        Ok(crate::trust_set(self.threshold)?)
    }

    /// Checks the checked-in files (under [`crate::data_dir`]) with [`check`]. The outer error
    /// is a missing file; the inner result is the check's outcome.
    pub fn evaluate(&self) -> anyhow::Result<Result<Digest, ReleaseError>> {
        self.evaluate_in(&data_dir())
    }

    /// Like [`evaluate`](Self::evaluate), with the files under `dir`.
    pub fn evaluate_in(&self, dir: &Path) -> anyhow::Result<Result<Digest, ReleaseError>> {
        let release = read_in(dir, self.release)?;
        let artifact = read_in(dir, self.artifact)?;
        Ok(check(&release, &artifact, &self.trust_set()?, &policy()))
    }
}

/// The whole check a device makes: decode the release, verify it against `trust` and `policy`,
/// then stream `artifact` (in 1 KiB chunks) through an [`ArtifactVerifier`]. Returns the
/// artifact's digest.
pub fn check(
    release: &[u8],
    artifact: &[u8],
    trust: &TrustSet,
    policy: &Policy,
) -> Result<Digest, ReleaseError> {
    let verified = SignedRelease::decode(release)?.verify(trust, policy)?;
    let mut verifier = ArtifactVerifier::for_manifest(&verified.manifest);
    for chunk in artifact.chunks(1024) {
        verifier.update(chunk)?;
    }
    verifier.finish()
}

const V2_IMAGE: &str = "images/v2.bin";

/// Every fixture: the good ones first, then the hostile releases, then the hostile artifacts.
pub const FIXTURES: &[Fixture] = &[
    Fixture {
        name: "v1",
        release: "v1.release",
        artifact: "images/v1.bin",
        threshold: 1,
        expected: Expected::Valid,
        how: "version `1.0.0`, security version 1, hardware [gw-a], no expiry, signed by a",
    },
    Fixture {
        name: "v2",
        release: "v2.release",
        artifact: V2_IMAGE,
        threshold: 1,
        expected: Expected::Valid,
        how: "version `2.0.0`, security version 2, hardware [gw-a, gw-b], no expiry, signed by a; \
              the base every hostile release differs from in one respect",
    },
    Fixture {
        name: "v2-again",
        release: "v2-again.release",
        artifact: V2_IMAGE,
        threshold: 1,
        expected: Expected::Valid,
        how: "an identical redeploy of v2: the SAME artifact (digest and size) as `v2.release`, \
              re-signed as version `2.0.0-redeploy.1`, created a day later, signed by b; its \
              bytes differ from `v2.release`, so only the artifact digest can tell a device it \
              already runs it (skipped-identical)",
    },
    Fixture {
        name: "v2-threshold-2of3",
        release: "v2-threshold-2of3.release",
        artifact: V2_IMAGE,
        threshold: 2,
        expected: Expected::Valid,
        how: "the v2 manifest signed by a and c: valid with trust {a, b, c}, k = 2",
    },
    Fixture {
        name: "v3",
        release: "v3.release",
        artifact: "images/v3.bin",
        threshold: 1,
        expected: Expected::Valid,
        how: "version `3.0.0`, security version 3, hardware [gw-a, gw-b], no expiry, signed by a",
    },
    Fixture {
        name: "bad-signature",
        release: "bad-signature.release",
        artifact: V2_IMAGE,
        threshold: 1,
        expected: Expected::Fails(ExpectedError::BadSignature),
        how: "the v2 manifest signed by a, then bit 0 of byte 10 of the signature flipped",
    },
    Fixture {
        name: "unknown-key",
        release: "unknown-key.release",
        artifact: V2_IMAGE,
        threshold: 1,
        expected: Expected::Fails(ExpectedError::UnknownKey),
        how: "the v2 manifest signed only by test-only-unknown (not in the trust set)",
    },
    Fixture {
        name: "threshold-not-met",
        release: "threshold-not-met.release",
        artifact: V2_IMAGE,
        threshold: 2,
        expected: Expected::Fails(ExpectedError::ThresholdNotMet),
        how: "the v2 manifest signed only by a, twice (a duplicated signature counts once), \
              checked with k = 2: 1 valid of 2 required",
    },
    Fixture {
        name: "expired",
        release: "expired.release",
        artifact: V2_IMAGE,
        threshold: 1,
        expected: Expected::Fails(ExpectedError::Expired),
        how: "the v2 manifest with expiry 1 720 000 000 (before now = 1 750 000 000), signed by a",
    },
    Fixture {
        name: "downgrade",
        release: "downgrade.release",
        artifact: V2_IMAGE,
        threshold: 1,
        expected: Expected::Fails(ExpectedError::Downgrade),
        how: "the v2 manifest with security version 0 (below the floor 1), signed by a",
    },
    Fixture {
        name: "wrong-hardware",
        release: "wrong-hardware.release",
        artifact: V2_IMAGE,
        threshold: 1,
        expected: Expected::Fails(ExpectedError::IncompatibleHardware),
        how: "the v2 manifest with hardware [gw-z] (the device is gw-a), signed by a",
    },
    Fixture {
        name: "truncated",
        release: "truncated.release",
        artifact: V2_IMAGE,
        threshold: 1,
        expected: Expected::Fails(ExpectedError::Malformed),
        how: "the first half of `v2.release` (cut inside the payload)",
    },
    Fixture {
        name: "oversized-product",
        release: "oversized-product.release",
        artifact: V2_IMAGE,
        threshold: 1,
        expected: Expected::Fails(ExpectedError::LimitExceeded),
        how: "the v2 manifest with a 65-byte product name (limit `Limits::MAX_NAME_BYTES` = 64), \
              signed by a: refused while decoding, before any signature check",
    },
    Fixture {
        name: "trailing-junk",
        release: "trailing-junk.release",
        artifact: V2_IMAGE,
        threshold: 1,
        expected: Expected::Fails(ExpectedError::TrailingData),
        how: "`v2.release` followed by the 23 bytes `TEST-ONLY trailing junk`",
    },
    Fixture {
        name: "wrong-format-version",
        release: "wrong-format-version.release",
        artifact: V2_IMAGE,
        threshold: 1,
        expected: Expected::Fails(ExpectedError::UnsupportedFormat),
        how: "the v2 manifest with format version 2 (this build reads 1), signed by a",
    },
    Fixture {
        name: "wrong-algorithm",
        release: "wrong-algorithm.release",
        artifact: V2_IMAGE,
        threshold: 1,
        expected: Expected::Fails(ExpectedError::UnsupportedAlgorithm),
        how: "the v2 manifest signed by a under a signature protected header naming ES256 \
              (`{1: -7}`) instead of EdDSA (`{1: -8}`)",
    },
    Fixture {
        name: "tampered-artifact",
        release: "v2.release",
        artifact: "images/v2-tampered.bin",
        threshold: 1,
        expected: Expected::Fails(ExpectedError::DigestMismatch),
        how: "`v2.release` (valid) with `images/v2-tampered.bin`: the v2 image with bit 0 of \
              byte 1000 flipped (same size)",
    },
    Fixture {
        name: "longer-artifact",
        release: "v2.release",
        artifact: "images/v2-longer.bin",
        threshold: 1,
        expected: Expected::Fails(ExpectedError::ArtifactTooLong),
        how: "`v2.release` (valid) with `images/v2-longer.bin`: the v2 image followed by 37 \
              extra bytes (an endless-data attack, cut short)",
    },
    Fixture {
        name: "short-artifact",
        release: "v2.release",
        artifact: "images/v2-short.bin",
        threshold: 1,
        expected: Expected::Fails(ExpectedError::SizeMismatch),
        how: "`v2.release` (valid) with `images/v2-short.bin`: the first 2048 bytes of the v2 \
              image (a cut-off download)",
    },
];

/// The fixture named `name`, if any.
pub fn fixture(name: &str) -> Option<&'static Fixture> {
    FIXTURES.iter().find(|f| f.name == name)
}

//! The checked-in firmware fixtures (`firmware-fixtures/data/`, see its README.md) against the
//! release format: every good release verifies and its image matches, every hostile one fails
//! with its own `ReleaseError` variant.
//!
//! ota-core must not depend on the `firmware-fixtures` crate, so this test reads the files
//! directly (`include_bytes!`, paths relative to this crate) and builds the trust set from the
//! raw `.pub.raw` keys, parsing no PEM. The constants below restate the fixtures' fixed world;
//! they must match `firmware_fixtures::{NOW, SECURITY_FLOOR, HARDWARE_CLASS}`.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns: a failing unwrap is a failing test"
)]

use std::collections::{BTreeSet, HashSet};
use std::mem::discriminant;

use ed25519_dalek::VerifyingKey;
use ota_core::digest::Digest;
use ota_core::release::{
    ArtifactVerifier, KeyId, Limits, Policy, ReleaseError, SignedRelease, TrustSet,
};

/// The fixed "now" of every fixture check (unix seconds).
const NOW: u64 = 1_750_000_000;
/// The expiry written into `expired.release`.
const EXPIRED_AT: u64 = 1_720_000_000;
/// The test device's security floor.
const FLOOR: u32 = 1;
/// The test device's hardware class.
const HW: &str = "gw-a";

/// The bytes of a checked-in fixture file, at compile time.
macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../firmware-fixtures/data/",
            $name
        ))
        .as_slice()
    };
}

const DATA_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../firmware-fixtures/data");

/// A TEST-ONLY public key from its raw 32-byte file.
fn raw_key(bytes: &[u8]) -> VerifyingKey {
    VerifyingKey::from_bytes(bytes.try_into().unwrap()).unwrap()
}

fn key_a() -> VerifyingKey {
    raw_key(fixture!("keys/test-only-a.pub.raw"))
}
fn key_b() -> VerifyingKey {
    raw_key(fixture!("keys/test-only-b.pub.raw"))
}
fn key_c() -> VerifyingKey {
    raw_key(fixture!("keys/test-only-c.pub.raw"))
}
fn key_unknown() -> VerifyingKey {
    raw_key(fixture!("keys/test-only-unknown.pub.raw"))
}

/// The fixtures' trust set: keys a, b, c with threshold `k`.
fn trust(k: usize) -> TrustSet {
    TrustSet::new(vec![key_a(), key_b(), key_c()], k).unwrap()
}

fn policy() -> Policy {
    Policy {
        hardware_class: Some(HW.into()),
        security_floor: FLOOR,
        now: NOW,
    }
}

/// The whole device-side check: decode, verify, then stream the artifact through the verifier
/// (1 KiB buffer, via embedded-io).
fn check(release: &[u8], artifact: &[u8], k: usize) -> Result<Digest, ReleaseError> {
    let verified = SignedRelease::decode(release)?.verify(&trust(k), &policy())?;
    let mut buf = [0u8; 1024];
    ArtifactVerifier::for_manifest(&verified.manifest).verify_reader(&mut &artifact[..], &mut buf)
}

/// What a fixture must produce: valid, or an error matching a pattern (named for messages).
enum Expect {
    Valid,
    Fails(&'static str, fn(&ReleaseError) -> bool),
}

macro_rules! fails {
    ($($pattern:tt)+) => {
        Expect::Fails(stringify!($($pattern)+), |e| matches!(e, $($pattern)+))
    };
}

struct Case {
    release_name: &'static str,
    release: &'static [u8],
    artifact: &'static [u8],
    k: usize,
    expect: Expect,
}

fn v2_digest() -> Digest {
    Digest::of(fixture!("images/v2.bin"))
}

fn cases() -> Vec<Case> {
    macro_rules! case {
        ($release:literal, $artifact:literal, $k:expr, $expect:expr) => {
            Case {
                release_name: $release,
                release: fixture!($release),
                artifact: fixture!($artifact),
                k: $k,
                expect: $expect,
            }
        };
    }
    vec![
        // Good.
        case!("v1.release", "images/v1.bin", 1, Expect::Valid),
        case!("v2.release", "images/v2.bin", 1, Expect::Valid),
        case!("v2-again.release", "images/v2.bin", 1, Expect::Valid),
        case!(
            "v2-threshold-2of3.release",
            "images/v2.bin",
            2,
            Expect::Valid
        ),
        case!("v3.release", "images/v3.bin", 1, Expect::Valid),
        // Hostile releases.
        case!(
            "bad-signature.release",
            "images/v2.bin",
            1,
            fails!(ReleaseError::BadSignature(id) if *id == KeyId::of(&key_a()))
        ),
        case!(
            "unknown-key.release",
            "images/v2.bin",
            1,
            fails!(ReleaseError::UnknownKey)
        ),
        case!(
            "threshold-not-met.release",
            "images/v2.bin",
            2,
            fails!(ReleaseError::ThresholdNotMet {
                valid: 1,
                required: 2
            })
        ),
        case!(
            "expired.release",
            "images/v2.bin",
            1,
            fails!(ReleaseError::Expired {
                expires: EXPIRED_AT,
                now: NOW
            })
        ),
        case!(
            "downgrade.release",
            "images/v2.bin",
            1,
            fails!(ReleaseError::Downgrade {
                security_version: 0,
                floor: FLOOR
            })
        ),
        case!(
            "wrong-hardware.release",
            "images/v2.bin",
            1,
            fails!(ReleaseError::IncompatibleHardware)
        ),
        case!(
            "truncated.release",
            "images/v2.bin",
            1,
            fails!(ReleaseError::Malformed(_))
        ),
        case!(
            "oversized-product.release",
            "images/v2.bin",
            1,
            fails!(ReleaseError::LimitExceeded { what: "product", limit } if *limit == Limits::MAX_NAME_BYTES)
        ),
        case!(
            "trailing-junk.release",
            "images/v2.bin",
            1,
            fails!(ReleaseError::TrailingData(23))
        ),
        case!(
            "wrong-format-version.release",
            "images/v2.bin",
            1,
            fails!(ReleaseError::UnsupportedFormat(2))
        ),
        case!(
            "wrong-algorithm.release",
            "images/v2.bin",
            1,
            fails!(ReleaseError::UnsupportedAlgorithm(-7))
        ),
        // Hostile artifacts under the valid v2 release.
        case!(
            "v2.release",
            "images/v2-tampered.bin",
            1,
            fails!(ReleaseError::DigestMismatch { expected, actual }
                if *expected == v2_digest()
                    && *actual == Digest::of(fixture!("images/v2-tampered.bin")))
        ),
        case!(
            "v2.release",
            "images/v2-longer.bin",
            1,
            fails!(ReleaseError::ArtifactTooLong { expected: 4096 })
        ),
        case!(
            "v2.release",
            "images/v2-short.bin",
            1,
            fails!(ReleaseError::SizeMismatch {
                expected: 4096,
                actual: 2048
            })
        ),
    ]
}

#[test]
fn every_fixture_gives_its_expected_outcome() {
    for case in cases() {
        let outcome = check(case.release, case.artifact, case.k);
        match (&case.expect, &outcome) {
            (Expect::Valid, Ok(digest)) => {
                assert_eq!(*digest, Digest::of(case.artifact), "{}", case.release_name)
            }
            (Expect::Fails(_, matches), Err(e)) if matches(e) => {}
            (Expect::Valid, _) => panic!("{}: expected valid, got {outcome:?}", case.release_name),
            (Expect::Fails(pattern, _), _) => {
                panic!("{}: expected {pattern}, got {outcome:?}", case.release_name)
            }
        }
    }
}

#[test]
fn distinct_hostile_fixtures_fail_with_distinct_variants() {
    let errors: Vec<ReleaseError> = cases()
        .iter()
        .filter(|c| matches!(c.expect, Expect::Fails(..)))
        .map(|c| check(c.release, c.artifact, c.k).unwrap_err())
        .collect();
    let variants: HashSet<_> = errors.iter().map(discriminant).collect();
    assert_eq!(variants.len(), errors.len(), "{errors:?}");
    assert_eq!(errors.len(), 14);
}

#[test]
fn every_checked_in_release_is_in_the_table() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(DATA_DIR)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".release"))
        .collect();
    let tested: BTreeSet<String> = cases().iter().map(|c| c.release_name.to_string()).collect();
    assert_eq!(on_disk, tested);
}

#[test]
fn good_releases_are_canonical_and_name_their_images() {
    for (release, image) in [
        (fixture!("v1.release"), fixture!("images/v1.bin")),
        (fixture!("v2.release"), fixture!("images/v2.bin")),
        (fixture!("v2-again.release"), fixture!("images/v2.bin")),
        (
            fixture!("v2-threshold-2of3.release"),
            fixture!("images/v2.bin"),
        ),
        (fixture!("v3.release"), fixture!("images/v3.bin")),
    ] {
        let decoded = SignedRelease::decode(release).unwrap();
        assert_eq!(decoded.encode(), release, "encoding is canonical");
        assert_eq!(decoded.manifest.artifact_digest(), Digest::of(image));
        assert_eq!(decoded.manifest.artifact_size, image.len() as u64);
        assert_eq!(decoded.manifest.product, "gateway-fw");
    }
}

#[test]
fn versions_climb_and_v2_again_is_the_same_artifact() {
    let manifest = |bytes| {
        SignedRelease::decode(bytes)
            .unwrap()
            .verify(&trust(1), &policy())
            .unwrap()
            .manifest
    };
    let v1 = manifest(fixture!("v1.release"));
    let v2 = manifest(fixture!("v2.release"));
    let v3 = manifest(fixture!("v3.release"));
    assert!(v1.security_version < v2.security_version);
    assert!(v2.security_version < v3.security_version);
    assert!(v1.created < v2.created && v2.created < v3.created);

    let again = manifest(fixture!("v2-again.release"));
    assert_ne!(fixture!("v2-again.release"), fixture!("v2.release"));
    assert_eq!(again.artifact_digest(), v2.artifact_digest());
    assert_eq!(again.artifact_size, v2.artifact_size);
    assert_eq!(again.security_version, v2.security_version);
}

#[test]
fn signers_are_who_the_readme_says() {
    let signers = |bytes, k| {
        SignedRelease::decode(bytes)
            .unwrap()
            .verify(&trust(k), &policy())
            .unwrap()
            .signers
    };
    let (a, b, c) = (
        KeyId::of(&key_a()),
        KeyId::of(&key_b()),
        KeyId::of(&key_c()),
    );
    assert_eq!(signers(fixture!("v2.release"), 1), vec![a]);
    assert_eq!(signers(fixture!("v2-again.release"), 1), vec![b]);
    assert_eq!(
        signers(fixture!("v2-threshold-2of3.release"), 2),
        vec![a, c]
    );

    // The 2-of-3 release is not 3-of-3, and v2 (a alone) is not 2-of-3.
    let decode = |bytes| SignedRelease::decode(bytes).unwrap();
    assert_eq!(
        decode(fixture!("v2-threshold-2of3.release")).verify_signatures(&trust(3)),
        Err(ReleaseError::ThresholdNotMet {
            valid: 2,
            required: 3
        })
    );
    assert_eq!(
        decode(fixture!("v2.release")).verify_signatures(&trust(2)),
        Err(ReleaseError::ThresholdNotMet {
            valid: 1,
            required: 2
        })
    );

    // unknown-key.release is signed by test-only-unknown, which is trusted by nobody here, and
    // verifies once it is.
    let unknown = decode(fixture!("unknown-key.release"));
    assert_eq!(unknown.signatures[0].kid, KeyId::of(&key_unknown()).0);
    let with_unknown = TrustSet::new(vec![key_unknown()], 1).unwrap();
    assert!(unknown.verify(&with_unknown, &policy()).is_ok());
}

#[test]
fn policy_sensitive_fixtures_pass_once_the_policy_allows_them() {
    // Each hostile-by-policy release fails for its one reason only: relax it and it verifies.
    let decode = |bytes| SignedRelease::decode(bytes).unwrap();
    let before_expiry = Policy {
        now: EXPIRED_AT - 1,
        ..policy()
    };
    assert!(
        decode(fixture!("expired.release"))
            .verify(&trust(1), &before_expiry)
            .is_ok()
    );
    let floor_zero = Policy {
        security_floor: 0,
        ..policy()
    };
    assert!(
        decode(fixture!("downgrade.release"))
            .verify(&trust(1), &floor_zero)
            .is_ok()
    );
    let any_hw = Policy {
        hardware_class: None,
        ..policy()
    };
    assert!(
        decode(fixture!("wrong-hardware.release"))
            .verify(&trust(1), &any_hw)
            .is_ok()
    );
}

//! Release format: round trips, the signature threshold, the policy checks, bounded decoding and
//! the streaming verifier, on releases built in memory (the fixture files are tested in
//! `fixtures.rs`).
#![allow(
    clippy::unwrap_used,
    reason = "test helpers unwrap: a failing unwrap is a failing test"
)]

use std::collections::BTreeMap;

use ed25519_dalek::SigningKey;
use ota_core::digest::Digest;
use ota_core::release::{
    ArtifactVerifier, Limits, Manifest, Policy, ReleaseError, SignedRelease, TrustSet, sign,
};
use proptest::prelude::*;

const NOW: u64 = 1_750_000_000;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn manifest(artifact: &[u8]) -> Manifest {
    Manifest {
        format_version: ota_core::release::FORMAT_VERSION,
        product: "gateway-fw".into(),
        version: "2.0.0".into(),
        security_version: 2,
        artifact_sha256: Digest::of(artifact).0,
        artifact_size: artifact.len() as u64,
        hardware: vec!["gw-a".into(), "gw-b".into()],
        created: 1_700_000_000,
        expires: Some(1_800_000_000),
        installer: Some("files".into()),
        metadata: BTreeMap::from([("build".into(), "42".into())]),
        chunk_index: None,
    }
}

fn trust(seeds: &[u8], k: usize) -> TrustSet {
    TrustSet::new(seeds.iter().map(|s| key(*s).verifying_key()).collect(), k).unwrap()
}

fn policy() -> Policy {
    Policy {
        hardware_class: Some("gw-a".into()),
        security_floor: 1,
        now: NOW,
    }
}

fn check(bytes: &[u8], trust: &TrustSet, policy: &Policy) -> Result<Manifest, ReleaseError> {
    Ok(SignedRelease::decode(bytes)?
        .verify(trust, policy)?
        .manifest)
}

#[test]
fn signed_release_round_trips_and_verifies() {
    let m = manifest(b"image");
    let bytes = sign(&m, &[key(1)]);
    let decoded = SignedRelease::decode(&bytes).unwrap();
    assert_eq!(decoded.encode(), bytes, "encoding is canonical");
    let verified = decoded.verify(&trust(&[1], 1), &policy()).unwrap();
    assert_eq!(verified.manifest, m);
    assert_eq!(verified.signers.len(), 1);
}

#[test]
fn signing_is_deterministic() {
    let m = manifest(b"image");
    assert_eq!(sign(&m, &[key(1), key(2)]), sign(&m, &[key(1), key(2)]));
}

#[test]
fn threshold_counts_distinct_keys_only() {
    let m = manifest(b"image");
    let t = trust(&[1, 2, 3], 2);
    assert!(check(&sign(&m, &[key(1), key(3)]), &t, &policy()).is_ok());
    assert_eq!(
        check(&sign(&m, &[key(1), key(1)]), &t, &policy()),
        Err(ReleaseError::ThresholdNotMet {
            valid: 1,
            required: 2
        }),
        "a duplicated signature never counts twice"
    );
    assert_eq!(
        check(&sign(&m, &[key(1), key(9)]), &t, &policy()),
        Err(ReleaseError::ThresholdNotMet {
            valid: 1,
            required: 2
        })
    );
}

#[test]
fn unknown_and_bad_signatures_have_their_own_errors() {
    let m = manifest(b"image");
    let t = trust(&[1], 1);
    assert_eq!(
        check(&sign(&m, &[key(9)]), &t, &policy()),
        Err(ReleaseError::UnknownKey)
    );
    let mut release = SignedRelease::decode(&sign(&m, &[key(1)])).unwrap();
    release.signatures[0].signature[10] ^= 1;
    assert!(matches!(
        check(&release.encode(), &t, &policy()),
        Err(ReleaseError::BadSignature(_))
    ));
}

#[test]
fn policy_checks_expiry_hardware_and_floor() {
    let t = trust(&[1], 1);
    let m = manifest(b"image");
    let bytes = sign(&m, &[key(1)]);
    let late = Policy {
        now: 1_800_000_000,
        ..policy()
    };
    assert!(matches!(
        check(&bytes, &t, &late),
        Err(ReleaseError::Expired { .. })
    ));
    let other_hw = Policy {
        hardware_class: Some("gw-z".into()),
        ..policy()
    };
    assert_eq!(
        check(&bytes, &t, &other_hw),
        Err(ReleaseError::IncompatibleHardware)
    );
    let any_hw = Policy {
        hardware_class: None,
        ..policy()
    };
    assert!(check(&bytes, &t, &any_hw).is_ok());
    let floor = Policy {
        security_floor: 3,
        ..policy()
    };
    assert_eq!(
        check(&bytes, &t, &floor),
        Err(ReleaseError::Downgrade {
            security_version: 2,
            floor: 3
        })
    );
    let equal_floor = Policy {
        security_floor: 2,
        ..policy()
    };
    assert!(
        check(&bytes, &t, &equal_floor).is_ok(),
        "the floor itself is allowed"
    );
}

#[test]
fn limits_are_enforced() {
    let t = trust(&[1], 1);
    let mut m = manifest(b"image");
    m.product = "p".repeat(Limits::MAX_NAME_BYTES + 1);
    assert!(matches!(
        check(&sign(&m, &[key(1)]), &t, &policy()),
        Err(ReleaseError::LimitExceeded {
            what: "product",
            ..
        })
    ));
    let huge = vec![0u8; Limits::MAX_RELEASE_BYTES + 1];
    assert!(matches!(
        SignedRelease::decode(&huge),
        Err(ReleaseError::LimitExceeded {
            what: "release",
            ..
        })
    ));
    let many: Vec<SigningKey> = (0..=Limits::MAX_SIGNATURES as u8).map(key).collect();
    assert!(matches!(
        SignedRelease::decode(&sign(&manifest(b"x"), &many)),
        Err(ReleaseError::LimitExceeded {
            what: "signature count",
            ..
        })
    ));
}

#[test]
fn truncation_and_trailing_bytes_are_refused() {
    let bytes = sign(&manifest(b"image"), &[key(1)]);
    for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
        assert!(
            matches!(
                SignedRelease::decode(&bytes[..cut]),
                Err(ReleaseError::Malformed(_))
            ),
            "cut at {cut}"
        );
    }
    let mut junk = bytes.clone();
    junk.extend_from_slice(b"junk");
    assert_eq!(
        SignedRelease::decode(&junk),
        Err(ReleaseError::TrailingData(4))
    );
}

#[test]
fn trust_set_rejects_impossible_thresholds_and_duplicates() {
    let k = key(1).verifying_key();
    assert!(TrustSet::new(vec![k], 0).is_err());
    assert!(TrustSet::new(vec![k], 2).is_err());
    assert!(TrustSet::new(vec![k, k], 1).is_err());
}

#[test]
fn artifact_verifier_checks_digest_size_and_refuses_extra_bytes() {
    let data = b"the artifact bytes";
    let m = manifest(data);
    let mut v = ArtifactVerifier::for_manifest(&m);
    v.update(&data[..5]).unwrap();
    v.update(&data[5..]).unwrap();
    assert_eq!(v.finish().unwrap(), Digest::of(data));

    let mut v = ArtifactVerifier::for_manifest(&m);
    v.update(data).unwrap();
    assert_eq!(
        v.update(b"x"),
        Err(ReleaseError::ArtifactTooLong {
            expected: data.len() as u64
        })
    );

    let mut v = ArtifactVerifier::for_manifest(&m);
    v.update(&data[..3]).unwrap();
    assert!(matches!(
        v.finish(),
        Err(ReleaseError::SizeMismatch { actual: 3, .. })
    ));

    let mut tampered = *data;
    tampered[0] ^= 0xff;
    let mut v = ArtifactVerifier::for_manifest(&m);
    v.update(&tampered).unwrap();
    assert!(matches!(
        v.finish(),
        Err(ReleaseError::DigestMismatch { .. })
    ));
}

#[test]
fn artifact_verifier_reads_through_embedded_io() {
    let data = vec![7u8; 100_000];
    let m = manifest(&data);
    let mut buf = [0u8; 4096];
    let ok = ArtifactVerifier::for_manifest(&m).verify_reader(&mut &data[..], &mut buf);
    assert_eq!(ok, Ok(Digest::of(&data)));
    let longer = vec![7u8; 100_001];
    assert!(matches!(
        ArtifactVerifier::for_manifest(&m).verify_reader(&mut &longer[..], &mut buf),
        Err(ReleaseError::ArtifactTooLong { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any single-byte mutation of a signed release either fails to decode or fails
    /// verification: it never verifies as a different manifest.
    #[test]
    fn single_byte_mutations_never_verify_as_another_manifest(
        index in any::<prop::sample::Index>(),
        xor in 1u8..=255,
    ) {
        let m = manifest(b"image");
        let mut bytes = sign(&m, &[key(1)]);
        let i = index.index(bytes.len());
        bytes[i] ^= xor;
        let verified = SignedRelease::decode(&bytes)
            .and_then(|decoded| decoded.verify(&trust(&[1], 1), &policy()));
        if let Ok(verified) = verified {
            prop_assert_eq!(verified.manifest, m);
        }
    }

    /// Arbitrary bytes never panic the decoder.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = SignedRelease::decode(&bytes);
    }
}

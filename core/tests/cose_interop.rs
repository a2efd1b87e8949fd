//! Interoperability with an independent RFC 9052 implementation (Google's `coset`): our releases
//! are standard COSE_Sign structures that `coset` parses and whose signatures verify over the
//! `Sig_structure` it builds itself, and a COSE_Sign built by `coset` verifies with our decoder.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers unwrap: a failing unwrap is a failing test"
)]

use coset::{
    CborSerializable, CoseSign, CoseSignBuilder, CoseSignatureBuilder, HeaderBuilder,
    TaggedCborSerializable, iana,
};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use ota_core::release::{KeyId, Policy, SignedRelease, TrustSet};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../firmware-fixtures/data");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{DATA}/{name}")).unwrap()
}

fn public_key(name: &str) -> VerifyingKey {
    let raw: [u8; 32] = fixture(&format!("keys/{name}.pub.raw")).try_into().unwrap();
    VerifyingKey::from_bytes(&raw).unwrap()
}

#[test]
fn coset_parses_and_verifies_our_releases() {
    let keys = ["test-only-a", "test-only-b", "test-only-c"].map(public_key);
    for name in ["v2.release", "v2-threshold-2of3.release"] {
        let sign = CoseSign::from_tagged_slice(&fixture(name)).unwrap();
        assert!(!sign.signatures.is_empty());
        for (i, s) in sign.signatures.iter().enumerate() {
            assert_eq!(
                s.protected.header.alg,
                Some(coset::Algorithm::Assigned(iana::Algorithm::EdDSA)),
                "{name}: alg EdDSA"
            );
            let key = keys
                .iter()
                .find(|k| KeyId::of(k).0.as_slice() == s.unprotected.key_id);
            let key = key.unwrap_or_else(|| panic!("{name}: kid names a fixture key"));
            sign.verify_signature(i, b"", |sig, data| {
                key.verify_strict(data, &Signature::from_slice(sig).unwrap())
            })
            .unwrap_or_else(|e| panic!("{name}: signature {i} fails under coset: {e}"));
        }
        let ours = SignedRelease::decode(&fixture(name)).unwrap();
        assert_eq!(sign.payload.as_deref(), Some(ours.payload.as_slice()));
    }
}

#[test]
fn a_release_built_by_coset_verifies_with_our_decoder() {
    let key = SigningKey::from_bytes(&[7; 32]);
    let manifest = SignedRelease::decode(&fixture("v2.release"))
        .unwrap()
        .manifest;
    let protected = HeaderBuilder::new()
        .content_type("application/vnd.ota.manifest+cbor".into())
        .build();
    let signature = CoseSignatureBuilder::new()
        .protected(
            HeaderBuilder::new()
                .algorithm(iana::Algorithm::EdDSA)
                .build(),
        )
        .unprotected(
            HeaderBuilder::new()
                .key_id(KeyId::of(&key.verifying_key()).0.to_vec())
                .build(),
        )
        .build();
    let bytes = CoseSignBuilder::new()
        .protected(protected)
        .payload(manifest.to_cbor())
        .add_created_signature(signature, b"", |data| key.sign(data).to_bytes().to_vec())
        .build()
        .to_tagged_vec()
        .unwrap();
    let trust = TrustSet::new(vec![key.verifying_key()], 1).unwrap();
    let policy = Policy {
        hardware_class: Some("gw-a".into()),
        security_floor: 1,
        now: 1_750_000_000,
    };
    let verified = SignedRelease::decode(&bytes)
        .unwrap()
        .verify(&trust, &policy)
        .unwrap();
    assert_eq!(verified.manifest, manifest);
    // And the untagged form is refused: a release is always the tagged COSE_Sign.
    let untagged = CoseSign::from_tagged_slice(&bytes)
        .unwrap()
        .to_vec()
        .unwrap();
    assert!(SignedRelease::decode(&untagged).is_err());
}

/// Issue 12.19: the pycose example of `docs/release-format.md`, exactly as written there, verifies
/// a fixture release with Python's `pycose` and `cbor2<6` (the interpreter of a virtualenv that
/// has them: `OTA_TEST_PYCOSE_PYTHON`; `.ci/run` makes one).
#[test]
#[ignore = "needs a Python with pycose and cbor2<6: set OTA_TEST_PYCOSE_PYTHON"]
fn issue12_the_pycose_example_of_release_format_md_verifies_a_release() {
    let python = std::env::var("OTA_TEST_PYCOSE_PYTHON")
        .expect("set OTA_TEST_PYCOSE_PYTHON to a Python with pycose and cbor2<6");
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/release-format.md"
    ))
    .unwrap();
    let section = doc
        .split("## Checking with another COSE implementation")
        .nth(1)
        .unwrap();
    let example = section
        .split("```python\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .unwrap();
    assert!(
        example.contains("open(\"v2.release\", \"rb\")"),
        "{example}"
    );
    // The example's one free name: the signer's raw public key.
    let script = format!(
        "raw_public_key_bytes = open('keys/test-only-a.pub.raw', 'rb').read()\n{example}print('verified')\n"
    );
    let out = std::process::Command::new(python)
        .args(["-c", &script])
        .current_dir(DATA)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the example failed: {stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "verified");
}

//! Golden tests: the generator reproduces the checked-in fixtures byte for byte, and every
//! fixture in the catalog produces the outcome it promises.

use std::collections::BTreeSet;

use ed25519_dalek::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _};
use ed25519_dalek::{SigningKey, VerifyingKey};
use firmware_fixtures::catalog::fixture;
use firmware_fixtures::images;
use firmware_fixtures::{
    Expected, ExpectedError, FIXTURES, TestKey, data_dir, diff, generate, list_files, read, render,
};
use ota_core::release::{Limits, ReleaseError, SignedRelease};

const REGENERATE: &str = "the checked-in fixtures differ from the generator: if the change is \
                          intended, run `cargo run -p firmware-fixtures` and commit \
                          firmware-fixtures/data/";

#[test]
fn generator_reproduces_the_checked_in_files_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let written = generate(tmp.path()).unwrap();

    let generated = list_files(tmp.path()).unwrap();
    let checked_in = list_files(&data_dir()).unwrap();
    assert_eq!(generated, checked_in, "file list: {REGENERATE}");
    assert_eq!(written.len(), generated.len());

    for name in &generated {
        let new = std::fs::read(tmp.path().join(name)).unwrap();
        let old = std::fs::read(data_dir().join(name)).unwrap();
        assert!(new == old, "{name}: {REGENERATE}");
    }
    assert_eq!(
        diff(&data_dir()).unwrap(),
        Vec::<String>::new(),
        "{REGENERATE}"
    );
}

#[test]
fn generation_is_deterministic() {
    assert_eq!(render().unwrap(), render().unwrap());
    let tmp = tempfile::tempdir().unwrap();
    generate(tmp.path()).unwrap();
    generate(tmp.path()).unwrap();
    assert_eq!(diff(tmp.path()).unwrap(), Vec::<String>::new());
}

#[test]
fn every_fixture_produces_its_expected_outcome() {
    for f in FIXTURES {
        let outcome = f.evaluate().unwrap();
        assert!(
            f.expected.matches(&outcome),
            "{}: expected {}, got {outcome:?}",
            f.name,
            f.expected
        );
    }
}

#[test]
fn hostile_fixtures_each_have_their_own_variant() {
    let hostile: Vec<ExpectedError> = FIXTURES
        .iter()
        .filter_map(|f| match f.expected {
            Expected::Fails(e) => Some(e),
            Expected::Valid => None,
        })
        .collect();
    let distinct: BTreeSet<_> = hostile.iter().collect();
    assert_eq!(distinct.len(), hostile.len(), "{hostile:?}");
    // Every variant a file can provoke is covered.
    assert_eq!(distinct.len(), 14);
}

#[test]
fn the_catalog_names_every_release_file_and_only_existing_files() {
    let files = list_files(&data_dir()).unwrap();
    let releases: BTreeSet<&str> = files
        .iter()
        .map(String::as_str)
        .filter(|f| f.ends_with(".release"))
        .collect();
    let named: BTreeSet<&str> = FIXTURES.iter().map(|f| f.release).collect();
    assert_eq!(releases, named);
    for f in FIXTURES {
        assert!(files.iter().any(|x| x == f.artifact), "{}", f.artifact);
    }
    let names: BTreeSet<&str> = FIXTURES.iter().map(|f| f.name).collect();
    assert_eq!(names.len(), FIXTURES.len(), "fixture names are unique");
}

#[test]
fn key_files_hold_the_deterministic_test_only_keys() {
    for key in TestKey::ALL {
        assert!(key.name().starts_with("test-only-"));
        assert!(key.seed_label().contains("TEST-ONLY"));
        let pem = String::from_utf8(read(&key.private_pem_file()).unwrap()).unwrap();
        let signing = SigningKey::from_pkcs8_pem(&pem).unwrap();
        assert_eq!(signing.to_bytes(), key.seed());
        let pem = String::from_utf8(read(&key.public_pem_file()).unwrap()).unwrap();
        let public = VerifyingKey::from_public_key_pem(&pem).unwrap();
        assert_eq!(public, key.verifying_key());
        assert_eq!(
            read(&key.public_raw_file()).unwrap(),
            key.verifying_key().as_bytes()
        );
    }
    let trust = firmware_fixtures::trust_set(1).unwrap();
    assert!(trust.key(&TestKey::Unknown.key_id().0).is_none());
    assert_eq!(trust.keys().count(), 3);
}

#[test]
fn good_releases_round_trip_and_name_their_images() {
    for f in FIXTURES.iter().filter(|f| f.is_good()) {
        let bytes = read(f.release).unwrap();
        let release = SignedRelease::decode(&bytes).unwrap();
        assert_eq!(release.encode(), bytes, "{}: canonical encoding", f.name);
        let image = read(f.artifact).unwrap();
        assert_eq!(
            release.manifest.artifact_digest(),
            ota_core::digest::Digest::of(&image)
        );
        assert_eq!(release.manifest.product, firmware_fixtures::PRODUCT);
        assert!(release.manifest.hardware.iter().any(|h| h == "gw-a"));
    }
}

#[test]
fn v2_again_is_a_re_signing_of_the_same_artifact() {
    let v2 = SignedRelease::decode(&read("v2.release").unwrap()).unwrap();
    let again = SignedRelease::decode(&read("v2-again.release").unwrap()).unwrap();
    assert_ne!(v2.encode(), again.encode());
    assert_eq!(v2.manifest.artifact_sha256, again.manifest.artifact_sha256);
    assert_eq!(v2.manifest.artifact_size, again.manifest.artifact_size);
    assert_eq!(
        v2.manifest.security_version,
        again.manifest.security_version
    );
    assert_ne!(v2.manifest.version, again.manifest.version);
}

#[test]
fn the_catalog_descriptions_match_the_bytes() {
    let v2 = read("v2.release").unwrap();
    let junk = read("trailing-junk.release").unwrap();
    let extra = junk.len() - v2.len();
    assert!(junk.starts_with(&v2));
    assert!(
        fixture("trailing-junk")
            .unwrap()
            .how
            .contains(&format!("the {extra} bytes"))
    );
    assert!(
        fixture("longer-artifact")
            .unwrap()
            .how
            .contains(&format!("{} extra bytes", images::LONGER_SUFFIX.len()))
    );
    assert!(
        fixture("short-artifact")
            .unwrap()
            .how
            .contains(&format!("first {} bytes", images::SHORT_LEN))
    );
    let truncated = read("truncated.release").unwrap();
    assert_eq!(truncated, v2[..v2.len() / 2]);
    assert!(matches!(
        SignedRelease::decode(&read("oversized-product.release").unwrap()),
        Err(ReleaseError::LimitExceeded { what: "product", limit }) if limit == Limits::MAX_NAME_BYTES
    ));
    assert!(
        fixture("oversized-product")
            .unwrap()
            .how
            .contains(&format!("{}-byte product", Limits::MAX_NAME_BYTES + 1))
    );
}

#[test]
fn readme_lists_every_file_and_fixture_and_warns() {
    let readme = String::from_utf8(read("README.md").unwrap()).unwrap();
    assert!(readme.contains("TEST-ONLY"));
    assert!(readme.contains("cargo run -p firmware-fixtures"));
    for file in list_files(&data_dir()).unwrap() {
        assert!(readme.contains(&format!("`{file}`")), "{file}");
    }
    for f in FIXTURES {
        assert!(readme.contains(&f.expected.to_string()), "{}", f.name);
    }
}

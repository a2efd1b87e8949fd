//! Key rotation: a trust-set update signed by k of the current keys is accepted once; a rotation
//! signed by revoked or too few keys, a replayed one, or one posing as a release is refused.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers unwrap: a failing unwrap is a failing test"
)]

use ota_core::release::{
    ReleaseError, SignedRelease, SignedTrustUpdate, SigningKey, TrustSet, TrustState, TrustUpdate,
    TrustUpdateError, VerifyingKey, sign_trust_update,
};

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn public(seeds: &[u8]) -> Vec<VerifyingKey> {
    seeds.iter().map(|s| key(*s).verifying_key()).collect()
}

fn trust(seeds: &[u8], k: usize) -> TrustSet {
    TrustSet::new(public(seeds), k).unwrap()
}

/// {1,2,3} k=2 rotates to {2,3,4} k=2: key 1 is revoked.
fn rotation(sequence: u64, signers: &[u8]) -> Vec<u8> {
    let update = TrustUpdate::new(sequence, &public(&[2, 3, 4]), 2, 1_750_000_000);
    let keys: Vec<SigningKey> = signers.iter().map(|s| key(*s)).collect();
    sign_trust_update(&update, &keys)
}

#[test]
fn rotation_signed_by_k_current_keys_is_accepted() {
    let current = trust(&[1, 2, 3], 2);
    let signed = SignedTrustUpdate::decode(&rotation(1, &[1, 3])).unwrap();
    let (next, signers) = signed.verify(&current, 0).unwrap();
    assert_eq!(next, trust(&[2, 3, 4], 2));
    assert_eq!(signers.len(), 2);
}

#[test]
fn rotation_signed_by_too_few_keys_is_refused() {
    let current = trust(&[1, 2, 3], 2);
    let signed = SignedTrustUpdate::decode(&rotation(1, &[1, 1])).unwrap();
    assert_eq!(
        signed.verify(&current, 0),
        Err(TrustUpdateError::Envelope(ReleaseError::ThresholdNotMet {
            valid: 1,
            required: 2
        }))
    );
}

#[test]
fn a_revoked_key_cannot_sign_the_next_rotation() {
    // After the rotation above, key 1 is revoked: it and a new outsider cannot rotate again.
    let after = trust(&[2, 3, 4], 2);
    let update = TrustUpdate::new(2, &public(&[1, 5]), 1, 1_750_000_000);
    let bytes = sign_trust_update(&update, &[key(1), key(5)]);
    let signed = SignedTrustUpdate::decode(&bytes).unwrap();
    assert_eq!(
        signed.verify(&after, 1),
        Err(TrustUpdateError::Envelope(ReleaseError::UnknownKey))
    );
}

#[test]
fn a_replayed_rotation_is_stale() {
    let current = trust(&[1, 2, 3], 2);
    let signed = SignedTrustUpdate::decode(&rotation(1, &[1, 2])).unwrap();
    assert_eq!(
        signed.verify(&current, 1),
        Err(TrustUpdateError::Stale {
            sequence: 1,
            current: 1
        })
    );
}

#[test]
fn an_unusable_new_set_is_refused() {
    let current = trust(&[1], 1);
    let update = TrustUpdate::new(1, &public(&[2]), 2, 0);
    let signed = SignedTrustUpdate::decode(&sign_trust_update(&update, &[key(1)])).unwrap();
    assert!(matches!(
        signed.verify(&current, 0),
        Err(TrustUpdateError::InvalidTrustSet(_))
    ));
}

#[test]
fn a_trust_update_never_passes_as_a_release_and_back() {
    let as_release = SignedRelease::decode(&rotation(1, &[1, 2]));
    assert!(matches!(as_release, Err(ReleaseError::Malformed(_))));
    let release = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../firmware-fixtures/data/v2.release"
    ))
    .unwrap();
    assert!(matches!(
        SignedTrustUpdate::decode(&release),
        Err(TrustUpdateError::Envelope(ReleaseError::Malformed(_)))
    ));
}

#[test]
fn issue7_trust_state_checks_without_changing_then_accepts_and_restores_from_its_record() {
    let mut state = TrustState::initial(trust(&[1, 2, 3], 2));
    let bytes = rotation(1, &[1, 2]);
    // A refused update (too few signatures) changes nothing.
    assert!(matches!(
        state.check(&rotation(1, &[1])),
        Err(TrustUpdateError::Envelope(
            ReleaseError::ThresholdNotMet { .. }
        ))
    ));
    let checked = state.check(&bytes).unwrap();
    assert_eq!(state.sequence(), 0, "check alone switches nothing");
    assert_eq!(checked.signers.len(), 2);
    state.accept(checked);
    assert_eq!(state.sequence(), 1);
    assert_eq!(state.set(), &trust(&[2, 3, 4], 2));
    // The stored record gives the same state back (what an agent restart loads).
    assert_eq!(TrustState::from_record(&bytes).unwrap(), state);
    // The same sequence again (even signed by current keys) is stale; key 1 is revoked.
    assert!(matches!(
        state.check(&rotation(1, &[2, 3])),
        Err(TrustUpdateError::Stale { .. })
    ));
    let by_revoked = {
        let update = TrustUpdate::new(2, &public(&[1]), 1, 0);
        sign_trust_update(&update, &[key(1)])
    };
    assert_eq!(
        state.check(&by_revoked),
        Err(TrustUpdateError::Envelope(ReleaseError::UnknownKey))
    );
    assert!(TrustState::from_record(b"garbage").is_err());
}

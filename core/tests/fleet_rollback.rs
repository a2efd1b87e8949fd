//! Issue 13: where an abort sends a device back is decided in core ([`RollbackCheck`]), one
//! case per row of its table.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers unwrap: a failing unwrap is a failing test"
)]

use std::collections::BTreeMap;

use ota_core::digest::Digest;
use ota_core::fleet::RollbackCheck;
use ota_core::fleet::targeting::NO_RELEASE;
use ota_core::release::{FORMAT_VERSION, Manifest, SigningKey, TrustSet, sign};
use ota_core::rollout::NoRollbackCause;

const NOW: u64 = 1_750_000_000;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// A release of `version` at `security_version`, expiring at `expires`, signed by `signer`.
fn release(version: &str, security_version: u32, expires: u64, signer: u8) -> Vec<u8> {
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        product: "gateway-fw".into(),
        version: version.into(),
        security_version,
        artifact_sha256: Digest::of(version.as_bytes()).0,
        artifact_size: 1,
        hardware: vec!["gw-a".into()],
        created: NOW - 100,
        expires: Some(expires),
        installer: None,
        metadata: BTreeMap::new(),
        chunk_index: None,
    };
    sign(&manifest, &[key(signer)])
}

/// The check of going back to `target` (published as `target_release`) for a device that
/// reported floor 1 and did not commit the rollout's release.
fn check<'a>(target_release: Option<&'a [u8]>, trust: &'a TrustSet) -> RollbackCheck<'a> {
    RollbackCheck {
        target: Digest::of(b"known-good"),
        target_release,
        committed: false,
        rollout_release: None,
        reported_floor: 1,
        trust,
        now: NOW,
    }
}

#[test]
fn each_row_of_the_table_gives_its_cause() {
    let trust = TrustSet::new(vec![key(1).verifying_key()], 1).unwrap();
    let good = release("1.0.0", 1, NOW + 3600, 1);

    assert_eq!(check(Some(&good), &trust).refusal(), None);
    let nothing = RollbackCheck {
        target: NO_RELEASE,
        ..check(Some(&good), &trust)
    };
    assert_eq!(nothing.refusal(), Some(NoRollbackCause::NoKnownGood));
    assert_eq!(
        check(None, &trust).refusal(),
        Some(NoRollbackCause::Unpublished)
    );
    assert_eq!(
        check(Some(b"not a release"), &trust).refusal(),
        Some(NoRollbackCause::Unusable)
    );
    let rotated_out = release("1.0.0", 1, NOW + 3600, 2);
    assert_eq!(
        check(Some(&rotated_out), &trust).refusal(),
        Some(NoRollbackCause::Untrusted)
    );
    let expired = release("1.0.0", 1, NOW, 1);
    assert_eq!(
        check(Some(&expired), &trust).refusal(),
        Some(NoRollbackCause::Expired { expires: NOW })
    );
    let below = RollbackCheck {
        reported_floor: 2,
        ..check(Some(&good), &trust)
    };
    assert_eq!(
        below.refusal(),
        Some(NoRollbackCause::SecurityFloor {
            security_version: 1,
            floor: 2
        })
    );
}

#[test]
fn committing_the_rollouts_release_raises_the_floor() {
    let trust = TrustSet::new(vec![key(1).verifying_key()], 1).unwrap();
    let good = release("1.0.0", 1, NOW + 3600, 1);
    let bad = release("2.0.0", 3, NOW + 3600, 1);
    let took_it = RollbackCheck {
        committed: true,
        rollout_release: Some(&bad),
        ..check(Some(&good), &trust)
    };
    assert_eq!(took_it.floor(), 3);
    assert_eq!(
        took_it.refusal(),
        Some(NoRollbackCause::SecurityFloor {
            security_version: 1,
            floor: 3
        })
    );
    // Not committed (failed, rolled back, on trial): its floor is the reported one.
    let did_not = RollbackCheck {
        committed: false,
        ..took_it
    };
    assert_eq!((did_not.floor(), did_not.refusal()), (1, None));
    // The rollout's release unreadable: the reported floor stands.
    let unreadable = RollbackCheck {
        rollout_release: Some(b"garbage"),
        ..took_it
    };
    assert_eq!((unreadable.floor(), unreadable.refusal()), (1, None));
}

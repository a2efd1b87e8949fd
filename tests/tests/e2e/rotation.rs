//! Issue 7, key rotation end to end: trust-set updates go from `ota key rotate`'s format through
//! `POST /api/v1/trust` to the devices over MQTT (`ota/v1/trust`, retained); the agent verifies,
//! persists and uses them; rotations signed by too few or revoked keys are refused and change
//! nothing; the rotated set survives an agent restart (`docs/security.md`, key rotation rows).

use std::time::Duration;

use ota_core::release::TrustSet;
use ota_core::wire::{ExecutionState, RejectCause, TrustOutcome, TrustRejectCause};
use ota_demo::api::ApiError;
use ota_demo::device::Device;
use ota_demo::firmware::FirmwareTeam;
use ota_demo::lab::unix_now;
use rumqttc::{AsyncClient, QoS};
use serde_json::json;

use crate::world::{Backend, World, patiently, suite, wait_device};

suite!(
    issue7_key_rotation_rotates_revokes_and_survives_restart,
    issue12_abort_after_rotation_reports_no_rollback_target_and_countersigning_recovers,
);

/// Waits until the device handled a trust-set update with outcome `name` at `sequence`.
async fn trust_outcome(device: &Device, sequence: u64, pred: impl Fn(&TrustOutcome) -> bool) {
    wait_device(device, |d| {
        d.status().is_some_and(|s| {
            s.trust_sequence == sequence && s.last_trust.as_ref().is_some_and(&pred)
        })
    })
    .await;
}

fn rejected(cause: TrustRejectCause) -> impl Fn(&TrustOutcome) -> bool {
    move |o| matches!(o, TrustOutcome::Rejected { cause: c, .. } if *c == cause)
}

fn rotated(o: &TrustOutcome) -> bool {
    matches!(o, TrustOutcome::Rotated { .. })
}

/// Asserts that a desired state was refused for `cause`.
#[track_caller]
fn assert_refused(state: &ExecutionState, cause: RejectCause) {
    assert!(
        matches!(state, ExecutionState::Rejected { cause: c, .. } if *c == cause),
        "expected rejected {cause:?}: {state:?}"
    );
}

/// Publishes `update` on the trust topic as a compromised server would (not retained).
async fn inject_trust(w: &World, client: &AsyncClient, update: Vec<u8>) {
    client
        .publish(w.lab.topics().trust(), QoS::AtLeastOnce, false, update)
        .await
        .unwrap();
}

/// {A} k=1 → {A, B} k=2 → {B} k=1 (A revoked). On the way: a rotation signed by B alone (too
/// few) and one by the revoked A (unknown key) are refused by server and device alike, and
/// change nothing; releases signed by A alone are refused once A is revoked, B's install;
/// the device keeps {B} across an agent restart.
async fn issue7_key_rotation_rotates_revokes_and_survives_restart(backend: Backend) {
    let mut w = World::start(backend, 1, |_| {}).await;
    let api = w.lab.api().clone();
    let a = w.lab.team();
    let b = FirmwareTeam::new().unwrap();
    let attacker = w.attacker("rotation-attacker");
    let size = w.lab.factory().image.len();

    // 1. {A} k=1 → {A, B} k=2, signed by A.
    let both = a.sign_rotation(&[], 1, &[a.public_key(), b.public_key()], 2);
    let view = api.publish_trust(&both).await.unwrap();
    assert_eq!(view["sequence"], 1);
    let device = &w.lab.devices()[0];
    trust_outcome(device, 1, rotated).await;

    // 2. Too few: B alone (1 of 2) rotates to {B} k=1. The server refuses it; a compromised
    //    server pushing it anyway gets it refused by the device. Nothing changes.
    let b_alone = b.sign_rotation(&[], 2, &[b.public_key()], 1);
    match api.publish_trust(&b_alone).await {
        Err(ApiError::Refused {
            status: 422, code, ..
        }) => {
            assert_eq!(code, "too-few-signatures");
        }
        other => panic!("expected a 422 too-few-signatures, got {other:?}"),
    }
    inject_trust(&w, &attacker, b_alone).await;
    trust_outcome(device, 1, rejected(TrustRejectCause::TooFewSignatures)).await;

    // A release needs both keys now: signed by A alone it is refused (threshold not met).
    let a_only = a.build("3.0.0", true, size, unix_now());
    let state = w
        .inject_desired(&attacker, device, a_only.release.clone())
        .await;
    assert_refused(&state, RejectCause::ThresholdNotMet);

    // 3. {A, B} k=2 → {B} k=1, signed by both: A is revoked.
    let revoke_a = a.sign_rotation(&[&b], 2, &[b.public_key()], 1);
    assert_eq!(api.publish_trust(&revoke_a).await.unwrap()["sequence"], 2);
    trust_outcome(device, 2, rotated).await;
    // The server knows the device took it (its trust report): nobody is behind.
    let on_it = patiently(Duration::from_millis(100), async || {
        let shown = api.trust().await.ok()?;
        (shown["devices"]["on_this_set"] == 1).then_some(shown)
    })
    .await;
    let shown = on_it.expect("the server never counted the device on sequence 2");
    assert_eq!(shown["devices"]["behind"], json!([]), "{shown:#}");
    assert_eq!(
        shown["devices"]["by_sequence"],
        json!([{ "sequence": 2, "devices": 1 }]),
        "{shown:#}"
    );

    // 4. The revoked A cannot rotate back (unknown key) — not through the server, not around it.
    let a_back = a.sign_rotation(&[], 3, &[a.public_key()], 1);
    assert!(matches!(
        api.publish_trust(&a_back).await,
        Err(ApiError::Refused { status: 422, ref code, .. }) if code == "unknown-key"
    ));
    inject_trust(&w, &attacker, a_back).await;
    trust_outcome(device, 2, rejected(TrustRejectCause::UnknownKey)).await;

    // 5. Revoke: a release signed only by the removed key A is refused, before any fetch.
    let bytes_before = device.bytes_downloaded();
    let state = w
        .inject_desired(&attacker, device, a_only.release.clone())
        .await;
    assert_refused(&state, RejectCause::UnknownKey);
    assert_eq!(device.bytes_downloaded(), bytes_before);

    // 6. Rotate: a release signed by the new key B is published and installs — created right
    //    after the injection above, which raised the device's generation above the server's:
    //    whether the server hears of it before or after it notifies the device, the desired
    //    state goes out above it (issue 13, the generation ledger's watermark).
    let v2 = b.build("2.0.0", true, size, unix_now());
    w.lab.api().publish(&v2).await.unwrap();
    let id = w.rollout(&v2, &[100], json!({})).await;
    assert_eq!(w.finished(id).await["status"], "completed");
    w.converged(&v2.digest).await;
    assert!(
        w.lab.api().publish(&a_only).await.is_err(),
        "the server refuses A's release too"
    );

    // 7. Restart: the persisted set {B} is used from the start.
    let device = &mut w.lab.devices_mut()[0];
    device.stop().await.unwrap();
    device.start().await.unwrap();
    let status = device.status().unwrap();
    assert_eq!(
        status.trust_sequence, 2,
        "the trust record is loaded at start"
    );
    let expected = TrustSet::new(vec![b.public_key()], 1).unwrap();
    let record =
        std::fs::read(device.root().join("data").join(ota_agent::trust::FILE_NAME)).unwrap();
    assert_eq!(
        ota_core::release::TrustState::from_record(&record)
            .unwrap()
            .set(),
        &expected
    );
    let device = &w.lab.devices()[0];
    // Subscribed again (a non-retained publication before that would be lost).
    wait_device(device, |d| d.status().is_some_and(|s| s.connected)).await;
    let state = w
        .inject_desired(&attacker, device, a_only.release.clone())
        .await;
    assert_refused(&state, RejectCause::UnknownKey); // after the restart

    // The server's audit log has the device's answers.
    let events = api
        .events(&[("kind", "trust-rotated"), ("device", device.id())])
        .await
        .unwrap();
    assert_eq!(events.len(), 2, "{events:#?}");
    let refused = api
        .events(&[("kind", "trust-rejected"), ("device", device.id())])
        .await
        .unwrap();
    let causes: Vec<&str> = refused
        .iter()
        .filter_map(|e| e["details"]["cause"].as_str())
        .collect();
    assert_eq!(
        causes,
        ["too-few-signatures", "unknown-key"],
        "{refused:#?}"
    );

    // (World::finish clears the retained trust update on a shared broker.)
    w.finish().await;
}

/// Issue 12.1 with real agents: rotate {A} → {B} (A revoked), roll out B's release, abort
/// after the device committed it. The device's known-good (the factory release) is signed by
/// A only: the server sends no rollback the agent would refuse (`unknown-key`) and lists the
/// device as `no-rollback-target` (`untrusted`). The firmware team countersigns the factory
/// release with B; the server takes it as a re-signing, and a rollout of it brings the device
/// back.
async fn issue12_abort_after_rotation_reports_no_rollback_target_and_countersigning_recovers(
    backend: Backend,
) {
    let w = World::start(backend, 1, |_| {}).await;
    let api = w.lab.api().clone();
    let a = w.lab.team();
    let b = FirmwareTeam::new().unwrap();
    let size = w.lab.factory().image.len();
    let device = &w.lab.devices()[0];

    let revoke_a = a.sign_rotation(&[], 1, &[b.public_key()], 1);
    assert_eq!(api.publish_trust(&revoke_a).await.unwrap()["sequence"], 1);
    trust_outcome(device, 1, rotated).await;

    let v2 = b.build("2.0.0", true, size, unix_now());
    api.publish(&v2).await.unwrap();
    let id = w.rollout(&v2, &[100], json!({ "bake_secs": 3600 })).await;
    w.converged(&v2.digest).await;
    w.wait_rollout(id, |r| r["totals"]["succeeded"] == 1).await;
    let generation = device.status().unwrap().machine.last_generation;

    let view = api.operate(id, "abort").await.unwrap();
    let listed = &view["no_rollback_target"];
    assert_eq!(listed[0]["device"], device.id(), "{view:#}");
    assert_eq!(listed[0]["cause"], "untrusted", "{view:#}");
    let events = api
        .events(&[("kind", "no-rollback-target"), ("device", device.id())])
        .await
        .unwrap();
    assert_eq!(events.len(), 1, "{events:#?}");
    assert!(
        api.events(&[("kind", "device-rollback"), ("device", device.id())])
            .await
            .unwrap()
            .is_empty()
    );

    // Recovery: countersign the factory release with B, then roll it out.
    let factory = b.countersign(w.lab.factory()).unwrap();
    let answer = api.publish(&factory).await.unwrap();
    assert_eq!(answer["status"], "re-signed", "{answer:#}");
    // Nothing was sent to the device in between (no refused rollback).
    assert_eq!(device.status().unwrap().machine.last_generation, generation);
    let back = w.rollout(&factory, &[100], json!({})).await;
    assert_eq!(w.finished(back).await["status"], "completed");
    w.converged(&factory.digest).await;
    w.finish().await;
}

//! Issue 12 ("truthful states") and issue 19.9: every fallback, refusal and failure reaches
//! the operator as it happened. An abort sends devices only rollback targets they accept and
//! lists the devices left without one (`no-rollback-target`); a device's own fallback is not
//! overwritten; a release that cannot be decoded is still counted; nothing is sent that points
//! nowhere; expired releases and ambiguous versions are refused up front; after an abort, the
//! rollout follows every device it sent back until it is back.

use std::time::Duration;

use ota_core::digest::Digest;
use ota_core::release::{SigningKey, TrustUpdate, VerifyingKey, sign, sign_trust_update};
use ota_core::wire::{
    DeviceId, Event, ExecutionState, RejectCause, TopicKind, UpdateOutcome, WireMessage,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::fleet::{Backend, World, count, metrics, suite, wait_for};
use crate::sim::{Behavior, device, running_of};
use crate::util::{NOW, Options, TOKEN, TestServer, artifact, key, manifest, release};

suite!(
    issue12_abort_after_rotation,
    issue19_abort_after_commit_above_the_floor,
    issue12_own_rollback_is_kept,
    issue12_abort_without_a_running_release,
    issue12_undecodable_rejection_is_counted,
    issue12_expired_release,
    an_abort_follows_every_device_it_sent_back,
);

/// An error answer: status, cause and message.
async fn refusal(r: reqwest::Response) -> (StatusCode, String, String) {
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    (
        status,
        body["cause"].as_str().unwrap().to_string(),
        body["error"].as_str().unwrap().to_string(),
    )
}

fn digest_of(release: &[u8]) -> String {
    running_of(release).digest.to_string()
}

/// A rollout of `release` over `w`'s devices, one wave, a long bake (so it can be aborted
/// after the devices committed), with `spec` merged in.
async fn create_of(w: &World, release: &[u8], spec: Value) -> i64 {
    let mut body = json!({ "release": digest_of(release), "bake_secs": 3600 });
    for (k, v) in spec.as_object().unwrap() {
        body[k] = v.clone();
    }
    let (status, body) = w.create(TOKEN, body).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["rollout"]["id"].as_i64().unwrap()
}

async fn abort(w: &World, id: i64) -> Value {
    let (status, body) = w.op(TOKEN, id, "abort").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["rollout"].clone()
}

fn seen(w: &World, i: usize) -> usize {
    w.sim.device(&w.id(i)).unwrap().seen.len()
}

/// The `no-rollback-target` list of a rollout view, as (device, cause).
fn no_rollback(view: &Value) -> Vec<(String, String)> {
    let mut list: Vec<(String, String)> = view["no_rollback_target"]
        .as_array()
        .unwrap_or_else(|| panic!("no no_rollback_target in {view}"))
        .iter()
        .map(|n| {
            (
                n["device"].as_str().unwrap().to_string(),
                n["cause"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    list.sort();
    list
}

/// Issue 12.1: rotate A → B, roll out a release signed by B, abort: the known-good release
/// (signed by A only) would be refused by every device, so none is sent; the rollout, its
/// events and its status list the devices with cause `untrusted`. Countersigning the
/// known-good with B re-signs it (200, same artifact), and a rollout of it then carries B's
/// signatures.
async fn issue12_abort_after_rotation(backend: Backend) {
    let w = World::start(backend, Options::default()).await;
    let keys: Vec<VerifyingKey> = [4u8, 5].iter().map(|&n| key(n).verifying_key()).collect();
    let update = sign_trust_update(&TrustUpdate::new(1, &keys, 1, 0), &[key(1)]);
    let r =
        w.t.client
            .post(w.t.url("/api/v1/trust"))
            .bearer_auth(TOKEN)
            .body(update)
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let art = artifact(5000, 3);
    let by_b = release("3.0.0", &art, &[4]);
    assert_eq!(w.t.publish(by_b.clone(), art).await.status(), 201);
    w.add(w.sim_devices(2, |_| Behavior::Succeed)).await;
    let id = create_of(&w, &by_b, json!({})).await;
    wait_for("both committed", || async {
        count(&w.rollout(id).await, "succeeded") == 2
    })
    .await;

    let view = abort(&w, id).await;
    let expected = vec![
        (w.id(0), "untrusted".to_string()),
        (w.id(1), "untrusted".to_string()),
    ];
    assert_eq!(no_rollback(&view), expected);
    assert_eq!(no_rollback(&w.rollout(id).await), expected);
    let events = w
        .events(&format!("rollout={id}&kind=no-rollback-target"))
        .await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0]["details"]["cause"], "untrusted");
    assert_eq!(events[0]["details"]["to"], w.old_digest());
    assert!(
        w.events(&format!("rollout={id}&kind=device-rollback"))
            .await
            .is_empty()
    );
    // Nothing the devices would refuse was sent.
    assert_eq!((seen(&w, 0), seen(&w, 1)), (1, 1));

    // The server knows which releases the trust set in force still verifies.
    let listed: Value = w.t.get_json("/api/v1/releases").await;
    let trusted = |digest: &str| {
        listed["releases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["digest"] == digest)
            .map(|r| r["trusted"].clone())
    };
    assert_eq!(trusted(&w.old_digest()), Some(json!(false)));
    assert_eq!(trusted(&digest_of(&by_b)), Some(json!(true)));

    // Recovery: countersign the known-good release with B (same manifest, new signature).
    let old_art = artifact(3000, 1);
    let countersigned = release("1.0.0", &old_art, &[4]);
    let r = w.t.publish(countersigned.clone(), old_art).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "re-signed", "{body}");
    let by_b_record: Value =
        w.t.get_json(&format!("/api/v1/releases/{}", digest_of(&by_b)))
            .await;
    assert_eq!(body["release"]["signers"], by_b_record["signers"]);
    let old: Value =
        w.t.get_json(&format!("/api/v1/releases/{}", w.old_digest()))
            .await;
    assert_eq!(old["trusted"], true, "{old}");
    assert_eq!(
        w.events("kind=release-resigned").await.len(),
        1,
        "one release-resigned event"
    );
    // A rollout of the known-good release now sends B's signatures.
    create_of(&w, &w.old, json!({ "bake_secs": 0 })).await;
    wait_for("devices sent the countersigned release", || async {
        seen(&w, 0) == 2 && seen(&w, 1) == 2
    })
    .await;
    for i in 0..2 {
        let d = w.sim.device(&w.id(i)).unwrap();
        assert_eq!(d.seen[1].release, countersigned);
    }
    w.finish().await;
}

/// Issue 19.9: devices that committed a release with a higher security version raised their
/// floor; their known-good release is below it, so the abort sends them nothing and says why
/// (`security-floor`, with both figures).
async fn issue19_abort_after_commit_above_the_floor(backend: Backend) {
    let w = World::start(backend, Options::default()).await;
    let art = artifact(4500, 7);
    let mut m = manifest("2.1.0", &art);
    m.security_version = 2;
    let secure = sign(&m, &[key(1)]);
    assert_eq!(w.t.publish(secure.clone(), art).await.status(), 201);
    w.add(w.sim_devices(2, |_| Behavior::Succeed)).await;
    let id = create_of(&w, &secure, json!({})).await;
    wait_for("both committed", || async {
        count(&w.rollout(id).await, "succeeded") == 2
    })
    .await;
    let view = abort(&w, id).await;
    assert_eq!(
        no_rollback(&view),
        vec![
            (w.id(0), "security-floor".to_string()),
            (w.id(1), "security-floor".to_string()),
        ]
    );
    let first = &view["no_rollback_target"][0];
    assert_eq!(first["security_version"], 1);
    assert_eq!(first["floor"], 2);
    assert_eq!((seen(&w, 0), seen(&w, 1)), (1, 1));
    w.finish().await;
}

/// Issue 12.3: a device that fell back by itself keeps its real outcome: the abort sends it
/// no rollback (which it would answer `skipped-identical`), so `devices list` shows
/// `rolled-back`.
async fn issue12_own_rollback_is_kept(backend: Backend) {
    let w = World::start(backend, Options::default()).await;
    let devices = w.sim_devices(2, |i| {
        if i == 0 {
            Behavior::RollBack
        } else {
            Behavior::Silent
        }
    });
    w.add(devices).await;
    let id = create_of(
        &w,
        &w.new,
        json!({ "max_failure": 5, "min_executed": 1, "bake_secs": 0 }),
    )
    .await;
    w.wait_status(id, "aborted").await;
    // The silent device's cancel proves the abort's desired states went out.
    wait_for("the cancel", || async { seen(&w, 1) == 2 }).await;
    assert_eq!(
        seen(&w, 0),
        1,
        "a rollback was sent to a device already back"
    );
    let list = w.devices(&format!("id={}", w.id(0))).await;
    assert_eq!(list[0]["last_result"], "rolled-back");
    // The record keeps the real outcome: why, and from which release.
    let outcome = &list[0]["last_outcome"];
    assert_eq!(outcome["state"], "rolled-back", "{outcome}");
    assert_eq!(outcome["cause"], "probe-failed", "{outcome}");
    assert_eq!(outcome["release"], digest_of(&w.new), "{outcome}");
    assert_eq!(outcome["rollout"], id, "{outcome}");
    w.finish().await;
}

/// Issue 12.5: a device that ran no release gets no cancel to an all-zero digest and no
/// `desired-unavailable`; one that took the release has no rollback target
/// (`no-known-good`).
async fn issue12_abort_without_a_running_release(backend: Backend) {
    let w = World::start(backend, Options::default()).await;
    w.add(vec![
        device(&w.id(0), "gw-a", None, Behavior::Defer),
        device(&w.id(1), "gw-a", None, Behavior::Succeed),
    ])
    .await;
    let id = create_of(&w, &w.new, json!({})).await;
    wait_for("one committed, one deferred", || async {
        let v = w.rollout(id).await;
        count(&v, "succeeded") == 1 && count(&v, "deferred-power") == 1
    })
    .await;
    let view = abort(&w, id).await;
    // The deferred device gets no cancel (it would point nowhere): it goes on with the
    // release, so it is listed as well.
    assert_eq!(
        no_rollback(&view),
        vec![
            (w.id(0), "no-known-good".to_string()),
            (w.id(1), "no-known-good".to_string())
        ]
    );
    assert!(view.get("recall").is_none(), "nobody was sent back: {view}");
    assert!(
        w.events(&format!("rollout={id}&kind=desired-unavailable"))
            .await
            .is_empty()
    );
    let cancels = w.events(&format!("rollout={id}&kind=device-cancel")).await;
    assert_eq!(cancels.len(), 1);
    assert_eq!(cancels[0]["details"]["sent"], false);
    assert_eq!(cancels[0]["details"]["to"], Value::Null);
    let zero = Digest([0; 32]);
    for i in 0..2 {
        let d = w.sim.device(&w.id(i)).unwrap();
        assert!(d.seen.iter().all(|s| s.digest != zero));
        assert_eq!(d.seen.len(), 1);
    }
    w.finish().await;
}

/// Issue 12.4: a device that cannot decode the release rejects it without a digest; the
/// rejection still counts for its execution (matched by rollout and generation), in the
/// rollout, the events and `/metrics`, instead of waiting for the inactivity timeout.
async fn issue12_undecodable_rejection_is_counted(backend: Backend) {
    let w = World::start(backend, Options::default()).await;
    w.add(w.sim_devices(2, |_| Behavior::Silent)).await;
    let id = create_of(&w, &w.new, json!({})).await;
    wait_for("both notified", || async {
        seen(&w, 0) == 1 && seen(&w, 1) == 1
    })
    .await;
    let desired = w.sim.device(&w.id(0)).unwrap().seen[0].clone();
    let dev = DeviceId::new(&w.id(0)).unwrap();
    let outcome = |generation| UpdateOutcome {
        generation,
        rollout_id: desired.rollout_id.clone(),
        digest: None,
        state: ExecutionState::Rejected {
            cause: RejectCause::Malformed,
            detail: "the release does not decode".into(),
        },
        at: NOW * 1000,
        transfer: None,
    };
    // A digest-less rejection of a generation the server did not send is not counted...
    let stray = Event::from_outcome(&dev, &outcome(desired.generation + 7));
    w.sim
        .publish_raw(
            &w.topics.device(&dev, TopicKind::Events),
            stray.to_cbor(),
            false,
        )
        .await;
    // ...the one answering the desired state is.
    let event = Event::from_outcome(&dev, &outcome(desired.generation));
    w.sim
        .publish_raw(
            &w.topics.device(&dev, TopicKind::Events),
            event.to_cbor(),
            false,
        )
        .await;
    wait_for("the rejection counted", || async {
        count(&w.rollout(id).await, "rejected") == 1
    })
    .await;
    let changes = w
        .events(&format!(
            "rollout={id}&kind=device-state-changed&device={}",
            w.id(0)
        ))
        .await;
    assert!(
        changes.iter().any(|e| e["details"]["to"] == "rejected"),
        "{changes:?}"
    );
    wait_for("metrics updated", || async {
        metrics(&w)
            .await
            .get("ota_executions{state=\"rejected\"}")
            .copied()
            == Some(1.0)
    })
    .await;
    w.finish().await;
}

/// Issue 12.2: `rollout create` warns when the release expires before the rollout can
/// plausibly finish (waves × bake), and refuses it once expired, naming the expiry.
async fn issue12_expired_release(backend: Backend) {
    let w = World::start(
        backend,
        Options {
            manual_clock: true,
            ..Options::default()
        },
    )
    .await;
    let art = artifact(2500, 9);
    let mut m = manifest("2.2.0", &art);
    m.expires = Some(NOW + 600);
    let expiring = sign(&m, &[key(1)]);
    assert_eq!(w.t.publish(expiring.clone(), art).await.status(), 201);
    w.add(w.sim_devices(1, |_| Behavior::Silent)).await;
    let (status, body) = w
        .create(
            TOKEN,
            json!({ "release": digest_of(&expiring), "waves": [50, 100], "bake_secs": 3600,
                    "dry_run": true }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let warnings = body["rollout"]["warnings"].to_string();
    assert!(warnings.contains(&(NOW + 600).to_string()), "{body}");
    // A short rollout gets no warning.
    let (_, body) = w
        .create(
            TOKEN,
            json!({ "release": digest_of(&expiring), "bake_secs": 60, "dry_run": true }),
        )
        .await;
    assert!(body["rollout"].get("warnings").is_none(), "{body}");

    w.t.advance(Duration::from_secs(601)).await;
    let r =
        w.t.post_as(
            TOKEN,
            "/api/v1/rollouts",
            &json!({ "release": digest_of(&expiring), "filter": w.filter() }),
        )
        .send()
        .await
        .unwrap();
    let (status, cause, message) = refusal(r).await;
    assert_eq!(
        (status, cause.as_str()),
        (StatusCode::CONFLICT, "release-expired")
    );
    assert!(message.contains(&(NOW + 600).to_string()), "{message}");
    w.finish().await;
}

/// Issue 12.11: a second release with the same product and version but another artifact is
/// refused (409, naming the release already published); a countersignature that changes the
/// security version is still a conflict.
#[tokio::test]
async fn issue12_same_version_other_artifact_is_refused() {
    let t = TestServer::start().await;
    let first = artifact(3000, 1);
    assert_eq!(
        t.publish(release("1.1.1", &first, &[1]), first.clone())
            .await
            .status(),
        201
    );
    let other = artifact(3100, 2);
    let (status, cause, message) =
        refusal(t.publish(release("1.1.1", &other, &[1]), other).await).await;
    assert_eq!(
        (status, cause.as_str()),
        (StatusCode::CONFLICT, "version-conflict")
    );
    let existing = Digest::of(&first).to_string();
    assert!(message.contains(&existing), "{message}");
    assert!(message.contains("1.1.1"), "{message}");

    let mut m = manifest("1.1.1", &first);
    m.security_version = 5;
    let signers: Vec<SigningKey> = vec![key(2)];
    let (status, cause, _) = refusal(t.publish(sign(&m, &signers), first.clone()).await).await;
    assert_eq!(
        (status, cause.as_str()),
        (StatusCode::CONFLICT, "release-conflict")
    );
    // The original is untouched.
    let stored: Value = t.get_json(&format!("/api/v1/releases/{existing}")).await;
    assert_eq!(stored["security_version"], 1);
}

/// Truthful states after an abort: the rollout follows every device it sent back (a rollback
/// or a cancel) until the device reports on where it was sent. Its view says how many are
/// back and how many are not (`recall`), each return is a `device-recalled` event, a device
/// that answers only after a server restart is still counted (the coordinator loads an
/// aborted rollout again while a device sent back is pending), and one that a newer rollout
/// reaches first is `superseded`.
async fn an_abort_follows_every_device_it_sent_back(backend: Backend) {
    let mut w = World::start(backend, Options::default()).await;
    let devices = w.sim_devices(4, |i| match i {
        0 => Behavior::Succeed,
        1 => Behavior::Defer,
        _ => Behavior::Silent,
    });
    w.add(devices).await;
    let id = create_of(&w, &w.new, json!({})).await;
    wait_for("one committed, one deferred, two silent", || async {
        let v = w.rollout(id).await;
        count(&v, "succeeded") == 1
            && count(&v, "deferred-power") == 1
            && count(&v, "notified") == 2
    })
    .await;
    // The silent devices will not answer their cancel: switched to another release by hand,
    // the cancel is no no-op they would acknowledge at once (an agent that is down does not
    // answer either).
    for i in 2..4 {
        w.sim.install_by_hand(&w.id(i), running_of(&w.new)).await;
    }
    let view = abort(&w, id).await;
    assert_eq!(view["status"], "aborted");
    assert_eq!(view["recall"]["sent"], 4, "{view}");
    // The committed device installs its known-good release again; the deferred one was
    // cancelled and still runs it; the silent ones never answer.
    wait_for("two devices back", || async {
        w.rollout(id).await["recall"]["back"] == 2
    })
    .await;
    let view = w.rollout(id).await;
    assert_eq!(
        view["recall"],
        json!({ "sent": 4, "pending": 2, "back": 2, "failed": 0, "superseded": 0 }),
        "{view}"
    );
    let old = digest_of(&w.old);
    let events = w
        .events(&format!("rollout={id}&kind=device-recalled"))
        .await;
    let mut recalled: Vec<(String, String, String)> = events
        .iter()
        .map(|e| {
            (
                e["device_id"].as_str().unwrap().to_string(),
                e["details"]["recall"].as_str().unwrap().to_string(),
                e["details"]["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    recalled.sort();
    assert_eq!(
        recalled,
        vec![
            (w.id(0), "back".to_string(), "succeeded".to_string()),
            (w.id(1), "back".to_string(), "skipped-identical".to_string()),
        ]
    );
    assert!(events.iter().all(|e| e["details"]["to"] == old.as_str()));

    // The rollout's own view of each target: the deferred device stays troubled in this
    // rollout (its latest result is now the cancel's skipped-identical), with its recall.
    let path = format!("/api/v1/rollouts/{id}/devices");
    let troubled: Value = w.t.get_json(&format!("{path}?state=troubled")).await;
    assert_eq!(troubled["total"], 1, "{troubled}");
    let entry = &troubled["devices"][0];
    assert_eq!(entry["device"], w.id(1));
    assert_eq!(entry["state"], "deferred-power");
    assert_eq!(entry["recall"], json!({ "to": old, "state": "back" }));
    let all: Value = w.t.get_json(&format!("{path}?limit=2&offset=1")).await;
    assert_eq!(
        (all["total"].as_u64(), all["offset"].as_u64()),
        (Some(4), Some(1))
    );
    let listed: Vec<&str> = all["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device"].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec![w.id(1).as_str(), w.id(2).as_str()]);
    let (status, cause, _) = refusal(
        w.t.get(&format!("{path}?state=broken"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, cause.as_str()),
        (StatusCode::BAD_REQUEST, "bad-query")
    );
    let (status, _, _) = refusal(
        w.t.get("/api/v1/rollouts/999999/devices")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A silent device answers only after a restart: it is still counted.
    w.t = w.t.restart().await;
    w.sim.come_back(&w.id(2)).await;
    wait_for("a third device back", || async {
        w.rollout(id).await["recall"]["back"] == 3
    })
    .await;
    // The last one gets a newer rollout's desired state before it answered.
    let newer = create_of(&w, &w.new, json!({ "waves": [100] })).await;
    wait_for("the last recall superseded", || async {
        w.rollout(id).await["recall"]["superseded"] == 1
    })
    .await;
    let view = w.rollout(id).await;
    assert_eq!(
        view["recall"],
        json!({ "sent": 4, "pending": 0, "back": 3, "failed": 0, "superseded": 1 }),
        "{view}"
    );
    assert_eq!(view["status"], "aborted");
    assert_ne!(newer, id);
    w.finish().await;
}

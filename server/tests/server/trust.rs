//! Issue 7, key rotation on the server: `POST /api/v1/trust` takes a signed trust-set update
//! only when `k` keys of the set in force signed it with a higher sequence, answers a typed
//! cause otherwise (nothing changes), verifies every later release against the new set,
//! keeps it across a restart, and publishes it retained on `ota/v1/trust`.

use std::time::Duration;

use ota_core::release::{SigningKey, TrustUpdate, VerifyingKey, sign_trust_update};
use ota_core::wire::TRUST_TOPIC;
use reqwest::StatusCode;
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, QoS};
use serde_json::{Value, json};

use crate::util::{Options, PgSchema, TOKEN, TestServer, artifact, error_of, key, release};

/// An update to keys `new` (threshold `k`) with `sequence`, signed by `signers`.
fn update(sequence: u64, new: &[u8], k: u32, signers: &[u8]) -> Vec<u8> {
    let keys: Vec<VerifyingKey> = new.iter().map(|&n| key(n).verifying_key()).collect();
    let signing: Vec<SigningKey> = signers.iter().map(|&n| key(n)).collect();
    sign_trust_update(&TrustUpdate::new(sequence, &keys, k, 0), &signing)
}

async fn post(t: &TestServer, body: Vec<u8>) -> reqwest::Response {
    t.client
        .post(t.url("/api/v1/trust"))
        .bearer_auth(TOKEN)
        .body(body)
        .send()
        .await
        .unwrap()
}

/// The trust set `GET /api/v1/trust` shows (as the `POST` answers it: without `devices`,
/// which must be there and count no device: these tests have none).
async fn shown(t: &TestServer) -> Value {
    let mut answer: Value = t.get_json("/api/v1/trust").await;
    let devices = answer.as_object_mut().and_then(|a| a.remove("devices"));
    assert_eq!(
        devices,
        Some(json!({ "total": 0, "on_this_set": 0, "by_sequence": [], "behind": [] }))
    );
    answer
}

/// A client of the server's broker subscribed to the trust topic (`name`: its client id).
async fn watch_trust(t: &TestServer, name: &str) -> (AsyncClient, EventLoop) {
    let (host, port) = t.mqtt();
    let mut o = MqttOptions::new(name, host, port);
    o.set_max_packet_size(256 * 1024, 256 * 1024);
    let (client, events) = AsyncClient::new(o, 16);
    client
        .subscribe(TRUST_TOPIC, QoS::AtLeastOnce)
        .await
        .unwrap();
    (client, events)
}

/// The next message on the trust topic: (payload, retained).
async fn next_trust(events: &mut EventLoop) -> (Vec<u8>, bool) {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Event::Incoming(Incoming::Publish(p)) = events.poll().await.unwrap() {
                return (p.payload.to_vec(), p.retain);
            }
        }
    })
    .await
    .expect("a message on the trust topic")
}

/// The retained message on the trust topic, as a newly subscribed client gets it.
async fn retained_trust(t: &TestServer) -> Vec<u8> {
    let (client, mut events) = watch_trust(t, "issue7-trust-late-subscriber").await;
    let (payload, retained) = next_trust(&mut events).await;
    assert!(retained, "the trust update is retained");
    let _ = client.disconnect().await;
    payload
}

async fn rotation_scenario(database_url: Option<String>) {
    // Keys 1, 2, 3 with threshold 2.
    let t = TestServer::start_opts(Options {
        threshold: 2,
        database_url,
        ..Options::default()
    })
    .await;
    let before = shown(&t).await;
    assert_eq!(before["sequence"], 0);
    assert_eq!(before["threshold"], 2);
    assert_eq!(before["rotated"], false);

    let refused = [
        (
            b"not an update".to_vec(),
            StatusCode::BAD_REQUEST,
            "malformed",
        ),
        (
            // A release is not a trust-set update (content type).
            release("1.0.0", &artifact(10, 1), &[1, 2]),
            StatusCode::BAD_REQUEST,
            "malformed",
        ),
        (
            update(1, &[2, 3, 4], 2, &[1]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "too-few-signatures",
        ),
        (
            update(1, &[8, 9], 1, &[8, 9]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown-key",
        ),
        (
            update(0, &[2, 3, 4], 2, &[1, 2]),
            StatusCode::CONFLICT,
            "stale",
        ),
        (
            update(1, &[2], 2, &[1, 2]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-trust-set",
        ),
    ];
    for (body, status, cause) in refused {
        assert_eq!(error_of(post(&t, body).await).await, (status, cause.into()));
    }
    assert_eq!(shown(&t).await, before, "a refused update changes nothing");
    let unauthenticated = t
        .client
        .post(t.url("/api/v1/trust"))
        .body(update(1, &[2, 3, 4], 2, &[1, 2]))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), StatusCode::UNAUTHORIZED);

    // {1, 2, 3} k=2 -> {2, 3, 4} k=2, signed by 1 and 2: key 1 is revoked.
    let (watcher, mut live) = watch_trust(&t, "issue7-trust-watcher").await;
    let rotation = update(1, &[2, 3, 4], 2, &[1, 2]);
    let answer = post(&t, rotation.clone()).await;
    assert_eq!(answer.status(), StatusCode::OK);
    let after: Value = answer.json().await.unwrap();
    assert_eq!(after["sequence"], 1);
    assert_eq!(after["rotated"], true);
    assert_eq!(after["keys"].as_array().map(Vec::len), Some(3));
    assert_eq!(shown(&t).await, after);
    // Published once the coordinator got to it, then retained for every later subscriber.
    assert_eq!(next_trust(&mut live).await.0, rotation);
    let _ = watcher.disconnect().await;
    assert_eq!(retained_trust(&t).await, rotation);

    // Releases are verified against the new set: key 1 no longer counts.
    let art = artifact(2000, 7);
    let (status, cause) = error_of(
        t.publish(release("2.0.0", &art, &[1, 2]), art.clone())
            .await,
    )
    .await;
    assert_eq!(
        (status, cause.as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "threshold-not-met")
    );
    let published = t.publish(release("2.0.0", &art, &[2, 4]), art).await;
    assert_eq!(published.status(), StatusCode::CREATED);
    // A rotation signed by the revoked key and one current key is refused.
    let (status, cause) = error_of(post(&t, update(2, &[1], 1, &[1, 4])).await).await;
    assert_eq!(
        (status, cause.as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "too-few-signatures")
    );
    // The same sequence again, signed by current keys: stale.
    let (status, cause) = error_of(post(&t, update(1, &[3, 4], 1, &[3, 4])).await).await;
    assert_eq!((status, cause.as_str()), (StatusCode::CONFLICT, "stale"));

    assert_eq!(t.events_of_kind("trust-rotated").await.len(), 1);
    let rejected = t.events_of_kind("trust-rejected").await;
    assert_eq!(rejected.len(), 8);
    assert!(rejected.iter().all(|e| e.actor == "alice"));

    // Persisted: the restarted server keeps the rotated set and republishes it.
    let t = t.restart().await;
    assert_eq!(shown(&t).await, after);
    assert_eq!(retained_trust(&t).await, rotation);
    let (status, _) = error_of(post(&t, rotation).await).await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "revoked key 1 signed it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue7_trust_api_rotates_rejects_bad_updates_and_persists() {
    rotation_scenario(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set OTA_TEST_DATABASE_URL"]
async fn issue7_trust_api_rotates_rejects_bad_updates_and_persists_postgres() {
    let schema = PgSchema::create().await;
    rotation_scenario(Some(schema.url.clone())).await;
    schema.drop().await;
}

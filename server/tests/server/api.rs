//! Devices, events and metrics over HTTP.

use std::collections::BTreeMap;

use ota_core::fleet::RolloutId;
use ota_server::db::{DeviceReport, NewEvent};
use ota_server::event_kinds::EventKind;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::util::{TestServer, artifact, error_of, release};

async fn with_devices() -> TestServer {
    let t = TestServer::start().await;
    let mut tx = t.server.db().begin().await.unwrap();
    for (id, hw, region, version, online) in [
        ("gw-1", "gw-a", "eu", "2.0.0", true),
        ("gw-2", "gw-a", "us", "2.0.0", true),
        ("gw-3", "gw-b", "eu", "1.9.0", false),
        ("cam-1", "cam", "eu", "0.1", true),
    ] {
        let mut report = DeviceReport::default();
        report.hardware_class = Some(hw.into());
        report.labels = BTreeMap::from([("region".into(), region.into())]);
        report.running_version = Some(version.into());
        tx.upsert_device(id, &report, online, false, 0, 1000)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    t
}

async fn ids(t: &TestServer, filter: &str) -> Vec<String> {
    let r = t
        .get("/api/v1/devices")
        .query(&[("filter", filter)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{filter}");
    let body: Value = r.json().await.unwrap();
    body["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn devices_are_listed_and_filtered() {
    let t = with_devices().await;
    assert_eq!(ids(&t, "").await, ["cam-1", "gw-1", "gw-2", "gw-3"]);
    assert_eq!(ids(&t, "hw=gw-a and label:region=eu").await, ["gw-1"]);
    assert_eq!(ids(&t, "version=2.0.0").await, ["gw-1", "gw-2"]);
    assert_eq!(ids(&t, "not online").await, ["gw-3"]);
    assert_eq!(
        ids(&t, "online and (hw=cam or label:region=us)").await,
        ["cam-1", "gw-2"]
    );
    assert_eq!(ids(&t, "hw!=gw-a").await, ["cam-1", "gw-3"]);
    assert_eq!(ids(&t, "id=gw-*").await, ["gw-1", "gw-2", "gw-3"]);
    assert_eq!(ids(&t, "result=committed").await, Vec::<String>::new());

    let r = t
        .get("/api/v1/devices")
        .query(&[("filter", "hw=gw-a and )")])
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["cause"], "bad-filter");
    assert!(
        body["error"].as_str().unwrap().contains("column 13"),
        "{body}"
    );

    let r = t.get("/api/v1/devices?colour=red").send().await.unwrap();
    assert_eq!(
        error_of(r).await,
        (StatusCode::BAD_REQUEST, "bad-query".into())
    );
}

#[tokio::test]
async fn one_device() {
    let t = with_devices().await;
    let d: Value = t.get_json("/api/v1/devices/gw-3").await;
    assert_eq!(d["hardware_class"], "gw-b");
    assert_eq!(d["online"], false);
    assert_eq!(d["labels"], json!({ "region": "eu" }));
    let r = t.get("/api/v1/devices/nope").send().await.unwrap();
    assert_eq!(error_of(r).await.0, StatusCode::NOT_FOUND);
}

/// Rollout ids are typed (`RolloutId`): a path or query value that is not a positive decimal
/// integer is refused as malformed before any lookup; an unknown id is 404.
#[tokio::test]
async fn a_rollout_id_that_is_not_one_is_refused() {
    let t = TestServer::start().await;
    for bad in ["0", "-1", "7a", "%2B7", "99999999999999999999"] {
        let asked = [
            (format!("/api/v1/rollouts/{bad}"), "bad-path"),
            (format!("/api/v1/events?rollout={bad}"), "bad-query"),
        ];
        for (path, cause) in asked {
            let r = t.get(&path).send().await.unwrap();
            assert_eq!(
                error_of(r).await,
                (StatusCode::BAD_REQUEST, cause.into()),
                "{path}"
            );
        }
    }
    let r = t.get("/api/v1/rollouts/7").send().await.unwrap();
    assert_eq!(
        error_of(r).await,
        (StatusCode::NOT_FOUND, "not-found".into())
    );
}

#[tokio::test]
async fn events_are_filtered_and_paged() {
    let t = TestServer::start().await;
    let db = t.server.db();
    for i in 0..5 {
        db.append_event(
            &NewEvent::new(i, "server", EventKind::MqttRejected).device(format!("d{}", i % 2)),
        )
        .await
        .unwrap();
    }
    db.append_event(
        &NewEvent::new(9, "alice", EventKind::DeviceLabelsSet).rollout(RolloutId::new(7).unwrap()),
    )
    .await
    .unwrap();

    let all: Value = t.get_json("/api/v1/events").await;
    assert_eq!(all["events"].as_array().unwrap().len(), 6);
    let last_id = all["events"][5]["id"].as_i64().unwrap();
    assert_eq!(all["next_after"], last_id);

    let d0: Value = t.get_json("/api/v1/events?device=d0").await;
    assert_eq!(d0["events"].as_array().unwrap().len(), 3);
    let r7: Value = t.get_json("/api/v1/events?rollout=7").await;
    assert_eq!(r7["events"][0]["kind"], "device-labels-set");
    assert_eq!(r7["events"][0]["actor"], "alice");

    let first = all["events"][0]["id"].as_i64().unwrap();
    let page: Value = t
        .get_json(&format!("/api/v1/events?after={first}&limit=2"))
        .await;
    let ids: Vec<i64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [first + 1, first + 2]);
    // Nothing new after the last one: the cursor stays.
    let tail: Value = t.get_json(&format!("/api/v1/events?after={last_id}")).await;
    assert_eq!(tail["events"].as_array().unwrap().len(), 0);
    assert_eq!(tail["next_after"], last_id);

    let r = t.get("/api/v1/events?rollout=abc").send().await.unwrap();
    assert_eq!(
        error_of(r).await,
        (StatusCode::BAD_REQUEST, "bad-query".into())
    );
}

#[tokio::test]
async fn metrics_count_devices_and_releases() {
    let t = with_devices().await;
    let art = artifact(100, 1);
    assert_eq!(
        t.publish(release("1", &art, &[1]), art).await.status(),
        StatusCode::CREATED
    );
    let r = t.client.get(t.url("/metrics")).send().await.unwrap();
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = r.text().await.unwrap();
    assert!(text.lines().any(|l| l == "ota_devices 4"), "{text}");
    assert!(text.lines().any(|l| l == "ota_devices_online 3"), "{text}");
    assert!(text.lines().any(|l| l == "ota_releases 1"), "{text}");
    assert!(text.contains("# TYPE ota_devices gauge"));
}

#[tokio::test]
async fn graceful_shutdown_stops_serving() {
    let t = TestServer::start().await;
    let url = t.url("/healthz");
    let handle = t.server.shutdown_handle();
    assert_eq!(
        t.client.get(&url).send().await.unwrap().status(),
        StatusCode::OK
    );
    handle.shutdown();
    t.server.wait().await.unwrap();
    // A fresh client (no pooled connection) cannot connect any more.
    assert!(reqwest::Client::new().get(&url).send().await.is_err());
}

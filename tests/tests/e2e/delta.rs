//! Issue 18, end to end: a release signed with its chunk index reaches real agents by delta
//! through the real fleet server (`/artifacts/{index digest}`, Range requests through the HTTP
//! proxy), and what each download cost shows in the rollout, device, event and metric views.
//! Then the proxy cuts the artifact connections in the middle of a delta: the agents resume
//! and still end on the release.

use std::time::Duration;

use serde_json::{Value, json};

use crate::world::{Backend, World, suite};

suite!(issue18_a_rollout_goes_by_delta_and_reports_what_it_saved);

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

async fn issue18_a_rollout_goes_by_delta_and_reports_what_it_saved(backend: Backend) {
    let devices = 3;
    let w = World::start(backend, devices, |o| o.image_size = 2 << 20).await;
    let v2 = w.release("2.0.0", true).await;
    assert!(
        v2.chunk_index.is_some(),
        "the demo team signs chunk indexes"
    );
    let size = v2.image.len() as u64;
    let id = w.rollout(&v2, &[100], json!({})).await;
    let view = w.finished(id).await;
    assert_eq!(view["status"], "completed", "{view:#}");
    w.converged(&v2.digest).await;

    // Every device held the factory release: it fetched its first chunk and the index only.
    let d = &view["downloads"];
    assert_eq!(u(&d["devices"]), devices as u64, "{view:#}");
    assert_eq!(u(&d["downloads"]), devices as u64, "{view:#}");
    assert_eq!(u(&d["full_bytes"]), devices as u64 * size, "{view:#}");
    let fetched = u(&d["fetched_bytes"]);
    assert!(
        fetched < devices as u64 * size / 4,
        "a one-line change fetched {fetched} bytes: {view:#}"
    );
    assert_eq!(u(&d["saved_bytes"]), devices as u64 * size - fetched);

    let one = w
        .lab
        .api()
        .devices(&w.lab.filter_one(0))
        .await
        .unwrap()
        .pop()
        .unwrap();
    let t = &one["last_transfer"];
    assert_eq!(u(&t["full_bytes"]), size, "{one:#}");
    assert!(u(&t["fetched_bytes"]) < size / 4, "{one:#}");
    assert_eq!(t["release"], v2.digest.to_string(), "{one:#}");

    let id0 = w.lab.devices()[0].id().to_string();
    let events = w
        .lab
        .api()
        .events(&[("kind", "device-state-changed"), ("device", &id0)])
        .await
        .unwrap();
    let with_transfer = events
        .iter()
        .filter(|e| e["details"]["transfer"].is_object())
        .count();
    assert!(with_transfer >= 1, "{events:#?}");

    let metrics = w.lab.api().metrics().await.unwrap();
    let saved = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ota_download_saved_bytes_total "))
        .unwrap_or_else(|| panic!("no saved-bytes counter:\n{metrics}"));
    assert!(saved.trim().parse::<u64>().unwrap() >= devices as u64 * size - fetched);

    // Delta × broken connections: the proxy cuts every artifact connection for a while in the
    // middle of the next rollout's deltas; the agents retry, resume and finish.
    let v3 = w.release("3.0.0", true).await;
    let id = w.rollout(&v3, &[100], json!({})).await;
    for _ in 0..5 {
        w.http.cut();
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let view = w.finished(id).await;
    assert_eq!(view["status"], "completed", "{view:#}");
    w.converged(&v3.digest).await;
    assert_eq!(u(&view["downloads"]["devices"]), devices as u64, "{view:#}");
    w.finish().await;
}

//! Issue 12.7: drift of the files installer, end to end. Someone re-points `current` by hand
//! and restarts the agent: the agent reports what actually runs, the fleet server marks the
//! device drifted (device view, `drifted` filter, `device-drifted` event), and switching back
//! clears it.

use std::path::Path;
use std::time::Duration;

use ota_core::digest::Digest;
use ota_demo::device::Device;
use serde_json::{Value, json};

use crate::world::{Backend, World, patiently, suite};

suite!(issue12_a_release_switched_by_hand_is_reported_as_drift);

/// Re-points the files installer's `current` link of `device` at `target` (absolute).
fn repoint(device: &Device, target: &Path) {
    let link = device.root().join("app").join("current");
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(target, &link).unwrap();
}

/// Waits until the server's view of device `i` satisfies `pred`; answers it.
async fn device_view(w: &World, i: usize, pred: impl Fn(&Value) -> bool) -> Value {
    let view = async || {
        w.lab
            .api()
            .devices(&w.lab.filter_one(i))
            .await
            .unwrap()
            .pop()
            .unwrap_or_default()
    };
    let found = patiently(Duration::from_millis(100), async || {
        Some(view().await).filter(|v| pred(v))
    })
    .await;
    match found {
        Some(v) => v,
        None => panic!("device {i}: condition not reached: {:#}", view().await),
    }
}

async fn issue12_a_release_switched_by_hand_is_reported_as_drift(backend: Backend) {
    let mut w = World::start(backend, 2, |_| {}).await;
    let v2 = w.release("2.0.0", true).await;
    let id = w.rollout(&v2, &[100], json!({})).await;
    assert_eq!(w.finished(id).await["status"], "completed");
    w.converged(&v2.digest).await;
    device_view(&w, 0, |d| d["drifted"] == false).await;

    // A hand-made image, switched to by hand while the agent is down.
    let image = b"a hand-made image nobody signed".to_vec();
    let hand_made = w.lab.devices()[0].root().join("app").join("hand-made.img");
    std::fs::write(&hand_made, &image).unwrap();
    w.lab.devices_mut()[0].stop().await.unwrap();
    repoint(&w.lab.devices()[0], &hand_made);
    w.lab.devices_mut()[0].start().await.unwrap();
    let view = device_view(&w, 0, |d| d["drifted"] == true).await;
    assert_eq!(
        view["running_digest"],
        Digest::of(&image).to_string(),
        "{view:#}"
    );
    assert_eq!(view["running_version"], "unknown", "{view:#}");
    // The other device did not move.
    device_view(&w, 1, |d| d["drifted"] == false).await;
    let drifted = w
        .lab
        .api()
        .devices(&format!("{} and drifted", w.lab.filter()))
        .await
        .unwrap();
    assert_eq!(drifted.len(), 1);
    let id0 = w.lab.devices()[0].id().to_string();
    let events = w
        .lab
        .api()
        .events(&[("kind", "device-drifted"), ("device", &id0)])
        .await
        .unwrap();
    assert_eq!(events.len(), 1, "{events:#?}");

    // Switched back by hand: the drift clears.
    let release = w.lab.devices()[0]
        .root()
        .join("app")
        .join("releases")
        .join(v2.digest.to_string());
    w.lab.devices_mut()[0].stop().await.unwrap();
    repoint(&w.lab.devices()[0], &release);
    w.lab.devices_mut()[0].start().await.unwrap();
    let view = device_view(&w, 0, |d| d["drifted"] == false).await;
    assert_eq!(view["running_digest"], v2.digest.to_string(), "{view:#}");
    w.finish().await;
}

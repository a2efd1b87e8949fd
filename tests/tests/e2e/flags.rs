//! Issue 6: feature flags end to end — the real server delivers, real agents apply and keep
//! the flag file applications read.

use std::time::Duration;

use ota_demo::device::Device;
use serde_json::json;

use crate::world::{Backend, World, patiently, suite};

suite!(flags_survive_restarts_and_deploys_and_reach_offline_devices);

const FLAG: &str = "dark-feature";

/// Waits until `device`'s flag file says `on`.
async fn reads(device: &Device, on: bool) {
    let found = patiently(Duration::from_millis(20), async || {
        (device.flag_on(FLAG) == on).then_some(())
    })
    .await;
    assert!(found.is_some(), "{}: {FLAG} never became {on}", device.id());
}

/// On everywhere; an agent restart keeps it (the file, then the retained message); a deploy
/// does not reset it; a kill reaches every online device, and a device offline during the
/// kill converges when it comes back.
async fn flags_survive_restarts_and_deploys_and_reach_offline_devices(backend: Backend) {
    let mut w = World::start(backend, 3, |_| {}).await;
    let filter = w.lab.filter();
    w.lab
        .api()
        .flag_set(FLAG, true, 100.0, &filter)
        .await
        .unwrap();
    for d in w.lab.devices() {
        reads(d, true).await;
    }

    // An agent restart: the file is still there while it is down, and stays on after.
    w.lab.devices_mut()[0].stop().await.unwrap();
    assert!(w.lab.devices()[0].flag_on(FLAG));
    w.lab.devices_mut()[0].start().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(w.lab.devices()[0].flag_on(FLAG));

    // A deploy changes the release, not the flags.
    let v2 = w.release("2.0.0", true).await;
    let id = w.rollout(&v2, &[100], json!({})).await;
    assert_eq!(w.finished(id).await["status"], "completed");
    w.converged(&v2.digest).await;
    for d in w.lab.devices() {
        assert!(d.flag_on(FLAG), "{}: the deploy reset the flag", d.id());
    }

    // Kill while device 2 is offline: every online device turns it off; device 2 does once
    // it reconnects (the retained per-device message).
    w.lab.devices_mut()[2].stop().await.unwrap();
    let killed = w.lab.api().flag_kill(FLAG).await.unwrap();
    assert_eq!(killed["changed"], true, "{killed:#}");
    reads(&w.lab.devices()[0], false).await;
    reads(&w.lab.devices()[1], false).await;
    assert!(
        w.lab.devices()[2].flag_on(FLAG),
        "offline: still the old file"
    );
    w.lab.devices_mut()[2].start().await.unwrap();
    reads(&w.lab.devices()[2], false).await;
    let counts = &w.lab.api().flag(FLAG).await.unwrap()["counts"];
    assert_eq!(counts["on"], 0, "{counts:#}");
    w.finish().await;
}

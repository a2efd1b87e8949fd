//! Issue 5: end-to-end faults on a real fleet server, real agents and a real broker.

use std::time::Duration;

use ota_core::update::Stage;
use ota_core::wire::{ExecutionState, FailurePhase, TopicKind};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;

use crate::world::{Backend, World, installs_of, patiently, suite, wait_device};

/// The agents' `[download]` lines that turn delta off: these tests are about full downloads
/// (the lab's releases share all but their first chunk, so a delta fetches a few KiB).
const FULL_DOWNLOADS: &str = "delta = false";

suite!(
    broker_restart_mid_rollout,
    download_cut_resumes_with_range,
    agent_killed_during_download_install_and_trial,
    server_restart_mid_rollout,
    duplicates_and_replayed_desired_state,
    malicious_mirror_is_rejected,
    offline_device_converges_later,
);

/// The broker restarts (fresh: no sessions, no retained messages) while the second wave runs:
/// the rollout completes and no device installs twice.
async fn broker_restart_mid_rollout(backend: Backend) {
    let mut w = World::start(backend, 10, |_| {}).await;
    let v2 = w.release("2.0.0", true).await;
    let id = w.rollout(&v2, &[20, 100], json!({ "bake_secs": 2 })).await;
    w.wait_rollout(id, |r| r["phase"] == "baking").await;
    let connections = w.broker.connections();
    w.restart_broker().await;
    let r = w.finished(id).await;
    // Every agent and the server reconnected to the fresh broker.
    assert!(w.broker.connections() >= connections + 11);
    assert_eq!(r["status"], "completed", "{r:#}");
    w.converged(&v2.digest).await;
    for d in w.lab.devices() {
        assert_eq!(installs_of(d, &v2.digest), 1, "{}", d.id());
    }
    assert_eq!(r["totals"]["succeeded"], 10);
    w.finish().await;
}

/// The connection is cut mid-download: the agent resumes with Range and fetches at most one
/// chunk again. (Full downloads: delta is off, or the agent would fetch only the changed
/// chunks; `delta.rs` cuts delta downloads.)
async fn download_cut_resumes_with_range(backend: Backend) {
    const SIZE: usize = 4 * 1024 * 1024;
    const CHUNK: u64 = 64 * 1024;
    let w = World::start(backend, 1, |o| {
        o.image_size = SIZE;
        o.agent_download_toml = FULL_DOWNLOADS.into();
    })
    .await;
    let v2 = w.release("2.0.0", true).await;
    let before = w.http.downstream_bytes();
    w.http.cut_after(SIZE as u64 / 3, 1);
    let id = w.rollout(&v2, &[100], json!({})).await;
    let r = w.finished(id).await;
    assert_eq!(r["status"], "completed", "{r:#}");
    w.converged(&v2.digest).await;
    let wire = w.http.downstream_bytes() - before;
    assert!(w.http.connections() >= 2, "the download was not resumed");
    // The artifact once, at most one chunk again, and two responses' headers.
    assert!(
        wire <= SIZE as u64 + CHUNK + 4096,
        "{wire} bytes on the wire for a {SIZE}-byte artifact"
    );
    assert!(wire >= SIZE as u64);
    w.finish().await;
}

/// Agents killed without cleanup while downloading (a full download, slowed down, so that the
/// kill lands mid-transfer), installing and on trial recover when restarted, and their
/// rollouts complete.
async fn agent_killed_during_download_install_and_trial(backend: Backend) {
    let mut w = World::start(backend, 3, |o| {
        o.restart_command = Some(vec!["sleep".into(), "1".into()]);
        o.agent_download_toml = FULL_DOWNLOADS.into();
    })
    .await;
    let v2 = w.release("2.0.0", true).await;
    w.http.slow(5);
    let during = [
        |s: &Stage| matches!(s, Stage::Downloading { done, .. } if *done > 0),
        |s: &Stage| *s == Stage::Installing,
        |s: &Stage| *s == Stage::Trial,
    ];
    for (i, stage) in during.iter().enumerate() {
        let filter = w.lab.filter_one(i);
        let id = w.rollout(&v2, &[100], json!({ "filter": filter })).await;
        let device = &w.lab.devices()[i];
        wait_device(device, |d| {
            d.status().is_some_and(|s| stage(&s.machine.stage))
        })
        .await;
        let device = &mut w.lab.devices_mut()[i];
        device.kill();
        tokio::time::sleep(Duration::from_millis(200)).await;
        device.start().await.unwrap();
        let r = w.finished(id).await;
        assert_eq!(r["status"], "completed", "device {i}: {r:#}");
        wait_device(&w.lab.devices()[i], |d| {
            d.status().is_some_and(|s| {
                s.machine.stage == Stage::Idle
                    && s.machine.known_good.as_ref().map(|k| k.digest) == Some(v2.digest)
            })
        })
        .await;
    }
    w.finish().await;
}

/// The server restarts while a wave bakes: the rollout resumes from the database and
/// completes, every device installed once.
async fn server_restart_mid_rollout(backend: Backend) {
    let mut w = World::start(backend, 10, |_| {}).await;
    let v2 = w.release("2.0.0", true).await;
    let id = w.rollout(&v2, &[20, 100], json!({ "bake_secs": 2 })).await;
    w.wait_rollout(id, |r| r["phase"] == "baking").await;
    w.lab.restart_server().await.unwrap();
    let r = w.finished(id).await;
    assert_eq!(r["status"], "completed", "{r:#}");
    w.converged(&v2.digest).await;
    for d in w.lab.devices() {
        assert_eq!(installs_of(d, &v2.digest), 1, "{}", d.id());
    }
    w.finish().await;
}

/// QoS 1 duplicates of the current desired state and a replayed older one: no second
/// install, no downgrade.
async fn duplicates_and_replayed_desired_state(backend: Backend) {
    let w = World::start(backend, 1, |_| {}).await;
    let device = &w.lab.devices()[0];
    let topic = w.lab.topics().device(
        &ota_core::wire::DeviceId::new(device.id()).unwrap(),
        TopicKind::Desired,
    );
    let (client, mut events) = {
        let mut o = MqttOptions::new(
            format!("{}-spy", device.id()),
            "127.0.0.1",
            w.broker.addr().port(),
        );
        o.set_max_packet_size(512 * 1024, 512 * 1024);
        AsyncClient::new(o, 16)
    };
    client.subscribe(&topic, QoS::AtLeastOnce).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(event) = events.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = event {
                let _ = tx.send(p.payload.to_vec());
            }
        }
    });
    let v2 = w.release("2.0.0", true).await;
    let id = w.rollout(&v2, &[100], json!({})).await;
    w.finished(id).await;
    w.converged(&v2.digest).await;
    let v3 = w.release("3.0.0", true).await;
    let id = w.rollout(&v3, &[100], json!({})).await;
    w.finished(id).await;
    w.converged(&v3.digest).await;
    // Every desired state seen: the v2 one (older generation) and the v3 one.
    let mut seen = Vec::new();
    while let Ok(p) = rx.try_recv() {
        seen.push(p);
    }
    let (old, current) = (
        seen.first().cloned().unwrap(),
        seen.last().cloned().unwrap(),
    );
    assert_ne!(old, current);
    let received = device.status().unwrap().desired_received;
    for payload in [current.clone(), current, old] {
        client
            .publish(&topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
    wait_device(device, |d| {
        d.status()
            .is_some_and(|s| s.desired_received >= received + 3)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = device.status().unwrap();
    assert_eq!(s.machine.running.map(|r| r.digest), Some(v3.digest));
    assert_eq!(installs_of(device, &v3.digest), 1);
    assert_eq!(installs_of(device, &v2.digest), 1);
    assert_eq!(s.machine.stage, Stage::Idle);
    w.finish().await;
}

/// A mirror that serves tampered bytes in a full download: rejected by digest in the verify
/// phase, nothing installed, the device keeps running its release. (Tampered chunks of a
/// delta download are caught at the chunk: `agent/tests/agent/delta.rs`.)
async fn malicious_mirror_is_rejected(backend: Backend) {
    let w = World::start(backend, 2, |o| {
        o.agent_download_toml = FULL_DOWNLOADS.into();
    })
    .await;
    let v2 = w.release("2.0.0", true).await;
    w.http.tamper_at(100_000);
    let id = w
        .rollout(
            &v2,
            &[100],
            json!({ "max_failure": 100, "min_executed": 2 }),
        )
        .await;
    let r = w
        .wait_rollout(id, |r| r["totals"]["failed"]["verify"] == 2)
        .await;
    assert_eq!(r["totals"]["succeeded"], 0, "{r:#}");
    let factory = w.lab.factory().digest;
    for d in w.lab.devices() {
        wait_device(d, |d| {
            d.status().is_some_and(|s| s.machine.stage == Stage::Idle)
        })
        .await;
        let s = d.status().unwrap();
        assert_eq!(
            s.machine.running.map(|r| r.digest),
            Some(factory),
            "{}",
            d.id()
        );
        assert!(
            s.installs.is_empty(),
            "{}: installed {:?}",
            d.id(),
            s.installs
        );
        let last = s.machine.last_result.map(|o| o.state);
        assert!(
            matches!(
                last,
                Some(ExecutionState::Failed {
                    phase: FailurePhase::Verify,
                    ..
                })
            ),
            "{}: {last:?}",
            d.id()
        );
        let placed = d.root().join("app/releases").join(v2.digest.to_string());
        assert!(!placed.exists(), "tampered bytes were installed");
        assert!(
            !d.root()
                .join("data/cache")
                .join(v2.digest.to_string())
                .exists()
        );
    }
    w.finish().await;
}

/// A device offline during its wave comes back after the rollout ended and converges to the
/// desired release.
async fn offline_device_converges_later(backend: Backend) {
    let mut w = World::start(backend, 4, |_| {}).await;
    let v2 = w.release("2.0.0", true).await;
    w.lab.devices_mut()[3].stop().await.unwrap();
    let filter = w.lab.filter();
    let offline_id = w.lab.devices()[3].id().to_string();
    let seen_offline = patiently(Duration::from_millis(50), async || {
        let devices = w.lab.api().devices(&filter).await.unwrap();
        devices
            .iter()
            .any(|d| d["id"] == offline_id.as_str() && d["online"] == false)
            .then_some(())
    })
    .await;
    assert!(seen_offline.is_some(), "the server never saw it offline");
    let id = w
        .rollout(&v2, &[100], json!({ "max_deferral_secs": 2 }))
        .await;
    let r = w.finished(id).await;
    assert_eq!(r["status"], "completed", "{r:#}");
    assert_eq!(r["totals"]["succeeded"], 3, "{r:#}");
    w.lab.devices_mut()[3].start().await.unwrap();
    w.converged(&v2.digest).await;
    w.finish().await;
}

//! Issue 12 ("truthful states"), points 6 and 8: the registry and the audit log say what
//! happened (heartbeats move `last_seen`; causes are kebab-case).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::fleet::{Backend, World, suite, wait_for};
use crate::sim::Behavior;
use crate::util::{Options, TOKEN};

suite!(
    issue12_heartbeats_move_last_seen,
    issue12_causes_are_kebab_case_in_events,
);

async fn last_seen(w: &World, id: &str) -> i64 {
    let list = w.devices(&format!("id={id}")).await;
    list[0]["last_seen"].as_i64().unwrap()
}

/// Sends heartbeat `seq` and waits for its ack (published after the batch's commit).
async fn heartbeat(w: &World, id: &str, seq: u64) {
    w.sim.heartbeat(id, seq).await;
    wait_for("heartbeat ack", || async {
        w.sim.device(id).unwrap().acks.contains(&seq)
    })
    .await;
}

async fn issue12_heartbeats_move_last_seen(backend: Backend) {
    let w = World::start(
        backend,
        Options {
            manual_clock: true,
            ..Options::default()
        },
    )
    .await;
    w.add(w.sim_devices(1, |_| Behavior::Succeed)).await;
    let id = w.id(0);
    let first = last_seen(&w, &id).await;
    // Within the resolution, a heartbeat writes nothing.
    w.t.advance(Duration::from_secs(5)).await;
    heartbeat(&w, &id, 1).await;
    assert_eq!(last_seen(&w, &id).await, first);
    // Past it, the heartbeat moves last_seen to now.
    w.t.advance(Duration::from_secs(55)).await;
    heartbeat(&w, &id, 2).await;
    assert_eq!(last_seen(&w, &id).await, first + 60);
    w.finish().await;
}

/// The causes of rejected and rolled-back devices, as the audit log records them.
async fn issue12_causes_are_kebab_case_in_events(backend: Backend) {
    let w = World::start(backend, Options::default()).await;
    w.add(w.sim_devices(2, |i| {
        if i == 0 {
            Behavior::RollBack
        } else {
            Behavior::Reject
        }
    }))
    .await;
    let (status, body) = w
        .create(TOKEN, json!({ "max_failure": 100, "success_min": 0 }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let cause_of = |events: &[Value], id: &str, to: &str| -> Option<Value> {
        events
            .iter()
            .find(|e| e["device_id"] == id && e["details"]["to"] == to)
            .map(|e| e["details"]["cause"].clone())
    };
    wait_for("both final", || async {
        let events = w.events("kind=device-state-changed").await;
        cause_of(&events, &w.id(0), "rolled-back").is_some()
            && cause_of(&events, &w.id(1), "rejected").is_some()
    })
    .await;
    let events = w.events("kind=device-state-changed").await;
    assert_eq!(
        cause_of(&events, &w.id(0), "rolled-back").unwrap(),
        "probe-failed"
    );
    assert_eq!(
        cause_of(&events, &w.id(1), "rejected").unwrap(),
        "bad-signature"
    );
    w.finish().await;
}

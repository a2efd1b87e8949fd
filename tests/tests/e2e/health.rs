//! Issue 17, end to end: agents keep probing after the commit and say so in their heartbeats,
//! so the server's bake gate watches health, not just presence. The applications of the first
//! wave crash during its bake (the agents keep running and stay connected): the wave is held
//! with its devices counted as succeeded-but-unhealthy, and it passes once they run again.

use serde_json::json;

use crate::world::{Backend, World, suite};

suite!(issue17_an_application_crash_after_the_commit_holds_the_wave);

async fn issue17_an_application_crash_after_the_commit_holds_the_wave(backend: Backend) {
    let mut w = World::start(backend, 4, |_| {}).await;
    let v2 = w.release("2.0.0", true).await;
    // A long bake: the crash must be seen (probe freshness 2 s, heartbeats every 0.5 s)
    // before it ends.
    let id = w.rollout(&v2, &[50, 100], json!({ "bake_secs": 15 })).await;
    let baking = w
        .wait_rollout(id, |r| r["current_wave"] == 0 && r["phase"] == "baking")
        .await;
    let first_wave = baking["waves"][0]["counts"]["succeeded"].as_u64().unwrap();
    assert!(first_wave >= 1, "{baking:#}");
    let mut crashed = Vec::new();
    for (i, d) in w.lab.devices_mut().iter_mut().enumerate() {
        if d.running() == Some(v2.digest) {
            d.crash_app();
            crashed.push(i);
        }
    }
    assert_eq!(crashed.len() as u64, first_wave);
    let held = w
        .wait_rollout(id, |r| {
            r["waves"][0]["succeeded_unhealthy"] == first_wave && r["phase"] == "held"
        })
        .await;
    // Still succeeded (no failure, nothing rolled back) and the next wave waits.
    assert_eq!(held["current_wave"], 0, "{held:#}");
    assert_eq!(held["totals"]["succeeded"], first_wave, "{held:#}");
    assert_eq!(held["totals"]["rolled-back"], 0, "{held:#}");
    for d in w.lab.devices() {
        let s = d.status().unwrap().machine;
        if d.running() == Some(v2.digest) {
            assert_eq!(s.healthy, Some(false), "{}", d.id());
        }
    }
    // The applications run again: the wave passes and the rollout completes.
    for i in crashed {
        w.lab.devices_mut()[i].restart_app();
    }
    let done = w.finished(id).await;
    assert_eq!(done["status"], "completed", "{done:#}");
    assert_eq!(done["waves"][0]["succeeded_unhealthy"], 0, "{done:#}");
    w.converged(&v2.digest).await;
    w.finish().await;
}

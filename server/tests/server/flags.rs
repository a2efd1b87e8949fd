//! Feature flags end to end: REST edits, retained per-device delivery to simulated devices
//! (core's device applier), sticky cohorts, kill switch, offline convergence, restarts, audit.
//! Each scenario runs on the embedded broker + SQLite, and `#[ignore]`d on Mosquitto and
//! PostgreSQL (see `fleet.rs`).

use ota_core::flags::{FlagDefinition, FlagName, Rule};
use ota_core::rollout::Ratio;
use ota_core::wire::DeviceId;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::fleet::{Backend, World, suite, wait_for};
use crate::sim::{Behavior, Sim};
use crate::util::{NOW, Options, TOKEN};

suite!(
    flags_percent_widen_kill,
    flags_offline_device_converges,
    flags_survive_restart_and_follow_labels,
);

/// `POST /api/v1/flags/{name}/{op}` with `body`, as alice.
async fn flag_op(w: &World, name: &str, op: &str, body: Value) -> (StatusCode, Value) {
    let r =
        w.t.post_as(TOKEN, &format!("/api/v1/flags/{name}/{op}"), &body)
            .send()
            .await
            .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap())
}

async fn show(w: &World, name: &str) -> Value {
    let r =
        w.t.get(&format!("/api/v1/flags/{name}"))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

/// What core says device `id` gets from one rule of `percent` over every device.
fn expected(flag: &str, percent: u16, id: &str) -> bool {
    let mut def = FlagDefinition::new(FlagName::new(flag).unwrap(), false);
    def.rules.push(Rule {
        filter: None,
        on: true,
        percent: Some(Ratio::percent(percent)),
    });
    def.evaluate(&DeviceId::new(id).unwrap(), |_| true)
}

/// Waits until every one of `ids` on `sim` has `flag` as `want(id)` says.
async fn converge(sim: &Sim, ids: &[String], flag: &str, want: impl Fn(&str) -> bool) {
    wait_for(&format!("devices apply {flag}"), || async {
        ids.iter().all(|id| sim.flag(id, flag) == want(id))
    })
    .await;
}

async fn flags_percent_widen_kill(backend: Backend) {
    let w = World::start(backend, Options::default()).await;
    let n = 200;
    w.add(w.sim_devices(n, |_| Behavior::Succeed)).await;
    let ids: Vec<String> = (0..n).map(|i| w.id(i)).collect();

    // Dark: an unknown flag is off everywhere.
    assert!(ids.iter().all(|id| !w.sim.flag(id, "new-ui")));

    let filter = format!("{} and label:ring=test", w.filter());
    let (status, body) = flag_op(
        &w,
        "new-ui",
        "set",
        json!({ "on": true, "percent": 10, "filter": filter }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["changed"], true);
    assert_eq!(body["flag"]["rules"][0]["percent"], 10.0);
    converge(&w.sim, &ids, "new-ui", |id| expected("new-ui", 10, id)).await;
    let first: Vec<&String> = ids.iter().filter(|id| w.sim.flag(id, "new-ui")).collect();
    assert!(!first.is_empty() && first.len() < n / 2, "{}", first.len());

    // A repeated edit changes nothing and publishes nothing.
    let (_, again) = flag_op(
        &w,
        "new-ui",
        "set",
        json!({ "on": true, "percent": 10, "filter": filter }),
    )
    .await;
    assert_eq!(again["changed"], false);
    assert_eq!(again["published"], 0);

    // Widening keeps the first cohort (sticky) and matches core's evaluation.
    let (status, body) = flag_op(
        &w,
        "new-ui",
        "set",
        json!({ "on": true, "percent": 30, "filter": filter }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    converge(&w.sim, &ids, "new-ui", |id| expected("new-ui", 30, id)).await;
    assert!(first.iter().all(|id| w.sim.flag(id, "new-ui")));
    let on = ids.iter().filter(|id| w.sim.flag(id, "new-ui")).count();
    let shown = show(&w, "new-ui").await;
    assert_eq!(shown["counts"]["on"], on as u64);
    // An external broker may hold other runs' devices: they count, but are outside the filter.
    assert!(shown["counts"]["devices"].as_u64().unwrap() >= n as u64);

    // Kill: off on every device; a set on a killed flag keeps it off; revive restores it.
    let (status, killed) = flag_op(&w, "new-ui", "kill", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{killed}");
    assert_eq!(killed["published"], on as u64);
    converge(&w.sim, &ids, "new-ui", |_| false).await;
    let (_, twice) = flag_op(&w, "new-ui", "kill", json!({})).await;
    assert_eq!(twice["changed"], false);
    let (_, widened) = flag_op(
        &w,
        "new-ui",
        "set",
        json!({ "on": true, "percent": 50, "filter": filter }),
    )
    .await;
    assert_eq!(widened["flag"]["killed"], true);
    assert_eq!(widened["published"], 0);
    let (_, revived) = flag_op(&w, "new-ui", "revive", json!({})).await;
    assert_eq!(revived["flag"]["killed"], false);
    converge(&w.sim, &ids, "new-ui", |id| expected("new-ui", 50, id)).await;

    // The audit trail: who, when, old -> new, in the flag and in the event log.
    let shown = show(&w, "new-ui").await;
    let kinds: Vec<&str> = shown["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["created", "updated", "killed", "updated", "revived"]
    );
    let kill = &shown["changes"][2];
    assert_eq!(kill["by"], "alice");
    assert_eq!(kill["old"]["killed"], false);
    assert_eq!(kill["new"]["killed"], true);
    assert_eq!(kill["at"], NOW, "unix seconds, as every time in the API");
    // The list carries the newest changes across flags, a deleted flag's included, each
    // naming its flag (the console's audit trail reads them with the flags).
    let (status, _) = flag_op(&w, "short-lived", "set", json!({ "on": true })).await;
    assert_eq!(status, StatusCode::OK);
    let status =
        w.t.client
            .delete(w.t.url("/api/v1/flags/short-lived"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .status();
    assert_eq!(status, StatusCode::OK);
    let list: Value = w.t.get_json("/api/v1/flags").await;
    let changes: Vec<(&str, &str)> = list["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["flag"].as_str().unwrap(), c["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(
        changes,
        [
            ("new-ui", "created"),
            ("new-ui", "updated"),
            ("new-ui", "killed"),
            ("new-ui", "updated"),
            ("new-ui", "revived"),
            ("short-lived", "created"),
            ("short-lived", "deleted"),
        ]
    );
    assert_eq!(list["flags"].as_array().unwrap().len(), 1, "{list:#}");

    let events = w.events("kind=flag-killed").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["actor"], "alice");
    assert_eq!(events[0]["details"]["flag"], "new-ui");

    // Bad input is refused and changes nothing.
    for (name, body, cause) in [
        (
            "new-ui",
            json!({ "on": true, "filter": "hw=(" }),
            "bad-filter",
        ),
        ("new-ui", json!({ "on": true, "percent": 150 }), "bad-flag"),
        ("new-ui", json!({ "on": "yes" }), "bad-body"),
        ("Not_A_Name", json!({ "on": true }), "bad-flag-name"),
    ] {
        let (status, body) = flag_op(&w, name, "set", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["cause"], cause);
        // Issue 19.10: a flag error speaks of flags, not of rollouts.
        let error = body["error"].as_str().unwrap();
        assert!(!error.contains("rollout"), "{error}");
    }
    let (status, _) = flag_op(&w, "never-made", "kill", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let r =
        w.t.client
            .get(w.t.url("/api/v1/flags"))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    w.finish().await;
}

async fn flags_offline_device_converges(backend: Backend) {
    let w = World::start(backend, Options::default()).await;
    let online: Vec<String> = (0..5).map(|i| w.id(i)).collect();
    w.add(w.sim_devices(5, |_| Behavior::Succeed)).await;
    // A device registers on its own connection, then goes offline.
    let (host, port) = w.t.mqtt();
    let away_id = format!("{}away", w.prefix);
    let away = crate::sim::device(&away_id, "gw-a", None, Behavior::Silent);
    let first = Sim::connect(&host, port, &format!("{}c1", w.prefix), &w.topics).await;
    first.add_devices(vec![away.clone()]).await;
    wait_for("the away device registered", || async {
        !w.devices(&format!("id={away_id}")).await.is_empty()
    })
    .await;
    first.set_online(&away_id, false).await;
    first.disconnect().await;

    let (status, body) = flag_op(&w, "dark-mode", "set", json!({ "on": true })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    converge(&w.sim, &online, "dark-mode", |_| true).await;
    let (_, killed) = flag_op(&w, "beta", "set", json!({ "on": true })).await;
    assert_eq!(killed["changed"], true);
    flag_op(&w, "beta", "kill", json!({})).await;

    // Back online on a new connection: the retained flags arrive, whatever it missed.
    let back = Sim::connect(&host, port, &format!("{}c2", w.prefix), &w.topics).await;
    back.add_devices(vec![away]).await;
    wait_for("the away device converged", || async {
        back.flag(&away_id, "dark-mode")
            && back.flags_version(&away_id) >= killed["version"].as_u64().unwrap()
    })
    .await;
    assert!(!back.flag(&away_id, "beta"));
    back.clear_retained().await;
    w.finish().await;
}

async fn flags_survive_restart_and_follow_labels(backend: Backend) {
    let mut w = World::start(backend, Options::default()).await;
    let n = 10;
    w.add(w.sim_devices(n, |_| Behavior::Succeed)).await;
    let ids: Vec<String> = (0..n).map(|i| w.id(i)).collect();
    let (_, body) = flag_op(
        &w,
        "canary-only",
        "set",
        json!({ "on": true, "filter": format!("{} and label:ring=canary", w.filter()) }),
    )
    .await;
    assert_eq!(body["changed"], true);
    converge(&w.sim, &ids, "canary-only", |_| false).await;
    let version = body["version"].as_u64().unwrap();
    wait_for("devices apply the first version", || async {
        ids.iter().all(|id| w.sim.flags_version(id) >= version)
    })
    .await;

    // A server label puts device 0 in the rule: its flags are evaluated again.
    let r =
        w.t.client
            .put(w.t.url(&format!("/api/v1/devices/{}/labels", ids[0])))
            .bearer_auth(TOKEN)
            .json(&json!({ "labels": { "ring": "canary" } }))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    converge(&w.sim, &ids, "canary-only", |id| id == ids[0]).await;
    assert!(w.sim.flags_version(&ids[0]) > version);

    let before =
        w.t.get("/api/v1/flags")
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap();
    w.t = w.t.restart().await;
    let after =
        w.t.get("/api/v1/flags")
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap();
    assert_eq!(before["version"], after["version"]);
    assert_eq!(before["flags"][0]["flag"], after["flags"][0]["flag"]);
    assert_eq!(after["flags"][0]["counts"]["on"], 1);

    // A change after the restart has a higher version, and devices apply it.
    let (_, body) = flag_op(
        &w,
        "canary-only",
        "set",
        json!({ "on": true, "filter": w.filter() }),
    )
    .await;
    assert!(body["version"].as_u64().unwrap() > after["version"].as_u64().unwrap());
    converge(&w.sim, &ids, "canary-only", |_| true).await;
    w.finish().await;
}

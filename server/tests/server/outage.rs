//! Issue 19: one device or one database outage must never hurt the fleet. Forged
//! generations, a report the database refuses, and a PostgreSQL outage longer than every pool
//! timeout (through a TCP proxy, so the shared database server keeps running).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::fleet::{Backend, World, count, suite, wait_for};
use crate::proxy::Proxy;
use crate::sim::{Behavior, device, running_of};
use crate::util::{Options, PgSchema, TOKEN};

suite!(
    issue19_forged_generations_are_rejected,
    issue19_a_device_ahead_of_the_server_is_reached_above_its_watermark,
    issue19_one_refused_report_does_not_fail_its_batch,
);

/// The generations device `id` received, in order.
fn generations(w: &World, id: &str) -> Vec<u64> {
    let d = w.sim.device(id).unwrap();
    d.seen.iter().map(|s| s.generation).collect()
}

/// Issue 19.1: a device reporting generations the server never issued (2^63, u64::MAX,
/// i64::MAX) is refused (`mqtt-rejected`); another device's report right behind them is
/// stored; rollouts over the device are created, paused and aborted as usual, before and
/// after a restart, and its generations count on from what the server issued.
async fn issue19_forged_generations_are_rejected(backend: Backend) {
    let mut w = World::start(backend, Options::default()).await;
    w.add(w.sim_devices(3, |_| Behavior::Succeed)).await;
    let attacker = w.id(0);
    for generation in [1u64 << 63, u64::MAX, i64::MAX as u64] {
        w.sim.set_generation(&attacker, generation);
        w.sim.publish_reported(&attacker).await;
    }
    w.sim.install_by_hand(&w.id(1), running_of(&w.new)).await;
    let drifted = format!("{} and drifted", w.filter());
    wait_for("device 1's report stored", || async {
        w.devices(&drifted).await.len() == 1
    })
    .await;
    let filter = format!("kind=mqtt-rejected&device={attacker}");
    wait_for("the forged generations refused", || async {
        w.events(&filter).await.len() >= 3
    })
    .await;
    for e in w.events(&filter).await {
        let reason = e["details"]["reason"].as_str().unwrap();
        assert!(reason.contains("never issued"), "{e}");
    }

    // The attacker goes quiet (its forged report stays retained on the broker).
    w.sim.set_generation(&attacker, 0);
    w.sim.set_behavior(&attacker, Behavior::Silent);
    let first = rollout_paused_and_aborted(&w).await;
    w.t = w.t.restart().await;
    let second = rollout_paused_and_aborted(&w).await;
    assert_ne!(first, second);
    // One generation after the other, from 1: nothing followed the forged values.
    let seen = generations(&w, &attacker);
    let expected: Vec<u64> = (1..=seen.len() as u64).collect();
    assert!(seen.len() >= 2, "{seen:?}");
    assert_eq!(seen, expected);
    w.finish().await;
}

/// Issue 19.1/19.2 together: a device that acted on a desired state the server never issued
/// (injected around it, within one agent step) has its report refused, but the server issues
/// its next generation above the device's watermark: before a rollout (the rollout's first
/// desired state reaches it) and while a rollout waits for it (sent again, higher).
async fn issue19_a_device_ahead_of_the_server_is_reached_above_its_watermark(backend: Backend) {
    let w = World::start(backend, Options::default()).await;
    w.add(w.sim_devices(2, |i| {
        if i == 1 {
            Behavior::Silent
        } else {
            Behavior::Succeed
        }
    }))
    .await;
    let (ahead, late) = (w.id(0), w.id(1));
    w.sim.set_generation(&ahead, 100);
    w.sim.publish_reported(&ahead).await;
    let filter = format!("kind=mqtt-rejected&device={ahead}");
    wait_for(
        "the report above the issued generations refused",
        || async { !w.events(&filter).await.is_empty() },
    )
    .await;

    let (status, body) = w.create(TOKEN, json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["rollout"]["id"].as_i64().unwrap();
    wait_for("both devices notified", || async {
        !generations(&w, &late).is_empty() && !generations(&w, &ahead).is_empty()
    })
    .await;
    assert_eq!(generations(&w, &ahead), [101], "issued above the watermark");
    // The silent device now acts on an injected desired state (its watermark jumps above
    // what the rollout sent it) and reports: the rollout sends its desired state again.
    let sent = generations(&w, &late)[0];
    w.sim.set_generation(&late, sent + 50);
    w.sim.set_behavior(&late, Behavior::Succeed);
    w.sim.publish_reported(&late).await;
    let done = w.wait_status(id, "completed").await;
    assert_eq!(done["totals"]["succeeded"], 2, "{done:#}");
    assert_eq!(generations(&w, &late), [sent, sent + 51]);
    w.finish().await;
}

/// Creates a rollout over the world's devices, waits until the first device got its desired
/// state, pauses and aborts it; answers its id.
async fn rollout_paused_and_aborted(w: &World) -> i64 {
    let before = generations(w, &w.id(0)).len();
    let (status, body) = w.create(TOKEN, json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["rollout"]["id"].as_i64().unwrap();
    wait_for("device 0 notified", || async {
        generations(w, &w.id(0)).len() > before
    })
    .await;
    let (status, body) = w.op(TOKEN, id, "pause").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["rollout"]["status"], "paused");
    let (status, body) = w.op(TOKEN, id, "abort").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["rollout"]["status"], "aborted");
    id
}

/// Makes the database refuse any write of device `id`'s row (a trigger), as it would refuse
/// a value it cannot store.
async fn refuse_device_rows(w: &World, backend: Backend, id: &str) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&w.t.database_url()).await.unwrap();
    let statements = if backend == Backend::Postgres {
        vec![
            "CREATE FUNCTION ota_test_refuse() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'injected refusal'; END $$"
                .to_string(),
            format!(
                "CREATE TRIGGER ota_test_refuse BEFORE INSERT OR UPDATE ON devices FOR EACH ROW \
                 WHEN (NEW.id = '{id}') EXECUTE FUNCTION ota_test_refuse()"
            ),
        ]
    } else {
        ["INSERT", "UPDATE"]
            .iter()
            .map(|op| {
                format!(
                    "CREATE TRIGGER ota_test_refuse_{op} BEFORE {op} ON devices \
                     WHEN NEW.id = '{id}' BEGIN SELECT RAISE(ABORT, 'injected refusal'); END"
                )
            })
            .collect()
    };
    for sql in statements {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .unwrap();
    }
    pool.close().await;
}

/// Issue 19.1: a device whose row the database refuses does not fail the batch it is in:
/// its messages are dropped (`mqtt-rejected`), the other devices' are stored, and the
/// coordinator carries on.
async fn issue19_one_refused_report_does_not_fail_its_batch(backend: Backend) {
    let w = World::start(backend, Options::default()).await;
    w.add(w.sim_devices(2, |_| Behavior::Succeed)).await;
    let poison = format!("{}poison", w.prefix);
    refuse_device_rows(&w, backend, &poison).await;
    let d = device(&poison, "gw-a", Some(running_of(&w.old)), Behavior::Succeed);
    w.sim.add_devices(vec![d]).await;
    w.sim.install_by_hand(&w.id(1), running_of(&w.new)).await;
    let drifted = format!("{} and drifted", w.filter());
    wait_for("device 1's report stored", || async {
        w.devices(&drifted).await.len() == 1
    })
    .await;
    let filter = format!("kind=mqtt-rejected&device={poison}");
    wait_for("the refused device recorded", || async {
        !w.events(&filter).await.is_empty()
    })
    .await;
    let events = w.events(&filter).await;
    assert!(
        events.iter().all(|e| e["details"]["reason"]
            .as_str()
            .unwrap()
            .contains("injected refusal")),
        "{events:#?}"
    );
    assert!(w.devices(&format!("id={poison}")).await.is_empty());

    // Still coordinating: later reports are stored, heartbeats acked.
    w.sim.install_by_hand(&w.id(0), running_of(&w.new)).await;
    wait_for("device 0's report stored", || async {
        w.devices(&drifted).await.len() == 2
    })
    .await;
    w.sim.heartbeat(&w.id(0), 5).await;
    wait_for("heartbeat acked", || async {
        w.sim.device(&w.id(0)).unwrap().acks.contains(&5)
    })
    .await;
    w.finish().await;
}

/// `url` with its host and port replaced by `addr`.
fn via(url: &str, addr: std::net::SocketAddr) -> String {
    let mut u = reqwest::Url::parse(url).unwrap();
    u.set_host(Some(&addr.ip().to_string())).unwrap();
    u.set_port(Some(addr.port())).unwrap();
    u.to_string()
}

/// Issue 19.3: PostgreSQL goes away mid-rollout for longer than every pool timeout. The
/// coordinator turns read-only (rollout commands answer 503, heartbeats are still acked,
/// device reports are kept) and, once the database is back, resumes exactly: the bake that
/// ended meanwhile advances the rollout, a second rollout over the same devices is refused
/// (409), the report sent during the outage is stored, and generations count on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set OTA_TEST_DATABASE_URL"]
async fn issue19_postgres_outage_longer_than_pool_timeouts() {
    let schema = PgSchema::create().await;
    let parsed = reqwest::Url::parse(&schema.url).unwrap();
    let upstream =
        tokio::net::lookup_host((parsed.host_str().unwrap(), parsed.port().unwrap_or(5432)))
            .await
            .unwrap()
            .next()
            .unwrap();
    let proxy = Proxy::start(upstream).await;
    let opts = Options {
        manual_clock: true,
        database_url: Some(via(&schema.url, proxy.addr())),
        db_acquire_timeout_secs: Some(1),
        ..Options::default()
    };
    let w = World::start(Backend::Embedded, opts).await;
    let n = 6;
    w.add(w.sim_devices(n, |_| Behavior::Succeed)).await;
    // A device of another hardware class: in no rollout, so a change it reports is drift.
    let bystander = format!("{}bystander", w.prefix);
    w.sim
        .add_devices(vec![device(
            &bystander,
            "gw-z",
            Some(running_of(&w.old)),
            Behavior::Succeed,
        )])
        .await;
    wait_for("bystander registered", || async {
        w.devices(&format!("id={bystander}")).await.len() == 1
    })
    .await;
    // Cohorts hash the random device ids: with a first wave of 50 % all six devices would fall
    // in it once in 64 runs, and the rollout would complete when its bake ends (freeing the
    // devices, so the second rollout below would not conflict). At 10 % that is one in 10^6.
    let (status, body) = w
        .create(TOKEN, json!({ "waves": [10, 100], "bake_secs": 600 }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["rollout"]["id"].as_i64().unwrap();
    wait_for("wave 0 baking", || async {
        w.rollout(id).await["phase"] == "baking"
    })
    .await;

    // The database goes away; the next write fails and the coordinator turns read-only.
    proxy.set_down(true);
    w.sim.heartbeat(&w.id(0), 1).await;
    let second = json!({ "filter": format!("id={}", w.id(0)) });
    let (status, body) = w.create(TOKEN, second.clone()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["cause"], "db-unavailable", "{body}");
    // Longer than every pool timeout (1 s) and several reload attempts.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let (status, body) = w.op(TOKEN, id, "pause").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    w.sim.heartbeat(&w.id(1), 2).await;
    wait_for("heartbeat acked during the outage", || async {
        w.sim.device(&w.id(1)).unwrap().acks.contains(&2)
    })
    .await;
    // The bake ends during the outage; the bystander changes what it runs.
    w.t.advance(Duration::from_secs(601)).await;
    w.sim.install_by_hand(&bystander, running_of(&w.new)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The database is back.
    proxy.set_down(false);
    let mut answer = w.create(TOKEN, second.clone()).await;
    for _ in 0..600 {
        if answer.0 != StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        answer = w.create(TOKEN, second.clone()).await;
    }
    assert_eq!(answer.0, StatusCode::CONFLICT, "{}", answer.1);
    assert_eq!(answer.1["cause"], "rollout-conflict");
    wait_for("wave 1 baking", || async {
        let r = w.rollout(id).await;
        r["current_wave"] == 1 && r["phase"] == "baking"
    })
    .await;
    w.t.advance(Duration::from_secs(601)).await;
    let done = w.wait_status(id, "completed").await;
    assert_eq!(count(&done, "succeeded"), n as u64);
    wait_for("the bystander's drift kept", || async {
        w.devices(&format!("id={bystander} and drifted"))
            .await
            .len()
            == 1
    })
    .await;

    // Generations count on: a rollout back to 1.0.0 sends generation 2 to every device.
    let (status, body) = w
        .create(
            TOKEN,
            json!({ "release": w.old_digest(), "filter": format!("id={}d*", w.prefix) }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let back = body["rollout"]["id"].as_i64().unwrap();
    w.wait_status(back, "completed").await;
    for i in 0..n {
        assert_eq!(generations(&w, &w.id(i)), [1, 2], "{}", w.id(i));
    }
    w.finish().await;
    schema.drop().await;
}

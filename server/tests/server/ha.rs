//! Issue 15: the coordinator lease with its fencing epoch (SQLite, the one-replica case, and
//! PostgreSQL, ignored unless `OTA_TEST_DATABASE_URL` is set), and two server replicas on one
//! PostgreSQL schema and one Mosquitto (ignored unless `OTA_TEST_MQTT_URL` is set too).

use std::time::Duration;

use ota_server::config::HaConfig;
use ota_server::db::{AcquireOutcome, Db, DbError, Fence, RenewOutcome};
use serde_json::json;

use ota_core::release::{TrustUpdate, sign_trust_update};

use crate::util::{Options, PgSchema, TOKEN, TestServer, artifact, key, release};

const TTL_MS: i64 = 60_000;

fn fence(replica: &str, epoch: i64) -> Fence {
    Fence {
        replica: replica.to_string(),
        epoch,
    }
}

/// Whether a coordinator batch of `replica` at `epoch` may be written now.
async fn may_write(db: &Db, replica: &str, epoch: i64) -> Result<(), DbError> {
    let mut tx = db.begin().await.unwrap();
    tx.check_fence(&fence(replica, epoch)).await?;
    tx.commit().await.unwrap();
    Ok(())
}

/// Waits (by the database's clock) until the lease expired.
async fn until_expired(db: &Db) {
    while db.lease().await.unwrap().expires_in_ms > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The lease rules, the same on both databases: one holder at a time, +1 epoch per takeover,
/// a stale epoch cannot write or renew, a released or expired lease is taken at once.
async fn lease_rules(a: &Db, b: &Db) {
    let lease = a.lease().await.unwrap();
    assert_eq!((lease.holder, lease.epoch), (None, 0), "a fresh database");

    assert_eq!(
        a.acquire_lease("a", "http://a", TTL_MS, false)
            .await
            .unwrap(),
        AcquireOutcome::Acquired { epoch: 1 }
    );
    match b
        .acquire_lease("b", "http://b", TTL_MS, false)
        .await
        .unwrap()
    {
        AcquireOutcome::Held(held) => {
            assert_eq!(held.live_holder(), Some(("a", Some("http://a"))));
            assert_eq!(held.epoch, 1);
        }
        other => panic!("b must not take a live lease: {other:?}"),
    }
    assert_eq!(
        a.renew_lease("a", 1, TTL_MS).await.unwrap(),
        RenewOutcome::Renewed
    );
    may_write(a, "a", 1).await.unwrap();
    assert!(matches!(
        may_write(b, "b", 1).await,
        Err(DbError::Fenced { epoch: 1 })
    ));

    // The leader gives the lease up (a graceful stop): the standby takes it at once, epoch+1.
    a.release_lease("a", 1).await.unwrap();
    assert_eq!(
        b.acquire_lease("b", "http://b", TTL_MS, false)
            .await
            .unwrap(),
        AcquireOutcome::Acquired { epoch: 2 }
    );
    // Fencing: the old leader (a paused process that wakes up) can neither write nor renew.
    assert!(matches!(
        may_write(a, "a", 1).await,
        Err(DbError::Fenced { epoch: 1 })
    ));
    match a.renew_lease("a", 1, TTL_MS).await.unwrap() {
        RenewOutcome::Lost(now) => assert_eq!((now.holder.as_deref(), now.epoch), (Some("b"), 2)),
        other => panic!("a stale renewal must fail: {other:?}"),
    }
    may_write(b, "b", 2).await.unwrap();

    // The leader stops renewing: once the lease expired (database clock), the other one takes
    // it over with the next epoch.
    assert_eq!(
        b.renew_lease("b", 2, 200).await.unwrap(),
        RenewOutcome::Renewed
    );
    until_expired(a).await;
    assert_eq!(
        a.acquire_lease("a", "http://a", TTL_MS, false)
            .await
            .unwrap(),
        AcquireOutcome::Acquired { epoch: 3 }
    );
    assert!(matches!(
        may_write(b, "b", 2).await,
        Err(DbError::Fenced { epoch: 2 })
    ));

    // The one-replica server forces the lease at start, whatever its state.
    assert_eq!(
        b.acquire_lease("b", "http://b", TTL_MS, true)
            .await
            .unwrap(),
        AcquireOutcome::Acquired { epoch: 4 }
    );
    assert!(may_write(a, "a", 3).await.is_err());

    // Heartbeats list every replica.
    a.replica_heartbeat("a", "standby", 4, "http://a")
        .await
        .unwrap();
    b.replica_heartbeat("b", "leader", 4, "http://b")
        .await
        .unwrap();
    b.replica_heartbeat("b", "leader", 4, "http://b")
        .await
        .unwrap();
    let replicas = a.list_replicas().await.unwrap();
    let listed: Vec<_> = replicas
        .iter()
        .map(|r| (r.replica_id.as_str(), r.role.as_str(), r.epoch))
        .collect();
    assert_eq!(listed, [("a", "standby", 4), ("b", "leader", 4)]);
    assert!(replicas.iter().all(|r| r.heartbeat_age_ms >= 0));
    // Kept in milliseconds, shown in unix seconds as every time in the API.
    let shown = serde_json::to_value(&replicas[0]).unwrap();
    assert_eq!(shown["heartbeat_at"], replicas[0].heartbeat_at / 1000);

    // Forgetting: rows younger than the limit stay; older ones go; a clean stop removes its
    // own row.
    assert_eq!(a.forget_replicas(TTL_MS).await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.replica_heartbeat("b", "leader", 4, "http://b")
        .await
        .unwrap();
    let a_age = a.list_replicas().await.unwrap()[0].heartbeat_age_ms;
    assert!(a_age >= 500, "{a_age}");
    assert_eq!(b.forget_replicas(a_age - 1).await.unwrap(), 1);
    let ids = |list: Vec<ota_server::db::ReplicaRecord>| {
        list.into_iter().map(|r| r.replica_id).collect::<Vec<_>>()
    };
    assert_eq!(ids(a.list_replicas().await.unwrap()), ["b"]);
    b.remove_replica("b").await.unwrap();
    assert!(a.list_replicas().await.unwrap().is_empty());
}

#[tokio::test]
async fn issue15_lease_and_fencing_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("ota.db").display());
    let a = Db::connect(&url, 2).await.unwrap();
    let b = Db::connect(&url, 2).await.unwrap();
    lease_rules(&a, &b).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set OTA_TEST_DATABASE_URL"]
async fn issue15_lease_and_fencing_on_postgres() {
    let schema = PgSchema::create().await;
    let a = Db::connect(&schema.url, 4).await.unwrap();
    let b = Db::connect(&schema.url, 4).await.unwrap();
    lease_rules(&a, &b).await;
    a.close().await;
    b.close().await;
    schema.drop().await;
}

/// Replicas racing for a free lease: exactly one takes it. A takeover waits for the batch the
/// old leader is writing (the fence check locks the lease row until the commit), and every
/// later batch of the old leader is refused.
#[tokio::test]
#[ignore = "needs PostgreSQL: set OTA_TEST_DATABASE_URL"]
async fn issue15_postgres_exactly_one_leads_and_a_takeover_waits_for_the_batch_in_flight() {
    let schema = PgSchema::create().await;
    let mut dbs = Vec::new();
    for _ in 0..4 {
        dbs.push(Db::connect(&schema.url, 2).await.unwrap());
    }
    let attempts = dbs.iter().enumerate().map(|(i, db)| async move {
        db.acquire_lease(&format!("r{i}"), "http://x", TTL_MS, false)
            .await
            .unwrap()
    });
    let outcomes = futures_util::future::join_all(attempts).await;
    let winners: Vec<_> = outcomes
        .iter()
        .enumerate()
        .filter_map(|(i, o)| match o {
            AcquireOutcome::Acquired { epoch } => Some((i, *epoch)),
            _ => None,
        })
        .collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    let (leader, epoch) = winners[0];
    assert_eq!(epoch, 1);
    let leader_id = format!("r{leader}");
    let other = (leader + 1) % dbs.len();

    // A batch in flight holds the lease row; a forced takeover waits for its commit.
    let mut batch = dbs[leader].begin().await.unwrap();
    batch.check_fence(&fence(&leader_id, 1)).await.unwrap();
    let takeover = {
        let db = dbs[other].clone();
        let id = format!("r{other}");
        tokio::spawn(async move { db.acquire_lease(&id, "http://y", TTL_MS, true).await })
    };
    batch.commit().await.unwrap();
    assert_eq!(
        takeover.await.unwrap().unwrap(),
        AcquireOutcome::Acquired { epoch: 2 }
    );
    assert!(matches!(
        may_write(&dbs[leader], &leader_id, 1).await,
        Err(DbError::Fenced { epoch: 1 })
    ));
    for db in dbs {
        db.close().await;
    }
    schema.drop().await;
}

/// A leader frozen in the middle of a batch (SIGSTOP, a paused VM: its transaction open, the
/// lease row locked by the fencing check) blocks a takeover no longer than its connections'
/// idle-transaction limit (the server passes its lease TTL): PostgreSQL ends the idle
/// transaction, the standby takes the lease, and the frozen batch, woken, cannot commit.
#[tokio::test]
#[ignore = "needs PostgreSQL: set OTA_TEST_DATABASE_URL"]
async fn issue15_a_leader_frozen_mid_batch_does_not_block_the_takeover() {
    let schema = PgSchema::create().await;
    let ttl = Duration::from_secs(3);
    let ttl_ms = 3_000;
    let frozen = Db::connect_with(&schema.url, 2, Duration::from_secs(10), ttl)
        .await
        .unwrap();
    let standby = Db::connect(&schema.url, 2).await.unwrap();
    assert_eq!(
        frozen
            .acquire_lease("frozen", "http://x", ttl_ms, false)
            .await
            .unwrap(),
        AcquireOutcome::Acquired { epoch: 1 }
    );
    let mut batch = frozen.begin().await.unwrap();
    batch.check_fence(&fence("frozen", 1)).await.unwrap();
    // The process stands still from here. The standby tries again until the lease is its own;
    // without the limit its attempt would wait for the row lock forever (the bound below only
    // keeps a failure from hanging the suite).
    let takeover = async {
        loop {
            let outcome = standby
                .acquire_lease("standby", "http://y", ttl_ms, false)
                .await
                .unwrap();
            if let AcquireOutcome::Acquired { epoch } = outcome {
                return epoch;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let epoch = tokio::time::timeout(Duration::from_secs(60), takeover)
        .await
        .expect("the frozen batch's lock on the lease row was never released");
    assert_eq!(epoch, 2);
    // Woken, the frozen batch writes nothing.
    let woken = batch.commit().await;
    assert!(woken.is_err(), "{woken:?}");
    assert!(matches!(
        may_write(&frozen, "frozen", 1).await,
        Err(DbError::Fenced { epoch: 1 })
    ));
    frozen.close().await;
    standby.close().await;
    schema.drop().await;
}

fn replica(id: &str) -> HaConfig {
    let mut ha = HaConfig::new();
    ha.replica_id = Some(id.to_string());
    ha.lease_ttl_secs = 3;
    ha
}

/// `GET /healthz`: its status and JSON body.
async fn healthz(t: &TestServer) -> (reqwest::StatusCode, serde_json::Value) {
    let r = t.client.get(t.url("/healthz")).send().await.unwrap();
    (r.status(), r.json().await.unwrap())
}

async fn metric(t: &TestServer, name: &str) -> u64 {
    let text = t
        .client
        .get(t.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

/// Two replicas on one PostgreSQL schema and one external broker: one leads, the standby
/// forwards coordinator commands to it with the caller's token, lists both replicas, and
/// takes over (epoch + 1) when the leader stops.
#[tokio::test]
#[ignore = "needs PostgreSQL and Mosquitto: set OTA_TEST_DATABASE_URL and OTA_TEST_MQTT_URL"]
async fn issue15_two_replicas_one_leads_the_standby_forwards_and_takes_over() {
    let mqtt_url = std::env::var("OTA_TEST_MQTT_URL").expect("set OTA_TEST_MQTT_URL");
    let schema = PgSchema::create().await;
    let prefix = format!("ota-test/ha-{}", std::process::id());
    let opts = |id: &str| Options {
        database_url: Some(schema.url.clone()),
        mqtt_url: Some(mqtt_url.clone()),
        topic_prefix: Some(prefix.clone()),
        ha: Some(replica(id)),
        ..Options::default()
    };
    let first = TestServer::start_opts(opts("first")).await;
    let second = TestServer::start_opts(opts("second")).await;
    // `/healthz` of each: 200 on both, the role, epoch and what this replica knows.
    let (status, leader) = healthz(&first).await;
    assert_eq!(status, reqwest::StatusCode::OK);
    assert_eq!(
        (&leader["role"], &leader["coordinator"], &leader["epoch"]),
        (&json!("leader"), &json!("running"), &json!(1)),
        "{leader}"
    );
    assert!(leader["lease_renewed_ms_ago"].is_u64(), "{leader}");
    let mut connected = false;
    for _ in 0..100 {
        if healthz(&first).await.1["mqtt_connected"] == true {
            connected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        connected,
        "the leader's /healthz never said its MQTT client is connected"
    );
    let (status, standby) = healthz(&second).await;
    assert_eq!(status, reqwest::StatusCode::OK);
    assert_eq!(
        (&standby["role"], &standby["coordinator"], &standby["epoch"]),
        (&json!("standby"), &json!("none"), &json!(1)),
        "{standby}"
    );
    assert_eq!(standby["replica_id"], "second");
    assert_eq!(
        standby["leader_url"],
        json!(first.server.base_url()),
        "{standby}"
    );
    assert!(standby["lease_renewed_ms_ago"].is_null(), "{standby}");
    assert!(standby["heartbeat_ms_ago"].is_u64(), "{standby}");
    assert_eq!(standby["database_reachable"], true, "{standby}");
    assert!(standby["mqtt_connected"].is_null(), "{standby}");
    assert_eq!(metric(&first, "ota_coordinator_leader").await, 1);
    assert_eq!(metric(&second, "ota_coordinator_leader").await, 0);
    assert_eq!(metric(&first, "ota_coordinator_epoch").await, 1);

    let list: serde_json::Value = second.get_json("/api/v1/replicas").await;
    assert_eq!(list["answered_by"], "second");
    assert_eq!(list["lease"]["holder"], "first");
    assert_eq!(list["lease"]["epoch"], 1);
    let roles: Vec<_> = list["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["replica_id"].clone(), r["role"].clone()))
        .collect();
    assert_eq!(
        roles,
        [
            (json!("first"), json!("leader")),
            (json!("second"), json!("standby"))
        ]
    );

    // Forwarded with the caller's token: the leader answers (a 404 of its coordinator, not
    // the standby's 503, nor a 401 of a lost Authorization header).
    let answer = second
        .post_as(TOKEN, "/api/v1/rollouts/999/pause", &json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::NOT_FOUND);
    let flags = second.get("/api/v1/flags").send().await.unwrap();
    assert_eq!(flags.status(), reqwest::StatusCode::OK);
    // A release published to the standby is streamed to the leader, which stores it.
    let art = artifact(64 * 1024, 9);
    let published = second.publish(release("9.9.9", &art, &[1]), art).await;
    assert_eq!(published.status(), reqwest::StatusCode::CREATED);
    let listed: serde_json::Value = first.get_json("/api/v1/releases").await;
    assert_eq!(listed["releases"][0]["version"], "9.9.9", "{listed}");
    // A key rotation sent to the standby is forwarded, accepted by the leader, and put in
    // force on the standby too (it verifies the releases published to it).
    let keys: Vec<_> = [1u8, 2].iter().map(|&n| key(n).verifying_key()).collect();
    let rotation = sign_trust_update(&TrustUpdate::new(1, &keys, 1, 0), &[key(1)]);
    let rotated = second
        .client
        .post(second.url("/api/v1/trust"))
        .bearer_auth(TOKEN)
        .body(rotation)
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), reqwest::StatusCode::OK);
    assert_eq!(first.server.state().trust().view().sequence, 1);
    let mut refreshed = false;
    for _ in 0..100 {
        if second.server.state().trust().view().sequence == 1 {
            refreshed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refreshed, "the standby never put the rotation in force");
    // Without a token the standby refuses it itself.
    let anonymous = second
        .client
        .get(second.url("/api/v1/flags"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), reqwest::StatusCode::UNAUTHORIZED);

    // The leader stops (and gives the lease up): the standby takes over with epoch 2.
    first.server.shutdown().await.unwrap();
    let mut led = false;
    for _ in 0..300 {
        if metric(&second, "ota_coordinator_leader").await == 1 {
            led = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(led, "the standby never took the lease over");
    assert_eq!(metric(&second, "ota_coordinator_epoch").await, 2);
    assert_eq!(metric(&second, "ota_coordinator_failovers_total").await, 1);
    let answer = second
        .post_as(TOKEN, "/api/v1/rollouts/999/pause", &json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::NOT_FOUND);
    let list: serde_json::Value = second.get_json("/api/v1/replicas").await;
    assert_eq!(list["lease"]["holder"], "second");
    // The first replica stopped cleanly: its row is gone.
    let ids: Vec<_> = list["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["replica_id"].clone())
        .collect();
    assert_eq!(ids, [json!("second")], "{list}");
    second.server.shutdown().await.unwrap();
    schema.drop().await;
}

/// Waits (at most 30 s) until `t` leads (`leader`) or does not.
async fn until_role(t: &TestServer, leader: bool) {
    for _ in 0..300 {
        if t.server.fleet().shared().coordination().leader == leader {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the replica never became leader = {leader}");
}

/// A proxy in front of `schema`'s PostgreSQL (to cut the database away and give it back), and
/// the schema's URL through it.
async fn behind_a_proxy(schema: &PgSchema) -> (crate::proxy::Proxy, String) {
    let parsed = reqwest::Url::parse(&schema.url).unwrap();
    let upstream =
        tokio::net::lookup_host((parsed.host_str().unwrap(), parsed.port().unwrap_or(5432)))
            .await
            .unwrap()
            .next()
            .unwrap();
    let proxy = crate::proxy::Proxy::start(upstream).await;
    let mut via_proxy = parsed;
    via_proxy.set_port(Some(proxy.addr().port())).unwrap();
    via_proxy
        .set_host(Some(&proxy.addr().ip().to_string()))
        .unwrap();
    (proxy, via_proxy.to_string())
}

/// The leader is cut from the database: it cannot renew, so it stops coordinating by its own
/// deadline, and the standby takes over with the next epoch. Once the database is back the old
/// leader stays a standby and forwards commands to the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL and Mosquitto: set OTA_TEST_DATABASE_URL and OTA_TEST_MQTT_URL"]
async fn issue15_a_leader_cut_from_the_database_steps_down_and_the_standby_takes_over() {
    let mqtt_url = std::env::var("OTA_TEST_MQTT_URL").expect("set OTA_TEST_MQTT_URL");
    let schema = PgSchema::create().await;
    let (proxy, via_proxy) = behind_a_proxy(&schema).await;
    let prefix = format!("ota-test/ha-cut-{}", std::process::id());
    let opts = |id: &str, url: String| Options {
        database_url: Some(url),
        mqtt_url: Some(mqtt_url.clone()),
        topic_prefix: Some(prefix.clone()),
        db_acquire_timeout_secs: Some(1),
        ha: Some(replica(id)),
        ..Options::default()
    };
    let first = TestServer::start_opts(opts("first", via_proxy)).await;
    let second = TestServer::start_opts(opts("second", schema.url.clone())).await;
    assert!(first.server.fleet().shared().coordination().leader);
    assert!(!second.server.fleet().shared().coordination().leader);

    proxy.set_down(true);
    until_role(&first, false).await;
    until_role(&second, true).await;
    assert_eq!(second.server.fleet().shared().coordination().epoch, 2);
    // The old leader's coordinator is stopped: it answers as a standby.
    let answer = first
        .post_as(TOKEN, "/api/v1/rollouts/999/pause", &json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);

    proxy.set_down(false);
    // Back on the database, it learns who leads and forwards to it.
    let mut forwarded = false;
    for _ in 0..300 {
        let answer = first
            .post_as(TOKEN, "/api/v1/rollouts/999/pause", &json!({}))
            .send()
            .await
            .unwrap();
        if answer.status() == reqwest::StatusCode::NOT_FOUND {
            forwarded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(forwarded, "the old leader never forwarded to the new one");
    assert!(!first.server.fleet().shared().coordination().leader);
    assert!(second.server.fleet().shared().coordination().leader);
    first.server.shutdown().await.unwrap();
    second.server.shutdown().await.unwrap();
    schema.drop().await;
}

/// Fencing seen from the coordinator: another replica takes the lease while this one still
/// believes it leads. Its next batch is refused in its own transaction, nothing of it is stored
/// (no flag, no flag change), the caller gets 503 `not-leader`, and the coordinator stops.
#[tokio::test]
async fn issue15_a_fenced_coordinator_stores_nothing_and_stops() {
    let t = TestServer::start().await;
    assert!(t.server.fleet().shared().coordination().leader);
    let ok = t
        .post_as(TOKEN, "/api/v1/flags/before/set", &json!({ "on": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), reqwest::StatusCode::OK);

    // Another replica takes the lease over (forced, as a second one-replica server would).
    let intruder = Db::connect(&t.database_url(), 1).await.unwrap();
    assert!(matches!(
        intruder
            .acquire_lease("intruder", "http://127.0.0.1:9", TTL_MS, true)
            .await
            .unwrap(),
        AcquireOutcome::Acquired { epoch: 2 }
    ));
    let refused = t
        .post_as(TOKEN, "/api/v1/flags/after/set", &json!({ "on": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["cause"], "not-leader", "{body}");
    let flags = intruder.load_flag_set().await.unwrap().unwrap();
    let names: Vec<&str> = flags.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["before"], "the fenced batch stored nothing");
    until_role(&t, false).await;
    intruder.close().await;
    t.server.shutdown().await.unwrap();
}

/// One replica whose database goes away for longer than its lease: it stops coordinating by
/// its own deadline, and once the database is back it takes the lease again (epoch 2) and
/// starts a fresh coordinator that answers commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL and Mosquitto: set OTA_TEST_DATABASE_URL and OTA_TEST_MQTT_URL"]
async fn issue15_a_lone_replica_outlives_an_outage_longer_than_its_lease() {
    let mqtt_url = std::env::var("OTA_TEST_MQTT_URL").expect("set OTA_TEST_MQTT_URL");
    let schema = PgSchema::create().await;
    let (proxy, via_proxy) = behind_a_proxy(&schema).await;
    let t = TestServer::start_opts(Options {
        database_url: Some(via_proxy),
        mqtt_url: Some(mqtt_url),
        topic_prefix: Some(format!("ota-test/ha-lone-{}", std::process::id())),
        db_acquire_timeout_secs: Some(1),
        ha: Some(replica("lone")),
        ..Options::default()
    })
    .await;
    assert_eq!(t.server.fleet().shared().coordination().epoch, 1);
    proxy.set_down(true);
    until_role(&t, false).await;
    proxy.set_down(false);
    until_role(&t, true).await;
    assert_eq!(t.server.fleet().shared().coordination().epoch, 2);
    let mut answered = false;
    for _ in 0..300 {
        let answer = t
            .post_as(TOKEN, "/api/v1/rollouts/999/pause", &json!({}))
            .send()
            .await
            .unwrap();
        if answer.status() == reqwest::StatusCode::NOT_FOUND {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered, "the fresh coordinator never answered");
    t.server.shutdown().await.unwrap();
    schema.drop().await;
}

/// Split brain, seen from the devices: the coordinator still believes it leads when another
/// replica took the lease; the rollout it is asked for is refused by fencing (503
/// `not-leader`), no rollout or desired state is stored, and no device receives a desired
/// state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue15_a_fenced_leader_never_reaches_a_device() {
    use crate::fleet::{Backend, World};
    use crate::sim::Behavior;
    let w = World::start(Backend::Embedded, Options::default()).await;
    w.add(w.sim_devices(3, |_| Behavior::Succeed)).await;
    let intruder = Db::connect(&w.t.database_url(), 1).await.unwrap();
    assert!(matches!(
        intruder
            .acquire_lease("intruder", "http://127.0.0.1:9", TTL_MS, true)
            .await
            .unwrap(),
        AcquireOutcome::Acquired { epoch: 2 }
    ));
    let (status, body) = w.create(TOKEN, json!({ "waves": [100] })).await;
    assert_eq!(status, reqwest::StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["cause"], "not-leader", "{body}");
    until_role(&w.t, false).await;
    assert!(intruder.list_rollouts().await.unwrap().is_empty());
    assert!(intruder.list_desired().await.unwrap().is_empty());
    for n in 0..3 {
        let device = w.sim.device(&w.id(n)).unwrap();
        assert!(device.seen.is_empty(), "{}: {:?}", w.id(n), device.seen);
    }
    intruder.close().await;
    w.finish().await;
}

/// The replica ids listed by `GET /api/v1/replicas` of `t`.
async fn listed_ids(t: &TestServer) -> Vec<String> {
    let list: serde_json::Value = t.get_json("/api/v1/replicas").await;
    list["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["replica_id"].as_str().unwrap().to_string())
        .collect()
}

/// Issue 15: `/healthz` of the one-replica server (SQLite, embedded broker): 200 with its
/// role, epoch and heartbeat as JSON.
#[tokio::test]
async fn issue15_healthz_shows_the_role_epoch_and_heartbeat() {
    let t = TestServer::start().await;
    let (status, health) = healthz(&t).await;
    assert_eq!(status, reqwest::StatusCode::OK);
    assert_eq!(health["status"], "ok");
    assert_eq!(
        (&health["role"], &health["coordinator"], &health["epoch"]),
        (&json!("leader"), &json!("running"), &json!(1)),
        "{health}"
    );
    let id = t.server.fleet().shared().coordination().replica_id;
    assert_eq!(health["replica_id"], json!(id));
    assert!(health["lease_renewed_ms_ago"].is_u64(), "{health}");
    assert!(health["heartbeat_ms_ago"].is_u64(), "{health}");
    assert_eq!(health["database_reachable"], true, "{health}");
    assert!(health["mqtt_connected"].is_boolean(), "{health}");
    t.server.shutdown().await.unwrap();
}

/// Issue 15: the leader removes the rows of replicas silent for longer than
/// `forget_replica_after_secs`, keeps the live ones, and a replica that stops cleanly removes
/// its own row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL and Mosquitto: set OTA_TEST_DATABASE_URL and OTA_TEST_MQTT_URL"]
async fn issue15_the_leader_forgets_silent_replicas_and_a_stopped_one_leaves() {
    let mqtt_url = std::env::var("OTA_TEST_MQTT_URL").expect("set OTA_TEST_MQTT_URL");
    let schema = PgSchema::create().await;
    let opts = |id: &str| {
        let mut ha = replica(id);
        ha.forget_replica_after_secs = Some(3);
        Options {
            database_url: Some(schema.url.clone()),
            mqtt_url: Some(mqtt_url.clone()),
            topic_prefix: Some(format!("ota-test/ha-forget-{}", std::process::id())),
            ha: Some(ha),
            ..Options::default()
        }
    };
    let lead = TestServer::start_opts(opts("lead")).await;
    let standby = TestServer::start_opts(opts("standby")).await;
    let db = Db::connect(&schema.url, 1).await.unwrap();
    // A replica that died without a clean stop: its last heartbeat is written now.
    db.replica_heartbeat("ghost", "standby", 1, "http://127.0.0.1:9")
        .await
        .unwrap();
    assert_eq!(listed_ids(&lead).await, ["ghost", "lead", "standby"]);
    let mut forgotten = false;
    for _ in 0..300 {
        if !listed_ids(&lead).await.contains(&"ghost".to_string()) {
            forgotten = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(forgotten, "the leader never forgot the silent replica");
    assert_eq!(
        listed_ids(&lead).await,
        ["lead", "standby"],
        "live replicas are kept"
    );
    standby.server.shutdown().await.unwrap();
    assert_eq!(listed_ids(&lead).await, ["lead"]);
    lead.server.shutdown().await.unwrap();
    assert!(db.list_replicas().await.unwrap().is_empty());
    db.close().await;
    schema.drop().await;
}

/// Issue 15: a new leader renews its lease while its coordinator starts. The coordinator's
/// load is held up (the `rollouts` table is locked, as a start loading many rollouts would
/// take long) for three lease TTLs: the lease stays the leader's, at epoch 1, never expires,
/// and no other replica can take it; once the load goes on, the coordinator runs with that
/// epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL and Mosquitto: set OTA_TEST_DATABASE_URL and OTA_TEST_MQTT_URL"]
async fn issue15_a_leader_whose_coordinator_starts_slowly_keeps_its_lease() {
    let s = slow_start("ha-slow").await;
    let mut taken = false;
    for _ in 0..300 {
        if s.db.lease().await.unwrap().holder.as_deref() == Some("slow") {
            taken = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(taken, "the replica never took the lease");
    // At least three TTLs (3 s): 45 rounds of at least 200 ms.
    for _ in 0..45 {
        let lease = s.db.lease().await.unwrap();
        assert_eq!((lease.holder.as_deref(), lease.epoch), (Some("slow"), 1));
        assert!(
            lease.expires_in_ms > 0,
            "the lease expired while the coordinator started: {lease:?}"
        );
        assert!(matches!(
            s.db.acquire_lease("other", "http://127.0.0.1:9", 3_000, false)
                .await
                .unwrap(),
            AcquireOutcome::Held(_)
        ));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!s.slow.is_finished(), "the lock did not hold the start up");
    s.lock.rollback().await.unwrap();
    let t = s.slow.await.unwrap();
    let coordination = t.server.fleet().shared().coordination();
    assert!(coordination.leader);
    assert_eq!(coordination.epoch, 1);
    let answer = t
        .post_as(TOKEN, "/api/v1/rollouts/999/pause", &json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::NOT_FOUND);
    t.server.shutdown().await.unwrap();
    s.locker.close().await;
    s.db.close().await;
    s.schema.drop().await;
}

/// Issue 15: a replica whose coordinator is still starting when it loses the lease calls the
/// start off. The start's load is held up (the `rollouts` table is locked), another replica
/// takes the lease by force, and the replica's start returns — as a standby, at once — while
/// the table is still locked; before, losing the lease waited for the start in progress,
/// which here would never end while the lock holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL and Mosquitto: set OTA_TEST_DATABASE_URL and OTA_TEST_MQTT_URL"]
async fn issue15_a_replica_that_loses_the_lease_mid_start_calls_the_start_off() {
    let s = slow_start("ha-calloff").await;
    let taken =
        patiently(|| async { s.db.lease().await.unwrap().holder.as_deref() == Some("slow") }).await;
    assert!(taken, "the replica never took the lease");
    assert!(!s.slow.is_finished(), "the lock did not hold the start up");
    assert!(matches!(
        s.db.acquire_lease("intruder", "http://127.0.0.1:9", TTL_MS, true)
            .await
            .unwrap(),
        AcquireOutcome::Acquired { epoch: 2 }
    ));
    // The lock still holds: only a start called off lets the replica's start return.
    let returned = patiently(|| async { s.slow.is_finished() }).await;
    assert!(
        returned,
        "the start in progress was waited for, not called off"
    );
    let t = s.slow.await.unwrap();
    assert!(!t.server.fleet().shared().coordination().leader);
    let lease = s.db.lease().await.unwrap();
    assert_eq!(
        (lease.holder.as_deref(), lease.epoch),
        (Some("intruder"), 2)
    );
    s.lock.rollback().await.unwrap();
    t.server.shutdown().await.unwrap();
    s.locker.close().await;
    s.db.close().await;
    s.schema.drop().await;
}

/// A replica `slow` on a fresh PostgreSQL schema whose coordinator's start is held up: the
/// `rollouts` table is locked in a transaction of `locker` (roll `lock` back to let the load
/// go on), so its `TestServer::start` has not returned.
struct SlowStart {
    schema: PgSchema,
    db: Db,
    locker: sqlx::postgres::PgPool,
    lock: sqlx::Transaction<'static, sqlx::Postgres>,
    slow: tokio::task::JoinHandle<TestServer>,
}

/// Starts [`SlowStart`] with topics under `ota-test/{topics}-{pid}`.
async fn slow_start(topics: &str) -> SlowStart {
    let mqtt_url = std::env::var("OTA_TEST_MQTT_URL").expect("set OTA_TEST_MQTT_URL");
    let schema = PgSchema::create().await;
    // Migrates the schema, so the table exists to be locked.
    let db = Db::connect(&schema.url, 2).await.unwrap();
    let locker = sqlx::postgres::PgPool::connect(&schema.url).await.unwrap();
    let mut lock = locker.begin().await.unwrap();
    sqlx::query("LOCK TABLE rollouts IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let slow = tokio::spawn(TestServer::start_opts(Options {
        database_url: Some(schema.url.clone()),
        mqtt_url: Some(mqtt_url),
        topic_prefix: Some(format!("ota-test/{topics}-{}", std::process::id())),
        ha: Some(replica("slow")),
        ..Options::default()
    }));
    SlowStart {
        schema,
        db,
        locker,
        lock,
        slow,
    }
}

/// Polls `probe` every 100 ms for up to 30 s; whether it ever answered true.
async fn patiently<F: Future<Output = bool>>(mut probe: impl FnMut() -> F) -> bool {
    for _ in 0..300 {
        if probe().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Issue 15: a standby's `/metrics` reports the fleet-wide execution gauges from the stored
/// rollouts, the figures the leader reported from its coordinator's memory. One running
/// rollout (a hung device, a failed one, a succeeded one); then another replica takes the
/// lease, so this one's coordinator is fenced and stops: it is a standby.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue15_a_standby_reports_the_execution_gauges_from_the_database() {
    use crate::fleet::{Backend, World, count, metrics, wait_for};
    use crate::sim::Behavior;
    use ota_core::wire::FailurePhase;
    let w = World::start(Backend::Embedded, Options::default()).await;
    w.add(w.sim_devices(3, |i| match i {
        0 => Behavior::Silent,
        1 => Behavior::Fail(FailurePhase::Install),
        _ => Behavior::Succeed,
    }))
    .await;
    let (status, body) = w
        .create(TOKEN, json!({ "max_failure": 60, "success_min": 10 }))
        .await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{body}");
    let id = body["rollout"]["id"].as_i64().unwrap();
    wait_for("two finished", || async {
        count(&w.rollout(id).await, "executed") == 2
    })
    .await;
    let executions = |m: &std::collections::BTreeMap<String, f64>| {
        m.iter()
            .filter(|(k, _)| k.starts_with("ota_executions"))
            .map(|(k, v)| (k.clone(), *v))
            .collect::<Vec<_>>()
    };
    wait_for("metrics updated", || async {
        metrics(&w)
            .await
            .get("ota_executions{state=\"succeeded\"}")
            .copied()
            == Some(1.0)
    })
    .await;
    let on_leader = executions(&metrics(&w).await);
    assert!(
        on_leader.contains(&("ota_executions{state=\"notified\"}".to_string(), 1.0)),
        "{on_leader:?}"
    );

    let intruder = Db::connect(&w.t.database_url(), 1).await.unwrap();
    assert!(matches!(
        intruder
            .acquire_lease("intruder", "http://127.0.0.1:9", TTL_MS, true)
            .await
            .unwrap(),
        AcquireOutcome::Acquired { epoch: 2 }
    ));
    // The coordinator's next batch is refused: it stops.
    let refused =
        w.t.post_as(TOKEN, "/api/v1/flags/x/set", &json!({ "on": true }))
            .send()
            .await
            .unwrap();
    assert_eq!(refused.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    until_role(&w.t, false).await;
    let on_standby = metrics(&w).await;
    assert_eq!(on_standby["ota_coordinator_leader"], 0.0);
    assert_eq!(executions(&on_standby), on_leader);
    assert_eq!(w.rollout(id).await["status"], "running");
    intruder.close().await;
    w.finish().await;
}

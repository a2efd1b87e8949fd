//! MQTT coordination and rollouts, end to end: the server (embedded broker on port 0, or an
//! external one) with simulated devices speaking the real protocol.
//!
//! Every scenario runs three ways: embedded broker + SQLite (always), Mosquitto
//! (`OTA_TEST_MQTT_URL`) and PostgreSQL (`OTA_TEST_DATABASE_URL`), the last two `#[ignore]`d.
//! Device ids carry a per-run prefix, so runs sharing an external broker never mix, and the
//! simulator clears its retained messages at the end.

use std::sync::Arc;
use std::time::Duration;

use ota_core::wire::{DeviceId, FailurePhase, TopicKind, Topics};
use ota_server::fleet::RolloutView;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::sim::{AgentLink, Behavior, Sim, SimDevice, device, running_of};
use crate::util::{
    BOB_TOKEN, NOW, Options, PgSchema, TOKEN, TestServer, artifact, error_of, release,
};

/// Where a scenario runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Embedded,
    Mosquitto,
    Postgres,
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::Backend;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded_sqlite() {
                super::$name(Backend::Embedded).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[ignore = "needs Mosquitto: set OTA_TEST_MQTT_URL"]
            async fn mosquitto() {
                super::$name(Backend::Mosquitto).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[ignore = "needs PostgreSQL: set OTA_TEST_DATABASE_URL"]
            async fn postgres() {
                super::$name(Backend::Postgres).await;
            }
        }
    )*};
}
pub(crate) use suite;

suite!(
    registry_and_heartbeats,
    heartbeat_brings_a_device_held_offline_back,
    full_rollout_in_four_waves,
    abort_past_max_failure_rolls_back,
    inactivity_timeout,
    rate_limit,
    deferral,
    forced_reinstall_needs_second_operator,
    restart_mid_rollout,
    bad_inputs,
    drift,
    webhooks,
    regression_during_bake_holds_the_wave,
    the_rollout_view_reads_back_typed_with_times_in_unix_seconds,
    offline_during_bake_holds_the_wave,
    unhealthy_after_commit_holds_the_wave,
    restart_while_notifying,
    webhook_retry,
    execution_metrics,
    issue18_transfers_count_once_per_device,
    issue17_a_rebooting_device_counts_only_once_back_on_the_new_release,
);

/// A test fleet: server, simulator, releases 1.0.0 (running) and 2.0.0 (new), both published.
pub(crate) struct World {
    pub(crate) t: TestServer,
    pub(crate) sim: Sim,
    pub(crate) prefix: String,
    /// The world's MQTT topics (a prefix of its own).
    pub(crate) topics: Topics,
    pub(crate) old: Vec<u8>,
    pub(crate) new: Vec<u8>,
    pg: Option<PgSchema>,
}

fn unique_prefix() -> String {
    // The wall clock only makes topics unique across runs on a shared broker (retained
    // messages outlive a run); no decision depends on it.
    #[allow(clippy::disallowed_methods)]
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("t{}x{:x}-", std::process::id(), nanos % 0xffff_ffff_ffff)
}

impl World {
    pub(crate) async fn start(backend: Backend, mut opts: Options) -> World {
        let pg = match backend {
            Backend::Postgres => Some(PgSchema::create().await),
            _ => None,
        };
        if let Some(pg) = &pg {
            opts.database_url = Some(pg.url.clone());
        }
        if backend == Backend::Mosquitto {
            opts.mqtt_url = Some(
                std::env::var("OTA_TEST_MQTT_URL")
                    .expect("set OTA_TEST_MQTT_URL=mqtt://host:port to run the Mosquitto tests"),
            );
        }
        let prefix = unique_prefix();
        // A topic namespace of the world's own (issue 15): servers of other tests on a shared
        // broker neither see its devices nor receive their messages.
        let namespace = opts
            .topic_prefix
            .get_or_insert_with(|| format!("ota-test/{}", prefix.trim_end_matches('-')))
            .clone();
        let topics = Topics::new(&namespace).unwrap();
        let t = TestServer::start_opts(opts).await;
        let (host, port) = t.mqtt();
        let sim = Sim::connect(&host, port, &format!("{prefix}sim"), &topics).await;
        let old_art = artifact(3000, 1);
        let new_art = artifact(4000, 2);
        let old = release("1.0.0", &old_art, &[1]);
        let new = release("2.0.0", &new_art, &[1]);
        assert_eq!(t.publish(old.clone(), old_art).await.status(), 201);
        assert_eq!(t.publish(new.clone(), new_art).await.status(), 201);
        World {
            t,
            sim,
            prefix,
            topics,
            old,
            new,
            pg,
        }
    }

    pub(crate) fn id(&self, n: usize) -> String {
        format!("{}d{n:03}", self.prefix)
    }

    pub(crate) fn filter(&self) -> String {
        format!("id={}*", self.prefix)
    }

    pub(crate) fn new_digest(&self) -> String {
        running_of(&self.new).digest.to_string()
    }

    pub(crate) fn old_digest(&self) -> String {
        running_of(&self.old).digest.to_string()
    }

    /// `n` devices running 1.0.0 with `behavior(i)`.
    pub(crate) fn sim_devices(
        &self,
        n: usize,
        behavior: impl Fn(usize) -> Behavior,
    ) -> Vec<SimDevice> {
        (0..n)
            .map(|i| {
                device(
                    &self.id(i),
                    "gw-a",
                    Some(running_of(&self.old)),
                    behavior(i),
                )
            })
            .collect()
    }

    /// Adds devices and waits until the server registered them all, online.
    pub(crate) async fn add(&self, devices: Vec<SimDevice>) {
        let n = devices.len();
        self.sim.add_devices(devices).await;
        let filter = format!("{} and online", self.filter());
        wait_for("devices registered and online", || async {
            self.devices(&filter).await.len() >= n
        })
        .await;
    }

    pub(crate) async fn devices(&self, filter: &str) -> Vec<Value> {
        let r = self
            .t
            .get("/api/v1/devices")
            .query(&[("filter", filter)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await.unwrap();
        body["devices"].as_array().unwrap().clone()
    }

    /// Adds `n` devices already running 2.0.0 and creates, as `token`, a forced reinstall of
    /// it (which awaits approval).
    pub(crate) async fn forced_reinstall(&self, token: &str, n: usize) -> (StatusCode, Value) {
        let mut devices = self.sim_devices(n, |_| Behavior::Succeed);
        for d in &mut devices {
            d.running = Some(running_of(&self.new));
            d.known_good = Some(running_of(&self.new));
        }
        self.add(devices).await;
        self.create(token, json!({ "force_reinstall": true })).await
    }

    /// Creates a rollout of 2.0.0 over this world's devices with `spec` merged in.
    pub(crate) async fn create(&self, token: &str, spec: Value) -> (StatusCode, Value) {
        let mut body = json!({
            "release": self.new_digest(),
            "filter": self.filter(),
            "waves": [100],
            "bake_secs": 0,
            "rate_per_minute": 10000,
        });
        for (k, v) in spec.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = self
            .t
            .post_as(token, "/api/v1/rollouts", &body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap())
    }

    pub(crate) async fn rollout(&self, id: i64) -> Value {
        let r = self
            .t
            .get(&format!("/api/v1/rollouts/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await.unwrap();
        body["rollout"].clone()
    }

    pub(crate) async fn wait_status(&self, id: i64, status: &str) -> Value {
        wait_for(&format!("rollout {id} {status}"), || async {
            self.rollout(id).await["status"] == status
        })
        .await;
        self.rollout(id).await
    }

    pub(crate) async fn op(&self, token: &str, id: i64, op: &str) -> (StatusCode, Value) {
        let r = self
            .t
            .post_as(token, &format!("/api/v1/rollouts/{id}/{op}"), &json!({}))
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap())
    }

    pub(crate) async fn events(&self, query: &str) -> Vec<Value> {
        let r = self
            .t
            .get(&format!("/api/v1/events?limit=1000&{query}"))
            .send()
            .await
            .unwrap();
        let body: Value = r.json().await.unwrap();
        body["events"].as_array().unwrap().clone()
    }

    pub(crate) async fn finish(self) {
        self.sim.clear_retained().await;
        self.t.server.shutdown().await.unwrap();
        if let Some(pg) = self.pg {
            pg.drop().await;
        }
    }
}

/// Polls `check` until it holds (panics after two minutes: a hung test, not a timing check).
pub(crate) async fn wait_for<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..2400 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

pub(crate) fn count(v: &Value, state: &str) -> u64 {
    v["totals"][state].as_u64().unwrap()
}

async fn registry_and_heartbeats(backend: Backend) {
    let w = World::start(backend, Options::default()).await;
    let mut d = device(
        &w.id(0),
        "gw-a",
        Some(running_of(&w.old)),
        Behavior::Succeed,
    );
    d.labels.insert("region".into(), "eu".into());
    w.add(vec![d]).await;

    let list = w.devices(&w.filter()).await;
    assert_eq!(list.len(), 1);
    let dev = &list[0];
    assert_eq!(dev["hardware_class"], "gw-a");
    assert_eq!(dev["running_version"], "1.0.0");
    assert_eq!(dev["running_digest"], w.old_digest());
    assert_eq!(dev["known_good_digest"], w.old_digest());
    assert_eq!(dev["last_committed_digest"], w.old_digest());
    assert_eq!(dev["labels"]["region"], "eu");
    assert_eq!(dev["online"], true);
    assert_eq!(dev["drifted"], false);
    assert_eq!(dev["inventory"]["os"], "simOS");
    assert_eq!(dev["power"]["mains_online"], true);

    // The filter language sees reported labels.
    assert_eq!(
        w.devices(&format!("{} and label:region=eu", w.filter()))
            .await
            .len(),
        1
    );

    // Server-side labels win over reported ones in filters.
    let r =
        w.t.client
            .put(w.t.url(&format!("/api/v1/devices/{}/labels", w.id(0))))
            .bearer_auth(TOKEN)
            .json(&json!({ "labels": { "region": "us", "ring": "canary" } }))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        w.devices(&format!(
            "{} and label:region=us and label:ring=canary",
            w.filter()
        ))
        .await
        .len(),
        1
    );
    let r =
        w.t.client
            .put(w.t.url("/api/v1/devices/nobody-here/labels"))
            .bearer_auth(TOKEN)
            .json(&json!({ "labels": {} }))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // One event for the device that exists (committed with its labels), none for the other.
    let labelled = w.events("kind=device-labels-set").await;
    let labelled: Vec<_> = labelled
        .iter()
        .filter(|e| e["device_id"].as_str().unwrap_or("").starts_with(&w.prefix))
        .collect();
    assert_eq!(labelled.len(), 1, "{labelled:?}");
    assert_eq!(labelled[0]["device_id"], w.id(0).as_str());
    assert_eq!(labelled[0]["details"]["labels"]["ring"], "canary");
    assert!(w.events("device=nobody-here").await.is_empty());
    assert!(
        w.t.server
            .db()
            .get_device("nobody-here")
            .await
            .unwrap()
            .is_none()
    );

    // Heartbeats are echoed.
    w.sim.heartbeat(&w.id(0), 42).await;
    w.sim.heartbeat(&w.id(0), 43).await;
    wait_for("heartbeat acks", || async {
        w.sim.device(&w.id(0)).unwrap().acks.len() == 2
    })
    .await;
    assert_eq!(w.sim.device(&w.id(0)).unwrap().acks, [42, 43]);

    // The last will (offline status) is seen.
    w.sim.set_online(&w.id(0), false).await;
    let filter = format!("{} and not online", w.filter());
    wait_for("device offline", || async {
        w.devices(&filter).await.len() == 1
    })
    .await;
    let registered = w
        .events(&format!("device={}&kind=device-registered", w.id(0)))
        .await;
    assert_eq!(registered.len(), 1);
    w.finish().await;
}

async fn full_rollout_in_four_waves(backend: Backend) {
    let w = World::start(backend, Options::default()).await;
    let n = 40;
    let mut devices = w.sim_devices(n, |_| Behavior::Succeed);
    // A few already run 2.0.0: redeploys, they report skipped-identical.
    for d in devices.iter_mut().take(3) {
        d.running = Some(running_of(&w.new));
    }
    // Some really download the artifact over HTTP (Range, digest checked).
    for d in devices.iter_mut().skip(3).take(3) {
        d.download = true;
    }
    w.add(devices).await;

    // Dry run first: the plan, deploys vs redeploys, nobody notified.
    let (status, body) = w
        .create(TOKEN, json!({ "waves": [1, 5, 25, 100], "dry_run": true }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let dry = &body["rollout"];
    assert_eq!(dry["status"], "dry-run");
    assert_eq!(dry["targets"], n);
    assert_eq!(dry["deploys"], n - 3);
    assert_eq!(dry["redeploys"], 3);
    assert_eq!(dry["waves"].as_array().unwrap().len(), 4);
    assert_eq!(dry["waves"][3]["cumulative_members"], n);
    assert_eq!(dry["conflicts"], json!([]));

    let (status, body) = w.create(TOKEN, json!({ "waves": [1, 5, 25, 100] })).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["rollout"]["deploys"], n - 3);
    assert_eq!(body["rollout"]["redeploys"], 3);
    let id = body["rollout"]["id"].as_i64().unwrap();
    let done = w.wait_status(id, "completed").await;
    assert_eq!(count(&done, "succeeded"), (n - 3) as u64);
    assert_eq!(count(&done, "skipped-identical"), 3);
    assert_eq!(count(&done, "failures"), 0);

    for i in 0..n {
        let d = w.sim.device(&w.id(i)).unwrap();
        assert_eq!(d.seen.len(), 1, "{} got one desired state", d.id);
        assert_eq!(d.running.unwrap().digest.to_string(), w.new_digest());
        assert_eq!(
            d.seen[0].rollout_id.as_deref(),
            Some(id.to_string().as_str())
        );
        assert!(d.seen[0].urls[0].ends_with(&format!("/artifacts/{}", w.new_digest())));
    }
    let started = w.events(&format!("rollout={id}&kind=wave-started")).await;
    assert_eq!(started.len(), 4);
    let advanced = w.events(&format!("rollout={id}&kind=wave-advanced")).await;
    assert_eq!(advanced.len(), 3);
    let changes = w
        .events(&format!("rollout={id}&kind=device-state-changed"))
        .await;
    assert!(changes.iter().any(|e| e["details"]["to"] == "succeeded"));
    // A device's succeeded event and its reported state are two messages: the registry may
    // record the running release a batch after the rollout completed.
    wait_for(
        "every device registered on the release, no drift",
        || async {
            w.devices(&w.filter())
                .await
                .iter()
                .all(|d| d["running_digest"] == w.new_digest() && d["drifted"] == false)
        },
    )
    .await;
    // The completed rollout frees its devices: a new one may take them.
    let (status, _) = w.create(TOKEN, json!({ "dry_run": true })).await;
    assert_eq!(status, StatusCode::CREATED);
    w.finish().await;
}

async fn abort_past_max_failure_rolls_back(backend: Backend) {
    let w = World::start(backend, Options::default()).await;
    // 12 devices: 4 fail to install, 2 fail to download, 6 succeed.
    let devices = w.sim_devices(12, |i| match i % 6 {
        0 | 1 => Behavior::Fail(FailurePhase::Install),
        2 => Behavior::Fail(FailurePhase::Download),
        _ => Behavior::Succeed,
    });
    w.add(devices).await;
    let (status, body) = w
        .create(
            TOKEN,
            json!({ "max_failure": 5, "min_executed": 12, "success_min": 95 }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["rollout"]["id"].as_i64().unwrap();
    let aborted = w.wait_status(id, "aborted").await;
    assert_eq!(aborted["abort_reason"]["kind"], "failure-threshold");
    assert_eq!(aborted["totals"]["failed"]["install"], 4);
    assert_eq!(aborted["totals"]["failed"]["download"], 2);
    // Everyone who wrote the release (succeeded, failed in install) goes back to 1.0.0;
    // the download failures are cancelled back to what they run (1.0.0 too).
    wait_for("rollback desired states", || async {
        (0..12).all(|i| w.sim.device(&w.id(i)).unwrap().seen.len() == 2)
    })
    .await;
    for i in 0..12 {
        let d = w.sim.device(&w.id(i)).unwrap();
        assert_eq!(d.seen[1].digest.to_string(), w.old_digest(), "{}", d.id);
        assert!(d.seen[1].generation > d.seen[0].generation);
    }
    wait_for("devices back on 1.0.0", || async {
        (0..12).all(|i| {
            w.sim
                .device(&w.id(i))
                .unwrap()
                .running
                .unwrap()
                .digest
                .to_string()
                == w.old_digest()
        })
    })
    .await;
    let rollbacks = w
        .events(&format!("rollout={id}&kind=device-rollback"))
        .await;
    let cancels = w.events(&format!("rollout={id}&kind=device-cancel")).await;
    assert_eq!(rollbacks.len(), 10);
    assert_eq!(cancels.len(), 2);
    // The aborted rollout follows them back (docs/rollouts.md, "After the abort").
    wait_for("every device sent back is back", || async {
        w.rollout(id).await["recall"]
            == json!({ "sent": 12, "pending": 0, "back": 12, "failed": 0, "superseded": 0 })
    })
    .await;
    let abort = w
        .events(&format!("rollout={id}&kind=rollout-aborted"))
        .await;
    assert_eq!(abort.len(), 1);
    assert_eq!(abort[0]["details"]["reason"]["kind"], "failure-threshold");
    w.finish().await;
}

async fn inactivity_timeout(backend: Backend) {
    let w = World::start(
        backend,
        Options {
            manual_clock: true,
            ..Options::default()
        },
    )
    .await;
    let devices = w.sim_devices(4, |i| {
        if i == 0 {
            Behavior::Silent
        } else {
            Behavior::Succeed
        }
    });
    w.add(devices).await;
    let (status, body) = w
        .create(
            TOKEN,
            json!({ "inactivity_timeout_secs": 600, "max_failure": 50, "success_min": 50 }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["rollout"]["id"].as_i64().unwrap();
    wait_for("three succeeded", || async {
        count(&w.rollout(id).await, "succeeded") == 3
    })
    .await;
    let r = w.rollout(id).await;
    assert_eq!(r["status"], "running");
    assert_eq!(count(&r, "notified"), 1);
    w.t.advance(Duration::from_secs(599)).await;
    assert_eq!(count(&w.rollout(id).await, "timed-out"), 0);
    w.t.advance(Duration::from_secs(2)).await;
    let r = w.wait_status(id, "completed").await;
    assert_eq!(count(&r, "timed-out"), 1);
    let changes = w
        .events(&format!(
            "rollout={id}&kind=device-state-changed&device={}",
            w.id(0)
        ))
        .await;
    assert!(changes.iter().any(|e| e["details"]["to"] == "timed-out"));
    w.finish().await;
}

async fn rate_limit(backend: Backend) {
    let w = World::start(
        backend,
        Options {
            manual_clock: true,
            ..Options::default()
        },
    )
    .await;
    w.add(w.sim_devices(5, |_| Behavior::Succeed)).await;
    let (status, body) = w.create(TOKEN, json!({ "rate_per_minute": 2 })).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["rollout"]["id"].as_i64().unwrap();
    let notified = || async {
        (0..5)
            .filter(|i| !w.sim.device(&w.id(*i)).unwrap().seen.is_empty())
            .count()
    };
    wait_for("two succeeded", || async {
        count(&w.rollout(id).await, "succeeded") == 2
    })
    .await;
    assert_eq!(notified().await, 2);
    assert_eq!(count(&w.rollout(id).await, "queued"), 3);
    w.t.advance(Duration::from_secs(59)).await;
    assert_eq!(count(&w.rollout(id).await, "queued"), 3);
    w.t.advance(Duration::from_secs(1)).await;
    wait_for("four succeeded", || async {
        count(&w.rollout(id).await, "succeeded") == 4
    })
    .await;
    assert_eq!(notified().await, 4);
    w.t.advance(Duration::from_secs(60)).await;
    w.wait_status(id, "completed").await;
    assert_eq!(notified().await, 5);
    w.finish().await;
}

async fn deferral(backend: Backend) {
    let w = World::start(
        backend,
        Options {
            manual_clock: true,
            ..Options::default()
        },
    )
    .await;
    let devices = w.sim_devices(4, |i| {
        if i == 0 {
            Behavior::Defer
        } else {
            Behavior::Succeed
        }
    });
    w.add(devices).await;
    let (status, body) = w
        .create(
            TOKEN,
            json!({ "max_deferral_secs": 3600, "waves": [50, 100] }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["rollout"]["id"].as_i64().unwrap();
    wait_for("deferred device", || async {
        count(&w.rollout(id).await, "deferred-power") == 1
    })
    .await;
    // The deferred device is no failure, but blocks its wave until max-deferral.
    let r = w.rollout(id).await;
    assert_eq!(count(&r, "failures"), 0);
    let deferred_wave = (0..2)
        .find(|i| r["waves"][i]["counts"]["deferred-power"] == 1)
        .unwrap();
    if deferred_wave == 0 {
        assert_eq!(r["current_wave"], 0);
    }
    w.t.advance(Duration::from_secs(3601)).await;
    let r = w.wait_status(id, "completed").await;
    assert_eq!(count(&r, "deferred-power"), 1);
    assert_eq!(count(&r, "succeeded"), 3);
    w.finish().await;
}

async fn forced_reinstall_needs_second_operator(backend: Backend) {
    let w = World::start(backend, Options::default()).await;
    let (status, body) = w.forced_reinstall(TOKEN, 3).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let r = &body["rollout"];
    assert_eq!(r["status"], "awaiting-approval");
    assert_eq!(r["redeploys"], 3);
    assert_eq!(r["deploys"], 0);
    let id = r["id"].as_i64().unwrap();
    // Nobody is notified before the approval.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(w.sim.device(&w.id(0)).unwrap().seen.is_empty());

    let (status, body) = w.op(TOKEN, id, "approve").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["cause"], "self-approval");
    assert_eq!(w.rollout(id).await["status"], "awaiting-approval");

    let (status, body) = w.op(BOB_TOKEN, id, "approve").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["rollout"]["approved_by"], "bob");
    let done = w.wait_status(id, "completed").await;
    assert_eq!(count(&done, "succeeded"), 3);
    for i in 0..3 {
        assert!(w.sim.device(&w.id(i)).unwrap().seen[0].force);
    }
    let approved = w
        .events(&format!("rollout={id}&kind=rollout-approved"))
        .await;
    assert_eq!(approved.len(), 1);
    assert_eq!(approved[0]["actor"], "bob");
    w.finish().await;
}

async fn restart_mid_rollout(backend: Backend) {
    let mut w = World::start(
        backend,
        Options {
            manual_clock: true,
            ..Options::default()
        },
    )
    .await;
    let n = 30;
    w.add(w.sim_devices(n, |_| Behavior::Succeed)).await;
    let (status, body) = w
        .create(TOKEN, json!({ "waves": [10, 50, 100], "bake_secs": 600 }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["rollout"]["id"].as_i64().unwrap();
    wait_for("wave 0 baking", || async {
        w.rollout(id).await["phase"] == "baking"
    })
    .await;
    let before = w.rollout(id).await;
    assert_eq!(before["current_wave"], 0);

    w.t = w.t.restart().await;
    let after = w.rollout(id).await;
    assert_eq!(after["status"], "running");
    assert_eq!(after["current_wave"], 0);
    assert_eq!(after["totals"], before["totals"]);

    w.t.advance(Duration::from_secs(601)).await;
    wait_for("wave 1 baking", || async {
        let r = w.rollout(id).await;
        r["current_wave"] == 1 && r["phase"] == "baking"
    })
    .await;
    // Restart again in the middle of wave 1's bake.
    w.t = w.t.restart().await;
    w.t.advance(Duration::from_secs(601)).await;
    wait_for("wave 2 baking", || async {
        let r = w.rollout(id).await;
        r["current_wave"] == 2 && r["phase"] == "baking"
    })
    .await;
    w.t.advance(Duration::from_secs(601)).await;
    let done = w.wait_status(id, "completed").await;
    assert_eq!(count(&done, "succeeded"), n as u64);

    // Nothing lost, nothing duplicated: one desired state per device, one success each.
    for i in 0..n {
        let d = w.sim.device(&w.id(i)).unwrap();
        assert_eq!(d.seen.len(), 1, "{}", d.id);
    }
    let events = w.events(&format!("rollout={id}")).await;
    let of = |kind: &str| events.iter().filter(|e| e["kind"] == kind).count();
    assert_eq!(of("wave-started"), 3);
    assert_eq!(of("wave-advanced"), 2);
    assert_eq!(of("rollout-completed"), 1);
    let succeeded = events
        .iter()
        .filter(|e| e["kind"] == "device-state-changed" && e["details"]["to"] == "succeeded")
        .count();
    assert_eq!(succeeded, n);
    w.finish().await;
}

async fn bad_inputs(backend: Backend) {
    let w = World::start(backend, Options::default()).await;
    w.add(w.sim_devices(3, |_| Behavior::Succeed)).await;
    let d0 = DeviceId::new(&w.id(0)).unwrap();

    // Malformed payloads on every device topic, an event from a device nobody knows, a
    // reported state naming another device: recorded, and the server carries on.
    for kind in [
        TopicKind::Reported,
        TopicKind::Events,
        TopicKind::Status,
        TopicKind::Heartbeat,
    ] {
        w.sim
            .publish_raw(
                &w.topics.device(&d0, kind),
                b"\xff\x00garbage".to_vec(),
                false,
            )
            .await;
    }
    let stranger = DeviceId::new(&format!("{}stranger", w.prefix)).unwrap();
    let event = ota_core::wire::Event {
        v: 1,
        device_id: stranger.as_str().into(),
        generation: 1,
        rollout_id: Some("1".into()),
        at: 1,
        kind: ota_core::wire::ExecutionState::Succeeded,
        digest: None,
        transfer: None,
    };
    use ota_core::wire::WireMessage;
    w.sim
        .publish_raw(
            &w.topics.device(&stranger, TopicKind::Events),
            event.to_cbor(),
            false,
        )
        .await;
    let filter = format!("kind=mqtt-rejected&device={}", w.id(0));
    wait_for("malformed payloads recorded", || async {
        w.events(&filter).await.len() >= 4
    })
    .await;
    let filter = format!("kind=mqtt-rejected&device={stranger}");
    wait_for("unknown device recorded", || async {
        !w.events(&filter).await.is_empty()
    })
    .await;
    assert!(
        w.devices(&format!("id={stranger}")).await.is_empty(),
        "an event does not register a device"
    );

    // Bad filter, unknown release, bad spec.
    let (status, body) = w.create(TOKEN, json!({ "filter": "hw=gw-a and (" })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["cause"], "bad-filter");
    assert!(body["error"].as_str().unwrap().contains("column"));
    let (status, body) = w.create(TOKEN, json!({ "release": "9.9.9" })).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = w.create(TOKEN, json!({ "waves": [50, 40, 100] })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["cause"], "bad-spec");
    let (status, body) = w.create(TOKEN, json!({ "filter": "id=nobody-*" })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["cause"], "no-targets");
    let (status, body) = w.create(TOKEN, json!({ "colour": "blue" })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // A second rollout over a device in a running rollout: 409, nothing written.
    w.sim.set_behavior(&w.id(0), Behavior::Silent);
    let (status, body) = w.create(TOKEN, json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let first = body["rollout"]["id"].as_i64().unwrap();
    let before = w.events("kind=rollout-created").await.len();
    let (status, body) = w
        .create(TOKEN, json!({ "filter": format!("id={}", w.id(0)) }))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["cause"], "rollout-conflict");
    assert!(body["error"].as_str().unwrap().contains(&w.id(0)));
    assert_eq!(w.events("kind=rollout-created").await.len(), before);
    // A dry run over the same device is not refused: the plan, with the conflict listed.
    let (status, body) = w
        .create(
            TOKEN,
            json!({ "filter": format!("id={}", w.id(0)), "dry_run": true }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let dry = &body["rollout"];
    assert_eq!(dry["status"], "dry-run");
    assert_eq!(dry["targets"], 1);
    assert_eq!(
        dry["conflicts"],
        json!([{ "device": w.id(0), "rollout": first }])
    );
    let created = w
        .events(&format!("rollout={}&kind=rollout-created", dry["id"]))
        .await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["details"]["conflicts"], 1);
    assert_eq!(created[0]["details"]["dry_run"], true);

    // Operator calls on a rollout in the wrong state; unknown rollouts.
    let (status, body) = w.op(TOKEN, first, "resume").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "resume of a running rollout is a no-op: {body}"
    );
    let (status, body) = w.op(TOKEN, first, "approve").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["cause"], "invalid-state");
    let (status, _) = w.op(TOKEN, 999_999, "pause").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = w.op(TOKEN, first, "pause").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["rollout"]["status"], "paused");
    let (status, body) = w.op(TOKEN, first, "abort").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["rollout"]["status"], "aborted");
    assert_eq!(body["rollout"]["abort_reason"]["kind"], "operator");

    // No token, a wrong token: 401 on every rollout endpoint.
    for path in ["/api/v1/rollouts", &format!("/api/v1/rollouts/{first}")] {
        let r = w.t.client.get(w.t.url(path)).send().await.unwrap();
        assert_eq!(
            error_of(r).await,
            (StatusCode::UNAUTHORIZED, "unauthorized".into())
        );
    }
    let r =
        w.t.client
            .post(w.t.url(&format!("/api/v1/rollouts/{first}/abort")))
            .bearer_auth("not-a-token-at-all-no")
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Still serving, still coordinating.
    w.sim.heartbeat(&w.id(1), 7).await;
    wait_for("heartbeat ack after bad input", || async {
        w.sim.device(&w.id(1)).unwrap().acks == [7]
    })
    .await;
    let metrics = w.t.client.get(w.t.url("/metrics")).send().await.unwrap();
    let text = metrics.text().await.unwrap();
    assert!(text.contains("ota_mqtt_messages_rejected_total"));
    assert!(text.contains("ota_rollouts{state=\"aborted\"} 1"));
    w.finish().await;
}

async fn drift(backend: Backend) {
    let w = World::start(backend, Options::default()).await;
    w.add(w.sim_devices(2, |_| Behavior::Succeed)).await;
    // Someone installs 2.0.0 by hand on device 1.
    w.sim.install_by_hand(&w.id(1), running_of(&w.new)).await;
    let filter = format!("{} and drifted", w.filter());
    wait_for("drift detected", || async {
        w.devices(&filter).await.len() == 1
    })
    .await;
    assert_eq!(w.devices(&filter).await[0]["id"], w.id(1));
    let metrics = w.t.client.get(w.t.url("/metrics")).send().await.unwrap();
    assert!(
        metrics
            .text()
            .await
            .unwrap()
            .contains("ota_devices_drifted 1")
    );
    assert_eq!(
        w.events(&format!("kind=device-drifted&device={}", w.id(1)))
            .await
            .len(),
        1
    );
    // Putting the committed release back clears it.
    w.sim.install_by_hand(&w.id(1), running_of(&w.old)).await;
    wait_for("drift cleared", || async {
        w.devices(&filter).await.is_empty()
    })
    .await;
    w.finish().await;
}

async fn webhooks(backend: Backend) {
    use std::sync::{Arc, Mutex};
    // A receiver on port 0 collecting POSTed events, and a dead URL that always fails.
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(v);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/nobody", dead.local_addr().unwrap());
    drop(dead);
    let w = World::start(
        backend,
        Options {
            webhooks: vec![dead_url, format!("http://{addr}/hook")],
            ..Options::default()
        },
    )
    .await;
    w.add(w.sim_devices(3, |_| Behavior::Succeed)).await;
    let (status, body) = w.create(TOKEN, json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["rollout"]["id"].as_i64().unwrap();
    // The failing webhook does not hold the rollout up.
    w.wait_status(id, "completed").await;
    wait_for("release-published delivered", || async {
        got.lock()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "release-published")
    })
    .await;
    let first = got.lock().unwrap()[0].clone();
    assert!(first["id"].is_i64() && first["actor"].is_string() && first["at"].is_i64());
    w.finish().await;
}

/// Issue 4: 4 devices, waves 50 % and 100 %, a 10 min bake, on a hand-advanced clock: waits
/// until wave 0 bakes and returns the rollout id and wave 0's members (the notified ones).
pub(crate) async fn baking_wave0(w: &World) -> (i64, Vec<String>) {
    w.add(w.sim_devices(4, |_| Behavior::Succeed)).await;
    let (status, body) = w
        .create(
            TOKEN,
            json!({ "waves": [50, 100], "bake_secs": 600, "max_failure": 50 }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["rollout"]["id"].as_i64().unwrap();
    wait_for("wave 0 baking", || async {
        let r = w.rollout(id).await;
        r["current_wave"] == 0 && r["phase"] == "baking"
    })
    .await;
    let members: Vec<String> = (0..4)
        .map(|i| w.id(i))
        .filter(|d| !w.sim.device(d).unwrap().seen.is_empty())
        .collect();
    // The cohorts hash the random device prefix: wave 1 may have no member of its own.
    assert!(!members.is_empty(), "wave 0 is never empty");
    (id, members)
}

pub(crate) fn manual_clock() -> Options {
    Options {
        manual_clock: true,
        ..Options::default()
    }
}

/// Issue 13, one typed domain: the API's rollout JSON reads back as the server's own
/// `RolloutView` (and writes out the same), and its times (created, a wave's start, the end of
/// its bake) are unix seconds, on the hand-advanced clock that starts at `NOW`.
async fn the_rollout_view_reads_back_typed_with_times_in_unix_seconds(backend: Backend) {
    let w = World::start(backend, manual_clock()).await;
    let (id, _) = baking_wave0(&w).await;
    let r = w.rollout(id).await;
    let times = [
        &r["created_at"],
        &r["waves"][0]["started_at"],
        &r["bake_until"],
    ];
    assert_eq!(
        times,
        [&json!(NOW), &json!(NOW), &json!(NOW + 600)],
        "{r:#}"
    );
    let typed: RolloutView = serde_json::from_value(r.clone()).unwrap();
    assert_eq!(typed.id.get(), id);
    assert_eq!(typed.bake_until, Some(NOW + 600));
    assert_eq!(serde_json::to_value(&typed).unwrap(), r);
    w.finish().await;
}

/// Issue 4 gate, "the devices that succeeded are still healthy (not rolled back)": a device
/// that succeeded and then rolls back during the bake holds the wave (`wave-held`).
async fn regression_during_bake_holds_the_wave(backend: Backend) {
    let w = World::start(backend, manual_clock()).await;
    let (id, members) = baking_wave0(&w).await;
    w.sim.regress(&members[0]).await;
    wait_for("the regression recorded", || async {
        count(&w.rollout(id).await, "rolled-back") == 1
    })
    .await;
    w.t.advance(Duration::from_secs(601)).await;
    let r = w.rollout(id).await;
    assert_eq!(
        (r["current_wave"].clone(), r["phase"].clone()),
        (json!(0), json!("held"))
    );
    let held = w.events(&format!("rollout={id}&kind=wave-held")).await;
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0]["details"]["wave"], 0);
    let n = members.len() as u64;
    assert_eq!(held[0]["details"]["executed"], n);
    assert_eq!(held[0]["details"]["succeeded"], n - 1);
    // Wave 1 waits.
    for i in 0..4 {
        let d = w.id(i);
        if !members.contains(&d) {
            assert!(w.sim.device(&d).unwrap().seen.is_empty(), "{d} notified");
        }
    }
    w.finish().await;
}

/// Issue 17: agents keep probing after the commit; a succeeded device whose heartbeats say it
/// is unhealthy is no success for the gate: the wave holds until it says healthy again.
async fn unhealthy_after_commit_holds_the_wave(backend: Backend) {
    let w = World::start(backend, manual_clock()).await;
    let (id, members) = baking_wave0(&w).await;
    // A heartbeat without health (no probe) changes nothing.
    w.sim.heartbeat(&members[0], 1).await;
    w.sim
        .heartbeat_with_health(&members[0], 2, Some(false))
        .await;
    wait_for("the ill health seen", || async {
        w.rollout(id).await["waves"][0]["succeeded_unhealthy"] == 1
    })
    .await;
    w.t.advance(Duration::from_secs(601)).await;
    let r = w.rollout(id).await;
    assert_eq!(r["phase"], "held", "{r:#}");
    assert_eq!(count(&r, "succeeded"), members.len() as u64);
    let held = w.events(&format!("rollout={id}&kind=wave-held")).await;
    assert_eq!(held.len(), 1, "{held:?}");
    w.sim
        .heartbeat_with_health(&members[0], 3, Some(true))
        .await;
    wait_for("wave 1 baking or done", || async {
        let r = w.rollout(id).await;
        r["status"] == "completed" || (r["current_wave"] == 1 && r["phase"] == "baking")
    })
    .await;
    assert_eq!(w.rollout(id).await["waves"][0]["succeeded_unhealthy"], 0);
    w.finish().await;
}

/// Issue 4 gate, "still healthy (reporting)": a succeeded device that goes offline during the
/// bake holds the wave until it is back online.
async fn offline_during_bake_holds_the_wave(backend: Backend) {
    let w = World::start(backend, manual_clock()).await;
    let (id, members) = baking_wave0(&w).await;
    w.sim.set_online(&members[0], false).await;
    wait_for("the absence seen", || async {
        w.rollout(id).await["waves"][0]["succeeded_offline"] == 1
    })
    .await;
    w.t.advance(Duration::from_secs(601)).await;
    assert_eq!(w.rollout(id).await["phase"], "held");
    assert_eq!(
        w.events(&format!("rollout={id}&kind=wave-held"))
            .await
            .len(),
        1
    );
    w.sim.set_online(&members[0], true).await;
    // Wave 1 starts; with members of its own it bakes, without it completes at once.
    wait_for("wave 1 baking or done", || async {
        let r = w.rollout(id).await;
        r["status"] == "completed" || (r["current_wave"] == 1 && r["phase"] == "baking")
    })
    .await;
    w.t.advance(Duration::from_secs(601)).await;
    let done = w.wait_status(id, "completed").await;
    assert_eq!(count(&done, "succeeded"), 4);
    w.finish().await;
}

/// A retained `offline` will of an earlier connection can arrive after the current
/// connection's `online` (seen on a NATS cluster after a node loss: the device stayed
/// connected, the server held it offline and no rollout reached it). Its next heartbeat shows
/// it is there: online again in the registry and for the rollouts.
async fn heartbeat_brings_a_device_held_offline_back(backend: Backend) {
    let w = World::start(backend, Options::default()).await;
    w.add(w.sim_devices(2, |_| Behavior::Succeed)).await;
    let online = |i: usize| {
        let w = &w;
        async move { w.devices(&format!("id={}", w.id(i))).await[0]["online"].clone() }
    };
    w.sim.set_online(&w.id(0), false).await;
    wait_for("device 0 held offline", || async {
        online(0).await == false
    })
    .await;
    w.sim.heartbeat(&w.id(0), 1).await;
    wait_for("device 0 online again", || async {
        online(0).await == true
    })
    .await;
    let (status, body) = w.create(TOKEN, json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["rollout"]["id"].as_i64().unwrap();
    let done = w.wait_status(id, "completed").await;
    assert_eq!(count(&done, "succeeded"), 2);
    w.finish().await;
}

/// Issue 4, "restart the server mid-rollout: no lost or duplicated state", during the
/// notifying phase: at 2 notifications a minute most of the devices are still queued.
async fn restart_while_notifying(backend: Backend) {
    let mut w = World::start(backend, manual_clock()).await;
    let n = 6;
    w.add(w.sim_devices(n, |_| Behavior::Succeed)).await;
    let (status, body) = w.create(TOKEN, json!({ "rate_per_minute": 2 })).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["rollout"]["id"].as_i64().unwrap();
    wait_for("two succeeded", || async {
        count(&w.rollout(id).await, "succeeded") == 2
    })
    .await;
    let before = w.rollout(id).await;
    assert_eq!(count(&before, "queued"), 4);
    assert_eq!(before["phase"], "notifying");

    w.t = w.t.restart().await;
    let after = w.rollout(id).await;
    assert_eq!(after["totals"], before["totals"]);
    w.t.advance(Duration::from_secs(60)).await;
    wait_for("four succeeded", || async {
        count(&w.rollout(id).await, "succeeded") == 4
    })
    .await;
    // Again, with the rate window half used.
    w.t = w.t.restart().await;
    assert_eq!(count(&w.rollout(id).await, "queued"), 2);
    w.t.advance(Duration::from_secs(60)).await;
    let done = w.wait_status(id, "completed").await;
    assert_eq!(count(&done, "succeeded"), n as u64);

    for i in 0..n {
        let d = w.sim.device(&w.id(i)).unwrap();
        assert_eq!(d.seen.len(), 1, "{} got one desired state", d.id);
    }
    let changes = w
        .events(&format!("rollout={id}&kind=device-state-changed"))
        .await;
    let mut seen = std::collections::BTreeSet::new();
    for e in &changes {
        let key = (
            e["device_id"].to_string(),
            e["details"]["from"].to_string(),
            e["details"]["to"].to_string(),
        );
        assert!(seen.insert(key.clone()), "duplicated state change {key:?}");
    }
    // queued → notified → ... → succeeded, for every device.
    for i in 0..n {
        let to_succeeded = changes
            .iter()
            .filter(|e| e["device_id"] == w.id(i).as_str() && e["details"]["to"] == "succeeded")
            .count();
        assert_eq!(to_succeeded, 1, "{}", w.id(i));
    }
    w.finish().await;
}

/// Issue 4, "webhooks … with retries": a receiver that answers 500 to its first POST gets
/// that event on the retry (the first pause is 1 s), then the rest in order.
async fn webhook_retry(backend: Backend) {
    use std::sync::{Arc, Mutex};
    #[derive(Default)]
    struct Receiver {
        refused: Vec<Value>,
        got: Vec<Value>,
    }
    let log: Arc<Mutex<Receiver>> = Arc::default();
    let sink = log.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
            let sink = sink.clone();
            async move {
                let mut log = sink.lock().unwrap();
                if log.refused.is_empty() {
                    log.refused.push(v);
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    log.got.push(v);
                    StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let w = World::start(
        backend,
        Options {
            webhooks: vec![format!("http://{addr}/hook")],
            ..Options::default()
        },
    )
    .await;
    // World::start published two releases: two events (devices of other tests on a shared
    // broker may add device-registered events).
    wait_for("both release events delivered", || async {
        let log = log.lock().unwrap();
        log.got
            .iter()
            .filter(|e| e["kind"] == "release-published")
            .count()
            == 2
    })
    .await;
    {
        let log = log.lock().unwrap();
        assert_eq!(log.refused.len(), 1);
        let refused = &log.refused[0];
        assert!(
            refused["id"].is_i64() && refused["kind"].is_string(),
            "{refused}"
        );
        assert_eq!(
            log.got[0], *refused,
            "the refused event is delivered on the retry"
        );
        let ids: Vec<i64> = log.got.iter().map(|e| e["id"].as_i64().unwrap()).collect();
        assert!(
            ids.windows(2).all(|p| p[0] < p[1]),
            "in order, once: {ids:?}"
        );
    }
    w.finish().await;
}

/// The `/metrics` samples as `name{labels}` → value.
pub(crate) async fn metrics(w: &World) -> std::collections::BTreeMap<String, f64> {
    let r = w.t.client.get(w.t.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.text()
        .await
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// Issue 4, "Prometheus /metrics: … executions by state and by failure phase", while a
/// rollout runs: one device hung (notified), one failed in install, one succeeded.
async fn execution_metrics(backend: Backend) {
    let w = World::start(backend, Options::default()).await;
    let devices = w.sim_devices(3, |i| match i {
        0 => Behavior::Silent,
        1 => Behavior::Fail(FailurePhase::Install),
        _ => Behavior::Succeed,
    });
    w.add(devices).await;
    let (status, body) = w
        .create(TOKEN, json!({ "max_failure": 60, "success_min": 10 }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["rollout"]["id"].as_i64().unwrap();
    wait_for("two finished", || async {
        count(&w.rollout(id).await, "executed") == 2
    })
    .await;
    wait_for("metrics updated", || async {
        metrics(&w)
            .await
            .get("ota_executions{state=\"succeeded\"}")
            .copied()
            == Some(1.0)
    })
    .await;
    let m = metrics(&w).await;
    let get = |k: &str| {
        m.get(k)
            .copied()
            .unwrap_or_else(|| panic!("no {k} in {m:?}"))
    };
    assert_eq!(get("ota_executions{state=\"notified\"}"), 1.0);
    assert_eq!(get("ota_executions{state=\"failed\"}"), 1.0);
    assert_eq!(get("ota_executions{state=\"queued\"}"), 0.0);
    assert_eq!(get("ota_executions_failed{phase=\"install\"}"), 1.0);
    assert_eq!(get("ota_executions_failed{phase=\"download\"}"), 0.0);
    assert_eq!(w.rollout(id).await["status"], "running");
    w.finish().await;
}

/// Issue 18: the download cost devices report (`Transfer` on every outcome after the
/// download) ends up in the rollout's `downloads`, the device view's `last_transfer`, the
/// audit events and `/metrics`, each device once, however often it repeats the report.
async fn issue18_transfers_count_once_per_device(backend: Backend) {
    let w = World::start(backend, Options::default()).await;
    w.add(w.sim_devices(3, |_| Behavior::Succeed)).await;
    let before = metrics(&w).await;
    let (status, body) = w.create(TOKEN, json!({ "waves": [100] })).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["rollout"]["downloads"]["downloads"], 0, "{body}");
    let id = body["rollout"]["id"].as_i64().unwrap();
    w.wait_status(id, "completed").await;

    let full = 4000u64; // the new release's artifact (World::start)
    let each = crate::sim::sim_transfer(full);
    let expected = json!({
        "devices": 3, "downloads": 3, "fetched_bytes": 3 * each.fetched,
        "full_bytes": 3 * full, "saved_bytes": 3 * each.saved(),
    });
    wait_for("the downloads counted", || async {
        w.rollout(id).await["downloads"] == expected
    })
    .await;

    // Every device repeats its last outcome (with the transfer) twice more.
    for i in 0..3 {
        w.sim.publish_reported(&w.id(i)).await;
        w.sim.publish_reported(&w.id(i)).await;
    }
    // A heartbeat round trip later the repeats are handled; nothing moved.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let view = w.rollout(id).await;
    assert_eq!(view["downloads"], expected, "{view}");

    let device: Value = w.t.get_json(&format!("/api/v1/devices/{}", w.id(0))).await;
    let t = &device["last_transfer"];
    assert_eq!(t["fetched_bytes"], each.fetched, "{device}");
    assert_eq!(t["full_bytes"], full, "{device}");
    assert_eq!(t["saved_bytes"], each.saved(), "{device}");
    assert_eq!(t["release"], w.new_digest(), "{device}");

    let m = metrics(&w).await;
    let delta = |k: &str| m.get(k).copied().unwrap_or(-1.0) - before.get(k).copied().unwrap_or(0.0);
    assert_eq!(delta("ota_downloads_total"), 3.0, "{m:?}");
    assert_eq!(
        delta("ota_download_fetched_bytes_total"),
        (3 * each.fetched) as f64
    );
    assert_eq!(delta("ota_download_full_bytes_total"), (3 * full) as f64);
    assert_eq!(
        delta("ota_download_saved_bytes_total"),
        (3 * each.saved()) as f64
    );

    // The device's execution events after the download carry it; the earlier ones do not.
    let events = w
        .events(&format!("device={}&kind=device-state-changed", w.id(0)))
        .await;
    let with: Vec<&Value> = events
        .iter()
        .filter(|e| !e["details"]["transfer"].is_null())
        .collect();
    assert!(
        with.iter().any(|e| e["details"]["to"] == "succeeded"),
        "{events:?}"
    );
    assert!(
        with.iter()
            .all(|e| e["details"]["transfer"]["fetched_bytes"] == each.fetched)
    );
    assert!(
        events
            .iter()
            .filter(|e| e["details"]["to"] == "downloading")
            .all(|e| e["details"]["transfer"].is_null()),
        "{events:?}"
    );
    w.finish().await;
}

/// Issue 17, truthful commit: devices that report `rebooting` (A/B slots) are in flight; the
/// wave neither bakes nor advances, however long it waits, until they report `succeeded`
/// from the new slot.
async fn issue17_a_rebooting_device_counts_only_once_back_on_the_new_release(backend: Backend) {
    let w = World::start(backend, manual_clock()).await;
    w.add(w.sim_devices(4, |_| Behavior::Reboot)).await;
    let (status, body) = w
        .create(
            TOKEN,
            json!({ "waves": [50, 100], "bake_secs": 600, "max_failure": 50 }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["rollout"]["id"].as_i64().unwrap();
    let notified = || {
        (0..4)
            .map(|i| w.id(i))
            .filter(|d| !w.sim.device(d).unwrap().seen.is_empty())
            .collect::<Vec<String>>()
    };
    wait_for("wave 0 rebooting", || async {
        let n = notified().len() as u64;
        n > 0 && count(&w.rollout(id).await, "rebooting") == n
    })
    .await;
    let members = notified();
    w.t.advance(Duration::from_secs(20 * 60)).await;
    let r = w.rollout(id).await;
    assert_eq!(count(&r, "succeeded"), 0, "{r:#}");
    assert_eq!(count(&r, "rebooting"), members.len() as u64, "{r:#}");
    assert_eq!(r["current_wave"], 0, "{r:#}");
    assert_ne!(r["phase"], "baking", "{r:#}");
    for d in &members {
        w.sim.come_back(d).await;
    }
    wait_for("wave 0 succeeded and baking", || async {
        let r = w.rollout(id).await;
        count(&r, "succeeded") == members.len() as u64
            && (r["phase"] == "baking" || r["current_wave"] == 1 || r["status"] == "completed")
    })
    .await;
    assert_eq!(count(&w.rollout(id).await, "rebooting"), 0);
    w.finish().await;
}

/// Issue 14: the benchmark's real-agent mode (`Sim::agents`) behaves like `ota-agent` on the
/// wire: each device on its own connection, logged in with its own password, confined by the
/// front door's ACL (any other topic, filter or last will would close its connection), is
/// registered, gets its heartbeats acknowledged and completes a 4-wave rollout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue14_real_agents_with_device_passwords_complete_a_rollout() {
    let t = TestServer::start_opts(Options {
        device_passwords: true,
        ..Options::default()
    })
    .await;
    let old_art = artifact(3000, 1);
    let new_art = artifact(4000, 2);
    let old = release("1.0.0", &old_art, &[1]);
    let new = release("2.0.0", &new_art, &[1]);
    assert_eq!(t.publish(old.clone(), old_art).await.status(), 201);
    assert_eq!(t.publish(new.clone(), new_art).await.status(), 201);
    let (host, port) = t.mqtt();
    let sim = Sim::agents(AgentLink {
        host,
        port,
        topics: Topics::default(),
        keep_alive: Duration::from_secs(30),
        heartbeat: Duration::from_secs(30),
        secret: Some(t.device_secret()),
        connecting: Arc::new(Semaphore::new(4)),
    });
    let n = 12;
    let ids: Vec<String> = (0..n).map(|i| format!("agent-{i:02}")).collect();
    let devices = ids
        .iter()
        .map(|id| device(id, "gw-a", Some(running_of(&old)), Behavior::Succeed))
        .collect();
    sim.add_devices(devices).await;
    let devices = |filter: &'static str| {
        let t = &t;
        async move {
            let r = t.get("/api/v1/devices").query(&[("filter", filter)]);
            let body: Value = r.send().await.unwrap().json().await.unwrap();
            body["devices"].as_array().unwrap().len()
        }
    };
    wait_for("real agents registered and online", || async {
        devices("id=agent-* and hw=gw-a and online").await == n
    })
    .await;
    wait_for("every agent's first heartbeat acknowledged", || async {
        ids.iter()
            .all(|id| !sim.device(id).unwrap().acks.is_empty())
    })
    .await;

    let body = json!({
        "release": running_of(&new).digest.to_string(),
        "filter": "id=agent-*",
        "waves": [1, 5, 25, 100],
        "bake_secs": 0,
        "rate_per_minute": 10000,
    });
    let r = t
        .post_as(TOKEN, "/api/v1/rollouts", &body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let id = r.json::<Value>().await.unwrap()["rollout"]["id"]
        .as_i64()
        .unwrap();
    wait_for("the rollout completes", || async {
        let v: Value = t.get_json(&format!("/api/v1/rollouts/{id}")).await;
        v["rollout"]["status"] == "completed"
    })
    .await;
    let v: Value = t.get_json(&format!("/api/v1/rollouts/{id}")).await;
    assert_eq!(count(&v["rollout"], "succeeded"), n as u64);
    for id in &ids {
        assert_eq!(sim.device(id).unwrap().seen.len(), 1, "{id}");
    }
    let metrics = t.client.get(t.url("/metrics")).send().await.unwrap();
    let text = metrics.text().await.unwrap();
    for counter in [
        "ota_mqtt_acl_denied_total 0",
        "ota_mqtt_connections_refused_total 0",
    ] {
        assert!(text.lines().any(|l| l == counter), "{counter}");
    }
}

//! The e2e fixture: a lab (fleet server + real agents, `ota_demo::lab`) whose agents and
//! server reach the broker through a fault-injecting [`Proxy`], and whose agents download
//! artifacts through another one.
//!
//! Two backends: the embedded broker + SQLite (always), and Mosquitto + PostgreSQL
//! (`OTA_TEST_MQTT_URL`, `OTA_TEST_DATABASE_URL`; the `#[ignore]`d variants `.ci/run` runs).

use std::net::SocketAddr;
use std::time::Duration;

use ota_core::digest::Digest;
use ota_core::fleet::RolloutId;
use ota_core::update::Stage;
use ota_core::wire::{
    DesiredState, DeviceId, ExecutionState, PROTOCOL_VERSION, TopicKind, Topics, WireMessage,
};
use ota_demo::api::rollout_id;
use ota_demo::device::Device;
use ota_demo::firmware::Build;
use ota_demo::lab::{Lab, LabOptions, unix_now};
use ota_demo::watch::is_final;
use ota_server::broker::{BrokerSettings, EmbeddedBroker};
use ota_server::fleet::RolloutView;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};

use crate::proxy::Proxy;

/// Generous bound on anything that takes seconds.
pub const PATIENCE: Duration = Duration::from_secs(90);

/// Where a scenario runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An embedded broker on a free port, SQLite in the lab directory.
    Embedded,
    /// Mosquitto (`OTA_TEST_MQTT_URL`) and PostgreSQL (`OTA_TEST_DATABASE_URL`).
    Services,
}

/// Generates, for every scenario `fn name(Backend)`, a test on the embedded backend and an
/// `#[ignore]`d one against Mosquitto and PostgreSQL.
macro_rules! suite {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use crate::world::Backend;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded_sqlite() {
                super::$name(Backend::Embedded).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[ignore = "needs Mosquitto and PostgreSQL: set OTA_TEST_MQTT_URL and OTA_TEST_DATABASE_URL"]
            async fn mosquitto_postgres() {
                super::$name(Backend::Services).await;
            }
        }
    )*};
}
pub(crate) use suite;

/// A broker the world started (kept alive with the world).
#[derive(Debug)]
enum OwnBroker {
    /// rumqttd in-process (it cannot be stopped: it lives until the test binary exits).
    Embedded(#[allow(dead_code, reason = "kept for its lifetime")] EmbeddedBroker),
    /// A private Mosquitto process.
    Mosquitto(tokio::process::Child),
}

/// A lab behind fault-injecting proxies.
#[derive(Debug)]
pub struct World {
    /// The server and the devices.
    pub lab: Lab,
    /// Between every MQTT client (agents and server) and the broker.
    pub broker: Proxy,
    /// Between the agents and the artifact server.
    pub http: Proxy,
    backend: Backend,
    brokers: Vec<OwnBroker>,
    /// The PostgreSQL schema of this world (services backend).
    schema: Option<(String, String)>,
}

impl World {
    /// A world of `devices` devices; `tweak` adjusts the lab's options.
    pub async fn start(
        backend: Backend,
        devices: usize,
        tweak: impl FnOnce(&mut LabOptions),
    ) -> World {
        let prefix = unique_prefix();
        // Worlds share the external broker: each has its own topic namespace (issue 15), so no
        // server sees another world's devices or trust updates.
        let topics = Topics::new(&format!("e2e/{prefix}/ota/v1")).unwrap();
        let mut brokers = Vec::new();
        let upstream = match backend {
            Backend::Embedded => {
                let (broker, addr) = fresh_broker(backend, &topics).await;
                brokers.push(broker);
                addr
            }
            Backend::Services => {
                let url = std::env::var("OTA_TEST_MQTT_URL")
                    .expect("set OTA_TEST_MQTT_URL=mqtt://host:port to run the Mosquitto tests");
                resolve(url.trim_start_matches("mqtt://"))
            }
        };
        // One fleet server per database: each world gets its own PostgreSQL schema, or the
        // servers of parallel tests would drive each other's rollouts.
        let schema = match backend {
            Backend::Embedded => None,
            Backend::Services => Some(create_schema().await),
        };
        let broker = Proxy::start(upstream).await;
        // The artifact server's port is known only once it runs: the proxy starts first.
        let http = Proxy::start(broker.addr()).await;
        let mut opts = LabOptions {
            devices,
            image_size: 512 * 1024,
            server_mqtt: Some(format!("mqtt://{}", broker.addr())),
            public_url: Some(format!("http://{}", http.addr())),
            id_prefix: prefix,
            topics,
            database_url: schema.as_ref().map(|(_, url)| url.clone()),
            ..LabOptions::default()
        };
        tweak(&mut opts);
        let lab = Lab::start(opts).await.unwrap();
        http.switch(lab.server().unwrap().http_addr());
        World {
            lab,
            broker,
            http,
            backend,
            brokers,
            schema,
        }
    }

    /// Restarts the broker: every connection is cut and a fresh broker (no sessions, no
    /// retained messages) takes over at the same address.
    pub async fn restart_broker(&mut self) {
        self.broker.refuse(true);
        self.broker.cut();
        let (broker, addr) = fresh_broker(self.backend, self.lab.topics()).await;
        self.broker.switch(addr);
        self.brokers.push(broker);
        self.broker.refuse(false);
    }

    /// Builds, signs and publishes `version` (healthy or not).
    pub async fn release(&self, version: &str, healthy: bool) -> Build {
        release(&self.lab, version, healthy).await
    }

    /// Creates a rollout of `build` to every device of the lab in `waves`, with a 1 s bake,
    /// the demo's gates and `extra` fields of the spec; answers its id.
    pub async fn rollout(&self, build: &Build, waves: &[u32], extra: Value) -> RolloutId {
        rollout(&self.lab, build, waves, extra).await
    }

    /// Waits until rollout `id` is completed or aborted; answers its view.
    pub async fn finished(&self, id: RolloutId) -> Value {
        self.wait_rollout(id, finished).await
    }

    /// Waits until `pred` holds for rollout `id`'s view.
    pub async fn wait_rollout(&self, id: RolloutId, pred: impl Fn(&Value) -> bool) -> Value {
        wait_rollout(&self.lab, id, pred).await
    }

    /// Waits until every device runs `digest` and is idle.
    pub async fn converged(&self, digest: &Digest) {
        converged(&self.lab, digest).await;
    }

    /// An MQTT client of its own on the world's broker: what a compromised fleet server (or
    /// anyone with its MQTT rights) can do.
    pub fn attacker(&self, name: &str) -> AsyncClient {
        let mut o = MqttOptions::new(
            format!("{}-{name}", self.lab.devices()[0].id()),
            "127.0.0.1",
            self.broker.addr().port(),
        );
        o.set_max_packet_size(512 * 1024, 512 * 1024);
        let (client, mut events) = AsyncClient::new(o, 16);
        tokio::spawn(async move { while events.poll().await.is_ok() {} });
        client
    }

    /// Publishes a desired state of `release` with a fresh generation to `device` through
    /// `client`, waits until the device concluded it, and answers its final state. The mirror
    /// URL names no artifact: for releases the device must refuse before fetching anything.
    pub async fn inject_desired(
        &self,
        client: &AsyncClient,
        device: &Device,
        release: Vec<u8>,
    ) -> ExecutionState {
        let generation = device.status().unwrap().machine.last_generation + 100;
        let desired = DesiredState {
            v: PROTOCOL_VERSION,
            generation,
            rollout_id: Some(format!("injected-{generation}")),
            release,
            artifact_urls: vec![format!(
                "http://{}/artifacts/{}",
                self.http.addr(),
                Digest::of(b"x")
            )],
            force_reinstall: true,
        };
        let topic = self
            .lab
            .topics()
            .device(&DeviceId::new(device.id()).unwrap(), TopicKind::Desired);
        client
            .publish(&topic, QoS::AtLeastOnce, false, desired.to_cbor())
            .await
            .unwrap();
        wait_device(device, |d| {
            d.status().is_some_and(|s| {
                s.machine.stage == Stage::Idle
                    && s.machine
                        .last_result
                        .as_ref()
                        .is_some_and(|o| o.generation == generation)
            })
        })
        .await;
        device.status().unwrap().machine.last_result.unwrap().state
    }

    /// Stops every agent and the server.
    pub async fn finish(mut self) {
        self.lab.shutdown().await.unwrap();
        if self.backend == Backend::Services {
            self.clear_trust_topic().await;
        }
        for broker in &mut self.brokers {
            if let OwnBroker::Mosquitto(child) = broker {
                let _ = child.kill().await;
            }
        }
        if let Some((schema, _)) = &self.schema {
            drop_schema(schema).await;
        }
    }
}

impl World {
    /// Clears the retained trust-set update the fleet server left on the broker (in this
    /// world's namespace: no other world sees it, but a shared broker would keep it for ever).
    /// Returns once the broker acknowledged.
    async fn clear_trust_topic(&self) {
        let mut o = MqttOptions::new(
            format!("{}-cleanup", self.lab.devices()[0].id()),
            "127.0.0.1",
            self.broker.addr().port(),
        );
        o.set_clean_session(true);
        let (client, mut events) = AsyncClient::new(o, 4);
        client
            .publish(
                self.lab.topics().trust(),
                QoS::AtLeastOnce,
                true,
                Vec::new(),
            )
            .await
            .unwrap();
        let acked = async {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => return,
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        };
        tokio::time::timeout(PATIENCE, acked)
            .await
            .expect("the broker acknowledges the cleared trust topic");
    }
}

/// Builds, signs and publishes `version` (healthy or not) on `lab`.
pub async fn release(lab: &Lab, version: &str, healthy: bool) -> Build {
    let size = lab.factory().image.len();
    let build = lab.team().build(version, healthy, size, unix_now());
    lab.api().publish(&build).await.unwrap();
    build
}

/// Creates a rollout of `build` to every device of `lab` in `waves`, with a 1 s bake, the
/// demo's gates and `extra` fields of the spec; answers its id.
pub async fn rollout(lab: &Lab, build: &Build, waves: &[u32], extra: Value) -> RolloutId {
    let mut spec = json!({
        "release": build.digest.to_string(),
        "filter": lab.filter(),
        "waves": waves,
        "bake_secs": 1,
        "min_executed": 1,
        "rate_per_minute": 60_000,
        "max_deferral_secs": 600,
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    let r = lab.api().create_rollout(&spec).await.unwrap();
    rollout_id(&r).unwrap()
}

/// Runs `probe` every `every` until it answers `Some`, for at most [`PATIENCE`]; `None` when
/// it never did. Bounded by `tokio::time::timeout`: the tests never read a clock.
pub async fn patiently<T>(every: Duration, mut probe: impl AsyncFnMut() -> Option<T>) -> Option<T> {
    tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(found) = probe().await {
                return found;
            }
            tokio::time::sleep(every).await;
        }
    })
    .await
    .ok()
}

/// Waits until `pred` holds for rollout `id`'s view on `lab`.
/// Whether rollout view `r` (as the API wrote it) is over: completed or aborted.
pub fn finished(r: &Value) -> bool {
    serde_json::from_value::<RolloutView>(r.clone()).is_ok_and(|r| is_final(&r))
}

pub async fn wait_rollout(lab: &Lab, id: RolloutId, pred: impl Fn(&Value) -> bool) -> Value {
    let found = patiently(Duration::from_millis(100), async || {
        // The server may be restarting: retry.
        lab.api().rollout(id).await.ok().filter(|r| pred(r))
    })
    .await;
    match found {
        Some(r) => r,
        None => panic!(
            "rollout {id}: condition not reached: {:#}",
            lab.api().rollout(id).await.unwrap_or_default()
        ),
    }
}

/// Waits until every device of `lab` runs `digest` and is idle. A device that does not gets
/// the server's view of it and its audit events in the failure message.
pub async fn converged(lab: &Lab, digest: &Digest) {
    for d in lab.devices() {
        let done = |d: &Device| {
            d.status().is_some_and(|s| {
                s.machine.stage == Stage::Idle
                    && s.machine.running.as_ref().map(|r| r.digest) == Some(*digest)
            })
        };
        let found = patiently(Duration::from_millis(20), async || done(d).then_some(())).await;
        if found.is_none() {
            let server = lab.api().devices(&format!("id={}", d.id())).await;
            let events = lab.api().events(&[("device", d.id())]).await;
            panic!(
                "device {} did not converge: {:?}\nserver view: {server:#?}\nevents: {events:#?}",
                d.id(),
                d.status().map(|s| s.machine)
            );
        }
    }
}

/// Waits until `pred` holds for device `d` (its agent's status is published on every step).
pub async fn wait_device(d: &Device, pred: impl Fn(&Device) -> bool) {
    let found = patiently(Duration::from_millis(20), async || pred(d).then_some(())).await;
    assert!(
        found.is_some(),
        "device {}: condition not reached: {:?}",
        d.id(),
        d.status().map(|s| s.machine)
    );
}

/// How many times device `d` installed `digest` (not counting rollbacks).
pub fn installs_of(d: &Device, digest: &Digest) -> usize {
    d.status().map_or(0, |s| {
        s.installs
            .iter()
            .filter(|(dg, rollback)| dg == digest && !rollback)
            .count()
    })
}

/// A fresh broker of the backend's kind on a free port, and its address. An embedded one reads
/// topics (per-device budgets) in the world's namespace `topics`.
async fn fresh_broker(backend: Backend, topics: &Topics) -> (OwnBroker, SocketAddr) {
    match backend {
        Backend::Embedded => {
            let settings =
                BrokerSettings::open(([127, 0, 0, 1], 0).into()).with_topics(topics.clone());
            let broker = EmbeddedBroker::start_with(settings, Default::default())
                .await
                .unwrap();
            let addr = broker.local_addr();
            (OwnBroker::Embedded(broker), addr)
        }
        Backend::Services => {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = tokio::process::Command::new("mosquitto")
                .args(["-p", &port.to_string()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("the mosquitto binary (the broker-restart test starts private brokers)");
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            for _ in 0..100 {
                if tokio::net::TcpStream::connect(addr).await.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (OwnBroker::Mosquitto(child), addr)
        }
    }
}

fn admin_url() -> String {
    std::env::var("OTA_TEST_DATABASE_URL")
        .expect("set OTA_TEST_DATABASE_URL=postgres://... to run the PostgreSQL tests")
}

/// Drops `schema` ([`create_schema`]) and everything in it.
pub async fn drop_schema(schema: &str) {
    let pool = sqlx::PgPool::connect(&admin_url()).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

/// Creates a fresh schema in `OTA_TEST_DATABASE_URL`'s database; answers its name and a URL
/// whose connections use only it.
pub async fn create_schema() -> (String, String) {
    let admin = admin_url();
    let schema = format!("ota_{}", unique_prefix());
    let pool = sqlx::PgPool::connect(&admin).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let sep = if admin.contains('?') { '&' } else { '?' };
    let url = format!("{admin}{sep}options[search_path]={schema}");
    (schema, url)
}

fn resolve(host_port: &str) -> SocketAddr {
    use std::net::ToSocketAddrs;
    host_port.to_socket_addrs().unwrap().next().unwrap()
}

/// Device ids unique to this lab (several labs share an external broker and database).
pub fn unique_prefix() -> String {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).unwrap();
    format!(
        "e2e{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

//! Issue 15 on a clustered broker: two server replicas on one PostgreSQL database, a real
//! 3-node NATS cluster (MQTT + JetStream, [`crate::nats`]), 21 real agents spread over the
//! nodes with `broker.failover_urls`, one rollout in three waves. At a seeded random point of
//! the rollout (after a random number of devices installed the release) one broker node is
//! killed with `SIGKILL`. Two rounds, each on a fresh cluster, lab and database schema: the first kills
//! the node the leader is connected to (the server fails over with `mqtt.failover_urls`), the
//! second a seeded random other node. Each round asserts that the rollout completes, every
//! device runs the release and installed it once, every rollout transition is audited once,
//! and no two desired states of one device and generation differ (as seen by three watchers,
//! one per node).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ota_core::wire::{DesiredState, TopicKind, Topics, WireMessage};
use ota_demo::lab::{Lab, LabOptions, external_broker};
use ota_server::config::HaConfig;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
use serde_json::json;

use crate::nats::{NODES, NatsCluster};
use crate::world::{
    converged, create_schema, drop_schema, installs_of, patiently, release, rollout, unique_prefix,
};

/// Devices per round.
const DEVICES: usize = 21;

/// A small deterministic generator (splitmix64): the same seed, the same points.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

/// The seed: `OTA_TEST_SEED` when set (to replay a run), else a random one.
fn seed() -> u64 {
    match std::env::var("OTA_TEST_SEED") {
        Ok(s) => s.parse().expect("OTA_TEST_SEED: a number"),
        Err(_) => {
            let mut b = [0u8; 8];
            getrandom::fill(&mut b).unwrap();
            u64::from_le_bytes(b)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server and PostgreSQL: set OTA_TEST_NATS_SERVER and OTA_TEST_DATABASE_URL"]
async fn issue15_broker_node_killed_mid_rollout_on_a_nats_cluster() {
    let started = ota_server::clock::monotonic_now();
    let seed = seed();
    eprintln!("issue 15 (NATS): seed {seed} (replay with OTA_TEST_SEED={seed})");
    let mut rng = Rng(seed);
    // Round 1: the leader's node (node 0); round 2: another node.
    let victims = [0, 1 + rng.below(NODES as u64 - 1) as usize];
    for (round, victim) in victims.into_iter().enumerate() {
        let installed_before_kill = rng.below(DEVICES as u64 * 2 / 3) as usize;
        eprintln!(
            "issue 15 (NATS): round {}: kill node {victim} once {installed_before_kill} \
             devices installed the release",
            round + 1
        );
        // A fresh cluster per round: the durable consumers the previous round's agents left
        // (persistent sessions) and its node restart do not weigh on this one.
        let mut cluster = NatsCluster::start().await;
        round_trip(&mut cluster, victim, installed_before_kill).await;
    }
    eprintln!(
        "issue 15 (NATS): the test took {} ms",
        started.elapsed().as_millis()
    );
}

/// One round: see the [module documentation](self).
async fn round_trip(cluster: &mut NatsCluster, victim: usize, installed_before_kill: usize) {
    let urls = cluster.mqtt_urls();
    let prefix = unique_prefix();
    let topics = Topics::new(&format!("e2e/{prefix}/ota/v1")).unwrap();
    let (schema, database_url) = create_schema().await;
    let opts = LabOptions {
        devices: DEVICES,
        image_size: 512 * 1024,
        // A device on trial needs a heartbeat ack from the server within its trial timeout:
        // the broker's failover (seconds to tens of seconds on NATS here, docs/ha.md) must fit
        // in it. The lab's 4 s does not; the agent's default is 10 min.
        trial_timeout: Duration::from_secs(60),
        // The lab's server (it leads) on node 0, then 1, 2.
        server_mqtt: Some(urls[0].clone()),
        server_mqtt_failover: urls[1..].to_vec(),
        agent_broker_cluster: urls.clone(),
        id_prefix: prefix,
        topics: topics.clone(),
        database_url: Some(database_url),
        ..LabOptions::default()
    };
    let mut lab = Lab::start(opts).await.unwrap();
    // The standby on node 1, then 2, 0.
    let mut ha = HaConfig::new();
    ha.replica_id = Some("standby".into());
    ha.lease_ttl_secs = 3;
    let broker = external_broker(&urls[1], &[urls[2].clone(), urls[0].clone()]).unwrap();
    lab.start_replica_with_broker(ha, broker).await.unwrap();
    let (seen, watchers) = watch_desired(cluster, &topics).await;

    let v2 = release(&lab, "2.0.0", true).await;
    let id = rollout(&lab, &v2, &[20, 50, 100], json!({})).await;
    let installed = |lab: &Lab| {
        lab.devices()
            .iter()
            .filter(|d| installs_of(d, &v2.digest) > 0)
            .count()
    };
    let reached = patiently(Duration::from_millis(20), async || {
        (installed(&lab) >= installed_before_kill).then_some(())
    })
    .await;
    assert!(reached.is_some(), "{} devices installed", installed(&lab));
    cluster.kill(victim).await;
    let killed = ota_server::clock::monotonic_now();
    eprintln!(
        "issue 15 (NATS): node {victim} killed with {} devices installed",
        installed(&lab)
    );

    let r = patiently(Duration::from_millis(100), async || {
        let r = lab.api().rollout(id).await.ok()?;
        matches!(r["status"].as_str(), Some("completed" | "aborted")).then_some(r)
    })
    .await
    .unwrap_or_default();
    if r["status"] != "completed" {
        for d in lab.devices() {
            let status = d.status().map(|s| {
                (
                    s.connected,
                    s.broker_error,
                    s.outbox,
                    s.machine.stage,
                    s.installs.len(),
                )
            });
            eprintln!("{}: {status:?}", d.id());
        }
        let id_text = id.to_string();
        let events = lab
            .api()
            .events(&[("rollout", id_text.as_str()), ("limit", "1000")])
            .await
            .unwrap_or_default();
        let failures: Vec<_> = events
            .iter()
            .filter(|e| {
                let kind = e["kind"].as_str().unwrap_or_default();
                kind.contains("roll") || kind.contains("fail") || kind.contains("abort")
            })
            .collect();
        panic!(
            "rollout {}: {r:#}\n{failures:#?}\n{}",
            r["status"],
            cluster.logs()
        );
    }
    converged(&lab, &v2.digest).await;
    // A figure, not an assertion.
    eprintln!(
        "issue 15 (NATS): every device on the release {} ms after the kill",
        killed.elapsed().as_millis()
    );
    for d in lab.devices() {
        assert_eq!(installs_of(d, &v2.digest), 1, "{}", d.id());
    }
    crate::ha::transitions_once(&lab, id).await;

    // No conflicting desired states: per device and generation, one content (release,
    // rollout, force flag; the mirror URLs are not compared). And every device's was seen.
    for watcher in watchers {
        watcher.abort();
    }
    let seen = seen.lock().unwrap().clone();
    let mut states: BTreeMap<(String, u64), Vec<DesiredState>> = BTreeMap::new();
    for (topic, payload) in seen {
        let mut desired = DesiredState::from_cbor(&payload).unwrap();
        desired.artifact_urls.clear();
        let slot = states.entry((topic, desired.generation)).or_default();
        if !slot.contains(&desired) {
            slot.push(desired);
        }
    }
    for ((topic, generation), contents) in &states {
        assert_eq!(
            contents.len(),
            1,
            "{topic} generation {generation}: {contents:#?}"
        );
    }
    for d in lab.devices() {
        let wanted = topics.device(
            &ota_core::wire::DeviceId::new(d.id()).unwrap(),
            TopicKind::Desired,
        );
        assert!(
            states.keys().any(|(topic, _)| *topic == wanted),
            "no desired state seen for {}",
            d.id()
        );
    }
    lab.shutdown().await.unwrap();
    drop_schema(&schema).await;
}

/// What the watchers received: topic and payload of every desired state.
type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// Starts one watcher per node of `cluster`, subscribed (QoS 1) to every device's desired
/// state in `topics`; returns once every subscription is granted. A watcher whose node dies
/// stops receiving; the others see everything. Abort the tasks returned to stop them.
async fn watch_desired(
    cluster: &NatsCluster,
    topics: &Topics,
) -> (Seen, Vec<tokio::task::JoinHandle<()>>) {
    let seen: Seen = Arc::default();
    let mut tasks = Vec::new();
    let filter = topics.fleet_filter(TopicKind::Desired);
    for i in 0..NODES {
        let addr = cluster.mqtt_addr(i);
        let options = MqttOptions::new(
            format!("{}-watch-{i}", topics.prefix().replace('/', "-")),
            "127.0.0.1",
            addr.port(),
        );
        let (client, mut events) = AsyncClient::new(options, 64);
        let (granted_tx, mut granted_rx) = tokio::sync::watch::channel(false);
        let seen = seen.clone();
        let filter = filter.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client.subscribe(&filter, QoS::AtLeastOnce).await;
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        if ack
                            .return_codes
                            .iter()
                            .all(|c| matches!(c, SubscribeReasonCode::Success(_)))
                        {
                            granted_tx.send_replace(true);
                        } else {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            let _ = client.subscribe(&filter, QoS::AtLeastOnce).await;
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        seen.lock()
                            .unwrap()
                            .push((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }));
        let granted =
            tokio::time::timeout(crate::world::PATIENCE, granted_rx.wait_for(|g| *g)).await;
        assert!(
            matches!(granted, Ok(Ok(_))),
            "watcher on node {i} not subscribed"
        );
    }
    (seen, tasks)
}

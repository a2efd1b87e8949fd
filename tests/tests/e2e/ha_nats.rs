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

use std::time::Duration;

use ota_core::wire::Topics;
use ota_demo::lab::{Lab, LabOptions, external_broker};
use ota_server::config::HaConfig;
use serde_json::json;

use crate::nats::{NODES, NatsCluster};
use crate::seeded::{Rng, seed};
use crate::watch;
use crate::world::{
    converged, create_schema, drop_schema, installs_of, patiently, release, rollout, unique_prefix,
};

/// Devices per round.
const DEVICES: usize = 21;

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
    let brokers: Vec<_> = (0..NODES).map(|i| cluster.mqtt_addr(i)).collect();
    let watchers = watch::watch_desired(&brokers, &topics).await;

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
            if installs_of(d, &v2.digest) == 0 {
                // What the server knows of a device that never installed: its record and
                // audit events (presence, reports).
                let record = lab
                    .api()
                    .get(&format!("/api/v1/devices/{}", d.id()), &[])
                    .await;
                let events = lab
                    .api()
                    .events(&[("device", d.id()), ("limit", "100")])
                    .await;
                eprintln!("{}: server record {record:?}\nevents {events:#?}", d.id());
            }
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
        // The rollout as each replica sees it now, and its devices' states.
        let now = lab.api().rollout(id).await;
        let devices = lab
            .api()
            .get(&format!("/api/v1/rollouts/{id}/devices"), &[])
            .await;
        let health = lab.api().get("/healthz", &[]).await;
        panic!(
            "rollout {}: {now:#?}\ndevices {devices:#?}\nhealthz {health:#?}\n{failures:#?}\n{}",
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

    // No conflicting desired states, and every device's was seen.
    watch::one_content_per_generation(watchers, &topics, &lab);
    lab.shutdown().await.unwrap();
    drop_schema(&schema).await;
}

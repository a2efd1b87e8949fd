//! A real 3-node NATS cluster with its MQTT listener and JetStream (issue 15), started by the
//! test that uses it: `nats-server` processes (`OTA_TEST_NATS_SERVER`) on free ports, their
//! configurations and JetStream stores in a temp dir. The test can kill a node (`SIGKILL`) and
//! start it again on the same ports and store.
//!
//! The configuration is the one `docs/ha.md` documents: cluster routes to the two other nodes,
//! JetStream, and `mqtt { stream_replicas: 3 }` so that the MQTT streams (sessions, retained
//! messages, QoS 1 messages) and their consumers have a copy on every node.
//!
//! Also the broker-level tests: a retained message and a QoS 1 persistent session survive the
//! loss of the node they were published or held on.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
use tempfile::TempDir;

use crate::processes::{free_port, tail};
use crate::world::{PATIENCE, patiently};

/// Nodes in the cluster.
pub const NODES: usize = 3;

/// One `nats-server` of the cluster.
#[derive(Debug)]
struct Node {
    config: PathBuf,
    log: PathBuf,
    mqtt: SocketAddr,
    process: Option<tokio::process::Child>,
}

/// A running 3-node NATS cluster (see the [module documentation](self)); its processes are
/// killed and its directory removed when it is dropped.
#[derive(Debug)]
pub struct NatsCluster {
    /// Configurations, stores and logs (removed with the cluster).
    _dir: TempDir,
    bin: PathBuf,
    nodes: Vec<Node>,
}

impl NatsCluster {
    /// The `nats-server` binary to test with, from `OTA_TEST_NATS_SERVER`.
    pub fn binary() -> PathBuf {
        std::env::var_os("OTA_TEST_NATS_SERVER")
            .expect("set OTA_TEST_NATS_SERVER=/path/to/nats-server to run the NATS tests")
            .into()
    }

    /// Starts the three nodes and returns once every node's MQTT listener accepts a QoS 1
    /// subscription (JetStream has a leader and the MQTT streams exist).
    pub async fn start() -> NatsCluster {
        let dir = tempfile::Builder::new()
            .prefix("ota-nats.")
            .tempdir()
            .unwrap();
        let routes: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
        let mut nodes = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            let mqtt = free_port();
            let others: Vec<String> = routes
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, port)| format!("nats-route://127.0.0.1:{port}"))
                .collect();
            let config = dir.path().join(format!("node-{i}.conf"));
            std::fs::write(
                &config,
                node_config(
                    i,
                    &dir.path().join(format!("store-{i}")),
                    *route,
                    &others,
                    mqtt,
                ),
            )
            .unwrap();
            nodes.push(Node {
                config,
                log: dir.path().join(format!("node-{i}.log")),
                mqtt: ([127, 0, 0, 1], mqtt).into(),
                process: None,
            });
        }
        let mut cluster = NatsCluster {
            _dir: dir,
            bin: Self::binary(),
            nodes,
        };
        for i in 0..NODES {
            cluster.spawn(i);
        }
        for i in 0..NODES {
            cluster.wait_ready(i).await;
        }
        cluster
    }

    /// Node `i`'s MQTT address.
    pub fn mqtt_addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].mqtt
    }

    /// Every node's MQTT URL (`mqtt://127.0.0.1:port`), node 0 first.
    pub fn mqtt_urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("mqtt://{}", n.mqtt))
            .collect()
    }

    /// Kills node `i` with `SIGKILL` and waits until it is gone.
    pub async fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].process.take() {
            child.kill().await.unwrap();
        }
    }

    /// Starts node `i` again (same ports, same store) and waits until its MQTT listener
    /// accepts a QoS 1 subscription.
    pub async fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.wait_ready(i).await;
    }

    /// The last lines of every node's log (for failure messages).
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let log = std::fs::read_to_string(&node.log).unwrap_or_default();
            out.push_str(&tail(&format!("node {i}"), &log, 30));
        }
        out
    }

    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .unwrap();
        let child = tokio::process::Command::new(&self.bin)
            .arg("-c")
            .arg(&node.config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("the nats-server binary (OTA_TEST_NATS_SERVER)");
        node.process = Some(child);
    }

    /// Waits until node `i` grants a QoS 1 subscription (MQTT streams and their consumers need
    /// a JetStream quorum; until then NATS refuses the connection or the subscription).
    async fn wait_ready(&self, i: usize) {
        let addr = self.mqtt_addr(i);
        let ready = patiently(Duration::from_millis(200), async || {
            let options = MqttOptions::new(format!("ota-nats-probe-{i}"), "127.0.0.1", addr.port());
            subscribed(options, "ota-probe/ready").await.then_some(())
        })
        .await;
        assert!(
            ready.is_some(),
            "NATS node {i} is not ready:\n{}",
            self.logs()
        );
    }
}

impl Drop for NatsCluster {
    /// Kills every node and waits (a second at most) until each is gone, before the temp dir
    /// with their stores is removed.
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(child) = &mut node.process {
                let _ = child.start_kill();
                for _ in 0..100 {
                    if !matches!(child.try_wait(), Ok(None)) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
}

/// One node's configuration: see the [module documentation](self) and `docs/ha.md`.
fn node_config(i: usize, store: &Path, route: u16, others: &[String], mqtt: u16) -> String {
    format!(
        "server_name: ota-nats-{i}\n\
         listen: 127.0.0.1:-1\n\
         jetstream {{ store_dir: {store:?} }}\n\
         cluster {{\n  name: ota\n  listen: 127.0.0.1:{route}\n  routes: [{routes}]\n}}\n\
         mqtt {{\n  listen: 127.0.0.1:{mqtt}\n  stream_replicas: 3\n}}\n",
        store = store.display().to_string(),
        routes = others.join(", "),
    )
}

/// Whether a client with `options` connects and gets a QoS 1 subscription to `topic` granted,
/// within a few seconds.
async fn subscribed(options: MqttOptions, topic: &str) -> bool {
    let (client, mut events) = AsyncClient::new(options, 8);
    let granted = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    client.subscribe(topic, QoS::AtLeastOnce).await.ok()?;
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    return Some(granted(&ack.return_codes));
                }
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    })
    .await;
    let _ = client.disconnect().await;
    // Let the event loop send the DISCONNECT.
    let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
    matches!(granted, Ok(Some(true)))
}

/// Whether every subscription of a SUBACK was granted.
fn granted(codes: &[SubscribeReasonCode]) -> bool {
    codes
        .iter()
        .all(|c| matches!(c, SubscribeReasonCode::Success(_)))
}

/// A message received: topic, payload, retain flag.
type Received = (String, Vec<u8>, bool);

/// Connects to `addr` as `client_id` (a persistent session unless `clean`), subscribes to
/// `subscribe` if given (QoS 1), and collects messages until `enough` holds for them. Retries
/// refused connections and subscriptions (NATS refuses them while JetStream elects leaders
/// after a node loss). Disconnects cleanly once done.
async fn receive(
    addr: SocketAddr,
    client_id: &str,
    clean: bool,
    subscribe: Option<&str>,
    enough: impl Fn(&[Received]) -> bool,
) -> Vec<Received> {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", addr.port());
    options.set_clean_session(clean);
    let (client, mut events) = AsyncClient::new(options, 16);
    let mut got = Vec::new();
    let done = tokio::time::timeout(PATIENCE, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Some(topic) = subscribe {
                        client.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) if !granted(&ack.return_codes) => {
                    let topic = subscribe.unwrap_or_default();
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    client.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    got.push((p.topic.clone(), p.payload.to_vec(), p.retain));
                    if enough(&got) {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })
    .await;
    assert!(done.is_ok(), "{client_id}: only received {got:?}");
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
    got
}

/// Publishes `payload` on `topic` (QoS 1) through node address `addr` and waits for the
/// broker's PUBACK.
async fn publish(addr: SocketAddr, client_id: &str, topic: &str, payload: &[u8], retain: bool) {
    let options = MqttOptions::new(client_id, "127.0.0.1", addr.port());
    let (client, mut events) = AsyncClient::new(options, 8);
    client
        .publish(topic, QoS::AtLeastOnce, retain, payload.to_vec())
        .await
        .unwrap();
    let acked = tokio::time::timeout(PATIENCE, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return,
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })
    .await;
    assert!(acked.is_ok(), "{client_id}: no PUBACK for {topic}");
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
}

/// A topic namespace unique to this run (the nodes' stores are fresh, but be explicit).
fn namespace() -> String {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).unwrap();
    format!(
        "ota-nats-{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server: set OTA_TEST_NATS_SERVER"]
async fn issue15_nats_cluster_keeps_retained_messages_and_sessions_through_a_node_loss() {
    let started = ota_server::clock::monotonic_now();
    let mut cluster = NatsCluster::start().await;
    let ns = namespace();

    // A retained message published through node 0 is served by node 2 after node 0 is killed.
    let retained = format!("{ns}/retained");
    publish(cluster.mqtt_addr(0), "pub-0", &retained, b"r1", true).await;
    cluster.kill(0).await;
    let got = receive(cluster.mqtt_addr(2), "sub-2", true, Some(&retained), |m| {
        !m.is_empty()
    })
    .await;
    assert_eq!(got, vec![(retained.clone(), b"r1".to_vec(), true)]);
    cluster.restart(0).await;

    // A persistent QoS 1 session held on node 1: its client goes away, messages are queued for
    // it (published through node 2), node 1 is killed, and the client resumes the session on
    // node 2 without subscribing again: it receives every queued message.
    let queued = format!("{ns}/queued");
    let session = format!("{ns}-session");
    let node1 = cluster.mqtt_addr(1);
    let held = patiently(Duration::from_millis(200), async || {
        let mut options = MqttOptions::new(session.as_str(), "127.0.0.1", node1.port());
        options.set_clean_session(false);
        subscribed(options, &queued).await.then_some(())
    })
    .await;
    assert!(held.is_some(), "no session on node 1:\n{}", cluster.logs());
    let sent: Vec<Vec<u8>> = (0..5).map(|i| format!("m{i}").into_bytes()).collect();
    for payload in &sent {
        publish(cluster.mqtt_addr(2), "pub-2", &queued, payload, false).await;
    }
    cluster.kill(1).await;
    let got = receive(cluster.mqtt_addr(2), &session, false, None, |m| {
        sent.iter().all(|s| m.iter().any(|(_, p, _)| p == s))
    })
    .await;
    for (topic, payload, _) in &got {
        assert_eq!(topic, &queued);
        assert!(sent.contains(payload), "{payload:?}");
    }
    cluster.restart(1).await;
    eprintln!(
        "issue 15: NATS broker-level node-loss test took {} ms",
        started.elapsed().as_millis()
    );
}

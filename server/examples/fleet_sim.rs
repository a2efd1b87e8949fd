//! Fleet simulator for `scripts/bench-fleet.sh`: drives N simulated devices (the real MQTT
//! protocol) through a running `ota server`, creates a rollout and waits for it to finish;
//! prints wall time and message rates.
//!
//! ```text
//! fleet_sim --http http://127.0.0.1:8080 --token T --mqtt 127.0.0.1:1883 \
//!           --old old.release --new-digest HEX --devices 10000 \
//!           [--connections 4 [--per-device-subscriptions] | --real-agents] \
//!           [--shard I/N] [--device-secret-file PATH] [--keep-alive S] [--heartbeat S] \
//!           [--connect-concurrency K] [--waves 1,5,25,100] [--prefix sim-] [--flag-kill]
//! ```
//!
//! Two modes, and every run prints which one made its figures (`mode=`):
//!
//! - **multiplexed** (default): many devices per MQTT connection (`--connections`). By default
//!   each connection subscribes once to every device's `desired` and `heartbeat/ack` topics
//!   (wildcard) and keeps its own devices' messages; `--per-device-subscriptions` makes every
//!   simulated device subscribe to its own topics like a real agent (30 000 filters for
//!   10 000 devices: rumqttd matches each new topic against every filter, see docs/server.md).
//! - **real agents** (`--real-agents`): every device has its own MQTT connection, client id
//!   (= device id), session, last will and subscriptions, and publishes status, reported state,
//!   events and heartbeats on the agent's topics with the agent's QoS, retain flags and
//!   keep-alive (`sim::AgentLink` says what is simplified). With `--device-secret-file` (the
//!   server's `mqtt.device_secret_file`) each device logs in with username = device id and the
//!   password `ota server device-credential` would provision. At most `--connect-concurrency`
//!   first connection attempts (default 200) are in flight at once. Devices connect from
//!   127.0.0.1: rumqttc 0.25 cannot bind a local address (only a device), so the connections
//!   are not spread over several loopback source addresses; Linux picks ephemeral ports per
//!   destination, so one process can hold about 28 000 connections to one broker port.
//!
//! `--shard I/N` runs only the I-th of N equal slices of the fleet, so a fleet can be spread
//! over N processes (each within its own file-descriptor limit). Shard 0 is the driver: it
//! waits for the whole fleet (`--devices`) to register, runs the rollout and prints the
//! figures; the others only keep their devices running until they are killed.
//!
//! `--flag-kill` measures the feature-flag kill switch instead of a rollout
//! (`scripts/bench-flags.sh`; one process only): a flag on for every device, then killed; prints
//! the time from the kill request to the last device applying it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark tool: a failure ends the run"
)]
#![allow(
    clippy::disallowed_methods,
    reason = "a benchmark measures wall time: it reads the clock itself"
)]

#[path = "../tests/server/sim.rs"]
mod sim;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ota_core::wire::Topics;
use ota_server::broker::credentials::DeviceSecret;
use serde_json::{Value, json};
use sim::{AgentLink, Behavior, Sim, device, running_of};

struct Args {
    http: String,
    token: String,
    mqtt: String,
    old: String,
    new_digest: String,
    devices: usize,
    connections: usize,
    waves: Vec<f64>,
    prefix: String,
    per_device_subscriptions: bool,
    flag_kill: bool,
    real_agents: bool,
    /// (I, N): this process runs the I-th of N slices of the fleet.
    shard: (usize, usize),
    device_secret_file: Option<String>,
    keep_alive: u64,
    heartbeat: u64,
    connect_concurrency: usize,
}

fn args() -> Args {
    let mut a = Args {
        http: "http://127.0.0.1:8080".into(),
        token: std::env::var("OTA_TOKEN").unwrap_or_default(),
        mqtt: "127.0.0.1:1883".into(),
        old: String::new(),
        new_digest: String::new(),
        devices: 10_000,
        connections: 20,
        waves: vec![1.0, 5.0, 25.0, 100.0],
        prefix: "sim-".into(),
        per_device_subscriptions: false,
        flag_kill: false,
        real_agents: false,
        shard: (0, 1),
        device_secret_file: None,
        keep_alive: 30,
        heartbeat: 30,
        connect_concurrency: 200,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--http" => a.http = value(),
            "--token" => a.token = value(),
            "--mqtt" => a.mqtt = value(),
            "--old" => a.old = value(),
            "--new-digest" => a.new_digest = value(),
            "--devices" => a.devices = value().parse().unwrap(),
            "--connections" => a.connections = value().parse().unwrap(),
            "--prefix" => a.prefix = value(),
            "--per-device-subscriptions" => a.per_device_subscriptions = true,
            "--flag-kill" => a.flag_kill = true,
            "--real-agents" => a.real_agents = true,
            "--shard" => {
                let v = value();
                let (i, n) = v.split_once('/').expect("--shard I/N");
                a.shard = (i.parse().unwrap(), n.parse().unwrap());
                assert!(a.shard.0 < a.shard.1, "--shard I/N needs I < N");
            }
            "--device-secret-file" => a.device_secret_file = Some(value()),
            "--keep-alive" => a.keep_alive = value().parse().unwrap(),
            "--heartbeat" => a.heartbeat = value().parse().unwrap(),
            "--connect-concurrency" => a.connect_concurrency = value().parse().unwrap(),
            "--waves" => {
                a.waves = value()
                    .split(',')
                    .map(|w| w.trim_end_matches('%').parse().unwrap())
                    .collect()
            }
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    let old = std::fs::read(&a.old).expect("--old release file");
    let (host, port) = a.mqtt.rsplit_once(':').unwrap();
    let port: u16 = port.parse().unwrap();
    let http = reqwest::Client::new();
    let (shard, shards) = a.shard;
    assert!(
        !a.flag_kill || shards == 1,
        "--flag-kill watches every device: one process"
    );

    let t0 = Instant::now();
    let slice = a.devices.div_ceil(shards);
    let ours = shard * slice..((shard + 1) * slice).min(a.devices);
    let make = |i: usize| {
        device(
            &format!("{}{i:05}", a.prefix),
            "gw-a",
            Some(running_of(&old)),
            Behavior::Succeed,
        )
    };
    let mut sims = Vec::new();
    if a.real_agents {
        let sim = Sim::agents(AgentLink {
            host: host.to_string(),
            port,
            // The benchmarked server runs with the default `mqtt.topic_prefix`.
            topics: Topics::default(),
            keep_alive: Duration::from_secs(a.keep_alive),
            heartbeat: Duration::from_secs(a.heartbeat),
            secret: a.device_secret_file.as_ref().map(|path| {
                DeviceSecret::load_or_create(std::path::Path::new(path)).expect("device secret")
            }),
            connecting: Arc::new(tokio::sync::Semaphore::new(a.connect_concurrency.max(1))),
        });
        sims.push((sim, ours.map(make).collect::<Vec<_>>()));
    } else {
        let connections = a.connections.max(1);
        let per = ours.len().div_ceil(connections);
        for c in 0..connections {
            let sim = Sim::connect_with(
                host,
                port,
                &format!("{}s{shard}conn{c}", a.prefix),
                &Topics::default(),
                !a.per_device_subscriptions,
            )
            .await;
            let start = ours.start + c * per;
            let devices: Vec<sim::SimDevice> =
                (start..(start + per).min(ours.end)).map(make).collect();
            sims.push((sim, devices));
        }
    }
    let mut joins = Vec::new();
    for (sim, devices) in &sims {
        let sim = sim.clone();
        let devices = devices.clone();
        joins.push(tokio::spawn(async move { sim.add_devices(devices).await }));
    }
    for j in joins {
        j.await.unwrap();
    }
    if shard != 0 {
        eprintln!("shard {shard}/{shards}: devices started; running until killed");
        std::future::pending::<()>().await;
    }
    // Wait on the gauge (a fresh server: every device is ours) rather than listing 10 000
    // devices over and over.
    loop {
        let online = server_metric(&http, &a.http, "ota_devices_online").await;
        if online >= a.devices as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Online comes first (status), the reported state (hardware class, running release)
    // right after: wait until every device has reported.
    let filter = format!("id={}* and hw=gw-a and online", a.prefix);
    loop {
        let v: Value = http
            .get(format!("{}/api/v1/devices", a.http))
            .query(&[("filter", filter.as_str())])
            .bearer_auth(&a.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["devices"].as_array().map_or(0, Vec::len) >= a.devices {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let registered = t0.elapsed();
    eprintln!(
        "{} devices registered and online in {:.1} s",
        a.devices,
        registered.as_secs_f64()
    );

    if a.flag_kill {
        flag_kill(&http, &a, &sims).await;
        return;
    }

    let counters = |sims: &Vec<(Sim, Vec<sim::SimDevice>)>| {
        sims.iter().fold((0u64, 0u64), |(p, r), (s, _)| {
            (
                p + s.published.load(std::sync::atomic::Ordering::Relaxed),
                r + s.received.load(std::sync::atomic::Ordering::Relaxed),
            )
        })
    };
    let (p0, r0) = counters(&sims);
    let server_before = server_counters(&http, &a.http).await;
    let start = Instant::now();
    let body = json!({
        "release": a.new_digest,
        "filter": format!("id={}*", a.prefix),
        "waves": a.waves,
        "bake_secs": 0,
        "rate_per_minute": 1_000_000,
        "inactivity_timeout_secs": 600,
    });
    let created: Value = http
        .post(format!("{}/api/v1/rollouts", a.http))
        .bearer_auth(&a.token)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["rollout"]["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("rollout not created: {created}"));
    eprintln!(
        "rollout {id}: {} targets, {} deploys, {} redeploys",
        created["rollout"]["targets"],
        created["rollout"]["deploys"],
        created["rollout"]["redeploys"]
    );
    let mut last_wave = None;
    let status = loop {
        let v: Value = http
            .get(format!("{}/api/v1/rollouts/{id}", a.http))
            .bearer_auth(&a.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let r = &v["rollout"];
        if r["current_wave"] != Value::Null && Some(r["current_wave"].clone()) != last_wave {
            eprintln!(
                "  {:>6.1} s: wave {} started",
                start.elapsed().as_secs_f64(),
                r["current_wave"]
            );
            last_wave = Some(r["current_wave"].clone());
        }
        if matches!(r["status"].as_str(), Some("completed" | "aborted")) {
            break r.clone();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let wall = start.elapsed().as_secs_f64();
    let (p1, r1) = counters(&sims);
    let server_after = server_counters(&http, &a.http).await;
    let device_msgs = (p1 - p0) + (r1 - r0);
    println!(
        "rollout_status={}",
        status["status"].as_str().unwrap_or("?")
    );
    println!("succeeded={}", status["totals"]["succeeded"]);
    println!("failures={}", status["totals"]["failures"]);
    println!(
        "mode={}",
        if a.real_agents {
            "real-agents"
        } else {
            "multiplexed"
        }
    );
    println!("processes={shards}");
    println!("devices={}", a.devices);
    println!(
        "connections={}",
        if a.real_agents {
            a.devices
        } else {
            a.connections * shards
        }
    );
    println!("registration_s={:.2}", registered.as_secs_f64());
    println!("rollout_wall_s={wall:.2}");
    // This process's devices only (shard 0 of N); the server's counters below cover the fleet.
    println!("device_messages={device_msgs}");
    println!("device_messages_per_s={:.0}", device_msgs as f64 / wall);
    println!(
        "server_mqtt_received_total={}",
        server_after.0 - server_before.0
    );
    println!(
        "server_mqtt_published_total={}",
        server_after.1 - server_before.1
    );
    if status["status"] != "completed" || status["totals"]["succeeded"] != a.devices {
        std::process::exit(1);
    }
}

/// `--flag-kill`: turns flag `bench-kill` on for every simulated device, waits until all have
/// applied it, then kills it and measures the time from the kill request (what `ota flag kill`
/// sends) to the last device applying the kill.
async fn flag_kill(http: &reqwest::Client, a: &Args, sims: &[(Sim, Vec<sim::SimDevice>)]) {
    const FLAG: &str = "bench-kill";
    let post = |op: &str, body: Value| {
        http.post(format!("{}/api/v1/flags/{FLAG}/{op}", a.http))
            .bearer_auth(&a.token)
            .json(&body)
            .send()
    };
    let all = |on: bool| {
        sims.iter()
            .all(|(s, devices)| devices.iter().all(|d| s.flag(d.id.as_str(), FLAG) == on))
    };
    let set: Value = post(
        "set",
        json!({ "on": true, "filter": format!("id={}*", a.prefix) }),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(set["changed"], true, "{set}");
    while !all(true) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("flag {FLAG} on for {} devices", a.devices);
    let start = Instant::now();
    let killed: Value = post("kill", json!({})).await.unwrap().json().await.unwrap();
    let answered = start.elapsed();
    assert_eq!(killed["changed"], true, "{killed}");
    while !all(false) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last = sims
        .iter()
        .flat_map(|(s, devices)| devices.iter().filter_map(|d| s.device(d.id.as_str())))
        .filter_map(|d| d.flags_applied_at)
        .max()
        .unwrap();
    println!("devices={}", a.devices);
    println!("flag_kill_published={}", killed["published"]);
    println!("flag_kill_answered_s={:.3}", answered.as_secs_f64());
    println!(
        "flag_kill_last_device_s={:.3}",
        last.saturating_duration_since(start).as_secs_f64()
    );
}

/// One metric of the server's `/metrics` (0 if absent).
async fn server_metric(http: &reqwest::Client, base: &str, name: &str) -> u64 {
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0)
}

/// The server's (received, published) MQTT message counters.
async fn server_counters(http: &reqwest::Client, base: &str) -> (u64, u64) {
    (
        server_metric(http, base, "ota_mqtt_messages_received_total").await,
        server_metric(http, base, "ota_mqtt_messages_published_total").await,
    )
}

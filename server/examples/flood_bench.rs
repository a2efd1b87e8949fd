//! Flood benchmark for `scripts/bench-flood.sh` (issue 19.4): DEVICES well-behaved devices,
//! each on its own MQTT connection, send a heartbeat every INTERVAL and measure how long the
//! server takes to acknowledge it, while (with `--flood`) one more device publishes on its own
//! heartbeat topic as fast as it can, reconnecting whenever it is disconnected. Prints the ack
//! latency distribution, the acks lost and what the flood sent.
//!
//! ```text
//! flood_bench --mqtt 127.0.0.1:1883 [--devices 50] [--seconds 20] [--interval-ms 500] [--flood]
//! ```

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

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ota_core::wire::{DeviceId, Heartbeat, HeartbeatAck, PROTOCOL_VERSION, TopicKind, WireMessage};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::Mutex;

struct Args {
    mqtt: (String, u16),
    devices: usize,
    seconds: u64,
    interval: Duration,
    flood: bool,
}

fn args() -> Args {
    let mut a = Args {
        mqtt: ("127.0.0.1".into(), 1883),
        devices: 50,
        seconds: 20,
        interval: Duration::from_millis(500),
        flood: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().expect("a value after the flag");
        match flag.as_str() {
            "--mqtt" => {
                let v = value();
                let (h, p) = v.rsplit_once(':').expect("--mqtt host:port");
                a.mqtt = (h.to_string(), p.parse().unwrap());
            }
            "--devices" => a.devices = value().parse().unwrap(),
            "--seconds" => a.seconds = value().parse().unwrap(),
            "--interval-ms" => a.interval = Duration::from_millis(value().parse().unwrap()),
            "--flood" => a.flood = true,
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

fn options(a: &Args, id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, a.mqtt.0.clone(), a.mqtt.1);
    o.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true);
    o
}

/// Latencies (ms) of the acks one device got, and how many heartbeats it sent.
async fn device(a: Arc<Args>, n: usize, stop: Arc<AtomicBool>) -> (Vec<f64>, u64) {
    let id = DeviceId::new(&format!("bench-ok-{n}")).unwrap();
    let (client, mut eventloop) = AsyncClient::new(options(&a, id.as_str()), 64);
    let sent: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    let (pending, got) = (sent.clone(), latencies.clone());
    let poller = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Ok(ack) = HeartbeatAck::from_cbor(&p.payload)
                        && let Some(at) = pending.lock().await.remove(&ack.seq)
                    {
                        got.lock().await.push(at.elapsed().as_secs_f64() * 1000.0);
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    client
        .subscribe(id.topic(TopicKind::HeartbeatAck), QoS::AtLeastOnce)
        .await
        .unwrap();
    // Spread the devices over the interval.
    tokio::time::sleep(a.interval / u32::try_from(a.devices).unwrap() * u32::try_from(n).unwrap())
        .await;
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let hb = Heartbeat {
            v: PROTOCOL_VERSION,
            seq,
            at: 0,
            healthy: None,
        };
        sent.lock().await.insert(seq, Instant::now());
        client
            .publish(
                id.topic(TopicKind::Heartbeat),
                QoS::AtLeastOnce,
                false,
                hb.to_cbor(),
            )
            .await
            .unwrap();
        tokio::time::sleep(a.interval).await;
    }
    // Late acks still count.
    tokio::time::sleep(Duration::from_secs(5)).await;
    poller.abort();
    let got = latencies.lock().await.clone();
    (got, seq)
}

/// Publishes as fast as rumqttc goes; returns (messages handed to the connection,
/// disconnections seen).
async fn flood(a: Arc<Args>, stop: Arc<AtomicBool>) -> (u64, u64) {
    let id = DeviceId::new("bench-flood").unwrap();
    let (client, mut eventloop) = AsyncClient::new(options(&a, id.as_str()), 1024);
    let disconnects = Arc::new(AtomicU64::new(0));
    let seen = disconnects.clone();
    let poller = tokio::spawn(async move {
        loop {
            if eventloop.poll().await.is_err() {
                seen.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let topic = id.topic(TopicKind::Heartbeat);
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let hb = Heartbeat {
            v: PROTOCOL_VERSION,
            seq: sent,
            at: 0,
            healthy: None,
        };
        if client
            .publish(topic.clone(), QoS::AtMostOnce, false, hb.to_cbor())
            .await
            .is_ok()
        {
            sent += 1;
        }
    }
    poller.abort();
    (sent, disconnects.load(Ordering::Relaxed))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

#[tokio::main]
async fn main() {
    let a = Arc::new(args());
    let stop = Arc::new(AtomicBool::new(false));
    let devices: Vec<_> = (0..a.devices)
        .map(|n| tokio::spawn(device(a.clone(), n, stop.clone())))
        .collect();
    let flooder = a
        .flood
        .then(|| tokio::spawn(flood(a.clone(), stop.clone())));
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut sent = 0;
    for d in devices {
        let (lat, n) = d.await.unwrap();
        all.extend(lat);
        sent += n;
    }
    all.sort_by(f64::total_cmp);
    println!(
        "heartbeats: {sent} sent by {} devices, {} acked, {} lost",
        a.devices,
        all.len(),
        sent - all.len() as u64
    );
    println!(
        "ack latency ms: p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}",
        percentile(&all, 0.5),
        percentile(&all, 0.9),
        percentile(&all, 0.99),
        all.last().copied().unwrap_or(f64::NAN)
    );
    if let Some(f) = flooder {
        let (n, disconnects) = f.await.unwrap();
        println!(
            "flood: {n} messages handed to the connection ({:.0}/s), {disconnects} disconnections",
            n as f64 / a.seconds as f64
        );
    }
}

//! Issue 19.4–19.6: one client or one device must never hurt the fleet. Idle and stalled HTTP
//! connections are closed, connection caps refuse beyond their limit while the other listener
//! keeps working, a device publishing beyond its budget is dropped, counted and disconnected,
//! and the audit events a device causes are bounded.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ota_core::wire::{DeviceId, Heartbeat, PROTOCOL_VERSION, TopicKind, Topics, WireMessage};
use ota_server::config::LimitsConfig;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::fleet::{World, wait_for};
use crate::sim::{Behavior, Sim, running_of};
use crate::util::{Options, TOKEN, TestServer};

/// Bound on anything that takes a moment (a failure guard, not a timed assertion).
const PATIENCE: Duration = Duration::from_secs(30);

fn limits(edit: impl FnOnce(&mut LimitsConfig)) -> Options {
    let mut limits = LimitsConfig::default();
    edit(&mut limits);
    Options {
        limits: Some(limits),
        ..Options::default()
    }
}

/// A TCP connection to `to` from the loopback address `from` (127.0.0.N: another "client").
async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::from(from), 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// Everything the server sends until it closes the connection (fails the test if it never
/// does).
async fn until_closed(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let read = tokio::time::timeout(PATIENCE, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server never closed the connection");
    String::from_utf8_lossy(&got).into_owned()
}

/// Whether a fresh connection from `from` is refused (a bare 503, then closed). Sends nothing,
/// so the server's close cannot reset unread data away.
async fn refused_from(from: [u8; 4], to: SocketAddr) -> bool {
    let mut s = connect_from(from, to).await;
    until_closed(&mut s).await.starts_with("HTTP/1.1 503")
}

/// `GET /healthz` over a fresh connection from `from`: the status line.
async fn healthz_from(from: [u8; 4], to: SocketAddr) -> String {
    let mut s = connect_from(from, to).await;
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    until_closed(&mut s)
        .await
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// One `/metrics` counter.
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
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Connects a plain MQTT client to the front door; `None` if the connection is refused or
/// closed before the CONNACK.
async fn mqtt_connect(t: &TestServer, id: &str) -> Option<(AsyncClient, rumqttc::EventLoop)> {
    let (host, port) = t.mqtt();
    let mut options = MqttOptions::new(id, host, port);
    options.set_keep_alive(Duration::from_secs(60));
    let (client, mut eventloop) = AsyncClient::new(options, 1024);
    let connected = tokio::time::timeout(PATIENCE, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await
    .expect("no CONNACK nor error in time");
    connected.then_some((client, eventloop))
}

#[tokio::test]
async fn issue19_the_soft_open_file_limit_is_raised_to_the_hard_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let hard = getrlimit(Resource::Nofile).maximum;
    let low = hard.map_or(1024, |h| h.min(1024));
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(low),
            maximum: hard,
        },
    )
    .unwrap();
    let _t = TestServer::start().await;
    assert_eq!(getrlimit(Resource::Nofile).current, hard);
}

#[tokio::test]
async fn issue19_idle_http_connections_are_closed_after_the_header_timeout() {
    let t = TestServer::start_opts(limits(|l| l.http_header_timeout_secs = 1)).await;
    // A connection that never sends a byte, and one that stops mid-head (slowloris).
    let mut silent = TcpStream::connect(t.server.http_addr()).await.unwrap();
    let mut partial = TcpStream::connect(t.server.http_addr()).await.unwrap();
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nho")
        .await
        .unwrap();
    until_closed(&mut silent).await;
    until_closed(&mut partial).await;
    // A kept-alive connection is closed after its request once idle for as long.
    let mut kept = TcpStream::connect(t.server.http_addr()).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(until_closed(&mut kept).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn issue19_a_stalled_request_body_is_closed_after_the_idle_timeout() {
    let t = TestServer::start_opts(limits(|l| l.http_idle_timeout_secs = 1)).await;
    let mut s = TcpStream::connect(t.server.http_addr()).await.unwrap();
    let head = format!(
        "POST /api/v1/rollouts HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\n\
         content-type: application/json\r\ncontent-length: 1000\r\n\r\n{{"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // The body never comes: the server gives up on the connection.
    until_closed(&mut s).await;
}

#[tokio::test]
async fn issue19_http_caps_refuse_beyond_their_limit_while_others_are_served() {
    let t = TestServer::start_opts(limits(|l| {
        l.http_max_connections = 6;
        l.http_max_connections_per_ip = 3;
    }))
    .await;
    let addr = t.server.http_addr();
    // One address holds its 3 connections (idle, well within the header timeout).
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from([127, 0, 0, 2], addr).await);
    }
    // Its next one is refused...
    assert!(refused_from([127, 0, 0, 2], addr).await);
    // ...while another address is served.
    let status = healthz_from([127, 0, 0, 3], addr).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status:?}");
    // Fill the listener's cap from a third address: then everyone is refused...
    for _ in 0..3 {
        held.push(connect_from([127, 0, 0, 4], addr).await);
    }
    assert!(refused_from([127, 0, 0, 5], addr).await);
    // ...but MQTT has its own budget: a device still connects.
    assert!(mqtt_connect(&t, "issue19-http-full").await.is_some());
    // Closing connections frees their places.
    held.clear();
    wait_for("places freed", || async {
        healthz_from([127, 0, 0, 5], addr)
            .await
            .starts_with("HTTP/1.1 200")
    })
    .await;
}

#[tokio::test]
async fn issue19_mqtt_cap_refuses_beyond_its_limit_while_http_answers() {
    let t = TestServer::start_opts(limits(|l| l.mqtt_max_connections = 2)).await;
    let _a = mqtt_connect(&t, "issue19-a").await.unwrap();
    let _b = mqtt_connect(&t, "issue19-b").await.unwrap();
    assert!(mqtt_connect(&t, "issue19-c").await.is_none());
    let r = t.client.get(t.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

fn heartbeat(seq: u64) -> Vec<u8> {
    Heartbeat {
        v: PROTOCOL_VERSION,
        seq,
        at: 0,
        healthy: None,
    }
    .to_cbor()
}

#[tokio::test]
async fn issue19_a_flooding_device_is_dropped_counted_and_disconnected_at_the_front_door() {
    let t = TestServer::start_opts(limits(|l| {
        l.device_messages_per_minute = 1;
        l.device_message_burst = 5;
    }))
    .await;
    let (host, port) = t.mqtt();
    let sim = Sim::connect(&host, port, "issue19-calm-sim", &Topics::default()).await;
    let (flood, mut eventloop) = mqtt_connect(&t, "issue19-flood").await.unwrap();
    let topic = DeviceId::new("issue19-flood")
        .unwrap()
        .topic(TopicKind::Heartbeat);
    for seq in 0..100 {
        flood
            .publish(topic.clone(), QoS::AtMostOnce, false, heartbeat(seq))
            .await
            .unwrap();
    }
    // The front door closes the flooding connection...
    let closed = tokio::time::timeout(PATIENCE, async {
        loop {
            if eventloop.poll().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the flooding device was never disconnected");
    // ...having let through its burst and dropped the rest it read (counted).
    wait_for("drops counted", || async {
        metric(&t, "ota_mqtt_flood_disconnects_total").await == 1
    })
    .await;
    let dropped = metric(&t, "ota_mqtt_messages_dropped_total").await;
    assert!(dropped >= 6, "dropped {dropped}");
    // Another device is answered as ever.
    sim.add_devices(vec![crate::sim::device(
        "issue19-calm",
        "gw-a",
        None,
        Behavior::Succeed,
    )])
    .await;
    sim.heartbeat("issue19-calm", 7).await;
    wait_for("the calm device's ack", || async {
        sim.device("issue19-calm").unwrap().acks == [7]
    })
    .await;
}

#[tokio::test]
async fn issue19_the_server_drops_and_counts_what_a_device_sends_beyond_its_budget() {
    // Past the front door (as through an external broker): the server's own budget.
    let t = TestServer::start_opts(limits(|l| {
        l.device_messages_per_minute = 1;
        l.device_message_burst = 5;
    }))
    .await;
    let internal = t.server.mqtt_internal().unwrap().clone();
    let mut options = MqttOptions::new(
        "issue19-inside",
        internal.addr.ip().to_string(),
        internal.addr.port(),
    );
    options.set_credentials(internal.username.clone(), internal.password.clone());
    let (client, mut eventloop) = AsyncClient::new(options, 1024);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let topic = DeviceId::new("issue19-loud")
        .unwrap()
        .topic(TopicKind::Heartbeat);
    for seq in 0..50 {
        client
            .publish(topic.clone(), QoS::AtLeastOnce, false, heartbeat(seq))
            .await
            .unwrap();
    }
    wait_for("all 50 seen", || async {
        metric(&t, "ota_mqtt_messages_received_total").await
            + metric(&t, "ota_mqtt_messages_dropped_total").await
            >= 50
    })
    .await;
    // At most the burst (and a token a minute) reached the coordinator.
    let received = metric(&t, "ota_mqtt_messages_received_total").await;
    assert!((5..=6).contains(&received), "received {received}");
    assert!(metric(&t, "ota_mqtt_messages_dropped_total").await >= 44);
}

#[tokio::test]
async fn issue19_a_device_toggling_its_release_writes_a_bounded_number_of_drift_events() {
    let w = World::start(crate::fleet::Backend::Embedded, Options::default()).await;
    w.add(w.sim_devices(1, |_| Behavior::Succeed)).await;
    let id = w.id(0);
    for _ in 0..30 {
        w.sim.install_by_hand(&id, running_of(&w.new)).await;
        w.sim.install_by_hand(&id, running_of(&w.old)).await;
    }
    // The last report (back on the committed release) is handled: drift cleared...
    w.sim.install_by_hand(&id, running_of(&w.new)).await;
    wait_for("the 61 reports handled", || async {
        metric(&w.t, "ota_events_suppressed_total").await >= 2 * (30 - 10)
            && w.devices(&format!("id={id} and drifted")).await.len() == 1
    })
    .await;
    // ...and only the per-device, per-kind budget of events was written.
    let drifted = w.events(&format!("kind=device-drifted&device={id}")).await;
    let cleared = w
        .events(&format!("kind=device-drift-cleared&device={id}"))
        .await;
    assert!(drifted.len() <= 11, "{} drifted events", drifted.len());
    assert!(cleared.len() <= 11, "{} cleared events", cleared.len());
    w.finish().await;
}

//! How the coordinator's start waits for the broker (issue 15): a broker that answers at once
//! but refuses the subscriptions for a while (what a NATS cluster does for tens of seconds
//! after losing a node, docs/ha.md) gets the time to grant them on the same connection,
//! instead of the start giving up and starting the connection over.
//!
//! The broker here is a fault-injecting double: a minimal MQTT 3.1.1 server that answers
//! CONNECT, PINGREQ, QoS 1 PUBLISH and UNSUBSCRIBE as a broker does, and answers SUBSCRIBE
//! with the failure code 0x80 for every filter during the first `refuse_for` of each
//! connection, then grants QoS 1.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::util::{Options, TestServer};

/// The double broker: its address and what it saw.
struct RefusingBroker {
    addr: SocketAddr,
    /// Connections accepted.
    connections: Arc<AtomicUsize>,
    /// SUBSCRIBE packets answered with 0x80.
    refused: Arc<AtomicUsize>,
    /// SUBSCRIBE packets granted.
    granted: Arc<AtomicUsize>,
}

impl RefusingBroker {
    /// Listens on a free loopback port; each connection's subscriptions are refused for its
    /// first `refuse_for`.
    async fn start(refuse_for: Duration) -> RefusingBroker {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let broker = RefusingBroker {
            addr: listener.local_addr().unwrap(),
            connections: Arc::default(),
            refused: Arc::default(),
            granted: Arc::default(),
        };
        let (connections, refused, granted) = (
            broker.connections.clone(),
            broker.refused.clone(),
            broker.granted.clone(),
        );
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                connections.fetch_add(1, Ordering::SeqCst);
                let (refused, granted) = (refused.clone(), granted.clone());
                tokio::spawn(async move {
                    let _ = serve(stream, refuse_for, &refused, &granted).await;
                });
            }
        });
        broker
    }
}

/// One client connection: answers its packets until it leaves.
async fn serve(
    mut stream: TcpStream,
    refuse_for: Duration,
    refused: &AtomicUsize,
    granted: &AtomicUsize,
) -> std::io::Result<()> {
    let refusing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let window = refusing.clone();
    tokio::spawn(async move {
        tokio::time::sleep(refuse_for).await;
        window.store(false, Ordering::SeqCst);
    });
    loop {
        let first = stream.read_u8().await?;
        let body = read_body(&mut stream).await?;
        let packet_id = |at: usize| body.get(at..at + 2).map_or([0, 0], |b| [b[0], b[1]]);
        match first >> 4 {
            // CONNECT: accepted, no session present.
            1 => stream.write_all(&[0x20, 0x02, 0x00, 0x00]).await?,
            // PUBLISH: QoS 1 and 2 carry a packet id after the topic; acknowledge QoS 1.
            3 if (first >> 1) & 3 == 1 => {
                let topic_len = usize::from(u16::from_be_bytes(packet_id(0)));
                let [a, b] = packet_id(2 + topic_len);
                stream.write_all(&[0x40, 0x02, a, b]).await?;
            }
            // SUBSCRIBE: one return code per filter.
            8 => {
                let [a, b] = packet_id(0);
                let filters = count_filters(&body[2.min(body.len())..]);
                let now_refusing = refusing.load(Ordering::SeqCst);
                let code = if now_refusing { 0x80 } else { 0x01 };
                if now_refusing {
                    refused.fetch_add(1, Ordering::SeqCst);
                } else {
                    granted.fetch_add(1, Ordering::SeqCst);
                }
                let mut suback = vec![0x90, u8::try_from(2 + filters).unwrap(), a, b];
                suback.extend(std::iter::repeat_n(code, filters));
                stream.write_all(&suback).await?;
            }
            // UNSUBSCRIBE
            10 => {
                let [a, b] = packet_id(0);
                stream.write_all(&[0xB0, 0x02, a, b]).await?;
            }
            // PINGREQ
            12 => stream.write_all(&[0xD0, 0x00]).await?,
            // DISCONNECT
            14 => return Ok(()),
            _ => {}
        }
    }
}

/// Reads an MQTT remaining length (variable byte integer) and that many bytes.
async fn read_body(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = 0usize;
    for shift in (0..4).map(|i| 7 * i) {
        let byte = stream.read_u8().await?;
        len |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0; len];
    stream.read_exact(&mut body).await?;
    Ok(body)
}

/// The number of topic filters in a SUBSCRIBE payload (length-prefixed filter + QoS byte each).
fn count_filters(mut payload: &[u8]) -> usize {
    let mut n = 0;
    while let [hi, lo, rest @ ..] = payload {
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        let Some(rest) = rest.get(len + 1..) else {
            break;
        };
        payload = rest;
        n += 1;
    }
    n
}

/// Issue 15: the broker answers at once but refuses every subscription for 17 s (longer than
/// the 15 s the start gives a broker to answer): the coordinator starts on that same
/// connection once the subscriptions are granted. Before, the start gave up after 15 s and
/// began a new connection, whose subscriptions were refused again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue15_a_broker_that_answers_but_refuses_subscriptions_for_a_while_is_waited_for() {
    let broker = RefusingBroker::start(Duration::from_secs(17)).await;
    let started = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::spawn(TestServer::start_opts(Options {
            mqtt_url: Some(format!("mqtt://{}", broker.addr)),
            ..Options::default()
        })),
    )
    .await;
    let seen = || {
        format!(
            "connections {}, subscriptions refused {}, granted {}",
            broker.connections.load(Ordering::SeqCst),
            broker.refused.load(Ordering::SeqCst),
            broker.granted.load(Ordering::SeqCst)
        )
    };
    let t = match started {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => panic!("the server did not start ({}): {e}", seen()),
        Err(_) => panic!("no coordinator within 90 s ({})", seen()),
    };
    assert!(t.server.fleet().shared().coordination().leader);
    assert_eq!(
        broker.connections.load(Ordering::SeqCst),
        1,
        "the start began its connection over"
    );
    assert!(
        broker.refused.load(Ordering::SeqCst) >= 2,
        "the subscriptions were refused and asked again"
    );
    assert!(broker.granted.load(Ordering::SeqCst) >= 1);
    t.server.shutdown().await.unwrap();
}

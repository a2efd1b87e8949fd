//! The embedded MQTT broker: started on port 0, speaks MQTT 3.1.1.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::util::TestServer;

/// CONNECT (clean session, keep-alive 60 s, client id `test`) → expects CONNACK accepted;
/// then SUBSCRIBE / PUBLISH retained / receive it back.
#[tokio::test]
async fn embedded_broker_accepts_mqtt_clients() {
    let t = TestServer::start().await;
    let addr = t.server.mqtt_addr().unwrap();
    assert_ne!(addr.port(), 0);

    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connect = [
        0x10, 16, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x04, b't',
        b'e', b's', b't',
    ];
    s.write_all(&connect).await.unwrap();
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);

    // SUBSCRIBE id 1 to `ota/t`, QoS 0.
    let subscribe = [
        0x82, 10, 0x00, 0x01, 0x00, 0x05, b'o', b't', b'a', b'/', b't', 0x00,
    ];
    s.write_all(&subscribe).await.unwrap();
    let mut suback = [0u8; 5];
    s.read_exact(&mut suback).await.unwrap();
    assert_eq!(suback, [0x90, 0x03, 0x00, 0x01, 0x00]);

    // PUBLISH QoS 0 `ota/t` "hi" and receive it.
    let publish = [
        0x30, 9, 0x00, 0x05, b'o', b't', b'a', b'/', b't', b'h', b'i',
    ];
    s.write_all(&publish).await.unwrap();
    let mut got = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, publish);
}

/// Issue 19.10: an MQTT 3.1 CONNECT (protocol "MQIsdp", level 3) gets CONNACK 1 (unacceptable
/// protocol version), as documented, not 5.
#[tokio::test]
async fn issue19_mqtt31_connect_gets_connack_1() {
    let t = TestServer::start().await;
    let addr = t.server.mqtt_addr().unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connect = [
        0x10, 18, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x02, 0x00, 0x3c, 0x00,
        0x04, b't', b'e', b's', b't',
    ];
    s.write_all(&connect).await.unwrap();
    let mut connack = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut connack))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x01]);
    t.server.shutdown().await.unwrap();
}

//! Issue 7: MQTT over TLS with device authentication and the per-device ACL, on the embedded
//! broker's front door and on a real Mosquitto configured as `docs/security.md` says.
//!
//! One scenario runs against both brokers and asserts only what both show: a device cannot
//! publish as another device (the server-side observer never receives it), cannot read another
//! device's desired state, and cannot log in with another device's password. The embedded
//! broker closes the offending connection; Mosquitto drops the publish silently and delivers
//! nothing on a denied subscription.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use firmware_fixtures::pki::TestCa;
use ota_core::wire::{DeviceId, TopicKind};
use ota_server::broker::credentials::DeviceSecret;
use ota_server::broker::{BrokerSettings, DoorAuth, EmbeddedBroker};
use ota_server::config::Config;
use ota_server::fleet::Shared;
use ota_server::{RunningServer, Server, ServerError};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS, TlsConfiguration,
    Transport,
};
use tempfile::TempDir;
use tokio::sync::mpsc;

/// Bound on anything that takes a moment (a failure guard, not a timed assertion).
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);

/// A broker under test: where devices connect (TLS, pinned CA), their passwords, and a
/// privileged observer that stands for the fleet server.
pub(crate) struct AclBroker {
    pub(crate) addr: SocketAddr,
    pub(crate) tls: Arc<rustls::ClientConfig>,
    pub(crate) secret: DeviceSecret,
    pub(crate) observer: MqttOptions,
    /// Mosquitto's client-certificate listener and the CA its devices' certificates come from.
    pub(crate) cert_listener: Option<(SocketAddr, TestCa)>,
    pub(crate) _dir: TempDir,
    pub(crate) _mosquitto: Option<tokio::process::Child>,
}

impl AclBroker {
    /// TLS options for device `id` logging in with `password`.
    fn device(&self, id: &str, password: &str) -> MqttOptions {
        let mut o = MqttOptions::new(id, self.addr.ip().to_string(), self.addr.port());
        o.set_keep_alive(Duration::from_secs(30))
            .set_credentials(id, password)
            .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                self.tls.clone(),
            )));
        o
    }

    /// Device `id` with its own password.
    pub(crate) fn own(&self, id: &DeviceId) -> MqttOptions {
        self.device(id.as_str(), &self.secret.password(id))
    }
}

/// Connects and waits for the CONNACK (or the refusal).
pub(crate) async fn connect(
    options: MqttOptions,
) -> Result<(AsyncClient, EventLoop), ConnectionError> {
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    loop {
        let event = tokio::time::timeout(PATIENCE, eventloop.poll())
            .await
            .expect("no CONNACK nor error in time");
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok((client, eventloop)),
            Ok(_) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Polls until the broker acknowledges packet `pkid`-less work (a PUBACK or SUBACK) or the
/// connection ends; answers whether it was acknowledged.
pub(crate) async fn acked_or_closed(eventloop: &mut EventLoop, suback: bool) -> bool {
    loop {
        let event = tokio::time::timeout(PATIENCE, eventloop.poll())
            .await
            .expect("no acknowledgement nor disconnection in time");
        match event {
            Ok(Event::Incoming(Packet::PubAck(_))) if !suback => return true,
            Ok(Event::Incoming(Packet::SubAck(_))) if suback => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
}

/// The observer: subscribed to every device-to-server topic of the fleet; every message goes
/// to the channel.
async fn observe(options: MqttOptions) -> mpsc::UnboundedReceiver<(String, Vec<u8>)> {
    let (client, mut eventloop) = connect(options).await.expect("observer connects");
    let filters = [TopicKind::Reported, TopicKind::Status, TopicKind::Events]
        .map(|k| rumqttc::SubscribeFilter::new(k.fleet_filter(), QoS::AtLeastOnce));
    client.subscribe_many(filters).await.unwrap();
    assert!(acked_or_closed(&mut eventloop, true).await);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _client = client;
        while let Ok(event) = eventloop.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = event
                && tx.send((p.topic, p.payload.to_vec())).is_err()
            {
                return;
            }
        }
    });
    rx
}

/// Publishes a retained `payload` on `topic` with the observer's login (the server's role) as
/// another client id (one id has one connection).
async fn publish_retained(mut options: MqttOptions, topic: String, payload: &[u8]) {
    options.set_client_id(format!("{}-publisher", options.client_id()));
    assert!(publish_as(options, topic, true, payload).await);
}

/// Connects with `options`, publishes `payload` on `topic` (QoS 1) and tells whether the
/// broker acknowledged it (rather than closing the connection).
async fn publish_as(options: MqttOptions, topic: String, retain: bool, payload: &[u8]) -> bool {
    let (client, mut eventloop) = connect(options).await.unwrap();
    client
        .publish(topic, QoS::AtLeastOnce, retain, payload.to_vec())
        .await
        .unwrap();
    acked_or_closed(&mut eventloop, false).await
}

/// The scenario both brokers must pass (see the module documentation).
pub(crate) async fn acl_scenario(broker: &AclBroker, prefix: &str) {
    let a = DeviceId::new(&format!("{prefix}-a")).unwrap();
    let b = DeviceId::new(&format!("{prefix}-b")).unwrap();
    // The retained desired states first: with Mosquitto's use_username_as_clientid the
    // publisher's connection (the server's login) would take the observer's session over.
    publish_retained(
        broker.observer.clone(),
        b.topic(TopicKind::Desired),
        b"desired-for-b",
    )
    .await;
    publish_retained(
        broker.observer.clone(),
        a.topic(TopicKind::Desired),
        b"desired-for-a",
    )
    .await;
    let mut seen = observe(broker.observer.clone()).await;

    // A cannot report as B: the observer never sees any of these.
    for kind in [TopicKind::Reported, TopicKind::Status, TopicKind::Events] {
        // Mosquitto acknowledges and drops it; the front door closes the connection.
        let _ = publish_as(broker.own(&a), b.topic(kind), false, b"forged").await;
    }
    // Nor publish a server-to-device topic (its own desired state).
    let _ = publish_as(broker.own(&a), a.topic(TopicKind::Desired), true, b"forged").await;
    assert!(
        publish_as(
            broker.own(&a),
            a.topic(TopicKind::Reported),
            false,
            b"sentinel"
        )
        .await,
        "A's own report is acknowledged"
    );
    loop {
        let (topic, payload) = tokio::time::timeout(PATIENCE, seen.recv())
            .await
            .expect("the observer sees A's own report")
            .unwrap();
        assert!(
            !topic.contains(b.as_str()) && payload != b"forged",
            "a forged message reached the server: {topic}"
        );
        if topic == a.topic(TopicKind::Reported) && payload == b"sentinel" {
            break;
        }
    }

    // A cannot read B's desired state, directly or through a wildcard: before its own
    // desired state arrives (or the connection is closed), nothing of B's arrives.
    for filter in [
        b.topic(TopicKind::Desired),
        TopicKind::Desired.fleet_filter(),
    ] {
        let (client, mut eventloop) = connect(broker.own(&a)).await.unwrap();
        client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        client
            .subscribe(a.topic(TopicKind::Desired), QoS::AtLeastOnce)
            .await
            .unwrap();
        loop {
            let event = tokio::time::timeout(PATIENCE, eventloop.poll())
                .await
                .expect("A's own desired state or a disconnection");
            match event {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    assert_ne!(p.payload.as_ref(), b"desired-for-b", "A read B's desired");
                    assert_ne!(p.topic, b.topic(TopicKind::Desired));
                    if p.topic == a.topic(TopicKind::Desired) {
                        assert_eq!(p.payload.as_ref(), b"desired-for-a");
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }

    // A's own subscription works when it asks only for its own topics.
    let (client, mut eventloop) = connect(broker.own(&a)).await.unwrap();
    client
        .subscribe(a.topic(TopicKind::Desired), QoS::AtLeastOnce)
        .await
        .unwrap();
    loop {
        let event = tokio::time::timeout(PATIENCE, eventloop.poll())
            .await
            .expect("A's own desired state");
        if let Event::Incoming(Packet::Publish(p)) = event.expect("A stays connected") {
            assert_eq!(p.payload.as_ref(), b"desired-for-a");
            break;
        }
    }

    // Another device's password and a made-up one fail.
    let b_password = broker.secret.password(&b);
    for options in [
        broker.device(a.as_str(), &b_password),
        broker.device(a.as_str(), &"0".repeat(64)),
    ] {
        match connect(options).await {
            Err(ConnectionError::ConnectionRefused(_)) => {}
            Err(e) => panic!("refused with a CONNACK, got {e}"),
            Ok(_) => panic!("a wrong password was accepted"),
        }
    }
}

/// A TEST-ONLY CA, a broker certificate and a device secret in a fresh directory.
struct Pki {
    dir: TempDir,
    ca: TestCa,
    secret: DeviceSecret,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "broker").unwrap();
    let secret = DeviceSecret::load_or_create(&dir.path().join("device.secret")).unwrap();
    Pki { dir, ca, secret }
}

async fn embedded(
    pki: Pki,
    auth: impl FnOnce(&Pki) -> (DoorAuth, Option<PathBuf>),
) -> (AclBroker, Arc<Shared>) {
    let server = pki.ca.server_cert().unwrap();
    let (auth, client_ca) = auth(&pki);
    let tls = server_tls(&server.cert, &server.key, client_ca.as_deref());
    let shared = Arc::new(Shared::default());
    let broker = EmbeddedBroker::start_with(
        BrokerSettings::open(([127, 0, 0, 1], 0).into())
            .with_tls(tls)
            .with_auth(auth),
        shared.clone(),
    )
    .await
    .unwrap();
    let internal = broker.internal().clone();
    // rumqttd's private listener is on a loopback address of its own (on Linux), where no
    // other server's listener in this test process can take its port.
    assert!(internal.addr.ip().is_loopback(), "{}", internal.addr);
    if cfg!(target_os = "linux") {
        assert_ne!(
            internal.addr.ip(),
            std::net::Ipv4Addr::LOCALHOST,
            "{}",
            internal.addr
        );
    }
    let mut observer = MqttOptions::new(
        "observer",
        internal.addr.ip().to_string(),
        internal.addr.port(),
    );
    observer.set_credentials(internal.username, internal.password);
    let tls = client_tls(&pki.ca.ca_file(), None);
    let addr = broker.local_addr();
    // The broker lives until the test binary exits (rumqttd cannot stop).
    std::mem::forget(broker);
    (
        AclBroker {
            addr,
            tls,
            secret: pki.secret,
            observer,
            cert_listener: None,
            _dir: pki.dir,
            _mosquitto: None,
        },
        shared,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue7_embedded_broker_confines_devices_to_their_topics() {
    let (broker, shared) = embedded(pki(), |p| (DoorAuth::Password(p.secret.clone()), None)).await;
    acl_scenario(&broker, "acl").await;
    // The front door also binds the client id to the login: B's own credentials under A's
    // client id are refused (Mosquitto would accept them and take over A's session).
    let b = DeviceId::new("acl-b").unwrap();
    let mut options = broker.device("acl-a", "unused");
    options.set_credentials(b.as_str(), broker.secret.password(&b));
    assert!(matches!(
        connect(options).await,
        Err(ConnectionError::ConnectionRefused(_))
    ));
    // Every refusal is metered.
    assert!(shared.counters.mqtt_acl_denied.load(Ordering::Relaxed) >= 6);
    assert!(shared.counters.mqtt_auth_refused.load(Ordering::Relaxed) >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue7_client_certificates_identify_devices() {
    let pki = pki();
    let broker_ca = pki.ca.ca_file();
    let devices = TestCa::new(pki.dir.path(), "devices").unwrap();
    let a_cert = devices.client_cert("cert-a").unwrap();
    let (broker, shared) =
        embedded(pki, |_| (DoorAuth::Certificate, Some(devices.ca_file()))).await;
    let with_cert = |id: &str| {
        let cfg = client_tls(&broker_ca, Some((&a_cert.cert, &a_cert.key)));
        let mut o = MqttOptions::new(id, broker.addr.ip().to_string(), broker.addr.port());
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(cfg)));
        o
    };
    let mut seen = observe(broker.observer.clone()).await;

    // CN = client id: accepted, and its own report reaches the server.
    let (client, mut eventloop) = connect(with_cert("cert-a")).await.unwrap();
    client
        .publish(
            "ota/v1/devices/cert-a/reported",
            QoS::AtLeastOnce,
            false,
            b"from-a".to_vec(),
        )
        .await
        .unwrap();
    assert!(acked_or_closed(&mut eventloop, false).await);
    let (topic, payload) = tokio::time::timeout(PATIENCE, seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("ota/v1/devices/cert-a/reported", &b"from-a"[..])
    );

    // A's certificate under another client id: refused.
    assert!(matches!(
        connect(with_cert("cert-b")).await,
        Err(ConnectionError::ConnectionRefused(_))
    ));
    // No certificate at all: the TLS handshake fails.
    let no_cert = broker.device("cert-a", "irrelevant");
    assert!(connect(no_cert).await.is_err());
    assert!(shared.counters.mqtt_auth_refused.load(Ordering::Relaxed) >= 2);
}

/// The password of the `ota-server` user of the test Mosquitto.
pub(crate) const MOSQUITTO_SERVER_PASSWORD: &str = "observer-password-0123456789";

/// `OTA_TEST_MOSQUITTO_BIN` (else `mosquitto` on the `PATH`, as the e2e broker-restart test
/// does), and `OTA_TEST_MOSQUITTO_PASSWD_BIN` (else `mosquitto_passwd` on the `PATH`).
pub(crate) fn mosquitto_bins() -> (PathBuf, PathBuf) {
    let bin = std::env::var("OTA_TEST_MOSQUITTO_BIN")
        .map_or_else(|_| PathBuf::from("mosquitto"), PathBuf::from);
    let passwd = std::env::var("OTA_TEST_MOSQUITTO_PASSWD_BIN")
        .map_or_else(|_| PathBuf::from("mosquitto_passwd"), PathBuf::from);
    (bin, passwd)
}

/// The ACL file of `docs/security.md` (kept identical: the test reads it from the docs).
pub(crate) fn documented_acl() -> String {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/mosquitto/acl"),
    )
    .unwrap();
    assert!(doc.contains("pattern read ota/v1/devices/%u/desired"));
    doc
}

async fn mosquitto(pki: Pki, devices: &[&DeviceId]) -> AclBroker {
    let (bin, passwd_bin) = mosquitto_bins();
    let dir = pki.dir.path();
    let server = pki.ca.server_cert().unwrap();
    let passwd = dir.join("passwd");
    let server_password = MOSQUITTO_SERVER_PASSWORD;
    let mut users: Vec<(String, String)> = vec![("ota-server".into(), server_password.into())];
    users.extend(
        devices
            .iter()
            .map(|d| (d.as_str().to_owned(), pki.secret.password(d))),
    );
    for (i, (user, password)) in users.iter().enumerate() {
        let mut cmd = std::process::Command::new(&passwd_bin);
        cmd.arg("-b");
        if i == 0 {
            cmd.arg("-c");
        }
        let status = cmd.arg(&passwd).arg(user).arg(password).status().unwrap();
        assert!(status.success(), "mosquitto_passwd failed");
    }
    std::fs::write(dir.join("acl"), documented_acl()).unwrap();
    let [port, internal_port, cert_port] = [(); 3].map(|()| free_port());
    let devices_ca = TestCa::new(dir, "devices").unwrap();
    // The TLS listener of docs/security.md (passwords), the client-certificate listener of
    // docs/mosquitto/mosquitto.conf, and a plain loopback listener for the observer (same
    // password file and ACL).
    let conf = format!(
        "per_listener_settings false\nallow_anonymous false\npassword_file {passwd}\n\
         acl_file {acl}\npersistence false\nuser root\n\
         listener {port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n\
         listener {cert_port} 127.0.0.1\ncafile {devices}\ncertfile {cert}\nkeyfile {key}\n\
         require_certificate true\nuse_identity_as_username true\n\
         listener {internal_port} 127.0.0.1\n",
        passwd = passwd.display(),
        acl = dir.join("acl").display(),
        ca = pki.ca.ca_file().display(),
        devices = devices_ca.ca_file().display(),
        cert = server.cert.display(),
        key = server.key.display(),
    );
    std::fs::write(dir.join("mosquitto.conf"), conf).unwrap();
    let child = tokio::process::Command::new(&bin)
        .arg("-c")
        .arg(dir.join("mosquitto.conf"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the mosquitto binary (OTA_TEST_MOSQUITTO_BIN or mosquitto on the PATH) runs");
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok()
            && tokio::net::TcpStream::connect(("127.0.0.1", internal_port))
                .await
                .is_ok()
            && tokio::net::TcpStream::connect(("127.0.0.1", cert_port))
                .await
                .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut observer = MqttOptions::new("observer", "127.0.0.1", internal_port);
    observer.set_credentials("ota-server", server_password);
    let tls = client_tls(&pki.ca.ca_file(), None);
    AclBroker {
        addr,
        tls,
        secret: pki.secret,
        observer,
        cert_listener: Some((([127, 0, 0, 1], cert_port).into(), devices_ca)),
        _dir: pki.dir,
        _mosquitto: Some(child),
    }
}

/// A free TCP port on loopback (bound, read and released).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fleet server whose `[mqtt]` is `mqtt_toml` (relative paths against `dir`).
pub(crate) async fn server_with(dir: &Path, mqtt_toml: &str) -> Result<RunningServer, ServerError> {
    Server::start(write_server_toml(dir, mqtt_toml)).await
}

/// Writes `dir/server.toml` with `[mqtt]` = `mqtt_toml` and trust keys 1-3; answers it loaded.
pub(crate) fn write_server_toml(dir: &Path, mqtt_toml: &str) -> Config {
    let keys = crate::util::write_trust_keys(dir);
    let keys: Vec<String> = keys
        .iter()
        .map(|k| format!("{:?}", k.display().to_string()))
        .collect();
    let text = format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n[mqtt]\n{mqtt_toml}\n[trust]\nkeys = [{}]\n",
        keys.join(", ")
    );
    std::fs::write(dir.join("server.toml"), &text).unwrap();
    Config::load(&dir.join("server.toml")).unwrap()
}

/// The server's client speaks TLS to an external broker, pins its CA and presents a client
/// certificate: with the right CA it connects (the fleet coordinator's subscriptions are
/// acknowledged by a broker that demands client certificates), with another CA it does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue7_server_connects_to_a_tls_broker_with_a_pinned_ca() {
    let pki = pki();
    let dir = pki.dir.path();
    let cert = pki.ca.server_cert().unwrap();
    let clients = TestCa::new(dir, "clients").unwrap();
    let server_cert = clients.client_cert("ota-server").unwrap();
    let tls = server_tls(&cert.cert, &cert.key, Some(&clients.ca_file()));
    let broker = EmbeddedBroker::start_with(
        BrokerSettings::open(([127, 0, 0, 1], 0).into()).with_tls(tls),
        Arc::new(Shared::default()),
    )
    .await
    .unwrap();
    std::fs::write(dir.join("mqtt.password"), "not-checked-by-an-open-broker\n").unwrap();
    let port = broker.local_addr().port();
    let other = TestCa::new(dir, "other").unwrap();
    let s = |p: &Path| format!("{:?}", p.display().to_string());
    let toml = |ca: &Path| {
        format!(
            "url = \"mqtts://127.0.0.1:{port}\"\nca_file = {}\nclient_cert = {}\nclient_key = {}\n\
             username = \"ota-server\"\npassword_file = \"mqtt.password\"",
            s(ca),
            s(&server_cert.cert),
            s(&server_cert.key),
        )
    };
    let server = server_with(dir, &toml(&pki.ca.ca_file())).await.unwrap();
    assert_eq!(server.mqtt_addr(), None, "no embedded broker with mqtt.url");
    server.shutdown().await.unwrap();
    match server_with(dir, &toml(&other.ca_file())).await {
        Err(ServerError::Fleet(_)) => {}
        Err(e) => panic!("expected a broker connection failure, got {e}"),
        Ok(_) => panic!("a broker certificate from another CA was trusted"),
    }
    std::mem::forget(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Mosquitto binary (OTA_TEST_MOSQUITTO_BIN, default mosquitto on the PATH)"]
async fn issue7_mosquitto_with_the_documented_acl_confines_devices() {
    let a = DeviceId::new("acl-a").unwrap();
    let b = DeviceId::new("acl-b").unwrap();
    let broker = mosquitto(pki(), &[&a, &b]).await;
    acl_scenario(&broker, "acl").await;
    // The fleet server itself logs in over TLS with its user and password file (the ACL's
    // `ota-server` user): its subscriptions to every device's topics are granted.
    let dir = broker._dir.path();
    std::fs::write(
        dir.join("server.password"),
        format!("{MOSQUITTO_SERVER_PASSWORD}\n"),
    )
    .unwrap();
    let toml = format!(
        "url = \"mqtts://127.0.0.1:{}\"\nca_file = {:?}\nusername = \"ota-server\"\npassword_file = \"server.password\"",
        broker.addr.port(),
        dir.join("broker.ca.pem").display().to_string()
    );
    let server = server_with(dir, &toml).await.unwrap();
    server.shutdown().await.unwrap();

    // Client certificates (use_identity_as_username): the CN is the ACL's %u, so A's
    // certificate cannot report as B either.
    let (cert_addr, devices_ca) = broker.cert_listener.as_ref().unwrap();
    let a_cert = devices_ca.client_cert(a.as_str()).unwrap();
    let tls = client_tls(
        &dir.join("broker.ca.pem"),
        Some((&a_cert.cert, &a_cert.key)),
    );
    let mut options = MqttOptions::new(a.as_str(), cert_addr.ip().to_string(), cert_addr.port());
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    let mut seen = observe(broker.observer.clone()).await;
    let (client, mut eventloop) = connect(options).await.unwrap();
    for (device, payload) in [(&b, &b"forged-by-cert"[..]), (&a, &b"cert-sentinel"[..])] {
        client
            .publish(
                device.topic(TopicKind::Reported),
                QoS::AtLeastOnce,
                false,
                payload.to_vec(),
            )
            .await
            .unwrap();
        assert!(acked_or_closed(&mut eventloop, false).await);
    }
    loop {
        let (topic, payload) = tokio::time::timeout(PATIENCE, seen.recv())
            .await
            .expect("the observer sees A's report")
            .unwrap();
        assert_ne!(payload, b"forged-by-cert", "{topic}");
        if payload == b"cert-sentinel" {
            assert_eq!(topic, a.topic(TopicKind::Reported));
            break;
        }
    }
}

/// The front door's TLS configuration of a test broker.
fn server_tls(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Arc<rustls::ServerConfig> {
    Arc::new(ota_server::tls::server_config(cert, key, client_ca).unwrap())
}

/// A test client's TLS configuration: `ca` pinned, an optional certificate and key.
pub(crate) fn client_tls(ca: &Path, identity: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
    let files = ota_server::tls::TlsFiles {
        ca_file: Some(ca),
        client_cert: identity.map(|(cert, _)| cert),
        client_key: identity.map(|(_, key)| key),
    };
    Arc::new(ota_server::tls::client_config(files).unwrap())
}

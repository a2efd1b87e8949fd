//! Issue 12.16 and 12.17: `docs/mosquitto/mosquitto.conf` as shipped, on the real Mosquitto,
//! with device passwords made by the documented recipe (`mqtt.device_secret_file` next to
//! `mqtt.url`, the secret `ota server device-credential` derives them from).
//!
//! The file is used as shipped: only the values its header names as site-specific are
//! replaced (the port of `listener 8883`, the paths under `/etc/mosquitto/` and
//! `/var/lib/mosquitto/`). The test then asserts that Mosquitto listens on that port and
//! nowhere else (no default listener on 1883), that the per-device ACL holds, that the fleet
//! server's connection has no queue limit, and that the fleet server connects with it.

use std::collections::BTreeSet;
use std::path::Path;

use firmware_fixtures::pki::TestCa;
use ota_core::wire::{DeviceId, TopicKind};
use ota_server::broker::credentials::DeviceSecret;
use rumqttc::{Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};

use crate::mqtt_acl::{
    AclBroker, MOSQUITTO_SERVER_PASSWORD, PATIENCE, acked_or_closed, acl_scenario, client_tls,
    connect, documented_acl, free_port, mosquitto_bins, write_server_toml,
};

/// The shipped file.
const SHIPPED: &str = include_str!("../../../docs/mosquitto/mosquitto.conf");

/// The shipped file with its documented site-specific values replaced, nothing else.
fn site_conf(dir: &Path, port: u16) -> String {
    assert_eq!(
        SHIPPED
            .lines()
            .filter(|l| l.starts_with("listener "))
            .count(),
        1,
        "one listener"
    );
    assert!(SHIPPED.contains("\nlistener 8883\n"));
    SHIPPED
        .replace("/etc/mosquitto/", &format!("{}/", dir.display()))
        .replace(
            "/var/lib/mosquitto/",
            &format!("{}/", dir.join("data").display()),
        )
        .replace("\nlistener 8883\n", &format!("\nlistener {port}\n"))
}

/// The TCP ports process `pid` listens on (its socket inodes in `/proc/net/tcp{,6}`).
fn listening_ports(pid: u32) -> BTreeSet<u16> {
    let inodes: BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| {
            let link = std::fs::read_link(fd.ok()?.path()).ok()?;
            let link = link.to_str()?;
            Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let mut ports = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is field 1 (ADDR:PORT in hex), st field 3 (0A = LISTEN), inode 9.
            if fields.len() > 9 && fields[3] == "0A" && inodes.contains(fields[9]) {
                let port = fields[1].rsplit(':').next().unwrap();
                ports.insert(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports
}

/// Files readable by the user Mosquitto drops to when the test runs as root (the shipped
/// file's `chown root:mosquitto` + 0640, without needing that user here).
#[cfg(unix)]
fn readable_by_all(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Mosquitto started with the shipped file for devices `devices`, whose passwords come from
/// the `device_secret_file` of a server.toml that names the external broker.
async fn shipped_mosquitto(devices: &[&DeviceId]) -> AclBroker {
    let (bin, passwd_bin) = mosquitto_bins();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let tls_dir = root.join("tls");
    std::fs::create_dir_all(&tls_dir).unwrap();
    std::fs::create_dir_all(root.join("data")).unwrap();
    let broker_ca = TestCa::new(root, "broker").unwrap();
    let devices_ca = TestCa::new(root, "devices").unwrap();
    let cert = broker_ca.server_cert().unwrap();
    std::fs::copy(&cert.cert, tls_dir.join("broker.crt")).unwrap();
    std::fs::copy(&cert.key, tls_dir.join("broker.key")).unwrap();
    std::fs::copy(devices_ca.ca_file(), tls_dir.join("devices-ca.pem")).unwrap();
    std::fs::write(root.join("ota.acl"), documented_acl()).unwrap();

    let port = free_port();
    // The documented recipe: the server's config names the external broker and the secret.
    std::fs::write(
        root.join("server.password"),
        format!("{MOSQUITTO_SERVER_PASSWORD}\n"),
    )
    .unwrap();
    let config = write_server_toml(root, &server_mqtt_toml(root, port));
    let secret_file = config
        .mqtt
        .device_secret_file()
        .expect("device_secret_file next to mqtt.url");
    let secret = DeviceSecret::load_or_create(secret_file).unwrap();
    let passwd = root.join("ota.passwd");
    let mut users = vec![(
        "ota-server".to_owned(),
        MOSQUITTO_SERVER_PASSWORD.to_owned(),
    )];
    users.extend(
        devices
            .iter()
            .map(|d| (d.as_str().to_owned(), secret.password(d))),
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
    #[cfg(unix)]
    {
        for d in [root, tls_dir.as_path()] {
            readable_by_all(d, 0o755);
        }
        readable_by_all(&root.join("data"), 0o777);
        for f in ["ota.passwd", "ota.acl", "tls/broker.crt", "tls/broker.key"] {
            readable_by_all(&root.join(f), 0o644);
        }
        readable_by_all(&tls_dir.join("devices-ca.pem"), 0o644);
    }
    std::fs::write(root.join("mosquitto.conf"), site_conf(root, port)).unwrap();
    let log = std::fs::File::create(root.join("mosquitto.log")).unwrap();
    let mut child = tokio::process::Command::new(&bin)
        .arg("-c")
        .arg(root.join("mosquitto.conf"))
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("the mosquitto binary (OTA_TEST_MOSQUITTO_BIN or mosquitto on the PATH) runs");

    let mut observer = MqttOptions::new("ota-server", "127.0.0.1", port);
    observer
        .set_credentials("ota-server", MOSQUITTO_SERVER_PASSWORD)
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            client_tls(&broker_ca.ca_file(), None),
        )));
    // Ready when it answers a CONNECT: every listener has been opened by then.
    let mut ready = false;
    for _ in 0..200 {
        if let Some(status) = child.try_wait().unwrap() {
            let log = std::fs::read_to_string(root.join("mosquitto.log")).unwrap_or_default();
            panic!("mosquitto exited with {status} on the shipped configuration:\n{log}");
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
            && connect(observer.clone()).await.is_ok()
        {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(ready, "mosquitto does not answer on port {port}");
    assert_eq!(
        listening_ports(child.id().unwrap()),
        BTreeSet::from([port]),
        "Mosquitto listens only where the shipped file says (no default listener on 1883)"
    );
    AclBroker {
        addr: ([127, 0, 0, 1], port).into(),
        tls: client_tls(&broker_ca.ca_file(), None),
        secret,
        observer,
        cert_listener: None,
        _dir: dir,
        _mosquitto: Some(child),
    }
}

/// `[mqtt]` of the fleet server in front of the shipped Mosquitto on `port`.
fn server_mqtt_toml(root: &Path, port: u16) -> String {
    format!(
        "url = \"mqtts://127.0.0.1:{port}\"\nca_file = {:?}\nusername = \"ota-server\"\n\
         password_file = \"server.password\"\ndevice_secret_file = \"mqtt-device.secret\"",
        root.join("broker.ca.pem").display().to_string()
    )
}

/// More QoS 1 messages than Mosquitto's default per-client queue (1000) holds.
const QUEUED: usize = 1500;

/// The fleet server's login keeps a persistent session while it is away; `device` publishes
/// [`QUEUED`] reports, then a sentinel once the server is back: every report arrives before
/// the sentinel (`max_queued_messages 0`).
async fn server_queue_is_unlimited(broker: &AclBroker, device: &DeviceId) {
    let topic = device.topic(TopicKind::Reported);
    let mut persistent = broker.observer.clone();
    persistent.set_clean_session(false);
    let (server, mut eventloop) = connect(persistent.clone()).await.unwrap();
    server.subscribe(&topic, QoS::AtLeastOnce).await.unwrap();
    assert!(acked_or_closed(&mut eventloop, true).await);
    server.disconnect().await.unwrap();
    while eventloop.poll().await.is_ok() {}

    let (client, mut device_loop) = connect(broker.own(device)).await.unwrap();
    let acks = tokio::spawn(async move {
        let mut acked = 0;
        while acked < QUEUED {
            match device_loop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("the device lost its connection: {e}"),
            }
        }
        device_loop
    });
    for i in 0..QUEUED {
        client
            .publish(&topic, QoS::AtLeastOnce, false, i.to_string())
            .await
            .unwrap();
    }
    let mut device_loop = tokio::time::timeout(PATIENCE, acks)
        .await
        .expect("the broker acknowledges every report")
        .unwrap();

    let (_server, mut eventloop) = connect(persistent).await.unwrap();
    client
        .publish(&topic, QoS::AtLeastOnce, false, "sentinel")
        .await
        .unwrap();
    assert!(acked_or_closed(&mut device_loop, false).await);
    let mut received = BTreeSet::new();
    loop {
        let event = tokio::time::timeout(PATIENCE, eventloop.poll())
            .await
            .expect("the queued reports and the sentinel arrive")
            .expect("the server's connection stays up");
        if let Event::Incoming(Packet::Publish(p)) = event {
            if p.payload.as_ref() == b"sentinel" {
                break;
            }
            received.insert(p.payload.to_vec());
        }
    }
    assert_eq!(
        received.len(),
        QUEUED,
        "reports queued for the fleet server while it was away"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Mosquitto binary (OTA_TEST_MOSQUITTO_BIN, default mosquitto on the PATH)"]
async fn issue12_the_shipped_mosquitto_conf_runs_as_documented() {
    assert!(SHIPPED.lines().any(|l| l == "max_inflight_messages 0"));
    let a = DeviceId::new("conf-a").unwrap();
    let b = DeviceId::new("conf-b").unwrap();
    let broker = shipped_mosquitto(&[&a, &b]).await;
    acl_scenario(&broker, "conf").await;
    server_queue_is_unlimited(&broker, &a).await;
    // The fleet server itself connects with the config whose device_secret_file made the
    // device passwords.
    let root = broker._dir.path();
    let config = write_server_toml(root, &server_mqtt_toml(root, broker.addr.port()));
    let server = ota_server::Server::start(config).await.unwrap();
    server.shutdown().await.unwrap();
}

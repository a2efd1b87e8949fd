//! Issue 7: real agents and the real fleet server over MQTT with TLS (a pinned TEST-ONLY CA),
//! through the embedded broker's front door with device authentication and the ACL on.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use firmware_fixtures::pki::TestCa;
use ota_core::wire::DeviceId;
use ota_demo::device::Device;
use ota_demo::lab::{BrokerToml, Lab, LabOptions};
use ota_server::broker::credentials::DeviceSecret;
use ota_server::config::BrokerSecurity;
use serde_json::json;

use crate::world::{converged, finished, release, rollout, wait_device, wait_rollout};

/// A TOML basic string of a path.
fn q(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

/// A lab of `devices` devices whose broker front door speaks TLS with `broker` CA's
/// certificate; `security` and `agent` add the authentication of each side.
async fn tls_lab(
    devices: usize,
    broker: &TestCa,
    security: impl FnOnce(&mut BrokerSecurity),
    agent: impl Fn(&str) -> String + Send + Sync + 'static,
) -> Lab {
    let cert = broker.server_cert().unwrap();
    let mut broker_security = BrokerSecurity::default();
    broker_security.tls_cert = Some(cert.cert);
    broker_security.tls_key = Some(cert.key);
    security(&mut broker_security);
    let ca_file = broker.ca_file();
    let opts = LabOptions {
        devices,
        image_size: 64 * 1024,
        id_prefix: "tls".into(),
        broker_security,
        agent_broker_toml: Some(BrokerToml(Arc::new(move |id| {
            format!("ca_file = {}\n{}", q(&ca_file), agent(id))
        }))),
        ..LabOptions::default()
    };
    let lab = Lab::start(opts).await.unwrap();
    assert!(lab.server().unwrap().mqtt_tls());
    lab
}

/// Stops the device, rewrites `[broker]` keys of its configuration and starts it again.
async fn restart_with(device: &mut Device, changes: &[(&str, String)]) {
    device.stop().await.unwrap();
    let path = device.root().join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text: Vec<String> = text
        .lines()
        .map(|l| {
            changes
                .iter()
                .find(|(key, _)| l.starts_with(&format!("{key} = ")))
                .map_or_else(|| l.to_owned(), |(key, value)| format!("{key} = {value}"))
        })
        .collect();
    std::fs::write(&path, text.join("\n")).unwrap();
    device.start().await.unwrap();
}

/// Waits until the device's agent reports a broker error containing `needle`.
async fn broker_error(device: &Device, needle: &str) -> String {
    wait_device(device, |d| {
        d.status()
            .is_some_and(|s| !s.connected && s.broker_error.is_some_and(|e| e.contains(needle)))
    })
    .await;
    device.status().unwrap().broker_error.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue7_agents_update_over_tls_with_device_passwords() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "broker").unwrap();
    let secret_file = dir.path().join("mqtt-device.secret");
    let secret = DeviceSecret::load_or_create(&secret_file).unwrap();
    let passwords: PathBuf = dir.path().join("passwords");
    std::fs::create_dir_all(&passwords).unwrap();
    let password_dir = passwords.clone();
    let mut lab = tls_lab(
        2,
        &ca,
        |s| s.device_secret_file = Some(secret_file.clone()),
        move |id| {
            let file = password_dir.join(id);
            let password = secret.password(&DeviceId::new(id).unwrap());
            std::fs::write(&file, format!("{password}\n")).unwrap();
            format!("username = {id:?}\npassword_file = {}", q(&file))
        },
    )
    .await;

    // A whole update over TLS: desired states reach the agents, their reports the server.
    let v2 = release(&lab, "2.0.0", true).await;
    let id = rollout(&lab, &v2, &[100], json!({})).await;
    let done = wait_rollout(&lab, id, finished).await;
    assert_eq!(done["status"], "completed", "{done:#}");
    converged(&lab, &v2.digest).await;

    // A broker certificate from another CA is refused, and the agent says why.
    let other = TestCa::new(dir.path(), "other").unwrap();
    let device = &mut lab.devices_mut()[0];
    restart_with(device, &[("ca_file", q(&other.ca_file()))]).await;
    let error = broker_error(device, "certificate").await;
    assert!(error.contains("UnknownIssuer"), "{error}");

    // The right CA but another device's password: refused by the broker.
    restart_with(device, &[("ca_file", q(&ca.ca_file()))]).await;
    let other_id = lab.devices()[1].id().to_owned();
    let device = &mut lab.devices_mut()[0];
    restart_with(device, &[("password_file", q(&passwords.join(&other_id)))]).await;
    let error = broker_error(device, "refused").await;
    assert!(error.contains("BadUserNamePassword"), "{error}");
    lab.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue7_agents_log_in_with_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "broker").unwrap();
    let devices = Arc::new(TestCa::new(dir.path(), "devices").unwrap());
    let devices_ca = devices.ca_file();
    let issuer = devices.clone();
    // Lab::start returns once every device is online: their status went through the front
    // door under their certificate's identity.
    let mut lab = tls_lab(
        1,
        &ca,
        |s| s.tls_client_ca = Some(devices_ca),
        move |id| {
            let cert = issuer.client_cert(id).unwrap();
            format!(
                "client_cert = {}\nclient_key = {}",
                q(&cert.cert),
                q(&cert.key)
            )
        },
    )
    .await;
    let v2 = release(&lab, "2.0.0", true).await;
    rollout(&lab, &v2, &[100], json!({})).await;
    converged(&lab, &v2.digest).await;

    // A certificate issued for another device id is refused.
    let stranger = devices.client_cert("someone-else").unwrap();
    let device = &mut lab.devices_mut()[0];
    restart_with(
        device,
        &[
            ("client_cert", q(&stranger.cert)),
            ("client_key", q(&stranger.key)),
        ],
    )
    .await;
    let error = broker_error(device, "refused").await;
    assert!(error.contains("NotAuthorized"), "{error}");
    lab.shutdown().await.unwrap();
}

/// The demo's lab (what `ota demo` runs) has its agents log in with device passwords over plain
/// TCP, so the broker's ACL is on there too: a client without a password is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue7_the_demo_lab_authenticates_its_devices() {
    let mut lab = Lab::start(LabOptions {
        devices: 2,
        image_size: 64 * 1024,
        id_prefix: "acl".into(),
        ..LabOptions::default()
    })
    .await
    .unwrap();
    let server = lab.server().unwrap();
    assert!(!server.mqtt_tls());
    let addr = server.mqtt_addr().unwrap();
    let device = lab.devices()[0].id().to_owned();
    let options = rumqttc::MqttOptions::new(device, addr.ip().to_string(), addr.port());
    let (_client, mut eventloop) = rumqttc::AsyncClient::new(options, 8);
    let refused = loop {
        match tokio::time::timeout(crate::world::PATIENCE, eventloop.poll())
            .await
            .expect("a CONNACK")
        {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => break false,
            Ok(_) => {}
            Err(rumqttc::ConnectionError::ConnectionRefused(_)) => break true,
            Err(e) => panic!("{e}"),
        }
    };
    assert!(refused, "a device without its password was accepted");
    lab.shutdown().await.unwrap();
}

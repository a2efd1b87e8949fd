//! The MQTT link's configuration: broker URLs, TLS files; and the machine configuration built
//! from the file (maintenance windows, power policy, retries).

use std::path::Path;
use std::time::Duration;

use ota_agent::agent::machine_config;
use ota_agent::config::AgentConfig;
use ota_agent::mqtt::{MqttError, parse_broker_url};
use ota_agent::{Agent, AgentError};
use ota_core::update::Weekdays;
use ota_core::wire::DeviceId;

use crate::fleet::{Device, options, release};

#[test]
fn broker_urls_parse_with_default_ports() {
    assert_eq!(
        parse_broker_url("mqtt://broker.local").unwrap(),
        ("broker.local".to_owned(), 1883, false)
    );
    assert_eq!(
        parse_broker_url("mqtts://ota.example.com").unwrap(),
        ("ota.example.com".to_owned(), 8883, true)
    );
    assert_eq!(
        parse_broker_url("mqtt://127.0.0.1:1884/").unwrap(),
        ("127.0.0.1".to_owned(), 1884, false)
    );
    assert_eq!(
        parse_broker_url("mqtts://[::1]:9883").unwrap(),
        ("::1".to_owned(), 9883, true)
    );
    for bad in [
        "http://broker",
        "mqtt://",
        "mqtt://host:port",
        "mqtt://user@host",
        "mqtt://host/path",
        "mqtt://[::1",
        "mqtt://:1883",
    ] {
        assert!(
            matches!(parse_broker_url(bad), Err(MqttError::BadUrl { .. })),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn tls_files_are_checked_at_start() {
    let v1 = release("1.0.0", 1, 10_000);
    let dev = Device::new("tls", "mqtts://127.0.0.1:9", &v1, "").await;

    let mut config = dev.config.clone();
    config.broker.ca_file = Some(dev.root().join("missing-ca.pem"));
    match Agent::start(config, options()).await {
        Err(AgentError::Mqtt(MqttError::TlsFile { path, .. })) => {
            assert!(path.ends_with("missing-ca.pem"))
        }
        other => panic!("{other:?}"),
    }

    let mut config = dev.config.clone();
    let junk = dev.root().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    config.broker.ca_file = Some(junk);
    assert!(matches!(
        Agent::start(config, options()).await,
        Err(AgentError::Mqtt(MqttError::Tls(_)))
    ));

    // A real CA bundle: the agent starts (and keeps trying to reach the broker).
    let bundle = Path::new("/etc/ssl/certs/ca-certificates.crt");
    if bundle.exists() {
        let mut config = dev.config.clone();
        config.broker.ca_file = Some(bundle.to_path_buf());
        let agent = Agent::start(config, options()).await.unwrap();
        agent.shutdown().await.unwrap();
    }
}

#[test]
fn the_machine_configuration_follows_the_file() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config.toml");
    let config = AgentConfig::load(&path).unwrap();
    let trust = firmware_fixtures::trust_set(1).unwrap();
    let m = machine_config(&config, DeviceId::new(&config.device_id).unwrap(), trust);
    assert_eq!(m.trial_timeout, Duration::from_secs(600));
    assert_eq!(m.trial_min, Duration::from_secs(120));
    assert_eq!(m.probe_failures_to_rollback, 8);
    assert_eq!(m.heartbeat_interval, Duration::from_secs(30));
    assert_eq!(m.probe_interval, Duration::from_secs(15));
    assert_eq!(m.cache_capacity, 5);
    assert_eq!(m.power.min_battery_percent, 20);
    assert_eq!(m.power.require_charging_below_percent, 50);
    assert_eq!(m.retry.max_retries, 8);
    assert_eq!(m.retry.initial_backoff, Duration::from_secs(5));
    assert_eq!(m.disk_margin_bytes, 16 * 1024 * 1024);
    assert_eq!(m.windows.utc_offset_minutes, 60);
    assert_eq!(m.windows.windows.len(), 2);
    assert_eq!(m.windows.windows[0].days, Weekdays::WORKDAYS);
    assert_eq!(m.windows.windows[0].start_minute, 60);
    assert_eq!(m.windows.windows[0].end_minute, 300);
    assert_eq!(m.windows.windows[1].days, Weekdays::WEEKEND);
    assert_eq!(m.windows.windows[1].start_minute, 22 * 60);
}

/// Issue 19.10: the broker password file is read with a cap and must be a regular file (a
/// device file or a huge file used to be read whole: 2.4 GB of memory in 3 s).
#[tokio::test]
async fn issue19_the_password_file_is_capped_and_must_be_a_regular_file() {
    let v1 = release("1.0.0", 1, 10_000);
    let dev = Device::new("pw", "mqtt://127.0.0.1:9", &v1, "").await;
    let start = |file: std::path::PathBuf| {
        let mut c = dev.config.clone();
        c.broker.username = Some("dev".to_owned());
        c.broker.password_file = Some(file);
        async move { Agent::start(c, options()).await }
    };
    let refused = |r: Result<ota_agent::AgentHandle, AgentError>| match r {
        Err(AgentError::Mqtt(MqttError::PasswordFile { source, .. })) => source.to_string(),
        Err(other) => panic!("unexpected {other}"),
        Ok(_) => panic!("accepted"),
    };
    assert!(refused(start("/dev/zero".into()).await).contains("regular file"));
    let big = dev.root().join("big.password");
    std::fs::write(&big, vec![b'x'; 4097]).unwrap();
    assert!(refused(start(big).await).contains("larger"));
    let ok = dev.root().join("ok.password");
    std::fs::write(&ok, "secret\n").unwrap();
    start(ok).await.unwrap().shutdown().await.unwrap();
}

/// Issue 19.10: the factory artifact is copied with a cap at its signed size and must be a
/// regular file (a device file as source used to write 10 GB in 20 s).
#[tokio::test]
async fn issue19_the_factory_artifact_copy_is_capped() {
    let v1 = release("1.0.0", 1, 10_000);
    let dev = Device::new("factorycap", "mqtt://127.0.0.1:9", &v1, "").await;
    let start = |artifact: std::path::PathBuf| {
        let mut c = dev.config.clone();
        if let Some(f) = c.factory.as_mut() {
            f.artifact = artifact;
        }
        async move { Agent::start(c, options()).await }
    };
    match start("/dev/zero".into()).await {
        Err(AgentError::Factory { reason, .. }) => assert!(reason.contains("regular"), "{reason}"),
        Err(other) => panic!("unexpected {other}"),
        Ok(_) => panic!("accepted"),
    }
    // A longer file: refused after reading one byte beyond the signed size.
    let long = dev.root().join("long-artifact");
    let mut bytes = v1.artifact.clone();
    bytes.extend_from_slice(&[0u8; 100_000]);
    std::fs::write(&long, &bytes).unwrap();
    match start(long).await {
        Err(AgentError::Factory { reason, .. }) => {
            assert!(reason.contains("10001 bytes"), "{reason}")
        }
        Err(other) => panic!("unexpected {other}"),
        Ok(_) => panic!("accepted"),
    }
    assert!(
        !dev.data()
            .join("cache")
            .join(v1.digest().to_string())
            .exists()
    );
}

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePublicKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ota_agent::config::{
    AgentConfig, ConfigError, HealthConfig, InstallerConfig, KeySource, TimeOfDay, Weekday,
};
use ota_agent::install::Installer;
use ota_agent::storage::FsStorage;

use crate::util::tempdir;

const MINIMAL: &str = r#"
device_id = "dev-1"
hardware_class = "board-a"
[trust]
keys = [{ file = "k.pem" }]
[broker]
url = "mqtt://127.0.0.1:1883"
[installer]
kind = "command"
program = "/bin/true"
"#;

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config.toml")
}

fn pem(seed: u8) -> String {
    SigningKey::from_bytes(&[seed; 32])
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap()
}

#[test]
fn the_documented_example_parses() {
    let c = AgentConfig::load(&example_path()).unwrap();
    assert_eq!(c.device_id, "gateway-0042");
    assert_eq!(c.labels.get("ring").map(String::as_str), Some("canary"));
    assert_eq!(c.trial_timeout, Duration::from_secs(600));
    assert_eq!(c.cache_size, 5);
    // Key files are resolved against the config file's directory.
    assert_eq!(
        c.trust.keys,
        vec![KeySource::File(
            example_path().parent().unwrap().join("keys/release-1.pem")
        )]
    );
    assert_eq!(c.maintenance.utc_offset_minutes, 60);
    let w = &c.maintenance.windows;
    assert_eq!(w.len(), 2);
    assert_eq!(w[1].days, vec![Weekday::Sat, Weekday::Sun]);
    assert_eq!(w[1].start, TimeOfDay::parse("22:00").unwrap());
    assert_eq!(w[1].end.minutes(), 6 * 60);
    assert!(matches!(
        &c.installer,
        InstallerConfig::Files { restart_command: Some(argv), timeout: Some(t), .. }
            if argv[0] == "systemctl" && *t == Duration::from_secs(120)
    ));
    assert!(matches!(c.health, Some(HealthConfig::Http { .. })));
    assert_eq!(
        c.health.as_ref().unwrap().interval(),
        Duration::from_secs(15)
    );
    assert_eq!(c.download.max_backoff, Duration::from_secs(600));
    assert_eq!(c.download.downloader_config().chunk_size, 65536);
    assert!(matches!(
        c.installer.build(FsStorage::shared(), &c.data_dir),
        Installer::Files(_)
    ));
    c.health.as_ref().unwrap().build().unwrap();
}

#[test]
fn a_minimal_config_takes_the_defaults() {
    let c = AgentConfig::from_toml_str(MINIMAL).unwrap();
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/ota-agent"));
    assert_eq!(c.cache_size, 5);
    assert_eq!(c.trial_timeout, Duration::from_secs(600));
    assert_eq!(c.trial_min, Duration::ZERO);
    assert_eq!(c.probe_failures_to_rollback, 0);
    assert_eq!(c.trust.threshold, 1);
    assert_eq!(c.power.min_battery_percent, 20);
    assert_eq!(
        c.power.power_supply_path,
        PathBuf::from("/sys/class/power_supply")
    );
    assert!(c.maintenance.windows.is_empty());
    assert!(c.health.is_none());
    assert_eq!(c.download.retries, 8);
    assert_eq!(c.power.require_charging_below_percent, 0);
    assert!(matches!(
        c.installer.build(Arc::new(FsStorage), &c.data_dir),
        Installer::Command(_)
    ));
}

fn parse_err(toml: &str) -> ConfigError {
    AgentConfig::from_toml_str(toml).unwrap_err()
}

fn key_of(e: &ConfigError) -> &str {
    match e {
        ConfigError::Parse { key, .. } | ConfigError::Invalid { key, .. } => key,
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn errors_name_the_key() {
    let cases: &[(&str, &str)] = &[
        ("cache_size = \"many\"", "cache_size"),
        ("trial_timeout = \"soon\"", "trial_timeout"),
        (
            "[power]\nmin_battery_percent = 300",
            "power.min_battery_percent",
        ),
        (
            "[power]\nmin_battery_percent = 101",
            "power.min_battery_percent",
        ),
        ("[download]\nchunk_size = 0", "download.chunk_size"),
        ("[download]\nbackof = \"1s\"", "download.backof"),
        (
            "[maintenance]\n[[maintenance.windows]]\nstart = \"25:00\"\nend = \"01:00\"",
            "maintenance.windows[0].start",
        ),
        (
            "[maintenance]\n[[maintenance.windows]]\ndays = []\nstart = \"01:00\"\nend = \"02:00\"",
            "maintenance.windows[0].days",
        ),
        (
            "[maintenance]\n[[maintenance.windows]]\ndays = [\"someday\"]\nstart = \"01:00\"\nend = \"02:00\"",
            "maintenance.windows[0].days[0]",
        ),
        ("cache_size = 0", "cache_size"),
        ("colour = \"blue\"", "colour"),
    ];
    for (extra, key) in cases {
        let e = parse_err(&format!("{extra}\n{MINIMAL}"));
        // Tables must come after top-level keys: append tables after MINIMAL instead.
        let e = if extra.starts_with('[') {
            parse_err(&format!("{MINIMAL}\n{extra}"))
        } else {
            e
        };
        assert_eq!(key_of(&e), *key, "{extra}: {e}");
    }
    // The message says what is wrong.
    let e = parse_err(&format!("{MINIMAL}\n[download]\nbackof = \"1s\""));
    assert!(e.to_string().contains("backof"), "{e}");
}

#[test]
fn inconsistent_values_are_refused() {
    let with_threshold = MINIMAL.replace("[trust]", "[trust]\nthreshold = 2");
    assert_eq!(key_of(&parse_err(&with_threshold)), "trust.threshold");
    let bad_broker = MINIMAL.replace("mqtt://127.0.0.1:1883", "http://broker");
    assert_eq!(key_of(&parse_err(&bad_broker)), "broker.url");
    let endless_soak = format!("trial_min = \"10m\"\n{MINIMAL}");
    assert_eq!(key_of(&parse_err(&endless_soak)), "trial_min");
    let bad_id = MINIMAL.replace("dev-1", "dev/1");
    assert_eq!(key_of(&parse_err(&bad_id)), "device_id");
    let cert_only = MINIMAL.replace("[broker]", "[broker]\nclient_cert = \"/etc/c.pem\"");
    assert_eq!(key_of(&parse_err(&cert_only)), "broker.client_cert");
    let bad_installer = MINIMAL.replace("kind = \"command\"", "kind = \"magic\"");
    assert_eq!(key_of(&parse_err(&bad_installer)), "installer.kind");
    let stray = MINIMAL.replace(
        "program = \"/bin/true\"",
        "program = \"/bin/true\"\nroot = \"/x\"",
    );
    assert_eq!(key_of(&parse_err(&stray)), "installer");
    assert!(matches!(
        parse_err("not toml at all ["),
        ConfigError::Parse { .. }
    ));
}

#[test]
fn every_installer_and_probe_kind_parses() {
    let files = MINIMAL.replace(
        "kind = \"command\"\nprogram = \"/bin/true\"",
        "kind = \"files\"\nroot = \"/opt/app\"",
    );
    let c = AgentConfig::from_toml_str(&files).unwrap();
    assert_eq!(
        c.installer,
        InstallerConfig::Files {
            root: "/opt/app".into(),
            restart_command: None,
            timeout: None
        }
    );
    for (probe, interval) in [
        ("kind = \"command\"\nprogram = \"/bin/true\"", 10),
        (
            "kind = \"http\"\nurl = \"http://127.0.0.1/h\"\ninterval = \"3s\"",
            3,
        ),
        (
            "kind = \"heartbeat\"\npath = \"/run/hb\"\nfreshness = \"20s\"",
            10,
        ),
    ] {
        let c = AgentConfig::from_toml_str(&format!("{MINIMAL}\n[health]\n{probe}")).unwrap();
        let h = c.health.unwrap();
        assert_eq!(h.interval(), Duration::from_secs(interval));
        h.build().unwrap();
    }
}

#[test]
fn trust_keys_load_from_files_and_inline_pem() {
    let dir = tempdir();
    fs::write(dir.path().join("k.pem"), pem(1)).unwrap();
    let inline = pem(2);
    let text = MINIMAL.replace(
        "keys = [{ file = \"k.pem\" }]",
        &format!(
            "threshold = 2\nkeys = [{{ file = \"k.pem\" }}, {{ pem = \"\"\"\n{inline}\"\"\" }}]"
        ),
    );
    let path = dir.path().join("config.toml");
    fs::write(&path, text).unwrap();
    let c = AgentConfig::load(&path).unwrap();
    let trust = c.trust_set().unwrap();
    assert_eq!(trust.threshold(), 2);
    assert_eq!(trust.keys().count(), 2);

    // A missing file, a bad PEM, a duplicate key: typed errors naming the entry.
    fs::remove_file(dir.path().join("k.pem")).unwrap();
    assert!(matches!(
        c.trust_set(),
        Err(ConfigError::KeyFile { key, .. }) if key == "trust.keys[0]"
    ));
    fs::write(
        dir.path().join("k.pem"),
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    assert!(matches!(
        c.trust_set(),
        Err(ConfigError::KeyPem { key, .. }) if key == "trust.keys[0]"
    ));
    fs::write(dir.path().join("k.pem"), &inline).unwrap();
    assert!(matches!(c.trust_set(), Err(ConfigError::Trust(_))));
}

#[test]
fn a_missing_file_is_a_read_error() {
    let dir = tempdir();
    assert!(matches!(
        AgentConfig::load(&dir.path().join("none.toml")),
        Err(ConfigError::Read { .. })
    ));
}

/// Issue 7: a world-writable configuration or trust key file is refused (anyone on the device
/// could make the agent trust their key); fixing the mode makes it load.
#[test]
fn issue7_world_writable_config_and_trust_files_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir();
    let key = dir.path().join("k.pem");
    fs::write(&key, pem(1)).unwrap();
    let path = dir.path().join("config.toml");
    fs::write(&path, MINIMAL).unwrap();
    let mode = |p: &Path, m: u32| fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();

    mode(&path, 0o666);
    assert!(matches!(
        AgentConfig::load(&path),
        Err(ConfigError::WorldWritable { path: p }) if p == path
    ));
    mode(&path, 0o644);
    let c = AgentConfig::load(&path).unwrap();
    mode(&key, 0o646);
    assert!(matches!(
        c.trust_set(),
        Err(ConfigError::WorldWritable { path: p }) if p == key
    ));
    mode(&key, 0o644);
    c.trust_set().unwrap();
}

/// The `config_parse` fuzz target's invariant (a config that parses is usable), checked by
/// hand with its binary: `device_id = "."` parsed, then the agent refused it at start-up; an
/// over-long hardware class or label parsed, then the fleet server refused every report.
#[test]
fn issue7_fuzz_config_invariant_dot_device_id_and_oversized_report_fields_are_refused() {
    let with = |from: &str, to: &str| MINIMAL.replacen(from, to, 1);
    let input: &[u8] = b"device_id = \".\"\nhardware_class = \"board-a\"\n[trust]\nkeys = [{ file = \"k.pem\" }]\n[broker]\nurl = \"mqtt://127.0.0.1:1883\"\n[installer]\nkind = \"command\"\nprogram = \"/bin/true\"\n";
    let refused = |text: &str, key: &str| match AgentConfig::from_toml_str(text) {
        Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{text}"),
        other => panic!("{text}: {other:?}"),
    };
    refused(std::str::from_utf8(input).unwrap(), "device_id");
    refused(&with("\"dev-1\"", "\"..\""), "device_id");
    refused(
        &with("\"dev-1\"", &format!("\"{}\"", "d".repeat(129))),
        "device_id",
    );
    refused(
        &with("\"board-a\"", &format!("\"{}\"", "b".repeat(129))),
        "hardware_class",
    );
    let long_label = format!("{MINIMAL}[labels]\nsite = \"{}\"\n", "x".repeat(257));
    refused(&long_label, "labels.site");
    let many: String = (0..33).map(|i| format!("l{i} = \"v\"\n")).collect();
    refused(&format!("{MINIMAL}[labels]\n{many}"), "labels");
    // At the limits it still parses.
    let ok = format!(
        "{}[labels]\n{}\n",
        with("\"board-a\"", &format!("\"{}\"", "b".repeat(128))),
        (0..32)
            .map(|i| format!("l{i} = \"{}\"", "v".repeat(256)))
            .collect::<Vec<_>>()
            .join("\n")
    );
    AgentConfig::from_toml_str(&ok).unwrap();
}

#[test]
fn issue7_broker_password_file_is_checked_and_passwords_stay_out_of_debug() {
    let with = |extra: &str| MINIMAL.replace("[installer]", &format!("{extra}\n[installer]"));
    let c =
        AgentConfig::from_toml_str(&with("username = \"dev-1\"\npassword = \"hunter2-secret\""))
            .unwrap();
    let debug = format!("{c:?}");
    assert!(!debug.contains("hunter2-secret"), "{debug}");
    assert!(debug.contains("<redacted>"));
    let c = AgentConfig::from_toml_str(&with(
        "username = \"dev-1\"\npassword_file = \"/etc/ota-agent/mqtt.password\"",
    ))
    .unwrap();
    assert_eq!(
        c.broker.password_file.as_deref(),
        Some(Path::new("/etc/ota-agent/mqtt.password"))
    );
    let e = parse_err(&with("password_file = \"p\""));
    assert_eq!(key_of(&e), "broker.password");
    let e = parse_err(&with(
        "username = \"u\"\npassword = \"x\"\npassword_file = \"p\"",
    ));
    assert_eq!(key_of(&e), "broker.password_file");
}

/// Issue 7: `[download]` TLS keys: relative paths follow the config file, a client
/// certificate needs its key, and the downloader gets the pinned CA and `require_https`.
#[test]
fn issue7_download_tls_keys() {
    let dir = tempdir();
    let text = format!(
        "{MINIMAL}\n[download]\nca_file = \"tls/ca.pem\"\nclient_cert = \"/abs/dev.crt\"\n\
         client_key = \"tls/dev.key\"\nrequire_https = true\n"
    );
    let path = dir.path().join("config.toml");
    fs::write(&path, text).unwrap();
    let c = AgentConfig::load(&path).unwrap();
    let d = c.download.downloader_config();
    assert_eq!(d.ca_file, Some(dir.path().join("tls/ca.pem")));
    assert_eq!(d.client_cert, Some(PathBuf::from("/abs/dev.crt")));
    assert_eq!(d.client_key, Some(dir.path().join("tls/dev.key")));
    assert!(d.require_https);
    let defaults = AgentConfig::from_toml_str(MINIMAL).unwrap();
    assert!(!defaults.download.downloader_config().require_https);

    let cert_only = format!("{MINIMAL}\n[download]\nclient_cert = \"/etc/c.pem\"\n");
    assert_eq!(key_of(&parse_err(&cert_only)), "download.client_cert");
}

/// Issue 7: relative `[broker]` TLS and password files follow the config file, like the
/// download ones (an agent started from another working directory finds them).
#[test]
fn issue7_relative_broker_files_follow_the_config_file() {
    let dir = tempdir();
    let text = MINIMAL.replacen(
        "url = \"mqtt://127.0.0.1:1883\"",
        "url = \"mqtts://127.0.0.1:8883\"\nca_file = \"tls/ca.pem\"\nclient_cert = \"tls/dev.crt\"\n\
         client_key = \"/abs/dev.key\"\nusername = \"dev-1\"\npassword_file = \"secret\"",
        1,
    );
    let path = dir.path().join("config.toml");
    fs::write(&path, text).unwrap();
    let b = AgentConfig::load(&path).unwrap().broker;
    assert_eq!(b.ca_file, Some(dir.path().join("tls/ca.pem")));
    assert_eq!(b.client_cert, Some(dir.path().join("tls/dev.crt")));
    assert_eq!(b.client_key, Some(PathBuf::from("/abs/dev.key")));
    assert_eq!(b.password_file, Some(dir.path().join("secret")));
}

/// Issue 7: the MQTT password never shows in `Debug` (nor does a password put in the broker
/// URL appear in the error that refuses it).
#[test]
fn issue7_debug_and_errors_show_no_broker_password() {
    let text = MINIMAL.replacen(
        "url = \"mqtt://127.0.0.1:1883\"",
        "url = \"mqtt://127.0.0.1:1883\"\nusername = \"dev-1\"\npassword = \"mqtt-pass-SECRET\"",
        1,
    );
    let c = AgentConfig::from_toml_str(&text).unwrap();
    assert_eq!(c.broker.password.as_deref(), Some("mqtt-pass-SECRET"));
    let debug = format!("{c:?}");
    assert!(!debug.contains("SECRET"), "{debug}");
    assert!(
        debug.contains("<redacted>") && debug.contains("dev-1"),
        "{debug}"
    );

    let in_url = MINIMAL.replacen(
        "mqtt://127.0.0.1",
        "mqtt://dev-1:url-pass-SECRET@127.0.0.1",
        1,
    );
    let e = parse_err(&in_url);
    assert_eq!(key_of(&e), "broker.url");
    assert!(!e.to_string().contains("SECRET"), "{e}");

    // Issue 15: every failover URL is checked the same way, and named by its index.
    let failover = |urls: &str| {
        MINIMAL.replacen(
            "[broker]",
            &format!("[broker]\nfailover_urls = [{urls}]"),
            1,
        )
    };
    let ok = AgentConfig::from_toml_str(&failover("\"mqtts://b2:8883\", \"mqtt://b3\"")).unwrap();
    assert_eq!(ok.broker.failover_urls.len(), 2);
    let e = parse_err(&failover("\"mqtt://b2\", \"mqtt://dev-1:pw-SECRET@b3\""));
    assert_eq!(key_of(&e), "broker.failover_urls[1]");
    assert!(!e.to_string().contains("SECRET"), "{e}");
    let e = parse_err(&failover("\"http://b2\""));
    assert_eq!(key_of(&e), "broker.failover_urls[0]");

    // Issue 15: the fleet's topic namespace.
    let prefix =
        |p: &str| MINIMAL.replacen("[broker]", &format!("[broker]\ntopic_prefix = {p:?}"), 1);
    let c = AgentConfig::from_toml_str(&prefix("acme/staging/ota/v1")).unwrap();
    assert_eq!(c.broker.topics().prefix(), "acme/staging/ota/v1");
    assert_eq!(
        AgentConfig::from_toml_str(MINIMAL).unwrap().broker.topics(),
        ota_core::wire::Topics::default()
    );
    for bad in ["", "a/+", "a/", "$SYS/x"] {
        assert_eq!(
            key_of(&parse_err(&prefix(bad))),
            "broker.topic_prefix",
            "{bad:?}"
        );
    }
}

/// Issue 19.10: the documented minimums are enforced, with a typed error naming the key.
#[test]
fn issue19_keep_alive_and_heartbeat_minimums_are_enforced() {
    let keep_alive =
        |v: &str| MINIMAL.replacen("[broker]", &format!("[broker]\nkeep_alive = \"{v}\""), 1);
    assert_eq!(key_of(&parse_err(&keep_alive("0s"))), "broker.keep_alive");
    assert_eq!(key_of(&parse_err(&keep_alive("4s"))), "broker.keep_alive");
    assert!(AgentConfig::from_toml_str(&keep_alive("5s")).is_ok());
    let heartbeat = |v: &str| format!("heartbeat_interval = \"{v}\"\n{MINIMAL}");
    assert_eq!(key_of(&parse_err(&heartbeat("1ns"))), "heartbeat_interval");
    assert_eq!(key_of(&parse_err(&heartbeat("99ms"))), "heartbeat_interval");
    assert!(AgentConfig::from_toml_str(&heartbeat("100ms")).is_ok());
}

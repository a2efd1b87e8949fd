//! The `ota-agent` binary: `status`, `check-power`, `--help`, one-line errors.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use ota_agent::Agent;

use crate::fleet::{Device, PATIENCE, options, release};

fn agent_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ota-agent"))
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["run", "--help"],
        vec!["status", "--help"],
        vec!["check-power", "--help"],
    ] {
        let out = agent_bin().args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("Usage: ota-agent"), "{args:?}: {text}");
    }
}

#[test]
fn errors_are_one_line() {
    let out = agent_bin()
        .args(["status", "--config", "/nonexistent/ota-agent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("/nonexistent/ota-agent.toml"), "{err}");
}

#[tokio::test]
async fn status_reads_the_journal_and_check_power_reads_sysfs() {
    let v1 = release("1.0.0", 1, 20_000);
    // No broker listens there: the agent starts anyway and keeps trying to connect.
    let extra = r#"
[power]
min_battery_percent = 30
power_supply_path = "{root}/power"
"#;
    let dev = Device::new("cli", "mqtt://127.0.0.1:9", &v1, extra).await;
    let config = dev.root().join("config.toml");

    // Before the first start: no state.
    let out = agent_bin()
        .args(["status", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("no agent state"));

    let agent = Agent::start(dev.config.clone(), options()).await.unwrap();
    agent.shutdown().await.unwrap();

    let out = agent_bin()
        .args(["status", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("running:     1.0.0"), "{text}");
    assert!(text.contains("known-good:  1.0.0"), "{text}");
    assert!(text.contains("trial:       none"), "{text}");

    let out = agent_bin()
        .args(["status", "--json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let digest = v1.digest().to_string();
    assert_eq!(json["running"]["version"], "1.0.0");
    assert_eq!(json["known_good"]["digest"], digest.as_str());
    assert_eq!(json["trial"], serde_json::Value::Null);
    assert_eq!(json["cache"][0]["digest"], digest.as_str());
    assert_eq!(json["cache"][0]["present"], true);
    assert_eq!(json["security_floor"], 1);

    // A battery at 25 %, discharging, below the policy's 30 %: the gate would defer.
    let bat = dev.root().join("power/BAT0");
    fs::create_dir_all(&bat).unwrap();
    fs::write(bat.join("type"), "Battery\n").unwrap();
    fs::write(bat.join("capacity"), "25\n").unwrap();
    fs::write(bat.join("status"), "Discharging\n").unwrap();
    let out = agent_bin()
        .args(["check-power", "--json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["battery_percent"], 25);
    assert_eq!(json["charging"], false);
    assert_eq!(json["would_proceed"], false);

    fs::write(bat.join("status"), "Charging\n").unwrap();
    let out = agent_bin()
        .args(["check-power", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("battery:      25%"), "{text}");
    assert!(text.contains("would proceed: yes"), "{text}");
}

/// Issue 6: `ota-agent flag NAME` answers by exit status (0 on, 1 off or unknown, 2 no flag
/// file) and `ota-agent flags [--json]` lists them, from `<data_dir>/flags`.
#[tokio::test]
async fn issue6_flag_and_flags_read_the_flag_file() {
    let v1 = release("1.0.0", 1, 20_000);
    let dev = Device::new("flagcli", "mqtt://127.0.0.1:9", &v1, "").await;
    let config = dev.root().join("config.toml");
    let flag = |name: &str| {
        agent_bin()
            .args(["flag", name, "--config"])
            .arg(&config)
            .output()
            .unwrap()
            .status
            .code()
    };
    assert_eq!(flag("new-ui"), Some(2), "no flag file yet");
    let c = ota_agent::config::AgentConfig::load(&config).unwrap();
    let data = c.data_dir;
    fs::create_dir_all(&data).unwrap();
    let file = format!(
        "OTA_FLAGS={}\nDEVICE={}\nVERSION=7\nnew-ui=on\nold-ui=off\n",
        ota_core::flags::FILE_FORMAT,
        c.device_id
    );
    fs::write(data.join(ota_agent::flags::FILE_NAME), file).unwrap();
    assert_eq!(flag("new-ui"), Some(0));
    assert_eq!(flag("old-ui"), Some(1));
    assert_eq!(flag("never-heard-of"), Some(1));
    let out = agent_bin()
        .args(["flags", "--json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], 7, "{v}");
    assert_eq!(v["flags"]["new-ui"], true, "{v}");
    assert_eq!(v["flags"]["old-ui"], false, "{v}");
}

/// `cmd` as on a device image without any CA certificate: rustls-native-certs reads only
/// `SSL_CERT_FILE` and `SSL_CERT_DIR` when they are set, here an empty file and directory.
fn without_ca_certificates<'a>(cmd: &'a mut Command, dir: &Path) -> &'a mut Command {
    let (file, certs) = (dir.join("no-ca.pem"), dir.join("no-ca.d"));
    fs::write(&file, "").unwrap();
    fs::create_dir_all(&certs).unwrap();
    cmd.env("SSL_CERT_FILE", file).env("SSL_CERT_DIR", certs)
}

/// Issue 17: a gateway without a CA bundle whose broker and artifact mirrors are plain
/// `mqtt://` and `http://` starts and runs (it used to stop: "No CA certificates were loaded
/// from the system").
#[tokio::test]
async fn issue17_plain_urls_need_no_ca_certificates() {
    let v1 = release("1.0.0", 1, 20_000);
    // No broker listens there: the agent starts anyway and keeps trying to connect.
    let dev = Device::new("no-ca", "mqtt://127.0.0.1:9", &v1, "").await;
    let config = dev.root().join("config.toml");
    let mut run = agent_bin();
    let mut child = without_ca_certificates(&mut run, dev.root())
        .args(["run", "--config"])
        .arg(&config)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = tokio::time::timeout(PATIENCE, async {
        loop {
            if child.try_wait().unwrap().is_some() {
                return false;
            }
            let out = agent_bin()
                .args(["status", "--config"])
                .arg(&config)
                .output()
                .unwrap();
            if String::from_utf8_lossy(&out.stdout).contains("running:     1.0.0") {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    if started != Ok(true) {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!(
            "the agent did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Issue 17: without a CA bundle, a setting that needs TLS stops the agent at start with an
/// error naming the setting to fill in: an `mqtts://` broker (`broker.ca_file`),
/// `download.require_https` (`download.ca_file`).
#[tokio::test]
async fn issue17_tls_urls_without_ca_certificates_name_the_missing_setting() {
    let v1 = release("1.0.0", 1, 20_000);
    let mqtts = Device::new("no-ca", "mqtts://127.0.0.1:9", &v1, "").await;
    let https = Device::new("no-ca", "mqtt://127.0.0.1:9", &v1, "").await;
    let config = https.root().join("config.toml");
    let text = fs::read_to_string(&config).unwrap();
    fs::write(
        &config,
        text.replace("[download]\n", "[download]\nrequire_https = true\n"),
    )
    .unwrap();
    for (dev, setting) in [(&mqtts, "broker.ca_file"), (&https, "download.ca_file")] {
        let mut run = agent_bin();
        let out = without_ca_certificates(&mut run, dev.root())
            .args(["run", "--config"])
            .arg(dev.root().join("config.toml"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{setting}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(setting), "{err}");
        assert!(
            !dev.config.data_dir.exists(),
            "{setting}: the data directory was made"
        );
    }
}

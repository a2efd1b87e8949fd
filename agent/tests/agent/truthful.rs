//! Issue 12 ("truthful states"), agent side: one rule for the paths of the configuration,
//! the whole configuration checked before anything is written, and logs that say what
//! happened (a refused connection, no colour in a redirected log, each cause once).

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use ota_agent::Agent;
use ota_agent::config::{AgentConfig, HealthConfig, InstallerConfig};

use crate::fleet::{Device, options, release};

/// Issue 12.15: every relative path of the configuration follows the configuration file.
#[test]
fn issue12_every_relative_path_follows_the_config_file() {
    let dir = crate::util::tempdir();
    let text = r#"
device_id = "dev-1"
hardware_class = "board-a"
data_dir = "state"
[trust]
keys = [{ file = "k.pem" }]
[broker]
url = "mqtt://127.0.0.1:1883"
[power]
power_supply_path = "sys/power"
[installer]
kind = "files"
root = "app"
restart_command = ["bin/restart", "now"]
[health]
kind = "command"
program = "./probe.sh"
"#;
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    let c = AgentConfig::load(&path).unwrap();
    let base = dir.path();
    assert_eq!(c.data_dir, base.join("state"));
    assert_eq!(c.power.power_supply_path, base.join("sys/power"));
    let InstallerConfig::Files {
        root,
        restart_command,
        ..
    } = &c.installer
    else {
        panic!("{:?}", c.installer)
    };
    assert_eq!(root, &base.join("app"));
    let restart = restart_command.as_ref().unwrap();
    assert_eq!(PathBuf::from(&restart[0]), base.join("bin/restart"));
    assert_eq!(restart[1], "now");
    let Some(HealthConfig::Command { program, .. }) = &c.health else {
        panic!("{:?}", c.health)
    };
    assert_eq!(PathBuf::from(program), base.join("./probe.sh"));

    // A bare program name stays a name (looked up on PATH); absolute paths stay.
    let text = text
        .replace("\"./probe.sh\"", "\"true\"")
        .replace("\"state\"", "\"/var/lib/x\"");
    std::fs::write(&path, text).unwrap();
    let c = AgentConfig::load(&path).unwrap();
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/x"));
    let Some(HealthConfig::Command { program, .. }) = &c.health else {
        panic!("{:?}", c.health)
    };
    assert_eq!(program, "true");
}

/// Issue 12.15: a configuration whose broker password file is missing fails before anything
/// is written: no data directory, no seeded cache.
#[tokio::test]
async fn issue12_a_bad_config_fails_before_any_side_effect() {
    let v1 = release("1.0.0", 1, 4_000);
    let dev = Device::new("nofx", "mqtt://127.0.0.1:9", &v1, "").await;
    let mut config = dev.config.clone();
    config.broker.username = Some(dev.id.clone());
    config.broker.password_file = Some(dev.root().join("no-such-password"));
    let err = Agent::start(config, options()).await.unwrap_err();
    let text = ota_agent::term::error_line(&err);
    assert!(text.contains("no-such-password"), "{text}");
    assert!(!dev.data().exists(), "the data directory was created");
}

/// Issues 12.14 and 12.15: `ota-agent run` against a broker that refuses the connection logs
/// a refused connection (not a lost one), and its redirected log has no colour codes.
#[tokio::test]
async fn issue12_a_refused_first_connection_is_logged_as_refused_without_colour() {
    let v1 = release("1.0.0", 1, 4_000);
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("mqtt://{}", dead.local_addr().unwrap());
    drop(dead);
    let dev = Device::new("refused", &url, &v1, "").await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_ota-agent"))
        .args(["run", "--config"])
        .arg(dev.root().join("config.toml"))
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .env("OTA_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        let done = line.contains("MQTT");
        seen.push(line);
        if done {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let log = seen.join("\n");
    let last = seen.last().unwrap();
    assert!(last.contains("cannot connect to the MQTT broker"), "{log}");
    assert!(!log.contains("connection lost"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a redirected log: {log}"
    );
    assert!(log.contains("agent started"), "{log}");
}

/// Issue 12.14: an error whose message includes its cause does not print the cause twice.
#[test]
fn issue12_a_missing_config_names_its_cause_once() {
    let out = Command::new(env!("CARGO_BIN_EXE_ota-agent"))
        .args(["run", "--config", "/nonexistent/ota-agent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    let cause = std::io::Error::from_raw_os_error(2).to_string();
    assert_eq!(err.matches(&cause).count(), 1, "{err}");
    assert!(!err.contains('\u{1b}'), "{err}");
}

//! One simulated device: a real `ota-agent` (the agent library with its real journal, cache,
//! downloader and files installer) in its own directory, with a fake battery and a simulated
//! application.
//!
//! ```text
//! <root>/config.toml     the agent's configuration (a real config file, loaded as one)
//! <root>/data/           the agent's data directory (journal, boot counter, cache)
//! <root>/app/            the files installer's root: releases/<sha256>, current, heartbeat
//! <root>/power/          the fake power-supply sysfs tree (crate::battery)
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use ota_agent::config::AgentConfig;
use ota_agent::{Agent, AgentHandle, AgentOptions, AgentStatus};
use ota_core::digest::Digest;
use tokio::task::JoinHandle;

use crate::LabError;
use crate::battery::Battery;
use crate::firmware::HARDWARE_CLASS;

/// How a device's agent is set up (times are shortened for the demo and tests).
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    /// The device id.
    pub id: String,
    /// The `ring` label.
    pub ring: String,
    /// The broker URL the agent connects to.
    pub broker_url: String,
    /// Extra TOML lines of the agent's `[broker]` section (TLS files, credentials).
    pub broker_extra: String,
    /// The trusted public key file.
    pub trust_key: PathBuf,
    /// The factory release and image the device was built with.
    pub factory: (PathBuf, PathBuf),
    /// How long a new release has to prove healthy.
    pub trial_timeout: Duration,
    /// The battery charge at start (percent) and whether the charger is plugged in.
    pub battery: (u8, bool),
    /// Bytes per download chunk.
    pub chunk_size: usize,
    /// The files installer's restart command (argv), run after every switch of `current`.
    pub restart_command: Option<Vec<String>>,
    /// Extra TOML lines of the agent's `[download]` section (a pinned CA...).
    pub download_extra: String,
}

/// A device: its directory, battery, application and (while running) agent.
#[derive(Debug)]
pub struct Device {
    spec: DeviceSpec,
    root: PathBuf,
    battery: Battery,
    agent: Option<AgentHandle>,
    app: Option<JoinHandle<()>>,
    /// Bytes downloaded by earlier runs of the agent (each run counts from zero).
    earlier_bytes: u64,
}

impl Device {
    /// Lays out the device under `root` (config, power tree, the factory image installed as
    /// the image builder would) without starting anything.
    pub fn create(root: &Path, spec: DeviceSpec) -> Result<Self, LabError> {
        let app = root.join("app");
        let releases = app.join("releases");
        std::fs::create_dir_all(&releases).map_err(|e| LabError::io("create", &releases, e))?;
        let battery = Battery::create(&root.join("power"), spec.battery.0, spec.battery.1)?;
        let image =
            std::fs::read(&spec.factory.1).map_err(|e| LabError::io("read", &spec.factory.1, e))?;
        let placed = releases.join(Digest::of(&image).to_string());
        std::fs::write(&placed, &image).map_err(|e| LabError::io("write", &placed, e))?;
        let current = app.join("current");
        if !current.exists() {
            std::os::unix::fs::symlink(&placed, &current)
                .map_err(|e| LabError::io("symlink", &current, e))?;
        }
        let config = root.join("config.toml");
        std::fs::write(&config, config_toml(&spec, root))
            .map_err(|e| LabError::io("write", &config, e))?;
        Ok(Device {
            spec,
            root: root.to_path_buf(),
            battery,
            agent: None,
            app: None,
            earlier_bytes: 0,
        })
    }

    /// The device id.
    pub fn id(&self) -> &str {
        &self.spec.id
    }

    /// The device's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The fake battery.
    pub fn battery(&self) -> &Battery {
        &self.battery
    }

    /// Starts the application and the agent (again, after [`Device::kill`] or
    /// [`Device::stop`]: the agent recovers from its journal). The boot id stays the same, so
    /// a restart is an agent restart, not a reboot.
    pub async fn start(&mut self) -> Result<(), LabError> {
        if self.agent.is_some() {
            return Ok(());
        }
        if self.app.is_none() {
            self.app = Some(crate::app::spawn(self.root.join("app")));
        }
        let path = self.root.join("config.toml");
        let config =
            AgentConfig::load(&path).map_err(|e| LabError::Agent(format!("{}: {e}", self.id())))?;
        let options = AgentOptions::new()
            .with_boot_id(format!("{}-boot-1", self.id()))
            .with_power_poll_interval(Duration::from_millis(250))
            .with_persist_retry(Duration::from_millis(100));
        let handle = Agent::start(config, options)
            .await
            .map_err(|e| LabError::Agent(format!("{}: {e}", self.id())))?;
        self.agent = Some(handle);
        Ok(())
    }

    /// The agent's latest status (`None` while it is not running).
    pub fn status(&self) -> Option<AgentStatus> {
        self.agent.as_ref().map(AgentHandle::status)
    }

    /// The agent, while running.
    pub fn agent(&self) -> Option<&AgentHandle> {
        self.agent.as_ref()
    }

    /// Artifact bytes this device downloaded over all its agent runs.
    pub fn bytes_downloaded(&self) -> u64 {
        self.earlier_bytes + self.status().map_or(0, |s| s.bytes_downloaded)
    }

    /// The digest the agent runs, as its machine says.
    pub fn running(&self) -> Option<Digest> {
        self.status()
            .and_then(|s| s.machine.running.map(|r| r.digest))
    }

    /// Whether the agent's cache holds `digest` (complete or partial).
    pub fn has_cached(&self, digest: &Digest) -> bool {
        let name = digest.to_string();
        let cache = self.root.join("data").join("cache");
        cache.join(&name).exists() || cache.join("partial").join(format!("{name}.part")).exists()
    }

    /// Whether feature flag `name` is on, as the application reads it: from the flag file
    /// the agent keeps (`<data>/flags`, `ota_agent::Flags`). No file yet: off.
    pub fn flag_on(&self, name: &str) -> bool {
        let path = self.root.join("data").join(ota_agent::flags::FILE_NAME);
        ota_agent::Flags::load(path).is_ok_and(|f| f.is_enabled(name))
    }

    /// Stops the agent gracefully (offline status published, downloads resume later).
    pub async fn stop(&mut self) -> Result<(), LabError> {
        if let Some(agent) = self.agent.take() {
            self.earlier_bytes += agent.status().bytes_downloaded;
            agent
                .shutdown()
                .await
                .map_err(|e| LabError::Agent(format!("{}: {e}", self.spec.id)))?;
        }
        Ok(())
    }

    /// The application crashes (it stops touching its heartbeat file; the agent keeps
    /// running): what a release that turns unhealthy after its commit looks like.
    pub fn crash_app(&mut self) {
        if let Some(app) = self.app.take() {
            app.abort();
        }
    }

    /// Starts the application again after [`crash_app`](Self::crash_app) (no-op while it
    /// runs).
    pub fn restart_app(&mut self) {
        if self.app.is_none() {
            self.app = Some(crate::app::spawn(self.root.join("app")));
        }
    }

    /// Kills the agent where it stands, without cleanup (a crash or power cut of the agent;
    /// the application keeps running).
    pub fn kill(&mut self) {
        if let Some(agent) = self.agent.take() {
            self.earlier_bytes += agent.status().bytes_downloaded;
            agent.kill();
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if let Some(app) = self.app.take() {
            app.abort();
        }
        self.kill();
    }
}

/// The agent configuration file of a device (absolute paths).
fn config_toml(spec: &DeviceSpec, root: &Path) -> String {
    let q = |p: &Path| toml_string(&p.display().to_string());
    format!(
        r#"# ota-agent configuration of simulated device {id} (written by the ota demo).
device_id = {id_q}
hardware_class = {hw}
data_dir = {data}
cache_size = 5
trial_timeout = {trial}
heartbeat_interval = "500ms"

[labels]
ring = {ring}

[trust]
keys = [{{ file = {key} }}]

[broker]
url = {broker}
{broker_extra}
keep_alive = "5s"
reconnect_backoff = "100ms"
max_reconnect_backoff = "1s"

[power]
min_battery_percent = 20
power_supply_path = {power}
recheck_interval = "1s"

[installer]
kind = "files"
root = {app}
{restart}

[health]
kind = "heartbeat"
path = {heartbeat}
freshness = "2s"
interval = "250ms"

[download]
chunk_size = {chunk}
retries = 8
backoff = "100ms"
max_backoff = "1s"
connect_timeout = "5s"
read_timeout = "5s"
disk_margin_bytes = 0
{download_extra}

[factory]
release = {factory_release}
artifact = {factory_image}
"#,
        id = spec.id,
        id_q = toml_string(&spec.id),
        hw = toml_string(HARDWARE_CLASS),
        data = q(&root.join("data")),
        trial = toml_string(&humantime_ms(spec.trial_timeout)),
        ring = toml_string(&spec.ring),
        key = q(&spec.trust_key),
        broker = toml_string(&spec.broker_url),
        broker_extra = spec.broker_extra,
        power = q(&root.join("power")),
        app = q(&root.join("app")),
        restart = spec.restart_command.as_ref().map_or(String::new(), |argv| {
            let list: Vec<String> = argv.iter().map(|a| toml_string(a)).collect();
            format!("restart_command = [{}]", list.join(", "))
        }),
        heartbeat = q(&crate::app::heartbeat_path(&root.join("app"))),
        chunk = spec.chunk_size,
        download_extra = spec.download_extra,
        factory_release = q(&spec.factory.0),
        factory_image = q(&spec.factory.1),
    )
}

/// A TOML basic string.
pub(crate) fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A duration as a humantime string in milliseconds (`"4000ms"`).
fn humantime_ms(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

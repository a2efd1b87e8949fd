//! The lab: a fleet server and N real agents in one process, in one temporary directory.
//!
//! ```text
//! <dir>/release-key.pub        the firmware team's public key (server and agents trust it)
//! <dir>/factory/v1.release     the release every device was built with, and its image
//! <dir>/factory/v1.img
//! <dir>/server/                the server's data dir (SQLite database, artifact store)
//! <dir>/devices/<id>/          one directory per device (crate::device)
//! ```
//!
//! By default the server runs on embedded defaults (in-process broker on a free port, SQLite,
//! local files). [`LabOptions`] can point it at an external broker and database instead, and
//! the agents at another broker address (a proxy that injects faults).
//!
//! The server runs on a tokio runtime of its own ([`ServerRuntime`], two worker threads), as it
//! would in a process of its own: a wave of hundreds of agents hashing, installing and
//! fsyncing on the caller's runtime cannot keep its tasks (heartbeat acks, batches, artifact
//! downloads) waiting in the same run queue.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ota_core::wire::{DeviceId, Topics};
use ota_server::broker::credentials::DeviceSecret;
use ota_server::clock::Clock;
use ota_server::config::{
    BrokerSecurity, Config, HaConfig, MqttBroker, MqttConfig, OperatorConfig, Role, StoreConfig,
    TrustConfig,
};
use ota_server::{RunningServer, Server};
use serde_json::Value;
use tempfile::TempDir;

use crate::LabError;
use crate::api::Api;
use crate::device::{Device, DeviceSpec, toml_string};
use crate::firmware::{Build, FirmwareTeam};

/// The operator who publishes and creates rollouts (role `admin`).
pub const OPERATOR: (&str, &str) = ("alice", "demo-alice-token-0123456789");
/// A second operator, role `approver`: approvals only.
pub const APPROVER: (&str, &str) = ("bob", "demo-bob-token-0123456789ab");
/// A third operator, role `operator`: steers rollouts and flags, approves nothing (the
/// console's browser tests sign in as this one to see what the role is not offered).
pub const STEERER: (&str, &str) = ("carol", "demo-carol-token-0123456789");
/// The version every device was built with.
pub const FACTORY_VERSION: &str = "1.0.0";

/// How a lab is set up.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// How many devices.
    pub devices: usize,
    /// The agents' trial timeout.
    pub trial_timeout: Duration,
    /// Size of every application image, bytes (256 KiB by default, small for tests; `ota demo`
    /// passes its `--image-kib`, 1 MiB by default, so that an image always has more than one
    /// chunk for the delta).
    pub image_size: usize,
    /// The agents' download chunk.
    pub chunk_size: usize,
    /// Battery (percent, plugged in) of device `i`.
    pub battery: fn(usize) -> (u8, bool),
    /// The server's broker: `None` runs the embedded one; `Some(url)` an external broker.
    pub server_mqtt: Option<String>,
    /// More nodes of the server's broker cluster (`mqtt.failover_urls`), with `server_mqtt`.
    pub server_mqtt_failover: Vec<String>,
    /// The broker URL the agents use (default: the server's broker).
    pub agent_broker: Option<String>,
    /// The nodes of a broker cluster the agents use (overrides `agent_broker`): device `i`
    /// connects first to node `i mod n` and fails over to the next ones in order
    /// (`broker.failover_urls`).
    pub agent_broker_cluster: Vec<String>,
    /// The database URL (default: SQLite in the lab directory).
    pub database_url: Option<String>,
    /// Where the server keeps artifacts (`[store]`; default: `server/artifacts` in the lab
    /// directory).
    pub store: StoreConfig,
    /// The base URL devices download artifacts from (default: the server itself).
    pub public_url: Option<String>,
    /// The address the server's HTTP API listens on (default `127.0.0.1:0`, a free port): a
    /// fixed one when `public_url` must name the port before the server starts.
    pub http_listen: std::net::SocketAddr,
    /// A prefix of the device ids (unique per lab when several share a broker).
    pub id_prefix: String,
    /// The fleet's MQTT topic namespace, for the server and every agent (default `ota/v1`;
    /// labs that share a broker use different ones and never see each other's messages).
    pub topics: Topics,
    /// The files installer's restart command on every device (argv; default none).
    pub restart_command: Option<Vec<String>>,
    /// TLS and device authentication of the embedded broker (default: plain TCP, device
    /// passwords when `device_passwords`).
    pub broker_security: BrokerSecurity,
    /// With the embedded broker and no other authentication configured: give every device a
    /// password (`mqtt.device_secret_file` in the lab directory), so the broker's per-device ACL
    /// is on (default `true`).
    pub device_passwords: bool,
    /// Extra `[broker]` TOML of each device's agent (TLS files, credentials), by device id.
    pub agent_broker_toml: Option<BrokerToml>,
    /// Serve HTTPS: the server's certificate chain and key (PEM files, `[http] tls_cert`,
    /// `tls_key`); `api_ca_file` must then name the CA the lab's API client pins.
    pub http_tls: Option<(PathBuf, PathBuf)>,
    /// The CA bundle the lab's API client pins (for an HTTPS server).
    pub api_ca_file: Option<PathBuf>,
    /// Extra TOML lines of every agent's `[download]` section (e.g. `ca_file = "..."`).
    pub agent_download_toml: String,
    /// Where the lab's temporary directory is made (default: the system's temp directory).
    /// `ota demo` passes a directory of its own, which it removes once every task stopped.
    pub parent_dir: Option<PathBuf>,
}

/// Extra `[broker]` TOML lines for a device's agent, given its id.
#[derive(Clone)]
pub struct BrokerToml(pub std::sync::Arc<dyn Fn(&str) -> String + Send + Sync>);

impl std::fmt::Debug for BrokerToml {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BrokerToml(..)")
    }
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            devices: 50,
            trial_timeout: Duration::from_secs(4),
            image_size: 256 * 1024,
            chunk_size: 64 * 1024,
            battery: |_| (80, false),
            server_mqtt: None,
            server_mqtt_failover: Vec::new(),
            agent_broker: None,
            agent_broker_cluster: Vec::new(),
            database_url: None,
            store: StoreConfig::default(),
            public_url: None,
            http_listen: ([127, 0, 0, 1], 0).into(),
            id_prefix: "demo".into(),
            topics: Topics::default(),
            restart_command: None,
            broker_security: BrokerSecurity::default(),
            device_passwords: true,
            agent_broker_toml: None,
            http_tls: None,
            api_ca_file: None,
            agent_download_toml: String::new(),
            parent_dir: None,
        }
    }
}

/// A server and its devices (see the [module documentation](self)).
#[derive(Debug)]
pub struct Lab {
    dir: TempDir,
    team: FirmwareTeam,
    factory: Build,
    config: Config,
    server: Option<RunningServer>,
    runtime: ServerRuntime,
    /// A second server replica and its runtime ([`Lab::start_replica`]).
    replica: Option<(ServerRuntime, RunningServer)>,
    api: Api,
    id_prefix: String,
    devices: Vec<Device>,
}

impl Lab {
    /// Starts the server, publishes the factory release and starts every device; returns once
    /// every device is registered and online.
    pub async fn start(opts: LabOptions) -> Result<Lab, LabError> {
        let mut builder = tempfile::Builder::new();
        builder.prefix("ota-demo.");
        let dir = match &opts.parent_dir {
            Some(parent) => builder.tempdir_in(parent),
            None => builder.tempdir(),
        }
        .map_err(|e| LabError::io("create", Path::new("temp dir"), e))?;
        let team = FirmwareTeam::new()?;
        let key = team.write_public_key(dir.path())?;
        let factory = team.build(FACTORY_VERSION, true, opts.image_size, unix_now());
        let factory_dir = dir.path().join("factory");
        std::fs::create_dir_all(&factory_dir)
            .map_err(|e| LabError::io("create", &factory_dir, e))?;
        let release_path = factory_dir.join("v1.release");
        let image_path = factory_dir.join("v1.img");
        write(&release_path, &factory.release)?;
        write(&image_path, &factory.image)?;

        let mut opts = opts;
        // The embedded broker authenticates the lab's devices and confines each to its topics.
        let passwords = (opts.device_passwords
            && opts.server_mqtt.is_none()
            && !opts.broker_security.authenticates())
        .then(|| dir.path().join("mqtt-device.secret"));
        if let Some(path) = &passwords {
            opts.broker_security.device_secret_file = Some(path.clone());
        }
        let config = server_config(dir.path(), key.clone(), &opts)?;
        let runtime = ServerRuntime::new()?;
        let server = runtime.start(config.clone()).await?;
        // A restart must come back on the same port (desired states carry artifact URLs).
        let mut config = config;
        config.http.listen = server.http_addr();
        let api = match &opts.api_ca_file {
            Some(ca) => {
                let pem = std::fs::read(ca).map_err(|e| LabError::io("read", ca, e))?;
                Api::with_pinned_ca(server.base_url(), OPERATOR.1, &pem)?
            }
            None => Api::new(server.base_url(), OPERATOR.1),
        };
        api.publish(&factory).await?;

        let broker_url = match (&opts.agent_broker, &opts.server_mqtt, server.mqtt_addr()) {
            (Some(url), _, _) => url.clone(),
            (None, Some(url), _) => url.clone(),
            (None, None, Some(addr)) if server.mqtt_tls() => format!("mqtts://{addr}"),
            (None, None, Some(addr)) => format!("mqtt://{addr}"),
            (None, None, None) => return Err(LabError::Setup("no broker address".into())),
        };
        let mut lab = Lab {
            dir,
            team,
            factory,
            config,
            server: Some(server),
            runtime,
            replica: None,
            api,
            id_prefix: opts.id_prefix.clone(),
            devices: Vec::new(),
        };
        let secret = passwords
            .map(|path| DeviceSecret::load(&path))
            .transpose()
            .map_err(|e| LabError::Setup(e.to_string()))?;
        for i in 0..opts.devices {
            let id = format!("{}-{i:03}", opts.id_prefix);
            let broker_extra = match (&opts.agent_broker_toml, &secret) {
                (Some(toml), _) => (toml.0)(&id),
                (None, Some(secret)) => password_toml(lab.dir.path(), &id, secret)?,
                (None, None) => String::new(),
            };
            let mut broker_extra = format!(
                "{broker_extra}\ntopic_prefix = {}",
                crate::device::toml_string(opts.topics.prefix())
            );
            let mut device_broker = broker_url.clone();
            let nodes = &opts.agent_broker_cluster;
            if !nodes.is_empty() {
                let mut order = (0..nodes.len()).map(|k| &nodes[(i + k) % nodes.len()]);
                device_broker = order.next().cloned().unwrap_or_default();
                let more: Vec<String> = order.map(|url| toml_string(url)).collect();
                broker_extra.push_str(&format!("\nfailover_urls = [{}]", more.join(", ")));
            }
            let spec = DeviceSpec {
                ring: if i % 10 == 0 { "canary" } else { "main" }.into(),
                id: id.clone(),
                broker_url: device_broker,
                broker_extra,
                trust_key: key.clone(),
                factory: (release_path.clone(), image_path.clone()),
                trial_timeout: opts.trial_timeout,
                battery: (opts.battery)(i),
                chunk_size: opts.chunk_size,
                restart_command: opts.restart_command.clone(),
                download_extra: opts.agent_download_toml.clone(),
            };
            let mut device = Device::create(&lab.dir.path().join("devices").join(&id), spec)?;
            device.start().await?;
            lab.devices.push(device);
        }
        lab.wait_registered(Duration::from_secs(60)).await?;
        Ok(lab)
    }

    /// Waits until the server lists every device as online.
    pub async fn wait_registered(&self, patience: Duration) -> Result<(), LabError> {
        let want = self.devices.len();
        let filter = self.filter();
        let deadline = ota_server::clock::monotonic_now() + patience;
        loop {
            let online = self
                .api
                .devices(&filter)
                .await?
                .iter()
                .filter(|d| d["online"] == Value::Bool(true))
                .count();
            if online >= want {
                return Ok(());
            }
            if ota_server::clock::monotonic_now() > deadline {
                return Err(LabError::Timeout(format!(
                    "only {online} of {want} devices registered and online"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The lab's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Keeps the lab's directory after the lab ends, and returns its path.
    pub fn keep_dir(self) -> PathBuf {
        let Lab { dir, .. } = self;
        dir.keep()
    }

    /// The firmware team (signs further releases).
    pub fn team(&self) -> &FirmwareTeam {
        &self.team
    }

    /// The release every device was built with.
    pub fn factory(&self) -> &Build {
        &self.factory
    }

    /// The operator's API client.
    pub fn api(&self) -> &Api {
        &self.api
    }

    /// The device filter that selects this lab's devices.
    pub fn filter(&self) -> String {
        format!("id={}-*", self.id_prefix)
    }

    /// The fleet's MQTT topic namespace (server and agents).
    pub fn topics(&self) -> &Topics {
        &self.config.mqtt.topics
    }

    /// The device filter that selects device `i` only.
    pub fn filter_one(&self, i: usize) -> String {
        self.devices
            .get(i)
            .map_or_else(|| "not all".into(), |d| format!("id={}", d.id()))
    }

    /// The devices.
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// The devices, to start, stop or kill them.
    pub fn devices_mut(&mut self) -> &mut [Device] {
        &mut self.devices
    }

    /// The running server.
    pub fn server(&self) -> Option<&RunningServer> {
        self.server.as_ref()
    }

    /// Artifact bytes downloaded by all devices so far.
    pub fn bytes_downloaded(&self) -> u64 {
        self.devices.iter().map(Device::bytes_downloaded).sum()
    }

    /// Stops the server gracefully and starts it again on the same addresses and data. Needs
    /// an external broker ([`LabOptions::server_mqtt`]): the embedded one cannot be stopped.
    pub async fn restart_server(&mut self) -> Result<(), LabError> {
        if matches!(self.config.mqtt.broker, MqttBroker::Embedded { .. }) {
            return Err(LabError::Setup(
                "the embedded broker cannot restart with the server: use an external broker".into(),
            ));
        }
        if let Some(server) = self.server.take() {
            server
                .shutdown()
                .await
                .map_err(|e| LabError::Server(e.to_string()))?;
        }
        let server = self.runtime.start(self.config.clone()).await?;
        self.server = Some(server);
        Ok(())
    }

    /// Starts a second replica of the server with `[ha]` = `ha` (docs/ha.md) on the lab's
    /// database, broker, data directory and public URL, on a runtime of its own: a standby
    /// while the lab's server holds the coordinator lease. Needs an external broker.
    pub async fn start_replica(&mut self, ha: HaConfig) -> Result<&RunningServer, LabError> {
        let mut config = self.config.clone();
        config.http.listen = ([127, 0, 0, 1], 0).into();
        config.ha = Some(ha);
        let runtime = ServerRuntime::new()?;
        let server = runtime.start(config).await?;
        Ok(&self.replica.insert((runtime, server)).1)
    }

    /// The replica [`Lab::start_replica`] started, while it is not the lab's server.
    pub fn replica(&self) -> Option<&RunningServer> {
        self.replica.as_ref().map(|(_, server)| server)
    }

    /// Kills the lab's server as `kill -9` would: its runtime stops at once, its connections
    /// are cut and nothing is given up (its coordinator lease expires on its own). The
    /// replica, if one runs, becomes the lab's server: [`Lab::api`] talks to it from now on.
    pub fn crash_server(&mut self) -> Result<(), LabError> {
        if let Some(rt) = self.runtime.0.take() {
            rt.shutdown_background();
        }
        drop(self.server.take());
        match self.replica.take() {
            Some((runtime, server)) => {
                self.api = Api::new(server.base_url(), OPERATOR.1);
                self.runtime = runtime;
                self.server = Some(server);
            }
            None => self.runtime = ServerRuntime::new()?,
        }
        Ok(())
    }

    /// Stops the lab's own server gracefully (it gives up the coordinator lease) and talks to
    /// the server at `base_url` from now on: replicas running elsewhere (their own processes,
    /// on the lab's database, broker and artifact store) carry the fleet on.
    pub async fn hand_over(&mut self, base_url: &str) -> Result<(), LabError> {
        if let Some(server) = self.server.take() {
            server
                .shutdown()
                .await
                .map_err(|e| LabError::Server(e.to_string()))?;
        }
        self.use_server(base_url);
        Ok(())
    }

    /// Talks to the server at `base_url` from now on (another replica of the fleet).
    pub fn use_server(&mut self, base_url: &str) {
        self.api = Api::new(base_url, OPERATOR.1);
    }

    /// Stops every agent, the replica and the server.
    pub async fn shutdown(&mut self) -> Result<(), LabError> {
        for device in &mut self.devices {
            device.stop().await?;
        }
        if let Some((_runtime, server)) = self.replica.take() {
            server
                .shutdown()
                .await
                .map_err(|e| LabError::Server(e.to_string()))?;
        }
        if let Some(server) = self.server.take() {
            server
                .shutdown()
                .await
                .map_err(|e| LabError::Server(e.to_string()))?;
        }
        Ok(())
    }
}

/// The fleet server's own multi-threaded runtime (two workers, threads named `ota-server`):
/// see the [module documentation](self). Dropped without waiting for its tasks (the lab
/// shuts the server down first).
struct ServerRuntime(Option<tokio::runtime::Runtime>);

impl ServerRuntime {
    fn new() -> Result<Self, LabError> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ota-server")
            .enable_all()
            .build()
            .map(|rt| ServerRuntime(Some(rt)))
            .map_err(|e| LabError::Setup(format!("cannot start the server's runtime: {e}")))
    }

    /// Starts a server with `config` on this runtime.
    async fn start(&self, config: Config) -> Result<RunningServer, LabError> {
        let rt = self
            .0
            .as_ref()
            .ok_or_else(|| LabError::Setup("the server's runtime is gone".into()))?;
        // `Server::start` is not `Send`: it runs to completion on a thread of its own inside
        // this runtime's context, so every task it spawns lands on this runtime.
        let handle = rt.handle().clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("ota-server-start".into())
            .spawn(move || {
                let _ = tx.send(handle.block_on(Server::start(config)));
            })
            .map_err(|e| LabError::Setup(format!("cannot start the server's thread: {e}")))?;
        rx.await
            .map_err(|_| {
                LabError::Server("the server's start thread ended without an answer".into())
            })?
            .map_err(|e| LabError::Server(e.to_string()))
    }
}

impl Drop for ServerRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl std::fmt::Debug for ServerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerRuntime")
    }
}

/// The server's configuration for a lab in `dir`.
fn server_config(dir: &Path, key: PathBuf, opts: &LabOptions) -> Result<Config, LabError> {
    let mut config = Config::new(dir.join("server"), TrustConfig::new(vec![key], 1));
    config.http.listen = opts.http_listen;
    config.http.public_url.clone_from(&opts.public_url);
    if let Some((cert, key)) = &opts.http_tls {
        config.http.tls_cert = Some(cert.clone());
        config.http.tls_key = Some(key.clone());
    }
    config.mqtt = match &opts.server_mqtt {
        Some(url) => MqttConfig::with_broker(external_broker(url, &opts.server_mqtt_failover)?),
        None => MqttConfig::with_broker(MqttBroker::Embedded {
            listen: ([127, 0, 0, 1], 0).into(),
            security: opts.broker_security.clone(),
        }),
    };
    config.mqtt.topics = opts.topics.clone();
    config.database.url.clone_from(&opts.database_url);
    config.store = opts.store.clone();
    // Every device of a lab downloads from 127.0.0.1, like a fleet behind one NAT address:
    // the per-address HTTP cap (256 by default) would refuse the 257th concurrent download
    // of a 500-device wave with 503 (docs/server.md, "Limits").
    config.limits.http_max_connections_per_ip = 0;
    config.operators = vec![
        OperatorConfig::new(OPERATOR.0, OPERATOR.1),
        OperatorConfig::with_role(APPROVER.0, APPROVER.1, Role::Approver),
        OperatorConfig::with_role(STEERER.0, STEERER.1, Role::Operator),
    ];
    Ok(config)
}

/// An external broker at `url`, with more nodes of its cluster at `failover` (plain
/// `mqtt://` or `mqtts://` URLs, no TLS files or credentials).
fn external_broker(url: &str, failover: &[String]) -> Result<MqttBroker, LabError> {
    let parse = |url: &str| {
        MqttConfig::external(url)
            .map(|c| c.broker)
            .map_err(|e| LabError::Setup(e.to_string()))
    };
    let mut broker = parse(url)?;
    for more in failover {
        if let (MqttBroker::External { failover, .. }, MqttBroker::External { host, port, .. }) =
            (&mut broker, parse(more)?)
        {
            failover.push((host, port));
        }
    }
    Ok(broker)
}

/// Writes device `id`'s broker password (0600) under `dir/passwords/` and answers the agent's
/// `[broker]` lines that use it.
fn password_toml(dir: &Path, id: &str, secret: &DeviceSecret) -> Result<String, LabError> {
    use std::io::Write;
    let device = DeviceId::new(id).map_err(|e| LabError::Setup(format!("{id:?}: {e}")))?;
    let folder = dir.join("passwords");
    std::fs::create_dir_all(&folder).map_err(|e| LabError::io("create", &folder, e))?;
    let path = folder.join(id);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(&path)
        .and_then(|mut f| f.write_all(format!("{}\n", secret.password(&device)).as_bytes()))
        .map_err(|e| LabError::io("write", &path, e))?;
    Ok(format!(
        "username = {}\npassword_file = {}",
        toml_string(id),
        toml_string(&path.display().to_string())
    ))
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), LabError> {
    std::fs::write(path, bytes).map_err(|e| LabError::io("write", path, e))
}

/// Wall time, unix seconds (the server's system [`Clock`]).
pub fn unix_now() -> u64 {
    Clock::system().now()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 19, demo at 500: every device of a lab downloads from 127.0.0.1, so the server's
    /// per-address HTTP cap is off (on, the 257th concurrent download of the last wave got 503
    /// and the rollout aborted with `failed{download}`).
    #[test]
    fn issue19_a_lab_server_admits_every_device_from_one_address() {
        let opts = LabOptions::default();
        let config = server_config(Path::new("lab"), PathBuf::from("release-key.pub"), &opts);
        assert!(
            config.is_ok_and(|c| c.limits.http_max_connections_per_ip == 0),
            "the lab's server caps connections per address"
        );
    }
}

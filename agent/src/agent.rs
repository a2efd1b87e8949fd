//! The library entry point: start an agent, observe it, stop it.
//!
//! [`Agent::start`] sets an agent up from an [`AgentConfig`] (journal, boot counter, cache,
//! factory release, installer, probe, downloader, MQTT link), spawns its shell loop on the
//! current tokio runtime and returns an [`AgentHandle`]. Many agents can run in one process
//! (the fleet demo does): each has its own data directory, device id and MQTT session.
//!
//! [`AgentOptions`] hold what a configuration file does not: the storage to write through
//! (tests inject a `FaultyStorage`, `test-support` feature), the boot id, the runtime
//! the MQTT link runs on, shorter timers for tests. The handle offers a graceful
//! [`shutdown`](AgentHandle::shutdown) and a [`kill`](AgentHandle::kill) that aborts the agent
//! where it stands, without any cleanup, as a crash or power cut would.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ota_core::digest::{Digest, Hasher};
use ota_core::release::{Policy, ReleaseError, SignedRelease};
use ota_core::update::{
    Config, FloorRecord, MaintenanceWindow, MaintenanceWindows, PersistedState, PowerPolicy,
    ReleaseInfo, RetryPolicy, UpdateMachine, Weekdays,
};
use ota_core::wire::{DeviceId, DeviceIdError, WireError, WireMessage};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::cache::{Cache, CacheError};
use crate::clock::ShellClock;
use crate::config::{
    AgentConfig, ConfigError, FactoryConfig, InstallerConfig, MaintenanceConfig, Weekday,
};
use crate::download::{DownloadError, Downloader};
use crate::health::HealthError;
use crate::journal::{BootCounter, Journal, JournalError};
use crate::mqtt::{Backoff, Link, LinkSettings, MqttError};
use crate::power::PowerSupplies;
use crate::shell::Shell;
use crate::status::AgentStatus;
use crate::storage::{FsStorage, SharedStorage};

/// The agent's version, as reported to the fleet.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Where Linux exposes the id of the current boot.
pub const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// Why an agent could not start (or stopped).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The configuration is unusable (trust keys, device id...).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The trust record (a rotated trust set) cannot be used.
    #[error(transparent)]
    Trust(#[from] crate::trust::TrustFileError),
    /// The device id is not a valid MQTT topic segment.
    #[error("device_id: {0}")]
    DeviceId(#[from] DeviceIdError),
    /// The journal or the boot counter cannot be read or written.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The journal holds a record this build cannot decode (a newer agent wrote it?).
    #[error("the journal's state record does not decode: {0}")]
    State(#[source] WireError),
    /// The cache directory cannot be set up.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The HTTP client cannot be built.
    #[error(transparent)]
    Download(#[from] DownloadError),
    /// The health probe cannot be built.
    #[error(transparent)]
    Health(#[from] HealthError),
    /// The MQTT link cannot be set up (bad URL, TLS files).
    #[error(transparent)]
    Mqtt(#[from] MqttError),
    /// The factory release is refused or its artifact does not match it.
    #[error("factory release {path}: {reason}")]
    Factory {
        /// The release or artifact file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A disk operation of the start-up failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The agent's task panicked or was killed.
    #[error("the agent task ended abnormally: {0}")]
    Task(String),
}

/// A change to the core machine's configuration, applied after the one built from the
/// [`AgentConfig`] (tests shorten timers with it).
pub type MachineTweak = Arc<dyn Fn(&mut Config) + Send + Sync>;

/// What an [`AgentConfig`] does not say (see the [module documentation](self)).
#[derive(Clone)]
#[non_exhaustive]
pub struct AgentOptions {
    /// The storage every disk write goes through (default: the real file system).
    pub storage: Option<SharedStorage>,
    /// The id of the current boot (default: [`BOOT_ID_PATH`]). A different id than at the last
    /// start means the device rebooted; the same id means only the agent restarted.
    pub boot_id: Option<String>,
    /// The runtime the MQTT link's tasks run on (default: the current one). Tests that pause
    /// the shell's clock run the network on a second runtime with real time.
    pub mqtt_runtime: Option<tokio::runtime::Handle>,
    /// Overrides the broker section's reconnect backoff.
    pub reconnect_backoff: Option<Backoff>,
    /// How often the power supply is re-read while an update waits for power, so a charger
    /// that is plugged in resumes it at once (default 30 s).
    pub power_poll_interval: Duration,
    /// The first wait before retrying a journal write that failed; doubles up to 60 s
    /// (default 1 s).
    pub persist_retry: Duration,
    /// A change to the machine's configuration (timers, margins).
    pub machine_tweak: Option<MachineTweak>,
    /// The wall time the agent's clock starts at (default: the system clock).
    pub start_time: Option<ota_core::update::Timestamp>,
    /// The version reported to the fleet (default [`AGENT_VERSION`]).
    pub agent_version: String,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            storage: None,
            boot_id: None,
            mqtt_runtime: None,
            reconnect_backoff: None,
            power_poll_interval: Duration::from_secs(30),
            persist_retry: Duration::from_secs(1),
            machine_tweak: None,
            start_time: None,
            agent_version: AGENT_VERSION.to_owned(),
        }
    }
}

impl fmt::Debug for AgentOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentOptions")
            .field("storage", &self.storage)
            .field("boot_id", &self.boot_id)
            .field("reconnect_backoff", &self.reconnect_backoff)
            .field("power_poll_interval", &self.power_poll_interval)
            .field("persist_retry", &self.persist_retry)
            .field("machine_tweak", &self.machine_tweak.is_some())
            .finish_non_exhaustive()
    }
}

impl AgentOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes through `storage`.
    pub fn with_storage(mut self, storage: SharedStorage) -> Self {
        self.storage = Some(storage);
        self
    }

    /// Uses `boot_id` as the current boot's id.
    pub fn with_boot_id(mut self, boot_id: impl Into<String>) -> Self {
        self.boot_id = Some(boot_id.into());
        self
    }

    /// Runs the MQTT link on `handle`.
    pub fn with_mqtt_runtime(mut self, handle: tokio::runtime::Handle) -> Self {
        self.mqtt_runtime = Some(handle);
        self
    }

    /// Reconnects with this backoff.
    pub fn with_reconnect_backoff(mut self, backoff: Backoff) -> Self {
        self.reconnect_backoff = Some(backoff);
        self
    }

    /// Re-reads the power supply this often while deferred.
    pub fn with_power_poll_interval(mut self, interval: Duration) -> Self {
        self.power_poll_interval = interval;
        self
    }

    /// Retries failed journal writes after this first wait.
    pub fn with_persist_retry(mut self, wait: Duration) -> Self {
        self.persist_retry = wait;
        self
    }

    /// Changes the machine's configuration after it is built from the file.
    pub fn with_machine_tweak(
        mut self,
        tweak: impl Fn(&mut Config) + Send + Sync + 'static,
    ) -> Self {
        self.machine_tweak = Some(Arc::new(tweak));
        self
    }

    /// Starts the agent's clock at `at` (wall time).
    pub fn with_start_time(mut self, at: ota_core::update::Timestamp) -> Self {
        self.start_time = Some(at);
        self
    }
}

/// A running agent.
#[derive(Debug)]
pub struct AgentHandle {
    status: watch::Receiver<AgentStatus>,
    shutdown: mpsc::Sender<()>,
    task: JoinHandle<()>,
}

impl AgentHandle {
    /// The latest status.
    pub fn status(&self) -> AgentStatus {
        self.status.borrow().clone()
    }

    /// A receiver of every status change.
    pub fn watch(&self) -> watch::Receiver<AgentStatus> {
        self.status.clone()
    }

    /// Waits until `pred` holds for the status (or the agent stops: then the last status).
    pub async fn wait_for(&self, pred: impl Fn(&AgentStatus) -> bool) -> AgentStatus {
        let mut rx = self.status.clone();
        let found = rx.wait_for(|s| pred(s)).await.map(|s| s.clone());
        match found {
            Ok(s) => s,
            Err(_) => rx.borrow().clone(),
        }
    }

    /// Whether the agent's loop has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the agent gracefully: running downloads stop (their partial files stay and resume
    /// next time), an offline status is published and the MQTT session disconnects.
    pub async fn shutdown(self) -> Result<(), AgentError> {
        let _ = self.shutdown.send(()).await;
        self.task.await.map_err(|e| AgentError::Task(e.to_string()))
    }

    /// Aborts the agent where it stands, without any cleanup: no offline status (the broker
    /// publishes the last will), downloads cut mid-chunk, journal as it is. What a crash or a
    /// power cut does, for tests.
    pub fn kill(self) {
        self.task.abort();
    }
}

/// Entry point (see the [module documentation](self)).
#[derive(Debug)]
pub struct Agent;

impl Agent {
    /// Sets up an agent and spawns its loop on the current runtime.
    pub async fn start(
        config: AgentConfig,
        options: AgentOptions,
    ) -> Result<AgentHandle, AgentError> {
        // Everything the configuration names is read and checked first: a configuration
        // that cannot run changes nothing on disk.
        let device = DeviceId::new(&config.device_id)?;
        let configured_trust = config.trust_set()?;
        let probe = config.health.as_ref().map(|h| h.build()).transpose()?;
        let download_config = config.download.downloader_config();
        let http = crate::download::http_client(&download_config)?;
        let backoff = options.reconnect_backoff.unwrap_or(Backoff {
            initial: config.broker.reconnect_backoff,
            max: config.broker.max_reconnect_backoff,
        });
        let settings = LinkSettings::new(
            &config.broker,
            device.clone(),
            config.broker.keep_alive,
            backoff,
        )?;

        let storage = options.storage.clone().unwrap_or_else(FsStorage::shared);
        let data = config.data_dir.clone();
        storage
            .create_dir_all(&data)
            .map_err(|source| AgentError::Io {
                op: "create directory",
                path: data.clone(),
                source,
            })?;
        let boot_count = count_boot(&storage, &data, options.boot_id.clone())?;
        let journal = Journal::open(storage.clone(), &data)?;
        let floor = Journal::open_named(storage.clone(), &data, FLOOR_RECORD)?;
        let (loaded, damaged) = match load_state(&journal) {
            Ok(state) => (state, None),
            Err(AgentError::Journal(e @ JournalError::Corrupt { .. })) => (None, Some(e)),
            Err(e) => return Err(e),
        };
        let record = load_floor(&floor)?;
        let persisted = FloorRecord::reconcile(loaded.clone(), record.as_ref());
        if loaded.is_none() && persisted.is_some() {
            tracing::error!(
                damaged = damaged.as_ref().map(ToString::to_string),
                "the journal is lost or damaged: floor, running and known-good releases restored from the floor record"
            );
        }
        let cache = Cache::open(storage.clone(), &data)?;
        let trust = crate::trust::TrustFile::open(
            storage.clone(),
            &data,
            device.clone(),
            configured_trust,
        )?;

        let mut machine_config =
            machine_config(&config, device.clone(), trust.state().set().clone());
        if persisted.is_none()
            && damaged.is_none()
            && let Some(factory) = &config.factory
        {
            machine_config.factory = Some(seed_factory(factory, &machine_config, &cache).await?);
        }
        if let Some(tweak) = &options.machine_tweak {
            tweak(&mut machine_config);
        }
        let clock = match options.start_time {
            Some(at) => ShellClock::starting_at(at),
            None => ShellClock::from_system(),
        };
        let boot32 = u32::try_from(boot_count).unwrap_or(u32::MAX);
        let installer = config.installer.build(storage.clone(), &data);
        let mut machine = match (&damaged, persisted) {
            (Some(e), None) => {
                // Both journal copies damaged and no floor record: stay up and say so.
                tracing::error!(
                    "{e}: both journal copies are damaged; not updating (see docs/agent.md)"
                );
                UpdateMachine::halted(machine_config, &e.to_string(), boot32, clock.now())
            }
            (_, persisted) => {
                let m = UpdateMachine::recover(machine_config, persisted, boot32, clock.now());
                let now = FloorRecord::of(&m.persisted_state());
                if record.as_ref() != Some(&now) {
                    floor.store(&now.to_cbor())?;
                }
                m
            }
        };
        // Boot slots: which slot booted decides what an operation in flight becomes.
        let booted = installer.ab().and_then(|ab| match ab.booted_slot() {
            Ok(slot) => Some(slot),
            Err(e) => {
                tracing::error!("{e}: no update can be installed");
                None
            }
        });
        if let Some(slot) = booted {
            tracing::info!(%slot, "booted slot");
            machine.handle_boot_observed(slot, clock.now());
        }
        let floor_record = FloorRecord::of(&machine.persisted_state());

        let downloader = Downloader::with_client(cache.clone(), http, &download_config);
        let power = PowerSupplies::new(config.power.power_supply_path.clone());
        let (link_tx, link_rx) = mpsc::unbounded_channel();
        let handle = options
            .mqtt_runtime
            .clone()
            .unwrap_or_else(tokio::runtime::Handle::current);
        let link = Link::start(settings, &handle, link_tx, move || {
            clock.now().as_unix_millis()
        });

        let (shutdown_tx, shutdown_rx) = mpsc::channel(1);
        let initial = AgentStatus::starting(machine.status(), boot32, trust.state().sequence());
        let (status_tx, status_rx) = watch::channel(initial);
        let flags = crate::flags::FlagFile::open(storage.clone(), &data, device.clone());
        let shell = Shell::new(crate::shell::Parts {
            flags,
            trust,
            machine,
            clock,
            journal,
            floor,
            floor_record,
            cache,
            downloader,
            installer,
            probe,
            power,
            data_dir: data,
            link,
            link_rx,
            labels: config.labels.clone(),
            agent_version: options.agent_version.clone(),
            power_poll_interval: options.power_poll_interval,
            persist_retry: options.persist_retry,
            status: status_tx,
            boot_count: boot32,
            booted,
        });
        // Every line the shell logs names its device (several agents may share a process).
        let span = tracing::info_span!("agent", device = %config.device_id);
        let task = tokio::spawn(tracing::Instrument::instrument(
            shell.run(shutdown_rx),
            span,
        ));
        Ok(AgentHandle {
            status: status_rx,
            shutdown: shutdown_tx,
            task,
        })
    }
}

/// The boot count, incremented when the boot id changed since the last start (a reboot), or
/// on every start when the boot id is unknown (conservative: an agent restart then counts as a
/// reboot). The counter is written before the boot id, so a crash in between counts one boot
/// too many, never one too few.
fn count_boot(
    storage: &SharedStorage,
    data: &Path,
    boot_id: Option<String>,
) -> Result<u64, AgentError> {
    let counter = BootCounter::open(storage.clone(), data)?;
    let ids = Journal::open_named(storage.clone(), data, "boot_id")?;
    let boot_id = boot_id.or_else(|| {
        std::fs::read_to_string(BOOT_ID_PATH)
            .ok()
            .map(|s| s.trim().to_owned())
    });
    let Some(boot_id) = boot_id.filter(|b| !b.is_empty()) else {
        return Ok(counter.increment()?);
    };
    let stored = ids.load().ok().flatten();
    let current = counter.current()?;
    if current > 0 && stored.as_deref() == Some(boot_id.as_bytes()) {
        return Ok(current);
    }
    let count = counter.increment()?;
    ids.store(boot_id.as_bytes())?;
    Ok(count)
}

/// The journal file name of the [`FloorRecord`] (`<data_dir>/floor`, `floor.prev`).
pub const FLOOR_RECORD: &str = "floor";

/// A journal's record: the current one, or the previous one when the current one is damaged
/// (a torn write the journal's checksum caught).
fn load_latest(journal: &Journal, what: &str) -> Result<Option<Vec<u8>>, JournalError> {
    match journal.load() {
        Ok(b) => Ok(b),
        Err(JournalError::Corrupt { path, reason }) => {
            tracing::error!(path = %path.display(), reason, "{what} damaged: using the previous one");
            journal.load_previous()
        }
        Err(e) => Err(e),
    }
}

/// The last persisted state (see [`load_latest`]).
pub(crate) fn load_state(journal: &Journal) -> Result<Option<PersistedState>, AgentError> {
    load_latest(journal, "state record")?
        .map(|b| PersistedState::from_cbor(&b).map_err(AgentError::State))
        .transpose()
}

/// The floor record, if one is there and readable (a damaged or undecodable one is logged and
/// ignored: the journal's floor is in force then).
pub(crate) fn load_floor(floor: &Journal) -> Result<Option<FloorRecord>, AgentError> {
    let bytes = match load_latest(floor, "floor record") {
        Ok(b) => b,
        Err(e @ JournalError::Corrupt { .. }) => {
            tracing::error!("{e}: ignoring the floor record");
            None
        }
        Err(e) => return Err(e.into()),
    };
    Ok(bytes.and_then(|b| {
        FloorRecord::from_cbor(&b)
            .inspect_err(|e| tracing::error!("floor record: {e}: ignoring it"))
            .ok()
    }))
}

/// Builds the core machine's configuration from the file's.
pub fn machine_config(
    config: &AgentConfig,
    device: DeviceId,
    trust: ota_core::release::TrustSet,
) -> Config {
    let mut c = Config::new(device, config.hardware_class.clone(), trust);
    c.trial_timeout = config.trial_timeout;
    c.trial_max_reboots = config.trial_max_reboots;
    c.trial_min = config.trial_min;
    c.probe_failures_to_rollback = config.probe_failures_to_rollback;
    c.watch_health = config.health.is_some();
    c.boot_slots = matches!(config.installer, InstallerConfig::Ab { .. });
    c.heartbeat_interval = config.heartbeat_interval;
    if let Some(h) = &config.health {
        c.probe_interval = h.interval();
    }
    c.power = PowerPolicy {
        min_battery_percent: config.power.min_battery_percent,
        require_charging_below_percent: config.power.require_charging_below_percent,
        recheck_interval: config.power.recheck_interval,
    };
    c.windows = windows(&config.maintenance);
    c.disk_margin_bytes = config.download.disk_margin_bytes;
    c.cache_capacity = config.cache_size;
    // Each device gets its own jitter sequence.
    let seed = config
        .device_id
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
    c.retry = RetryPolicy {
        max_retries: config.download.retries,
        initial_backoff: config.download.backoff,
        max_backoff: config.download.max_backoff,
        jitter_seed: seed,
    };
    c
}

fn windows(m: &MaintenanceConfig) -> MaintenanceWindows {
    if m.windows.is_empty() {
        return MaintenanceWindows::always();
    }
    let day = |d: Weekday| match d {
        Weekday::Mon => 0,
        Weekday::Tue => 1,
        Weekday::Wed => 2,
        Weekday::Thu => 3,
        Weekday::Fri => 4,
        Weekday::Sat => 5,
        Weekday::Sun => 6,
    };
    MaintenanceWindows {
        utc_offset_minutes: m.utc_offset_minutes,
        windows: m
            .windows
            .iter()
            .map(|w| MaintenanceWindow {
                days: Weekdays(
                    w.days
                        .iter()
                        .fold(0, |acc, d| acc | Weekdays::only(day(*d)).0),
                ),
                start_minute: w.start.minutes(),
                end_minute: w.end.minutes(),
            })
            .collect(),
    }
}

/// Verifies the factory release (signatures and hardware class; a factory image may be older
/// than its expiry) and copies its artifact into the cache, hashing it on the way.
async fn seed_factory(
    factory: &FactoryConfig,
    config: &Config,
    cache: &Cache,
) -> Result<ReleaseInfo, AgentError> {
    let refuse = |path: &Path, reason: String| AgentError::Factory {
        path: path.to_path_buf(),
        reason,
    };
    let bytes =
        std::fs::read(&factory.release).map_err(|e| refuse(&factory.release, e.to_string()))?;
    let policy = Policy {
        hardware_class: Some(config.hardware_class.clone()),
        security_floor: 0,
        now: 0,
    };
    let verified = SignedRelease::decode(&bytes)
        .and_then(|r| r.verify(&config.trust, &policy))
        .map_err(|e: ReleaseError| refuse(&factory.release, e.to_string()))?;
    let info = ReleaseInfo::from_manifest(&verified.manifest);
    if cache
        .verify_entry(&info.digest, info.size)
        .await
        .unwrap_or(false)
    {
        return Ok(info);
    }
    copy_into_cache(&factory.artifact, &info, cache)
        .await
        .map_err(|reason| refuse(&factory.artifact, reason))?;
    tracing::info!(version = %info.version, digest = %info.digest, "factory release seeded into the cache");
    Ok(info)
}

/// Copies the factory artifact into the cache, hashing it on the way. The source must be a
/// regular file, and at most the signed size plus one byte is read (issue 19.10: a device file
/// such as `/dev/zero` must not fill the disk).
async fn copy_into_cache(src: &Path, info: &ReleaseInfo, cache: &Cache) -> Result<(), String> {
    use std::io::Read;
    let file = std::fs::File::open(src).map_err(|e| e.to_string())?;
    if !file.metadata().map_err(|e| e.to_string())?.is_file() {
        return Err("not a regular file".to_owned());
    }
    let mut file = file.take(info.size.saturating_add(1));
    let st = cache.storage();
    let part = cache.partial_path(&info.digest);
    st.create(&part).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; crate::cache::HASH_CHUNK];
    let mut hasher = Hasher::new();
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(|e| e.to_string())?;
        let Some(chunk) = buf.get(..n).filter(|c| !c.is_empty()) else {
            break;
        };
        hasher.update(chunk);
        st.append(&part, chunk).map_err(|e| e.to_string())?;
        len += n as u64;
        tokio::task::yield_now().await;
    }
    let digest: Digest = hasher.finish();
    if digest != info.digest || len != info.size {
        let _ = cache.remove_partial(&info.digest);
        return Err(format!(
            "the artifact ({len} bytes, {digest}) is not the one the release signs ({} bytes, {})",
            info.size, info.digest
        ));
    }
    cache
        .insert_from_partial(&info.digest)
        .map(drop)
        .map_err(|e| e.to_string())
}

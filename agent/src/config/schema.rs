//! The configuration file's shape: every section and key, its type and its default.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::DEFAULT_DATA_DIR;
use crate::download::MinRate;
use crate::power::DEFAULT_POWER_SUPPLY_PATH;

/// Deserializes humantime durations (`"10m"`).
mod human {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, de::Error};

    pub(super) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| D::Error::custom(format!("{e} in {s:?}")))
    }

    pub(super) fn option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        duration(d).map(Some)
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This device's id (its MQTT client id and topic segment).
    pub device_id: String,
    /// The hardware class releases must list to be installed here.
    pub hardware_class: String,
    /// Free-form labels the fleet server uses to form cohorts.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Journal, boot counter and cache live here.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// How many complete artifacts the cache keeps (the running one and the known-good one
    /// included).
    #[serde(default = "default_cache_size")]
    pub cache_size: usize,
    /// How long a new release may take to prove healthy before the agent rolls back.
    #[serde(
        default = "default_trial_timeout",
        deserialize_with = "human::duration"
    )]
    pub trial_timeout: Duration,
    /// The least time a new release stays on trial before it commits, even when healthy and
    /// heard by the server earlier (default 0): the probe keeps running during this soak and
    /// its latest answer must be healthy. Shorter than `trial_timeout`.
    #[serde(default, deserialize_with = "human::duration")]
    pub trial_min: Duration,
    /// Health probe answers "not yet" in a row that roll the release back at once, before
    /// `trial_timeout` (default 0: only the deadline rolls back a release that never proves
    /// healthy).
    #[serde(default)]
    pub probe_failures_to_rollback: u32,
    /// Which keys sign releases.
    pub trust: TrustConfig,
    /// The MQTT broker.
    pub broker: BrokerConfig,
    /// When the battery allows an update.
    #[serde(default)]
    pub power: PowerConfig,
    /// When the clock allows an update.
    #[serde(default)]
    pub maintenance: MaintenanceConfig,
    /// How releases are installed.
    pub installer: InstallerConfig,
    /// How a release in trial proves healthy (none: only the server heartbeat counts).
    #[serde(default)]
    pub health: Option<HealthConfig>,
    /// Downloader settings.
    #[serde(default)]
    pub download: DownloadSettings,
    /// Pause between heartbeats to the fleet server while connected (default 30 s, at least
    /// [`MIN_HEARTBEAT_INTERVAL`]).
    #[serde(
        default = "default_heartbeat_interval",
        deserialize_with = "human::duration"
    )]
    pub heartbeat_interval: Duration,
    /// How many reboots a trial survives (default 0: a reboot during a trial rolls back).
    #[serde(default)]
    pub trial_max_reboots: u32,
    /// The release a factory-fresh device runs (optional).
    #[serde(default)]
    pub factory: Option<FactoryConfig>,
}

/// The shortest `heartbeat_interval` accepted (issue 19.10: `"1ns"` would flood the server).
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);

/// The shortest `broker.keep_alive` accepted (MQTT keep-alive has a one-second resolution, and
/// `"0s"` would turn it off).
pub const MIN_KEEP_ALIVE: Duration = Duration::from_secs(5);

fn default_heartbeat_interval() -> Duration {
    Duration::from_secs(30)
}

/// The release a factory-fresh device runs: its signed release file and its artifact. On the
/// first start (no journal yet) the agent verifies the release's signatures, copies the
/// artifact into its cache and records the release as running and known-good, so a first
/// update that fails has something to roll back to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FactoryConfig {
    /// The signed release (COSE_Sign) of the factory image, relative to the config file.
    pub release: PathBuf,
    /// Its artifact, relative to the config file.
    pub artifact: PathBuf,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from(DEFAULT_DATA_DIR)
}
fn default_cache_size() -> usize {
    5
}
fn default_trial_timeout() -> Duration {
    Duration::from_secs(600)
}

/// Where a trust key comes from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum KeySource {
    /// A SPKI PEM file (`{ file = "release-1.pem" }`), relative to the config file.
    File(PathBuf),
    /// An inline SPKI PEM (`{ pem = """-----BEGIN PUBLIC KEY-----…""" }`).
    Pem(String),
}

/// The release trust set: `threshold` of `keys` must sign.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustConfig {
    /// The trusted ed25519 public keys.
    pub keys: Vec<KeySource>,
    /// How many distinct keys must sign a release.
    #[serde(default = "default_threshold")]
    pub threshold: usize,
}

fn default_threshold() -> usize {
    1
}

/// The MQTT broker connection. TLS and credentials are read by the MQTT shell. Its `Debug`
/// hides the password.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    /// More URLs of the same broker cluster (or of brokers that serve the same fleet): after
    /// every failed or lost connection the agent moves on to the next URL of `url`,
    /// `failover_urls...` (round robin), after the same backoff wait. TLS and credentials
    /// apply to each. Default: none.
    #[serde(default)]
    pub failover_urls: Vec<String>,
    /// The fleet's MQTT topic namespace: every topic is `{topic_prefix}/...`; the same as the
    /// server's `mqtt.topic_prefix` (default `ota/v1`).
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// A PEM CA bundle to verify the broker with (`mqtts`).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A PEM client certificate (mutual TLS), with `client_key`.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// The PEM private key of `client_cert`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// MQTT user name.
    #[serde(default)]
    pub username: Option<String>,
    /// MQTT password (with `username`).
    #[serde(default)]
    pub password: Option<String>,
    /// A file holding the MQTT password (with `username`; trailing newline ignored): preferred
    /// over `password`, so the configuration file can stay readable.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// MQTT keep-alive (default 30 s, at least [`MIN_KEEP_ALIVE`]).
    #[serde(default = "default_keep_alive", deserialize_with = "human::duration")]
    pub keep_alive: Duration,
    /// The first wait before reconnecting after the connection is lost; it doubles (with
    /// jitter) after each failed attempt up to `max_reconnect_backoff` (defaults 1 s, 60 s).
    #[serde(
        default = "default_reconnect_backoff",
        deserialize_with = "human::duration"
    )]
    pub reconnect_backoff: Duration,
    /// The longest wait between reconnect attempts.
    #[serde(
        default = "default_max_reconnect_backoff",
        deserialize_with = "human::duration"
    )]
    pub max_reconnect_backoff: Duration,
}

fn default_topic_prefix() -> String {
    ota_core::wire::DEFAULT_TOPIC_PREFIX.to_string()
}

impl BrokerConfig {
    /// The fleet's topic namespace (`topic_prefix`, checked when the configuration is loaded;
    /// the default one if it were not valid).
    pub fn topics(&self) -> ota_core::wire::Topics {
        ota_core::wire::Topics::new(&self.topic_prefix).unwrap_or_default()
    }

    /// Every broker URL in the order the agent tries them (`url` first), each with its
    /// configuration key.
    pub fn urls(&self) -> impl Iterator<Item = (String, &str)> {
        std::iter::once(("broker.url".to_string(), self.url.as_str())).chain(
            self.failover_urls
                .iter()
                .enumerate()
                .map(|(i, u)| (format!("broker.failover_urls[{i}]"), u.as_str())),
        )
    }
}

impl fmt::Debug for BrokerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Every field but the password; a new secret field must be hidden here too.
        f.debug_struct("BrokerConfig")
            .field("url", &self.url)
            .field("failover_urls", &self.failover_urls)
            .field("topic_prefix", &self.topic_prefix)
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_file", &self.password_file)
            .field("keep_alive", &self.keep_alive)
            .field("reconnect_backoff", &self.reconnect_backoff)
            .field("max_reconnect_backoff", &self.max_reconnect_backoff)
            .finish_non_exhaustive()
    }
}

fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}
fn default_reconnect_backoff() -> Duration {
    Duration::from_secs(1)
}
fn default_max_reconnect_backoff() -> Duration {
    Duration::from_secs(60)
}

/// The battery gate (the core machine's `PowerPolicy`). Below `min_battery_percent` an update
/// starts only while the battery is charging; below `require_charging_below_percent` a
/// connected charger (charging, or external power online) is enough. Devices without a battery
/// are never gated.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PowerConfig {
    /// Below this charge (percent), update only while the battery is charging (default 20).
    #[serde(default = "default_min_battery")]
    pub min_battery_percent: u8,
    /// Below this charge (percent), update only with a charger connected (default 0: never
    /// required).
    #[serde(default = "default_require_charging")]
    pub require_charging_below_percent: u8,
    /// The sysfs power-supply tree.
    #[serde(default = "default_power_path")]
    pub power_supply_path: PathBuf,
    /// How often a deferred update re-reads the power state.
    #[serde(default = "default_recheck", deserialize_with = "human::duration")]
    pub recheck_interval: Duration,
}

fn default_min_battery() -> u8 {
    20
}
fn default_require_charging() -> u8 {
    0
}
fn default_power_path() -> PathBuf {
    PathBuf::from(DEFAULT_POWER_SUPPLY_PATH)
}
fn default_recheck() -> Duration {
    Duration::from_secs(300)
}

impl Default for PowerConfig {
    fn default() -> Self {
        PowerConfig {
            min_battery_percent: default_min_battery(),
            require_charging_below_percent: default_require_charging(),
            power_supply_path: default_power_path(),
            recheck_interval: default_recheck(),
        }
    }
}

/// A day of the week.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Weekday {
    /// Monday.
    Mon,
    /// Tuesday.
    Tue,
    /// Wednesday.
    Wed,
    /// Thursday.
    Thu,
    /// Friday.
    Fri,
    /// Saturday.
    Sat,
    /// Sunday.
    Sun,
}

impl Weekday {
    /// Every day, Monday first.
    pub const ALL: [Weekday; 7] = [
        Weekday::Mon,
        Weekday::Tue,
        Weekday::Wed,
        Weekday::Thu,
        Weekday::Fri,
        Weekday::Sat,
        Weekday::Sun,
    ];
}

/// A local time of day, `"HH:MM"` from `00:00` to `24:00`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeOfDay(u16);

impl TimeOfDay {
    /// Minutes since midnight (0..=1440).
    pub fn minutes(self) -> u16 {
        self.0
    }

    /// Parses `"HH:MM"`.
    pub fn parse(s: &str) -> Option<Self> {
        let (h, m) = s.split_once(':')?;
        if h.len() != 2 || m.len() != 2 {
            return None;
        }
        let h: u16 = h.parse().ok()?;
        let m: u16 = m.parse().ok()?;
        if m >= 60 || h > 24 || (h == 24 && m != 0) {
            return None;
        }
        Some(TimeOfDay(h * 60 + m))
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.0 / 60, self.0 % 60)
    }
}

impl<'de> Deserialize<'de> for TimeOfDay {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TimeOfDay::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{s:?} is not a time of day \"HH:MM\" (00:00-24:00)"
            ))
        })
    }
}

/// A maintenance window: on each of `days`, from `start` to `end` local time. An `end` before
/// `start` crosses midnight (it ends the next day); an `end` equal to `start` is a whole day
/// (the core machine's `MaintenanceWindow`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceWindow {
    /// The days the window opens (default: every day).
    #[serde(default = "all_days")]
    pub days: Vec<Weekday>,
    /// Opening time.
    pub start: TimeOfDay,
    /// Closing time.
    pub end: TimeOfDay,
}

fn all_days() -> Vec<Weekday> {
    Weekday::ALL.to_vec()
}

/// When updates may be installed. No window: any time.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceConfig {
    /// Local time = UTC + this offset (minutes, -720..=840). Devices often lack a time zone
    /// database, so the offset is explicit.
    #[serde(default)]
    pub utc_offset_minutes: i16,
    /// The windows.
    #[serde(default)]
    pub windows: Vec<MaintenanceWindow>,
}

/// How releases are installed (`kind = "files"`, `"command"` or `"ab"`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum InstallerConfig {
    /// Release files under `root` and a `current` symlink.
    Files {
        /// The directory holding `releases/` and `current`.
        root: PathBuf,
        /// A command (argv) run after the switch, e.g. `["systemctl", "restart", "app"]`.
        #[serde(default)]
        restart_command: Option<Vec<String>>,
        /// Limit for the restart command.
        #[serde(default, deserialize_with = "human::option")]
        timeout: Option<Duration>,
    },
    /// A user command with `OTA_ARTIFACT`, `OTA_VERSION`, `OTA_DIGEST` in its environment.
    Command {
        /// The program.
        program: String,
        /// Its arguments.
        #[serde(default)]
        args: Vec<String>,
        /// Limit for the command.
        #[serde(default, deserialize_with = "human::option")]
        timeout: Option<Duration>,
    },
    /// A/B root-filesystem slots and a bootloader (docs/agent.md, "Gateway with A/B slots").
    Ab {
        /// Slot A: a block device, a partition or an image file (never created or truncated).
        slot_a: PathBuf,
        /// Slot B.
        slot_b: PathBuf,
        /// The bootloader backend.
        bootloader: BootloaderConfig,
        /// The command (argv) that reboots the device, e.g. `["systemctl", "reboot"]`.
        reboot_command: Vec<String>,
        /// The kernel command line the booted slot is read from (`ota.slot=` or `rauc.slot=`).
        #[serde(default = "default_cmdline")]
        cmdline: PathBuf,
        /// Limit for each bootloader tool and the reboot command.
        #[serde(default, deserialize_with = "human::option")]
        timeout: Option<Duration>,
    },
}

fn default_cmdline() -> PathBuf {
    PathBuf::from("/proc/cmdline")
}

/// The `ab` installer's bootloader (`kind = "grub"`, `"uboot"` or `"custom"`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BootloaderConfig {
    /// GRUB's environment block, edited with `grub-editenv`.
    Grub {
        /// The environment block, e.g. `/boot/grub/grubenv`.
        env_file: PathBuf,
        /// The tool (default `grub-editenv`).
        #[serde(default = "default_editenv")]
        editenv: String,
    },
    /// U-Boot's environment, edited with libubootenv's `fw_setenv`.
    #[serde(rename = "uboot")]
    UBoot {
        /// The `fw_env.config` that says where the environment is.
        fw_env_config: PathBuf,
        /// The tool (default `fw_setenv`).
        #[serde(default = "default_fw_setenv")]
        fw_setenv: String,
    },
    /// User commands, each run with `OTA_SLOT` (`A` or `B`).
    Custom {
        /// Makes the bootloader boot `$OTA_SLOT` once.
        try_command: Vec<String>,
        /// Makes `$OTA_SLOT` the default and cancels a pending try (idempotent).
        boot_command: Vec<String>,
    },
}

fn default_editenv() -> String {
    "grub-editenv".to_owned()
}

fn default_fw_setenv() -> String {
    "fw_setenv".to_owned()
}

/// The health probe of the trial (`kind = "command"`, `"http"` or `"heartbeat"`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum HealthConfig {
    /// A command that must exit 0.
    Command {
        /// The program.
        program: String,
        /// Its arguments.
        #[serde(default)]
        args: Vec<String>,
        /// Limit for one run.
        #[serde(
            default = "default_probe_timeout",
            deserialize_with = "human::duration"
        )]
        timeout: Duration,
        /// Time between probes during the trial.
        #[serde(
            default = "default_probe_interval",
            deserialize_with = "human::duration"
        )]
        interval: Duration,
    },
    /// A local URL that must answer 2xx.
    Http {
        /// The URL.
        url: String,
        /// Limit for one request.
        #[serde(
            default = "default_probe_timeout",
            deserialize_with = "human::duration"
        )]
        timeout: Duration,
        /// Time between probes during the trial.
        #[serde(
            default = "default_probe_interval",
            deserialize_with = "human::duration"
        )]
        interval: Duration,
    },
    /// A file the application touches.
    Heartbeat {
        /// The file.
        path: PathBuf,
        /// How recent its modification must be.
        #[serde(default = "default_freshness", deserialize_with = "human::duration")]
        freshness: Duration,
        /// Time between probes during the trial.
        #[serde(
            default = "default_probe_interval",
            deserialize_with = "human::duration"
        )]
        interval: Duration,
    },
}

fn default_probe_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_probe_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_freshness() -> Duration {
    Duration::from_secs(60)
}

impl HealthConfig {
    /// Time between probes during the trial.
    pub fn interval(&self) -> Duration {
        match self {
            HealthConfig::Command { interval, .. }
            | HealthConfig::Http { interval, .. }
            | HealthConfig::Heartbeat { interval, .. } => *interval,
        }
    }
}

/// Downloader and retry settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownloadSettings {
    /// Bytes per write to the partial file.
    #[serde(default = "default_chunk_size")]
    pub chunk_size: usize,
    /// Retries after a transient failure before the update is reported failed (default 8).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Wait before the first retry, doubled with each retry, with jitter (default 5 s).
    #[serde(default = "default_backoff", deserialize_with = "human::duration")]
    pub backoff: Duration,
    /// Longest wait between attempts.
    #[serde(default = "default_max_backoff", deserialize_with = "human::duration")]
    pub max_backoff: Duration,
    /// Limit for connecting.
    #[serde(
        default = "default_connect_timeout",
        deserialize_with = "human::duration"
    )]
    pub connect_timeout: Duration,
    /// Limit for waiting on the next bytes.
    #[serde(default = "default_read_timeout", deserialize_with = "human::duration")]
    pub read_timeout: Duration,
    /// The pinned CA bundle (PEM) for HTTPS artifact servers: when set, only these
    /// certificates are trusted (no system root); unset, the platform's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A client certificate chain (PEM) for HTTPS artifact servers that ask for one, with
    /// `client_key`.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// The PEM private key of `client_cert`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// Refuse plain `http://` artifact URLs (default false: the signed digest protects the
    /// bytes; TLS adds confidentiality and protection against a network attacker wasting
    /// the download).
    #[serde(default)]
    pub require_https: bool,
    /// Free bytes required on the data directory's disk beyond the artifact's size before a
    /// download starts (default 16 MiB).
    #[serde(default = "default_disk_margin")]
    pub disk_margin_bytes: u64,
    /// Slow-retrieval guard: least average bytes per second over `min_rate_window` before the
    /// transfer is cut and retried (default 1024; 0 turns the guard off).
    #[serde(default = "default_min_rate")]
    pub min_bytes_per_second: u64,
    /// The window the minimum rate is averaged over (default 60 s).
    #[serde(
        default = "default_min_rate_window",
        deserialize_with = "human::duration"
    )]
    pub min_rate_window: Duration,
    /// Build artifacts by delta when the release has a chunk index: copy the chunks the
    /// device already holds, fetch only the others (default true; docs/delta.md).
    #[serde(default = "default_delta")]
    pub delta: bool,
    /// Files whose chunks a delta may copy besides the cached artifacts, e.g. the block device
    /// of the running root filesystem (read only; every chunk is re-hashed before use).
    #[serde(default)]
    pub delta_seeds: Vec<PathBuf>,
}

fn default_delta() -> bool {
    true
}

fn default_min_rate() -> u64 {
    MinRate::DEFAULT.bytes_per_second
}
fn default_min_rate_window() -> Duration {
    MinRate::DEFAULT.window
}

fn default_disk_margin() -> u64 {
    16 * 1024 * 1024
}

fn default_chunk_size() -> usize {
    64 * 1024
}
fn default_retries() -> u32 {
    8
}
fn default_backoff() -> Duration {
    Duration::from_secs(5)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(600)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_read_timeout() -> Duration {
    Duration::from_secs(60)
}

impl Default for DownloadSettings {
    fn default() -> Self {
        DownloadSettings {
            chunk_size: default_chunk_size(),
            retries: default_retries(),
            backoff: default_backoff(),
            max_backoff: default_max_backoff(),
            connect_timeout: default_connect_timeout(),
            read_timeout: default_read_timeout(),
            ca_file: None,
            client_cert: None,
            client_key: None,
            require_https: false,
            disk_margin_bytes: default_disk_margin(),
            min_bytes_per_second: default_min_rate(),
            min_rate_window: default_min_rate_window(),
            delta: default_delta(),
            delta_seeds: Vec::new(),
        }
    }
}

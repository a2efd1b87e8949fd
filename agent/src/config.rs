//! The agent's configuration file (TOML, default [`DEFAULT_CONFIG_PATH`]).
//!
//! `agent/examples/config.toml` is a documented example of every key. Unknown keys are
//! refused, and every error names the key it is about ([`ConfigError`]). Durations are
//! humantime strings (`"90s"`, `"10m"`, `"1h 30m"`). Every relative path is resolved against
//! the configuration file's directory ([`AgentConfig::resolve_paths`]), never against the
//! working directory.
//!
//! Loading checks the shape and the values; the trust keys themselves are read by
//! [`AgentConfig::trust_set`] (so a configuration can be checked on a machine without the
//! keys).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use ed25519_dalek::pkcs8::DecodePublicKey;
use ota_core::release::{TrustSet, TrustSetError};
use ota_core::wire::{DeviceId, WireLimits};
use serde::Deserialize;

use crate::bootloader::{Bootloader, Custom, Grub, UBoot};
use crate::download::{DownloadConfig, MinRate};
use crate::health::{HealthError, HealthProbe};
use crate::install::{AbInstaller, CommandInstaller, FilesInstaller, Installer};
use crate::power::DEFAULT_POWER_SUPPLY_PATH;
use crate::process::CommandSpec;
use crate::storage::SharedStorage;

/// Where the agent looks for its configuration unless told otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/ota-agent/config.toml";
/// The default data directory (journal, boot counter, cache).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/ota-agent";

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read the configuration {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The TOML does not parse or a key has the wrong type, is missing or is unknown.
    #[error("configuration key `{key}`: {message}")]
    Parse {
        /// The dotted path of the key (`.` for the document itself).
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A key's value is out of range or inconsistent with another key.
    #[error("configuration key `{key}`: {reason}")]
    Invalid {
        /// The dotted path of the key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A trust key file cannot be read.
    #[error("configuration key `{key}`: cannot read {path}: {source}")]
    KeyFile {
        /// The key entry (`trust.keys[i]`).
        key: String,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A trust key is not an ed25519 SPKI PEM public key.
    #[error("configuration key `{key}`: not an ed25519 public key in SPKI PEM: {reason}")]
    KeyPem {
        /// The key entry (`trust.keys[i]`).
        key: String,
        /// What the decoder said.
        reason: String,
    },
    /// The keys and threshold do not make a trust set.
    #[error("configuration key `trust`: {0}")]
    Trust(#[source] TrustSetError),
    /// The configuration or a trust key file is writable by every user: anyone on the device
    /// could make the agent trust their key. `chmod o-w` it.
    #[error("{path} is world-writable: refusing to trust it (chmod o-w {path})")]
    WorldWritable {
        /// The file.
        path: PathBuf,
    },
}

/// Refuses a file every user may write (the configuration, a trust key). A file that cannot
/// be examined passes here: reading it reports why.
fn refuse_world_writable(path: &Path) -> Result<(), ConfigError> {
    if is_world_writable(path) {
        return Err(ConfigError::WorldWritable {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// Whether every user may write `path` (false when it cannot be examined).
pub(crate) fn is_world_writable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o002 != 0)
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

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

/// Checks one broker URL (`key` names it in the error): `mqtt://` or `mqtts://`, a host, no
/// credentials (refused without quoting the URL: its user-info may hold a password).
fn check_broker_url(key: String, url: &str) -> Result<(), ConfigError> {
    if !(url.starts_with("mqtt://") || url.starts_with("mqtts://"))
        || url
            .split_once("://")
            .is_some_and(|(_, rest)| rest.is_empty())
    {
        return Err(invalid(
            key,
            "must be mqtt://host:port or mqtts://host:port",
        ));
    }
    if url.contains('@') {
        return Err(invalid(
            key,
            "credentials do not belong in the URL: set broker.username and broker.password",
        ));
    }
    crate::mqtt::parse_broker_url(url).map_err(|e| invalid(key, e.to_string()))?;
    Ok(())
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

/// The scratch file of the U-Boot backend's `fw_setenv -s` script, in the data directory.
pub const UBOOT_SCRIPT: &str = "uboot-env.script";

impl BootloaderConfig {
    /// The backend this configuration describes (`data_dir` holds its scratch files).
    pub fn build(&self, data_dir: &Path, timeout: Option<Duration>) -> Bootloader {
        match self {
            BootloaderConfig::Grub { env_file, editenv } => {
                Bootloader::Grub(Grub::new(editenv.clone(), env_file.clone()).with_timeout(timeout))
            }
            BootloaderConfig::UBoot {
                fw_env_config,
                fw_setenv,
            } => Bootloader::UBoot(
                UBoot::new(
                    fw_setenv.clone(),
                    fw_env_config.clone(),
                    data_dir.join(UBOOT_SCRIPT),
                )
                .with_timeout(timeout),
            ),
            BootloaderConfig::Custom {
                try_command,
                boot_command,
            } => {
                let spec = |argv: &[String]| {
                    CommandSpec::new(argv.first().cloned().unwrap_or_default())
                        .with_args(argv.iter().skip(1).cloned())
                };
                Bootloader::Custom(
                    Custom::new(spec(try_command), spec(boot_command)).with_timeout(timeout),
                )
            }
        }
    }
}

impl InstallerConfig {
    /// The installer this configuration describes (`data_dir` holds the agent's scratch
    /// files).
    pub fn build(&self, storage: SharedStorage, data_dir: &Path) -> Installer {
        match self {
            InstallerConfig::Files {
                root,
                restart_command,
                timeout,
            } => Installer::Files(
                FilesInstaller::new(storage, root.clone())
                    .with_restart_command(restart_command.as_deref().and_then(argv))
                    .with_timeout(*timeout),
            ),
            InstallerConfig::Command {
                program,
                args,
                timeout,
            } => Installer::Command(
                CommandInstaller::new(CommandSpec::new(program.clone()).with_args(args.clone()))
                    .with_timeout(*timeout),
            ),
            InstallerConfig::Ab {
                slot_a,
                slot_b,
                bootloader,
                reboot_command,
                cmdline,
                timeout,
            } => Installer::Ab(
                AbInstaller::new(
                    slot_a.clone(),
                    slot_b.clone(),
                    bootloader.build(data_dir, *timeout),
                    argv(reboot_command).unwrap_or_else(|| CommandSpec::new(String::new())),
                )
                .with_cmdline(cmdline.clone())
                .with_timeout(*timeout),
            ),
        }
    }
}

fn argv(list: &[String]) -> Option<CommandSpec> {
    let (program, args) = list.split_first()?;
    Some(CommandSpec::new(program.clone()).with_args(args.iter().cloned()))
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

    /// The probe this configuration describes.
    pub fn build(&self) -> Result<HealthProbe, HealthError> {
        Ok(match self {
            HealthConfig::Command {
                program,
                args,
                timeout,
                ..
            } => HealthProbe::command(
                CommandSpec::new(program.clone()).with_args(args.clone()),
                *timeout,
            ),
            HealthConfig::Http { url, timeout, .. } => HealthProbe::http(url.clone(), *timeout)?,
            HealthConfig::Heartbeat {
                path, freshness, ..
            } => HealthProbe::heartbeat(path.clone(), *freshness),
        })
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

impl DownloadSettings {
    /// The downloader's configuration.
    pub fn downloader_config(&self) -> DownloadConfig {
        let mut c = DownloadConfig::new()
            .with_chunk_size(self.chunk_size)
            .with_timeouts(self.connect_timeout, self.read_timeout)
            // A zero rate or window turns the guard off (the downloader ignores it).
            .with_min_rate(Some(MinRate {
                bytes_per_second: self.min_bytes_per_second,
                window: self.min_rate_window,
            }));
        if let Some(ca) = &self.ca_file {
            c = c.with_ca_file(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
            c = c.with_client_identity(cert.clone(), key.clone());
        }
        c.with_require_https(self.require_https)
            .with_delta(self.delta, self.delta_seeds.clone())
    }
}

/// The largest chunk size accepted (64 MiB).
const MAX_CHUNK: usize = 64 << 20;

impl AgentConfig {
    /// Reads and checks the configuration file at `path`. Every relative path in it is
    /// resolved against the file's directory (see [`AgentConfig::resolve_paths`]). A
    /// world-writable file is refused.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        refuse_world_writable(path)?;
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Self::from_toml_str(&text)?;
        config.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        Ok(config)
    }

    /// Resolves every relative path of the configuration against `base` (the configuration
    /// file's directory), one rule for all: `data_dir`, trust key files, the broker's and the
    /// downloader's TLS files and delta seed files, the broker password file, the factory release and artifact, the
    /// files installer's `root`, `power.power_supply_path`, the heartbeat probe's `path`, and
    /// the programs of the command installer, the restart command and the command probe when
    /// they contain a `/` (a bare name such as `systemctl` is looked up on `PATH`).
    pub fn resolve_paths(&mut self, base: &Path) {
        let keys = self.trust.keys.iter_mut().filter_map(|k| match k {
            KeySource::File(p) => Some(p),
            _ => None,
        });
        let b = &mut self.broker;
        let broker = [
            &mut b.ca_file,
            &mut b.client_cert,
            &mut b.client_key,
            &mut b.password_file,
        ];
        let d = &mut self.download;
        let seeds = d.delta_seeds.iter_mut();
        let download = [&mut d.ca_file, &mut d.client_cert, &mut d.client_key];
        let factory = self
            .factory
            .iter_mut()
            .flat_map(|f| [&mut f.release, &mut f.artifact]);
        let heartbeat = match &mut self.health {
            Some(HealthConfig::Heartbeat { path, .. }) => Some(path),
            _ => None,
        };
        let installer_paths: Vec<&mut PathBuf> = match &mut self.installer {
            InstallerConfig::Files { root, .. } => vec![root],
            InstallerConfig::Command { .. } => vec![],
            InstallerConfig::Ab {
                slot_a,
                slot_b,
                bootloader,
                cmdline,
                ..
            } => {
                let mut v = vec![slot_a, slot_b, cmdline];
                match bootloader {
                    BootloaderConfig::Grub { env_file, .. } => v.push(env_file),
                    BootloaderConfig::UBoot { fw_env_config, .. } => v.push(fw_env_config),
                    BootloaderConfig::Custom { .. } => {}
                }
                v
            }
        };
        let files = broker.into_iter().chain(download).flatten().chain(seeds);
        let fixed = [&mut self.data_dir, &mut self.power.power_supply_path];
        for p in keys
            .chain(files)
            .chain(factory)
            .chain(heartbeat)
            .chain(installer_paths)
            .chain(fixed)
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        let mut programs: Vec<&mut String> = match &mut self.installer {
            InstallerConfig::Command { program, .. } => vec![program],
            InstallerConfig::Files {
                restart_command, ..
            } => restart_command
                .as_mut()
                .and_then(|argv| argv.first_mut())
                .into_iter()
                .collect(),
            InstallerConfig::Ab {
                bootloader,
                reboot_command,
                ..
            } => {
                let tool = match bootloader {
                    BootloaderConfig::Grub { editenv, .. } => vec![editenv],
                    BootloaderConfig::UBoot { fw_setenv, .. } => vec![fw_setenv],
                    BootloaderConfig::Custom {
                        try_command,
                        boot_command,
                    } => try_command
                        .first_mut()
                        .into_iter()
                        .chain(boot_command.first_mut())
                        .collect(),
                };
                tool.into_iter().chain(reboot_command.first_mut()).collect()
            }
        };
        if let Some(HealthConfig::Command { program, .. }) = &mut self.health {
            programs.push(program);
        }
        for program in programs {
            if program.contains('/') && Path::new(program.as_str()).is_relative() {
                *program = base.join(program.as_str()).display().to_string();
            }
        }
    }

    /// Parses and checks a configuration (relative key paths stay relative to the working
    /// directory).
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| ConfigError::Parse {
            key: ".".to_owned(),
            message: e.message().to_owned(),
        })?;
        let config: AgentConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::Parse {
                key,
                message: e.into_inner().message().to_owned(),
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values serde cannot: ranges and consistency.
    fn validate(&self) -> Result<(), ConfigError> {
        if self.device_id.is_empty()
            || !self
                .device_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(invalid(
                "device_id",
                "must be non-empty ASCII letters, digits, '-', '_' or '.' (it is an MQTT topic segment)",
            ));
        }
        // The same id the agent builds at start-up ("." and "..", over-long ids): a config that
        // parses must not fail later (the config_parse fuzz target's invariant, issue 7).
        if let Err(e) = DeviceId::check(&self.device_id) {
            return Err(invalid("device_id", e.to_string()));
        }
        if self.hardware_class.is_empty() {
            return Err(invalid("hardware_class", "must not be empty"));
        }
        // The reported state carries the hardware class and the labels: beyond the wire limits
        // the fleet server would refuse every report of this device.
        if self.hardware_class.len() > WireLimits::MAX_NAME_BYTES {
            return Err(invalid(
                "hardware_class",
                format!("must be at most {} bytes", WireLimits::MAX_NAME_BYTES),
            ));
        }
        if self.labels.len() > WireLimits::MAX_LABELS {
            return Err(invalid(
                "labels",
                format!("at most {} labels", WireLimits::MAX_LABELS),
            ));
        }
        for (k, v) in &self.labels {
            if k.len() > WireLimits::MAX_NAME_BYTES || v.len() > WireLimits::MAX_LABEL_VALUE_BYTES {
                return Err(invalid(
                    format!("labels.{k}"),
                    format!(
                        "keys are at most {} bytes, values at most {}",
                        WireLimits::MAX_NAME_BYTES,
                        WireLimits::MAX_LABEL_VALUE_BYTES
                    ),
                ));
            }
        }
        if self.cache_size == 0 {
            return Err(invalid("cache_size", "must be at least 1"));
        }
        if self.trial_timeout.is_zero() {
            return Err(invalid("trial_timeout", "must be longer than zero"));
        }
        if self.trial_min >= self.trial_timeout {
            return Err(invalid(
                "trial_min",
                "must be shorter than trial_timeout (the release could never commit)",
            ));
        }
        if self.trust.keys.is_empty() {
            return Err(invalid("trust.keys", "at least one key is needed"));
        }
        if self.trust.threshold == 0 || self.trust.threshold > self.trust.keys.len() {
            return Err(invalid(
                "trust.threshold",
                format!(
                    "must be between 1 and the number of keys ({})",
                    self.trust.keys.len()
                ),
            ));
        }
        let b = &self.broker;
        for (key, url) in b.urls() {
            check_broker_url(key, url)?;
        }
        if let Err(e) = ota_core::wire::Topics::new(&b.topic_prefix) {
            return Err(invalid("broker.topic_prefix", e.to_string()));
        }
        if b.client_cert.is_some() != b.client_key.is_some() {
            return Err(invalid(
                "broker.client_cert",
                "client_cert and client_key go together",
            ));
        }
        if self.download.client_cert.is_some() != self.download.client_key.is_some() {
            return Err(invalid(
                "download.client_cert",
                "client_cert and client_key go together",
            ));
        }
        if (b.password.is_some() || b.password_file.is_some()) && b.username.is_none() {
            return Err(invalid("broker.password", "a password needs a username"));
        }
        if b.password.is_some() && b.password_file.is_some() {
            return Err(invalid(
                "broker.password_file",
                "set password or password_file, not both",
            ));
        }
        if b.reconnect_backoff.is_zero() || b.reconnect_backoff > b.max_reconnect_backoff {
            return Err(invalid(
                "broker.reconnect_backoff",
                "must be longer than zero and not exceed broker.max_reconnect_backoff",
            ));
        }
        if self.heartbeat_interval < MIN_HEARTBEAT_INTERVAL {
            return Err(invalid("heartbeat_interval", "must be at least 100ms"));
        }
        if b.keep_alive < MIN_KEEP_ALIVE {
            return Err(invalid("broker.keep_alive", "must be at least 5s"));
        }
        let p = &self.power;
        if p.min_battery_percent > 100 {
            return Err(invalid("power.min_battery_percent", "must be 0..=100"));
        }
        if p.require_charging_below_percent > 100 {
            return Err(invalid(
                "power.require_charging_below_percent",
                "must be 0..=100",
            ));
        }
        if p.recheck_interval.is_zero() {
            return Err(invalid(
                "power.recheck_interval",
                "must be longer than zero",
            ));
        }
        let m = &self.maintenance;
        if !(-720..=840).contains(&m.utc_offset_minutes) {
            return Err(invalid(
                "maintenance.utc_offset_minutes",
                "must be between -720 and 840",
            ));
        }
        for (i, w) in m.windows.iter().enumerate() {
            if w.days.is_empty() {
                return Err(invalid(
                    format!("maintenance.windows[{i}].days"),
                    "must list at least one day (omit it for every day)",
                ));
            }
        }
        match &self.installer {
            InstallerConfig::Files {
                restart_command: Some(argv),
                ..
            } if argv.first().is_none_or(String::is_empty) => {
                return Err(invalid(
                    "installer.restart_command",
                    "must start with a program",
                ));
            }
            InstallerConfig::Command { program, .. } if program.is_empty() => {
                return Err(invalid("installer.program", "must not be empty"));
            }
            InstallerConfig::Ab {
                slot_a,
                slot_b,
                bootloader,
                reboot_command,
                ..
            } => {
                if slot_a == slot_b {
                    return Err(invalid("installer.slot_b", "must differ from slot_a"));
                }
                if reboot_command.first().is_none_or(String::is_empty) {
                    return Err(invalid(
                        "installer.reboot_command",
                        "must start with a program",
                    ));
                }
                if let BootloaderConfig::Custom {
                    try_command,
                    boot_command,
                } = bootloader
                {
                    for (key, argv) in [
                        ("installer.bootloader.try_command", try_command),
                        ("installer.bootloader.boot_command", boot_command),
                    ] {
                        if argv.first().is_none_or(String::is_empty) {
                            return Err(invalid(key, "must start with a program"));
                        }
                    }
                }
            }
            _ => {}
        }
        match &self.health {
            Some(HealthConfig::Command { program, .. }) if program.is_empty() => {
                return Err(invalid("health.program", "must not be empty"));
            }
            Some(HealthConfig::Http { url, .. })
                if !(url.starts_with("http://") || url.starts_with("https://")) =>
            {
                return Err(invalid("health.url", "must be an http:// or https:// URL"));
            }
            Some(h) if h.interval().is_zero() => {
                return Err(invalid("health.interval", "must be longer than zero"));
            }
            _ => {}
        }
        let d = &self.download;
        if d.chunk_size == 0 || d.chunk_size > MAX_CHUNK {
            return Err(invalid(
                "download.chunk_size",
                format!("must be between 1 and {MAX_CHUNK} bytes"),
            ));
        }
        if d.backoff > d.max_backoff {
            return Err(invalid(
                "download.backoff",
                "must not exceed download.max_backoff",
            ));
        }
        Ok(())
    }

    /// Reads the trust keys and builds the trust set (a world-writable key file is refused).
    pub fn trust_set(&self) -> Result<TrustSet, ConfigError> {
        let mut keys = Vec::with_capacity(self.trust.keys.len());
        for (i, source) in self.trust.keys.iter().enumerate() {
            let key = format!("trust.keys[{i}]");
            let pem = match source {
                KeySource::Pem(pem) => pem.clone(),
                KeySource::File(path) => {
                    refuse_world_writable(path)?;
                    std::fs::read_to_string(path).map_err(|source| ConfigError::KeyFile {
                        key: key.clone(),
                        path: path.clone(),
                        source,
                    })?
                }
            };
            let vk =
                VerifyingKey::from_public_key_pem(pem.trim()).map_err(|e| ConfigError::KeyPem {
                    key,
                    reason: e.to_string(),
                })?;
            keys.push(vk);
        }
        TrustSet::new(keys, self.trust.threshold).map_err(ConfigError::Trust)
    }
}

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
//!
//! | module | holds |
//! |---|---|
//! | `schema` | the file's shape: every section and key, its type and its default |
//! | `validate` | what serde cannot check: ranges, consistency between keys, broker URLs |
//! | `build` | what the agent builds from it: installer, bootloader, health probe, downloader settings, trust set |
//! | this module | loading (read, parse, validate, resolve relative paths) and [`ConfigError`] |

mod build;
mod schema;
mod validate;

use std::path::{Path, PathBuf};

use ota_core::release::TrustSetError;

pub use build::UBOOT_SCRIPT;
pub use schema::*;

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
}

//! What the agent builds from its configuration: the installer and its bootloader, the
//! health probe, the downloader's settings and the trust set.

use std::path::Path;
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use ed25519_dalek::pkcs8::DecodePublicKey;
use ota_core::release::TrustSet;

use super::{
    AgentConfig, BootloaderConfig, ConfigError, DownloadSettings, HealthConfig, InstallerConfig,
    KeySource, refuse_world_writable,
};
use crate::bootloader::{Bootloader, Custom, Grub, UBoot};
use crate::download::{DownloadConfig, MinRate};
use crate::health::{HealthError, HealthProbe};
use crate::install::{AbInstaller, CommandInstaller, FilesInstaller, Installer};
use crate::process::CommandSpec;
use crate::storage::SharedStorage;

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

impl HealthConfig {
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

impl AgentConfig {
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

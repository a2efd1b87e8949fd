//! What serde cannot check: ranges, consistency between keys, broker URLs.

use ota_core::wire::{DeviceId, WireLimits};

use super::{
    AgentConfig, BootloaderConfig, ConfigError, HealthConfig, InstallerConfig,
    MIN_HEARTBEAT_INTERVAL, MIN_KEEP_ALIVE, invalid,
};

/// The largest chunk size accepted (64 MiB).
const MAX_CHUNK: usize = 64 << 20;

impl AgentConfig {
    /// Checks values serde cannot: ranges and consistency.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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

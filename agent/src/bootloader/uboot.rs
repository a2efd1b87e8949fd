//! U-Boot: its bootcount scheme (`CONFIG_BOOTCOUNT_LIMIT` with the count kept in the
//! environment, `CONFIG_BOOTCOUNT_ENV`): while `upgrade_available=1` U-Boot increments
//! `bootcount` at every boot and, once it exceeds `bootlimit`, runs `altbootcmd` instead of
//! `bootcmd`. `bootcmd` boots `ota_slot`; `altbootcmd` switches `ota_slot` back to
//! `ota_fallback`, clears `upgrade_available` and `bootcount`, saves and boots (docs/agent.md
//! has the snippet). The variables are written with libubootenv's `fw_setenv -c <config> -s
//! <script>`: all of them in one environment write.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use ota_core::update::Slot;

use super::run_tool;
use crate::install::InstallError;
use crate::process::CommandSpec;

/// The U-Boot backend.
#[derive(Debug, Clone)]
pub struct UBoot {
    setenv: String,
    config: PathBuf,
    script: PathBuf,
    timeout: Option<Duration>,
}

impl UBoot {
    /// Edits the environment `config` (an `fw_env.config`) describes with the program
    /// `setenv` (`fw_setenv`), writing its variable script to `script` first (a scratch file
    /// of the agent, rewritten before every use).
    pub fn new(
        setenv: impl Into<String>,
        config: impl Into<PathBuf>,
        script: impl Into<PathBuf>,
    ) -> Self {
        UBoot {
            setenv: setenv.into(),
            config: config.into(),
            script: script.into(),
            timeout: None,
        }
    }

    /// With a limit for each run of the tool.
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    async fn set(&self, vars: &[(&str, &str)]) -> Result<(), InstallError> {
        let text: String = vars.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        let script = self.script.clone();
        tokio::fs::write(&script, text)
            .await
            .map_err(|source| InstallError::Io {
                op: "write",
                path: script.clone(),
                source,
            })?;
        let args = [
            "-c".to_owned(),
            self.config.display().to_string(),
            "-s".to_owned(),
            script.display().to_string(),
        ];
        let spec = CommandSpec::new(self.setenv.clone()).with_args(args);
        let result = run_tool(&spec, self.timeout).await;
        match tokio::fs::remove_file(&script).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("cannot remove {}: {e}", script.display()),
        }
        result
    }

    pub(super) async fn try_once(&self, slot: Slot) -> Result<(), InstallError> {
        self.set(&[
            ("ota_fallback", slot.other().name()),
            ("bootcount", "0"),
            ("bootlimit", "1"),
            ("upgrade_available", "1"),
            ("ota_slot", slot.name()),
        ])
        .await
    }

    pub(super) async fn boot_slot(&self, slot: Slot) -> Result<(), InstallError> {
        self.set(&[
            ("ota_slot", slot.name()),
            ("ota_fallback", slot.name()),
            ("upgrade_available", "0"),
            ("bootcount", "0"),
        ])
        .await
    }
}

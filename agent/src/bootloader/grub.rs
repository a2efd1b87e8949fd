//! GRUB: the `ota_default` / `ota_try` variables of its environment block, set with
//! `grub-editenv`. grub.cfg boots `ota_try` once (clearing it with `save_env` before it
//! boots), else `ota_default` (docs/agent.md has the snippet).

use std::path::PathBuf;
use std::time::Duration;

use ota_core::update::Slot;

use super::run_tool;
use crate::install::InstallError;
use crate::process::CommandSpec;

/// The GRUB backend.
#[derive(Debug, Clone)]
pub struct Grub {
    editenv: String,
    env_file: PathBuf,
    timeout: Option<Duration>,
}

impl Grub {
    /// Edits `env_file` (e.g. `/boot/grub/grubenv`) with the program `editenv`
    /// (`grub-editenv`, or `grub2-editenv` on some distributions).
    pub fn new(editenv: impl Into<String>, env_file: impl Into<PathBuf>) -> Self {
        Grub {
            editenv: editenv.into(),
            env_file: env_file.into(),
            timeout: None,
        }
    }

    /// With a limit for each run of the tool.
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    async fn set(&self, vars: &[String]) -> Result<(), InstallError> {
        let mut args = vec![self.env_file.display().to_string(), "set".to_owned()];
        args.extend(vars.iter().cloned());
        let spec = CommandSpec::new(self.editenv.clone()).with_args(args);
        run_tool(&spec, self.timeout).await
    }

    pub(super) async fn try_once(&self, slot: Slot) -> Result<(), InstallError> {
        self.set(&[format!("ota_try={slot}")]).await
    }

    pub(super) async fn boot_slot(&self, slot: Slot) -> Result<(), InstallError> {
        self.set(&[format!("ota_default={slot}"), "ota_try=".to_owned()])
            .await
    }
}

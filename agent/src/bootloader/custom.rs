//! Any other bootloader (EFI `BootNext`, Raspberry Pi `tryboot`, RAUC's `rauc status mark-*`):
//! two user commands, each run with `OTA_SLOT` (`A` or `B`) in its environment.

use std::ffi::OsStr;
use std::time::Duration;

use ota_core::update::Slot;

use crate::install::{InstallError, run_checked};
use crate::process::CommandSpec;

/// The custom backend.
#[derive(Debug, Clone)]
pub struct Custom {
    try_command: CommandSpec,
    boot_command: CommandSpec,
    timeout: Option<Duration>,
}

impl Custom {
    /// `try_command` makes the bootloader boot `$OTA_SLOT` once; `boot_command` makes
    /// `$OTA_SLOT` the default and cancels a pending try (it must be idempotent).
    pub fn new(try_command: CommandSpec, boot_command: CommandSpec) -> Self {
        Custom {
            try_command,
            boot_command,
            timeout: None,
        }
    }

    /// With a limit for each run of a command.
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    pub(super) async fn try_once(&self, slot: Slot) -> Result<(), InstallError> {
        let env = [("OTA_SLOT", OsStr::new(slot.name()))];
        run_checked(&self.try_command, &env, self.timeout).await
    }

    pub(super) async fn boot_slot(&self, slot: Slot) -> Result<(), InstallError> {
        let env = [("OTA_SLOT", OsStr::new(slot.name()))];
        run_checked(&self.boot_command, &env, self.timeout).await
    }
}

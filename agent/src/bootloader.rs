//! Bootloader backends of the `ab` installer: tell the bootloader to try a slot once, or to
//! boot a slot from now on. The update machine decides when (core's `update::slot`); a
//! backend only edits the bootloader's environment with the bootloader's own tools.
//!
//! | backend | try `slot` once (after the install) | boot `slot` from now on (`Commit`, `BootSlot`) |
//! |---|---|---|
//! | [`Grub`] | `grub-editenv <env_file> set ota_try=<slot>` | `grub-editenv <env_file> set ota_default=<slot> ota_try=` |
//! | [`UBoot`] | `fw_setenv -c <config> -s <script>`: `ota_fallback=<other>`, `bootcount=0`, `bootlimit=1`, `upgrade_available=1`, `ota_slot=<slot>` | the same with `ota_slot=ota_fallback=<slot>`, `upgrade_available=0`, `bootcount=0` |
//! | [`Custom`] | `try_command` with `OTA_SLOT=<slot>` | `boot_command` with `OTA_SLOT=<slot>` |
//!
//! Each change is one invocation of the tool, so it is written whole or not at all as far as
//! the tool guarantees it (libubootenv writes the redundant copy; GRUB's environment block is
//! one 1 KiB sector). The boot scripts that read these variables are in `docs/agent.md`
//! ("Gateway with A/B slots").

mod custom;
mod grub;
mod uboot;

use std::time::Duration;

use ota_core::update::Slot;

pub use custom::Custom;
pub use grub::Grub;
pub use uboot::UBoot;

use crate::install::{InstallError, run_checked};
use crate::process::CommandSpec;

/// The configured bootloader backend.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Bootloader {
    /// GRUB's environment block, through `grub-editenv`.
    Grub(Grub),
    /// U-Boot's environment, through libubootenv's `fw_setenv`.
    UBoot(UBoot),
    /// User commands.
    Custom(Custom),
}

impl Bootloader {
    /// Makes the bootloader boot `slot` once at the next boot and fall back to its default
    /// slot after that (or when `slot` does not come up).
    pub async fn try_once(&self, slot: Slot) -> Result<(), InstallError> {
        match self {
            Bootloader::Grub(g) => g.try_once(slot).await,
            Bootloader::UBoot(u) => u.try_once(slot).await,
            Bootloader::Custom(c) => c.try_once(slot).await,
        }
    }

    /// Makes `slot` the default from now on and cancels any pending try. Idempotent.
    pub async fn boot_slot(&self, slot: Slot) -> Result<(), InstallError> {
        match self {
            Bootloader::Grub(g) => g.boot_slot(slot).await,
            Bootloader::UBoot(u) => u.boot_slot(slot).await,
            Bootloader::Custom(c) => c.boot_slot(slot).await,
        }
    }
}

/// Runs a bootloader tool without extra environment.
async fn run_tool(spec: &CommandSpec, timeout: Option<Duration>) -> Result<(), InstallError> {
    run_checked(spec, &[], timeout).await
}

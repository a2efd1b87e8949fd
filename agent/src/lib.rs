//! `ota-agent`: the device daemon of ota.
//!
//! A tokio shell around the update machine of [`ota_core`]: it moves bytes between the MQTT
//! connection, the HTTP downloader, the local cache, the journal and the installers, and lets
//! the core make every decision. This crate holds the I/O modules that execute the machine's
//! actions; each is small, has its own typed error and is tested on real files, processes and
//! sockets.
//!
//! # Layout
//!
//! | module | executes | notes |
//! |---|---|---|
//! | [`storage`] | every disk write | [`storage::FsStorage`]; `storage::FaultyStorage` injects faults and power losses in tests (only with the `test-support` feature, which the agent's own tests turn on) |
//! | [`journal`] | `Persist(bytes)` | atomic record with a `.prev` copy; boot counter |
//! | [`cache`] | `HashCached`, `Evict` | content-addressed artifacts, partial downloads |
//! | [`download`] | `Download` | HTTP(S) Range resume, hash while writing, error classes |
//! | [`install`] | `Install`, `Reboot` | files + `current` symlink, a user command, or A/B slots |
//! | [`bootloader`] | `BootSlot`, `Commit` (A/B) | GRUB (`grub-editenv`), U-Boot (`fw_setenv`), custom commands |
//! | [`health`] | `RunProbe` | command, HTTP or heartbeat file |
//! | [`power`] | `ReadPower` | sysfs power-supply tree |
//! | [`inventory`] | `CheckDisk`, reports | sysinfo + statvfs |
//! | [`config`] | start-up | the TOML configuration |
//! | [`process`] | (shared) | how user commands run |
//! | [`mqtt`] | `Publish*`, `SendHeartbeat` | the MQTT link: poll task, outbox, reconnect backoff |
//! | [`flags`] | the flags topic | the flag file applications read ([`Flags::load`]) |
//! | [`clock`] | (shared) | wall time on tokio's monotonic clock |
//! | [`tls`] | (shared) | the `ota-tls` crate re-exported: rustls client configuration of the MQTT link and the downloader: pinned CA, client certificate |
//! | `shell` | every action | the loop: drains the machine's actions, waits on inputs and timers |
//! | [`agent`] | start-up | [`Agent::start`], [`AgentHandle`], [`AgentOptions`] |
//! | `status` | (shared) | [`AgentStatus`]: what the running agent is doing, written by the shell after every step, read through [`AgentHandle`] |
//! | [`report`] | `ota-agent status`, `check-power` | read-only views of the journal and the power gate |
//! | [`resync`] | `ota-agent resync` | resets the generation watermark (operator, agent stopped) |
//! | [`term`] | both binaries | log set-up (`OTA_LOG`, colour only on a terminal) and one-line error chains, shared with `ota` |
//! | `test_support` | tests only | deterministic test data; built with the `test-support` feature (the agent's own tests), never in the shipped agent |
//!
//! # Data directory
//!
//! ```text
//! <data_dir>/state, state.prev        the machine's journal (journal::Journal)
//! <data_dir>/floor, floor.prev        the floor record: floor, running, known-good, generation (survives journal loss)
//! <data_dir>/boot, boot.prev          the boot counter (journal::BootCounter)
//! <data_dir>/boot_id, boot_id.prev    the boot id the counter was last incremented for
//! <data_dir>/cache/<sha256>           complete artifacts (cache::Cache)
//! <data_dir>/cache/partial/<sha256>.part, .validator
//! <data_dir>/flags                    the evaluated feature flags applications read (flags::Flags)
//! <data_dir>/uboot-env.script         the U-Boot backend's fw_setenv script (scratch, removed after use)
//! ```
//!
//! # Blocking
//!
//! The agent runs on a current-thread runtime. Disk writes go through the synchronous
//! [`storage::Storage`] trait, one small operation at a time; long loops (hashing a cached
//! artifact, copying, downloading) work in chunks and yield to the runtime between them, so the
//! MQTT connection keeps being served.

pub mod agent;
pub mod bootloader;
pub mod cache;
pub mod clock;
pub mod config;
pub mod delta;
pub mod download;
pub mod flags;
pub mod health;
pub mod install;
pub mod inventory;
pub mod journal;
pub mod mqtt;
pub mod power;
pub mod process;
pub mod report;
pub mod resync;
mod shell;
mod status;
pub mod storage;
pub mod term;
#[cfg(any(test, feature = "test-support"))]
pub mod test_support;
/// TLS configurations: the `ota-tls` crate (shared by the agent and the fleet server).
pub use ota_tls as tls;
pub mod trust;

pub use agent::{Agent, AgentError, AgentHandle, AgentOptions};
pub use flags::Flags;
pub use status::AgentStatus;

pub use ota_core::release;

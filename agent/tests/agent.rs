//! The integration tests of `ota-agent`: one binary, one module per agent module, on real
//! files, processes and sockets (port 0 only).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    unreachable_pub
)]

#[path = "agent/fleet.rs"]
mod fleet;
#[path = "agent/util.rs"]
mod util;

#[path = "agent/ab.rs"]
mod ab;
#[path = "agent/cache.rs"]
mod cache;
#[path = "agent/cli.rs"]
mod cli;
#[path = "agent/config.rs"]
mod config;
#[path = "agent/delta.rs"]
mod delta;
#[path = "agent/download.rs"]
mod download;
#[path = "agent/health.rs"]
mod health;
#[path = "agent/https.rs"]
mod https;
#[path = "agent/install.rs"]
mod install;
#[path = "agent/inventory.rs"]
mod inventory;
#[path = "agent/journal.rs"]
mod journal;
#[path = "agent/mqtt.rs"]
mod mqtt;
#[path = "agent/power.rs"]
mod power;
#[path = "agent/shell.rs"]
mod shell;
#[path = "agent/storage.rs"]
mod storage;
#[path = "agent/truthful.rs"]
mod truthful;

//! `ota-demo`: a whole fleet in one process, and the story `ota demo` plays on it.
//!
//! The [`lab::Lab`] starts the fleet server on embedded defaults (in-process MQTT broker on a
//! free port, SQLite and artifacts in a temporary directory) and N **real agents**: the
//! `ota-agent` library with its real journal, cache, downloader and files installer, each in
//! its own directory, with a simulated battery (a fake power-supply sysfs tree,
//! [`battery`]) and a simulated application that proves its health through a heartbeat file
//! ([`app`]). [`story`] plays the demo's three steps on a lab and checks every one; the e2e
//! tests (`tests/`) use the same lab with faults injected.
//!
//! # Layout
//!
//! | module | what it is |
//! |---|---|
//! | [`firmware`] | the firmware team: a fresh key, healthy and broken images, signed releases |
//! | [`battery`] | the fake power-supply tree of a device |
//! | [`app`] | the simulated application (touches the heartbeat file while healthy) |
//! | [`device`] | one device: config file, directories, agent start / stop / kill |
//! | [`lab`] | the server and the devices in one temporary directory |
//! | [`api`] | the one REST client of the fleet server (also the `ota` CLI's): publish, rollouts, devices, flags, events |
//! | [`watch`] | following a rollout until it ends, with a live view |
//! | [`story`] | the demo's steps, their checks and the summary |

use std::path::{Path, PathBuf};

pub mod api;
pub mod app;
pub mod battery;
pub mod device;
pub mod firmware;
pub mod lab;
pub mod story;
pub mod watch;

/// Why the lab or the story could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    /// A file operation failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Setting something up failed.
    #[error("set-up: {0}")]
    Setup(String),
    /// The fleet server failed to start or stop.
    #[error("fleet server: {0}")]
    Server(String),
    /// An agent failed to start or stop.
    #[error("agent {0}")]
    Agent(String),
    /// The REST API refused or failed a call.
    #[error(transparent)]
    Api(#[from] api::ApiError),
    /// Something did not happen in time.
    #[error("timed out: {0}")]
    Timeout(String),
}

impl LabError {
    /// An I/O error on `path`.
    pub fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        LabError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

//! `ota-server`: the fleet server library of ota.
//!
//! Release intake (verified against the fleet's public trust set: the server never holds a
//! signing key), content-addressed artifact serving with HTTP Range, the device inventory, the
//! audit log, storage, the REST API, MQTT coordination with devices and rollouts in
//! health-gated waves (see `docs/server.md`).
//!
//! # Layout
//!
//! - [`config`]: `server.toml` (every key is documented in `docs/server.md`).
//! - [`db`]: the repository over SQLite or PostgreSQL (one code path through `sqlx::AnyPool`),
//!   with embedded migrations for each dialect.
//! - [`event_kinds`]: the one list of audit event kinds (webhook filters and queries are checked
//!   against it).
//! - [`store`]: the artifact store (local files or S3) addressed by SHA-256, with verified,
//!   all-or-nothing streaming uploads.
//! - `console`: the operator web console at `/` (server-rendered pages, sessions, CSRF, live
//!   rollouts over server-sent events); documented in `docs/console.md`.
//! - [`http`]: the REST API, artifact serving and `/metrics` (axum); documented in
//!   `docs/api.md`.
//! - [`broker`]: the embedded MQTT broker (rumqttd, in-process, port 0 supported) behind a
//!   front door (TCP or TLS, device authentication, the per-device topic ACL).
//! - [`mqtt`]: the server's MQTT client (rumqttc, polled in its own task, reconnects; TLS and
//!   credentials for external brokers).
//! - [`tls`]: the `ota-tls` crate re-exported: rustls configurations (PEM files, pinned CAs,
//!   client certificates) of the MQTT side and the HTTPS listener, shared with the agent.
//! - [`fleet`]: the coordinator: device registry from MQTT, the rollout engine around
//!   core's planner, desired states, drift, batching and persistence.
//! - [`lease`]: who coordinates among several replicas (issue 15, `docs/ha.md`): the
//!   coordinator lease's decisions as a pure machine; `ha` is the task that runs it against the
//!   database (`db::Db::acquire_lease`, the fencing check in every coordinator batch) and
//!   starts or stops the coordinator; `http`'s `forward` sends a standby's coordinator commands
//!   to the leader.
//! - [`https`]: the optional HTTPS of the API and artifacts (`[http] tls_cert`, `tls_key`).
//! - [`trust`]: key rotation: the trust set in force, verified signed trust-set updates.
//! - [`webhook`]: delivery of audit events to webhook URLs, with retries, never blocking.
//! - [`limits`]: what one client may cost: the descriptor limit, connection caps (total and
//!   per address, one budget per listener), throttled warnings, `[limits]` of `server.toml`.
//! - [`clock`]: the one place the server reads wall-clock time (replaceable in tests).
//! - [`Server`] / [`RunningServer`]: start everything in-process, stop it gracefully.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ota_server::ServerError> {
//! let config = ota_server::config::Config::load(std::path::Path::new("server.toml"))?;
//! let running = ota_server::Server::start(config).await?;
//! println!("listening on {}", running.base_url());
//! running.shutdown().await?;
//! # Ok(())
//! # }
//! ```

pub mod broker;
pub mod clock;
pub mod config;
mod console;
pub mod db;
pub mod event_kinds;
pub mod fleet;
mod ha;
pub mod http;
pub mod https;
pub mod lease;
pub mod limits;
pub mod mqtt;
mod server;
pub mod store;
/// TLS configurations: the `ota-tls` crate (shared by the agent and the fleet server).
pub use ota_tls as tls;
pub mod trust;
pub mod webhook;

pub use ota_core::release;
pub use server::{RunningServer, SHUTDOWN_GRACE, Server, ServerError, ShutdownHandle};

//! The one integration test binary of ota-e2e. Each module is a group of tests.
//!
//! - `repo`: checks of the repository itself.
//! - `story`: the demo's story as assertions (real server, real agents, a real broker).
//! - `faults`: the same system with faults injected (broker and server restarts, cut
//!   downloads, killed agents, duplicates and replays, a malicious mirror, offline devices).
//! - `drift`: a release switched by hand is reported as drift (issue 12.7).
//! - `health`: health after the commit holds a wave's gate (issue 17).
//! - `flags`: feature flags through restarts, deploys and offline periods (issue 6).
//! - `ha`: two server replicas; the leader is killed mid-rollout, the standby completes it
//!   (issue 15).
//! - `ha_processes`: real `ota server` processes on a PostgreSQL cluster of their own (two on
//!   Mosquitto, three on a 3-node NATS cluster), at seeded random points: the leader process
//!   is killed (SIGKILL), frozen, cut from the database, PostgreSQL restarts, a broker node is
//!   killed (issue 15; `#[ignore]`d, needs Mosquitto, `nats-server`, PostgreSQL's binaries
//!   and the `ota` binary).
//! - `nats`: the 3-node NATS cluster fixture, and its broker-level node-loss test (retained
//!   messages, QoS 1 persistent sessions).
//! - `mqtt_tls`: agents and server over MQTT with TLS, device passwords or client
//!   certificates, and the broker's ACL (issue 7).
//! - `security`: threats of `docs/security.md` that need the whole system (a compromised
//!   fleet server).
//! - `recall`: after an abort, the rollout follows real agents back to their known-good
//!   release, one that was down during the abort included.
//! - `rotation`: key rotation end to end (issue 7): rotate, revoke, refused rotations,
//!   restart.
//! - `console`: the operator console in headless Chromium (issue 16; `#[ignore]`d, needs
//!   Chromium and `tests/browser`'s packages).
//! - `boot`: a real boot (issue 17): a gateway with A/B slots and GRUB under QEMU, updated,
//!   rolled back by its agent and by GRUB (`#[ignore]`d, needs QEMU, a Debian kernel, GRUB).
//! - `processes`: a private PostgreSQL cluster and `ota server` processes, to kill and restart.
//! - `seeded`, `watch`: seeded random fault points; watchers of every desired state (the
//!   split-brain check).
//! - `world`, `proxy`: the fixture (a lab behind fault-injecting TCP proxies).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    unreachable_pub,
    reason = "tests: a failure here is a failing test"
)]

mod boot;
mod console;
mod delta;
mod drift;
mod faults;
mod flags;
mod ha;
mod ha_processes;
mod health;
mod mqtt_tls;
mod nats;
mod processes;
mod proxy;
mod recall;
mod repo;
mod rotation;
mod security;
mod seeded;
mod story;
mod watch;
mod world;

//! Integration tests of `ota-server`: one binary, real components (SQLite files in temp
//! directories, a real HTTP listener on port 0, reqwest as the client). Tests that need
//! PostgreSQL are ignored unless run with `-- --include-ignored` and `OTA_TEST_DATABASE_URL`.

// Tests may unwrap: a failing unwrap is a failing test (the helpers outside `#[test]` functions
// are not covered by clippy.toml's allow-unwrap-in-tests).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "server/util.rs"]
mod util;

#[path = "server/sim.rs"]
mod sim;

#[path = "server/api.rs"]
mod api;
#[path = "server/api_docs.rs"]
mod api_docs;
#[path = "server/artifacts.rs"]
mod artifacts;
#[path = "server/auth.rs"]
mod auth;
#[path = "server/broker.rs"]
mod broker;
#[path = "server/console.rs"]
mod console;
#[path = "server/coordinator_start.rs"]
mod coordinator_start;
#[path = "server/db.rs"]
mod db;
#[path = "server/delta.rs"]
mod delta;
#[path = "server/flags.rs"]
mod flags;
#[path = "server/fleet.rs"]
mod fleet;
#[path = "server/ha.rs"]
mod ha;
#[path = "server/https.rs"]
mod https;
#[path = "server/limits.rs"]
mod limits;
#[path = "server/mosquitto_conf.rs"]
mod mosquitto_conf;
#[path = "server/mqtt_acl.rs"]
mod mqtt_acl;
#[path = "server/outage.rs"]
mod outage;
#[path = "server/proxy.rs"]
mod proxy;
#[path = "server/registry_truth.rs"]
mod registry_truth;
#[path = "server/releases.rs"]
mod releases;
#[path = "server/store.rs"]
mod store;
#[path = "server/trust.rs"]
mod trust;
#[path = "server/truthful.rs"]
mod truthful;

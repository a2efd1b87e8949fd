//! `ota-core`: the sans-IO heart of ota.
//!
//! Every decision ota makes lives here, as plain data and deterministic functions: no tokio, no
//! std I/O, and no clock (time is always an argument). The shells (`ota-agent`, `ota-server`,
//! `ota`) only move bytes between these functions and the world.
//!
//! # Layout
//!
//! - [`budget`]: message budgets (token buckets per sender, with `now` as an argument) that
//!   bound what one device may make the server do.
//! - [`delta`]: the signed chunk index of an artifact and the plan of a delta update (copy the
//!   chunks a device holds, fetch the rest with Range requests).
//! - [`digest`]: the SHA-256 digest type that names artifacts everywhere.
//! - [`fleet`]: the fleet coordinator's decisions: desired-state generations and stale
//!   reports, the device memo (drift, presence), report routing and rollout targeting (the
//!   sequencing still lives in the server's coordinator, issue 13).
//! - [`filter`]: the device filter language (`hw=gw-a and label:region=eu`): its parser and
//!   its evaluation over any [`filter::DeviceFacts`], for listings, rollout targets and flags.
//! - [`release`]: the signed release format (a COSE_Sign envelope over a CBOR manifest), the trust
//!   set (ed25519 keys + threshold), verification against a device policy, and the streaming
//!   artifact verifier.
//! - [`wire`]: the MQTT protocol: versioned topics (`ota/v1/...`) and bounded CBOR payloads
//!   (desired and reported state, events, heartbeats, status).
//! - [`update`]: the agent's update machine: verify, gate (power, window, disk), download,
//!   install, trial, commit or roll back, persisted write-ahead; `handle_*` in, `poll_*` out.
//! - [`rollout`]: the fleet server's rollout planner: sticky hash cohorts, waves gated on
//!   success ratio and bake time, rate limit, timeouts, abort with rollback (sans-IO, persisted
//!   whole as CBOR).
//! - [`flags`]: feature flags: definitions with ordered rules (server filter + sticky percent
//!   cohort) and a kill switch, evaluation per device, the retained per-device payload
//!   (`ota/v1/flags/devices/{id}`), the audit record, and the device's applier and flag file.
//! - [`time`]: [`time::Timestamp`], wall-clock time as data (unix milliseconds), passed in as
//!   `now`.
//!
//! The crate is `#![no_std]` with `alloc`; the optional `std` feature only adds
//! `std::error::Error` impls of dependencies. It never panics on input: hostile bytes give a
//! typed error.
#![no_std]
#![warn(clippy::indexing_slicing)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod budget;
pub mod delta;
pub mod digest;
pub mod filter;
pub mod flags;
pub mod fleet;
pub mod named_enum;
pub mod release;
pub mod rollout;
pub mod time;
pub mod update;
pub mod wire;

//! `ota-server`: the fleet server library of ota.
//!
//! MQTT coordination with devices, release intake (verified against the fleet's public trust set:
//! the server never holds a signing key), rollouts in health-gated waves, storage and the REST API.
//! The server arrives with the fleet-server issue; today this crate only re-exports the release
//! verification it will use on every upload.

pub use ota_core::release;

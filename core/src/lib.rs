//! `ota-core`: the sans-IO heart of ota.
//!
//! Every decision ota makes lives here, as plain data and deterministic functions: no tokio, no
//! std I/O, and no clock (time is always an argument). The shells (`ota-agent`, `ota-server`,
//! `ota`) only move bytes between these functions and the world.
//!
//! # Layout
//!
//! - [`digest`]: the SHA-256 digest type that names artifacts everywhere.
//! - [`release`]: the signed release format (a COSE_Sign envelope over a CBOR manifest), the trust
//!   set (ed25519 keys + threshold), verification against a device policy, and the streaming
//!   artifact verifier.
//!
//! The crate is `#![no_std]` with `alloc`; the optional `std` feature only adds
//! `std::error::Error` impls of dependencies. It never panics on input: hostile bytes give a
//! typed error.
#![no_std]
#![warn(clippy::indexing_slicing)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod digest;
pub mod release;

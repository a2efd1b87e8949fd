//! Delta updates: the signed chunk index of an artifact, and the plan that fetches only the
//! chunks a device does not already hold.
//!
//! `ota release sign` cuts the artifact into content-defined chunks (FastCDC, in the shells),
//! writes their lengths and SHA-256 digests as a [`ChunkIndex`], and signs the index's digest in
//! the manifest ([`crate::release::Manifest::chunk_index`]). A device holding any earlier
//! release (cached artifacts, the running release) looks each chunk up among its own chunks;
//! [`plan`] turns the answer into [`Step`]s: copy a chunk it has, or fetch a run of neighbouring
//! chunks it lacks with one HTTP Range request. Every chunk is checked against its digest as it
//! is written, and the whole artifact against the signed SHA-256 at the end.
//!
//! The byte layout is in `docs/delta.md`.

mod index;
mod plan;

pub use index::{ChunkEntry, ChunkIndex, ChunkIndexError, ChunkParams, INDEX_FORMAT_VERSION};
pub use plan::{Plan, PlanLimits, Step, plan};

//! Delta downloads: build the new artifact from chunks the device already holds, fetching only
//! the missing ones (see `docs/delta.md`).
//!
//! | module | does |
//! |---|---|
//! | [`chunker`] | cuts a file into content-defined chunks (FastCDC 2020) and indexes them |
//! | [`seeds`] | the device's own chunks: cached artifacts (their indexes kept in `cache/index/`) and configured seed files |
//! | [`apply`] | fetches and checks the signed index, then copies or fetches each chunk into the partial download |
//!
//! The plan (which chunks to copy, which runs to fetch) is the core's
//! [`ota_core::delta::plan`]; this module only moves bytes.

pub(crate) mod apply;
pub mod chunker;
pub(crate) mod seeds;

pub use apply::{DeltaError, DeltaStats, index_url};
pub use chunker::{index_file, index_reader};

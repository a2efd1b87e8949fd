//! Delta downloads: build the new artifact from chunks the device already holds, fetching only
//! the missing ones (see `docs/delta.md`).
//!
//! | module | does |
//! |---|---|
//! | [`chunker`] | cuts a file into content-defined chunks (FastCDC 2020) and indexes them |
//! | [`image`] | images of known releases a delta copies from (cached artifacts, the `ab` installer's running slot) and their indexes kept in `cache/index/` |
//! | [`seeds`] | the device's own chunks: those images, configured seed files and the partial artifact, trimmed to the chunks the new index names |
//! | [`apply`] | fetches and checks the signed index, then copies or fetches each chunk into the partial download |
//!
//! The plan (which chunks to copy, which runs to fetch) is the core's
//! [`ota_core::delta::plan`]; this module only moves bytes.

pub(crate) mod apply;
pub mod chunker;
pub mod image;
pub(crate) mod seeds;

pub use apply::{DeltaError, DeltaStats, index_url};
pub use chunker::{index_file, index_reader};
pub use image::{SeedError, SeedImage};

//! `ota-e2e`: end-to-end tests of ota (broker + fleet server + real agents, with faults injected)
//! and checks of the repository itself (cross-compilation config, fixtures).
//!
//! The library holds shared fixture helpers; the tests live in `tests/` as one integration binary.

use std::path::PathBuf;

/// The workspace root, for tests that read files of the repository.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

//! `firmware-fixtures`: deterministic **TEST-ONLY** keys, tiny firmware images, good and hostile
//! signed releases, the golden bytes of all of them (checked in under `firmware-fixtures/data/`),
//! and the generator that rebuilds them byte for byte.
//!
//! # Never use these keys in production
//!
//! Every key here is derived from a fixed, public seed (see [`TestKey`]). Anyone can recompute
//! it. A device or server that trusts a `test-only-*` key accepts releases signed by anyone.
//!
//! # Layout
//!
//! - [`keys`]: the four deterministic test-only keys (`test-only-a`, `-b`, `-c` trusted,
//!   `test-only-unknown` never trusted).
//! - [`pki`]: TEST-ONLY TLS certificate authorities, server and client certificates, generated
//!   at run time (fresh keys every time, nothing checked in).
//! - [`images`]: the tiny deterministic artifacts (`images/v1.bin`, ...).
//! - [`catalog`]: the table of every fixture: release file, artifact file, threshold and the
//!   outcome it must produce ([`Expected`]).
//! - [`generate()`](generate()) / [`render`] / [`diff`]: the generator (also the binary
//!   `cargo run -p firmware-fixtures [-- --out DIR]`).
//!
//! # The fixed world the fixtures live in
//!
//! | what | value |
//! |---|---|
//! | trust set | keys a, b, c; threshold per fixture ([`Fixture::threshold`], 1 unless said) |
//! | device hardware class | [`HARDWARE_CLASS`] (`gw-a`) |
//! | device security floor | [`SECURITY_FLOOR`] (1) |
//! | now (for expiry) | [`NOW`] (1 750 000 000) |
//!
//! [`policy()`] and [`trust_set()`] build exactly that world.
//!
//! ```
//! use firmware_fixtures::{Expected, FIXTURES};
//!
//! for fixture in FIXTURES {
//!     let outcome = fixture.evaluate()?;
//!     assert!(fixture.expected.matches(&outcome), "{}", fixture.name);
//! }
//! # Ok::<(), anyhow::Error>(())
//! ```

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use ota_core::release::{Policy, TrustSet, TrustSetError};

pub mod catalog;
mod generate;
pub mod images;
pub mod keys;
pub mod pki;

pub use catalog::{Expected, ExpectedError, FIXTURES, Fixture};
pub use generate::{diff, generate, list_files, render};
pub use keys::TestKey;

/// The product every fixture release names.
pub const PRODUCT: &str = "gateway-fw";

/// The hardware class of the device the fixtures are checked for ([`policy()`]).
pub const HARDWARE_CLASS: &str = "gw-a";

/// A second hardware class some good releases also list.
pub const OTHER_HARDWARE_CLASS: &str = "gw-b";

/// A hardware class no test device has: `wrong-hardware.release` lists only this one.
pub const FOREIGN_HARDWARE_CLASS: &str = "gw-z";

/// The `created` time of `v1.release`, unix seconds (2023-11-14T22:13:20Z). Later releases are
/// created later (see the catalog).
pub const CREATED: u64 = 1_700_000_000;

/// The fixed "now" every fixture is checked at, unix seconds (2025-06-15T15:06:40Z). Never read
/// a clock in a test that uses the fixtures: use this.
pub const NOW: u64 = 1_750_000_000;

/// The expiry of `expired.release`, unix seconds: before [`NOW`], after [`CREATED`].
pub const EXPIRED_AT: u64 = 1_720_000_000;

/// The security floor of the test device ([`policy()`]): `downgrade.release` is below it, every
/// good release is at or above it.
pub const SECURITY_FLOOR: u32 = 1;

/// Where the checked-in fixtures live: `firmware-fixtures/data/` of this source tree.
pub fn data_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/data"))
}

/// The path of a checked-in fixture, `relative` to [`data_dir()`] (e.g. `"v2.release"`,
/// `"images/v2.bin"`, `"keys/test-only-a.pub.raw"`).
pub fn path(relative: &str) -> PathBuf {
    data_dir().join(relative)
}

/// The bytes of a checked-in fixture, `relative` to [`data_dir()`].
pub fn read(relative: &str) -> anyhow::Result<Vec<u8>> {
    read_in(&data_dir(), relative)
}

/// The bytes of fixture `relative` under `dir` (a data dir made by [`generate()`]).
pub fn read_in(dir: &Path, relative: &str) -> anyhow::Result<Vec<u8>> {
    let path = dir.join(relative);
    std::fs::read(&path).with_context(|| format!("reading fixture {}", path.display()))
}

/// The fixtures' trust set: the TEST-ONLY keys a, b and c, with threshold `threshold` (1 for
/// most fixtures, 2 for the threshold ones: see [`Fixture::threshold`]).
pub fn trust_set(threshold: usize) -> Result<TrustSet, TrustSetError> {
    TrustSet::new(
        TestKey::TRUSTED.iter().map(|k| k.verifying_key()).collect(),
        threshold,
    )
}

/// The test device's policy: hardware class [`HARDWARE_CLASS`], floor [`SECURITY_FLOOR`], now
/// [`NOW`].
pub fn policy() -> Policy {
    Policy {
        hardware_class: Some(HARDWARE_CLASS.into()),
        security_floor: SECURITY_FLOOR,
        now: NOW,
    }
}

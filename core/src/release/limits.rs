//! Bounds on what a release may contain, so hostile bytes cannot make us allocate without end.

/// Size limits applied while decoding and validating a release.
///
/// Decoding never allocates more than a small multiple of [`Limits::MAX_RELEASE_BYTES`]: every
/// string and list is borrowed from or bounded by the input, and is checked against these limits.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Limits;

impl Limits {
    /// Largest encoded release (envelope + manifest + signatures), in bytes.
    pub const MAX_RELEASE_BYTES: usize = 64 * 1024;
    /// Most signatures one release may carry.
    pub const MAX_SIGNATURES: usize = 16;
    /// Longest product name, version string or hardware class, in bytes.
    pub const MAX_NAME_BYTES: usize = 64;
    /// Most compatible hardware classes.
    pub const MAX_HARDWARE_CLASSES: usize = 32;
    /// Longest installer hint, in bytes.
    pub const MAX_INSTALLER_BYTES: usize = 32;
    /// Most metadata entries.
    pub const MAX_METADATA_ENTRIES: usize = 16;
    /// Longest metadata value, in bytes (keys are bounded by `MAX_NAME_BYTES`).
    pub const MAX_METADATA_VALUE_BYTES: usize = 256;
    /// Longest key id, in bytes.
    pub const MAX_KEY_ID_BYTES: usize = 32;
    /// Most keys in a trust set.
    pub const MAX_TRUSTED_KEYS: usize = 32;
}

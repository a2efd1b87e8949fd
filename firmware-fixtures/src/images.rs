//! The tiny deterministic firmware images the fixture releases name.
//!
//! An image is SHA-256 in counter mode over a fixed label: block `i` (32 bytes) is
//! `SHA-256(label || i as u64 big-endian)`, cut to the image's length. Different labels give
//! unrelated content; no image is compressible, so a cache or transport cannot cheat.

use sha2::{Digest as _, Sha256};

/// A named deterministic image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Image {
    /// Path relative to [`crate::data_dir`], e.g. `images/v2.bin`.
    pub file: &'static str,
    /// The label its bytes are derived from.
    pub label: &'static str,
    /// Its length in bytes.
    pub len: usize,
}

impl Image {
    /// The image's bytes.
    pub fn bytes(&self) -> Vec<u8> {
        counter_mode(self.label, self.len)
    }
}

/// Firmware image of release 1.0.0: 3 KiB.
pub const V1: Image = Image {
    file: "images/v1.bin",
    label: "ota TEST-ONLY firmware image v1",
    len: 3 * 1024,
};

/// Firmware image of release 2.0.0 (and of the 2.0.0 redeploy and the hostile releases): 4 KiB.
pub const V2: Image = Image {
    file: "images/v2.bin",
    label: "ota TEST-ONLY firmware image v2",
    len: 4 * 1024,
};

/// Firmware image of release 3.0.0: 5 KiB.
pub const V3: Image = Image {
    file: "images/v3.bin",
    label: "ota TEST-ONLY firmware image v3",
    len: 5 * 1024,
};

/// Every good image, in version order.
pub const GOOD: [Image; 3] = [V1, V2, V3];

/// Path of the tampered artifact: [`V2`] with one byte flipped (same length).
pub const V2_TAMPERED_FILE: &str = "images/v2-tampered.bin";
/// Which byte of [`V2`] is flipped in [`v2_tampered`], and with which mask.
pub const TAMPER_AT: (usize, u8) = (1000, 0x01);

/// Path of the over-long artifact: [`V2`] followed by [`LONGER_SUFFIX`].
pub const V2_LONGER_FILE: &str = "images/v2-longer.bin";
/// The bytes appended to [`V2`] in [`v2_longer`].
pub const LONGER_SUFFIX: &[u8] = b"TEST-ONLY: bytes past the signed size";

/// Path of the short artifact: the first [`SHORT_LEN`] bytes of [`V2`] (a cut-off download).
pub const V2_SHORT_FILE: &str = "images/v2-short.bin";
/// Length of [`v2_short`].
pub const SHORT_LEN: usize = 2 * 1024;

/// [`V2`] with byte [`TAMPER_AT`] flipped: same size, different digest.
pub fn v2_tampered() -> Vec<u8> {
    let mut bytes = V2.bytes();
    let (at, mask) = TAMPER_AT;
    if let Some(b) = bytes.get_mut(at) {
        *b ^= mask;
    }
    bytes
}

/// [`V2`] followed by [`LONGER_SUFFIX`]: longer than signed.
pub fn v2_longer() -> Vec<u8> {
    let mut bytes = V2.bytes();
    bytes.extend_from_slice(LONGER_SUFFIX);
    bytes
}

/// The first [`SHORT_LEN`] bytes of [`V2`]: shorter than signed.
pub fn v2_short() -> Vec<u8> {
    let mut bytes = V2.bytes();
    bytes.truncate(SHORT_LEN);
    bytes
}

/// `len` bytes of SHA-256 counter mode over `label`.
pub fn counter_mode(label: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut counter: u64 = 0;
    while out.len() < len {
        let mut h = Sha256::new();
        h.update(label.as_bytes());
        h.update(counter.to_be_bytes());
        let block = h.finalize();
        let take = (len - out.len()).min(block.len());
        out.extend_from_slice(block.get(..take).unwrap_or_default());
        counter += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_have_their_lengths_and_differ() {
        for image in GOOD {
            assert_eq!(image.bytes().len(), image.len);
        }
        assert_ne!(V1.bytes()[..32], V2.bytes()[..32]);
        assert_eq!(counter_mode("x", 33)[..32], counter_mode("x", 32)[..]);
        assert_eq!(v2_tampered().len(), V2.len);
        assert_ne!(v2_tampered(), V2.bytes());
        assert!(v2_longer().starts_with(&V2.bytes()));
        assert!(V2.bytes().starts_with(&v2_short()));
    }
}

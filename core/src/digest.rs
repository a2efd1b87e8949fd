//! The SHA-256 digest that names an artifact (in manifests, caches, URLs and reports).

use core::fmt;
use core::str::FromStr;

use sha2::{Digest as _, Sha256};

/// A SHA-256 digest: 32 bytes, shown as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The digest of `bytes`, in one call (for small inputs; stream large ones through
    /// [`crate::release::ArtifactVerifier`] or [`Hasher`]).
    pub fn of(bytes: &[u8]) -> Self {
        Digest(Sha256::digest(bytes).into())
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

/// Why a string is not a digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseDigestError {
    /// The string is not 64 characters long.
    #[error("a sha256 digest is 64 hex characters, got {0}")]
    Length(usize),
    /// A character is not a hex digit.
    #[error("a sha256 digest is hex, found a non-hex character")]
    NotHex,
}

impl FromStr for Digest {
    type Err = ParseDigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.as_bytes();
        if s.len() != 64 {
            return Err(ParseDigestError::Length(s.len()));
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
            let hi = hex_value(pair.first().copied())?;
            let lo = hex_value(pair.get(1).copied())?;
            *byte = (hi << 4) | lo;
        }
        Ok(Digest(out))
    }
}

fn hex_value(c: Option<u8>) -> Result<u8, ParseDigestError> {
    match c {
        Some(c @ b'0'..=b'9') => Ok(c - b'0'),
        Some(c @ b'a'..=b'f') => Ok(c - b'a' + 10),
        Some(c @ b'A'..=b'F') => Ok(c - b'A' + 10),
        _ => Err(ParseDigestError::NotHex),
    }
}

/// An incremental SHA-256, for shells that hash while they move bytes.
#[derive(Clone, Default)]
pub struct Hasher(Sha256);

impl Hasher {
    /// A fresh hasher.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds more bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The digest of everything fed so far.
    pub fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn empty_input_has_the_well_known_digest() {
        assert_eq!(
            Digest::of(b"").to_string(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn hex_round_trips_and_rejects_bad_strings() {
        let d = Digest::of(b"ota");
        assert_eq!(d.to_string().parse::<Digest>(), Ok(d));
        assert_eq!("abc".parse::<Digest>(), Err(ParseDigestError::Length(3)));
        let mut bad = d.to_string();
        bad.replace_range(0..1, "g");
        assert_eq!(bad.parse::<Digest>(), Err(ParseDigestError::NotHex));
    }

    #[test]
    fn incremental_equals_one_shot() {
        let mut h = Hasher::new();
        h.update(b"o");
        h.update(b"ta");
        assert_eq!(h.finish(), Digest::of(b"ota"));
    }
}

//! The streaming artifact verifier: hashes bytes as they pass, in constant memory, and refuses
//! anything past the signed size.

use embedded_io::Read;

use super::{Manifest, ReleaseError};
use crate::digest::{Digest, Hasher};

/// Checks an artifact against the digest and size a verified manifest signed.
///
/// Feed it chunk by chunk with [`update`](Self::update) (async shells) or drain a reader with
/// [`verify_reader`](Self::verify_reader); then [`finish`](Self::finish). Memory use is
/// constant whatever the artifact size.
#[derive(Clone)]
pub struct ArtifactVerifier {
    expected: Digest,
    size: u64,
    seen: u64,
    hasher: Hasher,
}

impl ArtifactVerifier {
    /// A verifier for an artifact of `size` bytes hashing to `expected`.
    pub fn new(expected: Digest, size: u64) -> Self {
        ArtifactVerifier {
            expected,
            size,
            seen: 0,
            hasher: Hasher::new(),
        }
    }

    /// A verifier for the artifact a manifest names.
    pub fn for_manifest(manifest: &Manifest) -> Self {
        Self::new(manifest.artifact_digest(), manifest.artifact_size)
    }

    /// Bytes accepted so far.
    pub fn bytes_seen(&self) -> u64 {
        self.seen
    }

    /// Bytes still expected.
    pub fn remaining(&self) -> u64 {
        self.size.saturating_sub(self.seen)
    }

    /// Hashes the next chunk. A chunk that would go past the signed size is refused whole with
    /// [`ReleaseError::ArtifactTooLong`] and nothing of it is hashed.
    pub fn update(&mut self, chunk: &[u8]) -> Result<(), ReleaseError> {
        let len = chunk.len() as u64;
        if len > self.remaining() {
            return Err(ReleaseError::ArtifactTooLong {
                expected: self.size,
            });
        }
        self.hasher.update(chunk);
        self.seen += len;
        Ok(())
    }

    /// Ends the artifact: it must be exactly the signed size and hash to the signed digest.
    pub fn finish(self) -> Result<Digest, ReleaseError> {
        if self.seen != self.size {
            return Err(ReleaseError::SizeMismatch {
                expected: self.size,
                actual: self.seen,
            });
        }
        let actual = self.hasher.finish();
        if actual != self.expected {
            return Err(ReleaseError::DigestMismatch {
                expected: self.expected,
                actual,
            });
        }
        Ok(actual)
    }

    /// Reads `reader` to its end through `buf` (the only buffer used), then [`finish`]es.
    /// Refuses a reader that yields more than the signed size.
    ///
    /// [`finish`]: Self::finish
    pub fn verify_reader<R: Read>(
        mut self,
        reader: &mut R,
        buf: &mut [u8],
    ) -> Result<Digest, ReleaseError> {
        loop {
            let n = reader
                .read(buf)
                .map_err(|e| ReleaseError::Read(embedded_io::Error::kind(&e)))?;
            if n == 0 {
                return self.finish();
            }
            self.update(buf.get(..n).unwrap_or_default())?;
        }
    }
}

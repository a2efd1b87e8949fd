//! The release manifest: what a release is, for which hardware, and which artifact it names.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use minicbor::{Decode, Encode};

use super::{Limits, ReleaseError};
use crate::digest::Digest;

/// The manifest format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;

/// The signed description of a release: a CBOR map with integer keys (see
/// `docs/release-format.md` for the key table).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Manifest {
    /// Manifest format version ([`FORMAT_VERSION`]).
    #[n(0)]
    pub format_version: u16,
    /// Product name, e.g. `gateway-fw`.
    #[n(1)]
    pub product: String,
    /// Human version string, e.g. `2.4.1`.
    #[n(2)]
    pub version: String,
    /// Monotonic security version for anti-rollback: a device refuses anything below its floor.
    #[n(3)]
    pub security_version: u32,
    /// SHA-256 of the artifact.
    #[cbor(n(4), with = "minicbor::bytes")]
    pub artifact_sha256: [u8; 32],
    /// Artifact size in bytes.
    #[n(5)]
    pub artifact_size: u64,
    /// Hardware classes this release may be installed on.
    #[n(6)]
    pub hardware: Vec<String>,
    /// Creation time, unix seconds.
    #[n(7)]
    pub created: u64,
    /// Expiry time, unix seconds; a device refuses the release at or after it.
    #[n(8)]
    pub expires: Option<u64>,
    /// Which installer should apply it (e.g. `files`, `command`), a hint for the device.
    #[n(9)]
    pub installer: Option<String>,
    /// Small free-form metadata (release notes link, build id, ...).
    #[n(10)]
    pub metadata: BTreeMap<String, String>,
    /// The artifact's chunk index (for delta updates), when the release has one: the index
    /// bytes are served beside the artifact and a device accepts only bytes with this digest.
    #[n(11)]
    pub chunk_index: Option<ChunkIndexRef>,
}

/// The signed reference to an artifact's chunk index ([`crate::delta::ChunkIndex`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct ChunkIndexRef {
    /// SHA-256 of the encoded index.
    #[cbor(n(0), with = "minicbor::bytes")]
    pub sha256: [u8; 32],
    /// Size of the encoded index in bytes.
    #[n(1)]
    pub size: u64,
}

impl ChunkIndexRef {
    /// The index's digest.
    pub fn digest(&self) -> Digest {
        Digest(self.sha256)
    }
}

impl Manifest {
    /// The artifact's digest.
    pub fn artifact_digest(&self) -> Digest {
        Digest(self.artifact_sha256)
    }

    /// Encodes the manifest to its canonical CBOR bytes.
    pub fn to_cbor(&self) -> Vec<u8> {
        // Encoding into a Vec cannot fail: the writer is infallible.
        minicbor::to_vec(self).unwrap_or_default()
    }

    /// Decodes and bounds-checks a manifest from CBOR bytes (no signature check).
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, ReleaseError> {
        if bytes.len() > Limits::MAX_RELEASE_BYTES {
            return Err(ReleaseError::LimitExceeded {
                what: "manifest",
                limit: Limits::MAX_RELEASE_BYTES,
            });
        }
        let mut d = minicbor::Decoder::new(bytes);
        let manifest: Manifest = d
            .decode()
            .map_err(|_| ReleaseError::Malformed("manifest is not a valid CBOR manifest map"))?;
        let rest = bytes.len().saturating_sub(d.position());
        if rest != 0 {
            return Err(ReleaseError::TrailingData(rest));
        }
        manifest.check_limits()?;
        Ok(manifest)
    }

    /// Checks every string and list against [`Limits`].
    pub fn check_limits(&self) -> Result<(), ReleaseError> {
        let name = |what, s: &str| bound(what, s.len(), Limits::MAX_NAME_BYTES);
        name("product", &self.product)?;
        name("version", &self.version)?;
        bound(
            "hardware class list",
            self.hardware.len(),
            Limits::MAX_HARDWARE_CLASSES,
        )?;
        for hw in &self.hardware {
            name("hardware class", hw)?;
        }
        if let Some(installer) = &self.installer {
            bound(
                "installer hint",
                installer.len(),
                Limits::MAX_INSTALLER_BYTES,
            )?;
        }
        bound(
            "metadata",
            self.metadata.len(),
            Limits::MAX_METADATA_ENTRIES,
        )?;
        for (k, v) in &self.metadata {
            name("metadata key", k)?;
            bound("metadata value", v.len(), Limits::MAX_METADATA_VALUE_BYTES)?;
        }
        if let Some(index) = &self.chunk_index {
            bound(
                "chunk index",
                usize::try_from(index.size).unwrap_or(usize::MAX),
                crate::delta::ChunkIndex::MAX_BYTES,
            )?;
        }
        Ok(())
    }
}

fn bound(what: &'static str, len: usize, limit: usize) -> Result<(), ReleaseError> {
    if len > limit {
        Err(ReleaseError::LimitExceeded { what, limit })
    } else {
        Ok(())
    }
}

//! The demo's firmware team: a fresh signing key, application images that are healthy or
//! broken, and releases signed over them.
//!
//! An image starts with one header line the simulated application reads on start
//! ([`crate::app`]): `ota-demo app VERSION healthy` or `ota-demo app VERSION broken`, then
//! deterministic filler up to the requested size, so downloads move real bytes. The filler is
//! the team's, the same in every version: like a real application whose new version changes
//! little, a new version differs in its first chunk only, and devices fetch it by delta (every
//! release is signed with its chunk index). The filler depends on the team's key, so where the
//! chunker cuts changes from team to team: an image of at least twice the chunker's max (512 KiB
//! by default) always has a second chunk to copy, a smaller one may be a single chunk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::EncodePublicKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ota_core::delta::{ChunkIndex, ChunkParams};
use ota_core::digest::Digest;
use ota_core::release::{
    ChunkIndexRef, FORMAT_VERSION, Manifest, SigningKey, TrustUpdate, VerifyingKey, sign,
    sign_trust_update,
};

use crate::LabError;

/// The product name of the demo's releases.
pub const PRODUCT: &str = "demo-gateway-app";
/// The hardware class of the demo's devices and releases.
pub const HARDWARE_CLASS: &str = "demo-gw";
/// The header word of an image whose application stays healthy.
pub const HEALTHY: &str = "healthy";
/// The header word of an image whose application crashes on start (never healthy).
pub const BROKEN: &str = "broken";

/// An application image and the release signed over it.
#[derive(Debug, Clone)]
pub struct Build {
    /// The version string.
    pub version: String,
    /// The image bytes.
    pub image: Vec<u8>,
    /// The signed release (COSE_Sign).
    pub release: Vec<u8>,
    /// The image's chunk index (published with the release), named in its manifest; `None`
    /// only if the image could not be indexed (the release then names none).
    pub chunk_index: Option<Vec<u8>>,
    /// The image's SHA-256.
    pub digest: Digest,
}

impl Build {
    /// How many chunks the image's index cuts it into (0 without an index). An image of one
    /// chunk (at most the chunker's max, 256 KiB by default, and no cut point found) shares
    /// no chunk with another version: a delta of it saves nothing.
    pub fn chunks(&self) -> usize {
        self.chunk_index
            .as_deref()
            .and_then(|bytes| ChunkIndex::from_cbor(bytes).ok())
            .map_or(0, |index| index.chunks.len())
    }
}

/// The firmware team: one signing key, held only here (the server gets the public key).
#[derive(Debug)]
pub struct FirmwareTeam {
    key: SigningKey,
}

impl FirmwareTeam {
    /// A team with a fresh random key.
    pub fn new() -> Result<Self, LabError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| LabError::Setup(format!("random key: {e}")))?;
        Ok(FirmwareTeam {
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// Writes the public key as SPKI PEM to `dir/release-key.pub` and returns its path.
    pub fn write_public_key(&self, dir: &Path) -> Result<PathBuf, LabError> {
        let pem = self
            .key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| LabError::Setup(format!("encode public key: {e}")))?;
        let path = dir.join("release-key.pub");
        std::fs::write(&path, pem).map_err(|e| LabError::io("write", &path, e))?;
        Ok(path)
    }

    /// The team's public key.
    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Signs a trust-set update (key rotation) to `keys` with threshold `threshold` and
    /// `sequence`, with the team's key; `others` sign too (the other current key holders).
    pub fn sign_rotation(
        &self,
        others: &[&FirmwareTeam],
        sequence: u64,
        keys: &[VerifyingKey],
        threshold: u32,
    ) -> Vec<u8> {
        let update = TrustUpdate::new(sequence, keys, threshold, crate::lab::unix_now());
        let signers: Vec<SigningKey> = std::iter::once(self)
            .chain(others.iter().copied())
            .map(|t| t.key.clone())
            .collect();
        sign_trust_update(&update, &signers)
    }

    /// Builds and signs `version` (`healthy` or not) with `size` bytes of image, created at
    /// `now` (unix seconds), security version 1, for the demo's hardware class.
    pub fn build(&self, version: &str, healthy: bool, size: usize, now: u64) -> Build {
        self.build_with(&BuildSpec {
            version,
            healthy,
            size,
            created: now,
            security_version: 1,
            hardware: &[HARDWARE_CLASS],
        })
    }

    /// Signs `build`'s manifest again with this team's key: a countersignature (same
    /// artifact, product, version and security version, a new signature), e.g. of a release
    /// signed only by a key a rotation revoked. Fails if `build`'s release does not decode.
    pub fn countersign(&self, build: &Build) -> Result<Build, ota_core::release::ReleaseError> {
        let manifest = ota_core::release::SignedRelease::decode(&build.release)?.manifest;
        Ok(Build {
            release: sign(&manifest, core::slice::from_ref(&self.key)),
            ..build.clone()
        })
    }

    /// Builds and signs the release `spec` describes.
    pub fn build_with(&self, spec: &BuildSpec<'_>) -> Build {
        let salt = hex_prefix(self.key.verifying_key().as_bytes());
        let image = image(spec.version, spec.healthy, spec.size, &salt);
        self.sign_image(spec, image, "files")
    }

    /// Signs `image` (made elsewhere, e.g. a root filesystem for the `ab` installer) as release
    /// `version` for `hardware`, with the installer hint `installer`, created at `created`
    /// (unix seconds), security version 1.
    pub fn build_image(
        &self,
        version: &str,
        image: Vec<u8>,
        installer: &str,
        hardware: &[&str],
        created: u64,
    ) -> Build {
        let spec = BuildSpec {
            version,
            healthy: true,
            size: image.len(),
            created,
            security_version: 1,
            hardware,
        };
        self.sign_image(&spec, image, installer)
    }

    /// Signs `image` as `spec`'s release (its `healthy` and `size` are not used), with its
    /// chunk index.
    fn sign_image(&self, spec: &BuildSpec<'_>, image: Vec<u8>, installer: &str) -> Build {
        let chunk_index =
            ota_agent::delta::index_reader(image.as_slice(), ChunkParams::DEFAULT, |_| {})
                .ok()
                .map(|index| index.to_cbor());
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            product: PRODUCT.into(),
            version: spec.version.into(),
            security_version: spec.security_version,
            artifact_sha256: Digest::of(&image).0,
            artifact_size: image.len() as u64,
            hardware: spec.hardware.iter().map(|h| (*h).to_string()).collect(),
            created: spec.created,
            expires: None,
            installer: Some(installer.into()),
            metadata: BTreeMap::new(),
            chunk_index: chunk_index.as_ref().map(|bytes| ChunkIndexRef {
                sha256: Digest::of(bytes).0,
                size: bytes.len() as u64,
            }),
        };
        let release = sign(&manifest, core::slice::from_ref(&self.key));
        Build {
            version: spec.version.into(),
            digest: Digest::of(&image),
            image,
            release,
            chunk_index,
        }
    }
}

/// What [`FirmwareTeam::build_with`] builds.
#[derive(Debug, Clone)]
pub struct BuildSpec<'a> {
    /// The version string.
    pub version: &'a str,
    /// Whether the application stays healthy.
    pub healthy: bool,
    /// Image size, bytes.
    pub size: usize,
    /// Creation time, unix seconds.
    pub created: u64,
    /// The anti-rollback security version.
    pub security_version: u32,
    /// The hardware classes the release is for.
    pub hardware: &'a [&'a str],
}

/// The image of `version`: its header line, then filler up to `size` bytes (a counter hashed
/// in blocks with `salt`: the same in every version of one team, different between teams, so
/// labs sharing a database never publish the same digest under two keys; versions differ by
/// their header line).
pub fn image(version: &str, healthy: bool, size: usize, salt: &str) -> Vec<u8> {
    let word = if healthy { HEALTHY } else { BROKEN };
    let mut bytes = format!("ota-demo app {version} {word}\n").into_bytes();
    let header = bytes.len();
    let mut block = 0u64;
    while bytes.len() < size {
        let d = Digest::of(format!("{salt}/{block}").as_bytes());
        bytes.extend_from_slice(d.as_bytes());
        block += 1;
    }
    bytes.truncate(size.max(header));
    bytes
}

/// The first 8 bytes of `bytes` in hex.
fn hex_prefix(bytes: &[u8]) -> String {
    bytes.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Whether an image's header says its application is healthy.
pub fn is_healthy(header: &[u8]) -> bool {
    let line = header.split(|&b| b == b'\n').next().unwrap_or_default();
    line.starts_with(b"ota-demo app ") && line.ends_with(HEALTHY.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(build: &Build) -> ChunkIndex {
        ChunkIndex::from_cbor(build.chunk_index.as_deref().expect("an index")).expect("decodes")
    }

    /// The demo's delta story holds for any team key at the default 1 MiB: a new version
    /// differs from the old in its first chunk only, and there are more chunks to copy.
    #[test]
    fn a_new_version_differs_in_its_first_chunk_only_for_any_team() {
        for _ in 0..8 {
            let team = FirmwareTeam::new().unwrap();
            let v1 = team.build("1.0.0", true, 1 << 20, 0);
            let v2 = team.build("2.0.0", true, 1 << 20, 0);
            let (a, b) = (index(&v1), index(&v2));
            assert!(v2.chunks() >= 4, "{} chunks", v2.chunks());
            assert_eq!(v2.chunks(), b.chunks.len());
            assert_ne!(a.chunks[0], b.chunks[0]);
            assert_eq!(a.chunks[1..], b.chunks[1..]);
        }
    }

    #[test]
    fn a_build_without_an_index_has_no_chunks() {
        let team = FirmwareTeam::new().unwrap();
        let build = Build {
            chunk_index: None,
            ..team.build("1.0.0", true, 1024, 0)
        };
        assert_eq!(build.chunks(), 0);
    }
}

//! What `ota release show` prints: a serde view of a decoded (unverified) release, as text or
//! JSON. Core has no serde; this view is the CLI's JSON schema.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use ota_core::release::SignedRelease;
use serde::Serialize;

/// Largest unix time humantime can format (the last second of year 9999).
const MAX_FORMATTABLE: u64 = 253_402_300_799;

/// A release as shown by `ota release show`. Nothing in it is verified.
#[derive(Debug, Serialize)]
pub(crate) struct ReleaseView {
    /// Always `false`: `show` decodes, it does not verify.
    pub(crate) signatures_verified: bool,
    /// The manifest fields.
    pub(crate) manifest: ManifestView,
    /// The signatures, in envelope order.
    pub(crate) signatures: Vec<SignatureView>,
}

/// The manifest, with the digest as hex and times as unix seconds.
#[derive(Debug, Serialize)]
pub(crate) struct ManifestView {
    /// Manifest format version.
    pub(crate) format_version: u16,
    /// Product name.
    pub(crate) product: String,
    /// Version string.
    pub(crate) version: String,
    /// Anti-rollback security version.
    pub(crate) security_version: u32,
    /// Artifact SHA-256, 64 lowercase hex characters.
    pub(crate) artifact_sha256: String,
    /// Artifact size in bytes.
    pub(crate) artifact_size: u64,
    /// Compatible hardware classes.
    pub(crate) hardware: Vec<String>,
    /// Creation time, unix seconds.
    pub(crate) created: u64,
    /// Expiry time, unix seconds, or `null` for never.
    pub(crate) expires: Option<u64>,
    /// Installer hint, or `null`.
    pub(crate) installer: Option<String>,
    /// Metadata entries.
    pub(crate) metadata: BTreeMap<String, String>,
    /// The signed chunk index reference, or `null` when the release has none.
    pub(crate) chunk_index: Option<ChunkIndexView>,
}

/// The manifest's reference to the artifact's chunk index.
#[derive(Debug, Serialize)]
pub(crate) struct ChunkIndexView {
    /// SHA-256 of the encoded index, 64 lowercase hex characters.
    pub(crate) sha256: String,
    /// Size of the encoded index in bytes.
    pub(crate) size: u64,
}

/// One signature: who claims to have signed (unverified).
#[derive(Debug, Serialize)]
pub(crate) struct SignatureView {
    /// The key id from the signature's `kid` header, hex (compare with `ota key id`).
    pub(crate) key_id: String,
    /// The signature algorithm (always EdDSA: decoding refuses others).
    pub(crate) algorithm: &'static str,
}

impl ReleaseView {
    /// The view of a decoded release.
    pub(crate) fn new(release: &SignedRelease) -> Self {
        let m = &release.manifest;
        ReleaseView {
            signatures_verified: false,
            manifest: ManifestView {
                format_version: m.format_version,
                product: m.product.clone(),
                version: m.version.clone(),
                security_version: m.security_version,
                artifact_sha256: m.artifact_digest().to_string(),
                artifact_size: m.artifact_size,
                hardware: m.hardware.clone(),
                created: m.created,
                expires: m.expires,
                installer: m.installer.clone(),
                metadata: m
                    .metadata
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                chunk_index: m.chunk_index.map(|c| ChunkIndexView {
                    sha256: c.digest().to_string(),
                    size: c.size,
                }),
            },
            signatures: release
                .signatures
                .iter()
                .map(|s| SignatureView {
                    key_id: hex::encode(&s.kid),
                    algorithm: "EdDSA",
                })
                .collect(),
        }
    }

    /// Pretty JSON, with a final newline.
    pub(crate) fn to_json(&self) -> String {
        // Serializing plain strings, numbers and maps cannot fail.
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Human-readable text; `now` (unix seconds) makes times relative ("in 29d 23h").
    pub(crate) fn to_text(&self, now: u64) -> String {
        let m = &self.manifest;
        let mut s = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(s, "release (signatures not verified)");
        let _ = writeln!(s, "  product:          {}", m.product);
        let _ = writeln!(s, "  version:          {}", m.version);
        let _ = writeln!(s, "  security version: {}", m.security_version);
        let _ = writeln!(s, "  format version:   {}", m.format_version);
        let _ = writeln!(s, "  artifact sha256:  {}", m.artifact_sha256);
        let _ = writeln!(
            s,
            "  artifact size:    {} bytes ({})",
            m.artifact_size,
            indicatif::HumanBytes(m.artifact_size)
        );
        match &m.chunk_index {
            Some(c) => {
                let _ = writeln!(s, "  chunk index:      {} ({} bytes)", c.sha256, c.size);
            }
            None => {
                let _ = writeln!(s, "  chunk index:      (none)");
            }
        }
        let _ = writeln!(s, "  hardware:         {}", m.hardware.join(", "));
        let _ = writeln!(s, "  created:          {}", time_text(m.created, now));
        let expires = match m.expires {
            Some(t) => time_text(t, now),
            None => "never".to_owned(),
        };
        let _ = writeln!(s, "  expires:          {expires}");
        let _ = writeln!(
            s,
            "  installer:        {}",
            m.installer.as_deref().unwrap_or("(none)")
        );
        if m.metadata.is_empty() {
            let _ = writeln!(s, "  metadata:         (none)");
        } else {
            let _ = writeln!(s, "  metadata:");
            for (k, v) in &m.metadata {
                let _ = writeln!(s, "    {k} = {v}");
            }
        }
        let _ = writeln!(s, "signatures ({}, not verified):", self.signatures.len());
        for sig in &self.signatures {
            let _ = writeln!(s, "  {} key id {}", sig.algorithm, sig.key_id);
        }
        s
    }
}

/// A unix time as RFC 3339 UTC, if it is within what can be formatted.
pub(crate) fn rfc3339(unix: u64) -> Option<String> {
    if unix > MAX_FORMATTABLE {
        return None;
    }
    let t = UNIX_EPOCH.checked_add(Duration::from_secs(unix))?;
    Some(humantime::format_rfc3339_seconds(t).to_string())
}

/// `1700000000 (2023-11-14T22:13:20Z, 3d 2h ago)`.
fn time_text(unix: u64, now: u64) -> String {
    let Some(date) = rfc3339(unix) else {
        return format!("{unix} (out of range)");
    };
    let relative = if unix == now {
        "now".to_owned()
    } else if unix > now {
        format!("in {}", coarse(unix - now))
    } else {
        format!("{} ago", coarse(now - unix))
    };
    format!("{unix} ({date}, {relative})")
}

/// A duration rounded to its two largest units (`29days 23h`, `5m 3s`).
fn coarse(secs: u64) -> String {
    let rounded = match secs {
        s if s >= 86_400 => s - s % 3_600,
        s if s >= 3_600 => s - s % 60,
        s => s,
    };
    humantime::format_duration(Duration::from_secs(rounded)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_format_and_never_panic() {
        assert_eq!(rfc3339(0).as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!(rfc3339(u64::MAX), None);
        assert_eq!(
            time_text(u64::MAX, 0),
            format!("{} (out of range)", u64::MAX)
        );
        assert_eq!(
            time_text(90_000, 0),
            "90000 (1970-01-02T01:00:00Z, in 1day 1h)"
        );
        assert_eq!(time_text(0, 61), "0 (1970-01-01T00:00:00Z, 1m 1s ago)");
    }
}

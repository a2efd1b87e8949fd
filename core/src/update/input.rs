//! What the shell reports back: results of downloads, installs and health probes.

use alloc::string::String;

use crate::release::ReleaseError;

/// Why a download attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DownloadError {
    /// Network trouble, an HTTP error, a full disk... worth retrying (with backoff, over the
    /// mirrors) while retries are left.
    #[error("download failed: {0}")]
    Transient(String),
    /// The bytes failed the streaming verifier (wrong digest or size, too long): the mirror is
    /// never asked again for this release.
    #[error("artifact verification failed: {0}")]
    Verify(#[from] ReleaseError),
}

/// Why an install failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("install failed: {reason}")]
pub struct InstallError {
    /// The installer's message.
    pub reason: String,
}

impl InstallError {
    /// An install error with this message.
    pub fn new(reason: impl Into<String>) -> Self {
        InstallError {
            reason: reason.into(),
        }
    }
}

/// The answer of one health probe run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeResult {
    /// The release is healthy.
    Healthy,
    /// Not healthy yet (still starting, a dependency not up): probe again after the interval,
    /// until the trial deadline.
    NotYet(String),
    /// Definitively unhealthy: roll back now.
    Failed(String),
}

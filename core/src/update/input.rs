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
#[non_exhaustive]
pub enum InstallError {
    /// The installer failed (its message). It may have changed the device: a failed update is
    /// rolled back to the known-good release.
    #[error("install failed: {0}")]
    Installer(String),
    /// The cached artifact did not match its signed digest and size when the shell re-hashed it
    /// just before installing (bit rot, tampering): nothing was installed. The entry leaves the
    /// cache and the job fails `verify`, also for a rollback (issue 19.8).
    #[error("cached artifact failed verification before the install: {0}")]
    CorruptArtifact(String),
}

impl InstallError {
    /// An installer failure with this message.
    pub fn new(reason: impl Into<String>) -> Self {
        InstallError::Installer(reason.into())
    }

    /// A cached artifact that failed its re-hash before the install.
    pub fn corrupt_artifact(reason: impl Into<String>) -> Self {
        InstallError::CorruptArtifact(reason.into())
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

//! Devices an aborted rollout cannot send back: [`NoRollbackCause`] and its record.

use minicbor::{Decode, Encode};

use crate::release::ReleaseError;
use crate::wire::DeviceId;

/// Why a device that took an aborted rollout's release has no rollback target it would
/// accept (the server sends it nothing and the rollout lists it under `no-rollback-target`).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[non_exhaustive]
pub enum NoRollbackCause {
    /// The device ran no release before this rollout: there is nothing to go back to.
    #[n(0)]
    NoKnownGood,
    /// The known-good release is not published on this server.
    #[n(1)]
    Unpublished,
    /// The trust set in force does not verify the known-good release (its keys were rotated
    /// out): the device would refuse it (`unknown-key`, `bad-signature`,
    /// `threshold-not-met`).
    #[n(2)]
    Untrusted,
    /// The known-good release's security version is below the device's security floor: the
    /// device would refuse it as a downgrade.
    #[n(3)]
    SecurityFloor {
        /// The known-good release's security version.
        #[n(0)]
        security_version: u32,
        /// The device's floor.
        #[n(1)]
        floor: u32,
    },
    /// The known-good release has expired.
    #[n(4)]
    Expired {
        /// Its expiry, unix seconds.
        #[n(0)]
        expires: u64,
    },
    /// The known-good release does not decode, or is refused for another reason.
    #[n(5)]
    Unusable,
}

impl NoRollbackCause {
    /// The cause's stable kebab-case name (events, API, CLI, docs).
    pub fn name(&self) -> &'static str {
        match self {
            NoRollbackCause::NoKnownGood => "no-known-good",
            NoRollbackCause::Unpublished => "unpublished",
            NoRollbackCause::Untrusted => "untrusted",
            NoRollbackCause::SecurityFloor { .. } => "security-floor",
            NoRollbackCause::Expired { .. } => "expired",
            NoRollbackCause::Unusable => "unusable",
        }
    }
}

impl From<&ReleaseError> for NoRollbackCause {
    /// The cause matching the error a device would refuse the known-good release with.
    fn from(e: &ReleaseError) -> Self {
        match e {
            ReleaseError::UnknownKey
            | ReleaseError::BadSignature(_)
            | ReleaseError::ThresholdNotMet { .. } => NoRollbackCause::Untrusted,
            ReleaseError::Downgrade {
                security_version,
                floor,
            } => NoRollbackCause::SecurityFloor {
                security_version: *security_version,
                floor: *floor,
            },
            ReleaseError::Expired { expires, .. } => NoRollbackCause::Expired { expires: *expires },
            _ => NoRollbackCause::Unusable,
        }
    }
}

/// A device of an aborted rollout left on the release (see
/// [`Rollout::handle_no_rollback_target`](super::Rollout::handle_no_rollback_target)).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[non_exhaustive]
pub struct NoRollback {
    /// The device.
    #[cbor(n(0), with = "crate::rollout::codec::device_id")]
    pub device_id: DeviceId,
    /// Why it cannot go back.
    #[n(1)]
    pub cause: NoRollbackCause,
}

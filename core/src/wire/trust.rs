//! The device's answer to a trust-set update: [`TrustReport`] on
//! `ota/v1/devices/{id}/trust` (device to server, not retained).
//!
//! The update itself travels on the fleet-wide [`super::TRUST_TOPIC`] as signed envelope bytes
//! ([`crate::release::SignedTrustUpdate`]); the device verifies it against the trust set it
//! has and answers `trust-rotated` or `trust-rejected` with a [`TrustRejectCause`].

use alloc::string::String;

use minicbor::{Decode, Encode};

use super::codec::{WireError, WireMessage, text};
use super::{DeviceId, PROTOCOL_VERSION};
use crate::release::{ReleaseError, TrustUpdateError};

/// Why a device (or the fleet server) refused a trust-set update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
#[cbor(index_only)]
#[non_exhaustive]
pub enum TrustRejectCause {
    /// The bytes are not a trust-set update (bad envelope or content, another content type,
    /// an unsupported algorithm or format version, over a size bound).
    #[n(0)]
    Malformed,
    /// No signature is by a key of the current trust set (signed by revoked or unknown keys).
    #[n(1)]
    UnknownKey,
    /// Fewer current keys signed than the current threshold.
    #[n(2)]
    TooFewSignatures,
    /// A signature by a current key does not verify.
    #[n(3)]
    BadSignature,
    /// The sequence is not above the current one (a replayed or older update).
    #[n(4)]
    Stale,
    /// The new set is unusable (an invalid key, a duplicate key, an impossible threshold).
    #[n(5)]
    InvalidTrustSet,
    /// The update verified but could not be stored (the device keeps the old set and takes the
    /// update again on its next delivery).
    #[n(6)]
    Storage,
}

impl TrustRejectCause {
    /// The cause's stable kebab-case name (events, API errors, logs).
    pub fn name(self) -> &'static str {
        match self {
            TrustRejectCause::Malformed => "malformed",
            TrustRejectCause::UnknownKey => "unknown-key",
            TrustRejectCause::TooFewSignatures => "too-few-signatures",
            TrustRejectCause::BadSignature => "bad-signature",
            TrustRejectCause::Stale => "stale",
            TrustRejectCause::InvalidTrustSet => "invalid-trust-set",
            TrustRejectCause::Storage => "storage",
        }
    }
}

impl From<&TrustUpdateError> for TrustRejectCause {
    fn from(e: &TrustUpdateError) -> Self {
        match e {
            TrustUpdateError::Envelope(ReleaseError::UnknownKey) => TrustRejectCause::UnknownKey,
            TrustUpdateError::Envelope(ReleaseError::ThresholdNotMet { .. }) => {
                TrustRejectCause::TooFewSignatures
            }
            TrustUpdateError::Envelope(ReleaseError::BadSignature(_)) => {
                TrustRejectCause::BadSignature
            }
            TrustUpdateError::Stale { .. } => TrustRejectCause::Stale,
            TrustUpdateError::InvalidKey | TrustUpdateError::InvalidTrustSet(_) => {
                TrustRejectCause::InvalidTrustSet
            }
            _ => TrustRejectCause::Malformed,
        }
    }
}

/// What the device did with a trust-set update.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub enum TrustOutcome {
    /// Verified, persisted and in force from now on (`trust-rotated`).
    #[n(0)]
    Rotated {
        /// Keys in the new set.
        #[n(0)]
        keys: u32,
        /// The new threshold.
        #[n(1)]
        threshold: u32,
    },
    /// Refused; the device's trust set is unchanged (`trust-rejected`).
    #[n(1)]
    Rejected {
        /// The cause, for aggregation.
        #[n(0)]
        cause: TrustRejectCause,
        /// The verifier's message.
        #[n(1)]
        detail: String,
    },
}

impl TrustOutcome {
    /// The outcome's stable name: `trust-rotated` or `trust-rejected` (the server's audit
    /// event kind).
    pub fn name(&self) -> &'static str {
        match self {
            TrustOutcome::Rotated { .. } => "trust-rotated",
            TrustOutcome::Rejected { .. } => "trust-rejected",
        }
    }
}

/// A device's report on one trust-set update (`ota/v1/devices/{id}/trust`).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct TrustReport {
    /// Protocol version ([`PROTOCOL_VERSION`]).
    #[n(0)]
    pub v: u16,
    /// The device id.
    #[n(1)]
    pub device_id: String,
    /// When, unix ms.
    #[n(2)]
    pub at: u64,
    /// The update's sequence (`None`: it did not decode).
    #[n(3)]
    pub offered: Option<u64>,
    /// The sequence of the trust set the device uses after handling it.
    #[n(4)]
    pub sequence: u64,
    /// What the device did.
    #[n(5)]
    pub outcome: TrustOutcome,
}

impl TrustReport {
    /// A report of `outcome` by `device`.
    pub fn new(
        device: &DeviceId,
        at: u64,
        offered: Option<u64>,
        sequence: u64,
        outcome: TrustOutcome,
    ) -> Self {
        TrustReport {
            v: PROTOCOL_VERSION,
            device_id: String::from(device.as_str()),
            at,
            offered,
            sequence,
            outcome,
        }
    }
}

impl WireMessage for TrustReport {
    const NAME: &'static str = "trust report";

    fn check_limits(&self) -> Result<(), WireError> {
        DeviceId::check(&self.device_id)?;
        match &self.outcome {
            TrustOutcome::Rejected { detail, .. } => text("trust detail", detail),
            TrustOutcome::Rotated { .. } => Ok(()),
        }
    }
}

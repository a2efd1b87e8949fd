//! Whether a device would accept the release an aborted rollout sends it back to, judged as
//! the device judges it, before anything is sent: a device that would refuse it stays on the
//! rollout's release and the rollout lists it under `no-rollback-target`.
//!
//! The shell reads the releases' bytes (its database, its cache) and asks
//! [`RollbackCheck::refusal`]:
//!
//! | the rollback target | outcome |
//! |---|---|
//! | [`NO_RELEASE`] (the device ran nothing before the rollout) | [`NoRollbackCause::NoKnownGood`] |
//! | not published on this server | [`NoRollbackCause::Unpublished`] |
//! | bytes that do not decode as a signed release | [`NoRollbackCause::Unusable`] |
//! | refused by the trust set in force, the device's security floor or its expiry (no hardware check: the device ran it) | the cause of that refusal (`NoRollbackCause::from`) |
//! | otherwise | accepted (`None`) |
//!
//! The device's floor is the one it last reported, raised to the rollout's release's security
//! version when the device committed that release (its agent raised its floor then, and may not
//! have reported it yet).

use crate::digest::Digest;
use crate::fleet::targeting::NO_RELEASE;
use crate::release::{Policy, SignedRelease, TrustSet};
use crate::rollout::NoRollbackCause;

/// What deciding a device's rollback target takes ([`RollbackCheck::refusal`]).
#[derive(Debug, Clone, Copy)]
pub struct RollbackCheck<'a> {
    /// Where the abort sends the device: its known-good release ([`NO_RELEASE`]: none).
    pub target: Digest,
    /// The target's signed release as published on this server (`None`: not published).
    pub target_release: Option<&'a [u8]>,
    /// Whether the device committed the rollout's release.
    pub committed: bool,
    /// The rollout's signed release (read only when `committed`; `None`: unreadable, then the
    /// reported floor stands).
    pub rollout_release: Option<&'a [u8]>,
    /// The security floor the device last reported.
    pub reported_floor: u32,
    /// The trust set in force.
    pub trust: &'a TrustSet,
    /// Now, unix seconds (the expiry check).
    pub now: u64,
}

impl RollbackCheck<'_> {
    /// Why the device would refuse [`RollbackCheck::target`] (see the [module
    /// documentation](self) for the rules); `None`: it will accept it.
    pub fn refusal(&self) -> Option<NoRollbackCause> {
        if self.target == NO_RELEASE {
            return Some(NoRollbackCause::NoKnownGood);
        }
        let Some(bytes) = self.target_release else {
            return Some(NoRollbackCause::Unpublished);
        };
        let Ok(signed) = SignedRelease::decode(bytes) else {
            return Some(NoRollbackCause::Unusable);
        };
        let policy = Policy {
            hardware_class: None,
            security_floor: self.floor(),
            now: self.now,
        };
        signed
            .verify(self.trust, &policy)
            .err()
            .map(|e| NoRollbackCause::from(&e))
    }

    /// The device's security floor now: the reported one, raised to the rollout's release's
    /// security version once the device committed it.
    pub fn floor(&self) -> u32 {
        let raised = self
            .rollout_release
            .filter(|_| self.committed)
            .and_then(|bytes| SignedRelease::decode(bytes).ok())
            .map_or(0, |release| release.manifest.security_version);
        self.reported_floor.max(raised)
    }
}

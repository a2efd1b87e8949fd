//! What an operator asks for: the rollout spec, its ratios, and the target devices.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::time::Duration;

use minicbor::{Decode, Encode};

use super::RolloutError;
use crate::digest::Digest;
use crate::wire::{DeviceId, WireLimits};

/// A share of a whole, in basis points (1/100 of a percent): `Ratio::percent(5)` is 5 %.
///
/// Used for wave sizes, the success minimum and the failure maximum. Comparisons against
/// counts are exact integer arithmetic (no floating point).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
#[cbor(transparent)]
pub struct Ratio(#[n(0)] u16);

impl Ratio {
    /// Basis points in a whole (100 %).
    pub const SCALE: u16 = 10_000;
    /// 0 %.
    pub const ZERO: Ratio = Ratio(0);
    /// 100 %.
    pub const FULL: Ratio = Ratio(Self::SCALE);

    /// `p` percent (saturating; anything over 100 is refused by [`RolloutSpec::validate`]).
    pub const fn percent(p: u16) -> Self {
        Ratio(p.saturating_mul(100))
    }

    /// `bp` basis points (`10_000` is 100 %).
    pub const fn basis_points(bp: u16) -> Self {
        Ratio(bp)
    }

    /// The ratio in basis points.
    pub const fn as_basis_points(self) -> u16 {
        self.0
    }

    /// Whether the ratio is at most 100 %.
    pub const fn is_valid(self) -> bool {
        self.0 <= Self::SCALE
    }

    /// Whether `part / whole >= self` (exact). An empty whole meets every ratio.
    pub fn is_met_by(self, part: u32, whole: u32) -> bool {
        u64::from(part) * u64::from(Self::SCALE) >= u64::from(self.0) * u64::from(whole)
    }

    /// Whether `part / whole > self` (exact). An empty whole exceeds no ratio.
    pub fn is_exceeded_by(self, part: u32, whole: u32) -> bool {
        u64::from(part) * u64::from(Self::SCALE) > u64::from(self.0) * u64::from(whole)
    }
}

impl fmt::Display for Ratio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, frac) = (self.0 / 100, self.0 % 100);
        if frac == 0 {
            write!(f, "{whole}%")
        } else {
            write!(f, "{whole}.{frac:02}%")
        }
    }
}

impl fmt::Debug for Ratio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ratio({self})")
    }
}

/// The most waves a rollout may have.
pub const MAX_WAVES: usize = 32;
/// The default [`RolloutSpec::min_executed`].
pub const DEFAULT_MIN_EXECUTED: u32 = 10;

/// A rollout as the operator asked for it. Persisted inside the planner state.
///
/// Build one with [`RolloutSpec::new`] (which fills the defaults listed there) and adjust the
/// public fields; [`crate::rollout::Rollout::new`] validates it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
#[non_exhaustive]
pub struct RolloutSpec {
    /// The rollout's id, unique per fleet server. It salts the cohort hash, so two rollouts pick
    /// different canary devices.
    #[n(0)]
    pub id: String,
    /// The artifact digest of the release being rolled out.
    #[n(1)]
    pub release: Digest,
    /// The operator who created the rollout (who may not approve a forced reinstall).
    #[n(2)]
    pub created_by: String,
    /// Cumulative wave sizes, strictly increasing, the last one 100 % (e.g. 1, 5, 25, 100 %).
    #[n(3)]
    pub waves: Vec<Ratio>,
    /// How long a wave is watched after its last member settled, before its gate is judged.
    #[cbor(n(4), with = "crate::rollout::codec::duration")]
    pub bake_time: Duration,
    /// The least share of succeeded devices among a wave's devices that installed (executed).
    #[n(5)]
    pub success_min: Ratio,
    /// The largest share of failures among executed devices before the rollout aborts.
    #[n(6)]
    pub max_failure: Ratio,
    /// How many devices must have executed before `max_failure` is judged (capped at the
    /// number of devices that will install).
    #[n(7)]
    pub min_executed: u32,
    /// At most this many devices are notified in any 60 second window (at least 1).
    #[n(8)]
    pub rate_per_minute: u32,
    /// A notified device that reports no progress for this long becomes timed-out.
    #[cbor(n(9), with = "crate::rollout::codec::duration")]
    pub inactivity_timeout: Duration,
    /// A deferred (or unreachable) device stops blocking its wave's gate after this long.
    #[cbor(n(10), with = "crate::rollout::codec::duration")]
    pub max_deferral: Duration,
    /// Reinstall on devices that already run the release (needs a second operator's approval).
    #[n(11)]
    pub force_reinstall: bool,
    /// Plan only: compute cohorts and counts, never notify a device.
    #[n(12)]
    pub dry_run: bool,
}

impl RolloutSpec {
    /// A spec with the defaults: waves 1, 5, 25, 100 %; bake time 1 h; success minimum 95 %;
    /// maximum failure 5 %; min-executed 10; 200 devices per minute; inactivity timeout 30 min;
    /// maximum deferral 24 h; no forced reinstall; not a dry run.
    pub fn new(id: impl Into<String>, release: Digest, created_by: impl Into<String>) -> Self {
        RolloutSpec {
            id: id.into(),
            release,
            created_by: created_by.into(),
            waves: vec![
                Ratio::percent(1),
                Ratio::percent(5),
                Ratio::percent(25),
                Ratio::FULL,
            ],
            bake_time: Duration::from_secs(60 * 60),
            success_min: Ratio::percent(95),
            max_failure: Ratio::percent(5),
            min_executed: DEFAULT_MIN_EXECUTED,
            rate_per_minute: 200,
            inactivity_timeout: Duration::from_secs(30 * 60),
            max_deferral: Duration::from_secs(24 * 60 * 60),
            force_reinstall: false,
            dry_run: false,
        }
    }

    /// Checks the spec: ids bounded, 1 to [`MAX_WAVES`] strictly increasing waves ending at
    /// 100 %, ratios at most 100 %, a rate of at least one device per minute and a non-zero
    /// inactivity timeout.
    pub fn validate(&self) -> Result<(), RolloutError> {
        if self.id.is_empty() || self.id.len() > WireLimits::MAX_ID_BYTES {
            return Err(RolloutError::BadRolloutId);
        }
        if self.created_by.is_empty() || self.created_by.len() > WireLimits::MAX_ID_BYTES {
            return Err(RolloutError::BadOperator);
        }
        if self.waves.is_empty() {
            return Err(RolloutError::NoWaves);
        }
        if self.waves.len() > MAX_WAVES {
            return Err(RolloutError::TooManyWaves {
                count: self.waves.len(),
                max: MAX_WAVES,
            });
        }
        let mut previous = Ratio::ZERO;
        for (index, wave) in self.waves.iter().enumerate() {
            if !wave.is_valid() || *wave <= previous {
                return Err(RolloutError::WavesNotIncreasing { index });
            }
            previous = *wave;
        }
        if previous != Ratio::FULL {
            return Err(RolloutError::LastWaveNotFull);
        }
        if !self.success_min.is_valid() {
            return Err(RolloutError::RatioOutOfRange("success-min"));
        }
        if !self.max_failure.is_valid() {
            return Err(RolloutError::RatioOutOfRange("max-failure"));
        }
        if self.rate_per_minute == 0 {
            return Err(RolloutError::ZeroRate);
        }
        if self.inactivity_timeout.is_zero() {
            return Err(RolloutError::ZeroInactivityTimeout);
        }
        Ok(())
    }
}

/// One device the rollout targets (the server filtered the fleet already).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Target {
    /// The device.
    pub device_id: DeviceId,
    /// The artifact digest the device runs now (from its reported state). Equal to the
    /// release's digest means a redeploy: the device will report skipped-identical.
    pub running_digest: Digest,
    /// The device's last committed release, where an abort sends it back.
    pub known_good: Digest,
    /// Whether the device is connected when the rollout is created (default `true`). An
    /// offline target is not notified until [`crate::rollout::Rollout::handle_device_online`].
    pub online: bool,
}

impl Target {
    /// A target device.
    pub fn new(device_id: DeviceId, running_digest: Digest, known_good: Digest) -> Self {
        Target {
            device_id,
            running_digest,
            known_good,
            online: true,
        }
    }

    /// The same target, connected or not when the rollout is created.
    pub fn with_online(mut self, online: bool) -> Self {
        self.online = online;
        self
    }
}

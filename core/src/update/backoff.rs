//! Download retries: exponential backoff with deterministic jitter.
//!
//! The jitter comes from a tiny SplitMix64 generator seeded from the configuration (mixed with
//! the boot count), so a fleet does not retry in lock-step while every run of the machine stays
//! reproducible: the same seed, inputs and `now`s give the same actions.

use core::time::Duration;

use crate::time::duration_millis as millis;

/// How downloads are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after transient failures before the update fails (`failed{phase: download}`).
    /// Default 8.
    pub max_retries: u32,
    /// Backoff before the first retry (doubles with each retry). Default 5 seconds.
    pub initial_backoff: Duration,
    /// Upper bound of the backoff. Default 10 minutes.
    pub max_backoff: Duration,
    /// Seed of the jitter (use something device-specific, e.g. bytes of the device id's hash).
    pub jitter_seed: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 8,
            initial_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(10 * 60),
            jitter_seed: 0,
        }
    }
}

impl RetryPolicy {
    /// The backoff before retry number `retry` (1-based), given a random value: "equal jitter",
    /// uniformly in `[base/2, base]` where `base = min(initial * 2^(retry-1), max)`.
    pub fn backoff(&self, retry: u32, random: u64) -> Duration {
        let doublings = retry.saturating_sub(1).min(32);
        let base = millis(self.initial_backoff)
            .saturating_mul(1u64 << doublings)
            .min(millis(self.max_backoff));
        let half = base / 2;
        let spread = base - half;
        Duration::from_millis(half + random % spread.saturating_add(1))
    }
}

/// SplitMix64: a deterministic source of jitter (not for anything secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Jitter(u64);

impl Jitter {
    /// A generator for `seed` in boot `boot_count`.
    pub(crate) fn new(seed: u64, boot_count: u32) -> Self {
        Jitter(seed ^ u64::from(boot_count).wrapping_mul(0xA076_1D64_78BD_642F))
    }

    /// The next pseudo-random value.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_jitter_and_caps() {
        let p = RetryPolicy {
            initial_backoff: Duration::from_secs(4),
            max_backoff: Duration::from_secs(60),
            ..RetryPolicy::default()
        };
        assert_eq!(p.backoff(1, 0), Duration::from_secs(2));
        assert_eq!(
            p.backoff(1, u64::MAX),
            Duration::from_millis(2000 + u64::MAX % 2001)
        );
        assert!(p.backoff(3, 12345) >= Duration::from_secs(8));
        assert!(p.backoff(3, 12345) <= Duration::from_secs(16));
        assert!(p.backoff(99, 7) <= Duration::from_secs(60));
        assert!(p.backoff(99, 7) >= Duration::from_secs(30));
    }

    #[test]
    fn jitter_is_deterministic_per_seed_and_boot() {
        let a: [u64; 3] = core::array::from_fn({
            let mut j = Jitter::new(7, 1);
            move |_| j.next_u64()
        });
        let b: [u64; 3] = core::array::from_fn({
            let mut j = Jitter::new(7, 1);
            move |_| j.next_u64()
        });
        assert_eq!(a, b);
        assert_ne!(Jitter::new(7, 1).next_u64(), Jitter::new(7, 2).next_u64());
    }
}

//! Wall-clock time as data: the core never reads a clock, every `handle_*` takes `now`.
//!
//! [`Timestamp`] is a point in wall-clock time (unix milliseconds, UTC); spans are
//! [`core::time::Duration`]. Arithmetic saturates instead of overflowing, so no input can make
//! time arithmetic panic.

use core::fmt;
use core::time::Duration;

use minicbor::{Decode, Encode};

/// A point in wall-clock time: milliseconds since the unix epoch (UTC).
///
/// Shells read the clock (`SystemTime::now()`, or a simulated clock in tests) and pass the value
/// in; state machines only compare and add. It encodes in CBOR as a plain unsigned integer.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Encode, Decode)]
#[cbor(transparent)]
pub struct Timestamp(#[n(0)] pub u64);

impl Timestamp {
    /// The unix epoch.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// The timestamp `ms` milliseconds after the unix epoch.
    pub const fn from_unix_millis(ms: u64) -> Self {
        Timestamp(ms)
    }

    /// The timestamp `secs` seconds after the unix epoch (saturating).
    pub const fn from_unix_secs(secs: u64) -> Self {
        Timestamp(secs.saturating_mul(1000))
    }

    /// Milliseconds since the unix epoch.
    pub const fn as_unix_millis(self) -> u64 {
        self.0
    }

    /// Whole seconds since the unix epoch (rounded down: when something started).
    pub const fn as_unix_secs(self) -> u64 {
        self.0 / 1000
    }

    /// Seconds since the unix epoch, rounded up (when something ends: never before it does).
    pub const fn as_unix_secs_ceil(self) -> u64 {
        self.0.div_ceil(1000)
    }

    /// `self + d`, saturating at the end of time.
    pub fn saturating_add(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_add(duration_millis(d)))
    }

    /// `self - d`, saturating at the epoch.
    pub fn saturating_sub(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_sub(duration_millis(d)))
    }

    /// The time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

/// A duration in whole milliseconds, saturating at `u64::MAX`.
pub(crate) fn duration_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({}ms)", self.0)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_round_down_for_a_start_and_up_for_an_end() {
        for (ms, floor, ceil) in [
            (0, 0, 0),
            (1, 0, 1),
            (999, 0, 1),
            (1000, 1, 1),
            (1001, 1, 2),
        ] {
            let t = Timestamp(ms);
            assert_eq!(
                (t.as_unix_secs(), t.as_unix_secs_ceil()),
                (floor, ceil),
                "{ms}"
            );
        }
        assert_eq!(Timestamp(u64::MAX).as_unix_secs_ceil(), u64::MAX / 1000 + 1);
    }

    #[test]
    fn arithmetic_saturates() {
        let t = Timestamp::from_unix_secs(10);
        assert_eq!(t.as_unix_millis(), 10_000);
        assert_eq!(
            t.saturating_add(Duration::from_millis(5)),
            Timestamp(10_005)
        );
        assert_eq!(
            Timestamp(u64::MAX).saturating_add(Duration::MAX),
            Timestamp(u64::MAX)
        );
        assert_eq!(t.saturating_sub(Duration::from_secs(60)), Timestamp::EPOCH);
        assert_eq!(
            Timestamp(5).saturating_duration_since(Timestamp(9)),
            Duration::ZERO
        );
    }

    #[test]
    fn encodes_as_a_plain_integer() {
        let bytes = minicbor::to_vec(Timestamp(1_000)).unwrap();
        assert_eq!(bytes, minicbor::to_vec(1_000u64).unwrap());
        assert_eq!(
            minicbor::decode::<Timestamp>(&bytes).unwrap(),
            Timestamp(1_000)
        );
    }
}

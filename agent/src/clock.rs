//! The shell's clock: wall time derived from a monotonic base.
//!
//! The core machine takes `now` as a wall-clock [`Timestamp`]. The shell reads the system clock
//! once, at start-up, and from then on adds the time elapsed on tokio's monotonic clock:
//!
//! ```text
//! now = base_wall + (tokio::time::Instant::now() - base_instant)
//! ```
//!
//! So time never jumps while the agent runs (an NTP step does not fire or delay a trial
//! deadline), and a test that pauses tokio's clock (`tokio::time::pause`, `advance`) drives
//! the real shell through hours in milliseconds. A deadline [`Timestamp`] converts back to a
//! tokio [`Instant`] for `sleep_until`.
//!
//! This module is the only place in the agent that reads a clock (`clippy.toml` bans
//! `Instant::now` and `SystemTime::now` elsewhere): [`monotonic_now`] for the shell's own
//! retry and poll deadlines, [`ShellClock`] for the machine's wall time, and
//! [`ShellClock::file_system_now`] for comparisons with file modification times.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ota_core::update::Timestamp;
use tokio::time::Instant;

/// Now on tokio's monotonic clock (paused and advanced by `tokio::time::pause`/`advance` in
/// tests): the base of the shell's own deadlines (journal retries, power polls, rate windows).
#[allow(clippy::disallowed_methods)] // The agent's one reader of the monotonic clock.
pub fn monotonic_now() -> Instant {
    Instant::now()
}

/// Wall time on a monotonic base (see the [module documentation](self)).
#[derive(Debug, Clone, Copy)]
pub struct ShellClock {
    base_wall: Timestamp,
    base_instant: Instant,
}

impl ShellClock {
    /// A clock whose "now" is the system's wall clock at this moment.
    pub fn from_system() -> Self {
        let ms = Self::file_system_now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Self::starting_at(Timestamp::from_unix_millis(ms))
    }

    /// A clock whose "now" is `wall` at this moment (tests pick the wall time).
    pub fn starting_at(wall: Timestamp) -> Self {
        ShellClock {
            base_wall: wall,
            base_instant: monotonic_now(),
        }
    }

    /// The current wall time.
    pub fn now(&self) -> Timestamp {
        self.base_wall
            .saturating_add(monotonic_now().saturating_duration_since(self.base_instant))
    }

    /// The tokio instant at which the wall clock reads `at` (now, if `at` is past).
    pub fn instant_at(&self, at: Timestamp) -> Instant {
        let now_wall = self.now();
        let now = monotonic_now();
        now.checked_add(at.saturating_duration_since(now_wall))
            // Far-future deadlines: a year is "never" for a sleeping agent.
            .unwrap_or(now + Duration::from_secs(365 * 24 * 3600))
    }

    /// The system's wall clock as the kernel reads it.
    ///
    /// Only for comparisons with file modification times (the heartbeat health probe), which
    /// the kernel stamps with this clock and not with the shell's (a paused tokio clock would
    /// make every heartbeat file look stale or from the future), and for the start of
    /// [`ShellClock::from_system`].
    #[allow(clippy::disallowed_methods)] // The agent's one reader of the system wall clock.
    pub fn file_system_now() -> SystemTime {
        SystemTime::now()
    }

    /// `at` as a [`SystemTime`] (for file modification times).
    pub fn system_time(at: Timestamp) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(at.as_unix_millis())
    }
}

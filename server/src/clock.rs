//! The server's clocks: the only place it reads the time, so tests can fix or advance it.
//!
//! [`Clock`] is the wall clock of every decision that is persisted or shown (audit times,
//! `last_seen`, the planner). [`monotonic_now`] is tokio's monotonic clock for the server's own
//! timers (idle connections, rate budgets, log throttling, console sessions), which tests pause
//! and advance with `tokio::time::pause`/`advance`. `clippy.toml` bans `Instant::now` and
//! `SystemTime::now` everywhere else.

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ota_core::time::Timestamp;

/// A source of "now", kept in unix milliseconds.
///
/// The server uses it for audit timestamps, `last_seen`, the release expiry check at intake
/// and every rollout planner input (bake times, timeouts, the rate window). [`Clock::system`]
/// reads the system clock; [`Clock::fixed`] always answers the same instant; [`Clock::manual`]
/// is advanced by hand (tests of timeouts and bake times without waiting).
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> u64 + Send + Sync>);

/// A hand-advanced clock made by [`Clock::manual`].
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<std::sync::atomic::AtomicU64>);

impl ManualClock {
    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: std::time::Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.0.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
    }

    /// Now, in unix milliseconds.
    pub fn now_millis(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Now on tokio's monotonic clock (paused and advanced by `tokio::time::pause`/`advance` in
/// tests): the base of the server's own timers, never of a persisted time.
#[allow(clippy::disallowed_methods)] // The server's one reader of the monotonic clock.
pub fn monotonic_now() -> tokio::time::Instant {
    tokio::time::Instant::now()
}

impl Clock {
    /// The system clock (a time before 1970 reads as 0).
    #[allow(clippy::disallowed_methods)] // The server's one reader of the system wall clock.
    pub fn system() -> Self {
        Clock(Arc::new(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(0)
        }))
    }

    /// A clock stuck at `unix_seconds`.
    pub fn fixed(unix_seconds: u64) -> Self {
        let ms = unix_seconds.saturating_mul(1000);
        Clock(Arc::new(move || ms))
    }

    /// A clock starting at `unix_seconds` that only moves when the returned handle says so.
    pub fn manual(unix_seconds: u64) -> (Self, ManualClock) {
        let cell = Arc::new(std::sync::atomic::AtomicU64::new(
            unix_seconds.saturating_mul(1000),
        ));
        let handle = ManualClock(cell.clone());
        (
            Clock(Arc::new(move || {
                cell.load(std::sync::atomic::Ordering::SeqCst)
            })),
            handle,
        )
    }

    /// A clock backed by any function returning unix seconds.
    pub fn from_fn(f: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        Clock(Arc::new(move || f().saturating_mul(1000)))
    }

    /// Now, in unix seconds.
    pub fn now(&self) -> u64 {
        (self.0)() / 1000
    }

    /// Now, in unix seconds, as the signed integer the database stores.
    pub fn now_i64(&self) -> i64 {
        i64::try_from(self.now()).unwrap_or(i64::MAX)
    }

    /// Now, in unix milliseconds.
    pub fn now_millis(&self) -> u64 {
        (self.0)()
    }

    /// Now, as the planner's [`Timestamp`].
    pub fn timestamp(&self) -> Timestamp {
        Timestamp::from_unix_millis(self.now_millis())
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Clock(now = {} ms)", self.now_millis())
    }
}

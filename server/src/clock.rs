//! The server's wall clock: the only place it reads the time, so tests can fix it.

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of "now" in unix seconds.
///
/// The server uses it for audit timestamps, `last_seen`, and the release expiry check at
/// intake. [`Clock::system`] reads the system clock; [`Clock::fixed`] always answers the same
/// instant (tests, fixtures with a fixed "now").
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> u64 + Send + Sync>);

impl Clock {
    /// The system clock (a time before 1970 reads as 0).
    pub fn system() -> Self {
        Clock(Arc::new(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        }))
    }

    /// A clock stuck at `unix_seconds`.
    pub fn fixed(unix_seconds: u64) -> Self {
        Clock(Arc::new(move || unix_seconds))
    }

    /// A clock backed by any function (e.g. one a test advances by hand).
    pub fn from_fn(f: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        Clock(Arc::new(f))
    }

    /// Now, in unix seconds.
    pub fn now(&self) -> u64 {
        (self.0)()
    }

    /// Now, in unix seconds, as the signed integer the database stores.
    pub fn now_i64(&self) -> i64 {
        i64::try_from(self.now()).unwrap_or(i64::MAX)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Clock(now = {})", self.now())
    }
}

//! The server's clocks: the only place it reads the time, so tests can fix or advance it.
//!
//! [`Clock`] is the wall clock of every decision that is persisted or shown (audit times,
//! `last_seen`, the planner). [`monotonic_now`] is tokio's monotonic clock for the server's own
//! timers (idle connections, rate budgets, log throttling, console sessions), which tests pause
//! and advance with `tokio::time::pause`/`advance`. `clippy.toml` bans `Instant::now` and
//! `SystemTime::now` everywhere else.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use ota_core::time::Timestamp;
use tokio::sync::watch;

/// A source of "now", kept in unix milliseconds.
///
/// The server uses it for audit timestamps, `last_seen`, the release expiry check at intake
/// and every rollout planner input (bake times, timeouts, the rate window). [`Clock::system`]
/// reads the system clock; [`Clock::fixed`] always answers the same instant; [`Clock::manual`]
/// is advanced by hand (tests of timeouts and bake times without waiting).
///
/// The fleet coordinator sleeps until its earliest deadline by this clock. A hand-advanced
/// clock wakes it when it jumps ([`Clock::jumps`]), and [`ManualClock::advance`] returns only
/// once the coordinator has acted on the jump.
#[derive(Clone)]
pub struct Clock {
    now: Arc<dyn Fn() -> u64 + Send + Sync>,
    /// Only for a hand-advanced clock.
    jumps: Option<Arc<Jumps>>,
}

/// Between a hand-advanced clock and the coordinator that sleeps on it.
#[derive(Debug)]
struct Jumps {
    /// How many times the clock was advanced (the coordinator subscribes to it).
    made: watch::Sender<u64>,
    /// The last jump the coordinator has acted on.
    acted: watch::Sender<u64>,
}

/// A hand-advanced clock made by [`Clock::manual`].
#[derive(Debug, Clone)]
pub struct ManualClock {
    millis: Arc<AtomicU64>,
    jumps: Arc<Jumps>,
}

impl ManualClock {
    /// Moves the clock forward by `d`, then waits until the fleet coordinator running on this
    /// clock, if one runs, has fired the timers due by the new time and stored what they
    /// changed (or, while the database is unavailable, has taken note of the jump: it fires
    /// those timers once the database is back).
    pub async fn advance(&self, d: std::time::Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.millis.fetch_add(ms, Ordering::SeqCst);
        let mut jump = 0;
        self.jumps.made.send_modify(|made| {
            *made += 1;
            jump = *made;
        });
        let mut acted = self.jumps.acted.subscribe();
        tokio::select! {
            _ = acted.wait_for(|acted| *acted >= jump) => {}
            // No coordinator listens (none runs, or it stopped meanwhile).
            () = self.jumps.made.closed() => {}
        }
    }

    /// Now, in unix milliseconds.
    pub fn now_millis(&self) -> u64 {
        self.millis.load(Ordering::SeqCst)
    }
}

/// The coordinator's view of its clock's jumps ([`Clock::jumps`]): never any for the system
/// clock.
#[derive(Debug)]
pub(crate) struct ClockJumps(Option<(watch::Receiver<u64>, Arc<Jumps>)>);

/// A jump of the clock the coordinator has seen ([`ClockJumps::seen`]) and acts on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SeenJump(u64);

impl ClockJumps {
    /// Resolves when the clock was advanced by hand since [`ClockJumps::seen`] was last
    /// called; never for a clock that is not.
    pub(crate) async fn moved(&mut self) {
        if let Some((made, _)) = &mut self.0
            && made.changed().await.is_ok()
        {
            return;
        }
        std::future::pending().await
    }

    /// Marks every jump so far as seen, before the coordinator reads the time to fire its
    /// timers.
    pub(crate) fn seen(&mut self) -> SeenJump {
        SeenJump(
            self.0
                .as_mut()
                .map_or(0, |(made, _)| *made.borrow_and_update()),
        )
    }

    /// Tells [`ManualClock::advance`] that the jumps up to `seen` were acted on.
    pub(crate) fn acted(&self, seen: SeenJump) {
        if let Some((_, jumps)) = &self.0 {
            jumps.acted.send_if_modified(|acted| {
                let newer = seen.0 > *acted;
                *acted = (*acted).max(seen.0);
                newer
            });
        }
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
        Clock::of(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(0)
        })
    }

    /// A clock reading unix milliseconds from `f`, which never jumps.
    fn of(f: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        Clock {
            now: Arc::new(f),
            jumps: None,
        }
    }

    /// A clock stuck at `unix_seconds`.
    pub fn fixed(unix_seconds: u64) -> Self {
        let ms = unix_seconds.saturating_mul(1000);
        Clock::of(move || ms)
    }

    /// A clock starting at `unix_seconds` that only moves when the returned handle says so.
    pub fn manual(unix_seconds: u64) -> (Self, ManualClock) {
        let millis = Arc::new(AtomicU64::new(unix_seconds.saturating_mul(1000)));
        let jumps = Arc::new(Jumps {
            made: watch::Sender::new(0),
            acted: watch::Sender::new(0),
        });
        let handle = ManualClock {
            millis: millis.clone(),
            jumps: jumps.clone(),
        };
        let clock = Clock {
            now: Arc::new(move || millis.load(Ordering::SeqCst)),
            jumps: Some(jumps),
        };
        (clock, handle)
    }

    /// A clock backed by any function returning unix seconds.
    pub fn from_fn(f: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        Clock::of(move || f().saturating_mul(1000))
    }

    /// Now, in unix seconds.
    pub fn now(&self) -> u64 {
        (self.now)() / 1000
    }

    /// Now, in unix seconds, as the signed integer the database stores.
    pub fn now_i64(&self) -> i64 {
        i64::try_from(self.now()).unwrap_or(i64::MAX)
    }

    /// Now, in unix milliseconds.
    pub fn now_millis(&self) -> u64 {
        (self.now)()
    }

    /// The jumps of this clock, for the coordinator that sleeps on it (subscribed now: only
    /// later jumps wake it).
    pub(crate) fn jumps(&self) -> ClockJumps {
        ClockJumps(
            self.jumps
                .as_ref()
                .map(|jumps| (jumps.made.subscribe(), jumps.clone())),
        )
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn advancing_waits_until_the_coordinator_on_the_clock_acted() {
        let (clock, manual) = Clock::manual(100);
        // Nobody listens: the jump returns at once.
        manual.advance(Duration::from_secs(1)).await;
        assert_eq!(clock.now(), 101);

        let mut jumps = clock.jumps();
        let advance = |secs| {
            let manual = manual.clone();
            tokio::spawn(async move { manual.advance(Duration::from_secs(secs)).await })
        };
        let advanced = advance(5);
        jumps.moved().await;
        let seen = jumps.seen();
        assert_eq!(clock.now(), 106);
        tokio::task::yield_now().await;
        assert!(
            !advanced.is_finished(),
            "returned before the coordinator acted"
        );
        jumps.acted(seen);
        advanced.await.unwrap();

        // A coordinator that stops releases whoever waits on it.
        let advanced = advance(1);
        jumps.moved().await;
        drop(jumps);
        advanced.await.unwrap();
        assert_eq!(clock.now(), 107);
    }

    #[tokio::test]
    async fn the_system_clock_never_jumps() {
        let mut jumps = Clock::system().jumps();
        tokio::select! {
            biased;
            () = jumps.moved() => panic!("the system clock woke the coordinator"),
            () = tokio::task::yield_now() => {}
        }
    }
}

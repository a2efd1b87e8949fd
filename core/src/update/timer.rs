//! Timers as data: one optional deadline per timer kind, in a small table (the shape of
//! quinn-proto's `connection/timer.rs`). The shell sleeps until [`TimerTable::next`] and calls
//! `handle_timeout`; nothing sleeps inside the core.

use super::Timestamp;

/// The kinds of timer the update machine arms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    /// Re-read the power supply while an update waits for power.
    PowerRecheck,
    /// The next maintenance window opens.
    WindowOpen,
    /// Re-check free disk space while an update waits for it.
    DiskRecheck,
    /// Retry a failed download (exponential backoff with jitter).
    DownloadRetry,
    /// Run the health probe again during a trial.
    Probe,
    /// Send the next heartbeat to the fleet server.
    Heartbeat,
    /// The trial's deadline: roll back if the release is not proven by then.
    TrialDeadline,
    /// The end of the trial's minimum soak (`trial_min`): commit if the release is proven.
    TrialSoak,
}

impl Timer {
    /// Every timer, in the order expired timers are handled.
    pub const ALL: [Timer; 8] = [
        Timer::TrialDeadline,
        Timer::TrialSoak,
        Timer::PowerRecheck,
        Timer::WindowOpen,
        Timer::DiskRecheck,
        Timer::DownloadRetry,
        Timer::Probe,
        Timer::Heartbeat,
    ];

    const fn slot(self) -> usize {
        match self {
            Timer::TrialDeadline => 0,
            Timer::PowerRecheck => 1,
            Timer::WindowOpen => 2,
            Timer::DiskRecheck => 3,
            Timer::DownloadRetry => 4,
            Timer::Probe => 5,
            Timer::Heartbeat => 6,
            Timer::TrialSoak => 7,
        }
    }
}

/// One optional deadline per [`Timer`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TimerTable([Option<Timestamp>; Timer::ALL.len()]);

impl TimerTable {
    /// Arms (or re-arms) `timer` for `at`.
    pub(crate) fn set(&mut self, timer: Timer, at: Timestamp) {
        if let Some(slot) = self.0.get_mut(timer.slot()) {
            *slot = Some(at);
        }
    }

    /// Disarms `timer`.
    pub(crate) fn stop(&mut self, timer: Timer) {
        if let Some(slot) = self.0.get_mut(timer.slot()) {
            *slot = None;
        }
    }

    /// When `timer` fires, if armed.
    pub(crate) fn get(&self, timer: Timer) -> Option<Timestamp> {
        self.0.get(timer.slot()).copied().flatten()
    }

    /// The earliest armed timer.
    pub(crate) fn next(&self) -> Option<(Timer, Timestamp)> {
        Timer::ALL
            .into_iter()
            .filter_map(|t| self.get(t).map(|at| (t, at)))
            .min_by_key(|(_, at)| *at)
    }

    /// Disarms `timer` if it is due at `now`; whether it was.
    pub(crate) fn take_expired(&mut self, timer: Timer, now: Timestamp) -> bool {
        let due = self.get(timer).is_some_and(|at| at <= now);
        if due {
            self.stop(timer);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_is_the_earliest_and_take_disarms() {
        let mut t = TimerTable::default();
        assert_eq!(t.next(), None);
        t.set(Timer::Heartbeat, Timestamp(30));
        t.set(Timer::Probe, Timestamp(10));
        assert_eq!(t.next(), Some((Timer::Probe, Timestamp(10))));
        assert!(!t.take_expired(Timer::Probe, Timestamp(9)));
        assert!(t.take_expired(Timer::Probe, Timestamp(30)));
        assert!(!t.take_expired(Timer::Probe, Timestamp(30)));
        assert_eq!(t.next(), Some((Timer::Heartbeat, Timestamp(30))));
    }
}

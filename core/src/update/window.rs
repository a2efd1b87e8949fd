//! Maintenance windows: the local times at which an update may start (and install).
//!
//! Times are local to the device's configured UTC offset (fixed minutes, no time-zone database:
//! the core has no clock and no tz data). A window is a weekday set plus a start and end minute
//! after local midnight; an end at or before the start wraps past midnight (and belongs to the
//! start's day), an end equal to the start is a whole day. No windows at all means always open.

use alloc::vec::Vec;

use super::Timestamp;

const MINUTES_PER_DAY: i64 = 24 * 60;
const MS_PER_MINUTE: i64 = 60_000;

/// A set of weekdays (bit 0 = Monday ... bit 6 = Sunday).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Weekdays(pub u8);

impl Weekdays {
    /// Monday to Sunday.
    pub const ALL: Weekdays = Weekdays(0b111_1111);
    /// Monday to Friday.
    pub const WORKDAYS: Weekdays = Weekdays(0b001_1111);
    /// Saturday and Sunday.
    pub const WEEKEND: Weekdays = Weekdays(0b110_0000);

    /// The set with only `day` (0 = Monday ... 6 = Sunday; larger values give the empty set).
    pub fn only(day: u8) -> Weekdays {
        Weekdays(1u8.checked_shl(u32::from(day)).unwrap_or(0) & Self::ALL.0)
    }

    /// Whether `day` (0 = Monday ... 6 = Sunday) is in the set.
    pub fn contains(self, day: u8) -> bool {
        self.0 & Weekdays::only(day).0 != 0
    }
}

/// One recurring maintenance window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaintenanceWindow {
    /// The days on which the window opens.
    pub days: Weekdays,
    /// Opening time, minutes after local midnight (taken modulo 24 h).
    pub start_minute: u16,
    /// Closing time, minutes after local midnight (taken modulo 24 h; at or before the start: the
    /// next day; equal to the start: 24 hours).
    pub end_minute: u16,
}

impl MaintenanceWindow {
    fn start(&self) -> i64 {
        i64::from(self.start_minute) % MINUTES_PER_DAY
    }

    fn length(&self) -> i64 {
        let end = i64::from(self.end_minute) % MINUTES_PER_DAY;
        match (end - self.start()).rem_euclid(MINUTES_PER_DAY) {
            0 => MINUTES_PER_DAY,
            n => n,
        }
    }

    /// Whether the occurrence that starts on local day `day` exists and covers local `minute`.
    fn covers(&self, day: i64, minute: i64) -> bool {
        let start = day * MINUTES_PER_DAY + self.start();
        self.days.contains(weekday(day)) && start <= minute && minute < start + self.length()
    }
}

/// The device's maintenance windows and its UTC offset.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MaintenanceWindows {
    /// Local time minus UTC, in minutes (e.g. 60 for CET, -300 for EST).
    pub utc_offset_minutes: i16,
    /// The windows; empty means always open.
    pub windows: Vec<MaintenanceWindow>,
}

impl MaintenanceWindows {
    /// Always open.
    pub fn always() -> Self {
        Self::default()
    }

    /// Whether an update may start at `now`.
    pub fn is_open(&self, now: Timestamp) -> bool {
        if self.windows.is_empty() {
            return true;
        }
        let minute = self.local_minute(now);
        let today = minute.div_euclid(MINUTES_PER_DAY);
        self.windows
            .iter()
            .any(|w| w.covers(today, minute) || w.covers(today - 1, minute))
    }

    /// When the next window opens after `now` (`None` if no window ever opens).
    pub fn next_opening(&self, now: Timestamp) -> Option<Timestamp> {
        let minute = self.local_minute(now);
        let today = minute.div_euclid(MINUTES_PER_DAY);
        let opening = self
            .windows
            .iter()
            .flat_map(|w| {
                (0..=7).filter_map(move |d| {
                    let day = today + d;
                    let start = day * MINUTES_PER_DAY + w.start();
                    (w.days.contains(weekday(day)) && start > minute).then_some(start)
                })
            })
            .min()?;
        let utc_ms = (opening - i64::from(self.utc_offset_minutes)) * MS_PER_MINUTE;
        u64::try_from(utc_ms).ok().map(Timestamp)
    }

    /// Minutes since the local epoch (unix epoch shifted by the offset).
    fn local_minute(&self, now: Timestamp) -> i64 {
        let utc_minutes = i64::try_from(now.0 / 60_000).unwrap_or(i64::MAX / 2);
        utc_minutes + i64::from(self.utc_offset_minutes)
    }
}

/// The weekday of local day `day` since the epoch (0 = Monday; 1970-01-01 was a Thursday).
fn weekday(day: i64) -> u8 {
    u8::try_from((day + 3).rem_euclid(7)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    /// 2025-06-02 00:00 UTC, a Monday.
    const MONDAY: u64 = 1_748_822_400_000;
    const HOUR: u64 = 3_600_000;

    fn windows(offset: i16, w: MaintenanceWindow) -> MaintenanceWindows {
        MaintenanceWindows {
            utc_offset_minutes: offset,
            windows: vec![w],
        }
    }

    #[test]
    fn monday_is_day_zero() {
        assert_eq!(weekday(i64::try_from(MONDAY / 60_000 / 1440).unwrap()), 0);
    }

    #[test]
    fn empty_is_always_open() {
        assert!(MaintenanceWindows::always().is_open(Timestamp(MONDAY)));
    }

    #[test]
    fn a_nightly_window_wraps_midnight_in_local_time() {
        // 22:00-04:00 local, UTC+2, workdays only.
        let w = windows(
            120,
            MaintenanceWindow {
                days: Weekdays::WORKDAYS,
                start_minute: 22 * 60,
                end_minute: 4 * 60,
            },
        );
        // Monday 12:00 UTC = 14:00 local: closed, opens Monday 22:00 local = 20:00 UTC.
        let noon = Timestamp(MONDAY + 12 * HOUR);
        assert!(!w.is_open(noon));
        assert_eq!(w.next_opening(noon), Some(Timestamp(MONDAY + 20 * HOUR)));
        assert!(w.is_open(Timestamp(MONDAY + 20 * HOUR)));
        // Tuesday 01:00 UTC = 03:00 local: still Monday's window.
        assert!(w.is_open(Timestamp(MONDAY + 25 * HOUR)));
        assert!(!w.is_open(Timestamp(MONDAY + 26 * HOUR)));
        // Friday 22:00 local opens; Saturday 03:00 local is still Friday's window; Saturday
        // 22:00 local is not a window: the next opening is Monday 22:00 local.
        let saturday_noon = Timestamp(MONDAY + (5 * 24 + 12) * HOUR);
        assert!(w.is_open(Timestamp(MONDAY + (5 * 24 + 1) * HOUR)));
        assert!(!w.is_open(saturday_noon));
        assert_eq!(
            w.next_opening(saturday_noon),
            Some(Timestamp(MONDAY + (7 * 24 + 20) * HOUR))
        );
    }

    #[test]
    fn a_window_with_no_days_never_opens() {
        let w = windows(
            0,
            MaintenanceWindow {
                days: Weekdays(0),
                start_minute: 0,
                end_minute: 0,
            },
        );
        assert!(!w.is_open(Timestamp(MONDAY)));
        assert_eq!(w.next_opening(Timestamp(MONDAY)), None);
    }

    #[test]
    fn equal_start_and_end_is_a_whole_day() {
        let w = windows(
            0,
            MaintenanceWindow {
                days: Weekdays::only(0),
                start_minute: 0,
                end_minute: 0,
            },
        );
        assert!(w.is_open(Timestamp(MONDAY + 23 * HOUR)));
        assert!(!w.is_open(Timestamp(MONDAY + 24 * HOUR)));
    }
}

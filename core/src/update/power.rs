//! The power gate: never start an update on a battery that could die half-way.

use core::time::Duration;

use crate::wire::PowerReading;

/// When an update may start, given the power supply.
///
/// | reading | verdict |
/// |---|---|
/// | no battery (`battery_percent: None`) | allowed: mains powered |
/// | battery below `min_battery_percent`, not `charging` | deferred |
/// | battery below `require_charging_below_percent`, no charger (`charging` or `mains_online`) | deferred |
/// | otherwise | allowed |
///
/// `min_battery_percent` is the hard floor: below it only a battery that is actually charging
/// will do. `require_charging_below_percent` (normally higher) is the comfort zone: below it a
/// connected charger is enough. A deferral is never a failure: the machine re-reads the power
/// every `recheck_interval`, and on every reading the shell pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PowerPolicy {
    /// Never start below this charge unless the battery is charging. Default 20.
    pub min_battery_percent: u8,
    /// Below this charge, wait for a charger. Default 0 (never).
    pub require_charging_below_percent: u8,
    /// How often to re-read the power supply while deferred. Default 5 minutes.
    pub recheck_interval: Duration,
}

impl Default for PowerPolicy {
    fn default() -> Self {
        PowerPolicy {
            min_battery_percent: 20,
            require_charging_below_percent: 0,
            recheck_interval: Duration::from_secs(5 * 60),
        }
    }
}

impl PowerPolicy {
    /// Whether an update may start with this reading.
    pub fn allows(&self, reading: &PowerReading) -> bool {
        let Some(percent) = reading.battery_percent else {
            return true;
        };
        let charger = reading.charging || reading.mains_online;
        if percent < self.min_battery_percent && !reading.charging {
            return false;
        }
        percent >= self.require_charging_below_percent || charger
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn battery(percent: u8, charging: bool, mains_online: bool) -> PowerReading {
        PowerReading {
            battery_percent: Some(percent),
            charging,
            mains_online,
        }
    }

    #[test]
    fn the_policy_table_holds() {
        let p = PowerPolicy {
            min_battery_percent: 20,
            require_charging_below_percent: 50,
            ..PowerPolicy::default()
        };
        assert!(p.allows(&PowerReading::MAINS));
        assert!(p.allows(&PowerReading::default()), "no battery = mains");
        assert!(!p.allows(&battery(10, false, false)));
        assert!(
            !p.allows(&battery(10, false, true)),
            "plugged but not charging"
        );
        assert!(p.allows(&battery(10, true, true)));
        assert!(!p.allows(&battery(40, false, false)));
        assert!(p.allows(&battery(40, false, true)));
        assert!(p.allows(&battery(60, false, false)));
    }
}

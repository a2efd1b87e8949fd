//! Desired-state generations: the ledger of what the fleet server issued to each device.
//!
//! The server issues each device's generations one by one (1, 2, 3, ...; the server's
//! `desired` table keeps the last one, from which [`Generations::restore`] rebuilds the
//! ledger). A device's report can only acknowledge a generation the server issued to it:
//! anything above the last one issued is a forged or corrupt value and the report is refused at
//! the edge, so no network value ever reaches the arithmetic or the database. Generations stop
//! at [`MAX_GENERATION`] (the database stores them as a signed 64-bit integer): past it, no
//! desired state can be issued and the caller is told so.
//!
//! A refused report still tells one thing: how far the device's watermark moved. A device
//! ignores every desired state at or below the last generation it acted on, so when it acted
//! on one the server did not issue (injected around the server by anyone with its MQTT rights,
//! or issued before the server's database was restored from an older backup), the next
//! generation issued to it must be above that. Such a value is kept as the device's watermark
//! only within [`MAX_GENERATION_STEP`] of the last one issued, the most an agent accepts in one
//! step, so a forged value can raise a device's own generations by at most that much per report
//! (its message budget bounds the reports) and never reaches [`MAX_GENERATION`] in practice.
//!
//! Outcome reports arrive out of order (QoS 1 redelivery, a resumed session, an outbox that
//! drains after a reconnect): [`Generations::is_fresh_outcome`] keeps, per device, the newest
//! `(generation, device time)` seen and says whether a report is older.
//!
//! # State table (per device)
//!
//! | input | condition | answer | effect |
//! |---|---|---|---|
//! | [`acknowledge`](Generations::acknowledge)`(g)` | `g ≤ issued` | `Ok` | — |
//! | | `issued < g ≤ issued + STEP`, `g < MAX` | `NotIssued` | `watermark = max(watermark, g)` |
//! | | otherwise | `NotIssued` | — |
//! | [`issue`](Generations::issue) | `max(issued, watermark) < MAX` | `Ok(g)`, `g = max(..) + 1` | `issued = g`, watermark cleared |
//! | | otherwise | `Exhausted` | watermark cleared |
//! | [`is_fresh_outcome`](Generations::is_fresh_outcome)`(g, at)` | `(g, at) ≥ newest` | `true` | `newest = (g, at)` |
//! | | otherwise | `false` | — |
//! | [`restore`](Generations::restore)`(g)` | | | `issued = g` |
//! | [`forget_all`](Generations::forget_all) | | | every device back to nothing issued |

use alloc::collections::BTreeMap;

use crate::update::MAX_GENERATION_STEP;
use crate::wire::DeviceId;

/// The highest generation the server issues: the database column is a signed 64-bit integer.
pub const MAX_GENERATION: u64 = i64::MAX as u64;

/// Why a generation is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GenerationError {
    /// A device acknowledges a generation the server never issued to it.
    #[error(
        "generation {reported} was never issued to this device (the last one issued is {issued})"
    )]
    NotIssued {
        /// The generation the device reported.
        reported: u64,
        /// The last generation the server issued to it.
        issued: u64,
    },
    /// Every generation up to [`MAX_GENERATION`] was issued to this device.
    #[error("the device's desired-state generations are exhausted ({0} issued)")]
    Exhausted(u64),
}

/// What the ledger knows of one device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Entry {
    /// The last generation issued (0: none).
    issued: u64,
    /// A generation the device acted on that was not issued here, within one agent step.
    watermark: Option<u64>,
    /// The newest `(generation, device time)` outcome seen.
    newest_outcome: Option<(u64, u64)>,
}

/// The fleet's desired-state generations, per device (see the [module documentation](self)).
#[derive(Debug, Clone, Default)]
pub struct Generations {
    devices: BTreeMap<DeviceId, Entry>,
}

impl Generations {
    /// An empty ledger: nothing issued to anyone.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `issued` is the last generation issued to `device` (from what the server
    /// persisted).
    pub fn restore(&mut self, device: DeviceId, issued: u64) {
        self.devices.entry(device).or_default().issued = issued;
    }

    /// Forgets everything (the server reloads its state from the database).
    pub fn forget_all(&mut self) {
        self.devices.clear();
    }

    /// The last generation issued to `device` (0: none).
    pub fn issued(&self, device: &DeviceId) -> u64 {
        self.devices.get(device).map_or(0, |e| e.issued)
    }

    /// Accepts a report of `device` that acknowledges `reported` if that generation was
    /// issued to it. A refused value within one agent step above the last one issued becomes
    /// the device's watermark: the next generation issued to it is above it.
    pub fn acknowledge(&mut self, device: &DeviceId, reported: u64) -> Result<(), GenerationError> {
        let issued = self.issued(device);
        if reported <= issued {
            return Ok(());
        }
        let within_a_step = reported - issued <= MAX_GENERATION_STEP && reported < MAX_GENERATION;
        if within_a_step {
            let entry = self.devices.entry(device.clone()).or_default();
            entry.watermark = Some(entry.watermark.map_or(reported, |w| w.max(reported)));
        }
        Err(GenerationError::NotIssued { reported, issued })
    }

    /// Whether `device` acted on a generation above the last one issued to it (so it ignores
    /// the desired state it holds, and the next one must be issued above the watermark).
    pub fn is_ahead(&self, device: &DeviceId) -> bool {
        self.devices
            .get(device)
            .is_some_and(|e| e.watermark.is_some())
    }

    /// Issues the next generation to `device`: above the last one issued and above its
    /// watermark. The watermark is used up either way.
    pub fn issue(&mut self, device: &DeviceId) -> Result<u64, GenerationError> {
        let entry = self.devices.entry(device.clone()).or_default();
        let above = entry.watermark.take().unwrap_or(0).max(entry.issued);
        let next = above
            .checked_add(1)
            .filter(|g| *g <= MAX_GENERATION)
            .ok_or(GenerationError::Exhausted(above))?;
        entry.issued = next;
        Ok(next)
    }

    /// Whether an outcome report of `device` for `generation` made at device time `at` is
    /// at least as new as every one seen before (it is then the newest); false for a stale,
    /// out-of-order report.
    pub fn is_fresh_outcome(&mut self, device: &DeviceId, generation: u64, at: u64) -> bool {
        let entry = self.devices.entry(device.clone()).or_default();
        let key = (generation, at);
        if entry.newest_outcome.is_some_and(|seen| key < seen) {
            return false;
        }
        entry.newest_outcome = Some(key);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> DeviceId {
        DeviceId::new("gw-1").unwrap()
    }

    fn issued_up_to(n: u64) -> Generations {
        let mut g = Generations::new();
        g.restore(dev(), n);
        g
    }

    #[test]
    fn issue19_only_issued_generations_are_acknowledged() {
        assert_eq!(Generations::new().acknowledge(&dev(), 0), Ok(()));
        let mut g = issued_up_to(7);
        assert_eq!(g.acknowledge(&dev(), 7), Ok(()));
        assert_eq!(g.acknowledge(&dev(), 3), Ok(()));
        for reported in [8, 1 << 63, MAX_GENERATION, u64::MAX] {
            assert_eq!(
                g.acknowledge(&dev(), reported),
                Err(GenerationError::NotIssued {
                    reported,
                    issued: 7
                })
            );
        }
    }

    #[test]
    fn issue19_a_watermark_within_one_agent_step_is_followed() {
        let mut g = issued_up_to(7);
        assert!(g.acknowledge(&dev(), 107).is_err());
        assert!(g.is_ahead(&dev()));
        assert!(g.acknowledge(&dev(), 57).is_err(), "a lower one keeps 107");
        assert_eq!(g.issue(&dev()), Ok(108));
        assert!(!g.is_ahead(&dev()), "used up");
        assert_eq!(g.issue(&dev()), Ok(109));

        let mut g = issued_up_to(7);
        assert!(g.acknowledge(&dev(), 7 + MAX_GENERATION_STEP).is_err());
        assert_eq!(g.issue(&dev()), Ok(8 + MAX_GENERATION_STEP));

        for reported in [8 + MAX_GENERATION_STEP, 1 << 63, u64::MAX] {
            let mut g = issued_up_to(7);
            assert!(g.acknowledge(&dev(), reported).is_err());
            assert!(!g.is_ahead(&dev()), "{reported}");
            assert_eq!(g.issue(&dev()), Ok(8));
        }
        let mut g = issued_up_to(MAX_GENERATION - 1);
        assert!(g.acknowledge(&dev(), MAX_GENERATION).is_err());
        assert!(!g.is_ahead(&dev()), "no room above it");
    }

    #[test]
    fn issue19_generation_arithmetic_cannot_overflow() {
        assert_eq!(Generations::new().issue(&dev()), Ok(1));
        let mut g = issued_up_to(MAX_GENERATION - 1);
        assert_eq!(g.issue(&dev()), Ok(MAX_GENERATION));
        assert_eq!(
            g.issue(&dev()),
            Err(GenerationError::Exhausted(MAX_GENERATION))
        );
        assert_eq!(g.issued(&dev()), MAX_GENERATION, "nothing changed");
        let mut g = issued_up_to(u64::MAX);
        assert_eq!(g.issue(&dev()), Err(GenerationError::Exhausted(u64::MAX)));
    }

    #[test]
    fn stale_outcomes_are_told_apart() {
        let mut g = Generations::new();
        assert!(g.is_fresh_outcome(&dev(), 2, 100));
        assert!(g.is_fresh_outcome(&dev(), 2, 100), "the same one again");
        assert!(!g.is_fresh_outcome(&dev(), 2, 99));
        assert!(!g.is_fresh_outcome(&dev(), 1, 500), "an older generation");
        assert!(g.is_fresh_outcome(&dev(), 3, 0), "a newer generation");
        let other = DeviceId::new("gw-2").unwrap();
        assert!(g.is_fresh_outcome(&other, 1, 0), "per device");
    }

    #[test]
    fn forget_all_and_restore() {
        let mut g = issued_up_to(5);
        assert!(g.is_fresh_outcome(&dev(), 5, 1));
        g.forget_all();
        assert_eq!(g.issued(&dev()), 0);
        assert!(g.is_fresh_outcome(&dev(), 1, 0));
    }
}

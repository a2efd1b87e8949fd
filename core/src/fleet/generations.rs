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
//! drains after a reconnect): each rollout keeps, per device, the newest `(generation, device
//! time)` it took and drops older ones (`Rollout::is_fresh_report`, stored with the rollout;
//! [`super::delivery`]).
//!
//! # State table (per device)
//!
//! | input | condition | answer | effect |
//! |---|---|---|---|
//! | [`acknowledge`](Generations::acknowledge)`(g, outcome)` | `g ≤ issued`, and the outcome (if any) does not answer `issued` about another release than the one issued | `Ok` | — |
//! | | `g ≤ issued`, the outcome answers `issued` about another release | `Collision` | `watermark = max(watermark, issued)` |
//! | | `issued < g ≤ issued + STEP`, `g < MAX` | `NotIssued` | `watermark = max(watermark, g)` |
//! | | otherwise | `NotIssued` | — |
//! | [`issue`](Generations::issue)`(release)` | `max(issued, watermark) < MAX` | `Ok(g)`, `g = max(..) + 1` | `issued = g` for `release`, watermark cleared |
//! | | otherwise | `Exhausted` | watermark cleared |
//! | [`restore`](Generations::restore)`(g, release)` | | | `issued = g` for `release` |
//! | [`forget_all`](Generations::forget_all) | | | every device back to nothing issued |

use alloc::collections::BTreeMap;

use crate::digest::Digest;
use crate::update::MAX_GENERATION_STEP;
use crate::wire::{DeviceId, UpdateOutcome};

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
    /// A device answers the last generation issued to it about another release than the one
    /// issued: a desired state from around the server, of that very generation, reached it
    /// first, and it ignores the server's (no newer than what it acted on).
    #[error(
        "the device acted on another release than the one issued under generation {generation}: \
         a desired state from around the server reached it first"
    )]
    Collision {
        /// The generation both desired states had.
        generation: u64,
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
    /// The release of the last generation issued (its artifact digest), when known.
    release: Option<Digest>,
    /// A generation the device acted on that was not issued here, within one agent step.
    watermark: Option<u64>,
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

    /// Records that `issued` is the last generation issued to `device`, for `release` (from
    /// what the server persisted).
    pub fn restore(&mut self, device: DeviceId, issued: u64, release: Option<Digest>) {
        let entry = self.devices.entry(device).or_default();
        entry.issued = issued;
        entry.release = release;
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
    ///
    /// With the report's `outcome`: one that answers the last generation issued must be about
    /// the release issued then (when both are known). If it is about another, a desired state
    /// from around the server with that very generation reached the device first, and the
    /// device ignores the server's: it is refused as a [`GenerationError::Collision`] and the
    /// generation becomes the device's watermark, so the next one issued goes above it.
    pub fn acknowledge(
        &mut self,
        device: &DeviceId,
        reported: u64,
        outcome: Option<&UpdateOutcome>,
    ) -> Result<(), GenerationError> {
        let entry = self.devices.get(device).copied().unwrap_or_default();
        let issued = entry.issued;
        if reported > issued {
            let within_a_step =
                reported - issued <= MAX_GENERATION_STEP && reported < MAX_GENERATION;
            if within_a_step {
                self.raise_watermark(device, reported);
            }
            return Err(GenerationError::NotIssued { reported, issued });
        }
        let collision = outcome.is_some_and(|o| {
            o.generation == issued
                && issued > 0
                && matches!((o.digest, entry.release), (Some(got), Some(sent)) if got != sent)
        });
        if collision {
            self.raise_watermark(device, issued);
            return Err(GenerationError::Collision { generation: issued });
        }
        Ok(())
    }

    fn raise_watermark(&mut self, device: &DeviceId, to: u64) {
        let entry = self.devices.entry(device.clone()).or_default();
        entry.watermark = Some(entry.watermark.map_or(to, |w| w.max(to)));
    }

    /// Whether `device` acted on a generation above the last one issued to it (so it ignores
    /// the desired state it holds, and the next one must be issued above the watermark).
    pub fn is_ahead(&self, device: &DeviceId) -> bool {
        self.devices
            .get(device)
            .is_some_and(|e| e.watermark.is_some())
    }

    /// Issues the next generation to `device`, for `release`: above the last one issued and
    /// above its watermark. The watermark is used up either way.
    pub fn issue(&mut self, device: &DeviceId, release: Digest) -> Result<u64, GenerationError> {
        let entry = self.devices.entry(device.clone()).or_default();
        let above = entry.watermark.take().unwrap_or(0).max(entry.issued);
        let next = above
            .checked_add(1)
            .filter(|g| *g <= MAX_GENERATION)
            .ok_or(GenerationError::Exhausted(above))?;
        entry.issued = next;
        entry.release = Some(release);
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> DeviceId {
        DeviceId::new("gw-1").unwrap()
    }

    fn rel(n: u8) -> Digest {
        Digest([n; 32])
    }

    fn outcome(generation: u64, digest: Option<Digest>) -> UpdateOutcome {
        UpdateOutcome {
            generation,
            rollout_id: None,
            digest,
            state: crate::wire::ExecutionState::Notified,
            at: 0,
            transfer: None,
        }
    }

    #[test]
    fn issue13_a_desired_state_from_around_the_server_with_the_same_generation_is_told_apart() {
        // Generation 7 was issued for release 1.
        let mut g = issued_up_to(7);
        let ours = outcome(7, Some(rel(1)));
        assert_eq!(g.acknowledge(&dev(), 7, Some(&ours)), Ok(()));
        assert!(!g.is_ahead(&dev()));
        // Undecodable (no digest), or an older generation: nothing to tell.
        for o in [outcome(7, None), outcome(6, Some(rel(9)))] {
            assert_eq!(g.acknowledge(&dev(), 7, Some(&o)), Ok(()));
        }
        assert!(!g.is_ahead(&dev()));
        // Another release under generation 7: the device ignores ours; the next goes above.
        let theirs = outcome(7, Some(rel(9)));
        assert_eq!(
            g.acknowledge(&dev(), 7, Some(&theirs)),
            Err(GenerationError::Collision { generation: 7 })
        );
        assert!(g.is_ahead(&dev()));
        assert_eq!(g.issue(&dev(), rel(1)), Ok(8));
        assert_eq!(
            g.acknowledge(&dev(), 7, Some(&theirs)),
            Ok(()),
            "8 is issued now"
        );
        // Restored from what the server stored, the release is known again.
        let mut g = Generations::new();
        g.restore(dev(), 8, Some(rel(1)));
        assert!(
            g.acknowledge(&dev(), 8, Some(&outcome(8, Some(rel(9)))))
                .is_err()
        );
    }

    fn issued_up_to(n: u64) -> Generations {
        let mut g = Generations::new();
        g.restore(dev(), n, Some(rel(1)));
        g
    }

    #[test]
    fn issue19_only_issued_generations_are_acknowledged() {
        assert_eq!(Generations::new().acknowledge(&dev(), 0, None), Ok(()));
        let mut g = issued_up_to(7);
        assert_eq!(g.acknowledge(&dev(), 7, None), Ok(()));
        assert_eq!(g.acknowledge(&dev(), 3, None), Ok(()));
        for reported in [8, 1 << 63, MAX_GENERATION, u64::MAX] {
            assert_eq!(
                g.acknowledge(&dev(), reported, None),
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
        assert!(g.acknowledge(&dev(), 107, None).is_err());
        assert!(g.is_ahead(&dev()));
        assert!(
            g.acknowledge(&dev(), 57, None).is_err(),
            "a lower one keeps 107"
        );
        assert_eq!(g.issue(&dev(), rel(2)), Ok(108));
        assert!(!g.is_ahead(&dev()), "used up");
        assert_eq!(g.issue(&dev(), rel(2)), Ok(109));

        let mut g = issued_up_to(7);
        assert!(
            g.acknowledge(&dev(), 7 + MAX_GENERATION_STEP, None)
                .is_err()
        );
        assert_eq!(g.issue(&dev(), rel(2)), Ok(8 + MAX_GENERATION_STEP));

        for reported in [8 + MAX_GENERATION_STEP, 1 << 63, u64::MAX] {
            let mut g = issued_up_to(7);
            assert!(g.acknowledge(&dev(), reported, None).is_err());
            assert!(!g.is_ahead(&dev()), "{reported}");
            assert_eq!(g.issue(&dev(), rel(2)), Ok(8));
        }
        let mut g = issued_up_to(MAX_GENERATION - 1);
        assert!(g.acknowledge(&dev(), MAX_GENERATION, None).is_err());
        assert!(!g.is_ahead(&dev()), "no room above it");
    }

    #[test]
    fn issue19_generation_arithmetic_cannot_overflow() {
        assert_eq!(Generations::new().issue(&dev(), rel(2)), Ok(1));
        let mut g = issued_up_to(MAX_GENERATION - 1);
        assert_eq!(g.issue(&dev(), rel(2)), Ok(MAX_GENERATION));
        assert_eq!(
            g.issue(&dev(), rel(2)),
            Err(GenerationError::Exhausted(MAX_GENERATION))
        );
        assert_eq!(g.issued(&dev()), MAX_GENERATION, "nothing changed");
        let mut g = issued_up_to(u64::MAX);
        assert_eq!(
            g.issue(&dev(), rel(2)),
            Err(GenerationError::Exhausted(u64::MAX))
        );
    }

    #[test]
    fn forget_all_and_restore() {
        let mut g = issued_up_to(5);
        g.forget_all();
        assert_eq!(g.issued(&dev()), 0);
    }
}

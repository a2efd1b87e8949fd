//! What the fleet coordinator remembers of one device, and the rules that move it: registration,
//! the last release the device committed, drift, presence, health and download costs.
//!
//! The memo is fed the device's messages (already accepted by [`Generations`](super::Generations))
//! and answers what changed, so the shell knows which audit events to write. The server's
//! registry row is written from it.
//!
//! # Rules
//!
//! | input | effect | answer |
//! |---|---|---|
//! | [`handle_report`](DeviceMemo::handle_report) | `registered`; `running`, `on_trial`, `security_floor` as reported; `reported_generation` = max | [`ReportSeen::first`] on the first report |
//! | | `last_committed` = the digest of a reported `succeeded` outcome; else, while unknown, the known-good release (else the running one) | |
//! | | `drifted` = not in an active rollout, not on trial, running something, and not `last_committed` | [`ReportSeen::drift`] when `drifted` changed |
//! | [`handle_presence`](DeviceMemo::handle_presence) | `online` as told | — |
//! | [`handle_heartbeat`](DeviceMemo::handle_heartbeat) | `online` = true (a device that heartbeats is connected: a stale retained offline will that overtook its online is corrected here); `healthy` as told, when told | [`HeartbeatSeen`]: whether it came online, whether its health changed |
//! | [`note_transfer`](DeviceMemo::note_transfer)`(g, t)` | kept when `g` is above the generation of the one kept | whether it was kept (the first report per generation wins) |

use crate::digest::Digest;
use crate::wire::{ExecutionState, ReportedState, Transfer, UpdateOutcome};

/// What the coordinator remembers of a device (see the [module documentation](self)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceMemo {
    /// Whether it is connected (its retained status).
    pub online: bool,
    /// Whether it runs something other than the last release it committed.
    pub drifted: bool,
    /// Whether it has reported at least once.
    pub registered: bool,
    /// The release it runs.
    pub running: Option<Digest>,
    /// The last release it committed (or its first known-good).
    pub last_committed: Option<Digest>,
    /// Whether a release is on trial.
    pub on_trial: bool,
    /// The highest generation its reports named.
    pub reported_generation: u64,
    /// The security floor it last reported (anti-rollback).
    pub security_floor: u32,
    /// `last_seen` as stored (unix seconds).
    pub last_seen: i64,
    /// The newest download cost kept: its generation and figures.
    pub transfer: Option<(u64, Transfer)>,
    /// What its heartbeats last said about its health (agents with a probe).
    pub healthy: Option<bool>,
}

/// A change of a device's drift flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriftChange {
    /// It now runs something other than the last release it committed.
    Drifted,
    /// It runs the last release it committed again (or is in a rollout or on trial).
    Cleared,
}

/// What a heartbeat changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatSeen {
    /// The device was held offline: it is online now (the shell tells the rollouts, as for a
    /// retained `online` status).
    pub came_online: bool,
    /// The health it reported differs from the last one.
    pub health_changed: bool,
}

/// What a report changed that deserves an audit event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportSeen {
    /// The device's first report: it is registered now.
    pub first: bool,
    /// The drift flag changed.
    pub drift: Option<DriftChange>,
}

impl DeviceMemo {
    /// Takes in a report of the device; `in_rollout` says whether an active rollout holds it
    /// (a device being updated is not drifting).
    pub fn handle_report(&mut self, r: &ReportedState, in_rollout: bool) -> ReportSeen {
        let first = !self.registered;
        self.registered = true;
        let running = r.running.as_ref().map(|x| x.digest);
        let known_good = r.known_good.as_ref().map(|x| x.digest);
        match &r.last_result {
            Some(UpdateOutcome {
                state: ExecutionState::Succeeded,
                digest: Some(d),
                ..
            }) => self.last_committed = Some(*d),
            _ if self.last_committed.is_none() => self.last_committed = known_good.or(running),
            _ => {}
        }
        self.running = running;
        self.on_trial = r.trial.is_some();
        self.reported_generation = self.reported_generation.max(r.generation);
        self.security_floor = r.security_floor;
        let drifted =
            !in_rollout && !self.on_trial && running.is_some() && running != self.last_committed;
        let drift = (drifted != self.drifted).then_some(if drifted {
            DriftChange::Drifted
        } else {
            DriftChange::Cleared
        });
        self.drifted = drifted;
        ReportSeen { first, drift }
    }

    /// Takes in the device's presence (its retained status).
    pub fn handle_presence(&mut self, online: bool) {
        self.online = online;
    }

    /// Takes in a heartbeat of the device and the health it reported (agents with a probe).
    /// A heartbeat arrives only over a live connection, so the device is online whatever the
    /// last retained status said: presence is applied in arrival order, and an earlier
    /// connection's retained offline will can arrive after the current connection's online.
    pub fn handle_heartbeat(&mut self, healthy: Option<bool>) -> HeartbeatSeen {
        let came_online = !self.online;
        self.online = true;
        let health_changed = healthy.is_some_and(|h| self.healthy.replace(h) != Some(h));
        HeartbeatSeen {
            came_online,
            health_changed,
        }
    }

    /// Keeps the download cost `t` reported for `generation` unless one was kept for it (or a
    /// later generation) already; true when kept.
    pub fn note_transfer(&mut self, generation: u64, t: Transfer) -> bool {
        if self.transfer.is_some_and(|(g, _)| g >= generation) {
            return false;
        }
        self.transfer = Some((generation, t));
        true
    }
}

#[cfg(test)]
mod tests {
    use alloc::string::String;

    use super::*;
    use crate::wire::RunningRelease;

    fn digest(n: u8) -> Digest {
        Digest::of(&[n])
    }

    fn release(n: u8) -> Option<RunningRelease> {
        Some(RunningRelease {
            version: String::from("1.0.0"),
            digest: digest(n),
            security_version: 0,
        })
    }

    fn report(running: u8, result: Option<(ExecutionState, u8)>) -> ReportedState {
        ReportedState {
            v: crate::wire::PROTOCOL_VERSION,
            device_id: String::from("gw-1"),
            agent_version: String::from("0.1.0"),
            hardware_class: String::from("gw-a"),
            running: release(running),
            known_good: release(running),
            trial: None,
            cached: alloc::vec::Vec::new(),
            last_result: result.map(|(state, d)| UpdateOutcome {
                generation: 1,
                rollout_id: None,
                digest: Some(digest(d)),
                state,
                at: 0,
                transfer: None,
            }),
            power: None,
            inventory: crate::wire::Inventory::default(),
            labels: alloc::collections::BTreeMap::new(),
            generation: 1,
            security_floor: 0,
        }
    }

    #[test]
    fn the_first_report_registers_and_sets_what_was_committed() {
        let mut m = DeviceMemo::default();
        let seen = m.handle_report(&report(1, None), false);
        assert_eq!(
            seen,
            ReportSeen {
                first: true,
                drift: None
            }
        );
        assert_eq!(m.last_committed, Some(digest(1)), "its known-good");
        let seen = m.handle_report(&report(1, None), false);
        assert!(!seen.first);
    }

    #[test]
    fn a_heartbeat_brings_a_device_held_offline_back() {
        let mut m = DeviceMemo::default();
        m.handle_presence(true);
        // A stale retained offline will (an earlier connection's) arrives after the online.
        m.handle_presence(false);
        let seen = m.handle_heartbeat(None);
        assert!(seen.came_online);
        assert!(m.online);
        assert!(!m.handle_heartbeat(None).came_online, "once");
    }

    #[test]
    fn running_something_else_outside_a_rollout_is_drift() {
        let mut m = DeviceMemo::default();
        m.handle_report(&report(1, None), false);
        let seen = m.handle_report(&report(2, None), false);
        assert_eq!(seen.drift, Some(DriftChange::Drifted));
        assert!(m.drifted);
        assert_eq!(
            m.handle_report(&report(2, None), false).drift,
            None,
            "no change"
        );
        let seen = m.handle_report(&report(1, None), false);
        assert_eq!(seen.drift, Some(DriftChange::Cleared));
    }

    #[test]
    fn a_commit_or_a_rollout_is_not_drift() {
        let mut m = DeviceMemo::default();
        m.handle_report(&report(1, None), false);
        assert_eq!(
            m.handle_report(&report(2, None), true).drift,
            None,
            "in a rollout"
        );
        let seen = m.handle_report(&report(2, Some((ExecutionState::Succeeded, 2))), false);
        assert_eq!(seen.drift, None);
        assert_eq!(m.last_committed, Some(digest(2)));
        let mut on_trial = report(3, None);
        on_trial.trial = release(3);
        assert_eq!(m.handle_report(&on_trial, false).drift, None, "on trial");
    }

    #[test]
    fn presence_health_and_transfers() {
        let mut m = DeviceMemo::default();
        m.handle_presence(true);
        assert!(m.online);
        let seen = m.handle_heartbeat(Some(true));
        assert!(!seen.came_online && seen.health_changed);
        assert!(!m.handle_heartbeat(Some(true)).health_changed);
        assert!(!m.handle_heartbeat(None).health_changed, "nothing told");
        assert!(m.handle_heartbeat(Some(false)).health_changed);
        let t = Transfer::default();
        assert!(m.note_transfer(2, t));
        assert!(!m.note_transfer(2, t), "the first per generation wins");
        assert!(!m.note_transfer(1, t));
        assert!(m.note_transfer(3, t));
    }
}

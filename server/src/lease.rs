//! Who coordinates: the coordinator lease as a pure machine (issue 15).
//!
//! Several `ota server` replicas share one database; exactly one of them runs the fleet
//! coordinator. The lease lives in the database (`coordinator_lease`, see
//! [`crate::db::Db::acquire_lease`]): its expiry is computed by the database's clock, and every
//! takeover adds one to its fencing epoch, which every coordinator write checks in its own
//! transaction ([`crate::db::DbTx::check_fence`]).
//!
//! This machine decides, given the outcomes of those database calls and a monotonic `now`
//! (milliseconds since any origin), what the replica does next. It reads no clock and does no
//! I/O: the shell (`ha.rs`) runs [`LeaseMachine::poll_action`], performs the action, feeds the
//! outcome back with `handle_*`, and sleeps until [`LeaseMachine::poll_timeout`].
//!
//! # States
//!
//! | state | input | next state | action |
//! |---|---|---|---|
//! | follower | attempt due | candidate | [`LeaseAction::Acquire`] |
//! | candidate | acquired (epoch e) | leader (e), deadline = sent + TTL | [`LeaseAction::StartCoordinator`] |
//! | candidate | held by another / database error | follower, next attempt after the renew interval | — |
//! | leader | renew due | leader | [`LeaseAction::Renew`] |
//! | leader | renewed (sent at t) | leader, deadline = t + TTL | — |
//! | leader | database error | leader (deadline unchanged), retry after the retry interval | — |
//! | leader | lease lost (another epoch) / a write was fenced | fenced | [`LeaseAction::StopCoordinator`] |
//! | leader | now ≥ deadline (could not renew in time) | stepped-down | [`LeaseAction::StopCoordinator`] |
//! | fenced, stepped-down | coordinator stopped | follower, attempt due | — |
//!
//! [`LeaseAction::StartCoordinator`] does not hold the machine up: the shell starts the
//! coordinator beside the machine's timers, so a leader renews its lease (renew due →
//! [`LeaseAction::Renew`]) however long its coordinator takes to start.
//!
//! The deadline counts from when the renewal was *sent*: the database set the expiry from its
//! own now, which is later, so the leader always stops before the database lets another replica
//! take over (clocks may drift apart by much less than a TTL; they are not compared).

use std::collections::VecDeque;

/// A monotonic instant, milliseconds since an origin the shell chooses.
pub type Millis = u64;

/// The lease timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    /// How long a lease lasts after it is taken or renewed, milliseconds.
    pub ttl_ms: u64,
    /// How often the leader renews and a follower tries to take an expired lease.
    pub renew_ms: u64,
    /// How soon a failed renewal is tried again.
    pub retry_ms: u64,
}

impl LeaseTiming {
    /// Timings for a TTL of `ttl_secs`: renew every third of it, retry a failed renewal every
    /// tenth.
    pub fn from_ttl_secs(ttl_secs: u64) -> Self {
        let ttl_ms = ttl_secs.max(1).saturating_mul(1000);
        LeaseTiming {
            ttl_ms,
            renew_ms: ttl_ms / 3,
            retry_ms: (ttl_ms / 10).max(100),
        }
    }
}

/// Where the replica stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaseState {
    /// Not leading; tries to take the lease when the attempt is due.
    Follower,
    /// Asked the database for the lease, waiting for the answer.
    Candidate,
    /// Holds the lease with this epoch until `deadline` unless renewed.
    Leader {
        /// The fencing epoch.
        epoch: i64,
        /// When this replica must stop coordinating without a renewal.
        deadline: Millis,
    },
    /// Another replica took the lease: stopping the coordinator.
    Fenced {
        /// The epoch this replica held.
        epoch: i64,
    },
    /// Could not renew before the deadline: stopping the coordinator.
    SteppedDown {
        /// The epoch this replica held.
        epoch: i64,
    },
}

impl LeaseState {
    /// The role shown in status and `/metrics`: only a leader coordinates.
    pub fn role(&self) -> Role {
        match self {
            LeaseState::Leader { .. } => Role::Leader,
            _ => Role::Standby,
        }
    }
}

/// A replica's role, as listed by status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Role {
    /// Runs the coordinator.
    Leader,
    /// Serves the API from the database; takes over when the lease expires.
    Standby,
}

impl Role {
    /// The name stored in `replicas.role`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Standby => "standby",
        }
    }
}

/// Why the coordinator stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// Another replica took the lease (or a write was fenced).
    Fenced,
    /// The lease could not be renewed before it expired.
    Expired,
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaseAction {
    /// Try to take the lease ([`crate::db::Db::acquire_lease`]); `force` takes it whatever its
    /// state (the one-replica server at start). Answer with [`LeaseMachine::handle_acquired`] or
    /// [`LeaseMachine::handle_refused`].
    Acquire {
        /// Take it even if unexpired.
        force: bool,
    },
    /// Renew the lease held with `epoch`; answer with [`LeaseMachine::handle_renewed`],
    /// [`LeaseMachine::handle_lost`] or [`LeaseMachine::handle_failed`].
    Renew {
        /// The epoch held.
        epoch: i64,
    },
    /// Start the coordinator, fenced with `epoch`.
    StartCoordinator {
        /// The epoch to fence writes with.
        epoch: i64,
    },
    /// Stop the coordinator (it held `epoch`); answer with
    /// [`LeaseMachine::handle_coordinator_stopped`].
    StopCoordinator {
        /// The epoch it held.
        epoch: i64,
        /// Why.
        reason: StopReason,
    },
}

/// The lease decisions of one replica (see the module documentation).
#[derive(Debug, Clone)]
pub struct LeaseMachine {
    timing: LeaseTiming,
    state: LeaseState,
    /// When the next acquire (follower) or renew (leader) is due.
    next: Millis,
    /// When the request in flight was sent.
    sent: Millis,
    /// The first acquire takes the lease whatever its state.
    force_first: bool,
    /// Lease attempts made.
    attempts: u64,
    /// Times this replica took the lease other than at its first attempt.
    failovers: u64,
    out: VecDeque<LeaseAction>,
}

impl LeaseMachine {
    /// A follower whose first attempt is due at `now`; with `force_first` that attempt takes
    /// the lease whatever its state (one replica: a restart need not wait for its own old
    /// lease to expire).
    pub fn new(timing: LeaseTiming, now: Millis, force_first: bool) -> Self {
        LeaseMachine {
            timing,
            state: LeaseState::Follower,
            next: now,
            sent: now,
            force_first,
            attempts: 0,
            failovers: 0,
            out: VecDeque::new(),
        }
    }

    /// Where the replica stands.
    pub fn state(&self) -> LeaseState {
        self.state
    }

    /// How many times this replica took the lease over (other than at its first attempt,
    /// at start): `ota_coordinator_failovers_total`.
    pub fn failovers(&self) -> u64 {
        self.failovers
    }

    /// The next thing to do at `now`, if any.
    pub fn poll_action(&mut self, now: Millis) -> Option<LeaseAction> {
        if let LeaseState::Leader { epoch, deadline } = self.state
            && now >= deadline
        {
            self.state = LeaseState::SteppedDown { epoch };
            self.out.push_back(LeaseAction::StopCoordinator {
                epoch,
                reason: StopReason::Expired,
            });
        }
        if let Some(action) = self.out.pop_front() {
            return Some(action);
        }
        if now < self.next {
            return None;
        }
        match self.state {
            LeaseState::Follower => {
                self.state = LeaseState::Candidate;
                self.sent = now;
                self.attempts += 1;
                let force = std::mem::take(&mut self.force_first);
                Some(LeaseAction::Acquire { force })
            }
            LeaseState::Leader { epoch, .. } => {
                self.sent = now;
                // One renewal at a time: the next is scheduled by its outcome.
                self.next = Millis::MAX;
                Some(LeaseAction::Renew { epoch })
            }
            _ => None,
        }
    }

    /// When [`poll_action`](Self::poll_action) next has something to do (`None`: only after
    /// an outcome is handled).
    pub fn poll_timeout(&self) -> Option<Millis> {
        if !self.out.is_empty() {
            return Some(0);
        }
        match self.state {
            LeaseState::Leader { deadline, .. } => Some(self.next.min(deadline)),
            LeaseState::Follower => Some(self.next),
            _ => None,
        }
    }

    /// The database gave this replica the lease with `epoch`.
    pub fn handle_acquired(&mut self, epoch: i64, now: Millis) {
        if self.state != LeaseState::Candidate {
            return;
        }
        self.state = LeaseState::Leader {
            epoch,
            deadline: self.sent.saturating_add(self.timing.ttl_ms),
        };
        if self.attempts > 1 {
            self.failovers += 1;
        }
        self.next = now.saturating_add(self.timing.renew_ms);
        self.out.push_back(LeaseAction::StartCoordinator { epoch });
    }

    /// Another replica holds the lease.
    pub fn handle_refused(&mut self, now: Millis) {
        if self.state == LeaseState::Candidate {
            self.state = LeaseState::Follower;
            self.next = now.saturating_add(self.timing.renew_ms);
        }
    }

    /// The renewal sent last succeeded.
    pub fn handle_renewed(&mut self, now: Millis) {
        if let LeaseState::Leader { epoch, deadline } = self.state {
            self.state = LeaseState::Leader {
                epoch,
                deadline: deadline.max(self.sent.saturating_add(self.timing.ttl_ms)),
            };
            self.next = now.saturating_add(self.timing.renew_ms);
        }
    }

    /// The lease row names another replica or epoch (renewal refused), or a coordinator write
    /// was fenced.
    pub fn handle_lost(&mut self) {
        if let LeaseState::Leader { epoch, .. } = self.state {
            self.state = LeaseState::Fenced { epoch };
            self.out.push_back(LeaseAction::StopCoordinator {
                epoch,
                reason: StopReason::Fenced,
            });
        }
    }

    /// The database call in flight failed (unreachable, timed out).
    pub fn handle_failed(&mut self, now: Millis) {
        match self.state {
            LeaseState::Candidate => {
                self.state = LeaseState::Follower;
                self.next = now.saturating_add(self.timing.renew_ms);
            }
            LeaseState::Leader { .. } => self.next = now.saturating_add(self.timing.retry_ms),
            _ => {}
        }
    }

    /// The coordinator stopped: compete for the lease again from `now`.
    pub fn handle_coordinator_stopped(&mut self, now: Millis) {
        if matches!(
            self.state,
            LeaseState::Fenced { .. } | LeaseState::SteppedDown { .. }
        ) {
            self.state = LeaseState::Follower;
            self.next = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: LeaseTiming = LeaseTiming {
        ttl_ms: 10_000,
        renew_ms: 3_333,
        retry_ms: 1_000,
    };

    fn leader(now: Millis) -> LeaseMachine {
        let mut m = LeaseMachine::new(T, now, false);
        assert_eq!(
            m.poll_action(now),
            Some(LeaseAction::Acquire { force: false })
        );
        m.handle_acquired(7, now + 5);
        assert_eq!(
            m.poll_action(now + 5),
            Some(LeaseAction::StartCoordinator { epoch: 7 })
        );
        m
    }

    #[test]
    fn a_follower_tries_at_once_then_every_renew_interval() {
        let mut m = LeaseMachine::new(T, 100, true);
        assert_eq!(m.poll_timeout(), Some(100));
        assert_eq!(m.poll_action(99), None);
        assert_eq!(
            m.poll_action(100),
            Some(LeaseAction::Acquire { force: true })
        );
        assert_eq!(m.state(), LeaseState::Candidate);
        assert_eq!(m.poll_action(200), None, "one attempt in flight");
        m.handle_refused(200);
        assert_eq!(m.state(), LeaseState::Follower);
        assert_eq!(m.poll_timeout(), Some(200 + T.renew_ms));
        assert_eq!(
            m.poll_action(200 + T.renew_ms),
            Some(LeaseAction::Acquire { force: false }),
            "only the first attempt forces"
        );
        m.handle_failed(4000);
        assert_eq!(m.state(), LeaseState::Follower);
        assert_eq!(m.failovers(), 0);
    }

    #[test]
    fn the_leader_starts_the_coordinator_and_renews() {
        let mut m = leader(0);
        assert_eq!(
            m.state(),
            LeaseState::Leader {
                epoch: 7,
                deadline: T.ttl_ms
            }
        );
        assert_eq!(m.state().role(), Role::Leader);
        assert_eq!(m.failovers(), 0, "taken at the first attempt");
        assert_eq!(m.poll_timeout(), Some(5 + T.renew_ms));
        assert_eq!(
            m.poll_action(5 + T.renew_ms),
            Some(LeaseAction::Renew { epoch: 7 })
        );
        assert_eq!(
            m.poll_action(5 + T.renew_ms + 1),
            None,
            "one renewal in flight"
        );
        m.handle_renewed(5 + T.renew_ms + 50);
        // The deadline counts from when the renewal was sent.
        assert_eq!(
            m.state(),
            LeaseState::Leader {
                epoch: 7,
                deadline: 5 + T.renew_ms + T.ttl_ms
            }
        );
    }

    #[test]
    fn a_leader_that_cannot_renew_steps_down_at_the_deadline() {
        let mut m = leader(0);
        assert_eq!(
            m.poll_action(T.renew_ms + 5),
            Some(LeaseAction::Renew { epoch: 7 })
        );
        m.handle_failed(T.renew_ms + 500);
        assert_eq!(m.poll_timeout(), Some(T.renew_ms + 500 + T.retry_ms));
        assert_eq!(
            m.poll_action(T.renew_ms + 500 + T.retry_ms),
            Some(LeaseAction::Renew { epoch: 7 })
        );
        // The renewal hangs past the deadline: the shell polls at the deadline.
        assert_eq!(
            m.poll_action(T.ttl_ms),
            Some(LeaseAction::StopCoordinator {
                epoch: 7,
                reason: StopReason::Expired
            })
        );
        assert_eq!(m.state(), LeaseState::SteppedDown { epoch: 7 });
        assert_eq!(m.state().role(), Role::Standby);
        // A late success does not bring it back.
        m.handle_renewed(T.ttl_ms + 1);
        assert_eq!(m.state(), LeaseState::SteppedDown { epoch: 7 });
        m.handle_coordinator_stopped(T.ttl_ms + 2);
        assert_eq!(m.state(), LeaseState::Follower);
        assert_eq!(
            m.poll_action(T.ttl_ms + 2),
            Some(LeaseAction::Acquire { force: false })
        );
    }

    #[test]
    fn a_fenced_leader_stops_once() {
        let mut m = leader(0);
        m.handle_lost();
        assert_eq!(m.state(), LeaseState::Fenced { epoch: 7 });
        m.handle_lost();
        assert_eq!(
            m.poll_action(10),
            Some(LeaseAction::StopCoordinator {
                epoch: 7,
                reason: StopReason::Fenced
            })
        );
        assert_eq!(m.poll_action(10), None);
        assert_eq!(
            m.poll_timeout(),
            None,
            "nothing until the coordinator stopped"
        );
        m.handle_coordinator_stopped(20);
        assert_eq!(
            m.poll_action(20),
            Some(LeaseAction::Acquire { force: false })
        );
        m.handle_acquired(9, 30);
        assert_eq!(
            m.poll_action(30),
            Some(LeaseAction::StartCoordinator { epoch: 9 })
        );
        assert_eq!(m.failovers(), 1);
    }

    #[test]
    fn outcomes_out_of_turn_change_nothing() {
        let mut m = LeaseMachine::new(T, 0, false);
        m.handle_acquired(3, 0);
        m.handle_renewed(0);
        m.handle_lost();
        assert_eq!(m.state(), LeaseState::Follower);
        assert_eq!(
            m.poll_action(0),
            Some(LeaseAction::Acquire { force: false })
        );
    }

    #[test]
    fn timings_follow_the_ttl() {
        let t = LeaseTiming::from_ttl_secs(10);
        assert_eq!((t.ttl_ms, t.renew_ms, t.retry_ms), (10_000, 3_333, 1_000));
        assert_eq!(LeaseTiming::from_ttl_secs(0).ttl_ms, 1000);
    }
}

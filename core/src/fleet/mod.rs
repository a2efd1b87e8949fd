//! The fleet coordinator's decisions, sans-IO (issue 13: the coordinator moves here piece by
//! piece; today the server's `fleet/actor.rs` still holds the rest and calls these).
//!
//! - [`generations`]: which desired-state generation a device may acknowledge, the device's
//!   watermark when it acted on one this server did not issue, and the next one to issue. One
//!   [`Generations`] ledger per fleet, restored from the persisted desired states.
//! - [`delivery`]: an outcome report's way into the rollout it names (routing, freshness as
//!   the rollout stores it, the planner), and what to send again to a device whose watermark
//!   moved.
//! - [`device`]: what the coordinator remembers of each device ([`DeviceMemo`]) and the rules
//!   that move it: registration, the last committed release, drift, presence, health, download
//!   costs.
//! - [`routing`]: whether an outcome report is a rollout's device state, the recall of an
//!   aborted rollout, or not the rollout's at all.
//! - [`rollback`]: whether a device would accept the release an aborted rollout sends it back
//!   to (trust set in force, security floor, expiry), before anything is sent.
//! - [`rollout_id`]: a rollout's id ([`RolloutId`]), as the wire, URLs and the command line
//!   write it.
//! - [`targeting`]: which devices a new rollout targets (filter, hardware class, holders,
//!   presence) and where an abort would send each back.

pub mod delivery;
pub mod device;
pub mod generations;
pub mod rollback;
pub mod rollout_id;
pub mod routing;
pub mod targeting;

pub use delivery::{Delivery, deliver, reissue_above_watermark};
pub use device::{DeviceMemo, DriftChange, HeartbeatSeen, ReportSeen};
pub use generations::{GenerationError, Generations, MAX_GENERATION};
pub use rollback::RollbackCheck;
pub use rollout_id::{BadRolloutId, RolloutId};

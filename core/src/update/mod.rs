//! The agent's update machine, sans-IO: every decision of the device, none of its I/O.
//!
//! [`UpdateMachine`] is deterministic given (state, input, now). The shell (`ota-agent`) feeds
//! it inputs through `handle_*(…, now)`, performs the [`Action`]s that
//! [`poll_action`](UpdateMachine::poll_action) hands out, and sleeps until
//! [`poll_timeout`](UpdateMachine::poll_timeout). Timers are data ([`Timer`], one deadline per
//! kind in a small table), `now` is a [`Timestamp`] (wall-clock unix ms that the shell derives
//! from a monotonic clock), and nothing here reads a clock or sleeps.
//!
//! ```text
//! loop {
//!     while let Some(action) = machine.poll_action() { perform(action).await }   // in order
//!     select! {
//!         input = inputs.recv()                 => machine.handle_…(input, now()),
//!         _ = sleep_until(machine.poll_timeout()) => machine.handle_timeout(now()),
//!     }
//! }
//! ```
//!
//! # The decision order for a desired state
//!
//! 1. **Verify** before fetching anything: decode, signature threshold against the trust set,
//!    hardware class, expiry, security version ≥ the persisted floor. Refused → `rejected`
//!    with the cause. A generation ≤ the last one acted on is ignored (duplicates, replays);
//!    one more than [`MAX_GENERATION_STEP`] above it is refused with
//!    `rejected{generation-jump}` (an event only) and the device keeps its generation.
//! 2. **Identical**: the running release again → `skipped-identical`, nothing downloaded.
//!    `force_reinstall` reinstalls it from the cache after a re-hash.
//! 3. **Cached**: the artifact is in the cache index → re-hash it, install from it.
//! 4. **Power** gate → `deferred-power`, re-read on a timer and on every pushed reading.
//! 5. **Window** gate → `deferred-window`, timer to the next opening.
//! 6. **Disk** gate (downloads only) → `deferred-disk`, re-checked on a timer.
//! 7. **Download** with Range resume, backoff with deterministic jitter over the mirrors; a
//!    verify failure drops the mirror. Then power and window are checked again.
//! 8. **Install** from the cache.
//! 9. **Trial** until the health probe passes *and* the fleet server acks a heartbeat, within
//!    `trial_timeout`; then commit (known-good, floor rises) or roll back to the known-good
//!    release from the cache.
//! 10. **Cache** keeps `cache_capacity` releases, never evicting the running or known-good one.
//! 11. **Persist** write-ahead: an [`Action::Persist`] precedes every side effect it protects;
//!     [`UpdateMachine::recover`] resumes or undoes whatever a crash interrupted.
//!
//! # Transition table
//!
//! States are [`Stage`]s (`Preparing` covers the steps from `checking-cache` to `retry-wait`).
//! "Gates" means: `ReadPower` → power ok? → window open? → cached ? install : `CheckDisk`.
//!
//! | state | input | next state | actions |
//! |---|---|---|---|
//! | any | desired, generation ≤ last acted on (or ≤ queued) | unchanged | none |
//! | any | desired, generation > last acted on + [`MAX_GENERATION_STEP`] | unchanged (generation kept) | event `rejected{generation-jump}` (once per generation) |
//! | installing, trial, rolling-back | desired, newer | unchanged, desired queued | none |
//! | idle, preparing | desired, verification fails | idle (preparing job dropped) | `Persist`, event `rejected`, `PublishReported` |
//! | idle, preparing | desired, running digest, not forced | idle | `Persist`, event `skipped-identical` |
//! | preparing | desired, same digest as the job | unchanged, job adopts the generation | `Persist`, event `notified` |
//! | idle, preparing | desired, verified, cached | checking-cache | (`DiscardPartial`), `Persist`, event `notified`, `HashCached` |
//! | idle, preparing | desired, verified, not cached | reading-power | (`DiscardPartial`), `Persist`, event `notified`, `ReadPower` |
//! | checking-cache | cache hashed ok | reading-power (from cache) | `ReadPower` |
//! | checking-cache | cache hashed bad | reading-power (download) | `Persist` (index − digest), `Evict`, `ReadPower` |
//! | reading-power, deferred-power | power allows, window open, from cache | installing | `Persist` (Installing), event `installing`, `Install` |
//! | reading-power, deferred-power | power allows, window open, download | checking-disk | `CheckDisk{needed}` |
//! | reading-power, deferred-power | power allows, window closed | deferred-window | event `deferred-window{opens_at}`, timer `WindowOpen` |
//! | reading-power, deferred-power | power too low | deferred-power | event `deferred-power{reading}` (once per reading), timer `PowerRecheck` |
//! | deferred-power, -window, -disk | its timer | reading-power | `ReadPower` |
//! | checking-disk, deferred-disk | disk ≥ size + margin | downloading | `InspectPartial` |
//! | checking-disk, deferred-disk | disk short | deferred-disk | event `deferred-disk{needed, free}`, timer `DiskRecheck` |
//! | downloading | partial length | downloading | `Download{url, resume_from}`, event `downloading` |
//! | downloading | progress | downloading | event `downloading` (≤ 1/s or per 5 %) |
//! | downloading | complete | reading-power (from cache) | `Persist` (index + digest), `Evict`*, `ReadPower` |
//! | downloading | transient failure, retries left | retry-wait | timer `DownloadRetry` (backoff + jitter), next mirror |
//! | downloading | transient failure, none left | idle | `DiscardPartial`, `Persist`, event `failed{download}` |
//! | downloading | verify failure, good mirror left | downloading | `DiscardPartial`, `InspectPartial` (next mirror, at once) |
//! | downloading | verify failure, no mirror left | idle | `DiscardPartial`, `Persist`, event `failed{verify}` |
//! | retry-wait | timer `DownloadRetry` | downloading | `InspectPartial` |
//! | installing | install ok | trial | `Persist` (Trial, deadline), event `trial`, `RunProbe`, `SendHeartbeat` if connected, timer `TrialDeadline` (and `TrialSoak` with `trial_min`) |
//! | installing | install failed | rolling-back | `Persist` (RollingBack), `Install{known-good, rollback}` |
//! | trial | probe healthy / ack of a trial heartbeat / timer `TrialSoak`, all three now true (soak over) | idle | `Persist` (known-good, floor), `Commit`, `Evict`*, event `succeeded` |
//! | trial | probe healthy, soak not over | trial | timer `Probe` |
//! | trial | probe not yet, fewer than `probe_failures_to_rollback` in a row (or that is 0) | trial | timer `Probe` |
//! | trial | probe not yet, the `probe_failures_to_rollback`-th in a row | rolling-back | `Persist`, `Install{known-good, rollback}` (then `rolled-back{probe-failed}`) |
//! | trial | probe failed | rolling-back | `Persist`, `Install{known-good, rollback}` |
//! | trial | timer `TrialDeadline` | rolling-back | `Persist`, `Install{known-good, rollback}` |
//! | rolling-back | install ok | idle | `Persist`, event `rolled-back{reason}` (or `failed{install}`) |
//! | rolling-back | install failed | idle | `Persist`, event `failed{install}` |
//! | any | connected | unchanged | `PublishReported`, `SendHeartbeat` |
//! | any (connected) | timer `Heartbeat` | unchanged | `SendHeartbeat` |
//! | idle (after a final state) | a desired state was queued | as for that desired | as for that desired |
//!
//! Without a known-good release (a device with no factory release that never committed), a
//! failed trial ends in `failed{trial}` and an install failure in `failed{install}`, with no
//! rollback. [`UpdateMachine::recover`] documents the restart table.
//!
//! # Files
//!
//! - `machine.rs`: the struct, outputs, shared bookkeeping (persist, announce, conclude).
//! - `offer.rs`: rules 1 to 7. `trial.rs`: rules 8 to 10. `recover.rs`: rule 11.
//! - `slot.rs`: boot slots (the `ab` installer): the reboot into the new slot and the
//!   decisions on the slot that booted, with their own table.
//! - `state.rs` (phases, [`Status`]), `action.rs`, `input.rs`, `timer.rs`, `persist.rs`,
//!   `config.rs`, `power.rs`, `window.rs`, `backoff.rs`, `cache.rs`.
//!
//! The prose version, with the reasons behind each choice, is `docs/update-machine.md`.

mod action;
mod backoff;
mod cache;
mod config;
mod health;
mod input;
mod machine;
mod offer;
mod persist;
mod power;
mod recover;
mod slot;
mod state;
mod timer;
mod trial;
mod window;

pub use crate::time::Timestamp;
pub use action::Action;
pub use backoff::RetryPolicy;
pub use config::{Config, MAX_GENERATION_STEP, OBSERVE_RUNNING_INTERVAL};
pub use input::{DownloadError, InstallError, ProbeResult};
pub use machine::UpdateMachine;
pub use persist::{
    FLOOR_VERSION, FloorRecord, InFlight, Job, PERSIST_VERSION, PersistedState, ReleaseInfo,
};
pub use power::PowerPolicy;
pub use slot::{Slot, SlotNameError};
pub use state::{Stage, Status, TrialStatus};
pub use timer::Timer;
pub use window::{MaintenanceWindow, MaintenanceWindows, Weekdays};

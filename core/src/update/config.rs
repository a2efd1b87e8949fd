//! The update machine's configuration, fixed at construction.

use alloc::string::String;
use core::time::Duration;

use super::{MaintenanceWindows, PowerPolicy, ReleaseInfo, RetryPolicy};
use crate::release::TrustSet;
use crate::wire::DeviceId;

/// The largest step a desired state's generation may take above the last one the device acted
/// on (2^32). The fleet server raises a device's generation by one per desired state, so a
/// larger jump is never legitimate: it is refused (`rejected{generation-jump}`, reported as an
/// event) and the device keeps its generation, so a desired state with generation `u64::MAX`
/// cannot end its updates for good (issue 19.2).
pub const MAX_GENERATION_STEP: u64 = 1 << 32;

/// How often, at most, an idle machine asks the shell which release the installer actually
/// runs ([`Action::ObserveRunning`](super::Action::ObserveRunning)): at every (re)connect, then
/// with the first heartbeat after this interval (issue 12.7, drift).
pub const OBSERVE_RUNNING_INTERVAL: core::time::Duration = core::time::Duration::from_secs(60);

/// Everything the update machine needs to know about its device and its policies.
///
/// [`Config::new`] fills every policy with its default; change fields as needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The device's id (in events and the reported state).
    pub device_id: DeviceId,
    /// The device's hardware class (releases must list it).
    pub hardware_class: String,
    /// The keys and threshold releases are verified against.
    pub trust: TrustSet,
    /// How long a freshly installed release has to pass the health probe and reach the fleet
    /// server before it is rolled back. Default 10 minutes.
    pub trial_timeout: Duration,
    /// How many reboots a trial survives (the trial goes on after a reboot only if the wall
    /// clock is plausible; see `docs/update-machine.md`). Default 0: a reboot during a trial
    /// rolls back.
    pub trial_max_reboots: u32,
    /// Pause between health probes that report "not yet". Default 10 seconds.
    pub probe_interval: Duration,
    /// The least time a release stays on trial before it may commit, even when the probe
    /// passed and the server answered earlier: during this soak the probe keeps running every
    /// `probe_interval`, and the commit needs its latest answer healthy. Default 0 (commit as
    /// soon as both conditions hold). Must be shorter than `trial_timeout`.
    pub trial_min: Duration,
    /// Probe answers "not yet" in a row after which the trial rolls back at once (cause
    /// `probe-failed`) instead of waiting for `trial_timeout`. Default 0: never early, the
    /// deadline decides.
    pub probe_failures_to_rollback: u32,
    /// Keep probing the running release after its commit, once per heartbeat, and report the
    /// answers in heartbeats (the shell sets it when a health probe is configured). Default
    /// false: heartbeats carry no health.
    pub watch_health: bool,
    /// Pause between heartbeats while connected. Default 30 seconds.
    pub heartbeat_interval: Duration,
    /// When an update may start, given the power supply.
    pub power: PowerPolicy,
    /// When an update may start, given the local time.
    pub windows: MaintenanceWindows,
    /// Free bytes required beyond the artifact's size before downloading. Default 16 MiB.
    pub disk_margin_bytes: u64,
    /// Pause between free-space checks while waiting for disk space. Default 5 minutes.
    pub disk_recheck_interval: Duration,
    /// Releases kept in the local cache (the running and known-good ones are never evicted,
    /// even beyond it). Default 5.
    pub cache_capacity: usize,
    /// How downloads are retried.
    pub retry: RetryPolicy,
    /// Least time between two download progress events (one is also sent every
    /// `progress_step_percent`). Default 1 second.
    pub progress_interval: Duration,
    /// Progress step that always deserves an event, in percent. Default 5.
    pub progress_step_percent: u8,
    /// Install attempts (the first plus redos after interruptions) before rolling back.
    /// Default 2.
    pub max_install_attempts: u32,
    /// The installer writes A/B boot slots (the agent's `ab` installer): an install writes
    /// the slot not booted and ends in a reboot, the trial runs on the new slot after it, and
    /// a failed trial reboots back (see [`Slot`](super::Slot)). The shell reports the booted
    /// slot at every start with `handle_boot_observed`. Default false.
    pub boot_slots: bool,
    /// The release a factory-fresh device runs (known-good, and in the cache: the shell seeds
    /// `cache/<digest>`), used only when there is no persisted state.
    pub factory: Option<ReleaseInfo>,
}

impl Config {
    /// A configuration with every policy at its default.
    pub fn new(device_id: DeviceId, hardware_class: impl Into<String>, trust: TrustSet) -> Self {
        Config {
            device_id,
            hardware_class: hardware_class.into(),
            trust,
            trial_timeout: Duration::from_secs(10 * 60),
            trial_max_reboots: 0,
            probe_interval: Duration::from_secs(10),
            trial_min: Duration::ZERO,
            probe_failures_to_rollback: 0,
            watch_health: false,
            heartbeat_interval: Duration::from_secs(30),
            power: PowerPolicy::default(),
            windows: MaintenanceWindows::default(),
            disk_margin_bytes: 16 * 1024 * 1024,
            disk_recheck_interval: Duration::from_secs(5 * 60),
            cache_capacity: 5,
            retry: RetryPolicy::default(),
            progress_interval: Duration::from_secs(1),
            progress_step_percent: 5,
            max_install_attempts: 2,
            boot_slots: false,
            factory: None,
        }
    }
}

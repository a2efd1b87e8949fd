//! Fleet coordination: the MQTT device registry and the rollout engine.
//!
//! One coordinator task (the *actor*, `actor.rs`) owns everything that changes with device
//! messages: the loaded rollout planners (core's pure [`ota_core::rollout::Rollout`]), the
//! device registry's in-memory view, and the desired-state generations. It receives
//!
//! - MQTT messages from the polling task ([`crate::mqtt`]): reported state, events, status
//!   (online/offline, last will) and heartbeats of every device;
//! - operator commands from the REST API ([`Fleet`]): create, approve, pause, resume, abort;
//!   and accepted trust-set updates, which it publishes retained on `ota/v1/trust` (after each
//!   rotation and each reconnect) — devices answer on `ota/v1/devices/{id}/trust`, recorded as
//!   `trust-rotated` / `trust-rejected` audit events;
//! - its own timers (the planners' `poll_timeout()`).
//!
//! It handles inputs in batches (everything queued, up to [`MAX_BATCH`] messages), then writes
//! the whole batch in **one transaction**: device rows, every changed planner state (CBOR),
//! the desired states it is about to publish (with their generations) and the audit events.
//! Only after the commit does it publish the desired states (retained, QoS 1) and heartbeat
//! acks. So a crash loses nothing that was acted on: a restart loads every unfinished rollout
//! exactly as committed and republishes every stored desired state (same generation, so
//! devices ignore what they already acted on); device reports lost in between come back as the
//! retained reported state.
//!
//! A batch the database refuses for what it holds is written again with each device's row
//! under its own savepoint: only the refused device's message is dropped (`mqtt-rejected`).
//! A batch that cannot be stored because the database is unavailable (or that needed a read
//! that failed) is dropped with the whole in-memory state: the coordinator turns read-only
//! (changes answer [`FleetError::Unavailable`], heartbeats are acked, device messages kept)
//! until it can load the whole state again, then handles the kept messages. It never acts on
//! part of the state.
//!
//! # Rules
//!
//! - A device is *registered* by its first reported state (`device-registered` event).
//!   Events from a device the server never heard of, reports about a rollout the device is not
//!   a target of, and malformed payloads are recorded as `mqtt-rejected` audit events (at most
//!   [`REJECT_EVENTS_PER_MINUTE`] a minute; all are counted in `/metrics`) and dropped.
//! - Audit events a device causes are limited per device and kind
//!   ([`DEVICE_EVENTS_PER_MINUTE`]): a device toggling its running release cannot fill the
//!   audit log; the state itself (the device row, drift flag) is still updated every time.
//! - A report or event can only acknowledge a desired-state generation the server issued to
//!   that device (core's [`ota_core::fleet::Generations`]); anything above is `mqtt-rejected`.
//! - Reports are routed to a planner by the rollout id and release digest they carry; older
//!   outcomes (by generation, then device time) than one already seen are dropped (the same
//!   ledger), so a retained reported state cannot move a device backwards.
//! - A device belongs to at most one *active* rollout (awaiting approval, running, paused):
//!   a second rollout over it is refused (409).
//! - `last_seen` moves with every reported state, status and heartbeat; heartbeats only
//!   update it once it is [`LAST_SEEN_RESOLUTION_SECS`] old (one `UPDATE` per device, in the
//!   batch's transaction; never for a device the server has no row for).
//! - Download costs (`Transfer` on outcomes and events, issue 18) are stored once per device
//!   and desired-state generation (table `transfers`, the first report wins): the rollout
//!   view's `downloads`, the device view's `last_transfer` and the `ota_download_*` metrics
//!   are sums over those rows, so a repeated report never counts twice.
//! - Drift: a device whose running digest differs from the last release the server saw it
//!   commit (or its first known-good), while not on trial and in no active rollout.

mod actor;
pub mod flags;
mod outbox;
pub mod view;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ota_core::flags::{FlagEdit, FlagName};
use ota_core::fleet::RolloutId;
use ota_core::rollout::{Ratio, RolloutError, StateCounts};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

pub use actor::{FleetStartError, FleetTask, StartLease, start, stored_executions};
pub use flags::{FlagDetail, FlagEditResult, FlagList, FlagSetRequest};
pub use view::{RolloutView, target_json};

use crate::db::DbError;

/// Most MQTT messages handled in one batch (one database transaction).
pub const MAX_BATCH: usize = 1024;
/// A heartbeat moves a device's `last_seen` only when the stored value is at least this many
/// seconds old: a device heartbeating every 5 s costs one row update per 15 s, not three.
pub const LAST_SEEN_RESOLUTION_SECS: i64 = 15;
/// Most `mqtt-rejected` audit events recorded per minute (the rest are only counted).
pub const REJECT_EVENTS_PER_MINUTE: u32 = 100;
/// Most audit events one device causes per minute of one kind (`device-drifted`,
/// `device-drift-cleared`, `mqtt-rejected`, `trust-rotated`, `trust-rejected`), in bursts of as
/// many; the rest are counted in `ota_events_suppressed_total`.
pub const DEVICE_EVENTS_PER_MINUTE: u32 = 10;

/// Why a fleet operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// No published release matches.
    #[error("no published release matches {0:?} (give its sha256 or its version)")]
    ReleaseNotFound(String),
    /// The release expired: devices would refuse it.
    #[error(
        "release {version} expired at {expires} (unix seconds): devices refuse it; publish a new one"
    )]
    ReleaseExpired {
        /// The release's version.
        version: String,
        /// Its expiry, unix seconds.
        expires: u64,
    },
    /// Several releases have this version.
    #[error("several releases have version {0:?}: give the sha256")]
    AmbiguousRelease(String),
    /// The device filter does not parse.
    #[error("{0}")]
    BadFilter(String),
    /// The rollout spec is invalid.
    #[error("invalid rollout: {0}")]
    BadSpec(String),
    /// A flag definition or edit is invalid.
    #[error("invalid flag: {0}")]
    BadFlag(String),
    /// The filter matches no device that can take the release.
    #[error(
        "the filter matches no device that can take this release ({matched} matched, {incompatible} of them of another hardware class)"
    )]
    NoTargets {
        /// Devices the filter matched.
        matched: usize,
        /// Of those, devices whose hardware class the release does not list.
        incompatible: usize,
    },
    /// Some targets are already in an active rollout.
    #[error("{} device(s) are already in an active rollout: {}", .0.len(), conflict_list(.0))]
    Conflict(Vec<(String, RolloutId)>),
    /// No such rollout.
    #[error("rollout {0} not found")]
    RolloutNotFound(RolloutId),
    /// No such flag.
    #[error("flag {0:?} not found")]
    FlagNotFound(String),
    /// No such device.
    #[error("device {0:?} not found")]
    DeviceNotFound(String),
    /// The creator of a forced reinstall tried to approve it.
    #[error("a forced reinstall must be approved by an operator other than its creator")]
    SelfApproval,
    /// The operation is not possible in the rollout's state.
    #[error("{0}")]
    InvalidState(String),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// Stored planner state cannot be decoded.
    #[error("corrupt rollout state: {0}")]
    Corrupt(String),
    /// The coordinator is not running (the server is stopping).
    #[error("the fleet coordinator is not running")]
    Stopped,
    /// This replica does not coordinate (another one holds the lease, or none does yet): the
    /// HTTP layer forwards such commands to the leader (see `docs/ha.md`).
    #[error("this replica is a standby: the fleet coordinator runs on the leader")]
    NotLeader,
    /// The database is unavailable: the coordinator is read-only until it answers again, and
    /// nothing was changed.
    #[error(
        "the database is unavailable: rollouts and flags are read-only until it is back (nothing was changed; retry later)"
    )]
    Unavailable,
}

fn conflict_list(list: &[(String, RolloutId)]) -> String {
    let mut s: Vec<String> = list
        .iter()
        .take(10)
        .map(|(d, r)| format!("{d} (rollout {r})"))
        .collect();
    if list.len() > 10 {
        s.push(format!("and {} more", list.len() - 10));
    }
    s.join(", ")
}

impl From<RolloutError> for FleetError {
    fn from(e: RolloutError) -> Self {
        match e {
            RolloutError::SelfApproval => FleetError::SelfApproval,
            RolloutError::InvalidOperation { .. } => FleetError::InvalidState(e.to_string()),
            RolloutError::Corrupt(_) | RolloutError::UnsupportedVersion(_) => {
                FleetError::Corrupt(e.to_string())
            }
            other => FleetError::BadSpec(other.to_string()),
        }
    }
}

fn default_waves() -> Vec<f64> {
    vec![1.0, 5.0, 25.0, 100.0]
}
fn default_bake() -> u64 {
    3600
}
fn default_success_min() -> f64 {
    95.0
}
fn default_max_failure() -> f64 {
    5.0
}
fn default_min_executed() -> u32 {
    ota_core::rollout::DEFAULT_MIN_EXECUTED
}
fn default_rate() -> u32 {
    200
}
fn default_inactivity() -> u64 {
    30 * 60
}
fn default_max_deferral() -> u64 {
    24 * 3600
}

/// A rollout as an operator asks for it (the body of `POST /api/v1/rollouts`). Percentages
/// are numbers (`5` is 5 %, at most two decimals count); durations are seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RolloutRequest {
    /// The release: its artifact sha256 (hex), or its version if only one release has it.
    pub release: String,
    /// The device filter (empty: every device).
    #[serde(default)]
    pub filter: String,
    /// Cumulative wave sizes in percent, the last one 100.
    #[serde(default = "default_waves")]
    pub waves: Vec<f64>,
    /// Bake time after a wave's last device settled, seconds.
    #[serde(default = "default_bake")]
    pub bake_secs: u64,
    /// Least succeeded / executed share for a wave's gate, percent.
    #[serde(default = "default_success_min")]
    pub success_min: f64,
    /// Largest failures / executed share before the rollout aborts, percent.
    #[serde(default = "default_max_failure")]
    pub max_failure: f64,
    /// Executed devices needed before `max_failure` is judged.
    #[serde(default = "default_min_executed")]
    pub min_executed: u32,
    /// Most devices notified per minute.
    #[serde(default = "default_rate")]
    pub rate_per_minute: u32,
    /// A notified device silent this long becomes timed-out, seconds.
    #[serde(default = "default_inactivity")]
    pub inactivity_timeout_secs: u64,
    /// A deferred or unreachable device stops blocking its wave after this, seconds.
    #[serde(default = "default_max_deferral")]
    pub max_deferral_secs: u64,
    /// Reinstall on devices already running the release (needs a second operator's approval).
    #[serde(default)]
    pub force_reinstall: bool,
    /// Plan only: show targets, waves, deploys and redeploys; notify nobody.
    #[serde(default)]
    pub dry_run: bool,
}

impl RolloutRequest {
    /// A request for `release` over `filter` with every default.
    pub fn new(release: impl Into<String>, filter: impl Into<String>) -> Self {
        RolloutRequest {
            release: release.into(),
            filter: filter.into(),
            waves: default_waves(),
            bake_secs: default_bake(),
            success_min: default_success_min(),
            max_failure: default_max_failure(),
            min_executed: default_min_executed(),
            rate_per_minute: default_rate(),
            inactivity_timeout_secs: default_inactivity(),
            max_deferral_secs: default_max_deferral(),
            force_reinstall: false,
            dry_run: false,
        }
    }
}

/// A percentage (0 to 100, two decimals) as a planner ratio.
pub fn percent(p: f64, what: &str) -> Result<Ratio, FleetError> {
    if !p.is_finite() || !(0.0..=100.0).contains(&p) {
        return Err(FleetError::BadSpec(format!(
            "{what} must be between 0 and 100 percent, got {p}"
        )));
    }
    let bp = (p * 100.0).round();
    // 0..=10_000 fits u16.
    Ok(Ratio::basis_points(bp as u16))
}

/// Counters shown by `/metrics`.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Counters {
    /// MQTT messages received.
    pub mqtt_received: AtomicU64,
    /// MQTT messages published.
    pub mqtt_published: AtomicU64,
    /// MQTT messages refused (malformed, unknown device, not a target).
    pub mqtt_rejected: AtomicU64,
    /// MQTT connections the embedded broker's front door refused (bad password, certificate or
    /// client id, failed TLS handshake).
    pub mqtt_auth_refused: AtomicU64,
    /// MQTT connections the front door closed for a publish, subscription or last will
    /// outside the device's ACL.
    pub mqtt_acl_denied: AtomicU64,
    /// MQTT messages dropped because their device exceeded its message budget (at the
    /// embedded broker's front door or at the server's client).
    pub mqtt_dropped: AtomicU64,
    /// MQTT connections the front door closed because their device kept publishing beyond its
    /// budget.
    pub mqtt_flood_disconnects: AtomicU64,
    /// Audit events not recorded because their device exceeded its budget for that kind.
    pub events_suppressed: AtomicU64,
    /// Webhook deliveries that succeeded.
    pub webhook_delivered: AtomicU64,
    /// Webhook deliveries given up after every retry.
    pub webhook_failed: AtomicU64,
    /// Events not queued for webhooks because the queue was full.
    pub webhook_dropped: AtomicU64,
}

impl Counters {
    /// Adds one to `counter`.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the coordinator last knew, for `/metrics`.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Snapshot {
    /// Device executions per state, over active rollouts.
    pub executions: StateCounts,
    /// Whether the MQTT client is connected.
    pub mqtt_connected: bool,
    /// Rollouts the coordinator drives now.
    pub active_rollouts: usize,
    /// Whether the coordinator is read-only, waiting for the database to answer again.
    pub db_unavailable: bool,
}

/// This replica's part in coordination (issue 15), kept by the lease task (`ha.rs`) for
/// `/metrics`, status and forwarding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Coordination {
    /// This replica's id.
    pub replica_id: String,
    /// Whether this replica holds the lease and runs the coordinator.
    pub leader: bool,
    /// Whether this replica holds the lease (its coordinator may still be starting).
    pub holds_lease: bool,
    /// The epoch it leads with, or the last one it saw.
    pub epoch: i64,
    /// The replica holding the lease and its advertised URL, when known (this one too).
    pub leader_url: Option<String>,
    /// Times this replica took the lease over (not counting its first attempt at start).
    pub failovers: u64,
    /// When this replica last took or renewed the lease (`None` while it does not hold it).
    pub lease_renewed_at: Option<tokio::time::Instant>,
    /// When this replica's heartbeat was last written to the database.
    pub heartbeat_at: Option<tokio::time::Instant>,
    /// Whether the lease task's last database call succeeded (`None` before the first).
    pub database_reachable: Option<bool>,
}

/// State shared between the coordinator and the HTTP handlers.
#[derive(Debug, Default)]
pub struct Shared {
    /// The counters.
    pub counters: Counters,
    snapshot: std::sync::RwLock<Snapshot>,
    coordination: std::sync::RwLock<Coordination>,
}

impl Shared {
    /// This replica's part in coordination.
    pub fn coordination(&self) -> Coordination {
        self.coordination
            .read()
            .map(|c| c.clone())
            .unwrap_or_default()
    }

    pub(crate) fn set_coordination(&self, c: Coordination) {
        if let Ok(mut slot) = self.coordination.write() {
            *slot = c;
        }
    }

    /// The last snapshot.
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.read().map(|s| s.clone()).unwrap_or_default()
    }

    pub(crate) fn set_snapshot(&self, s: Snapshot) {
        if let Ok(mut slot) = self.snapshot.write() {
            *slot = s;
        }
    }
}

/// An operator command for the coordinator.
#[derive(Debug)]
pub(crate) enum Command {
    Create {
        request: RolloutRequest,
        operator: String,
        reply: oneshot::Sender<Result<RolloutView, FleetError>>,
    },
    Operate {
        id: RolloutId,
        op: Op,
        operator: String,
        reply: oneshot::Sender<Result<RolloutView, FleetError>>,
    },
    Flag {
        name: FlagName,
        edit: FlagEdit,
        operator: String,
        reply: oneshot::Sender<Result<FlagEditResult, FleetError>>,
    },
    FlagList {
        reply: oneshot::Sender<FlagList>,
    },
    FlagShow {
        name: String,
        device: Option<String>,
        reply: oneshot::Sender<Result<FlagDetail, FleetError>>,
    },
    DeviceChanged {
        id: String,
    },
    TrustChanged {
        payload: Vec<u8>,
    },
    ReleaseChanged {
        digest: ota_core::digest::Digest,
    },
}

/// An operator operation on a rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    /// Approve a forced reinstall.
    Approve,
    /// Pause.
    Pause,
    /// Resume.
    Resume,
    /// Abort with a reason.
    Abort(String),
}

/// A handle to the fleet coordinator (cheap to clone). The coordinator runs only while this
/// replica holds the lease; without it every command answers [`FleetError::NotLeader`].
#[derive(Debug, Clone)]
pub struct Fleet {
    tx: Arc<std::sync::RwLock<Option<mpsc::Sender<Command>>>>,
    shared: Arc<Shared>,
}

impl Fleet {
    /// A handle with no coordinator behind it yet ([`start`] attaches one).
    pub fn detached(shared: Arc<Shared>) -> Self {
        Fleet {
            tx: Arc::new(std::sync::RwLock::new(None)),
            shared,
        }
    }

    /// Sends commands to `tx` from now on (`None`: answer [`FleetError::NotLeader`]).
    fn attach(&self, tx: Option<mpsc::Sender<Command>>) {
        if let Ok(mut slot) = self.tx.write() {
            *slot = tx;
        }
    }

    /// Creates a rollout for `operator`.
    pub async fn create_rollout(
        &self,
        request: RolloutRequest,
        operator: &str,
    ) -> Result<RolloutView, FleetError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Create {
            request,
            operator: operator.to_string(),
            reply,
        })
        .await?;
        rx.await.map_err(|_| FleetError::Stopped)?
    }

    /// Approves, pauses, resumes or aborts rollout `id` for `operator`.
    pub async fn operate(
        &self,
        id: RolloutId,
        op: Op,
        operator: &str,
    ) -> Result<RolloutView, FleetError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Operate {
            id,
            op,
            operator: operator.to_string(),
            reply,
        })
        .await?;
        rx.await.map_err(|_| FleetError::Stopped)?
    }

    /// Applies `edit` to flag `name` for `operator`; answers once the change, its audit record
    /// and event are stored (the devices' flags are published right after).
    pub async fn edit_flag(
        &self,
        name: FlagName,
        edit: FlagEdit,
        operator: &str,
    ) -> Result<FlagEditResult, FleetError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Flag {
            name,
            edit,
            operator: operator.to_string(),
            reply,
        })
        .await?;
        rx.await.map_err(|_| FleetError::Stopped)?
    }

    /// Every flag with its device counts.
    pub async fn list_flags(&self) -> Result<FlagList, FleetError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::FlagList { reply }).await?;
        rx.await.map_err(|_| FleetError::Stopped)
    }

    /// Flag `name` with its device counts, and `device`'s evaluation (value and cause).
    pub async fn show_flag(
        &self,
        name: &str,
        device: Option<&str>,
    ) -> Result<FlagDetail, FleetError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::FlagShow {
            name: name.to_string(),
            device: device.map(str::to_string),
            reply,
        })
        .await?;
        rx.await.map_err(|_| FleetError::Stopped)?
    }

    /// Tells the coordinator that device `id`'s row changed outside it (server labels), so
    /// its flags are evaluated again.
    pub async fn device_changed(&self, id: &str) -> Result<(), FleetError> {
        self.send(Command::DeviceChanged { id: id.to_string() })
            .await
    }

    /// Tells the coordinator that a trust-set update was accepted (and stored): it publishes
    /// `payload` retained on `ota/v1/trust`, and again after every broker reconnect.
    pub async fn trust_changed(&self, payload: Vec<u8>) -> Result<(), FleetError> {
        self.send(Command::TrustChanged { payload }).await
    }

    /// Tells the coordinator that the signed envelope of release `digest` was replaced (a
    /// countersignature): it reads the new one before its next desired state of it.
    pub async fn release_changed(
        &self,
        digest: ota_core::digest::Digest,
    ) -> Result<(), FleetError> {
        self.send(Command::ReleaseChanged { digest }).await
    }

    /// Shared counters and the last snapshot.
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    async fn send(&self, cmd: Command) -> Result<(), FleetError> {
        let tx = self
            .tx
            .read()
            .ok()
            .and_then(|slot| slot.clone())
            .ok_or(FleetError::NotLeader)?;
        tx.send(cmd).await.map_err(|_| FleetError::Stopped)
    }
}

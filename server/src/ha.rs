//! The lease task: runs [`crate::lease::LeaseMachine`] against the database and starts or
//! stops the fleet coordinator with the lease (issue 15, `docs/ha.md`).
//!
//! Every replica runs one. The one holding the lease runs the coordinator, fenced with its
//! epoch; the others keep the [`Fleet`] handle detached (coordinator commands answer
//! [`crate::fleet::FleetError::NotLeader`]; the HTTP layer forwards them to the leader) and try
//! to take the lease whenever it expired. Each lease attempt or renewal also writes the
//! replica's heartbeat (`replicas`), and the outcome goes to [`Shared::set_coordination`] for
//! `/metrics`, `/healthz`, status and forwarding. Time is `tokio::time::Instant` (paused-time
//! tests drive it); the lease's expiry is the database's clock.
//!
//! The coordinator's start (loading every unfinished rollout, connecting to the broker) runs
//! in a task of its own, awaited in the lease task's `select!` beside the lease's timers: a leader renews its lease from
//! the moment it took it, however long its coordinator takes to start. The leader also forgets
//! the `replicas` rows of replicas silent for longer than `[ha] forget_replica_after_secs`, and
//! a replica that stops cleanly removes its own row.

use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::clock::Clock;
use crate::db::{AcquireOutcome, Db, DbError, Fence, LeaseRecord, RenewOutcome};
use crate::fleet::{Coordination, Fleet, FleetStartError, FleetTask, Snapshot, StartLease};
use crate::lease::{LeaseAction, LeaseMachine, LeaseState, LeaseTiming, Millis, Role};
use crate::mqtt::LinkSpec;
use crate::trust::FleetTrust;

/// What the coordinator is started with when this replica takes the lease.
#[derive(Debug, Clone)]
pub(crate) struct CoordinatorSpec {
    pub(crate) handle: Fleet,
    pub(crate) db: Db,
    pub(crate) clock: Clock,
    pub(crate) link: LinkSpec,
    pub(crate) public_url: String,
    pub(crate) keys: FleetTrust,
}

/// Who this replica is.
#[derive(Debug, Clone)]
pub(crate) struct ReplicaSpec {
    /// Its id (`[ha] replica_id`).
    pub(crate) id: String,
    /// Its advertised API URL.
    pub(crate) url: String,
    /// The lease timings.
    pub(crate) timing: LeaseTiming,
    /// Take the lease at start whatever its state (the one-replica server, no `[ha]`).
    pub(crate) force_first: bool,
    /// The leader removes the `replicas` rows whose last heartbeat is older than this,
    /// milliseconds.
    pub(crate) forget_after_ms: i64,
}

/// The running lease task: stop it with [`HaTask::stop`].
#[derive(Debug)]
pub(crate) struct HaTask {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl HaTask {
    /// Stops the coordinator (if this replica leads), gives the lease up so a standby takes
    /// over at once, removes the replica from the list (`replicas`) and ends the task.
    pub(crate) async fn stop(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}

/// The default replica id: the host name and the process id.
pub(crate) fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "ota".to_string());
    format!("{host}-{}", std::process::id())
}

/// A coordinator being started, in its own task (the lease task waits for it beside its
/// timers), and the switch that calls it off.
struct Starting {
    task: JoinHandle<Result<FleetTask, FleetStartError>>,
    cancel: watch::Sender<bool>,
}

struct Ha {
    spec: CoordinatorSpec,
    replica: ReplicaSpec,
    machine: LeaseMachine,
    origin: Instant,
    coordinator: Option<FleetTask>,
    /// The coordinator's start while it runs (the lease is renewed meanwhile).
    starting: Option<Starting>,
    /// [`start`] waits for the first lease attempt and, if it took the lease, for the first
    /// coordinator start.
    first: Option<oneshot::Sender<Result<(), FleetStartError>>>,
    /// The first coordinator start failed: the task gives the lease up and ends.
    failed: Option<FleetStartError>,
    /// The last lease row seen (who leads, at which epoch).
    seen: Option<LeaseRecord>,
    /// When the lease was last taken or renewed.
    renewed_at: Option<Instant>,
    /// When this replica's heartbeat was last written.
    heartbeat_at: Option<Instant>,
    /// Whether the last database call of this task succeeded.
    db_reachable: Option<bool>,
}

/// Starts the lease task: it makes the first lease attempt at once and, if it takes the lease,
/// starts the coordinator (its failure fails the start, as for the one-replica server).
/// Returns once that is done; the lease is renewed meanwhile.
pub(crate) async fn start(
    spec: CoordinatorSpec,
    replica: ReplicaSpec,
) -> Result<HaTask, FleetStartError> {
    let origin = crate::clock::monotonic_now();
    let machine = LeaseMachine::new(replica.timing, 0, replica.force_first);
    let (first_tx, first_rx) = oneshot::channel();
    let ha = Ha {
        spec,
        replica,
        machine,
        origin,
        coordinator: None,
        starting: None,
        first: Some(first_tx),
        failed: None,
        seen: None,
        renewed_at: None,
        heartbeat_at: None,
        db_reachable: None,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(ha.run(stop_rx));
    match first_rx.await {
        Ok(Ok(())) => Ok(HaTask {
            stop: stop_tx,
            task,
        }),
        Ok(Err(e)) => {
            let _ = task.await;
            Err(e)
        }
        Err(_) => {
            let _ = task.await;
            Err(FleetStartError::Panicked)
        }
    }
}

/// Waits until `task` ends by itself (fenced); never with no coordinator.
async fn ended(task: &mut Option<FleetTask>) {
    match task {
        Some(task) => task.fenced().await,
        None => std::future::pending().await,
    }
}

/// Waits until the coordinator's start in progress finishes; never with none.
async fn started(starting: &mut Option<Starting>) -> Result<FleetTask, FleetStartError> {
    match starting {
        Some(start) => (&mut start.task)
            .await
            .unwrap_or(Err(FleetStartError::Panicked)),
        None => std::future::pending().await,
    }
}

impl Ha {
    fn now(&self) -> Millis {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(Millis::MAX)
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.replica.timing.ttl_ms).unwrap_or(i64::MAX)
    }

    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        while self.failed.is_none() {
            while let Some(action) = self.machine.poll_action(self.now()) {
                self.perform(action).await;
            }
            self.publish_view();
            let settled = self.starting.is_none() && self.machine.state() != LeaseState::Candidate;
            if settled && let Some(first) = self.first.take() {
                let _ = first.send(Ok(()));
            }
            let now = self.now();
            let sleep = self
                .machine
                .poll_timeout()
                .map_or(Duration::from_secs(3600), |t| {
                    Duration::from_millis(t.saturating_sub(now))
                });
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                () = ended(&mut self.coordinator) => {
                    self.coordinator = None;
                    self.machine.handle_lost();
                }
                result = started(&mut self.starting) => {
                    self.starting = None;
                    self.coordinator_started(result).await;
                }
                () = tokio::time::sleep(sleep) => {}
            }
        }
        self.stop_coordinator().await;
        if let LeaseState::Leader { epoch, .. } = self.machine.state() {
            self.release(epoch).await;
        }
        self.forget_self().await;
        if let Some(first) = self.first.take() {
            let _ = first.send(self.failed.take().map_or(Ok(()), Err));
        }
    }

    /// The coordinator's start finished: it coordinates, or the lease is given up (a failed
    /// first start ends the task: the server does not start).
    async fn coordinator_started(&mut self, result: Result<FleetTask, FleetStartError>) {
        let epoch = match self.machine.state() {
            LeaseState::Leader { epoch, .. } => epoch,
            // Not reached: losing the lease calls the start in progress off and waits for it.
            _ => {
                if let Ok(task) = result {
                    task.stop().await;
                }
                return;
            }
        };
        match result {
            Ok(task) => self.coordinator = Some(task),
            Err(e) => {
                tracing::error!(
                    epoch,
                    "took the lease but cannot start the coordinator: {e}"
                );
                self.release(epoch).await;
                self.machine.handle_lost();
                if self.first.is_some() {
                    self.failed = Some(e);
                }
            }
        }
    }

    /// Stops the coordinator; a start in progress is called off first (it stops what it had
    /// begun), so losing the lease or stopping never waits for a slow load or broker.
    async fn stop_coordinator(&mut self) {
        if let Some(start) = self.starting.take() {
            start.cancel.send_replace(true);
            match start.task.await {
                Ok(Ok(task)) => task.stop().await,
                Ok(Err(e)) => tracing::debug!("the coordinator's start ended as it stopped: {e}"),
                Err(e) => tracing::error!("the coordinator's start panicked: {e}"),
            }
        }
        if let Some(task) = self.coordinator.take() {
            task.stop().await;
        }
    }

    async fn perform(&mut self, action: LeaseAction) {
        match action {
            LeaseAction::Acquire { force } => self.acquire(force).await,
            LeaseAction::Renew { epoch } => self.renew(epoch).await,
            LeaseAction::StartCoordinator { epoch } => {
                let (cancel, called_off) = watch::channel(false);
                let task = tokio::spawn(start_coordinator(
                    self.spec.clone(),
                    self.replica.id.clone(),
                    epoch,
                    called_off,
                ));
                self.starting = Some(Starting { task, cancel });
            }
            LeaseAction::StopCoordinator { epoch, reason } => {
                tracing::warn!(epoch, ?reason, "this replica stops coordinating");
                self.stop_coordinator().await;
                // The coordinator's figures (executions, MQTT link) are no longer this
                // replica's.
                self.spec.handle.shared().set_snapshot(Snapshot::default());
                let now = self.now();
                self.machine.handle_coordinator_stopped(now);
            }
        }
    }

    async fn acquire(&mut self, force: bool) {
        let attempt =
            self.spec
                .db
                .acquire_lease(&self.replica.id, &self.replica.url, self.ttl_ms(), force);
        let limit = Duration::from_millis(self.replica.timing.ttl_ms);
        let outcome = flatten(tokio::time::timeout(limit, attempt).await);
        self.db_reachable = Some(outcome.is_ok());
        let now = self.now();
        match outcome {
            Ok(AcquireOutcome::Acquired { epoch }) => {
                tracing::info!(replica = %self.replica.id, epoch, "took the coordinator lease");
                self.renewed_at = Some(crate::clock::monotonic_now());
                self.seen = Some(LeaseRecord {
                    holder: Some(self.replica.id.clone()),
                    epoch,
                    advertise_url: Some(self.replica.url.clone()),
                    expires_in_ms: self.ttl_ms(),
                });
                self.machine.handle_acquired(epoch, now);
            }
            Ok(AcquireOutcome::Held(record)) => {
                self.seen = Some(record);
                self.machine.handle_refused(now);
            }
            Err(e) => {
                tracing::warn!("cannot reach the coordinator lease: {e}");
                self.machine.handle_failed(now);
            }
        }
        self.heartbeat(self.machine.state().role()).await;
        // A trust-set rotation accepted by another replica verifies releases here too, and a
        // new leader checks rollback targets against it.
        let limit = Duration::from_millis(self.replica.timing.retry_ms);
        match tokio::time::timeout(limit, self.spec.keys.refresh(&self.spec.db)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("cannot read the trust set in force: {e}"),
            Err(_) => tracing::debug!("reading the trust set in force timed out"),
        }
    }

    async fn renew(&mut self, epoch: i64) {
        let limit = match self.machine.state() {
            LeaseState::Leader { deadline, .. } => {
                Duration::from_millis(deadline.saturating_sub(self.now()))
            }
            _ => Duration::ZERO,
        };
        let attempt = self
            .spec
            .db
            .renew_lease(&self.replica.id, epoch, self.ttl_ms());
        let outcome = flatten(tokio::time::timeout(limit, attempt).await);
        self.db_reachable = Some(outcome.is_ok());
        let now = self.now();
        match outcome {
            Ok(RenewOutcome::Renewed) => {
                self.renewed_at = Some(crate::clock::monotonic_now());
                self.machine.handle_renewed(now);
            }
            Ok(RenewOutcome::Lost(record)) => {
                tracing::warn!(epoch, holder = ?record.holder, new_epoch = record.epoch, "the coordinator lease was taken over");
                self.seen = Some(record);
                self.machine.handle_lost();
            }
            Err(e) => {
                tracing::warn!(epoch, "cannot renew the coordinator lease: {e}");
                self.machine.handle_failed(now);
            }
        }
        self.heartbeat(self.machine.state().role()).await;
    }

    async fn release(&self, epoch: i64) {
        if let Err(e) = self.spec.db.release_lease(&self.replica.id, epoch).await {
            tracing::warn!("cannot give the coordinator lease up: {e}");
        }
    }

    /// Writes this replica's heartbeat; the leader then forgets the replicas silent for
    /// longer than `forget_after_ms`.
    async fn heartbeat(&mut self, role: Role) {
        let epoch = self.view_epoch();
        let write =
            self.spec
                .db
                .replica_heartbeat(&self.replica.id, role.name(), epoch, &self.replica.url);
        let limit = Duration::from_millis(self.replica.timing.retry_ms);
        match flatten(tokio::time::timeout(limit, write).await) {
            Ok(()) => self.heartbeat_at = Some(crate::clock::monotonic_now()),
            Err(e) => {
                self.db_reachable = Some(false);
                tracing::debug!("cannot record this replica's heartbeat: {e}");
                return;
            }
        }
        if role != Role::Leader {
            return;
        }
        let prune = self.spec.db.forget_replicas(self.replica.forget_after_ms);
        match flatten(tokio::time::timeout(limit, prune).await) {
            Ok(0) => {}
            Ok(n) => tracing::info!(replicas = n, "forgot replicas silent for too long"),
            Err(e) => tracing::debug!("cannot forget silent replicas: {e}"),
        }
    }

    /// A clean stop: this replica's row leaves the list at once.
    async fn forget_self(&self) {
        let limit = Duration::from_millis(self.replica.timing.retry_ms);
        let remove = self.spec.db.remove_replica(&self.replica.id);
        if let Err(e) = flatten(tokio::time::timeout(limit, remove).await) {
            tracing::debug!("cannot remove this replica from the list: {e}");
        }
    }

    fn view_epoch(&self) -> i64 {
        match self.machine.state() {
            LeaseState::Leader { epoch, .. } => epoch,
            _ => self.seen.as_ref().map_or(0, |s| s.epoch),
        }
    }

    fn publish_view(&self) {
        let holds_lease = matches!(self.machine.state(), LeaseState::Leader { .. });
        let leader_url = if holds_lease {
            Some(self.replica.url.clone())
        } else {
            self.seen
                .as_ref()
                .filter(|s| s.holder.as_deref() != Some(self.replica.id.as_str()))
                .and_then(|s| s.live_holder())
                .and_then(|(_, url)| url.map(str::to_string))
        };
        self.spec.handle.shared().set_coordination(Coordination {
            replica_id: self.replica.id.clone(),
            leader: holds_lease && self.coordinator.is_some(),
            holds_lease,
            epoch: self.view_epoch(),
            leader_url,
            failovers: self.machine.failovers(),
            lease_renewed_at: self.renewed_at.filter(|_| holds_lease),
            heartbeat_at: self.heartbeat_at,
            database_reachable: self.db_reachable,
        });
    }
}

/// Starts the coordinator of `spec`, fenced with `replica` at `epoch`.
async fn start_coordinator(
    spec: CoordinatorSpec,
    replica: String,
    epoch: i64,
    cancel: watch::Receiver<bool>,
) -> Result<FleetTask, FleetStartError> {
    // The broker's sessions are gone or stale: presence comes back with the devices'
    // (retained) status messages.
    spec.db.set_all_offline().await?;
    crate::fleet::start(
        &spec.handle,
        spec.db.clone(),
        spec.clock.clone(),
        &spec.link,
        spec.public_url.clone(),
        spec.keys.clone(),
        StartLease {
            fence: Fence { replica, epoch },
            cancel,
        },
    )
    .await
}

/// A timed-out database call as an unavailable one.
fn flatten<T>(
    result: Result<Result<T, DbError>, tokio::time::error::Elapsed>,
) -> Result<T, DbError> {
    result.unwrap_or(Err(DbError::Query(sqlx::Error::PoolTimedOut)))
}

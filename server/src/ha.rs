//! The lease task: runs [`crate::lease::LeaseMachine`] against the database and starts or
//! stops the fleet coordinator with the lease (issue 15, `docs/ha.md`).
//!
//! Every replica runs one. The one holding the lease runs the coordinator, fenced with its
//! epoch; the others keep the [`Fleet`] handle detached (coordinator commands answer
//! [`crate::fleet::FleetError::NotLeader`]; the HTTP layer forwards them to the leader) and try
//! to take the lease whenever it expired. Each lease attempt or renewal also writes the
//! replica's heartbeat (`replicas`), and the outcome goes to [`Shared::set_coordination`] for
//! `/metrics`, status and forwarding. Time is `tokio::time::Instant` (paused-time tests drive
//! it); the lease's expiry is the database's clock.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::clock::Clock;
use crate::db::{AcquireOutcome, Db, DbError, Fence, LeaseRecord, RenewOutcome};
use crate::fleet::{Coordination, Fleet, FleetStartError, FleetTask, Snapshot};
use crate::lease::{LeaseAction, LeaseMachine, LeaseState, LeaseTiming, Millis, Role};
use crate::mqtt::LinkSpec;
use crate::trust::FleetTrust;

/// What the coordinator is started with when this replica takes the lease.
#[derive(Debug)]
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
}

/// The running lease task: stop it with [`HaTask::stop`].
#[derive(Debug)]
pub(crate) struct HaTask {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl HaTask {
    /// Stops the coordinator (if this replica leads), gives the lease up so a standby takes
    /// over at once, records the replica as stopped and ends the task.
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

struct Ha {
    spec: CoordinatorSpec,
    replica: ReplicaSpec,
    machine: LeaseMachine,
    origin: Instant,
    coordinator: Option<FleetTask>,
    /// The last lease row seen (who leads, at which epoch).
    seen: Option<LeaseRecord>,
}

/// Makes the first lease attempt now and, if it takes the lease, starts the coordinator (its
/// failure fails the start, as for the one-replica server); then keeps the lease in a task.
pub(crate) async fn start(
    spec: CoordinatorSpec,
    replica: ReplicaSpec,
) -> Result<HaTask, FleetStartError> {
    let origin = crate::clock::monotonic_now();
    let machine = LeaseMachine::new(replica.timing, 0, replica.force_first);
    let mut ha = Ha {
        spec,
        replica,
        machine,
        origin,
        coordinator: None,
        seen: None,
    };
    if let Some(LeaseAction::Acquire { force }) = ha.machine.poll_action(ha.now()) {
        ha.acquire(force).await;
    }
    if let Some(LeaseAction::StartCoordinator { epoch }) = ha.machine.poll_action(ha.now()) {
        match ha.start_coordinator(epoch).await {
            Ok(task) => ha.coordinator = Some(task),
            Err(e) => {
                ha.release(epoch).await;
                return Err(e);
            }
        }
    }
    ha.publish_view();
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(ha.run(stop_rx));
    Ok(HaTask {
        stop: stop_tx,
        task,
    })
}

/// Waits until `task` ends by itself (fenced); never with no coordinator.
async fn ended(task: &mut Option<FleetTask>) {
    match task {
        Some(task) => task.fenced().await,
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
        loop {
            while let Some(action) = self.machine.poll_action(self.now()) {
                self.perform(action).await;
            }
            self.publish_view();
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
                () = tokio::time::sleep(sleep) => {}
            }
        }
        if let Some(task) = self.coordinator.take() {
            task.stop().await;
        }
        if let LeaseState::Leader { epoch, .. } = self.machine.state() {
            self.release(epoch).await;
        }
        self.heartbeat(Role::Stopped).await;
    }

    async fn perform(&mut self, action: LeaseAction) {
        match action {
            LeaseAction::Acquire { force } => self.acquire(force).await,
            LeaseAction::Renew { epoch } => self.renew(epoch).await,
            LeaseAction::StartCoordinator { epoch } => match self.start_coordinator(epoch).await {
                Ok(task) => self.coordinator = Some(task),
                Err(e) => {
                    tracing::error!(
                        epoch,
                        "took the lease but cannot start the coordinator: {e}"
                    );
                    self.release(epoch).await;
                    self.machine.handle_lost();
                }
            },
            LeaseAction::StopCoordinator { epoch, reason } => {
                tracing::warn!(epoch, ?reason, "this replica stops coordinating");
                if let Some(task) = self.coordinator.take() {
                    task.stop().await;
                }
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
        let now = self.now();
        match outcome {
            Ok(AcquireOutcome::Acquired { epoch }) => {
                tracing::info!(replica = %self.replica.id, epoch, "took the coordinator lease");
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
        let now = self.now();
        match outcome {
            Ok(RenewOutcome::Renewed) => self.machine.handle_renewed(now),
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

    async fn start_coordinator(&self, epoch: i64) -> Result<FleetTask, FleetStartError> {
        let s = &self.spec;
        // The broker's sessions are gone or stale: presence comes back with the devices'
        // (retained) status messages.
        s.db.set_all_offline().await?;
        crate::fleet::start(
            &s.handle,
            s.db.clone(),
            s.clock.clone(),
            &s.link,
            s.public_url.clone(),
            s.keys.clone(),
            Fence {
                replica: self.replica.id.clone(),
                epoch,
            },
        )
        .await
    }

    async fn release(&self, epoch: i64) {
        if let Err(e) = self.spec.db.release_lease(&self.replica.id, epoch).await {
            tracing::warn!("cannot give the coordinator lease up: {e}");
        }
    }

    async fn heartbeat(&self, role: Role) {
        let epoch = self.view_epoch();
        let write =
            self.spec
                .db
                .replica_heartbeat(&self.replica.id, role.name(), epoch, &self.replica.url);
        let limit = Duration::from_millis(self.replica.timing.retry_ms);
        if let Err(e) = flatten(tokio::time::timeout(limit, write).await) {
            tracing::debug!("cannot record this replica's heartbeat: {e}");
        }
    }

    fn view_epoch(&self) -> i64 {
        match self.machine.state() {
            LeaseState::Leader { epoch, .. } => epoch,
            _ => self.seen.as_ref().map_or(0, |s| s.epoch),
        }
    }

    fn publish_view(&self) {
        let leader = matches!(self.machine.state(), LeaseState::Leader { .. });
        let leader_url = if leader {
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
            leader,
            epoch: self.view_epoch(),
            leader_url,
            failovers: self.machine.failovers(),
        });
    }
}

/// A timed-out database call as an unavailable one.
fn flatten<T>(
    result: Result<Result<T, DbError>, tokio::time::error::Elapsed>,
) -> Result<T, DbError> {
    result.unwrap_or(Err(DbError::Query(sqlx::Error::PoolTimedOut)))
}

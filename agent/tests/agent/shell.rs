//! The whole agent (issue 3): the shell loop with the real broker client, HTTP downloader,
//! journal, cache and files installer, against an in-process rumqttd on port 0, a fake fleet
//! server and a real HTTP artifact server.

use std::fs;
use std::sync::Arc;
use std::time::Duration;

use firmware_fixtures::TestKey;
use ota_agent::storage::{Fault, FaultyStorage};
use ota_agent::{Agent, AgentStatus};
use ota_core::digest::Digest;
use ota_core::update::Stage;
use ota_core::wire::{ExecutionState, FailurePhase, RejectCause, RollbackReason};

use crate::fleet::{
    CHUNK, Device, Fleet, PATIENCE, Proxy, Rel, broker, desired, last_state, options,
    rejected_cause, release, release_signed, settled,
};
use crate::util::{Mode, serve};

/// The in-process broker, or the one named by `OTA_TEST_SHELL_BROKER` (every shell test can run
/// against another broker that way).
fn broker_url() -> String {
    std::env::var("OTA_TEST_SHELL_BROKER").unwrap_or_else(|_| format!("mqtt://{}", broker()))
}

/// `fut`, bounded by [`PATIENCE`] of real time.
async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(PATIENCE, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

fn running(s: &AgentStatus) -> Option<Digest> {
    s.machine.running.as_ref().map(|r| r.digest)
}

fn known_good(s: &AgentStatus) -> Option<Digest> {
    s.machine.known_good.as_ref().map(|r| r.digest)
}

/// Full update, identical redeploy, duplicates and replays: shared by the rumqttd test and
/// the Mosquitto one.
async fn full_update_scenario(url: &str) {
    let fleet = Fleet::start(url).await;
    let v1 = release("1.0.0", 1, 100_000);
    let v2 = release("2.0.0", 2, 300_000);
    let server = serve(v2.artifact.clone(), Mode::Normal).await;
    // A health probe the new release passes (a command exiting 0).
    let health = "[health]\nkind = \"command\"\nprogram = \"true\"\ninterval = \"50ms\"\n";
    let dev = Device::new("full", url, &v1, health).await;
    let agent = Agent::start(dev.config.clone(), options()).await.unwrap();
    within(
        "online",
        fleet.wait("online status", |s| {
            s.status.get(&dev.id).is_some_and(|st| st.online)
        }),
    )
    .await;

    // The update: verify, download, install, trial (probe + heartbeat ack), commit.
    fleet
        .desire(&dev.id, &desired(1, &v2, vec![server.url()]))
        .await;
    fleet.wait_event(&dev.id, 1, "succeeded").await;
    assert_eq!(
        fleet.states(&dev.id, 1),
        ["notified", "installing", "trial", "succeeded"]
    );
    let size = v2.artifact.len() as u64;
    assert!(fleet.events(&dev.id).iter().any(|e| matches!(
        e.kind,
        ExecutionState::Downloading { done, total } if done == size && total == size
    )));
    let s = within("settled", agent.wait_for(|s| settled(s, 1))).await;
    assert_eq!(running(&s), Some(v2.digest()));
    assert_eq!(known_good(&s), Some(v2.digest()));
    assert_eq!(s.machine.security_floor, 2);
    assert_eq!(dev.current(), Some(v2.digest()));
    assert_eq!(s.installs, [(v2.digest(), false)]);
    assert_eq!(server.sent(), size);
    assert_eq!(s.bytes_downloaded, size);
    fleet
        .wait("reported v2 succeeded", |seen| {
            seen.reported.get(&dev.id).is_some_and(|r| {
                r.running.as_ref().map(|r| r.digest) == Some(v2.digest())
                    && r.known_good.as_ref().map(|r| r.digest) == Some(v2.digest())
                    && r.last_result
                        .as_ref()
                        .is_some_and(|o| o.state == ExecutionState::Succeeded)
                    && r.cached.contains(&v1.digest())
                    && r.cached.contains(&v2.digest())
                    && !r.inventory.arch.is_empty()
                    && r.agent_version == ota_agent::agent::AGENT_VERSION
            })
        })
        .await;

    // Identical redeploy: a success with zero bytes downloaded and nothing installed.
    fleet
        .desire(&dev.id, &desired(2, &v2, vec![server.url()]))
        .await;
    fleet.wait_event(&dev.id, 2, "skipped-identical").await;
    let s = within("settled 2", agent.wait_for(|s| settled(s, 2))).await;
    assert_eq!(
        server.sent(),
        size,
        "an identical redeploy downloads nothing"
    );
    assert_eq!(s.installs.len(), 1);

    // A QoS 1 duplicate and a replayed older generation: ignored.
    let before = s.desired_received;
    fleet
        .publish_desired_bytes(
            &dev.id,
            ota_core::wire::WireMessage::to_cbor(&desired(2, &v2, vec![server.url()])),
            false,
        )
        .await;
    fleet
        .publish_desired_bytes(
            &dev.id,
            ota_core::wire::WireMessage::to_cbor(&desired(1, &v2, vec![server.url()])),
            false,
        )
        .await;
    let s = within(
        "duplicates received",
        agent.wait_for(|s| s.desired_received >= before + 2),
    )
    .await;
    assert_eq!(s.installs.len(), 1);
    assert_eq!(s.machine.last_generation, 2);
    assert_eq!(fleet.states(&dev.id, 2), ["skipped-identical"]);
    assert_eq!(server.sent(), size);

    agent.shutdown().await.unwrap();
    within(
        "offline status",
        fleet.wait("offline status", |s| {
            s.status.get(&dev.id).is_some_and(|st| !st.online)
        }),
    )
    .await;
    fleet.clear(&dev.id).await;
}

#[tokio::test]
async fn a_full_update_over_mqtt_commits_and_an_identical_redeploy_downloads_nothing() {
    full_update_scenario(&broker_url()).await;
}

#[tokio::test]
#[ignore = "needs Mosquitto: set OTA_TEST_MQTT_URL"]
async fn against_mosquitto_a_full_update_commits_and_an_identical_redeploy_downloads_nothing() {
    let url = std::env::var("OTA_TEST_MQTT_URL")
        .expect("set OTA_TEST_MQTT_URL=mqtt://host:port to run this test");
    full_update_scenario(&url).await;
}

#[tokio::test]
async fn a_duplicated_desired_state_installs_once_even_across_a_restart() {
    let url = broker_url();
    let fleet = Fleet::start(&url).await;
    let v1 = release("1.0.0", 1, 50_000);
    let v2 = release("2.0.0", 2, 200_000);
    let server = serve(v2.artifact.clone(), Mode::Normal).await;
    let dev = Device::new("dup", &url, &v1, "").await;
    let agent = Agent::start(dev.config.clone(), options()).await.unwrap();
    within("connected", agent.wait_for(|s| s.connected)).await;

    // The same desired state delivered twice in a row (QoS 1 duplicate).
    let d = desired(1, &v2, vec![server.url()]);
    fleet.desire(&dev.id, &d).await;
    fleet.desire(&dev.id, &d).await;
    fleet.wait_event(&dev.id, 1, "succeeded").await;
    let s = within(
        "settled",
        agent.wait_for(|s| settled(s, 1) && s.desired_received >= 2),
    )
    .await;
    assert_eq!(s.installs, [(v2.digest(), false)]);
    assert_eq!(server.sent(), v2.artifact.len() as u64);
    agent.shutdown().await.unwrap();

    // After a restart the same desired state is replayed: acted on already, ignored.
    let agent = Agent::start(dev.config.clone(), options()).await.unwrap();
    within("connected again", agent.wait_for(|s| s.connected)).await;
    fleet.desire(&dev.id, &d).await;
    let s = within(
        "replay received",
        agent.wait_for(|s| s.desired_received >= 1),
    )
    .await;
    assert!(s.installs.is_empty());
    assert_eq!(running(&s), Some(v2.digest()));
    // (The restarted agent republishes its last final result: reports are idempotent.)
    let installing = fleet.states(&dev.id, 1);
    assert_eq!(
        installing.iter().filter(|s| **s == "installing").count(),
        1,
        "{installing:?}"
    );
    assert_eq!(server.seen().len(), 1);
    agent.shutdown().await.unwrap();
    fleet.clear(&dev.id).await;
}

#[tokio::test]
async fn refused_releases_and_garbage_are_reported_and_nothing_is_downloaded() {
    let url = broker_url();
    let fleet = Fleet::start(&url).await;
    let v1 = release("1.0.0", 1, 50_000);
    let v2 = release("2.0.0", 2, 120_000);
    let server = serve(v2.artifact.clone(), Mode::Normal).await;
    let dev = Device::new("reject", &url, &v1, "").await;
    let agent = Agent::start(dev.config.clone(), options()).await.unwrap();
    within("connected", agent.wait_for(|s| s.connected)).await;

    // Signed by a key the device does not trust.
    let unknown = release_signed("2.0.0", 2, 120_000, &[TestKey::Unknown]);
    fleet
        .desire(&dev.id, &desired(1, &unknown, vec![server.url()]))
        .await;
    let e = fleet.wait_event(&dev.id, 1, "rejected").await;
    assert_eq!(rejected_cause(&e), Some(RejectCause::UnknownKey));

    // A trusted key id with a broken signature.
    let mut bad = v2.clone();
    let n = bad.signed.len();
    bad.signed[n - 5] ^= 0x01;
    fleet
        .desire(&dev.id, &desired(2, &bad, vec![server.url()]))
        .await;
    let e = fleet.wait_event(&dev.id, 2, "rejected").await;
    assert_eq!(rejected_cause(&e), Some(RejectCause::BadSignature));

    // An older security version (anti-rollback) is refused too.
    let old = release("0.9.0", 0, 10_000);
    fleet
        .desire(&dev.id, &desired(3, &old, vec![server.url()]))
        .await;
    let e = fleet.wait_event(&dev.id, 3, "rejected").await;
    assert_eq!(rejected_cause(&e), Some(RejectCause::Downgrade));

    // Garbage on the desired topic: logged, reported as generation 0, the agent goes on.
    fleet
        .publish_desired_bytes(&dev.id, b"\xff\x00garbage".to_vec(), false)
        .await;
    let e = fleet.wait_event(&dev.id, 0, "rejected").await;
    assert_eq!(rejected_cause(&e), Some(RejectCause::Malformed));
    let s = within(
        "garbage counted",
        agent.wait_for(|s| s.malformed_payloads >= 1),
    )
    .await;
    assert_eq!(
        server.seen(),
        [],
        "nothing is downloaded for a refused release"
    );
    assert!(s.installs.is_empty());
    assert_eq!(running(&s), Some(v1.digest()));

    // Still alive: a good release goes through.
    fleet
        .desire(&dev.id, &desired(4, &v2, vec![server.url()]))
        .await;
    fleet.wait_event(&dev.id, 4, "succeeded").await;
    agent.shutdown().await.unwrap();
    fleet.clear(&dev.id).await;
}

/// The trial deadline (10 minutes) with paused tokio time: the release never reaches the
/// fleet server (no heartbeat ack), the network goes away (artifact server stopped, broker
/// cut), the deadline passes, the known-good release is reinstalled from the cache, and the
/// rollback is reported once the broker is back. The network (broker proxy, fleet server,
/// HTTP server, the agent's MQTT link) runs on a second runtime with real time.
#[test]
fn a_trial_timeout_rolls_back_from_the_cache_without_network_and_reports_when_back() {
    let io = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let io_h = io.handle().clone();
    rt.block_on(async move {
        let target = broker();
        let proxy = io_h.spawn(Proxy::start(target)).await.unwrap();
        let url = format!("mqtt://{target}");
        let fleet = io_h
            .spawn(async move { Fleet::start(&url).await })
            .await
            .unwrap();
        fleet
            .acking
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let v1 = release("1.0.0", 1, 60_000);
        let v2 = release("2.0.0", 2, 150_000);
        let body = v2.artifact.clone();
        let server = io_h
            .spawn(async move { serve(body, Mode::Normal).await })
            .await
            .unwrap();
        let dev = Device::new("trial", &proxy.url(), &v1, "").await;
        let agent = Agent::start(
            dev.config.clone(),
            options().with_mqtt_runtime(io_h.clone()),
        )
        .await
        .unwrap();
        within("connected", agent.wait_for(|s| s.connected)).await;
        fleet
            .desire(&dev.id, &desired(1, &v2, vec![server.url()]))
            .await;
        within("trial", agent.wait_for(|s| s.machine.stage == Stage::Trial)).await;
        fleet.wait_event(&dev.id, 1, "trial").await;
        assert_eq!(dev.current(), Some(v2.digest()));

        // No network at all from here on.
        server.stop();
        proxy.cut();
        within("disconnected", agent.wait_for(|s| !s.connected)).await;

        tokio::time::pause();
        tokio::time::advance(Duration::from_secs(11 * 60)).await;
        let s = agent.wait_for(|s| settled(s, 1)).await;
        tokio::time::resume();
        assert_eq!(last_state(&s), "rolled-back");
        match &s.machine.last_result.as_ref().unwrap().state {
            ExecutionState::RolledBack { reason, .. } => {
                assert_eq!(*reason, RollbackReason::ServerUnreachable)
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(running(&s), Some(v1.digest()));
        assert_eq!(known_good(&s), Some(v1.digest()));
        assert_eq!(s.installs, [(v2.digest(), false), (v1.digest(), true)]);
        assert_eq!(dev.current(), Some(v1.digest()));
        assert!(
            fleet
                .events(&dev.id)
                .iter()
                .all(|e| e.kind.name() != "rolled-back"),
            "reported while offline?"
        );
        assert!(s.outbox > 0, "the rollback report waits in the outbox");

        // The broker comes back: the queued report is delivered.
        proxy.restore();
        let e = fleet.wait_event(&dev.id, 1, "rolled-back").await;
        assert!(matches!(e.kind, ExecutionState::RolledBack { .. }));
        fleet
            .wait("reported rolled back", |seen| {
                seen.reported.get(&dev.id).is_some_and(|r| {
                    r.running.as_ref().map(|r| r.digest) == Some(v1.digest())
                        && r.last_result
                            .as_ref()
                            .is_some_and(|o| o.state.name() == "rolled-back")
                })
            })
            .await;
        assert_eq!(server.seen().len(), 1, "the rollback needed no download");
        agent.shutdown().await.unwrap();
        fleet.clear(&dev.id).await;
    });
}

#[tokio::test]
async fn a_low_battery_defers_the_update_until_the_charger_is_plugged_in() {
    let url = broker_url();
    let fleet = Fleet::start(&url).await;
    let v1 = release("1.0.0", 1, 50_000);
    let v2 = release("2.0.0", 2, 100_000);
    let server = serve(v2.artifact.clone(), Mode::Normal).await;
    let extra = r#"
[power]
min_battery_percent = 20
require_charging_below_percent = 50
power_supply_path = "{root}/power"
recheck_interval = "1h"
"#;
    let dev = Device::new("power", &url, &v1, extra).await;
    let power = dev.root().join("power");
    let bat = power.join("BAT0");
    let ac = power.join("AC");
    fs::create_dir_all(&bat).unwrap();
    fs::create_dir_all(&ac).unwrap();
    fs::write(bat.join("type"), "Battery\n").unwrap();
    fs::write(bat.join("capacity"), "10\n").unwrap();
    fs::write(bat.join("status"), "Discharging\n").unwrap();
    fs::write(ac.join("type"), "Mains\n").unwrap();
    fs::write(ac.join("online"), "0\n").unwrap();

    let agent = Agent::start(dev.config.clone(), options()).await.unwrap();
    within("connected", agent.wait_for(|s| s.connected)).await;
    fleet
        .desire(&dev.id, &desired(1, &v2, vec![server.url()]))
        .await;
    let e = fleet.wait_event(&dev.id, 1, "deferred-power").await;
    match e.kind {
        ExecutionState::DeferredPower { reading } => {
            assert_eq!(reading.battery_percent, Some(10));
            assert!(!reading.charging && !reading.mains_online);
        }
        other => panic!("{other:?}"),
    }
    let s = agent.status();
    assert_eq!(s.machine.stage, Stage::DeferredPower);
    assert!(server.seen().is_empty(), "nothing downloaded while gated");

    // Low but charging (15 % < 20 %, charger online): the update proceeds at once, without
    // waiting for the hourly re-check.
    fs::write(bat.join("capacity"), "15\n").unwrap();
    fs::write(bat.join("status"), "Charging\n").unwrap();
    fs::write(ac.join("online"), "1\n").unwrap();
    fleet.wait_event(&dev.id, 1, "succeeded").await;
    let s = within("settled", agent.wait_for(|s| settled(s, 1))).await;
    assert_eq!(running(&s), Some(v2.digest()));
    assert_eq!(
        s.machine.power.and_then(|p| p.battery_percent),
        Some(15),
        "the reading is reported"
    );
    agent.shutdown().await.unwrap();
    fleet.clear(&dev.id).await;
}

#[tokio::test]
async fn a_download_cut_by_an_agent_crash_resumes_after_the_restart_refetching_at_most_a_chunk() {
    let url = broker_url();
    let fleet = Fleet::start(&url).await;
    let v1 = release("1.0.0", 1, 50_000);
    let v2 = release("2.0.0", 2, 700_000);
    let size = v2.artifact.len() as u64;
    // The server stalls mid-body, in the middle of a chunk.
    let cut_at = 5 * CHUNK + 1234;
    let server = serve(v2.artifact.clone(), Mode::StallAfter(cut_at)).await;
    let dev = Device::new("resume", &url, &v1, "").await;
    let agent = Agent::start(dev.config.clone(), options()).await.unwrap();
    within("connected", agent.wait_for(|s| s.connected)).await;
    fleet
        .desire(&dev.id, &desired(1, &v2, vec![server.url()]))
        .await;

    let partial = dev
        .data()
        .join(format!("cache/partial/{}.part", v2.digest()));
    within("partial written", async {
        while fs::metadata(&partial).map(|m| m.len()).unwrap_or(0) < (5 * CHUNK) as u64
            || server.sent() < cut_at as u64
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // The agent dies mid-body (the bytes after the last whole chunk were only in memory).
    agent.kill();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let kept = fs::metadata(&partial).unwrap().len();
    assert_eq!(kept, (5 * CHUNK) as u64);

    server.set_mode(Mode::Normal);
    let agent = Agent::start(dev.config.clone(), options()).await.unwrap();
    fleet.wait_event(&dev.id, 1, "succeeded").await;
    let s = within("settled", agent.wait_for(|s| settled(s, 1))).await;
    assert_eq!(running(&s), Some(v2.digest()));
    let seen = server.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[1].range.as_deref(), Some(&*format!("bytes={kept}-")));
    assert_eq!(seen[1].if_range.as_deref(), Some("\"v1\""));
    assert_eq!(seen[1].status, 206);
    let refetched = server.sent() - size;
    assert!(refetched <= CHUNK as u64, "re-fetched {refetched} bytes");
    assert_eq!(s.bytes_downloaded, size - kept);
    agent.shutdown().await.unwrap();
    fleet.clear(&dev.id).await;
}

/// Runs the whole update on a [`FaultyStorage`] that injects `fault` at write `n`, until it
/// settles or the power is gone; then a fresh agent recovers on the same directory and the
/// device must be in a good state.
async fn crash_run(
    fleet: &Fleet,
    url: &str,
    server_url: &str,
    v1: &Rel,
    v2: &Rel,
    fault: Option<(u64, Fault)>,
) -> u64 {
    let label = match fault {
        None => "clean".to_owned(),
        Some((n, Fault::Fail)) => format!("fail-{n}"),
        Some((n, _)) => format!("power-{n}"),
    };
    let dev = Device::new(&format!("crash-{label}"), url, v1, "").await;
    fleet
        .desire(&dev.id, &desired(1, v2, vec![server_url.to_owned()]))
        .await;
    let storage = Arc::new(match fault {
        Some((n, f)) => FaultyStorage::with_fault(n, f),
        None => FaultyStorage::new(),
    });
    let started = Agent::start(dev.config.clone(), options().with_storage(storage.clone())).await;
    if let Ok(agent) = started {
        within(&format!("{label}: faulty run"), async {
            loop {
                if settled(&agent.status(), 1) || storage.is_powered_off() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        agent.kill();
    }
    let writes = storage.mutations();
    if fault.is_none() {
        assert_eq!(
            last_state(&settled_status(&dev, "boot-1").await),
            "succeeded"
        );
        fleet.clear(&dev.id).await;
        return writes;
    }
    // A power loss is a reboot; a failed write is not.
    let boot = match fault {
        Some((_, Fault::PowerLoss { .. })) => "boot-2",
        _ => "boot-1",
    };
    let s = settled_status(&dev, boot).await;
    check_device(&dev, &s, v1, v2, &label);
    fleet.clear(&dev.id).await;
    writes
}

/// Starts a fresh agent (real file system) on `dev` and returns its status once settled.
async fn settled_status(dev: &Device, boot: &str) -> AgentStatus {
    let agent = Agent::start(dev.config.clone(), options().with_boot_id(boot))
        .await
        .unwrap_or_else(|e| panic!("{}: recovery failed to start: {e}", dev.id));
    let s = within(
        &format!("{}: recovery", dev.id),
        agent.wait_for(|s| settled(s, 1)),
    )
    .await;
    agent.kill();
    s
}

fn check_device(dev: &Device, s: &AgentStatus, v1: &Rel, v2: &Rel, label: &str) {
    let m = &s.machine;
    let kg = m.known_good.as_ref().map(|r| r.digest);
    let run = m.running.as_ref().map(|r| r.digest);
    let old = Some(v1.digest());
    let new = Some(v2.digest());
    assert!(
        (run == old && kg == old) || (run == new && kg == new),
        "{label}: running {run:?}, known-good {kg:?}, last {:?}",
        m.last_result
    );
    // A runnable known-good release: cached and intact.
    let kg = kg.unwrap();
    let bytes = fs::read(dev.data().join("cache").join(kg.to_string()))
        .unwrap_or_else(|e| panic!("{label}: known-good not cached: {e}"));
    assert_eq!(Digest::of(&bytes), kg, "{label}: known-good corrupt");
    // Every cache entry re-hashes to its name.
    for entry in fs::read_dir(dev.data().join("cache")).unwrap() {
        let entry = entry.unwrap();
        let Some(name) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<Digest>().ok())
        else {
            continue;
        };
        let bytes = fs::read(entry.path()).unwrap();
        assert_eq!(
            Digest::of(&bytes),
            name,
            "{label}: cache entry {name} corrupt"
        );
    }
    // The application runs what the journal says, and its files are intact.
    let run = run.unwrap();
    assert_eq!(dev.current(), Some(run), "{label}: current symlink");
    let installed = fs::read(dev.app().join("current")).unwrap();
    assert_eq!(
        Digest::of(&installed),
        run,
        "{label}: installed release corrupt"
    );
    // The journal reads back.
    let report = ota_agent::report::StateReport::read_dir(&dev.data()).unwrap();
    assert!(report.state.is_some(), "{label}: no journal");
}

async fn crash_safety(fault: impl Fn(u64) -> Fault) {
    let url = broker_url();
    let fleet = Fleet::start(&url).await;
    let v1 = release("1.0.0", 1, 40_000);
    // Three chunks and a bit: several appends, a resumable partial.
    let v2 = release("2.0.0", 2, 3 * CHUNK + 999);
    let server = serve(v2.artifact.clone(), Mode::Normal).await;
    let total = crash_run(&fleet, &url, &server.url(), &v1, &v2, None).await;
    assert!(total > 20, "a whole update writes more than {total} times");
    eprintln!("crash safety: injecting a fault at each of {total} writes");
    for n in 1..=total {
        crash_run(&fleet, &url, &server.url(), &v1, &v2, Some((n, fault(n)))).await;
    }
}

#[tokio::test]
async fn crash_safety_a_write_failing_at_every_point_of_an_update_leaves_a_good_device() {
    crash_safety(|_| Fault::Fail).await;
}

#[tokio::test]
async fn crash_safety_a_power_loss_at_every_point_of_an_update_leaves_a_good_device() {
    crash_safety(|_| Fault::PowerLoss {
        drop_unsynced: true,
    })
    .await;
}

/// Issue 19.8: a rollback re-verifies the known-good artifact. A damaged cache entry is never
/// installed: the rollback fails `verify` (reported), the device keeps running what it ran,
/// and the damaged entry leaves the cache.
#[tokio::test]
async fn issue19_a_corrupt_known_good_is_refused_at_rollback_and_reported() {
    let url = broker_url();
    let fleet = Fleet::start(&url).await;
    let v1 = release("1.0.0", 1, 50_000);
    let v2 = release("2.0.0", 2, 80_000);
    let server = serve(v2.artifact.clone(), Mode::Normal).await;
    // A health probe that never passes: the trial times out and rolls back.
    let health = "[health]\nkind = \"command\"\nprogram = \"false\"\ninterval = \"50ms\"\n";
    let dev = Device::new("kgrot", &url, &v1, health).await;
    let opts = options().with_machine_tweak(|c| {
        c.trial_timeout = Duration::from_millis(300);
        c.probe_interval = Duration::from_millis(50);
    });
    let agent = Agent::start(dev.config.clone(), opts).await.unwrap();
    within("connected", agent.wait_for(|s| s.connected)).await;
    // Bit rot in the known-good artifact, same length.
    let kg_file = dev.data().join("cache").join(v1.digest().to_string());
    let mut bytes = fs::read(&kg_file).unwrap();
    bytes[100] ^= 0xff;
    fs::write(&kg_file, &bytes).unwrap();

    fleet
        .desire(&dev.id, &desired(1, &v2, vec![server.url()]))
        .await;
    let e = fleet.wait_event(&dev.id, 1, "failed").await;
    assert!(
        matches!(&e.kind, ExecutionState::Failed { phase: FailurePhase::Verify, reason }
            if reason.contains("known-good 1.0.0")),
        "{:?}",
        e.kind
    );
    let s = within("settled", agent.wait_for(|s| settled(s, 1))).await;
    assert_eq!(s.installs, [(v2.digest(), false), (v1.digest(), true)]);
    assert_eq!(dev.current(), Some(v2.digest()), "nothing was installed");
    assert_eq!(running(&s), Some(v2.digest()));
    assert!(!s.machine.cache.iter().any(|r| r.digest == v1.digest()));
    agent.shutdown().await.unwrap();
    assert!(!kg_file.exists(), "the damaged entry was evicted");
    fleet.clear(&dev.id).await;
}

/// Updates `dev` (factory `v1`) to `v2` under `generation`, then stops the agent.
async fn updated(fleet: &Fleet, dev: &Device, v2: &Rel, url: String, generation: u64) {
    let agent = Agent::start(dev.config.clone(), options()).await.unwrap();
    within("connected", agent.wait_for(|s| s.connected)).await;
    fleet
        .desire(&dev.id, &desired(generation, v2, vec![url]))
        .await;
    fleet.wait_event(&dev.id, generation, "succeeded").await;
    within("settled", agent.wait_for(|s| settled(s, generation))).await;
    agent.shutdown().await.unwrap();
}

/// Issue 19.7: both journal copies removed. The floor record keeps the security floor, the
/// running and known-good releases and the generation: the factory release is not re-seeded
/// and the device does not report a version it is not running.
#[tokio::test]
async fn issue19_journal_loss_keeps_the_floor_and_the_running_release() {
    let url = broker_url();
    let fleet = Fleet::start(&url).await;
    let v1 = release("1.0.0", 1, 30_000);
    let v2 = release("2.0.0", 124, 40_000);
    let server = serve(v2.artifact.clone(), Mode::Normal).await;
    let dev = Device::new("jloss", &url, &v1, "").await;
    updated(&fleet, &dev, &v2, server.url(), 3).await;
    for f in ["state", "state.prev"] {
        fs::remove_file(dev.data().join(f)).unwrap();
    }
    let agent = Agent::start(dev.config.clone(), options()).await.unwrap();
    let s = agent.status();
    assert_eq!(s.machine.security_floor, 124);
    assert_eq!(running(&s), Some(v2.digest()));
    assert_eq!(known_good(&s), Some(v2.digest()));
    assert_eq!(s.machine.last_generation, 3);
    within("connected", agent.wait_for(|s| s.connected)).await;
    fleet
        .wait("reported v2 after the journal loss", |seen| {
            seen.reported.get(&dev.id).is_some_and(|r| {
                r.running.as_ref().map(|r| r.digest) == Some(v2.digest()) && r.security_floor == 124
            })
        })
        .await;
    // The factory release (security version 1) is still refused as a downgrade.
    fleet
        .desire(&dev.id, &desired(4, &v1, vec![server.url()]))
        .await;
    let e = fleet.wait_event(&dev.id, 4, "rejected").await;
    assert_eq!(rejected_cause(&e), Some(RejectCause::Downgrade));
    agent.shutdown().await.unwrap();
    fleet.clear(&dev.id).await;
}

/// Issue 19.7: both journal copies damaged and no floor record. The agent does not crash (a
/// silent restart loop under `Restart=always`): it connects, reports
/// `rejected{journal-damaged}`, answers desired states the same way, and leaves the damaged
/// files alone.
#[tokio::test]
async fn issue19_a_damaged_journal_is_reported_over_mqtt() {
    let url = broker_url();
    let fleet = Fleet::start(&url).await;
    let v1 = release("1.0.0", 1, 30_000);
    let v2 = release("2.0.0", 2, 40_000);
    let server = serve(v2.artifact.clone(), Mode::Normal).await;
    let dev = Device::new("jdamage", &url, &v1, "").await;
    updated(&fleet, &dev, &v2, server.url(), 1).await;
    for f in ["state", "state.prev"] {
        fs::write(dev.data().join(f), b"OTAJ garbage").unwrap();
    }
    for f in ["floor", "floor.prev"] {
        let _ = fs::remove_file(dev.data().join(f));
    }
    let agent = Agent::start(dev.config.clone(), options()).await.unwrap();
    within("connected", agent.wait_for(|s| s.connected)).await;
    let damaged = |r: &ota_core::wire::ReportedState| {
        r.last_result.as_ref().is_some_and(|o| {
            matches!(
                o.state,
                ExecutionState::Rejected {
                    cause: RejectCause::JournalDamaged,
                    ..
                }
            )
        })
    };
    fleet
        .wait("reported journal-damaged", |seen| {
            seen.reported.get(&dev.id).is_some_and(damaged)
        })
        .await;
    fleet
        .desire(&dev.id, &desired(2, &v2, vec![server.url()]))
        .await;
    let e = fleet.wait_event(&dev.id, 2, "rejected").await;
    assert_eq!(rejected_cause(&e), Some(RejectCause::JournalDamaged));
    let s = agent.status();
    assert!(s.installs.is_empty());
    assert!(!agent.is_finished(), "the agent stays up");
    agent.shutdown().await.unwrap();
    assert_eq!(fs::read(dev.data().join("state")).unwrap(), b"OTAJ garbage");
    fleet.clear(&dev.id).await;
}

/// Issue 19.2: `ota-agent resync` ([`ota_agent::resync`]) resets the generation watermark, so a device whose watermark
/// is above anything the server sends acts on desired states again.
#[tokio::test]
async fn issue19_resync_lets_a_device_follow_a_server_that_restarted_its_generations() {
    let url = broker_url();
    let fleet = Fleet::start(&url).await;
    let v1 = release("1.0.0", 1, 30_000);
    let v2 = release("2.0.0", 2, 40_000);
    let v3 = release("3.0.0", 3, 50_000);
    let server = serve(v2.artifact.clone(), Mode::Normal).await;
    let server3 = serve(v3.artifact.clone(), Mode::Normal).await;
    let dev = Device::new("resync", &url, &v1, "").await;
    updated(&fleet, &dev, &v2, server.url(), 1000).await;
    // The fleet server starts over (its database restored from an old backup): generation 1.
    fleet.clear(&dev.id).await;
    let data = dev.data();
    let fs_shared = ota_agent::storage::FsStorage::shared;
    assert_eq!(
        ota_agent::resync::watermark(fs_shared(), &data).unwrap(),
        1000
    );
    // (`ota-agent resync --yes` calls this after its confirmation.)
    assert_eq!(ota_agent::resync::resync(fs_shared(), &data).unwrap(), 1000);
    assert_eq!(ota_agent::resync::watermark(fs_shared(), &data).unwrap(), 0);

    let agent = Agent::start(dev.config.clone(), options()).await.unwrap();
    let s = agent.status();
    assert_eq!(s.machine.last_generation, 0);
    assert_eq!(s.machine.security_floor, 2, "the floor is kept");
    within("connected", agent.wait_for(|s| s.connected)).await;
    fleet
        .desire(&dev.id, &desired(1, &v3, vec![server3.url()]))
        .await;
    fleet.wait_event(&dev.id, 1, "succeeded").await;
    agent.shutdown().await.unwrap();
    fleet.clear(&dev.id).await;
}

/// Issue 15: an agent with several broker URLs fails over between them. The first is
/// unreachable, so it connects through the second; when that one goes away, it comes back
/// through the first, and a desired state published meanwhile still reaches it.
#[tokio::test]
async fn issue15_the_agent_fails_over_between_its_broker_urls() {
    let target = broker();
    let (first, second) = (Proxy::start(target).await, Proxy::start(target).await);
    first.cut();
    let url = format!("mqtt://{target}");
    let fleet = Fleet::start(&url).await;
    let v1 = release("1.0.0", 1, 50_000);
    let v2 = release("2.0.0", 2, 60_000);
    let server = serve(v2.artifact.clone(), Mode::Normal).await;
    let mut dev = Device::new("failover", &first.url(), &v1, "").await;
    dev.config.broker.failover_urls = vec![second.url()];
    let agent = Agent::start(dev.config.clone(), options()).await.unwrap();
    within("connected", agent.wait_for(|s| s.connected)).await;
    assert_eq!(first.forwarded(), 0, "the first broker is unreachable");
    assert_eq!(second.forwarded(), 1);

    first.restore();
    second.cut();
    within("disconnected", agent.wait_for(|s| !s.connected)).await;
    fleet
        .desire(&dev.id, &desired(1, &v2, vec![server.url()]))
        .await;
    within("connected again", agent.wait_for(|s| s.connected)).await;
    assert_eq!(first.forwarded(), 1, "back through the first broker");
    fleet.wait_event(&dev.id, 1, "succeeded").await;
    assert_eq!(running(&agent.status()), Some(v2.digest()));
    agent.shutdown().await.unwrap();
    fleet.clear(&dev.id).await;
}

use std::fs;
use std::time::Duration;

use ota_agent::clock::ShellClock;

use ota_agent::health::{HealthError, HealthProbe};
use ota_agent::process::CommandSpec;

use crate::util::{Mode, serve, tempdir};

const SEC: Duration = Duration::from_secs(1);

#[tokio::test]
async fn command_probe_passes_on_exit_zero_only() {
    let now = ShellClock::file_system_now();
    let ok = HealthProbe::command(CommandSpec::new("true"), 10 * SEC);
    ok.check(now, now).await.unwrap();

    let bad = HealthProbe::command(
        CommandSpec::new("sh").with_args(["-c", "echo unhealthy >&2; exit 2"]),
        10 * SEC,
    );
    match bad.check(now, now).await.unwrap_err() {
        HealthError::CommandFailed { stderr_tail, .. } => assert_eq!(stderr_tail, "unhealthy\n"),
        other => panic!("{other}"),
    }

    let missing = HealthProbe::command(CommandSpec::new("/nonexistent/probe"), 10 * SEC);
    assert!(matches!(
        missing.check(now, now).await,
        Err(HealthError::Spawn { .. })
    ));
}

#[tokio::test]
async fn http_probe_wants_a_2xx() {
    let server = serve(Vec::new(), Mode::Normal).await;
    let now = ShellClock::file_system_now();
    HealthProbe::http(format!("http://{}/healthz", server.addr), 10 * SEC)
        .unwrap()
        .check(now, now)
        .await
        .unwrap();
    let sick = HealthProbe::http(format!("http://{}/sick", server.addr), 10 * SEC).unwrap();
    assert!(matches!(
        sick.check(now, now).await,
        Err(HealthError::HttpStatus(503))
    ));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let down = HealthProbe::http(format!("http://{addr}/healthz"), 10 * SEC).unwrap();
    assert!(matches!(
        down.check(now, now).await,
        Err(HealthError::Http(_))
    ));
}

#[tokio::test]
async fn heartbeat_probe_wants_a_fresh_touch_after_activation() {
    let dir = tempdir();
    let beat = dir.path().join("heartbeat");
    let probe = HealthProbe::heartbeat(&beat, 30 * SEC);
    let t0 = ShellClock::file_system_now();
    assert!(matches!(
        probe.check(t0, t0).await,
        Err(HealthError::HeartbeatMissing { .. })
    ));

    fs::write(&beat, b"").unwrap();
    let mtime = fs::metadata(&beat).unwrap().modified().unwrap();
    // Touched after the activation and recently: healthy.
    probe
        .check(mtime - 5 * SEC, mtime + 10 * SEC)
        .await
        .unwrap();
    // An mtime in the future of the check (clock step) counts as fresh.
    probe.check(mtime - 5 * SEC, mtime - SEC).await.unwrap();
    // Touched before the activation: the old release touched it.
    assert!(matches!(
        probe.check(mtime + SEC, mtime + 2 * SEC).await,
        Err(HealthError::HeartbeatBeforeActivation { .. })
    ));
    // Not touched for longer than the freshness window.
    match probe.check(mtime - 5 * SEC, mtime + 60 * SEC).await {
        Err(HealthError::HeartbeatStale { age, .. }) => assert_eq!(age, 60 * SEC),
        other => panic!("{other:?}"),
    }
}

//! Issue 7: threats end to end (`docs/security.md` names each row's test).

use std::path::Path;

use firmware_fixtures::pki::TestCa;
use ota_core::update::Stage;
use ota_core::wire::{ExecutionState, FailurePhase, RejectCause};
use ota_demo::firmware::{BuildSpec, FirmwareTeam, HARDWARE_CLASS};
use ota_demo::lab::{LabOptions, unix_now};
use serde_json::json;

use crate::world::{Backend, World, suite, wait_device};

suite!(
    compromised_fleet_server_cannot_install_unsigned_or_downgrade,
    issue7_artifacts_over_https_with_a_pinned_ca,
    issue7_an_artifact_server_of_another_ca_is_refused,
);

/// A compromised fleet server (anyone with its MQTT rights) publishes desired states of its
/// own making: a release signed by a key the device does not trust, a genuine release for
/// other hardware, the genuine old release below the security floor, and garbage. The device
/// rejects each with its cause, downloads nothing and keeps running what it runs.
async fn compromised_fleet_server_cannot_install_unsigned_or_downgrade(backend: Backend) {
    let w = World::start(backend, 1, |_| {}).await;
    let size = w.lab.factory().image.len();
    let team = w.lab.team();
    let v2 = team.build_with(&BuildSpec {
        version: "2.0.0",
        healthy: true,
        size,
        created: unix_now(),
        security_version: 2,
        hardware: &[HARDWARE_CLASS],
    });
    w.lab.api().publish(&v2).await.unwrap();
    let id = w.rollout(&v2, &[100], json!({})).await;
    w.finished(id).await;
    w.converged(&v2.digest).await;
    let device = &w.lab.devices()[0];
    assert_eq!(device.status().unwrap().machine.security_floor, 2);

    let attacker = FirmwareTeam::new().unwrap();
    let unsigned = attacker.build("9.9.9", true, size, unix_now());
    let other_hw = team.build_with(&BuildSpec {
        version: "2.1.0",
        healthy: true,
        size,
        created: unix_now(),
        security_version: 2,
        hardware: &["some-other-board"],
    });
    let hostile = [
        (unsigned.release, RejectCause::UnknownKey),
        (other_hw.release, RejectCause::IncompatibleHardware),
        (w.lab.factory().release.clone(), RejectCause::Downgrade),
        (b"not a release".to_vec(), RejectCause::Malformed),
    ];
    let client = w.attacker("attacker");
    let bytes_before = device.bytes_downloaded();
    for (n, (release, cause)) in hostile.into_iter().enumerate() {
        let state = w.inject_desired(&client, device, release).await;
        assert!(
            matches!(&state, ExecutionState::Rejected { cause: c, .. } if *c == cause),
            "attack {n}: expected {cause:?}, got {state:?}"
        );
        let s = device.status().unwrap();
        assert_eq!(
            s.machine.running.map(|r| r.digest),
            Some(v2.digest),
            "attack {n}"
        );
        assert_eq!(s.machine.security_floor, 2);
    }
    assert_eq!(
        device.bytes_downloaded(),
        bytes_before,
        "nothing is fetched before verification"
    );
    assert_eq!(
        device.status().unwrap().installs.len(),
        1,
        "only v2 was ever installed"
    );
    w.finish().await;
}

/// The lab's server speaks HTTPS with a certificate of `server_ca` (the lab's API client pins
/// it); the agents pin `agent_ca` for their downloads; devices get `https://` artifact URLs
/// (through the world's TCP proxy, which relays TLS untouched).
fn https_lab(o: &mut LabOptions, server_ca: &TestCa, agent_ca: &Path) {
    let cert = server_ca.server_cert().unwrap();
    o.http_tls = Some((cert.cert, cert.key));
    o.api_ca_file = Some(server_ca.ca_file());
    o.agent_download_toml = format!("ca_file = {:?}", agent_ca.display().to_string());
    o.public_url = o
        .public_url
        .take()
        .map(|u| u.replacen("http://", "https://", 1));
}

/// Issue 7: the fleet server serves artifacts over HTTPS and agents that pin its CA download,
/// verify and install them.
async fn issue7_artifacts_over_https_with_a_pinned_ca(backend: Backend) {
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new(pki.path(), "fleet").unwrap();
    let w = World::start(backend, 2, |o| https_lab(o, &ca, &ca.ca_file())).await;
    let public = w.lab.server().unwrap().public_url().to_owned();
    assert!(public.starts_with("https://127.0.0.1:"), "{public}");
    let v2 = w.release("2.0.0", true).await;
    let id = w.rollout(&v2, &[100], json!({})).await;
    w.finished(id).await;
    w.converged(&v2.digest).await;
    let size = v2.image.len() as u64;
    assert!(
        w.lab.bytes_downloaded() >= 2 * size,
        "both devices downloaded over HTTPS"
    );
    w.finish().await;
}

/// Issue 7: an agent pinning another CA refuses the server's certificate: the download fails
/// with the TLS cause in the device's report, nothing is cached or installed.
async fn issue7_an_artifact_server_of_another_ca_is_refused(backend: Backend) {
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new(pki.path(), "fleet").unwrap();
    let other = TestCa::new(pki.path(), "other").unwrap();
    let w = World::start(backend, 1, |o| https_lab(o, &ca, &other.ca_file())).await;
    let v2 = w.release("2.0.0", true).await;
    let id = w
        .rollout(
            &v2,
            &[100],
            json!({ "max_failure": 100, "min_executed": 1 }),
        )
        .await;
    let r = w
        .wait_rollout(id, |r| r["totals"]["failed"]["download"] == 1)
        .await;
    assert_eq!(r["totals"]["succeeded"], 0, "{r:#}");
    let d = &w.lab.devices()[0];
    wait_device(d, |d| {
        d.status().is_some_and(|s| s.machine.stage == Stage::Idle)
    })
    .await;
    let s = d.status().unwrap();
    match s.machine.last_result.map(|o| o.state) {
        Some(ExecutionState::Failed { phase, reason }) => {
            assert_eq!(phase, FailurePhase::Download);
            assert!(
                reason.contains("TLS handshake with 127.0.0.1 failed"),
                "{reason}"
            );
            assert!(reason.contains("UnknownIssuer"), "{reason}");
        }
        other => panic!("expected failed{{download}}, got {other:?}"),
    }
    assert!(s.installs.is_empty(), "{:?}", s.installs);
    assert_eq!(d.bytes_downloaded(), 0);
    let cache = d.root().join("data/cache");
    assert!(!cache.join(v2.digest.to_string()).exists());
    assert!(!cache.join(format!("partial/{}.part", v2.digest)).exists());
    w.finish().await;
}

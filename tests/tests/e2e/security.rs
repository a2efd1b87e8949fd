//! Issue 7: threats end to end (`docs/security.md` names each row's test).

use ota_core::wire::{ExecutionState, RejectCause};
use ota_demo::firmware::{BuildSpec, FirmwareTeam, HARDWARE_CLASS};
use ota_demo::lab::unix_now;
use serde_json::json;

use crate::world::{Backend, World, suite};

suite!(compromised_fleet_server_cannot_install_unsigned_or_downgrade);

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

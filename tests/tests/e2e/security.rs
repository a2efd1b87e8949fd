//! Issue 7: threats end to end (`docs/security.md` names each row's test).

use ota_core::update::Stage;
use ota_core::wire::{
    DesiredState, DeviceId, ExecutionState, PROTOCOL_VERSION, RejectCause, TopicKind, WireMessage,
};
use ota_demo::firmware::{BuildSpec, FirmwareTeam, HARDWARE_CLASS};
use ota_demo::lab::unix_now;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::json;

use crate::world::{Backend, World, suite, wait_device};

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
    let topic = TopicKind::Desired.topic(&DeviceId::new(device.id()).unwrap());
    let mut o = MqttOptions::new(
        format!("{}-attacker", device.id()),
        "127.0.0.1",
        w.broker.addr().port(),
    );
    o.set_max_packet_size(512 * 1024, 512 * 1024);
    let (client, mut events) = AsyncClient::new(o, 16);
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    let bytes_before = device.bytes_downloaded();
    let url = format!("http://{}/artifacts/{}", w.http.addr(), unsigned.digest);
    for (n, (release, cause)) in hostile.into_iter().enumerate() {
        let generation = device.status().unwrap().machine.last_generation + 100;
        let desired = DesiredState {
            v: PROTOCOL_VERSION,
            generation,
            rollout_id: Some(format!("attack-{n}")),
            release,
            artifact_urls: vec![url.clone()],
            force_reinstall: true,
        };
        client
            .publish(&topic, QoS::AtLeastOnce, false, desired.to_cbor())
            .await
            .unwrap();
        wait_device(device, |d| {
            d.status().is_some_and(|s| {
                s.machine.stage == Stage::Idle
                    && s.machine
                        .last_result
                        .as_ref()
                        .is_some_and(|o| o.generation == generation)
            })
        })
        .await;
        let s = device.status().unwrap();
        let state = s.machine.last_result.map(|o| o.state);
        assert!(
            matches!(&state, Some(ExecutionState::Rejected { cause: c, .. }) if *c == cause),
            "attack {n}: expected {cause:?}, got {state:?}"
        );
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

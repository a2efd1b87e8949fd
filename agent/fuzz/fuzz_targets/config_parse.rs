//! Fuzzes the agent's configuration parser with arbitrary text: it must return a config or a
//! typed error naming the key, never panic. A config that parses must be usable without
//! further checks: its device id is a valid MQTT topic segment, and what the agent reports
//! from it (device id, hardware class, labels) is a reported state the fleet server accepts.
//! Only pure functions run on it: nothing here reads or writes a file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ota_agent::config::AgentConfig;
use ota_core::release::{SigningKey, TrustSet};
use ota_core::wire::{DeviceId, Inventory, PROTOCOL_VERSION, ReportedState, WireMessage};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = AgentConfig::from_toml_str(text) else {
        return;
    };
    let device = DeviceId::new(&config.device_id).expect("a parsed config has a valid device id");
    let reported = ReportedState {
        v: PROTOCOL_VERSION,
        device_id: config.device_id.clone(),
        agent_version: "0.1.0".into(),
        hardware_class: config.hardware_class.clone(),
        running: None,
        known_good: None,
        trial: None,
        cached: Vec::new(),
        last_result: None,
        power: None,
        inventory: Inventory::default(),
        labels: config.labels.clone(),
        generation: 0,
        security_floor: 0,
    };
    if let Err(e) = ReportedState::from_cbor(&reported.to_cbor()) {
        panic!("a parsed config gives a reported state the server refuses: {e}");
    }
    let _ = config.download.downloader_config();
    if let Some(h) = &config.health {
        let _ = h.interval();
    }
    let key = SigningKey::from_bytes(&[1u8; 32]).verifying_key();
    if let Ok(trust) = TrustSet::new(vec![key], 1) {
        let _ = ota_agent::agent::machine_config(&config, device, trust);
    }
});

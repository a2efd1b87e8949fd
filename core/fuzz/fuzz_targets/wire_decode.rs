//! Fuzzes every MQTT payload decoder of ota-core with the same arbitrary bytes: each must
//! return a value or a typed error, never panic or allocate without bound. A decoded value
//! must survive a round trip: re-encoded and decoded again, it is equal to itself.
//!
//! Payloads (docs/protocol.md, docs/flags.md): DesiredState, ReportedState, Event, Status,
//! Heartbeat, HeartbeatAck, TrustReport, DeviceFlags and the signed trust-set update (key rotation). The
//! records that share the same bounded codec (FlagDefinition, FlagChange, FlagSet, the agent's
//! PersistedState) and the device flag file are fed too, as are the topic parsers (the topic of
//! a publication is as untrusted as its payload).
#![no_main]

use core::fmt::Debug;

use libfuzzer_sys::fuzz_target;
use ota_core::flags::{DeviceFlags, FlagChange, FlagDefinition, FlagSet};
use ota_core::release::{SignedTrustUpdate, SigningKey, TrustSet, TrustUpdate};
use ota_core::update::PersistedState;
use ota_core::wire::{
    DesiredState, Event, Heartbeat, HeartbeatAck, ReportedState, Status, TrustReport, WireMessage,
};

/// Decodes `data` as `T`; a decoded value must encode and decode again to itself.
fn round_trip<T: WireMessage + PartialEq + Debug>(data: &[u8]) {
    if let Ok(msg) = T::from_cbor(data) {
        let bytes = msg.to_cbor();
        let again = T::from_cbor(&bytes);
        assert_eq!(again.as_ref(), Ok(&msg), "{} round trip", T::NAME);
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<DesiredState>(data);
    round_trip::<ReportedState>(data);
    round_trip::<Event>(data);
    round_trip::<Status>(data);
    round_trip::<Heartbeat>(data);
    round_trip::<HeartbeatAck>(data);
    round_trip::<TrustReport>(data);
    round_trip::<DeviceFlags>(data);
    round_trip::<FlagDefinition>(data);
    round_trip::<FlagChange>(data);
    round_trip::<FlagSet>(data);
    round_trip::<PersistedState>(data);

    // The device flag file: a file read back must write the same flags again.
    if let Ok(flags) = DeviceFlags::from_file(data) {
        let again = DeviceFlags::from_file(flags.to_file().as_bytes());
        assert_eq!(again.as_ref(), Ok(&flags), "flag file round trip");
    }

    // The trust-set update: its content must round-trip, and verifying must not panic.
    if let Ok(signed) = SignedTrustUpdate::decode(data) {
        let bytes = minicbor::to_vec(&signed.update).unwrap_or_default();
        let again: Result<TrustUpdate, _> = minicbor::decode(&bytes);
        assert_eq!(
            again.ok().as_ref(),
            Some(&signed.update),
            "trust update round trip"
        );
        let key = SigningKey::from_bytes(&[1u8; 32]).verifying_key();
        if let Ok(trust) = TrustSet::new(vec![key], 1) {
            let _ = signed.verify(&trust, 0);
        }
        let _ = signed.update.trust_set();
    }

    // Topics arrive with the payload, from the same untrusted broker.
    if let Ok(topic) = core::str::from_utf8(data) {
        let _ = ota_core::wire::parse_device_topic(topic);
        let _ = ota_core::flags::parse_topic(topic);
    }
});

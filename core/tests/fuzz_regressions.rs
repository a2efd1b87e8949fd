//! Regression tests for the inputs the fuzz targets of `core/fuzz` found (issue 7). Each test
//! holds the crashing input as bytes, as libFuzzer wrote it.
#![allow(
    clippy::unwrap_used,
    reason = "tests may unwrap: a failing unwrap is a failing test"
)]

use ota_core::flags::{DeviceFlags, FlagChange, FlagDefinition, FlagSet};
use ota_core::update::PersistedState;
use ota_core::wire::{
    DesiredState, Event, Heartbeat, HeartbeatAck, ReportedState, Status, WireError, WireMessage,
};

/// `wire_decode`, crash-be658378…: `{0: 1, 1: 7, 0: 0, 0: 0, 5: true}`. The version check read
/// the first key `0` (version 1, accepted) and the typed decode kept the last (version 0), so a
/// heartbeat ack of version 0 was accepted, and its own encoding was then refused. A repeated
/// version key is now malformed, for every payload.
#[test]
fn issue7_fuzz_repeated_version_key_is_malformed() {
    let input: &[u8] = &[
        0xa5, 0x00, 0x01, 0x01, 0x07, 0x00, 0x00, 0x00, 0x00, 0x05, 0xf5,
    ];
    assert_eq!(
        HeartbeatAck::from_cbor(input),
        Err(WireError::Malformed("heartbeat ack"))
    );
    // A newer version hidden behind an accepted one, in every message that has the codec.
    let hidden_v2: &[u8] = &[0xa3, 0x00, 0x01, 0x01, 0x07, 0x00, 0x02];
    fn refused<T: WireMessage + core::fmt::Debug>(bytes: &[u8]) {
        assert_eq!(
            T::from_cbor(bytes).unwrap_err(),
            WireError::Malformed(T::NAME)
        );
    }
    refused::<DesiredState>(hidden_v2);
    refused::<ReportedState>(hidden_v2);
    refused::<Event>(hidden_v2);
    refused::<Status>(hidden_v2);
    refused::<Heartbeat>(hidden_v2);
    refused::<HeartbeatAck>(hidden_v2);
    refused::<DeviceFlags>(hidden_v2);
    refused::<FlagDefinition>(hidden_v2);
    refused::<FlagChange>(hidden_v2);
    refused::<FlagSet>(hidden_v2);
    refused::<PersistedState>(hidden_v2);
    // The same payload without the repetition still decodes.
    let ack: &[u8] = &[0xa2, 0x00, 0x01, 0x01, 0x07];
    assert_eq!(HeartbeatAck::from_cbor(ack).unwrap().seq, 7);
}

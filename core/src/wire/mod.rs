//! The MQTT protocol between agents and the fleet server: topics and CBOR payloads.
//!
//! Every topic starts with the versioned prefix [`TOPIC_PREFIX`] (`ota/v1/`); every payload is
//! a CBOR map with integer keys whose key `0` is the protocol version ([`PROTOCOL_VERSION`]).
//! The full protocol (directions, retain flags, key tables, idempotency and versioning rules) is
//! written down in `docs/protocol.md`.
//!
//! ```text
//! ota/v1/devices/{id}/desired        server -> device   retained   DesiredState
//! ota/v1/devices/{id}/reported       device -> server   retained   ReportedState
//! ota/v1/devices/{id}/events         device -> server   -          Event
//! ota/v1/devices/{id}/status         device -> server   retained   Status (last will: offline)
//! ota/v1/devices/{id}/heartbeat      device -> server   -          Heartbeat
//! ota/v1/devices/{id}/heartbeat/ack  server -> device   -          HeartbeatAck
//! ota/v1/devices/{id}/trust          device -> server   -          TrustReport
//! ota/v1/trust                       server -> devices  retained   signed trust-set update
//! ota/v1/flags/...                   reserved for feature flags
//! ```
//!
//! Decoding is bounded: a payload larger than its message's limit, a payload that is not the
//! expected CBOR map, a version this build does not speak, or a string or list over the
//! [`WireLimits`] gives a typed [`WireError`], never a panic. Unknown keys are ignored, so a
//! newer peer may add optional fields without a version bump.

pub(crate) mod codec;
mod message;
mod topic;
mod trust;

pub use codec::{PROTOCOL_VERSION, WireError, WireLimits, WireMessage, truncate_text};
pub use message::{
    DesiredState, Event, ExecutionState, FailurePhase, Heartbeat, HeartbeatAck, Inventory,
    PowerReading, RejectCause, ReportedState, RollbackReason, RunningRelease, Status, Transfer,
    UpdateOutcome,
};
pub use topic::{
    DEFAULT_TOPIC_PREFIX, DeviceId, DeviceIdError, Direction, FLAGS_PREFIX, MAX_TOPIC_PREFIX, QOS,
    TOPIC_PREFIX, TRUST_TOPIC, TopicError, TopicKind, TopicPrefixError, Topics, parse_device_topic,
};
pub use trust::{TrustOutcome, TrustRejectCause, TrustReport};

#[cfg(test)]
mod tests;

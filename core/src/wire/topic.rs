//! MQTT topic names: builders for every per-device topic and a parser that rejects bad ids.

use alloc::format;
use alloc::string::String;
use core::fmt;

/// The versioned prefix of every ota topic. A new major protocol gets a new prefix, so old and
/// new fleets can share a broker.
pub const TOPIC_PREFIX: &str = "ota/v1/";

/// The prefix of the fleet-wide feature-flag topics, reserved for a later feature (nothing is
/// published there yet; [`parse_device_topic`] answers [`TopicError::Reserved`]).
pub const FLAGS_PREFIX: &str = "ota/v1/flags/";

/// The fleet-wide trust topic (server to every device, retained, QoS 1): the last accepted
/// signed trust-set update ([`crate::release::SignedTrustUpdate`] envelope bytes, not a wire
/// map: the envelope is self-describing and signed). Devices verify it against the trust set
/// they have; see `docs/protocol.md`.
pub const TRUST_TOPIC: &str = "ota/v1/trust";

/// The per-device topic prefix (after [`TOPIC_PREFIX`]).
const DEVICES: &str = "devices/";

/// The MQTT QoS of every ota publication and subscription: at least once. Duplicates happen, so
/// every handler is idempotent.
pub const QOS: u8 = 1;

/// Who publishes on a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Direction {
    /// The fleet server publishes, the device subscribes.
    ServerToDevice,
    /// The device publishes, the fleet server subscribes.
    DeviceToServer,
}

/// The kind of a per-device topic: the last segment(s) after `ota/v1/devices/{id}/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TopicKind {
    /// `desired`: the [`super::DesiredState`] (server to device, retained).
    Desired,
    /// `reported`: the [`super::ReportedState`] (device to server, retained).
    Reported,
    /// `events`: progress and [`super::Event`]s (device to server, not retained).
    Events,
    /// `status`: [`super::Status`] online/offline (device to server, retained; the agent's
    /// last will publishes offline).
    Status,
    /// `heartbeat`: [`super::Heartbeat`] with a sequence number (device to server).
    Heartbeat,
    /// `heartbeat/ack`: [`super::HeartbeatAck`], the server's echo of the sequence number: proves
    /// the fleet server, not only the broker, is reachable (server to device).
    HeartbeatAck,
    /// `trust`: [`super::TrustReport`], what the device did with a trust-set update from
    /// [`TRUST_TOPIC`] (device to server, not retained).
    Trust,
}

impl TopicKind {
    /// Every kind, in table order.
    pub const ALL: [TopicKind; 7] = [
        TopicKind::Desired,
        TopicKind::Reported,
        TopicKind::Events,
        TopicKind::Status,
        TopicKind::Heartbeat,
        TopicKind::HeartbeatAck,
        TopicKind::Trust,
    ];

    /// The topic suffix after `ota/v1/devices/{id}/`.
    pub fn suffix(self) -> &'static str {
        match self {
            TopicKind::Desired => "desired",
            TopicKind::Reported => "reported",
            TopicKind::Events => "events",
            TopicKind::Status => "status",
            TopicKind::Heartbeat => "heartbeat",
            TopicKind::HeartbeatAck => "heartbeat/ack",
            TopicKind::Trust => "trust",
        }
    }

    /// Whether publications on this topic carry the MQTT retain flag.
    pub fn retained(self) -> bool {
        matches!(
            self,
            TopicKind::Desired | TopicKind::Reported | TopicKind::Status
        )
    }

    /// Who publishes on this topic.
    pub fn direction(self) -> Direction {
        match self {
            TopicKind::Desired | TopicKind::HeartbeatAck => Direction::ServerToDevice,
            _ => Direction::DeviceToServer,
        }
    }

    /// The topic of this kind for one device.
    pub fn topic(self, id: &DeviceId) -> String {
        format!("{TOPIC_PREFIX}{DEVICES}{id}/{}", self.suffix())
    }

    /// The fleet-wide subscription filter for this kind (`ota/v1/devices/+/{suffix}`), for the
    /// server.
    pub fn fleet_filter(self) -> String {
        format!("{TOPIC_PREFIX}{DEVICES}+/{}", self.suffix())
    }

    fn from_suffix(suffix: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.suffix() == suffix)
    }
}

/// A validated device id: 1 to [`DeviceId::MAX_BYTES`] characters of `[A-Za-z0-9._-]`, not `.`
/// or `..`. It can never contain an MQTT wildcard (`+`, `#`) or level separator (`/`), so it is
/// safe to splice into a topic (and into a file or object name on the server).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(String);

/// Why a string is not a device id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceIdError {
    /// The id is empty.
    #[error("a device id may not be empty")]
    Empty,
    /// The id is longer than [`DeviceId::MAX_BYTES`].
    #[error("a device id is at most {max} bytes, got {len}")]
    TooLong {
        /// The id's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The id contains a character outside `[A-Za-z0-9._-]` (this includes the MQTT wildcards
    /// `+` and `#` and the separator `/`).
    #[error("a device id may only contain [A-Za-z0-9._-], found {0:?}")]
    BadCharacter(char),
    /// The id is `.` or `..`.
    #[error("a device id may not be `.` or `..`")]
    DotName,
}

impl DeviceId {
    /// The longest device id, in bytes.
    pub const MAX_BYTES: usize = 64;

    /// Validates `id`.
    pub fn new(id: &str) -> Result<Self, DeviceIdError> {
        Self::check(id)?;
        Ok(DeviceId(String::from(id)))
    }

    /// Checks that `id` is a valid device id without allocating.
    pub fn check(id: &str) -> Result<(), DeviceIdError> {
        if id.is_empty() {
            return Err(DeviceIdError::Empty);
        }
        if id.len() > Self::MAX_BYTES {
            return Err(DeviceIdError::TooLong {
                len: id.len(),
                max: Self::MAX_BYTES,
            });
        }
        if let Some(c) = id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(DeviceIdError::BadCharacter(c));
        }
        if id == "." || id == ".." {
            return Err(DeviceIdError::DotName);
        }
        Ok(())
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The device's topic of `kind`.
    pub fn topic(&self, kind: TopicKind) -> String {
        kind.topic(self)
    }

    /// Every topic the device subscribes to, and the only ones a broker ACL lets it read: its
    /// desired state, heartbeat acks, its evaluated flags ([`crate::flags::topic`]) and the
    /// fleet-wide [`TRUST_TOPIC`]. `docs/protocol.md` lists the same (checked by a test).
    pub fn subscriptions(&self) -> [String; 4] {
        [
            self.topic(TopicKind::Desired),
            self.topic(TopicKind::HeartbeatAck),
            crate::flags::topic(self),
            String::from(TRUST_TOPIC),
        ]
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({:?})", self.0)
    }
}

impl core::str::FromStr for DeviceId {
    type Err = DeviceIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl AsRef<str> for DeviceId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Why a topic string is not an ota device topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// The topic does not start with [`TOPIC_PREFIX`] (another protocol version or application).
    #[error("not an ota/v1 topic")]
    WrongPrefix,
    /// The topic is under the reserved [`FLAGS_PREFIX`].
    #[error("ota/v1/flags/ is reserved for feature flags")]
    Reserved,
    /// The topic is under `ota/v1/` but not a known per-device topic.
    #[error("unknown ota/v1 topic")]
    Unknown,
    /// The device id segment is not a valid [`DeviceId`].
    #[error("bad device id in topic: {0}")]
    BadDeviceId(#[from] DeviceIdError),
}

/// Parses `ota/v1/devices/{id}/{kind}` into the device id and topic kind.
///
/// Rejects another prefix, the reserved flags tree, unknown suffixes and ids that are not valid
/// [`DeviceId`]s (so a wildcard or an overlong id never reaches the server's storage).
pub fn parse_device_topic(topic: &str) -> Result<(DeviceId, TopicKind), TopicError> {
    if topic.starts_with(FLAGS_PREFIX) {
        return Err(TopicError::Reserved);
    }
    let rest = topic
        .strip_prefix(TOPIC_PREFIX)
        .ok_or(TopicError::WrongPrefix)?;
    let rest = rest.strip_prefix(DEVICES).ok_or(TopicError::Unknown)?;
    let (id, suffix) = rest.split_once('/').ok_or(TopicError::Unknown)?;
    let kind = TopicKind::from_suffix(suffix).ok_or(TopicError::Unknown)?;
    Ok((DeviceId::new(id)?, kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_topic() {
        let id = DeviceId::new("gw-0001.lab_A").unwrap();
        for kind in TopicKind::ALL {
            let topic = id.topic(kind);
            assert!(topic.starts_with("ota/v1/devices/gw-0001.lab_A/"));
            assert_eq!(parse_device_topic(&topic), Ok((id.clone(), kind)));
        }
        assert_eq!(
            TopicKind::HeartbeatAck.topic(&id),
            "ota/v1/devices/gw-0001.lab_A/heartbeat/ack"
        );
        assert_eq!(
            TopicKind::Reported.fleet_filter(),
            "ota/v1/devices/+/reported"
        );
    }

    #[test]
    fn bad_ids_and_topics_are_rejected() {
        for bad in ["", ".", "..", "a+b", "a#", "a/b", "é", "a b"] {
            assert!(DeviceId::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(DeviceId::new(&"a".repeat(64)).is_ok());
        assert_eq!(
            DeviceId::new(&"a".repeat(65)),
            Err(DeviceIdError::TooLong { len: 65, max: 64 })
        );
        assert_eq!(
            parse_device_topic("ota/v2/devices/a/desired"),
            Err(TopicError::WrongPrefix)
        );
        assert_eq!(
            parse_device_topic("ota/v1/flags/x"),
            Err(TopicError::Reserved)
        );
        assert_eq!(
            parse_device_topic("ota/v1/devices/a/desired/extra"),
            Err(TopicError::Unknown)
        );
        assert_eq!(
            parse_device_topic("ota/v1/devices/+/desired"),
            Err(TopicError::BadDeviceId(DeviceIdError::BadCharacter('+')))
        );
        assert_eq!(
            parse_device_topic("ota/v1/devices/#"),
            Err(TopicError::Unknown)
        );
    }

    #[test]
    fn retain_and_direction_follow_the_table() {
        let retained: alloc::vec::Vec<_> = TopicKind::ALL
            .into_iter()
            .filter(|k| k.retained())
            .collect();
        assert_eq!(
            retained,
            [TopicKind::Desired, TopicKind::Reported, TopicKind::Status]
        );
        assert_eq!(TopicKind::Desired.direction(), Direction::ServerToDevice);
        assert_eq!(TopicKind::Events.direction(), Direction::DeviceToServer);
        assert_eq!(TopicKind::Trust.direction(), Direction::DeviceToServer);
        // The fleet-wide trust topic is not a per-device topic.
        assert_eq!(parse_device_topic(TRUST_TOPIC), Err(TopicError::Unknown));
    }
}

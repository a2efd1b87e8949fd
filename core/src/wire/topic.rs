//! MQTT topic names: builders for every per-device topic and a parser that rejects bad ids.

use alloc::format;
use alloc::string::String;
use core::fmt;

/// The default topic prefix (`mqtt.topic_prefix` of the server, `broker.topic_prefix` of the
/// agent), versioned: a new major protocol gets a new prefix, so old and new fleets can share a
/// broker.
pub const DEFAULT_TOPIC_PREFIX: &str = "ota/v1";

/// The versioned prefix of every ota topic in the default namespace (see [`Topics`]).
pub const TOPIC_PREFIX: &str = "ota/v1/";

/// The prefix of the feature-flag topics in the default namespace (see [`Topics::flags`]).
pub const FLAGS_PREFIX: &str = "ota/v1/flags/";

/// The fleet-wide trust topic of the default namespace (server to every device, retained,
/// QoS 1): the last accepted signed trust-set update ([`crate::release::SignedTrustUpdate`]
/// envelope bytes, not a wire map: the envelope is self-describing and signed). Devices verify
/// it against the trust set they have; see `docs/protocol.md`. [`Topics::trust`] gives it for
/// any prefix.
pub const TRUST_TOPIC: &str = "ota/v1/trust";

/// The per-device topic level (after the prefix).
const DEVICES: &str = "devices/";

/// The longest topic prefix accepted, in bytes.
pub const MAX_TOPIC_PREFIX: usize = 128;

/// A fleet's topic namespace: every ota topic is `{prefix}/...`. Several fleets (staging and
/// production, or parallel test suites) share one broker without seeing each other's messages
/// by using different prefixes; the server and its agents must use the same one. The default
/// is [`DEFAULT_TOPIC_PREFIX`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// The prefix with a trailing `/`.
    base: String,
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            base: String::from(TOPIC_PREFIX),
        }
    }
}

/// Why a topic prefix is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicPrefixError {
    /// Empty, or longer than [`MAX_TOPIC_PREFIX`].
    #[error("a topic prefix has 1 to {MAX_TOPIC_PREFIX} bytes")]
    Length,
    /// It holds an MQTT wildcard (`+`, `#`), a NUL, starts with `$` or `/`, ends with `/` or has
    /// an empty level.
    #[error(
        "a topic prefix is one or more non-empty levels separated by '/', without '+', '#', NUL, a leading '$' or '/', or a trailing '/'"
    )]
    Invalid,
}

impl Topics {
    /// The namespace `prefix` (e.g. `ota/v1`, `acme/staging/ota/v1`).
    pub fn new(prefix: &str) -> Result<Self, TopicPrefixError> {
        if prefix.is_empty() || prefix.len() > MAX_TOPIC_PREFIX {
            return Err(TopicPrefixError::Length);
        }
        if prefix.starts_with('$')
            || prefix.split('/').any(str::is_empty)
            || prefix.contains(['+', '#', '\0'])
        {
            return Err(TopicPrefixError::Invalid);
        }
        Ok(Topics {
            base: format!("{prefix}/"),
        })
    }

    /// The prefix, without a trailing `/`.
    pub fn prefix(&self) -> &str {
        self.base.trim_end_matches('/')
    }

    /// Device `id`'s topic of `kind`: `{prefix}/devices/{id}/{suffix}`.
    pub fn device(&self, id: &DeviceId, kind: TopicKind) -> String {
        format!("{}{DEVICES}{id}/{}", self.base, kind.suffix())
    }

    /// The fleet-wide subscription filter of `kind` (`{prefix}/devices/+/{suffix}`), for the
    /// server.
    pub fn fleet_filter(&self, kind: TopicKind) -> String {
        format!("{}{DEVICES}+/{}", self.base, kind.suffix())
    }

    /// The fleet-wide trust topic: `{prefix}/trust` (see [`TRUST_TOPIC`]).
    pub fn trust(&self) -> String {
        format!("{}trust", self.base)
    }

    /// Device `id`'s retained flags topic: `{prefix}/flags/devices/{id}` (see
    /// [`crate::flags`]).
    pub fn flags(&self, id: &DeviceId) -> String {
        format!("{}flags/{DEVICES}{id}", self.base)
    }

    /// The wildcard over every device's flags topic: `{prefix}/flags/devices/+`.
    pub fn flags_filter(&self) -> String {
        format!("{}flags/{DEVICES}+", self.base)
    }

    /// Every topic device `id` subscribes to, and the only ones a broker ACL lets it read: its
    /// desired state, heartbeat acks, its evaluated flags and the fleet-wide trust topic.
    /// `docs/protocol.md` lists the same (checked by a test).
    pub fn subscriptions(&self, id: &DeviceId) -> [String; 4] {
        [
            self.device(id, TopicKind::Desired),
            self.device(id, TopicKind::HeartbeatAck),
            self.flags(id),
            self.trust(),
        ]
    }

    /// Parses `{prefix}/devices/{id}/{kind}` into the device id and topic kind.
    ///
    /// Rejects another prefix, the flags tree, unknown suffixes and ids that are not valid
    /// [`DeviceId`]s (so a wildcard or an overlong id never reaches the server's storage).
    pub fn parse_device_topic(&self, topic: &str) -> Result<(DeviceId, TopicKind), TopicError> {
        let rest = topic
            .strip_prefix(self.base.as_str())
            .ok_or(TopicError::WrongPrefix)?;
        if rest.starts_with("flags/") {
            return Err(TopicError::Reserved);
        }
        let rest = rest.strip_prefix(DEVICES).ok_or(TopicError::Unknown)?;
        let (id, suffix) = rest.split_once('/').ok_or(TopicError::Unknown)?;
        let kind = TopicKind::from_suffix(suffix).ok_or(TopicError::Unknown)?;
        Ok((DeviceId::new(id)?, kind))
    }

    /// Parses `{prefix}/flags/devices/{id}` back into the device id. Refuses other prefixes
    /// ([`TopicError::WrongPrefix`]), anything else under the flags tree
    /// ([`TopicError::Unknown`]) and bad ids ([`TopicError::BadDeviceId`]).
    pub fn parse_flags_topic(&self, topic: &str) -> Result<DeviceId, TopicError> {
        let rest = topic
            .strip_prefix(self.base.as_str())
            .and_then(|r| r.strip_prefix("flags/"))
            .ok_or(TopicError::WrongPrefix)?;
        let id = rest.strip_prefix(DEVICES).ok_or(TopicError::Unknown)?;
        if id.contains('/') {
            return Err(TopicError::Unknown);
        }
        Ok(DeviceId::new(id)?)
    }
}

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

    /// The topic of this kind for one device, in the default namespace
    /// ([`Topics::device`] for any prefix).
    pub fn topic(self, id: &DeviceId) -> String {
        Topics::default().device(id, self)
    }

    /// The fleet-wide subscription filter for this kind in the default namespace
    /// (`ota/v1/devices/+/{suffix}`; [`Topics::fleet_filter`] for any prefix).
    pub fn fleet_filter(self) -> String {
        Topics::default().fleet_filter(self)
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

    /// The device's topic of `kind` in the default namespace ([`Topics::device`] for any
    /// prefix).
    pub fn topic(&self, kind: TopicKind) -> String {
        kind.topic(self)
    }

    /// [`Topics::subscriptions`] in the default namespace.
    pub fn subscriptions(&self) -> [String; 4] {
        Topics::default().subscriptions(self)
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
    /// The topic does not start with the fleet's prefix (another fleet, protocol version or
    /// application).
    #[error("not a topic of this fleet's prefix")]
    WrongPrefix,
    /// The topic is under the prefix's flags tree (not a per-device topic).
    #[error("the flags tree holds no per-device topic")]
    Reserved,
    /// The topic is under the prefix but not a known per-device topic.
    #[error("unknown ota topic")]
    Unknown,
    /// The device id segment is not a valid [`DeviceId`].
    #[error("bad device id in topic: {0}")]
    BadDeviceId(#[from] DeviceIdError),
}

/// [`Topics::parse_device_topic`] in the default namespace.
pub fn parse_device_topic(topic: &str) -> Result<(DeviceId, TopicKind), TopicError> {
    Topics::default().parse_device_topic(topic)
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
    fn issue15_a_prefix_namespaces_every_topic() {
        let t = Topics::new("acme/staging/ota/v1").unwrap();
        let id = DeviceId::new("gw-1").unwrap();
        assert_eq!(t.prefix(), "acme/staging/ota/v1");
        assert_eq!(
            t.device(&id, TopicKind::Desired),
            "acme/staging/ota/v1/devices/gw-1/desired"
        );
        assert_eq!(
            t.fleet_filter(TopicKind::Events),
            "acme/staging/ota/v1/devices/+/events"
        );
        assert_eq!(t.trust(), "acme/staging/ota/v1/trust");
        assert_eq!(t.flags(&id), "acme/staging/ota/v1/flags/devices/gw-1");
        assert_eq!(t.flags_filter(), "acme/staging/ota/v1/flags/devices/+");
        for kind in TopicKind::ALL {
            assert_eq!(
                t.parse_device_topic(&t.device(&id, kind)),
                Ok((id.clone(), kind))
            );
            // Another fleet's topics are not this fleet's.
            assert_eq!(
                t.parse_device_topic(&id.topic(kind)),
                Err(TopicError::WrongPrefix)
            );
            assert_eq!(
                Topics::default().parse_device_topic(&t.device(&id, kind)),
                Err(TopicError::WrongPrefix)
            );
        }
        assert_eq!(t.parse_flags_topic(&t.flags(&id)), Ok(id.clone()));
        assert_eq!(
            t.parse_device_topic(&t.flags(&id)),
            Err(TopicError::Reserved)
        );
        assert_eq!(
            Topics::default(),
            Topics::new(DEFAULT_TOPIC_PREFIX).unwrap()
        );
        for bad in ["", "a/", "/a", "a//b", "a/+/b", "a/#", "$SYS/ota", "a\0b"] {
            assert!(Topics::new(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            Topics::new(&"a".repeat(MAX_TOPIC_PREFIX + 1)),
            Err(TopicPrefixError::Length)
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

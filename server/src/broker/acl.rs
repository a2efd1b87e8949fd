//! The per-device topic ACL of the embedded broker's front door.
//!
//! A device (identified by its client id, which authentication bound to a password or a client
//! certificate) may only:
//!
//! | action | topics |
//! |---|---|
//! | publish (and its last will) | `ota/v1/devices/{id}/reported`, `events`, `status`, `heartbeat`, `trust` |
//! | subscribe | `ota/v1/devices/{id}/desired`, `ota/v1/devices/{id}/heartbeat/ack`, `ota/v1/flags/devices/{id}`, `ota/v1/trust` |
//!
//! (`ota/v1` stands for the fleet's `mqtt.topic_prefix`.) Subscriptions must be exactly these filters: no wildcard, not even under the device's own
//! topics (the agent never uses one). `docs/security.md` has the equivalent Mosquitto ACL.

use ota_core::wire::{DeviceId, Direction, TopicKind, Topics};

/// What one authenticated device may do.
#[derive(Debug, Clone)]
pub struct DeviceAcl {
    device: DeviceId,
    topics: Topics,
    subscriptions: [String; 4],
}

impl DeviceAcl {
    /// The ACL of `device` in the fleet's topic namespace `topics`.
    pub fn new(device: DeviceId, topics: &Topics) -> Self {
        DeviceAcl {
            subscriptions: topics.subscriptions(&device),
            device,
            topics: topics.clone(),
        }
    }

    /// The device.
    pub fn device(&self) -> &DeviceId {
        &self.device
    }

    /// Whether the device may publish on `topic` (a device-to-server topic of its own).
    pub fn may_publish(&self, topic: &str) -> bool {
        matches!(
            self.topics.parse_device_topic(topic),
            Ok((id, kind)) if id == self.device && kind.direction() == Direction::DeviceToServer
        )
    }

    /// Whether the device may subscribe to `filter` (exactly one of its own filters).
    pub fn may_subscribe(&self, filter: &str) -> bool {
        self.subscriptions.iter().any(|s| s == filter)
    }
}

/// The topics a device publishes, for documentation and tests.
pub fn device_publish_kinds() -> impl Iterator<Item = TopicKind> {
    TopicKind::ALL
        .into_iter()
        .filter(|k| k.direction() == Direction::DeviceToServer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue15_the_acl_follows_the_topic_prefix() {
        let t = Topics::new("staging/ota/v1").unwrap();
        let a = DeviceAcl::new(DeviceId::new("dev-a").unwrap(), &t);
        assert!(a.may_publish("staging/ota/v1/devices/dev-a/reported"));
        assert!(!a.may_publish("ota/v1/devices/dev-a/reported"));
        assert!(a.may_subscribe("staging/ota/v1/devices/dev-a/desired"));
        assert!(a.may_subscribe("staging/ota/v1/trust"));
        assert!(!a.may_subscribe("ota/v1/devices/dev-a/desired"));
        assert!(!a.may_subscribe("ota/v1/trust"));
    }

    #[test]
    fn a_device_is_confined_to_its_own_topics() {
        let a = DeviceAcl::new(DeviceId::new("dev-a").unwrap(), &Topics::default());
        let b = DeviceId::new("dev-b").unwrap();
        for kind in device_publish_kinds() {
            assert!(a.may_publish(&a.device().topic(kind)), "{kind:?}");
            assert!(!a.may_publish(&b.topic(kind)), "{kind:?}");
        }
        assert!(!a.may_publish(&a.device().topic(TopicKind::Desired)));
        assert!(!a.may_publish(&a.device().topic(TopicKind::HeartbeatAck)));
        assert!(!a.may_publish("ota/v1/trust"));
        assert!(!a.may_publish("ota/v1/flags/devices/dev-a"));
        assert!(!a.may_publish("ota/v1/devices/+/reported"));
        for ok in [
            "ota/v1/devices/dev-a/desired",
            "ota/v1/devices/dev-a/heartbeat/ack",
            "ota/v1/flags/devices/dev-a",
            "ota/v1/trust",
        ] {
            assert!(a.may_subscribe(ok), "{ok}");
        }
        for bad in [
            "ota/v1/devices/dev-b/desired",
            "ota/v1/devices/+/desired",
            "ota/v1/devices/dev-a/#",
            "ota/v1/#",
            "#",
            "ota/v1/flags/devices/dev-b",
            "ota/v1/devices/dev-a/reported",
        ] {
            assert!(!a.may_subscribe(bad), "{bad}");
        }
    }
}

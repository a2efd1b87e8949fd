//! Issue 12.19: `docs/protocol.md` says what the code does about topics. Its topic table has a
//! row for every [`TopicKind`] (direction and retain flag as in the code), and its one list of
//! device subscriptions is [`DeviceId::subscriptions`].
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::expect_used,
    reason = "tests may unwrap and panic: a failing unwrap is a failing test"
)]

use ota_core::wire::{
    DeviceId, Direction, PROTOCOL_VERSION, ReportedState, TopicKind, WireMessage,
};

/// The document.
const PROTOCOL_MD: &str = include_str!("../../docs/protocol.md");

/// A device id standing for `{id}` in the document.
const ID: &str = "ID";

/// The topics of the list after `<!-- device-subscriptions -->`, `{id}` replaced by [`ID`].
fn documented_subscriptions() -> Vec<String> {
    let (_, rest) = PROTOCOL_MD
        .split_once("<!-- device-subscriptions -->\n")
        .expect("docs/protocol.md marks its device subscription list");
    rest.lines()
        .map_while(|l| l.strip_prefix("- `")?.strip_suffix('`'))
        .map(|t| t.replace("{id}", ID))
        .collect()
}

#[test]
fn issue12_protocol_md_lists_exactly_the_device_subscriptions() {
    let id = DeviceId::new(ID).unwrap();
    assert_eq!(documented_subscriptions(), id.subscriptions().to_vec());
}

#[test]
fn issue12_protocol_md_topic_table_matches_the_topic_kinds() {
    for kind in TopicKind::ALL {
        let topic = format!("`ota/v1/devices/{{id}}/{}`", kind.suffix());
        let row = PROTOCOL_MD
            .lines()
            .find(|l| l.starts_with(&format!("| {topic} |")))
            .unwrap_or_else(|| panic!("docs/protocol.md has no row for {topic}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let direction = match kind.direction() {
            Direction::ServerToDevice => "server → device",
            Direction::DeviceToServer => "device → server",
            other => panic!("document the direction {other:?}"),
        };
        let retained = if kind.retained() { "yes" } else { "no" };
        assert_eq!(cells[2], direction, "{row}");
        assert_eq!(cells[3], retained, "{row}");
        assert_eq!(cells[4], "1", "{row}");
    }
}

/// The smallest `ReportedState` of docs/protocol.md, `{0: 1, 1: "gw-17", 2: "my-agent 1.0",
/// 3: "gw-a"}`, with key `skip` left out.
fn minimal_reported_state(skip: Option<u64>) -> Vec<u8> {
    let fields: [(u64, Option<&str>); 4] = [
        (0, None),
        (1, Some("gw-17")),
        (2, Some("my-agent 1.0")),
        (3, Some("gw-a")),
    ];
    let kept: Vec<_> = fields.iter().filter(|(k, _)| Some(*k) != skip).collect();
    let mut e = minicbor::Encoder::new(Vec::new());
    e.map(kept.len() as u64).unwrap();
    for (key, text) in kept {
        e.u64(*key).unwrap();
        match text {
            Some(t) => e.str(t).map(|_| ()).unwrap(),
            None => e.u16(PROTOCOL_VERSION).map(|_| ()).unwrap(),
        }
    }
    e.into_writer()
}

#[test]
fn issue12_protocol_md_required_reported_state_keys() {
    assert!(PROTOCOL_MD.contains("`{0: 1, 1: \"gw-17\", 2: \"my-agent 1.0\", 3: \"gw-a\"}`"));
    let r = ReportedState::from_cbor(&minimal_reported_state(None)).unwrap();
    assert_eq!(
        (r.device_id.as_str(), r.hardware_class.as_str()),
        ("gw-17", "gw-a")
    );
    assert_eq!((r.running, r.generation, r.cached.len()), (None, 0, 0));
    for key in 0..4 {
        assert!(
            ReportedState::from_cbor(&minimal_reported_state(Some(key))).is_err(),
            "key {key} is documented as required"
        );
    }
}

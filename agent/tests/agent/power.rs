use std::fs;
use std::path::Path;

use ota_agent::power::{PowerError, PowerReading, PowerSupplies};

use crate::util::tempdir;

/// Writes a fake supply `name` with attribute files.
fn supply(root: &Path, name: &str, attrs: &[(&str, &[u8])]) {
    let dir = root.join(name);
    fs::create_dir_all(&dir).unwrap();
    for (file, value) in attrs {
        fs::write(dir.join(file), value).unwrap();
    }
}

fn read(root: &Path) -> PowerReading {
    PowerSupplies::new(root).read().unwrap()
}

#[test]
fn low_battery_discharging() {
    let dir = tempdir();
    let r = dir.path();
    supply(
        r,
        "BAT0",
        &[
            ("type", b"Battery\n"),
            ("capacity", b"12\n"),
            ("status", b"Discharging\n"),
            ("present", b"1\n"),
        ],
    );
    supply(r, "AC", &[("type", b"Mains\n"), ("online", b"0\n")]);
    assert_eq!(
        read(r),
        PowerReading {
            battery_percent: Some(12),
            charging: false,
            mains_online: false
        }
    );
}

#[test]
fn low_battery_charging() {
    let dir = tempdir();
    let r = dir.path();
    supply(
        r,
        "BAT0",
        &[
            ("type", b"Battery\n"),
            ("capacity", b"12\n"),
            ("status", b"Charging\n"),
        ],
    );
    supply(r, "AC", &[("type", b"Mains\n"), ("online", b"1\n")]);
    assert_eq!(
        read(r),
        PowerReading {
            battery_percent: Some(12),
            charging: true,
            mains_online: true
        }
    );
}

#[test]
fn no_battery_is_mains_powered() {
    let dir = tempdir();
    let r = dir.path();
    // An empty tree (a board without supplies).
    assert_eq!(
        read(r),
        PowerReading {
            battery_percent: None,
            charging: false,
            mains_online: true
        }
    );
    // An empty battery slot is no battery.
    supply(r, "BAT1", &[("type", b"Battery\n"), ("present", b"0\n")]);
    supply(r, "AC", &[("type", b"Mains\n"), ("online", b"0\n")]);
    assert_eq!(read(r).battery_percent, None);
    assert!(read(r).mains_online);
}

#[test]
fn usb_supply_online_counts_as_external_power() {
    let dir = tempdir();
    let r = dir.path();
    supply(
        r,
        "BAT0",
        &[
            ("type", b"Battery\n"),
            ("capacity", b"80\n"),
            ("status", b"Not charging\n"),
        ],
    );
    supply(r, "usb", &[("type", b"USB\n"), ("online", b"1\n")]);
    assert_eq!(
        read(r),
        PowerReading {
            battery_percent: Some(80),
            charging: false,
            mains_online: true
        }
    );
}

#[test]
fn the_lowest_battery_counts_and_full_means_charging() {
    let dir = tempdir();
    let r = dir.path();
    supply(
        r,
        "BAT0",
        &[
            ("type", b"Battery"),
            ("capacity", b"90"),
            ("status", b"Full"),
        ],
    );
    supply(
        r,
        "BAT1",
        &[
            ("type", b"Battery"),
            ("capacity", b"35"),
            ("status", b"Discharging"),
        ],
    );
    let reading = read(r);
    assert_eq!(reading.battery_percent, Some(35));
    assert!(reading.charging);
}

#[test]
fn garbage_is_ignored_never_a_panic() {
    let dir = tempdir();
    let r = dir.path();
    supply(
        r,
        "BAT0",
        &[("type", b"Battery\n"), ("capacity", b"lots\n")],
    );
    supply(r, "BAT1", &[("type", b"Battery\n"), ("capacity", b"250\n")]);
    supply(r, "weird", &[("type", b"\xff\xfe\x00")]);
    supply(r, "notype", &[("online", b"1")]);
    supply(r, "huge", &[("type", &vec![b'A'; 100_000])]);
    fs::write(r.join("a-file-not-a-dir"), b"x").unwrap();
    // Unreadable batteries are ignored, but the device is not assumed to be on mains.
    assert_eq!(
        read(r),
        PowerReading {
            battery_percent: None,
            charging: false,
            mains_online: false
        }
    );
}

#[test]
fn a_missing_tree_is_a_typed_error() {
    let dir = tempdir();
    assert!(matches!(
        PowerSupplies::new(dir.path().join("nope")).read(),
        Err(PowerError::Unreadable { .. })
    ));
}

/// Issue 12.19: the minimal tree of docs/agent.md ("The power gate's sysfs files"), built from
/// the page's `echo VALUE > power/SUPPLY/FILE` lines, reads as the page says.
#[test]
fn issue12_the_documented_minimal_tree_reads_as_documented() {
    let doc = include_str!("../../../docs/agent.md");
    let (_, rest) = doc
        .split_once("<!-- power-tree -->\n```sh\n")
        .expect("docs/agent.md shows the minimal power tree");
    let (script, _) = rest.split_once("```").unwrap();
    let dir = tempdir();
    let mut files = 0;
    for line in script.lines().filter(|l| l.starts_with("echo ")) {
        let (value, path) = line["echo ".len()..].split_once('>').unwrap();
        let path = dir.path().join(path.trim());
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, format!("{}\n", value.trim())).unwrap();
        files += 1;
    }
    assert_eq!(files, 5, "{script}");
    let root = dir.path().join("power");
    let expected = PowerReading {
        battery_percent: Some(15),
        charging: false,
        mains_online: false,
    };
    assert_eq!(read(&root), expected);
    fs::write(root.join("BAT0/status"), "Charging\n").unwrap();
    assert!(read(&root).charging);
}

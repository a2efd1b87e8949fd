use std::fs;
use std::io::Read;
use std::path::Path;

use ota_agent::storage::{Fault, FaultyStorage, FsStorage, Op, Storage};

use crate::util::tempdir;

#[test]
fn fs_storage_round_trips_every_operation() {
    let dir = tempdir();
    let d = dir.path();
    let st = FsStorage;
    st.create_dir_all(&d.join("a/b")).unwrap();
    let f = d.join("a/b/file");
    assert_eq!(st.len(&f).unwrap(), None);
    st.create(&f).unwrap();
    st.append(&f, b"hello ").unwrap();
    st.append(&f, b"world").unwrap();
    st.sync_file(&f).unwrap();
    assert_eq!(st.read(&f).unwrap(), b"hello world");
    assert_eq!(st.len(&f).unwrap(), Some(11));
    let mut s = String::new();
    st.open_read(&f).unwrap().read_to_string(&mut s).unwrap();
    assert_eq!(s, "hello world");

    let g = d.join("a/b/renamed");
    st.rename(&f, &g).unwrap();
    st.sync_dir(&d.join("a/b")).unwrap();
    assert_eq!(st.list(&d.join("a/b")).unwrap(), vec!["renamed"]);
    assert!(st.list(&d.join("missing")).unwrap().is_empty());

    let l = d.join("a/current");
    st.symlink(Path::new("b/renamed"), &l).unwrap();
    assert_eq!(st.read_link(&l).unwrap(), Some("b/renamed".into()));
    assert_eq!(st.read(&l).unwrap(), b"hello world");
    assert_eq!(st.read_link(&d.join("a/none")).unwrap(), None);

    st.remove_file(&l).unwrap();
    st.remove_file(&g).unwrap();
    assert_eq!(st.len(&g).unwrap(), None);
}

/// A small scenario: write a file durably, then rename it into place.
fn scenario(st: &dyn Storage, d: &Path) -> std::io::Result<()> {
    let tmp = d.join("f.tmp");
    st.create(&tmp)?;
    st.append(&tmp, b"data")?;
    st.sync_file(&tmp)?;
    st.rename(&tmp, &d.join("f"))?;
    st.sync_dir(d)
}

#[test]
fn faulty_storage_counts_and_logs_mutations_but_not_reads() {
    let dir = tempdir();
    let st = FaultyStorage::new();
    scenario(&st, dir.path()).unwrap();
    st.read(&dir.path().join("f")).unwrap();
    st.len(&dir.path().join("f")).unwrap();
    assert_eq!(st.mutations(), 5);
    let log = st.log();
    assert!(matches!(log[1], Op::Append(_, 4)));
    assert!(matches!(log[4], Op::SyncDir(_)));
}

#[test]
fn fail_fault_fails_only_the_nth_operation() {
    let dir = tempdir();
    let d = dir.path();
    let st = FaultyStorage::with_fault(2, Fault::Fail);
    let f = d.join("f");
    st.create(&f).unwrap();
    assert!(st.append(&f, b"lost").is_err());
    st.append(&f, b"kept").unwrap();
    assert_eq!(fs::read(&f).unwrap(), b"kept");
    assert!(!st.is_powered_off());
}

#[test]
fn power_loss_stops_everything_from_the_nth_operation() {
    let dir = tempdir();
    let d = dir.path();
    let st = FaultyStorage::with_fault(
        3,
        Fault::PowerLoss {
            drop_unsynced: false,
        },
    );
    let f = d.join("f");
    st.create(&f).unwrap();
    st.append(&f, b"one").unwrap();
    assert!(st.append(&f, b"two").is_err());
    assert!(st.is_powered_off());
    assert!(st.append(&f, b"three").is_err());
    assert!(st.read(&f).is_err(), "reads fail too once the power is off");
    // Without drop_unsynced, what was written stays.
    assert_eq!(fs::read(&f).unwrap(), b"one");
}

#[test]
fn power_loss_drops_unsynced_data_and_unsynced_renames() {
    let dir = tempdir();
    let d = dir.path();
    fs::write(d.join("f"), b"old").unwrap();

    // Synced file data survives; the rename without a directory fsync is undone.
    let st = FaultyStorage::with_fault(
        5,
        Fault::PowerLoss {
            drop_unsynced: true,
        },
    );
    assert!(scenario(&st, d).is_err());
    assert_eq!(fs::read(d.join("f")).unwrap(), b"old");
    assert_eq!(fs::read(d.join("f.tmp")).unwrap(), b"data");

    // Data never fsynced is lost.
    let st = FaultyStorage::with_fault(
        3,
        Fault::PowerLoss {
            drop_unsynced: true,
        },
    );
    assert!(scenario(&st, d).is_err());
    assert_eq!(fs::read(d.join("f.tmp")).unwrap(), b"");
    assert_eq!(fs::read(d.join("f")).unwrap(), b"old");

    // An appended file is cut back to its last synced length.
    let g = d.join("g");
    let st = FaultyStorage::with_fault(
        5,
        Fault::PowerLoss {
            drop_unsynced: true,
        },
    );
    st.create(&g).unwrap();
    st.append(&g, b"durable").unwrap();
    st.sync_file(&g).unwrap();
    st.append(&g, b" volatile").unwrap();
    assert!(st.sync_file(&g).is_err());
    assert_eq!(fs::read(&g).unwrap(), b"durable");

    // A symlink not made durable disappears.
    let st = FaultyStorage::with_fault(
        2,
        Fault::PowerLoss {
            drop_unsynced: true,
        },
    );
    st.symlink(Path::new("f"), &d.join("l")).unwrap();
    assert!(st.sync_dir(d).is_err());
    assert!(fs::symlink_metadata(d.join("l")).is_err());
}

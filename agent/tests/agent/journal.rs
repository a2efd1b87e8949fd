use std::fs;
use std::path::Path;
use std::sync::Arc;

use ota_agent::journal::{BootCounter, Journal, JournalError, MAX_RECORD};
use ota_agent::storage::{Fault, FaultyStorage, FsStorage, SharedStorage};

use crate::util::tempdir;

fn fs_journal(dir: &Path) -> Journal {
    Journal::open(FsStorage::shared(), dir).unwrap()
}

#[test]
fn absent_journal_loads_as_none_then_round_trips() {
    let dir = tempdir();
    let j = fs_journal(dir.path());
    assert_eq!(j.load().unwrap(), None);
    j.store(b"state one").unwrap();
    assert_eq!(j.load().unwrap().as_deref(), Some(&b"state one"[..]));
    j.store(b"state two").unwrap();
    assert_eq!(j.load().unwrap().as_deref(), Some(&b"state two"[..]));
    assert_eq!(
        j.load_previous().unwrap().as_deref(),
        Some(&b"state one"[..])
    );
    // A new instance (an agent restart) sees the same.
    let j2 = fs_journal(dir.path());
    assert_eq!(j2.load().unwrap().as_deref(), Some(&b"state two"[..]));
    j.store(b"").unwrap();
    assert_eq!(j.load().unwrap().as_deref(), Some(&b""[..]));
}

#[test]
fn corrupt_journal_is_an_error_and_the_last_good_state_survives() {
    let dir = tempdir();
    let j = fs_journal(dir.path());
    j.store(b"good one").unwrap();
    j.store(b"good two").unwrap();
    let path = dir.path().join("state");

    // A flipped bit, a truncation, garbage: all typed errors, never a panic or wrong bytes.
    let mut bytes = fs::read(&path).unwrap();
    let i = bytes.len() - 40;
    bytes[i] ^= 1;
    for damaged in [
        bytes.clone(),
        bytes[..7].to_vec(),
        b"garbage".to_vec(),
        Vec::new(),
    ] {
        fs::write(&path, &damaged).unwrap();
        assert!(matches!(j.load(), Err(JournalError::Corrupt { .. })));
        assert_eq!(
            j.load_previous().unwrap().as_deref(),
            Some(&b"good one"[..])
        );
    }

    // Storing over a damaged record does not rotate the damage into .prev.
    j.store(b"good three").unwrap();
    assert_eq!(j.load().unwrap().as_deref(), Some(&b"good three"[..]));
    assert_eq!(
        j.load_previous().unwrap().as_deref(),
        Some(&b"good one"[..])
    );
}

#[test]
fn current_missing_falls_back_to_prev() {
    let dir = tempdir();
    let j = fs_journal(dir.path());
    j.store(b"one").unwrap();
    j.store(b"two").unwrap();
    fs::remove_file(dir.path().join("state")).unwrap();
    assert_eq!(j.load().unwrap().as_deref(), Some(&b"one"[..]));
}

#[test]
fn oversized_record_is_refused() {
    let dir = tempdir();
    let j = fs_journal(dir.path());
    let big = vec![0u8; MAX_RECORD + 1];
    assert!(matches!(j.store(&big), Err(JournalError::TooLarge(_))));
}

/// Stores `new` over `old` with a fault at every mutating operation in turn; after each fault a
/// fresh journal (the agent after a reboot) must load exactly `old` or `new`.
fn crash_at_every_write(old: Option<&[u8]>, new: &[u8], fault: Fault) {
    let total = {
        let dir = tempdir();
        if let Some(old) = old {
            fs_journal(dir.path()).store(old).unwrap();
        }
        let faulty = Arc::new(FaultyStorage::new());
        let storage: SharedStorage = faulty.clone();
        Journal::open(storage, dir.path())
            .unwrap()
            .store(new)
            .unwrap();
        faulty.mutations()
    };
    assert!(total >= 5, "{total}");
    for n in 1..=total {
        let dir = tempdir();
        if let Some(old) = old {
            fs_journal(dir.path()).store(old).unwrap();
        }
        let faulty = Arc::new(FaultyStorage::with_fault(n, fault));
        let storage: SharedStorage = faulty.clone();
        let stored = Journal::open(storage, dir.path()).and_then(|j| j.store(new));
        assert!(stored.is_err(), "fault at {n} must surface");

        let loaded = fs_journal(dir.path()).load().unwrap();
        let ok = loaded.as_deref() == Some(new) || loaded.as_deref() == old;
        assert!(ok, "fault {fault:?} at op {n}/{total}: loaded {loaded:?}");

        // And the agent can carry on: the next store works and wins.
        let j = fs_journal(dir.path());
        j.store(b"after").unwrap();
        assert_eq!(j.load().unwrap().as_deref(), Some(&b"after"[..]));
    }
}

#[test]
fn a_crash_at_any_write_leaves_the_old_or_the_new_state() {
    for fault in Fault::ALL {
        crash_at_every_write(Some(b"old state"), b"new state", fault);
        crash_at_every_write(None, b"first state", fault);
    }
}

#[test]
fn boot_counter_increments_across_restarts() {
    let dir = tempdir();
    let c = BootCounter::open(FsStorage::shared(), dir.path()).unwrap();
    assert_eq!(c.current().unwrap(), 0);
    assert_eq!(c.increment().unwrap(), 1);
    assert_eq!(c.increment().unwrap(), 2);
    let c = BootCounter::open(FsStorage::shared(), dir.path()).unwrap();
    assert_eq!(c.increment().unwrap(), 3);

    // A damaged counter continues from the last good value.
    fs::write(dir.path().join("boot"), b"junk").unwrap();
    assert_eq!(c.current().unwrap(), 2);
    assert_eq!(c.increment().unwrap(), 3);
}

#[test]
fn boot_counter_survives_a_power_loss_at_every_write() {
    let total = {
        let dir = tempdir();
        let faulty = Arc::new(FaultyStorage::new());
        let storage: SharedStorage = faulty.clone();
        BootCounter::open(storage, dir.path())
            .unwrap()
            .increment()
            .unwrap();
        faulty.mutations()
    };
    for n in 1..=total {
        let dir = tempdir();
        let c = BootCounter::open(FsStorage::shared(), dir.path()).unwrap();
        c.increment().unwrap();
        c.increment().unwrap();
        let faulty = Arc::new(FaultyStorage::with_fault(
            n,
            Fault::PowerLoss {
                drop_unsynced: true,
            },
        ));
        let storage: SharedStorage = faulty.clone();
        assert!(
            BootCounter::open(storage, dir.path())
                .and_then(|c| c.increment())
                .is_err()
        );
        let after = BootCounter::open(FsStorage::shared(), dir.path())
            .unwrap()
            .current()
            .unwrap();
        assert!(after == 2 || after == 3, "op {n}: {after}");
    }
}

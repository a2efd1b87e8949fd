use std::fs;
use std::path::Path;
use std::sync::Arc;

use ota_agent::cache::{Cache, CacheEntry, CacheError};
use ota_agent::storage::{Fault, FaultyStorage, FsStorage, SharedStorage, Storage};
use ota_core::digest::Digest;

use crate::util::{artifact, tempdir};

/// Writes `bytes` as the partial download of their digest, the way the downloader does.
fn write_partial(cache: &Cache, bytes: &[u8]) -> std::io::Result<Digest> {
    let digest = Digest::of(bytes);
    let st = cache.storage();
    let part = cache.partial_path(&digest);
    st.create(&part)?;
    for chunk in bytes.chunks(4096) {
        st.append(&part, chunk)?;
    }
    Ok(digest)
}

fn fs_cache(data: &Path) -> Cache {
    Cache::open(FsStorage::shared(), data).unwrap()
}

#[tokio::test]
async fn insert_list_rehash_evict() {
    let dir = tempdir();
    let cache = fs_cache(dir.path());
    assert!(cache.list().unwrap().is_empty());

    let a = artifact(100_000, 1);
    let da = write_partial(&cache, &a).unwrap();
    assert_eq!(cache.partial_len(&da).unwrap(), Some(100_000));
    assert!(!cache.contains(&da).unwrap());
    let path = cache.insert_from_partial(&da).unwrap();
    assert_eq!(path, dir.path().join("cache").join(da.to_string()));
    assert_eq!(fs::read(&path).unwrap(), a);
    assert_eq!(cache.partial_len(&da).unwrap(), None);
    assert!(cache.contains(&da).unwrap());
    assert!(cache.rehash(&da).await.unwrap());

    let b = artifact(10, 2);
    let db = write_partial(&cache, &b).unwrap();
    cache.insert_from_partial(&db).unwrap();
    // Left-overs whose names are not digests are not entries.
    fs::write(dir.path().join("cache/not-a-digest"), b"x").unwrap();
    let mut expected = vec![
        CacheEntry {
            digest: da,
            size: 100_000,
        },
        CacheEntry {
            digest: db,
            size: 10,
        },
    ];
    expected.sort_by_key(|e| e.digest);
    assert_eq!(cache.list().unwrap(), expected);

    cache.evict(&da).unwrap();
    assert!(!cache.contains(&da).unwrap());
    assert!(!cache.rehash(&da).await.unwrap(), "absent is not a match");
    cache.evict(&da).unwrap();
    assert_eq!(cache.list().unwrap().len(), 1);
}

#[tokio::test]
async fn rehash_detects_a_damaged_entry() {
    let dir = tempdir();
    let cache = fs_cache(dir.path());
    let a = artifact(300_000, 3);
    let d = write_partial(&cache, &a).unwrap();
    let path = cache.insert_from_partial(&d).unwrap();
    let mut bytes = fs::read(&path).unwrap();
    bytes[123_456] ^= 0x80;
    fs::write(&path, bytes).unwrap();
    assert!(!cache.rehash(&d).await.unwrap());
}

#[test]
fn insert_without_partial_is_a_typed_error() {
    let dir = tempdir();
    let cache = fs_cache(dir.path());
    let d = Digest::of(b"nothing");
    assert!(matches!(
        cache.insert_from_partial(&d),
        Err(CacheError::NoPartial(x)) if x == d
    ));
}

#[test]
fn remove_partial_removes_part_and_validator() {
    let dir = tempdir();
    let cache = fs_cache(dir.path());
    let d = write_partial(&cache, b"partial").unwrap();
    fs::write(cache.validator_path(&d), b"\"etag\"").unwrap();
    cache.remove_partial(&d).unwrap();
    assert_eq!(cache.partial_len(&d).unwrap(), None);
    assert!(!cache.validator_path(&d).exists());
    cache.remove_partial(&d).unwrap();
}

/// Downloads (writes a partial) and inserts an artifact with a fault at every mutating
/// operation; after each, a fresh cache must either not have the entry or have it intact.
#[tokio::test]
async fn a_crash_at_any_write_never_leaves_a_bad_entry() {
    let bytes = artifact(20_000, 4);
    let digest = Digest::of(&bytes);
    let run = |storage: SharedStorage, data: &Path| -> Result<(), String> {
        let cache = Cache::open(storage, data).map_err(|e| e.to_string())?;
        write_partial(&cache, &bytes).map_err(|e| e.to_string())?;
        cache
            .insert_from_partial(&digest)
            .map_err(|e| e.to_string())?;
        Ok(())
    };
    let total = {
        let dir = tempdir();
        let faulty = Arc::new(FaultyStorage::new());
        run(faulty.clone(), dir.path()).unwrap();
        faulty.mutations()
    };
    for fault in Fault::ALL {
        for n in 1..=total {
            let dir = tempdir();
            let faulty = Arc::new(FaultyStorage::with_fault(n, fault));
            let res = run(faulty.clone(), dir.path());
            assert!(res.is_err(), "fault at {n} must surface");

            let cache = fs_cache(dir.path());
            if cache.contains(&digest).unwrap() {
                assert!(
                    cache.rehash(&digest).await.unwrap(),
                    "{fault:?} at op {n}/{total}: a damaged entry is in the cache"
                );
            }
            // Whatever is left, the agent can start over.
            cache.remove_partial(&digest).unwrap();
            let again = write_partial(&cache, &bytes).unwrap();
            cache.insert_from_partial(&again).unwrap();
            assert!(cache.rehash(&digest).await.unwrap());
        }
    }
}

#[test]
fn evict_is_durable_and_counts_as_writes() {
    let dir = tempdir();
    let faulty = Arc::new(FaultyStorage::new());
    let cache = Cache::open(faulty.clone(), dir.path()).unwrap();
    let d = write_partial(&cache, b"abc").unwrap();
    cache.insert_from_partial(&d).unwrap();
    let before = faulty.mutations();
    cache.evict(&d).unwrap();
    assert!(faulty.mutations() > before);
    assert!(faulty.len(&cache.path(&d)).unwrap().is_none());
}

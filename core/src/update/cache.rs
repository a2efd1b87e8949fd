//! The cache index: which verified artifacts sit in `cache/<digest>`, least recently used first.

use alloc::vec::Vec;

use super::ReleaseInfo;
use crate::digest::Digest;

/// Whether the index lists `digest`.
pub(crate) fn contains(cache: &[ReleaseInfo], digest: &Digest) -> bool {
    cache.iter().any(|r| r.digest == *digest)
}

/// Adds `release` as the most recently used entry (moving it if already listed).
pub(crate) fn admit(cache: &mut Vec<ReleaseInfo>, release: ReleaseInfo) {
    remove(cache, &release.digest);
    cache.push(release);
}

/// Marks `digest` as the most recently used entry, if listed.
pub(crate) fn touch(cache: &mut Vec<ReleaseInfo>, digest: &Digest) {
    if let Some(i) = cache.iter().position(|r| r.digest == *digest) {
        let entry = cache.remove(i);
        cache.push(entry);
    }
}

/// Removes `digest` from the index; whether it was listed.
pub(crate) fn remove(cache: &mut Vec<ReleaseInfo>, digest: &Digest) -> bool {
    let before = cache.len();
    cache.retain(|r| r.digest != *digest);
    cache.len() != before
}

/// Removes least recently used entries until at most `capacity` remain, never one in
/// `protected` (so the index may stay above capacity). Returns the evicted digests.
pub(crate) fn evict_over(
    cache: &mut Vec<ReleaseInfo>,
    capacity: usize,
    protected: &[Digest],
) -> Vec<Digest> {
    let mut evicted = Vec::new();
    let mut i = 0;
    while cache.len() > capacity && i < cache.len() {
        match cache.get(i) {
            Some(r) if !protected.contains(&r.digest) => {
                evicted.push(cache.remove(i).digest);
            }
            _ => i += 1,
        }
    }
    evicted
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;

    fn entry(n: u8) -> ReleaseInfo {
        ReleaseInfo {
            version: String::from("1"),
            digest: Digest([n; 32]),
            security_version: 1,
            size: 1,
            installer: None,
            chunk_index: None,
        }
    }

    #[test]
    fn eviction_is_lru_and_spares_protected_entries() {
        let mut cache = Vec::new();
        for n in 1..=4 {
            admit(&mut cache, entry(n));
        }
        touch(&mut cache, &Digest([1; 32]));
        // LRU order is now 2, 3, 4, 1; 2 is protected.
        let evicted = evict_over(&mut cache, 2, &[Digest([2; 32])]);
        assert_eq!(evicted, [Digest([3; 32]), Digest([4; 32])]);
        let left: Vec<_> = cache.iter().map(|r| r.digest).collect();
        assert_eq!(left, [Digest([2; 32]), Digest([1; 32])]);
        assert!(evict_over(&mut cache, 0, &[Digest([2; 32]), Digest([1; 32])]).is_empty());
    }
}

//! Helpers for the agent's tests, built only for tests and with the `test-support` feature
//! (never into the shipped agent). The storage double is [`crate::storage::FaultyStorage`].

/// `len` deterministic pseudo-random bytes (xorshift from `seed`): artifacts and images that
/// are not all zeros, the same on every run.
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

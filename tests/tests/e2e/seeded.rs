//! Seeded random fault points: the seed is printed, and `OTA_TEST_SEED` replays a run.

/// A small deterministic generator (splitmix64): the same seed, the same points.
pub struct Rng(pub u64);

impl Rng {
    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

/// The seed: `OTA_TEST_SEED` when set (to replay a run), else a random one.
pub fn seed() -> u64 {
    match std::env::var("OTA_TEST_SEED") {
        Ok(s) => s.parse().expect("OTA_TEST_SEED: a number"),
        Err(_) => {
            let mut b = [0u8; 8];
            getrandom::fill(&mut b).unwrap();
            u64::from_le_bytes(b)
        }
    }
}

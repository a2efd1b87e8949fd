//! Deterministic, sticky cohorts: which wave a device belongs to.
//!
//! Every (rollout, device) pair hashes to a *point*: the first 8 bytes (big-endian) of
//!
//! ```text
//! SHA-256( "ota/rollout-cohort/v1" 0x00 || u64be(len(rollout id)) || rollout id || device id )
//! ```
//!
//! read as a fraction `point / 2^64` of the hash space. A device belongs to wave `i` iff its
//! fraction is below wave `i`'s share: `point * 10_000 < share_bp * 2^64`, exact in `u128`.
//! Its *cohort* is the first wave it belongs to; since waves are cumulative it is in every later
//! wave too.
//!
//! This is sticky: a device's cohort depends only on the rollout id, its own id and the wave
//! shares — never on the other targets — so adding or removing targets moves no existing device
//! between waves. The price is that wave sizes are binomial around `share × N` rather than
//! exactly `ceil(share × N)` (1 % of 1000 devices is 10 ± 3).
//!
//! One exception keeps the first wave from being empty: if no target falls below the first
//! share (small fleets), the target with the smallest point (ties broken by device id) joins
//! the first wave. It is applied once, when the rollout is created; the planner stores every
//! device's cohort, so it never moves afterwards.

use alloc::vec::Vec;

use super::Ratio;
use crate::digest::Hasher;

/// The domain-separation prefix of the cohort hash (versioned: changing the hash is a new
/// version).
const DOMAIN: &[u8] = b"ota/rollout-cohort/v1\0";

/// The device's point in the cohort hash space of a rollout (see the module docs).
pub fn cohort_point(rollout_id: &str, device_id: &str) -> u64 {
    let mut h = Hasher::new();
    h.update(DOMAIN);
    h.update(&(rollout_id.len() as u64).to_be_bytes());
    h.update(rollout_id.as_bytes());
    h.update(device_id.as_bytes());
    let digest = h.finish();
    let first = digest
        .as_bytes()
        .first_chunk::<8>()
        .copied()
        .unwrap_or_default();
    u64::from_be_bytes(first)
}

/// Whether a device at `point` is in a wave of size `share`: `point / 2^64 < share`.
pub fn in_share(point: u64, share: Ratio) -> bool {
    u128::from(point) * u128::from(Ratio::SCALE) < u128::from(share.as_basis_points()) << 64
}

/// The first wave (index into `waves`, cumulative shares) a device at `point` belongs to; the
/// last wave if none does (impossible when the last wave is 100 %).
pub fn cohort_of(point: u64, waves: &[Ratio]) -> usize {
    waves
        .iter()
        .position(|w| in_share(point, *w))
        .unwrap_or(waves.len().saturating_sub(1))
}

/// The cohort of every device of a target set, in the order given, with the non-empty first
/// wave guarantee of the module docs. Deterministic in the set, independent of its order.
pub fn assign_cohorts<'a>(
    rollout_id: &str,
    waves: &[Ratio],
    device_ids: impl IntoIterator<Item = &'a str>,
) -> Vec<usize> {
    let points: Vec<(u64, &str)> = device_ids
        .into_iter()
        .map(|id| (cohort_point(rollout_id, id), id))
        .collect();
    let mut cohorts: Vec<usize> = points.iter().map(|(p, _)| cohort_of(*p, waves)).collect();
    if !cohorts.contains(&0) {
        let smallest = points
            .iter()
            .enumerate()
            .min_by_key(|(_, (point, id))| (*point, *id))
            .map(|(i, _)| i);
        if let Some(c) = smallest.and_then(|i| cohorts.get_mut(i)) {
            *c = 0;
        }
    }
    cohorts
}

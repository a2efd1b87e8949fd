//! Which chunks to copy from the device's own files and which to fetch, in artifact order.

use alloc::collections::BTreeSet;
use alloc::vec::Vec;
use core::ops::Range;

use super::ChunkIndex;

/// Bounds on one fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanLimits {
    /// Most bytes one Range request asks for: a run of missing chunks longer than this is
    /// split, so a broken connection costs at most this much, and progress moves often.
    pub max_fetch_bytes: u64,
}

impl PlanLimits {
    /// One Range request asks for at most 4 MiB.
    pub const DEFAULT: PlanLimits = PlanLimits {
        max_fetch_bytes: 4 * 1024 * 1024,
    };
}

/// One step of a delta, in artifact order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Chunk `chunk` is already on the device (in a cached artifact, the running release, or
    /// earlier in the artifact being written): copy it, checking its digest.
    Copy {
        /// The chunk's position in the index.
        chunk: usize,
    },
    /// Fetch the neighbouring chunks `chunks` (the artifact bytes `bytes`) with one Range
    /// request, checking each chunk's digest as it arrives.
    Fetch {
        /// The chunks' positions in the index.
        chunks: Range<usize>,
        /// Their byte range in the artifact (end exclusive).
        bytes: Range<u64>,
    },
}

/// A delta: the steps and what they cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The steps, in artifact order, from the first chunk not yet written.
    pub steps: Vec<Step>,
    /// Bytes the steps fetch over the network.
    pub fetch_bytes: u64,
    /// Bytes the steps copy from the device's own files.
    pub copy_bytes: u64,
}

impl Plan {
    /// Number of Range requests.
    pub fn requests(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| matches!(s, Step::Fetch { .. }))
            .count()
    }
}

/// Plans the delta of `index` from chunk `from` on (the chunks before it are already written),
/// given `has`: whether the device holds a chunk with this SHA-256.
///
/// Neighbouring missing chunks are fetched together, up to [`PlanLimits::max_fetch_bytes`] per
/// request. A chunk that occurs twice is fetched once: its second occurrence is copied from the
/// artifact being written.
pub fn plan(
    index: &ChunkIndex,
    from: usize,
    mut has: impl FnMut(&[u8; 32]) -> bool,
    limits: PlanLimits,
) -> Plan {
    let max = limits.max_fetch_bytes.max(1);
    let mut steps = Vec::new();
    let (mut fetch_bytes, mut copy_bytes) = (0u64, 0u64);
    let mut fetched: BTreeSet<[u8; 32]> = BTreeSet::new();
    let mut run: Option<(Range<usize>, Range<u64>)> = None;
    for (i, bytes) in index.ranges().enumerate().skip(from) {
        let Some(chunk) = index.chunks.get(i) else {
            break;
        };
        let len = bytes.end - bytes.start;
        if fetched.contains(&chunk.sha256) || has(&chunk.sha256) {
            if let Some((chunks, bytes)) = run.take() {
                steps.push(Step::Fetch { chunks, bytes });
            }
            steps.push(Step::Copy { chunk: i });
            copy_bytes += len;
            continue;
        }
        fetched.insert(chunk.sha256);
        fetch_bytes += len;
        run = match run.take() {
            Some((chunks, r)) if r.end - r.start + len <= max => {
                Some((chunks.start..i + 1, r.start..bytes.end))
            }
            Some((chunks, r)) => {
                steps.push(Step::Fetch { chunks, bytes: r });
                Some((i..i + 1, bytes))
            }
            None => Some((i..i + 1, bytes)),
        };
    }
    if let Some((chunks, bytes)) = run {
        steps.push(Step::Fetch { chunks, bytes });
    }
    Plan {
        steps,
        fetch_bytes,
        copy_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::{ChunkEntry, ChunkParams};
    use alloc::vec;

    fn index(chunks: &[(u32, u8)]) -> ChunkIndex {
        ChunkIndex::new(
            ChunkParams::DEFAULT,
            chunks
                .iter()
                .map(|&(len, tag)| ChunkEntry {
                    len,
                    sha256: [tag; 32],
                })
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn issue18_missing_neighbours_are_fetched_together_and_held_chunks_copied() {
        let idx = index(&[(10, 1), (20, 2), (30, 3), (40, 4), (50, 5)]);
        let held = [[1u8; 32], [4u8; 32]];
        let p = plan(&idx, 0, |h| held.contains(h), PlanLimits::DEFAULT);
        assert_eq!(
            p.steps,
            vec![
                Step::Copy { chunk: 0 },
                Step::Fetch {
                    chunks: 1..3,
                    bytes: 10..60
                },
                Step::Copy { chunk: 3 },
                Step::Fetch {
                    chunks: 4..5,
                    bytes: 100..150
                },
            ]
        );
        assert_eq!((p.fetch_bytes, p.copy_bytes, p.requests()), (100, 50, 2));
    }

    #[test]
    fn issue18_a_run_is_split_at_the_request_limit_and_a_repeat_is_fetched_once() {
        let idx = index(&[(10, 1), (10, 2), (10, 3), (10, 1)]);
        let p = plan(
            &idx,
            0,
            |_| false,
            PlanLimits {
                max_fetch_bytes: 20,
            },
        );
        assert_eq!(
            p.steps,
            vec![
                Step::Fetch {
                    chunks: 0..2,
                    bytes: 0..20
                },
                Step::Fetch {
                    chunks: 2..3,
                    bytes: 20..30
                },
                Step::Copy { chunk: 3 },
            ]
        );
        assert_eq!((p.fetch_bytes, p.copy_bytes), (30, 10));
    }

    #[test]
    fn issue18_a_resumed_plan_starts_at_its_chunk() {
        let idx = index(&[(10, 1), (10, 2), (10, 3)]);
        let p = plan(&idx, 2, |_| false, PlanLimits::DEFAULT);
        assert_eq!(
            p.steps,
            vec![Step::Fetch {
                chunks: 2..3,
                bytes: 20..30
            }]
        );
        let everything_held = plan(&idx, 0, |_| true, PlanLimits::DEFAULT);
        assert_eq!(
            (everything_held.fetch_bytes, everything_held.requests()),
            (0, 0)
        );
    }
}

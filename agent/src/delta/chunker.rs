//! Content-defined chunking (FastCDC 2020) of a file into a [`ChunkIndex`].
//!
//! The same function cuts an artifact at `ota release sign` and a device's own files when it
//! looks for chunks it already holds: equal bytes give equal chunks wherever they sit.

use std::io::{self, Read};
use std::path::Path;

use fastcdc::v2020::StreamCDC;
use ota_core::delta::{ChunkEntry, ChunkIndex, ChunkParams};
use ota_core::digest::Digest;

/// Cuts everything `reader` yields into chunks with `params` and returns their index;
/// `on_bytes` is called with the number of bytes of each chunk (for progress). Memory stays
/// within a few times `params.max`.
pub fn index_reader(
    reader: impl Read,
    params: ChunkParams,
    mut on_bytes: impl FnMut(u64),
) -> io::Result<ChunkIndex> {
    params
        .check()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut chunks = Vec::new();
    for chunk in StreamCDC::new(reader, params.min, params.avg, params.max) {
        let chunk = chunk.map_err(io::Error::from)?;
        let len = u32::try_from(chunk.length)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "chunk over 4 GiB"))?;
        chunks.push(ChunkEntry {
            len,
            sha256: Digest::of(&chunk.data).0,
        });
        on_bytes(u64::from(len));
    }
    ChunkIndex::new(params, chunks).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The chunk index of the file at `path` (see [`index_reader`]).
pub fn index_file(path: &Path, params: ChunkParams) -> io::Result<ChunkIndex> {
    let file = std::fs::File::open(path)?;
    index_reader(io::BufReader::with_capacity(1 << 16, file), params, |_| {})
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes (xorshift), so chunk boundaries are content-defined.
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn issue18_an_insertion_changes_only_the_chunks_around_it() {
        let params = ChunkParams::DEFAULT;
        let old = noise(7, 2 << 20);
        let mut new = old.clone();
        new.splice(1 << 20..1 << 20, noise(9, 1000));
        let a = index_reader(&old[..], params, |_| {}).unwrap();
        let b = index_reader(&new[..], params, |_| {}).unwrap();
        assert_eq!(a.artifact_size, old.len() as u64);
        assert_eq!(b.artifact_size, new.len() as u64);
        let known: std::collections::HashSet<_> = a.chunks.iter().map(|c| c.sha256).collect();
        let missing: u64 = b
            .chunks
            .iter()
            .filter(|c| !known.contains(&c.sha256))
            .map(|c| u64::from(c.len))
            .sum();
        assert!(missing > 0, "the inserted bytes are new");
        assert!(
            missing <= 2 * u64::from(params.max),
            "an insertion re-cuts at most the chunks around it, not {missing} bytes"
        );
    }

    #[test]
    fn issue18_bad_parameters_are_an_error_not_a_panic() {
        let params = ChunkParams {
            min: 1,
            avg: 2,
            max: 3,
        };
        assert!(index_reader(&b"abc"[..], params, |_| {}).is_err());
    }
}

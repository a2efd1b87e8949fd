//! The chunk index: the artifact's content-defined chunks, in order, each with its SHA-256.

use alloc::vec::Vec;
use core::ops::Range;

use crate::digest::Digest;

/// The chunk index format version this build writes and reads.
pub const INDEX_FORMAT_VERSION: u16 = 1;

/// Bytes of one chunk record: the length (u32, big-endian) and the SHA-256.
const RECORD_BYTES: usize = 4 + 32;

/// Why chunk index bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkIndexError {
    /// The bytes are not a chunk index map.
    #[error("malformed chunk index: {0}")]
    Malformed(&'static str),
    /// The index is larger than [`ChunkIndex::MAX_BYTES`].
    #[error("chunk index of {0} bytes is over the limit of {limit} bytes", limit = ChunkIndex::MAX_BYTES)]
    TooLarge(usize),
    /// An unknown format version.
    #[error("unsupported chunk index format version {0}")]
    UnsupportedFormat(u16),
    /// The chunker parameters are out of range or out of order.
    #[error("chunk index parameters out of range (min {min}, avg {avg}, max {max})")]
    BadParams {
        /// Smallest chunk.
        min: u32,
        /// Average chunk.
        avg: u32,
        /// Largest chunk.
        max: u32,
    },
    /// A chunk is empty or larger than the index's maximum.
    #[error("chunk {chunk} has length {len}, outside 1..={max}")]
    BadChunkLength {
        /// Its position.
        chunk: usize,
        /// Its length.
        len: u32,
        /// The index's maximum chunk length.
        max: u32,
    },
    /// The chunks do not add up to the artifact size.
    #[error("chunks cover {covered} bytes, the artifact has {size}")]
    SizeMismatch {
        /// Sum of the chunk lengths.
        covered: u64,
        /// The artifact size the index states.
        size: u64,
    },
    /// The index's bytes do not have the digest the signed manifest names.
    #[error("chunk index digest {actual} is not the signed {expected}")]
    DigestMismatch {
        /// The signed digest.
        expected: Digest,
        /// The digest of the bytes received.
        actual: Digest,
    },
}

/// The content-defined chunker's size bounds, in bytes (stored in the index so a device cuts
/// its own files the same way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkParams {
    /// Smallest chunk (except the last).
    pub min: u32,
    /// Average chunk the cut-point mask aims at.
    pub avg: u32,
    /// Largest chunk.
    pub max: u32,
}

impl ChunkParams {
    /// The default, chosen by measurement (docs/delta.md): 16 KiB / 64 KiB / 256 KiB.
    pub const DEFAULT: ChunkParams = ChunkParams {
        min: 16 * 1024,
        avg: 64 * 1024,
        max: 256 * 1024,
    };

    /// Whether the bounds are ordered and within the chunker's supported range
    /// (min 64 B to 1 MiB, avg 256 B to 4 MiB, max 1 KiB to 16 MiB).
    pub fn check(&self) -> Result<(), ChunkIndexError> {
        let ok = (64..=1 << 20).contains(&self.min)
            && (256..=4 << 20).contains(&self.avg)
            && (1024..=16 << 20).contains(&self.max)
            && self.min <= self.avg
            && self.avg <= self.max;
        if ok {
            Ok(())
        } else {
            Err(ChunkIndexError::BadParams {
                min: self.min,
                avg: self.avg,
                max: self.max,
            })
        }
    }
}

/// One chunk: its length and SHA-256 (its offset is the sum of the lengths before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkEntry {
    /// Length in bytes.
    pub len: u32,
    /// SHA-256 of the chunk's bytes.
    pub sha256: [u8; 32],
}

/// The chunk index of one artifact.
///
/// Encoded as a CBOR map with integer keys: `0` format version, `1`/`2`/`3` the chunker's
/// min/avg/max, `4` the artifact size, `5` a byte string of 36-byte records (u32 big-endian
/// length, then the 32-byte SHA-256), one per chunk in artifact order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkIndex {
    /// The chunker bounds the artifact was cut with.
    pub params: ChunkParams,
    /// The artifact size (the sum of the chunk lengths).
    pub artifact_size: u64,
    /// The chunks, in artifact order.
    pub chunks: Vec<ChunkEntry>,
}

impl ChunkIndex {
    /// Largest encoded index: 8 MiB, about 233,000 chunks (a 14 GiB artifact at the default
    /// average). Bounds what a device holds in memory for one delta.
    pub const MAX_BYTES: usize = 8 * 1024 * 1024;

    /// An index from chunks cut with `params`; checks it like a decoded one.
    pub fn new(params: ChunkParams, chunks: Vec<ChunkEntry>) -> Result<Self, ChunkIndexError> {
        let artifact_size = chunks.iter().map(|c| u64::from(c.len)).sum();
        Self::checked(params, artifact_size, chunks)
    }

    /// The byte range of every chunk, in order.
    pub fn ranges(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.chunks.iter().scan(0u64, |offset, c| {
            let start = *offset;
            *offset += u64::from(c.len);
            Some(start..*offset)
        })
    }

    /// The number of whole chunks that fit in the first `bytes` bytes of the artifact, and the
    /// offset where they end (where a resumed delta continues).
    pub fn whole_chunks_within(&self, bytes: u64) -> (usize, u64) {
        let mut end = 0u64;
        for (i, c) in self.chunks.iter().enumerate() {
            let next = end + u64::from(c.len);
            if next > bytes {
                return (i, end);
            }
            end = next;
        }
        (self.chunks.len(), end)
    }

    /// Encodes the index to its canonical CBOR bytes.
    pub fn to_cbor(&self) -> Vec<u8> {
        let mut records = Vec::with_capacity(self.chunks.len() * RECORD_BYTES);
        for c in &self.chunks {
            records.extend_from_slice(&c.len.to_be_bytes());
            records.extend_from_slice(&c.sha256);
        }
        let mut e = minicbor::Encoder::new(Vec::new());
        // Writing into a Vec cannot fail.
        let _ = e
            .map(6)
            .and_then(|e| e.u8(0)?.u16(INDEX_FORMAT_VERSION))
            .and_then(|e| e.u8(1)?.u32(self.params.min))
            .and_then(|e| e.u8(2)?.u32(self.params.avg))
            .and_then(|e| e.u8(3)?.u32(self.params.max))
            .and_then(|e| e.u8(4)?.u64(self.artifact_size))
            .and_then(|e| e.u8(5)?.bytes(&records));
        e.into_writer()
    }

    /// The digest of [`to_cbor`](Self::to_cbor): what the manifest signs.
    pub fn digest(&self) -> Digest {
        Digest::of(&self.to_cbor())
    }

    /// Decodes index bytes that must have the signed `expected` digest (checked first, so
    /// nothing unsigned is ever parsed), then bounds-checks them.
    pub fn from_signed_cbor(bytes: &[u8], expected: Digest) -> Result<Self, ChunkIndexError> {
        if bytes.len() > Self::MAX_BYTES {
            return Err(ChunkIndexError::TooLarge(bytes.len()));
        }
        let actual = Digest::of(bytes);
        if actual != expected {
            return Err(ChunkIndexError::DigestMismatch { expected, actual });
        }
        Self::from_cbor(bytes)
    }

    /// Decodes and checks index bytes (no digest check; see
    /// [`from_signed_cbor`](Self::from_signed_cbor)).
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, ChunkIndexError> {
        if bytes.len() > Self::MAX_BYTES {
            return Err(ChunkIndexError::TooLarge(bytes.len()));
        }
        let malformed = |_| ChunkIndexError::Malformed("not a chunk index map");
        let mut d = minicbor::Decoder::new(bytes);
        let entries = d
            .map()
            .map_err(malformed)?
            .ok_or(ChunkIndexError::Malformed("indefinite-length map"))?;
        let (mut version, mut min, mut avg, mut max, mut size, mut records) =
            (None, None, None, None, None, None);
        for _ in 0..entries {
            match d.u8().map_err(malformed)? {
                0 => version = Some(d.u16().map_err(malformed)?),
                1 => min = Some(d.u32().map_err(malformed)?),
                2 => avg = Some(d.u32().map_err(malformed)?),
                3 => max = Some(d.u32().map_err(malformed)?),
                4 => size = Some(d.u64().map_err(malformed)?),
                5 => records = Some(d.bytes().map_err(malformed)?),
                _ => d.skip().map_err(malformed)?,
            }
        }
        if d.position() != bytes.len() {
            return Err(ChunkIndexError::Malformed("bytes after the index"));
        }
        let missing = ChunkIndexError::Malformed("a required key is missing");
        let version = version.ok_or(missing.clone())?;
        if version != INDEX_FORMAT_VERSION {
            return Err(ChunkIndexError::UnsupportedFormat(version));
        }
        let params = ChunkParams {
            min: min.ok_or(missing.clone())?,
            avg: avg.ok_or(missing.clone())?,
            max: max.ok_or(missing.clone())?,
        };
        let records = records.ok_or(missing.clone())?;
        let artifact_size = size.ok_or(missing)?;
        if records.len() % RECORD_BYTES != 0 {
            return Err(ChunkIndexError::Malformed(
                "chunk records are not a whole number of 36-byte records",
            ));
        }
        let chunks = records
            .chunks_exact(RECORD_BYTES)
            .map(|r| {
                let (len, sha) = r.split_at(4);
                let mut l = [0u8; 4];
                l.copy_from_slice(len);
                let mut s = [0u8; 32];
                s.copy_from_slice(sha);
                ChunkEntry {
                    len: u32::from_be_bytes(l),
                    sha256: s,
                }
            })
            .collect();
        Self::checked(params, artifact_size, chunks)
    }

    /// The index, if its parameters, chunk lengths and size agree.
    fn checked(
        params: ChunkParams,
        artifact_size: u64,
        chunks: Vec<ChunkEntry>,
    ) -> Result<Self, ChunkIndexError> {
        let index = ChunkIndex {
            params,
            artifact_size,
            chunks,
        };
        index.check()?;
        Ok(index)
    }

    fn check(&self) -> Result<(), ChunkIndexError> {
        self.params.check()?;
        let mut covered = 0u64;
        for (chunk, c) in self.chunks.iter().enumerate() {
            if c.len == 0 || c.len > self.params.max {
                return Err(ChunkIndexError::BadChunkLength {
                    chunk,
                    len: c.len,
                    max: self.params.max,
                });
            }
            covered += u64::from(c.len);
        }
        if covered != self.artifact_size {
            return Err(ChunkIndexError::SizeMismatch {
                covered,
                size: self.artifact_size,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn entry(len: u32, tag: u8) -> ChunkEntry {
        ChunkEntry {
            len,
            sha256: [tag; 32],
        }
    }

    fn sample() -> ChunkIndex {
        ChunkIndex::new(
            ChunkParams::DEFAULT,
            vec![entry(20_000, 1), entry(70_000, 2), entry(5, 3)],
        )
        .unwrap()
    }

    #[test]
    fn issue18_an_index_round_trips_and_its_digest_is_checked_first() {
        let index = sample();
        let bytes = index.to_cbor();
        assert_eq!(
            ChunkIndex::from_signed_cbor(&bytes, index.digest()).unwrap(),
            index
        );
        let mut forged = bytes.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert!(matches!(
            ChunkIndex::from_signed_cbor(&forged, index.digest()),
            Err(ChunkIndexError::DigestMismatch { .. })
        ));
    }

    #[test]
    fn issue18_hostile_indexes_are_typed_errors() {
        let index = sample();
        let mut wrong_size = index.clone();
        wrong_size.artifact_size += 1;
        assert!(matches!(
            ChunkIndex::from_cbor(&wrong_size.to_cbor()),
            Err(ChunkIndexError::SizeMismatch { .. })
        ));
        let mut empty_chunk = index.clone();
        empty_chunk.chunks[1].len = 0;
        empty_chunk.artifact_size -= 70_000;
        assert!(matches!(
            ChunkIndex::from_cbor(&empty_chunk.to_cbor()),
            Err(ChunkIndexError::BadChunkLength { chunk: 1, .. })
        ));
        let mut bad_params = index.clone();
        bad_params.params.min = bad_params.params.max + 1;
        assert!(matches!(
            ChunkIndex::from_cbor(&bad_params.to_cbor()),
            Err(ChunkIndexError::BadParams { .. })
        ));
        let bytes = index.to_cbor();
        for cut in 0..bytes.len() {
            assert!(
                ChunkIndex::from_cbor(&bytes[..cut]).is_err(),
                "prefix {cut}"
            );
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(ChunkIndex::from_cbor(&trailing).is_err());
        assert!(matches!(
            ChunkIndex::from_cbor(&vec![0u8; ChunkIndex::MAX_BYTES + 1]),
            Err(ChunkIndexError::TooLarge(_))
        ));
    }

    #[test]
    fn issue18_a_resume_point_is_cut_to_a_whole_chunk() {
        let index = sample();
        assert_eq!(index.whole_chunks_within(0), (0, 0));
        assert_eq!(index.whole_chunks_within(19_999), (0, 0));
        assert_eq!(index.whole_chunks_within(20_000), (1, 20_000));
        assert_eq!(index.whole_chunks_within(90_004), (2, 90_000));
        assert_eq!(index.whole_chunks_within(u64::MAX), (3, 90_005));
        let ranges: Vec<_> = index.ranges().collect();
        assert_eq!(ranges, vec![0..20_000, 20_000..90_000, 90_000..90_005]);
    }
}

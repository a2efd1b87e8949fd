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

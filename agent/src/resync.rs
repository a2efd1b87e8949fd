//! `ota-agent resync`: the operator's way to resynchronise a device's generation watermark
//! (issue 19.2).
//!
//! The agent acts only on desired states whose generation is above the last one it acted on.
//! When that watermark is above anything the fleet server will send (a server database
//! restored from a backup, or an agent of an older version that accepted a generation near
//! `u64::MAX`), the device ignores every desired state. [`resync`] sets the watermark back to
//! 0 in the journal and the floor record, so the device acts on the next desired state it is
//! sent; the security floor, the running and known-good releases and the cache stay as they
//! are (a downgrade is still refused). Run it with the agent stopped: a running agent would
//! overwrite the journal with its own watermark.

use std::path::{Path, PathBuf};

use ota_core::update::{FloorRecord, PersistedState};
use ota_core::wire::WireMessage;

use crate::agent::{AgentError, FLOOR_RECORD, load_floor, load_state};
use crate::journal::{Journal, JournalError};
use crate::storage::SharedStorage;

/// Why a resync was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResyncError {
    /// The journal or the floor record cannot be read (or decoded).
    #[error(transparent)]
    Load(#[from] AgentError),
    /// The reset state cannot be written.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// An update is in flight: resetting under it would lose track of it.
    #[error("an update is in flight (generation {0}): let it finish, then resync")]
    InFlight(u64),
    /// Neither a journal nor a floor record is there: nothing to reset.
    #[error("no journal and no floor record in {0}: nothing to resynchronise")]
    Nothing(PathBuf),
}

/// The generation watermark of the device whose data directory is `data_dir` (the higher of
/// the journal's and the floor record's), or why it cannot be read.
pub fn watermark(storage: SharedStorage, data_dir: &Path) -> Result<u64, ResyncError> {
    let (state, record) = load(storage, data_dir)?;
    Ok(highest(state.as_ref(), record.as_ref()))
}

/// Sets the generation watermark back to 0 in the journal and the floor record (see the
/// [module documentation](self)); returns the watermark it replaced.
pub fn resync(storage: SharedStorage, data_dir: &Path) -> Result<u64, ResyncError> {
    let (state, record) = load(storage.clone(), data_dir)?;
    let previous = highest(state.as_ref(), record.as_ref());
    let journal = Journal::open(storage.clone(), data_dir)?;
    let floor = Journal::open_named(storage, data_dir, FLOOR_RECORD)?;
    let mut record = match (state, record) {
        (Some(mut state), record) => {
            if let Some(job) = &state.in_flight {
                return Err(ResyncError::InFlight(job.job().generation));
            }
            state.last_generation = 0;
            journal.store(&state.to_cbor())?;
            record.unwrap_or_else(|| FloorRecord::of(&state))
        }
        (None, Some(record)) => record,
        (None, None) => return Err(ResyncError::Nothing(data_dir.to_path_buf())),
    };
    record.last_generation = 0;
    floor.store(&record.to_cbor())?;
    Ok(previous)
}

fn highest(state: Option<&PersistedState>, record: Option<&FloorRecord>) -> u64 {
    let a = state.map_or(0, |s| s.last_generation);
    let b = record.map_or(0, |r| r.last_generation);
    a.max(b)
}

fn load(
    storage: SharedStorage,
    data_dir: &Path,
) -> Result<(Option<PersistedState>, Option<FloorRecord>), ResyncError> {
    let journal = Journal::open(storage.clone(), data_dir)?;
    let floor = Journal::open_named(storage, data_dir, FLOOR_RECORD)?;
    Ok((load_state(&journal)?, load_floor(&floor)?))
}

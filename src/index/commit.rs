//! Commit what the disk says about a key, in the single writer's transaction: observed state,
//! then the change (if this device made one) through [`Batch::record_local`]. Decides against the
//! *observed* state whether this device changed the file; the clock and the winner are the
//! store's.

use super::read::{ReadFile, UNTRUSTED_MTIME};
use crate::model::{EventType, FilePayload};
use crate::store::{self, Batch, LocalChange, Observed, Shared};

/// What the disk says about one key.
#[derive(Debug, Clone)]
pub enum Observation {
    Present {
        key: String,
        file: ReadFile,
        /// This device had not observed the path when it was probed (a new file, most of a
        /// first scan): committing inserts its observed row outright, and looks for a previous
        /// one only if that insert finds one after all.
        unobserved: bool,
    },
    Gone {
        key: String,
    },
    /// Deleted on purpose (`agent forget`): a delete event even when this device does not
    /// observe the file (an ignore file took it out of view), unless the shared view has it
    /// deleted already.
    Forgotten {
        key: String,
    },
}

/// What committing an observation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A new upsert event.
    Upserted,
    /// A new delete event.
    Deleted,
    /// Same bytes as observed last time (a touch): observed state refreshed, no event.
    Unchanged,
    /// First sight of bytes the shared view already holds: observed, no event.
    AlreadyShared,
    /// Gone, and it was never observed here: nothing to do.
    Nothing,
}

/// Commits one observation in the caller's transaction. Decides against the *observed* state
/// whether this device changed the file; the event's clock and the winner come from the store.
pub fn commit(batch: &Batch<'_>, observation: &Observation) -> store::Result<Change> {
    match observation {
        Observation::Present {
            key,
            file,
            unobserved,
        } => {
            let observed = Observed {
                bytes: file.stat.bytes,
                mtime_ns: if file.racy {
                    UNTRUSTED_MTIME
                } else {
                    file.stat.mtime_ns
                },
                inode: file.stat.inode,
                sha256: file.sha256.clone(),
            };
            let previous = if *unobserved && batch.insert_observed(key, &observed)? {
                None
            } else {
                let previous = batch.observed(key)?;
                batch.put_observed(key, &observed)?;
                previous
            };
            if previous.as_ref().is_some_and(|p| p.sha256 == file.sha256) {
                return Ok(Change::Unchanged);
            }
            // Made for each attempt: the payload holds the file's text.
            let change = || {
                LocalChange::new(key, EventType::UpsertFile, file.payload())
                    .with_payload_json(file.payload_json.as_deref())
            };
            if previous.is_none()
                && batch
                    .record_local(change().over(Shared::AssumedAbsent))?
                    .is_some()
            {
                return Ok(Change::Upserted);
            }
            let shared = batch.shared(key)?;
            if previous.is_none() {
                let winner = shared
                    .as_ref()
                    .and_then(|row| row.state.as_ref())
                    .map(|s| s.winner());
                if winner.is_some_and(|w| {
                    !w.deleted && w.sha256.as_deref() == Some(file.sha256.as_str())
                }) {
                    return Ok(Change::AlreadyShared);
                }
            }
            batch.record_local(change().over(Shared::Read(shared.as_ref())))?;
            Ok(Change::Upserted)
        }
        Observation::Gone { key } | Observation::Forgotten { key } => {
            let observed = batch.observed(key)?.is_some();
            if !observed && matches!(observation, Observation::Gone { .. }) {
                return Ok(Change::Nothing);
            }
            if observed {
                batch.forget_observed(key)?;
            }
            // A delete of something the shared view already has as a tombstone says nothing new.
            let shared = batch.shared(key)?;
            if shared
                .as_ref()
                .and_then(|row| row.state.as_ref())
                .is_some_and(|s| s.winner().deleted)
            {
                return Ok(Change::Nothing);
            }
            batch.record_local(
                LocalChange::new(key, EventType::DeleteFile, FilePayload::default())
                    .over(Shared::Read(shared.as_ref())),
            )?;
            Ok(Change::Deleted)
        }
    }
}

/// The text an observation holds: its content, and its payload, which carries the content again
/// (escaped as JSON).
pub(super) fn text_len(o: &Observation) -> usize {
    match o {
        Observation::Present { file, .. } => text_of(file),
        Observation::Gone { .. } | Observation::Forgotten { .. } => 0,
    }
}

fn text_of(file: &ReadFile) -> usize {
    file.content.as_ref().map_or(0, String::len) + file.payload_json.as_ref().map_or(0, String::len)
}

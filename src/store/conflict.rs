//! One entity's open conflict in full, for `agent conflicts show` and `agent conflicts resolve`:
//! each version with the payload it was made with, and the event that resolves the conflict by
//! keeping one of them.
//!
//! Where a version's payload (and so its text) lives on a device: the winner's in its
//! `lib_files` row; a loser's in the event that carried it, in `lib_outbox` (made here) or
//! `lib_inbox` (pulled). Nothing drops those payloads today (neither an acknowledged push nor an
//! applied pull touches them), so every version this device received as an event keeps its text
//! for as long as its conflict is open. A version known only from a re-seed is another matter:
//! a snapshot carries a loser's hash and size, not its payload. Such a version has no text here
//! ([`Text::NotKept`]), and resolving a conflict in its favour is refused rather than recorded
//! without its content.

use rusqlite::{Connection, OptionalExtension};

use super::read::{StoredState, STATE_COLUMNS};
use super::{Batch, Context, LocalChange, Result, Shared, Store, StoreError};
use crate::model::merge::{EntityState, Version};
use crate::model::{Event, EventType, FilePayload};

/// The versions of one entity with an open conflict: the winner first, then every sibling that
/// lost to it with other bytes, in the order of the merge rule's rank (best first).
#[derive(Debug, Clone)]
pub struct OpenConflict {
    pub path: String,
    pub versions: Vec<ConflictVersion>,
}

#[derive(Debug, Clone)]
pub struct ConflictVersion {
    pub version: Version,
    pub winner: bool,
    /// The payload the version was made with; `None` when this device never received it (only
    /// its hash is known, from a snapshot).
    pub payload: Option<FilePayload>,
}

/// What can be shown of a version's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Text<'a> {
    /// A tombstone: the file was deleted.
    Deleted,
    Kept(&'a str),
    /// The payload has no text: a binary file, or a document whose text could not be extracted.
    NotText,
    /// This device has only the version's hash.
    NotKept,
}

impl ConflictVersion {
    pub fn text(&self) -> Text<'_> {
        if self.version.deleted {
            return Text::Deleted;
        }
        match &self.payload {
            None => Text::NotKept,
            Some(p) => p.content.as_deref().map_or(Text::NotText, Text::Kept),
        }
    }
}

/// Why a conflict was not resolved. Nothing was recorded.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{key} has no open conflict (`agent conflicts` lists them)")]
    NoConflict { key: String },
    #[error("{ulid} is not a version of the conflict of {key}; its versions are {}", .choices.join(", "))]
    NotAVersion {
        key: String,
        ulid: String,
        choices: Vec<String>,
    },
    #[error(
        "cannot keep version {ulid} of {key}: this device knows only its hash, not its content \
         (it came with a re-seed from the brain's snapshot, which carries no losing version's \
         payload), and an event without the content would lose it; keep another version, or \
         resolve it on a device that pulled that version's event"
    )]
    PayloadNotKept { key: String, ulid: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The payload a losing version was made with, from the event that carried it; `None` when
/// this device has no such event.
fn event_payload(conn: &Connection, key: &str, version: &Version) -> Result<Option<FilePayload>> {
    let context = || {
        format!(
            "reading the payload of version {} of {key}",
            version.event_ulid
        )
    };
    let row: Option<(String, String)> = conn
        .prepare_cached(
            "SELECT entity_key, payload_json FROM lib_outbox WHERE event_ulid = ?1
             UNION ALL
             SELECT entity_key, payload_json FROM lib_inbox WHERE event_ulid = ?1
             LIMIT 1",
        )
        .and_then(|mut s| {
            s.query_row([&version.event_ulid], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .ctx(context)?;
    let Some((event_key, json)) = row else {
        return Ok(None);
    };
    let corrupt = |detail: String| StoreError::Corrupt {
        context: context(),
        detail,
    };
    let payload: FilePayload =
        serde_json::from_str(&json).map_err(|e| corrupt(format!("payload_json: {e}")))?;
    // A ULID names one event: another key or other bytes under it is a damaged row, and its
    // text must not pass for this version's.
    if event_key != key {
        return Err(corrupt(format!(
            "the event with that ULID is of {event_key}"
        )));
    }
    if !version.deleted && payload.sha256 != version.sha256 {
        return Err(corrupt(format!(
            "the event with that ULID has sha256 {:?}, the version {:?}",
            payload.sha256, version.sha256
        )));
    }
    Ok(Some(payload))
}

/// The winner's payload, from its `lib_files` row.
fn winner_payload(conn: &Connection, key: &str, winner: &Version) -> Result<FilePayload> {
    if winner.deleted {
        return Ok(FilePayload::default());
    }
    conn.prepare_cached(
        "SELECT sha256, bytes, mtime_unix, ext, mime, content FROM lib_files WHERE path = ?1",
    )
    .and_then(|mut s| {
        s.query_row([key], |r| {
            Ok(FilePayload {
                sha256: r.get(0)?,
                bytes: r.get::<_, Option<i64>>(1)?.map(|b| b as u64),
                mtime_unix: r.get(2)?,
                ext: r.get(3)?,
                mime: r.get(4)?,
                content: r.get(5)?,
            })
        })
    })
    .ctx(|| format!("reading the shared row of {key}"))
}

/// The open conflict of `key` in `state`, with each version's payload; `None` when it has none.
fn open_conflict(
    conn: &Connection,
    key: &str,
    state: &EntityState,
) -> Result<Option<OpenConflict>> {
    if state.conflicts().next().is_none() {
        return Ok(None);
    }
    let winner = state.winner();
    let mut versions = vec![ConflictVersion {
        version: winner.clone(),
        winner: true,
        payload: Some(winner_payload(conn, key, winner)?),
    }];
    for loser in state.conflicts() {
        versions.push(ConflictVersion {
            version: loser.clone(),
            winner: false,
            payload: event_payload(conn, key, loser)?,
        });
    }
    Ok(Some(OpenConflict {
        path: key.to_owned(),
        versions,
    }))
}

impl Store {
    /// The open conflict of one key with each version's payload; `None` when the key has none
    /// (or no row).
    pub fn open_conflict(&self, key: &str) -> Result<Option<OpenConflict>> {
        let sql = format!("SELECT {STATE_COLUMNS} FROM lib_files WHERE path = ?1");
        let stored = self
            .conn
            .prepare_cached(&sql)
            .and_then(|mut s| {
                s.query_row([key], |r| StoredState::from_row(r, 0))
                    .optional()
            })
            .ctx(|| format!("reading the merge state of {key}"))?;
        match stored.map(|s| s.into_state(key)).transpose()?.flatten() {
            Some(state) => open_conflict(&self.conn, key, &state),
            None => Ok(None),
        }
    }
}

impl Batch<'_> {
    /// Resolves the open conflict of `key` by keeping the version `keep` (an event ULID): records
    /// a change made on this device whose payload is that version's (a delete if it is a
    /// tombstone). Its clock is the entity's `seen_vc` with our entry bumped, as for any local
    /// change, so it dominates every sibling: it wins on every replica and closes the conflict
    /// there. No file on disk is written. Returns the event.
    pub fn resolve_conflict(&self, key: &str, keep: &str) -> Result<Event, ResolveError> {
        let row = self.shared(key)?;
        let conflict = match row.as_ref().and_then(|r| r.state.as_ref()) {
            Some(state) => open_conflict(&self.tx, key, state)?,
            None => None,
        };
        let Some(conflict) = conflict else {
            return Err(ResolveError::NoConflict {
                key: key.to_owned(),
            });
        };
        let Some(chosen) = conflict
            .versions
            .iter()
            .find(|v| v.version.event_ulid == keep)
        else {
            return Err(ResolveError::NotAVersion {
                key: key.to_owned(),
                ulid: keep.to_owned(),
                choices: conflict
                    .versions
                    .iter()
                    .map(|v| v.version.event_ulid.clone())
                    .collect(),
            });
        };
        let (event_type, payload) = if chosen.version.deleted {
            (EventType::DeleteFile, FilePayload::default())
        } else {
            let Some(payload) = chosen.payload.clone() else {
                return Err(ResolveError::PayloadNotKept {
                    key: key.to_owned(),
                    ulid: keep.to_owned(),
                });
            };
            (EventType::UpsertFile, payload)
        };
        let change = LocalChange::new(key, event_type, payload).over(Shared::Read(row.as_ref()));
        // `record_local` returns `None` only for `Shared::AssumedAbsent`.
        self.record_local(change)?
            .ok_or_else(|| ResolveError::NoConflict {
                key: key.to_owned(),
            })
    }
}

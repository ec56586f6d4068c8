//! What the store knows of one entity, for `agent explain`: its row in the shared view, and the
//! events this device made (outbox) and received (inbox) for it. Read-only; every query names
//! the key it serves in its error.
//!
//! The outbox and the inbox have no index on `entity_key` (nothing on the hot paths reads them by
//! key), so these two reads scan the tables: a second or so at a million events, which a
//! question asked by hand can afford and the writers should not pay for.

use rusqlite::OptionalExtension;
use serde::Serialize;

use super::{Context, Result, Store};

/// An entity's row in `lib_files`: the shared view's winner and what was merged into it.
#[derive(Debug, Clone, Serialize)]
pub struct SharedEntry {
    pub sha256: Option<String>,
    pub bytes: Option<i64>,
    pub mtime_unix: Option<i64>,
    pub mime: Option<String>,
    /// The length of the text kept, in bytes; `None` when there is none.
    pub content_bytes: Option<i64>,
    pub deleted_at: Option<String>,
    pub indexed_at: Option<String>,
    pub event_ulid: Option<String>,
    pub device_id: Option<String>,
    /// The winning event's clock, as stored (JSON).
    pub vector_clock: Option<String>,
    pub event_created_at: Option<String>,
    /// The pointwise maximum of every applied clock (JSON); `None` for a lone winner (derived).
    pub seen_vc: Option<String>,
    /// The versions no applied version dominates (JSON); `None` for a lone winner.
    pub siblings: Option<String>,
}

/// Where an event of this device's outbox or inbox stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventState {
    /// Made here, not yet acknowledged by the brain.
    Pending,
    Pushed,
    /// The brain refused it: set aside, not retried.
    Parked,
    /// Pulled, not yet merged into the shared view.
    Received,
    Applied,
}

/// One outbox or inbox row for the entity.
#[derive(Debug, Clone, Serialize)]
pub struct LocalEvent {
    pub event_ulid: String,
    pub event_type: String,
    pub device_id: String,
    pub vector_clock: String,
    pub created_at: String,
    pub sha256: Option<String>,
    pub state: EventState,
    /// When it was pushed or applied.
    pub at: Option<String>,
    /// Why the brain refused it (parked), or the brain's id of a pulled event.
    pub detail: Option<String>,
}

impl Store {
    /// The shared view's row of `key`, tombstones included.
    pub fn shared_entry(&self, key: &str) -> Result<Option<SharedEntry>> {
        self.conn
            .prepare_cached(
                "SELECT sha256, bytes, mtime_unix, mime, length(CAST(content AS BLOB)), deleted_at,
                        indexed_at, event_ulid, device_id, vector_clock, event_created_at, seen_vc,
                        siblings
                 FROM lib_files WHERE path = ?1",
            )
            .and_then(|mut s| {
                s.query_row([key], |r| {
                    Ok(SharedEntry {
                        sha256: r.get(0)?,
                        bytes: r.get(1)?,
                        mtime_unix: r.get(2)?,
                        mime: r.get(3)?,
                        content_bytes: r.get(4)?,
                        deleted_at: r.get(5)?,
                        indexed_at: r.get(6)?,
                        event_ulid: r.get(7)?,
                        device_id: r.get(8)?,
                        vector_clock: r.get(9)?,
                        event_created_at: r.get(10)?,
                        seen_vc: r.get(11)?,
                        siblings: r.get(12)?,
                    })
                })
                .optional()
            })
            .ctx(|| format!("reading the shared row of {key}"))
    }

    /// This device's outbox events for `key`, oldest first.
    pub fn outbox_of(&self, key: &str) -> Result<Vec<LocalEvent>> {
        self.conn
            .prepare(
                "SELECT event_ulid, event_type, device_id, vector_clock, created_at,
                        json_extract(payload_json, '$.sha256'), pushed_at, parked_at, parked_error
                 FROM lib_outbox WHERE entity_key = ?1 ORDER BY id",
            )
            .and_then(|mut s| {
                s.query_map([key], |r| {
                    let pushed_at: Option<String> = r.get(6)?;
                    let parked_at: Option<String> = r.get(7)?;
                    let (state, at) = match (parked_at, pushed_at) {
                        (Some(parked), _) => (EventState::Parked, Some(parked)),
                        (None, Some(pushed)) => (EventState::Pushed, Some(pushed)),
                        (None, None) => (EventState::Pending, None),
                    };
                    Ok(LocalEvent {
                        event_ulid: r.get(0)?,
                        event_type: r.get(1)?,
                        device_id: r.get(2)?,
                        vector_clock: r.get(3)?,
                        created_at: r.get(4)?,
                        sha256: r.get(5)?,
                        state,
                        at,
                        detail: r.get(8)?,
                    })
                })?
                .collect()
            })
            .ctx(|| format!("reading the outbox events of {key}"))
    }

    /// The events pulled from the brain for `key`, in the brain's order.
    pub fn inbox_of(&self, key: &str) -> Result<Vec<LocalEvent>> {
        self.conn
            .prepare(
                "SELECT event_ulid, event_type, device_id, vector_clock, created_at,
                        json_extract(payload_json, '$.sha256'), applied_at, source_id
                 FROM lib_inbox WHERE entity_key = ?1 ORDER BY source_id, id",
            )
            .and_then(|mut s| {
                s.query_map([key], |r| {
                    let applied_at: Option<String> = r.get(6)?;
                    let source: Option<i64> = r.get(7)?;
                    Ok(LocalEvent {
                        event_ulid: r.get(0)?,
                        event_type: r.get(1)?,
                        device_id: r.get(2)?,
                        vector_clock: r.get(3)?,
                        created_at: r.get(4)?,
                        sha256: r.get(5)?,
                        state: if applied_at.is_some() {
                            EventState::Applied
                        } else {
                            EventState::Received
                        },
                        at: applied_at,
                        detail: source.map(|id| format!("brain id {id}")),
                    })
                })?
                .collect()
            })
            .ctx(|| format!("reading the inbox events of {key}"))
    }
}

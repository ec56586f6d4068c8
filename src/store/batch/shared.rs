//! The shared view: `lib_files` (its FTS index kept in step at commit), and `lib_conflicts`.
//! Two ways in: [`Batch::record_local`] (a change made on this device) and [`Batch::apply`]
//! (an event, pulled or re-seeded). Who wins is `model::merge`'s decision; this stores it.

use rusqlite::OptionalExtension;

use super::{Batch, Param};
use crate::model::event::ENTITY_TYPE_FILE;
use crate::model::merge::{self, EntityState, Outcome};
use crate::model::{Event, EventType, FilePayload};
use crate::store::{Context, Result, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The event was applied already: nothing changed.
    Duplicate,
    Merged {
        winner_changed: bool,
    },
}

/// What the shared view holds for a key, read once per change.
#[derive(Debug, Clone)]
pub struct SharedRow {
    id: i64,
    /// `None` for a row adopted from LIB v1.0 that no event has touched yet.
    pub state: Option<EntityState>,
    /// The indexed text of a live row (needed to remove it from the search index); `None` for a
    /// tombstone.
    live_content: Option<Option<String>>,
}

/// A shared row read as absent in this transaction that an insert then found: only a bug can
/// do that.
fn row_appeared(key: &str) -> StoreError {
    StoreError::Corrupt {
        context: format!("writing the shared row of {key}"),
        detail: "the shared row read in this transaction was not there, and now is".into(),
    }
}

impl<'a> Batch<'a> {
    /// Takes a row's current text out of the search index (at commit). A row indexed earlier in
    /// this batch is not in the index yet: it only leaves the list of rows to index.
    fn remove_from_search(&self, id: i64, path: &str, content: Option<&str>) -> Result<()> {
        if self.fts_inserts.borrow_mut().remove(&id) {
            return Ok(());
        }
        let mut stmt = self
            .stmts
            .fts_remove
            .get(self.conn)
            .ctx(|| "preparing search index staging".into())?;
        stmt.execute((id, path, content))
            .ctx(|| format!("staging {path} for removal from the search index"))?;
        self.fts_removals.set(true);
        Ok(())
    }

    /// The shared view's row for a key, if any.
    pub fn shared(&self, key: &str) -> Result<Option<SharedRow>> {
        let mut stmt = self
            .stmts
            .shared_get
            .get(self.conn)
            .ctx(|| "preparing entity lookup".into())?;
        let row = stmt
            .query_row([key], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    crate::store::read::StoredState::from_row(r, 2)?,
                ))
            })
            .optional()
            .ctx(|| format!("reading the shared state of {key}"))?;
        let Some((id, content, stored)) = row else {
            return Ok(None);
        };
        let live = !stored.deleted;
        Ok(Some(SharedRow {
            id,
            state: stored.into_state(key)?,
            live_content: live.then_some(content),
        }))
    }

    /// The merge state of an entity in the shared view.
    pub fn entity(&self, key: &str) -> Result<Option<EntityState>> {
        Ok(self.shared(key)?.and_then(|row| row.state))
    }

    /// A new event for a change made on this device: its clock is the entity's `seen_vc` with our
    /// entry set to a new sequence number, so it dominates every version this replica has seen.
    fn local_event(
        &self,
        key: &str,
        current: Option<&EntityState>,
        event_type: EventType,
        payload: FilePayload,
    ) -> Result<Event> {
        let mut clock = current.map(|s| s.seen_vc.clone()).unwrap_or_default();
        let seq = self.next_sequence(key, clock.get(self.device_id))?;
        clock.set(self.device_id, seq);
        let ulid = self.ulids.map_or_else(ulid::Ulid::new, |next| next());
        Ok(Event {
            event_ulid: ulid.to_string(),
            device_id: self.device_id.to_owned(),
            event_type,
            entity_type: ENTITY_TYPE_FILE.to_owned(),
            entity_key: key.to_owned(),
            payload,
            vector_clock: clock,
            created_at: self.now(),
        })
    }

    /// Applies an event to the shared view with the merge rule, and refreshes the entity's
    /// conflicts.
    pub fn apply(&self, event: &Event) -> Result<Applied> {
        let row = self.shared(&event.entity_key)?;
        self.apply_to(event, row.as_ref(), &event.vector_clock.to_json())
    }

    /// `clock` is the event's vector clock as JSON, serialised once for every table it goes to.
    fn apply_to(&self, event: &Event, row: Option<&SharedRow>, clock: &str) -> Result<Applied> {
        self.apply_unless_present(event, row, clock)?
            .ok_or_else(|| row_appeared(&event.entity_key))
    }

    /// [`Batch::apply_to`]; `None`, and nothing written, when `row` is `None` but the shared view
    /// has a row for the key after all.
    fn apply_unless_present(
        &self,
        event: &Event,
        row: Option<&SharedRow>,
        clock: &str,
    ) -> Result<Option<Applied>> {
        let key = event.entity_key.as_str();
        let current = row.and_then(|r| r.state.as_ref());
        let Outcome::Applied {
            state,
            winner_changed,
        } = merge::apply(current, event.version())
        else {
            return Ok(Some(Applied::Duplicate));
        };
        // A lone sibling is the winner, whose columns describe it: nothing else to store.
        let alone = state.siblings.len() == 1 && state.seen_vc == state.winner().clock;
        let (seen_vc, siblings) = if alone {
            (None, None)
        } else {
            let siblings =
                serde_json::to_string(&state.siblings).map_err(|e| StoreError::Corrupt {
                    context: format!("serialising siblings of {key}"),
                    detail: e.to_string(),
                })?;
            (Some(state.seen_vc.to_json()), Some(siblings))
        };
        if winner_changed {
            if !self.write_winner(event, row, clock, seen_vc.as_deref(), siblings.as_deref())? {
                return Ok(None);
            }
            self.note_winner(key, current.map(EntityState::winner), state.winner());
        } else {
            let mut stmt = self
                .stmts
                .merge_update
                .get(self.conn)
                .ctx(|| "preparing merge-state update".into())?;
            stmt.execute((key, &seen_vc, &siblings, &state.winner().created_at))
                .ctx(|| format!("updating merge state of {key}"))?;
        }
        if merge::conflicts_may_change(current, &state) {
            self.refresh_conflicts(key, &state)?;
        }
        Ok(Some(Applied::Merged { winner_changed }))
    }

    /// Writes the event's version as the key's winner, into `row` or a new row. False, and
    /// nothing written, when `row` is `None` but the key has a row after all.
    fn write_winner(
        &self,
        event: &Event,
        row: Option<&SharedRow>,
        clock: &str,
        seen_vc: Option<&str>,
        siblings: Option<&str>,
    ) -> Result<bool> {
        let key = event.entity_key.as_str();
        let p = &event.payload;
        let deleted = event.event_type.is_delete();
        let live = |v| if deleted { None } else { v };
        let now = self.now();
        let mut params = [
            Param::Text(Some(key)),
            Param::Text(live(p.sha256.as_deref())),
            Param::Int(if deleted {
                None
            } else {
                p.bytes.map(|b| b as i64)
            }),
            Param::Int(if deleted { None } else { p.mtime_unix }),
            Param::Same(live(p.ext.as_deref())),
            Param::Same(live(p.mime.as_deref())),
            Param::Text(live(p.content.as_deref())),
            Param::Same(deleted.then_some(event.created_at.as_str())),
            Param::Same(Some(&now)),
            Param::Text(Some(&event.event_ulid)),
            Param::Same(Some(&event.device_id)),
            Param::Text(Some(clock)),
            Param::Same(seen_vc),
            Param::Same(siblings),
            Param::Same(Some(&event.created_at)),
            Param::Int(None),
        ];
        let id = match row {
            Some(row) => {
                if let Some(old_content) = &row.live_content {
                    self.remove_from_search(row.id, key, old_content.as_deref())?;
                }
                params[15] = Param::Int(Some(row.id));
                self.stmts
                    .files_update
                    .execute(self.conn, &params)
                    .ctx(|| format!("writing the shared row of {key}"))?;
                row.id
            }
            None => {
                let inserted = self
                    .stmts
                    .files_insert
                    .execute(self.conn, &params[..15])
                    .ctx(|| format!("writing the shared row of {key}"))?;
                if inserted == 0 {
                    return Ok(false);
                }
                self.conn.last_insert_rowid()
            }
        };
        if !deleted {
            self.fts_inserts.borrow_mut().insert(id);
        }
        Ok(true)
    }

    fn refresh_conflicts(&self, key: &str, state: &EntityState) -> Result<()> {
        self.tx
            .prepare_cached("DELETE FROM lib_conflicts WHERE path = ?1")
            .and_then(|mut s| s.execute([key]))
            .ctx(|| format!("clearing conflicts of {key}"))?;
        let mut insert = self
            .tx
            .prepare_cached(
                "INSERT INTO lib_conflicts (path, event_ulid, device_id, vector_clock, deleted, sha256,
                   bytes, mtime_unix, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .ctx(|| "preparing conflict insert".into())?;
        for v in state.conflicts() {
            insert
                .execute(rusqlite::params![
                    key,
                    v.event_ulid,
                    v.device_id,
                    v.clock.to_json(),
                    v.deleted,
                    v.sha256,
                    v.bytes.map(|b| b as i64),
                    v.mtime_unix,
                    v.created_at,
                ])
                .ctx(|| format!("recording a conflict of {key}"))?;
        }
        Ok(())
    }

    /// Records a change made on this device: a new event, made over the key's shared row,
    /// applied to the shared view and queued in the outbox. `None`, and nothing written, only
    /// for [`Shared::AssumedAbsent`] when the shared view has the key after all.
    pub fn record_local(&self, change: LocalChange<'_>) -> Result<Option<Event>> {
        let LocalChange {
            key,
            event_type,
            payload,
            payload_json,
            shared,
        } = change;
        let looked_up;
        let row = match shared {
            Shared::Unread => {
                looked_up = self.shared(key)?;
                looked_up.as_ref()
            }
            Shared::Read(row) => row,
            Shared::AssumedAbsent => None,
        };
        let sequence = self.sequence.get();
        let current = row.and_then(|r| r.state.as_ref());
        let event = self.local_event(key, current, event_type, payload)?;
        let clock = event.vector_clock.to_json();
        if self.apply_unless_present(&event, row, &clock)?.is_none() {
            // The number goes back: no event carries it.
            self.sequence.set(sequence);
            if matches!(shared, Shared::AssumedAbsent) {
                return Ok(None);
            }
            return Err(row_appeared(key));
        }
        self.append_outbox_with(&event, &clock, payload_json)?;
        Ok(Some(event))
    }
}

/// A change made on this device, for [`Batch::record_local`].
#[derive(Debug, Clone)]
pub struct LocalChange<'c> {
    pub key: &'c str,
    pub event_type: EventType,
    pub payload: FilePayload,
    /// `payload` as JSON, when the caller serialised it already (a reader thread, so that the
    /// single writer does not).
    pub payload_json: Option<&'c str>,
    /// What the caller knows of the key's row in the shared view.
    pub shared: Shared<'c>,
}

/// What the caller of [`Batch::record_local`] knows of the key's shared row.
#[derive(Debug, Clone, Copy)]
pub enum Shared<'r> {
    /// Nothing: it is read first.
    Unread,
    /// Read already in this batch (`None`: no row).
    Read(Option<&'r SharedRow>),
    /// Not read, and nearly surely absent: a key this device has never observed, which no
    /// device has indexed either (a new file, a first scan). The insert's own uniqueness check
    /// says so, without a lookup (the lookup was 6% of a first scan's writer); when the key has
    /// a row after all, nothing is written and the caller reads it and records again.
    AssumedAbsent,
}

impl<'c> LocalChange<'c> {
    /// A change over a shared row still to be read.
    pub fn new(key: &'c str, event_type: EventType, payload: FilePayload) -> Self {
        LocalChange {
            key,
            event_type,
            payload,
            payload_json: None,
            shared: Shared::Unread,
        }
    }

    /// With the payload serialised already (`json` must be `payload` as JSON).
    pub fn with_payload_json(mut self, json: Option<&'c str>) -> Self {
        self.payload_json = json;
        self
    }

    /// Over what the caller knows of the shared row.
    pub fn over(mut self, shared: Shared<'c>) -> Self {
        self.shared = shared;
        self
    }
}

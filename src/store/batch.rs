//! One write transaction: observed state, the shared view (`lib_files` + FTS by trigger),
//! conflicts, the device sequence and the outbox. Nothing here decides *whether* a change happened
//! (that is `index.rs`) or *who wins* (that is `model::merge`): it stores what they decide.

use std::cell::{Cell, RefCell, RefMut};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::UNIX_EPOCH;

use rusqlite::{CachedStatement, Connection, OptionalExtension, Transaction};

use super::{Context, Result, StoreError};
use crate::model::clock::MAX_CLOCK_VALUE;
use crate::model::event::{format_rfc3339, ENTITY_TYPE_FILE};
use crate::model::merge::{self, EntityState, Outcome};
use crate::model::{Event, EventType, FilePayload};

/// What this device last saw of a path on its own disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub bytes: u64,
    pub mtime_ns: i64,
    pub inode: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The event was applied already: nothing changed.
    Duplicate,
    Merged {
        winner_changed: bool,
    },
}

pub struct Batch<'a> {
    conn: &'a Connection,
    tx: Transaction<'a>,
    device_id: &'a str,
    /// The database file, named in the error when a commit finds the disk full.
    path: &'a Path,
    /// Search index changes are written to FTS5 at commit, in one statement each for removals
    /// and for insertions: FTS5 flushes its pending terms to disk at every statement that writes
    /// it, so one write per file made full-text indexing three times slower (measured).
    /// Removals need the exact old values, staged in `temp.fts_pending`.
    fts_removals: Cell<bool>,
    /// Rows of `lib_files` to (re)index at commit, from their final values. A row in here is
    /// not in the search index yet, so rewriting it again stages no removal.
    fts_inserts: RefCell<BTreeSet<i64>>,
    /// The statements of the per-file path, prepared once per batch: looking one up in the
    /// connection's cache hashes its SQL, a few percent of the writer's work per file.
    stmts: Statements<'a>,
    /// The timestamp text of the current second, formatted once per second.
    now: RefCell<(u64, String)>,
    /// This device's sequence number, read at the first event of the batch and written back at
    /// commit, in the same transaction as the events that carry it.
    sequence: Cell<Option<(u64, bool)>>,
    ulids: Option<&'a super::UlidSource>,
    clock: &'a super::Clock,
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

/// A statement of the per-file path: prepared at its first use in a batch, then reused.
struct Prepared<'a> {
    sql: &'static str,
    stmt: RefCell<Option<CachedStatement<'a>>>,
    /// What each [`Param::Same`] parameter holds now, by position (`None`: NULL, as SQLite
    /// starts every parameter). Emptied with the statement, whose bindings the cache clears.
    bound: RefCell<Vec<Option<String>>>,
}

/// A parameter of [`Prepared::execute`].
#[derive(Clone, Copy)]
enum Param<'v> {
    Int(Option<i64>),
    Text(Option<&'v str>),
    /// Text that mostly repeats from one row to the next (the device id, the timestamp of the
    /// second, the event type, the extension): bound only when it differs from what the
    /// parameter holds, since bindings outlive the statement's reset and every text bind copies
    /// its value (binding was a seventh of a scan's writer).
    Same(Option<&'v str>),
}

impl<'a> Prepared<'a> {
    const fn new(sql: &'static str) -> Self {
        Prepared {
            sql,
            stmt: RefCell::new(None),
            bound: RefCell::new(Vec::new()),
        }
    }

    /// Runs the statement with `params` bound to ?1, ?2, ... in order; the rows it changed.
    fn execute(&self, conn: &'a Connection, params: &[Param<'_>]) -> rusqlite::Result<usize> {
        let mut stmt = self.get(conn)?;
        let mut bound = self.bound.borrow_mut();
        if bound.len() < params.len() {
            bound.resize(params.len(), None);
        }
        for (i, (param, held)) in params.iter().zip(bound.iter_mut()).enumerate() {
            match *param {
                Param::Int(v) => stmt.raw_bind_parameter(i + 1, v)?,
                Param::Text(v) => stmt.raw_bind_parameter(i + 1, v)?,
                Param::Same(v) => {
                    if held.as_deref() != v {
                        stmt.raw_bind_parameter(i + 1, v)?;
                        *held = v.map(str::to_owned);
                    }
                }
            }
        }
        stmt.raw_execute()
    }

    fn get(&self, conn: &'a Connection) -> rusqlite::Result<RefMut<'_, CachedStatement<'a>>> {
        let mut slot = self.stmt.borrow_mut();
        if slot.is_none() {
            *slot = Some(conn.prepare_cached(self.sql)?);
        }
        Ok(RefMut::map(slot, |s| match s {
            Some(stmt) => stmt,
            None => unreachable!("filled above"),
        }))
    }
}

struct Statements<'a> {
    observed_get: Prepared<'a>,
    observed_put: Prepared<'a>,
    observed_insert: Prepared<'a>,
    observed_forget: Prepared<'a>,
    shared_get: Prepared<'a>,
    files_insert: Prepared<'a>,
    files_update: Prepared<'a>,
    merge_update: Prepared<'a>,
    fts_remove: Prepared<'a>,
    outbox_insert: Prepared<'a>,
}

impl Statements<'_> {
    fn new() -> Self {
        Statements {
            observed_get: Prepared::new(super::read::OBSERVED_GET),
            observed_put: Prepared::new(
                "INSERT INTO lib_observed (path, bytes, mtime_ns, inode, sha256, observed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(path) DO UPDATE SET bytes = excluded.bytes, mtime_ns = excluded.mtime_ns,
                   inode = excluded.inode, sha256 = excluded.sha256, observed_at = excluded.observed_at",
            ),
            observed_insert: Prepared::new(
                "INSERT INTO lib_observed (path, bytes, mtime_ns, inode, sha256, observed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(path) DO NOTHING",
            ),
            observed_forget: Prepared::new("DELETE FROM lib_observed WHERE path = ?1"),
            shared_get: Prepared::new(super::read::SHARED_GET),
            files_insert: Prepared::new(
                // DO NOTHING: `record_new` inserts without looking the key up first, and learns
                // from the count of rows written that it was there after all.
                "INSERT INTO lib_files (path, sha256, bytes, mtime_unix, ext, mime, content,
                   deleted_at, indexed_at, event_ulid, device_id, vector_clock, seen_vc, siblings,
                   event_created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
                 ON CONFLICT(path) DO NOTHING",
            ),
            files_update: Prepared::new(
                // ?1 (the path) is unchanged and left out: rewriting it would rewrite its unique
                // index entry too.
                "UPDATE lib_files SET sha256 = ?2, bytes = ?3, mtime_unix = ?4, ext = ?5,
                   mime = ?6, content = ?7, deleted_at = ?8, indexed_at = ?9, event_ulid = ?10,
                   device_id = ?11, vector_clock = ?12, seen_vc = ?13, siblings = ?14,
                   event_created_at = ?15
                 WHERE id = ?16",
            ),
            merge_update: Prepared::new(
                "UPDATE lib_files SET seen_vc = ?2, siblings = ?3, event_created_at = ?4 WHERE path = ?1",
            ),
            fts_remove: Prepared::new(
                "INSERT INTO temp.fts_pending (op, id, path, content) VALUES ('delete', ?1, ?2, ?3)",
            ),
            outbox_insert: Prepared::new(
                "INSERT INTO lib_outbox (device_id, event_ulid, event_type, entity_type, entity_key,
                   payload_json, vector_clock, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            ),
        }
    }
}

impl<'a> Batch<'a> {
    pub(super) fn new(
        conn: &'a Connection,
        tx: Transaction<'a>,
        device_id: &'a str,
        path: &'a Path,
        ulids: Option<&'a super::UlidSource>,
        clock: &'a super::Clock,
    ) -> Self {
        Batch {
            conn,
            tx,
            device_id,
            path,
            fts_removals: Cell::new(false),
            fts_inserts: RefCell::new(BTreeSet::new()),
            stmts: Statements::new(),
            now: RefCell::new((u64::MAX, String::new())),
            sequence: Cell::new(None),
            ulids,
            clock,
        }
    }

    /// Now by the store's [`Clock`](super::Clock), as RFC 3339 text to the second (the
    /// precision of every timestamp the store keeps).
    pub(crate) fn now(&self) -> String {
        let now = self.clock.now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut cached = self.now.borrow_mut();
        if cached.0 != second {
            *cached = (second, format_rfc3339(now));
        }
        cached.1.clone()
    }

    pub fn device_id(&self) -> &str {
        self.device_id
    }

    /// Commits, or rolls everything of the batch back: a full disk (commit is where WAL mode
    /// writes) loses nothing that was committed before.
    pub fn commit(self) -> Result<()> {
        let path = self.path;
        self.commit_all().map_err(|e| e.on_disk_of(path))
    }

    fn commit_all(self) -> Result<()> {
        // Statements hold no rows between uses; dropping them returns them to the cache.
        drop(self.stmts);
        if let Some((sequence, true)) = self.sequence.get() {
            self.tx
                .execute(
                    "UPDATE lib_device SET sequence = ?2 WHERE device_id = ?1",
                    (self.device_id, sequence as i64),
                )
                .ctx(|| "saving the device sequence number".into())?;
        }
        if self.fts_removals.get() {
            self.tx
                .execute_batch(
                    "INSERT INTO lib_files_fts (lib_files_fts, rowid, path, content)
                       SELECT op, id, path, content FROM temp.fts_pending ORDER BY seq;
                     DELETE FROM temp.fts_pending;",
                )
                .ctx(|| "removing old text from the search index".into())?;
        }
        let inserts = self.fts_inserts.into_inner();
        if !inserts.is_empty() {
            let ids = serde_json::to_string(&inserts).map_err(|e| StoreError::Corrupt {
                context: "listing rows for the search index".into(),
                detail: e.to_string(),
            })?;
            self.tx
                .execute(
                    // `id IN (...)`, not a join: the rows then come in rowid order straight
                    // from lib_files, where the join sorted them, text and all, in a temporary
                    // b-tree.
                    "INSERT INTO lib_files_fts (rowid, path, content)
                       SELECT id, path, content FROM lib_files
                       WHERE id IN (SELECT value FROM json_each(?1)) AND deleted_at IS NULL
                       ORDER BY id",
                    [ids],
                )
                .ctx(|| "adding text to the search index".into())?;
        }
        self.tx
            .commit()
            .ctx(|| "committing a batch of changes".into())
    }

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

    pub fn observed(&self, key: &str) -> Result<Option<Observed>> {
        let mut stmt = self
            .stmts
            .observed_get
            .get(self.conn)
            .ctx(|| "preparing observed lookup".into())?;
        super::read::observed_with(&mut stmt, key)
    }

    pub fn put_observed(&self, key: &str, observed: &Observed) -> Result<()> {
        self.write_observed(&self.stmts.observed_put, key, observed)?;
        Ok(())
    }

    /// Records the observed state of a path this device has no row for. False, and nothing
    /// written, when it has one after all.
    pub fn insert_observed(&self, key: &str, observed: &Observed) -> Result<bool> {
        Ok(self.write_observed(&self.stmts.observed_insert, key, observed)? == 1)
    }

    /// Runs an insert of an observed row; the rows it changed.
    fn write_observed(&self, stmt: &Prepared<'a>, key: &str, observed: &Observed) -> Result<usize> {
        let now = self.now();
        stmt.execute(
            self.conn,
            &[
                Param::Text(Some(key)),
                Param::Int(Some(observed.bytes as i64)),
                Param::Int(Some(observed.mtime_ns)),
                Param::Int(Some(observed.inode as i64)),
                Param::Text(Some(&observed.sha256)),
                Param::Same(Some(&now)),
            ],
        )
        .ctx(|| format!("recording observed state of {key}"))
    }

    pub fn forget_observed(&self, key: &str) -> Result<()> {
        let mut stmt = self
            .stmts
            .observed_forget
            .get(self.conn)
            .ctx(|| "preparing observed delete".into())?;
        stmt.execute([key])
            .ctx(|| format!("forgetting observed state of {key}"))?;
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
                    super::read::StoredState::from_row(r, 2)?,
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

    /// Hands out this device's next sequence number. Never below an entry of ours already seen
    /// (a database restored from a backup must not reuse numbers its events carried).
    /// A number past 2^53 (the cap of a clock entry) is an error, never a wrap: a pulled clock
    /// can carry any entry of ours up to the cap.
    fn next_sequence(&self, key: &str, at_least_above: u64) -> Result<u64> {
        let current = match self.sequence.get() {
            Some((sequence, _)) => sequence,
            None => {
                let stored: i64 = self
                    .tx
                    .query_row(
                        "SELECT sequence FROM lib_device WHERE device_id = ?1",
                        [self.device_id],
                        |r| r.get(0),
                    )
                    .ctx(|| "reading the device sequence number".into())?;
                stored.max(0) as u64
            }
        };
        let next = current
            .max(at_least_above)
            .checked_add(1)
            .filter(|n| *n <= MAX_CLOCK_VALUE)
            .ok_or_else(|| StoreError::SequenceExhausted {
                key: key.to_owned(),
                seen: current.max(at_least_above),
            })?;
        self.sequence.set(Some((next, true)));
        Ok(next)
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

    pub fn append_outbox(&self, event: &Event) -> Result<i64> {
        self.append_outbox_with(event, &event.vector_clock.to_json(), None)
    }

    /// `payload_json`: the event's payload serialised already, if the caller has it.
    fn append_outbox_with(
        &self,
        event: &Event,
        clock: &str,
        payload_json: Option<&str>,
    ) -> Result<i64> {
        let serialised;
        let payload = match payload_json {
            Some(json) => json,
            None => {
                serialised =
                    serde_json::to_string(&event.payload).map_err(|e| StoreError::Corrupt {
                        context: format!("serialising the payload of {}", event.event_ulid),
                        detail: e.to_string(),
                    })?;
                &serialised
            }
        };
        self.stmts
            .outbox_insert
            .execute(
                self.conn,
                &[
                    Param::Same(Some(&event.device_id)),
                    Param::Text(Some(&event.event_ulid)),
                    Param::Same(Some(event.event_type.as_str())),
                    Param::Same(Some(&event.entity_type)),
                    Param::Text(Some(&event.entity_key)),
                    Param::Text(Some(payload)),
                    Param::Text(Some(clock)),
                    Param::Same(Some(&event.created_at)),
                ],
            )
            .ctx(|| {
                format!(
                    "appending event {} for {} to the outbox",
                    event.event_ulid, event.entity_key
                )
            })?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Records a change made on this device: a new event, applied to the shared view and queued.
    pub fn record_local(
        &self,
        key: &str,
        event_type: EventType,
        payload: FilePayload,
    ) -> Result<Event> {
        let row = self.shared(key)?;
        self.record_local_over(key, row.as_ref(), event_type, payload)
    }

    /// [`Batch::record_local`] with the shared row the caller read already.
    pub fn record_local_over(
        &self,
        key: &str,
        row: Option<&SharedRow>,
        event_type: EventType,
        payload: FilePayload,
    ) -> Result<Event> {
        self.record_local_prepared(key, row, event_type, payload, None)
    }

    /// [`Batch::record_local_over`] with the payload serialised already (`payload_json` must
    /// be `payload` as JSON).
    pub fn record_local_prepared(
        &self,
        key: &str,
        row: Option<&SharedRow>,
        event_type: EventType,
        payload: FilePayload,
        payload_json: Option<&str>,
    ) -> Result<Event> {
        self.record(key, row, event_type, payload, payload_json)?
            .ok_or_else(|| row_appeared(key))
    }

    /// Records a change to a key this device has never observed, without looking it up in the
    /// shared view first: nearly always no device has indexed it either (a new file, a first
    /// scan), and the insert's own uniqueness check says so (the lookup was 6% of a first scan's
    /// writer). `None`, and nothing written, when the shared view has the key after all: the
    /// caller then reads the row and goes the ordinary way.
    pub fn record_new(
        &self,
        key: &str,
        event_type: EventType,
        payload: FilePayload,
        payload_json: Option<&str>,
    ) -> Result<Option<Event>> {
        self.record(key, None, event_type, payload, payload_json)
    }

    /// A local change over `row`, the key's shared row as read (or `None`): the event made,
    /// applied and queued. `None`, and nothing written, when `row` is `None` but the key has a
    /// row after all.
    fn record(
        &self,
        key: &str,
        row: Option<&SharedRow>,
        event_type: EventType,
        payload: FilePayload,
        payload_json: Option<&str>,
    ) -> Result<Option<Event>> {
        let sequence = self.sequence.get();
        let current = row.and_then(|r| r.state.as_ref());
        let event = self.local_event(key, current, event_type, payload)?;
        let clock = event.vector_clock.to_json();
        if self.apply_unless_present(&event, row, &clock)?.is_none() {
            // The number goes back: no event carries it.
            self.sequence.set(sequence);
            return Ok(None);
        }
        self.append_outbox_with(&event, &clock, payload_json)?;
        Ok(Some(event))
    }

    /// Marks outbox rows pushed: the brain acknowledged them.
    pub fn mark_pushed(&self, ids: &[i64]) -> Result<()> {
        let now = self.now();
        let mut stmt = self
            .tx
            .prepare_cached(
                "UPDATE lib_outbox SET pushed_at = ?2 WHERE id = ?1 AND pushed_at IS NULL",
            )
            .ctx(|| "preparing the pushed mark".into())?;
        for id in ids {
            stmt.execute((id, &now))
                .ctx(|| format!("marking outbox row {id} pushed"))?;
        }
        Ok(())
    }

    /// Sets an outbox row aside with the brain's reason: it is not retried, and `agent status`
    /// shows it.
    pub fn park(&self, id: i64, error: &str) -> Result<()> {
        self.tx
            .execute(
                "UPDATE lib_outbox SET parked_at = ?2, parked_error = ?3 WHERE id = ?1",
                (id, self.now(), error),
            )
            .ctx(|| format!("parking outbox row {id}"))?;
        Ok(())
    }

    /// Whether an event of this device is in its outbox (pushed or not).
    pub fn in_outbox(&self, ulid: &str) -> Result<bool> {
        self.tx
            .prepare_cached("SELECT 1 FROM lib_outbox WHERE event_ulid = ?1")
            .and_then(|mut s| s.exists([ulid]))
            .ctx(|| format!("looking up {ulid} in the outbox"))
    }

    /// Records a pulled event in the inbox. False when its ULID is there already (pulled before).
    pub fn record_inbox(&self, source_id: i64, event: &Event) -> Result<bool> {
        let payload = serde_json::to_string(&event.payload).map_err(|e| StoreError::Corrupt {
            context: format!("serialising the payload of {}", event.event_ulid),
            detail: e.to_string(),
        })?;
        let mut stmt = self
            .tx
            .prepare_cached(
                "INSERT INTO lib_inbox (source_id, device_id, event_ulid, event_type, entity_type, entity_key,
                   payload_json, vector_clock, created_at, applied_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT(event_ulid) DO NOTHING",
            )
            .ctx(|| "preparing inbox insert".into())?;
        let inserted = stmt
            .execute(rusqlite::params![
                source_id,
                event.device_id,
                event.event_ulid,
                event.event_type.as_str(),
                event.entity_type,
                event.entity_key,
                payload,
                event.vector_clock.to_json(),
                event.created_at,
                self.now(),
            ])
            .ctx(|| format!("recording pulled event {} in the inbox", event.event_ulid))?;
        Ok(inserted == 1)
    }

    /// A `lib_kv` value as this transaction sees it.
    pub fn kv_get(&self, key: &str) -> Result<Option<String>> {
        self.tx
            .query_row("SELECT v FROM lib_kv WHERE k = ?1", [key], |r| r.get(0))
            .optional()
            .ctx(|| format!("reading lib_kv {key}"))
    }

    pub fn kv_set(&self, key: &str, value: &str) -> Result<()> {
        self.tx
            .execute(
                "INSERT INTO lib_kv (k, v) VALUES (?1, ?2) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
                (key, value),
            )
            .ctx(|| format!("writing lib_kv {key}"))?;
        Ok(())
    }

    pub fn kv_delete(&self, key: &str) -> Result<()> {
        self.tx
            .execute("DELETE FROM lib_kv WHERE k = ?1", [key])
            .ctx(|| format!("deleting lib_kv {key}"))?;
        Ok(())
    }

    pub fn tx(&self) -> &Transaction<'a> {
        &self.tx
    }
}

//! One write transaction over the agent's tables, split by table: `observed` (this device's
//! disk), `shared` (the shared view: `lib_files`, its search index, `lib_conflicts`), `outbox`
//! (with the inbox), and `lib_kv` in `store::kv`. Here: the transaction itself, its prepared
//! statements, its clock and this device's sequence number (`lib_device`). Nothing here decides
//! *whether* a change happened (that is `index`) or *who wins* (that is `model::merge`): it
//! stores what they decide.

mod observed;
mod outbox;
mod shared;

use std::cell::{Cell, RefCell, RefMut};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::UNIX_EPOCH;

use rusqlite::{CachedStatement, Connection, Transaction};

use super::{Context, Result, StoreError};
use crate::model::clock::MAX_CLOCK_VALUE;
use crate::model::digest::ReplicaDigest;
use crate::model::event::format_rfc3339;

pub use observed::Observed;
pub use shared::{Applied, LocalChange, Shared, SharedRow};

pub struct Batch<'a> {
    conn: &'a Connection,
    pub(super) tx: Transaction<'a>,
    device_id: &'a str,
    /// The database file, named in the error when a commit finds the disk full.
    path: &'a Path,
    /// Search index changes are written to FTS5 at commit, in one statement each for removals
    /// and for insertions: FTS5 flushes its pending terms to disk at every statement that writes
    /// it, so one write per file made full-text indexing three times slower (measured).
    /// Removals need the exact old values, staged in `temp.fts_pending`.
    pub(super) fts_removals: Cell<bool>,
    /// Rows of `lib_files` to (re)index at commit, from their final values. A row in here is
    /// not in the search index yet, so rewriting it again stages no removal.
    pub(super) fts_inserts: RefCell<BTreeSet<i64>>,
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
    /// The XOR of every winner change of the batch, added to the kept replica digest at commit
    /// (`store::digest`).
    pub(super) digest_delta: Cell<ReplicaDigest>,
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
            digest_delta: Cell::new(ReplicaDigest::EMPTY),
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
        self.save_digest()?;
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
}

//! Read-only queries of the local store: search, status, conflicts, and the observed state a scan
//! compares the disk against, as methods of [`Store`].

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;

use rusqlite::{Connection, OptionalExtension};
use serde::Serialize;

use super::{Context, Result, Store, StoreError};
use crate::model::merge::{EntityState, Version};
use crate::model::VectorClock;

/// The merge state columns of a `lib_files` row, as stored. `seen_vc` and `siblings` are NULL
/// when the winner is the only sibling (schema 2): the winner's own columns then describe the
/// whole state. A row adopted from LIB v1.0 that no event has touched has no state at all.
#[derive(Debug)]
pub struct StoredState {
    pub deleted: bool,
    seen_vc: Option<String>,
    siblings: Option<String>,
    event_ulid: Option<String>,
    device_id: Option<String>,
    vector_clock: Option<String>,
    sha256: Option<String>,
    bytes: Option<i64>,
    mtime_unix: Option<i64>,
    event_created_at: Option<String>,
}

/// The columns [`StoredState::from_row`] reads, in its order.
pub(super) const STATE_COLUMNS: &str =
    "deleted_at IS NOT NULL, seen_vc, siblings, event_ulid, device_id, \
    vector_clock, sha256, bytes, mtime_unix, event_created_at";

pub(super) const SHARED_GET: &str = concat!(
    "SELECT id, content, deleted_at IS NOT NULL, seen_vc, siblings, event_ulid, device_id, ",
    "vector_clock, sha256, bytes, mtime_unix, event_created_at FROM lib_files WHERE path = ?1"
);

impl StoredState {
    /// Reads the [`STATE_COLUMNS`] starting at column `first`.
    pub fn from_row(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<StoredState> {
        Ok(StoredState {
            deleted: r.get(first)?,
            seen_vc: r.get(first + 1)?,
            siblings: r.get(first + 2)?,
            event_ulid: r.get(first + 3)?,
            device_id: r.get(first + 4)?,
            vector_clock: r.get(first + 5)?,
            sha256: r.get(first + 6)?,
            bytes: r.get(first + 7)?,
            mtime_unix: r.get(first + 8)?,
            event_created_at: r.get(first + 9)?,
        })
    }

    pub fn into_state(self, key: &str) -> Result<Option<EntityState>> {
        let corrupt = |what: &str, e: serde_json::Error| StoreError::Corrupt {
            context: format!("{what} of lib_files row {key}"),
            detail: e.to_string(),
        };
        if let (Some(seen_vc), Some(siblings)) = (&self.seen_vc, &self.siblings) {
            let seen_vc: VectorClock =
                serde_json::from_str(seen_vc).map_err(|e| corrupt("seen_vc", e))?;
            let siblings: Vec<Version> =
                serde_json::from_str(siblings).map_err(|e| corrupt("siblings", e))?;
            return Ok(EntityState::from_parts(seen_vc, siblings));
        }
        let (Some(event_ulid), Some(device_id), Some(clock)) =
            (self.event_ulid, self.device_id, self.vector_clock)
        else {
            return Ok(None);
        };
        let clock: VectorClock =
            serde_json::from_str(&clock).map_err(|e| corrupt("vector_clock", e))?;
        let winner = Version {
            event_ulid,
            device_id,
            clock: clock.clone(),
            deleted: self.deleted,
            sha256: self.sha256,
            bytes: self.bytes.map(|b| b as u64),
            mtime_unix: self.mtime_unix,
            created_at: self.event_created_at.unwrap_or_default(),
        };
        Ok(EntityState::from_parts(clock, vec![winner]))
    }
}

/// The merge state of every entity in the shared view, by key: what every replica must agree on.
pub fn merge_states(conn: &Connection) -> Result<Vec<(String, EntityState)>> {
    let sql = format!("SELECT path, {STATE_COLUMNS} FROM lib_files ORDER BY path");
    let mut stmt = conn
        .prepare(&sql)
        .ctx(|| "reading the merge state of lib_files".into())?;
    let rows = stmt
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, StoredState::from_row(r, 1)?))
        })
        .ctx(|| "reading the merge state of lib_files".into())?;
    let mut states = Vec::new();
    for row in rows {
        let (key, stored) = row.ctx(|| "reading the merge state of lib_files".into())?;
        if let Some(state) = stored.into_state(&key)? {
            states.push((key, state));
        }
    }
    Ok(states)
}

/// The observed stat of one path, as a scan needs it to skip unchanged files without a query.
#[derive(Debug)]
pub struct ObservedStat {
    pub bytes: u64,
    pub mtime_ns: i64,
    pub inode: u64,
    /// Set by the scan when the walk meets the path; those never met are deletions.
    pub seen: AtomicBool,
}

/// Observed state of one library, keyed by entity key. Keys sort under `<library>/`, so the primary
/// key index serves the range.
fn observed_of_library(
    conn: &Connection,
    library: &str,
) -> Result<HashMap<Box<str>, ObservedStat>> {
    let lo = format!("{library}/");
    let hi = format!("{library}0"); // '0' is the character after '/'
    let mut stmt = conn
        .prepare(
            "SELECT path, bytes, mtime_ns, inode FROM lib_observed WHERE path >= ?1 AND path < ?2",
        )
        .ctx(|| format!("loading observed state of library {library}"))?;
    let rows = stmt
        .query_map((&lo, &hi), |r| {
            Ok((
                r.get::<_, String>(0)?.into_boxed_str(),
                ObservedStat {
                    bytes: r.get::<_, i64>(1)? as u64,
                    mtime_ns: r.get(2)?,
                    inode: r.get::<_, i64>(3)? as u64,
                    seen: AtomicBool::new(false),
                },
            ))
        })
        .ctx(|| format!("loading observed state of library {library}"))?;
    let mut map = HashMap::new();
    for row in rows {
        let (key, stat) = row.ctx(|| format!("reading observed state of library {library}"))?;
        map.insert(key, stat);
    }
    Ok(map)
}

pub(super) const OBSERVED_GET: &str =
    "SELECT bytes, mtime_ns, inode, sha256 FROM lib_observed WHERE path = ?1";

/// One path's observed row, read outside a write batch.
fn observed(conn: &Connection, key: &str) -> Result<Option<super::Observed>> {
    let mut stmt = conn
        .prepare_cached(OBSERVED_GET)
        .ctx(|| "preparing observed lookup".into())?;
    observed_with(&mut stmt, key)
}

/// [`observed`] through a statement of [`OBSERVED_GET`] the caller prepared.
pub(super) fn observed_with(
    stmt: &mut rusqlite::Statement<'_>,
    key: &str,
) -> Result<Option<super::Observed>> {
    stmt.query_row([key], |r| {
        Ok(super::Observed {
            bytes: r.get::<_, i64>(0)? as u64,
            mtime_ns: r.get(1)?,
            inode: r.get::<_, i64>(2)? as u64,
            sha256: r.get(3)?,
        })
    })
    .optional()
    .ctx(|| format!("reading observed state of {key}"))
}

/// Observed rows of every key under a folder key (`prefix` ends with '/').
fn observed_under(conn: &Connection, prefix: &str) -> Result<Vec<(String, super::Observed)>> {
    // Keys under "a/b/" sort in ["a/b/", "a/b0"): '0' is the character after '/'.
    let end = format!("{}0", &prefix[..prefix.len() - 1]);
    let mut stmt = conn
        .prepare_cached(
            "SELECT path, bytes, mtime_ns, inode, sha256 FROM lib_observed WHERE path >= ?1 AND path < ?2",
        )
        .ctx(|| format!("reading observed state under {prefix}"))?;
    let rows = stmt
        .query_map((prefix, &end), |r| {
            Ok((
                r.get::<_, String>(0)?,
                super::Observed {
                    bytes: r.get::<_, i64>(1)? as u64,
                    mtime_ns: r.get(2)?,
                    inode: r.get::<_, i64>(3)? as u64,
                    sha256: r.get(4)?,
                },
            ))
        })
        .ctx(|| format!("reading observed state under {prefix}"))?;
    rows.collect::<rusqlite::Result<_>>()
        .ctx(|| format!("reading observed state under {prefix}"))
}

/// A live winner's sha256, mime type and text.
pub type LiveFile = (String, Option<String>, Option<String>);

/// The shared view's winner for a key, if live.
fn live_file(conn: &Connection, key: &str) -> Result<Option<LiveFile>> {
    conn.prepare_cached(
        "SELECT sha256, mime, content FROM lib_files WHERE path = ?1 AND deleted_at IS NULL AND sha256 IS NOT NULL",
    )
    .and_then(|mut stmt| stmt.query_row([key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional())
    .ctx(|| format!("reading the shared row of {key}"))
}

/// Unpushed, unparked outbox events in id order (the order they were made), at most `limit`.
fn pending_outbox(conn: &Connection, limit: usize) -> Result<Vec<(i64, crate::model::Event)>> {
    read_events(
        conn,
        "lib_outbox",
        "SELECT id, device_id, event_ulid, event_type, entity_type, entity_key, payload_json, vector_clock,
                created_at
         FROM lib_outbox WHERE pushed_at IS NULL AND parked_at IS NULL ORDER BY id LIMIT ?1",
        limit as i64,
    )
}

/// The events a query of the outbox or the inbox selects, with their row ids. `sql` selects
/// `id`, then the event's columns in the order of [`crate::model::Event`], and takes one
/// parameter.
pub(super) fn read_events(
    conn: &Connection,
    table: &str,
    sql: &str,
    param: impl rusqlite::ToSql,
) -> Result<Vec<(i64, crate::model::Event)>> {
    let mut stmt = conn
        .prepare_cached(sql)
        .ctx(|| format!("reading {table}"))?;
    type Raw = (
        i64,
        String,
        String,
        String,
        String,
        String,
        String,
        String,
        String,
    );
    let rows: Vec<Raw> = stmt
        .query_map([param], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
            ))
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .ctx(|| format!("reading {table}"))?;
    let mut events = Vec::with_capacity(rows.len());
    for (
        id,
        device_id,
        event_ulid,
        event_type,
        entity_type,
        entity_key,
        payload,
        clock,
        created_at,
    ) in rows
    {
        let corrupt = |detail: String| super::StoreError::Corrupt {
            context: format!("{table} row {id}"),
            detail,
        };
        let event_type = crate::model::EventType::parse(&event_type)
            .ok_or_else(|| corrupt(format!("unknown event_type {event_type:?}")))?;
        let payload =
            serde_json::from_str(&payload).map_err(|e| corrupt(format!("payload_json: {e}")))?;
        let vector_clock =
            serde_json::from_str(&clock).map_err(|e| corrupt(format!("vector_clock: {e}")))?;
        events.push((
            id,
            crate::model::Event {
                event_ulid,
                device_id,
                event_type,
                entity_type,
                entity_key,
                payload,
                vector_clock,
                created_at,
            },
        ));
    }
    Ok(events)
}

/// Outbox events the brain refused, with its reason.
fn parked_outbox(conn: &Connection) -> Result<Vec<(String, String, String)>> {
    let mut stmt = conn
        .prepare("SELECT event_ulid, entity_key, coalesce(parked_error, '') FROM lib_outbox WHERE parked_at IS NOT NULL ORDER BY id")
        .ctx(|| "reading parked events".into())?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .ctx(|| "reading parked events".into())?;
    rows.collect::<rusqlite::Result<_>>()
        .ctx(|| "reading parked events".into())
}

#[derive(Debug, Clone, Serialize)]
pub struct SearchHit {
    pub path: String,
    pub snippet: String,
    pub score: f64,
    pub bytes: Option<i64>,
    pub mime: Option<String>,
    pub mtime_unix: Option<i64>,
    /// Whether this device has the file on its own disk (an observed row); false for a file
    /// only another device holds, which the shared view lists all the same.
    pub on_this_device: bool,
}

/// FTS5 ranked search (bm25) over path and content of live files. The query is taken as words to
/// find, not as FTS5 syntax, so a stray quote or `-` in user input is never a syntax error.
fn search(conn: &Connection, query: &str, limit: usize) -> Result<Vec<SearchHit>> {
    let Some(fts_query) = fts_query(query) else {
        return Ok(Vec::new());
    };
    let mut stmt = conn
        .prepare_cached(
            "SELECT f.path, snippet(lib_files_fts, 1, '[', ']', '…', 12), bm25(lib_files_fts),
                    f.bytes, f.mime, f.mtime_unix,
                    EXISTS (SELECT 1 FROM lib_observed o WHERE o.path = f.path)
             FROM lib_files_fts JOIN lib_files f ON f.id = lib_files_fts.rowid
             WHERE lib_files_fts MATCH ?1 AND f.deleted_at IS NULL
             ORDER BY bm25(lib_files_fts) LIMIT ?2",
        )
        .ctx(|| "preparing search".into())?;
    let rows = stmt
        .query_map((&fts_query, limit as i64), |r| {
            Ok(SearchHit {
                path: r.get(0)?,
                snippet: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                score: -r.get::<_, f64>(2)?,
                bytes: r.get(3)?,
                mime: r.get(4)?,
                mtime_unix: r.get(5)?,
                on_this_device: r.get(6)?,
            })
        })
        .ctx(|| format!("searching for {query:?}"))?;
    rows.collect::<rusqlite::Result<_>>()
        .ctx(|| format!("searching for {query:?}"))
}

/// Each whitespace-separated word becomes a quoted FTS5 string (quotes doubled), all required; the
/// last word also matches as a prefix, as people expect while typing.
fn fts_query(query: &str) -> Option<String> {
    let words: Vec<String> = query
        .split_whitespace()
        .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
        .collect();
    if words.is_empty() {
        return None;
    }
    let mut q = words.join(" ");
    q.push('*');
    Some(q)
}

#[derive(Debug, Clone, Serialize)]
pub struct Counts {
    pub files: i64,
    pub deleted: i64,
    pub bytes: i64,
    pub observed: i64,
    pub outbox_pending: i64,
    pub outbox_total: i64,
    pub conflicts: i64,
    /// Live files of the shared view that are not on this device's disk (no observed row):
    /// another device's, or ones this device stopped observing.
    pub not_on_this_device: i64,
}

fn counts(conn: &Connection) -> Result<Counts> {
    let one = |sql: &str| -> Result<i64> {
        conn.query_row(sql, [], |r| r.get::<_, Option<i64>>(0))
            .map(Option::unwrap_or_default)
            .ctx(|| format!("counting: {sql}"))
    };
    Ok(Counts {
        files: one("SELECT count(*) FROM lib_files WHERE deleted_at IS NULL")?,
        deleted: one("SELECT count(*) FROM lib_files WHERE deleted_at IS NOT NULL")?,
        bytes: one("SELECT sum(bytes) FROM lib_files WHERE deleted_at IS NULL")?,
        observed: one("SELECT count(*) FROM lib_observed")?,
        outbox_pending: one(
            "SELECT count(*) FROM lib_outbox WHERE pushed_at IS NULL AND parked_at IS NULL",
        )?,
        outbox_total: one("SELECT count(*) FROM lib_outbox")?,
        conflicts: one("SELECT count(*) FROM lib_conflicts")?,
        not_on_this_device: one("SELECT count(*) FROM lib_files f WHERE f.deleted_at IS NULL
             AND NOT EXISTS (SELECT 1 FROM lib_observed o WHERE o.path = f.path)")?,
    })
}

/// Live files and bytes in the shared view under one library.
fn library_counts(conn: &Connection, library: &str) -> Result<(i64, i64)> {
    conn.query_row(
        "SELECT count(*), coalesce(sum(bytes), 0) FROM lib_files
         WHERE path >= ?1 AND path < ?2 AND deleted_at IS NULL",
        (format!("{library}/"), format!("{library}0")),
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .ctx(|| format!("counting files of library {library}"))
}

/// Live files and bytes per library name found in the shared view (configured or not: a folder
/// scanned by path, or a library of another device).
fn indexed_libraries(conn: &Connection) -> Result<Vec<(String, i64, i64)>> {
    let mut stmt = conn
        .prepare(
            "SELECT substr(path, 1, instr(path, '/') - 1) AS lib,
                    count(*) FILTER (WHERE deleted_at IS NULL),
                    coalesce(sum(bytes) FILTER (WHERE deleted_at IS NULL), 0)
             FROM lib_files GROUP BY lib ORDER BY lib",
        )
        .ctx(|| "listing indexed libraries".into())?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .ctx(|| "listing indexed libraries".into())?;
    rows.collect::<rusqlite::Result<_>>()
        .ctx(|| "listing indexed libraries".into())
}

fn device_sequence(conn: &Connection) -> Result<i64> {
    conn.query_row(
        "SELECT sequence FROM lib_device ORDER BY rowid LIMIT 1",
        [],
        |r| r.get(0),
    )
    .ctx(|| "reading the device sequence".into())
}

#[derive(Debug, Clone, Serialize)]
pub struct RunRow {
    pub id: i64,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    pub library: Option<String>,
    pub status: Option<String>,
    pub files_seen: i64,
    pub files_hashed: i64,
    pub files_unchanged: i64,
    pub files_upserted: i64,
    pub files_deleted: i64,
    pub bytes_hashed: i64,
    pub errors: i64,
    pub message: Option<String>,
}

fn last_run(conn: &Connection) -> Result<Option<RunRow>> {
    conn.query_row(
        "SELECT id, started_at, ended_at, library, status, coalesce(files_seen, 0),
                coalesce(files_hashed, 0), coalesce(files_unchanged, 0), coalesce(files_upserted, 0),
                coalesce(files_deleted, 0), coalesce(bytes_hashed, 0), coalesce(errors, 0), message
         FROM lib_runs ORDER BY id DESC LIMIT 1",
        [],
        |r| {
            Ok(RunRow {
                id: r.get(0)?,
                started_at: r.get(1)?,
                ended_at: r.get(2)?,
                library: r.get(3)?,
                status: r.get(4)?,
                files_seen: r.get(5)?,
                files_hashed: r.get(6)?,
                files_unchanged: r.get(7)?,
                files_upserted: r.get(8)?,
                files_deleted: r.get(9)?,
                bytes_hashed: r.get(10)?,
                errors: r.get(11)?,
                message: r.get(12)?,
            })
        },
    )
    .optional()
    .ctx(|| "reading the last scan".into())
}

/// One open conflict with the version that beat it. Every field comes from the events (the
/// merge state and `lib_conflicts`), none from this replica's own bookkeeping, so every replica
/// that applied the same events lists the same rows, byte for byte.
#[derive(Debug, Clone, Serialize)]
pub struct ConflictRow {
    pub path: String,
    pub winner: VersionSummary,
    pub loser: VersionSummary,
}

#[derive(Debug, Clone, Serialize)]
pub struct VersionSummary {
    pub event_ulid: Option<String>,
    pub device_id: Option<String>,
    /// The name the brain gave the device, where this device has learnt it; the store leaves
    /// it `None` and the command fills it from [`Store::device_names`].
    pub device_name: Option<String>,
    pub deleted: bool,
    pub sha256: Option<String>,
    pub bytes: Option<i64>,
    pub mtime_unix: Option<i64>,
    pub vector_clock: Option<serde_json::Value>,
    /// The event's `created_at`: the time on the device that made it, the same on every replica.
    pub at: Option<String>,
}

impl From<&Version> for VersionSummary {
    fn from(v: &Version) -> Self {
        VersionSummary {
            event_ulid: Some(v.event_ulid.clone()),
            device_id: Some(v.device_id.clone()),
            device_name: None,
            deleted: v.deleted,
            sha256: v.sha256.clone(),
            bytes: v.bytes.map(|b| b as i64),
            mtime_unix: v.mtime_unix,
            vector_clock: serde_json::to_value(&v.clock).ok(),
            at: Some(v.created_at.clone()),
        }
    }
}

fn conflicts(conn: &Connection) -> Result<Vec<ConflictRow>> {
    // The winner is read from the merge state (its version as the events carried it), not from
    // the row's local columns: `indexed_at` is when this replica wrote the row, which differs
    // between devices and after a re-seed.
    let sql = format!(
        "SELECT c.path, c.event_ulid, c.device_id, c.deleted, c.sha256, c.bytes, c.mtime_unix,
                c.vector_clock, c.created_at, f.*
         FROM lib_conflicts c
         JOIN (SELECT path AS file_path, {STATE_COLUMNS} FROM lib_files) f ON f.file_path = c.path
         ORDER BY c.path, c.event_ulid"
    );
    let mut stmt = conn
        .prepare(&sql)
        .ctx(|| "preparing the conflict list".into())?;
    let json = |s: Option<String>| s.and_then(|s| serde_json::from_str(&s).ok());
    let rows = stmt
        .query_map([], |r| {
            let loser = VersionSummary {
                event_ulid: r.get(1)?,
                device_id: r.get(2)?,
                device_name: None,
                deleted: r.get(3)?,
                sha256: r.get(4)?,
                bytes: r.get(5)?,
                mtime_unix: r.get(6)?,
                vector_clock: json(r.get(7)?),
                at: r.get(8)?,
            };
            Ok((r.get::<_, String>(0)?, loser, StoredState::from_row(r, 10)?))
        })
        .ctx(|| "listing conflicts".into())?;
    let mut conflicts = Vec::new();
    for row in rows {
        let (path, loser, stored) = row.ctx(|| "listing conflicts".into())?;
        let Some(state) = stored.into_state(&path)? else {
            return Err(StoreError::Corrupt {
                context: format!("the conflict of {path}"),
                detail: "lib_conflicts lists it, but its lib_files row has no merge state".into(),
            });
        };
        conflicts.push(ConflictRow {
            winner: VersionSummary::from(state.winner()),
            path,
            loser,
        });
    }
    Ok(conflicts)
}

/// See [`Store::read_transaction`]; ends when dropped.
pub struct ReadTransaction<'c>(#[allow(dead_code)] rusqlite::Transaction<'c>);

impl Store {
    /// Observed state of one library, keyed by entity key.
    pub fn observed_of_library(&self, library: &str) -> Result<HashMap<Box<str>, ObservedStat>> {
        observed_of_library(&self.conn, library)
    }

    /// How many files of a library this device observed.
    pub fn observed_count(&self, library: &str) -> Result<u64> {
        let lo = format!("{library}/");
        let hi = format!("{library}0"); // '0' is the character after '/'
        self.conn
            .prepare_cached("SELECT count(*) FROM lib_observed WHERE path >= ?1 AND path < ?2")
            .and_then(|mut s| s.query_row((&lo, &hi), |r| r.get::<_, i64>(0)))
            .map(|n| n as u64)
            .ctx(|| format!("counting the observed files of library {library}"))
    }

    /// One path's observed row, read outside a write batch.
    pub fn observed(&self, key: &str) -> Result<Option<super::Observed>> {
        observed(&self.conn, key)
    }

    /// Observed rows of every key under a folder key (`prefix` ends with '/').
    pub fn observed_under(&self, prefix: &str) -> Result<Vec<(String, super::Observed)>> {
        observed_under(&self.conn, prefix)
    }

    /// Holds one read transaction while it lives: the reads made meanwhile see one snapshot
    /// and take the file locks once, instead of once per read.
    pub fn read_transaction(&self) -> Result<ReadTransaction<'_>> {
        self.conn
            .unchecked_transaction()
            .map(ReadTransaction)
            .ctx(|| "starting a read transaction".into())
    }

    /// The shared view's winner for a key, if live.
    pub fn live_file(&self, key: &str) -> Result<Option<LiveFile>> {
        live_file(&self.conn, key)
    }

    /// Unpushed, unparked outbox events in id order (the order they were made), at most `limit`.
    pub fn pending_outbox(&self, limit: usize) -> Result<Vec<(i64, crate::model::Event)>> {
        pending_outbox(&self.conn, limit)
    }

    /// Outbox events the brain refused: (ULID, key, its reason).
    pub fn parked_outbox(&self) -> Result<Vec<(String, String, String)>> {
        parked_outbox(&self.conn)
    }

    /// The ULIDs of every event in the outbox (pushed or not), in the order they were made.
    pub fn outbox_ulids(&self) -> Result<Vec<String>> {
        self.conn
            .prepare("SELECT event_ulid FROM lib_outbox ORDER BY id")
            .and_then(|mut stmt| {
                stmt.query_map([], |r| r.get(0))
                    .and_then(|rows| rows.collect())
            })
            .ctx(|| "listing the outbox".into())
    }

    /// FTS5 ranked search over path and content of live files (see [`search`]).
    pub fn search(&self, query: &str, limit: usize) -> Result<Vec<SearchHit>> {
        search(&self.conn, query, limit)
    }

    pub fn counts(&self) -> Result<Counts> {
        counts(&self.conn)
    }

    /// Live files and bytes in the shared view under one library.
    pub fn library_counts(&self, library: &str) -> Result<(i64, i64)> {
        library_counts(&self.conn, library)
    }

    /// Live files and bytes per library name found in the shared view.
    pub fn indexed_libraries(&self) -> Result<Vec<(String, i64, i64)>> {
        indexed_libraries(&self.conn)
    }

    pub fn device_sequence(&self) -> Result<i64> {
        device_sequence(&self.conn)
    }

    /// The last scan recorded in `lib_runs`.
    pub fn last_run(&self) -> Result<Option<RunRow>> {
        last_run(&self.conn)
    }

    /// Every open conflict with the version that beat it.
    pub fn conflicts(&self) -> Result<Vec<ConflictRow>> {
        conflicts(&self.conn)
    }

    /// The merge state of every entity in the shared view, by key.
    pub fn merge_states(&self) -> Result<Vec<(String, EntityState)>> {
        merge_states(&self.conn)
    }
}

#[cfg(test)]
mod tests {
    use super::fts_query;

    #[test]
    fn user_input_is_quoted_for_fts5() {
        assert_eq!(fts_query("  "), None);
        assert_eq!(fts_query("foo bar").as_deref(), Some("\"foo\" \"bar\"*"));
        assert_eq!(fts_query("a\"b -c").as_deref(), Some("\"a\"\"b\" \"-c\"*"));
    }
}

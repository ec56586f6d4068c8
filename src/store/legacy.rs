//! Adopting a LIB v1.0/v1.1 database in place: its tables keep their rows and gain our columns.
//!
//! [`check_placeable`] runs first, before anything is written: a database the agent cannot
//! place (another program's, or LIB's without a column it needs, or an event row that does not
//! parse) is refused untouched. The rest runs inside the transaction of migration 1, so a
//! failure leaves the old database as it was. LIB's `lib_files` used `path` as its primary key,
//! which gives the full-text index no stable rowid (VACUUM may renumber implicit rowids), so it
//! is rebuilt with an `id INTEGER PRIMARY KEY` and its rows copied; the old FTS table is dropped
//! and rebuilt from the copied rows.
//!
//! LIB v1.1 (`sqlite_002_hybrid.sql`) added `lib_device` (its id and sequence are kept, so its
//! clocks go on), `lib_outbox` (rows not pushed yet are pushed once, by the pusher, like ours),
//! `lib_inbox` and `lib_kv` (its pull cursor is honoured). Its `lib_files` rows carry no event
//! metadata, so at the first open its shared view is rebuilt by applying every event of its
//! outbox and inbox through the merge rule ([`super::Store::replay_lib_v11`]); rows no event
//! describes are backfilled as LIB v1.0's are.

use rusqlite::{Connection, OptionalExtension, Transaction};

/// What adopt_before found, for adopt_after to finish once the schema exists.
pub(crate) struct Adoption {
    /// The old `lib_files` was renamed aside with these columns, to be copied.
    legacy_columns: Option<Vec<String>>,
    /// The database had pulled other devices' events: its rows are not all this device's.
    pulled_before: bool,
    /// An FTS table of another shape was dropped: the new one must be filled.
    fts_dropped: bool,
}

const LEGACY_FILES: &str = "lib_files_lib_v10";

/// The event columns of LIB v1.1's `lib_outbox` and `lib_inbox` the agent reads.
const EVENT_COLUMNS: &[&str] = &[
    "device_id",
    "event_ulid",
    "event_type",
    "entity_type",
    "entity_key",
    "payload_json",
    "vector_clock",
    "created_at",
];

/// What each LIB table must have for the agent to use it as it stands.
const REQUIRED_COLUMNS: &[(&str, &[&str])] = &[
    ("lib_files", &["path"]),
    ("lib_device", &["device_id"]),
    ("lib_kv", &["k", "v"]),
    ("lib_outbox", EVENT_COLUMNS),
    ("lib_inbox", EVENT_COLUMNS),
];

/// LIB v1.1's name for the pull cursor is not in the reference (`SYNC_CURSOR_KEY`); ours is
/// `sync_after_id`, and its client's most plausible other spelling is taken too.
const LIB_V11_CURSOR_KEYS: &[&str] = &["sync_cursor"];

/// Why a database at schema 0 that holds tables cannot be adopted, or `Ok`. Reads only: it runs
/// before anything (even the switch to WAL) writes to the file.
pub(crate) fn check_placeable(conn: &Connection) -> Result<(), String> {
    let mut stmt = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'
             ORDER BY name",
        )
        .map_err(|e| e.to_string())?;
    let tables: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .and_then(|rows| rows.collect())
        .map_err(|e| e.to_string())?;
    if !tables.is_empty() && !tables.iter().any(|t| t.starts_with("lib_")) {
        let shown: Vec<&str> = tables.iter().take(5).map(String::as_str).collect();
        return Err(format!(
            "it holds another program's tables ({}{}) and none of LIB's",
            shown.join(", "),
            if tables.len() > 5 { ", ..." } else { "" }
        ));
    }
    for (table, required) in REQUIRED_COLUMNS {
        if !tables.iter().any(|t| t == table) {
            continue;
        }
        let have: Vec<String> = columns(conn, table)
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|c| c.0)
            .collect();
        if let Some(missing) = required
            .iter()
            .find(|c| !have.iter().any(|h| h.eq_ignore_ascii_case(c)))
        {
            return Err(format!("its {table} has no column {missing}"));
        }
    }
    for table in ["lib_outbox", "lib_inbox"] {
        if tables.iter().any(|t| t == table) {
            // Every row must read as an event: the pusher and the replay read them all.
            let sql = format!(
                "SELECT rowid, {} FROM {table} WHERE rowid > ?1 ORDER BY rowid",
                EVENT_COLUMNS.join(", ")
            );
            super::read::read_events(conn, table, &sql, i64::MIN).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Columns later migrations rely on, per table that LIB may have created already. Added (nullable)
/// where missing; `lib_files` is handled by copying instead.
const ADOPTED_COLUMNS: &[(&str, &[(&str, &str)])] = &[
    (
        "lib_runs",
        &[
            ("started_at", "TEXT"),
            ("ended_at", "TEXT"),
            ("library", "TEXT"),
            ("status", "TEXT"),
            ("files_seen", "INTEGER DEFAULT 0"),
            ("files_hashed", "INTEGER DEFAULT 0"),
            ("files_unchanged", "INTEGER DEFAULT 0"),
            ("files_upserted", "INTEGER DEFAULT 0"),
            ("files_deleted", "INTEGER DEFAULT 0"),
            ("bytes_hashed", "INTEGER DEFAULT 0"),
            ("errors", "INTEGER DEFAULT 0"),
            ("message", "TEXT"),
        ],
    ),
    (
        "lib_device",
        &[
            ("sequence", "INTEGER NOT NULL DEFAULT 0"),
            ("created_at", "TEXT"),
        ],
    ),
    (
        "lib_outbox",
        &[
            ("pushed_at", "TEXT"),
            ("parked_at", "TEXT"),
            ("parked_error", "TEXT"),
        ],
    ),
    (
        "lib_inbox",
        &[("source_id", "INTEGER"), ("applied_at", "TEXT")],
    ),
];

fn table_exists(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT 1 FROM sqlite_master WHERE name = ?1",
        [name],
        |_| Ok(()),
    )
    .optional()
    .map(|found| found.is_some())
}

fn columns(conn: &Connection, table: &str) -> rusqlite::Result<Vec<(String, String, bool)>> {
    let mut stmt = conn.prepare(&format!("PRAGMA table_info(\"{table}\")"))?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(5)? > 0,
        ))
    })?;
    rows.collect()
}

pub(crate) fn adopt_before(tx: &Transaction) -> rusqlite::Result<Adoption> {
    // LIB v1.0 had no sync: every row came from this device's disk. A v1.1 database that pulled
    // events may hold other devices' files, which must not be taken for deleted here.
    let pulled_before = table_exists(tx, "lib_inbox")?
        && tx.query_row("SELECT count(*) FROM lib_inbox", [], |r| r.get::<_, i64>(0))? > 0;
    for (table, wanted) in ADOPTED_COLUMNS {
        if !table_exists(tx, table)? {
            continue;
        }
        let have: Vec<String> = columns(tx, table)?.into_iter().map(|c| c.0).collect();
        for (column, decl) in *wanted {
            if !have.iter().any(|h| h.eq_ignore_ascii_case(column)) {
                tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))?;
            }
        }
    }

    let fts_is_ours = tx
        .query_row(
            "SELECT sql FROM sqlite_master WHERE name = 'lib_files_fts'",
            [],
            |r| r.get::<_, String>(0),
        )
        .optional()?
        .is_some_and(|sql| {
            sql.contains("content='lib_files'") && sql.contains("content_rowid='id'")
        });
    let fts_dropped = table_exists(tx, "lib_files_fts")? && !fts_is_ours;
    if fts_dropped {
        tx.execute_batch("DROP TABLE lib_files_fts")?;
    }

    if !table_exists(tx, "lib_files")? {
        return Ok(Adoption {
            legacy_columns: None,
            pulled_before,
            fts_dropped,
        });
    }
    let cols = columns(tx, "lib_files")?;
    let has_id_key = cols
        .iter()
        .any(|(name, ty, pk)| name == "id" && *pk && ty.eq_ignore_ascii_case("INTEGER"));
    if has_id_key {
        return Ok(Adoption {
            legacy_columns: None,
            pulled_before,
            fts_dropped,
        });
    }
    tx.execute_batch(&format!("ALTER TABLE lib_files RENAME TO {LEGACY_FILES}"))?;
    Ok(Adoption {
        legacy_columns: Some(cols.into_iter().map(|c| c.0).collect()),
        pulled_before,
        fts_dropped,
    })
}

pub(crate) fn adopt_after(tx: &Transaction, adoption: Adoption) -> rusqlite::Result<()> {
    adopt_lib_v11(tx)?;
    let Some(legacy_columns) = adoption.legacy_columns else {
        if adoption.fts_dropped {
            fill_fts(tx)?;
        }
        return Ok(());
    };
    let carried = [
        "path",
        "sha256",
        "bytes",
        "mtime_unix",
        "ext",
        "mime",
        "content",
        "deleted_at",
        "indexed_at",
    ];
    let select: Vec<String> = carried
        .iter()
        .map(|c| {
            if legacy_columns.iter().any(|h| h.eq_ignore_ascii_case(c)) {
                format!("\"{c}\"")
            } else {
                "NULL".to_owned()
            }
        })
        .collect();
    let copied = tx.execute(
        &format!(
            "INSERT INTO lib_files ({}) SELECT {} FROM {LEGACY_FILES} WHERE path IS NOT NULL",
            carried.join(", "),
            select.join(", ")
        ),
        [],
    )?;
    tx.execute_batch(&format!("DROP TABLE {LEGACY_FILES}"))?;
    fill_fts(tx)?;
    if copied > 0 {
        // The first scan turns these rows into initial_sync events, once.
        tx.execute(
            "INSERT OR REPLACE INTO lib_kv (k, v) VALUES (?1, '1')",
            [super::kv::BACKFILL_PENDING],
        )?;
        if !adoption.pulled_before {
            // The backfill then records them as observed here, so the first scan verifies them
            // and notices the ones deleted since.
            tx.execute(
                "INSERT OR REPLACE INTO lib_kv (k, v) VALUES (?1, '1')",
                [super::kv::BACKFILL_OBSERVED],
            )?;
        }
    }
    tracing::info!(rows = copied, "adopted a LIB v1.0 lib_files table");
    Ok(())
}

/// LIB v1.1's sync state: its cursor under our key, its pending events' times in the form the
/// brain accepts, and the replay of its events flagged for the first open.
fn adopt_lib_v11(tx: &Transaction) -> rusqlite::Result<()> {
    for key in LIB_V11_CURSOR_KEYS {
        tx.execute(
            "INSERT OR IGNORE INTO lib_kv (k, v) SELECT ?1, v FROM lib_kv WHERE k = ?2",
            [super::kv::CURSOR_KEY, key],
        )?;
    }
    // Python's isoformat() without a zone, or SQLite's datetime('now'): both UTC. The brain
    // refuses a created_at that is not RFC 3339, so pending events get the zone said; pushed
    // ones are left as the brain stored them.
    let mut stmt =
        tx.prepare("SELECT rowid, created_at FROM lib_outbox WHERE pushed_at IS NULL")?;
    let pending: Vec<(i64, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (rowid, created_at) in pending {
        if let Some(fixed) = rfc3339_of_naive_utc(&created_at) {
            tx.execute(
                "UPDATE lib_outbox SET created_at = ?1 WHERE rowid = ?2",
                rusqlite::params![fixed, rowid],
            )?;
        }
    }
    let events: i64 = tx.query_row(
        "SELECT (SELECT count(*) FROM lib_outbox) + (SELECT count(*) FROM lib_inbox)",
        [],
        |r| r.get(0),
    )?;
    if events > 0 {
        tx.execute(
            "INSERT OR REPLACE INTO lib_kv (k, v) VALUES (?1, '1')",
            [super::kv::LIB_V11_REPLAY],
        )?;
    }
    Ok(())
}

/// `2026-02-10 10:06:00[.ffffff]` or `2026-02-10T10:06:00[.ffffff]` (no zone, UTC) as RFC 3339;
/// `None` for anything else, RFC 3339 included.
fn rfc3339_of_naive_utc(s: &str) -> Option<String> {
    if crate::model::event::is_rfc3339(s) || s.len() < 19 || !s.is_ascii() {
        return None;
    }
    let candidate = format!("{}T{}Z", &s[..10], &s[11..]);
    crate::model::event::is_rfc3339(&candidate).then_some(candidate)
}

impl super::Store {
    /// Rebuilds the shared view of an adopted LIB v1.1 database from its events, once: every
    /// event of its outbox and inbox, applied through the merge rule in one transaction.
    pub(super) fn replay_lib_v11(&mut self) -> super::Result<()> {
        if super::kv::get(&self.conn, super::kv::LIB_V11_REPLAY)?.is_none() {
            return Ok(());
        }
        let mut events = Vec::new();
        for table in ["lib_outbox", "lib_inbox"] {
            let sql = format!(
                "SELECT rowid, {} FROM {table} WHERE rowid > ?1 ORDER BY rowid",
                EVENT_COLUMNS.join(", ")
            );
            events.extend(super::read::read_events(&self.conn, table, &sql, i64::MIN)?);
        }
        let batch = self.batch()?;
        for (_, event) in &events {
            batch.apply(event)?;
        }
        batch.finish_lib_v11_replay()?;
        batch.commit()?;
        tracing::info!(
            events = events.len(),
            "rebuilt the shared view of an adopted LIB v1.1 database from its events"
        );
        Ok(())
    }
}

fn fill_fts(tx: &Transaction) -> rusqlite::Result<()> {
    tx.execute_batch(
        "INSERT INTO lib_files_fts (rowid, path, content)
         SELECT id, path, content FROM lib_files WHERE deleted_at IS NULL",
    )
}

impl super::Store {
    /// The live rows adopted from a LIB v1.0 table that no event has described yet, by key:
    /// what the backfill turns into `initial_sync` events.
    pub fn rows_to_backfill(&self) -> super::Result<Vec<(String, crate::model::FilePayload)>> {
        use super::Context;
        let context = || "reading rows to backfill".to_owned();
        let mut stmt = self
            .conn
            .prepare(
                "SELECT path, sha256, bytes, mtime_unix, ext, mime, content FROM lib_files
                 WHERE event_ulid IS NULL AND deleted_at IS NULL ORDER BY path",
            )
            .ctx(context)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    crate::model::FilePayload {
                        sha256: r.get(1)?,
                        bytes: r.get::<_, Option<i64>>(2)?.map(|b| b.max(0) as u64),
                        mtime_unix: r.get(3)?,
                        ext: r.get(4)?,
                        mime: r.get(5)?,
                        content: r.get(6)?,
                    },
                ))
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .ctx(context)?;
        Ok(rows)
    }
}

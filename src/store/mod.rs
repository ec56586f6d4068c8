//! The local SQLite store: open and migrate, then the per-table modules. Nothing outside this
//! module runs SQL on the agent's database: callers get typed methods (reads in [`read`], the
//! `lib_kv` values in [`kv`], scans in `runs`), and the connection stays private.
//!
//! Writes go through a [`Batch`] (one `BEGIN IMMEDIATE` transaction): the indexer puts a whole
//! batch of file changes in one, so observed state, `lib_files`, FTS and the outbox commit together.

mod batch;
pub mod conflict;
pub mod digest;
pub mod history;
pub mod kv;
mod legacy;
pub mod read;
mod reseed;
mod runs;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OpenFlags, OptionalExtension};

pub use batch::{Applied, Batch, LocalChange, Observed, Shared, SharedRow};
pub use runs::RunTotals;

/// Migrations in order; `PRAGMA user_version` is the number applied.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/agent/0001_init.sql"),
    include_str!("../../migrations/agent/0002_winner_created_at.sql"),
];

pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database {path}: {}", reason(source))]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("no database at {0}: run `agent init` or `agent scan` first")]
    Missing(PathBuf),
    /// A database the agent did not make and cannot adopt; nothing was written to it.
    #[error("database {path} cannot be adopted: {reason}; it was left untouched")]
    Unplaceable { path: PathBuf, reason: String },
    #[error(
        "database {path} has schema version {found}, newer than this agent's {supported}; \
         refusing to touch it (upgrade the agent)"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("migrating database {path} to schema {version}: {source}")]
    Migrate {
        path: PathBuf,
        version: i64,
        source: rusqlite::Error,
    },
    #[error("database {path} is locked by another process: {}", reason(source))]
    Locked {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("{context}: {source}")]
    Sql {
        context: String,
        source: rusqlite::Error,
    },
    #[error("{context}: stored value is corrupt: {detail}")]
    Corrupt { context: String, detail: String },
    /// A change on this device would need a sequence number past 2^53, the cap of a clock
    /// entry: an event pulled from the brain carried our entry at the cap. Nothing was recorded.
    #[error(
        "cannot record the change of {key}: this device's sequence number would pass 2^53 (its \
         clock entry there is {seen}, which only a damaged or hostile brain log can hand out); \
         the change is not recorded"
    )]
    SequenceExhausted { key: String, seen: u64 },
    #[error("cannot create {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// SQLite could not grow the database, its WAL or its shared-memory index. The transaction
    /// was rolled back whole; what was committed before stays.
    #[error(
        "the disk holding database {path} is full ({context}); nothing was half-written or lost: \
         free some space, then run again"
    )]
    DiskFull {
        path: PathBuf,
        context: String,
        source: rusqlite::Error,
    },
}

impl StoreError {
    /// The file system under the database is full.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::DiskFull { .. } => true,
            StoreError::Open { source, .. }
            | StoreError::Migrate { source, .. }
            | StoreError::Locked { source, .. }
            | StoreError::Sql { source, .. } => is_disk_full(source),
            _ => false,
        }
    }

    /// Says that a full disk is what failed, and names the database on it: SQLite's own words
    /// ("database or disk is full", or "disk I/O error" when its shared-memory index cannot
    /// grow) name neither. Other errors pass unchanged.
    pub fn on_disk_of(self, path: &Path) -> StoreError {
        let (context, source) = match self {
            StoreError::Open { source, .. } | StoreError::Locked { source, .. }
                if is_disk_full(&source) =>
            {
                ("opening it".to_owned(), source)
            }
            StoreError::Migrate {
                version, source, ..
            } if is_disk_full(&source) => (format!("migrating it to schema {version}"), source),
            StoreError::Sql { context, source } if is_disk_full(&source) => (context, source),
            other => return other,
        };
        StoreError::DiskFull {
            path: path.to_owned(),
            context,
            source,
        }
    }
}

/// SQLITE_FULL, or a shared-memory index that cannot grow (SQLite reports that as an I/O error,
/// and on Linux the cause is ENOSPC).
fn is_disk_full(e: &rusqlite::Error) -> bool {
    match e {
        rusqlite::Error::SqliteFailure(code, _) => {
            code.code == rusqlite::ErrorCode::DiskFull
                || code.extended_code == rusqlite::ffi::SQLITE_IOERR_SHMSIZE
        }
        _ => false,
    }
}

/// SQLite's own message, without rusqlite's "Error code N: ..." repetition of it.
fn reason(e: &rusqlite::Error) -> String {
    match e {
        rusqlite::Error::SqliteFailure(code, Some(msg)) if !msg.is_empty() => {
            if matches!(code.code, rusqlite::ErrorCode::NotADatabase) {
                "not a database (not SQLite, or encrypted, or damaged)".to_owned()
            } else {
                msg.clone()
            }
        }
        rusqlite::Error::SqliteFailure(code, _) => match code.code {
            rusqlite::ErrorCode::NotADatabase => {
                "not a database (not SQLite, or encrypted, or damaged)".to_owned()
            }
            rusqlite::ErrorCode::CannotOpen => {
                "cannot open the file (does its folder exist and is it writable?)".to_owned()
            }
            rusqlite::ErrorCode::ReadOnly => "the file is read-only".to_owned(),
            _ => code.to_string(),
        },
        other => other.to_string(),
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Attaches what was being done to a rusqlite error.
pub(crate) trait Context<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for rusqlite::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| StoreError::Sql {
            context: context(),
            source,
        })
    }
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
    device_id: String,
    /// Commits are not fsynced one by one (see [`Store::defer_sync`]).
    deferred: bool,
    ulids: Option<UlidSource>,
    clock: Clock,
    /// Copies the WAL into the database while a scan writes (bulk mode).
    checkpointer: Option<Checkpointer>,
}

/// Copies the WAL into the database beside a bulk writer, from a connection of its own: the
/// copy and its fsyncs overlap the scan instead of following it, and leaving bulk mode has only
/// the last interval's writes left to copy and sync (100,000 files: about 0.3 s of syncing at the
/// end of a scan without it, measured).
struct Checkpointer {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Checkpointer {
    const INTERVAL: Duration = Duration::from_millis(200);

    /// `None` when the second connection cannot be had: the checkpoint then all happens when
    /// bulk mode ends, as it would anyway.
    fn start(path: &Path) -> Option<Checkpointer> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .and_then(|conn| {
            // NORMAL: each checkpoint syncs the WAL before copying and the database after.
            conn.execute_batch("PRAGMA synchronous = NORMAL")?;
            Ok(conn)
        })
        .map_err(|e| tracing::debug!("no background checkpoints: {e}"))
        .ok()?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || {
                run_behind_the_writer();
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(Self::INTERVAL)
                {
                    // PASSIVE never waits for the writer; what it cannot copy now is copied
                    // next time, or when bulk mode ends.
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::debug!("background checkpoint: {e}");
                    }
                }
            })
            .map_err(|e| tracing::debug!("no background checkpoints: {e}"))
            .ok()?;
        Some(Checkpointer { stop, thread })
    }

    fn finish(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}

/// Where the ULIDs of new local events come from, instead of the clock and the OS's randomness:
/// the deterministic simulation (`tests/sim/`) replays a run exactly from its seed.
pub type UlidSource = Box<dyn Fn() -> ulid::Ulid + Send>;

/// Where "now" comes from for the store's timestamps (event `created_at`, `indexed_at`,
/// `observed_at`, `applied_at`, ...) and for the indexer's "read at" time that decides whether
/// a file's stat can be trusted ([`crate::index::is_racy`]): the system clock, or a simulated
/// one, so that the deterministic simulation (`tests/sim/`) never reads the real clock and
/// replays a run exactly from its seed. Cheap to clone: each reader thread holds one.
#[derive(Clone, Default)]
pub struct Clock(Option<Arc<dyn Fn() -> SystemTime + Send + Sync>>);

impl Clock {
    /// The system clock (the default).
    pub fn system() -> Clock {
        Clock(None)
    }

    /// A clock that reads `now` instead of the system's.
    pub fn from_fn(now: impl Fn() -> SystemTime + Send + Sync + 'static) -> Clock {
        Clock(Some(Arc::new(now)))
    }

    #[inline]
    pub fn now(&self) -> SystemTime {
        match &self.0 {
            None => SystemTime::now(),
            Some(now) => now(),
        }
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_none() {
            "Clock(system)"
        } else {
            "Clock(injected)"
        })
    }
}

impl Store {
    /// Opens the database, creating it (and its folder) if needed, and migrates it.
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            crate::private::create_dir_all(parent).map_err(|source| StoreError::CreateDir {
                path: parent.to_owned(),
                source,
            })?;
        }
        // It holds the text of the user's files: 0600, and SQLite gives -wal and -shm its mode.
        crate::private::create_file(path).map_err(|source| StoreError::CreateDir {
            path: path.to_owned(),
            source,
        })?;
        Self::open_with(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        )
        .map_err(|e| e.on_disk_of(path))
    }

    /// Opens a database that must exist already (search, status: never create one by accident).
    pub fn open_existing(path: &Path) -> Result<Store> {
        if !path.exists() {
            return Err(StoreError::Missing(path.to_owned()));
        }
        Self::open_with(path, OpenFlags::SQLITE_OPEN_READ_WRITE).map_err(|e| e.on_disk_of(path))
    }

    fn open_with(path: &Path, flags: OpenFlags) -> Result<Store> {
        configure_sqlite();
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(open_err)?;
        // Read the version before any write: switching to WAL writes the header, and a database
        // from a newer agent must stay untouched.
        let found: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(open_err)?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: path.to_owned(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        if found == 0 {
            legacy::check_placeable(&conn).map_err(|reason| StoreError::Unplaceable {
                path: path.to_owned(),
                reason,
            })?;
            // Only takes effect on a new, empty file. Text rows of a few KiB fit in a 32 KiB page
            // instead of spilling into overflow chains: fewer pages and syscalls per file indexed.
            conn.execute_batch("PRAGMA page_size = 32768")
                .map_err(open_err)?;
        }
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(|source| classify_lock(path, source))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), mode, "database is not in WAL mode");
        }
        // FULL: a committed sequence number and outbox row survive a power loss, so a sequence
        // number is never handed out twice for two different events.
        conn.execute_batch(
            "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA temp_store = MEMORY;
             PRAGMA cache_size = -32768;
             CREATE TEMP TABLE IF NOT EXISTS fts_pending (
                 seq INTEGER PRIMARY KEY, op TEXT, id INTEGER NOT NULL, path TEXT NOT NULL, content TEXT
             );",
        )
        .map_err(open_err)?;
        // Room for every statement the indexer, the watcher and sync use: with rusqlite's
        // default of 16 they evicted each other, and each batch parsed its SQL again.
        conn.set_prepared_statement_cache_capacity(64);
        let mut store = Store {
            conn,
            path: path.to_owned(),
            device_id: String::new(),
            deferred: false,
            ulids: None,
            clock: Clock::system(),
            checkpointer: None,
        };
        store.migrate(found)?;
        store.device_id = store.ensure_device()?;
        store.replay_lib_v11()?;
        Ok(store)
    }

    fn migrate(&mut self, from: i64) -> Result<()> {
        for (index, sql) in MIGRATIONS.iter().enumerate().skip(from as usize) {
            let version = index as i64 + 1;
            let path = self.path.clone();
            let err = |source| StoreError::Migrate {
                path: path.clone(),
                version,
                source,
            };
            let tx = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(|source| classify_lock(&self.path, source))?;
            let adoption = if version == 1 {
                Some(legacy::adopt_before(&tx).map_err(err)?)
            } else {
                None
            };
            tx.execute_batch(sql).map_err(err)?;
            if let Some(adoption) = adoption {
                legacy::adopt_after(&tx, adoption).map_err(err)?;
            }
            tx.pragma_update(None, "user_version", version)
                .map_err(err)?;
            tx.commit().map_err(err)?;
            tracing::debug!(path = %self.path.display(), version, "migrated database");
        }
        Ok(())
    }

    fn ensure_device(&mut self) -> Result<String> {
        let existing: Option<String> = self
            .conn
            .query_row(
                "SELECT device_id FROM lib_device ORDER BY rowid LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()
            .ctx(|| "reading the device id".into())?;
        if let Some(id) = existing {
            return Ok(id);
        }
        let id = uuid::Uuid::new_v4().to_string();
        self.conn
            .execute(
                "INSERT INTO lib_device (device_id, sequence, created_at) VALUES (?1, 0, ?2)",
                (&id, crate::model::event::now_rfc3339()),
            )
            .ctx(|| "creating the device id".into())?;
        Ok(id)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// Starts a write transaction. It takes the write lock at once, so two writers queue up
    /// instead of failing half-way.
    pub fn batch(&mut self) -> Result<Batch<'_>> {
        // `&mut self` keeps transactions from nesting; the batch's statements borrow the
        // connection beside the transaction.
        let tx = rusqlite::Transaction::new_unchecked(
            &self.conn,
            rusqlite::TransactionBehavior::Immediate,
        )
        .map_err(|source| classify_lock(&self.path, source).on_disk_of(&self.path))?;
        Ok(Batch::new(
            &self.conn,
            tx,
            &self.device_id,
            &self.path,
            self.ulids.as_ref(),
            &self.clock,
        ))
    }

    /// New local events take their ULIDs from `source` (see [`UlidSource`]).
    pub fn set_ulid_source(&mut self, source: UlidSource) {
        self.ulids = Some(source);
    }

    /// The store's timestamps, and the indexer's "read at" times, come from `clock` (see
    /// [`Clock`]). The device row made when a database is created is stamped before this can
    /// be called, by the system clock.
    pub fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Bulk mode, for a scan: the writer never checkpoints (a [`Checkpointer`] beside it does),
    /// and commits are not fsynced one by one. Leaving it checkpoints the rest with a full sync,
    /// so everything committed is durable when the scan returns. A crash in between loses whole
    /// transactions (never half of one), and nothing committed in bulk mode has been pushed yet:
    /// whoever pushes calls [`Store::make_durable`] first, so a sequence number that a pushed
    /// event carries can never be handed out again.
    pub fn set_bulk_mode(&mut self, on: bool) -> Result<()> {
        if let Some(checkpointer) = self.checkpointer.take() {
            checkpointer.finish();
        }
        let sql = match (on, self.deferred) {
            (true, _) => "PRAGMA wal_autocheckpoint = 0; PRAGMA synchronous = NORMAL;",
            (false, false) => {
                "PRAGMA synchronous = FULL; PRAGMA wal_autocheckpoint = 1000; PRAGMA wal_checkpoint(TRUNCATE);"
            }
            (false, true) => "PRAGMA wal_autocheckpoint = 1000; PRAGMA wal_checkpoint(TRUNCATE);",
        };
        self.conn
            .execute_batch(sql)
            .ctx(|| {
                if on {
                    "setting WAL checkpointing".into()
                } else {
                    "checkpointing the WAL into the database".into()
                }
            })
            .map_err(|e| e.on_disk_of(&self.path))?;
        if on {
            self.checkpointer = Checkpointer::start(&self.path);
        }
        Ok(())
    }

    /// For the long-running agent: commits are durable in order but not fsynced one by one (WAL
    /// with `synchronous=NORMAL`). A power loss can then lose the last few transactions, whole,
    /// and their changes are found again by the start-up scan, since the observed state rolls
    /// back with them. Nothing unsynced ever leaves the device: the pusher calls
    /// [`Store::make_durable`] before every push.
    pub fn defer_sync(&mut self) -> Result<()> {
        self.deferred = true;
        self.conn
            .execute_batch("PRAGMA synchronous = NORMAL")
            .ctx(|| "setting deferred sync".into())
    }

    /// While `relaxed`, commits are not fsynced one by one (`synchronous=NORMAL`); after, they are
    /// again unless [`Store::defer_sync`] was called. For the pusher's marks: a mark a power cut
    /// loses only sends its event again, which the brain ignores (idempotent by ULID), while an
    /// fsync per request doubled the time a large push took.
    pub fn relax_sync(&mut self, relaxed: bool) -> Result<()> {
        let sql = if relaxed || self.deferred {
            "PRAGMA synchronous = NORMAL"
        } else {
            "PRAGMA synchronous = FULL"
        };
        self.conn
            .execute_batch(sql)
            .ctx(|| "setting the sync mode of the push marks".into())
    }

    /// Gives memory back after a large job (a scan): SQLite's page cache, and the allocator's
    /// free pages, so a long-running agent stays small while idle.
    pub fn release_memory(&self) {
        let _ = self.conn.execute_batch("PRAGMA shrink_memory");
        #[cfg(target_os = "linux")]
        // SAFETY: malloc_trim only returns free heap pages to the kernel.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    /// Makes everything committed so far durable, whichever connection committed it: a small
    /// commit at `synchronous=FULL` fsyncs the whole WAL, and with it every frame before it
    /// (commits made in bulk mode were not synced one by one).
    pub fn make_durable(&mut self) -> Result<()> {
        self.conn
            .execute_batch("PRAGMA synchronous = FULL")
            .ctx(|| "syncing the database to disk".into())?;
        let batch = self.batch()?;
        batch.set_durable_at(&batch.now())?;
        batch.commit()
    }
}

/// Lowers the calling thread's scheduling priority below the single writer's, for threads that
/// feed or follow it (scan readers, the checkpointer): at equal priority they took the CPU from
/// the writer while it had work (measured: 1.36 s against 1.15 s for a cold scan of 100,000
/// files). They still get every cycle the writer leaves.
pub(crate) fn run_behind_the_writer() {
    /// Nice value of such threads (the writer stays at the process's own).
    #[cfg(target_os = "linux")]
    const NICENESS: libc::c_int = 10;
    #[cfg(target_os = "linux")]
    // SAFETY: gettid has no preconditions; setpriority on our own thread only lowers its
    // priority, which needs no privilege, and a failure changes nothing.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, NICENESS);
    }
}

/// Process-wide SQLite settings, made before the first connection opens. Memory statistics
/// take a global mutex around every allocation SQLite makes (5% of a scan's writer, measured),
/// and nothing here reads them.
fn configure_sqlite() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: sqlite3_config takes this option with one int argument; called before any
        // connection exists, or it returns SQLITE_MISUSE and changes nothing.
        let rc = unsafe {
            rusqlite::ffi::sqlite3_config(
                rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS,
                0 as std::ffi::c_int,
            )
        };
        if rc != rusqlite::ffi::SQLITE_OK {
            tracing::debug!("SQLite memory statistics stay on (sqlite3_config: {rc})");
        }
    });
}

fn classify_lock(path: &Path, source: rusqlite::Error) -> StoreError {
    match source.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            StoreError::Locked {
                path: path.to_owned(),
                source,
            }
        }
        _ => StoreError::Open {
            path: path.to_owned(),
            source,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(code: std::os::raw::c_int, message: &str) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), Some(message.into()))
    }

    #[test]
    fn a_full_disk_is_named_with_the_database_and_other_errors_pass_unchanged() {
        let db = Path::new("/data/agent.db");
        let full = StoreError::Sql {
            context: "committing a batch of changes".into(),
            source: sqlite(rusqlite::ffi::SQLITE_FULL, "database or disk is full"),
        };
        assert!(full.is_disk_full());
        let named = full.on_disk_of(db).to_string();
        assert!(
            named.starts_with(
                "the disk holding database /data/agent.db is full (committing a batch of changes)"
            ),
            "{named}"
        );
        // SQLite calls a shared-memory index that cannot grow an I/O error.
        let shm = StoreError::Open {
            path: db.to_owned(),
            source: sqlite(rusqlite::ffi::SQLITE_IOERR_SHMSIZE, "disk I/O error"),
        };
        let named = shm.on_disk_of(db).to_string();
        assert!(named.contains("is full (opening it)"), "{named}");

        let locked = StoreError::Sql {
            context: "reading".into(),
            source: sqlite(rusqlite::ffi::SQLITE_BUSY, "database is locked"),
        };
        assert!(!locked.is_disk_full());
        assert_eq!(
            locked.on_disk_of(db).to_string(),
            "reading: database is locked"
        );
    }
}

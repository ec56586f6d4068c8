//! The brain's embedded store: one SQLite file in WAL mode with `synchronous=FULL` (an event the
//! brain acknowledged survives a power loss). One writer connection behind a mutex serialises
//! ingests (SQLite has one writer anyway; queueing here beats busy-waiting in SQLite); pulls and
//! snapshots read on their own connections, concurrently with the writer. All of it runs on the
//! blocking pool, never on the async runtime.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use tokio::sync::watch;

use super::ingest as flow;
use super::{
    blocking, corrupt, parse_event_type, parse_state, unix_seconds, Binding, BrainStore,
    CheckedEvent, DeliveryFailure, DeviceAuth, DeviceRecord, DeviceSeen, DigestRederived, Ingested,
    PruneBound, PruneReport, PruneStatus, PullPage, ReplicaPoint, SnapshotPage, Webhook,
    META_EPOCH, META_LAST_PRUNE_AT, META_LAST_PRUNE_DELETED, META_TOTAL_PRUNE_DELETED,
};
use crate::brain::{BrainError, Result};
use crate::model::wire::{PulledEvent, SnapshotEntity};
use crate::model::{Event, FilePayload};
use ingest::SqliteIngest;

pub mod backup;
mod devices;
mod digest;
mod ingest;

const MIGRATIONS: &[&str] = &[
    include_str!("../../../migrations/brain/sqlite/0001_init.sql"),
    include_str!("../../../migrations/brain/sqlite/0002_pruned_events.sql"),
    include_str!("../../../migrations/brain/sqlite/0003_devices.sql"),
    include_str!("../../../migrations/brain/sqlite/0004_replica_digest.sql"),
    include_str!("../../../migrations/brain/sqlite/0005_webhook_origin.sql"),
];

/// Readers kept open between requests; more are opened (and closed after) under load.
const IDLE_READERS: usize = 8;

#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// How long a write waits for a lock another process holds before the request fails with
    /// 503 (nothing written).
    pub busy_timeout: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            busy_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    options: SqliteOptions,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    newest: watch::Sender<i64>,
    epoch: i64,
}

fn sql_err(context: &str, e: rusqlite::Error) -> BrainError {
    use rusqlite::ErrorCode::*;
    match e.sqlite_error_code() {
        // SQLite's own words ("database or disk is full") leave the operator guessing; the
        // transaction was rolled back whole, so the client can simply retry later.
        Some(DiskFull) => BrainError::Unavailable(format!(
            "the disk holding the brain's database is full ({context}); nothing was written: \
             free space on it, then retry"
        )),
        Some(DatabaseBusy | DatabaseLocked | SystemIoFailure | CannotOpen | ReadOnly) => {
            BrainError::Unavailable(format!("{context}: {e}"))
        }
        _ => BrainError::Internal(format!("{context}: {e}")),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock rolled its transaction back (the Transaction was dropped):
    // the connection is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn open_conn(path: &Path, options: &SqliteOptions) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| sql_err(&format!("opening brain database {}", path.display()), e))?;
    conn.busy_timeout(options.busy_timeout)
        .map_err(|e| sql_err("setting the busy timeout", e))?;
    conn.execute_batch(
        "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA cache_size = -32768;",
    )
    .map_err(|e| sql_err("configuring the brain database", e))?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating it and its folder if needed) and migrates the brain database.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        Self::open_with(path, SqliteOptions::default())
    }

    pub fn open_with(path: &Path, options: SqliteOptions) -> Result<SqliteStore> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            crate::private::create_dir_all(parent).map_err(|e| {
                BrainError::Unavailable(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        // The brain holds the text of every device's files: 0600 (-wal and -shm follow it).
        crate::private::create_file(path).map_err(|e| {
            BrainError::Unavailable(format!("cannot create {}: {e}", path.display()))
        })?;
        let mut conn = open_conn(path, &options)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(|e| sql_err("switching to WAL", e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(BrainError::Unavailable(format!(
                "brain database {} cannot use WAL (journal mode {mode})",
                path.display()
            )));
        }
        migrate(&mut conn, path)?;
        // Re-derived at every start: a store changed outside the brain is found and said.
        rederive_digest(&mut conn)?.report();
        let newest = newest_id(&conn)?;
        let (newest, _) = watch::channel(newest);
        conn.execute(
            "INSERT OR IGNORE INTO brain_meta (k, v) VALUES (?1, ?2)",
            rusqlite::params![META_EPOCH, super::new_epoch()],
        )
        .map_err(|e| sql_err("making the store's epoch", e))?;
        let epoch = meta(&conn, META_EPOCH)?.unwrap_or_default();
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                options,
                writer: Mutex::new(conn),
                readers: Mutex::new(Vec::new()),
                newest,
                epoch,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        blocking(move || f(&mut lock(&inner.writer))).await
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        blocking(move || {
            let pooled = lock(&inner.readers).pop();
            let mut conn = match pooled {
                Some(conn) => conn,
                None => open_conn(&inner.path, &inner.options)?,
            };
            let result = f(&mut conn);
            let mut readers = lock(&inner.readers);
            if readers.len() < IDLE_READERS {
                readers.push(conn);
            }
            result
        })
        .await
    }
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
    let found: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| sql_err("reading the schema version", e))?;
    if found > MIGRATIONS.len() as i64 {
        return Err(BrainError::Internal(format!(
            "brain database {} has schema version {found}, newer than this brain's {}; upgrade the agent",
            path.display(),
            MIGRATIONS.len()
        )));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = index as i64 + 1;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| sql_err("starting a migration", e))?;
        tx.execute_batch(sql)
            .map_err(|e| sql_err(&format!("migrating the brain database to {version}"), e))?;
        tx.pragma_update(None, "user_version", version)
            .map_err(|e| sql_err("recording the schema version", e))?;
        tx.commit()
            .map_err(|e| sql_err("committing a migration", e))?;
    }
    Ok(())
}

/// [`BrainStore::rederive_digest`] in one `BEGIN IMMEDIATE` transaction: no ingest in between.
fn rederive_digest(conn: &mut Connection) -> Result<DigestRederived> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| sql_err("starting the replica digest's derivation", e))?;
    let kept = digest::kept(&tx)?;
    let (derived, entities) = digest::derive(&tx)?;
    // No row stands for the empty digest: a store without entities is left as it is.
    if kept.unwrap_or_default() != derived {
        digest::save(&tx, &derived)?;
        tx.commit()
            .map_err(|e| sql_err("committing the replica digest", e))?;
    }
    Ok(DigestRederived {
        kept,
        derived,
        entities,
    })
}

/// The greatest id ever handed out (AUTOINCREMENT's counter survives pruning).
fn newest_id(conn: &Connection) -> Result<i64> {
    conn.query_row(
        "SELECT seq FROM sqlite_sequence WHERE name = 'events'",
        [],
        |r| r.get(0),
    )
    .optional()
    .map(|v| v.unwrap_or(0))
    .map_err(|e| sql_err("reading the newest event id", e))
}

fn pruned_through(conn: &Connection) -> Result<i64> {
    conn.query_row(
        "SELECT v FROM brain_meta WHERE k = 'pruned_through'",
        [],
        |r| r.get(0),
    )
    .map_err(|e| sql_err("reading the prune mark", e))
}

/// An ingest ([`flow::run`]) in one `BEGIN IMMEDIATE` transaction: the writer's lock is
/// taken before the ULIDs are looked up, so no other process appends between.
fn ingest(conn: &mut Connection, batch: &[CheckedEvent]) -> Result<Ingested> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| sql_err("starting an ingest", e))?;
    let steps = SqliteIngest {
        tx: &tx,
        now: unix_seconds(SystemTime::now()),
    };
    let ingested = flow::run_ready(flow::run(&steps, batch))?;
    if ingested.new_ids.is_some() {
        tx.commit()
            .map_err(|e| sql_err("committing an ingest", e))?;
    }
    Ok(ingested)
}

fn pull(conn: &mut Connection, after_id: i64, limit: usize) -> Result<PullPage> {
    let tx = conn
        .transaction()
        .map_err(|e| sql_err("starting a pull", e))?;
    let pruned = pruned_through(&tx)?;
    if after_id < pruned {
        return Err(BrainError::CursorPruned {
            after_id,
            pruned_through: pruned,
        });
    }
    let mut stmt = tx
        .prepare_cached(
            "SELECT id, event_ulid, device_id, event_type, entity_type, entity_key, payload, vector_clock,
               created_at FROM events WHERE id > ?1 ORDER BY id LIMIT ?2",
        )
        .map_err(|e| sql_err("preparing the pull", e))?;
    let rows = stmt
        .query_map(rusqlite::params![after_id, limit as i64 + 1], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, String>(7)?,
                r.get::<_, String>(8)?,
            ))
        })
        .map_err(|e| sql_err("pulling events", e))?;
    let mut events = Vec::with_capacity(limit.min(512));
    let mut has_more = false;
    let mut page = super::PageFill::new(limit);
    for row in rows {
        let (
            id,
            event_ulid,
            device_id,
            event_type,
            entity_type,
            entity_key,
            payload,
            clock,
            created_at,
        ) = row.map_err(|e| sql_err("reading an event", e))?;
        let row_bytes = payload.len() + clock.len() + entity_key.len() + device_id.len();
        if !page.take(row_bytes) {
            has_more = true;
            break;
        }
        events.push(PulledEvent {
            id,
            event: Event {
                event_type: parse_event_type(&event_type)?,
                payload: serde_json::from_str::<FilePayload>(&payload)
                    .map_err(|e| corrupt(&format!("payload of event {id}"), e))?,
                vector_clock: serde_json::from_str(&clock)
                    .map_err(|e| corrupt(&format!("clock of event {id}"), e))?,
                event_ulid,
                device_id,
                entity_type,
                entity_key,
                created_at,
            },
        });
    }
    let next_after_id = events.last().map_or(after_id, |e| e.id);
    Ok(PullPage {
        events,
        next_after_id,
        has_more,
    })
}

fn snapshot(conn: &mut Connection, after_key: &str, limit: usize) -> Result<SnapshotPage> {
    // One read transaction: the watermark and the entities are the same moment of the store.
    let tx = conn
        .transaction()
        .map_err(|e| sql_err("starting a snapshot", e))?;
    let watermark = newest_id(&tx)?;
    let mut stmt = tx
        .prepare_cached(
            "SELECT entity_key, entity_type, event_ulid, device_id, event_type, payload, vector_clock,
               created_at, deleted_at, seen_vc, siblings
             FROM entities WHERE entity_key > ?1 ORDER BY entity_key LIMIT ?2",
        )
        .map_err(|e| sql_err("preparing the snapshot", e))?;
    let rows = stmt
        .query_map(rusqlite::params![after_key, limit as i64 + 1], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, String>(7)?,
                r.get::<_, Option<String>>(8)?,
                r.get::<_, String>(9)?,
                r.get::<_, String>(10)?,
            ))
        })
        .map_err(|e| sql_err("reading entities", e))?;
    let mut entities = Vec::new();
    let mut has_more = false;
    let mut page = super::PageFill::new(limit);
    for row in rows {
        let (
            key,
            entity_type,
            event_ulid,
            device_id,
            event_type,
            payload,
            clock,
            created_at,
            deleted_at,
            vc,
            sib,
        ) = row.map_err(|e| sql_err("reading an entity", e))?;
        let row_bytes = key.len() + payload.len() + clock.len() + vc.len() + sib.len();
        if !page.take(row_bytes) {
            has_more = true;
            break;
        }
        let state = parse_state(&key, &vc, &sib)?;
        entities.push(SnapshotEntity {
            event_type: parse_event_type(&event_type)?,
            payload: serde_json::from_str(&payload)
                .map_err(|e| corrupt(&format!("payload of {key}"), e))?,
            vector_clock: serde_json::from_str(&clock)
                .map_err(|e| corrupt(&format!("clock of {key}"), e))?,
            entity_key: key,
            entity_type,
            event_ulid,
            device_id,
            created_at,
            deleted_at,
            seen_vc: state.seen_vc,
            siblings: state.siblings,
        });
    }
    Ok(SnapshotPage {
        entities,
        watermark,
        has_more,
    })
}

fn meta(conn: &Connection, key: &str) -> Result<Option<i64>> {
    conn.query_row("SELECT v FROM brain_meta WHERE k = ?1", [key], |r| r.get(0))
        .optional()
        .map_err(|e| sql_err(&format!("reading brain_meta {key}"), e))
}

fn prune_status(conn: &Connection) -> Result<PruneStatus> {
    let oldest_kept = conn
        .query_row(
            "SELECT id, received_at FROM events ORDER BY id LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(|e| sql_err("reading the oldest event", e))?;
    Ok(PruneStatus {
        last_run_at: meta(conn, META_LAST_PRUNE_AT)?,
        last_deleted: meta(conn, META_LAST_PRUNE_DELETED)?.unwrap_or(0).max(0) as u64,
        total_deleted: meta(conn, META_TOTAL_PRUNE_DELETED)?.unwrap_or(0).max(0) as u64,
        pruned_through: pruned_through(conn)?,
        oldest_kept,
    })
}

fn prune(conn: &mut Connection, bound: PruneBound) -> Result<PruneReport> {
    prune_unless_ran_since(conn, bound, None)?
        .ok_or_else(|| BrainError::Internal("a prune without a schedule was skipped".into()))
}

/// A prune and the record of its run, in one transaction; `None` when one ran at or after
/// `ran_since` (unix seconds).
fn prune_unless_ran_since(
    conn: &mut Connection,
    bound: PruneBound,
    ran_since: Option<i64>,
) -> Result<Option<PruneReport>> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| sql_err("starting a prune", e))?;
    if let (Some(since), Some(last)) = (ran_since, meta(&tx, META_LAST_PRUNE_AT)?) {
        if last >= since {
            return Ok(None);
        }
    }
    let old = pruned_through(&tx)?;
    let (sql, value) = match bound {
        PruneBound::ReceivedBefore(cutoff) => {
            ("SELECT MAX(id) FROM events WHERE received_at < ?1", cutoff)
        }
        PruneBound::Id(id) => ("SELECT MAX(id) FROM events WHERE id <= ?1", id),
    };
    let through: Option<i64> = tx
        .query_row(sql, [value], |r| r.get(0))
        .map_err(|e| sql_err("finding old events", e))?;
    let mut deleted = 0;
    let mut pruned = old;
    if let Some(through) = through {
        // The ULIDs and digests stay, so a late re-push of a pruned event is still recognised.
        tx.execute(
            "INSERT INTO pruned_events (event_ulid, digest)
             SELECT event_ulid, digest FROM events WHERE id <= ?1",
            [through],
        )
        .map_err(|e| sql_err("keeping the pruned events' ULIDs", e))?;
        deleted = tx
            .execute("DELETE FROM events WHERE id <= ?1", [through])
            .map_err(|e| sql_err("pruning events", e))? as i64;
        pruned = old.max(through);
        tx.execute(
            "UPDATE brain_meta SET v = ?1 WHERE k = 'pruned_through'",
            [pruned],
        )
        .map_err(|e| sql_err("recording the prune mark", e))?;
    }
    tx.execute(
        "INSERT INTO brain_meta (k, v) VALUES (?1, ?2), (?3, ?4), (?5, ?4)
         ON CONFLICT (k) DO UPDATE SET v = CASE WHEN k = ?5 THEN v + excluded.v ELSE excluded.v END",
        rusqlite::params![
            META_LAST_PRUNE_AT,
            unix_seconds(SystemTime::now()),
            META_LAST_PRUNE_DELETED,
            deleted,
            META_TOTAL_PRUNE_DELETED
        ],
    )
    .map_err(|e| sql_err("recording the prune run", e))?;
    tx.commit().map_err(|e| sql_err("committing a prune", e))?;
    Ok(Some(PruneReport {
        deleted_events: deleted as u64,
        pruned_through: pruned,
    }))
}

impl BrainStore for SqliteStore {
    async fn ingest(&self, batch: Vec<CheckedEvent>) -> Result<Ingested> {
        let newest = self.inner.clone();
        let ingested = self.write(move |conn| ingest(conn, &batch)).await?;
        if let Some((_, last)) = ingested.new_ids {
            newest.newest.send_if_modified(|v| {
                let bumped = last > *v;
                *v = (*v).max(last);
                bumped
            });
        }
        Ok(ingested)
    }

    async fn pull(&self, after_id: i64, limit: usize) -> Result<PullPage> {
        self.read(move |conn| pull(conn, after_id, limit)).await
    }

    async fn snapshot(&self, after_key: &str, limit: usize) -> Result<SnapshotPage> {
        let after_key = after_key.to_owned();
        self.read(move |conn| snapshot(conn, &after_key, limit))
            .await
    }

    async fn prune(&self, cutoff: SystemTime) -> Result<PruneReport> {
        let bound = PruneBound::ReceivedBefore(unix_seconds(cutoff));
        self.write(move |conn| prune(conn, bound)).await
    }

    async fn prune_through(&self, through: i64) -> Result<PruneReport> {
        self.write(move |conn| prune(conn, PruneBound::Id(through)))
            .await
    }

    async fn prune_unless_ran_since(
        &self,
        cutoff: SystemTime,
        ran_since: SystemTime,
    ) -> Result<Option<PruneReport>> {
        let bound = PruneBound::ReceivedBefore(unix_seconds(cutoff));
        let since = unix_seconds(ran_since);
        self.write(move |conn| prune_unless_ran_since(conn, bound, Some(since)))
            .await
    }

    async fn prune_status(&self) -> Result<PruneStatus> {
        self.read(|conn| prune_status(conn)).await
    }

    async fn register_webhook(
        &self,
        device_id: &str,
        url: &str,
        secret: &str,
        via_shared_secret: bool,
    ) -> Result<i64> {
        let (device_id, url, secret) = (device_id.to_owned(), url.to_owned(), secret.to_owned());
        self.write(move |conn| {
            let now = unix_seconds(SystemTime::now());
            conn.query_row(
                "INSERT INTO device_webhooks (device_id, webhook_url, secret, active, created_at, updated_at,
                   via_shared_secret)
                 VALUES (?1, ?2, ?3, 1, ?4, ?4, ?5)
                 ON CONFLICT(device_id) DO UPDATE SET webhook_url = excluded.webhook_url,
                   secret = excluded.secret, active = 1, updated_at = excluded.updated_at,
                   via_shared_secret = excluded.via_shared_secret,
                   failures = CASE WHEN webhook_url = excluded.webhook_url THEN failures ELSE 0 END,
                   last_error = CASE WHEN webhook_url = excluded.webhook_url THEN last_error END,
                   retry_after = CASE WHEN webhook_url = excluded.webhook_url THEN retry_after END
                 RETURNING id",
                rusqlite::params![device_id, url, secret, now, via_shared_secret],
                |r| r.get(0),
            )
            .map_err(|e| sql_err("registering a webhook", e))
        })
        .await
    }

    async fn deactivate_webhook(&self, device_id: &str) -> Result<bool> {
        let device_id = device_id.to_owned();
        self.write(move |conn| {
            let now = unix_seconds(SystemTime::now());
            conn.execute(
                "UPDATE device_webhooks SET active = 0, updated_at = ?2 WHERE device_id = ?1 AND active = 1",
                rusqlite::params![device_id, now],
            )
            .map(|n| n > 0)
            .map_err(|e| sql_err("deactivating a webhook", e))
        })
        .await
    }

    async fn active_webhooks(&self) -> Result<Vec<Webhook>> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id, device_id, webhook_url, secret, failures, retry_after, via_shared_secret
                     FROM device_webhooks WHERE active = 1",
                )
                .map_err(|e| sql_err("preparing the webhook list", e))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(Webhook {
                        id: r.get(0)?,
                        device_id: r.get(1)?,
                        url: r.get(2)?,
                        secret: r.get(3)?,
                        via_shared_secret: r.get(6)?,
                        failures: r.get(4)?,
                        retry_after: r.get(5)?,
                    })
                })
                .map_err(|e| sql_err("listing webhooks", e))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(|e| sql_err("reading a webhook", e))
        })
        .await
    }

    async fn record_delivery(&self, id: i64, failure: Option<DeliveryFailure>) -> Result<()> {
        self.write(move |conn| {
            let (failures, error, retry_after) = match failure {
                Some(f) => (f.failures, Some(f.error), Some(f.retry_after)),
                None => (0, None, None),
            };
            conn.execute(
                "UPDATE device_webhooks SET failures = ?2, last_error = ?3, retry_after = ?4 WHERE id = ?1",
                rusqlite::params![id, failures, error, retry_after],
            )
            .map(|_| ())
            .map_err(|e| sql_err("recording a webhook delivery", e))
        })
        .await
    }

    async fn add_device(&self, name: &str, token_sha256: &str) -> Result<DeviceRecord> {
        self.add_device_row(name.to_owned(), token_sha256.to_owned())
            .await
    }

    async fn list_devices(&self) -> Result<Vec<DeviceRecord>> {
        self.devices().await
    }

    async fn revoke_device(&self, name: &str) -> Result<bool> {
        self.revoke(name.to_owned()).await
    }

    async fn rotate_device(
        &self,
        name: &str,
        token_sha256: &str,
        grace_until: Option<i64>,
    ) -> Result<bool> {
        self.rotate(name.to_owned(), token_sha256.to_owned(), grace_until)
            .await
    }

    async fn authenticate(&self, token_sha256: &str, now: i64) -> Result<Option<DeviceAuth>> {
        self.auth(token_sha256.to_owned(), now).await
    }

    async fn bind_device(&self, name: &str, device_id: &str) -> Result<Binding> {
        self.bind(name.to_owned(), device_id.to_owned()).await
    }

    async fn record_seen(&self, seen: Vec<DeviceSeen>) -> Result<()> {
        self.seen(seen).await
    }

    async fn known_sequences(&self, devices: Vec<String>) -> Result<HashMap<String, i64>> {
        self.known(devices).await
    }

    async fn replica(&self) -> Result<ReplicaPoint> {
        self.read(|conn| {
            // One read transaction: the head and the digest of one commit.
            let tx = conn
                .transaction()
                .map_err(|e| sql_err("starting a read of the replica digest", e))?;
            Ok(ReplicaPoint {
                head: newest_id(&tx)?,
                digest: digest::kept(&tx)?.unwrap_or_default(),
            })
        })
        .await
    }

    async fn rederive_digest(&self) -> Result<DigestRederived> {
        self.write(rederive_digest).await
    }

    fn epoch(&self) -> i64 {
        self.inner.epoch
    }

    fn subscribe(&self) -> watch::Receiver<i64> {
        self.inner.newest.subscribe()
    }
}

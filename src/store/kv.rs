//! `lib_kv`: the agent's cursors, flags and reports. Every key and the format of its value is
//! declared here, once, and read and written through the typed functions below; nothing else
//! names a key.
//!
//! | key | value |
//! |---|---|
//! | `sync_after_id` | the pull cursor: the brain id of the last event applied, in decimal |
//! | `sync_state` | [`SyncState`] as JSON |
//! | `sync_refused_pull/<id, 20 digits>` | [`RefusedPull`] as JSON: a pulled event refused |
//! | `sync_refused_pull/snapshot/<sha256 of the key>` | [`RefusedPull`]: a snapshot entity refused |
//! | `agent_run_state` | [`RunState`] as JSON |
//! | `backfill_pending` | `1`: rows adopted from LIB v1.0/v1.1 wait for their backfill |
//! | `backfill_observed` | `1`: the backfill also records those rows as observed here |
//! | `durable_at` | RFC 3339 time of the last [`Store::make_durable`] |
//! | `replica_digest` | the shared view's digest (`model::digest`), 64 hex digits, kept at commit |
//! | `device_names` | [`DeviceNames`] as JSON: the brain's names of devices, by device id |
//! | `library_root/<library>` | the identity of the file system its root was last scanned on (`index::root_fs`) |
//! | `held_deletions/<library>` | [`HeldDeletions`] as JSON: deletions `agent run` held back (`index::guard`) |

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::{Batch, Context, Result, Store, StoreError};

/// The pull cursor.
pub const CURSOR_KEY: &str = "sync_after_id";
/// The epoch of the brain store this device last pulled from (see `sync::pull`).
pub const BRAIN_EPOCH_KEY: &str = "brain_epoch";
/// The saved [`SyncState`].
pub const SYNC_STATE_KEY: &str = "sync_state";
/// The saved [`RunState`] of `agent run`.
pub const RUN_STATE_KEY: &str = "agent_run_state";
/// Keys of pulled events that were refused as invalid: this prefix, then the brain id
/// (zero-padded, so the keys sort in log order); the value is a [`RefusedPull`] (JSON).
pub const REFUSED_PULL_PREFIX: &str = "sync_refused_pull/";
/// After [`REFUSED_PULL_PREFIX`], the key form of a refused snapshot entity: this, then the sha256
/// (hex) of its entity key, which may be any length; a re-seed that meets it again overwrites it.
pub const REFUSED_SNAPSHOT_INFIX: &str = "snapshot/";
/// Flag of an adopted LIB v1.0/v1.1 database whose rows wait for their backfill (the first scan
/// turns them into `initial_sync` events).
pub(super) const BACKFILL_PENDING: &str = "backfill_pending";
/// Flag beside [`BACKFILL_PENDING`]: the backfill records the rows as observed on this device
/// (LIB had never pulled into it, so its rows are this device's files).
pub(super) const BACKFILL_OBSERVED: &str = "backfill_observed";
/// Set when a LIB v1.1 database with events in `lib_outbox` or `lib_inbox` is adopted: its
/// shared view is rebuilt from them, once, at the next open (see `legacy::replay`).
pub(super) const LIB_V11_REPLAY: &str = "lib_v11_replay";
/// When [`Store::make_durable`] last ran.
const DURABLE_AT: &str = "durable_at";
/// The shared view's replica digest, as every commit left it (see `store::digest`).
pub(super) const REPLICA_DIGEST: &str = "replica_digest";
/// The [`DeviceNames`] last learnt from the brain.
const DEVICE_NAMES: &str = "device_names";

/// The identity of the file system a library's root was observed on: this, then its name.
const LIBRARY_ROOT_PREFIX: &str = "library_root/";
/// The deletions `agent run` held back in a library: this, then its name.
const HELD_DELETIONS_PREFIX: &str = "held_deletions/";

/// Deletions `agent run` did not record because they tripped the mass-delete rule
/// (`index::guard`): they wait for `agent scan --allow-mass-delete --library NAME`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldDeletions {
    /// When the hold began (RFC 3339).
    pub since: String,
    /// The held entity keys, at most `index::guard::HELD_KEYS_CAP` of them.
    pub keys: Vec<String>,
    /// Held deletions beyond the cap, counted only: the release is a scan, which finds them too.
    #[serde(default)]
    pub more: u64,
}

impl HeldDeletions {
    /// How many deletions are held.
    pub fn count(&self) -> u64 {
        self.keys.len() as u64 + self.more
    }
}

/// The names the brain's operator gave each enrolled device (`agent brain device add NAME`), by
/// device id, as sync last learnt them from `GET /devices`: what `agent conflicts` prints beside
/// an id. A device missing here is shown by its id.
pub type DeviceNames = BTreeMap<String, String>;

/// What `agent status` shows of sync: the brain, whether it answered, the wake-up in effect, and
/// when a push and a pull last succeeded.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SyncState {
    pub brain_url: String,
    /// The wake-up `agent run` used last ("webhook", "longpoll" or "off"): a webhook device
    /// long-polls until the brain has its registration, and says "longpoll" meanwhile.
    pub realtime: String,
    pub reachable: Option<bool>,
    pub last_push_at: Option<String>,
    pub last_pull_at: Option<String>,
    pub last_error: Option<String>,
    /// What the brain said of this replica at the last pull (DESIGN.md "Convergence you can
    /// check"); `None` before the first pull, or from a brain that does not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub convergence: Option<crate::model::digest::Convergence>,
}

/// A pulled event that failed validation, kept for `agent status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedPull {
    /// The brain's id of the event; for an entity of a snapshot, the snapshot's watermark.
    pub id: i64,
    /// Refused as an entity of a `/snapshot` (a re-seed), not as an event of `/pull`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub snapshot: bool,
    pub event_ulid: String,
    pub device_id: String,
    pub entity_key: String,
    pub reason: String,
    pub refused_at: String,
}

/// How each library is being kept current by `agent run`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum LibraryMode {
    Watching,
    /// Rescanned every poll interval, because it could not be watched.
    Polling {
        reason: String,
    },
}

/// What `agent status` shows of a running agent.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunState {
    pub pid: u32,
    pub started_at: String,
    pub updated_at: String,
    /// "starting", "running" or "stopped".
    pub state: String,
    pub libraries: BTreeMap<String, LibraryMode>,
    /// Paths changed and waiting for their settle window.
    pub backlog: usize,
    pub last_change_at: Option<String>,
    pub changes_indexed: u64,
    /// Renamed files whose hash and text were reused instead of read again.
    pub renames_reused: u64,
}

pub(super) fn get(conn: &Connection, key: &str) -> Result<Option<String>> {
    conn.prepare_cached("SELECT v FROM lib_kv WHERE k = ?1")
        .and_then(|mut s| s.query_row([key], |r| r.get(0)).optional())
        .ctx(|| format!("reading lib_kv {key}"))
}

/// Writes one value; also used inside a migration's transaction (the backfill flags).
pub(super) fn set(conn: &Connection, key: &str, value: &str) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO lib_kv (k, v) VALUES (?1, ?2) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
    )
    .and_then(|mut s| s.execute((key, value)))
    .ctx(|| format!("writing lib_kv {key}"))?;
    Ok(())
}

fn delete(conn: &Connection, key: &str) -> Result<()> {
    conn.prepare_cached("DELETE FROM lib_kv WHERE k = ?1")
        .and_then(|mut s| s.execute([key]))
        .ctx(|| format!("deleting lib_kv {key}"))?;
    Ok(())
}

/// A JSON value; one that cannot be read back counts as none: these are reports, rewritten whole.
fn get_json<T: serde::de::DeserializeOwned>(conn: &Connection, key: &str) -> Result<Option<T>> {
    Ok(get(conn, key)?.and_then(|s| serde_json::from_str(&s).ok()))
}

fn set_json(conn: &Connection, key: &str, value: &impl Serialize) -> Result<()> {
    let json = serde_json::to_string(value).map_err(|e| StoreError::Corrupt {
        context: format!("serialising lib_kv {key}"),
        detail: e.to_string(),
    })?;
    set(conn, key, &json)
}

/// The stored cursor; a value that is not a number (a damaged row) counts as 0, which re-pulls
/// the log: the inbox makes that apply nothing twice.
fn parse_cursor(stored: Option<String>) -> i64 {
    match stored.as_deref().map(str::parse::<i64>) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            tracing::warn!(value = ?stored, "the pull cursor in lib_kv is not a number ({e}); pulling from the start");
            0
        }
    }
}

impl Store {
    /// The pull cursor (0 when none, or damaged).
    pub fn pull_cursor(&self) -> Result<i64> {
        Ok(parse_cursor(get(&self.conn, CURSOR_KEY)?))
    }

    pub fn sync_state(&self) -> Result<Option<SyncState>> {
        get_json(&self.conn, SYNC_STATE_KEY)
    }

    /// The epoch of the brain store this device last pulled from; `None` before the first pull
    /// from a brain that sends one. Read at every pull page.
    pub fn brain_epoch(&self) -> Result<Option<String>> {
        get(&self.conn, BRAIN_EPOCH_KEY)
    }

    pub fn run_state(&self) -> Result<Option<RunState>> {
        get_json(&self.conn, RUN_STATE_KEY)
    }

    /// Whether rows adopted from LIB v1.0/v1.1 still wait for their backfill.
    pub fn backfill_pending(&self) -> Result<bool> {
        Ok(get(&self.conn, BACKFILL_PENDING)?.is_some())
    }

    /// Whether the backfill records the adopted rows as observed on this device.
    pub(crate) fn backfill_observed(&self) -> Result<bool> {
        Ok(get(&self.conn, BACKFILL_OBSERVED)?.is_some())
    }

    /// The device names last learnt from the brain; none when never learnt (or unreadable: the
    /// next sync writes them whole again).
    pub fn device_names(&self) -> Result<DeviceNames> {
        Ok(get_json(&self.conn, DEVICE_NAMES)?.unwrap_or_default())
    }

    /// The identity of the file system library `name`'s root was last scanned on.
    pub fn library_root_fs(&self, name: &str) -> Result<Option<String>> {
        get(&self.conn, &format!("{LIBRARY_ROOT_PREFIX}{name}"))
    }

    /// The deletions held in library `name`, if any (an unreadable value counts as none).
    pub fn held_deletions(&self, name: &str) -> Result<Option<HeldDeletions>> {
        get_json(&self.conn, &format!("{HELD_DELETIONS_PREFIX}{name}"))
    }

    /// Replaces the device names, in a transaction of its own.
    pub fn set_device_names(&mut self, names: &DeviceNames) -> Result<()> {
        let batch = self.batch()?;
        batch.set_device_names(names)?;
        batch.commit()
    }

    /// The pulled events refused as invalid, in log order, then the refused snapshot entities.
    pub fn refused_pulls(&self) -> Result<Vec<RefusedPull>> {
        let context = || "reading the refused pulled events from lib_kv".to_owned();
        let mut stmt = self
            .conn
            .prepare("SELECT k, v FROM lib_kv WHERE substr(k, 1, ?1) = ?2 ORDER BY k")
            .ctx(context)?;
        let rows = stmt
            .query_map(
                (REFUSED_PULL_PREFIX.len() as i64, REFUSED_PULL_PREFIX),
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
            )
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .ctx(context)?;
        rows.into_iter()
            .map(|(k, v)| {
                serde_json::from_str(&v).map_err(|e| StoreError::Corrupt {
                    context: format!("lib_kv {k}"),
                    detail: e.to_string(),
                })
            })
            .collect()
    }
}

impl Batch<'_> {
    /// The pull cursor as this transaction sees it.
    pub fn pull_cursor(&self) -> Result<i64> {
        Ok(parse_cursor(get(&self.tx, CURSOR_KEY)?))
    }

    pub fn set_pull_cursor(&self, cursor: i64) -> Result<()> {
        set(&self.tx, CURSOR_KEY, &cursor.to_string())
    }

    pub fn set_brain_epoch(&self, epoch: &str) -> Result<()> {
        set(&self.tx, BRAIN_EPOCH_KEY, epoch)
    }

    /// The saved sync state as this transaction sees it (for a read, update and write in one).
    pub fn sync_state(&self) -> Result<Option<SyncState>> {
        get_json(&self.tx, SYNC_STATE_KEY)
    }

    pub fn set_sync_state(&self, state: &SyncState) -> Result<()> {
        set_json(&self.tx, SYNC_STATE_KEY, state)
    }

    pub fn set_run_state(&self, state: &RunState) -> Result<()> {
        set_json(&self.tx, RUN_STATE_KEY, state)
    }

    /// Replaces the device names (see [`DeviceNames`]).
    pub fn set_device_names(&self, names: &DeviceNames) -> Result<()> {
        set_json(&self.tx, DEVICE_NAMES, names)
    }

    /// Keeps a refused pulled event (or snapshot entity) for `agent status`. `entity_key` is the
    /// whole key as pulled (`refused` holds it clipped): a refused snapshot entity is filed under
    /// its hash.
    pub fn record_refused_pull(&self, refused: &RefusedPull, entity_key: &str) -> Result<()> {
        let key = if refused.snapshot {
            let digest = hex::encode(sha2::Sha256::digest(entity_key.as_bytes()));
            format!("{REFUSED_PULL_PREFIX}{REFUSED_SNAPSHOT_INFIX}{digest}")
        } else {
            format!("{REFUSED_PULL_PREFIX}{:020}", refused.id)
        };
        set_json(&self.tx, &key, refused)
    }

    /// The events of an adopted LIB v1.1 database are in the shared view.
    pub(super) fn finish_lib_v11_replay(&self) -> Result<()> {
        delete(&self.tx, LIB_V11_REPLAY)
    }

    /// Records the identity of the file system library `name`'s root is on.
    pub fn set_library_root_fs(&self, name: &str, identity: &str) -> Result<()> {
        set(&self.tx, &format!("{LIBRARY_ROOT_PREFIX}{name}"), identity)
    }

    /// Replaces the deletions held in library `name`.
    pub fn set_held_deletions(&self, name: &str, held: &HeldDeletions) -> Result<()> {
        set_json(&self.tx, &format!("{HELD_DELETIONS_PREFIX}{name}"), held)
    }

    /// Forgets the deletions held in library `name`.
    pub fn clear_held_deletions(&self, name: &str) -> Result<()> {
        delete(&self.tx, &format!("{HELD_DELETIONS_PREFIX}{name}"))
    }

    /// Forgets what the guards keep of library `name` (it is no longer observed here).
    pub fn forget_library_guards(&self, name: &str) -> Result<()> {
        delete(&self.tx, &format!("{LIBRARY_ROOT_PREFIX}{name}"))?;
        self.clear_held_deletions(name)
    }

    /// The backfill of adopted rows is done.
    pub(crate) fn finish_backfill(&self) -> Result<()> {
        delete(&self.tx, BACKFILL_PENDING)?;
        delete(&self.tx, BACKFILL_OBSERVED)
    }

    pub(super) fn set_durable_at(&self, at: &str) -> Result<()> {
        set(&self.tx, DURABLE_AT, at)
    }

    /// Writes a raw value, for tests of what a damaged row does.
    #[cfg(test)]
    pub(crate) fn kv_set_raw(&self, key: &str, value: &str) -> Result<()> {
        set(&self.tx, key, value)
    }
}

#[cfg(test)]
impl Store {
    /// Reads a raw value, for tests.
    pub(crate) fn kv_get_raw(&self, key: &str) -> Result<Option<String>> {
        get(&self.conn, key)
    }
}

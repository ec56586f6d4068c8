//! The brain's storage: one trait, a SQLite store (the embedded default) and a PostgreSQL store
//! (shared, multi-instance deployments), chosen by the `--database-url` scheme.
//!
//! What an ingest does to the data is decided once, for both stores: [`check_batch`] here
//! (validation, and duplicates inside a request), then [`ingest::run`] (which events are new,
//! the merge rule over the batch, what to write). The stores only translate its steps to SQL,
//! in one transaction.

mod ingest;
pub mod postgres;
pub mod sqlite;

use std::collections::HashMap;
use std::future::Future;
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::{BrainError, Result};
use crate::model::digest::{Convergence, ReplicaDigest};
use crate::model::merge::{EntityState, Version};
use crate::model::wire::{IngestResult, PulledEvent, SnapshotEntity};
use crate::model::{Event, EventType, VectorClock};

pub use ingest::{plan_entities, EntityWrite};
pub use postgres::{PgOptions, PgStore};
pub use sqlite::{SqliteOptions, SqliteStore};

/// A `/pull` or `/snapshot` page takes no more rows once it holds about this many bytes of stored
/// text (payloads, clocks, keys, siblings), and says `has_more`; its first row always goes in, so
/// an event a brain stored before the caps is still served, alone.
pub const MAX_PAGE_BYTES: usize = 16 << 20;

/// Whether a page holding `rows` rows and `bytes` bytes takes one more row of `row_bytes`.
pub(crate) fn page_takes(rows: usize, bytes: usize, row_bytes: usize) -> bool {
    rows == 0 || bytes.saturating_add(row_bytes) <= MAX_PAGE_BYTES
}

/// A page being filled, bounded in rows (`limit`) and in bytes ([`page_takes`]); both stores'
/// pulls and snapshots fill theirs with it.
pub(crate) struct PageFill {
    limit: usize,
    rows: usize,
    bytes: usize,
}

impl PageFill {
    pub(crate) fn new(limit: usize) -> PageFill {
        PageFill {
            limit,
            rows: 0,
            bytes: 0,
        }
    }

    /// Takes one more row of `row_bytes` into the page, or says it is full (there is more).
    pub(crate) fn take(&mut self, row_bytes: usize) -> bool {
        if self.rows == self.limit || !page_takes(self.rows, self.bytes, row_bytes) {
            return false;
        }
        self.rows += 1;
        self.bytes = self.bytes.saturating_add(row_bytes);
        true
    }
}

/// One page of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullPage {
    pub events: Vec<PulledEvent>,
    pub next_after_id: i64,
    pub has_more: bool,
}

/// One page of the current entities, by key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotPage {
    pub entities: Vec<SnapshotEntity>,
    pub watermark: i64,
    pub has_more: bool,
}

/// A registered webhook. The secret signs notifications (empty: a LIB v1.1 registration through
/// the shared secret, delivered unsigned); it is never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Webhook {
    pub id: i64,
    pub device_id: String,
    pub url: String,
    pub secret: String,
    /// Registered through LIB v1.1's shared secret, not a device token.
    pub via_shared_secret: bool,
    /// Deliveries failed in a row.
    pub failures: i64,
    /// No delivery before this (unix seconds) while it backs off.
    pub retry_after: Option<i64>,
}

/// A failed delivery, as [`BrainStore::record_delivery`] keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryFailure {
    /// Deliveries failed in a row, this one included.
    pub failures: i64,
    pub error: String,
    /// The next delivery waits until then (unix seconds).
    pub retry_after: i64,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("id", &self.id)
            .field("device_id", &self.device_id)
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("failures", &self.failures)
            .field("retry_after", &self.retry_after)
            .finish()
    }
}

/// An enrolled device, as `agent brain device list` shows it. Times are unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeviceRecord {
    pub name: String,
    /// The device id its token is bound to; `None` until the token's first request.
    pub device_id: Option<String>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    pub last_seen_at: Option<i64>,
    /// The `after_id` of its last pull.
    pub last_cursor: Option<i64>,
    /// The replica digest and unacknowledged events its last pull reported.
    pub digest: Option<String>,
    pub pending: Option<i64>,
    /// Until when the token a `rotate --grace` replaced keeps working.
    pub previous_expires_at: Option<i64>,
    pub webhook: Option<WebhookStatus>,
}

/// The webhook of an enrolled device and how its deliveries go.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WebhookStatus {
    pub url: String,
    pub active: bool,
    /// Deliveries failed in a row.
    pub failures: i64,
    pub last_error: Option<String>,
    /// No delivery before this (unix seconds) while it backs off.
    pub retry_after: Option<i64>,
}

/// The enrolled device a token belongs to (a token that is current, or a replaced one within
/// its grace period, of a device that is not revoked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceAuth {
    pub name: String,
    pub device_id: Option<String>,
}

/// What binding a token to a device id found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// Bound now, or bound to this id already.
    Bound,
    /// The token is bound to another id.
    OtherId(String),
    /// Another enrolled device holds this id.
    Taken { by: String },
    /// The device was revoked or removed meanwhile.
    Gone,
}

/// The log's head and the replica digest of the entities at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaPoint {
    pub head: i64,
    pub digest: ReplicaDigest,
}

impl ReplicaPoint {
    /// How a device that pulled from `cursor` with this report compares.
    pub fn compare(
        &self,
        cursor: i64,
        digest: Option<&ReplicaDigest>,
        pending: Option<i64>,
    ) -> Convergence {
        Convergence::compare(self.head, &self.digest, cursor, digest, pending)
    }

    /// How an enrolled device compares, by what its last pull reported.
    pub fn device(&self, device: &DeviceRecord) -> Convergence {
        let Some(cursor) = device.last_cursor else {
            return Convergence::never_seen(self.head);
        };
        let digest = device.digest.as_deref().and_then(ReplicaDigest::from_hex);
        self.compare(cursor, digest.as_ref(), device.pending)
    }
}

/// What [`BrainStore::rederive_digest`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DigestRederived {
    /// The digest the ingests kept; `None` the first time.
    pub kept: Option<ReplicaDigest>,
    pub derived: ReplicaDigest,
    pub entities: u64,
}

impl DigestRederived {
    /// Logs a kept digest that the rows no longer match: the store was changed outside the
    /// brain (a restore, a hand edit, a disk error), and devices will read as diverged.
    pub fn report(&self) {
        match self.kept {
            Some(kept) if kept != self.derived => tracing::error!(
                kept = %kept, derived = %self.derived, entities = self.entities,
                "the brain's entities no longer match the replica digest its ingests kept: the \
                 store was changed outside the brain; devices compare with the rows as they are"
            ),
            _ => {
                tracing::debug!(digest = %self.derived, entities = self.entities, "replica digest derived")
            }
        }
    }
}

/// A device's latest request, recorded at most every few seconds per device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSeen {
    pub name: String,
    pub at: i64,
    pub cursor: Option<i64>,
    pub digest: Option<String>,
    pub pending: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PruneReport {
    pub deleted_events: u64,
    /// Every event up to this id is gone: a cursor below it gets 410.
    pub pruned_through: i64,
}

/// What `agent brain prune --status` reports (LIB v1.1's `lib_shared_pruning_status`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PruneStatus {
    /// When the last prune ran (unix seconds), by the command or the schedule; `None`: never.
    pub last_run_at: Option<i64>,
    /// Events that prune deleted.
    pub last_deleted: u64,
    /// Events every prune so far deleted.
    pub total_deleted: u64,
    /// Every event up to this id is gone.
    pub pruned_through: i64,
    /// The oldest event still in the log: its id and when the brain received it (unix seconds).
    pub oldest_kept: Option<(i64, i64)>,
}

/// The `brain_meta` keys of [`PruneStatus`] (both stores).
pub(crate) const META_LAST_PRUNE_AT: &str = "prune_last_run_at";
/// The `brain_meta` key of [`BrainStore::epoch`].
pub(crate) const META_EPOCH: &str = "epoch";

/// A new epoch: 63 random bits, never 0.
pub(crate) fn new_epoch() -> i64 {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[..8]);
    (i64::from_le_bytes(raw) & i64::MAX).max(1)
}
pub(crate) const META_LAST_PRUNE_DELETED: &str = "prune_last_deleted";
pub(crate) const META_TOTAL_PRUNE_DELETED: &str = "prune_total_deleted";

/// Which events a prune deletes: the oldest ones, up to a bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PruneBound {
    /// Received before this Unix second.
    ReceivedBefore(i64),
    /// With an id up to this one.
    Id(i64),
}

/// What [`BrainStore::count_over_caps`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverCaps {
    /// Events read.
    pub read: u64,
    /// Of those, the ones today's validation refuses.
    pub over: u64,
    /// The id of the first one and why it is refused.
    pub first: Option<(i64, String)>,
}

/// Logs, in one line, how many stored events exceed today's caps; nothing when none do. Run
/// after the listener is up (a log of a million events takes a while to read): see
/// `agent brain serve`.
pub async fn report_over_caps<S: BrainStore>(store: &S, max_content_bytes: usize) {
    match store.count_over_caps(max_content_bytes).await {
        Ok(OverCaps { over: 0, .. }) => {}
        Ok(OverCaps { read, over, first }) => {
            let (id, reason) = first.unwrap_or_default();
            tracing::warn!(over, read, first_id = id, first_reason = %reason.escape_debug(),
                "{over} stored event(s) exceed today's caps (stored before them); they are still \
                 served, and agents skip the ones over the size caps");
        }
        Err(e) => tracing::warn!("could not count the stored events over today's caps: {e}"),
    }
}

/// What an ingest did: the counts for the response, and the ids it appended (for the webhooks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ingested {
    pub result: IngestResult,
    /// The greatest id before the new events (pull from it to get them) and the last new id;
    /// `None` when nothing was inserted.
    pub new_ids: Option<(i64, i64)>,
}

/// The brain's storage. Every method is all-or-nothing: an error leaves the store as it was.
pub trait BrainStore: Send + Sync + 'static {
    /// Appends the events new to the log and applies them to `entities` with the merge rule, in
    /// one transaction ([`ingest::run`]). The batch has passed [`check_batch`]. An event is new
    /// when its ULID is neither in the log nor among the pruned ULIDs; one whose ULID is stored
    /// (or was pruned) with other content refuses the whole batch ([`BrainError::Conflict`]).
    fn ingest(&self, batch: Vec<CheckedEvent>) -> impl Future<Output = Result<Ingested>> + Send;

    /// Events with `id > after_id`, in id order, at most `limit`. A cursor below the pruned part
    /// of the log is [`BrainError::CursorPruned`].
    fn pull(&self, after_id: i64, limit: usize) -> impl Future<Output = Result<PullPage>> + Send;

    /// Entities with key `> after_key`, by key, at most `limit`, with the log watermark they
    /// include.
    fn snapshot(
        &self,
        after_key: &str,
        limit: usize,
    ) -> impl Future<Output = Result<SnapshotPage>> + Send;

    /// Deletes the events received before `cutoff` (entities stay), keeping the ULID and digest
    /// of each in `pruned_events`, in the same transaction: a device that re-pushes an event after
    /// the retention window (its first push succeeded, the answer was lost) is recognised, not
    /// given a new id that every device would pull again.
    fn prune(&self, cutoff: SystemTime) -> impl Future<Output = Result<PruneReport>> + Send;

    /// [`BrainStore::prune`] of the events with an id up to `through` instead of those received
    /// before a time: what is pruned does not depend on a clock (the deterministic simulation,
    /// `tests/sim/`, and tests prune this way). Ids above the newest event prune up to it.
    fn prune_through(&self, through: i64) -> impl Future<Output = Result<PruneReport>> + Send;

    /// [`BrainStore::prune`] on a schedule: `None`, and nothing done, when a prune ran at or
    /// after `ran_since`. Checked under the lock every prune takes (SQLite's write lock, a row
    /// lock on PostgreSQL), so of several brains on one database one prunes per period.
    fn prune_unless_ran_since(
        &self,
        cutoff: SystemTime,
        ran_since: SystemTime,
    ) -> impl Future<Output = Result<Option<PruneReport>>> + Send;

    /// When the log was last pruned, how much, and its oldest event.
    fn prune_status(&self) -> impl Future<Output = Result<PruneStatus>> + Send;

    /// Registers (or replaces, and reactivates) the device's webhook; returns its id. A new URL
    /// starts without back-off; the same URL again (the agent re-registers at every periodic
    /// sync) keeps it.
    fn register_webhook(
        &self,
        device_id: &str,
        url: &str,
        secret: &str,
        via_shared_secret: bool,
    ) -> impl Future<Output = Result<i64>> + Send;

    /// Deactivates the device's webhook; false when it had none active.
    fn deactivate_webhook(&self, device_id: &str) -> impl Future<Output = Result<bool>> + Send;

    fn active_webhooks(&self) -> impl Future<Output = Result<Vec<Webhook>>> + Send;

    /// Records how a delivery to webhook `id` went: `None` a success (no back-off any more), or
    /// the failure and the back-off it starts.
    fn record_delivery(
        &self,
        id: i64,
        failure: Option<DeliveryFailure>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Enrols a device under `name` with the sha256 (hex) of its token; a name enrolled already
    /// is [`BrainError::Conflict`].
    fn add_device(
        &self,
        name: &str,
        token_sha256: &str,
    ) -> impl Future<Output = Result<DeviceRecord>> + Send;

    /// Every enrolled device, revoked ones too, by name.
    fn list_devices(&self) -> impl Future<Output = Result<Vec<DeviceRecord>>> + Send;

    /// Revokes a device's token (its next request is 401) and deactivates its webhook, in one
    /// transaction; false when no device has that name.
    fn revoke_device(&self, name: &str) -> impl Future<Output = Result<bool>> + Send;

    /// Gives a device a new token and clears its binding (a reinstalled device may come back
    /// with a new id). The old token keeps working until `grace_until` (unix seconds), or stops
    /// at once with `None`. False when no device has that name; a revoked one is
    /// [`BrainError::Invalid`].
    fn rotate_device(
        &self,
        name: &str,
        token_sha256: &str,
        grace_until: Option<i64>,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// The device a token (its sha256, hex) belongs to, at `now` (unix seconds).
    fn authenticate(
        &self,
        token_sha256: &str,
        now: i64,
    ) -> impl Future<Output = Result<Option<DeviceAuth>>> + Send;

    /// Binds an unbound device to `device_id`.
    fn bind_device(
        &self,
        name: &str,
        device_id: &str,
    ) -> impl Future<Output = Result<Binding>> + Send;

    /// The greatest sequence number of each of `devices` that an accepted clock carried (absent:
    /// none).
    fn known_sequences(
        &self,
        devices: Vec<String>,
    ) -> impl Future<Output = Result<HashMap<String, i64>>> + Send;

    /// Records the latest request of each device, in one transaction.
    fn record_seen(&self, seen: Vec<DeviceSeen>) -> impl Future<Output = Result<()>> + Send;

    /// How many stored events fail today's validation (with `max_content_bytes`) and how many
    /// were read: events a brain stored before the caps, still served as they are. Reads the
    /// log page by page through [`BrainStore::pull`], so it holds one page at a time; a prune
    /// meanwhile only skips what it removed.
    fn count_over_caps(
        &self,
        max_content_bytes: usize,
    ) -> impl Future<Output = Result<OverCaps>> + Send {
        async move {
            let mut report = OverCaps::default();
            let mut after_id = 0;
            loop {
                let page = match self.pull(after_id, crate::model::wire::MAX_BATCH).await {
                    Ok(page) => page,
                    Err(BrainError::CursorPruned { pruned_through, .. }) => {
                        after_id = pruned_through;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                report.read += page.events.len() as u64;
                for pulled in &page.events {
                    if let Err(e) = pulled.event.validate(max_content_bytes) {
                        report.over += 1;
                        report
                            .first
                            .get_or_insert_with(|| (pulled.id, e.to_string()));
                    }
                }
                after_id = page.next_after_id;
                if !page.has_more {
                    return Ok(report);
                }
            }
        }
    }

    /// The log's head (the newest id handed out) and the replica digest of `entities` that
    /// goes with it, read as one snapshot: what a device's report is compared with.
    fn replica(&self) -> impl Future<Output = Result<ReplicaPoint>> + Send;

    /// Derives the replica digest from `entities` (a full pass) and keeps it, with no ingest in
    /// between. Run at start: a store damaged outside the brain no longer matches what its
    /// ingests kept, and says so.
    fn rederive_digest(&self) -> impl Future<Output = Result<DigestRederived>> + Send;

    /// The id of the newest committed event, updated after every commit (on PostgreSQL, also
    /// commits by other brain instances): long-polls wait on it.
    fn subscribe(&self) -> watch::Receiver<i64>;

    /// The store's epoch: a random id made with it, kept in `brain_meta`, sent with every pull.
    /// A device that finds it changed is talking to another store (a brain rebuilt from
    /// nothing) and re-seeds instead of trusting a cursor into another log.
    fn epoch(&self) -> i64;
}

/// An event that passed validation, with the digest of its canonical JSON: two events with one
/// ULID are the same event exactly when their digests are equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedEvent {
    pub event: Event,
    pub digest: String,
}

impl CheckedEvent {
    pub fn new(event: Event) -> CheckedEvent {
        // Event's fields serialise in declaration order and the clock is sorted: canonical.
        let json = serde_json::to_vec(&event).unwrap_or_default();
        let digest = hex::encode(Sha256::digest(&json));
        CheckedEvent { event, digest }
    }
}

/// Validates every event of a request and drops exact repeats inside it. Errors name the index:
/// `batch[3].payload.sha256 ...`.
pub fn check_batch(batch: Vec<Event>, max_content_bytes: usize) -> Result<Vec<CheckedEvent>> {
    let mut seen: HashMap<String, (usize, String)> = HashMap::with_capacity(batch.len());
    let mut out = Vec::with_capacity(batch.len());
    for (index, event) in batch.into_iter().enumerate() {
        event
            .validate(max_content_bytes)
            .map_err(|e| BrainError::Invalid(format!("batch[{index}].{e}")))?;
        let checked = CheckedEvent::new(event);
        if let Some((first, digest)) = seen.get(&checked.event.event_ulid) {
            if *digest != checked.digest {
                return Err(BrainError::Conflict(format!(
                    "batch[{index}].event_ulid {} is used by batch[{first}] with other content",
                    checked.event.event_ulid
                )));
            }
            continue;
        }
        seen.insert(
            checked.event.event_ulid.clone(),
            (index, checked.digest.clone()),
        );
        out.push(checked);
    }
    Ok(out)
}

/// The first entry of another device that a clock of `batch` carries above what the brain has
/// seen of that device (`known`): a device token may only pass on what it learned. Returns the
/// error to answer with.
pub fn check_foreign_entries(
    batch: &[CheckedEvent],
    own: &str,
    known: &HashMap<String, i64>,
) -> Result<()> {
    for (index, checked) in batch.iter().enumerate() {
        for (device, value) in checked.event.vector_clock.entries() {
            if device == own {
                continue;
            }
            let seen = known.get(device).copied().unwrap_or(0);
            if i64::try_from(value).map_or(true, |v| v > seen) {
                return Err(BrainError::Forbidden(format!(
                    "batch[{index}].vector_clock[{device:?}] is {value}, but the brain has seen \
                     at most {seen} from device {device:?}: a device passes on only the sequence \
                     numbers of others that it pulled"
                )));
            }
        }
    }
    Ok(())
}

/// The devices other than `own` that the clocks of `batch` name.
pub fn foreign_devices(batch: &[CheckedEvent], own: &str) -> Vec<String> {
    let mut devices: Vec<String> = batch
        .iter()
        .flat_map(|c| c.event.vector_clock.entries().map(|(d, _)| d))
        .filter(|d| *d != own)
        .map(str::to_owned)
        .collect();
    devices.sort_unstable();
    devices.dedup();
    devices
}

/// Rebuilds an entity's merge state from its stored JSON columns.
pub(crate) fn parse_state(key: &str, seen_vc: &str, siblings: &str) -> Result<EntityState> {
    let seen_vc: VectorClock =
        serde_json::from_str(seen_vc).map_err(|e| corrupt(&format!("seen_vc of {key}"), e))?;
    let siblings: Vec<Version> =
        serde_json::from_str(siblings).map_err(|e| corrupt(&format!("siblings of {key}"), e))?;
    EntityState::from_parts(seen_vc, siblings)
        .ok_or_else(|| corrupt(&format!("siblings of {key}"), "empty"))
}

pub(crate) fn parse_event_type(s: &str) -> Result<EventType> {
    EventType::parse(s).ok_or_else(|| corrupt("event_type", s))
}

/// A revoked device stays revoked: its token was lost or stolen, and a rotation would hand the
/// name a working token again.
pub(crate) fn revoked_rotation(name: &str) -> BrainError {
    BrainError::Invalid(format!(
        "device {name:?} is revoked; enrol the machine again under a new name (`device add`)"
    ))
}

/// A kept replica digest that is not 64 hex digits.
pub(crate) fn corrupt_digest(text: &str) -> BrainError {
    corrupt(
        "the kept replica digest",
        format!("{text:?} is not 64 hex digits"),
    )
}

pub(crate) fn corrupt(context: &str, e: impl std::fmt::Display) -> BrainError {
    BrainError::Internal(format!("{context}: stored value is corrupt: {e}"))
}

/// JSON of a value that always serialises (payloads, sibling lists).
pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

/// Runs blocking store work off the async runtime, re-raising a panic of the closure.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(BrainError::Internal(format!("store task cancelled: {e}"))),
    }
}

/// `SystemTime` as whole Unix seconds.
pub(crate) fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::FilePayload;

    /// An upsert of `key` by `device` with `clock`, its hash `sha` 64 times: also for the tests
    /// of `ingest.rs`.
    pub(super) fn event(device: &str, key: &str, clock: VectorClock, sha: char) -> Event {
        Event {
            event_ulid: ulid::Ulid::new().to_string(),
            device_id: device.into(),
            event_type: EventType::UpsertFile,
            entity_type: "file".into(),
            entity_key: key.into(),
            payload: FilePayload {
                sha256: Some(sha.to_string().repeat(64)),
                bytes: Some(1),
                ..FilePayload::default()
            },
            vector_clock: clock,
            created_at: "2026-11-25T10:00:00Z".into(),
        }
    }

    #[test]
    fn a_repeat_inside_a_batch_is_dropped_and_a_reuse_is_refused() {
        let a = event("a", "n/x", VectorClock::from([("a", 1)]), 'a');
        assert_eq!(
            check_batch(vec![a.clone(), a.clone()], 10).unwrap().len(),
            1
        );
        let mut other = a.clone();
        other.entity_key = "n/z".into();
        let err = check_batch(vec![a, other], 10).unwrap_err();
        assert!(
            matches!(err, BrainError::Conflict(ref m) if m.contains("batch[1]")),
            "{err}"
        );
    }

    #[test]
    fn a_page_takes_its_first_row_whatever_its_size_and_then_up_to_the_byte_bound() {
        assert!(
            page_takes(0, 0, usize::MAX),
            "an old over-cap event is still served"
        );
        assert!(page_takes(1, 10, MAX_PAGE_BYTES - 10));
        assert!(!page_takes(1, 10, MAX_PAGE_BYTES - 9));
        assert!(!page_takes(1, usize::MAX, 1), "no overflow");
    }

    #[test]
    fn validation_errors_name_the_event_index() {
        let mut bad = event("a", "n/x", VectorClock::from([("a", 1)]), 'a');
        bad.payload.sha256 = Some("xyz".into());
        let ok = event("a", "n/y", VectorClock::from([("a", 2)]), 'a');
        let err = check_batch(vec![ok, bad], 10).unwrap_err();
        assert!(
            err.to_string().starts_with("batch[1].payload.sha256"),
            "{err}"
        );
    }
}

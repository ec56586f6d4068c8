//! Sync with the brain: push the outbox, pull the log and apply it with the merge rule.
//!
//! Push is at-least-once (rows are marked pushed only after a 2xx; the brain is idempotent by
//! ULID). Pull records each event in the inbox, applies it to the shared view and advances the
//! cursor in one transaction, so a crash anywhere re-pulls at worst, and never applies twice.
//! Pulling never writes the user's files and never touches the observed state.

pub mod agent;
pub mod client;
pub mod listener;
mod puller;
mod pusher;
mod registration;
pub mod retry;
mod settings;
pub mod state;

use std::time::Duration;

use serde::Serialize;

pub use client::{BrainClient, ClientError};

use crate::model::digest::{Convergence, ConvergenceState, ReplicaReport};
use crate::model::wire::{IngestResult, PullResponse, SnapshotEntity, SnapshotResponse, MAX_BATCH};
use crate::model::{Event, EventType};
use crate::store::{Applied, Batch, Store, StoreError};

pub use crate::store::kv::{RefusedPull, CURSOR_KEY, REFUSED_PULL_PREFIX, REFUSED_SNAPSHOT_INFIX};
/// Byte cap of one push request body (the brain's own cap is larger).
pub const MAX_PUSH_BYTES: usize = 4 << 20;
/// The largest `payload.content` the agent applies from a pull or a snapshot. The brain caps
/// what it ingests (1 MiB by default, `--max-content-bytes`); this is the agent's own bound for a
/// brain with a larger cap or a damaged log, the size of one page of the brain's answers.
pub const MAX_PULLED_CONTENT_BYTES: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SyncError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, SyncError::Client(e) if e.is_retryable())
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PushSummary {
    pub pushed: u64,
    pub result: IngestResult,
    /// Events the brain refused, set aside with its reason.
    pub parked: u64,
    /// Of `pushed`, the `initial_sync` events: the backfill of rows adopted from LIB v1.0/v1.1.
    #[serde(skip)]
    pub initial_sync: u64,
    /// `/ingest` requests the brain answered (0: the outbox was empty, the brain was not asked).
    #[serde(skip)]
    pub requests: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PullSummary {
    pub pulled: u64,
    pub applied: u64,
    pub new_after_id: i64,
    /// The cursor was older than the brain's pruned log: re-seeded from a snapshot.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reseeded: bool,
    /// A first pull far behind the log: this many entities of the brain's snapshot were applied
    /// in bulk instead of replaying the log (see [`BOOTSTRAP_LAG`]).
    #[serde(skip_serializing_if = "is_zero")]
    pub bootstrapped: u64,
    /// Of `pulled`, the events that failed validation: recorded (see [`refused_pulls`]) and
    /// skipped, never applied.
    #[serde(skip_serializing_if = "is_zero")]
    pub refused: u64,
    /// What the brain said of this replica at the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub convergence: Option<Convergence>,
    /// The time the pull took, without the wait of a long-poll for the first event.
    #[serde(skip)]
    pub busy: Duration,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The three routes push and pull use. [`BrainClient`] speaks them over HTTP; the deterministic
/// simulation (`tests/sim/`) answers them through a simulated network that drops, repeats and
/// delays requests.
pub trait Brain {
    /// `POST /ingest`.
    fn ingest(&self, batch: &[Event]) -> Result<IngestResult, ClientError>;
    /// `GET /pull`; with `wait` it long-polls. `replica` is what the device says of its
    /// replica, for the brain's convergence check.
    fn pull(
        &self,
        after_id: i64,
        limit: usize,
        wait: Option<Duration>,
        replica: Option<&ReplicaReport>,
    ) -> Result<PullResponse, ClientError>;
    /// `GET /snapshot`, one page of current entities after `after_key`.
    fn snapshot(&self, after_key: &str, limit: usize) -> Result<SnapshotResponse, ClientError>;
}

impl Brain for BrainClient {
    fn ingest(&self, batch: &[Event]) -> Result<IngestResult, ClientError> {
        BrainClient::ingest(self, batch)
    }

    fn pull(
        &self,
        after_id: i64,
        limit: usize,
        wait: Option<Duration>,
        replica: Option<&ReplicaReport>,
    ) -> Result<PullResponse, ClientError> {
        BrainClient::pull(self, after_id, limit, wait, replica)
    }

    fn snapshot(&self, after_key: &str, limit: usize) -> Result<SnapshotResponse, ClientError> {
        BrainClient::snapshot(self, after_key, limit)
    }
}

/// Pushes the whole outbox, in id order, in requests of at most `batch_size` events and
/// `MAX_PUSH_BYTES`. A request the brain refuses as invalid is split until the bad event is
/// found; that one is parked and the rest go through, so one bad event never blocks the outbox.
pub fn push(
    store: &mut Store,
    client: &(impl Brain + ?Sized),
    batch_size: usize,
) -> Result<PushSummary, SyncError> {
    push_with_progress(store, client, batch_size, &|_| {})
}

/// [`push`], calling `progress` with what was pushed so far after each request.
pub fn push_with_progress(
    store: &mut Store,
    client: &(impl Brain + ?Sized),
    batch_size: usize,
    progress: &dyn Fn(&PushSummary),
) -> Result<PushSummary, SyncError> {
    let batch_size = batch_size.clamp(1, MAX_BATCH);
    let mut summary = PushSummary::default();
    // Nothing leaves the device before it is durable: a sequence number an event carries must
    // never be handed out again after a power loss.
    store.make_durable()?;
    store.relax_sync(true)?;
    let pushed = push_pages(store, client, batch_size, &mut summary, progress);
    let restored = store.relax_sync(false);
    pushed?;
    restored?;
    Ok(summary)
}

fn push_pages(
    store: &mut Store,
    client: &(impl Brain + ?Sized),
    batch_size: usize,
    summary: &mut PushSummary,
    progress: &dyn Fn(&PushSummary),
) -> Result<(), SyncError> {
    loop {
        let pending = store.pending_outbox(batch_size)?;
        if pending.is_empty() {
            return Ok(());
        }
        let mut sent = 0;
        for request in split_by_bytes(&pending) {
            push_rows(store, client, request, summary)?;
            progress(summary);
            sent += request.len();
        }
        debug_assert_eq!(sent, pending.len());
    }
}

/// The bytes of `{"batch":[` and `]}` around the events of a request.
const ENVELOPE_BYTES: usize = r#"{"batch":[]}"#.len();

/// Cuts a page of outbox rows into requests whose body stays under the byte cap (an event that
/// is larger on its own goes alone: the brain, whose cap is larger, decides).
fn split_by_bytes(rows: &[(i64, Event)]) -> Vec<&[(i64, Event)]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = ENVELOPE_BYTES;
    for (i, (_, event)) in rows.iter().enumerate() {
        let size = serde_json::to_vec(event).map_or(0, |v| v.len());
        // Each event after the first of a request adds its comma.
        if i > start && bytes + 1 + size > MAX_PUSH_BYTES {
            out.push(&rows[start..i]);
            start = i;
            bytes = ENVELOPE_BYTES;
        }
        bytes += size + usize::from(i > start);
    }
    if start < rows.len() {
        out.push(&rows[start..]);
    }
    out
}

fn push_rows(
    store: &mut Store,
    client: &(impl Brain + ?Sized),
    rows: &[(i64, Event)],
    summary: &mut PushSummary,
) -> Result<(), SyncError> {
    let events: Vec<Event> = rows.iter().map(|(_, e)| e.clone()).collect();
    let answer = client.ingest(&events);
    if answer.is_ok() || answer.as_ref().is_err_and(ClientError::is_refusal) {
        summary.requests += 1;
    }
    match answer {
        Ok(result) => {
            let ids: Vec<i64> = rows.iter().map(|(id, _)| *id).collect();
            let batch = store.batch()?;
            batch.mark_pushed(&ids)?;
            batch.commit()?;
            summary.pushed += ids.len() as u64;
            summary.initial_sync += rows
                .iter()
                .filter(|(_, e)| e.event_type == EventType::InitialSync)
                .count() as u64;
            summary.result.inserted_events += result.inserted_events;
            summary.result.upserted_entities += result.upserted_entities;
            Ok(())
        }
        Err(e) if e.is_refusal() && rows.len() > 1 => {
            let (left, right) = rows.split_at(rows.len() / 2);
            push_rows(store, client, left, summary)?;
            push_rows(store, client, right, summary)
        }
        Err(e) if e.is_refusal() => {
            let (id, event) = &rows[0];
            tracing::error!(event = %event.event_ulid, key = %event.entity_key, "the brain refused an event; parked: {e}");
            let batch = store.batch()?;
            batch.park(*id, &e.to_string())?;
            batch.commit()?;
            summary.parked += 1;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Pulls and applies everything after the cursor. With `wait`, the first request long-polls.
///
/// An event that fails validation (the brain validates what it ingests, so it would come from a
/// damaged log or from a writer that bypassed the brain) is recorded under
/// [`REFUSED_PULL_PREFIX`], logged with its id and ULID, and skipped: the cursor moves past it
/// and the valid events around it are applied. Stopping there instead would stop this device's
/// pulls for good, behind one event that no retry can repair.
pub fn pull(
    store: &mut Store,
    client: &(impl Brain + ?Sized),
    batch_size: usize,
    wait: Option<Duration>,
) -> Result<PullSummary, SyncError> {
    pull_with_progress(store, client, batch_size, wait, &|_, _| {})
}

/// [`pull`], calling `progress` after each page with what was pulled so far and, when the
/// brain says it, how many events of the log were still to pull when the page was asked for
/// (its `convergence.lag`, the page's own events included).
pub fn pull_with_progress(
    store: &mut Store,
    client: &(impl Brain + ?Sized),
    batch_size: usize,
    wait: Option<Duration>,
    progress: &dyn Fn(&PullSummary, Option<u64>),
) -> Result<PullSummary, SyncError> {
    let batch_size = batch_size.clamp(1, MAX_BATCH);
    let mut summary = PullSummary::default();
    let mut cursor = store.pull_cursor()?;
    let mut wait = wait;
    let mut confirmed = false;
    let mut started = std::time::Instant::now();
    loop {
        // Read again for every page: the digest describes the replica at the cursor it goes with.
        let replica = ReplicaReport {
            digest: store.replica_digest()?,
            pending: store.unacknowledged()?,
        };
        let waited = wait.is_some();
        let page = match client.pull(cursor, batch_size, wait.take(), Some(&replica)) {
            Ok(page) if waited => {
                started = std::time::Instant::now();
                page
            }
            Ok(page) => page,
            Err(e) if e.is_cursor_pruned() => {
                tracing::warn!(cursor, "the brain pruned events this device has not pulled; re-seeding from its snapshot");
                cursor = reseed(store, client, batch_size)?;
                summary.reseeded = true;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(reason) = another_log(store, cursor, &page)? {
            tracing::warn!(
                cursor,
                "{reason}: re-seeding from its snapshot and pushing this device's events again"
            );
            cursor = reseed_another_log(store, client, batch_size, page.epoch.as_deref())?;
            summary.reseeded = true;
            continue;
        }
        let lag = page.convergence.map_or(0, |c| c.lag);
        if cursor == 0 && summary.pulled == 0 && page.has_more && lag > BOOTSTRAP_LAG {
            tracing::info!(
                lag,
                "first pull, {lag} events behind: bootstrapping from the brain's snapshot \
                 instead of replaying its log"
            );
            let (watermark, entities) = bootstrap(store, client)?;
            cursor = watermark;
            summary.bootstrapped = entities;
            continue;
        }
        let pulled_before = summary.pulled;
        let batch = store.batch()?;
        for pulled in &page.events {
            let event = &pulled.event;
            summary.pulled += 1;
            if let Err(e) = event.validate_pulled(MAX_PULLED_CONTENT_BYTES) {
                refuse(&batch, Refused::Event(pulled.id), event, &e.to_string())?;
                summary.refused += 1;
                continue;
            }
            if event.device_id == batch.device_id() && batch.in_outbox(&event.event_ulid)? {
                // Ours, applied when it was made; and the brain holds it.
                batch.acknowledge_pulled(&event.event_ulid)?;
                continue;
            }
            if batch.record_inbox(pulled.id, event)? {
                batch.apply(event)?;
                summary.applied += 1;
            }
        }
        cursor = advance_cursor(&batch, page.next_after_id)?;
        if let Some(convergence) = page.convergence {
            note_convergence(&batch, convergence)?;
            summary.convergence = Some(convergence);
        }
        batch.commit()?;
        let lag = page.convergence.map(|c| c.lag.max(0) as u64);
        progress(&summary, lag.map(|lag| pulled_before + lag));
        // A page's comparison describes the replica before it was applied: when it brought
        // events, one more request (answered at once, at the head) says where this leaves it.
        let compare_again = page.convergence.is_some() && !page.events.is_empty() && !confirmed;
        if !page.has_more && !compare_again {
            summary.new_after_id = cursor;
            summary.busy = started.elapsed();
            return Ok(summary);
        }
        confirmed |= !page.has_more;
    }
}

/// Keeps the names the brain's operator gave the devices (`GET /devices`), by device id, for
/// `agent conflicts`; written only when they changed. A brain without the route (LIB v1.1's) or
/// that does not answer changes nothing: names are a nicety, never a reason to fail a sync.
pub fn learn_device_names(store: &mut Store, client: &BrainClient) {
    match client.devices(Duration::from_secs(10)) {
        Ok(answer) => {
            if let Err(e) = keep_device_names(store, &answer.devices) {
                tracing::debug!("cannot keep the devices' names: {e}");
            }
        }
        Err(e) => tracing::debug!("the brain did not list its devices: {e}"),
    }
}

/// [`learn_device_names`] from a list already fetched.
pub fn keep_device_names(
    store: &mut Store,
    devices: &[crate::model::wire::DeviceView],
) -> Result<(), StoreError> {
    let names: crate::store::kv::DeviceNames = devices
        .iter()
        .filter_map(|d| Some((d.device_id.clone()?, d.name.clone())))
        .collect();
    if store.device_names()? != names {
        store.set_device_names(&names)?;
    }
    Ok(())
}

/// Keeps what the brain said of this replica for `agent status`, and says so loudly when it
/// starts to diverge (once: the state is kept, and only a change is said).
fn note_convergence(batch: &Batch<'_>, convergence: Convergence) -> Result<(), StoreError> {
    let mut state = batch.sync_state()?.unwrap_or_default();
    let before = state.convergence.map(|c| c.state);
    if before != Some(convergence.state) {
        match convergence.state {
            ConvergenceState::Diverged => tracing::error!(
                "this device's shared view DIVERGED from the brain's: both are at the same log \
                 position with nothing pending, and hold different winners (a bug, or a \
                 database changed outside the agent); `agent sync --reseed` replaces it with \
                 the brain's"
            ),
            ConvergenceState::Converged if before == Some(ConvergenceState::Diverged) => {
                tracing::info!("this device's shared view is converged with the brain's again")
            }
            _ => {}
        }
    }
    if state.convergence != Some(convergence) {
        state.convergence = Some(convergence);
        batch.set_sync_state(&state)?;
    }
    Ok(())
}

/// Stores `max(stored cursor, to)` in the batch's transaction and returns it. Pulls run
/// concurrently (the puller, the periodic full sync, an `agent sync`), each from the cursor it
/// read when it started: the later commit must not move the cursor back over events the other
/// one applied. What the stored cursor covers was applied in the transaction that stored it.
fn advance_cursor(batch: &Batch<'_>, to: i64) -> Result<i64, StoreError> {
    let cursor = batch.pull_cursor()?.max(to);
    batch.set_pull_cursor(cursor)?;
    Ok(cursor)
}

/// What was refused: a pulled event (its brain id), or a snapshot entity (the watermark).
#[derive(Debug, Clone, Copy)]
enum Refused {
    Event(i64),
    Entity { watermark: i64 },
}

fn refuse(batch: &Batch<'_>, what: Refused, event: &Event, reason: &str) -> Result<(), StoreError> {
    // Debug formatting: the strings came from the network and may hold control characters.
    let (id, snapshot) = match what {
        Refused::Event(id) => {
            tracing::error!(id, event = ?clip(&event.event_ulid), key = ?clip(&event.entity_key),
                device = ?clip(&event.device_id), "skipped a pulled event that is invalid: {reason}");
            (id, false)
        }
        Refused::Entity { watermark } => {
            tracing::error!(watermark, event = ?clip(&event.event_ulid), key = ?clip(&event.entity_key),
                device = ?clip(&event.device_id), "skipped a snapshot entity that is invalid: {reason}");
            (watermark, true)
        }
    };
    // Clipped: a refused field may be megabytes (that may be why it was refused).
    let refused = RefusedPull {
        id,
        snapshot,
        event_ulid: clip(&event.event_ulid).to_owned(),
        device_id: clip(&event.device_id).to_owned(),
        entity_key: clip(&event.entity_key).to_owned(),
        reason: reason.to_owned(),
        refused_at: batch.now(),
    };
    batch.record_refused_pull(&refused, &event.entity_key)
}

/// At most the first 1,024 bytes of `s` (the cap of a valid key), cut on a character boundary.
fn clip(s: &str) -> &str {
    let mut end = s.len().min(crate::model::key::MAX_KEY_BYTES);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The pulled events refused as invalid, in log order, then the refused snapshot entities.
pub fn refused_pulls(store: &Store) -> Result<Vec<RefusedPull>, StoreError> {
    store.refused_pulls()
}

/// Rebuilds the shared view from the brain's entities and returns the log position to pull from.
/// Applying an entity's siblings reproduces its state exactly (its `seen_vc` is the pointwise
/// maximum of theirs), and events pulled again afterwards change nothing.
/// Why the brain's log is not the one this device's cursor points into, if it is not: a store
/// with another epoch (a brain rebuilt from nothing), or a head before the cursor (a brain
/// restored from an older backup, which lost events this device pulled or pushed). Waiting for
/// ids it already has would never end. The first epoch seen is kept.
fn another_log(
    store: &mut Store,
    cursor: i64,
    page: &PullResponse,
) -> Result<Option<String>, SyncError> {
    if let Some(head) = page.head.filter(|&head| head < cursor) {
        return Ok(Some(format!(
            "the brain's log ends at id {head}, before this device's cursor {cursor}: it was \
             restored from an older backup"
        )));
    }
    let Some(epoch) = page.epoch.as_deref() else {
        return Ok(None);
    };
    match store.brain_epoch()? {
        Some(known) if known != epoch => Ok(Some(format!(
            "the brain's store changed (epoch {known} before, {} now): another log",
            clip(epoch)
        ))),
        Some(_) => Ok(None),
        None => {
            let batch = store.batch()?;
            batch.set_brain_epoch(epoch)?;
            batch.commit()?;
            Ok(None)
        }
    }
}

/// [`reseed`] for a brain whose log is another one ([`another_log`]): the cursor is set to the
/// snapshot's watermark (down, too), every acknowledged event of this device is queued again
/// and pushed (the brain may have lost them; it skips those it has), and the new epoch is kept.
fn reseed_another_log(
    store: &mut Store,
    client: &(impl Brain + ?Sized),
    batch_size: usize,
    epoch: Option<&str>,
) -> Result<i64, SyncError> {
    let batch = store.batch()?;
    batch.set_pull_cursor(0)?;
    let requeued = batch.requeue_acknowledged()?;
    if let Some(epoch) = epoch {
        batch.set_brain_epoch(epoch)?;
    }
    batch.commit()?;
    let cursor = reseed(store, client, batch_size)?;
    // Now, not at the next local change: other devices are waiting for them too.
    let pushed = push(store, client, batch_size)?;
    tracing::info!(
        requeued,
        inserted = pushed.result.inserted_events,
        "pushed this device's events again; the brain took in the ones it had lost"
    );
    Ok(cursor)
}

fn reseed(
    store: &mut Store,
    client: &(impl Brain + ?Sized),
    batch_size: usize,
) -> Result<i64, SyncError> {
    let mut after_key = String::new();
    let mut watermark = None;
    loop {
        let page = client.snapshot(&after_key, batch_size)?;
        watermark.get_or_insert(page.watermark);
        let batch = store.batch()?;
        for entity in &page.entities {
            apply_snapshot_entity(&batch, entity, watermark.unwrap_or(page.watermark))?;
        }
        batch.commit()?;
        match page.entities.last() {
            Some(last) if page.has_more => after_key = last.entity_key.clone(),
            _ => break,
        }
    }
    let batch = store.batch()?;
    let cursor = advance_cursor(&batch, watermark.unwrap_or(0))?;
    batch.commit()?;
    Ok(cursor)
}

/// A device's first pull this many events behind the brain's head bootstraps from the
/// snapshot: one version per entity instead of every version of the log. Below it, the log is
/// replayed and every event lands in `lib_inbox`, as LIB did.
pub const BOOTSTRAP_LAG: i64 = 5_000;
/// Snapshot entities applied per transaction while bootstrapping (one scan-sized transaction:
/// a commit per page would cost an fsync per 500 entities).
const BOOTSTRAP_TRANSACTION: usize = 20_000;

/// A new device's first sync: the brain's snapshot, merged over what is here (its own scan's
/// rows, if it scanned first) in large transactions in bulk mode, as a scan writes; then the
/// cursor is the snapshot's watermark. No file is read: a scan of the same files afterwards finds
/// their bytes in the shared view and records no event. Returns the watermark and the entities
/// applied. An interruption keeps what was committed (applying it again changes nothing) and
/// leaves the cursor at 0: the next pull bootstraps again.
fn bootstrap(store: &mut Store, client: &(impl Brain + ?Sized)) -> Result<(i64, u64), SyncError> {
    store.set_bulk_mode(true)?;
    let applied = bootstrap_pages(store, client);
    let left = store.set_bulk_mode(false);
    let applied = applied?;
    left?;
    Ok(applied)
}

/// Pages are fetched here while a thread of its own applies them: the brain reads the next page
/// while this device writes the last one.
fn bootstrap_pages(
    store: &mut Store,
    client: &(impl Brain + ?Sized),
) -> Result<(i64, u64), SyncError> {
    let first = client.snapshot("", MAX_BATCH)?;
    let watermark = first.watermark;
    let (pages, received) = crossbeam_channel::bounded::<Vec<SnapshotEntity>>(PAGES_AHEAD);
    std::thread::scope(|scope| {
        let applier = scope.spawn(move || apply_bootstrap(store, &received, watermark));
        let fetched = fetch_snapshot(client, first, &pages);
        drop(pages);
        let applied = applier
            .join()
            .map_err(|_| SyncError::Store(bootstrap_panicked()))?;
        let (applied, complete) = applied?;
        fetched?;
        if !complete {
            return Err(SyncError::Store(bootstrap_panicked()));
        }
        Ok(applied)
    })
}

/// Snapshot pages fetched ahead of the one being applied.
const PAGES_AHEAD: usize = 8;

/// Sends every page of the snapshot, from `first`, then an empty page: the end. Stops early when
/// the applier is gone (it failed, and says why).
fn fetch_snapshot(
    client: &(impl Brain + ?Sized),
    first: SnapshotResponse,
    pages: &crossbeam_channel::Sender<Vec<SnapshotEntity>>,
) -> Result<(), SyncError> {
    let mut page = first;
    loop {
        let next_key = match page.entities.last() {
            Some(last) if page.has_more => Some(last.entity_key.clone()),
            _ => None,
        };
        if !page.entities.is_empty() && pages.send(page.entities).is_err() {
            return Ok(());
        }
        let Some(after_key) = next_key else {
            let _ = pages.send(Vec::new());
            return Ok(());
        };
        page = client.snapshot(&after_key, MAX_BATCH)?;
    }
}

/// Applies the pages as they come, [`BOOTSTRAP_TRANSACTION`] entities a transaction; at the end
/// (an empty page) moves the cursor to the watermark. Returns the cursor and the entities
/// applied, and whether the end was reached (else the fetch failed: what was applied stays, the
/// cursor does not move).
fn apply_bootstrap(
    store: &mut Store,
    pages: &crossbeam_channel::Receiver<Vec<SnapshotEntity>>,
    watermark: i64,
) -> Result<((i64, u64), bool), SyncError> {
    let mut applied = 0u64;
    loop {
        let batch = store.batch()?;
        let mut in_transaction = 0;
        let mut end = None;
        while in_transaction < BOOTSTRAP_TRANSACTION {
            match pages.recv() {
                Ok(page) if page.is_empty() => {
                    end = Some(true);
                    break;
                }
                Ok(page) => {
                    for entity in &page {
                        if apply_snapshot_entity(&batch, entity, watermark)? {
                            applied += 1;
                        }
                    }
                    in_transaction += page.len();
                }
                Err(_) => {
                    end = Some(false);
                    break;
                }
            }
        }
        match end {
            Some(true) => {
                let cursor = advance_cursor(&batch, watermark)?;
                batch.commit()?;
                tracing::info!(
                    entities = applied,
                    cursor,
                    "bootstrapped from the brain's snapshot"
                );
                return Ok(((cursor, applied), true));
            }
            Some(false) => {
                batch.commit()?;
                return Ok(((0, applied), false));
            }
            None => {
                batch.commit()?;
                tracing::debug!(
                    entities = applied,
                    "bootstrapping from the brain's snapshot"
                );
            }
        }
    }
}

fn bootstrap_panicked() -> StoreError {
    StoreError::Corrupt {
        context: "bootstrapping from the brain's snapshot".into(),
        detail: "the thread applying the snapshot stopped before its end".into(),
    }
}

/// What [`replace_from_snapshot`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReseedSummary {
    /// Entities of the brain's snapshot applied.
    pub entities: u64,
    /// Of the snapshot's entities, those that failed validation: recorded and skipped.
    #[serde(skip_serializing_if = "is_zero")]
    pub refused: u64,
    /// This device's events, and pulled ones past the snapshot, applied again over it.
    pub reapplied: u64,
    /// The log position the snapshot includes: pulls go on from there.
    pub watermark: i64,
    /// The shared view's digest before and after.
    pub digest_before: String,
    pub digest_after: String,
}

/// `agent sync --reseed`: *replaces* the shared view with the brain's snapshot, then applies
/// again this device's events the brain had not acknowledged when the snapshot began (and the
/// pulled events past its watermark), and moves the cursor to the watermark. Unlike the re-seed
/// of a pruned cursor ([`reseed`]), which merges the snapshot over what is here, nothing of the
/// old view survives but what the events say: the repair of a diverged replica.
///
/// The snapshot is staged while it downloads, and the view replaced in one transaction: an
/// interruption leaves the old view whole.
pub fn replace_from_snapshot(
    store: &mut Store,
    client: &(impl Brain + ?Sized),
    batch_size: usize,
) -> Result<ReseedSummary, SyncError> {
    let batch_size = batch_size.clamp(1, MAX_BATCH);
    let mut summary = ReseedSummary {
        digest_before: store.replica_digest()?.to_hex(),
        ..ReseedSummary::default()
    };
    // An event acknowledged from here on may have reached the brain after the snapshot's
    // watermark: it is applied again. Timestamps have whole seconds: one second of margin.
    let since = crate::model::event::format_rfc3339(
        store.clock().now() - std::time::Duration::from_secs(1),
    );
    store.start_staging()?;
    let staged = stage_snapshot(store, client, batch_size);
    let result = staged.and_then(|watermark| {
        summary.watermark = watermark;
        let batch = store.batch()?;
        batch.clear_shared_view()?;
        batch.for_each_staged(|entity| {
            if apply_snapshot_entity(&batch, &entity, watermark)? {
                summary.entities += 1;
            } else {
                summary.refused += 1;
            }
            Ok(())
        })?;
        for event in batch.events_after_snapshot(&since, watermark)? {
            if let Applied::Merged { .. } = batch.apply(&event)? {
                summary.reapplied += 1;
            }
        }
        // Back to the watermark, even below the cursor: what came after it is applied again
        // above, and pulling it again changes nothing.
        batch.set_pull_cursor(watermark)?;
        batch.commit()?;
        Ok(())
    });
    let ended = store.end_staging();
    result?;
    ended?;
    summary.digest_after = store.replica_digest()?.to_hex();
    Ok(summary)
}

/// Downloads the whole snapshot into the store's staging table; returns its watermark (that of
/// its first page: the entities of later pages include at least that much of the log).
fn stage_snapshot(
    store: &Store,
    client: &(impl Brain + ?Sized),
    batch_size: usize,
) -> Result<i64, SyncError> {
    let mut after_key = String::new();
    let mut watermark = None;
    loop {
        let page = client.snapshot(&after_key, batch_size)?;
        watermark.get_or_insert(page.watermark);
        store.stage(&page.entities)?;
        match page.entities.last() {
            Some(last) if page.has_more => after_key = last.entity_key.clone(),
            _ => return Ok(watermark.unwrap_or(0)),
        }
    }
}

/// Applies a snapshot entity (taken at `watermark`) whole, or records it refused when one of its
/// versions fails validation: a state without one of its siblings would be a different state
/// from the brain's. True when it was applied.
fn apply_snapshot_entity(
    batch: &Batch<'_>,
    entity: &SnapshotEntity,
    watermark: i64,
) -> Result<bool, StoreError> {
    let (winner, siblings) = snapshot_events(entity);
    let invalid = std::iter::once(&winner)
        .chain(&siblings)
        .find_map(|e| e.validate_pulled(MAX_PULLED_CONTENT_BYTES).err());
    if let Some(e) = invalid {
        refuse(
            batch,
            Refused::Entity { watermark },
            &winner,
            &e.to_string(),
        )?;
        return Ok(false);
    }
    batch.apply(&winner)?;
    for event in &siblings {
        batch.apply(event)?;
    }
    Ok(true)
}

/// A snapshot entity as the events that rebuild it: its winner, then its other siblings.
fn snapshot_events(entity: &SnapshotEntity) -> (Event, Vec<Event>) {
    let winner = Event {
        event_ulid: entity.event_ulid.clone(),
        device_id: entity.device_id.clone(),
        event_type: entity.event_type,
        entity_type: entity.entity_type.clone(),
        entity_key: entity.entity_key.clone(),
        payload: entity.payload.clone(),
        vector_clock: entity.vector_clock.clone(),
        created_at: entity.created_at.clone(),
    };
    let siblings = entity
        .siblings
        .iter()
        .filter(|s| s.event_ulid != entity.event_ulid)
        .map(|sibling| Event {
            event_ulid: sibling.event_ulid.clone(),
            device_id: sibling.device_id.clone(),
            event_type: if sibling.deleted {
                EventType::DeleteFile
            } else {
                EventType::UpsertFile
            },
            entity_type: entity.entity_type.clone(),
            entity_key: entity.entity_key.clone(),
            payload: crate::model::FilePayload {
                sha256: sibling.sha256.clone(),
                bytes: sibling.bytes,
                mtime_unix: sibling.mtime_unix,
                ..Default::default()
            },
            vector_clock: sibling.clock.clone(),
            created_at: sibling.created_at.clone(),
        })
        .collect();
    (winner, siblings)
}

#[cfg(test)]
mod tests {
    //! Push batching and the pull cursor, against a fake brain that records every request: the
    //! rules are about what is sent and in what shape, which the real brain does not report.

    use std::cell::{Cell, RefCell};

    use super::*;
    use crate::model::wire::IngestRequest;
    use crate::model::{FilePayload, VectorClock};

    /// Records each `/ingest` batch; `fail(n, batch)` may turn request `n` (from 0) into an error.
    struct Recorder<F: Fn(usize, &[Event]) -> Option<ClientError>> {
        requests: RefCell<Vec<Vec<Event>>>,
        fail: F,
    }

    fn recorder() -> Recorder<impl Fn(usize, &[Event]) -> Option<ClientError>> {
        failing_with(|_, _| None)
    }

    fn failing_with<F: Fn(usize, &[Event]) -> Option<ClientError>>(fail: F) -> Recorder<F> {
        Recorder {
            requests: RefCell::new(Vec::new()),
            fail,
        }
    }

    impl<F: Fn(usize, &[Event]) -> Option<ClientError>> Recorder<F> {
        fn sizes(&self) -> Vec<usize> {
            self.requests.borrow().iter().map(Vec::len).collect()
        }

        fn ulids(&self) -> Vec<String> {
            self.requests
                .borrow()
                .iter()
                .flatten()
                .map(|e| e.event_ulid.clone())
                .collect()
        }
    }

    impl<F: Fn(usize, &[Event]) -> Option<ClientError>> Brain for Recorder<F> {
        fn ingest(&self, batch: &[Event]) -> Result<IngestResult, ClientError> {
            let n = self.requests.borrow().len();
            self.requests.borrow_mut().push(batch.to_vec());
            if let Some(e) = (self.fail)(n, batch) {
                return Err(e);
            }
            Ok(IngestResult {
                inserted_events: batch.len() as u64,
                upserted_entities: batch.len() as u64,
            })
        }

        fn pull(
            &self,
            after_id: i64,
            _limit: usize,
            _wait: Option<Duration>,
            _replica: Option<&ReplicaReport>,
        ) -> Result<PullResponse, ClientError> {
            Ok(PullResponse {
                ok: true,
                events: Vec::new(),
                next_after_id: after_id,
                has_more: false,
                convergence: None,
                head: None,
                epoch: None,
            })
        }

        fn snapshot(&self, _: &str, _: usize) -> Result<SnapshotResponse, ClientError> {
            Err(protocol("no snapshot in this test"))
        }
    }

    fn protocol(reason: &str) -> ClientError {
        ClientError::Protocol {
            route: "/test",
            reason: reason.into(),
        }
    }

    fn status(status: u16) -> ClientError {
        ClientError::Status {
            route: "/ingest",
            status,
            message: "as the test says".into(),
        }
    }

    /// A store whose outbox holds `n` upserts, each with `content` bytes of text.
    fn store_with_outbox(n: usize, content: usize) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(&dir.path().join("agent.db")).expect("store");
        let batch = store.batch().expect("batch");
        for i in 0..n {
            batch
                .record_local(crate::store::LocalChange::new(
                    &format!("notes/f{i:04}.md"),
                    EventType::UpsertFile,
                    FilePayload {
                        sha256: Some(format!("{i:064x}")),
                        bytes: Some(content as u64),
                        content: Some("x".repeat(content)),
                        ..FilePayload::default()
                    },
                ))
                .expect("record");
        }
        batch.commit().expect("commit");
        (dir, store)
    }

    fn outbox_ulids(store: &Store) -> Vec<String> {
        store.outbox_ulids().expect("outbox")
    }

    fn pending(store: &Store) -> i64 {
        store.counts().expect("counts").outbox_pending
    }

    fn body_bytes(batch: &[Event]) -> usize {
        serde_json::to_vec(&IngestRequest {
            batch: batch.to_vec(),
        })
        .expect("serialise")
        .len()
    }

    #[test]
    fn a_push_of_450_events_with_batch_size_200_sends_200_200_then_50_in_outbox_order() {
        let (_dir, mut store) = store_with_outbox(450, 10);
        let brain = recorder();
        let summary = push(&mut store, &brain, 200).expect("push");
        assert_eq!(brain.sizes(), [200, 200, 50]);
        assert_eq!(
            brain.ulids(),
            outbox_ulids(&store),
            "every event once, in id order"
        );
        assert_eq!(
            (
                summary.pushed,
                summary.result.inserted_events,
                summary.parked
            ),
            (450, 450, 0)
        );
        assert_eq!(pending(&store), 0);
    }

    #[test]
    fn a_batch_size_over_the_protocol_limit_is_held_to_500() {
        let (_dir, mut store) = store_with_outbox(501, 10);
        let brain = recorder();
        push(&mut store, &brain, 10_000).expect("push");
        assert_eq!(brain.sizes(), [500, 1]);
    }

    #[test]
    fn events_larger_together_than_the_byte_cap_are_split_by_bytes() {
        // 1.5 MiB of text each: two fit under 4 MiB, three do not.
        let (_dir, mut store) = store_with_outbox(5, 3 << 19);
        let brain = recorder();
        let summary = push(&mut store, &brain, 200).expect("push");
        assert_eq!(brain.sizes(), [2, 2, 1]);
        for batch in brain.requests.borrow().iter() {
            assert!(body_bytes(batch) <= MAX_PUSH_BYTES, "{}", body_bytes(batch));
        }
        assert_eq!(brain.ulids(), outbox_ulids(&store));
        assert_eq!(summary.pushed, 5);
    }

    /// An outbox row whose event serialises to exactly `bytes` (at least 1000).
    fn event_of_size(i: usize, bytes: usize) -> (i64, Event) {
        let mut clock = VectorClock::new();
        clock.set("device", 1);
        let mut event = Event {
            event_ulid: format!("01J{i:023}"),
            device_id: "device".into(),
            event_type: EventType::UpsertFile,
            entity_type: "file".into(),
            entity_key: format!("notes/{i}.md"),
            payload: FilePayload {
                sha256: Some("0".repeat(64)),
                bytes: Some(1),
                content: Some(String::new()),
                ..FilePayload::default()
            },
            vector_clock: clock,
            created_at: "2026-11-25T10:00:00Z".into(),
        };
        let empty = serde_json::to_vec(&event).expect("serialise").len();
        event.payload.content = Some("x".repeat(bytes - empty));
        (i as i64, event)
    }

    #[test]
    fn a_request_body_of_exactly_the_byte_cap_is_one_request_and_one_byte_more_is_two() {
        // Two events, then the envelope and the comma between them.
        let first = 1 << 20;
        let exact = MAX_PUSH_BYTES - ENVELOPE_BYTES - 1 - first;
        let rows = [event_of_size(0, first), event_of_size(1, exact)];
        let events: Vec<Event> = rows.iter().map(|(_, e)| e.clone()).collect();
        assert_eq!(body_bytes(&events), MAX_PUSH_BYTES);
        assert_eq!(
            split_by_bytes(&rows)
                .iter()
                .map(|r| r.len())
                .collect::<Vec<_>>(),
            [2]
        );

        let rows = [event_of_size(0, first), event_of_size(1, exact + 1)];
        assert_eq!(
            split_by_bytes(&rows)
                .iter()
                .map(|r| r.len())
                .collect::<Vec<_>>(),
            [1, 1]
        );
    }

    #[test]
    fn an_event_over_the_byte_cap_on_its_own_is_sent_alone() {
        let rows = [
            event_of_size(0, 1000),
            event_of_size(1, MAX_PUSH_BYTES + 1),
            event_of_size(2, 1000),
        ];
        assert_eq!(
            split_by_bytes(&rows)
                .iter()
                .map(|r| r.len())
                .collect::<Vec<_>>(),
            [1, 1, 1]
        );
    }

    #[test]
    fn a_retryable_failure_stops_the_push_and_keeps_the_rest_for_the_retry() {
        let (_dir, mut store) = store_with_outbox(450, 10);
        let brain = failing_with(|n, _| (n == 1).then(|| status(503)));
        let err = push(&mut store, &brain, 200).expect_err("the second request fails");
        assert!(err.is_retryable(), "{err}");
        assert_eq!(brain.sizes(), [200, 200]);
        assert_eq!(pending(&store), 250, "the first request's rows are pushed");

        let brain = recorder();
        push(&mut store, &brain, 200).expect("the retry");
        assert_eq!(brain.sizes(), [200, 50]);
        assert_eq!(
            brain.ulids(),
            outbox_ulids(&store)[200..],
            "the retry resends what was not acknowledged, and nothing else"
        );
        assert_eq!(pending(&store), 0);
    }

    #[test]
    fn a_refused_event_is_found_by_splitting_and_parked_while_the_rest_are_pushed() {
        let (_dir, mut store) = store_with_outbox(10, 10);
        let bad = outbox_ulids(&store)[6].clone();
        let brain = failing_with(|_, batch: &[Event]| {
            batch
                .iter()
                .any(|e| e.event_ulid == bad)
                .then(|| status(400))
        });
        let summary = push(&mut store, &brain, 200).expect("push");
        assert_eq!((summary.pushed, summary.parked), (9, 1));
        let parked = store.parked_outbox().expect("parked");
        assert_eq!(parked.len(), 1);
        assert_eq!(parked[0].0, bad);
        assert_eq!(pending(&store), 0);
    }

    #[test]
    fn initial_sync_events_pushed_are_counted_apart() {
        let (_dir, mut store) = store_with_outbox(3, 10);
        let batch = store.batch().expect("batch");
        for key in ["notes/old-1.md", "notes/old-2.md"] {
            batch
                .record_local(crate::store::LocalChange::new(
                    key,
                    EventType::InitialSync,
                    FilePayload {
                        sha256: Some("a".repeat(64)),
                        bytes: Some(1),
                        ..FilePayload::default()
                    },
                ))
                .expect("record");
        }
        batch.commit().expect("commit");
        let summary = push(&mut store, &recorder(), 200).expect("push");
        assert_eq!((summary.pushed, summary.initial_sync), (5, 2));
    }

    /// Serves one empty page that ends at `next`, after running `meanwhile` (another pull, say).
    struct OnePage<M: Fn()> {
        next: i64,
        meanwhile: M,
        calls: Cell<usize>,
    }

    impl<M: Fn()> Brain for OnePage<M> {
        fn ingest(&self, _: &[Event]) -> Result<IngestResult, ClientError> {
            Err(protocol("no ingest in this test"))
        }

        fn pull(
            &self,
            _after_id: i64,
            _limit: usize,
            _wait: Option<Duration>,
            _replica: Option<&ReplicaReport>,
        ) -> Result<PullResponse, ClientError> {
            self.calls.set(self.calls.get() + 1);
            (self.meanwhile)();
            Ok(PullResponse {
                ok: true,
                events: Vec::new(),
                next_after_id: self.next,
                has_more: false,
                convergence: None,
                head: None,
                epoch: None,
            })
        }

        fn snapshot(&self, _: &str, _: usize) -> Result<SnapshotResponse, ClientError> {
            Err(protocol("no snapshot in this test"))
        }
    }

    fn cursor(store: &Store) -> Option<String> {
        store.kv_get_raw(CURSOR_KEY).expect("cursor")
    }

    #[test]
    fn the_cursor_never_moves_back_when_an_overlapping_pull_stored_a_later_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("agent.db");
        let mut store = Store::open(&db).expect("store");
        // While this pull waits for its page (up to 5), another one applies up to 10.
        let brain = OnePage {
            next: 5,
            meanwhile: || {
                let mut other = Store::open(&db).expect("other connection");
                let batch = other.batch().expect("batch");
                batch.set_pull_cursor(10).expect("cursor");
                batch.commit().expect("commit");
            },
            calls: Cell::new(0),
        };
        let summary = pull(&mut store, &brain, 200, None).expect("pull");
        assert_eq!(cursor(&store).as_deref(), Some("10"));
        assert_eq!(summary.new_after_id, 10);

        // And a pull that gets further moves it on.
        let brain = OnePage {
            next: 12,
            meanwhile: || {},
            calls: Cell::new(0),
        };
        pull(&mut store, &brain, 200, None).expect("pull");
        assert_eq!(cursor(&store).as_deref(), Some("12"));
    }

    #[test]
    fn a_cursor_that_is_not_a_number_pulls_from_the_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(&dir.path().join("agent.db")).expect("store");
        let batch = store.batch().expect("batch");
        batch.kv_set_raw(CURSOR_KEY, "garbage").expect("cursor");
        batch.commit().expect("commit");
        let brain = OnePage {
            next: 3,
            meanwhile: || {},
            calls: Cell::new(0),
        };
        let summary = pull(&mut store, &brain, 200, None).expect("pull");
        assert_eq!(summary.new_after_id, 3);
        assert_eq!(cursor(&store).as_deref(), Some("3"));
    }
}

//! Sync with the brain: push the outbox, pull the log and apply it with the merge rule.
//!
//! Push is at-least-once (rows are marked pushed only after a 2xx; the brain is idempotent by
//! ULID). Pull records each event in the inbox, applies it to the shared view and advances the
//! cursor in one transaction, so a crash anywhere re-pulls at worst, and never applies twice.
//! Pulling never writes the user's files and never touches the observed state.

pub mod agent;
pub mod client;
pub mod listener;

use std::time::Duration;

use serde::Serialize;

pub use client::{BrainClient, ClientError};

use crate::model::wire::{IngestResult, PullResponse, SnapshotResponse, MAX_BATCH};
use crate::model::{Event, EventType};
use crate::store::{read, Store, StoreError};

/// `lib_kv` key of the pull cursor: the brain id of the last event applied.
pub const CURSOR_KEY: &str = "sync_after_id";
/// Byte cap of one push request (the brain's own cap is larger).
pub const MAX_PUSH_BYTES: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("pulled event {index} (brain id {id}) is invalid: {reason}")]
    BadEvent {
        index: usize,
        id: i64,
        reason: String,
    },
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
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PullSummary {
    pub pulled: u64,
    pub applied: u64,
    pub new_after_id: i64,
    /// The cursor was older than the brain's pruned log: re-seeded from a snapshot.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reseeded: bool,
}

/// The three routes push and pull use. [`BrainClient`] speaks them over HTTP; the deterministic
/// simulation (`tests/sim/`) answers them through a simulated network that drops, repeats and
/// delays requests.
pub trait Brain {
    /// `POST /ingest`.
    fn ingest(&self, batch: &[Event]) -> Result<IngestResult, ClientError>;
    /// `GET /pull`; with `wait` it long-polls.
    fn pull(
        &self,
        after_id: i64,
        limit: usize,
        wait: Option<Duration>,
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
    ) -> Result<PullResponse, ClientError> {
        BrainClient::pull(self, after_id, limit, wait)
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
    let batch_size = batch_size.clamp(1, MAX_BATCH);
    let mut summary = PushSummary::default();
    // Nothing leaves the device before it is durable: a sequence number an event carries must
    // never be handed out again after a power loss.
    store.make_durable()?;
    loop {
        let pending = read::pending_outbox(store.conn(), batch_size)?;
        if pending.is_empty() {
            return Ok(summary);
        }
        let mut sent = 0;
        for request in split_by_bytes(&pending) {
            push_rows(store, client, request, &mut summary)?;
            sent += request.len();
        }
        debug_assert_eq!(sent, pending.len());
    }
}

/// Cuts a page of outbox rows into requests under the byte cap (one oversized event alone).
fn split_by_bytes(rows: &[(i64, Event)]) -> Vec<&[(i64, Event)]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, (_, event)) in rows.iter().enumerate() {
        let size = serde_json::to_vec(event).map_or(0, |v| v.len());
        if i > start && bytes + size > MAX_PUSH_BYTES {
            out.push(&rows[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += size;
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
    match client.ingest(&events) {
        Ok(result) => {
            let ids: Vec<i64> = rows.iter().map(|(id, _)| *id).collect();
            let batch = store.batch()?;
            batch.mark_pushed(&ids)?;
            batch.commit()?;
            summary.pushed += ids.len() as u64;
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
pub fn pull(
    store: &mut Store,
    client: &(impl Brain + ?Sized),
    batch_size: usize,
    wait: Option<Duration>,
) -> Result<PullSummary, SyncError> {
    let batch_size = batch_size.clamp(1, MAX_BATCH);
    let mut summary = PullSummary::default();
    let mut cursor: i64 = store
        .kv_get(CURSOR_KEY)?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut wait = wait;
    loop {
        let page = match client.pull(cursor, batch_size, wait.take()) {
            Ok(page) => page,
            Err(e) if e.is_cursor_pruned() => {
                tracing::warn!(cursor, "the brain pruned events this device has not pulled; re-seeding from its snapshot");
                cursor = reseed(store, client, batch_size)?;
                summary.reseeded = true;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let max_content = usize::MAX;
        let batch = store.batch()?;
        for (index, pulled) in page.events.iter().enumerate() {
            let event = &pulled.event;
            event
                .validate(max_content)
                .map_err(|e| SyncError::BadEvent {
                    index,
                    id: pulled.id,
                    reason: e.to_string(),
                })?;
            summary.pulled += 1;
            if event.device_id == batch.device_id() && batch.in_outbox(&event.event_ulid)? {
                continue; // ours, applied when it was made
            }
            if batch.record_inbox(pulled.id, event)? {
                batch.apply(event)?;
                summary.applied += 1;
            }
        }
        cursor = cursor.max(page.next_after_id);
        batch.kv_set(CURSOR_KEY, &cursor.to_string())?;
        batch.commit()?;
        if !page.has_more {
            summary.new_after_id = cursor;
            return Ok(summary);
        }
    }
}

/// Rebuilds the shared view from the brain's entities and returns the log position to pull from.
/// Applying an entity's siblings reproduces its state exactly (its `seen_vc` is the pointwise
/// maximum of theirs), and events pulled again afterwards change nothing.
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
            batch.apply(&winner)?;
            for sibling in entity
                .siblings
                .iter()
                .filter(|s| s.event_ulid != entity.event_ulid)
            {
                let event = Event {
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
                };
                batch.apply(&event)?;
            }
        }
        batch.commit()?;
        match page.entities.last() {
            Some(last) if page.has_more => after_key = last.entity_key.clone(),
            _ => break,
        }
    }
    let watermark = watermark.unwrap_or(0);
    let batch = store.batch()?;
    batch.kv_set(CURSOR_KEY, &watermark.to_string())?;
    batch.commit()?;
    Ok(watermark)
}

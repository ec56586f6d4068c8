//! The read side: pages of the log (`/pull`) and of the current entities (`/snapshot`), read as
//! their rows stream in, so that a page stops at its byte bound without holding more.

use super::PgStore;
use crate::brain::store::{
    corrupt, parse_event_type, parse_state, PageFill, PullPage, SnapshotPage,
};
use crate::brain::{BrainError, Result};
use crate::model::wire::{PulledEvent, SnapshotEntity};
use crate::model::{Event, FilePayload};

impl PgStore {
    /// [`crate::brain::store::BrainStore::pull`].
    pub(super) async fn read_log(&self, after_id: i64, limit: usize) -> Result<PullPage> {
        let conn = self.inner.pool.get().await?;
        // Rows are read as they stream in and the read stops at the page's byte bound: a log of
        // large events (stored before the caps) never sits whole in memory.
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
            [&after_id, &(limit as i64 + 1)];
        let rows = conn
            .query_raw(
                &*self.sql(
                    "SELECT id, event_ulid, device_id, event_type, entity_type, entity_key, payload::text,
                       vector_clock::text, created_at
                     FROM lib_shared.events WHERE id > $1 ORDER BY id LIMIT $2",
                ),
                params,
            )
            .await
            .map_err(|e| self.inner.pool.err("pulling events", e))?;
        // Boxed, so that the drop below ends the stream (and its unread rows) before the
        // connection runs its next statement.
        let mut rows = Box::pin(rows);
        let mut events = Vec::with_capacity(limit.min(512));
        let mut has_more = false;
        let mut page = PageFill::new(limit);
        while let Some(row) = futures_util::StreamExt::next(&mut rows).await {
            let row = row.map_err(|e| self.inner.pool.err("pulling events", e))?;
            let id: i64 = row.get(0);
            let (device_id, entity_key, payload, clock): (String, String, &str, &str) =
                (row.get(2), row.get(5), row.get(6), row.get(7));
            let row_bytes = payload.len() + clock.len() + entity_key.len() + device_id.len();
            if !page.take(row_bytes) {
                has_more = true;
                break;
            }
            events.push(PulledEvent {
                id,
                event: Event {
                    event_ulid: row.get(1),
                    device_id,
                    event_type: parse_event_type(row.get(3))?,
                    entity_type: row.get(4),
                    entity_key,
                    payload: serde_json::from_str::<FilePayload>(payload)
                        .map_err(|e| corrupt(&format!("payload of event {id}"), e))?,
                    vector_clock: serde_json::from_str(clock)
                        .map_err(|e| corrupt(&format!("clock of event {id}"), e))?,
                    created_at: row.get(8),
                },
            });
        }
        drop(rows);
        // The prune mark is read *after* the events: a prune that committed before the read above
        // shows here, so its gap is never served as if nothing were missing. (One that commits
        // later only costs a re-seed that was not strictly needed.)
        let pruned: i64 = conn
            .query_one(
                &*self.sql("SELECT v FROM lib_shared.brain_meta WHERE k = 'pruned_through'"),
                &[],
            )
            .await
            .map_err(|e| self.inner.pool.err("reading the prune mark", e))?
            .get(0);
        if after_id < pruned {
            return Err(BrainError::CursorPruned {
                after_id,
                pruned_through: pruned,
            });
        }
        let next_after_id = events.last().map_or(after_id, |e| e.id);
        Ok(PullPage {
            events,
            next_after_id,
            has_more,
        })
    }

    /// [`crate::brain::store::BrainStore::snapshot`].
    pub(super) async fn read_entities(
        &self,
        after_key: &str,
        limit: usize,
    ) -> Result<SnapshotPage> {
        let mut conn = self.inner.pool.get().await?;
        // One snapshot of the database for the watermark and the entities.
        let tx = conn
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(|e| self.inner.pool.err("starting a snapshot", e))?;
        let watermark: i64 = tx
            .query_one(
                &*self.sql(
                    "SELECT GREATEST(COALESCE((SELECT max(id) FROM lib_shared.events), 0),
                       (SELECT v FROM lib_shared.brain_meta WHERE k = 'pruned_through'))",
                ),
                &[],
            )
            .await
            .map_err(|e| self.inner.pool.err("reading the watermark", e))?
            .get(0);
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
            [&after_key, &(limit as i64 + 1)];
        let rows = tx
            .query_raw(
                &*self.sql(
                    "SELECT entity_key, entity_type, event_ulid, device_id, event_type, payload::text,
                       vector_clock::text, created_at, deleted_at, seen_vc::text, siblings::text
                     FROM lib_shared.entities WHERE entity_key > $1 ORDER BY entity_key LIMIT $2",
                ),
                params,
            )
            .await
            .map_err(|e| self.inner.pool.err("reading entities", e))?;
        // Boxed, so that the drop below ends the stream (and its unread rows) before the
        // connection runs its next statement.
        let mut rows = Box::pin(rows);
        let mut entities = Vec::with_capacity(limit.min(512));
        let mut has_more = false;
        let mut page = PageFill::new(limit);
        while let Some(row) = futures_util::StreamExt::next(&mut rows).await {
            let row = row.map_err(|e| self.inner.pool.err("reading entities", e))?;
            let key: String = row.get(0);
            let (payload, clock, vc, sib): (&str, &str, &str, &str) =
                (row.get(5), row.get(6), row.get(9), row.get(10));
            let row_bytes = key.len() + payload.len() + clock.len() + vc.len() + sib.len();
            if !page.take(row_bytes) {
                has_more = true;
                break;
            }
            let state = parse_state(&key, vc, sib)?;
            entities.push(SnapshotEntity {
                entity_type: row.get(1),
                event_ulid: row.get(2),
                device_id: row.get(3),
                event_type: parse_event_type(row.get(4))?,
                payload: serde_json::from_str(payload)
                    .map_err(|e| corrupt(&format!("payload of {key}"), e))?,
                vector_clock: serde_json::from_str(clock)
                    .map_err(|e| corrupt(&format!("clock of {key}"), e))?,
                created_at: row.get(7),
                deleted_at: row.get(8),
                seen_vc: state.seen_vc,
                siblings: state.siblings,
                entity_key: key,
            });
        }
        drop(rows);
        tx.commit()
            .await
            .map_err(|e| self.inner.pool.err("ending a snapshot", e))?;
        Ok(SnapshotPage {
            entities,
            watermark,
            has_more,
        })
    }
}

//! The outbox (`lib_outbox`: events this device made, until the brain acknowledged them) and
//! the inbox (`lib_inbox`: events pulled from the brain).

use super::{Batch, Param};
use crate::model::Event;
use crate::store::{Context, Result, StoreError};

impl<'a> Batch<'a> {
    /// Queues an event this device made; its row id. `clock` is the event's vector clock as JSON
    /// and `payload_json` its payload serialised already, if the caller has them.
    pub(super) fn append_outbox_with(
        &self,
        event: &Event,
        clock: &str,
        payload_json: Option<&str>,
    ) -> Result<i64> {
        let serialised;
        let payload = match payload_json {
            Some(json) => json,
            None => {
                serialised =
                    serde_json::to_string(&event.payload).map_err(|e| StoreError::Corrupt {
                        context: format!("serialising the payload of {}", event.event_ulid),
                        detail: e.to_string(),
                    })?;
                &serialised
            }
        };
        self.stmts
            .outbox_insert
            .execute(
                self.conn,
                &[
                    Param::Same(Some(&event.device_id)),
                    Param::Text(Some(&event.event_ulid)),
                    Param::Same(Some(event.event_type.as_str())),
                    Param::Same(Some(&event.entity_type)),
                    Param::Text(Some(&event.entity_key)),
                    Param::Text(Some(payload)),
                    Param::Text(Some(clock)),
                    Param::Same(Some(&event.created_at)),
                ],
            )
            .ctx(|| {
                format!(
                    "appending event {} for {} to the outbox",
                    event.event_ulid, event.entity_key
                )
            })?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Marks outbox rows pushed: the brain acknowledged them.
    pub fn mark_pushed(&self, ids: &[i64]) -> Result<()> {
        let now = self.now();
        let mut stmt = self
            .tx
            .prepare_cached(
                "UPDATE lib_outbox SET pushed_at = ?2 WHERE id = ?1 AND pushed_at IS NULL",
            )
            .ctx(|| "preparing the pushed mark".into())?;
        for id in ids {
            stmt.execute((id, &now))
                .ctx(|| format!("marking outbox row {id} pushed"))?;
        }
        Ok(())
    }

    /// Marks this device's event `ulid` acknowledged when a pull brought it back: the brain
    /// serves it, so it holds it, whether or not the pusher has seen the brain's answer yet (a
    /// pull racing the push would otherwise report it pending, and the replica not converged,
    /// until the next pull).
    pub fn acknowledge_pulled(&self, ulid: &str) -> Result<()> {
        let now = self.now();
        self.tx
            .prepare_cached(
                "UPDATE lib_outbox SET pushed_at = ?2 WHERE event_ulid = ?1 AND pushed_at IS NULL",
            )
            .and_then(|mut s| s.execute((ulid, &now)))
            .ctx(|| format!("marking {ulid} acknowledged"))?;
        Ok(())
    }

    /// Sets an outbox row aside with the brain's reason: it is not retried, and `agent status`
    /// shows it.
    pub fn park(&self, id: i64, error: &str) -> Result<()> {
        self.tx
            .execute(
                "UPDATE lib_outbox SET parked_at = ?2, parked_error = ?3 WHERE id = ?1",
                (id, self.now(), error),
            )
            .ctx(|| format!("parking outbox row {id}"))?;
        Ok(())
    }

    /// Puts every parked, unpushed event back in the queue (`agent sync --retry-parked`: after
    /// the brain or the agent that refused them was fixed). Returns how many.
    pub fn unpark_all(&self) -> Result<usize> {
        self.tx
            .execute(
                "UPDATE lib_outbox SET parked_at = NULL, parked_error = NULL
                 WHERE parked_at IS NOT NULL AND pushed_at IS NULL",
                [],
            )
            .ctx(|| "re-queueing the parked outbox rows".into())
    }

    /// Puts every acknowledged event of this device back in the queue: the brain lost them (it
    /// was restored from an older backup, or replaced). Pushing is idempotent by ULID, so the
    /// ones it still has insert nothing. Returns how many.
    pub fn requeue_acknowledged(&self) -> Result<usize> {
        self.tx
            .execute(
                "UPDATE lib_outbox SET pushed_at = NULL WHERE pushed_at IS NOT NULL AND parked_at IS NULL",
                [],
            )
            .ctx(|| "re-queueing the acknowledged outbox rows".into())
    }

    /// Whether an event of this device is in its outbox (pushed or not).
    pub fn in_outbox(&self, ulid: &str) -> Result<bool> {
        self.tx
            .prepare_cached("SELECT 1 FROM lib_outbox WHERE event_ulid = ?1")
            .and_then(|mut s| s.exists([ulid]))
            .ctx(|| format!("looking up {ulid} in the outbox"))
    }

    /// Records a pulled event in the inbox. False when its ULID is there already (pulled before).
    pub fn record_inbox(&self, source_id: i64, event: &Event) -> Result<bool> {
        let payload = serde_json::to_string(&event.payload).map_err(|e| StoreError::Corrupt {
            context: format!("serialising the payload of {}", event.event_ulid),
            detail: e.to_string(),
        })?;
        let mut stmt = self
            .tx
            .prepare_cached(
                "INSERT INTO lib_inbox (source_id, device_id, event_ulid, event_type, entity_type, entity_key,
                   payload_json, vector_clock, created_at, applied_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT(event_ulid) DO NOTHING",
            )
            .ctx(|| "preparing inbox insert".into())?;
        let inserted = stmt
            .execute(rusqlite::params![
                source_id,
                event.device_id,
                event.event_ulid,
                event.event_type.as_str(),
                event.entity_type,
                event.entity_key,
                payload,
                event.vector_clock.to_json(),
                event.created_at,
                self.now(),
            ])
            .ctx(|| format!("recording pulled event {} in the inbox", event.event_ulid))?;
        Ok(inserted == 1)
    }
}

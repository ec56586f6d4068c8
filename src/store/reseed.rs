//! What `agent sync --reseed` needs of the store: the brain's snapshot staged in a temporary
//! table while it downloads (no write lock held over the network), then, in one transaction, the
//! shared view emptied and rebuilt from it, and this device's events the snapshot may lack
//! applied again. A view damaged in a way that sorts higher than the truth (which merging on top
//! would keep) is gone after it.

use super::read::read_events;
use super::{Batch, Context, Result, Store, StoreError};
use crate::model::wire::SnapshotEntity;
use crate::model::Event;

const CREATE_STAGING: &str = "CREATE TEMP TABLE IF NOT EXISTS reseed_staging (
    seq    INTEGER PRIMARY KEY,
    entity TEXT NOT NULL
)";

impl Store {
    /// Empties the staging table (what an earlier, interrupted re-seed left).
    pub fn start_staging(&self) -> Result<()> {
        self.conn
            .execute_batch(&format!(
                "{CREATE_STAGING}; DELETE FROM temp.reseed_staging;"
            ))
            .ctx(|| "preparing to stage the brain's snapshot".into())
    }

    /// Adds snapshot entities to the staging table, in order. Temporary tables are this
    /// connection's own: staging takes no lock on the database.
    pub fn stage(&self, entities: &[SnapshotEntity]) -> Result<()> {
        let mut insert = self
            .conn
            .prepare_cached("INSERT INTO temp.reseed_staging (entity) VALUES (?1)")
            .ctx(|| "preparing to stage the brain's snapshot".into())?;
        for entity in entities {
            let json = serde_json::to_string(entity).map_err(|e| StoreError::Corrupt {
                context: format!("staging the snapshot entity {}", entity.entity_key),
                detail: e.to_string(),
            })?;
            insert
                .execute([json])
                .ctx(|| format!("staging the snapshot entity {}", entity.entity_key))?;
        }
        Ok(())
    }

    /// Drops the staging table's rows once the re-seed committed (or gave up).
    pub fn end_staging(&self) -> Result<()> {
        self.conn
            .execute_batch(&format!(
                "{CREATE_STAGING}; DELETE FROM temp.reseed_staging;"
            ))
            .ctx(|| "clearing the staged snapshot".into())
    }
}

impl Batch<'_> {
    /// Empties the shared view: `lib_files`, its search index, `lib_conflicts`, and its digest.
    /// The observed state (this device's disk) and the outbox and inbox stay.
    pub fn clear_shared_view(&self) -> Result<()> {
        self.tx
            .execute_batch(
                "INSERT INTO lib_files_fts (lib_files_fts) VALUES ('delete-all');
                 DELETE FROM temp.fts_pending;
                 DELETE FROM lib_conflicts;
                 DELETE FROM lib_files;",
            )
            .ctx(|| "emptying the shared view".into())?;
        self.fts_removals.set(false);
        self.fts_inserts.borrow_mut().clear();
        self.forget_digest()
    }

    /// Calls `each` with every staged entity, in the order staged.
    pub fn for_each_staged(
        &self,
        mut each: impl FnMut(SnapshotEntity) -> Result<()>,
    ) -> Result<()> {
        let context = || "reading the staged snapshot".to_owned();
        let mut stmt = self
            .tx
            .prepare("SELECT seq, entity FROM temp.reseed_staging ORDER BY seq")
            .ctx(context)?;
        let mut rows = stmt.query([]).ctx(context)?;
        while let Some(row) = rows.next().ctx(context)? {
            let seq: i64 = row.get(0).ctx(context)?;
            let json: String = row.get(1).ctx(context)?;
            let entity = serde_json::from_str(&json).map_err(|e| StoreError::Corrupt {
                context: format!("staged snapshot entity {seq}"),
                detail: e.to_string(),
            })?;
            each(entity)?;
        }
        Ok(())
    }

    /// The events a snapshot taken from `since` on may lack, to apply again over it: this
    /// device's events not acknowledged before `since` (RFC 3339, the store's format), then the
    /// pulled events past `watermark`, each in the order it came. Applying an event the snapshot
    /// holds already changes nothing.
    pub fn events_after_snapshot(&self, since: &str, watermark: i64) -> Result<Vec<Event>> {
        let mut events: Vec<Event> = read_events(
            &self.tx,
            "lib_outbox",
            "SELECT id, device_id, event_ulid, event_type, entity_type, entity_key, payload_json,
                    vector_clock, created_at
             FROM lib_outbox WHERE pushed_at IS NULL OR pushed_at >= ?1 ORDER BY id",
            since,
        )?
        .into_iter()
        .map(|(_, e)| e)
        .collect();
        events.extend(
            read_events(
                &self.tx,
                "lib_inbox",
                "SELECT id, device_id, event_ulid, event_type, entity_type, entity_key, payload_json,
                        vector_clock, created_at
                 FROM lib_inbox WHERE source_id > ?1 ORDER BY source_id",
                watermark,
            )?
            .into_iter()
            .map(|(_, e)| e),
        );
        Ok(events)
    }
}

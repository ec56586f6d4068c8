//! The SQLite translation of the ingest's steps ([`crate::brain::store::ingest`]): one cached
//! statement per row, inside the writer's `BEGIN IMMEDIATE` transaction. Every step is
//! synchronous; the flow is driven on the blocking pool with `run_ready`.

use std::collections::{BTreeMap, HashMap};

use rusqlite::{OptionalExtension, Transaction};

use super::{newest_id, sql_err};
use crate::brain::store::ingest::{EntityWrite, IngestTx};
use crate::brain::store::{parse_state, to_json, CheckedEvent};
use crate::brain::Result;
use crate::model::digest::ReplicaDigest;
use crate::model::merge::EntityState;
use crate::model::Event;

pub(super) struct SqliteIngest<'a> {
    pub(super) tx: &'a Transaction<'a>,
    /// `received_at` and `updated_at` of what this ingest writes (Unix seconds).
    pub(super) now: i64,
}

impl IngestTx for SqliteIngest<'_> {
    async fn stored_digests(&self, ulids: &[&str]) -> Result<HashMap<String, String>> {
        let mut find = self
            .tx
            .prepare_cached(
                "SELECT digest FROM events WHERE event_ulid = ?1
                 UNION ALL SELECT digest FROM pruned_events WHERE event_ulid = ?1",
            )
            .map_err(|e| sql_err("preparing the ULID lookup", e))?;
        let mut stored = HashMap::new();
        for ulid in ulids {
            let digest: Option<String> = find
                .query_row([ulid], |r| r.get(0))
                .optional()
                .map_err(|e| sql_err("looking up an event ULID", e))?;
            if let Some(digest) = digest {
                stored.insert((*ulid).to_owned(), digest);
            }
        }
        Ok(stored)
    }

    async fn append(&self, events: &[&CheckedEvent]) -> Result<(i64, i64)> {
        let before = newest_id(self.tx)?;
        let mut insert = self
            .tx
            .prepare_cached(
                "INSERT INTO events (event_ulid, device_id, event_type, entity_type, entity_key, payload,
                   vector_clock, created_at, received_at, digest)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .map_err(|e| sql_err("preparing the event insert", e))?;
        let mut last = before;
        for checked in events {
            let e = &checked.event;
            insert
                .execute(rusqlite::params![
                    e.event_ulid,
                    e.device_id,
                    e.event_type.as_str(),
                    e.entity_type,
                    e.entity_key,
                    to_json(&e.payload),
                    e.vector_clock.to_json(),
                    e.created_at,
                    self.now,
                    checked.digest,
                ])
                .map_err(|err| sql_err("appending an event", err))?;
            last = self.tx.last_insert_rowid();
        }
        Ok((before, last))
    }

    async fn entity_states(&self, keys: &[&str]) -> Result<HashMap<String, EntityState>> {
        let mut read = self
            .tx
            .prepare_cached("SELECT seen_vc, siblings FROM entities WHERE entity_key = ?1")
            .map_err(|e| sql_err("preparing the entity lookup", e))?;
        let mut current = HashMap::with_capacity(keys.len());
        for key in keys {
            let row: Option<(String, String)> = read
                .query_row([key], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
                .map_err(|e| sql_err("reading an entity", e))?;
            if let Some((seen_vc, siblings)) = row {
                current.insert((*key).to_owned(), parse_state(key, &seen_vc, &siblings)?);
            }
        }
        Ok(current)
    }

    async fn write_entities(&self, events: &[&Event], writes: &[EntityWrite]) -> Result<()> {
        let tx = self.tx;
        let mut upsert = tx
            .prepare_cached(
                "INSERT INTO entities (entity_key, entity_type, event_ulid, device_id, event_type, payload,
                   vector_clock, created_at, deleted_at, seen_vc, siblings, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                 ON CONFLICT(entity_key) DO UPDATE SET entity_type = excluded.entity_type,
                   event_ulid = excluded.event_ulid, device_id = excluded.device_id,
                   event_type = excluded.event_type, payload = excluded.payload,
                   vector_clock = excluded.vector_clock, created_at = excluded.created_at,
                   deleted_at = excluded.deleted_at, seen_vc = excluded.seen_vc,
                   siblings = excluded.siblings, updated_at = excluded.updated_at",
            )
            .map_err(|e| sql_err("preparing the entity upsert", e))?;
        let mut update = tx
            .prepare_cached("UPDATE entities SET seen_vc = ?2, siblings = ?3, updated_at = ?4 WHERE entity_key = ?1")
            .map_err(|e| sql_err("preparing the merge-state update", e))?;
        let mut clear = tx
            .prepare_cached("DELETE FROM conflicts WHERE entity_key = ?1")
            .map_err(|e| sql_err("preparing the conflict clear", e))?;
        let mut conflict = tx
            .prepare_cached(
                "INSERT INTO conflicts (entity_key, event_ulid, device_id, vector_clock, deleted, sha256,
                   bytes, mtime_unix, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .map_err(|e| sql_err("preparing the conflict insert", e))?;
        for w in writes {
            let seen_vc = w.state.seen_vc.to_json();
            let siblings = to_json(&w.state.siblings);
            match w.new_winner {
                Some(index) => {
                    let e = events[index];
                    let deleted = e.event_type.is_delete();
                    upsert
                        .execute(rusqlite::params![
                            w.key,
                            e.entity_type,
                            e.event_ulid,
                            e.device_id,
                            e.event_type.as_str(),
                            to_json(&e.payload),
                            e.vector_clock.to_json(),
                            e.created_at,
                            deleted.then_some(e.created_at.as_str()),
                            seen_vc,
                            siblings,
                            self.now,
                        ])
                        .map_err(|err| sql_err("writing an entity", err))?;
                }
                None => {
                    update
                        .execute(rusqlite::params![w.key, seen_vc, siblings, self.now])
                        .map_err(|err| sql_err("updating an entity's merge state", err))?;
                }
            }
            if w.refresh_conflicts {
                clear
                    .execute([&w.key])
                    .map_err(|e| sql_err("clearing conflicts", e))?;
                for v in w.state.conflicts() {
                    conflict
                        .execute(rusqlite::params![
                            w.key,
                            v.event_ulid,
                            v.device_id,
                            v.clock.to_json(),
                            v.deleted,
                            v.sha256,
                            v.bytes.map(|b| b as i64),
                            v.mtime_unix,
                            v.created_at,
                        ])
                        .map_err(|e| sql_err("recording a conflict", e))?;
                }
            }
        }
        Ok(())
    }

    async fn raise_sequences(&self, maxima: &BTreeMap<String, i64>) -> Result<()> {
        let mut known = self
            .tx
            .prepare_cached(
                "INSERT INTO device_sequences (device_id, max_sequence) VALUES (?1, ?2)
                 ON CONFLICT(device_id) DO UPDATE SET
                   max_sequence = MAX(max_sequence, excluded.max_sequence)",
            )
            .map_err(|e| sql_err("preparing the sequence update", e))?;
        for (device, max) in maxima {
            known
                .execute(rusqlite::params![device, max])
                .map_err(|e| sql_err("recording a device's sequence", e))?;
        }
        Ok(())
    }

    async fn add_to_digest(&self, delta: &ReplicaDigest) -> Result<()> {
        let mut digest = super::digest::kept(self.tx)?.unwrap_or_default();
        digest.toggle(*delta);
        super::digest::save(self.tx, &digest)
    }
}

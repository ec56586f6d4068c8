//! The PostgreSQL translation of the ingest's steps ([`crate::brain::store::ingest`]): each step
//! one statement over arrays (`unnest`), inside the transaction that holds the ingest lock.

use std::collections::{BTreeMap, HashMap};

use tokio_postgres::Transaction;

use super::schema::in_schema;
use crate::brain::store::ingest::{EntityWrite, IngestTx};
use crate::brain::store::{parse_state, to_json, CheckedEvent};
use crate::brain::{BrainError, Result};
use crate::model::digest::ReplicaDigest;
use crate::model::merge::EntityState;
use crate::model::Event;

/// What a failed statement becomes: the pool's error (which drops dead connections), or plain
/// [`super::error::pg_err`] where no pool is involved (a migration).
pub(super) type ErrFn<'a> = &'a (dyn Fn(&str, tokio_postgres::Error) -> BrainError + Sync);

pub(super) struct PgIngest<'a> {
    pub(super) tx: &'a Transaction<'a>,
    pub(super) schema: &'a str,
    pub(super) err: ErrFn<'a>,
}

impl PgIngest<'_> {
    fn sql<'s>(&self, sql: &'s str) -> std::borrow::Cow<'s, str> {
        in_schema(sql, self.schema)
    }
}

impl IngestTx for PgIngest<'_> {
    async fn stored_digests(&self, ulids: &[&str]) -> Result<HashMap<String, String>> {
        let (tx, err) = (self.tx, self.err);
        // One statement, so one snapshot: a prune committing meanwhile moves a ULID from the log
        // to pruned_events atomically, and this sees it in exactly one of the two.
        let stored: HashMap<String, String> = tx
            .query(
                &*self.sql(
                    "SELECT event_ulid, digest FROM lib_shared.events WHERE event_ulid = ANY($1)
                     UNION ALL
                     SELECT event_ulid, digest FROM lib_shared.pruned_events WHERE event_ulid = ANY($1)",
                ),
                &[&ulids],
            )
            .await
            .map_err(|e| err("looking up event ULIDs", e))?
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        Ok(stored)
    }

    async fn append(&self, events: &[&CheckedEvent]) -> Result<(i64, i64)> {
        let (tx, err) = (self.tx, self.err);
        let new_events: Vec<&Event> = events.iter().map(|c| &c.event).collect();
        let digests: Vec<&str> = events.iter().map(|c| c.digest.as_str()).collect();
        let col =
            |f: fn(&Event) -> String| new_events.iter().map(|e| f(e)).collect::<Vec<String>>();
        let ids: Vec<i64> = tx
            .query(
                &*self.sql(
                    "INSERT INTO lib_shared.events (event_ulid, device_id, event_type, entity_type, entity_key,
                       payload, vector_clock, created_at, digest)
                     SELECT u, d, t, et, k, p::jsonb, vc::jsonb, c, dg
                     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                 $7::text[], $8::text[], $9::text[]) WITH ORDINALITY
                          AS x(u, d, t, et, k, p, vc, c, dg, n)
                     ORDER BY n
                     RETURNING id",
                ),
                &[
                    &col(|e| e.event_ulid.clone()),
                    &col(|e| e.device_id.clone()),
                    &col(|e| e.event_type.as_str().to_owned()),
                    &col(|e| e.entity_type.clone()),
                    &col(|e| e.entity_key.clone()),
                    &col(|e| to_json(&e.payload)),
                    &col(|e| e.vector_clock.to_json()),
                    &col(|e| e.created_at.clone()),
                    &digests,
                ],
            )
            .await
            .map_err(|e| err("appending events", e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let first = ids.iter().copied().min().unwrap_or(0);
        let last = ids.iter().copied().max().unwrap_or(0);
        Ok((first - 1, last))
    }

    async fn entity_states(&self, keys: &[&str]) -> Result<HashMap<String, EntityState>> {
        let mut current = HashMap::with_capacity(keys.len());
        for row in self
            .tx
            .query(
                &*self.sql(
                    "SELECT entity_key, seen_vc::text, siblings::text FROM lib_shared.entities
                     WHERE entity_key = ANY($1)",
                ),
                &[&keys],
            )
            .await
            .map_err(|e| (self.err)("reading entities", e))?
        {
            let key: String = row.get(0);
            let state = parse_state(&key, row.get(1), row.get(2))?;
            current.insert(key, state);
        }
        Ok(current)
    }

    async fn write_entities(&self, events: &[&Event], writes: &[EntityWrite]) -> Result<()> {
        let (tx, err) = (self.tx, self.err);
        let sql = |s: &'static str| self.sql(s);
        // Winners, merge-state-only updates, and conflicts, each as one statement over arrays.
        let mut winners: [Vec<String>; 9] = Default::default();
        let mut winner_deleted: Vec<Option<String>> = Vec::new();
        let mut winner_siblings = Vec::new();
        let (mut merge_keys, mut merge_vcs, mut other_siblings) =
            (Vec::new(), Vec::new(), Vec::new());
        let mut refreshed: Vec<&str> = Vec::new();
        let mut c_key = Vec::new();
        let mut c_ulid = Vec::new();
        let mut c_device = Vec::new();
        let mut c_clock = Vec::new();
        let mut c_deleted = Vec::new();
        let mut c_sha = Vec::new();
        let mut c_bytes: Vec<Option<i64>> = Vec::new();
        let mut c_mtime: Vec<Option<i64>> = Vec::new();
        let mut c_created = Vec::new();
        for w in writes {
            let seen_vc = w.state.seen_vc.to_json();
            let siblings = to_json(&w.state.siblings);
            match w.new_winner {
                Some(i) => {
                    let e = events[i];
                    let values = [
                        w.key.clone(),
                        e.entity_type.clone(),
                        e.event_ulid.clone(),
                        e.device_id.clone(),
                        e.event_type.as_str().to_owned(),
                        to_json(&e.payload),
                        e.vector_clock.to_json(),
                        e.created_at.clone(),
                        seen_vc,
                    ];
                    for (column, value) in winners.iter_mut().zip(values) {
                        column.push(value);
                    }
                    winner_deleted.push(e.event_type.is_delete().then(|| e.created_at.clone()));
                    winner_siblings.push(siblings);
                }
                None => {
                    merge_keys.push(w.key.clone());
                    merge_vcs.push(seen_vc);
                    other_siblings.push(siblings);
                }
            }
            if w.refresh_conflicts {
                refreshed.push(&w.key);
                for v in w.state.conflicts() {
                    c_key.push(w.key.clone());
                    c_ulid.push(v.event_ulid.clone());
                    c_device.push(v.device_id.clone());
                    c_clock.push(v.clock.to_json());
                    c_deleted.push(v.deleted);
                    c_sha.push(v.sha256.clone());
                    c_bytes.push(v.bytes.map(|b| b as i64));
                    c_mtime.push(v.mtime_unix);
                    c_created.push(v.created_at.clone());
                }
            }
        }
        let winner_count = winners[0].len();
        if winner_count > 0 {
            tx.execute(
                &*sql(
                    "INSERT INTO lib_shared.entities (entity_key, entity_type, event_ulid, device_id, event_type,
                       payload, vector_clock, created_at, deleted_at, seen_vc, siblings, updated_at)
                     SELECT k, et, u, d, t, p::jsonb, vc::jsonb, c, del, svc::jsonb, sib::jsonb, now()
                     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                 $7::text[], $8::text[], $9::text[], $10::text[], $11::text[])
                          AS x(k, et, u, d, t, p, vc, c, svc, del, sib)
                     ON CONFLICT (entity_key) DO UPDATE SET entity_type = excluded.entity_type,
                       event_ulid = excluded.event_ulid, device_id = excluded.device_id,
                       event_type = excluded.event_type, payload = excluded.payload,
                       vector_clock = excluded.vector_clock, created_at = excluded.created_at,
                       deleted_at = excluded.deleted_at, seen_vc = excluded.seen_vc,
                       siblings = excluded.siblings, updated_at = excluded.updated_at",
                ),
                &[
                    &winners[0],
                    &winners[1],
                    &winners[2],
                    &winners[3],
                    &winners[4],
                    &winners[5],
                    &winners[6],
                    &winners[7],
                    &winners[8],
                    &winner_deleted,
                    &winner_siblings,
                ],
            )
            .await
            .map_err(|e| err("writing entities", e))?;
        }
        if !merge_keys.is_empty() {
            tx.execute(
                &*sql(
                    "UPDATE lib_shared.entities AS e SET seen_vc = x.svc::jsonb, siblings = x.sib::jsonb,
                       updated_at = now()
                     FROM unnest($1::text[], $2::text[], $3::text[]) AS x(k, svc, sib)
                     WHERE e.entity_key = x.k",
                ),
                &[&merge_keys, &merge_vcs, &other_siblings],
            )
            .await
            .map_err(|e| err("updating merge state", e))?;
        }
        if !refreshed.is_empty() {
            tx.execute(
                &*sql("DELETE FROM lib_shared.conflicts WHERE entity_key = ANY($1)"),
                &[&refreshed],
            )
            .await
            .map_err(|e| err("clearing conflicts", e))?;
            if !c_key.is_empty() {
                tx.execute(
                    &*sql(
                        "INSERT INTO lib_shared.conflicts (entity_key, event_ulid, device_id, vector_clock, deleted,
                           sha256, bytes, mtime_unix, created_at)
                         SELECT k, u, d, vc::jsonb, del, sha, b, m, c
                         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bool[], $6::text[],
                                     $7::int8[], $8::int8[], $9::text[]) AS x(k, u, d, vc, del, sha, b, m, c)",
                    ),
                    &[&c_key, &c_ulid, &c_device, &c_clock, &c_deleted, &c_sha, &c_bytes, &c_mtime, &c_created],
                )
                .await
                .map_err(|e| err("recording conflicts", e))?;
            }
        }
        Ok(())
    }

    async fn raise_sequences(&self, maxima: &BTreeMap<String, i64>) -> Result<()> {
        let (tx, err) = (self.tx, self.err);
        let sql = |s: &'static str| self.sql(s);
        let (devices, maxima): (Vec<String>, Vec<i64>) =
            maxima.iter().map(|(d, m)| (d.clone(), *m)).unzip();
        if !devices.is_empty() {
            tx.execute(
                &*sql(
                    "INSERT INTO lib_shared.device_sequences (device_id, max_sequence)
                     SELECT d, m FROM unnest($1::text[], $2::int8[]) AS x(d, m)
                     ON CONFLICT (device_id) DO UPDATE SET max_sequence =
                       GREATEST(lib_shared.device_sequences.max_sequence, excluded.max_sequence)",
                ),
                &[&devices, &maxima],
            )
            .await
            .map_err(|e| err("recording devices' sequences", e))?;
        }
        Ok(())
    }

    async fn add_to_digest(&self, delta: &ReplicaDigest) -> Result<()> {
        // Read, changed and written under the ingest lock: no other ingest is in between.
        let mut digest = super::digest::kept(self.tx, self.schema, self.err)
            .await?
            .unwrap_or_default();
        digest.toggle(*delta);
        super::digest::save(self.tx, self.schema, self.err, &digest).await
    }
}

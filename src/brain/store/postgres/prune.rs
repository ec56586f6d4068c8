//! Pruning the log: the oldest events go, their ULIDs and digests stay (`pruned_events`), and
//! the prune mark moves, in one transaction.

use super::PgStore;
use crate::brain::store::{
    unix_seconds, PruneBound, PruneReport, PruneStatus, META_LAST_PRUNE_AT,
    META_LAST_PRUNE_DELETED, META_TOTAL_PRUNE_DELETED,
};
use crate::brain::{BrainError, Result};

impl PgStore {
    /// Deletes the events up to `bound`, keeping their ULIDs and digests (see
    /// [`crate::brain::store::BrainStore::prune`]).
    pub(super) async fn prune_up_to(&self, bound: PruneBound) -> Result<PruneReport> {
        self.prune_unless_ran(bound, None)
            .await?
            .ok_or_else(|| BrainError::Internal("a prune without a schedule was skipped".into()))
    }

    /// [`PgStore::prune_up_to`], and the record of its run, in one transaction; `None` when
    /// one ran at or after `ran_since` (unix seconds), read under the prune mark's row lock, so
    /// of several brains on one database one prunes per period.
    pub(super) async fn prune_unless_ran(
        &self,
        bound: PruneBound,
        ran_since: Option<i64>,
    ) -> Result<Option<PruneReport>> {
        let mut conn = self.inner.pool.get().await?;
        let tx = conn
            .transaction()
            .await
            .map_err(|e| self.inner.pool.err("starting a prune", e))?;
        // First the lock every prune takes: prunes of several brains run one at a time.
        let old: i64 = tx
            .query_one(
                &*self.sql(
                    "SELECT v FROM lib_shared.brain_meta WHERE k = 'pruned_through' FOR UPDATE",
                ),
                &[],
            )
            .await
            .map_err(|e| self.inner.pool.err("reading the prune mark", e))?
            .get(0);
        if let Some(since) = ran_since {
            let last: Option<i64> = tx
                .query_opt(
                    &*self.sql("SELECT v FROM lib_shared.brain_meta WHERE k = $1"),
                    &[&META_LAST_PRUNE_AT],
                )
                .await
                .map_err(|e| self.inner.pool.err("reading the last prune", e))?
                .map(|r| r.get(0));
            if last.is_some_and(|last| last >= since) {
                return Ok(None);
            }
        }
        let (cutoff, id);
        let (sql, param): (&str, &(dyn tokio_postgres::types::ToSql + Sync)) = match bound {
            PruneBound::ReceivedBefore(seconds) => {
                cutoff = seconds as f64;
                (
                    "SELECT max(id) FROM lib_shared.events WHERE received_at < to_timestamp($1)",
                    &cutoff,
                )
            }
            PruneBound::Id(through) => {
                id = through;
                ("SELECT max(id) FROM lib_shared.events WHERE id <= $1", &id)
            }
        };
        let through: Option<i64> = tx
            .query_one(&*self.sql(sql), &[param])
            .await
            .map_err(|e| self.inner.pool.err("finding old events", e))?
            .get(0);
        let (mut deleted, mut pruned) = (0u64, old);
        if let Some(through) = through {
            (deleted, pruned) = self.delete_through(&tx, through, old).await?;
        }
        tx.execute(
            &*self.sql(
                "INSERT INTO lib_shared.brain_meta (k, v) VALUES ($1, $2), ($3, $4), ($5, $4)
                 ON CONFLICT (k) DO UPDATE SET v = CASE WHEN brain_meta.k = $5
                   THEN brain_meta.v + excluded.v ELSE excluded.v END",
            ),
            &[
                &META_LAST_PRUNE_AT,
                &unix_seconds(std::time::SystemTime::now()),
                &META_LAST_PRUNE_DELETED,
                &(deleted as i64),
                &META_TOTAL_PRUNE_DELETED,
            ],
        )
        .await
        .map_err(|e| self.inner.pool.err("recording the prune run", e))?;
        tx.commit()
            .await
            .map_err(|e| self.inner.pool.err("committing a prune", e))?;
        Ok(Some(PruneReport {
            deleted_events: deleted,
            pruned_through: pruned,
        }))
    }

    /// Deletes the events up to `through` (keeping their ULIDs) and moves the mark from `old`:
    /// what was deleted and the new mark.
    async fn delete_through(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        through: i64,
        old: i64,
    ) -> Result<(u64, i64)> {
        // One statement moves exactly the rows it deletes: a concurrent prune that deleted some
        // first leaves them out here (no duplicate ULID), and the ULIDs and digests stay, so a
        // late re-push of a pruned event is still recognised.
        let deleted = tx
            .execute(
                &*self.sql(
                    "WITH gone AS (DELETE FROM lib_shared.events WHERE id <= $1
                                   RETURNING event_ulid, digest)
                     INSERT INTO lib_shared.pruned_events (event_ulid, digest)
                     SELECT event_ulid, digest FROM gone",
                ),
                &[&through],
            )
            .await
            .map_err(|e| {
                self.inner
                    .pool
                    .err("pruning events (keeping their ULIDs)", e)
            })?;
        let pruned = old.max(through);
        tx.execute(
            &*self.sql("UPDATE lib_shared.brain_meta SET v = $1 WHERE k = 'pruned_through'"),
            &[&pruned],
        )
        .await
        .map_err(|e| self.inner.pool.err("recording the prune mark", e))?;
        Ok((deleted, pruned))
    }

    /// [`crate::brain::store::BrainStore::prune_status`].
    pub(super) async fn pruning_status(&self) -> Result<PruneStatus> {
        let conn = self.inner.pool.get().await?;
        let rows = conn
            .query(
                &*self.sql("SELECT k, v FROM lib_shared.brain_meta WHERE k LIKE 'prune%'"),
                &[],
            )
            .await
            .map_err(|e| self.inner.pool.err("reading the prune status", e))?;
        let meta = |key: &str| {
            rows.iter()
                .find(|r| r.get::<_, &str>(0) == key)
                .map(|r| r.get::<_, i64>(1))
        };
        let oldest = conn
            .query_opt(
                &*self.sql(
                    "SELECT id, extract(epoch FROM received_at)::int8 FROM lib_shared.events
                     ORDER BY id LIMIT 1",
                ),
                &[],
            )
            .await
            .map_err(|e| self.inner.pool.err("reading the oldest event", e))?;
        Ok(PruneStatus {
            last_run_at: meta(META_LAST_PRUNE_AT),
            last_deleted: meta(META_LAST_PRUNE_DELETED).unwrap_or(0).max(0) as u64,
            total_deleted: meta(META_TOTAL_PRUNE_DELETED).unwrap_or(0).max(0) as u64,
            pruned_through: meta("pruned_through").unwrap_or(0),
            oldest_kept: oldest.map(|r| (r.get(0), r.get(1))),
        })
    }
}

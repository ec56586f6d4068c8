//! Pruning the log: the oldest events go, their ULIDs and digests stay (`pruned_events`), and
//! the prune mark moves, in one transaction.

use super::PgStore;
use crate::brain::store::{PruneBound, PruneReport};
use crate::brain::Result;

impl PgStore {
    /// Deletes the events up to `bound`, keeping their ULIDs and digests (see
    /// [`crate::brain::store::BrainStore::prune`]).
    pub(super) async fn prune_up_to(&self, bound: PruneBound) -> Result<PruneReport> {
        let mut conn = self.inner.pool.get().await?;
        let tx = conn
            .transaction()
            .await
            .map_err(|e| self.inner.pool.err("starting a prune", e))?;
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
        let Some(through) = through else {
            return Ok(PruneReport {
                deleted_events: 0,
                pruned_through: old,
            });
        };
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
        tx.commit()
            .await
            .map_err(|e| self.inner.pool.err("committing a prune", e))?;
        Ok(PruneReport {
            deleted_events: deleted,
            pruned_through: pruned,
        })
    }
}

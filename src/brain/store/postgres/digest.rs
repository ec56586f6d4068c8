//! The replica digest of `entities` in the PostgreSQL store: kept in `replica_digest` by each
//! ingest under the ingest lock, derived from the rows at start under that lock too, so that no
//! instance's ingest lands between the pass and its write.

use tokio_postgres::GenericClient;

use super::schema::in_schema;
use crate::brain::store::corrupt_digest;
use crate::brain::Result;
use crate::model::digest::ReplicaDigest;

type ErrFn<'a> = super::ingest::ErrFn<'a>;

/// The kept digest; `None` before a brain first derived it.
pub(super) async fn kept(
    client: &impl GenericClient,
    schema: &str,
    err: ErrFn<'_>,
) -> Result<Option<ReplicaDigest>> {
    let row = client
        .query_opt(
            &*in_schema(
                "SELECT digest FROM lib_shared.replica_digest WHERE id = 1",
                schema,
            ),
            &[],
        )
        .await
        .map_err(|e| err("reading the replica digest", e))?;
    row.map(|r| {
        let text: String = r.get(0);
        ReplicaDigest::from_hex(&text).ok_or_else(|| corrupt_digest(&text))
    })
    .transpose()
}

pub(super) async fn save(
    client: &impl GenericClient,
    schema: &str,
    err: ErrFn<'_>,
    digest: &ReplicaDigest,
) -> Result<()> {
    client
        .execute(
            &*in_schema(
                "INSERT INTO lib_shared.replica_digest (id, digest) VALUES (1, $1)
                 ON CONFLICT (id) DO UPDATE SET digest = excluded.digest",
                schema,
            ),
            &[&digest.to_hex()],
        )
        .await
        .map_err(|e| err("writing the replica digest", e))?;
    Ok(())
}

/// A full pass over `entities`, streamed: the digest of the rows as they are, and their count.
pub(super) async fn derive(
    client: &impl GenericClient,
    schema: &str,
    err: ErrFn<'_>,
) -> Result<(ReplicaDigest, u64)> {
    let context = "deriving the replica digest from the entities";
    let rows = client
        .query_raw(
            &*in_schema(
                "SELECT entity_key, event_ulid, deleted_at IS NOT NULL, payload->>'sha256'
                 FROM lib_shared.entities",
                schema,
            ),
            std::iter::empty::<&(dyn tokio_postgres::types::ToSql + Sync)>(),
        )
        .await
        .map_err(|e| err(context, e))?;
    let mut rows = Box::pin(rows);
    let mut digest = ReplicaDigest::EMPTY;
    let mut count = 0;
    while let Some(row) = futures_util::StreamExt::next(&mut rows).await {
        let row = row.map_err(|e| err(context, e))?;
        let key: &str = row.get(0);
        let ulid: &str = row.get(1);
        let deleted: bool = row.get(2);
        let sha256: Option<&str> = row.get(3);
        digest.toggle(ReplicaDigest::leaf(key, ulid, deleted, sha256));
        count += 1;
    }
    Ok((digest, count))
}

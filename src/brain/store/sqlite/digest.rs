//! The replica digest of `entities` in the SQLite store: kept in `replica_digest` by each ingest,
//! derived from the rows at start ([`crate::brain::store::BrainStore::rederive_digest`]).

use rusqlite::{Connection, OptionalExtension};

use super::sql_err;
use crate::brain::store::corrupt_digest;
use crate::brain::Result;
use crate::model::digest::ReplicaDigest;

/// The kept digest; `None` before the brain first derived it.
pub(super) fn kept(conn: &Connection) -> Result<Option<ReplicaDigest>> {
    let text: Option<String> = conn
        .prepare_cached("SELECT digest FROM replica_digest WHERE id = 1")
        .and_then(|mut s| s.query_row([], |r| r.get(0)).optional())
        .map_err(|e| sql_err("reading the replica digest", e))?;
    text.map(|t| ReplicaDigest::from_hex(&t).ok_or_else(|| corrupt_digest(&t)))
        .transpose()
}

pub(super) fn save(conn: &Connection, digest: &ReplicaDigest) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO replica_digest (id, digest) VALUES (1, ?1)
         ON CONFLICT(id) DO UPDATE SET digest = excluded.digest",
    )
    .and_then(|mut s| s.execute([digest.to_hex()]))
    .map_err(|e| sql_err("writing the replica digest", e))?;
    Ok(())
}

/// A full pass over `entities`: the digest of the rows as they are, and how many were read.
pub(super) fn derive(conn: &Connection) -> Result<(ReplicaDigest, u64)> {
    let err = |e| sql_err("deriving the replica digest from the entities", e);
    let mut stmt = conn
        .prepare(
            "SELECT entity_key, event_ulid, deleted_at IS NOT NULL,
                    json_extract(payload, '$.sha256')
             FROM entities",
        )
        .map_err(err)?;
    let mut rows = stmt.query([]).map_err(err)?;
    let mut digest = ReplicaDigest::EMPTY;
    let mut count = 0;
    while let Some(row) = rows.next().map_err(err)? {
        let key: String = row.get(0).map_err(err)?;
        let ulid: String = row.get(1).map_err(err)?;
        let deleted: bool = row.get(2).map_err(err)?;
        // A payload whose sha256 is not text (none validated in) counts as having none.
        let sha256: Option<String> = row.get(3).unwrap_or(None);
        digest.toggle(ReplicaDigest::leaf(&key, &ulid, deleted, sha256.as_deref()));
        count += 1;
    }
    Ok((digest, count))
}

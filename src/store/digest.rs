//! The replica digest of the shared view (`model::digest`): kept in `lib_kv` at every commit
//! that changes a winner (the batch XORs each change into a delta, written once at commit), and
//! re-derived from the rows at start and by `agent doctor`, so that a replica damaged outside
//! the agent (a disk error, a hand edit) is found: the kept digest then no longer matches.

use rusqlite::Connection;

use super::kv::{self, REPLICA_DIGEST};
use super::{Batch, Context, Result, Store, StoreError};
use crate::model::digest::ReplicaDigest;

/// What re-deriving the digest found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DigestCheck {
    /// The digest the commits kept; `None` in a database from before digests were kept.
    pub kept: Option<ReplicaDigest>,
    /// The digest of the rows as they are.
    pub derived: ReplicaDigest,
    /// Rows read.
    pub rows: u64,
}

impl DigestCheck {
    /// The rows are what the agent's own commits made of them (or no digest was kept yet).
    pub fn matches(&self) -> bool {
        self.kept.is_none_or(|kept| kept == self.derived)
    }
}

/// The kept digest; `None` in a database from before digests were kept.
fn kept(conn: &Connection) -> Result<Option<ReplicaDigest>> {
    match kv::get(conn, REPLICA_DIGEST)? {
        None => Ok(None),
        Some(text) => ReplicaDigest::from_hex(&text)
            .map(Some)
            .ok_or_else(|| StoreError::Corrupt {
                context: format!("lib_kv {REPLICA_DIGEST}"),
                detail: format!("{text:?} is not 64 hex digits"),
            }),
    }
}

/// A full pass over `lib_files`. A row adopted from LIB v1.0 that no event has touched has no
/// winner ULID: no replica holds it as an entity, and it is left out.
fn derive(conn: &Connection) -> Result<(ReplicaDigest, u64)> {
    let context = || "re-deriving the replica digest from lib_files".to_owned();
    let mut stmt = conn
        .prepare(
            "SELECT path, event_ulid, deleted_at IS NOT NULL, sha256 FROM lib_files
             WHERE event_ulid IS NOT NULL",
        )
        .ctx(context)?;
    let mut rows = stmt.query([]).ctx(context)?;
    let mut digest = ReplicaDigest::EMPTY;
    let mut count = 0;
    while let Some(row) = rows.next().ctx(context)? {
        let key: String = row.get(0).ctx(context)?;
        let ulid: String = row.get(1).ctx(context)?;
        let deleted: bool = row.get(2).ctx(context)?;
        let sha256: Option<String> = row.get(3).ctx(context)?;
        digest.toggle(ReplicaDigest::leaf(&key, &ulid, deleted, sha256.as_deref()));
        count += 1;
    }
    Ok((digest, count))
}

impl Store {
    /// The digest of the shared view, as the commits kept it; derived from the rows when none
    /// was kept yet (a database from before digests).
    pub fn replica_digest(&self) -> Result<ReplicaDigest> {
        match kept(&self.conn)? {
            Some(digest) => Ok(digest),
            None => derive(&self.conn).map(|(digest, _)| digest),
        }
    }

    /// Re-derives the digest from the rows (about a second per million rows) and compares it
    /// with the kept one, in one read transaction. Changes nothing.
    pub fn check_replica_digest(&self) -> Result<DigestCheck> {
        let tx = self.read_transaction()?;
        let kept = kept(&self.conn)?;
        let (derived, rows) = derive(&self.conn)?;
        drop(tx);
        Ok(DigestCheck {
            kept,
            derived,
            rows,
        })
    }

    /// [`Store::check_replica_digest`], then keeps the derived digest: the one a pull reports
    /// must describe the rows as they are, so that a damaged replica shows as diverged.
    pub fn rederive_replica_digest(&mut self) -> Result<DigestCheck> {
        let batch = self.batch()?;
        let kept = kept(&batch.tx)?;
        let (derived, rows) = derive(&batch.tx)?;
        if kept != Some(derived) {
            kv::set(&batch.tx, REPLICA_DIGEST, &derived.to_hex())?;
        }
        batch.commit()?;
        Ok(DigestCheck {
            kept,
            derived,
            rows,
        })
    }

    /// Events of this device the brain has not acknowledged: not pushed yet, or refused and
    /// parked. A pull reports them (`x-lib-pending`): until they are in, digests differ.
    pub fn unacknowledged(&self) -> Result<i64> {
        self.conn
            .query_row(
                "SELECT count(*) FROM lib_outbox WHERE pushed_at IS NULL",
                [],
                |r| r.get(0),
            )
            .ctx(|| "counting the unacknowledged outbox events".into())
    }
}

impl Batch<'_> {
    /// Notes that the winner of `key` changed from `old` (none: a new entity) to `new`.
    pub(super) fn note_winner(
        &self,
        key: &str,
        old: Option<&crate::model::Version>,
        new: &crate::model::Version,
    ) {
        let mut delta = self.digest_delta.get();
        delta.replace(key, old, new);
        self.digest_delta.set(delta);
    }

    /// Writes the batch's changes into the kept digest (at commit, once).
    pub(super) fn save_digest(&self) -> Result<()> {
        let delta = self.digest_delta.get();
        if delta.is_empty() {
            return Ok(());
        }
        let digest = match kept(&self.tx)? {
            Some(mut digest) => {
                digest.toggle(delta);
                digest
            }
            // The first commit of a database from before digests: the rows, this batch's
            // changes included, are the whole story.
            None => derive(&self.tx)?.0,
        };
        kv::set(&self.tx, REPLICA_DIGEST, &digest.to_hex())
    }

    /// Empties the shared view and its digest (a re-seed that replaces it).
    pub(super) fn forget_digest(&self) -> Result<()> {
        self.digest_delta.set(ReplicaDigest::EMPTY);
        kv::set(&self.tx, REPLICA_DIGEST, &ReplicaDigest::EMPTY.to_hex())
    }
}

//! The observed state of each path on this device's disk (`lib_observed`): what change
//! detection compares the disk to, never the shared view.

use super::{Batch, Param, Prepared};
use crate::store::{Context, Result};

/// What this device last saw of a path on its own disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub bytes: u64,
    pub mtime_ns: i64,
    pub inode: u64,
    pub sha256: String,
}

impl<'a> Batch<'a> {
    pub fn observed(&self, key: &str) -> Result<Option<Observed>> {
        let mut stmt = self
            .stmts
            .observed_get
            .get(self.conn)
            .ctx(|| "preparing observed lookup".into())?;
        crate::store::read::observed_with(&mut stmt, key)
    }

    pub fn put_observed(&self, key: &str, observed: &Observed) -> Result<()> {
        self.write_observed(&self.stmts.observed_put, key, observed)?;
        Ok(())
    }

    /// Records the observed state of a path this device has no row for. False, and nothing
    /// written, when it has one after all.
    pub fn insert_observed(&self, key: &str, observed: &Observed) -> Result<bool> {
        Ok(self.write_observed(&self.stmts.observed_insert, key, observed)? == 1)
    }

    /// Runs an insert of an observed row; the rows it changed.
    fn write_observed(&self, stmt: &Prepared<'a>, key: &str, observed: &Observed) -> Result<usize> {
        let now = self.now();
        stmt.execute(
            self.conn,
            &[
                Param::Text(Some(key)),
                Param::Int(Some(observed.bytes as i64)),
                Param::Int(Some(observed.mtime_ns)),
                Param::Int(Some(observed.inode as i64)),
                Param::Text(Some(&observed.sha256)),
                Param::Same(Some(&now)),
            ],
        )
        .ctx(|| format!("recording observed state of {key}"))
    }

    pub fn forget_observed(&self, key: &str) -> Result<()> {
        let mut stmt = self
            .stmts
            .observed_forget
            .get(self.conn)
            .ctx(|| "preparing observed delete".into())?;
        stmt.execute([key])
            .ctx(|| format!("forgetting observed state of {key}"))?;
        Ok(())
    }
}

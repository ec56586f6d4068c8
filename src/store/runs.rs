//! `lib_runs`: one row per scan, opened when it starts and closed with its totals, for
//! `agent status` and LIB's tools.

use super::{Context, Result, Store};

/// What a scan counted, as `lib_runs` keeps it.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunTotals {
    pub seen: u64,
    pub hashed: u64,
    pub unchanged: u64,
    pub upserted: u64,
    pub deleted: u64,
    pub bytes_hashed: u64,
    pub errors: u64,
}

impl Store {
    /// Records that a scan (of every library, or of `library`) started; the run's id.
    pub fn start_run(&mut self, library: Option<&str>) -> Result<i64> {
        let batch = self.batch()?;
        batch
            .tx
            .execute(
                "INSERT INTO lib_runs (started_at, library, status) VALUES (?1, ?2, 'running')",
                (batch.now(), library),
            )
            .ctx(|| "recording the scan in lib_runs".into())?;
        let id = batch.tx.last_insert_rowid();
        batch.commit()?;
        Ok(id)
    }

    /// Closes run `id` with its totals: "ok", or "partial" with what went wrong in `message`.
    pub fn finish_run(&mut self, id: i64, t: &RunTotals, ok: bool, message: &str) -> Result<()> {
        let batch = self.batch()?;
        batch
            .tx
            .execute(
                "UPDATE lib_runs SET ended_at = ?2, status = ?3, files_seen = ?4, files_hashed = ?5,
                   files_unchanged = ?6, files_upserted = ?7, files_deleted = ?8, bytes_hashed = ?9,
                   errors = ?10, message = ?11 WHERE id = ?1",
                rusqlite::params![
                    id,
                    batch.now(),
                    if ok { "ok" } else { "partial" },
                    t.seen as i64,
                    t.hashed as i64,
                    t.unchanged as i64,
                    t.upserted as i64,
                    t.deleted as i64,
                    t.bytes_hashed as i64,
                    t.errors as i64,
                    (!message.is_empty()).then_some(message),
                ],
            )
            .ctx(|| "finishing the scan in lib_runs".into())?;
        batch.commit()
    }
}

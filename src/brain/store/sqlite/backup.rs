//! `agent brain backup PATH`: a consistent copy of a SQLite brain while it serves, through
//! SQLite's online backup API in one step (one read transaction: in WAL mode the brain's writes
//! go on meanwhile, and the copy is the database as of one commit). The copy is written beside
//! its final name and renamed when complete and checked, so a file at PATH is always a whole
//! backup; it is 0600, as the brain's own file (it holds the text of every file).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("no brain database at {0}")]
    NoSource(PathBuf),
    #[error("{0} exists already: back up to a new name (a backup never overwrites a file)")]
    Exists(PathBuf),
    #[error("backing up {from} to {to}: {reason}")]
    Failed {
        from: PathBuf,
        to: PathBuf,
        reason: String,
    },
}

/// How long the copy waits for a lock another process holds, and how often it asks again.
const BUSY_PATIENCE: Duration = Duration::from_secs(30);
const BUSY_PAUSE: Duration = Duration::from_millis(50);

/// What was copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupReport {
    pub bytes: u64,
    /// The newest event id in the copy: devices whose cursor is past it re-seed after a restore.
    pub head: i64,
}

/// Copies the brain database `from` to the new file `to`.
pub fn backup(from: &Path, to: &Path) -> Result<BackupReport, BackupError> {
    if !from.is_file() {
        return Err(BackupError::NoSource(from.to_owned()));
    }
    if to.exists() {
        return Err(BackupError::Exists(to.to_owned()));
    }
    let failed = |reason: String| BackupError::Failed {
        from: from.to_owned(),
        to: to.to_owned(),
        reason,
    };
    let partial = partial_name(to);
    // A partial file of an earlier attempt that stopped half-way is ours to replace.
    let _ = std::fs::remove_file(&partial);
    crate::private::create_file(&partial).map_err(|e| failed(e.to_string()))?;
    let result = copy(from, &partial).and_then(|report| {
        std::fs::rename(&partial, to).map_err(|e| format!("renaming the finished copy: {e}"))?;
        Ok(report)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result.map_err(failed)
}

fn partial_name(to: &Path) -> PathBuf {
    let mut name = to.file_name().unwrap_or_default().to_owned();
    name.push(".partial");
    to.with_file_name(name)
}

fn copy(from: &Path, to: &Path) -> Result<BackupReport, String> {
    // Not SqliteStore::open: a backup migrates nothing and creates nothing at the source.
    let source = Connection::open_with_flags(
        from,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("opening the brain database: {e}"))?;
    source
        .busy_timeout(Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    let mut target = Connection::open(to).map_err(|e| format!("creating the copy: {e}"))?;
    {
        let backup = rusqlite::backup::Backup::new(&source, &mut target)
            .map_err(|e| format!("starting the backup: {e}"))?;
        // -1: every page in one step, so the copy is one consistent snapshot. (Not
        // run_to_completion, which asserts a positive page count.)
        let mut waited = Duration::ZERO;
        loop {
            use rusqlite::backup::StepResult;
            match backup.step(-1).map_err(|e| format!("copying: {e}"))? {
                StepResult::Done => break,
                StepResult::More => {}
                StepResult::Busy | StepResult::Locked if waited < BUSY_PATIENCE => {
                    std::thread::sleep(BUSY_PAUSE);
                    waited += BUSY_PAUSE;
                }
                _ => {
                    return Err(format!(
                        "the database stayed locked for {}",
                        humantime::format_duration(BUSY_PATIENCE)
                    ))
                }
            }
        }
    }
    let check: String = target
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| format!("checking the copy: {e}"))?;
    if check != "ok" {
        return Err(format!("the copy does not check out: {check}"));
    }
    let head: i64 = target
        .query_row("SELECT coalesce(max(id), 0) FROM events", [], |r| r.get(0))
        .map_err(|e| {
            format!(
                "reading the copy's newest event (is {} a brain database?): {e}",
                from.display()
            )
        })?;
    drop(target);
    let bytes = std::fs::metadata(to).map(|m| m.len()).unwrap_or(0);
    Ok(BackupReport { bytes, head })
}

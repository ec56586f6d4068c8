//! How `agent run` fails.

use std::path::PathBuf;

use crate::index::scan;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(
        "another `agent run` is already using database {db} (lock {lock}{pid}); stop it first"
    )]
    AlreadyRunning {
        db: PathBuf,
        lock: PathBuf,
        pid: String,
    },
    #[error("cannot create the run lock {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the file watcher: {0}")]
    Watcher(#[from] notify::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Scan(#[from] scan::ScanError),
    #[error(transparent)]
    Sync(#[from] crate::sync::SyncError),
    #[error("cannot serve metrics on {addr} ([metrics] listen): {reason}")]
    Metrics {
        addr: std::net::SocketAddr,
        reason: String,
    },
    #[error("no libraries configured: `agent library add PATH` keeps one, or name folders: `agent run PATH`")]
    NoLibraries,
}

impl DaemonError {
    /// The store error inside, if this is one (from the store itself or from a scan).
    pub fn store_error(&self) -> Option<&StoreError> {
        match self {
            DaemonError::Store(e) | DaemonError::Scan(scan::ScanError::Store(e)) => Some(e),
            _ => None,
        }
    }

    pub fn is_disk_full(&self) -> bool {
        self.store_error().is_some_and(StoreError::is_disk_full)
    }
}

//! The run lock: one `agent run` per database.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::error::DaemonError;

/// The lock that keeps a second `agent run` off the same database. Held for the process's life;
/// the kernel releases it if the process dies.
pub struct RunLock {
    _file: File,
}

/// The lock file beside the database: its path with `.lock` appended.
pub fn lock_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

impl RunLock {
    pub fn acquire(db: &Path) -> Result<RunLock, DaemonError> {
        use std::io::{Read, Seek, Write};
        let path = lock_path(db);
        let mut options = File::options();
        options.read(true).write(true).create(true).truncate(false);
        // Private like the database beside it.
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&path).map_err(|source| DaemonError::Lock {
            path: path.clone(),
            source,
        })?;
        if file.try_lock().is_err() {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            let pid = if pid.is_empty() {
                String::new()
            } else {
                format!(", held by pid {pid}")
            };
            return Err(DaemonError::AlreadyRunning {
                db: db.to_owned(),
                lock: path,
                pid,
            });
        }
        // The pid is only for the message above; failing to write it changes nothing.
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = write!(file, "{}", std::process::id());
        let _ = file.flush();
        Ok(RunLock { _file: file })
    }

    /// Whether some process holds the lock now (for `agent status`).
    pub fn is_held(db: &Path) -> bool {
        match File::options().read(true).write(true).open(lock_path(db)) {
            Ok(file) => file.try_lock().is_err(),
            Err(_) => false,
        }
    }
}

//! A full disk under the database pauses indexing instead of ending the run: what could not be
//! written is tried again every [`DISK_FULL_RETRY`], and the user is told once when the disk
//! fills and once when space is back.

use std::path::Path;
use std::time::{Duration, Instant};

use super::error::DaemonError;
use crate::index::scan::ScanError;
use crate::store::StoreError;
use crate::sync::retry::{self, SayOnce};

/// How long `agent run` waits before indexing again when the disk under its database is full.
pub const DISK_FULL_RETRY: Duration = Duration::from_secs(5);

/// Whether the disk under the database is full, and the rescan it held back.
#[derive(Debug, Default)]
pub struct DiskFull {
    say: SayOnce,
    /// A rescan that the full disk held back, due then.
    rescan_due: Option<Instant>,
}

impl DiskFull {
    pub fn is_full(&self) -> bool {
        self.say.is_failing()
    }

    /// `Some` result on success, `None` on a full disk (the caller retries later); any other
    /// error is returned.
    pub fn check<T>(
        &mut self,
        db: &Path,
        result: Result<T, DaemonError>,
    ) -> Result<Option<T>, DaemonError> {
        let now = Instant::now();
        match result {
            Ok(value) => {
                // A small write that fits on a nearly full disk is not space back: only once
                // the held work was due again (a retry) is the outage over, so the user is not
                // told "full", "back", "full" within a second.
                let retried = self
                    .say
                    .failing_since()
                    .is_some_and(|since| now.saturating_duration_since(since) >= DISK_FULL_RETRY);
                if !retried {
                    return Ok(Some(value));
                }
                if let Some(outage) = self.say.recovered(now) {
                    // A warning, so that it shows by default like the error it ends.
                    tracing::warn!(
                        "space is back on the disk holding the database after {}; indexing resumed",
                        retry::outage(outage)
                    );
                }
                Ok(Some(value))
            }
            Err(e) if e.is_disk_full() => {
                if self.say.failed(now) {
                    let what = match e {
                        DaemonError::Store(e) | DaemonError::Scan(ScanError::Store(e)) => {
                            match e.on_disk_of(db) {
                                StoreError::DiskFull { path, context, .. } => format!(
                                    "the disk holding database {} is full ({context})",
                                    path.display()
                                ),
                                other => other.to_string(),
                            }
                        }
                        other => other.to_string(),
                    };
                    tracing::error!(
                        "{what}; nothing was half-written or lost: free some space; changes stay \
                         queued and are indexed once there is room (trying again every {} s)",
                        DISK_FULL_RETRY.as_secs()
                    );
                }
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// A rescan failed on the full disk at `now`: do it again (all libraries) later.
    pub fn hold_rescan(&mut self, now: Instant) {
        self.rescan_due = Some(now + DISK_FULL_RETRY);
    }

    /// When the held-back rescan is due, if there is one.
    pub fn wake_at(&self) -> Option<Instant> {
        self.rescan_due
    }

    /// Whether the held-back rescan is due at `now`; it is then taken.
    pub fn take_rescan(&mut self, now: Instant) -> bool {
        let due = self.rescan_due.is_some_and(|due| now >= due);
        if due {
            self.rescan_due = None;
        }
        due
    }
}

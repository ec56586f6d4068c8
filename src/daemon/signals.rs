//! What the watcher said during one wake-up of the daemon: changed paths (handed to the
//! debouncer), rescans asked for, and folders the inotify watch limit left unwatched.

use std::path::PathBuf;
use std::time::Duration;

use crossbeam_channel::Receiver;

use crate::watch::{self, Debouncer, FsSignal};

/// How long the daemon lets events gather after a wake-up before it handles them.
const GATHER: Duration = Duration::from_millis(5);

/// The signals of one wake-up, with their changed paths already in the debouncer.
#[derive(Debug, Default)]
pub struct Signals {
    /// Some path changed.
    pub changes: bool,
    /// Events were lost (the kernel's queue, ours, or a watcher error): rescan every library.
    pub rescan_all: bool,
    /// Paths whose watch failed on the inotify watch limit.
    pub limit_hit: Vec<PathBuf>,
}

impl Signals {
    /// Takes one signal: changed paths go to `debouncer`, the rest is noted.
    pub fn take(&mut self, signal: FsSignal, debouncer: &mut Debouncer) {
        match signal {
            FsSignal::Changed { paths, at, settle } => {
                for path in paths {
                    debouncer.add(path, at, settle);
                }
                self.changes = true;
            }
            FsSignal::Rescan => self.rescan_all = true,
            FsSignal::Error(e) if watch::is_watch_limit(&e) => self.limit_hit.extend(e.paths),
            FsSignal::Error(e) => {
                tracing::warn!("file watcher: {e}; rescanning to be sure nothing was missed");
                self.rescan_all = true;
            }
        }
    }

    /// Takes what else is queued. After a change it first lets what follows arrive, so that a
    /// burst costs one wake-up per slice, not one per event (on a small machine the wake-ups
    /// cost more than the events).
    pub fn take_queued(&mut self, fs_rx: &Receiver<FsSignal>, debouncer: &mut Debouncer) {
        if self.changes {
            std::thread::sleep(GATHER);
        }
        for signal in fs_rx.try_iter() {
            self.take(signal, debouncer);
        }
    }
}

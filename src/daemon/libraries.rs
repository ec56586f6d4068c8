//! How each library is kept current: watched, or, when it cannot be (root unavailable, inotify
//! watch limit, another watcher error), polled: rescanned every poll interval, and watched again
//! once its root is back. A change in a polled library may be noticed late, but never missed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::state::{LibraryMode, RunState};
use crate::config::{Config, LibraryConfig};
use crate::index::ignore_rules;
use crate::watch::{self, FsWatcher};

/// The watcher, and when the polled libraries are next rescanned.
pub struct Watches {
    watcher: FsWatcher,
    poll: Duration,
    next_poll: Instant,
}

impl Watches {
    /// Polls every `poll`, the first time `poll` after `now`.
    pub fn new(watcher: FsWatcher, poll: Duration, now: Instant) -> Watches {
        Watches {
            watcher,
            poll,
            next_poll: now + poll,
        }
    }

    /// Watches every library, or notes why it is polled instead. True when a mode changed.
    pub fn watch_all(&mut self, config: &Config, state: &mut RunState) -> bool {
        let mut changed = false;
        for library in &config.libraries {
            let mode = self.start_watching(library);
            changed |= state.set_mode(&library.name, mode);
        }
        changed
    }

    /// Watches one library (one the config file just added), or says why it is polled.
    pub fn watch_one(&mut self, library: &LibraryConfig) -> LibraryMode {
        self.start_watching(library)
    }

    /// Brings the watches up to date with the changed `paths`, before they are indexed: a
    /// folder created or moved in is watched (with its folders), one gone is forgotten, and a
    /// changed ignore file re-decides which folders below its own are watched. Returns the
    /// paths whose watch hit the inotify limit (for [`Watches::over_limit`]).
    pub fn follow(&mut self, config: &Config, paths: &[PathBuf], state: &RunState) -> Vec<PathBuf> {
        let mut limit_hit = Vec::new();
        for path in paths {
            // The innermost library holding the path, as the indexer decides.
            let Some(library) = config
                .libraries
                .iter()
                .filter(|l| path.starts_with(&l.path))
                .max_by_key(|l| l.path.as_os_str().len())
            else {
                continue;
            };
            if state.is_polled(&library.name) {
                continue;
            }
            let dir = match ignore_rules::ignore_file_folder(library, path) {
                Some(folder) => folder,
                None if path.is_dir() || self.watcher.is_watched(path) => path,
                None => continue,
            };
            if let Err(e) = self.watcher.follow(library, dir) {
                if watch::is_watch_limit(&e) {
                    limit_hit.push(path.clone());
                } else {
                    tracing::warn!(path = ?dir, "cannot watch: {e}");
                }
            }
        }
        limit_hit
    }

    /// Stops watching a root (a library the config file no longer names).
    pub fn stop_watching(&mut self, root: &Path) {
        self.watcher.unwatch(root);
    }

    /// True (once) when the watcher dropped events because its queue was full.
    pub fn take_overflow(&self) -> bool {
        self.watcher.take_overflow()
    }

    /// The libraries holding `paths`, whose watch hit the inotify limit, are polled instead.
    /// True when a mode changed.
    pub fn over_limit(&mut self, config: &Config, paths: &[PathBuf], state: &mut RunState) -> bool {
        let mut changed = false;
        for path in paths {
            for library in &config.libraries {
                if path.starts_with(&library.path) {
                    let mode = watch_limit_mode(library, self.poll);
                    self.watcher.unwatch(&library.path);
                    changed |= state.set_mode(&library.name, mode);
                }
            }
        }
        changed
    }

    /// Libraries whose root went away (unmounted, deleted) lost their watch with it: poll them
    /// until the root is back. True when a mode changed.
    pub fn unavailable(&mut self, config: &Config, names: &[String], state: &mut RunState) -> bool {
        let mut changed = false;
        for name in names {
            let Some(library) = config.library(name) else {
                continue;
            };
            self.watcher.unwatch(&library.path);
            changed |= state.set_mode(name, unavailable_mode(&library.path, self.poll));
        }
        changed
    }

    /// The next poll comes `poll` after `now`.
    pub fn poll_from(&mut self, now: Instant) {
        self.next_poll = now + self.poll;
    }

    /// When the polled libraries are next rescanned.
    pub fn next_poll(&self) -> Instant {
        self.next_poll
    }

    /// At `now`, the polled libraries due for their rescan, each watched again if it can be
    /// now (a root that came back, remounted). The next poll is then `poll` away.
    pub fn take_polled(
        &mut self,
        now: Instant,
        config: &Config,
        state: &mut RunState,
    ) -> (Vec<String>, bool) {
        if now < self.next_poll {
            return (Vec::new(), false);
        }
        self.next_poll = now + self.poll;
        let mut due = Vec::new();
        let mut changed = false;
        for library in &config.libraries {
            if !state.is_polled(&library.name) {
                continue;
            }
            let mode = self.start_watching(library);
            changed |= state.set_mode(&library.name, mode);
            due.push(library.name.clone());
        }
        (due, changed)
    }

    fn start_watching(&mut self, library: &LibraryConfig) -> LibraryMode {
        let root = &library.path;
        if !root.is_dir() {
            return unavailable_mode(root, self.poll);
        }
        match self.watcher.watch(library) {
            Ok(()) => LibraryMode::Watching,
            Err(e) if watch::is_watch_limit(&e) => {
                self.watcher.unwatch(root);
                watch_limit_mode(library, self.poll)
            }
            Err(e) => {
                let reason = format!(
                    "cannot watch {} ({e}); rescanning it every {}",
                    root.display(),
                    humantime::format_duration(self.poll)
                );
                LibraryMode::Polling { reason }
            }
        }
    }
}

fn unavailable_mode(root: &Path, poll: Duration) -> LibraryMode {
    let reason = format!(
        "root {} is unavailable (unmounted?); rescanning it every {} until it is back",
        root.display(),
        humantime::format_duration(poll)
    );
    LibraryMode::Polling { reason }
}

/// Says, with the numbers a user needs to fix it, that the inotify watch limit is reached (once:
/// [`RunState::set_mode`] says a mode only when it changes).
fn watch_limit_mode(library: &LibraryConfig, poll: Duration) -> LibraryMode {
    let name = &library.name;
    let folders = watch::folders_to_watch(library);
    let limit = watch::watch_limit().map_or_else(|| "?".to_owned(), |l| l.to_string());
    let reason = format!(
        "the inotify watch limit (fs.inotify.max_user_watches = {limit}) is reached; library {name} needs \
         {folders} more; raise it (e.g. `sysctl fs.inotify.max_user_watches={}`); meanwhile it is rescanned \
         every {}",
        watch::suggested_watch_limit(folders, watch::watch_limit()),
        humantime::format_duration(poll)
    );
    LibraryMode::Polling { reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watch_limit_message_names_the_setting_and_the_numbers() {
        let dir = tempfile::tempdir().expect("tempdir");
        for d in ["a", "a/b", "c", "ignored/x"] {
            std::fs::create_dir_all(dir.path().join(d)).expect("mkdir");
        }
        std::fs::write(dir.path().join(".libignore"), "ignored/\n").expect("write");
        let library = LibraryConfig::new(
            "notes".into(),
            dir.path().to_path_buf(),
            vec!["**/*".into()],
            Vec::new(),
        )
        .expect("library");
        let LibraryMode::Polling { reason } = watch_limit_mode(&library, Duration::from_secs(60))
        else {
            panic!("a library over the limit is polled")
        };
        assert!(reason.contains("fs.inotify.max_user_watches"), "{reason}");
        assert!(
            reason.contains("needs 4 more"),
            "the root and its three folders not ignored: {reason}"
        );
        assert!(reason.contains("rescanned every 1m"), "{reason}");
    }

    #[test]
    fn an_enospc_from_inotify_is_the_watch_limit() {
        let e = notify::Error::io(std::io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(watch::is_watch_limit(&e));
        assert!(watch::is_watch_limit(&notify::Error::new(
            notify::ErrorKind::MaxFilesWatch
        )));
        assert!(!watch::is_watch_limit(&notify::Error::generic("other")));
    }
}

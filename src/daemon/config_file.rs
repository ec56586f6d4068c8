//! The config file a running agent was started from, looked at every [`CHECK_EVERY`]: when it
//! changed (`agent library add` or `remove`, or an edit by hand) and still loads, its libraries
//! take effect without a restart. One stat every few seconds costs nothing an idle machine
//! notices, and, unlike a watch on the file's folder, also sees a file that a rename replaced
//! or a folder that did not exist at start.
//!
//! A file that no longer loads, or is gone, changes nothing: the running libraries stay, and
//! that is said once (a half-saved edit must not stop the watching of every library).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Config, LibraryConfig};

/// How often the file is looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Loads the configuration as `agent run` did at start (the file, the environment, the flags).
pub type Load = Arc<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// What identifies one version of the file: a rename over it changes the inode, an edit in
/// place the size or the times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    inode: u64,
    bytes: u64,
    mtime_ns: i64,
    ctime_ns: i64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        inode: meta.ino(),
        bytes: meta.size(),
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
    })
}

/// What [`super::RunOptions`] carries to reload the configuration: the file and how to load it.
#[derive(Clone)]
pub struct Reload {
    pub path: PathBuf,
    pub load: Load,
}

impl std::fmt::Debug for Reload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reload")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

pub struct ConfigFile {
    path: PathBuf,
    load: Load,
    /// The version in effect (or last said to be refused), once looked at.
    seen: Option<Option<Stamp>>,
    next_check: Instant,
}

impl ConfigFile {
    /// Follows `path` from `now` on. The first check loads the file whatever its stamp: it may
    /// have changed after `agent run` loaded it and before this (during the start-up scan).
    pub fn new(path: PathBuf, load: Load, now: Instant) -> ConfigFile {
        ConfigFile {
            seen: None,
            path,
            load,
            next_check: now + CHECK_EVERY,
        }
    }

    pub fn next_check(&self) -> Instant {
        self.next_check
    }

    /// At `now`, when the check is due: the new configuration if the file changed and loads.
    pub fn check(&mut self, now: Instant) -> Option<Config> {
        if now < self.next_check {
            return None;
        }
        self.next_check = now + CHECK_EVERY;
        let current = stamp(&self.path);
        let first = self.seen.is_none();
        if self.seen == Some(current) {
            return None;
        }
        self.seen = Some(current);
        if current.is_none() {
            if first {
                return None; // no file yet: `agent library add` may create it
            }
            tracing::warn!(
                "config {} is gone; the libraries it named are still watched",
                self.path.display()
            );
            return None;
        }
        match (self.load)() {
            Ok(config) => Some(config),
            Err(e) => {
                tracing::warn!("{e}; the libraries stay as they were until the file is fixed");
                None
            }
        }
    }
}

/// How the libraries of two configurations differ, by name: those to stop and those to start
/// (a library whose root or globs changed is both).
#[derive(Debug, Default)]
pub struct LibraryChanges {
    pub stopped: Vec<LibraryConfig>,
    pub started: Vec<String>,
}

impl LibraryChanges {
    pub fn between(old: &[LibraryConfig], new: &[LibraryConfig]) -> LibraryChanges {
        let same = |a: &LibraryConfig, b: &LibraryConfig| {
            a.path == b.path
                && a.include == b.include
                && a.exclude == b.exclude
                && a.respect_gitignore == b.respect_gitignore
        };
        let find = |list: &'_ [LibraryConfig], name: &str| -> Option<LibraryConfig> {
            list.iter().find(|l| l.name == name).cloned()
        };
        let stopped = old
            .iter()
            .filter(|o| find(new, &o.name).is_none_or(|n| !same(o, &n)))
            .cloned()
            .collect();
        let started = new
            .iter()
            .filter(|n| find(old, &n.name).is_none_or(|o| !same(&o, n)))
            .map(|n| n.name.clone())
            .collect();
        LibraryChanges { stopped, started }
    }

    pub fn is_empty(&self) -> bool {
        self.stopped.is_empty() && self.started.is_empty()
    }
}

/// The parts of the configuration besides the libraries that differ (they need a restart).
pub fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    // Compared through their Debug form: the sections hold no floats, and it is never shown.
    let differs =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    let mut parts = Vec::new();
    if differs(&old.store, &new.store) {
        parts.push("[store]");
    }
    if differs(&old.index, &new.index) {
        parts.push("[index]");
    }
    if differs(&old.watch, &new.watch) {
        parts.push("[watch]");
    }
    if differs(&old.sync, &new.sync) {
        parts.push("[sync]");
    }
    if differs(&old.metrics, &new.metrics) {
        parts.push("[metrics]");
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lib(name: &str, path: &str, include: &[&str]) -> LibraryConfig {
        LibraryConfig::new(
            name.into(),
            path.into(),
            include.iter().map(|g| (*g).to_owned()).collect(),
            Vec::new(),
        )
        .expect("library")
    }

    #[test]
    fn library_changes_name_what_to_stop_and_what_to_start() {
        let old = [
            lib("a", "/a", &["**/*"]),
            lib("b", "/b", &["**/*"]),
            lib("c", "/c", &["**/*"]),
        ];
        let new = [
            lib("a", "/a", &["**/*"]),
            lib("b", "/b2", &["**/*"]),
            lib("d", "/d", &["**/*"]),
        ];
        let changes = LibraryChanges::between(&old, &new);
        let stopped: Vec<&str> = changes.stopped.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(stopped, ["b", "c"], "b moved, c went");
        assert_eq!(changes.started, ["b", "d"], "b moved, d came");
        let globs = [lib("a", "/a", &["**/*.md"])];
        assert_eq!(LibraryChanges::between(&old[..1], &globs).started, ["a"]);
        assert!(LibraryChanges::between(&old, &old).is_empty());
    }

    #[test]
    fn the_file_is_looked_at_when_due_and_a_change_that_does_not_load_keeps_what_runs() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "").expect("write");
        let loads = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let load: Load = {
            let loads = loads.clone();
            let path = path.clone();
            Arc::new(move || {
                if loads.load(std::sync::atomic::Ordering::SeqCst) {
                    let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
                    Config::from_toml_str(&text, Some(&path), &|_| None, &Default::default())
                        .map_err(|e| e.to_string())
                } else {
                    Err("config: broken".into())
                }
            })
        };
        let start = Instant::now();
        let mut file = ConfigFile::new(path.clone(), load, start);
        assert!(file.check(start).is_none(), "not due yet");
        assert!(
            file.check(start + CHECK_EVERY).is_some(),
            "the first check loads it"
        );
        std::fs::write(&path, "[[library]]\nname = \"n\"\npath = \"/n\"\n").expect("write");
        assert!(file.check(start + CHECK_EVERY).is_none(), "not due yet");
        let config = file
            .check(start + 2 * CHECK_EVERY)
            .expect("changed and loads");
        assert_eq!(config.libraries.len(), 1);
        assert!(
            file.check(start + 3 * CHECK_EVERY).is_none(),
            "seen already"
        );
        loads.store(false, std::sync::atomic::Ordering::SeqCst);
        std::fs::write(&path, "[[library]]\nname = \"n\"\n").expect("write");
        assert!(
            file.check(start + 4 * CHECK_EVERY).is_none(),
            "refused: what runs stays"
        );
        std::fs::remove_file(&path).expect("remove");
        assert!(
            file.check(start + 5 * CHECK_EVERY).is_none(),
            "gone: what runs stays"
        );
    }
}

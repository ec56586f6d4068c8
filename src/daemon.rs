//! `agent run`: the background agent. It takes the database's run lock, starts watching every
//! library, then reconciles with a scan (so changes made while it was stopped, and during
//! start-up, are all caught), and from then on feeds the watcher's debounced paths to the indexer.
//!
//! Libraries it cannot watch (root unavailable, inotify watch limit) are rescanned periodically
//! instead: a change may be noticed late, but it is never missed.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver};

use crate::config::Config;
use crate::index::scan::{self, ScanOptions};
use crate::index::{self, Libraries, PathsOutcome};
use crate::model::event::now_rfc3339;
use crate::store::{Store, StoreError};
use crate::sync::agent::SyncAgent;
use crate::watch::{self, Debouncer, FsSignal, FsWatcher};

/// How often a library that cannot be watched is rescanned, by default.
pub const POLL_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// How often a library that cannot be watched is rescanned.
    pub poll_interval: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            poll_interval: POLL_INTERVAL,
        }
    }
}
/// How long the daemon lets events gather after a wake-up before it handles them.
const GATHER: Duration = Duration::from_millis(5);
/// Paths indexed per call, so a huge burst is committed progressively.
const MAX_PATHS_PER_BATCH: usize = 2_000;
/// The run state in `lib_kv` is rewritten at most this often while busy.
const STATE_INTERVAL: Duration = Duration::from_secs(1);
/// How long `agent run` waits before indexing again when the disk under its database is full.
const DISK_FULL_RETRY: Duration = Duration::from_secs(5);

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
    Filter(#[from] crate::filter::FilterError),
    #[error(transparent)]
    Sync(#[from] crate::sync::SyncError),
    #[error("no libraries configured: add a [[library]] to the config file, or name folders: `agent run PATH`")]
    NoLibraries,
}

/// The lock that keeps a second `agent run` off the same database. Held for the process's life;
/// the kernel releases it if the process dies.
pub struct RunLock {
    _file: File,
}

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

pub use crate::store::kv::{LibraryMode, RunState, RUN_STATE_KEY as STATE_KEY};

pub fn read_state(store: &Store) -> Result<Option<RunState>, StoreError> {
    store.run_state()
}

/// Runs until `shutdown` receives (or is dropped), then indexes what is pending and returns.
///
/// A full disk under the database pauses indexing: the changes stay queued (nothing half-written
/// stays: the observed state rolls back with a failed change) and are indexed once space is
/// back. Any other store error ends the run, and the start-up scan of the next run catches up.
pub fn run(
    config: &Config,
    store: &mut Store,
    shutdown: &Receiver<()>,
    options: &RunOptions,
) -> Result<RunState, DaemonError> {
    let path = store.path().to_owned();
    watch_and_index(config, store, shutdown, options).map_err(|e| match e {
        DaemonError::Store(e) => DaemonError::Store(e.on_disk_of(&path)),
        DaemonError::Scan(scan::ScanError::Store(e)) => {
            DaemonError::Scan(scan::ScanError::Store(e.on_disk_of(&path)))
        }
        other => other,
    })
}

fn watch_and_index(
    config: &Config,
    store: &mut Store,
    shutdown: &Receiver<()>,
    options: &RunOptions,
) -> Result<RunState, DaemonError> {
    let poll = options.poll_interval;
    if config.libraries.is_empty() {
        return Err(DaemonError::NoLibraries);
    }
    let _lock = RunLock::acquire(store.path())?;
    store.defer_sync()?;
    let libs = Libraries::new(config, store.path());
    let (mut watcher, fs_rx) = FsWatcher::new()?;
    let mut state = RunState {
        pid: std::process::id(),
        started_at: now_rfc3339(),
        state: "starting".into(),
        ..RunState::default()
    };
    // Watch first, then scan: a change made during the scan is then seen by one or the other.
    for library in &config.libraries {
        let mode = start_watching(&mut watcher, &library.path, &library.name, poll);
        set_mode(&mut state, &library.name, mode);
    }
    save_state(store, &mut state)?;
    let unavailable = reconcile(store, config, None)?;
    poll_unavailable(&mut watcher, config, unavailable, &mut state, poll);
    // Pushes what is queued (also from before this start), then follows every commit.
    let sync = SyncAgent::start(config, store.path())?;
    let changed = || {
        if let Some(sync) = &sync {
            sync.changed();
        }
    };
    state.state = "running".into();
    save_state(store, &mut state)?;
    tracing::info!(libraries = state.libraries.len(), "watching");

    let window = Duration::from_millis(config.watch.debounce_ms);
    let mut debouncer = Debouncer::new(window);
    let mut next_poll = Instant::now() + poll;
    let mut last_saved = Instant::now();
    let mut dirty = false;
    let mut full = DiskFull::default();
    let db = store.path().to_owned();
    // A rescan the full disk held back.
    let mut rescan_due: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let mut wake = debouncer
            .next_wake(now)
            .unwrap_or(now + poll)
            .min(next_poll);
        if dirty {
            wake = wake.min(last_saved + STATE_INTERVAL);
        }
        if let Some(due) = rescan_due {
            wake = wake.min(due);
        }
        let timeout = wake.saturating_duration_since(now);
        let mut rescan_all = false;
        let mut limit_hit: Vec<PathBuf> = Vec::new();
        let mut changes_seen = false;
        select! {
            recv(shutdown) -> _ => break,
            recv(fs_rx) -> signal => match signal {
                Ok(signal) => changes_seen |= handle(signal, &mut debouncer, &mut rescan_all, &mut limit_hit),
                Err(_) => break, // the watcher is gone: nothing more will come
            },
            default(timeout) => {}
        }
        if changes_seen {
            // Let what follows the first event arrive, then take it all in one go: a burst then
            // costs one wake-up per slice, not one per event (on a small machine the wake-ups
            // cost more than the events).
            std::thread::sleep(GATHER);
        }
        for signal in fs_rx.try_iter() {
            changes_seen |= handle(signal, &mut debouncer, &mut rescan_all, &mut limit_hit);
        }
        if changes_seen {
            state.last_change_at = Some(now_rfc3339());
        }
        if watcher.take_overflow() {
            rescan_all = true;
        }
        // A rescan the full disk held back, not news from the kernel.
        let retrying = !rescan_all && rescan_due.is_some_and(|due| Instant::now() >= due);
        if retrying {
            rescan_due = None;
            rescan_all = true;
        }
        for path in limit_hit {
            for library in &config.libraries {
                if path.starts_with(&library.path) {
                    let mode = watch_limit_mode(&library.path, &library.name, poll);
                    watcher.unwatch(&library.path);
                    dirty |= set_mode(&mut state, &library.name, mode);
                }
            }
        }
        if rescan_all {
            if !retrying {
                tracing::warn!(
                    "the kernel dropped file events (queue overflow); rescanning every library"
                );
            }
            let rescanned = reconcile(store, config, None);
            match full.check(&db, rescanned)? {
                Some(unavailable) => {
                    dirty |= poll_unavailable(&mut watcher, config, unavailable, &mut state, poll);
                    changed();
                }
                None => rescan_due = Some(Instant::now() + DISK_FULL_RETRY),
            }
        }

        let now = Instant::now();
        let mut due = debouncer.take_ready(now);
        while !due.is_empty() {
            let rest = due.split_off(due.len().min(MAX_PATHS_PER_BATCH));
            let started = Instant::now();
            let pending = |path: &Path| debouncer.is_pending(path);
            let indexed =
                index::index_paths_leaving(store, &libs, &due, &pending).map_err(DaemonError::from);
            let Some(outcome) = full.check(&db, indexed)? else {
                // Queued again as they are: indexing them later is idempotent.
                let retry = Instant::now() + DISK_FULL_RETRY;
                for path in due.into_iter().chain(rest) {
                    debouncer.add(path, retry, watch::Settle::Changed);
                }
                break;
            };
            note(&outcome, &mut state, started);
            if outcome.upserted + outcome.deleted > 0 {
                changed();
            }
            for name in &outcome.rescan {
                let rescanned = reconcile(store, config, Some(name));
                match full.check(&db, rescanned)? {
                    Some(unavailable) => {
                        poll_unavailable(&mut watcher, config, unavailable, &mut state, poll);
                    }
                    None => rescan_due = Some(Instant::now() + DISK_FULL_RETRY),
                }
            }
            due = rest;
            dirty = true;
        }

        if now >= next_poll {
            next_poll = now + poll;
            for library in &config.libraries {
                let Some(LibraryMode::Polling { .. }) = state.libraries.get(&library.name) else {
                    continue;
                };
                // A root that came back (remounted) is watched again.
                let mode = start_watching(&mut watcher, &library.path, &library.name, poll);
                dirty |= set_mode(&mut state, &library.name, mode);
                let rescanned = reconcile(store, config, Some(&library.name));
                match full.check(&db, rescanned)? {
                    Some(unavailable) => {
                        poll_unavailable(&mut watcher, config, unavailable, &mut state, poll);
                        changed();
                    }
                    None => rescan_due = Some(Instant::now() + DISK_FULL_RETRY),
                }
            }
        }
        if state.backlog != debouncer.len() {
            state.backlog = debouncer.len();
            dirty = true;
        }
        if dirty && last_saved.elapsed() >= STATE_INTERVAL && !full.is_full() {
            let saved = save_state(store, &mut state).map_err(DaemonError::from);
            if full.check(&db, saved)?.is_some() {
                dirty = false;
            }
            last_saved = Instant::now();
        }
    }

    // Shutdown: index what is pending, then record that we stopped.
    let pending = debouncer.take_all();
    for chunk in pending.chunks(MAX_PATHS_PER_BATCH) {
        let started = Instant::now();
        let outcome = index::index_paths(store, &libs, chunk)?;
        note(&outcome, &mut state, started);
    }
    if let Some(sync) = sync {
        sync.stop();
    }
    state.state = "stopped".into();
    state.backlog = 0;
    save_state(store, &mut state)?;
    tracing::info!(changes = state.changes_indexed, "stopped");
    Ok(state)
}

/// Libraries whose root went away (unmounted, deleted) lost their watch with it: poll them until
/// the root is back, then watch again.
fn poll_unavailable(
    watcher: &mut FsWatcher,
    config: &Config,
    names: Vec<String>,
    state: &mut RunState,
    poll: Duration,
) -> bool {
    let mut changed = false;
    for name in names {
        let Some(library) = config.library(&name) else {
            continue;
        };
        watcher.unwatch(&library.path);
        changed |= set_mode(state, &name, unavailable_mode(&library.path, poll));
    }
    changed
}

/// Records how a library is kept current, and says so when that changes (once, not at every
/// retry).
fn set_mode(state: &mut RunState, name: &str, mode: LibraryMode) -> bool {
    if state.libraries.get(name) == Some(&mode) {
        return false;
    }
    match &mode {
        LibraryMode::Polling { reason } => tracing::warn!(library = name, "{reason}"),
        LibraryMode::Watching if state.libraries.contains_key(name) => {
            tracing::info!(library = name, "watching again")
        }
        LibraryMode::Watching => {}
    }
    state.libraries.insert(name.to_owned(), mode);
    true
}

/// Takes one signal from the watcher; true when it was a change.
fn handle(
    signal: FsSignal,
    debouncer: &mut Debouncer,
    rescan_all: &mut bool,
    limit_hit: &mut Vec<PathBuf>,
) -> bool {
    match signal {
        FsSignal::Changed { paths, at, settle } => {
            for path in paths {
                debouncer.add(path, at, settle);
            }
            return true;
        }
        FsSignal::Rescan => *rescan_all = true,
        FsSignal::Error(e) if watch::is_watch_limit(&e) => limit_hit.extend(e.paths.clone()),
        FsSignal::Error(e) => {
            tracing::warn!("file watcher: {e}; rescanning to be sure nothing was missed");
            *rescan_all = true;
        }
    }
    false
}

fn note(outcome: &PathsOutcome, state: &mut RunState, started: Instant) {
    state.changes_indexed += outcome.upserted + outcome.deleted;
    state.renames_reused += outcome.reused;
    if outcome.upserted + outcome.deleted > 0 {
        tracing::info!(
            upserted = outcome.upserted,
            deleted = outcome.deleted,
            renamed = outcome.reused,
            errors = outcome.errors,
            ms = started.elapsed().as_millis() as u64,
            "indexed changes"
        );
    }
}

fn start_watching(watcher: &mut FsWatcher, root: &Path, name: &str, poll: Duration) -> LibraryMode {
    if !root.is_dir() {
        return unavailable_mode(root, poll);
    }
    match watcher.watch(root) {
        Ok(()) => LibraryMode::Watching,
        Err(e) if watch::is_watch_limit(&e) => {
            watcher.unwatch(root);
            watch_limit_mode(root, name, poll)
        }
        Err(e) => {
            let reason = format!(
                "cannot watch {} ({e}); rescanning it every {}",
                root.display(),
                humantime::format_duration(poll)
            );
            LibraryMode::Polling { reason }
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

/// Says once, with the numbers a user needs to fix it, that the inotify watch limit is reached.
fn watch_limit_mode(root: &Path, name: &str, poll: Duration) -> LibraryMode {
    let folders = walkdir::WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_dir())
        .count();
    let limit = watch::watch_limit().map_or_else(|| "?".to_owned(), |l| l.to_string());
    let reason = format!(
        "the inotify watch limit (fs.inotify.max_user_watches = {limit}) is reached; library {name} needs \
         {folders} more; raise it (e.g. `sysctl fs.inotify.max_user_watches={}`); meanwhile it is rescanned \
         every {}",
        (folders as u64 + watch::watch_limit().unwrap_or(8192)).next_power_of_two(),
        humantime::format_duration(poll)
    );
    LibraryMode::Polling { reason }
}

/// Rescans; returns the libraries refused because their root is unavailable (to be polled until
/// it comes back: its watch went with it).
fn reconcile(
    store: &mut Store,
    config: &Config,
    library: Option<&str>,
) -> Result<Vec<String>, DaemonError> {
    let options = ScanOptions {
        library: library.map(str::to_owned),
        progress: false,
        allow_empty: false,
    };
    let summary = scan::scan(store, config, &options)?;
    store.release_memory();
    let mut unavailable = Vec::new();
    for lib in &summary.libraries {
        if let Some(error) = &lib.error {
            tracing::error!(library = %lib.name, "{error}");
            if !lib.root.is_dir() {
                unavailable.push(lib.name.clone());
            }
        } else if lib.counts.upserted + lib.counts.deleted > 0 {
            tracing::info!(
                library = %lib.name,
                upserted = lib.counts.upserted,
                deleted = lib.counts.deleted,
                "caught up with changes made while not watching"
            );
        }
    }
    Ok(unavailable)
}

/// Whether the disk under the database is full, said once when it fills and once when space is
/// back.
#[derive(Default)]
struct DiskFull {
    since: Option<Instant>,
}

impl DiskFull {
    fn is_full(&self) -> bool {
        self.since.is_some()
    }

    /// `Some` result on success, `None` on a full disk (the caller retries later); any other
    /// error is returned.
    fn check<T>(
        &mut self,
        db: &Path,
        result: Result<T, DaemonError>,
    ) -> Result<Option<T>, DaemonError> {
        match result {
            Ok(value) => {
                if let Some(since) = self.since.take() {
                    // A warning, so that it shows by default like the error it ends.
                    tracing::warn!(
                        "space is back on the disk holding the database after {}; indexing resumed",
                        humantime::format_duration(Duration::from_secs(since.elapsed().as_secs()))
                    );
                }
                Ok(Some(value))
            }
            Err(e) if is_disk_full(&e) => {
                if self.since.is_none() {
                    self.since = Some(Instant::now());
                    let what = match e {
                        DaemonError::Store(e) | DaemonError::Scan(scan::ScanError::Store(e)) => {
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
}

fn is_disk_full(e: &DaemonError) -> bool {
    match e {
        DaemonError::Store(e) | DaemonError::Scan(scan::ScanError::Store(e)) => e.is_disk_full(),
        _ => false,
    }
}

fn save_state(store: &mut Store, state: &mut RunState) -> Result<(), StoreError> {
    state.updated_at = now_rfc3339();
    let batch = store.batch()?;
    batch.set_run_state(state)?;
    batch.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watch_limit_message_names_the_setting_and_the_numbers() {
        let dir = tempfile::tempdir().expect("tempdir");
        for d in ["a", "a/b", "c"] {
            std::fs::create_dir_all(dir.path().join(d)).expect("mkdir");
        }
        let LibraryMode::Polling { reason } = watch_limit_mode(dir.path(), "notes", POLL_INTERVAL)
        else {
            panic!("a library over the limit is polled")
        };
        assert!(reason.contains("fs.inotify.max_user_watches"), "{reason}");
        assert!(
            reason.contains("needs 4 more"),
            "the root and its three folders: {reason}"
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

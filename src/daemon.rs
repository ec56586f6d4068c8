//! `agent run`: the background agent. It takes the database's run lock, starts watching every
//! library, then reconciles with a scan (so changes made while it was stopped, and during
//! start-up, are all caught), and from then on feeds the watcher's debounced paths to the indexer.
//!
//! Each wake-up of its loop runs the same named steps: take the watcher's [`signals`], rescan
//! what they say was missed, index the due paths, rescan the polled (unwatched) [`libraries`],
//! save the run [`state`]. A [`disk_full`] disk under the database pauses indexing rather than
//! ending the run.

mod config_file;
mod disk_full;
mod error;
mod libraries;
mod lock;
pub mod metrics;
mod signals;
mod state;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver};

use crate::burst_log::BurstLog;
use crate::config::Config;
use crate::index::guard::DeleteGuard;
use crate::index::scan::{self, ScanOptions};
use crate::index::{self, Libraries};
use crate::model::event::now_rfc3339;
use crate::store::Store;
use crate::sync::agent::{SyncAgent, SyncCounters};
use crate::watch::{self, Debouncer, FsSignal, FsWatcher};

use config_file::{ConfigFile, LibraryChanges};
pub use config_file::{Load, Reload};
use disk_full::{DiskFull, DISK_FULL_RETRY};
pub use error::DaemonError;
use libraries::Watches;
pub use lock::{lock_path, RunLock};
use signals::Signals;
pub use state::{read_state, LibraryMode, RunState, STATE_KEY};
use state::{save_state, StateSaver};

/// How often a library that cannot be watched is rescanned, by default.
pub const POLL_INTERVAL: Duration = Duration::from_secs(60);
/// Paths indexed per call, so a huge burst is committed progressively.
const MAX_PATHS_PER_BATCH: usize = 2_000;

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// How often a library that cannot be watched is rescanned.
    pub poll_interval: Duration,
    /// The config file to follow: its libraries take effect as it changes.
    pub reload: Option<Reload>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            poll_interval: POLL_INTERVAL,
            reload: None,
        }
    }
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
    if config.libraries.is_empty() {
        return Err(DaemonError::NoLibraries);
    }
    let _lock = RunLock::acquire(store.path())?;
    check_replica_digest(store)?;
    store.defer_sync()?;
    let (watcher, fs_rx) = FsWatcher::new()?;
    let mut daemon = Daemon::start(config, store, watcher, options)?;
    while let Some(signals) = daemon.wait(shutdown, &fs_rx) {
        daemon.step(signals)?;
    }
    daemon.stop()
}

/// Re-derives the shared view's digest from its rows before anything changes them: a
/// database changed outside the agent (a disk error, a hand edit) no longer matches the digest
/// its commits kept. Said loudly; the derived digest is kept, so the brain, comparing it at the
/// next pull, reports this device as diverged until `agent sync --reseed` repairs it.
fn check_replica_digest(store: &mut Store) -> Result<(), DaemonError> {
    let check = store.rederive_replica_digest()?;
    if !check.matches() {
        tracing::error!(
            kept = %check.kept.unwrap_or_default(), derived = %check.derived, rows = check.rows,
            "the shared view was changed outside the agent: its rows no longer match the digest \
             its own commits kept; if the brain reports this device diverged, \
             `agent sync --reseed` replaces the shared view with the brain's"
        );
    }
    Ok(())
}

/// The running agent: what its loop keeps between wake-ups.
struct Daemon<'a> {
    config: Config,
    store: &'a mut Store,
    libs: Libraries,
    config_file: Option<ConfigFile>,
    db: PathBuf,
    watches: Watches,
    debouncer: Debouncer,
    state: RunState,
    saver: StateSaver,
    full: DiskFull,
    /// Mass deletions found by the watcher are held, not recorded.
    guard: DeleteGuard,
    sync: Option<SyncAgent>,
    metrics: Option<metrics::MetricsServer>,
    /// The "indexed N files" lines, one a second at most during a burst.
    said: BurstLog,
}

impl<'a> Daemon<'a> {
    /// Watches, then scans: a change made during the scan is then seen by one or the other.
    /// Then starts sync, which pushes what is queued (also from before this start).
    fn start(
        config: &Config,
        store: &'a mut Store,
        watcher: FsWatcher,
        options: &RunOptions,
    ) -> Result<Daemon<'a>, DaemonError> {
        let mut state = RunState::starting();
        let mut watches = Watches::new(watcher, options.poll_interval, Instant::now());
        watches.watch_all(config, &mut state);
        save_state(store, &mut state)?;
        let counters = Arc::new(SyncCounters::default());
        // Listening before the start-up scan, which may take long: a scrape meanwhile answers.
        let metrics = config
            .metrics
            .listen
            .map(|addr| metrics::MetricsServer::start(addr, store.path(), counters.clone()))
            .transpose()?;
        let unavailable = reconcile(store, config, None)?;
        watches.unavailable(config, &unavailable, &mut state);
        let sync = SyncAgent::start(config, store.path(), counters)?;
        state.state = "running".into();
        save_state(store, &mut state)?;
        tracing::info!(libraries = state.libraries.len(), "watching");
        let now = Instant::now();
        // The first poll comes a poll interval after the start-up scan, however long it took.
        watches.poll_from(now);
        Ok(Daemon {
            config: config.clone(),
            libs: Libraries::new(config, store.path()),
            config_file: options
                .reload
                .as_ref()
                .map(|r| ConfigFile::new(r.path.clone(), r.load.clone(), now)),
            db: store.path().to_owned(),
            store,
            watches,
            debouncer: Debouncer::new(Duration::from_millis(config.watch.debounce_ms)),
            state,
            saver: StateSaver::new(now),
            full: DiskFull::default(),
            guard: DeleteGuard::default(),
            sync,
            metrics,
            said: BurstLog::new("indexed", ("file", "files")),
        })
    }

    /// Sleeps until something is due or the watcher speaks, and takes what it says; `None` on
    /// shutdown, or when the watcher is gone (nothing more will come).
    fn wait(&mut self, shutdown: &Receiver<()>, fs_rx: &Receiver<FsSignal>) -> Option<Signals> {
        let now = Instant::now();
        let wake = [
            self.debouncer.next_wake(now),
            Some(self.watches.next_poll()),
            self.saver.wake_at(),
            self.full.wake_at(),
            self.config_file.as_ref().map(ConfigFile::next_check),
            self.said.wake_at(),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now);
        let mut signals = Signals::default();
        select! {
            recv(shutdown) -> _ => return None,
            recv(fs_rx) -> signal => match signal {
                Ok(signal) => signals.take(signal, &mut self.debouncer),
                Err(_) => return None,
            },
            default(wake.saturating_duration_since(now)) => {}
        }
        signals.take_queued(fs_rx, &mut self.debouncer);
        if signals.changes {
            self.state.last_change_at = Some(now_rfc3339());
        }
        if self.watches.take_overflow() {
            signals.rescan_all = true;
        }
        Some(signals)
    }

    /// One wake-up's work, in order.
    fn step(&mut self, mut signals: Signals) -> Result<(), DaemonError> {
        self.follow_config(Instant::now())?;
        let over = self
            .watches
            .over_limit(&self.config, &signals.limit_hit, &mut self.state);
        self.saver.changed(over);
        // A rescan the full disk held back, not news from the kernel.
        let retrying = !signals.rescan_all && self.full.take_rescan(Instant::now());
        signals.rescan_all |= retrying;
        if signals.rescan_all {
            if !retrying {
                tracing::warn!(
                    "the kernel dropped file events (queue overflow); rescanning every library"
                );
            }
            self.rescan(None)?;
        }
        let now = Instant::now();
        self.index_due(now)?;
        if let Some(line) = self.said.flush(Instant::now()) {
            tracing::info!(files = line.items, batches = line.batches, "{line}");
        }
        self.rescan_polled(now)?;
        self.save_state()
    }

    /// Indexes the paths whose settle window is over, in calls of at most MAX_PATHS_PER_BATCH.
    /// On a full disk they are queued again as they are (indexing them later is idempotent).
    fn index_due(&mut self, now: Instant) -> Result<(), DaemonError> {
        let mut due = self.debouncer.take_ready(now);
        let limit_hit = self.watches.follow(&self.config, &due, &self.state);
        if !limit_hit.is_empty()
            && self
                .watches
                .over_limit(&self.config, &limit_hit, &mut self.state)
        {
            self.saver.changed(true);
        }
        while !due.is_empty() {
            let rest = due.split_off(due.len().min(MAX_PATHS_PER_BATCH));
            let started = Instant::now();
            let debouncer = &self.debouncer;
            let pending = |path: &Path| debouncer.is_pending(path);
            let indexed =
                index::index_paths_guarded(self.store, &self.libs, &due, &pending, &mut self.guard)
                    .map_err(DaemonError::from);
            let Some(outcome) = self.full.check(&self.db, indexed)? else {
                let retry = Instant::now() + DISK_FULL_RETRY;
                for path in due.into_iter().chain(rest) {
                    self.debouncer.add(path, retry, watch::Settle::Changed);
                }
                break;
            };
            self.state.note_indexed(&outcome);
            let changes = outcome.upserted + outcome.deleted;
            if changes > 0 {
                self.changed();
                if let Some(line) = self.said.note(Instant::now(), changes, started.elapsed()) {
                    tracing::info!(
                        files = line.items,
                        upserted = outcome.upserted,
                        deleted = outcome.deleted,
                        renamed = outcome.reused,
                        errors = outcome.errors,
                        "{line}"
                    );
                }
            }
            // Libraries whose root itself changed.
            for name in &outcome.rescan {
                self.rescan(Some(name))?;
            }
            due = rest;
            self.saver.changed(true);
        }
        Ok(())
    }

    /// When the config file changed and loads: stops watching the libraries it no longer names
    /// (their pending paths are dropped with them), and watches and scans the ones it adds. A
    /// library whose root or globs changed is both. The rest of the file takes a restart.
    fn follow_config(&mut self, now: Instant) -> Result<(), DaemonError> {
        let Some(new) = self.config_file.as_mut().and_then(|f| f.check(now)) else {
            return Ok(());
        };
        let restart = config_file::needs_restart(&self.config, &new);
        if !restart.is_empty() {
            tracing::warn!(
                "config changed in {}: restart `agent run` to apply that (libraries apply now)",
                restart.join(", ")
            );
        }
        let changes = LibraryChanges::between(&self.config.libraries, &new.libraries);
        if changes.is_empty() {
            return Ok(());
        }
        for library in &changes.stopped {
            self.watches.stop_watching(&library.path);
            self.state.libraries.remove(&library.name);
            self.debouncer.drop_under(&library.path);
            // Not observed either (`agent library remove` did so too, but this agent may have
            // indexed a change since): a library added back is read afresh. On a full disk the
            // rows stay, and are only stale.
            let left = index::leave_library(self.store, &library.name, false);
            self.full.check(&self.db, left.map_err(DaemonError::from))?;
            tracing::warn!(library = %library.name, "no longer in the config: not watched any more");
        }
        self.config.libraries = new.libraries;
        self.libs = Libraries::new(&self.config, &self.db);
        for name in &changes.started {
            let Some(library) = self.config.library(name) else {
                continue;
            };
            let mode = self.watches.watch_one(library);
            self.state.set_mode(name, mode);
            tracing::warn!(library = %name, root = %library.path.display(), "added from the config: watching it");
        }
        self.saver.changed(true);
        for name in &changes.started {
            self.rescan(Some(name))?;
        }
        Ok(())
    }

    /// Rescans the polled libraries when their poll is due, watching each again if it can be.
    fn rescan_polled(&mut self, now: Instant) -> Result<(), DaemonError> {
        let (due, changed) = self.watches.take_polled(now, &self.config, &mut self.state);
        self.saver.changed(changed);
        for name in &due {
            self.rescan(Some(name))?;
        }
        Ok(())
    }

    /// Rescans one library, or all. Those refused because their root is unavailable are polled
    /// until it is back; on a full disk, a rescan of all is tried again later.
    fn rescan(&mut self, library: Option<&str>) -> Result<(), DaemonError> {
        let rescanned = reconcile(self.store, &self.config, library);
        match self.full.check(&self.db, rescanned)? {
            Some(unavailable) => {
                let changed = self
                    .watches
                    .unavailable(&self.config, &unavailable, &mut self.state);
                self.saver.changed(changed);
                self.changed();
            }
            None => self.full.hold_rescan(Instant::now()),
        }
        Ok(())
    }

    /// Saves the run state when it is due, and not while the disk is full.
    fn save_state(&mut self) -> Result<(), DaemonError> {
        if self.state.backlog != self.debouncer.len() {
            self.state.backlog = self.debouncer.len();
            self.saver.changed(true);
        }
        if self.saver.is_due(Instant::now()) && !self.full.is_full() {
            let saved = save_state(self.store, &mut self.state).map_err(DaemonError::from);
            let written = self.full.check(&self.db, saved)?.is_some();
            self.saver.tried(Instant::now(), written);
        }
        Ok(())
    }

    /// Tells sync that the outbox grew.
    fn changed(&self) {
        if let Some(sync) = &self.sync {
            sync.changed();
        }
    }

    /// Indexes what is pending, stops sync, and records that the agent stopped.
    fn stop(mut self) -> Result<RunState, DaemonError> {
        let pending = self.debouncer.take_all();
        for chunk in pending.chunks(MAX_PATHS_PER_BATCH) {
            let started = Instant::now();
            let outcome = index::index_paths_guarded(
                self.store,
                &self.libs,
                chunk,
                &|_| false,
                &mut self.guard,
            )?;
            self.state.note_indexed(&outcome);
            let changes = outcome.upserted + outcome.deleted;
            if changes > 0 {
                if let Some(line) = self.said.note(Instant::now(), changes, started.elapsed()) {
                    tracing::info!(files = line.items, "{line}");
                }
            }
        }
        if let Some(sync) = self.sync.take() {
            sync.stop();
        }
        if let Some(line) = self.said.finish(Instant::now()) {
            tracing::info!(files = line.items, batches = line.batches, "{line}");
        }
        if let Some(metrics) = self.metrics.take() {
            metrics.stop();
        }
        self.state.state = "stopped".into();
        self.state.backlog = 0;
        save_state(self.store, &mut self.state)?;
        tracing::info!(changes = self.state.changes_indexed, "stopped");
        Ok(self.state)
    }
}

/// Rescans; returns the libraries refused because their root is unavailable, or on another file
/// system than observed (an unmounted disk's mount point): polled until it comes back, and not
/// watched meanwhile (the watch went with it, or would watch the wrong folder).
fn reconcile(
    store: &mut Store,
    config: &Config,
    library: Option<&str>,
) -> Result<Vec<String>, DaemonError> {
    let options = ScanOptions {
        library: library.map(str::to_owned),
        progress: false,
        log_progress: true,
        ..ScanOptions::default()
    };
    let summary = scan::scan(store, config, &options)?;
    store.release_memory();
    let mut unavailable = Vec::new();
    for lib in &summary.libraries {
        if let Some(error) = &lib.error {
            tracing::error!(library = %lib.name, "{error}");
            if !lib.root.is_dir() || lib.other_file_system {
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

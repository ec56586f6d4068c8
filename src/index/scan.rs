//! `agent scan`: walk -> pipeline -> deletions. The walk streams every library's files through
//! the readers to the single writer ([`pipeline`]); observed paths the walk did not meet become
//! deletions, unless the mass-delete guard says the library looks unmounted. Unchanged files
//! (size, mtime and inode as observed) are never opened.

use std::cell::RefCell;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::commit::Observation;
use super::guard;
use super::leave;
use super::pipeline::{self, Tally};
use super::root_fs::{self, Compared};
use crate::config::{Config, LibraryConfig};
use crate::model::{key, EventType};
use crate::store::{self, LocalChange, Store};

pub use super::pipeline::Counts;

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("no library named {0:?} in the configuration")]
    UnknownLibrary(String),
    #[error("no libraries configured: `agent library add PATH` keeps one, or name a folder: `agent scan PATH`")]
    NoLibraries,
}

#[derive(Debug, Clone, Serialize)]
pub struct LibrarySummary {
    pub name: String,
    pub root: PathBuf,
    /// "ok", or "refused" when the library was not scanned (or its deletions were held back).
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(flatten)]
    pub counts: Counts,
    /// Refused because the root is on another file system than observed (`agent run` polls it
    /// until the right one is back).
    #[serde(skip)]
    pub other_file_system: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScanSummary {
    pub run_id: i64,
    pub ok: bool,
    pub libraries: Vec<LibrarySummary>,
    pub backfilled: u64,
    #[serde(flatten)]
    pub totals: Counts,
    pub seconds: f64,
}

#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    /// Scan only this library.
    pub library: Option<String>,
    /// Draw a progress bar on stderr (only when it is a terminal).
    pub progress: bool,
    /// Log a progress line every [`LOG_EVERY`] while a library takes long (`agent run`).
    pub log_progress: bool,
    /// The user says an empty library root really is empty: record its files as deleted.
    pub allow_empty: bool,
    /// The user says the files a scan finds gone really are: record the deletions even when
    /// they are most of the library (see [`guard::is_mass_delete`]), and those `agent run` held.
    pub allow_mass_delete: bool,
    /// The user says a root now on another file system than observed is the right one.
    pub allow_other_file_system: bool,
}

/// A scan that would delete more than this many files, and more than half of what the library
/// held, records none of those deletions until `agent scan --allow-mass-delete` (the rule is
/// [`guard::is_mass_delete`]).
pub use super::guard::MASS_DELETE;

/// Runs one scan of every configured library (or one), recording it in `lib_runs`.
pub fn scan(
    store: &mut Store,
    config: &Config,
    options: &ScanOptions,
) -> Result<ScanSummary, ScanError> {
    let path = store.path().to_owned();
    scan_all(store, config, options).map_err(|e| match e {
        ScanError::Store(e) => ScanError::Store(e.on_disk_of(&path)),
        other => other,
    })
}

fn scan_all(
    store: &mut Store,
    config: &Config,
    options: &ScanOptions,
) -> Result<ScanSummary, ScanError> {
    let started = Instant::now();
    let libraries: Vec<&LibraryConfig> = match &options.library {
        Some(name) => vec![config
            .library(name)
            .ok_or_else(|| ScanError::UnknownLibrary(name.clone()))?],
        None => config.libraries.iter().collect(),
    };
    if libraries.is_empty() {
        return Err(ScanError::NoLibraries);
    }
    let run_id = store.start_run(options.library.as_deref())?;
    let backfilled = backfill_legacy_rows(store)?;

    // Checkpoints and per-commit fsyncs wait until the scan ends (see Store::set_bulk_mode):
    // checkpoints would copy the full-text index's pages again and again. It costs the scan of
    // random bytes 0.1 to 0.3 s of 1.6 s; text is where the time goes.
    store.set_bulk_mode(true)?;
    let progress = Progress::new(options.progress, options.log_progress);
    let mut summaries = Vec::new();
    let mut totals = Counts::default();
    let mut failed = None;
    for library in libraries {
        match scan_library(store, config, library, &progress, options) {
            Ok(summary) => {
                totals.add(&summary.counts);
                summaries.push(summary);
            }
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    progress.finish();
    // Also after a failure: what was committed is made durable, and the connection goes back to
    // its normal durability for whatever the caller does next. The first error is the one to
    // report: on a full disk this checkpoint fails too, and would hide what the scan was doing.
    let leave_bulk = store.set_bulk_mode(false);
    if let Some(e) = failed {
        if let Err(also) = leave_bulk {
            tracing::debug!("after the scan failed: {also}");
        }
        return Err(e);
    }
    leave_bulk?;

    let ok = summaries.iter().all(|s| s.error.is_none());
    let message: Vec<String> = summaries
        .iter()
        .filter_map(|s| s.error.as_ref().map(|e| format!("{}: {e}", s.name)))
        .collect();
    store.finish_run(run_id, &(&totals).into(), ok, &message.join("; "))?;
    Ok(ScanSummary {
        run_id,
        ok,
        libraries: summaries,
        backfilled,
        totals,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn scan_library(
    store: &mut Store,
    config: &Config,
    library: &LibraryConfig,
    progress: &Progress,
    options: &ScanOptions,
) -> Result<LibrarySummary, ScanError> {
    let mut summary = LibrarySummary {
        name: library.name.clone(),
        root: library.path.clone(),
        status: "ok",
        error: None,
        counts: Counts::default(),
        other_file_system: false,
    };
    match std::fs::metadata(&library.path) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            let reason = format!(
                "root {} is not a folder; nothing scanned, nothing deleted",
                library.path.display()
            );
            return Ok(refuse(summary, reason));
        }
        Err(e) => {
            let reason = format!(
                "root {} is unavailable ({e}); is it unmounted? nothing scanned, nothing deleted",
                library.path.display()
            );
            return Ok(refuse(summary, reason));
        }
    }
    // A root on another file system than observed is a mount point left behind (or a wrong
    // mount): refused like a missing root, before anything is read from it.
    let fs_now = root_fs::identify(&library.path);
    let recorded = store.library_root_fs(&library.name)?;
    if let Compared::Other { was, now } = root_fs::compare(recorded.as_deref(), fs_now.as_ref()) {
        if !options.allow_other_file_system {
            let reason = format!(
                "root {} is on another file system than when last scanned (was {}, now {}); is \
                 it unmounted? nothing scanned, nothing deleted (if the library really moved \
                 there, run `agent scan --allow-other-file-system --library {}`)",
                library.path.display(),
                was.describe(),
                now.describe(),
                library.name
            );
            summary.other_file_system = true;
            return Ok(refuse(summary, reason));
        }
    }
    let summary = scan_walked(store, config, library, progress, options, summary)?;
    if summary.error.is_none() {
        // The file system the library was seen on, for the next scan to compare with.
        if let Some(now) = fs_now {
            let batch = store.batch()?;
            batch.set_library_root_fs(&library.name, &now.to_json())?;
            batch.commit()?;
        }
    }
    Ok(summary)
}

/// The walk of a root found where it was: upserts, then deletions behind the mass-delete rule
/// and the deletions `agent run` held.
fn scan_walked(
    store: &mut Store,
    config: &Config,
    library: &LibraryConfig,
    progress: &Progress,
    options: &ScanOptions,
    mut summary: LibrarySummary,
) -> Result<LibrarySummary, ScanError> {
    let observed = store.observed_of_library(&library.name)?;
    // The total of the progress: the files observed last time on a rescan; on a library not
    // observed yet, a counting walk racing the real one.
    let counted = Arc::new(AtomicU64::new(0));
    let counting = Arc::new(AtomicBool::new(true));
    let stop_counting = AtomicBool::new(false);
    let walked = std::thread::scope(|scope| {
        let total = if observed.is_empty() && progress.wanted() {
            let (count, still, stop) = (counted.clone(), counting.clone(), &stop_counting);
            scope.spawn(move || {
                super::walk::count_files(library, &count, stop);
                still.store(false, Ordering::Relaxed);
            });
            Total::Counting {
                counted,
                done: counting,
            }
        } else {
            Total::Observed(observed.len() as u64)
        };
        progress.library(&library.name, total);
        let walked = pipeline::stream_library(
            store,
            library,
            &observed,
            (
                pipeline::reader_threads(config.index.hash_threads, pipeline::Reads::FromDisk),
                config.index.max_content_bytes,
            ),
            &mut summary.counts,
            &|tally| progress.update(tally),
        );
        stop_counting.store(true, Ordering::Relaxed);
        walked
    })?;

    // Deletions, behind the mass-delete guard.
    let mut unseen: Vec<&str> = observed
        .iter()
        .filter(|(_, stat)| !stat.seen.load(Ordering::Relaxed))
        .map(|(key, _)| &**key)
        .collect();
    // Files an ignore file ignores now are not gone: this device stops observing them, and
    // records no deletion (which would remove them for every device).
    let ignored = leave::ignored_now(library, unseen.iter().copied());
    if !ignored.is_empty() {
        summary.counts.ignored = leave::unobserve(store, &ignored)?;
        tracing::info!(library = %library.name, files = ignored.len(), "no longer observed: ignored");
        let ignored: std::collections::HashSet<&str> = ignored.iter().map(String::as_str).collect();
        unseen.retain(|key| !ignored.contains(key));
    }
    let held = store.held_deletions(&library.name)?;
    if unseen.is_empty() {
        release_held(store, &library.name, held.is_some())?;
        return Ok(summary);
    }
    if !library.path.is_dir() {
        let reason = format!(
            "root {} disappeared during the scan; {} not marked deleted",
            library.path.display(),
            crate::term::count(unseen.len() as u64, "file", "files")
        );
        return Ok(refuse(summary, reason));
    }
    if let Some(error) = &walked.root_error {
        let reason = format!(
            "root {} cannot be read ({error}); {} not marked deleted",
            library.path.display(),
            crate::term::count(unseen.len() as u64, "indexed file", "indexed files")
        );
        return Ok(refuse(summary, reason));
    }
    if summary.counts.seen == 0 && !options.allow_empty {
        let reason = format!(
            "root {} is empty but the index holds {} {} from it; is it unmounted? not marking them \
             deleted (if you really emptied it, run `agent scan --allow-empty --library {}`)",
            library.path.display(),
            unseen.len(),
            crate::term::plural(unseen.len() as u64, "file", "files"),
            library.name
        );
        return Ok(refuse(summary, reason));
    }
    let mut deletions: Vec<Observation> = unseen
        .into_iter()
        // Files under a folder we could not read may well still exist.
        .filter(|key| {
            !walked
                .failed_dirs
                .iter()
                .any(|dir| key.starts_with(dir.as_str()))
        })
        .map(|key| Observation::Gone {
            key: key.to_owned(),
        })
        .collect();
    if let Some(held) = held.as_ref().filter(|_| !options.allow_mass_delete) {
        let reason = format!(
            "`agent run` holds {} of this library since {} (too many at once); not marking \
             these {} deleted either. If they really are gone, run `{}`",
            crate::term::count(held.count(), "deletion", "deletions"),
            held.since,
            crate::term::count(deletions.len() as u64, "file", "files"),
            guard::release_command(&library.name)
        );
        return Ok(refuse(summary, reason));
    }
    if guard::is_mass_delete(deletions.len(), observed.len() as u64) && !options.allow_mass_delete {
        let reason = format!(
            "root {} no longer holds {} of the {} files indexed from it; not marking them deleted \
             (a replaced folder or a wrong mount looks like this). If they really are gone, run \
             `agent scan --allow-mass-delete --library {}`",
            library.path.display(),
            deletions.len(),
            observed.len(),
            library.name
        );
        return Ok(refuse(summary, reason));
    }
    deletions.sort_by(|a, b| obs_key(a).cmp(obs_key(b)));
    for chunk in deletions.chunks(pipeline::BATCH) {
        pipeline::commit_chunk(store, chunk, &mut summary.counts)?;
    }
    // The walk looked at every held key again: those still gone are recorded just now, the
    // others came back.
    release_held(store, &library.name, held.is_some())?;
    Ok(summary)
}

fn release_held(store: &mut Store, library: &str, held: bool) -> Result<(), ScanError> {
    if held {
        let batch = store.batch()?;
        batch.clear_held_deletions(library)?;
        batch.commit()?;
        tracing::info!(library, "released the deletions `agent run` held");
    }
    Ok(())
}

/// A library not scanned, or whose deletions were held back, and why. Not logged here: the
/// caller reports it (the CLI as its error line, the daemon in its log).
fn refuse(mut summary: LibrarySummary, reason: String) -> LibrarySummary {
    summary.status = "refused";
    summary.error = Some(reason);
    summary
}

fn obs_key(o: &Observation) -> &str {
    match o {
        Observation::Present { key, .. }
        | Observation::Gone { key }
        | Observation::Forgotten { key } => key,
    }
}

/// Turns rows adopted from a LIB v1.0 database into `initial_sync` events, once, so the brain and
/// the other devices learn about them.
fn backfill_legacy_rows(store: &mut Store) -> Result<u64, ScanError> {
    if !store.backfill_pending()? {
        return Ok(0);
    }
    let rows = store.rows_to_backfill()?;
    let observed_here = store.backfill_observed()?;
    let mut done = 0;
    for chunk in rows.chunks(pipeline::BATCH) {
        let batch = store.batch()?;
        for (path, payload) in chunk {
            if let Err(e) = key::validate(path) {
                tracing::warn!(path, "not backfilled: {e}");
                continue;
            }
            if !payload
                .sha256
                .as_deref()
                .is_some_and(crate::model::event::is_sha256_hex)
                || payload.bytes.is_none()
            {
                tracing::warn!(
                    path,
                    "not backfilled: the LIB row has no valid sha256 or size"
                );
                continue;
            }
            batch.record_local(LocalChange::new(
                path,
                EventType::InitialSync,
                payload.clone(),
            ))?;
            if observed_here {
                // Inode 0 matches no file: the first scan reads each one once to confirm it.
                let observed = store::Observed {
                    bytes: payload.bytes.unwrap_or(0),
                    mtime_ns: payload
                        .mtime_unix
                        .unwrap_or(0)
                        .saturating_mul(1_000_000_000),
                    inode: 0,
                    sha256: payload.sha256.clone().unwrap_or_default(),
                };
                batch.put_observed(path, &observed)?;
            }
            done += 1;
        }
        batch.commit()?;
    }
    let batch = store.batch()?;
    batch.finish_backfill()?;
    batch.commit()?;
    tracing::info!(events = done, "backfilled LIB rows as initial_sync events");
    Ok(done)
}

impl From<&Counts> for store::RunTotals {
    fn from(c: &Counts) -> Self {
        store::RunTotals {
            seen: c.seen,
            hashed: c.hashed,
            unchanged: c.unchanged,
            upserted: c.upserted,
            deleted: c.deleted,
            bytes_hashed: c.bytes_hashed,
            errors: c.errors,
        }
    }
}

/// While a library's scan takes longer than this, `agent run` logs its progress this often.
pub const LOG_EVERY: Duration = Duration::from_secs(5);

/// What a library's progress counts towards.
enum Total {
    /// The files observed at the last scan: about what this one will see.
    Observed(u64),
    /// A counting walk's count so far; final once `done` is false.
    Counting {
        counted: Arc<AtomicU64>,
        done: Arc<AtomicBool>,
    },
}

impl Total {
    /// The total now, and whether it is final.
    fn now(&self) -> (u64, bool) {
        match self {
            Total::Observed(n) => (*n, true),
            Total::Counting { counted, done } => (
                counted.load(Ordering::Relaxed),
                !done.load(Ordering::Relaxed),
            ),
        }
    }
}

/// A scan's progress: a bar on stderr when it is a terminal (`agent scan`), or a log line every
/// [`LOG_EVERY`] (`agent run`), each with the library's total, the rate and (on the bar) the
/// time left.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    log: bool,
    library: RefCell<Option<LibraryProgress>>,
}

struct LibraryProgress {
    name: String,
    total: Total,
    started: Instant,
    last_log: Instant,
}

impl Progress {
    fn new(bar: bool, log: bool) -> Progress {
        let bar = (bar && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(0);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{prefix}: [{bar:30}] {human_pos}/{human_len} files, {msg}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress {
            bar,
            log,
            library: RefCell::new(None),
        }
    }

    /// Whether a total is worth counting.
    fn wanted(&self) -> bool {
        self.bar.is_some() || self.log
    }

    fn library(&self, name: &str, total: Total) {
        let now = Instant::now();
        if let Some(bar) = &self.bar {
            bar.reset();
            bar.set_prefix(name.to_owned());
            bar.set_length(total.now().0);
            bar.set_message("");
        }
        *self.library.borrow_mut() = Some(LibraryProgress {
            name: name.to_owned(),
            total,
            started: now,
            last_log: now,
        });
    }

    fn update(&self, s: &Tally) {
        let seen = s.seen.load(Ordering::Relaxed);
        let mut library = self.library.borrow_mut();
        let Some(lib) = library.as_mut() else { return };
        let (total, known) = lib.total.now();
        // An observed total is an estimate: new files make the scan see more.
        let total = total.max(seen);
        let now = Instant::now();
        let rate = seen as f64 / now.duration_since(lib.started).as_secs_f64().max(0.001);
        if let Some(bar) = &self.bar {
            bar.set_length(total);
            bar.set_position(seen);
            let rate_text = crate::term::thousands(rate as u64);
            bar.set_message(if known {
                let left = total.saturating_sub(seen) as f64 / rate.max(1.0);
                let left = humantime::format_duration(Duration::from_secs(left as u64));
                format!("{rate_text}/s, ETA {left}")
            } else {
                format!("{rate_text}/s, still counting")
            });
        }
        if self.log && now >= lib.last_log + LOG_EVERY {
            lib.last_log = now;
            tracing::info!(
                library = %lib.name, seen, total, hashed = s.hashed.load(Ordering::Relaxed),
                "reconciling library {}: {} of {}{} files, {}/s",
                lib.name,
                crate::term::thousands(seen),
                if known { "~" } else { "at least " },
                crate::term::thousands(total),
                crate::term::thousands(rate as u64)
            );
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

//! `agent scan`: the full walk. Paths go from one walker thread to many reader threads (file reads
//! are latency-bound, so more reads in flight than cores pays off), and changed files go to this
//! thread, the single writer, which commits them in batched transactions through `index::commit`.
//!
//! Unchanged files (size, mtime and inode as observed) are never opened. Observed paths the walk
//! did not meet become deletions, unless the mass-delete guard says the library looks unmounted.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use serde::Serialize;
use walkdir::WalkDir;

use crate::config::{Config, LibraryConfig};
use crate::filter::LibraryFilter;
use crate::index::{self, Change, FileStat, Observation, ReadError};
use crate::model::{key, EventType};
use crate::store::read::ObservedStat;
use crate::store::{self, LocalChange, Store};

/// Changes committed per transaction: every commit rewrites the b-tree pages it touched, so large
/// batches write less (100,000 files: 15,100 page writes with 1,000 per batch, 10,900 with 4,000);
/// small enough that events become pushable progressively during a long scan.
pub(crate) const BATCH: usize = 4000;
/// ... and at most this much text per transaction (content and payloads, see [`text_len`]): the
/// batch's text is held in memory several times over (the observations, the rows, SQLite's
/// pending full-text terms), so it is what bounds peak memory (100,000 text files: 102 MB with
/// 4 MiB of content and its payloads uncounted, 89 MB counting both).
pub(crate) const BATCH_TEXT_BYTES: usize = 4 << 20;
/// A file still being written after this many reads is left for the next scan or the watcher.
const READ_ATTEMPTS: usize = 3;
/// Files read ahead of the writer. Long enough that the readers go on while the writer commits
/// (with 256, each commit left them blocked on a full queue and a third of both cores idle).
const READ_AHEAD: usize = 4096;
/// ... holding at most this much text between them, which bounds the memory the queue takes.
const READ_AHEAD_TEXT_BYTES: usize = 4 << 20;
/// Paths and observations travel between the threads in groups of this many: one hand-over per
/// file woke a sleeping thread (a futex call) three times a file and kept the walker spinning on
/// a full queue, 3% of a scan's CPU.
const GROUP: usize = 64;
/// ... or of this much text: what a reader holds counts against the read-ahead budget (below),
/// and the writer waits for text that sits in the readers' groups.
const GROUP_TEXT_BYTES: usize = 64 << 10;

/// The text the readers have read and the writer has not taken yet, in the readers' groups and
/// in the queue. A reader waits while adding a file's text would go over the cap (a file of any
/// size still passes alone), after handing over what it holds.
struct TextBudget {
    used: std::sync::Mutex<usize>,
    freed: std::sync::Condvar,
    cap: usize,
}

impl TextBudget {
    fn new(cap: usize) -> TextBudget {
        TextBudget {
            used: std::sync::Mutex::new(0),
            freed: std::sync::Condvar::new(),
            cap,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, usize> {
        self.used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Holds `bytes` more if they fit under the cap (or nothing is held); false, holding nothing
    /// more, if not.
    fn try_take(&self, bytes: usize) -> bool {
        if bytes == 0 {
            return true;
        }
        let mut used = self.lock();
        if *used > 0 && used.saturating_add(bytes) > self.cap {
            return false;
        }
        *used = used.saturating_add(bytes);
        true
    }

    /// Waits until `bytes` more fit under the cap (or nothing is held), then holds them. The
    /// caller must not hold text it has not handed over yet: the writer could never free it.
    fn take(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let mut used = self.lock();
        while *used > 0 && used.saturating_add(bytes) > self.cap {
            used = self
                .freed
                .wait(used)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        *used = used.saturating_add(bytes);
    }

    fn give(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let mut used = self.lock();
        *used = used.saturating_sub(bytes);
        self.freed.notify_all();
    }

    /// The writer is gone: nobody waits for it any more.
    fn close(&self) {
        *self.lock() = 0;
        self.freed.notify_all();
    }
}

/// The text an observation holds: its content, and its payload, which carries the content again
/// (escaped as JSON).
pub(crate) fn text_len(o: &Observation) -> usize {
    match o {
        Observation::Present { file, .. } => text_of(file),
        Observation::Gone { .. } => 0,
    }
}

fn text_of(file: &index::ReadFile) -> usize {
    file.content.as_ref().map_or(0, String::len) + file.payload_json.as_ref().map_or(0, String::len)
}

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("no library named {0:?} in the configuration")]
    UnknownLibrary(String),
    #[error("no libraries configured: add a [[library]] to the config file, or name a folder: `agent scan PATH`")]
    NoLibraries,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub seen: u64,
    pub hashed: u64,
    pub unchanged: u64,
    pub upserted: u64,
    pub deleted: u64,
    pub errors: u64,
    pub bytes_hashed: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.seen += o.seen;
        self.hashed += o.hashed;
        self.unchanged += o.unchanged;
        self.upserted += o.upserted;
        self.deleted += o.deleted;
        self.errors += o.errors;
        self.bytes_hashed += o.bytes_hashed;
    }
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
    /// Draw a progress line on stderr (only when it is a terminal).
    pub progress: bool,
    /// The user says an empty library root really is empty: record its files as deleted.
    pub allow_empty: bool,
}

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
    let progress = Progress::new(options.progress);
    let mut summaries = Vec::new();
    let mut totals = Counts::default();
    let mut failed = None;
    for library in libraries {
        match scan_library(store, config, library, &progress, options.allow_empty) {
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

struct Job {
    path: PathBuf,
    key: String,
}

#[derive(Default)]
struct Shared {
    seen: AtomicU64,
    hashed: AtomicU64,
    unchanged: AtomicU64,
    errors: AtomicU64,
    bytes_hashed: AtomicU64,
}

fn scan_library(
    store: &mut Store,
    config: &Config,
    library: &LibraryConfig,
    progress: &Progress,
    allow_empty: bool,
) -> Result<LibrarySummary, ScanError> {
    let mut summary = LibrarySummary {
        name: library.name.clone(),
        root: library.path.clone(),
        status: "ok",
        error: None,
        counts: Counts::default(),
    };
    // Not logged here: the caller reports it (the CLI as its error line, the daemon in its log).
    let refuse = |mut summary: LibrarySummary, reason: String| {
        summary.status = "refused";
        summary.error = Some(reason);
        summary
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
    let filter = match LibraryFilter::new(library) {
        Ok(f) => f,
        Err(e) => return Ok(refuse(summary, e.to_string())),
    };
    let observed = Arc::new(store.observed_of_library(&library.name)?);
    let shared = Shared::default();
    let threads = reader_threads(config.index.hash_threads);
    let max_content = config.index.max_content_bytes;
    let skip_files = database_files(store.path());
    let mut walked = WalkOutcome::default();
    let mut write_result: Result<(), ScanError> = Ok(());
    progress.library(&library.name);

    let budget = TextBudget::new(READ_AHEAD_TEXT_BYTES);
    let clock = store.clock().clone();
    std::thread::scope(|scope| {
        let (job_tx, job_rx) = bounded::<Vec<Job>>(READ_AHEAD / GROUP);
        // Each observation may carry up to max_content_bytes of text: the budget bounds the queue.
        let (obs_tx, obs_rx) = bounded::<Vec<Observation>>(READ_AHEAD / GROUP);
        let (filter, skip_files, shared_ref, budget) = (&filter, &skip_files, &shared, &budget);
        let walker = scope.spawn(move || {
            let mut group = Vec::with_capacity(GROUP);
            let outcome = walk_tree(
                library,
                filter,
                &library.path,
                skip_files,
                &shared_ref.errors,
                |path, key| {
                    shared_ref.seen.fetch_add(1, Ordering::Relaxed);
                    group.push(Job { path, key });
                    group.len() < GROUP
                        || job_tx
                            .send(std::mem::replace(&mut group, Vec::with_capacity(GROUP)))
                            .is_ok()
                },
            );
            // A failed send means the readers are gone, which only a failed writer does; it
            // reports why.
            if !group.is_empty() && job_tx.send(group).is_err() {
                tracing::debug!("walk of {} ended early: the writer stopped", library.name);
            }
            outcome
        });
        for _ in 0..threads {
            let job_rx = job_rx.clone();
            let obs_tx = obs_tx.clone();
            let (observed, shared, clock) = (&observed, &shared, &clock);
            scope.spawn(move || {
                read_worker(job_rx, obs_tx, observed, shared, budget, max_content, clock)
            });
        }
        drop(obs_tx);
        drop(job_rx);
        write_result = write_loop(
            store,
            &obs_rx,
            budget,
            &mut summary.counts,
            &shared,
            progress,
        );
        // On a store error the workers stop when their channel closes.
        budget.close();
        drop(obs_rx);
        walked = walker.join().unwrap_or_default();
    });
    write_result?;

    summary.counts.seen = shared.seen.load(Ordering::Relaxed);
    summary.counts.hashed = shared.hashed.load(Ordering::Relaxed);
    summary.counts.unchanged = shared.unchanged.load(Ordering::Relaxed);
    summary.counts.errors += shared.errors.load(Ordering::Relaxed);
    summary.counts.bytes_hashed = shared.bytes_hashed.load(Ordering::Relaxed);

    // Deletions, behind the mass-delete guard.
    let unseen: Vec<&str> = observed
        .iter()
        .filter(|(_, stat)| !stat.seen.load(Ordering::Relaxed))
        .map(|(key, _)| &**key)
        .collect();
    if unseen.is_empty() {
        return Ok(summary);
    }
    if !library.path.is_dir() {
        let reason = format!(
            "root {} disappeared during the scan; {} files not marked deleted",
            library.path.display(),
            unseen.len()
        );
        return Ok(refuse(summary, reason));
    }
    if let Some(error) = &walked.root_error {
        let reason = format!(
            "root {} cannot be read ({error}); {} indexed files not marked deleted",
            library.path.display(),
            unseen.len()
        );
        return Ok(refuse(summary, reason));
    }
    if summary.counts.seen == 0 && !allow_empty {
        let reason = format!(
            "root {} is empty but the index holds {} {} from it; is it unmounted? not marking them \
             deleted (if you really emptied it, run `agent scan --allow-empty --library {}`)",
            library.path.display(),
            unseen.len(),
            plural(unseen.len(), "file", "files"),
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
    deletions.sort_by(|a, b| obs_key(a).cmp(obs_key(b)));
    for chunk in deletions.chunks(BATCH) {
        commit_chunk(store, chunk, &mut summary.counts)?;
    }
    Ok(summary)
}

fn obs_key(o: &Observation) -> &str {
    match o {
        Observation::Present { key, .. } | Observation::Gone { key } => key,
    }
}

fn reader_threads(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (cores * 4).clamp(4, 16)
}

/// The database and its WAL files, as (device, inode): indexing them when the store lives inside
/// a library would turn every commit into a new change.
pub(crate) fn database_files(db: &Path) -> Vec<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    ["", "-wal", "-shm", "-journal"]
        .iter()
        .filter_map(|suffix| {
            let mut p = db.as_os_str().to_owned();
            p.push(suffix);
            std::fs::metadata(PathBuf::from(p))
                .ok()
                .map(|m| (m.dev(), m.ino()))
        })
        .collect()
}

#[derive(Default)]
pub(crate) struct WalkOutcome {
    /// Key prefixes of folders that could not be read: their observed files may well still exist.
    pub failed_dirs: Vec<String>,
    /// Why the starting folder itself could not be read.
    pub root_error: Option<String>,
}

/// Walks a library from `start` (its root, or a folder in it, for the watcher), handing every
/// included regular file to `sink` as (path, entity key); `sink` returns false to stop the walk.
pub(crate) fn walk_tree(
    library: &LibraryConfig,
    filter: &LibraryFilter,
    start: &Path,
    skip_files: &[(u64, u64)],
    errors: &AtomicU64,
    mut sink: impl FnMut(PathBuf, String) -> bool,
) -> WalkOutcome {
    let root = &library.path;
    let mut outcome = WalkOutcome::default();
    let relative = |path: &Path| -> Option<Result<String, key::KeyError>> {
        path.strip_prefix(root).ok().map(key::relative_key)
    };
    // Sorted: keys then reach the path-keyed b-trees (lib_files, lib_observed) in order, which
    // keeps their inserts local, and events come out in a deterministic order. Siblings share
    // their parent's path, so whole paths sort as their names do, without taking each name
    // apart at every comparison (a quarter of the walk's work, measured).
    let walker = WalkDir::new(start)
        .follow_links(false)
        .min_depth(1)
        .sort_by(|a, b| a.path().as_os_str().cmp(b.path().as_os_str()))
        .into_iter()
        .filter_entry(|entry| {
        if !entry.file_type().is_dir() {
            return true;
        }
        match relative(entry.path()) {
            Some(Ok(rel)) => !filter.prunes_dir(&rel) && !shadowed_by_nfc_twin(entry),
            Some(Err(e)) => {
                tracing::warn!(library = %library.name, path = ?entry.path(), "skipped folder: {e}");
                errors.fetch_add(1, Ordering::Relaxed);
                false
            }
            None => true,
        }
    });
    for entry in walker {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                let path = e.path().map(Path::to_path_buf);
                tracing::warn!(library = %library.name, path = ?path, "cannot read: {e}");
                errors.fetch_add(1, Ordering::Relaxed);
                if let Some(Ok(rel)) = path.as_deref().and_then(relative) {
                    if path.as_deref() == Some(start) {
                        let reason = e
                            .io_error()
                            .map_or_else(|| e.to_string(), ToString::to_string);
                        outcome.root_error = Some(reason);
                    }
                    if rel.is_empty() {
                        outcome.failed_dirs.push(format!("{}/", library.name));
                    } else {
                        outcome.failed_dirs.push(format!("{}/{rel}/", library.name));
                    }
                }
                continue;
            }
        };
        // Symlinks are not followed (no loops, no files outside the library); sockets and fifos
        // have no content to index.
        if !entry.file_type().is_file() {
            continue;
        }
        let rel = match relative(entry.path()) {
            Some(Ok(rel)) => rel,
            Some(Err(e)) => {
                tracing::warn!(library = %library.name, path = ?entry.path(), "skipped: {e}");
                errors.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            None => continue,
        };
        if !filter.includes_file(&rel) {
            continue;
        }
        if is_database_file(&entry, skip_files) || shadowed_by_nfc_twin(&entry) {
            continue;
        }
        let key = match key::entity_key(&library.name, &rel) {
            Ok(key) => key,
            Err(e) => {
                tracing::warn!(library = %library.name, path = ?entry.path(), "skipped: {e}");
                errors.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        if !sink(entry.into_path(), key) {
            break; // the consumer failed; stop walking
        }
    }
    outcome
}

/// Compared by device and inode, not by path: the database may be reached through a symlink,
/// and the walk sees the library's own spelling of the path.
pub(crate) fn is_database_file(entry: &walkdir::DirEntry, skip_files: &[(u64, u64)]) -> bool {
    use walkdir::DirEntryExt;
    skip_files.iter().any(|(_, ino)| *ino == entry.ino())
        && entry.metadata().is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            skip_files.contains(&(m.dev(), m.ino()))
        })
}

/// Two names that differ only in Unicode normalisation (possible on Linux) would be one entity
/// key and overwrite each other on every scan. The name already in NFC wins; the other is
/// reported and skipped. On a normalisation-insensitive file system (macOS) both spellings open
/// the same file, which is no clash.
fn shadowed_by_nfc_twin(entry: &walkdir::DirEntry) -> bool {
    use unicode_normalization::UnicodeNormalization;
    use walkdir::DirEntryExt;
    let Some(name) = entry.file_name().to_str() else {
        return false;
    };
    if name.is_ascii() || unicode_normalization::is_nfc(name) {
        return false;
    }
    let nfc: String = name.nfc().collect();
    let twin = entry.path().with_file_name(nfc);
    match std::fs::symlink_metadata(&twin) {
        Ok(meta) => {
            use std::os::unix::fs::MetadataExt;
            if meta.ino() == entry.ino() {
                return false;
            }
            tracing::warn!(
                path = ?entry.path(),
                twin = ?twin,
                "skipped: differs from another name only in Unicode normalisation; rename one of them"
            );
            true
        }
        Err(_) => false,
    }
}

pub fn plural<'a>(n: usize, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 {
        one
    } else {
        many
    }
}

fn read_worker(
    jobs: Receiver<Vec<Job>>,
    out: Sender<Vec<Observation>>,
    observed: &HashMap<Box<str>, ObservedStat>,
    shared: &Shared,
    budget: &TextBudget,
    max_content: usize,
    clock: &store::Clock,
) {
    // The writer is the critical path and the readers run thousands of files ahead of it: at
    // equal priority, eight runnable readers kept it waiting for a core a third of the time.
    store::run_behind_the_writer();
    let mut buf = Vec::new();
    let mut group = Vec::with_capacity(GROUP);
    let mut held = 0;
    // Hands the group to the writer; false when the writer is gone.
    let hand_over = |group: &mut Vec<Observation>, held: &mut usize| {
        *held = 0;
        group.is_empty()
            || out
                .send(std::mem::replace(group, Vec::with_capacity(GROUP)))
                .is_ok()
    };
    for paths in &jobs {
        for job in paths {
            let Some(observation) = read_one(job, observed, shared, max_content, &mut buf, clock)
            else {
                continue;
            };
            let text = text_len(&observation);
            if !budget.try_take(text) {
                if !hand_over(&mut group, &mut held) {
                    return;
                }
                budget.take(text);
            }
            held += text;
            group.push(observation);
            if (group.len() >= GROUP || held >= GROUP_TEXT_BYTES)
                && !hand_over(&mut group, &mut held)
            {
                return;
            }
        }
        // Nothing to read next: what was read goes to the writer now, not after the wait.
        if jobs.is_empty() && !hand_over(&mut group, &mut held) {
            return;
        }
    }
    hand_over(&mut group, &mut held);
}

/// Reads one walked file into an observation, unless it is unchanged, gone or unreadable
/// (counted and logged here).
fn read_one(
    job: Job,
    observed: &HashMap<Box<str>, ObservedStat>,
    shared: &Shared,
    max_content: usize,
    buf: &mut Vec<u8>,
    clock: &store::Clock,
) -> Option<Observation> {
    let known = observed.get(job.key.as_str());
    // A path never observed is read whatever its stat says; the read takes its own stat, so
    // skip the lstat (one syscall of the handful a small file costs).
    if let Some(known) = known {
        let meta = match std::fs::symlink_metadata(&job.path) {
            Ok(meta) if meta.file_type().is_file() => meta,
            // Vanished or replaced since the walk: like a file the walk never met.
            Ok(_) => return None,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %job.path.display(), "cannot stat: {e}");
                shared.errors.fetch_add(1, Ordering::Relaxed);
                mark_seen(Some(known));
                return None;
            }
        };
        mark_seen(Some(known));
        let stat = FileStat::of(&meta);
        if known.bytes == stat.bytes && known.mtime_ns == stat.mtime_ns && known.inode == stat.inode
        {
            shared.unchanged.fetch_add(1, Ordering::Relaxed);
            return None;
        }
    }
    let mut attempt = 0;
    let file = loop {
        attempt += 1;
        match index::read_file_at(&job.path, max_content, buf, clock.now()) {
            Err(ReadError::Changed) if attempt < READ_ATTEMPTS => continue,
            other => break other,
        }
    };
    match file {
        Ok(file) => {
            shared.hashed.fetch_add(1, Ordering::Relaxed);
            shared
                .bytes_hashed
                .fetch_add(file.stat.bytes, Ordering::Relaxed);
            Some(Observation::Present {
                key: job.key,
                file,
                unobserved: known.is_none(),
            })
        }
        Err(ReadError::Vanished | ReadError::NotAFile) => {
            if let Some(k) = known {
                k.seen.store(false, Ordering::Relaxed);
            }
            None
        }
        Err(ReadError::Changed) => {
            tracing::info!(path = %job.path.display(), "still being written; left for the next scan");
            None
        }
        Err(ReadError::Io(e)) => {
            tracing::warn!(path = %job.path.display(), "cannot read: {e}");
            shared.errors.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

fn mark_seen(known: Option<&ObservedStat>) {
    if let Some(k) = known {
        k.seen.store(true, Ordering::Relaxed);
    }
}

/// The single writer: drains observations into transactions of up to about `BATCH` changes.
fn write_loop(
    store: &mut Store,
    rx: &Receiver<Vec<Observation>>,
    budget: &TextBudget,
    counts: &mut Counts,
    shared: &Shared,
    progress: &Progress,
) -> Result<(), ScanError> {
    let mut chunk = Vec::with_capacity(BATCH + GROUP);
    while let Ok(first) = rx.recv() {
        // Gather a full batch, waiting briefly for the readers: every commit flushes the full-text
        // index and rewrites the b-tree pages it touched, so few large ones beat many small (the
        // queue holds 256, a batch 1,000): 100,000 text files took 14.0 s with this, 17.5 s without.
        let gather_until = Instant::now() + Duration::from_millis(100);
        let mut text = 0;
        let mut next = Some(first);
        while let Some(group) = next.take() {
            let len: usize = group.iter().map(text_len).sum();
            budget.give(len);
            text += len;
            chunk.extend(group);
            if chunk.len() < BATCH && text < BATCH_TEXT_BYTES {
                next = rx.recv_deadline(gather_until).ok();
            }
        }
        commit_chunk(store, &chunk, counts)?;
        chunk.clear();
        progress.update(shared);
    }
    Ok(())
}

fn commit_chunk(
    store: &mut Store,
    chunk: &[Observation],
    counts: &mut Counts,
) -> Result<(), ScanError> {
    let batch = store.batch()?;
    for observation in chunk {
        match index::commit(&batch, observation)? {
            Change::Upserted => counts.upserted += 1,
            Change::Deleted => counts.deleted += 1,
            Change::Unchanged | Change::AlreadyShared | Change::Nothing => {}
        }
    }
    batch.commit()?;
    Ok(())
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
    for chunk in rows.chunks(BATCH) {
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

/// A one-line spinner on stderr, only on a terminal.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new(wanted: bool) -> Progress {
        if !wanted || !std::io::stderr().is_terminal() {
            return Progress { bar: None };
        }
        let bar = indicatif::ProgressBar::new_spinner();
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{spinner} {prefix}: {msg} [{elapsed}]")
        {
            bar.set_style(style);
        }
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress { bar: Some(bar) }
    }

    fn library(&self, name: &str) {
        if let Some(bar) = &self.bar {
            bar.set_prefix(name.to_owned());
            bar.set_message("walking");
        }
    }

    fn update(&self, s: &Shared) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!(
                "{} seen, {} unchanged, {} hashed ({} MB)",
                s.seen.load(Ordering::Relaxed),
                s.unchanged.load(Ordering::Relaxed),
                s.hashed.load(Ordering::Relaxed),
                s.bytes_hashed.load(Ordering::Relaxed) / 1_000_000
            ));
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TextBudget;
    use std::time::Duration;

    #[test]
    fn the_text_budget_holds_up_to_its_cap_and_a_larger_file_alone() {
        let budget = TextBudget::new(100);
        assert!(budget.try_take(60));
        assert!(budget.try_take(40), "up to the cap");
        assert!(!budget.try_take(1), "over the cap: refused, nothing held");
        budget.give(100);
        assert!(
            budget.try_take(500),
            "nothing held: a file over the cap passes alone"
        );
        assert!(!budget.try_take(1));
    }

    #[test]
    fn a_reader_over_the_budget_waits_until_the_writer_gives_text_back() {
        let budget = TextBudget::new(100);
        assert!(budget.try_take(80));
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| budget.take(50));
            std::thread::sleep(Duration::from_millis(50));
            assert!(!waiter.is_finished(), "80 + 50 is over the cap");
            budget.give(80);
            waiter.join().expect("the reader goes on");
        });
        assert!(!budget.try_take(51), "the reader now holds its 50");
    }
}

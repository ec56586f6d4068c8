//! Readers -> one writer: files are read (hashed, their text kept) on many threads and committed
//! by the caller's thread alone, in batched transactions. One set of limits, one retry rule and
//! one thread count serve both inputs: `agent scan`'s walk streams through [`read_worker`] and
//! [`write_loop`], and the watcher's changed paths go through [`read_and_commit`], in rounds
//! read one ahead of the writer.
//!
//! The two inputs differ in one thing only, order. A scan commits files as the readers finish
//! them: nothing depends on which of two new files gets the lower sequence number. The watcher's
//! paths commit in a fixed order (renames reused, then what was read, by key, then deletions),
//! so that the same changes make the same events and the deterministic simulation replays a
//! seed exactly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use serde::Serialize;

use super::commit::{commit, text_len, Change, Observation};
use super::read::{read_file_at, FileStat, ReadError, ReadFile};
use super::walk::{walk_tree, Libraries, WalkOutcome};
use crate::config::LibraryConfig;
use crate::store::read::ObservedStat;
use crate::store::{self, Store};

/// Changes committed per transaction: every commit rewrites the b-tree pages it touched, so large
/// batches write less (100,000 files: 15,100 page writes with 1,000 per batch, 10,900 with 4,000);
/// small enough that events become pushable progressively during a long scan.
pub(super) const BATCH: usize = 4000;
/// ... and at most this much text per transaction (content and payloads, see [`text_len`]): the
/// batch's text is held in memory several times over (the observations, the rows, SQLite's
/// pending full-text terms), so it is what bounds peak memory (100,000 text files: 102 MB with
/// 4 MiB of content and its payloads uncounted, 89 MB counting both).
const BATCH_TEXT_BYTES: usize = 4 << 20;
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
pub(super) const GROUP: usize = 64;
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

/// Files of the watcher's changed paths read per round, with one round read ahead of the writer:
/// small enough that a burst's reads overlap its commits (one round of a 2,000-path burst would
/// leave the writer idle until all was read), and bounded in text by [`READ_AHEAD_TEXT_BYTES`].
const READ_ROUND_FILES: usize = 512;

/// What the pipeline did, per library and in total.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub seen: u64,
    pub hashed: u64,
    pub unchanged: u64,
    pub upserted: u64,
    pub deleted: u64,
    /// Observed files an ignore file ignores now: no longer observed, and not deleted.
    pub ignored: u64,
    pub errors: u64,
    pub bytes_hashed: u64,
}

impl Counts {
    pub(super) fn add(&mut self, o: &Counts) {
        self.seen += o.seen;
        self.hashed += o.hashed;
        self.unchanged += o.unchanged;
        self.upserted += o.upserted;
        self.deleted += o.deleted;
        self.ignored += o.ignored;
        self.errors += o.errors;
        self.bytes_hashed += o.bytes_hashed;
    }
}

/// A walked file for the readers.
struct Job {
    path: PathBuf,
    key: String,
}

/// What the walker and the readers count as they go, read by the progress line.
#[derive(Default)]
pub(super) struct Tally {
    pub(super) seen: AtomicU64,
    pub(super) hashed: AtomicU64,
    pub(super) unchanged: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) bytes_hashed: AtomicU64,
}

/// `agent scan`'s pipeline for one library: one walker thread, [`reader_threads`] readers and
/// this thread as the single writer. Readers skip what `observed` holds unchanged, and mark in
/// it every path the walk met; `counts` gets the changes, `progress` is called after each
/// commit. What the walk could not read comes back, for the mass-delete guard.
pub(super) fn stream_library(
    store: &mut Store,
    library: &LibraryConfig,
    observed: &HashMap<Box<str>, ObservedStat>,
    (threads, max_content): (usize, usize),
    counts: &mut Counts,
    progress: &dyn Fn(&Tally),
) -> store::Result<WalkOutcome> {
    let tally = Tally::default();
    let skip_files = super::walk::database_files(store.path());
    let mut walked = WalkOutcome::default();
    let mut write_result: store::Result<()> = Ok(());
    let budget = TextBudget::new(READ_AHEAD_TEXT_BYTES);
    let clock = store.clock().clone();
    std::thread::scope(|scope| {
        let (job_tx, job_rx) = bounded::<Vec<Job>>(READ_AHEAD / GROUP);
        // Each observation may carry up to max_content_bytes of text: the budget bounds the queue.
        let (obs_tx, obs_rx) = bounded::<Vec<Observation>>(READ_AHEAD / GROUP);
        let (skip_files, tally_ref, budget) = (&skip_files, &tally, &budget);
        let walker = scope.spawn(move || {
            let mut group = Vec::with_capacity(GROUP);
            let outcome = walk_tree(
                library,
                &library.path,
                skip_files,
                &tally_ref.errors,
                |path, key| {
                    tally_ref.seen.fetch_add(1, Ordering::Relaxed);
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
            let (tally, clock) = (&tally, &clock);
            scope.spawn(move || {
                read_worker(job_rx, obs_tx, observed, tally, budget, max_content, clock)
            });
        }
        drop(obs_tx);
        drop(job_rx);
        write_result = write_loop(store, &obs_rx, budget, counts, &|| progress(&tally));
        // On a store error the workers stop when their channel closes.
        budget.close();
        drop(obs_rx);
        walked = walker.join().unwrap_or_default();
    });
    write_result?;
    counts.seen = tally.seen.load(Ordering::Relaxed);
    counts.hashed = tally.hashed.load(Ordering::Relaxed);
    counts.unchanged = tally.unchanged.load(Ordering::Relaxed);
    counts.errors += tally.errors.load(Ordering::Relaxed);
    counts.bytes_hashed = tally.bytes_hashed.load(Ordering::Relaxed);
    Ok(walked)
}

/// What [`read_and_commit`] committed.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Committed {
    pub(super) upserted: u64,
    pub(super) deleted: u64,
    pub(super) unchanged: u64,
    /// Files read (or reused) too soon after a write for their stat to vouch for them.
    pub(super) racy: u64,
}

/// Where the files a pipeline reads are likely to be, which decides how many reads pay off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reads {
    /// A walk of a whole tree: most reads wait on the disk.
    FromDisk,
    /// The watcher's changed paths, just written: in the page cache, so reading them is CPU work.
    Cached,
}

/// Reader threads: `configured`, or by default four per core for reads from the disk (they wait
/// on it, so more reads in flight than cores pays off), between 4 and 16; one per core, between 2
/// and 8, for cached reads, where threads beyond the cores only contend with the writer and the
/// watcher (a burst of 10,000 new files: 8 threads on 2 cores made watching add 5% more time
/// and 8% more against a scan than 2 threads did, BENCHMARKS.md "Watch").
pub(super) fn reader_threads(configured: usize, reads: Reads) -> usize {
    if configured > 0 {
        return configured;
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    match reads {
        Reads::FromDisk => (cores * 4).clamp(4, 16),
        Reads::Cached => cores.clamp(2, 8),
    }
}

/// Reads a file, again while it is being written, up to [`READ_ATTEMPTS`] times: the one retry
/// rule. A file still changing after that is left to its next event, or the next scan.
pub(super) fn read_settled(
    path: &Path,
    max_content: usize,
    buf: &mut Vec<u8>,
    clock: &store::Clock,
) -> Result<ReadFile, ReadError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match read_file_at(path, max_content, buf, clock.now()) {
            Err(ReadError::Changed) if attempt < READ_ATTEMPTS => continue,
            other => return other,
        }
    }
}

fn read_worker(
    jobs: Receiver<Vec<Job>>,
    out: Sender<Vec<Observation>>,
    observed: &HashMap<Box<str>, ObservedStat>,
    tally: &Tally,
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
            let Some(observation) = read_one(job, observed, tally, max_content, &mut buf, clock)
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
    tally: &Tally,
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
                tally.errors.fetch_add(1, Ordering::Relaxed);
                mark_seen(Some(known));
                return None;
            }
        };
        mark_seen(Some(known));
        if FileStat::of(&meta).unchanged_since(&FileStat::from(known)) {
            tally.unchanged.fetch_add(1, Ordering::Relaxed);
            return None;
        }
    }
    match read_settled(&job.path, max_content, buf, clock) {
        Ok(file) => {
            tally.hashed.fetch_add(1, Ordering::Relaxed);
            tally
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
            tally.errors.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

fn mark_seen(known: Option<&ObservedStat>) {
    if let Some(k) = known {
        k.seen.store(true, Ordering::Relaxed);
    }
}

/// The single writer: drains observations into transactions of up to [`BATCH`] changes and
/// [`BATCH_TEXT_BYTES`] of text.
fn write_loop(
    store: &mut Store,
    rx: &Receiver<Vec<Observation>>,
    budget: &TextBudget,
    counts: &mut Counts,
    after_commit: &dyn Fn(),
) -> store::Result<()> {
    let mut chunk = Vec::with_capacity(BATCH + GROUP);
    while let Ok(first) = rx.recv() {
        // Gather a full batch, waiting briefly for the readers: every commit flushes the full-text
        // index and rewrites the b-tree pages it touched, so few large ones beat many small
        // (100,000 text files took 14.0 s with this, 17.5 s without, measured when the queue held
        // 256 files and a batch 1,000; they now hold READ_AHEAD files and BATCH changes).
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
        after_commit();
    }
    Ok(())
}

/// Commits `chunk` in one transaction, counting the events it made.
pub(super) fn commit_chunk(
    store: &mut Store,
    chunk: &[Observation],
    counts: &mut Counts,
) -> store::Result<()> {
    let batch = store.batch()?;
    for observation in chunk {
        match commit(&batch, observation)? {
            Change::Upserted => counts.upserted += 1,
            Change::Deleted => counts.deleted += 1,
            Change::Unchanged | Change::AlreadyShared | Change::Nothing => {}
        }
    }
    batch.commit()?;
    Ok(())
}

/// A file among the watcher's changed paths that its probe found changed: to read.
pub(super) struct Candidate {
    pub(super) path: PathBuf,
    pub(super) key: String,
    pub(super) unobserved: bool,
    /// Its size at the probe: its text, once read, is no longer.
    pub(super) bytes: u64,
}

/// Reads the candidates a chunk ahead of the single writer, which commits everything (renames
/// reused, then what was read, in candidate order, then deletions) in transactions as large as
/// the scan's: a transaction per chunk read made a burst of new files rewrite the same b-tree
/// pages a dozen times.
pub(super) fn read_and_commit(
    store: &mut store::Store,
    libs: &Libraries,
    present: Vec<Observation>,
    to_read: &[Candidate],
    gone: Vec<Observation>,
    errors: &std::sync::atomic::AtomicU64,
    outcome: &mut Committed,
) -> store::Result<()> {
    let clock = store.clock().clone();
    let chunks = read_chunks(to_read, libs.max_content_bytes);
    std::thread::scope(|scope| {
        // One chunk read ahead: its text is bounded, and so is the memory of two of them.
        let (tx, rx) = crossbeam_channel::bounded::<Vec<Observation>>(1);
        let clock = &clock;
        scope.spawn(move || {
            for chunk in chunks {
                if tx.send(read_parallel(chunk, libs, errors, clock)).is_err() {
                    break; // the writer failed
                }
            }
        });
        let mut all = present
            .into_iter()
            .chain(rx.iter().flatten())
            .chain(gone)
            .peekable();
        while all.peek().is_some() {
            let batch = store.batch()?;
            let (mut changes, mut text) = (0, 0);
            while changes < BATCH && text < BATCH_TEXT_BYTES {
                let Some(observation) = all.next() else { break };
                if let Observation::Present { file, .. } = &observation {
                    outcome.racy += u64::from(file.racy);
                }
                match commit(&batch, &observation)? {
                    Change::Upserted => outcome.upserted += 1,
                    Change::Deleted => outcome.deleted += 1,
                    Change::Unchanged | Change::AlreadyShared => outcome.unchanged += 1,
                    Change::Nothing => {}
                }
                changes += 1;
                text += text_len(&observation);
            }
            batch.commit()?;
        }
        Ok(())
    })
}

/// Splits the candidates into rounds of reading of at most [`READ_ROUND_FILES`] files and
/// [`(READ_AHEAD_TEXT_BYTES as u64)`] of text (a file's text is at most its size and at most the cap).
fn read_chunks(candidates: &[Candidate], max_content: usize) -> Vec<&[Candidate]> {
    let mut chunks = Vec::new();
    let (mut start, mut text) = (0, 0u64);
    for (i, c) in candidates.iter().enumerate() {
        let t = 2 * c.bytes.min(max_content as u64);
        if i > start && (i - start == READ_ROUND_FILES || text + t > (READ_AHEAD_TEXT_BYTES as u64))
        {
            chunks.push(&candidates[start..i]);
            (start, text) = (i, 0);
        }
        text += t;
    }
    if start < candidates.len() {
        chunks.push(&candidates[start..]);
    }
    chunks
}

/// Reads files on a few threads (reads of small files wait on the disk, not the CPU).
fn read_parallel(
    candidates: &[Candidate],
    libs: &Libraries,
    errors: &std::sync::atomic::AtomicU64,
    clock: &store::Clock,
) -> Vec<Observation> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let next = AtomicUsize::new(0);
    let out = Mutex::new(Vec::with_capacity(candidates.len()));
    let threads = reader_threads(libs.hash_threads, Reads::Cached)
        .min(candidates.len().div_ceil(16))
        .max(1);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                // Behind the writer, and behind the watcher's thread: at equal priority they
                // took the core the watcher needed, and its events reached the daemon late.
                store::run_behind_the_writer();
                let mut buf = Vec::new();
                let mut mine = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(c) = candidates.get(i) else { break };
                    match read_settled(&c.path, libs.max_content_bytes, &mut buf, clock) {
                        Ok(file) => mine.push(Observation::Present {
                            key: c.key.clone(),
                            file,
                            unobserved: c.unobserved,
                        }),
                        // Gone or still being written: its next event brings it back.
                        Err(ReadError::Vanished | ReadError::NotAFile | ReadError::Changed) => {}
                        Err(ReadError::Io(e)) => {
                            tracing::warn!(path = ?c.path, "cannot read: {e}");
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                if let Ok(mut out) = out.lock() {
                    out.extend(mine);
                }
            });
        }
    });
    let mut out = out.into_inner().unwrap_or_default();
    // Deterministic commit order, whatever the threads did.
    out.sort_by(|a, b| match (a, b) {
        (Observation::Present { key: x, .. }, Observation::Present { key: y, .. }) => x.cmp(y),
        _ => std::cmp::Ordering::Equal,
    });
    out
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

//! The watcher: notify's events, coalesced per path over a settle window, become batches of paths
//! for `index::index_paths` (the same pipeline `agent scan` uses).
//!
//! The notify callback never blocks: it `try_send`s into a bounded queue, and when the queue is
//! full it raises a flag instead, so the daemon rescans rather than silently dropping changes
//! (STYLE.md habit 4). Nothing here keeps a map of the tree: the observed state in SQLite does.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::config::LibraryConfig;
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};

/// Queue depth between notify's thread and the daemon: a burst beyond it triggers a rescan.
const QUEUE: usize = 65_536;

/// What the daemon learns from the watcher.
#[derive(Debug)]
pub enum FsSignal {
    /// These paths changed (in any way: created, written, renamed, removed), at this time. The
    /// time is taken as the event arrives, not when the daemon gets to it: while it indexes a
    /// batch, events wait in the queue, and their settle window must not restart when it is done.
    Changed {
        paths: Vec<PathBuf>,
        at: Instant,
        settle: Settle,
    },
    /// The kernel dropped events (inotify's queue overflowed): rescan everything.
    Rescan,
    /// The watcher failed, e.g. the inotify watch limit was reached while adding new folders.
    Error(notify::Error),
}

/// What an event says about how soon its path may be indexed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Created, written, renamed or removed: it may change again, settle for the whole window.
    Changed,
    /// A writer closed it, or it is a folder just created: complete for now, it settles for
    /// a quarter of the settle window. (A new folder's files have events of their own, or were
    /// complete before it was watched: the walk of the folder leaves the pending ones to their
    /// events.)
    Complete,
    /// Its metadata changed (mode, owner, times): after a close (an archiver setting the mtime
    /// of the file it just wrote, a copy keeping modes), it stays closed; otherwise as `Changed`.
    Metadata,
}

/// A watch on every folder of every library that its ignore files do not ignore, feeding a
/// bounded queue. Each folder is watched on its own rather than the root recursively: notify
/// would watch the ignored folders too (a `node_modules` would cost thousands of watches).
pub struct FsWatcher {
    watcher: RecommendedWatcher,
    overflowed: Arc<AtomicBool>,
    /// The folders watched.
    folders: BTreeSet<PathBuf>,
}

impl FsWatcher {
    pub fn new() -> notify::Result<(FsWatcher, Receiver<FsSignal>)> {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let overflowed = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&overflowed);
        // Changes, and a writer's close; not opens, reads or closes without a write: with
        // notify's default mask inotify reports those too, the agent's own reads of the files it
        // indexes among them (a burst of new files was five kernel events a file, and a fifth
        // of the agent's CPU went to reading and dropping them).
        let kinds = notify::EventKindMask::CORE | notify::EventKindMask::ACCESS_CLOSE;
        let config = notify::Config::default().with_event_kinds(kinds);
        let watcher = RecommendedWatcher::new(
            move |event: notify::Result<Event>| forward(&tx, &flag, event),
            config,
        )?;
        Ok((
            FsWatcher {
                watcher,
                overflowed,
                folders: BTreeSet::new(),
            },
            rx,
        ))
    }

    /// Watches a library: its root and the folders below that are not ignored.
    pub fn watch(&mut self, library: &LibraryConfig) -> notify::Result<()> {
        self.follow(library, &library.path)
    }

    /// Brings the watches of `dir` (a folder of `library`, or a path that was one) and the
    /// folders below it up to date: new folders watched, folders its ignore files now ignore
    /// unwatched, folders gone forgotten. Done before the folder is indexed, so that a file
    /// created in a new folder has an event, or was there for the folder's walk to meet.
    pub fn follow(&mut self, library: &LibraryConfig, dir: &Path) -> notify::Result<()> {
        let wanted: BTreeSet<PathBuf> = crate::index::folders_to_watch(library, dir)
            .into_iter()
            .collect();
        let below: Vec<PathBuf> = self
            .folders
            .range(dir.to_path_buf()..)
            .take_while(|p| p.starts_with(dir))
            .filter(|p| !wanted.contains(*p))
            .cloned()
            .collect();
        for path in below {
            self.folders.remove(&path);
            // A folder deleted or moved away lost its watch with it (and one moved keeps its
            // watch under its new name, which removing the old name would take away).
            if path.is_dir() {
                let _ = self.watcher.unwatch(&path);
            }
        }
        for path in wanted {
            if !self.folders.contains(&path) {
                self.watcher.watch(&path, RecursiveMode::NonRecursive)?;
                self.folders.insert(path);
            }
        }
        Ok(())
    }

    /// Stops watching `root` and every folder below it.
    pub fn unwatch(&mut self, root: &Path) {
        let below: Vec<PathBuf> = self
            .folders
            .range(root.to_path_buf()..)
            .take_while(|p| p.starts_with(root))
            .cloned()
            .collect();
        for path in below {
            self.folders.remove(&path);
            let _ = self.watcher.unwatch(&path);
        }
    }

    /// Whether `path` is a folder watched.
    pub fn is_watched(&self, path: &Path) -> bool {
        self.folders.contains(path)
    }

    /// True (once) when events were dropped because the queue was full.
    pub fn take_overflow(&self) -> bool {
        self.overflowed.swap(false, Ordering::Relaxed)
    }
}

fn forward(tx: &Sender<FsSignal>, overflowed: &AtomicBool, event: notify::Result<Event>) {
    use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};
    let signal = match event {
        Ok(event) if event.need_rescan() => FsSignal::Rescan,
        Ok(event) if event.paths.is_empty() => return,
        Ok(event) => {
            let settle = match event.kind {
                EventKind::Access(AccessKind::Close(AccessMode::Write))
                | EventKind::Create(CreateKind::Folder) => Settle::Complete,
                // Reads change nothing we index.
                EventKind::Access(_) => return,
                EventKind::Modify(ModifyKind::Metadata(_)) => Settle::Metadata,
                _ => Settle::Changed,
            };
            FsSignal::Changed {
                paths: event.paths,
                at: Instant::now(),
                settle,
            }
        }
        Err(e) => FsSignal::Error(e),
    };
    if tx.try_send(signal).is_err() {
        overflowed.store(true, Ordering::Relaxed);
    }
}

/// Coalesces changes per path: a path is due once no event touched it for the settle window, so
/// an editor's burst of writes, or a write-to-temp-then-rename save, is indexed once. A file
/// whose writer closed it is due sooner, a quarter of the window after the close, unless it
/// changes again: it is complete, and the short wait is still
/// long enough for a save's rename of its temporary file to follow (the temporary name is then
/// gone when it is due, and only the real file is indexed). A burst of new files is then indexed
/// while it is being written, instead of all of it a window after its last file.
///
/// Deadlines only grow within each of two queues, one per wait (each deadline is an event's
/// time plus that queue's wait), so FIFO queues of (deadline, path) keep them in order; an entry
/// superseded by a later event for the same path is skipped when it reaches the front. Every
/// operation is O(1) amortised or O(log n): a burst of 10,000 new files must not cost 10,000
/// scans of 10,000 pending paths.
///
/// While a burst goes on (paths still settling behind the due ones), due paths are held back
/// until [`BURST_BATCH`] of them are due or the first has waited `after_close` more: every
/// transaction rewrites the pages it touches, so a burst indexed as it trickles in, a few dozen
/// files per commit, cost far more than the same files in a few large commits. A lone change is
/// never held.
#[derive(Debug)]
pub struct Debouncer {
    window: Duration,
    /// How long a file its writer closed waits before it is due: a quarter of the window.
    after_close: Duration,
    open: VecDeque<(Instant, PathBuf)>,
    closed: VecDeque<(Instant, PathBuf)>,
    latest: HashMap<PathBuf, Pending>,
}

/// A path's live entry: its deadline, and which queue holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pending {
    due: Instant,
    closed: bool,
}

/// Due paths enough to index at once, even while a burst goes on.
pub const BURST_BATCH: usize = 500;

impl Debouncer {
    pub fn new(window: Duration) -> Debouncer {
        Debouncer {
            window,
            after_close: window / 4,
            open: VecDeque::new(),
            closed: VecDeque::new(),
            latest: HashMap::new(),
        }
    }

    /// Whether the due paths are held back at `now` (see the type's docs). O(log n): it is asked
    /// at every wake-up, and counting the due paths one by one was a tenth of a burst's CPU.
    fn holding(&mut self, now: Instant) -> bool {
        let Some(first) = self.next_due() else {
            return false;
        };
        if first > now || now >= first + self.after_close {
            return false;
        }
        // Superseded entries count too: few, since a path changed again right after its last
        // change (a new file's create, then its write) is moved rather than queued twice.
        let due = self.open.partition_point(|(at, _)| *at <= now)
            + self.closed.partition_point(|(at, _)| *at <= now);
        due < BURST_BATCH && self.open.len() + self.closed.len() > due
    }

    /// When the daemon should look next: the earliest deadline, or the end of a burst's hold.
    pub fn next_wake(&mut self, now: Instant) -> Option<Instant> {
        let first = self.next_due()?;
        Some(if self.holding(now) {
            first + self.after_close
        } else {
            first
        })
    }

    /// The paths to index now: [`Debouncer::take_due`], unless a burst holds them back.
    pub fn take_ready(&mut self, now: Instant) -> Vec<PathBuf> {
        if self.holding(now) {
            return Vec::new();
        }
        self.take_due(now)
    }

    /// Records an event for `path` at `at`.
    pub fn add(&mut self, path: PathBuf, at: Instant, settle: Settle) {
        let closed = match settle {
            Settle::Changed => false,
            Settle::Complete => true,
            Settle::Metadata => self.latest.get(&path).is_some_and(|p| p.closed),
        };
        let (queue, wait) = if closed {
            (&mut self.closed, self.after_close)
        } else {
            (&mut self.open, self.window)
        };
        // A clock that steps back must not reorder the queue.
        let due = (at + wait).max(queue.back().map_or(at, |(d, _)| *d));
        let pending = Pending { due, closed };
        if let Some(last) = queue.back_mut().filter(|(_, p)| *p == path) {
            // The last path queued changed again: move its deadline, the order still holds.
            last.0 = due;
            if let Some(latest) = self.latest.get_mut(&path) {
                *latest = pending;
            }
            return;
        }
        self.latest.insert(path.clone(), pending);
        queue.push_back((due, path));
    }

    pub fn len(&self) -> usize {
        self.latest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.latest.is_empty()
    }

    /// Whether `path` waits for its settle window.
    pub fn is_pending(&self, path: &std::path::Path) -> bool {
        self.latest.contains_key(path)
    }

    fn drop_stale_fronts(&mut self) {
        for (queue, closed) in [(&mut self.open, false), (&mut self.closed, true)] {
            while let Some((due, path)) = queue.front() {
                if self.latest.get(path) == Some(&Pending { due: *due, closed }) {
                    break;
                }
                queue.pop_front();
            }
        }
    }

    /// When the earliest pending path becomes due.
    pub fn next_due(&mut self) -> Option<Instant> {
        self.drop_stale_fronts();
        match (self.open.front(), self.closed.front()) {
            (Some((a, _)), Some((b, _))) => Some(*a.min(b)),
            (Some((a, _)), None) | (None, Some((a, _))) => Some(*a),
            (None, None) => None,
        }
    }

    /// Removes and returns the paths due at `now`, sorted.
    pub fn take_due(&mut self, now: Instant) -> Vec<PathBuf> {
        let mut due = Vec::new();
        loop {
            self.drop_stale_fronts();
            let queue = match (self.open.front(), self.closed.front()) {
                (Some((a, _)), Some((b, _))) if a <= b => &mut self.open,
                (_, Some(_)) => &mut self.closed,
                (Some(_), None) => &mut self.open,
                (None, None) => break,
            };
            match queue.front() {
                Some((at, _)) if *at <= now => {
                    if let Some((_, path)) = queue.pop_front() {
                        self.latest.remove(&path);
                        due.push(path);
                    }
                }
                _ => break,
            }
        }
        due.sort();
        due
    }

    /// Forgets the pending paths under `root` (a library no longer watched); their queue entries
    /// go stale and are dropped as they come to the front.
    pub fn drop_under(&mut self, root: &std::path::Path) {
        self.latest.retain(|path, _| !path.starts_with(root));
    }

    /// Everything pending, due or not (at shutdown).
    pub fn take_all(&mut self) -> Vec<PathBuf> {
        self.open.clear();
        self.closed.clear();
        let mut all: Vec<PathBuf> = self.latest.drain().map(|(p, _)| p).collect();
        all.sort();
        all
    }
}

/// Whether a watch error is the inotify watch limit (ENOSPC from inotify_add_watch).
pub fn is_watch_limit(e: &notify::Error) -> bool {
    matches!(e.kind, notify::ErrorKind::MaxFilesWatch)
        || matches!(&e.kind, notify::ErrorKind::Io(io) if io.raw_os_error() == Some(libc::ENOSPC))
}

/// The kernel's inotify watch limit, where there is one to read.
pub fn watch_limit() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/inotify/max_user_watches")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The folders of a library, its root included, that its ignore files do not ignore: the
/// inotify watches watching it takes.
pub fn folders_to_watch(library: &LibraryConfig) -> u64 {
    crate::index::folders_to_watch(library, &library.path).len() as u64
}

/// A `fs.inotify.max_user_watches` to suggest when `needed` more watches are wanted: room for
/// them over the current `limit` (8192 when unknown), rounded up to a power of two.
pub fn suggested_watch_limit(needed: u64, limit: Option<u64>) -> u64 {
    (needed + limit.unwrap_or(8192)).next_power_of_two()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn a_path_is_due_once_quiet_for_the_window() {
        let t0 = Instant::now();
        let w = Duration::from_millis(100);
        let mut d = Debouncer::new(w);
        d.add("a".into(), t0, Settle::Changed);
        d.add("b".into(), t0 + Duration::from_millis(10), Settle::Changed);
        d.add("a".into(), t0 + Duration::from_millis(60), Settle::Changed); // still being written
        assert_eq!(d.next_due(), Some(t0 + Duration::from_millis(110)));
        assert!(d.take_due(t0 + Duration::from_millis(100)).is_empty());
        assert_eq!(
            d.take_due(t0 + Duration::from_millis(110)),
            [PathBuf::from("b")]
        );
        assert_eq!(
            d.take_due(t0 + Duration::from_millis(160)),
            [PathBuf::from("a")]
        );
        assert!(d.is_empty());
    }

    #[test]
    fn a_lone_change_is_ready_as_soon_as_it_settles() {
        let t0 = Instant::now();
        let w = Duration::from_millis(100);
        let mut d = Debouncer::new(w);
        d.add("a".into(), t0, Settle::Changed);
        assert_eq!(d.next_wake(t0), Some(t0 + w));
        assert_eq!(d.take_ready(t0 + w), [PathBuf::from("a")]);
    }

    #[test]
    fn during_a_burst_settled_paths_wait_to_be_indexed_together() {
        let t0 = Instant::now();
        let w = Duration::from_millis(100);
        let hold = w / 4;
        let ms = Duration::from_millis;
        let mut d = Debouncer::new(w);
        // One file a millisecond: when the first has settled, a hundred are still settling.
        for i in 0..200u64 {
            d.add(format!("f{i:03}").into(), t0 + ms(i), Settle::Changed);
        }
        let now = t0 + ms(110);
        assert!(d.take_ready(now).is_empty(), "held while the burst goes on");
        assert_eq!(
            d.next_wake(now),
            Some(t0 + w + hold),
            "until a quarter window more"
        );
        let ready = d.take_ready(t0 + w + hold);
        assert_eq!(ready.len(), 26, "everything due by then, in one batch");
        // The tail of the burst, once nothing is settling behind it, goes at once.
        assert_eq!(d.take_ready(t0 + ms(298)).len(), 173);
        assert_eq!(d.take_ready(t0 + ms(299)).len(), 1);
        assert!(d.is_empty());
    }

    #[test]
    fn a_file_its_writer_closed_is_due_a_quarter_window_after_the_close() {
        let t0 = Instant::now();
        let w = Duration::from_millis(100);
        let mut d = Debouncer::new(w);
        d.add("new.txt".into(), t0, Settle::Changed); // created
        d.add("new.txt".into(), t0, Settle::Changed); // written
        d.add(
            "new.txt".into(),
            t0 + Duration::from_millis(1),
            Settle::Complete,
        ); // closed
        assert_eq!(d.len(), 1);
        assert_eq!(d.next_due(), Some(t0 + Duration::from_millis(26)));
        assert_eq!(
            d.take_ready(t0 + Duration::from_millis(26)),
            [PathBuf::from("new.txt")]
        );
        assert!(d.is_empty());
        assert_eq!(d.next_due(), None, "the superseded entry is not due again");
    }

    #[test]
    fn a_write_after_the_close_waits_the_whole_window_again() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut d = Debouncer::new(ms(100));
        d.add("log.txt".into(), t0, Settle::Complete);
        d.add("log.txt".into(), t0 + ms(10), Settle::Changed); // reopened and appended to
        assert_eq!(d.next_due(), Some(t0 + ms(110)));
        assert!(d.take_due(t0 + ms(50)).is_empty());
        assert_eq!(d.take_due(t0 + ms(110)).len(), 1);
    }

    #[test]
    fn metadata_set_after_a_close_keeps_the_short_wait_but_not_otherwise() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut d = Debouncer::new(ms(100));
        // An archiver: writes, closes, then sets the mtime and mode of the file.
        d.add("a/x.bin".into(), t0, Settle::Changed);
        d.add("a/x.bin".into(), t0, Settle::Complete);
        d.add("a/x.bin".into(), t0 + ms(1), Settle::Metadata);
        // A chmod of a file nobody was writing.
        d.add("b.txt".into(), t0 + ms(1), Settle::Metadata);
        assert_eq!(d.take_due(t0 + ms(26)), [PathBuf::from("a/x.bin")]);
        assert!(d.take_due(t0 + ms(100)).is_empty());
        assert_eq!(d.take_due(t0 + ms(101)), [PathBuf::from("b.txt")]);
    }

    #[test]
    fn paths_of_both_waits_come_out_by_deadline() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut d = Debouncer::new(ms(100));
        d.add("slow".into(), t0, Settle::Changed); // due at 100
        d.add("fast".into(), t0 + ms(50), Settle::Complete); // due at 75
        d.add("later".into(), t0 + ms(90), Settle::Complete); // due at 115
        assert!(d.is_pending(Path::new("slow")));
        assert_eq!(d.next_due(), Some(t0 + ms(75)));
        assert_eq!(d.take_due(t0 + ms(75)), [PathBuf::from("fast")]);
        assert_eq!(d.next_due(), Some(t0 + ms(100)));
        assert_eq!(
            d.take_due(t0 + ms(120)),
            [PathBuf::from("later"), PathBuf::from("slow")]
        );
        assert!(!d.is_pending(Path::new("slow")));
    }

    #[test]
    fn a_burst_is_indexed_in_batches_of_at_least_burst_batch() {
        let t0 = Instant::now();
        let w = Duration::from_millis(100);
        let mut d = Debouncer::new(w);
        for i in 0..(2 * BURST_BATCH) {
            d.add(
                format!("f{i:05}").into(),
                t0 + Duration::from_micros(i as u64 * 20),
                Settle::Changed,
            );
        }
        d.add(
            "late".into(),
            t0 + Duration::from_millis(50),
            Settle::Changed,
        );
        // All but "late" are due at t0 + w + 20 ms: enough to go without waiting.
        let ready = d.take_ready(t0 + w + Duration::from_millis(20));
        assert_eq!(ready.len(), 2 * BURST_BATCH);
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn a_path_changed_again_is_due_only_after_its_last_change() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut d = Debouncer::new(ms(100));
        for i in 0..1000u64 {
            d.add(format!("f{}", i % 10).into(), t0 + ms(i), Settle::Changed);
        }
        assert_eq!(d.len(), 10);
        assert!(
            d.take_due(t0 + ms(1000)).is_empty(),
            "f0 changed last at 990 ms"
        );
        assert_eq!(d.take_due(t0 + ms(1099)).len(), 10);
        assert!(d.is_empty());
        assert_eq!(d.next_due(), None);
    }

    #[test]
    fn shutdown_takes_everything_pending() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(Duration::from_secs(10));
        d.add("b".into(), t0, Settle::Changed);
        d.add("a".into(), t0, Settle::Changed);
        assert_eq!(d.take_all(), [PathBuf::from("a"), PathBuf::from("b")]);
        assert_eq!(d.len(), 0);
    }
}

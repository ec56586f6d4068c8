//! The watcher: notify's events, coalesced per path over a settle window, become batches of paths
//! for `index::index_paths` (the same indexer `agent scan` uses).
//!
//! The notify callback never blocks: it `try_send`s into a bounded queue, and when the queue is
//! full it raises a flag instead, so the daemon rescans rather than silently dropping changes
//! (STYLE.md habit 4). Nothing here keeps a map of the tree: the observed state in SQLite does.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};

/// Queue depth between notify's thread and the daemon: a burst beyond it triggers a rescan.
const QUEUE: usize = 65_536;

/// What the daemon learns from the watcher.
#[derive(Debug)]
pub enum FsSignal {
    /// These paths changed (in any way: created, written, renamed, removed), at this time. The
    /// time is taken as the event arrives, not when the daemon gets to it: while it indexes a
    /// batch, events wait in the queue, and their settle window must not restart when it is done.
    Changed(Vec<PathBuf>, Instant),
    /// The kernel dropped events (inotify's queue overflowed): rescan everything.
    Rescan,
    /// The watcher failed, e.g. the inotify watch limit was reached while adding new folders.
    Error(notify::Error),
}

/// A recursive watch on every library root, feeding a bounded queue.
pub struct FsWatcher {
    watcher: RecommendedWatcher,
    overflowed: Arc<AtomicBool>,
}

impl FsWatcher {
    pub fn new() -> notify::Result<(FsWatcher, Receiver<FsSignal>)> {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let overflowed = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&overflowed);
        let watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
            forward(&tx, &flag, event);
        })?;
        Ok((
            FsWatcher {
                watcher,
                overflowed,
            },
            rx,
        ))
    }

    pub fn watch(&mut self, root: &std::path::Path) -> notify::Result<()> {
        self.watcher.watch(root, RecursiveMode::Recursive)
    }

    pub fn unwatch(&mut self, root: &std::path::Path) {
        let _ = self.watcher.unwatch(root);
    }

    /// True (once) when events were dropped because the queue was full.
    pub fn take_overflow(&self) -> bool {
        self.overflowed.swap(false, Ordering::Relaxed)
    }
}

fn forward(tx: &Sender<FsSignal>, overflowed: &AtomicBool, event: notify::Result<Event>) {
    let signal = match event {
        Ok(event) if event.need_rescan() => FsSignal::Rescan,
        // Reads change nothing we index.
        Ok(Event {
            kind: EventKind::Access(_),
            ..
        }) => return,
        Ok(event) if event.paths.is_empty() => return,
        Ok(event) => FsSignal::Changed(event.paths, Instant::now()),
        Err(e) => FsSignal::Error(e),
    };
    if tx.try_send(signal).is_err() {
        overflowed.store(true, Ordering::Relaxed);
    }
}

/// Coalesces changes per path: a path is due once no event touched it for the settle window, so
/// an editor's burst of writes, or a write-to-temp-then-rename save, is indexed once.
///
/// Deadlines only grow (each is the time of an event plus the window), so a FIFO queue of
/// (deadline, path) keeps them in order; an entry superseded by a later event for the same path
/// is skipped when it reaches the front. Every operation is O(1) amortised: a burst of 10,000 new
/// files must not cost 10,000 scans of 10,000 pending paths.
///
/// While a burst goes on (paths still settling behind the due ones), due paths are held back
/// until [`BURST_BATCH`] of them are due or the first has waited one more window: every
/// transaction rewrites the pages it touches, so a burst indexed as it trickles in, a few dozen
/// files per commit, cost far more than the same files in a few large commits. A lone change is
/// never held.
#[derive(Debug)]
pub struct Debouncer {
    window: Duration,
    queue: VecDeque<(Instant, PathBuf)>,
    latest: HashMap<PathBuf, Instant>,
}

/// Due paths enough to index at once, even while a burst goes on.
pub const BURST_BATCH: usize = 500;

impl Debouncer {
    pub fn new(window: Duration) -> Debouncer {
        Debouncer {
            window,
            queue: VecDeque::new(),
            latest: HashMap::new(),
        }
    }

    /// Whether the due paths are held back at `now` (see the type's docs). O(log n): it is asked
    /// at every wake-up, and counting the due paths one by one was a tenth of a burst's CPU.
    fn holding(&mut self, now: Instant) -> bool {
        let Some(first) = self.next_due() else {
            return false;
        };
        if first > now || now >= first + self.window {
            return false;
        }
        // Superseded entries count too: few, since a path changed again right after its last
        // change (a new file's create, then its write) is moved rather than queued twice.
        let due = self.queue.partition_point(|(at, _)| *at <= now);
        due < BURST_BATCH && self.queue.len() > due
    }

    /// When the daemon should look next: the earliest deadline, or the end of a burst's hold.
    pub fn next_wake(&mut self, now: Instant) -> Option<Instant> {
        let first = self.next_due()?;
        Some(if self.holding(now) {
            first + self.window
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

    pub fn add(&mut self, path: PathBuf, now: Instant) {
        // A clock that steps back must not reorder the queue.
        let due = (now + self.window).max(self.queue.back().map_or(now, |(d, _)| *d));
        if let Some(last) = self.queue.back_mut().filter(|(_, p)| *p == path) {
            // The last path queued changed again: move its deadline, the order still holds.
            last.0 = due;
            if let Some(latest) = self.latest.get_mut(&path) {
                *latest = due;
            }
            return;
        }
        self.latest.insert(path.clone(), due);
        self.queue.push_back((due, path));
    }

    pub fn len(&self) -> usize {
        self.latest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.latest.is_empty()
    }

    fn drop_stale_front(&mut self) {
        while let Some((due, path)) = self.queue.front() {
            if self.latest.get(path) == Some(due) {
                break;
            }
            self.queue.pop_front();
        }
    }

    /// When the earliest pending path becomes due.
    pub fn next_due(&mut self) -> Option<Instant> {
        self.drop_stale_front();
        self.queue.front().map(|(due, _)| *due)
    }

    /// Removes and returns the paths due at `now`, sorted.
    pub fn take_due(&mut self, now: Instant) -> Vec<PathBuf> {
        let mut due = Vec::new();
        loop {
            self.drop_stale_front();
            match self.queue.front() {
                Some((at, _)) if *at <= now => {
                    if let Some((_, path)) = self.queue.pop_front() {
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

    /// Everything pending, due or not (at shutdown).
    pub fn take_all(&mut self) -> Vec<PathBuf> {
        self.queue.clear();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_due_once_quiet_for_the_window() {
        let t0 = Instant::now();
        let w = Duration::from_millis(100);
        let mut d = Debouncer::new(w);
        d.add("a".into(), t0);
        d.add("b".into(), t0 + Duration::from_millis(10));
        d.add("a".into(), t0 + Duration::from_millis(60)); // still being written
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
        d.add("a".into(), t0);
        assert_eq!(d.next_wake(t0), Some(t0 + w));
        assert_eq!(d.take_ready(t0 + w), [PathBuf::from("a")]);
    }

    #[test]
    fn during_a_burst_settled_paths_wait_to_be_indexed_together() {
        let t0 = Instant::now();
        let w = Duration::from_millis(100);
        let ms = Duration::from_millis;
        let mut d = Debouncer::new(w);
        // One file a millisecond: when the first has settled, a hundred are still settling.
        for i in 0..200u64 {
            d.add(format!("f{i:03}").into(), t0 + ms(i));
        }
        let now = t0 + ms(150);
        assert!(d.take_ready(now).is_empty(), "held while the burst goes on");
        assert_eq!(d.next_wake(now), Some(t0 + w + w), "until one more window");
        let ready = d.take_ready(t0 + w + w);
        assert_eq!(ready.len(), 101, "everything due by then, in one batch");
        // The tail of the burst, once nothing is settling behind it, goes at once.
        assert_eq!(d.take_ready(t0 + ms(299)).len(), 99);
        assert!(d.is_empty());
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
            );
        }
        d.add("late".into(), t0 + Duration::from_millis(50));
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
            d.add(format!("f{}", i % 10).into(), t0 + ms(i));
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
        d.add("b".into(), t0);
        d.add("a".into(), t0);
        assert_eq!(d.take_all(), [PathBuf::from("a"), PathBuf::from("b")]);
        assert_eq!(d.len(), 0);
    }
}

//! What `agent run` says at its default log level: one line per indexed batch and per push or
//! pull, but during a burst at most one line a second, a summary ("indexed 1,234 files in 57
//! batches over the last 1.0 s") instead of 57 lines. The first batch after a quiet second is
//! said at once, so a lone change shows up in the log when it happens.
//!
//! [`BurstLog`] only decides; its caller logs the [`Line`] it returns (with its own fields) and
//! passes the time in, so it is tested with made-up instants.

use std::fmt;
use std::time::{Duration, Instant};

use crate::term::{plural, thousands};

/// At most one line per this much time, during a burst.
pub const WINDOW: Duration = Duration::from_secs(1);

/// What one line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// "indexed", "pushed", "pulled".
    pub verb: &'static str,
    /// Singular and plural of what is counted: ("file", "files").
    pub noun: (&'static str, &'static str),
    pub items: u64,
    pub batches: u64,
    /// The time the batches took together.
    pub busy: Duration,
    /// `None` for a batch said alone; else the time the summary covers.
    pub over: Option<Duration>,
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let noun = plural(self.items, self.noun.0, self.noun.1);
        write!(f, "{} {} {noun}", self.verb, thousands(self.items))?;
        match self.over {
            None => write!(f, " in {} ms", self.busy.as_millis()),
            Some(over) => write!(
                f,
                " in {} {} over the last {:.1} s",
                thousands(self.batches),
                plural(self.batches, "batch", "batches"),
                over.as_secs_f64()
            ),
        }
    }
}

/// The summariser of one kind of line.
#[derive(Debug)]
pub struct BurstLog {
    verb: &'static str,
    noun: (&'static str, &'static str),
    /// When the last line was said.
    last_line: Option<Instant>,
    /// Batches since then, not said yet: items, batches, busy time, and when the first came.
    held: Option<(u64, u64, Duration, Instant)>,
}

impl BurstLog {
    pub fn new(verb: &'static str, noun: (&'static str, &'static str)) -> BurstLog {
        BurstLog {
            verb,
            noun,
            last_line: None,
            held: None,
        }
    }

    /// A batch of `items` that took `busy` ended at `now`: the line to say now, if any.
    pub fn note(&mut self, now: Instant, items: u64, busy: Duration) -> Option<Line> {
        let quiet = self.last_line.is_none_or(|at| now >= at + WINDOW);
        if quiet && self.held.is_none() {
            self.last_line = Some(now);
            return Some(Line {
                verb: self.verb,
                noun: self.noun,
                items,
                batches: 1,
                busy,
                over: None,
            });
        }
        let held = self.held.get_or_insert((0, 0, Duration::ZERO, now));
        held.0 += items;
        held.1 += 1;
        held.2 += busy;
        self.flush(now)
    }

    /// The summary of the batches held back, once a second has passed since the last line.
    pub fn flush(&mut self, now: Instant) -> Option<Line> {
        let since = self.last_line.unwrap_or(now);
        if now < since + WINDOW {
            return None;
        }
        self.finish(now)
    }

    /// The summary of the batches held back, whatever the time: the last line, at a stop.
    pub fn finish(&mut self, now: Instant) -> Option<Line> {
        let (items, batches, busy, first) = self.held?;
        let since = self.last_line.unwrap_or(first).min(now);
        self.held = None;
        self.last_line = Some(now);
        Some(Line {
            verb: self.verb,
            noun: self.noun,
            items,
            batches,
            busy,
            over: Some(now - since),
        })
    }

    /// When [`BurstLog::flush`] has a line to say, if batches are held back.
    pub fn wake_at(&self) -> Option<Instant> {
        self.held
            .map(|(_, _, _, first)| self.last_line.unwrap_or(first) + WINDOW)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_lone_batch_is_said_at_once() {
        let t0 = Instant::now();
        let mut log = BurstLog::new("indexed", ("file", "files"));
        let line = log.note(t0, 1, 12 * MS).expect("said at once");
        assert_eq!(line.to_string(), "indexed 1 file in 12 ms");
        assert_eq!(log.wake_at(), None);
        // A quiet second later, the next one is said at once too.
        let line = log.note(t0 + 1500 * MS, 3, 4 * MS).expect("said at once");
        assert_eq!(line.to_string(), "indexed 3 files in 4 ms");
    }

    #[test]
    fn many_batches_within_a_second_become_one_line_with_the_totals() {
        let t0 = Instant::now();
        let mut log = BurstLog::new("indexed", ("file", "files"));
        let mut lines = Vec::new();
        lines.extend(log.note(t0, 10, 5 * MS));
        // 57 more batches of 21 or 22 files, one every 15 ms: 1,234 files.
        for i in 0..57u64 {
            let now = t0 + (i as u32 + 1) * 15 * MS;
            lines.extend(log.note(now, if i < 37 { 22 } else { 21 }, 10 * MS));
        }
        assert_eq!(lines.len(), 1, "the first alone: {lines:?}");
        let wake = log.wake_at().expect("a summary is due");
        assert_eq!(wake, t0 + WINDOW);
        assert_eq!(log.flush(wake - MS), None, "not before the second is over");
        let summary = log.flush(wake).expect("the summary");
        assert_eq!(
            summary.to_string(),
            "indexed 1,234 files in 57 batches over the last 1.0 s"
        );
        assert_eq!((summary.batches, summary.busy), (57, 570 * MS));
        assert_eq!(log.wake_at(), None);
        assert_eq!(log.flush(wake + WINDOW), None, "nothing held");
    }

    #[test]
    fn a_burst_longer_than_a_second_says_one_line_a_second() {
        let t0 = Instant::now();
        let mut log = BurstLog::new("pushed", ("event", "events"));
        let mut lines = 0;
        for i in 0..300u32 {
            lines += usize::from(log.note(t0 + i * 10 * MS, 2, MS).is_some());
        }
        // 3 s of batches: the first alone, then one summary a second.
        assert_eq!(lines, 3);
        assert!(log.flush(t0 + 3 * WINDOW).is_some());
    }

    #[test]
    fn at_a_stop_what_is_held_is_said_at_once() {
        let t0 = Instant::now();
        let mut log = BurstLog::new("indexed", ("file", "files"));
        assert!(log.note(t0, 1, MS).is_some());
        assert_eq!(log.note(t0 + 100 * MS, 2, MS), None);
        let last = log.finish(t0 + 200 * MS).expect("the held batch");
        assert_eq!(
            last.to_string(),
            "indexed 2 files in 1 batch over the last 0.2 s"
        );
        assert_eq!(log.finish(t0 + 300 * MS), None);
    }
}

//! The mass-delete rule, once, for both ways deletions are found: `agent scan` applies it to the
//! deletions of one walk, `agent run` to those its watcher found over a sliding window
//! ([`DeleteWindow`]). A library root replaced by another folder, a wrong mount or a half-restored
//! backup look just like a mass delete, and the deletions would reach every device: so past the
//! rule they are not recorded until the user says they are real
//! (`agent scan --allow-mass-delete --library NAME`).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::store::{self, kv::HeldDeletions, Store};

/// A mass delete removes more than this many files...
pub const MASS_DELETE: usize = 100;
/// ...within this long, for `agent run` (a scan's deletions are all at once).
pub const WINDOW: Duration = Duration::from_secs(60);
/// Held keys kept by name; more are counted only (the release is a scan, which finds them).
pub const HELD_KEYS_CAP: usize = 100_000;

/// The rule: more than [`MASS_DELETE`] deletions, and more than half of the `observed` files
/// (what the library held before them).
pub fn is_mass_delete(deletions: usize, observed: u64) -> bool {
    deletions > MASS_DELETE && deletions as u64 * 2 > observed
}

/// The command that releases a library's held (or refused) deletions.
pub fn release_command(library: &str) -> String {
    format!("agent scan --allow-mass-delete --library {library}")
}

/// Deletions recorded per library over the last [`WINDOW`]; time is given, not read, so tests
/// step it.
#[derive(Debug)]
pub struct DeleteWindow {
    window: Duration,
    recorded: HashMap<String, VecDeque<(Instant, usize)>>,
}

impl DeleteWindow {
    pub fn new(window: Duration) -> DeleteWindow {
        DeleteWindow {
            window,
            recorded: HashMap::new(),
        }
    }

    /// Deletions recorded in `library` within the window before `now`.
    pub fn recent(&mut self, library: &str, now: Instant) -> usize {
        let Some(q) = self.recorded.get_mut(library) else {
            return 0;
        };
        while q
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= self.window)
        {
            q.pop_front();
        }
        q.iter().map(|(_, n)| n).sum()
    }

    /// Whether `more` deletions now, in a library observing `observed` files, make a mass delete
    /// together with those recorded in the window (which `observed` no longer counts).
    pub fn trips(&mut self, library: &str, more: usize, observed: u64, now: Instant) -> bool {
        let recent = self.recent(library, now);
        is_mass_delete(recent + more, observed + recent as u64)
    }

    pub fn record(&mut self, library: &str, deletions: usize, now: Instant) {
        if deletions > 0 {
            self.recorded
                .entry(library.to_owned())
                .or_default()
                .push_back((now, deletions));
        }
    }
}

/// `agent run`'s gate on the deletions its watcher found: lets through what the rule allows, and
/// holds the rest in `lib_kv` (so a restart keeps them), with a warning once per hold.
#[derive(Debug)]
pub struct DeleteGuard {
    window: DeleteWindow,
}

impl Default for DeleteGuard {
    fn default() -> Self {
        DeleteGuard {
            window: DeleteWindow::new(WINDOW),
        }
    }
}

impl DeleteGuard {
    /// Of the deletions `gone` (entity keys), those to record now; the others are held.
    pub fn admit(
        &mut self,
        store: &mut Store,
        gone: Vec<String>,
        now: Instant,
    ) -> store::Result<Vec<String>> {
        let mut by_library: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut admitted = Vec::new();
        for key in gone {
            // A gone folder's own key, or a path never observed here: nothing to delete.
            if store.observed(&key)?.is_none() {
                admitted.push(key);
                continue;
            }
            let library = key.split('/').next().unwrap_or_default().to_owned();
            by_library.entry(library).or_default().push(key);
        }
        for (library, keys) in by_library {
            let held = store.held_deletions(&library)?;
            let trips = held.is_some()
                || self
                    .window
                    .trips(&library, keys.len(), store.observed_count(&library)?, now);
            if !trips {
                self.window.record(&library, keys.len(), now);
                admitted.extend(keys);
                continue;
            }
            let mut held = held.unwrap_or_else(|| {
                tracing::warn!(
                    library = %library,
                    "{} files deleted within {} s, more than half of the library: holding these \
                     deletions and the next ones (a replaced folder or a wrong mount looks like \
                     this); if they really are gone, run `{}`",
                    self.window.recent(&library, now) + keys.len(),
                    WINDOW.as_secs(),
                    release_command(&library)
                );
                HeldDeletions {
                    since: crate::model::event::now_rfc3339(),
                    ..HeldDeletions::default()
                }
            });
            let mut known: HashSet<String> = held.keys.iter().cloned().collect();
            for key in keys {
                if known.contains(&key) {
                    continue;
                }
                if held.keys.len() < HELD_KEYS_CAP {
                    known.insert(key.clone());
                    held.keys.push(key);
                } else {
                    held.more += 1;
                }
            }
            let batch = store.batch()?;
            batch.set_held_deletions(&library, &held)?;
            batch.commit()?;
        }
        Ok(admitted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_is_more_than_a_hundred_and_more_than_half() {
        assert!(!is_mass_delete(100, 150), "100 is not more than 100");
        assert!(is_mass_delete(101, 150));
        assert!(
            !is_mass_delete(101, 202),
            "exactly half is not more than half"
        );
        assert!(is_mass_delete(101, 201));
        assert!(
            !is_mass_delete(5, 6),
            "a small library may lose most of its files"
        );
    }

    /// A store observing `n` files of library `a` (`a/f000`...) and one of `b`.
    fn observing(dir: &tempfile::TempDir, n: usize) -> Store {
        let mut store = Store::open(&dir.path().join("agent.db")).expect("store");
        let batch = store.batch().expect("batch");
        let row = crate::store::Observed {
            bytes: 1,
            mtime_ns: 1,
            inode: 1,
            sha256: "0".repeat(64),
        };
        for i in 0..n {
            batch
                .put_observed(&format!("a/f{i:03}"), &row)
                .expect("put");
        }
        batch.put_observed("b/only", &row).expect("put");
        batch.commit().expect("commit");
        store
    }

    fn keys(range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|i| format!("a/f{i:03}")).collect()
    }

    #[test]
    fn the_guard_lets_ordinary_deletions_through_and_holds_from_the_one_that_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = observing(&dir, 150);
        let mut guard = DeleteGuard::default();
        let t0 = Instant::now();
        let first = guard.admit(&mut store, keys(0..60), t0).expect("admit");
        assert_eq!(first.len(), 60, "60 of 150 is no mass delete");
        // As the commit would: those 60 are no longer observed.
        let batch = store.batch().expect("batch");
        for k in &first {
            batch.forget_observed(k).expect("forget");
        }
        batch.commit().expect("commit");

        let mut second = keys(60..110);
        second.push("a/never-observed-folder".into());
        second.push("b/only".into());
        let admitted = guard.admit(&mut store, second, t0).expect("admit");
        assert_eq!(
            admitted,
            ["a/never-observed-folder", "b/only"],
            "110 of 150 within the window: held; what was never observed, and another \
             library, pass"
        );
        let held = store.held_deletions("a").expect("read").expect("held");
        assert_eq!(held.keys, keys(60..110));

        // Later, and few: still held, while the hold lasts.
        let later = t0 + WINDOW * 2;
        assert!(guard
            .admit(&mut store, keys(110..111), later)
            .expect("admit")
            .is_empty());
        assert_eq!(store.held_deletions("a").unwrap().unwrap().count(), 51);
        // Held again (a restart, the same batch twice) counts once.
        guard.admit(&mut store, keys(60..70), later).expect("admit");
        assert_eq!(store.held_deletions("a").unwrap().unwrap().count(), 51);
    }

    #[test]
    fn deletions_add_up_within_the_window_and_drop_out_after_it() {
        let t0 = Instant::now();
        let mut w = DeleteWindow::new(WINDOW);
        // 150 files: 60 deleted, then 50 more 30 s later: 110 of 150 in a minute.
        assert!(!w.trips("a", 60, 150, t0));
        w.record("a", 60, t0);
        let t1 = t0 + Duration::from_secs(30);
        assert!(w.trips("a", 50, 90, t1), "observed no longer counts the 60");
        assert!(
            !w.trips("b", 50, 90, t1),
            "another library has its own count"
        );
        // A minute after the first 60, they no longer count.
        let t2 = t0 + WINDOW;
        assert_eq!(w.recent("a", t2), 0);
        assert!(!w.trips("a", 50, 90, t2));
    }
}

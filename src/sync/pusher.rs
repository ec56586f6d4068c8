//! The pusher of `agent run`: pushes the outbox soon after changes, and every `interval` does a
//! full push + pull (the fallback when no wake-up reaches the puller). [`PushSchedule`] decides
//! when, from the times it is given; [`run`] waits for it and talks to the brain.

use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver};

use super::registration::reregister;
use super::retry::Retry;
use super::settings::{record, Settings, SyncCounters};
use super::state::{Outcome, Step};
use super::{BrainClient, SyncError};
use crate::burst_log::BurstLog;
use crate::store::Store;

/// A burst of changes is pushed at most this long after its first change, however long it lasts.
pub const MAX_PUSH_DELAY: Duration = Duration::from_secs(2);
/// A change this long after the one before, with nothing waiting to be pushed, is lone: it is
/// pushed at once. Closer changes are a burst (a checkout, a copy: the indexer commits them
/// every few milliseconds), coalesced for up to `push_debounce_ms` after the last.
pub const BURST_GAP: Duration = Duration::from_millis(100);
/// With nothing due, the pusher still wakes this often (waking for nothing costs nothing).
const IDLE_WAKE: Duration = Duration::from_secs(3600);

/// What one round of the pusher does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// Push the outbox.
    Push,
    /// The periodic sync: push, then pull, then register the webhook again.
    Full,
}

/// When the pusher pushes (DESIGN.md "Push timing"): a lone change at once; a change that
/// follows another within [`BURST_GAP`] is part of a burst, pushed `debounce` after its last
/// change (at most [`MAX_PUSH_DELAY`] after its first); at start; a full sync every `interval`;
/// and after a failure when the backoff says.
#[derive(Debug)]
pub struct PushSchedule {
    debounce: Duration,
    interval: Duration,
    /// When to push; `None` when there is nothing to push.
    due: Option<Instant>,
    /// The first change of the burst not pushed yet.
    first_change: Option<Instant>,
    /// The last change seen, pushed or not: a change [`BURST_GAP`] after it is lone.
    last_change: Option<Instant>,
    next_full: Instant,
    retry: Retry,
}

impl PushSchedule {
    /// Starting at `now`: push at once (what was queued before the start), sync fully after
    /// `interval`.
    pub fn new(now: Instant, debounce: Duration, interval: Duration) -> PushSchedule {
        PushSchedule {
            debounce,
            interval,
            due: Some(now),
            first_change: None,
            last_change: None,
            next_full: now + interval,
            retry: Retry::default(),
        }
    }

    /// A change was committed at `now`.
    pub fn changed(&mut self, now: Instant) {
        let quiet = self
            .last_change
            .is_none_or(|last| now.saturating_duration_since(last) >= BURST_GAP.min(self.debounce));
        self.last_change = Some(now);
        if quiet && self.first_change.is_none() && !self.retry.is_failing() {
            // Nothing before it for a while: no burst to wait for.
            self.due = Some(now);
            return;
        }
        let first = *self.first_change.get_or_insert(now);
        self.due = Some((now + self.debounce).min(first + MAX_PUSH_DELAY));
    }

    /// When the next round may be due.
    pub fn wake_at(&self, now: Instant) -> Instant {
        let idle = now + IDLE_WAKE;
        self.due.map_or(idle, |d| d.min(idle)).min(self.next_full)
    }

    /// The round due at `now`, if any; a burst taken into it is over.
    pub fn take(&mut self, now: Instant) -> Option<Round> {
        let round = if now >= self.next_full {
            Round::Full
        } else if self.due.is_some_and(|d| now >= d) {
            Round::Push
        } else {
            return None;
        };
        self.first_change = None;
        Some(round)
    }

    /// The round started at `started` ended with `result`: nothing is due until the next change
    /// (or the next full sync), or, after a failure, the round is tried again when the backoff
    /// says. A failure is logged when it starts, and the recovery when it ends.
    pub fn finished(&mut self, started: Instant, round: Round, result: Result<(), &SyncError>) {
        match result {
            Ok(()) => {
                if self.retry.succeeded(started).is_some() {
                    tracing::info!("the brain is reachable again");
                }
                self.due = None;
                if round == Round::Full {
                    self.next_full = started + self.interval;
                }
            }
            Err(e) => {
                let failure = self.retry.failed(started);
                if failure.first {
                    tracing::warn!(
                        "sync failed ({e}); retrying in {}",
                        humantime::format_duration(failure.wait)
                    );
                }
                let again = started + failure.wait;
                self.due = Some(again);
                if round == Round::Full {
                    self.next_full = again;
                }
            }
        }
    }
}

/// The pusher's thread: runs the rounds its [`PushSchedule`] says, until `stop`.
pub fn run(
    mut store: Store,
    client: &BrainClient,
    s: &Settings,
    changes: &Receiver<()>,
    stop: &Receiver<()>,
) {
    let clock = &*s.clock;
    let mut schedule = PushSchedule::new(clock.now(), s.debounce, s.interval);
    let mut said = BurstLog::new("pushed", ("event", "events"));
    loop {
        let now = clock.now();
        let wake = schedule.wake_at(now);
        let wake = said.wake_at().map_or(wake, |w| w.min(wake));
        select! {
            recv(stop) -> _ => return,
            recv(changes) -> _ => {
                schedule.changed(clock.now());
                continue;
            },
            default(wake.saturating_duration_since(now)) => {}
        }
        if let Some(line) = said.flush(clock.now()) {
            tracing::info!(events = line.items, requests = line.batches, "{line}");
        }
        let started = clock.now();
        let Some(round) = schedule.take(started) else {
            continue;
        };
        let result = sync_round(&mut store, client, s, round);
        if let Ok(pushed) = &result {
            if pushed.pushed > 0 {
                let now = clock.now();
                if let Some(line) = said.note(now, pushed.pushed, now - started) {
                    tracing::info!(
                        events = line.items,
                        new = pushed.result.inserted_events,
                        "{line}"
                    );
                }
            }
        }
        schedule.finished(started, round, result.as_ref().map(|_| ()));
    }
}

/// One round: push, and for a full one then pull and register the webhook again. Each outcome is
/// recorded for `agent status`, and counted for `/metrics`.
fn sync_round(
    store: &mut Store,
    client: &BrainClient,
    s: &Settings,
    round: Round,
) -> Result<super::PushSummary, SyncError> {
    let pushed = super::push(store, client, s.batch);
    if let Ok(summary) = &pushed {
        let counters = &s.counters;
        SyncCounters::add(&counters.events_pushed, summary.pushed);
        SyncCounters::add(&counters.events_parked, summary.parked);
        if summary.requests > 0 {
            counters.succeeded();
        }
    }
    record(
        store,
        s,
        Step::Push,
        Outcome::of(&pushed, |p| p.requests > 0),
    );
    let pushed = pushed?;
    if round == Round::Full {
        let pulled = super::pull(store, client, s.batch, None);
        record(store, s, Step::Pull, Outcome::of(&pulled, |_| true));
        let pulled = pulled?;
        SyncCounters::add(&s.counters.events_pulled, pulled.pulled);
        s.counters.succeeded();
        if pulled.applied > 0 {
            tracing::info!(
                events = pulled.pulled,
                applied = pulled.applied,
                "pulled {} in {} ms (the periodic sync)",
                crate::term::count(pulled.pulled, "event", "events"),
                pulled.busy.as_millis()
            );
        }
        reregister(client, s);
        super::learn_device_names(store, client);
    }
    Ok(pushed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::retry::{Clock, ManualClock, BACKOFF_CAP};
    use crate::sync::ClientError;

    const DEBOUNCE: Duration = Duration::from_millis(500);
    const INTERVAL: Duration = Duration::from_secs(300);

    fn unreachable() -> SyncError {
        SyncError::Client(ClientError::Network {
            url: "http://brain.invalid".into(),
            reason: "connection refused".into(),
        })
    }

    fn after(clock: &ManualClock, d: Duration) -> Instant {
        clock.advance(d);
        clock.now()
    }

    #[test]
    fn it_pushes_at_start_then_only_after_changes() {
        let clock = ManualClock::default();
        let t0 = clock.now();
        let mut s = PushSchedule::new(t0, DEBOUNCE, INTERVAL);
        assert_eq!(
            s.take(t0),
            Some(Round::Push),
            "what was queued before the start"
        );
        s.finished(t0, Round::Push, Ok(()));
        let later = after(&clock, Duration::from_secs(10));
        assert_eq!(s.take(later), None, "nothing changed");
        assert_eq!(s.wake_at(later), t0 + INTERVAL, "the next full sync");
    }

    #[test]
    fn a_lone_change_is_pushed_at_once_and_a_burst_after_its_debounce_within_the_max_delay() {
        let clock = ManualClock::default();
        let mut s = PushSchedule::new(clock.now(), DEBOUNCE, INTERVAL);
        s.finished(clock.now(), Round::Push, Ok(()));

        let lone = after(&clock, Duration::from_secs(1));
        s.changed(lone);
        assert_eq!(s.wake_at(lone), lone, "a lone change goes at once");
        assert_eq!(s.take(lone), Some(Round::Push));
        s.finished(lone, Round::Push, Ok(()));

        // The next change within the burst gap: a burst is going on.
        let first = after(&clock, BURST_GAP / 2);
        s.changed(first);
        assert_eq!(s.wake_at(first), first + DEBOUNCE);
        assert_eq!(s.take(after(&clock, DEBOUNCE / 2)), None, "still settling");
        // A change every 80 ms never lets the debounce pass: the burst goes at MAX_PUSH_DELAY.
        while clock.now() < first + MAX_PUSH_DELAY - Duration::from_millis(80) {
            s.changed(after(&clock, Duration::from_millis(80)));
            assert!(s.wake_at(clock.now()) <= first + MAX_PUSH_DELAY);
        }
        assert_eq!(s.wake_at(clock.now()), first + MAX_PUSH_DELAY);
        let at = after(&clock, first + MAX_PUSH_DELAY - clock.now());
        assert_eq!(s.take(at), Some(Round::Push));
        s.finished(at, Round::Push, Ok(()));

        // After a quiet while, a change is lone again; one right after it starts a burst.
        let next = after(&clock, Duration::from_secs(3));
        s.changed(next);
        assert_eq!(s.wake_at(next), next, "lone again");
        s.changed(next);
        assert_eq!(
            s.wake_at(next),
            next + DEBOUNCE,
            "a second change at once: a burst"
        );
    }

    #[test]
    fn a_full_sync_comes_every_interval() {
        let clock = ManualClock::default();
        let t0 = clock.now();
        let mut s = PushSchedule::new(t0, DEBOUNCE, INTERVAL);
        s.finished(t0, Round::Push, Ok(()));
        let at = after(&clock, INTERVAL);
        assert_eq!(s.take(at), Some(Round::Full));
        s.finished(at, Round::Full, Ok(()));
        assert_eq!(s.wake_at(at), at + INTERVAL);
        assert_eq!(s.take(after(&clock, INTERVAL / 2)), None);
    }

    #[test]
    fn failures_back_off_doubling_to_the_cap_and_a_success_starts_over() {
        let clock = ManualClock::default();
        // An interval longer than the outage: these are push rounds, not full syncs.
        let mut s = PushSchedule::new(clock.now(), DEBOUNCE, Duration::from_secs(86_400));
        let mut waits = Vec::new();
        for _ in 0..12 {
            let at = clock.now();
            assert_eq!(s.take(at), Some(Round::Push));
            s.finished(at, Round::Push, Err(&unreachable()));
            let wait = s.wake_at(at) - at;
            assert_eq!(s.take(after(&clock, wait - Duration::from_millis(1))), None);
            clock.advance(Duration::from_millis(1));
            waits.push(wait);
        }
        for (i, pair) in waits.windows(2).enumerate() {
            let (a, b) = (pair[0].as_secs_f64(), pair[1].as_secs_f64());
            assert!(
                b <= BACKOFF_CAP.as_secs_f64() && (b >= a * 1.3 || b >= 0.8 * 300.0),
                "failure {}: {a} s then {b} s",
                i + 2
            );
        }
        assert!(waits[0] <= Duration::from_millis(1200), "{waits:?}");

        let at = clock.now();
        assert_eq!(s.take(at), Some(Round::Push));
        s.finished(at, Round::Push, Ok(()));
        assert_eq!(
            s.take(after(&clock, BACKOFF_CAP)),
            None,
            "nothing left to push"
        );
        let at = clock.now();
        s.changed(at);
        let at = after(&clock, DEBOUNCE);
        s.take(at);
        s.finished(at, Round::Push, Err(&unreachable()));
        assert!(
            s.wake_at(at) - at <= Duration::from_millis(1200),
            "the backoff starts over after a success"
        );
    }

    #[test]
    fn a_failed_full_sync_is_retried_with_the_backoff_not_after_an_interval() {
        let clock = ManualClock::default();
        let t0 = clock.now();
        let mut s = PushSchedule::new(t0, DEBOUNCE, INTERVAL);
        s.finished(t0, Round::Push, Ok(()));
        let at = after(&clock, INTERVAL);
        assert_eq!(s.take(at), Some(Round::Full));
        s.finished(at, Round::Full, Err(&unreachable()));
        let wait = s.wake_at(at) - at;
        assert!(wait <= Duration::from_millis(1200), "{wait:?}");
        assert_eq!(s.take(after(&clock, wait)), Some(Round::Full));
    }
}

//! The puller of `agent run`: pulls whenever the brain has news, by long-poll or when the webhook
//! listener says a notification came. In webhook mode it registers the webhook first, and
//! long-polls until that succeeds, so a brain that was down when the agent started costs no
//! wake-ups. [`PullSchedule`] decides how long to wait, from the times it is given; [`run`] waits
//! and talks to the brain.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver};

use super::registration::{self, Registration};
use super::retry::Retry;
use super::settings::{record, Settings, SyncCounters};
use super::state::{Outcome, Step};
use super::{BrainClient, SyncError};
use crate::burst_log::BurstLog;
use crate::config::Realtime;
use crate::store::Store;

/// How long one long-poll request waits at the brain.
pub const LONG_POLL: Duration = Duration::from_secs(20);
/// Without long-poll, failures or a registration due, the puller waits this long for a wake-up
/// (the periodic sync of the pusher pulls meanwhile).
const IDLE_WAIT: Duration = Duration::from_secs(3600);
/// A long-poll that brings nothing sooner than this was not held by the brain.
const HELD_AT_LEAST: Duration = Duration::from_secs(1);
/// How often to pull from a brain that does not hold long-polls (LIB v1.1's edge function):
/// asking again at once would be a busy loop against it.
pub const SHORT_POLL: Duration = Duration::from_secs(10);

/// How long the puller waits between pulls, and when the webhook registration is due.
#[derive(Debug)]
pub struct PullSchedule {
    retry: Retry,
    pub registration: Registration,
    /// Whether the brain was seen answering a long-poll at once with nothing (said once).
    not_held: bool,
}

impl PullSchedule {
    /// Starting at `now`; with a webhook, its registration is due at once.
    pub fn new(now: Instant, webhook: bool) -> PullSchedule {
        PullSchedule {
            retry: Retry::default(),
            registration: Registration::new(now, webhook),
            not_held: false,
        }
    }

    /// A long-poll sent at `sent` came back at `now` with `pulled` events: the pause before the
    /// next one when the brain did not hold it (LIB v1.1's edge function answers at once).
    pub fn long_polled(&mut self, sent: Instant, now: Instant, pulled: u64) -> Option<Duration> {
        if pulled > 0 || now.saturating_duration_since(sent) >= HELD_AT_LEAST {
            return None;
        }
        if !self.not_held {
            self.not_held = true;
            tracing::warn!(
                "the brain answered a long-poll at once with nothing (LIB v1.1's edge function \
                 does not hold them): pulling every {} instead; `realtime = \"webhook\"` in \
                 [sync] gets changes sooner from such a brain",
                humantime::format_duration(SHORT_POLL)
            );
        }
        Some(SHORT_POLL)
    }

    /// Whether to (try to) register the webhook before the pull at `now`.
    pub fn register_due(&self, now: Instant) -> bool {
        self.registration.is_due(now, self.retry.is_failing())
    }

    /// A pull ended at `now` with `result`: the pause its failure asks for (the backoff), `None`
    /// after a success. A failure is logged when it starts, and the recovery when it ends.
    pub fn pulled(&mut self, now: Instant, result: Result<(), &SyncError>) -> Option<Duration> {
        match result {
            Ok(()) => {
                if let Some(outage) = self.retry.succeeded(now) {
                    tracing::info!(
                        "pulls succeed again, after {}",
                        super::retry::outage(outage)
                    );
                    self.registration.brain_back(now);
                }
                None
            }
            Err(e) => {
                let failure = self.retry.failed(now);
                if failure.first {
                    tracing::warn!(
                        "pull failed ({e}); retrying in {}",
                        humantime::format_duration(failure.wait)
                    );
                }
                Some(failure.wait)
            }
        }
    }

    /// Until when to wait for a wake-up before the next pull, after a pull at `now` with the
    /// wake-up `realtime` and the `pause` it asked for; `None`: pull again at once (long-poll,
    /// the brain answering). A registration that is due ends the wait.
    pub fn wait_until(
        &self,
        now: Instant,
        realtime: Realtime,
        pause: Option<Duration>,
    ) -> Option<Instant> {
        if realtime == Realtime::Longpoll && pause.is_none() {
            return None;
        }
        let until = now + pause.unwrap_or(IDLE_WAIT);
        Some(self.registration.due().map_or(until, |due| until.min(due)))
    }
}

/// The puller's thread: pulls (registering first when that is due) and waits as its
/// [`PullSchedule`] says, until `stop` (or `stopping`, which a long-poll in flight sees after).
pub fn run(
    mut store: Store,
    client: &BrainClient,
    s: &Settings,
    wake: &Receiver<()>,
    stop: &Receiver<()>,
    stopping: &AtomicBool,
) {
    let clock = &*s.clock;
    let mut schedule = PullSchedule::new(clock.now(), s.webhook.is_some());
    let mut said = BurstLog::new("pulled", ("event", "events"));
    loop {
        if stopping.load(Ordering::Relaxed) {
            return;
        }
        if let Some(hook) = &s.webhook {
            if schedule.register_due(clock.now()) {
                registration::register(
                    client,
                    hook,
                    &mut schedule.registration,
                    &s.registered,
                    clock.now(),
                );
            }
        }
        let realtime = s.realtime_now();
        // A summary held back is said when its second is over, not after a long-poll's wait.
        let held = said
            .wake_at()
            .map(|at| at.saturating_duration_since(clock.now()));
        let wait = (realtime == Realtime::Longpoll)
            .then_some(held.map_or(LONG_POLL, |h| h.clamp(Duration::from_millis(1), LONG_POLL)));
        let sent = clock.now();
        let result = super::pull(&mut store, client, s.batch, wait).map(|summary| {
            SyncCounters::add(&s.counters.events_pulled, summary.pulled);
            s.counters.succeeded();
            if summary.applied > 0 {
                if let Some(line) = said.note(clock.now(), summary.pulled, summary.busy) {
                    tracing::info!(
                        events = line.items,
                        applied = summary.applied,
                        cursor = summary.new_after_id,
                        "{line}"
                    );
                }
            }
            summary.pulled
        });
        if let Some(line) = said.flush(clock.now()) {
            tracing::info!(events = line.items, pulls = line.batches, "{line}");
        }
        if stopping.load(Ordering::Relaxed) {
            return;
        }
        record(&mut store, s, Step::Pull, Outcome::of(&result, |_| true));
        let now = clock.now();
        let mut pause = schedule.pulled(now, result.as_ref().map(|_| ()));
        // Only a full long-poll tells whether the brain holds them (a shortened one may end
        // at once by design).
        if let (Some(LONG_POLL), Ok(pulled)) = (wait, &result) {
            pause = pause.or(schedule.long_polled(sent, now, *pulled));
        }
        if let Some(until) = schedule.wait_until(now, realtime, pause) {
            // A summary held back is said when its second is over (the loop comes round again).
            let until = said.wake_at().map_or(until, |at| at.min(until));
            select! {
                recv(stop) -> _ => return,
                recv(wake) -> _ => {},
                default(until.saturating_duration_since(clock.now())) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::retry::{Clock, ManualClock};
    use crate::sync::ClientError;

    fn unreachable() -> SyncError {
        SyncError::Client(ClientError::Network {
            url: "http://brain.invalid".into(),
            reason: "connection refused".into(),
        })
    }

    #[test]
    fn long_poll_asks_again_at_once_while_the_brain_answers() {
        let clock = ManualClock::default();
        let mut s = PullSchedule::new(clock.now(), false);
        let pause = s.pulled(clock.now(), Ok(()));
        assert_eq!(s.wait_until(clock.now(), Realtime::Longpoll, pause), None);
    }

    #[test]
    fn a_brain_that_does_not_hold_long_polls_is_asked_every_few_seconds_not_in_a_busy_loop() {
        let clock = ManualClock::default();
        let mut s = PullSchedule::new(clock.now(), false);
        let sent = clock.now();
        clock.advance(Duration::from_millis(20));
        assert_eq!(s.long_polled(sent, clock.now(), 0), Some(SHORT_POLL));
        assert_eq!(
            s.long_polled(sent, clock.now(), 3),
            None,
            "it brought events"
        );
        clock.advance(LONG_POLL);
        assert_eq!(s.long_polled(sent, clock.now(), 0), None, "it was held");
    }

    #[test]
    fn webhook_mode_waits_for_the_notification() {
        let clock = ManualClock::default();
        let mut s = PullSchedule::new(clock.now(), false);
        let pause = s.pulled(clock.now(), Ok(()));
        assert_eq!(
            s.wait_until(clock.now(), Realtime::Webhook, pause),
            Some(clock.now() + IDLE_WAIT)
        );
    }

    #[test]
    fn failed_pulls_back_off_and_a_success_starts_over() {
        let clock = ManualClock::default();
        let mut s = PullSchedule::new(clock.now(), false);
        let mut pauses = Vec::new();
        for _ in 0..6 {
            let pause = s.pulled(clock.now(), Err(&unreachable())).expect("a pause");
            let until = s.wait_until(clock.now(), Realtime::Longpoll, Some(pause));
            assert_eq!(until, Some(clock.now() + pause), "long-poll waits too");
            clock.advance(pause);
            pauses.push(pause);
        }
        for pair in pauses.windows(2) {
            assert!(pair[1] > pair[0].mul_f64(1.3), "{pauses:?}");
        }
        assert_eq!(s.pulled(clock.now(), Ok(())), None);
        let pause = s.pulled(clock.now(), Err(&unreachable())).expect("a pause");
        assert!(
            pause <= Duration::from_millis(1200),
            "starts over: {pause:?}"
        );
    }

    #[test]
    fn a_registration_due_shortens_the_wait_and_comes_at_once_when_the_brain_is_back() {
        let clock = ManualClock::default();
        let mut s = PullSchedule::new(clock.now(), true);
        assert!(s.register_due(clock.now()), "at start");
        let down = ClientError::Network {
            url: "http://brain.invalid".into(),
            reason: "connection refused".into(),
        };
        s.registration.failed(clock.now(), &down);
        let due = s.registration.due().expect("retried");
        // The pulls fail too, for longer than the registration's first backoff.
        for _ in 0..3 {
            let pause = s.pulled(clock.now(), Err(&unreachable()));
            assert!(
                s.register_due(clock.now()),
                "paced by the pulls while they fail"
            );
            let until = s.wait_until(clock.now(), Realtime::Longpoll, pause);
            assert!(until <= Some(due.max(clock.now())), "{until:?} {due:?}");
            clock.advance(pause.expect("a pause"));
        }
        s.registration.failed(clock.now(), &down);
        let later = s.registration.due().expect("retried");
        assert!(later > clock.now());
        // The brain answers a pull: register at once, not when the backoff says.
        assert_eq!(s.pulled(clock.now(), Ok(())), None);
        assert!(s.register_due(clock.now()));
        assert_eq!(s.registration.due(), Some(clock.now()));
    }
}

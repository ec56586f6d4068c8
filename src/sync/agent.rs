//! Sync inside `agent run`: a debounced pusher, a puller woken by long-poll or by the webhook
//! listener, and a periodic full push + pull as the fallback. Each runs on its own thread with its
//! own connection to the store (SQLite serialises the writers), so a slow brain never holds up
//! the watcher. In webhook mode the puller registers the webhook, retrying with backoff while the
//! brain is unreachable, and long-polls until the brain has the registration; every periodic
//! sync registers it again, so a registration the brain lost comes back.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{select, Receiver, Sender};

use super::state::{self, Outcome, Step};
use super::{BrainClient, SyncError};
use crate::config::{Config, Realtime};
use crate::store::Store;

/// How long one long-poll request waits at the brain.
const LONG_POLL: Duration = Duration::from_secs(20);
/// A burst of changes is pushed at most this long after its first change, however long it lasts.
const MAX_PUSH_DELAY: Duration = Duration::from_secs(2);
/// The first retry after a failure comes this long after it; each further failure doubles it.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// Retries never wait longer than this (jitter included).
const BACKOFF_CAP: Duration = Duration::from_secs(300);

/// Capped exponential backoff with jitter, so many devices do not retry in step.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    /// The wait after one more failure.
    fn next(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        // The clock's nanoseconds are enough to spread retries out.
        Backoff::delay(self.failures, f64::from(nanos % 1000) / 1000.0)
    }

    /// The wait after `failures` failures in a row (≥ 1): BACKOFF_FIRST doubled per failure up to
    /// BACKOFF_CAP, times a jitter of ±20 % (`spread` in [0, 1) picks it), never over the cap.
    fn delay(failures: u32, spread: f64) -> Duration {
        let doublings = failures.saturating_sub(1).min(16);
        let base = BACKOFF_FIRST
            .saturating_mul(1 << doublings)
            .min(BACKOFF_CAP);
        base.mul_f64(0.8 + 0.4 * spread.clamp(0.0, 1.0))
            .min(BACKOFF_CAP)
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// The running sync threads. Dropping `stop` ends them.
pub struct SyncAgent {
    pub push_now: Sender<()>,
    stop: Option<Sender<()>>,
    threads: Vec<JoinHandle<()>>,
    stopping: Arc<AtomicBool>,
}

impl SyncAgent {
    /// Starts sync for a configured brain; `None` (and a log line) when there is none.
    pub fn start(config: &Config, db: &Path) -> Result<Option<SyncAgent>, SyncError> {
        let Some(url) = config.sync.brain_url.clone() else {
            tracing::info!(
                "no brain configured: local-only; events wait in the outbox until one is set"
            );
            return Ok(None);
        };
        let device_id = Store::open(db)?.device_id().to_owned();
        let client = Arc::new(BrainClient::from_config(&url, &config.sync, &device_id)?);
        let (push_tx, push_rx) = crossbeam_channel::bounded::<()>(1);
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let (wake_tx, wake_rx) = crossbeam_channel::bounded::<()>(1);
        let stopping = Arc::new(AtomicBool::new(false));
        let mut realtime = config.sync.realtime;
        let mut webhook = None;
        if realtime == Realtime::Webhook {
            match (&config.sync.public_url, &config.sync.webhook_secret) {
                (Some(_), Some(secret)) if !(16..=256).contains(&secret.len()) => {
                    tracing::warn!(
                        bytes = secret.len(),
                        "LIB_WEBHOOK_SECRET must be 16 to 256 bytes (the brain refuses others); \
                         using long-poll"
                    );
                    realtime = Realtime::Longpoll;
                }
                (Some(public_url), Some(secret)) => {
                    webhook = Some(Webhook {
                        device: device_id.clone(),
                        public_url: public_url.clone(),
                        secret: secret.clone(),
                    });
                }
                _ => {
                    tracing::warn!("realtime = \"webhook\" needs [sync] public_url and LIB_WEBHOOK_SECRET; using long-poll");
                    realtime = Realtime::Longpoll;
                }
            }
        }
        let mut threads = Vec::new();
        let settings = Settings {
            batch: config.sync.batch_size,
            debounce: Duration::from_millis(config.sync.push_debounce_ms),
            interval: Duration::from_secs(config.sync.interval_secs),
            realtime,
            url: url.clone(),
            webhook,
            registered: Arc::new(AtomicBool::new(false)),
        };

        let store = Store::open(db)?;
        let (c, s, stop) = (Arc::clone(&client), settings.clone(), stop_rx.clone());
        threads.push(std::thread::spawn(move || {
            pusher(store, &c, &s, &push_rx, &stop)
        }));

        if let Some(hook) = &settings.webhook {
            // Listening before the registration: a notification sent right after it is heard.
            threads.push(super::listener::spawn(
                config.sync.listen,
                hook.secret.clone(),
                wake_tx,
                stop_rx.clone(),
            )?);
        }
        // Without a listener nothing wakes the puller early (a dropped sender would wake it
        // at once, forever).
        let wake_rx = if settings.webhook.is_some() {
            wake_rx
        } else {
            crossbeam_channel::never()
        };
        if realtime != Realtime::Off {
            let store = Store::open(db)?;
            let (c, s, stop, flag) = (
                Arc::clone(&client),
                settings.clone(),
                stop_rx.clone(),
                Arc::clone(&stopping),
            );
            threads.push(std::thread::spawn(move || {
                puller(store, &c, &s, &wake_rx, &stop, &flag)
            }));
        }
        Ok(Some(SyncAgent {
            push_now: push_tx,
            stop: Some(stop_tx),
            threads,
            stopping,
        }))
    }

    /// Asks for a push soon (debounced).
    pub fn changed(&self) {
        let _ = self.push_now.try_send(());
    }

    /// Stops the threads; a long-poll in flight is not waited for (it ends with the process).
    pub fn stop(mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        drop(self.stop.take());
        let pusher = self.threads.remove(0);
        let _ = pusher.join();
    }
}

/// What the brain needs to notify this device: where, and the secret that signs it.
#[derive(Clone)]
struct Webhook {
    device: String,
    public_url: String,
    secret: String,
}

#[derive(Clone)]
struct Settings {
    batch: usize,
    debounce: Duration,
    interval: Duration,
    /// As configured, except that webhook without its settings is long-poll.
    realtime: Realtime,
    url: String,
    /// Set in webhook mode.
    webhook: Option<Webhook>,
    /// The brain has accepted the webhook registration.
    registered: Arc<AtomicBool>,
}

impl Settings {
    /// The wake-up in effect: a webhook device long-polls until the brain has its registration.
    fn realtime_now(&self) -> Realtime {
        match self.realtime {
            Realtime::Webhook if !self.registered.load(Ordering::Relaxed) => Realtime::Longpoll,
            other => other,
        }
    }
}

/// Saves the outcome for `agent status`; a failure to save it is logged, never fatal to sync.
fn record(store: &mut Store, settings: &Settings, step: Step, outcome: Outcome<'_>) {
    let realtime = settings.realtime_now();
    if let Err(e) = state::record(store, &settings.url, Some(realtime.as_str()), step, outcome) {
        tracing::warn!("cannot save the sync state for `agent status`: {e}");
    }
}

/// Pushes `debounce` after the last change (at most MAX_PUSH_DELAY after the first), at start,
/// and with a pull every `interval`; retries with backoff while the brain is unreachable.
fn pusher(
    mut store: Store,
    client: &BrainClient,
    s: &Settings,
    changes: &Receiver<()>,
    stop: &Receiver<()>,
) {
    let far = Duration::from_secs(3600);
    let mut due = Some(Instant::now());
    let mut first_change: Option<Instant> = None;
    let mut next_full = Instant::now() + s.interval;
    let mut backoff = Backoff::default();
    let mut failing = false;
    loop {
        let now = Instant::now();
        let wake = due.map_or(now + far, |d| d.min(now + far)).min(next_full);
        select! {
            recv(stop) -> _ => return,
            recv(changes) -> _ => {
                let now = Instant::now();
                let first = *first_change.get_or_insert(now);
                due = Some((now + s.debounce).min(first + MAX_PUSH_DELAY));
                continue;
            },
            default(wake.saturating_duration_since(now)) => {}
        }
        let now = Instant::now();
        let full = now >= next_full;
        if !full && due.is_none_or(|d| now < d) {
            continue;
        }
        first_change = None;
        let pushed = super::push(&mut store, client, s.batch);
        if let Ok(summary) = &pushed {
            if summary.pushed > 0 {
                tracing::debug!(
                    pushed = summary.pushed,
                    new = summary.result.inserted_events,
                    "pushed"
                );
            }
        }
        record(
            &mut store,
            s,
            Step::Push,
            Outcome::of(&pushed, |p| p.requests > 0),
        );
        let mut result = pushed.map(|_| ());
        if full && result.is_ok() {
            next_full = now + s.interval;
            result = super::pull(&mut store, client, s.batch, None).map(|_| ());
            record(&mut store, s, Step::Pull, Outcome::of(&result, |_| true));
            if result.is_ok() {
                reregister(client, s);
            }
        }
        match result {
            Ok(()) => {
                if failing {
                    tracing::info!("the brain is reachable again");
                }
                failing = false;
                backoff.reset();
                due = None;
            }
            Err(e) => {
                let retry = backoff.next();
                if !failing {
                    tracing::warn!(
                        "sync failed ({e}); retrying in {}",
                        humantime::format_duration(retry)
                    );
                }
                failing = true;
                due = Some(now + retry);
                if full {
                    next_full = now + retry;
                }
            }
        }
    }
}

/// Where the webhook registration stands.
struct Registration {
    /// When to try (again); `None` once registered, or refused for good.
    due: Option<Instant>,
    backoff: Backoff,
    failing: bool,
}

/// Asks the brain to notify this device. A failure the brain may get over (unreachable, 5xx) is
/// retried with backoff; a refusal is final, and long-poll stays in effect.
fn register(client: &BrainClient, hook: &Webhook, reg: &mut Registration, registered: &AtomicBool) {
    match client.register_webhook(&hook.device, &hook.public_url, &hook.secret) {
        Ok(id) => {
            tracing::info!(webhook_id = id, url = %hook.public_url, "webhook registered with the brain");
            registered.store(true, Ordering::Relaxed);
            reg.due = None;
        }
        Err(e) if e.is_retryable() => {
            let retry = reg.backoff.next();
            if !reg.failing {
                tracing::warn!(
                    "cannot register the webhook yet ({e}); long-polling meanwhile, retrying in {}",
                    humantime::format_duration(retry)
                );
            }
            reg.failing = true;
            reg.due = Some(Instant::now() + retry);
        }
        Err(e) => {
            tracing::error!(
                "the brain refused the webhook registration ({e}); long-polling instead"
            );
            reg.due = None;
        }
    }
}

/// Registers the webhook again at a periodic sync, so a registration the brain lost (a restored
/// database, a deactivation, another brain behind the same URL) comes back. The same URL again
/// changes nothing at the brain (its back-off stays); a failure waits for the next sync.
fn reregister(client: &BrainClient, s: &Settings) {
    let Some(hook) = &s.webhook else {
        return;
    };
    match client.register_webhook(&hook.device, &hook.public_url, &hook.secret) {
        Ok(id) => {
            if !s.registered.swap(true, Ordering::Relaxed) {
                tracing::info!(webhook_id = id, url = %hook.public_url, "webhook registered with the brain");
            }
        }
        Err(e) => tracing::debug!("re-registering the webhook failed ({e}); next sync tries again"),
    }
}

/// Pulls whenever the brain has news: by long-poll, or when the listener says a webhook came.
/// In webhook mode it registers the webhook first, and long-polls until that succeeds, so a brain
/// that was down when the agent started costs no wake-ups.
fn puller(
    mut store: Store,
    client: &BrainClient,
    s: &Settings,
    wake: &Receiver<()>,
    stop: &Receiver<()>,
    stopping: &AtomicBool,
) {
    let mut backoff = Backoff::default();
    let mut failing = false;
    let mut registration = Registration {
        due: s.webhook.as_ref().map(|_| Instant::now()),
        backoff: Backoff::default(),
        failing: false,
    };
    loop {
        if stopping.load(Ordering::Relaxed) {
            return;
        }
        if let Some(hook) = &s.webhook {
            // While pulls fail, the pull's backoff paces the registration too: the first pull
            // that finds the brain back follows a registration attempt, not a 20 s long-poll.
            if registration
                .due
                .is_some_and(|due| failing || Instant::now() >= due)
            {
                register(client, hook, &mut registration, &s.registered);
            }
        }
        let realtime = s.realtime_now();
        let wait = (realtime == Realtime::Longpoll).then_some(LONG_POLL);
        let result = super::pull(&mut store, client, s.batch, wait).map(|summary| {
            if summary.applied > 0 {
                tracing::info!(
                    applied = summary.applied,
                    cursor = summary.new_after_id,
                    "pulled changes"
                );
            }
        });
        if stopping.load(Ordering::Relaxed) {
            return;
        }
        record(&mut store, s, Step::Pull, Outcome::of(&result, |_| true));
        let pause = match &result {
            Ok(()) => {
                if failing && registration.due.is_some() {
                    // The brain is back: register now rather than when the backoff says.
                    registration.due = Some(Instant::now());
                }
                failing = false;
                backoff.reset();
                None
            }
            Err(e) => {
                let retry = backoff.next();
                if !failing {
                    tracing::warn!(
                        "pull failed ({e}); retrying in {}",
                        humantime::format_duration(retry)
                    );
                }
                failing = true;
                Some(retry)
            }
        };
        match (realtime, pause) {
            // Long-poll: ask again at once, unless the brain is failing.
            (Realtime::Longpoll, None) => {}
            (_, pause) => {
                let mut until = Instant::now() + pause.unwrap_or(Duration::from_secs(3600));
                if let Some(due) = registration.due {
                    until = until.min(due);
                }
                select! {
                    recv(stop) -> _ => return,
                    recv(wake) -> _ => {},
                    default(until.saturating_duration_since(Instant::now())) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_at_one_second_and_doubles_per_failure_up_to_the_cap() {
        let middle = |failures| Backoff::delay(failures, 0.5);
        let expected = [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300];
        for (i, secs) in expected.iter().enumerate() {
            assert_eq!(
                middle(i as u32 + 1),
                Duration::from_secs(*secs),
                "failure {}",
                i + 1
            );
        }
        assert_eq!(
            middle(u32::MAX),
            BACKOFF_CAP,
            "no overflow after a long outage"
        );
    }

    #[test]
    fn backoff_jitter_stays_within_20_percent_and_never_passes_the_cap() {
        for failures in 1..=12 {
            let base = Backoff::delay(failures, 0.5);
            let (low, high) = (Backoff::delay(failures, 0.0), Backoff::delay(failures, 1.0));
            assert_eq!(low, base.mul_f64(0.8), "failure {failures}");
            assert_eq!(
                high,
                base.mul_f64(1.2).min(BACKOFF_CAP),
                "failure {failures}"
            );
            assert!(high <= BACKOFF_CAP);
        }
        // The running backoff draws its jitter inside those bounds.
        let mut backoff = Backoff::default();
        for failures in 1..=12 {
            let d = backoff.next();
            assert!(
                d >= Backoff::delay(failures, 0.0) && d <= Backoff::delay(failures, 1.0),
                "failure {failures}: {d:?}"
            );
        }
        backoff.reset();
        assert!(
            backoff.next() <= Duration::from_millis(1200),
            "reset starts over"
        );
    }
}

//! Retrying after failures, the one way the pusher, the puller and the webhook registration (and
//! the daemon's full-disk pause) do it: a capped, jittered [`Backoff`]; [`SayOnce`], which says
//! that something fails when it starts failing and when it works again, not at every retry;
//! [`Retry`], the two together; and the [`Clock`] they read their `Instant`s from, so that their
//! tests step a [`ManualClock`] instead of sleeping.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

/// The first retry after a failure comes this long after it; each further failure doubles it.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// Retries never wait longer than this (jitter included).
pub const BACKOFF_CAP: Duration = Duration::from_secs(300);

/// Where a component reads the time. Only `Instant`s: what is due and for how long something has
/// failed, never the wall-clock time written into events or the store.
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
}

/// The real monotonic clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to, for tests. Clones share one time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<Instant>>,
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock {
            now: Arc::new(Mutex::new(Instant::now())),
        }
    }
}

impl ManualClock {
    /// Moves the time forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Capped exponential backoff with jitter, so many devices do not retry in step.
#[derive(Debug)]
pub struct Backoff {
    failures: u32,
    /// State of the jitter's generator (splitmix64): spread, not secrecy, is all it is for.
    seed: u64,
}

impl Default for Backoff {
    /// Seeded from the clock's nanoseconds and the process id, so that devices (and the threads
    /// of one device) started together still draw different jitters.
    fn default() -> Self {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Backoff::seeded(nanos ^ u64::from(std::process::id()).rotate_left(32))
    }
}

impl Backoff {
    /// A backoff whose jitter is drawn from `seed`: the same seed, the same waits.
    pub fn seeded(seed: u64) -> Backoff {
        Backoff { failures: 0, seed }
    }

    /// The wait after one more failure.
    pub fn after_failure(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let spread = self.draw();
        Backoff::delay(self.failures, spread)
    }

    /// The wait after `failures` failures in a row (≥ 1): BACKOFF_FIRST doubled per failure up to
    /// BACKOFF_CAP, times a jitter of ±20 % (`spread` in [0, 1] picks it), never over the cap.
    pub fn delay(failures: u32, spread: f64) -> Duration {
        let doublings = failures.saturating_sub(1).min(16);
        let base = BACKOFF_FIRST
            .saturating_mul(1 << doublings)
            .min(BACKOFF_CAP);
        base.mul_f64(0.8 + 0.4 * spread.clamp(0.0, 1.0))
            .min(BACKOFF_CAP)
    }

    /// After a success: the next failure waits BACKOFF_FIRST again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// A number in [0, 1), from splitmix64.
    fn draw(&mut self) -> f64 {
        self.seed = self.seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Says a failure once: when something starts failing, and when it works again, not at every
/// retry in between (a brain down for a night would otherwise fill the log).
#[derive(Debug, Default)]
pub struct SayOnce {
    /// When the current run of failures began; `None` while things work.
    since: Option<Instant>,
}

impl SayOnce {
    /// A failure at `now`: true when it starts a run of failures (say it), false while the run
    /// goes on.
    pub fn failed(&mut self, now: Instant) -> bool {
        if self.since.is_some() {
            return false;
        }
        self.since = Some(now);
        true
    }

    /// A success at `now`: how long the run of failures it ends lasted (say that it is over), or
    /// `None` when nothing was failing.
    pub fn recovered(&mut self, now: Instant) -> Option<Duration> {
        self.since
            .take()
            .map(|since| now.saturating_duration_since(since))
    }

    pub fn is_failing(&self) -> bool {
        self.since.is_some()
    }

    /// When the current run of failures began.
    pub fn failing_since(&self) -> Option<Instant> {
        self.since
    }
}

/// What to do after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// Try again this long after the failure.
    pub wait: Duration,
    /// This failure starts a run of them: say it (later ones are not said).
    pub first: bool,
}

/// A [`Backoff`] and a [`SayOnce`] for one thing that is retried.
#[derive(Debug, Default)]
pub struct Retry {
    backoff: Backoff,
    say: SayOnce,
}

impl Retry {
    /// A failure at `now`: the backoff grows.
    pub fn failed(&mut self, now: Instant) -> Failure {
        Failure {
            wait: self.backoff.after_failure(),
            first: self.say.failed(now),
        }
    }

    /// A success at `now`: the backoff starts over. `Some(outage)` when it ends a run of
    /// failures.
    pub fn succeeded(&mut self, now: Instant) -> Option<Duration> {
        self.backoff.reset();
        self.say.recovered(now)
    }

    pub fn is_failing(&self) -> bool {
        self.say.is_failing()
    }
}

/// An outage as a user reads it: whole seconds.
pub fn outage(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_secs(d.as_secs()))
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
        // The running backoff draws its jitter inside those bounds, whatever its seed.
        for seed in 0..200 {
            let mut backoff = Backoff::seeded(seed);
            for failures in 1..=12 {
                let d = backoff.after_failure();
                assert!(
                    d >= Backoff::delay(failures, 0.0) && d <= Backoff::delay(failures, 1.0),
                    "seed {seed}, failure {failures}: {d:?}"
                );
            }
        }
    }

    #[test]
    fn backoff_jitter_spreads_devices_that_fail_together() {
        let firsts: std::collections::BTreeSet<Duration> = (0..50)
            .map(|seed| Backoff::seeded(seed).after_failure())
            .collect();
        assert!(
            firsts.len() > 40,
            "50 devices, {} distinct waits",
            firsts.len()
        );
        let (low, high) = (firsts.first(), firsts.last());
        assert!(
            low < Some(&Duration::from_millis(900)) && high > Some(&Duration::from_millis(1100)),
            "spread over ±20 %: {low:?} .. {high:?}"
        );
    }

    #[test]
    fn a_success_resets_the_backoff_and_ends_the_failure() {
        let clock = ManualClock::default();
        let mut retry = Retry::default();
        let mut waits = Vec::new();
        for _ in 0..5 {
            let failure = retry.failed(clock.now());
            waits.push(failure.wait);
            clock.advance(failure.wait);
        }
        assert!(waits[4] >= Duration::from_millis(12_800), "{waits:?}");
        assert!(retry.is_failing());
        let outage = retry.succeeded(clock.now()).expect("it was failing");
        assert_eq!(
            outage,
            waits.iter().sum::<Duration>(),
            "from the first failure"
        );
        assert!(!retry.is_failing());
        let again = retry.failed(clock.now());
        assert!(again.first, "a new outage is said again");
        assert!(
            again.wait <= Duration::from_millis(1200),
            "starts over at a second: {:?}",
            again.wait
        );
    }

    #[test]
    fn say_once_says_the_start_and_the_end_of_an_outage() {
        let clock = ManualClock::default();
        let mut say = SayOnce::default();
        assert_eq!(say.recovered(clock.now()), None, "nothing failed");
        assert!(say.failed(clock.now()), "the first failure is said");
        for _ in 0..10 {
            clock.advance(Duration::from_secs(30));
            assert!(!say.failed(clock.now()), "the retries are not");
        }
        clock.advance(Duration::from_secs(7));
        assert_eq!(
            say.recovered(clock.now()),
            Some(Duration::from_secs(307)),
            "the recovery is said, with how long it lasted"
        );
        assert_eq!(say.recovered(clock.now()), None, "once");
        assert!(say.failed(clock.now()), "the next outage is said again");
    }

    #[test]
    fn a_manual_clock_moves_only_when_told_and_its_clones_share_it() {
        let clock = ManualClock::default();
        let other = clock.clone();
        let t0 = clock.now();
        assert_eq!(clock.now(), t0);
        other.advance(Duration::from_secs(5));
        assert_eq!(clock.now(), t0 + Duration::from_secs(5));
    }
}

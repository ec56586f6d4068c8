//! The webhook registration of a device in webhook mode: the puller registers at start, retrying
//! with backoff while the brain is unreachable (and long-polls meanwhile); the pusher registers
//! again at every periodic sync, so a registration the brain lost comes back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::retry::Retry;
use super::settings::{Settings, Webhook};
use super::{BrainClient, ClientError};

/// Where the puller's registration stands: due (at start, or when a retry is), done, or refused
/// for good.
#[derive(Debug)]
pub struct Registration {
    /// When to try (again); `None` once registered, or refused for good, or with no webhook.
    due: Option<Instant>,
    retry: Retry,
}

impl Registration {
    /// Due at `now` when there is a webhook to register, never otherwise.
    pub fn new(now: Instant, webhook: bool) -> Registration {
        Registration {
            due: webhook.then_some(now),
            retry: Retry::default(),
        }
    }

    /// When the next attempt is due, if one is.
    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    /// Whether to try at `now`. While pulls fail, the pull's backoff paces the registration too:
    /// the first pull that finds the brain back follows a registration attempt, not a long-poll.
    pub fn is_due(&self, now: Instant, pulls_failing: bool) -> bool {
        self.due.is_some_and(|due| pulls_failing || now >= due)
    }

    /// The brain answered a pull again after failures: register now rather than when the
    /// backoff says.
    pub fn brain_back(&mut self, now: Instant) {
        if self.due.is_some() {
            self.due = Some(now);
        }
    }

    /// The brain has the registration: nothing more is due.
    pub fn registered(&mut self, now: Instant) {
        // The log line that says it is registered also says that the failures are over.
        let _ = self.retry.succeeded(now);
        self.due = None;
    }

    /// An attempt at `now` failed. A failure the brain may get over (unreachable, 5xx) is retried
    /// with backoff, said once; a refusal is final, and long-poll stays in effect.
    pub fn failed(&mut self, now: Instant, e: &ClientError) {
        if !e.is_retryable() {
            tracing::error!(
                "the brain refused the webhook registration ({e}); long-polling instead"
            );
            self.due = None;
            return;
        }
        let failure = self.retry.failed(now);
        if failure.first {
            tracing::warn!(
                "cannot register the webhook yet ({e}); long-polling meanwhile, retrying in {}",
                humantime::format_duration(failure.wait)
            );
        }
        self.due = Some(now + failure.wait);
    }
}

/// Asks the brain to notify this device, and records how that went in `reg`.
pub fn register(
    client: &BrainClient,
    hook: &Webhook,
    reg: &mut Registration,
    registered: &AtomicBool,
    now: Instant,
) {
    match client.register_webhook(&hook.device, &hook.public_url, &hook.secret) {
        Ok(id) => {
            tracing::info!(webhook_id = id, url = %hook.public_url, "webhook registered with the brain");
            registered.store(true, Ordering::Relaxed);
            reg.registered(now);
        }
        Err(e) => reg.failed(now, &e),
    }
}

/// Registers the webhook again at a periodic sync, so a registration the brain lost (a restored
/// database, a deactivation, another brain behind the same URL) comes back. The same URL again
/// changes nothing at the brain (its back-off stays); a failure waits for the next sync.
pub fn reregister(client: &BrainClient, s: &Settings) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::retry::{Clock, ManualClock};
    use std::time::Duration;

    fn unreachable() -> ClientError {
        ClientError::Network {
            url: "http://brain.invalid".into(),
            reason: "connection refused".into(),
        }
    }

    #[test]
    fn without_a_webhook_nothing_is_ever_due() {
        let clock = ManualClock::default();
        let reg = Registration::new(clock.now(), false);
        assert!(!reg.is_due(clock.now(), true));
        assert_eq!(reg.due(), None);
    }

    #[test]
    fn a_registration_is_due_at_start_and_retried_with_backoff() {
        let clock = ManualClock::default();
        let mut reg = Registration::new(clock.now(), true);
        assert!(reg.is_due(clock.now(), false), "at start");
        reg.failed(clock.now(), &unreachable());
        let first = reg.due().expect("retried") - clock.now();
        assert!(first <= Duration::from_millis(1200), "{first:?}");
        assert!(
            !reg.is_due(clock.now(), false),
            "not before the backoff says"
        );
        assert!(reg.is_due(clock.now(), true), "unless pulls fail too");
        clock.advance(first);
        assert!(reg.is_due(clock.now(), false));
        reg.failed(clock.now(), &unreachable());
        let second = reg.due().expect("retried") - clock.now();
        assert!(second >= Duration::from_millis(1600), "doubles: {second:?}");

        clock.advance(Duration::from_millis(100));
        reg.brain_back(clock.now());
        assert!(reg.is_due(clock.now(), false), "the brain is back: at once");
        reg.registered(clock.now());
        assert_eq!(reg.due(), None);
        reg.brain_back(clock.now());
        assert_eq!(reg.due(), None, "registered stays registered");
    }

    #[test]
    fn a_refusal_is_final() {
        let clock = ManualClock::default();
        let mut reg = Registration::new(clock.now(), true);
        let refused = ClientError::Status {
            route: "/webhook",
            status: 400,
            message: "bad url".into(),
        };
        reg.failed(clock.now(), &refused);
        assert_eq!(reg.due(), None);
        clock.advance(Duration::from_secs(3600));
        assert!(!reg.is_due(clock.now(), true));
    }
}

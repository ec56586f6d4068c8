//! What the sync threads of `agent run` share: their settings, the wake-up in effect, and how
//! they record their outcomes for `agent status`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::retry::Clock;
use super::state::{self, Outcome, Step};
use crate::config::Realtime;
use crate::store::Store;

/// What the brain needs to notify this device: where, and the secret that signs it.
#[derive(Clone)]
pub struct Webhook {
    pub device: String,
    pub public_url: String,
    pub secret: String,
}

/// What the sync threads share.
#[derive(Clone)]
pub struct Settings {
    pub batch: usize,
    pub debounce: Duration,
    pub interval: Duration,
    /// As configured, except that webhook without its settings is long-poll.
    pub realtime: Realtime,
    pub url: String,
    /// Set in webhook mode.
    pub webhook: Option<Webhook>,
    /// The brain has accepted the webhook registration.
    pub registered: Arc<AtomicBool>,
    /// Where the threads read the time for what is due.
    pub clock: Arc<dyn Clock>,
    /// What they count, for the agent's `/metrics`.
    pub counters: Arc<SyncCounters>,
}

/// What the sync threads of `agent run` count, for its `/metrics` ([`crate::daemon`]).
#[derive(Debug, Default)]
pub struct SyncCounters {
    /// Outbox events the brain acknowledged.
    pub events_pushed: AtomicU64,
    /// Events pulled from the brain's log (this device's own included).
    pub events_pulled: AtomicU64,
    /// Outbox events the brain refused, set aside.
    pub events_parked: AtomicU64,
    /// When a push that sent something, or a pull, last succeeded (Unix seconds; 0: not yet).
    pub last_success_unix: AtomicU64,
}

impl SyncCounters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// A push or pull succeeded now.
    pub fn succeeded(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.last_success_unix.store(now, Ordering::Relaxed);
    }
}

impl Settings {
    /// The wake-up in effect: a webhook device long-polls until the brain has its registration.
    pub fn realtime_now(&self) -> Realtime {
        match self.realtime {
            Realtime::Webhook if !self.registered.load(Ordering::Relaxed) => Realtime::Longpoll,
            other => other,
        }
    }
}

/// Saves the outcome for `agent status`; a failure to save it is logged, never fatal to sync.
pub fn record(store: &mut Store, settings: &Settings, step: Step, outcome: Outcome<'_>) {
    let realtime = settings.realtime_now();
    if let Err(e) = state::record(store, &settings.url, Some(realtime.as_str()), step, outcome) {
        tracing::warn!("cannot save the sync state for `agent status`: {e}");
    }
}

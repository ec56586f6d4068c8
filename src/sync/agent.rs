//! Sync inside `agent run`: starts a debounced pusher (with a periodic full push + pull as the
//! fallback, `pusher.rs`), a puller woken by long-poll or by the webhook listener (`puller.rs`),
//! and in webhook mode the listener and the registration (`registration.rs`). Each runs on its
//! own thread with its own connection to the store (SQLite serialises the writers), so a slow
//! brain never holds up the watcher.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;

use super::retry::SystemClock;
pub use super::settings::SyncCounters;
use super::settings::{Settings, Webhook};
use super::{puller, pusher, BrainClient, SyncError};
use crate::config::{Config, Realtime};
use crate::store::Store;

/// The running sync threads. Dropping `stop` ends them.
pub struct SyncAgent {
    pub push_now: Sender<()>,
    stop: Option<Sender<()>>,
    threads: Vec<JoinHandle<()>>,
    stopping: Arc<AtomicBool>,
}

impl SyncAgent {
    /// Starts sync for a configured brain; `None` (and a log line) when there is none. The
    /// threads count what they do in `counters`.
    pub fn start(
        config: &Config,
        db: &Path,
        counters: Arc<SyncCounters>,
    ) -> Result<Option<SyncAgent>, SyncError> {
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
            clock: Arc::new(SystemClock),
            counters,
        };

        let store = Store::open(db)?;
        let (c, s, stop) = (Arc::clone(&client), settings.clone(), stop_rx.clone());
        threads.push(std::thread::spawn(move || {
            pusher::run(store, &c, &s, &push_rx, &stop)
        }));

        if let Some(hook) = &settings.webhook {
            // Listening before the registration: a notification sent right after it is heard.
            threads.push(super::listener::spawn(
                config.sync.listen,
                hook.secret.clone(),
                config.sync.webhook_auth,
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
                puller::run(store, &c, &s, &wake_rx, &stop, &flag)
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

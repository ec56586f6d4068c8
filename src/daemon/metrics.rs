//! `agent run`'s own metrics: `GET /metrics` in the Prometheus text format on `[metrics] listen`
//! (a loopback address, checked by the config), served by the same accept loop as the brain and
//! the webhook listener ([`crate::http_server`]) on a thread of its own.
//!
//! The sync threads count what they push, pull and park ([`SyncCounters`]); everything else is
//! read from the store at each scrape: what `agent status` would show (files per library, the
//! outbox backlog, the run state's watch modes, the brain's view of this replica). So a scrape
//! costs a few indexed counts, and the daemon's loop does nothing for it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use crossbeam_channel::{Receiver, Sender};

use super::DaemonError;
use crate::http_server::{self as http, ConnLimits};
use crate::model::digest::ConvergenceState;
use crate::prometheus::{Kind, Text, CONTENT_TYPE};
use crate::store::kv::LibraryMode;
use crate::store::{Store, StoreError};
use crate::sync::agent::SyncCounters;

/// Open connections at most: a scraper or two.
const MAX_CONNECTIONS: usize = 16;

/// The metrics listener; dropping it (or [`MetricsServer::stop`]) ends it.
pub struct MetricsServer {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `addr` now (a taken port is an error at start) and serves on a thread.
    pub fn start(
        addr: SocketAddr,
        db: &Path,
        counters: Arc<SyncCounters>,
    ) -> Result<MetricsServer, DaemonError> {
        let failed = |reason: String| DaemonError::Metrics { addr, reason };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| failed(e.to_string()))?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(addr))
            .map_err(|e| failed(e.to_string()))?;
        let bound = listener.local_addr().map_err(|e| failed(e.to_string()))?;
        let scrape = Scrape {
            store: Arc::new(Mutex::new(Store::open(db)?)),
            counters,
        };
        tracing::info!(addr = %bound, "serving metrics at http://{bound}/metrics");
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let thread = std::thread::spawn(move || serve(runtime, listener, scrape, stop_rx));
        Ok(MetricsServer {
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    pub fn stop(mut self) {
        self.end();
    }

    fn end(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.end();
    }
}

fn serve(
    runtime: tokio::runtime::Runtime,
    listener: tokio::net::TcpListener,
    scrape: Scrape,
    stop: Receiver<()>,
) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(scrape);
    let shutdown = async move {
        let _ = tokio::task::spawn_blocking(move || stop.recv()).await;
    };
    let limits = ConnLimits {
        max_connections: MAX_CONNECTIONS,
        shutdown_timeout: std::time::Duration::from_secs(2),
        ..ConnLimits::default()
    };
    if let Err(e) = runtime.block_on(http::serve(listener, app, limits, shutdown)) {
        tracing::error!("the metrics listener stopped: {e}");
    }
}

/// What a scrape reads.
#[derive(Clone)]
struct Scrape {
    /// Its own connection: SQLite lets it read beside the daemon's writer.
    store: Arc<Mutex<Store>>,
    counters: Arc<SyncCounters>,
}

async fn metrics(State(scrape): State<Scrape>) -> Response {
    let rendered = tokio::task::spawn_blocking(move || {
        let store = scrape.store.lock().unwrap_or_else(|p| p.into_inner());
        render(&store, &scrape.counters, now_unix())
    })
    .await;
    match rendered {
        Ok(Ok(text)) => ([("content-type", CONTENT_TYPE)], text).into_response(),
        Ok(Err(e)) => {
            tracing::warn!("/metrics: cannot read the store: {e}");
            let status = axum::http::StatusCode::SERVICE_UNAVAILABLE;
            (status, format!("cannot read the store: {e}\n")).into_response()
        }
        Err(e) => {
            let status = axum::http::StatusCode::INTERNAL_SERVER_ERROR;
            (status, format!("{e}\n")).into_response()
        }
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The scrape's text at `now` (Unix seconds).
pub fn render(store: &Store, counters: &SyncCounters, now: u64) -> Result<String, StoreError> {
    let mut text = Text::new();
    let run = store.run_state()?.unwrap_or_default();
    let sync = store.sync_state()?.unwrap_or_default();

    let name = "lib_agent_library_files";
    text.family(
        name,
        Kind::Gauge,
        "Live files of the library in this device's index (the shared view)",
    );
    for library in run.libraries.keys() {
        let (files, _) = store.library_counts(library)?;
        text.sample(name, &[("library", library)], files);
    }
    text.single(
        "lib_agent_changes_indexed_total",
        Kind::Counter,
        "Changes (new, changed and deleted files) this run of the agent indexed from the watcher",
        run.changes_indexed,
    );
    let name = "lib_agent_watch_mode";
    text.family(
        name,
        Kind::Gauge,
        "1 for how the library is kept current: watching (kernel events) or polling (rescans)",
    );
    for (library, mode) in &run.libraries {
        let polling = matches!(mode, LibraryMode::Polling { .. });
        for (label, on) in [("watching", !polling), ("polling", polling)] {
            text.sample(name, &[("library", library), ("mode", label)], u8::from(on));
        }
    }

    let counted = [
        (
            "lib_agent_events_pushed_total",
            "Outbox events the brain acknowledged, since the agent started",
            &counters.events_pushed,
        ),
        (
            "lib_agent_events_pulled_total",
            "Events pulled from the brain, since the agent started",
            &counters.events_pulled,
        ),
        (
            "lib_agent_events_parked_total",
            "Outbox events the brain refused and the agent set aside, since it started",
            &counters.events_parked,
        ),
    ];
    for (name, help, counter) in counted {
        text.single(name, Kind::Counter, help, counter.load(Ordering::Relaxed));
    }
    text.single(
        "lib_agent_outbox_backlog",
        Kind::Gauge,
        "Outbox events the brain has not acknowledged yet",
        store.unacknowledged()?,
    );
    let last = counters.last_success_unix.load(Ordering::Relaxed);
    let name = "lib_agent_seconds_since_last_sync";
    text.family(
        name,
        Kind::Gauge,
        "Seconds since a push or pull last succeeded (absent before the first, this run)",
    );
    if last > 0 {
        text.sample(name, &[], now.saturating_sub(last));
    }

    // Before the first pull that brought the brain's word, the state is unknown.
    let convergence = sync.convergence;
    let current = convergence.map_or(ConvergenceState::Unknown, |c| c.state);
    let name = "lib_agent_convergence_state";
    text.family(
        name,
        Kind::Gauge,
        "1 for what the brain said of this replica at the last pull (converged, behind, diverged, unknown, never seen)",
    );
    for state in ConvergenceState::ALL {
        text.sample(
            name,
            &[("state", state.as_str())],
            u8::from(state == current),
        );
    }
    let name = "lib_agent_convergence_lag_events";
    text.family(
        name,
        Kind::Gauge,
        "Events of the brain's log this device had still to pull, at the last pull",
    );
    if let Some(c) = convergence {
        text.sample(name, &[], c.lag);
    }
    Ok(text.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::digest::Convergence;
    use crate::store::kv::{RunState, SyncState};

    #[test]
    fn a_scrape_says_each_librarys_mode_the_counters_and_the_brains_word() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(&dir.path().join("agent.db")).expect("store");
        let mut run = RunState::default();
        run.libraries.insert("notes".into(), LibraryMode::Watching);
        run.libraries.insert(
            "nas \"photos\"".into(),
            LibraryMode::Polling {
                reason: "root unavailable".into(),
            },
        );
        run.changes_indexed = 7;
        let sync = SyncState {
            convergence: Some(Convergence {
                state: ConvergenceState::Behind,
                lag: 12,
            }),
            ..SyncState::default()
        };
        let batch = store.batch().expect("batch");
        batch.set_run_state(&run).expect("run state");
        batch.set_sync_state(&sync).expect("sync state");
        batch.commit().expect("commit");
        let counters = SyncCounters::default();
        SyncCounters::add(&counters.events_pushed, 3);
        SyncCounters::add(&counters.events_parked, 1);

        let before_any_sync = render(&store, &counters, 1_000).expect("render");
        assert!(before_any_sync.contains("# TYPE lib_agent_seconds_since_last_sync gauge\n#"));
        counters.last_success_unix.store(990, Ordering::Relaxed);
        let text = render(&store, &counters, 1_000).expect("render");
        for line in [
            "lib_agent_library_files{library=\"notes\"} 0",
            "lib_agent_watch_mode{library=\"notes\",mode=\"watching\"} 1",
            "lib_agent_watch_mode{library=\"nas \\\"photos\\\"\",mode=\"polling\"} 1",
            "lib_agent_watch_mode{library=\"nas \\\"photos\\\"\",mode=\"watching\"} 0",
            "lib_agent_changes_indexed_total 7",
            "lib_agent_events_pushed_total 3",
            "lib_agent_events_pulled_total 0",
            "lib_agent_events_parked_total 1",
            "lib_agent_outbox_backlog 0",
            "lib_agent_seconds_since_last_sync 10",
            "lib_agent_convergence_state{state=\"behind\"} 1",
            "lib_agent_convergence_state{state=\"converged\"} 0",
            "lib_agent_convergence_lag_events 12",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in:\n{text}");
        }
    }
}

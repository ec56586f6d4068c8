//! A real brain (SQLite file, HTTP on 127.0.0.1) served in this process on its own runtime, for
//! the tests that drive agents with blocking calls: the agent's library API, `daemon::run` on a
//! thread, or the real binary. Stopped when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lib_agent::brain::server::{serve, ServerConfig};
use lib_agent::brain::store::{BrainStore, SqliteStore};
use lib_agent::sync::BrainClient;

use super::brain::{config, METRICS_TOKEN, SECRET};
use super::wait::{wait_until, PATIENCE};

pub struct BlockingBrain {
    /// Where it listens: bound before `start` returns, so a test never races for a port.
    pub addr: SocketAddr,
    /// Its SQLite file, for the tests that look behind the protocol.
    pub db: PathBuf,
    pub store: Arc<SqliteStore>,
    runtime: Option<tokio::runtime::Runtime>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl BlockingBrain {
    /// A brain over `dir/brain.db` on a port of its own, with the tests' shared secret and metrics
    /// token ([`config`]).
    pub fn start(dir: &Path) -> BlockingBrain {
        BlockingBrain::start_with(dir, "127.0.0.1:0", config())
    }

    /// A brain at `addr` (an address an earlier brain of the test held, to restart "the same"
    /// brain) with `config`.
    pub fn start_with(dir: &Path, addr: &str, config: ServerConfig) -> BlockingBrain {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let db = dir.join("brain.db");
        let store = Arc::new(SqliteStore::open(&db).expect("brain store"));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("binding the brain to {addr}: {e}"));
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        runtime.spawn(serve(listener, Arc::clone(&store), config, async move {
            let _ = stopped.await;
        }));
        BlockingBrain {
            addr,
            db,
            store,
            runtime: Some(runtime),
            stop: Some(stop),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The runtime it is served on, for what a test runs beside it (a TLS proxy).
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("the brain is running")
    }

    /// A client with the shared secret.
    pub fn client(&self) -> BrainClient {
        BrainClient::new(&self.url(), Some(SECRET.into())).expect("client")
    }

    /// Stops serving; its address then refuses connections. Returns the address and the file, to
    /// start the same brain again.
    pub fn stop(&mut self) -> (SocketAddr, PathBuf) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(5));
        }
        (self.addr, self.db.clone())
    }

    /// One counter of its `GET /metrics`.
    pub fn metric(&self, name: &str) -> u64 {
        let text = reqwest::blocking::Client::new()
            .get(format!("{}/metrics", self.url()))
            .bearer_auth(METRICS_TOKEN)
            .send()
            .and_then(reqwest::blocking::Response::text)
            .expect("GET /metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no counter {name} in {text}"))
    }

    /// Waits until its log has taken in `n` events.
    pub fn wait_for_events(&self, n: u64) {
        wait_until(&format!("{n} events at the brain"), PATIENCE, || {
            self.metric("lib_brain_events_ingested_total") >= n
        });
    }

    /// The id of the newest event in its log.
    pub fn last_id(&self) -> i64 {
        self.client()
            .pull(0, 500, None, None)
            .expect("pull")
            .next_after_id
    }

    /// Drops every event of the log (entities stay), as `agent brain prune` does with old ones.
    pub fn prune_everything(&self) {
        let cutoff = SystemTime::now() + Duration::from_secs(3600);
        self.runtime()
            .block_on(self.store.prune(cutoff))
            .expect("prune");
    }

    /// Its winner for a key: (device, sha256 or None for a tombstone).
    pub fn winner(&self, key: &str) -> (String, Option<String>) {
        let page = self.client().snapshot("", 500).expect("snapshot");
        let entity = page
            .entities
            .into_iter()
            .find(|e| e.entity_key == key)
            .expect("entity at the brain");
        let sha = if entity.deleted_at.is_some() {
            None
        } else {
            entity.payload.sha256
        };
        (entity.device_id, sha)
    }
}

impl Drop for BlockingBrain {
    fn drop(&mut self) {
        self.stop();
    }
}

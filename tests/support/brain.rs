//! What the brain tests share: a real brain server on 127.0.0.1, port 0, over a SQLite file in a
//! temporary folder or over its own schema of the PostgreSQL test database
//! (`LIB_TEST_DATABASE_URL`), an HTTP client that speaks to it, and event builders.
//!
//! A PostgreSQL test fails, never skips, when the variable is unset or the server unreachable:
//! `.ci/run` sets it and starts the server.

#![allow(dead_code)] // each test file uses its own part of this module

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use lib_agent::brain::server::{self, ServerConfig};
use lib_agent::brain::store::{BrainStore, PgOptions, PgStore, PruneReport, SqliteStore, Webhook};
use lib_agent::model::{Event, EventType, FilePayload, VectorClock};

pub const SECRET: &str = "test-secret-Zq8";
/// `LIB_METRICS_TOKEN` of brains that serve `/metrics`.
pub const METRICS_TOKEN: &str = "metrics-token-7Kp";

/// The store under a test server, for the calls that have no route (prune) or that look behind one.
#[derive(Clone)]
pub enum AnyStore {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl AnyStore {
    pub async fn prune(&self, cutoff: SystemTime) -> PruneReport {
        match self {
            AnyStore::Sqlite(s) => s.prune(cutoff).await.unwrap(),
            AnyStore::Postgres(s) => s.prune(cutoff).await.unwrap(),
        }
    }

    pub async fn prune_through(&self, through: i64) -> PruneReport {
        match self {
            AnyStore::Sqlite(s) => s.prune_through(through).await.unwrap(),
            AnyStore::Postgres(s) => s.prune_through(through).await.unwrap(),
        }
    }

    pub async fn prune_unless_ran_since(
        &self,
        cutoff: SystemTime,
        ran_since: SystemTime,
    ) -> Option<PruneReport> {
        match self {
            AnyStore::Sqlite(s) => s.prune_unless_ran_since(cutoff, ran_since).await.unwrap(),
            AnyStore::Postgres(s) => s.prune_unless_ran_since(cutoff, ran_since).await.unwrap(),
        }
    }

    pub async fn prune_status(&self) -> lib_agent::brain::store::PruneStatus {
        match self {
            AnyStore::Sqlite(s) => s.prune_status().await.unwrap(),
            AnyStore::Postgres(s) => s.prune_status().await.unwrap(),
        }
    }

    pub async fn active_webhooks(&self) -> Vec<Webhook> {
        match self {
            AnyStore::Sqlite(s) => s.active_webhooks().await.unwrap(),
            AnyStore::Postgres(s) => s.active_webhooks().await.unwrap(),
        }
    }
}

/// Drops a test's PostgreSQL schema when the test ends, pass or fail.
struct SchemaGuard {
    url: String,
    schema: String,
}

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let (url, schema) = (self.url.clone(), self.schema.clone());
        // Drop may run inside the test's runtime: do the async work on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok((client, conn)) =
                    tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// A fresh schema of the test database, dropped at the end of the test, for tests that prepare it
/// before a brain opens it (a LIB v1.1 schema to adopt) or open it several ways.
pub struct TestSchema {
    pub name: String,
    guard: SchemaGuard,
}

impl TestSchema {
    pub fn new() -> TestSchema {
        let name = test_schema();
        TestSchema {
            guard: SchemaGuard {
                url: pg_url(),
                schema: name.clone(),
            },
            name,
        }
    }

    /// A plain connection to the test database, for looking behind the brain.
    pub async fn admin(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.guard.url, tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL test database reachable");
        tokio::spawn(conn);
        client
    }

    /// Runs SQL written for `lib_shared` in this schema.
    pub async fn execute(&self, sql: &str) {
        self.admin()
            .await
            .batch_execute(&sql.replace("lib_shared", &self.name))
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));
    }

    /// A brain store on this schema, at the test database's URL or another one.
    pub async fn open_at(&self, url: &str) -> Result<PgStore, lib_agent::brain::BrainError> {
        PgStore::connect(
            url,
            PgOptions {
                schema: self.name.clone(),
                pool_size: 4,
            },
        )
        .await
    }

    pub async fn open(&self) -> Result<PgStore, lib_agent::brain::BrainError> {
        self.open_at(&self.guard.url).await
    }
}

impl Fixture {
    /// A fixture over a store opened on a [`TestSchema`], which it drops at the end.
    pub fn postgres_on(schema: TestSchema, store: PgStore) -> Fixture {
        Fixture {
            store: AnyStore::Postgres(store),
            _dir: None,
            _schema: Some(schema.guard),
        }
    }
}

/// Where the tests look for PostgreSQL when `LIB_TEST_DATABASE_URL` is unset (the server of
/// this project's CI machines, trust auth).
const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The PostgreSQL server of the tests: `LIB_TEST_DATABASE_URL`, else [`DEFAULT_PG_URL`] when a
/// server answers there; `None` when there is neither. Decided once per test binary.
fn pg_server() -> Option<&'static str> {
    static SERVER: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    SERVER
        .get_or_init(|| {
            if let Ok(url) = std::env::var("LIB_TEST_DATABASE_URL") {
                return Some(url);
            }
            let addr: std::net::SocketAddr = "127.0.0.1:5432".parse().ok()?;
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(1))
                .ok()
                .map(|_| DEFAULT_PG_URL.to_owned())
        })
        .as_deref()
}

/// Whether a PostgreSQL test can run. When it cannot, it says on stderr that `test` is skipped
/// and why, and the test returns; with `LIB_TEST_REQUIRE_PG=1` (set by `.ci/run`) it fails
/// instead, so CI never passes without having run them.
#[track_caller]
pub fn pg_available(test: &str) -> bool {
    if pg_server().is_some() {
        return true;
    }
    // libtest names each test's thread after the test, which says more than a module path.
    let thread = std::thread::current();
    let test = thread.name().filter(|n| *n != "main").unwrap_or(test);
    assert!(
        std::env::var("LIB_TEST_REQUIRE_PG").as_deref() != Ok("1"),
        "{test}: LIB_TEST_REQUIRE_PG=1 and no PostgreSQL: LIB_TEST_DATABASE_URL is unset and \
         nothing answers at 127.0.0.1:5432"
    );
    eprintln!(
        "SKIPPED {test}: no PostgreSQL (set LIB_TEST_DATABASE_URL, or run a server at \
         127.0.0.1:5432); LIB_TEST_REQUIRE_PG=1 makes this a failure"
    );
    false
}

/// Returns from the test, saying so, when there is no PostgreSQL to run it on.
#[allow(unused_macros)]
macro_rules! require_postgres {
    () => {
        if !$crate::support::brain::pg_available(module_path!()) {
            return;
        }
    };
    ($name:expr) => {
        if !$crate::support::brain::pg_available(&format!("{}::{}", module_path!(), $name)) {
            return;
        }
    };
}

/// The URL of the tests' PostgreSQL server; a test calls [`require_postgres!`] first.
pub fn pg_url() -> String {
    match pg_server() {
        Some(url) => url.to_owned(),
        None => {
            panic!("no PostgreSQL server: the test should have started with require_postgres!()")
        }
    }
}

/// A fresh schema name for one test.
pub fn test_schema() -> String {
    format!(
        "lib_shared_t{}",
        ulid::Ulid::new().to_string().to_lowercase()
    )
}

/// A store of the given kind, empty.
pub struct Fixture {
    pub store: AnyStore,
    _dir: Option<tempfile::TempDir>,
    _schema: Option<SchemaGuard>,
}

impl Fixture {
    pub async fn sqlite() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("brain.db")).unwrap();
        Fixture {
            store: AnyStore::Sqlite(store),
            _dir: Some(dir),
            _schema: None,
        }
    }

    pub async fn postgres() -> Fixture {
        let url = pg_url();
        let schema = test_schema();
        let guard = SchemaGuard {
            url: url.clone(),
            schema: schema.clone(),
        };
        let store = PgStore::connect(
            &url,
            PgOptions {
                schema,
                pool_size: 8,
            },
        )
        .await
        .unwrap_or_else(|e| {
            panic!("PostgreSQL at {url} is unreachable or refused the schema: {e}")
        });
        Fixture {
            store: AnyStore::Postgres(store),
            _dir: None,
            _schema: Some(guard),
        }
    }

    /// Another brain instance on the same PostgreSQL schema (its own pool and listener).
    pub async fn second_instance(&self) -> AnyStore {
        match &self.store {
            AnyStore::Postgres(s) => AnyStore::Postgres(
                PgStore::connect(
                    &pg_url(),
                    PgOptions {
                        schema: s.schema().to_owned(),
                        pool_size: 8,
                    },
                )
                .await
                .unwrap(),
            ),
            AnyStore::Sqlite(s) => AnyStore::Sqlite(s.clone()),
        }
    }

    pub async fn serve(&self) -> Brain {
        Brain::start(self.store.clone(), config()).await
    }
}

pub fn config() -> ServerConfig {
    ServerConfig {
        secret: Some(SECRET.into()),
        metrics_token: Some(METRICS_TOKEN.into()),
        // Webhook listeners in tests are on loopback.
        webhooks: lib_agent::brain::webhooks::WebhookPolicy {
            allow_private: true,
            ..Default::default()
        },
        ..ServerConfig::default()
    }
}

/// A running brain server in this process.
pub struct Brain {
    pub http: Http,
    pub store: AnyStore,
    stop: Option<oneshot::Sender<()>>,
}

impl std::ops::Deref for Brain {
    type Target = Http;
    fn deref(&self) -> &Http {
        &self.http
    }
}

/// An HTTP client of one brain server, with the test secret.
pub struct Http {
    pub addr: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Drop for Brain {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub text: String,
}

impl Brain {
    pub async fn start(store: AnyStore, config: ServerConfig) -> Brain {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        match store.clone() {
            AnyStore::Sqlite(s) => {
                tokio::spawn(server::serve(listener, Arc::new(s), config, shutdown));
            }
            AnyStore::Postgres(s) => {
                tokio::spawn(server::serve(listener, Arc::new(s), config, shutdown));
            }
        }
        Brain {
            http: Http::new(addr),
            store,
            stop: Some(stop),
        }
    }
}

impl Http {
    pub fn new(addr: SocketAddr) -> Http {
        Http {
            addr,
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A request with the given secret (None: no header).
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        secret: Option<&str>,
        body: Vec<u8>,
    ) -> Reply {
        self.try_send(method, path, secret, body)
            .await
            .expect("the brain answers")
    }

    /// [`Http::send`], with `None` when the brain cannot be reached.
    pub async fn try_send(
        &self,
        method: &str,
        path: &str,
        secret: Option<&str>,
        body: Vec<u8>,
    ) -> Option<Reply> {
        let mut request = axum::http::Request::builder()
            .method(method)
            .uri(self.url(path));
        if let Some(secret) = secret {
            request = request.header("x-lib-sync-secret", secret);
        }
        if !body.is_empty() {
            request = request.header("content-type", "application/json");
        }
        let request = request.body(Full::new(Bytes::from(body))).unwrap();
        let response = self.client.request(request).await.ok()?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.ok()?.to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Some(Reply { status, body, text })
    }

    /// A request with exactly these headers (and a JSON content type when it has a body).
    pub async fn send_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Reply {
        let mut request = axum::http::Request::builder()
            .method(method)
            .uri(self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if !body.is_empty() {
            request = request.header("content-type", "application/json");
        }
        let request = request.body(Full::new(Bytes::from(body))).unwrap();
        let response = self
            .client
            .request(request)
            .await
            .expect("the brain answers");
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply { status, body, text }
    }

    /// `GET /metrics` with the metrics token.
    pub async fn metrics(&self) -> String {
        let bearer = format!("Bearer {METRICS_TOKEN}");
        let r = self
            .send_with("GET", "/metrics", &[("authorization", &bearer)], Vec::new())
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        r.text
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send("GET", path, Some(SECRET), Vec::new()).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send(
            "POST",
            path,
            Some(SECRET),
            serde_json::to_vec(body).unwrap(),
        )
        .await
    }

    pub async fn ingest(&self, batch: &[Event]) -> Reply {
        self.post("/ingest", &json!({ "batch": batch })).await
    }

    /// Ingests and expects success; returns (inserted_events, upserted_entities).
    pub async fn ingest_ok(&self, batch: &[Event]) -> (u64, u64) {
        let r = self.ingest(batch).await;
        assert_eq!(r.status, 200, "ingest failed: {}", r.text);
        assert_eq!(r.body["ok"], true);
        (
            r.body["result"]["inserted_events"].as_u64().unwrap(),
            r.body["result"]["upserted_entities"].as_u64().unwrap(),
        )
    }

    pub async fn pull(&self, after_id: i64, limit: usize) -> Reply {
        self.get(&format!("/pull?after_id={after_id}&limit={limit}"))
            .await
    }

    /// Every event in the log, paging through it.
    pub async fn pull_all(&self) -> Vec<Value> {
        self.pull_all_after(0).await
    }

    /// Every event after a cursor, paging through the log.
    pub async fn pull_all_after(&self, cursor: i64) -> Vec<Value> {
        let mut after = cursor;
        let mut all = Vec::new();
        loop {
            let r = self.pull(after, 500).await;
            assert_eq!(r.status, 200, "{}", r.text);
            all.extend(r.body["events"].as_array().unwrap().iter().cloned());
            after = r.body["next_after_id"].as_i64().unwrap();
            if !r.body["has_more"].as_bool().unwrap() {
                return all;
            }
        }
    }

    /// Every entity, paging through the snapshot.
    pub async fn snapshot_all(&self) -> Vec<Value> {
        let mut after = String::new();
        let mut all = Vec::new();
        loop {
            let r = self
                .get(&format!("/snapshot?after_key={}&limit=500", encode(&after)))
                .await;
            assert_eq!(r.status, 200, "{}", r.text);
            let page = r.body["entities"].as_array().unwrap();
            all.extend(page.iter().cloned());
            if !r.body["has_more"].as_bool().unwrap() {
                return all;
            }
            after = page.last().unwrap()["entity_key"]
                .as_str()
                .unwrap()
                .to_owned();
        }
    }

    pub async fn entity(&self, key: &str) -> Option<Value> {
        self.snapshot_all()
            .await
            .into_iter()
            .find(|e| e["entity_key"] == key)
    }
}

/// Percent-encodes a query value.
pub fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn sha(c: char) -> String {
    c.to_string().repeat(64)
}

/// An upsert of `key` by `device` with `clock`, whose bytes hash to `sha(c)`.
pub fn upsert(device: &str, key: &str, clock: &[(&str, u64)], c: char) -> Event {
    let mut vc = VectorClock::new();
    for (d, n) in clock {
        vc.set(d, *n);
    }
    Event {
        event_ulid: ulid::Ulid::new().to_string(),
        device_id: device.into(),
        event_type: EventType::UpsertFile,
        entity_type: "file".into(),
        entity_key: key.into(),
        payload: FilePayload {
            sha256: Some(sha(c)),
            bytes: Some(300),
            mtime_unix: Some(1_732_500_000),
            ext: Some("md".into()),
            mime: Some("text/markdown".into()),
            content: Some(format!("content {c} of {key}")),
        },
        vector_clock: vc,
        created_at: "2026-11-25T10:00:00Z".into(),
    }
}

pub fn delete(device: &str, key: &str, clock: &[(&str, u64)]) -> Event {
    let mut e = upsert(device, key, clock, '0');
    e.event_type = EventType::DeleteFile;
    e.payload = FilePayload::default();
    e
}

/// `n` upserts of distinct keys by one device, its clock counting up from `from`.
pub fn many(device: &str, n: usize, from: u64) -> Vec<Event> {
    (0..n)
        .map(|i| {
            upsert(
                device,
                &format!("notes/{device}/f{:06}.md", from + i as u64),
                &[(device, from + i as u64)],
                'a',
            )
        })
        .collect()
}

pub fn ulids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["event_ulid"].as_str().unwrap().to_owned())
        .collect()
}

pub fn ids(events: &[Value]) -> Vec<i64> {
    events.iter().map(|e| e["id"].as_i64().unwrap()).collect()
}

/// Every test is bounded: a hang fails it instead of the whole suite.
pub const TEST_LIMIT: Duration = Duration::from_secs(60);

/// Runs the agent binary to its end, killed (and the test failed) if it takes over [`TEST_LIMIT`].
pub fn run_bounded(command: &mut std::process::Command) -> std::process::Output {
    use std::process::Stdio;
    use std::sync::mpsc;
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the agent binary");
    let pid = child.id() as libc::pid_t;
    let (done, finished) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = finished.recv_timeout(TEST_LIMIT) {
            // SAFETY: kill(2) on our own child, not reaped yet: wait_with_output still waits.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            return true;
        }
        false
    });
    let output = child.wait_with_output().expect("wait for the agent");
    let _ = done.send(());
    assert!(
        !watchdog.join().unwrap_or(false),
        "the agent did not finish within {TEST_LIMIT:?}: killed"
    );
    output
}

/// Instantiates every test of a suite twice, for a SQLite and a PostgreSQL store: each test is an
/// `async fn(Fixture)` of the file, bounded by [`TEST_LIMIT`].
#[allow(unused_macros)]
macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let fixture = Fixture::sqlite().await;
                    tokio::time::timeout(TEST_LIMIT, super::$name(fixture)).await.expect("test timed out");
                }
            )*
        }
        mod postgres {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    require_postgres!(stringify!($name));
                    let fixture = Fixture::postgres().await;
                    tokio::time::timeout(TEST_LIMIT, super::$name(fixture)).await.expect("test timed out");
                }
            )*
        }
    };
}

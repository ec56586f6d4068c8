//! Every field capped (DESIGN.md "Trust"), end to end: the brain refuses an over-cap ingest
//! naming `batch[i].field`, serves pages bounded in bytes, and counts what it stored before the
//! caps (both stores); the agent skips and records an over-cap pulled event or snapshot entity and
//! applies the valid ones around it, never wraps its sequence, and its client follows no
//! redirect, reads no answer over its cap and sends the device token when it has one. Servers run
//! on 127.0.0.1, port 0; the tiny ones here stand in for a brain the client must not trust.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::brain::*;
use lib_agent::brain::server::ServerConfig;
use lib_agent::brain::store::{BrainStore, MAX_PAGE_BYTES};
use lib_agent::config::{Config, Overrides};
use lib_agent::model::{Event, EventType, FilePayload, VectorClock};
use lib_agent::store::{LocalChange, Store, StoreError};
use lib_agent::sync::client::{ClientError, MAX_ANSWER_BYTES};
use lib_agent::sync::{self, BrainClient, REFUSED_PULL_PREFIX, REFUSED_SNAPSHOT_INFIX};

suite!(
    each_over_cap_field_of_an_ingest_is_a_400_naming_it,
    a_pull_and_a_snapshot_of_big_events_come_in_pages_under_the_byte_bound,
    the_brain_counts_the_stored_events_over_todays_caps,
);

const MIB: usize = 1 << 20;

fn wide_clock(device: &str, entries: usize) -> VectorClock {
    let mut clock = VectorClock::from([(device, 1)]);
    for i in 1..entries {
        clock.set(&format!("d{i}"), 1);
    }
    clock
}

async fn each_over_cap_field_of_an_ingest_is_a_400_naming_it(f: Fixture) {
    let brain = f.serve().await;
    let good = || upsert("dev-a", "notes/ok.md", &[("dev-a", 1)], 'a');
    type Edit = Box<dyn Fn(&mut Event)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "entity_key",
            Box::new(|e| e.entity_key = format!("notes/{}", "k".repeat(1019))),
        ),
        (
            "entity_key",
            Box::new(|e| e.entity_key = format!("notes{}", "/k".repeat(64))),
        ),
        (
            "entity_key",
            Box::new(|e| e.entity_key = "notes/a\u{1b}]52;c;eA==\u{7}".into()),
        ),
        (
            "device_id",
            Box::new(|e| {
                e.device_id = "d".repeat(129);
                e.vector_clock = VectorClock::from([(e.device_id.as_str(), 1)]);
            }),
        ),
        (
            "device_id",
            Box::new(|e| {
                e.device_id = "dev a".into();
                e.vector_clock = VectorClock::from([("dev a", 1)]);
            }),
        ),
        (
            "payload.ext",
            Box::new(|e| e.payload.ext = Some("x".repeat(33))),
        ),
        (
            "payload.ext",
            Box::new(|e| e.payload.ext = Some("m\u{8}d".into())),
        ),
        (
            "payload.mime",
            Box::new(|e| e.payload.mime = Some("m".repeat(256))),
        ),
        (
            "payload.bytes",
            Box::new(|e| e.payload.bytes = Some((1 << 53) + 1)),
        ),
        (
            "payload.content",
            Box::new(|e| e.payload.content = Some("x".repeat(MIB + 1))),
        ),
        (
            "created_at",
            Box::new(|e| e.created_at = "not a time".into()),
        ),
        (
            "created_at",
            Box::new(|e| e.created_at = "2026-02-10 10:06:00.250+00".into()),
        ),
        (
            "vector_clock",
            Box::new(|e| e.vector_clock = wide_clock("dev-a", 257)),
        ),
        (
            "vector_clock[\"dev-a\"]",
            Box::new(|e| e.vector_clock = VectorClock::from([("dev-a", (1 << 53) + 1)])),
        ),
        (
            "vector_clock[\"dev-b\"]",
            Box::new(|e| e.vector_clock = VectorClock::from([("dev-a", 1), ("dev-b", u64::MAX)])),
        ),
        (
            "vector_clock key",
            Box::new(|e| e.vector_clock = VectorClock::from([("dev-a", 1), ("no/slash", 1)])),
        ),
        (
            "payload.content",
            Box::new(|e| {
                e.event_type = EventType::DeleteFile;
                e.payload = FilePayload {
                    content: Some("junk".repeat(1000)),
                    ..FilePayload::default()
                };
            }),
        ),
    ];
    for (field, edit) in &cases {
        let mut bad = upsert("dev-a", "notes/bad.md", &[("dev-a", 2)], 'b');
        edit(&mut bad);
        let r = brain.ingest(&[good(), bad]).await;
        assert_eq!(r.status, 400, "{field}: {}", r.text);
        let error = r.body["error"].as_str().unwrap_or_default();
        assert!(
            error.starts_with(&format!("batch[1].{field}")),
            "{field}: {error}"
        );
        assert!(
            error.len() < 600,
            "the error quotes a bounded value: {}",
            error.len()
        );
    }
    // The boundaries themselves are accepted, and nothing of the refused batches was stored.
    let mut edge = upsert(
        "dev-a",
        &format!("notes/{}", "k".repeat(1018)),
        &[("dev-a", 3)],
        'c',
    );
    edge.payload.ext = Some("x".repeat(32));
    edge.payload.mime = Some("m".repeat(255));
    edge.payload.bytes = Some(1 << 53);
    edge.vector_clock = wide_clock("dev-a", 256);
    edge.vector_clock.set("dev-a", 1 << 53);
    edge.created_at = "2026-02-10T11:06:00.25+01:00".into();
    assert_eq!(edge.entity_key.len(), 1024);
    assert_eq!(brain.ingest_ok(&[edge]).await, (1, 1));
    assert_eq!(brain.pull_all().await.len(), 1);
}

/// `n` upserts whose content is `bytes` each, by one device.
fn big_events(n: usize, bytes: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let mut e = upsert(
                "dev-a",
                &format!("notes/big{i:02}.md"),
                &[("dev-a", i as u64 + 1)],
                'a',
            );
            e.payload.content = Some(char::from(b'a' + i as u8).to_string().repeat(bytes));
            e
        })
        .collect()
}

async fn a_pull_and_a_snapshot_of_big_events_come_in_pages_under_the_byte_bound(f: Fixture) {
    let config = ServerConfig {
        max_content_bytes: 4 * MIB,
        ..config()
    };
    let brain = Brain::start(f.store.clone(), config).await;
    // Four fit in a page (with their keys and clocks), a fifth does not.
    let size = MAX_PAGE_BYTES / 4 - 4096;
    let events = big_events(6, size);
    for e in &events {
        brain.ingest_ok(std::slice::from_ref(e)).await;
    }
    let content_of = |e: &Value| e["payload"]["content"].as_str().map_or(0, str::len);

    let mut pages = Vec::new();
    let mut after = 0;
    loop {
        let r = brain.pull(after, 500).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let page = r.body["events"].as_array().unwrap().clone();
        assert!(!page.is_empty(), "a page holds at least one event");
        assert!(page.iter().map(content_of).sum::<usize>() <= MAX_PAGE_BYTES);
        pages.push(page.len());
        after = r.body["next_after_id"].as_i64().unwrap();
        if !r.body["has_more"].as_bool().unwrap() {
            break;
        }
    }
    assert_eq!(pages, [4, 2], "pages by bytes, not by the limit of 500");
    assert_eq!(
        ulids(&brain.pull_all().await),
        ulids_of(&events),
        "each event once, in order"
    );

    let mut pages = Vec::new();
    let mut after_key = String::new();
    loop {
        let r = brain
            .get(&format!(
                "/snapshot?after_key={}&limit=500",
                encode(&after_key)
            ))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let page = r.body["entities"].as_array().unwrap().clone();
        assert!(page.iter().map(content_of).sum::<usize>() <= MAX_PAGE_BYTES);
        pages.push(page.len());
        if !r.body["has_more"].as_bool().unwrap() {
            break;
        }
        after_key = page.last().unwrap()["entity_key"]
            .as_str()
            .unwrap()
            .to_owned();
    }
    assert_eq!(pages, [4, 2]);
}

fn ulids_of(events: &[Event]) -> Vec<String> {
    events.iter().map(|e| e.event_ulid.clone()).collect()
}

/// Appends a row to the brain's log behind its back, as a brain before the caps (or a damaged
/// log) would hold it: `payload` and `clock` are JSON text.
async fn insert_raw_event(store: &AnyStore, ulid: &str, key: &str, payload: &str, clock: &str) {
    match store {
        AnyStore::Sqlite(s) => {
            let db = rusqlite::Connection::open(s.path()).expect("brain db");
            db.execute(
                "INSERT INTO events (event_ulid, device_id, event_type, entity_type, entity_key,
                   payload, vector_clock, created_at, received_at, digest)
                 VALUES (?1, 'dev-old', 'upsert_file', 'file', ?2, ?3, ?4, 'not a time',
                         strftime('%s','now'), 'none')",
                rusqlite::params![ulid, key, payload, clock],
            )
            .expect("insert into the brain's log");
        }
        AnyStore::Postgres(s) => {
            let (client, conn) = tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls)
                .await
                .expect("PostgreSQL test database reachable");
            tokio::spawn(conn);
            client
                .execute(
                    &format!(
                        "INSERT INTO {}.events (event_ulid, device_id, event_type, entity_type,
                           entity_key, payload, vector_clock, created_at, digest)
                         VALUES ($1, 'dev-old', 'upsert_file', 'file', $2, $3::text::jsonb,
                                 $4::text::jsonb, 'not a time', 'none')",
                        s.schema()
                    ),
                    &[&ulid, &key, &payload, &clock],
                )
                .await
                .expect("insert into the brain's log");
        }
    }
}

async fn the_brain_counts_the_stored_events_over_todays_caps(f: Fixture) {
    let brain = f.serve().await;
    brain.ingest_ok(&many("dev-a", 3, 1)).await;
    let count = |store: AnyStore| async move {
        match store {
            AnyStore::Sqlite(s) => s.count_over_caps(MIB).await.expect("count"),
            AnyStore::Postgres(s) => s.count_over_caps(MIB).await.expect("count"),
        }
    };
    let report = count(f.store.clone()).await;
    assert_eq!((report.read, report.over, report.first), (3, 0, None));

    let payload = json!({"sha256": sha('e'), "bytes": 1, "ext": "x".repeat(40)}).to_string();
    let ulid = ulid::Ulid::new().to_string();
    insert_raw_event(
        &f.store,
        &ulid,
        "notes/old.md",
        &payload,
        r#"{"dev-old": 1}"#,
    )
    .await;
    brain.ingest_ok(&many("dev-a", 2, 10)).await;
    let report = count(f.store.clone()).await;
    assert_eq!((report.read, report.over), (6, 1), "{report:?}");
    let (id, reason) = report.first.expect("the first over-cap event");
    assert_eq!(id, 4);
    assert!(reason.starts_with("created_at"), "{reason}");
    // Still served as stored.
    let all = brain.pull_all().await;
    assert_eq!(all.len(), 6);
    assert_eq!(all[3]["event_ulid"], ulid.as_str());
}

// ---------------------------------------------------------------------------------------------
// The agent's side, against a SQLite brain written to directly (a damaged or old log).

/// A brain on SQLite, its runtime, and an agent store beside it.
struct Setup {
    runtime: tokio::runtime::Runtime,
    fixture: Fixture,
    brain: Brain,
    _dir: tempfile::TempDir,
    store: Store,
}

impl Setup {
    fn new() -> Setup {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let fixture = runtime.block_on(Fixture::sqlite());
        let brain = runtime.block_on(fixture.serve());
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("agent.db")).expect("agent store");
        Setup {
            runtime,
            fixture,
            brain,
            _dir: dir,
            store,
        }
    }

    fn client(&self) -> BrainClient {
        BrainClient::new(&self.brain.url(""), Some(SECRET.into())).expect("client")
    }

    fn ingest(&self, events: &[Event]) {
        self.runtime.block_on(self.brain.ingest_ok(events));
    }

    fn raw_event(&self, key: &str, payload: &str, clock: &str) -> String {
        let ulid = ulid::Ulid::new().to_string();
        self.runtime.block_on(insert_raw_event(
            &self.fixture.store,
            &ulid,
            key,
            payload,
            clock,
        ));
        ulid
    }

    fn pull(&mut self) -> sync::PullSummary {
        let client = self.client();
        sync::pull(&mut self.store, &client, 200, None).expect("the pull goes on")
    }

    /// The agent's winner for a key: (device, sha256), or None.
    fn winner(&mut self, key: &str) -> Option<(String, Option<String>)> {
        let batch = self.store.batch().expect("batch");
        let state = batch.entity(key).expect("entity")?;
        let w = state.winner();
        Some((w.device_id.clone(), w.sha256.clone()))
    }
}

fn sqlite_path(store: &AnyStore) -> &Path {
    match store {
        AnyStore::Sqlite(s) => s.path(),
        AnyStore::Postgres(_) => unreachable!("the agent-side tests run on SQLite"),
    }
}

#[test]
fn an_over_cap_pulled_event_is_skipped_and_recorded_and_the_valid_ones_around_it_applied() {
    let mut s = Setup::new();
    let before = upsert("dev-a", "notes/before.md", &[("dev-a", 1)], 'a');
    s.ingest(std::slice::from_ref(&before));
    // Over the size caps the agent applies: a 2 KiB key, a 300-entry clock, a 40-byte ext.
    let long_key = format!("notes/{}", "k".repeat(2000));
    let payload = json!({"sha256": sha('b'), "bytes": 1}).to_string();
    let bad_key = s.raw_event(&long_key, &payload, r#"{"dev-old": 1}"#);
    let clock: serde_json::Map<String, Value> = (0..300)
        .map(|i| (format!("d{i}"), json!(1)))
        .chain([("dev-old".into(), json!(1))])
        .collect();
    let bad_clock = s.raw_event("notes/wide.md", &payload, &Value::Object(clock).to_string());
    let ext = json!({"sha256": sha('b'), "bytes": 1, "ext": "e".repeat(40)}).to_string();
    let bad_ext = s.raw_event("notes/ext.md", &ext, r#"{"dev-old": 1}"#);
    // An old brain's event with a created_at that is not RFC 3339: still applied.
    let old = s.raw_event("notes/old.md", &payload, r#"{"dev-old": 1}"#);
    let after = upsert("dev-a", "notes/after.md", &[("dev-a", 2)], 'c');
    s.ingest(std::slice::from_ref(&after));

    let summary = s.pull();
    assert_eq!(
        (summary.pulled, summary.applied, summary.refused),
        (6, 3, 3),
        "{summary:?}"
    );
    assert_eq!(
        s.winner("notes/before.md"),
        Some(("dev-a".into(), Some(sha('a'))))
    );
    assert_eq!(
        s.winner("notes/after.md"),
        Some(("dev-a".into(), Some(sha('c'))))
    );
    assert_eq!(
        s.winner("notes/old.md"),
        Some(("dev-old".into(), Some(sha('b'))))
    );
    assert_eq!(s.winner("notes/wide.md"), None);
    assert_eq!(s.winner("notes/ext.md"), None);

    let refused = sync::refused_pulls(&s.store).expect("refused");
    let by_ulid = |u: &str| refused.iter().find(|r| r.event_ulid == u).expect(u).clone();
    assert!(
        by_ulid(&bad_key).reason.starts_with("entity_key"),
        "{refused:?}"
    );
    assert!(
        by_ulid(&bad_key).entity_key.len() <= 1024,
        "the record is clipped"
    );
    assert!(by_ulid(&bad_clock)
        .reason
        .starts_with("vector_clock has 301 entries"));
    assert!(by_ulid(&bad_ext).reason.starts_with("payload.ext"));
    assert!(refused.iter().all(|r| !r.snapshot && r.event_ulid != old));
    let again = s.pull();
    assert_eq!(
        (again.pulled, again.refused),
        (0, 0),
        "each is refused once"
    );
}

#[test]
fn an_over_cap_snapshot_entity_is_skipped_and_recorded_and_the_valid_ones_applied() {
    let mut s = Setup::new();
    let events = [
        upsert("dev-a", "notes/a.md", &[("dev-a", 1)], 'a'),
        upsert("dev-a", "notes/m.md", &[("dev-a", 2)], 'b'),
        upsert("dev-a", "notes/z.md", &[("dev-a", 3)], 'c'),
    ];
    s.ingest(&events);
    // The middle entity, damaged behind the brain's back: a mime over 255 bytes and a clock
    // entry past 2^53.
    let db = rusqlite::Connection::open(sqlite_path(&s.fixture.store)).expect("brain db");
    let payload = json!({"sha256": sha('b'), "bytes": 300, "mime": "m".repeat(300)}).to_string();
    db.execute(
        "UPDATE entities SET payload = ?1, vector_clock = '{\"dev-a\": 18446744073709551615}'
         WHERE entity_key = 'notes/m.md'",
        [payload],
    )
    .expect("damage the entity");
    // The agent's cursor is behind the pruned log: it re-seeds from the snapshot.
    s.runtime.block_on(s.fixture.store.prune_through(i64::MAX));
    s.ingest(&[upsert("dev-a", "notes/late.md", &[("dev-a", 4)], 'd')]);

    let summary = s.pull();
    assert!(summary.reseeded, "{summary:?}");
    assert_eq!(
        s.winner("notes/a.md"),
        Some(("dev-a".into(), Some(sha('a'))))
    );
    assert_eq!(
        s.winner("notes/z.md"),
        Some(("dev-a".into(), Some(sha('c'))))
    );
    assert_eq!(
        s.winner("notes/late.md"),
        Some(("dev-a".into(), Some(sha('d'))))
    );
    assert_eq!(
        s.winner("notes/m.md"),
        None,
        "the damaged entity is not applied"
    );

    let refused = sync::refused_pulls(&s.store).expect("refused");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0].snapshot);
    assert_eq!(refused[0].entity_key, "notes/m.md");
    assert!(
        refused[0].reason.starts_with("vector_clock"),
        "{}",
        refused[0].reason
    );
    let keys: Vec<String> = rusqlite::Connection::open(s.store.path())
        .expect("open the database")
        .prepare("SELECT k FROM lib_kv WHERE k LIKE 'sync_refused_pull/%'")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .and_then(|rows| rows.collect())
        .expect("keys");
    assert_eq!(keys.len(), 1);
    assert!(keys[0].starts_with(&format!("{REFUSED_PULL_PREFIX}{REFUSED_SNAPSHOT_INFIX}")));
    assert_eq!(
        keys[0].len(),
        REFUSED_PULL_PREFIX.len() + REFUSED_SNAPSHOT_INFIX.len() + 64
    );
}

/// Regression (issue 12): a clock entry `{victim: 2^64-1}` wrapped the victim's sequence
/// (`max(..) + 1`), and its later edits were refused by the brain and parked forever.
#[test]
fn a_pulled_clock_entry_of_ours_never_wraps_our_sequence() {
    let mut s = Setup::new();
    let me = s.store.device_id().to_owned();
    let payload = json!({"sha256": sha('b'), "bytes": 1}).to_string();
    let wrapping = s.raw_event(
        "notes/wrap.md",
        &payload,
        &json!({"dev-old": 1, me.clone(): u64::MAX}).to_string(),
    );
    // 2^53 is within the caps: a brain accepts it, from any device.
    let at_cap = upsert(
        "dev-b",
        "notes/cap.md",
        &[("dev-b", 1), (me.as_str(), 1 << 53)],
        'c',
    );
    s.ingest(&[at_cap]);
    let summary = s.pull();
    assert_eq!((summary.applied, summary.refused), (1, 1), "{summary:?}");
    let refused = sync::refused_pulls(&s.store).expect("refused");
    assert_eq!(refused[0].event_ulid, wrapping);
    assert!(
        refused[0].reason.contains("outside 1..=2^53"),
        "{}",
        refused[0].reason
    );

    // The next edit of that key would need 2^53 + 1: a clear error, nothing recorded.
    let edit = || FilePayload {
        sha256: Some(sha('d')),
        bytes: Some(1),
        ..FilePayload::default()
    };
    let batch = s.store.batch().expect("batch");
    let err = batch
        .record_local(LocalChange::new(
            "notes/cap.md",
            EventType::UpsertFile,
            edit(),
        ))
        .expect_err("no sequence past 2^53");
    assert!(matches!(err, StoreError::SequenceExhausted { .. }), "{err}");
    assert!(err.to_string().contains("2^53"), "{err}");
    drop(batch);
    // Other keys are not affected: their clocks do not carry the entry.
    let batch = s.store.batch().expect("batch");
    let event = batch
        .record_local(LocalChange::new(
            "notes/other.md",
            EventType::UpsertFile,
            edit(),
        ))
        .expect("another key")
        .expect("recorded");
    batch.commit().expect("commit");
    assert_eq!(event.vector_clock.get(&me), 1);
    assert_eq!(event.validate(MIB), Ok(()));
}

// ---------------------------------------------------------------------------------------------
// The client, against tiny servers it must not trust.

/// A server on 127.0.0.1 that answers each connection with `answer`, and records each request's
/// head (the request line and headers, lowercased names). Ends with the test process.
struct Tiny {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Tiny {
    fn start(answer: impl Fn(&mut TcpStream) + Send + 'static) -> Tiny {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let heads = Arc::new(Mutex::new(Vec::new()));
        let recorded = heads.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let head = read_head(&mut stream);
                recorded.lock().expect("heads").push(head);
                answer(&mut stream);
            }
        });
        Tiny { addr, heads }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().expect("heads").clone()
    }
}

/// Reads a request's head and its body (by Content-Length); returns the head.
fn read_head(stream: &mut TcpStream) -> String {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    while !data.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
    let end = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(data.len(), |p| p + 4);
    let head = String::from_utf8_lossy(&data[..end]).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut have = data.len() - end;
    while have < length {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => have += n,
        }
    }
    head
}

fn respond(stream: &mut TcpStream, status: &str, headers: &str, body: &str) {
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

const EMPTY_PULL: &str = r#"{"ok":true,"events":[],"next_after_id":0,"has_more":false}"#;

#[test]
fn a_redirect_is_not_followed_and_nothing_reaches_where_it_points() {
    // The second server is never accepted from: a connection to it would wait in its backlog.
    let elsewhere = TcpListener::bind("127.0.0.1:0").expect("bind");
    elsewhere.set_nonblocking(true).expect("nonblocking");
    let target = format!("http://{}/ingest", elsewhere.local_addr().expect("addr"));
    let location = target.clone();
    let redirecting = Tiny::start(move |stream| {
        respond(
            stream,
            "307 Temporary Redirect",
            &format!("Location: {location}\r\n"),
            "",
        );
    });
    let client =
        BrainClient::new(&redirecting.url(), Some("the-shared-secret".into())).expect("client");
    let mut event = upsert("dev-a", "notes/private.md", &[("dev-a", 1)], 'a');
    event.payload.content = Some("the text of a private file".into());

    let err = client.ingest(&[event]).expect_err("a redirect is an error");
    let ClientError::Redirect {
        status, location, ..
    } = &err
    else {
        panic!("not a redirect error: {err}");
    };
    assert_eq!(*status, 307);
    assert!(location.contains(&target), "{location}");
    let text = err.to_string();
    assert!(
        text.contains("not followed") && text.contains(&target),
        "{text}"
    );
    assert!(
        !err.is_retryable() && !err.is_refusal(),
        "neither retried nor parked"
    );
    let err = client
        .pull(0, 10, None, None)
        .expect_err("a redirect is an error");
    assert!(matches!(err, ClientError::Redirect { .. }), "{err}");

    assert_eq!(
        redirecting.heads().len(),
        2,
        "the redirecting server was asked twice"
    );
    match elsewhere.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the redirect's target was connected to: {other:?}"),
    }
}

#[test]
fn an_answer_over_64_mib_is_refused_without_reading_it_whole() {
    // Announced: refused at the header.
    let announced = Tiny::start(|stream| {
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{{",
            MAX_ANSWER_BYTES + 1
        );
    });
    let client = BrainClient::new(&announced.url(), None).expect("client");
    let err = client.pull(0, 10, None, None).expect_err("too large");
    assert!(matches!(err, ClientError::TooLarge { .. }), "{err}");
    assert!(
        err.to_string().contains(&MAX_ANSWER_BYTES.to_string()),
        "{err}"
    );

    // Streamed without a length: the client stops reading past the cap; the server sees the
    // connection close long before it runs out of answer (it would send 4 times the cap).
    let written = Arc::new(Mutex::new(0u64));
    let count = written.clone();
    let streamed = Tiny::start(move |stream| {
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        let chunk = vec![b' '; 1 << 20];
        for _ in 0..4 * (MAX_ANSWER_BYTES >> 20) {
            let sent = write!(stream, "{:x}\r\n", chunk.len())
                .and_then(|()| stream.write_all(&chunk))
                .and_then(|()| stream.write_all(b"\r\n"));
            if sent.is_err() {
                return;
            }
            *count.lock().expect("count") += chunk.len() as u64;
        }
    });
    let client = BrainClient::new(&streamed.url(), None).expect("client");
    let err = client.pull(0, 10, None, None).expect_err("too large");
    assert!(matches!(err, ClientError::TooLarge { .. }), "{err}");
    assert!(!err.is_retryable());
    drop(client);
    // What the server got out is what the client read plus the sockets' buffers.
    let sent = *written.lock().expect("count");
    assert!(sent < 2 * MAX_ANSWER_BYTES, "the client read {sent} bytes");
}

/// The headers a request carried, from its recorded head.
fn header(head: &str, name: &str) -> Option<String> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.trim().to_owned())
}

#[cfg(unix)]
#[test]
fn with_a_device_token_the_client_sends_it_and_the_device_id_and_never_the_shared_secret() {
    use std::os::unix::fs::PermissionsExt;
    let brain = Tiny::start(|stream| respond(stream, "200 OK", "", EMPTY_PULL));
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("device-token");
    std::fs::write(&token_file, "tok-ABC123_xyz\n").expect("write");
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let toml = format!(
        "[sync]\nbrain_url = {:?}\ntoken_file = {:?}\n",
        brain.url(),
        token_file.display().to_string()
    );
    let env = |k: &str| (k == "LIB_SYNC_SECRET").then(|| "the-shared-secret".to_owned());
    let config = Config::from_toml_str(
        &toml,
        Some(&dir.path().join("agent.toml")),
        &env,
        &Overrides::default(),
    )
    .expect("config");
    let device = "5f0c2b8e-1d3a-4c7e-9b21-0a6f3c1d2e4a";
    let client = BrainClient::from_config(&brain.url(), &config.sync, device).expect("client");
    assert!(
        !format!("{client:?}{config:?}").contains("tok-ABC123_xyz"),
        "Debug redacts the token"
    );
    client.pull(0, 10, None, None).expect("pull");
    client
        .register_webhook(device, "http://127.0.0.1:9/hook", &"s".repeat(32))
        .ok();

    let heads = brain.heads();
    assert_eq!(heads.len(), 2);
    for head in &heads {
        // Header values keep their case; the recorder lowercased the whole head.
        assert_eq!(
            header(head, "authorization").as_deref(),
            Some("bearer tok-abc123_xyz")
        );
        assert_eq!(header(head, "x-lib-device-id").as_deref(), Some(device));
        assert_eq!(header(head, "x-lib-sync-secret"), None, "{head}");
    }

    // Without a token: the shared secret, as LIB v1.1 sent it, and nothing else.
    let no_token = Config::from_toml_str(
        &format!("[sync]\nbrain_url = {:?}\n", brain.url()),
        None,
        &env,
        &Overrides::default(),
    )
    .expect("config");
    let client = BrainClient::from_config(&brain.url(), &no_token.sync, device).expect("client");
    client.pull(0, 10, None, None).expect("pull");
    let head = brain.heads().pop().expect("a third request");
    assert_eq!(
        header(&head, "x-lib-sync-secret").as_deref(),
        Some("the-shared-secret")
    );
    assert_eq!(header(&head, "authorization"), None);
    assert_eq!(header(&head, "x-lib-device-id"), None);

    // A token file others can read is refused, naming it and its mode; nothing is sent.
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = BrainClient::from_config(&brain.url(), &config.sync, device).expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains(&token_file.display().to_string()) && text.contains("0644"),
        "{text}"
    );
    assert_eq!(brain.heads().len(), 3);
}

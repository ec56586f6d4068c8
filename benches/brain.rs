//! The brain benchmark: the speed targets of issue 3, through HTTP on loopback against the real
//! `agent brain serve` process (release build).
//!
//! | scenario | measured                                                     | target            |
//! |----------|--------------------------------------------------------------|-------------------|
//! | ingest   | 500-event batches (about 300 bytes of payload per event)     | >= 20,000 ev/s on SQLite, >= 10,000 ev/s on PostgreSQL |
//! | pull     | `GET /pull?limit=500` at random cursors over the ingested log | median < 5 ms     |
//!
//! `cargo bench --bench brain` runs SQLite, and PostgreSQL when `LIB_TEST_DATABASE_URL` is set (in
//! a schema of its own, dropped afterwards). Environment:
//! - `BENCH_EVENTS` events to ingest per store (default 100000);
//! - `BENCH_CLIENTS` concurrent ingest connections (default 2);
//! - `BENCH_PULLS` timed pulls (default 300);
//! - `BENCH_ROUNDS` rounds (default 2): each runs the store with the shared secret and with device
//!   tokens (every client device enrolled with `agent brain device add`), in alternating order,
//!   each on a fresh store; the table gives both, and the token/secret ratio of their medians;
//! - `BENCH_STRICT=1` exit non-zero when a target is missed.
//!
//! Request bodies are serialised before the clock starts: the figure is the brain's, not the
//! benchmark client's JSON encoder's.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Instant;

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::json;

use lib_agent::model::{Event, EventType, FilePayload, VectorClock};

const SECRET: &str = "bench-secret";
const BATCH: usize = 500;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How the benchmark's clients authenticate.
#[derive(Clone)]
enum Credential {
    Secret,
    /// A device token and the device id it acts for.
    Token {
        token: String,
        device: String,
    },
}

/// Enrols `device` on the store named by `store_args` and returns its token.
fn enrol(store_args: &[&str], config: &std::path::Path, device: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_agent"))
        .arg("--config")
        .arg(config)
        .args(["--json", "brain", "device", "add", device])
        .args(store_args)
        .env_remove("LIB_BRAIN_DATABASE_URL")
        .output()
        .expect("agent runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    answer["token"].as_str().expect("a token").to_owned()
}

fn start(store_args: &[&str], config: &std::path::Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_agent"))
        .arg("--config")
        .arg(config)
        .args(["brain", "serve", "--listen", "127.0.0.1:0"])
        .args(store_args)
        .env("LIB_SYNC_SECRET", SECRET)
        .env_remove("LIB_BRAIN_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("agent starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .parse()
        .unwrap();
    Server { child, addr }
}

/// One event with about 300 bytes of payload.
fn event(device: &str, n: u64) -> Event {
    let content: String = format!("note {n} of {device}: ")
        .chars()
        .chain(std::iter::repeat('x'))
        .take(160)
        .collect();
    Event {
        event_ulid: ulid::Ulid::new().to_string(),
        device_id: device.to_owned(),
        event_type: EventType::UpsertFile,
        entity_type: "file".into(),
        entity_key: format!("notes/{device}/n{n:07}.md"),
        payload: FilePayload {
            sha256: Some(format!("{:064x}", u128::from(n) * 7919 + 1)),
            bytes: Some(160),
            mtime_unix: Some(1_732_500_000 + n as i64),
            ext: Some("md".into()),
            mime: Some("text/markdown".into()),
            content: Some(content),
        },
        vector_clock: VectorClock::from([(device, n)]),
        created_at: "2026-11-25T10:00:00Z".into(),
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

async fn request(
    client: &HttpClient,
    method: &str,
    url: &str,
    body: Bytes,
    credential: &Credential,
) -> (u16, Bytes) {
    let req = axum::http::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json");
    let req = match credential {
        Credential::Secret => req.header("x-lib-sync-secret", SECRET),
        Credential::Token { token, device } => req
            .header("authorization", format!("Bearer {token}"))
            .header("x-lib-device-id", device),
    };
    let req = req.body(Full::new(body)).unwrap();
    let resp = client.request(req).await.expect("brain answers");
    let status = resp.status().as_u16();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

struct Figures {
    events_per_sec: f64,
    batch_ms_median: f64,
    pull_ms_median: f64,
    pull_ms_p95: f64,
}

/// `credentials[c]` is client `c`'s, acting for device `bench-{c}`.
async fn measure(
    addr: SocketAddr,
    events: usize,
    credentials: &[Credential],
    pulls: usize,
) -> Figures {
    let clients = credentials.len();
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let base = format!("http://{addr}");
    // Bodies first, outside the clock. One device per client, so each has its own clock.
    let per_client = events / clients / BATCH;
    let mut bodies: Vec<Vec<Bytes>> = Vec::new();
    for c in 0..clients {
        let device = format!("bench-{c}");
        bodies.push(
            (0..per_client)
                .map(|b| {
                    let batch: Vec<Event> = (0..BATCH)
                        .map(|i| event(&device, (b * BATCH + i + 1) as u64))
                        .collect();
                    Bytes::from(serde_json::to_vec(&json!({ "batch": batch })).unwrap())
                })
                .collect(),
        );
    }
    let payload_bytes = serde_json::to_vec(&event("bench-0", 1).payload)
        .unwrap()
        .len();
    eprintln!(
        "  {} events in batches of {BATCH}, {payload_bytes} bytes of payload each, {clients} connection(s)",
        per_client * clients * BATCH
    );

    let started = Instant::now();
    let mut tasks = Vec::new();
    for (mine, credential) in bodies.into_iter().zip(credentials.iter().cloned()) {
        let client = client.clone();
        let url = format!("{base}/ingest");
        tasks.push(tokio::spawn(async move {
            let mut times = Vec::new();
            for body in mine {
                let t = Instant::now();
                let (status, reply) = request(&client, "POST", &url, body, &credential).await;
                assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
                times.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            times
        }));
    }
    let mut batch_times = Vec::new();
    for t in tasks {
        batch_times.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total = (per_client * clients * BATCH) as f64;

    let mut pull_times = Vec::new();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..pulls {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let after = seed % (total as u64 - BATCH as u64).max(1);
        let url = format!("{base}/pull?after_id={after}&limit={BATCH}");
        let t = Instant::now();
        let (status, reply) = request(&client, "GET", &url, Bytes::new(), &credentials[0]).await;
        pull_times.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
    }
    Figures {
        events_per_sec: total / elapsed,
        batch_ms_median: percentile(&mut batch_times, 0.5),
        pull_ms_median: percentile(&mut pull_times, 0.5),
        pull_ms_p95: percentile(&mut pull_times, 0.95),
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    percentile(&mut v, 0.5)
}

/// The medians over rounds of each figure.
fn medians(runs: &[Figures]) -> Figures {
    Figures {
        events_per_sec: median(runs.iter().map(|f| f.events_per_sec).collect()),
        batch_ms_median: median(runs.iter().map(|f| f.batch_ms_median).collect()),
        pull_ms_median: median(runs.iter().map(|f| f.pull_ms_median).collect()),
        pull_ms_p95: median(runs.iter().map(|f| f.pull_ms_p95).collect()),
    }
}

/// Runs both credentials `rounds` times on fresh stores made by `fresh` (which returns the
/// store's arguments), reports each and the token/secret ratio.
fn compare(
    runtime: &tokio::runtime::Runtime,
    name: &str,
    config: &std::path::Path,
    mut fresh: impl FnMut(usize) -> Vec<String>,
    (events, clients, pulls, rounds): (usize, usize, usize, usize),
    ingest_target: f64,
) -> bool {
    let mut secret_runs = Vec::new();
    let mut token_runs = Vec::new();
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for with_token in order {
            let args = fresh(round * 2 + usize::from(with_token));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let credentials: Vec<Credential> = (0..clients)
                .map(|c| {
                    let device = format!("bench-{c}");
                    if with_token {
                        Credential::Token {
                            token: enrol(&args, config, &device),
                            device,
                        }
                    } else {
                        Credential::Secret
                    }
                })
                .collect();
            eprintln!(
                "bench brain: {name}, round {}, {}",
                round + 1,
                if with_token {
                    "device tokens"
                } else {
                    "shared secret"
                }
            );
            let server = start(&args, config);
            let figures = runtime.block_on(measure(server.addr, events, &credentials, pulls));
            drop(server);
            if with_token {
                token_runs.push(figures);
            } else {
                secret_runs.push(figures);
            }
        }
    }
    let secret = medians(&secret_runs);
    let token = medians(&token_runs);
    let ok = report(&format!("{name}, shared secret"), &secret, ingest_target);
    let ok = report(&format!("{name}, device tokens"), &token, ingest_target) && ok;
    println!(
        "| {name}, tokens / secret | {:.3} | {:.3} | {:.3} | {:.3} |",
        token.events_per_sec / secret.events_per_sec,
        token.batch_ms_median / secret.batch_ms_median,
        token.pull_ms_median / secret.pull_ms_median,
        token.pull_ms_p95 / secret.pull_ms_p95,
    );
    ok
}

fn report(name: &str, f: &Figures, ingest_target: f64) -> bool {
    let ingest_ok = f.events_per_sec >= ingest_target;
    let pull_ok = f.pull_ms_median < 5.0;
    println!(
        "| {name} | {:.0} ev/s (target >= {ingest_target:.0}) {} | {:.1} ms | {:.2} ms (target < 5) {} | {:.2} ms |",
        f.events_per_sec,
        if ingest_ok { "ok" } else { "MISSED" },
        f.batch_ms_median,
        f.pull_ms_median,
        if pull_ok { "ok" } else { "MISSED" },
        f.pull_ms_p95,
    );
    ingest_ok && pull_ok
}

fn main() -> ExitCode {
    let events = env_usize("BENCH_EVENTS", 100_000);
    let clients = env_usize("BENCH_CLIENTS", 2).max(1);
    let pulls = env_usize("BENCH_PULLS", 300).max(1);
    let rounds = env_usize("BENCH_ROUNDS", 2).max(1);
    let shape = (events, clients, pulls, rounds);
    let strict = std::env::var("BENCH_STRICT").is_ok_and(|v| v == "1");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("agent.toml");
    std::fs::write(&config, "").unwrap();

    println!("| store | ingest | ingest, one batch (median) | pull of 500 (median) | pull p95 |");
    println!("|---|---|---|---|---|");
    let mut all_ok = true;

    let sqlite = |run: usize| {
        let db = home.path().join(format!("brain-{run}.db"));
        vec!["--db".to_owned(), db.to_string_lossy().into_owned()]
    };
    all_ok &= compare(&runtime, "SQLite", &config, sqlite, shape, 20_000.0);

    if let Ok(url) = std::env::var("LIB_TEST_DATABASE_URL") {
        let mut schemas = Vec::new();
        let postgres = |run: usize| {
            let schema = format!("lib_shared_bench{}_{run}", std::process::id());
            schemas.push(schema.clone());
            vec![
                "--database-url".to_owned(),
                url.clone(),
                "--schema".to_owned(),
                schema,
            ]
        };
        all_ok &= compare(&runtime, "PostgreSQL", &config, postgres, shape, 10_000.0);
        runtime.block_on(async {
            if let Ok((c, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                tokio::spawn(conn);
                for schema in &schemas {
                    let _ = c
                        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                        .await;
                }
            }
        });
    } else {
        eprintln!("bench brain: LIB_TEST_DATABASE_URL unset: PostgreSQL not measured");
    }
    if strict && !all_ok {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

//! Bounded connections (DESIGN.md "Trust", connections) through real TCP on loopback: header,
//! body and idle timeouts, the connection cap, the checks of `--insecure-no-auth`, and the peer
//! address every request carries. The brain runs in-process on SQLite with small limits; every
//! wait has a generous upper bound and nothing asserts how long anything took.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::brain::*;
use lib_agent::brain::server::ServerConfig;
use lib_agent::http_server::{self as http, ConnLimits};

/// The longest any single step may take before the test fails (never an assertion on timing).
const BOUND: Duration = Duration::from_secs(20);

/// Small timeouts: 300 ms for headers, bodies and idle connections.
fn tight() -> ConnLimits {
    ConnLimits {
        header_timeout: Duration::from_millis(300),
        body_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(300),
        max_connections: 64,
        shutdown_timeout: Duration::from_secs(5),
    }
}

/// Timeouts no step of a test comes near.
fn loose() -> ConnLimits {
    ConnLimits {
        header_timeout: BOUND * 3,
        body_timeout: BOUND * 3,
        idle_timeout: BOUND * 3,
        ..tight()
    }
}

async fn brain(connections: ConnLimits) -> (Brain, Fixture) {
    brain_with(ServerConfig {
        connections,
        ..config()
    })
    .await
}

async fn brain_with(config: ServerConfig) -> (Brain, Fixture) {
    let fixture = Fixture::sqlite().await;
    let brain = Brain::start(fixture.store.clone(), config).await;
    (brain, fixture)
}

/// A raw HTTP/1.1 client connection.
struct Raw {
    stream: TcpStream,
    read: Vec<u8>,
}

struct RawReply {
    status: u16,
    head: String,
    body: Value,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        let stream = tokio::time::timeout(BOUND, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect to the brain");
        Raw {
            stream,
            read: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &str) {
        self.stream
            .write_all(bytes.as_bytes())
            .await
            .expect("write to the brain");
    }

    /// Sends a request and reads its answer.
    async fn exchange(&mut self, request: &str) -> RawReply {
        self.send(request).await;
        self.reply()
            .await
            .expect("an answer before the connection closed")
    }

    /// The next response; `None` when the connection closes first.
    async fn reply(&mut self) -> Option<RawReply> {
        tokio::time::timeout(BOUND, async {
            loop {
                if let Some(end) = find(&self.read, b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&self.read[..end]).into_owned();
                    let length = head
                        .lines()
                        .filter_map(|l| l.split_once(':'))
                        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
                        .map(|(_, v)| v.trim().parse::<usize>().expect("a content-length"))
                        .unwrap_or(0);
                    if self.read.len() >= end + 4 + length {
                        let body: Vec<u8> =
                            self.read.drain(..end + 4 + length).skip(end + 4).collect();
                        let status = head
                            .split(' ')
                            .nth(1)
                            .and_then(|s| s.parse().ok())
                            .expect("a status line");
                        let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        return Some(RawReply { status, head, body });
                    }
                }
                let mut chunk = [0u8; 4096];
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.read.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
        .expect("no answer and no close within the bound")
    }

    /// Waits for the server to close the connection (EOF or reset); false if it stays open for
    /// the whole bound. Whatever arrives before the close is kept in `read`.
    async fn closed(&mut self) -> bool {
        tokio::time::timeout(BOUND, async {
            let mut chunk = [0u8; 4096];
            loop {
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => self.read.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
        .is_ok()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn get_request(path: &str, host: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nx-lib-sync-secret: {SECRET}\r\n\r\n")
}

#[tokio::test]
async fn a_client_that_stops_halfway_through_its_headers_is_disconnected() {
    let (brain, _f) = brain(ConnLimits {
        idle_timeout: BOUND * 3,
        ..tight()
    })
    .await;
    let mut raw = Raw::connect(brain.addr).await;
    raw.send("GET /health HTTP/1.1\r\nhost: localhost\r\nx-lib-")
        .await;
    assert!(
        raw.closed().await,
        "the half-sent request kept its connection"
    );
    assert!(raw.read.is_empty(), "nothing is answered to half a request");
}

#[tokio::test]
async fn a_kept_alive_connection_waits_idle_then_gives_the_next_request_the_header_timeout() {
    // The header timeout is short and the idle one long: a pause between two requests is idle
    // time, not header time; a stall inside the next request's headers is header time.
    let (brain, _f) = brain(ConnLimits {
        idle_timeout: BOUND * 3,
        ..tight()
    })
    .await;
    let host = brain.addr.to_string();
    let mut raw = Raw::connect(brain.addr).await;
    assert_eq!(
        raw.exchange(&get_request("/health", &host)).await.status,
        200
    );
    // A pause of twice the header timeout: the client is slow to ask again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        raw.exchange(&get_request("/health", &host)).await.status,
        200,
        "the pause between requests counted as header time"
    );
    raw.send("GET /health HTTP/1.1\r\nhost: ").await;
    assert!(
        raw.closed().await,
        "a stalled head on a kept-alive connection stayed open"
    );
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed() {
    let (brain, _f) = brain(tight()).await;
    let mut raw = Raw::connect(brain.addr).await;
    let reply = raw
        .exchange(&get_request("/health", &brain.addr.to_string()))
        .await;
    assert_eq!(reply.status, 200);
    assert!(
        !reply
            .head
            .to_ascii_lowercase()
            .contains("connection: close"),
        "the connection is kept alive after its request: {}",
        reply.head
    );
    assert!(raw.closed().await, "the idle connection stayed open");
    assert!(raw.read.is_empty(), "an idle close sends nothing");
}

#[tokio::test]
async fn a_long_poll_longer_than_the_idle_timeout_still_answers() {
    let (brain, _f) = brain(tight()).await;
    let mut raw = Raw::connect(brain.addr).await;
    // Four times the idle timeout, on an empty log: the answer comes when the wait ends.
    let reply = raw
        .exchange(&get_request(
            "/pull?after_id=0&wait_ms=1200",
            &brain.addr.to_string(),
        ))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["events"], json!([]));
}

#[tokio::test]
async fn a_long_poll_is_woken_by_an_event_after_the_idle_timeout() {
    let (brain, _f) = brain(tight()).await;
    let addr = brain.addr;
    let poll = tokio::spawn(async move {
        let mut raw = Raw::connect(addr).await;
        raw.exchange(&get_request(
            "/pull?after_id=0&wait_ms=15000",
            &addr.to_string(),
        ))
        .await
    });
    // Past the idle timeout before the event exists.
    tokio::time::sleep(Duration::from_millis(900)).await;
    brain
        .ingest_ok(&[upsert("dev-a", "docs/a.txt", &[("dev-a", 1)], 'a')])
        .await;
    let reply = tokio::time::timeout(BOUND, poll)
        .await
        .expect("the long-poll answered")
        .expect("the polling task");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["events"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn a_body_that_does_not_arrive_gets_408_and_the_connection_closes() {
    let (brain, _f) = brain(ConnLimits {
        header_timeout: BOUND * 3,
        idle_timeout: BOUND * 3,
        ..tight()
    })
    .await;
    let mut raw = Raw::connect(brain.addr).await;
    raw.send(&format!(
        "POST /ingest HTTP/1.1\r\nhost: {}\r\nx-lib-sync-secret: {SECRET}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"batch\"",
        brain.addr
    ))
    .await;
    let reply = raw.reply().await.expect("an answer");
    assert_eq!(reply.status, 408, "{}", reply.body);
    assert_eq!(reply.body["ok"], false);
    assert!(
        raw.closed().await,
        "the connection stayed open after the 408"
    );
}

#[tokio::test]
async fn a_body_is_not_waited_for_before_its_credential_checks_out() {
    // The body would time out, but the wrong secret is refused first, without reading it.
    let (brain, _f) = brain(ConnLimits {
        header_timeout: BOUND * 3,
        idle_timeout: BOUND * 3,
        ..tight()
    })
    .await;
    let mut raw = Raw::connect(brain.addr).await;
    raw.send(&format!(
        "POST /ingest HTTP/1.1\r\nhost: {}\r\nx-lib-sync-secret: wrong\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n",
        brain.addr
    ))
    .await;
    let reply = raw.reply().await.expect("an answer");
    assert_eq!(reply.status, 401, "{}", reply.body);
}

#[tokio::test]
async fn a_body_that_arrives_in_time_is_served() {
    let (brain, _f) = brain(ConnLimits {
        body_timeout: BOUND * 3,
        ..tight()
    })
    .await;
    let body = serde_json::to_string(&json!({
        "batch": [upsert("dev-a", "docs/a.txt", &[("dev-a", 1)], 'a')]
    }))
    .unwrap();
    let (first, rest) = body.split_at(body.len() / 2);
    let mut raw = Raw::connect(brain.addr).await;
    raw.send(&format!(
        "POST /ingest HTTP/1.1\r\nhost: {}\r\nx-lib-sync-secret: {SECRET}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{first}",
        brain.addr,
        body.len()
    ))
    .await;
    raw.send(rest).await;
    let reply = raw.reply().await.expect("an answer");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["result"]["inserted_events"], 1);
}

#[tokio::test]
async fn beyond_max_connections_the_next_gets_503_at_once_until_one_closes() {
    let (brain, _f) = brain(ConnLimits {
        max_connections: 3,
        ..loose()
    })
    .await;
    let host = brain.addr.to_string();
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut raw = Raw::connect(brain.addr).await;
        assert_eq!(
            raw.exchange(&get_request("/health", &host)).await.status,
            200
        );
        open.push(raw);
    }
    // Three idle connections hold every slot.
    let mut over = Raw::connect(brain.addr).await;
    let reply = over.exchange(&get_request("/health", &host)).await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(reply.body["ok"], false);
    assert!(reply.body["error"].as_str().is_some_and(|e| !e.is_empty()));
    assert!(over.closed().await, "the refused connection stayed open");
    // The held connections are still served.
    assert_eq!(
        open[0]
            .exchange(&get_request("/health", &host))
            .await
            .status,
        200
    );

    drop(open.pop());
    // The brain frees the slot when it sees the close; until then a new connection is refused.
    let served = tokio::time::timeout(BOUND, async {
        loop {
            let mut raw = Raw::connect(brain.addr).await;
            raw.send(&get_request("/health", &host)).await;
            match raw.reply().await.map(|r| r.status) {
                Some(200) => return,
                Some(503) | None => tokio::time::sleep(Duration::from_millis(20)).await,
                Some(other) => panic!("unexpected status {other}"),
            }
        }
    })
    .await;
    assert!(served.is_ok(), "a freed slot never served a new connection");
}

fn insecure() -> ServerConfig {
    ServerConfig {
        secret: None,
        insecure_no_auth: true,
        connections: loose(),
        ..ServerConfig::default()
    }
}

fn request(method: &str, path: &str, host: &str, content_type: Option<&str>, body: &str) -> String {
    let content_type = content_type
        .map(|c| format!("content-type: {c}\r\n"))
        .unwrap_or_default();
    format!(
        "{method} {path} HTTP/1.1\r\nhost: {host}\r\n{content_type}content-length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn without_authentication_a_post_must_be_json() {
    let (brain, _f) = brain_with(insecure()).await;
    let host = brain.addr.to_string();
    let batch = serde_json::to_string(&json!({
        "batch": [upsert("dev-a", "docs/a.txt", &[("dev-a", 1)], 'a')]
    }))
    .unwrap();
    for content_type in [
        Some("text/plain"),
        None,
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut raw = Raw::connect(brain.addr).await;
        let reply = raw
            .exchange(&request("POST", "/ingest", &host, content_type, &batch))
            .await;
        assert_eq!(reply.status, 415, "{content_type:?}: {}", reply.body);
        assert_eq!(reply.body["ok"], false);
    }
    let mut raw = Raw::connect(brain.addr).await;
    let reply = raw
        .exchange(&request(
            "POST",
            "/ingest",
            &host,
            Some("application/json; charset=utf-8"),
            &batch,
        ))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let mut raw = Raw::connect(brain.addr).await;
    let pulled = raw
        .exchange(&request("GET", "/pull?after_id=0", &host, None, ""))
        .await;
    assert_eq!(
        pulled.body["events"].as_array().map(Vec::len),
        Some(1),
        "only the JSON POST was stored: {}",
        pulled.body
    );
}

#[tokio::test]
async fn without_authentication_the_host_must_name_this_brain() {
    let (brain, _f) = brain_with(insecure()).await;
    let port = brain.addr.port();
    for host in [
        format!("evil.example:{port}"),
        format!("localhost.evil.example:{port}"),
        format!("localhost:{}", port.wrapping_add(1)),
    ] {
        let mut raw = Raw::connect(brain.addr).await;
        let reply = raw
            .exchange(&request("GET", "/pull?after_id=0", &host, None, ""))
            .await;
        assert_eq!(reply.status, 403, "{host}: {}", reply.body);
        assert_eq!(reply.body["ok"], false);
    }
    let mut raw = Raw::connect(brain.addr).await;
    let reply = raw.exchange("GET /pull?after_id=0 HTTP/1.0\r\n\r\n").await;
    assert_eq!(reply.status, 403, "no Host: {}", reply.body);
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        let mut raw = Raw::connect(brain.addr).await;
        let reply = raw
            .exchange(&request("GET", "/pull?after_id=0", &host, None, ""))
            .await;
        assert_eq!(reply.status, 200, "{host}: {}", reply.body);
    }
}

#[tokio::test]
async fn with_authentication_neither_host_nor_content_type_is_checked() {
    let (brain, _f) = brain(loose()).await;
    let mut raw = Raw::connect(brain.addr).await;
    let reply = raw
        .exchange(&get_request("/pull?after_id=0", "brain.example.org"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[tokio::test]
async fn every_request_carries_the_peer_address() {
    let router = Router::new().route(
        "/peer",
        get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { format!("\"{peer}\"") }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(http::serve(listener, router, loose(), async move {
        let _ = stopped.await;
    }));
    let mut raw = Raw::connect(addr).await;
    let me = raw.stream.local_addr().unwrap();
    for _ in 0..2 {
        let reply = raw.exchange(&get_request("/peer", &addr.to_string())).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, json!(me.to_string()));
    }
    // Shutdown closes the idle connection and ends the loop.
    let _ = stop.send(());
    assert!(raw.closed().await, "shutdown left the idle connection open");
    tokio::time::timeout(BOUND, served)
        .await
        .expect("serve returned after shutdown")
        .expect("the serving task")
        .expect("serve ended cleanly");
}

#[test]
fn the_cli_refuses_insecure_no_auth_on_a_non_loopback_address() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("agent.toml"), "").unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_agent"));
    command
        .arg("--config")
        .arg(dir.path().join("agent.toml"))
        .args([
            "brain",
            "serve",
            "--insecure-no-auth",
            "--listen",
            "0.0.0.0:0",
            "--db",
        ])
        .arg(dir.path().join("brain.db"))
        .stdin(Stdio::null());
    for var in [
        "LIB_SYNC_SECRET",
        "LIB_BRAIN_DATABASE_URL",
        "LIB_SQLITE_PATH",
        "LIB_LOG",
        "RUST_LOG",
    ] {
        command.env_remove(var);
    }
    let out = run_bounded(&mut command);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it served: {stderr}");
    assert!(
        stderr.contains("--insecure-no-auth") && stderr.contains("loopback"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}

//! Sync inside `agent run`: two running agents and a real brain on loopback. A change on one
//! reaches the other by long-poll, or by a signed webhook, with no manual sync; a webhook with a
//! bad signature or an old timestamp wakes nothing. A webhook device started while the brain is
//! down long-polls until it can register; a burst of changes is pushed in a few requests; with
//! no real-time wake-up the periodic full sync still brings changes; and an unreachable brain is
//! retried with backoff, never in a loop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use lib_agent::brain::webhooks;
use lib_agent::config::{Config, Overrides, WebhookAuth};
use lib_agent::daemon::{self, RunOptions};
use lib_agent::store::Store;
use rusqlite::{Connection, OptionalExtension};
use serde_json::Value;

use crate::support;
use crate::support::brain::SECRET;
use crate::support::brain_blocking::BlockingBrain;
use crate::support::net::reserved_port;
use crate::support::wait::{wait_until, PATIENCE};

/// `agent run` (the library's `daemon::run`) on a thread of this test, with its own store and
/// library folder; stopped and joined when dropped.
pub(crate) struct Agent {
    pub(crate) dir: tempfile::TempDir,
    stop: Option<crossbeam_channel::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl Agent {
    pub(crate) fn start(brain: &BlockingBrain, sync: &str, env: &[(&str, &str)]) -> Agent {
        Agent::start_at(&brain.addr.to_string(), sync, env)
    }

    /// An agent whose brain is at `addr`, up or not.
    pub(crate) fn start_at(addr: &str, sync: &str, env: &[(&str, &str)]) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("notes")).expect("mkdir");
        let toml = format!(
            "[store]\npath = {:?}\n[[library]]\nname = \"notes\"\npath = {:?}\n[sync]\nbrain_url = \"http://{addr}\"\n{sync}\n",
            dir.path().join("agent.db"),
            dir.path().join("notes"),
        );
        // The same settings for `agent status`, which runs as its own process.
        std::fs::write(dir.path().join("agent.toml"), &toml).expect("write config");
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let lookup = move |key: &str| {
            if key == "LIB_SYNC_SECRET" {
                return Some(SECRET.to_owned());
            }
            env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
        };
        let config =
            Config::from_toml_str(&toml, None, &lookup, &Overrides::default()).expect("config");
        let (tx, rx) = crossbeam_channel::bounded(1);
        let handle = std::thread::spawn(move || {
            let mut store = Store::open(&config.store.path).expect("store");
            daemon::run(&config, &mut store, &rx, &RunOptions::default()).expect("agent ran");
        });
        let agent = Agent {
            dir,
            stop: Some(tx),
            handle: Some(handle),
        };
        agent.wait_until("running", |db| {
            db.query_row(
                "SELECT v FROM lib_kv WHERE k = 'agent_run_state'",
                [],
                |r| r.get::<_, String>(0),
            )
            .is_ok_and(|v| v.contains("\"state\":\"running\""))
        });
        agent
    }

    pub(crate) fn wait_until(&self, what: &str, done: impl Fn(&Connection) -> bool) -> Duration {
        let db = self.dir.path().join("agent.db");
        wait_until(what, PATIENCE, || {
            Connection::open(&db).is_ok_and(|db| done(&db))
        })
    }

    pub(crate) fn write(&self, rel: &str, text: &str) {
        std::fs::write(self.dir.path().join("notes").join(rel), text).expect("write");
    }

    /// `agent [--json] status`, run by the real binary beside the running agent.
    pub(crate) fn status(&self, json: bool) -> String {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_agent"));
        for var in [
            "LIB_AGENT_CONFIG",
            "LIB_SQLITE_PATH",
            "LIB_BRAIN_URL",
            "LIB_SUPABASE_FN_URL",
            "LIB_SYNC_SECRET",
            "LIB_WEBHOOK_SECRET",
            "LIB_LOG",
            "RUST_LOG",
        ] {
            cmd.env_remove(var);
        }
        let dir: PathBuf = self.dir.path().to_owned();
        cmd.arg("--config")
            .arg(dir.join("agent.toml"))
            .arg("--db")
            .arg(dir.join("agent.db"));
        if json {
            cmd.arg("--json");
        }
        let out = cmd.arg("status").output().expect("run agent status");
        assert!(
            out.status.success(),
            "agent status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The `brain` line of the text status.
    fn status_brain_line(&self) -> String {
        let text = self.status(false);
        text.lines()
            .find(|l| l.starts_with("brain"))
            .unwrap_or_else(|| panic!("no brain line in {text}"))
            .to_owned()
    }

    /// The sync state the agent saved for `agent status`.
    pub(crate) fn sync_state(db: &Connection) -> Option<Value> {
        db.query_row("SELECT v FROM lib_kv WHERE k = 'sync_state'", [], |r| {
            r.get::<_, String>(0)
        })
        .optional()
        .ok()
        .flatten()
        .and_then(|v| serde_json::from_str(&v).ok())
    }

    pub(crate) fn has(db: &Connection, key: &str) -> bool {
        db.query_row(
            "SELECT count(*) FROM lib_files WHERE path = ?1 AND deleted_at IS NULL",
            [key],
            |r| r.get::<_, i64>(0),
        )
        .is_ok_and(|n| n == 1)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[test]
fn a_change_reaches_the_other_running_agent_by_long_poll() {
    let dir = tempfile::tempdir().expect("tempdir");
    let brain = BlockingBrain::start(dir.path());
    let a = Agent::start(&brain, "realtime = \"longpoll\"\ninterval_secs = 3600", &[]);
    let b = Agent::start(&brain, "realtime = \"longpoll\"\ninterval_secs = 3600", &[]);
    a.write("hello.md", "from A, live");
    // The periodic sync is an hour away: only the long-poll brings the file within PATIENCE.
    b.wait_until("B has A's file", |db| Agent::has(db, "notes/hello.md"));
    // And back: B's edit, made after seeing A's, reaches A.
    std::fs::create_dir_all(b.dir.path().join("notes")).expect("dir");
    b.write("reply.md", "from B");
    a.wait_until("A has B's file", |db| Agent::has(db, "notes/reply.md"));
}

#[test]
fn a_change_reaches_the_other_running_agent_by_webhook() {
    let dir = tempfile::tempdir().expect("tempdir");
    let brain = BlockingBrain::start(dir.path());
    let port = reserved_port();
    let webhook = format!(
        "realtime = \"webhook\"\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}/webhook\"\ninterval_secs = 3600"
    );
    let b = Agent::start(
        &brain,
        &webhook,
        &[("LIB_WEBHOOK_SECRET", "hook-secret-0123456")],
    );
    let a = Agent::start(&brain, "realtime = \"off\"", &[]);
    a.write("pushed.md", "woken by a webhook");
    b.wait_until("B has A's file", |db| Agent::has(db, "notes/pushed.md"));
}

fn post(addr: SocketAddr, signature: Option<String>, body: &str) -> u16 {
    let sig = signature
        .map(|s| format!("x-lib-signature: {s}\r\n"))
        .unwrap_or_default();
    request(addr, "POST /webhook", &sig, body).0
}

/// One HTTP/1.1 request with `headers` (each ending in CRLF): the status and the body.
fn request(addr: SocketAddr, line: &str, headers: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "{line} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("read");
    let status = reply
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let body = reply
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

fn listener(auth: WebhookAuth) -> (SocketAddr, crossbeam_channel::Receiver<()>, impl Drop) {
    let (wake_tx, wake_rx) = crossbeam_channel::bounded(1);
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
    let port = reserved_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    lib_agent::sync::listener::spawn(addr, "hook-secret-0123456".into(), auth, wake_tx, stop_rx)
        .expect("listener");
    (addr, wake_rx, StopOnDrop(stop_tx))
}

struct StopOnDrop(crossbeam_channel::Sender<()>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.try_send(());
    }
}

const NOTIFICATION: &str =
    r#"{"event":"new_events","after_id":7,"timestamp":"2026-11-25T10:00:00Z"}"#;

#[test]
fn lib_v1_1s_x_webhook_secret_is_refused_unless_webhook_auth_is_shared_secret() {
    let (addr, wake, _stop) = listener(WebhookAuth::Signature);
    let header = "x-webhook-secret: hook-secret-0123456\r\n";
    assert_eq!(request(addr, "POST /webhook", header, NOTIFICATION).0, 401);
    assert!(wake.try_recv().is_err(), "nothing woke the puller");

    let (addr, wake, _stop) = listener(WebhookAuth::SharedSecret);
    let wrong = "x-webhook-secret: hook-secret-9999999\r\n";
    assert_eq!(request(addr, "POST /webhook", wrong, NOTIFICATION).0, 401);
    assert!(wake.try_recv().is_err(), "a wrong secret wakes nothing");
    assert_eq!(request(addr, "POST /webhook", header, NOTIFICATION).0, 200);
    assert!(wake.try_recv().is_ok(), "LIB v1.1's header woke the puller");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let signed = webhooks::sign("hook-secret-0123456", now, NOTIFICATION.as_bytes());
    assert_eq!(
        post(addr, Some(signed), NOTIFICATION),
        200,
        "a signature still works"
    );
}

#[test]
fn the_listener_answers_health_as_lib_v1_1s_did() {
    let (addr, _wake, _stop) = listener(WebhookAuth::Signature);
    let (status, body) = request(addr, "GET /health", "", "");
    assert_eq!(status, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["service"], "lib-webhook-listener");
    assert!(health["version"].is_string(), "{health}");
}

#[test]
fn the_listener_rejects_a_bad_signature_or_an_old_timestamp_and_wakes_nothing() {
    let (wake_tx, wake_rx) = crossbeam_channel::bounded(1);
    let (_stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
    let port = reserved_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let _thread = lib_agent::sync::listener::spawn(
        addr,
        "hook-secret-0123456".into(),
        WebhookAuth::Signature,
        wake_tx,
        stop_rx,
    )
    .expect("listener");
    let body = r#"{"event":"new_events","after_id":7,"timestamp":"2026-11-25T10:00:00Z"}"#;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;

    assert_eq!(post(addr, None, body), 401, "no signature");
    assert_eq!(
        post(
            addr,
            Some(webhooks::sign("wrong-secret", now, body.as_bytes())),
            body
        ),
        401,
        "other secret"
    );
    assert_eq!(
        post(
            addr,
            Some(webhooks::sign(
                "hook-secret-0123456",
                now - 600,
                body.as_bytes()
            )),
            body
        ),
        401,
        "ten minutes old"
    );
    let tampered = body.replace('7', "8");
    assert_eq!(
        post(
            addr,
            Some(webhooks::sign("hook-secret-0123456", now, body.as_bytes())),
            &tampered
        ),
        401,
        "body changed"
    );
    assert!(wake_rx.try_recv().is_err(), "nothing woke the puller");

    assert_eq!(
        post(
            addr,
            Some(webhooks::sign("hook-secret-0123456", now, body.as_bytes())),
            body
        ),
        200
    );
    assert!(
        wake_rx.try_recv().is_ok(),
        "a valid notification wakes the puller"
    );
}

#[test]
fn a_webhook_device_started_while_the_brain_is_down_long_polls_then_registers_once_it_is_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let brain_addr = format!("127.0.0.1:{}", reserved_port());
    let port = reserved_port();
    let webhook = format!(
        "realtime = \"webhook\"\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}/webhook\"\ninterval_secs = 3600"
    );
    let b = Agent::start_at(
        &brain_addr,
        &webhook,
        &[("LIB_WEBHOOK_SECRET", "hook-secret-0123456")],
    );
    b.wait_until("B found the brain down", |db| {
        Agent::sync_state(db).is_some_and(|s| s["reachable"] == false)
    });
    let line = b.status_brain_line();
    assert!(
        line.contains("UNREACHABLE") && line.contains("realtime longpoll (configured: webhook)"),
        "until the brain has its webhook, B long-polls, and says so: {line}"
    );

    let brain = BlockingBrain::start_with(dir.path(), &brain_addr, support::brain::config());
    let a = Agent::start(&brain, "realtime = \"off\"", &[]);
    a.write("early.md", "written as the brain came up");
    // B's periodic sync is an hour away: only its long-poll brings the file within PATIENCE.
    b.wait_until("B has the early file", |db| {
        Agent::has(db, "notes/early.md")
    });

    b.wait_until("B registered its webhook", |db| {
        Agent::sync_state(db).is_some_and(|s| s["realtime"] == "webhook")
    });
    let registered: i64 = Connection::open(dir.path().join("brain.db"))
        .expect("brain db")
        .query_row(
            "SELECT count(*) FROM device_webhooks WHERE webhook_url = ?1 AND active = 1",
            [format!("http://127.0.0.1:{port}/webhook")],
            |r| r.get(0),
        )
        .expect("webhooks");
    assert_eq!(registered, 1, "the brain holds B's webhook");
    let line = b.status_brain_line();
    assert!(
        line.contains("(reachable)") && line.contains("realtime webhook,"),
        "{line}"
    );
    let status: Value = serde_json::from_str(&b.status(true)).expect("status --json");
    assert_eq!(status["sync"]["realtime"], "webhook");
    assert_eq!(status["sync"]["realtime_in_effect"], "webhook");

    // From now on a webhook wakes B.
    let delivered = brain.metric("lib_brain_webhook_deliveries_total");
    a.write("late.md", "after the registration");
    b.wait_until("B has the late file", |db| Agent::has(db, "notes/late.md"));
    assert!(
        brain.metric("lib_brain_webhook_deliveries_total") > delivered,
        "the brain notified B's listener"
    );
}

#[test]
fn a_burst_of_50_files_written_to_a_running_agent_is_pushed_in_a_few_requests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let brain = BlockingBrain::start(dir.path());
    let a = Agent::start(&brain, "realtime = \"off\"\ninterval_secs = 3600", &[]);
    assert_eq!(brain.metric("lib_brain_ingest_requests_total"), 0);
    // One file every 20 ms: each is indexed and committed on its own (the watcher's settle
    // window is per path), and each commit asks for a push.
    for i in 0..50 {
        a.write(&format!("burst-{i:02}.md"), &format!("file {i} of a burst"));
        std::thread::sleep(Duration::from_millis(20));
    }
    brain.wait_for_events(50);
    let requests = brain.metric("lib_brain_ingest_requests_total");
    // The pusher waits until the changes pause for push_debounce_ms (at most 2 s after the
    // first): one request per commit would be dozens.
    assert!(
        (1..=3).contains(&requests),
        "50 files in {requests} ingest requests"
    );
    assert_eq!(brain.metric("lib_brain_events_ingested_total"), 50);
}

#[test]
fn with_realtime_off_the_periodic_full_sync_still_brings_the_other_devices_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let brain = BlockingBrain::start(dir.path());
    let b = Agent::start(&brain, "realtime = \"off\"\ninterval_secs = 1", &[]);
    let a = Agent::start(&brain, "realtime = \"off\"", &[]);
    a.write("periodic.md", "no wake-up, only the interval");
    b.wait_until("B has A's file", |db| Agent::has(db, "notes/periodic.md"));
    b.wait_until("B recorded its periodic pull", |db| {
        Agent::sync_state(db)
            .is_some_and(|s| s["last_pull_at"].is_string() && s["realtime"] == "off")
    });
}

#[test]
fn a_long_poll_agent_whose_brain_is_down_retries_with_backoff_not_in_a_loop() {
    // A "brain" that hangs up on every connection: each attempt of the agent is one connection,
    // and when it came is recorded as it is accepted.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let attempts: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let counted = Arc::clone(&attempts);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            counted.lock().expect("attempts").push(Instant::now());
            drop(stream);
        }
    });
    let a = Agent::start_at(&addr.to_string(), "realtime = \"longpoll\"", &[]);
    a.wait_until("A found the brain failing", |db| {
        Agent::sync_state(db).is_some_and(|s| s["reachable"] == false)
    });
    // The pusher and the puller each wait 1 s (±20 %), then 2 s, 4 s... between attempts, so
    // their first 5 connections are spread over seconds; a retry loop makes them within
    // milliseconds. A slow machine only spreads them further: this bound cannot fail by slowness.
    const SEEN: usize = 5;
    wait_until(&format!("{SEEN} attempts"), PATIENCE, || {
        attempts.lock().expect("attempts").len() >= SEEN
    });
    let times = attempts.lock().expect("attempts").clone();
    let span = times[SEEN - 1] - times[0];
    assert!(
        span >= Duration::from_millis(1500),
        "{SEEN} connections within {span:?}: {:?}",
        times.iter().map(|t| *t - times[0]).collect::<Vec<_>>()
    );
}

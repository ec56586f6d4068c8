//! Sync inside `agent run`: two running agents and a real brain on loopback. A change on one
//! reaches the other by long-poll, or by a signed webhook, with no manual sync; a webhook with a
//! bad signature or an old timestamp wakes nothing.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use lib_agent::brain::server::{serve, ServerConfig};
use lib_agent::brain::store::sqlite::SqliteStore;
use lib_agent::brain::webhooks;
use lib_agent::config::{Config, Overrides};
use lib_agent::daemon::{self, RunOptions};
use lib_agent::store::Store;
use rusqlite::Connection;

const SECRET: &str = "run-secret";

struct Brain {
    addr: SocketAddr,
    _runtime: tokio::runtime::Runtime,
}

fn brain(dir: &Path) -> Brain {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let store = Arc::new(SqliteStore::open(&dir.join("brain.db")).expect("brain"));
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = ServerConfig {
        secret: Some(SECRET.into()),
        ..ServerConfig::default()
    };
    runtime.spawn(serve(listener, store, config, std::future::pending()));
    Brain {
        addr,
        _runtime: runtime,
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

struct Agent {
    dir: tempfile::TempDir,
    stop: Option<crossbeam_channel::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl Agent {
    fn start(brain: &Brain, sync: &str, env: &[(&str, &str)]) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("notes")).expect("mkdir");
        let toml = format!(
            "[store]\npath = {:?}\n[[library]]\nname = \"notes\"\npath = {:?}\n[sync]\nbrain_url = \"http://{}\"\n{sync}\n",
            dir.path().join("agent.db"),
            dir.path().join("notes"),
            brain.addr
        );
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

    fn wait_until(&self, what: &str, done: impl Fn(&Connection) -> bool) -> Duration {
        let start = Instant::now();
        loop {
            if let Ok(db) = Connection::open(self.dir.path().join("agent.db")) {
                if done(&db) {
                    return start.elapsed();
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "timed out waiting for: {what}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn write(&self, rel: &str, text: &str) {
        std::fs::write(self.dir.path().join("notes").join(rel), text).expect("write");
    }

    fn has(db: &Connection, key: &str) -> bool {
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
    let brain = brain(dir.path());
    let a = Agent::start(&brain, "realtime = \"longpoll\"", &[]);
    let b = Agent::start(&brain, "realtime = \"longpoll\"", &[]);
    a.write("hello.md", "from A, live");
    let took = b.wait_until("B has A's file", |db| Agent::has(db, "notes/hello.md"));
    assert!(took < Duration::from_secs(10), "took {took:?}");
    // And back: B's edit, made after seeing A's, reaches A.
    std::fs::create_dir_all(b.dir.path().join("notes")).expect("dir");
    b.write("reply.md", "from B");
    a.wait_until("A has B's file", |db| Agent::has(db, "notes/reply.md"));
}

#[test]
fn a_change_reaches_the_other_running_agent_by_webhook() {
    let dir = tempfile::tempdir().expect("tempdir");
    let brain = brain(dir.path());
    let port = free_port();
    let webhook = format!(
        "realtime = \"webhook\"\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}/webhook\"\ninterval_secs = 3600"
    );
    let b = Agent::start(&brain, &webhook, &[("LIB_WEBHOOK_SECRET", "hook-secret")]);
    let a = Agent::start(&brain, "realtime = \"off\"", &[]);
    a.write("pushed.md", "woken by a webhook");
    b.wait_until("B has A's file", |db| Agent::has(db, "notes/pushed.md"));
}

fn post(addr: SocketAddr, signature: Option<String>, body: &str) -> u16 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    let sig = signature
        .map(|s| format!("x-lib-signature: {s}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "POST /webhook HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{sig}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("read");
    reply
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code")
}

#[test]
fn the_listener_rejects_a_bad_signature_or_an_old_timestamp_and_wakes_nothing() {
    let (wake_tx, wake_rx) = crossbeam_channel::bounded(1);
    let (_stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let _thread = lib_agent::sync::listener::spawn(addr, "hook-secret".into(), wake_tx, stop_rx)
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
            Some(webhooks::sign("hook-secret", now - 600, body.as_bytes())),
            body
        ),
        401,
        "ten minutes old"
    );
    let tampered = body.replace('7', "8");
    assert_eq!(
        post(
            addr,
            Some(webhooks::sign("hook-secret", now, body.as_bytes())),
            &tampered
        ),
        401,
        "body changed"
    );
    assert!(wake_rx.try_recv().is_err(), "nothing woke the puller");

    assert_eq!(
        post(
            addr,
            Some(webhooks::sign("hook-secret", now, body.as_bytes())),
            body
        ),
        200
    );
    assert!(
        wake_rx.try_recv().is_ok(),
        "a valid notification wakes the puller"
    );
}

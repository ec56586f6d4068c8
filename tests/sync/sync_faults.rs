//! Sync at the worst moments, forced by a proxy between the agent and the brain: the brain killed
//! after it committed an ingest but before its answer left, the agent killed after the brain
//! committed its push, and the agent killed while a pull's answer is on its way to it. Real
//! processes (`agent brain serve`, `agent sync`) on loopback; the proxy sees each exchange whole
//! and decides its fate.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support;
use crate::support::process::BrainProcess;
use rusqlite::Connection;
use serde_json::Value;

/// What the proxy does with an exchange the brain has answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Forward,
    /// Close the client's connection without the answer.
    Drop,
}

/// One request and the brain's answer to it.
struct Exchange {
    method: String,
    path: String,
    status: u16,
    body: Vec<u8>,
}

type Hook = Arc<Mutex<Box<dyn FnMut(&Exchange) -> Verdict + Send>>>;

/// An HTTP/1.1 proxy on loopback that forwards each request to `upstream` on a fresh connection,
/// reads the whole answer, and lets the hook decide whether the client gets it.
struct Proxy {
    addr: String,
}

impl Proxy {
    fn start(upstream: String, hook: Hook) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address").to_string();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (upstream, hook) = (upstream.clone(), hook.clone());
                std::thread::spawn(move || serve(client, &upstream, &hook));
            }
        });
        Proxy { addr }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Reads one HTTP message (head and Content-Length body); `None` at end of stream.
fn read_message(reader: &mut BufReader<TcpStream>) -> Option<(Vec<u8>, String, Vec<u8>)> {
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        head.extend_from_slice(line.as_bytes());
        if line == "\r\n" {
            break;
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let length = text
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())
                .flatten()
        })
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let first = text.lines().next().unwrap_or_default().to_owned();
    Some((head, first, body))
}

fn serve(client: TcpStream, upstream: &str, hook: &Hook) {
    let mut reader = BufReader::new(client.try_clone().expect("clone stream"));
    let mut client = client;
    while let Some((head, first, body)) = read_message(&mut reader) {
        let mut parts = first.split_whitespace();
        let method = parts.next().unwrap_or_default().to_owned();
        let path = parts.next().unwrap_or_default().to_owned();
        let Ok(mut up) = TcpStream::connect(upstream) else {
            return; // the brain is down: the client sees its connection close
        };
        if up
            .write_all(&head)
            .and_then(|()| up.write_all(&body))
            .is_err()
        {
            return;
        }
        let mut up_reader = BufReader::new(up);
        let Some((answer_head, status_line, answer_body)) = read_message(&mut up_reader) else {
            return;
        };
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let exchange = Exchange {
            method,
            path,
            status,
            body: answer_body.clone(),
        };
        let verdict = (hook.lock().expect("hook"))(&exchange);
        if verdict == Verdict::Drop {
            let _ = client.shutdown(std::net::Shutdown::Both);
            return;
        }
        if client
            .write_all(&answer_head)
            .and_then(|()| client.write_all(&answer_body))
            .is_err()
        {
            return;
        }
    }
}

fn events(brain: &BrainProcess) -> Vec<String> {
    let db = Connection::open(&brain.db).expect("open the brain db");
    let mut stmt = db
        .prepare("SELECT event_ulid FROM events ORDER BY id")
        .expect("prepare");
    let rows = stmt.query_map([], |r| r.get(0)).expect("query");
    rows.map(|r| r.expect("row")).collect()
}

fn entities(brain: &BrainProcess) -> Vec<(String, String)> {
    let db = Connection::open(&brain.db).expect("open the brain db");
    let mut stmt = db
        .prepare("SELECT entity_key, event_ulid FROM entities ORDER BY entity_key")
        .expect("prepare");
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query");
    rows.map(|r| r.expect("row")).collect()
}

/// A device: a library folder with a few files, scanned, and its database.
struct Device {
    home: PathBuf,
}

impl Device {
    fn new(dir: &Path, name: &str, files: usize) -> Device {
        let home = dir.join(name);
        let folder = home.join("notes");
        std::fs::create_dir_all(&folder).expect("library folder");
        for i in 0..files {
            std::fs::write(
                folder.join(format!("{name}-{i}.md")),
                format!("{name} file {i}\n"),
            )
            .expect("write");
        }
        std::fs::write(
            home.join("agent.toml"),
            format!("[[library]]\nname = \"notes\"\npath = {folder:?}\n"),
        )
        .expect("config");
        let device = Device { home };
        if files > 0 {
            let out = device.command(&["scan"], None).output().expect("scan");
            assert!(
                out.status.success(),
                "scan: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        device
    }

    fn command(&self, args: &[&str], brain: Option<&str>) -> Command {
        let mut c = support::process::agent(None);
        c.arg("--config")
            .arg(self.home.join("agent.toml"))
            .arg("--db")
            .arg(self.home.join("agent.db"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(url) = brain {
            c.env("LIB_BRAIN_URL", url);
        }
        c
    }

    /// `agent --json sync ARGS` against `brain`, to its end.
    fn sync(&self, args: &[&str], brain: &str) -> Output {
        let mut all = vec!["--json", "sync"];
        all.extend_from_slice(args);
        self.command(&all, Some(brain))
            .output()
            .expect("agent sync")
    }

    fn db(&self) -> Connection {
        Connection::open(self.home.join("agent.db")).expect("open the device db")
    }

    fn outbox(&self) -> (Vec<String>, i64) {
        let db = self.db();
        let mut stmt = db
            .prepare("SELECT event_ulid FROM lib_outbox ORDER BY id")
            .expect("prepare");
        let all = stmt.query_map([], |r| r.get(0)).expect("query");
        let all: Vec<String> = all.map(|r| r.expect("row")).collect();
        let pending = db
            .query_row(
                "SELECT count(*) FROM lib_outbox WHERE pushed_at IS NULL",
                [],
                |r| r.get(0),
            )
            .expect("count");
        (all, pending)
    }

    fn shared(&self) -> Vec<(String, String)> {
        let db = self.db();
        let mut stmt = db
            .prepare("SELECT path, event_ulid FROM lib_files ORDER BY path")
            .expect("prepare");
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query");
        rows.map(|r| r.expect("row")).collect()
    }
}

fn summary(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "agent sync failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("sync --json prints JSON")
}

fn hook(f: impl FnMut(&Exchange) -> Verdict + Send + 'static) -> Hook {
    Arc::new(Mutex::new(Box::new(f)))
}

#[test]
fn the_brain_killed_after_committing_an_ingest_but_before_answering_duplicates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let brain = Arc::new(Mutex::new(BrainProcess::start(
        &dir.path().join("brain"),
        false,
    )));
    let device = Device::new(dir.path(), "a", 5);

    // The first ingest reaches the brain and commits; the brain dies before its answer leaves.
    let killer = brain.clone();
    let mut first = true;
    let proxy = Proxy::start(
        brain.lock().expect("brain").addr.clone(),
        hook(move |x| {
            if x.path == "/ingest" && std::mem::take(&mut first) {
                assert_eq!(x.status, 200, "the brain committed the batch");
                killer.lock().expect("brain").kill9();
                return Verdict::Drop;
            }
            Verdict::Forward
        }),
    );
    let out = device.sync(&["--push"], &proxy.url());
    assert!(!out.status.success(), "the push cannot know it landed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach the brain"), "{stderr}");
    let (made, pending) = device.outbox();
    assert_eq!(
        pending,
        made.len() as i64,
        "nothing marked pushed without an answer"
    );
    assert_eq!(
        events(&brain.lock().expect("brain")),
        made,
        "yet the brain has it all"
    );

    // The brain comes back; the retry lands on events it has already: nothing twice.
    brain.lock().expect("brain").restart();
    let result = summary(&device.sync(&["--push"], &proxy.url()));
    assert_eq!(result["push"]["pushed"], made.len() as u64);
    assert_eq!(result["push"]["result"]["inserted_events"], 0, "{result}");
    assert_eq!(events(&brain.lock().expect("brain")), made);
    assert_eq!(device.outbox().1, 0);
    // The proxy's hook holds a second handle on the brain and outlives the test: stop it here,
    // or it runs on after the test binary exits.
    brain.lock().expect("brain").kill9();
}

#[test]
fn an_agent_killed_after_the_brain_committed_its_push_pushes_again_without_duplicates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let brain = BrainProcess::start(&dir.path().join("brain"), false);
    let device = Device::new(dir.path(), "a", 5);

    // The agent's pid, for the proxy to kill it the moment the brain has committed.
    let pid: Arc<Mutex<Option<u32>>> = Arc::new(Mutex::new(None));
    let target = pid.clone();
    let proxy = Proxy::start(
        brain.addr.clone(),
        hook(move |x| {
            if x.path == "/ingest" {
                if let Some(pid) = target.lock().expect("pid").take() {
                    // SAFETY: SIGKILL to the test's own child process.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                    return Verdict::Drop;
                }
            }
            Verdict::Forward
        }),
    );
    let child = device
        .command(&["--json", "sync", "--push"], Some(&proxy.url()))
        .spawn()
        .expect("agent sync");
    *pid.lock().expect("pid") = Some(child.id());
    let out = child.wait_with_output().expect("wait");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGKILL), "killed mid-push");
    let (made, pending) = device.outbox();
    assert_eq!(pending, made.len() as i64);
    assert_eq!(events(&brain), made, "the brain committed the push");

    // Restarted, it pushes the same events again; the brain takes none of them twice.
    let result = summary(&device.sync(&["--push"], &proxy.url()));
    assert_eq!(result["push"]["result"]["inserted_events"], 0, "{result}");
    assert_eq!(events(&brain), made);
    assert_eq!(device.outbox().1, 0);
}

#[test]
fn an_agent_killed_while_a_pull_answer_arrives_pulls_again_and_applies_each_event_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let brain = BrainProcess::start(&dir.path().join("brain"), false);
    let a = Device::new(dir.path(), "a", 6);
    summary(&a.sync(&["--push"], &brain.url()));
    let b = Device::new(dir.path(), "b", 0);

    // Two kills: before B gets the first page of events, and right after it got it (the kill
    // races B's commit of that page: either way nothing may be lost or applied twice).
    for forward_first in [false, true] {
        let pid: Arc<Mutex<Option<u32>>> = Arc::new(Mutex::new(None));
        let target = pid.clone();
        let proxy = Proxy::start(
            brain.addr.clone(),
            hook(move |x| {
                let has_events = x.method == "GET"
                    && x.path.starts_with("/pull")
                    && serde_json::from_slice::<Value>(&x.body)
                        .is_ok_and(|v| v["events"].as_array().is_some_and(|e| !e.is_empty()));
                if has_events {
                    if let Some(pid) = target.lock().expect("pid").take() {
                        let kill = move || {
                            // SAFETY: SIGKILL to the test's own child process.
                            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                        };
                        if forward_first {
                            std::thread::spawn(move || {
                                std::thread::sleep(Duration::from_millis(2));
                                kill();
                            });
                            return Verdict::Forward;
                        }
                        kill();
                        return Verdict::Drop;
                    }
                }
                Verdict::Forward
            }),
        );
        let child = b
            .command(&["--json", "sync", "--pull"], Some(&proxy.url()))
            .env("LIB_SYNC_BATCH_SIZE", "2")
            .spawn()
            .expect("agent sync");
        *pid.lock().expect("pid") = Some(child.id());
        let out = child.wait_with_output().expect("wait");
        if !forward_first {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(out.status.signal(), Some(libc::SIGKILL), "killed mid-pull");
        }
    }

    // Restarted, B pulls the rest: its shared view is the brain's, each event in its inbox once.
    let result = summary(&b.sync(&["--pull"], &brain.url()));
    assert_eq!(b.shared(), entities(&brain), "{result}");
    let db = b.db();
    let (inbox, distinct): (i64, i64) = db
        .query_row(
            "SELECT count(*), count(DISTINCT event_ulid) FROM lib_inbox",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("inbox");
    assert_eq!((inbox, distinct), (6, 6), "every event of A once");
    let cursor: String = db
        .query_row("SELECT v FROM lib_kv WHERE k = 'sync_after_id'", [], |r| {
            r.get(0)
        })
        .expect("cursor");
    assert_eq!(cursor, "6");
}

//! `agent run` says what it does and serves its own metrics: the real binary beside a real brain
//! on loopback. With `[metrics] listen`, `GET /metrics` answers in the Prometheus text format and
//! its values follow a file written and synced (files up, events pushed up, converged); its log at
//! the default level has a line for the indexed file and one for the push. Without the table
//! nothing is served, and an address that is not loopback is refused as a config error.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use crate::support;
use crate::support::brain_blocking::BlockingBrain;
use crate::support::wait::{wait_until, PATIENCE};

/// `agent run` on `dir/notes`, logging to `dir/log.txt` at its default level.
struct RunningAgent {
    dir: PathBuf,
    child: Option<Child>,
}

impl RunningAgent {
    fn start(dir: &Path, brain: &str, extra: &str) -> RunningAgent {
        std::fs::create_dir_all(dir.join("notes")).expect("mkdir");
        std::fs::write(
            dir.join("agent.toml"),
            format!(
                "[[library]]\nname = \"notes\"\npath = {:?}\n[sync]\npush_debounce_ms = 20\n{extra}",
                dir.join("notes")
            ),
        )
        .expect("config");
        let child = support::process::agent(Some(&dir.join("log.txt")))
            // The default level: what a user running it sees.
            .env_remove("LIB_LOG")
            .arg("--db")
            .arg(dir.join("agent.db"))
            .arg("--config")
            .arg(dir.join("agent.toml"))
            .arg("run")
            .env("LIB_BRAIN_URL", brain)
            .spawn()
            .expect("spawn agent run");
        RunningAgent {
            dir: dir.to_owned(),
            child: Some(child),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log.txt")).unwrap_or_default()
    }

    fn wait_for_log(&self, what: &str, found: impl Fn(&str) -> bool) {
        wait_until(what, PATIENCE, || found(&self.log()));
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        support::process::kill9(&mut self.child);
    }
}

/// `GET path` on `addr`: the status and body, or `None` when nothing listens there.
fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    let status = reply.split_whitespace().nth(1)?.parse().ok()?;
    let body = reply.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// The value of the sample `series` (name and labels, as written) in a scrape.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn scrape(addr: &str) -> String {
    match get(addr, "/metrics") {
        Some((200, body)) => body,
        other => panic!("GET /metrics on {addr}: {other:?}"),
    }
}

const FILES: &str = "lib_agent_library_files{library=\"notes\"}";
const PUSHED: &str = "lib_agent_events_pushed_total";
const CONVERGED: &str = "lib_agent_convergence_state{state=\"converged\"}";

#[test]
fn agent_run_serves_metrics_that_follow_a_file_written_and_synced_and_logs_the_index_and_the_push()
{
    let dir = tempfile::tempdir().expect("tempdir");
    let brain = BlockingBrain::start(dir.path());
    let addr = support::net::reserved_addr();
    let agent = RunningAgent::start(
        &dir.path().join("a"),
        &brain.url(),
        &format!("[metrics]\nlisten = \"{addr}\"\n"),
    );
    wait_until("the agent runs and serves /metrics", PATIENCE, || {
        get(&addr, "/metrics").is_some_and(|(status, body)| {
            status == 200
                && value(
                    &body,
                    "lib_agent_watch_mode{library=\"notes\",mode=\"watching\"}",
                ) == Some(1.0)
        })
    });
    let before = scrape(&addr);
    for family in [
        "# TYPE lib_agent_events_pushed_total counter",
        "# TYPE lib_agent_outbox_backlog gauge",
        "# TYPE lib_agent_convergence_state gauge",
        "lib_agent_watch_mode{library=\"notes\",mode=\"polling\"} 0",
    ] {
        assert!(before.contains(family), "{family:?} in:\n{before}");
    }
    assert_eq!(value(&before, FILES), Some(0.0), "{before}");
    assert_eq!(value(&before, PUSHED), Some(0.0), "{before}");
    assert_eq!(
        get(&addr, "/elsewhere").map(|(s, _)| s),
        Some(404),
        "only /metrics"
    );

    std::fs::write(agent.dir.join("notes/today.md"), "written while it runs").expect("write");
    let mut last = String::new();
    wait_until(
        "the file is indexed, pushed and the replica converged",
        PATIENCE,
        || {
            last = scrape(&addr);
            value(&last, FILES) == Some(1.0)
                && value(&last, PUSHED) == Some(1.0)
                && value(&last, CONVERGED) == Some(1.0)
        },
    );
    assert_eq!(
        value(&last, "lib_agent_outbox_backlog"),
        Some(0.0),
        "{last}"
    );
    assert_eq!(
        value(&last, "lib_agent_convergence_lag_events"),
        Some(0.0),
        "{last}"
    );
    assert!(
        value(&last, "lib_agent_seconds_since_last_sync").is_some_and(|s| s < 60.0),
        "{last}"
    );
    assert_eq!(
        value(&last, "lib_agent_events_parked_total"),
        Some(0.0),
        "{last}"
    );
    assert_eq!(brain.metric("lib_brain_events_ingested_total"), 1);

    // The log, at the default level, says both.
    agent.wait_for_log("the indexed and pushed lines", |log| {
        log.contains("indexed 1 file in") && log.contains("pushed 1 event in")
    });
    let log = agent.log();
    assert!(log.contains("serving metrics at http://"), "{log}");
}

#[test]
fn without_a_metrics_table_nothing_is_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let brain = BlockingBrain::start(dir.path());
    let agent = RunningAgent::start(&dir.path().join("a"), &brain.url(), "");
    std::fs::write(agent.dir.join("notes/a.md"), "a").expect("write");
    agent.wait_for_log("the file is pushed", |log| {
        log.contains("pushed 1 event in")
    });
    let log = agent.log();
    assert!(!log.contains("metrics"), "{log}");
    // Nor on the address of the example config.
    assert!(get("127.0.0.1:9464", "/metrics").is_none_or(|(_, body)| !body.contains("lib_agent_")));
}

#[test]
fn a_metrics_listen_that_is_not_loopback_or_not_an_address_is_a_config_error_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (value, problem) in [
        ("0.0.0.0:9464", "not a loopback address"),
        ("metrics.example:9464", "not an IP address and port"),
    ] {
        std::fs::write(
            dir.path().join("agent.toml"),
            format!("[metrics]\nlisten = \"{value}\"\n"),
        )
        .expect("config");
        let out = support::process::agent(None)
            .arg("--db")
            .arg(dir.path().join("agent.db"))
            .arg("--config")
            .arg(dir.path().join("agent.toml"))
            .arg("run")
            .arg(dir.path())
            .stderr(std::process::Stdio::piped())
            .output()
            .expect("agent run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{value}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one line: {stderr}");
        for part in ["metrics.listen", "line 2", value, problem] {
            assert!(lines[0].contains(part), "{part:?} in {stderr}");
        }
    }
}

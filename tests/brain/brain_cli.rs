//! `agent brain serve` and `agent brain prune` as a user runs them: the real binary, its flags,
//! its refusals and its exit status.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::brain::*;

struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("agent.toml"), "").unwrap();
        Home { dir }
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("brain.db")
    }

    fn command(&self, args: &[&str], secret: Option<&str>) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_agent"));
        c.arg("--config")
            .arg(self.dir.path().join("agent.toml"))
            .args(args);
        for var in [
            "LIB_SYNC_SECRET",
            "LIB_BRAIN_DATABASE_URL",
            "LIB_SQLITE_PATH",
            "LIB_LOG",
            "RUST_LOG",
        ] {
            c.env_remove(var);
        }
        if let Some(secret) = secret {
            c.env("LIB_SYNC_SECRET", secret);
        }
        c.stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str], secret: Option<&str>) -> Output {
        self.command(args, secret).output().unwrap()
    }

    /// Starts `brain serve` on port 0 and returns it with its address.
    fn serve(&self, args: &[&str], secret: Option<&str>) -> (Child, SocketAddr) {
        let mut all = vec!["brain", "serve", "--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let mut child = self
            .command(&all, secret)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .parse()
            .unwrap();
        (child, addr)
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Waits for the child to exit, killing it after `limit`.
fn wait(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("the brain did not stop within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn serve_refuses_to_start_without_a_secret_unless_told_to() {
    let home = Home::new();
    let db = home.db();
    let out = home.run(
        &[
            "brain",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--db",
            db.to_str().unwrap(),
        ],
        None,
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("LIB_SYNC_SECRET") && err.contains("--insecure-no-auth"),
        "{err}"
    );
    assert!(!Path::new(&db).exists(), "nothing created before refusing");
}

#[test]
fn store_flags_are_checked() {
    let home = Home::new();
    let db = home.db();
    let out = home.run(
        &[
            "brain",
            "serve",
            "--db",
            db.to_str().unwrap(),
            "--database-url",
            "postgres://x@127.0.0.1/db",
        ],
        Some("s"),
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not both"), "{}", stderr(&out));
    let out = home.run(
        &["brain", "serve", "--database-url", "mysql://x@127.0.0.1/db"],
        Some("s"),
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("postgres://"), "{}", stderr(&out));
    let out = home.run(
        &[
            "brain",
            "serve",
            "--database-url",
            "postgres://u:hunter2@127.0.0.1:1/db",
        ],
        Some("s"),
    );
    assert!(!out.status.success(), "an unreachable database is an error");
    assert!(
        !stderr(&out).contains("hunter2"),
        "the password never appears: {}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_sqlite_answers_and_stops_cleanly_on_sigterm() {
    let home = Home::new();
    let db = home.db();
    let (mut child, addr) = home.serve(&["--db", db.to_str().unwrap()], Some(SECRET));
    let http = Http::new(addr);
    let run = async {
        assert_eq!(
            http.send("GET", "/health", None, Vec::new()).await.status,
            200
        );
        assert_eq!(http.ingest_ok(&many("dev-a", 3, 1)).await, (3, 3));
        assert_eq!(
            http.send("GET", "/pull", None, Vec::new()).await.status,
            401
        );
        // A long-poll in flight must not hold the shutdown for its whole (60 s) wait. The pause
        // lets it reach the server; should it not have, it is refused and the exit is still checked.
        let waiting = tokio::spawn(async move {
            http.try_send(
                "GET",
                "/pull?after_id=3&wait_ms=60000",
                Some(SECRET),
                Vec::new(),
            )
            .await
            .map(|r| r.status)
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = tokio::task::spawn_blocking(move || wait(&mut child, Duration::from_secs(10)))
            .await
            .unwrap();
        assert!(status.success(), "exit status {status:?}");
        let polled = waiting.await.unwrap();
        assert!(
            matches!(polled, Some(200) | None),
            "the pending long-poll got its (empty) answer: {polled:?}"
        );
    };
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("timed out");
    assert!(db.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_no_auth_serves_without_a_secret() {
    let home = Home::new();
    let db = home.db();
    let (mut child, addr) = home.serve(&["--db", db.to_str().unwrap(), "--insecure-no-auth"], None);
    let http = Http::new(addr);
    let run = async {
        let r = http.send("GET", "/pull?after_id=0", None, Vec::new()).await;
        assert_eq!(r.status, 200, "{}", r.text);
    };
    let outcome = tokio::time::timeout(Duration::from_secs(30), run).await;
    let _ = child.kill();
    let _ = child.wait();
    outcome.expect("timed out");
}

#[test]
fn prune_reports_what_it_deleted() {
    let home = Home::new();
    let db = home.db();
    let out = home.run(
        &[
            "brain",
            "prune",
            "--older-than",
            "30",
            "--db",
            db.to_str().unwrap(),
        ],
        None,
    );
    assert!(
        !out.status.success(),
        "no database: an error, not a new empty one"
    );
    assert!(
        stderr(&out).contains("no brain database"),
        "{}",
        stderr(&out)
    );
    lib_agent::brain::store::SqliteStore::open(&db).unwrap();
    let out = home.run(
        &[
            "--json",
            "brain",
            "prune",
            "--older-than",
            "30",
            "--db",
            db.to_str().unwrap(),
        ],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["deleted_events"], 0);
}

/// What LIB v1.1's deployment guide and Python client send, with only the host changed: the
/// brain serves its routes under the edge function's path too.
mod lib_v1_1_clients {
    use super::*;
    use serde_json::{json, Value};

    const FUNCTION: &str = "/functions/v1/lib-brain-sync";

    fn serve(home: &Home) -> (Child, String) {
        let (child, addr) = home.serve(
            &[
                "--db",
                home.db().to_str().unwrap(),
                "--base-path",
                FUNCTION,
                "--cors-origin",
                "http://localhost:3000",
            ],
            Some(SECRET),
        );
        (child, format!("http://{addr}{FUNCTION}"))
    }

    fn json_of(r: reqwest::blocking::Response) -> (u16, Value) {
        let status = r.status().as_u16();
        let text = r.text().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    #[test]
    fn the_references_curl_commands_and_python_client_work_with_only_the_host_changed() {
        let home = Home::new();
        let (mut child, fn_url) = serve(&home);
        let http = reqwest::blocking::Client::new();

        // curl https://{ref}.supabase.co/functions/v1/lib-brain-sync/health | grep '"status":"healthy"'
        let health = http
            .get(format!("{fn_url}/health"))
            .send()
            .unwrap()
            .text()
            .unwrap();
        assert!(health.contains(r#""status":"healthy""#), "{health}");
        let health: Value = serde_json::from_str(&health).unwrap();
        assert_eq!(health["protocol"], "1.1");

        // curl -X POST ".../webhook" -H "x-lib-sync-secret: $LIB_SYNC_SECRET" -d '{...}'
        // (curl -d sends application/x-www-form-urlencoded)
        let (status, body) = json_of(
            http.post(format!("{fn_url}/webhook"))
                .header("x-lib-sync-secret", SECRET)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(r#"{"device_id": "macbook-pro", "webhook_url": "http://192.168.1.20:8001/webhook", "secret": "your-webhook-secret"}"#)
                .send()
                .unwrap(),
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["ok"], true);
        assert!(body["webhook_id"].is_i64(), "{body}");

        // push_outbox: POST {fn}/ingest, json={"batch": batch}
        let batch = many("macbook-pro", 2, 1);
        let (status, body) = json_of(
            http.post(format!("{fn_url}/ingest"))
                .header("x-lib-sync-secret", SECRET)
                .json(&json!({ "batch": batch }))
                .send()
                .unwrap(),
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["result"]["inserted_events"], 2, "{body}");

        // pull_inbox: GET {fn}/pull, params={"after_id": after_id, "limit": limit}; it reads
        // `events` and each event's id as the next cursor.
        let (status, body) = json_of(
            http.get(format!("{fn_url}/pull"))
                .query(&[("after_id", "0"), ("limit", "200")])
                .header("x-lib-sync-secret", SECRET)
                .send()
                .unwrap(),
        );
        assert_eq!(status, 200, "{body}");
        let events = body["events"].as_array().unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[1]["id"], 2);
        assert_eq!(events[0]["entity_key"], batch[0].entity_key.as_str());

        // The routes stay at the root too, for agents.
        let root = fn_url.trim_end_matches(FUNCTION);
        assert_eq!(
            http.get(format!("{root}/health")).send().unwrap().status(),
            200
        );
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn an_allowed_origins_preflight_is_answered_and_other_origins_get_no_cors_headers() {
        let home = Home::new();
        let (mut child, fn_url) = serve(&home);
        let http = reqwest::blocking::Client::new();
        let preflight = |origin: &str| {
            http.request(reqwest::Method::OPTIONS, format!("{fn_url}/ingest"))
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "x-lib-sync-secret, content-type",
                )
                .send()
                .unwrap()
        };
        let ok = preflight("http://localhost:3000");
        assert_eq!(ok.status(), 204);
        let h = ok.headers();
        assert_eq!(h["access-control-allow-origin"], "http://localhost:3000");
        let allowed = h["access-control-allow-headers"].to_str().unwrap();
        for header in [
            "x-lib-sync-secret",
            "authorization",
            "x-lib-device-id",
            "content-type",
        ] {
            assert!(allowed.contains(header), "{header} in {allowed}");
        }
        assert!(h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST"));

        let other = preflight("https://evil.example");
        assert!(other.status().is_client_error(), "{}", other.status());
        assert!(!other.headers().contains_key("access-control-allow-origin"));

        // The request itself still needs the credential, and carries the header.
        let r = http
            .post(format!("{fn_url}/ingest"))
            .header("origin", "http://localhost:3000")
            .json(&json!({"batch": []}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(
            r.headers()["access-control-allow-origin"],
            "http://localhost:3000"
        );
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn a_base_path_or_origin_that_cannot_be_served_is_refused_at_start() {
        let home = Home::new();
        for (flag, value, says) in [
            ("--base-path", "functions/v1", "does not start with /"),
            ("--base-path", "/functions/v1/", "empty segment"),
            ("--base-path", "/fn/{id}", "only letters"),
            ("--cors-origin", "https://app.example/", "not an origin"),
            ("--cors-origin", "app.example", "not an origin"),
        ] {
            let out = home.run(
                &[
                    "brain",
                    "serve",
                    "--listen",
                    "127.0.0.1:0",
                    "--db",
                    home.db().to_str().unwrap(),
                    flag,
                    value,
                ],
                Some(SECRET),
            );
            assert!(!out.status.success(), "{flag} {value}");
            assert!(
                stderr(&out).contains(says),
                "{flag} {value}: {}",
                stderr(&out)
            );
        }
    }
}

#[test]
fn prune_takes_a_duration_or_days_and_status_says_when_it_last_ran() {
    let home = Home::new();
    let db = home.db();
    let db = db.to_str().unwrap();
    lib_agent::brain::store::SqliteStore::open(std::path::Path::new(db)).unwrap();
    let status = |home: &Home| -> serde_json::Value {
        let out = home.run(&["--json", "brain", "prune", "--status", "--db", db], None);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let never = status(&home);
    assert_eq!(never["last_run_at"], serde_json::Value::Null, "{never}");
    let text = home.run(&["brain", "prune", "--status", "--db", db], None);
    assert!(String::from_utf8_lossy(&text.stdout).contains("last prune     never"));

    for age in ["365d", "12h", "30"] {
        let out = home.run(&["brain", "prune", "--older-than", age, "--db", db], None);
        assert!(out.status.success(), "{age}: {}", stderr(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("pruned 0 events"),
            "{age}"
        );
    }
    let ran = status(&home);
    assert!(ran["last_run_at"].is_i64(), "{ran}");
    assert_eq!(ran["total_deleted"], 0);

    for (args, says) in [
        (&["--older-than", "30s"][..], "shorter than a minute"),
        (&["--older-than", "soon"], "not a duration"),
        (&[], "--older-than"),
        (&["--status", "--older-than", "30"], "cannot be used with"),
    ] {
        let mut all = vec!["brain", "prune", "--db", db];
        all.extend_from_slice(args);
        let out = home.run(&all, None);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn serve_with_a_prune_schedule_prunes_at_start_and_records_it() {
    let home = Home::new();
    let db = home.db();
    let db = db.to_str().unwrap();
    let (mut child, _addr) = home.serve(
        &[
            "--db",
            db,
            "--prune-older-than",
            "365d",
            "--prune-every",
            "7d",
        ],
        Some(SECRET),
    );
    let started = Instant::now();
    let ran = loop {
        let out = home.run(&["--json", "brain", "prune", "--status", "--db", db], None);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if status["last_run_at"].is_i64() {
            break true;
        }
        if started.elapsed() > Duration::from_secs(20) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(ran, "the scheduled prune ran at start");
    let out = home.run(
        &["brain", "serve", "--prune-every", "1d", "--db", db],
        Some(SECRET),
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--prune-older-than"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn backup_copies_a_serving_brain_consistently_and_never_overwrites() {
    use std::os::unix::fs::PermissionsExt;
    let home = Home::new();
    let db = home.db();
    let db = db.to_str().unwrap();
    let (mut child, addr) = home.serve(&["--db", db], Some(SECRET));
    let r = reqwest::blocking::Client::new()
        .post(format!("http://{addr}/ingest"))
        .header("x-lib-sync-secret", SECRET)
        .json(&serde_json::json!({ "batch": many("dev-a", 30, 1) }))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);

    let copy = home.dir.path().join("brain-backup.db");
    let copy_str = copy.to_str().unwrap();
    let out = home.run(&["--json", "brain", "backup", copy_str, "--db", db], None);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["head"], 30, "{report}");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777,
        0o600,
        "the copy holds every file's text"
    );
    // The copy is a brain: it opens and serves the same log.
    use lib_agent::brain::store::BrainStore;
    let restored = lib_agent::brain::store::SqliteStore::open(&copy).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let page = rt.block_on(restored.pull(0, 500)).unwrap();
    assert_eq!(page.events.len(), 30);

    let again = home.run(&["brain", "backup", copy_str, "--db", db], None);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("exists already"),
        "{}",
        stderr(&again)
    );
    let missing = home.run(
        &[
            "brain",
            "backup",
            "/tmp/x.db",
            "--db",
            "/nonexistent/brain.db",
        ],
        None,
    );
    assert!(
        stderr(&missing).contains("no brain database"),
        "{}",
        stderr(&missing)
    );
    let pg = home.run(
        &[
            "brain",
            "backup",
            "/tmp/x.db",
            "--database-url",
            "postgres://u@127.0.0.1:1/db",
        ],
        None,
    );
    assert!(stderr(&pg).contains("pg_dump"), "{}", stderr(&pg));
}

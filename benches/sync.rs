//! The sync benchmark: issue 5's end-to-end targets with the real binaries on loopback.
//!
//! `cargo bench --bench sync` starts `agent brain serve` (SQLite) and two `agent run` devices and
//! measures:
//! 1. from a file write on A to its row in B's `lib_files`, over `BENCH_WRITES` (default 100)
//!    writes, with default settings, in long-poll and in webhook mode: p50 and p99. Each write
//!    waits `BENCH_WRITE_GAP_MS` (default 200) after the one before arrived, so it is a lone change
//!    (DESIGN.md "Push timing": over the pusher's 100 ms burst gap): target p99 < 100 ms. Then the
//!    same writes back to back (each as soon as the one before arrived, about every 40 ms: a burst,
//!    which the pusher coalesces for `push_debounce_ms`), for the record: target p99 < 1 s;
//! 2. the brain's ingest-to-wake-up: a long-poll parked on the brain, one event ingested, the
//!    time from sending the ingest to the long-poll's answer: target < 5 ms;
//! 3. catch-up: `BENCH_EVENTS` (default 100,000) events ingested while a device was away, then
//!    `agent sync --pull` on it: target under 30 s.
//!
//! B's database is polled every millisecond from a second connection.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use lib_agent::model::{Event, EventType, FilePayload, VectorClock};
use lib_agent::sync::BrainClient;

const AGENT: &str = env!("CARGO_BIN_EXE_agent");
const SECRET: &str = "bench-secret";

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn env_usize(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => Ok(v
            .trim()
            .parse()
            .map_err(|_| format!("{name}={v:?} is not a number"))?),
        _ => Ok(default),
    }
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start_brain(dir: &Path) -> Result<(Proc, String)> {
    let port = free_port()?;
    let mut child = Command::new(AGENT)
        .args([
            "--json",
            "brain",
            "serve",
            "--webhook-allow-private",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--db",
        ])
        .arg(dir.join("brain.db"))
        .env("LIB_SYNC_SECRET", SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    // The brain prints one line once it listens.
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    Ok((Proc(child), format!("http://127.0.0.1:{port}")))
}

fn start_agent(
    dir: &Path,
    brain: &str,
    sync: &str,
    env: &[(&str, &str)],
) -> Result<(Proc, PathBuf)> {
    std::fs::create_dir_all(dir.join("notes"))?;
    std::fs::write(
        dir.join("agent.toml"),
        format!(
            "[[library]]\nname = \"notes\"\npath = {:?}\n[sync]\nbrain_url = \"{brain}\"\n{sync}\n",
            dir.join("notes")
        ),
    )?;
    let db = dir.join("agent.db");
    let mut cmd = Command::new(AGENT);
    cmd.arg("--db")
        .arg(&db)
        .arg("--config")
        .arg(dir.join("agent.toml"))
        .arg("run");
    cmd.env("LIB_SYNC_SECRET", SECRET)
        .env_remove("LIB_BRAIN_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = Proc(cmd.spawn()?);
    wait(&db, Duration::from_secs(60), |c| {
        c.query_row(
            "SELECT v FROM lib_kv WHERE k = 'agent_run_state'",
            [],
            |r| r.get::<_, String>(0),
        )
        .is_ok_and(|v| v.contains("\"state\":\"running\""))
    })?;
    Ok((child, db))
}

fn wait(
    db: &Path,
    limit: Duration,
    done: impl Fn(&rusqlite::Connection) -> bool,
) -> Result<Instant> {
    let deadline = Instant::now() + limit;
    let mut conn = None;
    loop {
        if conn.is_none() && db.exists() {
            conn = rusqlite::Connection::open(db).ok();
        }
        if let Some(c) = &conn {
            if done(c) {
                return Ok(Instant::now());
            }
        }
        if Instant::now() > deadline {
            return Err("timed out".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

fn latency(mode: &str, writes: usize, gap: Duration) -> Result<(f64, f64)> {
    let dir = tempfile::tempdir()?;
    let (_brain, url) = start_brain(dir.path())?;
    let b_sync = if mode == "webhook" {
        let port = free_port()?;
        format!("realtime = \"webhook\"\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}/webhook\"")
    } else {
        "realtime = \"longpoll\"".to_owned()
    };
    let (_b, db_b) = start_agent(
        &dir.path().join("b"),
        &url,
        &b_sync,
        &[("LIB_WEBHOOK_SECRET", "hook-secret-0123456")],
    )?;
    let (_a, _) = start_agent(&dir.path().join("a"), &url, "realtime = \"off\"", &[])?;
    let notes = dir.path().join("a/notes");
    let mut samples = Vec::with_capacity(writes);
    for i in 0..writes {
        let key = format!("notes/w{i}.md");
        let start = Instant::now();
        std::fs::write(notes.join(format!("w{i}.md")), format!("write {i}"))?;
        let seen = wait(&db_b, Duration::from_secs(30), |c| {
            c.query_row(
                "SELECT count(*) FROM lib_files WHERE path = ?1",
                [&key],
                |r| r.get::<_, i64>(0),
            )
            .is_ok_and(|n| n == 1)
        })?;
        samples.push(seen.duration_since(start).as_secs_f64() * 1000.0);
        std::thread::sleep(gap);
    }
    samples.sort_by(f64::total_cmp);
    Ok((percentile(&samples, 0.5), percentile(&samples, 0.99)))
}

fn bench_event(device: &str, seq: u64, key: String) -> Event {
    Event {
        event_ulid: ulid::Ulid::new().to_string(),
        device_id: device.into(),
        event_type: EventType::UpsertFile,
        entity_type: "file".into(),
        entity_key: key,
        payload: FilePayload {
            sha256: Some(format!("{seq:064x}")),
            bytes: Some(300),
            mtime_unix: Some(1_700_000_000),
            ext: Some("md".into()),
            mime: Some("text/markdown".into()),
            content: Some("lorem ipsum ".repeat(25)),
        },
        vector_clock: VectorClock::from([(device, seq)]),
        created_at: "2026-11-25T00:00:00Z".into(),
    }
}

/// The brain's ingest-to-wake-up: a long-poll waits on the brain; one event is ingested; the time
/// from sending the ingest to the long-poll's answer arriving (an upper bound: it includes the
/// ingest's own request and commit). `samples` times; p50 and p99 in ms.
fn wake_up(samples: usize) -> Result<(f64, f64)> {
    let dir = tempfile::tempdir()?;
    let (_brain, url) = start_brain(dir.path())?;
    let client = BrainClient::new(&url, Some(SECRET.into()))?;
    let mut taken = Vec::with_capacity(samples);
    for i in 0..samples as i64 {
        let poller = BrainClient::new(&url, Some(SECRET.into()))?;
        let waiting = std::thread::spawn(move || {
            poller
                .pull(i, 10, Some(Duration::from_secs(20)), None)
                .map(|page| (Instant::now(), page.events.len()))
                .map_err(|e| e.to_string())
        });
        // Long enough for the long-poll to be parked on the brain.
        std::thread::sleep(Duration::from_millis(30));
        let sent = Instant::now();
        client.ingest(&[bench_event("waker", i as u64 + 1, format!("notes/w{i}.md"))])?;
        let (woken, got) = waiting
            .join()
            .map_err(|_| "the long-poll thread panicked")??;
        if got != 1 {
            return Err(format!("the long-poll answered {got} events, not 1").into());
        }
        taken.push(woken.saturating_duration_since(sent).as_secs_f64() * 1000.0);
    }
    taken.sort_by(f64::total_cmp);
    Ok((percentile(&taken, 0.5), percentile(&taken, 0.99)))
}

fn catch_up(events: usize) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let (_brain, url) = start_brain(dir.path())?;
    let client = BrainClient::new(&url, Some(SECRET.into()))?;
    let device = "bench-device";
    let mut seq = 0u64;
    for chunk in 0..events.div_ceil(500) {
        let batch: Vec<Event> = (0..500.min(events - chunk * 500))
            .map(|i| {
                seq += 1;
                bench_event(
                    device,
                    seq,
                    format!("notes/d{}/f{}.md", chunk % 200, chunk * 500 + i),
                )
            })
            .collect();
        client.ingest(&batch)?;
    }
    let away = dir.path().join("away");
    std::fs::create_dir_all(&away)?;
    std::fs::write(
        away.join("agent.toml"),
        format!("[sync]\nbrain_url = \"{url}\"\nbatch_size = 500\n"),
    )?;
    let start = Instant::now();
    let status = Command::new(AGENT)
        .arg("--db")
        .arg(away.join("agent.db"))
        .arg("--config")
        .arg(away.join("agent.toml"))
        .args(["--json", "sync", "--pull"])
        .env("LIB_SYNC_SECRET", SECRET)
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        return Err("agent sync --pull failed".into());
    }
    let took = start.elapsed().as_secs_f64();
    // A catch-up that did not catch up is not a figure.
    let conn = rusqlite::Connection::open(away.join("agent.db"))?;
    let rows: i64 = conn.query_row(
        "SELECT count(*) FROM lib_files WHERE deleted_at IS NULL",
        [],
        |r| r.get(0),
    )?;
    if rows != events as i64 {
        return Err(
            format!("the device holds {rows} files after catching up, not {events}").into(),
        );
    }
    Ok(took)
}

fn run() -> Result<()> {
    let writes = env_usize("BENCH_WRITES", 100)?;
    let events = env_usize("BENCH_EVENTS", 100_000)?;
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    let mut report = format!(
        "## sync benchmark, {now}\n\n- {writes} writes per mode and spacing; catch-up of {events} events\n\n"
    );
    report.push_str("| measure | figure | target | result |\n|---|---:|---:|---|\n");
    let gap = Duration::from_millis(env_usize("BENCH_WRITE_GAP_MS", 200)? as u64);
    for mode in ["longpoll", "webhook"] {
        let (p50, p99) = latency(mode, writes, gap)?;
        report.push_str(&format!(
            "| lone write on A to row on B, {mode}: p50 / p99 (ms) | {p50:.0} / {p99:.0} | p99 < 100 | {} |\n",
            if p99 < 100.0 { "pass" } else { "FAIL" }
        ));
    }
    for mode in ["longpoll", "webhook"] {
        let (p50, p99) = latency(mode, writes, Duration::ZERO)?;
        report.push_str(&format!(
            "| back-to-back writes (a burst), {mode}: p50 / p99 (ms) | {p50:.0} / {p99:.0} | p99 < 1000 | {} |\n",
            if p99 < 1000.0 { "pass" } else { "FAIL" }
        ));
    }
    let (p50, p99) = wake_up(writes)?;
    report.push_str(&format!(
        "| brain: ingest sent to a waiting long-poll's answer: p50 / p99 (ms) | {p50:.1} / {p99:.1} | < 5 | {} |\n",
        if p99 < 5.0 { "pass" } else { "FAIL" }
    ));
    let secs = catch_up(events)?;
    report.push_str(&format!(
        "| catch-up of {events} events, `agent sync --pull` (s) | {secs:.1} | < 30 | {} |\n",
        if secs < 30.0 { "pass" } else { "FAIL" }
    ));
    println!("{report}");
    let _ = std::fs::write(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-sync.md"),
        &report,
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench sync: error: {e}");
            ExitCode::FAILURE
        }
    }
}

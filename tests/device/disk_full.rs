//! A full disk, for real: a small tmpfs under the brain's or the agent's database, filled to the
//! last byte by a filler file. A full disk must never corrupt or lose anything, the error must say
//! what happened and where, and everything carries on once space is freed.
//!
//! Mounting needs root. Where it is not permitted, each test says why on stderr and passes, except
//! with `CI_REQUIRE_MOUNT=1` (`.ci/run` sets it), where it fails: CI must never skip them silently.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::support;
use crate::support::brain::{many, ulids, AnyStore, Brain, Http, SECRET};
use crate::support::lab::Lab;
use crate::support::wait::{wait_until, PATIENCE};

/// Every test here is bounded (the brief: under 30 s each).
const LIMIT: Duration = Duration::from_secs(30);

// ---- a small disk ------------------------------------------------------------------------------

/// A tmpfs of a given size mounted on a fresh temporary folder; unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts it, or says on stderr why it cannot and returns `None` (panics instead when
    /// `CI_REQUIRE_MOUNT=1`).
    fn mount(test: &str, size_kib: u64) -> Option<Tmpfs> {
        let refuse = |why: String| -> Option<Tmpfs> {
            let required = std::env::var("CI_REQUIRE_MOUNT").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "{test}: CI_REQUIRE_MOUNT=1 but a tmpfs cannot be mounted: {why}"
            );
            // Straight to the process's stderr: the test harness captures eprintln! of a test
            // that passes, and this line must be seen.
            let _ = writeln!(
                std::io::stderr(),
                "{test}: NOT RUN: it needs a small tmpfs to fill, and {why}; run the tests as root \
                 (CI sets CI_REQUIRE_MOUNT=1, where this fails instead)"
            );
            None
        };
        if !support::lab::running_as_root() {
            return refuse("this process is not root (id -u is not 0)".into());
        }
        let dir = tempfile::Builder::new()
            .prefix("lib-agent-full-")
            .tempdir()
            .expect("temporary folder");
        let target = CString::new(dir.path().as_os_str().as_bytes()).expect("path without NUL");
        let options = CString::new(format!("size={size_kib}k,mode=0755")).expect("options");
        // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                options.as_ptr().cast(),
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            return refuse(format!(
                "mounting a tmpfs on {} failed: {e}",
                dir.path().display()
            ));
        }
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn join(&self, rel: &str) -> PathBuf {
        self.path().join(rel)
    }

    /// Bytes still free for an unprivileged writer.
    fn free_bytes(&self) -> u64 {
        let target = CString::new(self.path().as_os_str().as_bytes()).expect("path");
        // SAFETY: statvfs(2) into a zeroed struct we own.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::statvfs(target.as_ptr(), &mut st) };
        assert_eq!(rc, 0, "statvfs: {}", std::io::Error::last_os_error());
        st.f_bavail as u64 * st.f_frsize as u64
    }

    /// Writes a filler file until the disk is full to the last byte.
    fn fill(&self) -> Filler {
        let path = self.join("filler");
        let mut file = std::fs::File::create(&path).expect("create the filler");
        let mut len = 0u64;
        for chunk in [64 * 1024, 4096, 512, 1] {
            let block = vec![0x5a_u8; chunk];
            loop {
                match file.write(&block) {
                    Ok(0) => break,
                    Ok(n) => len += n as u64,
                    Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                    Err(e) => panic!("writing the filler: {e}"),
                }
            }
        }
        assert_eq!(self.free_bytes(), 0, "the filler took every byte");
        Filler { path, len }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = CString::new(self.path().as_os_str().as_bytes()).expect("path");
        // SAFETY: umount2(2) of the mount this guard made. Detached: a process a failed test left
        // behind may still hold a file open there.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

/// The file that fills the disk.
struct Filler {
    path: PathBuf,
    len: u64,
}

impl Filler {
    /// Gives back `kib` KiB of the space it holds.
    fn shrink(&mut self, kib: u64) {
        self.len = self.len.saturating_sub(kib * 1024);
        std::fs::File::options()
            .write(true)
            .open(&self.path)
            .and_then(|f| f.set_len(self.len))
            .expect("shrink the filler");
    }

    /// Gives back all of it.
    fn free(self) {
        std::fs::remove_file(&self.path).expect("remove the filler");
    }
}

// ---- the brain ---------------------------------------------------------------------------------

/// The brain on a store that fills up: 503 saying the disk is full, nothing half written, still
/// serving; once space is freed the refused batch goes in, and every acknowledged event is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brain_on_a_full_disk_refuses_ingest_whole_keeps_serving_and_recovers() {
    let Some(disk) = Tmpfs::mount("brain_on_a_full_disk", 2048) else {
        return;
    };
    tokio::time::timeout(LIMIT, brain_on_a_full_disk(&disk))
        .await
        .expect("test timed out");
}

async fn brain_on_a_full_disk(disk: &Tmpfs) {
    let db = disk.join("brain.db");
    let store = lib_agent::brain::store::SqliteStore::open(&db).expect("open the brain");
    let brain = Brain::start(AnyStore::Sqlite(store), support::brain::config()).await;
    let mut acknowledged: Vec<String> = Vec::new();
    let first = many("dev-a", 20, 1);
    brain.ingest_ok(&first).await;
    acknowledged.extend(first.iter().map(|e| e.event_ulid.clone()));

    let filler = disk.fill();
    // What the database files hold already (free pages, the WAL's reusable frames) takes a few
    // more batches; then a batch no longer fits.
    let mut next = 21;
    let (refused, reply) = loop {
        let mut batch = many("dev-a", 50, next);
        for e in &mut batch {
            e.payload.content = Some(format!("{} {}", e.entity_key, "words ".repeat(300)));
        }
        next += 50;
        let reply = brain.ingest(&batch).await;
        if reply.status == 200 {
            acknowledged.extend(batch.iter().map(|e| e.event_ulid.clone()));
            assert!(next < 5_000, "the disk never filled up");
            continue;
        }
        break (batch, reply);
    };
    assert_eq!(reply.status, 503, "a full disk is 503: {}", reply.text);
    assert_eq!(reply.body["ok"], false, "{}", reply.text);
    let error = reply.body["error"].as_str().expect("an error message");
    assert!(
        error.contains("the disk holding the brain's database is full"),
        "says what happened: {error}"
    );

    // Still serving, and nothing of the refused batch is anywhere.
    let health = brain.send("GET", "/health", None, Vec::new()).await;
    assert_eq!(health.status, 200, "{}", health.text);
    assert_consistent(&brain, &acknowledged, &refused).await;

    // Space returns: the same batch goes in, whole.
    filler.free();
    let (inserted, _) = brain.ingest_ok(&refused).await;
    assert_eq!(inserted, refused.len() as u64);
    acknowledged.extend(refused.iter().map(|e| e.event_ulid.clone()));
    assert_consistent(&brain, &acknowledged, &[]).await;

    let conn = Connection::open(&db).expect("open the brain's file");
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(check, "ok");
}

/// The log holds exactly the acknowledged events, each entity's winner is one of them, and no
/// event of `absent` is in either.
async fn assert_consistent(
    brain: &Http,
    acknowledged: &[String],
    absent: &[lib_agent::model::Event],
) {
    let log = ulids(&brain.pull_all().await);
    assert_eq!(
        log, acknowledged,
        "the log is exactly what was acknowledged"
    );
    let entities = brain.snapshot_all().await;
    assert_eq!(
        entities.len(),
        acknowledged.len(),
        "one entity per event here"
    );
    for entity in &entities {
        let ulid = entity["event_ulid"].as_str().expect("event_ulid");
        assert!(
            acknowledged.iter().any(|a| a == ulid),
            "entity {} names an event not in the log",
            entity["entity_key"]
        );
    }
    for e in absent {
        assert!(
            !log.contains(&e.event_ulid),
            "{} half written",
            e.event_ulid
        );
    }
}

/// `agent brain serve` on a full disk with no database yet: one line saying so, and it starts
/// once space is freed.
#[test]
fn brain_serve_on_a_full_disk_fails_to_start_with_one_line() {
    let Some(disk) = Tmpfs::mount("brain_serve_on_a_full_disk", 512) else {
        return;
    };
    let db = disk.join("brain.db");
    let home = tempfile::tempdir().expect("temporary folder");
    let config = home.path().join("agent.toml");
    std::fs::write(&config, "").expect("write the config");
    let filler = disk.fill();
    let out = brain_command(&config, &db)
        .output()
        .expect("run agent brain serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it must not start: {stderr}");
    assert_eq!(
        out.status.code(),
        Some(1),
        "an error, not a crash: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].starts_with("agent: error: "), "{stderr}");
    assert!(
        lines[0].contains("the disk holding the brain's database is full"),
        "{stderr}"
    );
    assert!(
        lines[0].contains(db.to_str().expect("utf-8")),
        "names the file: {stderr}"
    );

    filler.free();
    let mut child = brain_command(&config, &db)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the brain");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("read its first line");
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains("brain listening"), "it starts now: {line:?}");
}

fn brain_command(config: &Path, db: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_agent"));
    c.arg("--config")
        .arg(config)
        .args(["brain", "serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(db)
        .env("LIB_SYNC_SECRET", SECRET)
        .env_remove("LIB_BRAIN_DATABASE_URL")
        .env_remove("LIB_SQLITE_PATH")
        .env_remove("LIB_LOG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    c
}

// ---- the agent ---------------------------------------------------------------------------------

/// A library of `n` small text files, each with a word of its own (`uniqueN`), in the lab (on the
/// ordinary disk), and the lab's database on `disk`.
fn lab_on(disk: &Tmpfs) -> Lab {
    let mut lab = Lab::with_config("[[library]]\nname = \"notes\"\npath = '{root}/notes'\n");
    lab.db = disk.join("agent.db");
    std::fs::create_dir_all(lab.path("notes")).expect("create the library");
    lab
}

fn write_files(lab: &Lab, from: usize, to: usize) {
    for i in from..to {
        lab.write(
            &format!("notes/f{i:05}.md"),
            format!(
                "note {i} unique{i} {}\n",
                "lorem ipsum dolor sit amet consectetur ".repeat(8)
            ),
        );
    }
}

/// What a failed write must never leave behind: the database opens, SQLite finds it sound, and
/// observed state, `lib_files`, the search index and the outbox tell one story (every change
/// is there whole or not at all). Returns the indexed keys.
#[track_caller]
fn assert_whole(db_path: &Path) -> Vec<String> {
    let db = support::lab::Db::open(db_path);
    let check: String = db
        .conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(check, "ok", "SQLite finds the database sound");
    let files: Vec<String> = db.live_paths();
    assert_eq!(db.files().len(), files.len(), "no tombstones here");
    let observed: Vec<String> = db.observed().into_iter().map(|o| o.path).collect();
    assert_eq!(observed, files, "observed state and lib_files agree");
    let mut events: Vec<String> = db.outbox().into_iter().map(|e| e.entity_key).collect();
    events.sort();
    assert_eq!(events, files, "exactly one outbox event per indexed file");
    let (_, sequence) = db.device();
    assert_eq!(
        sequence as usize,
        events.len(),
        "one sequence number per event"
    );
    let indexed: i64 = db
        .conn
        .query_row("SELECT count(*) FROM lib_files_fts_docsize", [], |r| {
            r.get(0)
        })
        .expect("count the search index");
    assert_eq!(
        indexed as usize,
        files.len(),
        "the search index holds every file, once"
    );
    db.conn
        .execute(
            "INSERT INTO lib_files_fts(lib_files_fts) VALUES ('integrity-check')",
            [],
        )
        .expect("the search index matches lib_files");
    files
}

fn assert_disk_full_error(run: &support::lab::Run, db: &Path) {
    let line = run.error_line(&[
        "the disk holding database",
        db.to_str().expect("utf-8 path"),
        "is full",
    ]);
    assert!(!line.contains("Error code"), "no SQLite noise: {line}");
}

/// `agent scan` with its database on a full disk: one line naming the disk-full database, the
/// index whole, and the next scan with space indexes everything with one event per file.
#[test]
fn scan_on_a_full_disk_fails_with_one_line_keeps_the_index_whole_and_catches_up() {
    let Some(disk) = Tmpfs::mount("scan_on_a_full_disk", 16 * 1024) else {
        return;
    };
    let lab = lab_on(&disk);
    const FILES: usize = 3000;
    write_files(&lab, 0, FILES);
    lab.agent(&["init"]).success();
    let mut filler = disk.fill();

    // Full to the last byte: SQLite cannot even map its shared-memory index.
    let run = lab.agent(&["scan"]).failure();
    run.assert_one_line_error(&[]);
    assert_disk_full_error(&run, &lab.db);

    // Room for the start and some batches, not for the whole library.
    filler.shrink(3 * 1024);
    let run = lab.agent(&["scan"]).failure();
    run.assert_one_line_error(&[]);
    assert_disk_full_error(&run, &lab.db);
    let indexed = assert_whole(&lab.db);
    assert!(indexed.len() < FILES, "the disk filled up before the end");

    filler.free();
    let summary = lab.scan(&[]);
    assert_eq!(summary["ok"], true, "{summary:#}");
    let indexed = assert_whole(&lab.db);
    assert_eq!(indexed.len(), FILES, "every file indexed, once");
    let hits = lab.json(&["search", "unique2999"]);
    assert_eq!(hits["results"][0]["path"], "notes/f02999.md", "{hits:#}");
}

/// `agent run` with its database on a disk that fills up while it indexes: it keeps watching, says
/// once (naming the database) that the disk is full, leaves nothing half-written, keeps the changes
/// queued, and indexes every file, one event each, once space is freed, without a restart.
#[test]
fn agent_run_on_a_full_disk_keeps_its_changes_queued_and_catches_up_when_space_is_back() {
    let Some(disk) = Tmpfs::mount("agent_run_on_a_full_disk", 16 * 1024) else {
        return;
    };
    let lab = lab_on(&disk);
    lab.agent(&["init"]).success();
    let mut filler = disk.fill();

    // No room at all: it does not start, and says why.
    let mut agent = spawn_run(&lab);
    let run = agent.wait_exit(Duration::from_secs(10));
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert_disk_full_error(&run, &lab.db);

    // Room to start; then files arrive until the disk is full. It keeps watching, and says so
    // once, naming the database.
    filler.shrink(2 * 1024);
    let mut agent = spawn_run(&lab);
    wait_until("agent run is running", PATIENCE, || {
        lab.db.exists()
            && support::lab::Db::open(&lab.db)
                .kv(lib_agent::daemon::STATE_KEY)
                .is_some_and(|s| s.contains("\"state\":\"running\""))
    });
    let full_lines = |agent: &RunningAgent| {
        std::fs::read_to_string(&agent.stderr)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("the disk holding database") && l.contains("is full"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let mut written = 0;
    while full_lines(&agent).is_empty() {
        assert!(written < 20_000, "the disk never filled up");
        write_files(&lab, written, written + 500);
        written += 500;
        std::thread::sleep(Duration::from_millis(300));
    }
    // A few more changes while the disk is full: queued, not lost.
    write_files(&lab, written, written + 50);
    written += 50;
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        agent.try_exit(Duration::ZERO).is_none(),
        "agent run keeps running"
    );
    let lines = full_lines(&agent);
    assert_eq!(lines.len(), 1, "said once: {lines:#?}");
    assert!(
        lines[0].contains(lab.db.to_str().expect("utf-8")),
        "{}",
        lines[0]
    );
    assert!(
        !lines[0].contains("Error code"),
        "no SQLite noise: {}",
        lines[0]
    );
    let indexed = assert_whole(&lab.db);
    assert!(indexed.len() < written, "the disk filled up before the end");

    // Space is back: everything queued is indexed, without a restart.
    filler.free();
    wait_until("agent run caught up", PATIENCE, || {
        support::lab::Db::open(&lab.db).live_paths().len() == written
    });
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(agent.child.id() as i32, libc::SIGTERM) };
    let run = agent.wait_exit(Duration::from_secs(10));
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(run.stderr.contains("space is back"), "{}", run.stderr);
    let indexed = assert_whole(&lab.db);
    assert_eq!(indexed.len(), written, "every file indexed, once");
}

/// A running `agent run` whose stderr goes to a file (a pipe nobody reads could fill up).
struct RunningAgent {
    child: std::process::Child,
    stderr: PathBuf,
    args: Vec<String>,
}

fn spawn_run(lab: &Lab) -> RunningAgent {
    let stderr = lab.path(&format!("run-{}.err", ulid::Ulid::new()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agent"));
    cmd.arg("--db")
        .arg(&lab.db)
        .arg("--config")
        .arg(&lab.config)
        .arg("run")
        .current_dir(lab.root())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).expect("stderr file"));
    for var in [
        "LIB_AGENT_CONFIG",
        "LIB_SQLITE_PATH",
        "LIB_LOG",
        "LIB_BRAIN_URL",
        "LIB_SUPABASE_FN_URL",
        "LIB_SYNC_SECRET",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    RunningAgent {
        child: cmd.spawn().expect("start agent run"),
        stderr,
        args: vec!["run".into()],
    }
}

impl RunningAgent {
    /// The run, once it has exited, waiting at most `wait`.
    fn try_exit(&mut self, wait: Duration) -> Option<support::lab::Run> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for agent run") {
                return Some(support::lab::Run {
                    args: self.args.clone(),
                    code: status.code(),
                    stdout: String::new(),
                    stderr: std::fs::read_to_string(&self.stderr).unwrap_or_default(),
                });
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[track_caller]
    fn wait_exit(&mut self, limit: Duration) -> support::lab::Run {
        self.try_exit(limit)
            .unwrap_or_else(|| panic!("agent run did not exit within {limit:?}"))
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

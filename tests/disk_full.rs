//! A full disk, for real: a small tmpfs under the brain's or the agent's database, filled to the
//! last byte by a filler file. A full disk must never corrupt or lose anything, the error must say
//! what happened and where, and everything carries on once space is freed.
//!
//! Mounting needs root. Where it is not permitted, each test says why on stderr and passes, except
//! with `CI_REQUIRE_MOUNT=1` (`.ci/run` sets it), where it fails: CI must never skip them silently.

mod brain_common;
mod common;

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use brain_common::{many, ulids, AnyStore, Brain, Http, SECRET};

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
            eprintln!(
                "{test}: NOT RUN: it needs a small tmpfs to fill, and {why}; run the tests as root \
                 (CI sets CI_REQUIRE_MOUNT=1, where this fails instead)"
            );
            None
        };
        if !common::running_as_root() {
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
    let brain = Brain::start(AnyStore::Sqlite(store), brain_common::config()).await;
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

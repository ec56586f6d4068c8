//! What `tests/cli.rs` and `tests/scan.rs` share: a throw-away home for one run of the real
//! `agent` binary (a temporary folder with its own config file and database), and readers of the
//! SQLite file the binary leaves behind.
//!
//! Every run passes `--config` and `--db` and strips the variables that could point the binary at
//! the developer's real config or database, so a test can never touch them.

#![allow(dead_code)] // each test file uses its own part of this module

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A run that has not finished by then is hung (a symlink loop, a FIFO opened for reading): the
/// watchdog kills it so the test fails instead of hanging the suite.
const HANG: Duration = Duration::from_secs(60);

/// Environment variables that would otherwise reach into the developer's setup.
const FOREIGN_ENV: &[&str] = &[
    "LIB_AGENT_CONFIG",
    "LIB_SQLITE_PATH",
    "LIB_LOG",
    "LIB_BRAIN_URL",
    "LIB_SUPABASE_FN_URL",
    "LIB_BRAIN_CA_FILE",
    "LIB_SYNC_SECRET",
    "LIB_SYNC_SECRET_PREVIOUS",
    "LIB_DEVICE_TOKEN",
    "LIB_BRAIN_DATABASE_URL",
    "LIB_WEBHOOK_SECRET",
    "LIB_WEBHOOK_PORT",
    "LIB_SYNC_BATCH_SIZE",
    "RUST_LOG",
];

/// A temporary folder holding `agent.toml` (empty unless written) and, once a command creates it,
/// `agent.db`.
pub struct Lab {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub db: PathBuf,
    /// Run the binary as an unprivileged user (see [`Lab::unprivileged`]).
    unprivileged: bool,
}

/// What one run of the binary did.
#[derive(Debug)]
pub struct Run {
    pub args: Vec<String>,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// Asserts exit status 0 and returns self.
    #[track_caller]
    pub fn success(self) -> Run {
        assert!(self.ok(), "agent {:?} failed: {self:#?}", self.args);
        assert_no_panic(&self);
        self
    }

    /// Asserts a non-zero exit that is an error, not a crash, and returns self.
    #[track_caller]
    pub fn failure(self) -> Run {
        assert!(
            !self.ok(),
            "agent {:?} should have failed: {self:#?}",
            self.args
        );
        assert_no_panic(&self);
        assert_eq!(
            self.code,
            Some(1),
            "an error exits with status 1: {self:#?}"
        );
        self
    }

    /// stdout as JSON, which must be exactly one document.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout of {:?} is not one JSON document ({e}): {:?}",
                self.args, self.stdout
            )
        })
    }

    /// The non-empty lines of stderr.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }

    /// Asserts that stderr is exactly one line, the error, and that it contains every part.
    #[track_caller]
    pub fn assert_one_line_error(&self, parts: &[&str]) {
        let lines = self.stderr_lines();
        assert_eq!(
            lines.len(),
            1,
            "stderr of {:?} should be one line, got: {:?}",
            self.args,
            self.stderr
        );
        let line = lines[0];
        assert!(
            line.starts_with("agent: error: "),
            "not an error line: {line:?}"
        );
        for part in parts {
            assert!(
                line.contains(part),
                "the error {line:?} should contain {part:?}"
            );
        }
    }

    /// Asserts what a failed run printed on stdout: nothing, or with `--json` one document
    /// `{"ok": false, "error": ...}` whose error is stderr's.
    #[track_caller]
    pub fn assert_stdout_of_a_failure(&self) {
        if !self.args.iter().any(|a| a == "--json") {
            assert!(self.stdout.is_empty(), "{:?}: {:?}", self.args, self.stdout);
            return;
        }
        let doc = self.json();
        assert_eq!(doc["ok"], false, "{:?}: {doc}", self.args);
        let error = doc["error"].as_str().expect("error is a string");
        assert!(
            self.stderr.contains(error),
            "{:?}: stdout's error {error:?} is not stderr's {:?}",
            self.args,
            self.stderr
        );
        assert_eq!(doc.as_object().map(|o| o.len()), Some(2), "{doc}");
    }

    /// Asserts that some `agent: error:` line of stderr contains every part, and returns it.
    #[track_caller]
    pub fn error_line(&self, parts: &[&str]) -> String {
        let errors: Vec<&str> = self
            .stderr_lines()
            .into_iter()
            .filter(|l| l.starts_with("agent: error: "))
            .collect();
        assert_eq!(
            errors.len(),
            1,
            "expected one `agent: error:` line in {:?}",
            self.stderr
        );
        for part in parts {
            assert!(
                errors[0].contains(part),
                "the error {:?} should contain {part:?}",
                errors[0]
            );
        }
        errors[0].to_owned()
    }
}

#[track_caller]
fn assert_no_panic(run: &Run) {
    assert_ne!(
        run.code,
        Some(101),
        "agent {:?} panicked: {run:#?}",
        run.args
    );
    assert!(
        !run.stderr.contains("panicked"),
        "agent {:?} panicked: {}",
        run.args,
        run.stderr
    );
}

impl Lab {
    /// A lab with an empty config file.
    pub fn new() -> Lab {
        let dir = tempfile::Builder::new()
            .prefix("lib-agent-test-")
            .tempdir()
            .expect("temporary folder");
        let config = dir.path().join("agent.toml");
        std::fs::write(&config, "").expect("write config");
        let db = dir.path().join("agent.db");
        Lab {
            dir,
            config,
            db,
            unprivileged: false,
        }
    }

    /// A lab whose config file says `text`; `{root}` in it stands for the lab's folder.
    pub fn with_config(text: &str) -> Lab {
        let lab = Lab::new();
        lab.write_config(text);
        lab
    }

    pub fn write_config(&self, text: &str) {
        let text = text.replace("{root}", &self.root_str());
        std::fs::write(&self.config, text).expect("write config");
    }

    /// Runs the binary as a user that file permissions apply to. Tests usually run as root in
    /// containers, where `chmod 000` stops nothing; as root the binary is started with uid/gid
    /// 65534 (nobody), and the lab folder is opened to it. Files the test creates stay readable
    /// (umask 022) unless the test takes that away.
    pub fn unprivileged() -> Lab {
        let mut lab = Lab::new();
        set_mode(lab.dir.path(), 0o777);
        lab.unprivileged = running_as_root();
        lab
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn root_str(&self) -> String {
        self.root()
            .to_str()
            .expect("temporary folder has a UTF-8 path")
            .to_owned()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    /// Writes a file (and its folders) below the lab, stamped a few seconds in the past, as a
    /// user's file is by the time a scan reads it: a file read within the clock tick of its last
    /// write is read again next time (`index::is_racy`), which only the tests about that mean.
    pub fn write(&self, rel: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create folders");
        }
        std::fs::write(&path, bytes).expect("write file");
        let written = std::time::SystemTime::now() - std::time::Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(written))
            .expect("stamp the mtime");
        path
    }

    /// Runs `agent --db <db> --config <config> ARGS` in the lab folder.
    pub fn agent<S: AsRef<OsStr>>(&self, args: &[S]) -> Run {
        self.agent_env(args, &[])
    }

    /// [`Lab::agent`] with these environment variables set (after the foreign ones are removed).
    pub fn agent_env<S: AsRef<OsStr>>(&self, args: &[S], env: &[(&str, &str)]) -> Run {
        let mut full: Vec<&OsStr> = vec![
            OsStr::new("--db"),
            self.db.as_os_str(),
            OsStr::new("--config"),
            self.config.as_os_str(),
        ];
        full.extend(args.iter().map(AsRef::as_ref));
        self.agent_raw_env(&full, env)
    }

    /// Runs `agent ARGS` with nothing added but the environment cleaning.
    pub fn agent_raw<S: AsRef<OsStr>>(&self, args: &[S]) -> Run {
        self.agent_raw_env(args, &[])
    }

    /// [`Lab::agent_raw`] with these environment variables set.
    pub fn agent_raw_env<S: AsRef<OsStr>>(&self, args: &[S], env: &[(&str, &str)]) -> Run {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_agent"));
        cmd.args(args)
            .current_dir(self.root())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for var in FOREIGN_ENV {
            cmd.env_remove(var);
        }
        cmd.envs(env.iter().copied());
        if self.unprivileged {
            use std::os::unix::process::CommandExt;
            cmd.uid(65534).gid(65534);
        }
        let shown: Vec<String> = args
            .iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect();
        let child = cmd.spawn().expect("start the agent binary");
        let pid = child.id() as libc::pid_t;
        let (done, finished) = mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = finished.recv_timeout(HANG) {
                // SAFETY: kill(2) on the pid of our own child, which has not been reaped: the main
                // thread is still blocked in wait_with_output.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                return true;
            }
            false
        });
        let output = child.wait_with_output().expect("wait for the agent");
        let _ = done.send(());
        let hung = watchdog.join().unwrap_or(false);
        assert!(
            !hung,
            "agent {shown:?} did not finish within {HANG:?}: killed"
        );
        Run {
            args: shown,
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// `agent --json ARGS`, which must succeed; its stdout parsed.
    #[track_caller]
    pub fn json<S: AsRef<OsStr>>(&self, args: &[S]) -> Value {
        let mut full: Vec<&OsStr> = vec![OsStr::new("--json")];
        full.extend(args.iter().map(AsRef::as_ref));
        self.agent(&full).success().json()
    }

    /// `agent --json scan ARGS`, which must succeed.
    #[track_caller]
    pub fn scan(&self, args: &[&str]) -> Value {
        let mut full = vec!["scan"];
        full.extend_from_slice(args);
        self.json(&full)
    }

    /// The database the binary wrote, opened after it exited.
    pub fn db(&self) -> Db {
        Db::open(&self.db)
    }

    /// The device id, from `agent --json init` (which changes nothing when the database exists).
    pub fn device_id(&self) -> String {
        self.json(&["init"])["device_id"]
            .as_str()
            .expect("device_id")
            .to_owned()
    }
}

pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Lower-case hex sha256 of some bytes.
pub fn sha256_hex(bytes: impl AsRef<[u8]>) -> String {
    Sha256::digest(bytes.as_ref())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A vector clock as stored: device id to sequence number.
pub type Clock = BTreeMap<String, u64>;

/// `a` dominates `b`: every entry ≥ (missing = 0) and at least one greater.
pub fn dominates(a: &Clock, b: &Clock) -> bool {
    let get = |c: &Clock, k: &str| c.get(k).copied().unwrap_or(0);
    let keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.iter().all(|k| get(a, k) >= get(b, k)) && keys.iter().any(|k| get(a, k) > get(b, k))
}

#[derive(Debug, Clone, PartialEq)]
pub struct FileRow {
    pub path: String,
    pub sha256: Option<String>,
    pub bytes: Option<i64>,
    pub mtime_unix: Option<i64>,
    pub ext: Option<String>,
    pub mime: Option<String>,
    pub content: Option<String>,
    pub deleted_at: Option<String>,
    pub event_ulid: Option<String>,
    pub device_id: Option<String>,
    pub vector_clock: Option<Clock>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub id: i64,
    pub device_id: String,
    pub event_ulid: String,
    pub event_type: String,
    pub entity_type: String,
    pub entity_key: String,
    pub payload: Value,
    pub vector_clock: Clock,
    pub created_at: String,
    pub pushed_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ObservedRow {
    pub path: String,
    pub bytes: i64,
    pub mtime_ns: i64,
    pub inode: i64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    pub id: i64,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    pub library: Option<String>,
    pub status: Option<String>,
    pub files_seen: Option<i64>,
    pub files_hashed: Option<i64>,
    pub files_unchanged: Option<i64>,
    pub files_upserted: Option<i64>,
    pub files_deleted: Option<i64>,
    pub errors: Option<i64>,
    pub message: Option<String>,
}

/// Reads of the database file, opened read-write (so that closing it tidies its WAL files away,
/// as the binary's own connections do) but never written to.
pub struct Db {
    pub conn: Connection,
}

impl Db {
    pub fn open(path: &Path) -> Db {
        assert!(path.exists(), "no database at {}", path.display());
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)
            .expect("open the database");
        Db { conn }
    }

    pub fn files(&self) -> Vec<FileRow> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT path, sha256, bytes, mtime_unix, ext, mime, content, deleted_at, event_ulid, device_id,
                        vector_clock FROM lib_files ORDER BY path",
            )
            .expect("query lib_files");
        stmt.query_map([], |r| {
            Ok(FileRow {
                path: r.get(0)?,
                sha256: r.get(1)?,
                bytes: r.get(2)?,
                mtime_unix: r.get(3)?,
                ext: r.get(4)?,
                mime: r.get(5)?,
                content: r.get(6)?,
                deleted_at: r.get(7)?,
                event_ulid: r.get(8)?,
                device_id: r.get(9)?,
                vector_clock: r.get::<_, Option<String>>(10)?.map(|s| clock(&s)),
            })
        })
        .and_then(|rows| rows.collect())
        .expect("read lib_files")
    }

    pub fn file(&self, path: &str) -> FileRow {
        self.files()
            .into_iter()
            .find(|f| f.path == path)
            .unwrap_or_else(|| panic!("no lib_files row {path}"))
    }

    /// Paths of the rows whose winner is not a tombstone.
    pub fn live_paths(&self) -> Vec<String> {
        self.files()
            .into_iter()
            .filter(|f| f.deleted_at.is_none())
            .map(|f| f.path)
            .collect()
    }

    pub fn outbox(&self) -> Vec<OutboxRow> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, device_id, event_ulid, event_type, entity_type, entity_key, payload_json, vector_clock,
                        created_at, pushed_at FROM lib_outbox ORDER BY id",
            )
            .expect("query lib_outbox");
        stmt.query_map([], |r| {
            Ok(OutboxRow {
                id: r.get(0)?,
                device_id: r.get(1)?,
                event_ulid: r.get(2)?,
                event_type: r.get(3)?,
                entity_type: r.get(4)?,
                entity_key: r.get(5)?,
                payload: serde_json::from_str(&r.get::<_, String>(6)?)
                    .expect("payload_json is JSON"),
                vector_clock: clock(&r.get::<_, String>(7)?),
                created_at: r.get(8)?,
                pushed_at: r.get(9)?,
            })
        })
        .and_then(|rows| rows.collect())
        .expect("read lib_outbox")
    }

    pub fn observed(&self) -> Vec<ObservedRow> {
        let mut stmt = self
            .conn
            .prepare("SELECT path, bytes, mtime_ns, inode, sha256 FROM lib_observed ORDER BY path")
            .expect("query lib_observed");
        stmt.query_map([], |r| {
            Ok(ObservedRow {
                path: r.get(0)?,
                bytes: r.get(1)?,
                mtime_ns: r.get(2)?,
                inode: r.get(3)?,
                sha256: r.get(4)?,
            })
        })
        .and_then(|rows| rows.collect())
        .expect("read lib_observed")
    }

    pub fn runs(&self) -> Vec<RunRow> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, started_at, ended_at, library, status, files_seen, files_hashed, files_unchanged,
                        files_upserted, files_deleted, errors, message FROM lib_runs ORDER BY id",
            )
            .expect("query lib_runs");
        stmt.query_map([], |r| {
            Ok(RunRow {
                id: r.get(0)?,
                started_at: r.get(1)?,
                ended_at: r.get(2)?,
                library: r.get(3)?,
                status: r.get(4)?,
                files_seen: r.get(5)?,
                files_hashed: r.get(6)?,
                files_unchanged: r.get(7)?,
                files_upserted: r.get(8)?,
                files_deleted: r.get(9)?,
                errors: r.get(10)?,
                message: r.get(11)?,
            })
        })
        .and_then(|rows| rows.collect())
        .expect("read lib_runs")
    }

    pub fn device(&self) -> (String, i64) {
        self.conn
            .query_row("SELECT device_id, sequence FROM lib_device", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .expect("one lib_device row")
    }

    pub fn kv(&self, key: &str) -> Option<String> {
        self.conn
            .query_row("SELECT v FROM lib_kv WHERE k = ?1", [key], |r| r.get(0))
            .optional()
            .expect("read lib_kv")
    }
}

pub fn clock(json: &str) -> Clock {
    serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("vector clock {json:?} is not a map of numbers: {e}"))
}

/// The mtime of a file as the index keeps it: whole seconds and nanoseconds since the epoch.
pub fn mtime(path: &Path) -> (i64, i64) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).expect("stat");
    (
        meta.mtime(),
        meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
    )
}

pub fn inode(path: &Path) -> i64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).expect("stat").ino() as i64
}

/// Moves a file's mtime by `secs` without touching its bytes or inode.
pub fn shift_mtime(path: &Path, secs: i64) {
    let file = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open to set mtime");
    let old = file.metadata().expect("stat").modified().expect("mtime");
    let new = if secs >= 0 {
        old + Duration::from_secs(secs as u64)
    } else {
        old - Duration::from_secs(secs.unsigned_abs())
    };
    file.set_modified(new).expect("set mtime");
}

//! The first-sync benchmark (issue 17): a library of text files scanned on device A, pushed to a
//! brain, and brought to new devices: B bootstraps from the brain's snapshot (its first pull),
//! C replays the log (it pulled once while the log was short, so it replays what came after).
//! Each step is timed with the release binaries as processes on loopback, and the databases'
//! sizes are compared with the text they index.
//!
//! | step | measured | target |
//! |---|---|---|
//! | A: `agent scan` of the tree on a new database | seconds (the reference) | |
//! | A: `agent sync --push` of its events | events/s | >= 15,000 |
//! | B: `agent sync --pull`, bootstrapping | seconds, and / A's scan | <= 0.8 |
//! | C: `agent sync --pull`, replaying the log | seconds, and / A's scan | (the baseline) |
//! | databases | bytes / text bytes: A, B, the brain | device <= 2.0, brain <= 1.5 |
//!
//! `cargo bench --bench first_sync` runs the SQLite brain, and also the PostgreSQL brain when
//! `LIB_TEST_DATABASE_URL` is set (a schema of its own, dropped afterwards). Environment:
//! `BENCH_FILES` (default 100,000; 1,000,000 on request), `BENCH_DIR` (where the tree and the
//! databases go; default a temporary folder), `BENCH_STORES` (`sqlite,postgres`).

use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Instant;

const AGENT: &str = env!("CARGO_BIN_EXE_agent");
const SECRET: &str = "bench-secret-first-sync";
const FILES_PER_FOLDER: usize = 50;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn env_usize(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .replace('_', "")
            .parse()
            .map_err(|e| format!("{name}={v}: {e}").into()),
        Err(_) => Ok(default),
    }
}

/// splitmix64: the same tree on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
}

/// `files` text files of 100 to 400 pseudo-words in folders of 50; returns the text's bytes.
fn make_tree(dir: &Path, files: usize) -> Result<u64> {
    let mut rng = Rng(0x5EED_0017);
    let vocabulary: Vec<String> = (0..4000)
        .map(|_| {
            (0..rng.range(2, 10))
                .map(|_| (b'a' + rng.range(0, 25) as u8) as char)
                .collect()
        })
        .collect();
    let mut total = 0u64;
    let mut text = String::new();
    for i in 0..files {
        let folder = dir.join(format!("d{:05}", i / FILES_PER_FOLDER));
        if i % FILES_PER_FOLDER == 0 {
            std::fs::create_dir_all(&folder)?;
        }
        text.clear();
        for w in 0..rng.range(100, 400) {
            // Roughly Zipf: a few words a lot, most words rarely.
            let r = rng.range(0, 999) as f64 / 1000.0;
            let word = &vocabulary[((r * r * r) * vocabulary.len() as f64) as usize];
            text.push_str(word);
            text.push(if w % 12 == 11 { '\n' } else { ' ' });
        }
        total += text.len() as u64;
        let mut f = std::fs::File::create(folder.join(format!("f{i:07}.txt")))?;
        f.write_all(text.as_bytes())?;
    }
    Ok(total)
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_brain(store_args: &[String]) -> Result<(Proc, String)> {
    let mut child = Command::new(AGENT)
        .args(["brain", "serve", "--listen", "127.0.0.1:0"])
        .args(store_args)
        .env("LIB_SYNC_SECRET", SECRET)
        .env_remove("LIB_BRAIN_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .ok_or_else(|| format!("no address in {line:?}"))?
        .trim_end_matches(['.', ','])
        .to_owned();
    Ok((Proc(child), url))
}

/// A device: a folder with its config and database.
struct Device {
    dir: PathBuf,
}

impl Device {
    fn new(root: &Path, name: &str, library: &Path, brain: &str) -> Result<Device> {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("agent.toml"),
            format!(
                "[[library]]\nname = \"notes\"\npath = {library:?}\n[sync]\nbrain_url = \"{brain}\"\nbatch_size = 500\n"
            ),
        )?;
        Ok(Device { dir })
    }

    fn db(&self) -> PathBuf {
        self.dir.join("agent.db")
    }

    /// Runs `agent ARGS` on this device; the time it took.
    fn agent(&self, args: &[&str]) -> Result<f64> {
        let started = Instant::now();
        let out = Command::new(AGENT)
            .arg("--db")
            .arg(self.db())
            .arg("--config")
            .arg(self.dir.join("agent.toml"))
            .args(args)
            .env("LIB_SYNC_SECRET", SECRET)
            .env_remove("LIB_BRAIN_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()?;
        if !out.status.success() {
            return Err(format!(
                "agent {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        Ok(started.elapsed().as_secs_f64())
    }

    fn count(&self, sql: &str) -> Result<i64> {
        let conn = rusqlite::Connection::open(self.db())?;
        Ok(conn.query_row(sql, [], |r| r.get(0))?)
    }

    /// The database with its WAL, after a checkpoint.
    fn bytes(&self) -> Result<u64> {
        let conn = rusqlite::Connection::open(self.db())?;
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
        drop(conn);
        file_bytes(&self.db())
    }
}

fn file_bytes(db: &Path) -> Result<u64> {
    let mut total = std::fs::metadata(db)?.len();
    for suffix in ["-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        total += std::fs::metadata(PathBuf::from(p)).map_or(0, |m| m.len());
    }
    Ok(total)
}

struct Figures {
    store: &'static str,
    scan: f64,
    push: f64,
    bootstrap: f64,
    replay: f64,
    events: i64,
    device_ratio: f64,
    bootstrapped_ratio: f64,
    brain_ratio: Option<f64>,
}

fn run_store(root: &Path, store: &'static str, files: usize) -> Result<Figures> {
    let work = root.join(store);
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let tree = root.join("tree");
    let text = make_tree_once(root, &tree, files)?;

    let schema = format!("bench_first_sync_{}", std::process::id());
    let store_args: Vec<String> = match store {
        "sqlite" => vec!["--db".into(), work.join("brain.db").display().to_string()],
        _ => {
            let url = std::env::var("LIB_TEST_DATABASE_URL")?;
            vec![
                "--database-url".into(),
                url,
                "--schema".into(),
                schema.clone(),
            ]
        }
    };
    let (_brain, url) = start_brain(&store_args)?;
    let seed_dir = work.join("seed");
    std::fs::create_dir_all(&seed_dir)?;
    std::fs::write(seed_dir.join("seed.txt"), "the first event of the log")?;

    // C pulls while the log holds one event: later it replays the rest.
    let seeder = Device::new(&work, "seeder", &seed_dir, &url)?;
    seeder.agent(&["scan"])?;
    seeder.agent(&["sync", "--push"])?;
    let c = Device::new(&work, "c", &work.join("c-files"), &url)?;
    std::fs::create_dir_all(work.join("c-files"))?;
    c.agent(&["sync", "--pull"])?;

    let a = Device::new(&work, "a", &tree, &url)?;
    let scan = a.agent(&["scan"])?;
    let events = a.count("SELECT count(*) FROM lib_outbox")?;
    let push = a.agent(&["sync", "--push"])?;
    let pending = a.count("SELECT count(*) FROM lib_outbox WHERE pushed_at IS NULL")?;
    if pending != 0 {
        return Err(format!("{pending} events left unpushed").into());
    }

    std::fs::create_dir_all(work.join("b-files"))?;
    let b = Device::new(&work, "b", &work.join("b-files"), &url)?;
    let bootstrap = b.agent(&["sync", "--pull"])?;
    let replay = c.agent(&["sync", "--pull"])?;
    for (name, device) in [("B", &b), ("C", &c)] {
        let live = device.count("SELECT count(*) FROM lib_files WHERE deleted_at IS NULL")?;
        if live < files as i64 {
            return Err(format!("{name} holds {live} files, not {files}").into());
        }
    }
    let brain_ratio = match store {
        "sqlite" => Some(file_bytes(&work.join("brain.db"))? as f64 / text as f64),
        _ => None,
    };
    let figures = Figures {
        store,
        scan,
        push,
        bootstrap,
        replay,
        events,
        device_ratio: a.bytes()? as f64 / text as f64,
        bootstrapped_ratio: b.bytes()? as f64 / text as f64,
        brain_ratio,
    };
    if store == "postgres" {
        drop_schema(&schema);
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(figures)
}

/// The tree, generated once per benchmark run (both stores use it); its text bytes.
fn make_tree_once(root: &Path, tree: &Path, files: usize) -> Result<u64> {
    let marker = root.join("tree.bytes");
    if let Ok(bytes) = std::fs::read_to_string(&marker) {
        return Ok(bytes.trim().parse()?);
    }
    let started = Instant::now();
    let bytes = make_tree(tree, files)?;
    std::fs::write(&marker, bytes.to_string())?;
    eprintln!(
        "first_sync: generated {files} files ({:.0} MB of text) in {:.0} s",
        bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    Ok(bytes)
}

fn drop_schema(schema: &str) {
    let Ok(url) = std::env::var("LIB_TEST_DATABASE_URL") else {
        return;
    };
    let _ = Command::new("psql")
        .arg(url)
        .args([
            "-q",
            "-c",
            &format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn run() -> Result<()> {
    let files = env_usize("BENCH_FILES", 100_000)?;
    let tmp;
    let root = match std::env::var_os("BENCH_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    std::fs::create_dir_all(&root)?;
    let default_stores = if std::env::var_os("LIB_TEST_DATABASE_URL").is_some() {
        "sqlite,postgres"
    } else {
        "sqlite"
    };
    let stores = std::env::var("BENCH_STORES").unwrap_or_else(|_| default_stores.into());
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    let mut report = format!(
        "## first_sync benchmark, {now}\n\n- {files} text files, 50 a folder, 100 to 400 words each\n\n\
         | brain | A: cold scan (s) | A: push (s, events/s) | B: bootstrap (s, / scan) | C: replay (s, / scan) | A db / text | B db / text | brain db / text |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for store in stores.split(',') {
        let store: &'static str = match store.trim() {
            "sqlite" => "sqlite",
            "postgres" => "postgres",
            other => return Err(format!("BENCH_STORES: unknown store {other:?}").into()),
        };
        let f = run_store(&root, store, files)?;
        report.push_str(&format!(
            "| {} | {:.1} | {:.1} ({:.0}) | {:.1} ({:.2}x) | {:.1} ({:.2}x) | {:.2} | {:.2} | {} |\n",
            f.store,
            f.scan,
            f.push,
            f.events as f64 / f.push,
            f.bootstrap,
            f.bootstrap / f.scan,
            f.replay,
            f.replay / f.scan,
            f.device_ratio,
            f.bootstrapped_ratio,
            f.brain_ratio.map_or("-".into(), |r| format!("{r:.2}")),
        ));
    }
    println!("{report}");
    let _ = std::fs::write(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-first-sync.md"),
        &report,
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench first_sync: error: {e}");
            ExitCode::FAILURE
        }
    }
}

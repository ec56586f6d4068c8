//! The scan benchmark: the speed and memory targets of issue 2, each measured as a ratio
//! against a baseline command timed in the same benchmark run, on the same files and machine.
//!
//! `cargo bench --bench scan` builds the release `agent` and runs this program. It generates two
//! deterministic trees (random bytes and text), then times three scenarios:
//!
//! | scenario    | agent                              | baseline                                   | target |
//! |-------------|------------------------------------|--------------------------------------------|--------|
//! | cold binary | `agent scan binary/` on a new db   | `find -print0 \| xargs -0 -P2 sha256sum`   | <= 1.0 |
//! | cold text   | `agent scan text/` on a new db     | sqlite3 shell loading the texts into FTS5  | <= 1.3 |
//! | warm rescan | `agent scan binary/`, nothing new  | `find -printf '%s %T@\n'`                  | <= 2.0 |
//!
//! and the agent's peak resident memory must stay under 100 MiB in all three.
//!
//! Environment:
//! - `BENCH_FILES` files per tree (default 100000), in `BENCH_FILES / 50` folders;
//! - `BENCH_RUNS` timed runs of each command (default 5; the text scenario uses at most 3,
//!   `BENCH_TEXT_RUNS` overrides);
//! - `BENCH_DIR` keep the trees there and reuse them in later runs (default: a temp dir);
//! - `BENCH_TIMEOUT` seconds before one run is killed and the benchmark fails (default 900);
//! - `BENCH_NOISE_PCT` discard and repeat a pair of runs when other work on the machine took more
//!   than this percentage of one core while it ran (default 30; at most 3 repeats per pair);
//! - `BENCH_STRICT=1` exit non-zero when a target is missed (otherwise only a wrong result,
//!   such as a failed agent run or a miscount, fails the benchmark).
//!
//! "Cold" means a new database, not a cold page cache: dropping caches needs privileges the
//! machines we run on do not give, so every tree is read once before the timed runs and both
//! commands then read from the page cache. That measures the work each command does, which is
//! what the ratios compare.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// The binary cargo built for this benchmark. The runs use a copy of it (see `run`).
const BUILT_AGENT: &str = env!("CARGO_BIN_EXE_agent");
const FILES_PER_FOLDER: usize = 50;
const MIN_SIZE: usize = 1024;
const MAX_SIZE: usize = 8 * 1024;
const VOCABULARY: usize = 4000;
const RSS_TARGET_MIB: f64 = 100.0;
/// Bumped whenever the generator changes, so a reused `BENCH_DIR` tree is rebuilt.
const TREE_VERSION: u32 = 1;

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bench scan: error: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

struct Settings {
    files: usize,
    runs: usize,
    text_runs: usize,
    timeout: Duration,
    strict: bool,
    /// A pair of runs during which other work on the machine took more than this share of a
    /// core is discarded and run again (see `Bench::compare`).
    noise: f64,
}

fn env_usize(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => {
            let n: usize = v
                .trim()
                .parse()
                .map_err(|_| format!("{name}={v:?} is not a number"))?;
            if n == 0 {
                return Err(format!("{name} must be at least 1").into());
            }
            Ok(n)
        }
        _ => Ok(default),
    }
}

fn run() -> Result<ExitCode> {
    let runs = env_usize("BENCH_RUNS", 5)?;
    let settings = Settings {
        files: env_usize("BENCH_FILES", 100_000)?,
        runs,
        // FTS5 indexing makes the text scenario the slowest by far; three runs give a median.
        text_runs: env_usize("BENCH_TEXT_RUNS", runs.min(3))?,
        timeout: Duration::from_secs(env_usize("BENCH_TIMEOUT", 900)? as u64),
        strict: std::env::var("BENCH_STRICT").is_ok_and(|v| v == "1"),
        noise: env_usize("BENCH_NOISE_PCT", 30)? as f64 / 100.0,
    };

    // The temp dir must outlive every run, so it is held here until the end of `run`.
    let (_temp, root) = match std::env::var_os("BENCH_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            fs::create_dir_all(&dir)?;
            (None, dir.canonicalize()?)
        }
        _ => {
            let t = tempfile::Builder::new()
                .prefix("lib-agent-bench-")
                .tempdir()?;
            let p = t.path().canonicalize()?;
            (Some(t), p)
        }
    };
    // Paths go into `sh -c` and SQL strings below; a quote would need escaping in both.
    if root.to_string_lossy().contains(['\'', '"', '\\']) {
        return Err(format!(
            "bench dir {} must not contain quotes or backslashes",
            root.display()
        )
        .into());
    }

    let binary = root.join("binary");
    let text = root.join("text");
    eprintln!(
        "bench scan: {} files per tree under {}",
        settings.files,
        root.display()
    );
    ensure_tree(&root, &binary, Kind::Binary, settings.files)?;
    ensure_tree(&root, &text, Kind::Text, settings.files)?;

    let work = root.join("run");
    fs::create_dir_all(&work)?;
    let empty_config = work.join("empty.toml");
    fs::write(&empty_config, "")?;
    // Run a private copy: someone rebuilding target/release/agent during the benchmark must
    // not swap the binary between runs (or fail a spawn with "text file busy").
    let agent = work.join("agent");
    fs::copy(BUILT_AGENT, &agent)?;
    // Taken now, next to the copy: the working tree may change while the benchmark runs.
    let source = first_line(
        Command::new("git")
            .arg("-C")
            .arg(env!("CARGO_MANIFEST_DIR"))
            .args(["describe", "--always", "--dirty"]),
    );
    let bench = Bench {
        settings: &settings,
        work: &work,
        config: &empty_config,
        agent: &agent,
    };

    let rows = vec![
        bench.cold_binary(&binary)?,
        bench.cold_text(&text)?,
        bench.warm_rescan(&binary)?,
    ];

    let report = report(&settings, &agent, &source, &rows)?;
    println!("{report}");
    let out = target_dir().join("bench-scan.md");
    fs::create_dir_all(out.parent().unwrap())?;
    fs::write(&out, &report)?;
    eprintln!("bench scan: report written to {}", out.display());

    let missed: Vec<&str> = rows.iter().filter(|r| r.missed()).map(|r| r.name).collect();
    if !missed.is_empty() {
        eprintln!("bench scan: target missed: {}", missed.join(", "));
        if settings.strict {
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
    }
}

// ---------------------------------------------------------------------------------------------
// Trees

/// A small, fast, seeded generator (splitmix64): the trees must be the same on every machine
/// and in every run, so figures from two runs describe the same files.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi` (the modulo bias is irrelevant at these ranges).
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Binary,
    Text,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Binary => "binary",
            Kind::Text => "text",
        }
    }
    fn seed(self) -> u64 {
        match self {
            Kind::Binary => 0x5EED_0001,
            Kind::Text => 0x5EED_0002,
        }
    }
}

/// Makes `dir` hold the tree of `kind` with `files` files, reusing it when its marker matches.
/// The marker sits beside the tree, not in it, so it is not one of the scanned files; it is
/// written last, so an interrupted generation is never reused.
fn ensure_tree(root: &Path, dir: &Path, kind: Kind, files: usize) -> Result<()> {
    let marker = root.join(format!("{}.marker", kind.name()));
    let want = format!(
        "lib-agent scan bench tree v{TREE_VERSION} kind={} files={files}\n",
        kind.name()
    );
    match fs::read_to_string(&marker) {
        Ok(have) if have == want && dir.is_dir() => {
            eprintln!("bench scan: reusing {}", dir.display());
            return Ok(());
        }
        Ok(_) => {
            // Ours (it has a marker), but of another size or version.
            fs::remove_file(&marker)?;
            if dir.exists() {
                fs::remove_dir_all(dir)?;
            }
        }
        Err(_) if dir.exists() => {
            // Never delete a folder this program did not make (BENCH_DIR may point anywhere).
            return Err(format!(
                "{} exists without {}; remove it or choose another BENCH_DIR",
                dir.display(),
                marker.display()
            )
            .into());
        }
        Err(_) => {}
    }

    let started = Instant::now();
    eprint!(
        "bench scan: generating {} ({files} files)... ",
        dir.display()
    );
    let _ = io::stderr().flush();
    let mut rng = Rng(kind.seed());
    let vocabulary = vocabulary(&mut Rng(0x5EED_0003));
    let mut buf = Vec::with_capacity(MAX_SIZE + 64);
    let mut folder = PathBuf::new();
    for i in 0..files {
        // 50 files per folder, 50 folders per top folder: d000/e00 .. d039/e49 for 100k files.
        if i % FILES_PER_FOLDER == 0 {
            let f = i / FILES_PER_FOLDER;
            folder = dir
                .join(format!("d{:03}", f / 50))
                .join(format!("e{:02}", f % 50));
            fs::create_dir_all(&folder)?;
        }
        let size = rng.range(MIN_SIZE, MAX_SIZE);
        buf.clear();
        let ext = match kind {
            Kind::Binary => {
                fill_random(&mut rng, &mut buf, size);
                "bin"
            }
            Kind::Text => {
                fill_text(&mut rng, &vocabulary, &mut buf, size);
                "txt"
            }
        };
        fs::write(folder.join(format!("f{i:06}.{ext}")), &buf)?;
    }
    fs::write(&marker, want)?;
    eprintln!("{:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn fill_random(rng: &mut Rng, buf: &mut Vec<u8>, size: usize) {
    while buf.len() < size {
        buf.extend_from_slice(&rng.next().to_le_bytes());
    }
    buf.truncate(size);
}

/// Pseudo-words of 2 to 10 letters; about one in fifty carries a non-ASCII letter so the texts
/// exercise UTF-8 handling and the tokenizer's folding, as real notes would.
fn vocabulary(rng: &mut Rng) -> Vec<String> {
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzeeaaiioonnrrsstt";
    const ACCENTED: &[&str] = &["é", "è", "ü", "ö", "ß", "ñ", "ç", "å", "ø", "ł"];
    (0..VOCABULARY)
        .map(|_| {
            let len = rng.range(2, 10);
            let mut w: String = (0..len)
                .map(|_| LETTERS[rng.range(0, LETTERS.len() - 1)] as char)
                .collect();
            if rng.range(0, 49) == 0 {
                w.push_str(ACCENTED[rng.range(0, ACCENTED.len() - 1)]);
            }
            w
        })
        .collect()
}

/// Words until `size` bytes, cut on a character boundary. Word ranks follow a log-uniform
/// (roughly Zipf) law: natural text reuses a few words a lot, which shapes the FTS5 posting
/// lists; a uniform draw would make every term rare and the index unrealistically large.
fn fill_text(rng: &mut Rng, vocabulary: &[String], buf: &mut Vec<u8>, size: usize) {
    let mut words_on_line = 0;
    while buf.len() < size {
        let rank = ((vocabulary.len() as f64).powf(rng.unit()) as usize).saturating_sub(1);
        buf.extend_from_slice(vocabulary[rank.min(vocabulary.len() - 1)].as_bytes());
        words_on_line += 1;
        if words_on_line >= rng.range(6, 16) {
            buf.push(b'\n');
            words_on_line = 0;
        } else {
            buf.push(b' ');
        }
    }
    let mut cut = size;
    while std::str::from_utf8(&buf[..cut]).is_err() {
        cut -= 1;
    }
    buf.truncate(cut);
}

/// Reads every file once, untimed, so the first timed run does not pay for the disk and the
/// ones after it do not profit from it: both commands read from the page cache.
fn warm_cache(dir: &Path) -> Result<()> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                stack.push(entry.path());
            } else {
                fs::read(entry.path())?;
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Running one command

struct Sample {
    secs: f64,
    /// Peak resident set of the process and its reaped descendants, in KiB (`ru_maxrss`).
    maxrss_kib: i64,
    /// CPU seconds the whole machine spent outside this command while it ran: other jobs on a
    /// shared machine (and kernel threads, such as writeback). Near zero means a clean run.
    foreign_cpu: f64,
}

/// Busy CPU seconds of the whole machine since boot, from the first line of /proc/stat
/// (user, nice, system, irq, softirq, steal; in USER_HZ ticks, 100 per second on Linux).
fn machine_busy_secs() -> Option<f64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    let busy = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum::<u64>();
    Some(busy as f64 / 100.0)
}

fn timeval_secs(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 / 1e6
}

/// CPU seconds this benchmark process has used (its polling loop), not counted as foreign.
fn own_cpu_secs() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    timeval_secs(u.ru_utime) + timeval_secs(u.ru_stime)
}

/// Waits (up to two minutes) until the rest of the machine has used less than `limit` of a
/// core over one second, so a timed pair does not start in the middle of someone's build.
fn wait_for_quiet(limit: f64) {
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let (Some(a), own) = (machine_busy_secs(), own_cpu_secs()) else {
            return;
        };
        std::thread::sleep(Duration::from_secs(1));
        let Some(b) = machine_busy_secs() else { return };
        let busy = b - a - (own_cpu_secs() - own);
        if busy < limit || Instant::now() >= until {
            return;
        }
    }
}

/// Runs `cmd` to completion with stdout and stderr in files, and returns its wall time and peak
/// memory. The wall time is taken around the whole child process, spawn to reap, because that is
/// what a user waits for. The child is reaped with `wait4` rather than `Child::wait` because only
/// `wait4` hands back the child's `rusage`, hence `ru_maxrss`.
fn run_timed(
    cmd: &mut Command,
    out: &Path,
    err: &Path,
    timeout: Duration,
) -> Result<(Sample, String)> {
    cmd.stdin(Stdio::null())
        .stdout(File::create(out)?)
        .stderr(File::create(err)?);
    let busy_before = machine_busy_secs();
    let own_before = own_cpu_secs();
    // Its own process group, so a timeout kills the whole pipeline of a baseline, not just `sh`.
    std::os::unix::process::CommandExt::process_group(cmd, 0);
    let started = Instant::now();
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))?;
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; zeroed is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let deadline = started + timeout;
    loop {
        // Poll with WNOHANG so a hung run can be killed at the deadline. The pid stays ours
        // until it is reaped, so killing it cannot hit a reused pid. Polling every millisecond
        // adds at most that to a measurement of seconds, equally for agent and baseline.
        // SAFETY: pid is our unreaped child; status and usage are valid for writes.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("wait4({pid}): {e}").into());
        }
        if Instant::now() >= deadline {
            // SAFETY: as above; the group's id is the unreaped pid, so it is still ours. After
            // SIGKILL a blocking wait4 returns promptly.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
                libc::wait4(pid, &mut status, 0, &mut usage);
            }
            return Err(format!(
                "{cmd:?} still running after {} s; killed (BENCH_TIMEOUT)",
                timeout.as_secs()
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let secs = started.elapsed().as_secs_f64();
    // The Child handle must not wait again; dropping it neither waits nor kills.
    drop(child);

    let own_cpu = timeval_secs(usage.ru_utime) + timeval_secs(usage.ru_stime);
    let foreign_cpu = match (busy_before, machine_busy_secs()) {
        (Some(a), Some(b)) => (b - a - own_cpu - (own_cpu_secs() - own_before)).max(0.0),
        _ => 0.0,
    };
    let sample = Sample {
        secs,
        maxrss_kib: usage.ru_maxrss,
        foreign_cpu,
    };
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok((sample, fs::read_to_string(out).unwrap_or_default()))
    } else {
        let how = if libc::WIFEXITED(status) {
            format!("exit code {}", libc::WEXITSTATUS(status))
        } else {
            format!("signal {}", libc::WTERMSIG(status))
        };
        let stderr = fs::read_to_string(err).unwrap_or_default();
        Err(format!("{cmd:?} failed ({how}); stderr:\n{stderr}").into())
    }
}

fn sh(script: String) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c").arg(script);
    c
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios

struct Row {
    name: &'static str,
    /// None when the baseline cannot run here (no sqlite3); the row says so.
    result: Option<Measured>,
    target: f64,
    note: String,
}

struct Measured {
    agent: Vec<f64>,
    baseline: Vec<f64>,
    agent_rss_mib: f64,
    /// Sum of `Sample::foreign_cpu` over every timed run of both commands.
    foreign_cpu: f64,
    /// Sum of the wall time of every timed run of both commands.
    wall: f64,
    /// Pairs thrown away because other work disturbed them, and pairs kept although disturbed
    /// (the repeats ran out).
    discarded: usize,
    kept_noisy: usize,
}

impl Measured {
    fn ratio(&self) -> f64 {
        median(&self.agent) / median(&self.baseline)
    }
}

impl Row {
    fn time_ok(&self) -> bool {
        // A skipped row misses nothing.
        match &self.result {
            Some(m) => m.ratio() <= self.target,
            None => true,
        }
    }
    fn rss_ok(&self) -> bool {
        match &self.result {
            Some(m) => m.agent_rss_mib < RSS_TARGET_MIB,
            None => true,
        }
    }
    fn missed(&self) -> bool {
        !self.time_ok() || !self.rss_ok()
    }
}

struct Bench<'a> {
    settings: &'a Settings,
    work: &'a Path,
    config: &'a Path,
    agent: &'a Path,
}

impl Bench<'_> {
    fn agent_scan(&self, db: &Path, tree: &Path) -> Command {
        let mut c = Command::new(self.agent);
        c.arg("--db")
            .arg(db)
            .arg("--config")
            .arg(self.config)
            .arg("--json")
            .arg("scan")
            .arg(tree);
        // A log filter left in the environment would make the agent write more than usual.
        c.env_remove("LIB_LOG").env_remove("RUST_LOG");
        c
    }

    /// One agent run, checked: exit 0, valid JSON, `seen` equal to the tree's file count, and
    /// `hashed` as expected (all files on a new database, none on a warm rescan).
    fn run_agent(&self, db: &Path, tree: &Path, expect_hashed: usize) -> Result<Sample> {
        let out = self.work.join("agent.out");
        let err = self.work.join("agent.err");
        let (sample, stdout) = run_timed(
            &mut self.agent_scan(db, tree),
            &out,
            &err,
            self.settings.timeout,
        )?;
        let stderr = || fs::read_to_string(&err).unwrap_or_default();
        let json: serde_json::Value = serde_json::from_str(&stdout).map_err(|e| {
            format!(
                "agent --json printed no valid JSON ({e}):\n{stdout}\nstderr:\n{}",
                stderr()
            )
        })?;
        let field = |k: &str| json.get(k).and_then(|v| v.as_u64());
        let n = self.settings.files as u64;
        if field("seen") != Some(n)
            || field("hashed") != Some(expect_hashed as u64)
            || json.get("ok") != Some(&serde_json::Value::Bool(true))
        {
            return Err(format!(
                "agent scan of {} is wrong: expected seen={n} hashed={expect_hashed} ok=true, got seen={:?} hashed={:?} ok={:?}\n{stdout}\nstderr:\n{}",
                tree.display(),
                field("seen"),
                field("hashed"),
                json.get("ok"),
                stderr()
            )
            .into());
        }
        Ok(sample)
    }

    fn run_baseline(&self, mut cmd: Command) -> Result<Sample> {
        let out = self.work.join("baseline.out");
        let err = self.work.join("baseline.err");
        Ok(run_timed(&mut cmd, &out, &err, self.settings.timeout)?.0)
    }

    /// Times `runs` pairs, alternating which command goes first. The machine is shared and
    /// noisy: alternating spreads slow spells (another job, a thermal dip, writeback of the
    /// last run's database) over both commands instead of over one, and the median then drops
    /// the outliers that a mean would carry. On two cores a parallel build next door can still
    /// double a run, so a pair during which other work took more than `noise` of a core is
    /// discarded and repeated, the same rule for both commands; the report counts them.
    fn compare(
        &self,
        name: &str,
        runs: usize,
        mut agent: impl FnMut() -> Result<Sample>,
        mut baseline: impl FnMut() -> Result<Sample>,
    ) -> Result<Measured> {
        const REPEATS: usize = 3;
        let noise = self.settings.noise;
        let mut m = Measured {
            agent: Vec::new(),
            baseline: Vec::new(),
            agent_rss_mib: 0.0,
            foreign_cpu: 0.0,
            wall: 0.0,
            discarded: 0,
            kept_noisy: 0,
        };
        for i in 0..runs {
            let agent_first = i % 2 == 1;
            for attempt in 0..=REPEATS {
                wait_for_quiet(noise);
                let (a, b) = if agent_first {
                    let a = agent()?;
                    (a, baseline()?)
                } else {
                    let b = baseline()?;
                    (agent()?, b)
                };
                let share = |s: &Sample| s.foreign_cpu / s.secs.max(1e-3);
                // /proc/stat counts in 10 ms ticks: below 50 ms of foreign CPU, the share of a
                // short run is rounding, not a disturbance.
                let disturbed = |s: &Sample| share(s) > noise && s.foreign_cpu > 0.05;
                let noisy = disturbed(&a) || disturbed(&b);
                eprintln!(
                    "bench scan: {name}: run {}/{runs}: agent {:.3} s, baseline {:.3} s; other work {:.0}%, {:.0}% of a core{}",
                    i + 1,
                    a.secs,
                    b.secs,
                    100.0 * share(&a),
                    100.0 * share(&b),
                    if noisy && attempt < REPEATS { ": disturbed, repeating" } else { "" }
                );
                if noisy && attempt < REPEATS {
                    m.discarded += 1;
                    continue;
                }
                m.kept_noisy += noisy as usize;
                m.agent.push(a.secs);
                m.baseline.push(b.secs);
                m.agent_rss_mib = m.agent_rss_mib.max(a.maxrss_kib as f64 / 1024.0);
                m.foreign_cpu += a.foreign_cpu + b.foreign_cpu;
                m.wall += a.secs + b.secs;
                break;
            }
        }
        Ok(m)
    }

    fn fresh_db(&self, name: &str) -> Result<PathBuf> {
        let db = self.work.join(name);
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let p = PathBuf::from(format!("{}{suffix}", db.display()));
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("cannot remove {}: {e}", p.display()).into()),
            }
        }
        Ok(db)
    }

    fn cold_binary(&self, tree: &Path) -> Result<Row> {
        warm_cache(tree)?;
        let n = self.settings.files;
        let m = self.compare(
            "cold binary",
            self.settings.runs,
            || {
                let db = self.fresh_db("cold-binary.db")?;
                self.run_agent(&db, tree, n)
            },
            || {
                self.run_baseline(sh(format!(
                    "find '{}' -type f -print0 | xargs -0 -P2 sha256sum > /dev/null",
                    tree.display()
                )))
            },
        )?;
        Ok(Row {
            name: "cold binary",
            result: Some(m),
            target: 1.0,
            note: "`find DIR -type f -print0 | xargs -0 -P2 sha256sum`".into(),
        })
    }

    fn cold_text(&self, tree: &Path) -> Result<Row> {
        let note =
            "sqlite3 shell: FTS5 table filled from `fsdir(DIR)` in one transaction".to_string();
        if Command::new("sqlite3")
            .arg("-version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            eprintln!("bench scan: sqlite3 not found on PATH: cold text skipped");
            return Ok(Row {
                name: "cold text",
                result: None,
                target: 1.3,
                note: format!("skipped: no sqlite3 ({note})"),
            });
        }
        warm_cache(tree)?;
        let n = self.settings.files;
        // SQL integer literals are decimal: S_IFMT is 0o170000 = 61440 and S_IFREG is
        // 0o100000 = 32768. (Written as 0170000 they would be decimal and match nothing.)
        let sql = format!(
            "CREATE VIRTUAL TABLE f USING fts5(path, content); BEGIN; \
             INSERT INTO f SELECT name, CAST(data AS TEXT) FROM fsdir('{}') \
             WHERE data IS NOT NULL AND (mode & 61440) = 32768; COMMIT;",
            tree.display()
        );
        let m = self.compare(
            "cold text",
            self.settings.text_runs,
            || {
                let db = self.fresh_db("cold-text.db")?;
                self.run_agent(&db, tree, n)
            },
            || {
                let db = self.fresh_db("baseline-fts.db")?;
                let mut c = Command::new("sqlite3");
                c.arg(&db).arg(&sql);
                let s = self.run_baseline(c)?;
                // Untimed: a baseline that loads nothing would flatter nobody honestly.
                let count = Command::new("sqlite3")
                    .arg(&db)
                    .arg("SELECT count(*) FROM f")
                    .output()?;
                let count = String::from_utf8_lossy(&count.stdout).trim().to_string();
                if count != n.to_string() {
                    return Err(
                        format!("sqlite3 baseline loaded {count:?} rows, expected {n}").into(),
                    );
                }
                Ok(s)
            },
        )?;
        Ok(Row {
            name: "cold text",
            result: Some(m),
            target: 1.3,
            note,
        })
    }

    fn warm_rescan(&self, tree: &Path) -> Result<Row> {
        warm_cache(tree)?;
        let n = self.settings.files;
        // One untimed cold scan fills the database that every timed run then rescans.
        let db = self.fresh_db("warm.db")?;
        self.run_agent(&db, tree, n)?;
        let m = self.compare(
            "warm rescan",
            self.settings.runs,
            || self.run_agent(&db, tree, 0),
            || {
                self.run_baseline(sh(format!(
                    "find '{}' -type f -printf '%s %T@\\n' > /dev/null",
                    tree.display()
                )))
            },
        )?;
        Ok(Row {
            name: "warm rescan",
            result: Some(m),
            target: 2.0,
            note: "`find DIR -type f -printf '%s %T@\\n'`; the agent hashed 0 files in every run"
                .into(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Report

fn first_line(cmd: &mut Command) -> String {
    cmd.output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

fn report(s: &Settings, agent: &Path, source: &str, rows: &[Row]) -> Result<String> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let mem = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
        })
        .and_then(|kib| kib.parse::<u64>().ok())
        .map(|kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0))
        .unwrap_or_else(|| "unknown".into());
    let date = first_line(Command::new("date").arg("-u").arg("+%Y-%m-%d %H:%M UTC"));

    let mut r = String::new();
    writeln!(r, "## scan benchmark, {date}\n")?;
    writeln!(
        r,
        "- machine: {cores} cores ({cpu}), {mem} RAM, Linux {kernel}"
    )?;
    writeln!(
        r,
        "- agent: {} (git {source})",
        first_line(Command::new(agent).arg("--version"))
    )?;
    writeln!(
        r,
        "- sqlite3 shell: {}",
        first_line(Command::new("sqlite3").arg("-version"))
    )?;
    writeln!(
        r,
        "- files per tree: {} of 1 to 8 KiB in {} folders",
        s.files,
        s.files.div_ceil(FILES_PER_FOLDER)
    )?;
    writeln!(
        r,
        "- runs: {} per command ({} for cold text), alternating agent and baseline; medians",
        s.runs, s.text_runs
    )?;
    writeln!(
        r,
        "- page cache warm for both commands; \"cold\" means a new database\n"
    )?;
    writeln!(r, "| scenario | agent median (s) | baseline median (s) | ratio | target | result | agent peak RSS (MiB, target < 100) |")?;
    writeln!(r, "|---|---:|---:|---:|---:|---|---:|")?;
    for row in rows {
        match &row.result {
            None => writeln!(
                r,
                "| {} | - | - | - | <= {:.1} | skipped | - |",
                row.name, row.target
            )?,
            Some(m) => {
                let result = match (row.time_ok(), row.rss_ok()) {
                    (true, true) => "pass".to_string(),
                    (false, true) => {
                        format!("FAIL: {:.0}% over", (m.ratio() / row.target - 1.0) * 100.0)
                    }
                    (true, false) => "FAIL: memory".to_string(),
                    (false, false) => format!(
                        "FAIL: {:.0}% over, memory",
                        (m.ratio() / row.target - 1.0) * 100.0
                    ),
                };
                writeln!(
                    r,
                    "| {} | {:.3} | {:.3} | {:.2} | <= {:.1} | {} | {:.1} |",
                    row.name,
                    median(&m.agent),
                    median(&m.baseline),
                    m.ratio(),
                    row.target,
                    result,
                    m.agent_rss_mib
                )?;
            }
        }
    }
    writeln!(r, "\nBaselines and every run, in seconds. \"Other CPU\" is the CPU time the machine spent outside")?;
    writeln!(r, "the measured command during the timed runs, as a share of their wall time: other jobs on a shared")?;
    writeln!(r, "machine, or kernel writeback. Near 0% is a clean measurement; tens of percent means the figures are")?;
    writeln!(
        r,
        "disturbed and worth a rerun. A pair of runs with more than {:.0}% is repeated (BENCH_NOISE_PCT).\n",
        s.noise * 100.0
    )?;
    for row in rows {
        write!(r, "- {}: baseline {}", row.name, row.note)?;
        if let Some(m) = &row.result {
            let list = |v: &[f64]| {
                v.iter()
                    .map(|x| format!("{x:.3}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            write!(
                r,
                "; agent [{}]; baseline [{}]",
                list(&m.agent),
                list(&m.baseline)
            )?;
            write!(
                r,
                "; other CPU {:.2} s ({:.0}% of one core)",
                m.foreign_cpu,
                100.0 * m.foreign_cpu / m.wall.max(1e-9)
            )?;
            write!(r, "; pairs repeated because disturbed: {}", m.discarded)?;
            if m.kept_noisy > 0 {
                write!(r, "; **{} pair(s) kept although disturbed**", m.kept_noisy)?;
            }
        }
        writeln!(r)?;
    }
    Ok(r)
}

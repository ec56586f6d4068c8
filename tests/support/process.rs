//! Real processes of the binary, for the tests that kill them: the agent's command with a clean
//! environment, and a brain that can be killed and started again at the same address.
#![allow(dead_code)] // each test crate uses its own part of it

use std::fs::File;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The shared secret of every process these tests start.
pub use super::brain::SECRET;

/// `agent` with none of the caller's settings in its environment and the test secret set; its
/// output is appended to `log` when given, else discarded.
pub fn agent(log: Option<&Path>) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_agent"));
    for var in [
        "LIB_AGENT_CONFIG",
        "LIB_SQLITE_PATH",
        "LIB_BRAIN_URL",
        "LIB_SUPABASE_FN_URL",
        "LIB_BRAIN_CA_FILE",
        "LIB_SYNC_BATCH_SIZE",
        "LIB_LOG",
        "RUST_LOG",
    ] {
        c.env_remove(var);
    }
    c.env("LIB_SYNC_SECRET", SECRET).stdin(Stdio::null());
    match log {
        Some(path) => {
            let file = File::options()
                .create(true)
                .append(true)
                .open(path)
                .expect("open the log file");
            c.env("LIB_LOG", "info")
                .stdout(Stdio::from(file.try_clone().expect("log file")))
                .stderr(Stdio::from(file));
        }
        None => {
            c.stdout(Stdio::null()).stderr(Stdio::null());
        }
    }
    c
}

/// The last lines of a log file, for a failure message.
pub fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Kills (SIGKILL) and reaps a child, if there is one.
pub fn kill9(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// `agent brain serve` on a SQLite file, at a fixed address.
pub struct BrainProcess {
    pub db: PathBuf,
    pub addr: String,
    log: Option<PathBuf>,
    child: Option<Child>,
}

impl BrainProcess {
    /// Starts a brain keeping its database in `home`, and its output in `home/log.txt` when
    /// `logged`; returns once it accepts connections.
    pub fn start(home: &Path, logged: bool) -> BrainProcess {
        std::fs::create_dir_all(home).expect("brain home");
        let mut brain = BrainProcess {
            db: home.join("brain.db"),
            // Reserved, not port 0: the brain is killed and started again at it.
            addr: super::net::reserved_addr(),
            log: logged.then(|| home.join("log.txt")),
            child: None,
        };
        brain.restart();
        brain
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts it again (after [`BrainProcess::kill9`]) at the same address and database.
    pub fn restart(&mut self) {
        let child = agent(self.log.as_deref())
            .args([
                "--config",
                "/dev/null",
                "brain",
                "serve",
                "--webhook-allow-private",
            ])
            .arg("--listen")
            .arg(&self.addr)
            .arg("--db")
            .arg(&self.db)
            .spawn()
            .expect("start the brain");
        self.child = Some(child);
        let started = Instant::now();
        while TcpStream::connect(&self.addr).is_err() {
            if started.elapsed() > Duration::from_secs(20) {
                let log = self.log.as_deref().map(|l| log_tail(l, 15));
                panic!("the brain did not start within 20 s: {log:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn kill9(&mut self) {
        kill9(&mut self.child);
    }
}

impl Drop for BrainProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

//! The real binary under chaos: three `agent run` processes and one `agent brain serve` on
//! loopback, random file changes in the three library folders, and random `kill -9` and restarts
//! of the agents and of the brain. When the chaos stops, every device must have noticed every
//! file on its disk, pushed every change it made, and hold the brain's state row for row.
//!
//! The choices come from a seed printed at the start (`CHAOS_SEED=<n>` repeats them; the timing
//! of real processes does not repeat). `CHAOS_SECS` sets how long the chaos lasts (default 12).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use lib_agent::model::merge::EntityState;
use lib_agent::model::{VectorClock, Version};
use lib_agent::store::read;
use rusqlite::{Connection, OpenFlags};
use sha2::{Digest, Sha256};

use crate::support;
use crate::support::process::BrainProcess;
use crate::support::rng::Rng;

const NAMES: &[&str] = &["a.md", "b.md", "c.txt", "sub/d.md", "sub/e.txt", "f.md"];
const SHARED: &[&str] = &["same words\n", "other words here\n", "third\n"];

/// A child process that may be killed and started again.
struct Process {
    name: String,
    home: PathBuf,
    child: Option<Child>,
}

impl Process {
    fn kill9(&mut self) {
        support::process::kill9(&mut self.child);
    }

    fn log_tail(&self) -> String {
        support::process::log_tail(&self.home.join("log.txt"), 15)
    }

    /// SIGTERM, and the exit status within 30 s.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if started.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                panic!(
                    "{} did not stop on SIGTERM within 30 s\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}

struct Device {
    process: Process,
    folder: PathBuf,
}

impl Device {
    fn start(&mut self, brain_url: &str) {
        let home = &self.process.home;
        let child = support::process::agent(Some(&home.join("log.txt")))
            .arg("--config")
            .arg(home.join("agent.toml"))
            .arg("--db")
            .arg(home.join("agent.db"))
            .arg("run")
            .env("LIB_BRAIN_URL", brain_url)
            .spawn()
            .expect("spawn an agent");
        self.process.child = Some(child);
    }

    fn db(&self) -> Option<Connection> {
        let path = self.process.home.join("agent.db");
        path.exists().then(|| read_only(&path))
    }
}

/// An entity's winner and merge state, as text every replica must hold identically.
fn merge_row(key: &str, state: &EntityState) -> Vec<String> {
    vec![
        key.to_owned(),
        state.winner().event_ulid.clone(),
        state.seen_vc.to_json(),
        serde_json::to_string(&state.siblings).unwrap_or_default(),
    ]
}

fn read_only(path: &Path) -> Connection {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open read-only");
    conn.busy_timeout(Duration::from_secs(5))
        .expect("busy timeout");
    conn
}

fn rows<T: rusqlite::types::FromSql + Ord>(
    conn: &Connection,
    sql: &str,
) -> Result<BTreeSet<Vec<T>>, String> {
    let mut stmt = conn.prepare(sql).map_err(|e| e.to_string())?;
    let width = stmt.column_count();
    let rows = stmt
        .query_map([], |r| {
            (0..width)
                .map(|i| r.get::<_, T>(i))
                .collect::<Result<Vec<T>, _>>()
        })
        .map_err(|e| e.to_string())?;
    rows.collect::<Result<_, _>>().map_err(|e| e.to_string())
}

/// The files on disk by key, with the sha256 of their bytes.
fn disk(folder: &Path) -> BTreeSet<Vec<String>> {
    walkdir::WalkDir::new(folder)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let rel = e.path().strip_prefix(folder).expect("under the folder");
            let bytes = std::fs::read(e.path()).unwrap_or_default();
            vec![
                format!("notes/{}", rel.display()),
                hex::encode(Sha256::digest(&bytes)),
            ]
        })
        .collect()
}

/// `Ok` when every device agrees with the brain; else what differs first.
fn agreement(brain: &BrainProcess, devices: &[Device]) -> Result<(), String> {
    let b = read_only(&brain.db);
    let entities: BTreeSet<Vec<String>> =
        rows::<String>(&b, "SELECT entity_key, seen_vc, siblings FROM entities")?
            .into_iter()
            .map(|row| match row.as_slice() {
                [key, seen_vc, siblings] => {
                    let seen_vc: VectorClock =
                        serde_json::from_str(seen_vc).map_err(|e| e.to_string())?;
                    let siblings: Vec<Version> =
                        serde_json::from_str(siblings).map_err(|e| e.to_string())?;
                    let state = EntityState::from_parts(seen_vc, siblings)
                        .ok_or_else(|| format!("the brain's {key} has no siblings"))?;
                    Ok(merge_row(key, &state))
                }
                _ => Err("three columns".to_owned()),
            })
            .collect::<Result<_, String>>()?;
    let conflicts: BTreeSet<Vec<String>> =
        rows(&b, "SELECT entity_key, event_ulid FROM conflicts")?;
    let logged: BTreeSet<Vec<String>> = rows(&b, "SELECT event_ulid FROM events")?;
    for device in devices {
        let name = &device.process.name;
        let d = device
            .db()
            .ok_or_else(|| format!("{name} has no database yet"))?;
        let pending: BTreeSet<Vec<String>> = rows(
            &d,
            "SELECT event_ulid FROM lib_outbox WHERE pushed_at IS NULL",
        )?;
        if !pending.is_empty() {
            return Err(format!("{name} has {} events to push", pending.len()));
        }
        let observed: BTreeSet<Vec<String>> = rows(&d, "SELECT path, sha256 FROM lib_observed")?;
        let on_disk = disk(&device.folder);
        if observed != on_disk {
            return Err(format!(
                "{name} observed {observed:?} but its disk holds {on_disk:?}"
            ));
        }
        // Through the store: it derives the merge state of an entity whose winner is its only
        // sibling from the winner's columns.
        let shared: BTreeSet<Vec<String>> = read::merge_states(&d)
            .map_err(|e| e.to_string())?
            .iter()
            .map(|(key, state)| merge_row(key, state))
            .collect();
        if shared != entities {
            let diff: Vec<_> = shared.symmetric_difference(&entities).take(2).collect();
            return Err(format!(
                "{name}'s shared view differs from the brain: {diff:?}"
            ));
        }
        let mine: BTreeSet<Vec<String>> = rows(&d, "SELECT path, event_ulid FROM lib_conflicts")?;
        if mine != conflicts {
            return Err(format!(
                "{name} lists conflicts {mine:?}, the brain {conflicts:?}"
            ));
        }
        let made: BTreeSet<Vec<String>> = rows(&d, "SELECT event_ulid FROM lib_outbox")?;
        if let Some(missing) = made.difference(&logged).next() {
            return Err(format!(
                "{name}'s event {missing:?} is not in the brain's log"
            ));
        }
    }
    Ok(())
}

/// A user's change in one folder: write, overwrite, delete or rename, over a few shared names.
fn change(rng: &mut Rng, folder: &Path, n: u64) {
    let path = folder.join(rng.pick(NAMES));
    match rng.below(8) {
        0..=4 => {
            let text = if rng.chance(0.4) {
                rng.pick(SHARED).to_string()
            } else {
                format!("change {n} {}\n", "x".repeat(rng.below(40)))
            };
            if let Some(parent) = path.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            let _ = std::fs::write(&path, text);
        }
        5 | 6 => {
            let _ = std::fs::remove_file(&path);
        }
        _ => {
            let to = folder.join(rng.pick(NAMES));
            if let Some(parent) = to.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            let _ = std::fs::rename(&path, &to);
        }
    }
}

#[test]
fn three_agents_and_a_brain_killed_at_random_converge() {
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    let secs: u64 = std::env::var("CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    eprintln!("chaos seed {seed} ({secs} s); repeat its choices with CHAOS_SEED={seed}");
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().expect("tempdir");

    let mut brain = BrainProcess::start(&dir.path().join("brain"), true);
    let url = brain.url();

    let mut devices: Vec<Device> = (0..3)
        .map(|i| {
            let home = dir.path().join(format!("dev{i}"));
            let folder = home.join("notes");
            std::fs::create_dir_all(&folder).expect("library folder");
            std::fs::write(
                home.join("agent.toml"),
                format!(
                    "[[library]]\nname = \"notes\"\npath = {folder:?}\n[watch]\ndebounce_ms = 50\n\
                     [sync]\nrealtime = \"longpoll\"\npush_debounce_ms = 50\ninterval_secs = 5\n"
                ),
            )
            .expect("config");
            Device {
                process: Process {
                    name: format!("dev{i}"),
                    home,
                    child: None,
                },
                folder,
            }
        })
        .collect();
    for device in &mut devices {
        device.start(&url);
    }

    let (mut kills, mut brain_kills, mut changes) = (0, 0, 0u64);
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(rng.between(5, 40)));
        let d = rng.below(devices.len());
        match rng.below(100) {
            0..=89 => {
                changes += 1;
                change(&mut rng, &devices[d].folder, changes);
            }
            90..=96 => {
                devices[d].process.kill9();
                kills += 1;
                if rng.chance(0.7) {
                    std::thread::sleep(Duration::from_millis(rng.between(0, 200)));
                    devices[d].start(&url);
                }
            }
            _ => {
                brain.kill9();
                brain_kills += 1;
                std::thread::sleep(Duration::from_millis(rng.between(0, 300)));
                brain.restart();
            }
        }
        for device in devices.iter_mut().filter(|d| d.process.child.is_none()) {
            if rng.chance(0.05) {
                device.start(&url);
            }
        }
    }
    for device in devices.iter_mut().filter(|d| d.process.child.is_none()) {
        device.start(&url);
    }
    eprintln!(
        "{changes} changes, {kills} agent kills, {brain_kills} brain kills; waiting for agreement"
    );

    let started = Instant::now();
    let mut last = agreement(&brain, &devices);
    while last.is_err() && started.elapsed() < Duration::from_secs(90) {
        std::thread::sleep(Duration::from_millis(250));
        last = agreement(&brain, &devices);
    }
    if let Err(e) = last {
        let logs: Vec<String> = devices
            .iter()
            .map(|d| format!("--- {} log:\n{}", d.process.name, d.process.log_tail()))
            .collect();
        panic!(
            "no agreement 90 s after the chaos stopped (seed {seed}): {e}\n{}",
            logs.join("\n")
        );
    }
    let b = read_only(&brain.db);
    let count = |sql: &str| b.query_row(sql, [], |r| r.get::<_, i64>(0)).expect("count");
    eprintln!(
        "agreed after {:.1} s: {} events, {} entities, {} open conflicts",
        started.elapsed().as_secs_f64(),
        count("SELECT count(*) FROM events"),
        count("SELECT count(*) FROM entities"),
        count("SELECT count(*) FROM conflicts"),
    );
    for device in &mut devices {
        let status = device.process.terminate();
        assert!(
            status.success(),
            "{} exited with {status} on SIGTERM\n{}",
            device.process.name,
            device.process.log_tail()
        );
    }
    agreement(&brain, &devices).expect("still agreeing after a clean stop");
}

//! The simulated world: devices with real stores and real library folders, one brain, one
//! network, a clock that is a counter, and the random operations and faults of one run.
//!
//! Nothing reads the real clock: the devices' stores take their timestamps, ULID times and the
//! indexer's "read at" times from the simulated clock, and files get their mtimes from it,
//! rounded to the run's file-system tick, as a kernel stamps them.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lib_agent::config::{Config, Overrides};
use lib_agent::index::{self, Libraries};
use lib_agent::model::digest::Convergence;
use lib_agent::model::wire::MAX_BATCH;
use lib_agent::store::{Clock, Store};
use lib_agent::sync;

use super::net::{Endpoint, Faults, Net, SimBrain, StoreKind};
use super::rng::Rng;

/// File names the devices write: few, so devices collide on them.
const NAMES: &[&str] = &["a.txt", "b.txt", "c.md", "d/e.txt", "d/f.txt", "g/h.txt"];
const FOLDERS: &[&str] = &["d", "g"];
/// Shared contents make two devices write the same bytes now and then.
const CONTENTS: &[&str] = &["alpha\n", "beta\n", "gamma gamma\n", "delta\n"];
/// The simulated clock starts here (ms since the epoch, a whole second): file mtimes, ULID
/// times and every timestamp a store keeps come from it.
const EPOCH_MS: u64 = 1_780_000_000_000;
/// How coarse a run's file-system timestamps are, in ms: exact, a kernel tick at 250 or 100 Hz,
/// or whole seconds (FAT, HFS+, some network file systems). Two writes of the same size within
/// one tick leave the stat as it was: only reading again a file that was read within a tick of
/// its last write (`index::is_racy`) finds the second.
const MTIME_TICKS_MS: &[u64] = &[1, 4, 10, 1000];

pub struct Device {
    pub index: usize,
    pub id: String,
    pub root: PathBuf,
    db: PathBuf,
    config: Config,
    store: Option<Store>,
    /// Paths the watcher saw change and has not indexed yet: lost in a crash.
    dirty: BTreeSet<PathBuf>,
    pub crashes: u32,
}

impl Device {
    pub fn db_path(&self) -> PathBuf {
        self.db.clone()
    }

    pub fn store(&mut self) -> &mut Store {
        self.store.as_mut().expect("device store open")
    }
}

pub struct World {
    pub devices: Vec<Device>,
    pub net: RefCell<Net>,
    rng: Rng,
    /// The simulated clock, ms since EPOCH_MS.
    now: Arc<AtomicU64>,
    /// The file system's timestamp granularity in this run, ms (one of MTIME_TICKS_MS).
    mtime_tick: u64,
    ulid_counter: Arc<AtomicU64>,
    _dir: tempfile::TempDir,
    pub trace: bool,
}

/// Temporary folders live in memory when the machine has /dev/shm: a run fsyncs a lot.
fn tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::Builder::new().prefix("lib-sim-").tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().expect("tempdir")
}

impl World {
    pub fn new(seed: u64, trace: bool, store: StoreKind) -> World {
        let mut rng = Rng::new(seed);
        let dir = tempdir();
        let count = rng.between(2, 6) as usize;
        let faults = Faults::random(&mut rng);
        let mtime_tick = *rng.pick(MTIME_TICKS_MS);
        let brain = SimBrain::open(store, dir.path().join("brain.db"));
        let net = Net::new(brain, rng.fork(), faults, count);
        let mut world = World {
            devices: Vec::new(),
            net: RefCell::new(net),
            rng,
            now: Arc::new(AtomicU64::new(0)),
            mtime_tick,
            ulid_counter: Arc::new(AtomicU64::new(0)),
            _dir: dir,
            trace,
        };
        for index in 0..count {
            let home = world._dir.path().join(format!("dev-{index}"));
            let root = home.join("lib");
            std::fs::create_dir_all(&root).expect("library folder");
            let db = home.join("agent.db");
            let toml = format!(
                "[store]\npath = {db:?}\n[[library]]\nname = \"lib\"\npath = {root:?}\n[index]\nhash_threads = 1\n"
            );
            let config = Config::from_toml_str(&toml, None, &|_| None, &Overrides::default())
                .expect("device config");
            let mut device = Device {
                index,
                id: format!("dev-{index}"),
                root,
                db,
                config,
                store: None,
                dirty: BTreeSet::new(),
                crashes: 0,
            };
            open_store(&mut device, &world.now, &world.ulid_counter);
            world.devices.push(device);
        }
        world.say(format!(
            "{count} devices, mtimes to {mtime_tick} ms, faults {faults:?}"
        ));
        world
    }

    fn say(&self, line: String) {
        if self.trace {
            eprintln!("{line}");
        }
        self.net.borrow_mut().log.push(line);
    }

    /// The last lines of what happened, for a failure message.
    pub fn tail(&self) -> String {
        let net = self.net.borrow();
        let log = &net.log;
        log[log.len().saturating_sub(40)..].join("\n")
    }

    /// The simulated time the run started at, and its time now.
    pub fn span(&self) -> (SystemTime, SystemTime) {
        let start = SystemTime::UNIX_EPOCH + Duration::from_millis(EPOCH_MS);
        (
            start,
            start + Duration::from_millis(self.now.load(Ordering::Relaxed)),
        )
    }

    fn tick(&mut self) {
        let step = self.rng.between(1, 50);
        self.now.fetch_add(step, Ordering::Relaxed);
    }

    /// An mtime stamped now: the simulated clock, rounded down to the file system's tick.
    fn mtime(&self) -> SystemTime {
        let now = EPOCH_MS + self.now.load(Ordering::Relaxed);
        SystemTime::UNIX_EPOCH + Duration::from_millis(now - now % self.mtime_tick)
    }

    /// One random step: a change on a disk, the watcher firing, a push, a pull, a message the
    /// network held back, or a fault.
    pub fn step(&mut self) {
        self.tick();
        let d = self.rng.below(self.devices.len());
        match self.rng.below(100) {
            0..=29 => self.change_files(d),
            30..=44 => self.index(d),
            45..=59 => {
                self.push(d);
            }
            60..=74 => {
                self.pull(d);
            }
            75..=82 => {
                if self.net.borrow_mut().deliver_delayed() {
                    self.say("network: delayed ingest delivered".into());
                }
            }
            83..=90 => self.wake_up(),
            91..=93 => self.crash(d),
            94..=95 => {
                self.say("brain: restart".into());
                let mut net = self.net.borrow_mut();
                net.brain.restart();
                net.stats.brain_restarts += 1;
            }
            96 => {
                let mut net = self.net.borrow_mut();
                let (pruned, partly) = net.brain.prune(&mut self.rng);
                net.stats.prunes += u64::from(pruned);
                net.stats.partial_prunes += u64::from(partly);
                drop(net);
                self.say(format!(
                    "brain: prune {}",
                    match (pruned, partly) {
                        (false, _) => "(nothing to prune)",
                        (true, false) => "the whole log",
                        (true, true) => "the older part of the log",
                    }
                ));
            }
            _ => {
                let mut net = self.net.borrow_mut();
                net.down = !net.down;
                let down = net.down;
                drop(net);
                self.say(format!("brain: {}", if down { "down" } else { "up" }));
            }
        }
        self.restart_crashed();
    }

    /// A user's change on one device's disk, queued for its watcher.
    fn change_files(&mut self, d: usize) {
        let mtime = self.mtime();
        let unique = format!(
            "{} {}\n",
            self.devices[d].id,
            self.now.load(Ordering::Relaxed)
        );
        let root = self.devices[d].root.clone();
        let name = *self.rng.pick(NAMES);
        let path = root.join(name);
        let op = self.rng.below(10);
        let mut touched = Vec::new();
        let what = match op {
            0..=4 => {
                let content = if self.rng.chance(0.5) {
                    self.rng.pick(CONTENTS).to_string()
                } else {
                    unique
                };
                let before = stat_and_bytes(&path);
                // A rewrite that keeps the stat is found only if the last read was racy.
                let racily_read = self.racily_read(d, &path, name);
                write_file(&path, content.as_bytes(), mtime, false);
                let blind = racily_read
                    && before.is_some_and(|(stat, bytes)| {
                        Some(stat) == stat_and_bytes(&path).map(|(s, _)| s)
                            && bytes != content.as_bytes()
                    });
                touched.push(path);
                if blind {
                    self.net.borrow_mut().stats.stat_blind_rewrites += 1;
                    format!("write {name} (size and mtime unchanged since its racy read)")
                } else {
                    format!("write {name}")
                }
            }
            5 if path.is_file() => {
                write_file(&path, unique.as_bytes(), mtime, true);
                touched.push(path);
                format!("append {name}")
            }
            6 if path.is_file() => {
                std::fs::remove_file(&path).expect("delete");
                touched.push(path);
                format!("delete {name}")
            }
            7 if path.is_file() => {
                let to_name = *self.rng.pick(NAMES);
                let to = root.join(to_name);
                if to.is_dir() || to == path {
                    return;
                }
                make_parent(&to);
                std::fs::rename(&path, &to).expect("rename");
                touched.extend([path, to]);
                format!("rename {name} -> {to_name}")
            }
            8 => {
                let (from, to) = (*self.rng.pick(FOLDERS), *self.rng.pick(FOLDERS));
                let (from_path, to_path) = (root.join(from), root.join(to));
                if from == to || !from_path.is_dir() || to_path.exists() {
                    return;
                }
                std::fs::rename(&from_path, &to_path).expect("rename folder");
                touched.extend([from_path, to_path]);
                format!("rename folder {from} -> {to}")
            }
            9 => {
                let folder = *self.rng.pick(FOLDERS);
                let folder_path = root.join(folder);
                if !folder_path.is_dir() {
                    return;
                }
                std::fs::remove_dir_all(&folder_path).expect("delete folder");
                touched.push(folder_path);
                format!("delete folder {folder}")
            }
            _ => return,
        };
        self.say(format!("{}: {what}", self.devices[d].id));
        self.devices[d].dirty.extend(touched);
    }

    /// Whether the device last indexed this file read too soon after a write to trust its stat,
    /// and saw its latest write (no change of it is queued since).
    fn racily_read(&mut self, d: usize, path: &Path, name: &str) -> bool {
        let device = &mut self.devices[d];
        if device.dirty.contains(path) {
            return false;
        }
        let observed = device
            .store()
            .observed(&format!("lib/{name}"))
            .expect("observed state");
        observed.is_some_and(|o| o.mtime_ns == index::UNTRUSTED_MTIME)
    }

    /// The watcher's debounce fires: everything queued is indexed.
    pub fn index(&mut self, d: usize) {
        let device = &mut self.devices[d];
        let paths: Vec<PathBuf> = std::mem::take(&mut device.dirty).into_iter().collect();
        if paths.is_empty() {
            return;
        }
        let outcome = index_paths(device, &paths);
        self.net.borrow_mut().stats.racy_reads += outcome.racy;
        self.say(format!(
            "{}: index {} paths: {outcome:?}",
            self.devices[d].id,
            paths.len()
        ));
    }

    pub fn push(&mut self, d: usize) -> u64 {
        let batch_size = self.rng.between(1, 4) as usize;
        let endpoint = Endpoint {
            net: &self.net,
            device: d,
        };
        let device = &mut self.devices[d];
        let result = sync::push(device.store(), &endpoint, batch_size);
        let id = device.id.clone();
        let pushed = result.as_ref().map_or(0, |s| s.pushed);
        if let Ok(summary) = &result {
            assert_eq!(summary.parked, 0, "{id}: the brain refused a valid event");
        }
        self.say(format!("{id}: push: {}", brief(&result.map(|s| s.pushed))));
        pushed
    }

    pub fn pull(&mut self, d: usize) -> (u64, u64) {
        let batch_size = self.rng.between(1, 5) as usize;
        let endpoint = Endpoint {
            net: &self.net,
            device: d,
        };
        let device = &mut self.devices[d];
        let result = sync::pull(device.store(), &endpoint, batch_size, None);
        let id = device.id.clone();
        let counts = result.as_ref().map_or((0, 0), |s| (s.pulled, s.applied));
        if result.as_ref().is_ok_and(|s| s.reseeded) {
            self.net.borrow_mut().stats.reseeds += 1;
        }
        self.say(format!(
            "{id}: pull: {}",
            brief(&result.map(|s| format!(
                "{} pulled, {} applied, cursor {}{}",
                s.pulled,
                s.applied,
                s.new_after_id,
                if s.reseeded { ", re-seeded" } else { "" }
            )))
        ));
        counts
    }

    /// One pull of device `d` on a healed network, for what the brain says of its replica.
    pub fn pull_convergence(&mut self, d: usize) -> Option<Convergence> {
        let endpoint = Endpoint {
            net: &self.net,
            device: d,
        };
        let summary = sync::pull(self.devices[d].store(), &endpoint, MAX_BATCH, None)
            .expect("a pull on a healed network");
        summary.convergence
    }

    /// `agent sync --reseed` on device `d`, on a healed network.
    pub fn replace_from_snapshot(&mut self, d: usize) -> sync::ReseedSummary {
        let endpoint = Endpoint {
            net: &self.net,
            device: d,
        };
        sync::replace_from_snapshot(self.devices[d].store(), &endpoint, MAX_BATCH)
            .expect("a re-seed on a healed network")
    }

    /// A webhook notification arrives (any of those in flight): its device pulls.
    fn wake_up(&mut self) {
        let device = {
            let mut net = self.net.borrow_mut();
            if net.wakeups.is_empty() {
                return;
            }
            let i = self.rng.below(net.wakeups.len());
            net.wakeups.swap_remove(i)
        };
        self.say(format!("network: wake-up for dev-{device}"));
        self.pull(device);
    }

    /// The device's process dies: its store is closed mid-whatever, its watcher queue lost.
    /// On restart it reconciles with a full pass over its folder, as `agent run` does.
    fn crash(&mut self, d: usize) {
        self.say(format!("{}: crash and restart", self.devices[d].id));
        let device = &mut self.devices[d];
        device.store = None;
        device.dirty.clear();
        device.crashes += 1;
        self.net.borrow_mut().stats.device_crashes += 1;
        open_store(device, &self.now, &self.ulid_counter);
        // As `agent run` does at start; a crash never leaves rows and kept digest apart.
        let check = device
            .store()
            .rederive_replica_digest()
            .expect("derive the replica digest");
        assert!(
            check.matches(),
            "{}: after a crash, the kept digest ({:?}) is not its rows' ({})",
            device.id,
            check.kept,
            check.derived
        );
        let outcome = reconcile(device);
        self.net.borrow_mut().stats.racy_reads += outcome.racy;
        self.say(format!(
            "{}: start-up reconcile: {outcome:?}",
            self.devices[d].id
        ));
    }

    fn restart_crashed(&mut self) {
        let crashed = std::mem::take(&mut self.net.borrow_mut().crashed);
        for d in crashed {
            self.crash(d);
        }
    }

    /// The faults stop and the network heals: everything held back arrives, every queued change
    /// is indexed, and the devices push and pull until nothing moves.
    pub fn heal(&mut self) {
        self.say("--- heal".into());
        {
            let mut net = self.net.borrow_mut();
            net.faults = Faults::default();
            net.down = false;
            while net.deliver_delayed() {}
            net.wakeups.clear();
        }
        for d in 0..self.devices.len() {
            self.index(d);
        }
        for round in 0..10 {
            let mut moved = 0;
            for d in 0..self.devices.len() {
                moved += self.push(d);
            }
            for d in 0..self.devices.len() {
                moved += self.pull(d).0;
            }
            if moved == 0 {
                self.say(format!("--- quiet after {round} rounds"));
                return;
            }
        }
        panic!("the devices did not reach quiescence in 10 rounds");
    }
}

fn open_store(device: &mut Device, now: &Arc<AtomicU64>, counter: &Arc<AtomicU64>) {
    device.store = None;
    let mut store = Store::open(&device.db).expect("open device store");
    if store.device_id() != device.id {
        rusqlite::Connection::open(&device.db)
            .and_then(|db| db.execute("UPDATE lib_device SET device_id = ?1", [&device.id]))
            .expect("set device id");
        drop(store);
        store = Store::open(&device.db).expect("reopen device store");
    }
    let (now, counter, index) = (now.clone(), counter.clone(), device.index);
    let clock = now.clone();
    store.set_ulid_source(Box::new(move || {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        ulid::Ulid::from_parts(
            EPOCH_MS + now.load(Ordering::Relaxed),
            ((index as u128) << 64) | u128::from(n),
        )
    }));
    store.set_clock(Clock::from_fn(move || {
        SystemTime::UNIX_EPOCH + Duration::from_millis(EPOCH_MS + clock.load(Ordering::Relaxed))
    }));
    device.store = Some(store);
}

fn index_paths(device: &mut Device, paths: &[PathBuf]) -> index::PathsOutcome {
    let libs = Libraries::new(&device.config, &device.db);
    let outcome = index::index_paths(device.store(), &libs, paths).expect("index paths");
    assert_eq!(outcome.errors, 0, "{}: indexing failed", device.id);
    assert!(
        outcome.rescan.is_empty(),
        "{}: rescan asked: {:?}",
        device.id,
        outcome.rescan
    );
    outcome
}

/// Every path on disk and every path observed, through the same indexing as the watcher.
fn reconcile(device: &mut Device) -> index::PathsOutcome {
    let mut paths: BTreeSet<PathBuf> = std::fs::read_dir(&device.root)
        .expect("list the library")
        .map(|e| e.expect("entry").path())
        .collect();
    let observed = device.store().observed_of_library("lib").expect("observed");
    for key in observed.keys() {
        let rel = key.strip_prefix("lib/").expect("library key");
        paths.insert(device.root.join(rel));
    }
    let paths: Vec<PathBuf> = paths.into_iter().collect();
    index_paths(device, &paths)
}

fn make_parent(path: &Path) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("make folder");
    }
}

/// Size, mtime and inode (what tells the indexer "unchanged"), and the bytes, of a file.
fn stat_and_bytes(path: &Path) -> Option<((u64, SystemTime, u64), Vec<u8>)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path)
        .ok()
        .filter(|m| m.is_file())?;
    let stat = (meta.len(), meta.modified().expect("mtime"), meta.ino());
    Some((stat, std::fs::read(path).expect("read")))
}

/// Writes (or appends) and stamps the mtime from the simulated clock (at the file system's
/// granularity: two writes within one tick share an mtime).
fn write_file(path: &Path, bytes: &[u8], mtime: SystemTime, append: bool) {
    use std::io::Write;
    make_parent(path);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(path)
        .expect("open for writing");
    file.write_all(bytes).expect("write");
    file.set_modified(mtime).expect("set mtime");
}

fn brief<T: std::fmt::Debug>(result: &Result<T, sync::SyncError>) -> String {
    match result {
        Ok(v) => format!("{v:?}"),
        Err(e) => format!("failed: {e}"),
    }
}

//! Convergence under faults, by deterministic simulation.
//!
//! Two to six devices, each with its own SQLite store and library folder, change files through
//! the real indexing path and sync with one real brain store through a simulated network that
//! drops requests, loses answers after the brain committed, delivers twice, and holds requests
//! back to deliver them out of order. Devices crash (store dropped and reopened, watcher queue
//! lost, reconciled at restart); the brain restarts, goes down, and prunes its log so devices
//! must re-seed. Time is a counter that every store, ULID and file mtime takes its time from
//! (nothing reads the real clock), and every choice comes from one seeded generator: a failing
//! run prints its seed, and `SIM_SEED=<seed> cargo test --test sim` replays exactly that run
//! with a trace. `SIM_SEEDS=<n>` runs more seeds than the default, `SIM_STATS=1` prints what each
//! run went through. The same runs go against a PostgreSQL brain too
//! (`postgres_seeds_converge`, `SIM_PG_SEEDS`).

#[macro_use]
#[path = "../support/mod.rs"]
mod support;

mod check;
mod merge_props;
mod net;
mod world;

use support::rng;

use std::panic::{catch_unwind, AssertUnwindSafe};

use lib_agent::model::digest::{Convergence, ConvergenceState};
use net::StoreKind;

/// The simulation has not found a bug yet, so no seed is kept for one. These seeds are kept
/// because their runs go through the hardest paths, each named with the counter that shows it
/// (see [`Path`]); the test fails when one no longer does. Seed 32 rewrites a file keeping its
/// size and mtime (a blind rewrite that only a racy read finds). Any change to what a run draws from its
/// generator reshuffles what every seed does; `SIM_STATS=1 cargo test --test sim
/// seeds_converge -- --nocapture` lists what each default seed goes through, to pick new ones.
const REGRESSIONS: &[(u64, &[Path])] = &[
    (
        32,
        &[
            Path::BlindRewrite,
            Path::PruneAndReseed,
            Path::CrashMidPull,
            Path::Conflict,
        ],
    ),
    (
        4,
        &[
            Path::PruneAndReseed,
            Path::PartialPrune,
            Path::CrashMidPull,
            Path::CrashMidPush,
            Path::Conflict,
        ],
    ),
    (
        114,
        &[
            Path::PruneAndReseed,
            Path::PartialPrune,
            Path::CrashMidPull,
            Path::CrashMidPush,
            Path::Conflict,
        ],
    ),
    // Thirteen re-seeds in one run.
    (
        39,
        &[
            Path::PruneAndReseed,
            Path::PartialPrune,
            Path::CrashMidPull,
            Path::Conflict,
        ],
    ),
];
const DEFAULT_SEEDS: u64 = 500;
const DEFAULT_PG_SEEDS: u64 = 60;

/// One run: random steps with faults, then heal, sync to quiescence and check.
fn run(seed: u64, trace: bool, store: StoreKind) -> net::Stats {
    run_world(seed, trace, store).0
}

/// [`run`], and the world it leaves.
fn run_world(seed: u64, trace: bool, store: StoreKind) -> (net::Stats, world::World) {
    let mut world = world::World::new(seed, trace, store);
    let mut rng = rng::Rng::new(seed ^ 0x5EED);
    let steps = rng.between(50, 300);
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        for _ in 0..steps {
            world.step();
        }
        world.heal();
        check::check(&mut world)
    }));
    let (events, conflicts) = match outcome {
        Ok(counts) => counts,
        Err(panic) => {
            eprintln!(
            "simulation seed {seed} failed; replay it with SIM_SEED={seed} cargo test --test sim\n\
             last steps:\n{}",
                world.tail()
            );
            std::panic::resume_unwind(panic);
        }
    };
    let mut stats = world.net.borrow().stats;
    stats.events = events;
    stats.conflicts = conflicts;
    (stats, world)
}

/// Runs seeds and shows what they went through. Over many runs, every kind of fault must have
/// happened, or the simulation has stopped testing what it claims to.
fn run_all(seeds: impl Iterator<Item = u64>, store: StoreKind) {
    let mut total = net::Stats::default();
    let mut runs = 0;
    let each = std::env::var_os("SIM_STATS").is_some();
    for seed in seeds {
        let stats = run(seed, false, store);
        if each {
            eprintln!("seed {seed}: {stats:?}");
        }
        total.add(&stats);
        runs += 1;
    }
    eprintln!("{runs} runs on {store:?}: {total:?}");
    if runs >= 100 {
        let t = total;
        for (what, n) in [
            ("dropped requests", t.dropped),
            ("lost answers", t.answers_lost),
            ("duplicated requests", t.duplicated),
            ("delayed requests", t.delayed),
            ("device crashes", t.device_crashes),
            ("device crashes mid-push", t.crashes_mid_push),
            ("device crashes mid-pull", t.crashes_mid_pull),
            ("brain restarts", t.brain_restarts),
            ("prunes", t.prunes),
            ("prunes of part of the log", t.partial_prunes),
            ("re-seeds", t.reseeds),
            ("racy reads", t.racy_reads),
            (
                "rewrites a racy read alone could find",
                t.stat_blind_rewrites,
            ),
            ("conflicts", t.conflicts),
        ] {
            assert!(n > 0, "{runs} runs had no {what}: {t:?}");
        }
    }
}

fn seeds(part: u64, parts: u64, var: &str, default: u64) -> impl Iterator<Item = u64> {
    let count = std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    (0..count).filter(move |s| s % parts == part)
}

fn replay() -> Option<u64> {
    let seed = std::env::var("SIM_SEED").ok()?;
    Some(
        seed.parse()
            .unwrap_or_else(|_| panic!("SIM_SEED={seed:?} is not a number")),
    )
}

#[test]
fn seeds_converge_even() {
    if let Some(seed) = replay() {
        eprintln!("{:?}", run(seed, true, StoreKind::Sqlite));
        return;
    }
    run_all(seeds(0, 2, "SIM_SEEDS", DEFAULT_SEEDS), StoreKind::Sqlite);
}

#[test]
fn seeds_converge_odd() {
    if replay().is_some() {
        return; // the even half replays it
    }
    run_all(seeds(1, 2, "SIM_SEEDS", DEFAULT_SEEDS), StoreKind::Sqlite);
}

/// The same runs with the brain on PostgreSQL (`LIB_TEST_DATABASE_URL`, a schema per run):
/// fewer, since each costs a schema and its migration.
#[test]
fn postgres_seeds_converge() {
    require_postgres!();
    if let Some(seed) = replay() {
        eprintln!("{:?}", run(seed, true, StoreKind::Postgres));
        return;
    }
    run_all(
        seeds(0, 1, "SIM_PG_SEEDS", DEFAULT_PG_SEEDS),
        StoreKind::Postgres,
    );
}

/// A hard path a regression seed's run must go through.
#[derive(Debug, Clone, Copy)]
enum Path {
    /// The brain pruned its log and a device behind it re-seeded from the snapshot.
    PruneAndReseed,
    /// Only the older part of the log was pruned.
    PartialPrune,
    /// A device died with a pull (or a snapshot page) in flight.
    CrashMidPull,
    /// A device died with a push in flight.
    CrashMidPush,
    /// Concurrent edits ended as an open conflict.
    Conflict,
    /// A file read too soon after a write was rewritten with size and mtime unchanged.
    BlindRewrite,
}

impl Path {
    fn taken(self, s: &net::Stats) -> bool {
        match self {
            Path::PruneAndReseed => s.prunes > 0 && s.reseeds > 0,
            Path::PartialPrune => s.partial_prunes > 0,
            Path::CrashMidPull => s.crashes_mid_pull > 0,
            Path::CrashMidPush => s.crashes_mid_push > 0,
            Path::Conflict => s.conflicts > 0,
            Path::BlindRewrite => s.stat_blind_rewrites > 0,
        }
    }
}

#[test]
fn regression_seeds_converge() {
    if replay().is_some() {
        return;
    }
    for &(seed, paths) in REGRESSIONS {
        let stats = run(seed, false, StoreKind::Sqlite);
        for &path in paths {
            assert!(
                path.taken(&stats),
                "seed {seed} no longer goes through {path:?} ({stats:?}): pick another"
            );
        }
    }
}

/// `SIM_SEED` replays a run exactly: the same steps, and stores that hold the same rows, down to
/// every timestamp (nothing reads the real clock, nothing depends on threads' timing).
#[test]
fn a_seed_replays_exactly() {
    if replay().is_some() {
        return;
    }
    let seed = REGRESSIONS[0].0;
    let first = check::fingerprint(&mut run_world(seed, false, StoreKind::Sqlite).1);
    let again = check::fingerprint(&mut run_world(seed, false, StoreKind::Sqlite).1);
    if let Some(i) = (0..first.len().max(again.len())).find(|&i| first.get(i) != again.get(i)) {
        panic!(
            "seed {seed} ran differently the second time, from line {i}:\n  {:?}\n  {:?}",
            first.get(i),
            again.get(i)
        );
    }
}

/// DESIGN.md "Convergence you can check": a replica changed outside the agent (here a row whose
/// winner was rewritten to one that sorts above every real version, as a disk error or a hand
/// edit could) is found when its digest is re-derived, the brain reports it DIVERGED at the
/// head, and `agent sync --reseed` (which replaces the view, where merging the snapshot over it
/// would keep the higher-sorting damage) brings it back to the brain's digest and to converged.
#[test]
fn a_tampered_replica_is_reported_diverged_and_a_reseed_repairs_it() {
    if replay().is_some() {
        return;
    }
    let (_, mut world) = run_world(REGRESSIONS[0].0, false, StoreKind::Sqlite);
    let brain = world.net.borrow().brain.replica();
    let device = world
        .devices
        .iter()
        .position(|d| {
            let db = rusqlite::Connection::open(d.db_path()).expect("open");
            db.query_row(
                "SELECT count(*) FROM lib_files WHERE deleted_at IS NULL",
                [],
                |r| r.get::<_, i64>(0),
            )
            .expect("count")
                > 0
        })
        .expect("a device with a live file");
    let db = world.devices[device].db_path();
    let tampered: String = {
        let conn = rusqlite::Connection::open(&db).expect("open");
        let key: String = conn
            .query_row(
                "SELECT path FROM lib_files WHERE deleted_at IS NULL ORDER BY path LIMIT 1",
                [],
                |r| r.get(0),
            )
            .expect("a live row");
        conn.execute(
            "UPDATE lib_files SET sha256 = ?2, event_ulid = '7ZZZZZZZZZZZZZZZZZZZZZZZZZ',
               vector_clock = '{\"zz-forged\":9007199254740992}', seen_vc = NULL, siblings = NULL
             WHERE path = ?1",
            (&key, "f".repeat(64)),
        )
        .expect("tamper");
        key
    };

    let check = world.devices[device]
        .store()
        .rederive_replica_digest()
        .expect("derive");
    assert!(
        !check.matches(),
        "the damage is found when the digest is re-derived"
    );
    assert_ne!(check.derived, brain.digest);
    assert_eq!(
        world.pull_convergence(device).map(|c| c.state),
        Some(ConvergenceState::Diverged),
        "the brain reports the tampered replica"
    );

    let reseed = world.replace_from_snapshot(device);
    assert_eq!(reseed.digest_after, brain.digest.to_hex());
    let conn = rusqlite::Connection::open(&db).expect("open");
    let sha: Option<String> = conn
        .query_row(
            "SELECT sha256 FROM lib_files WHERE path = ?1",
            [&tampered],
            |r| r.get(0),
        )
        .expect("the row is back");
    assert_ne!(
        sha,
        Some("f".repeat(64)),
        "the forged winner did not survive"
    );
    assert_eq!(
        world.pull_convergence(device),
        Some(Convergence {
            state: ConvergenceState::Converged,
            lag: 0
        })
    );
    assert!(world.devices[device]
        .store()
        .check_replica_digest()
        .expect("derive")
        .matches());
}

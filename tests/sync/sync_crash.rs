//! `agent run` killed with SIGKILL again and again while it indexes and pushes: after each restart
//! it converges, with no lost and no doubly applied event.

use crate::support;
use std::path::Path;
use std::process::Child;
use std::time::Duration;

use lib_agent::config::{Config, Overrides};
use lib_agent::store::Store;
use lib_agent::sync;
use rusqlite::Connection;

use crate::support::brain_blocking::BlockingBrain;
use crate::support::wait::wait_until;

fn spawn_agent(dir: &Path, brain: &str) -> Child {
    support::process::agent(None)
        .arg("--db")
        .arg(dir.join("agent.db"))
        .arg("--config")
        .arg(dir.join("agent.toml"))
        .arg("run")
        .env("LIB_BRAIN_URL", brain)
        .spawn()
        .expect("spawn agent")
}

#[test]
fn an_agent_killed_mid_push_restarts_and_converges_without_loss_or_duplicates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let brain = BlockingBrain::start(dir.path());
    let url = brain.url();

    let a = dir.path().join("a");
    std::fs::create_dir_all(a.join("notes")).expect("mkdir");
    std::fs::write(
        a.join("agent.toml"),
        format!(
            "[[library]]\nname = \"notes\"\npath = {:?}\n[sync]\npush_debounce_ms = 20\n",
            a.join("notes")
        ),
    )
    .expect("config");

    let mut written = 0;
    for round in 0..4 {
        let mut child = spawn_agent(&a, &url);
        // Changes while it runs, then SIGKILL at a moment of its choosing: mid-index or mid-push.
        for i in 0..60 {
            std::fs::write(
                a.join("notes").join(format!("r{round}-{i}.md")),
                format!("round {round} file {i}"),
            )
            .expect("write");
            written += 1;
            if i % 20 == 0 {
                std::thread::sleep(Duration::from_millis(15));
            }
        }
        std::thread::sleep(Duration::from_millis(40 * round + 30));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }

    // A last, clean run catches up: everything indexed and pushed.
    let mut child = spawn_agent(&a, &url);
    let db_a = a.join("agent.db");
    let pid = format!("\"pid\":{},", child.id());
    wait_until("the last run is up", Duration::from_secs(60), || {
        Connection::open(&db_a).is_ok_and(|db| {
            db.query_row(
                "SELECT v FROM lib_kv WHERE k = 'agent_run_state'",
                [],
                |r| r.get::<_, String>(0),
            )
            .is_ok_and(|v| v.contains(&pid) && v.contains("\"state\":\"running\""))
        })
    });
    wait_until(
        "A indexed and pushed everything",
        Duration::from_secs(60),
        || {
            Connection::open(&db_a).is_ok_and(|db| {
                db.query_row(
                    "SELECT (SELECT count(*) FROM lib_files WHERE deleted_at IS NULL),
                        (SELECT count(*) FROM lib_outbox WHERE pushed_at IS NULL)",
                    [],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
                )
                .is_ok_and(|(files, pending)| files == written && pending == 0)
            })
        },
    );
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    assert!(
        child.wait().expect("reap").success(),
        "a clean stop exits 0"
    );

    // Another device pulls: same shared view, and the brain holds each of A's events once.
    let b = dir.path().join("b");
    std::fs::create_dir_all(b.join("notes")).expect("mkdir");
    let toml = format!(
        "[store]\npath = {:?}\n[[library]]\nname = \"notes\"\npath = {:?}\n",
        b.join("agent.db"),
        b.join("notes")
    );
    let config =
        Config::from_toml_str(&toml, None, &|_| None, &Overrides::default()).expect("config");
    let mut store_b = Store::open(&config.store.path).expect("store");
    let client = brain.client();
    let pulled = sync::pull(&mut store_b, &client, 500, None).expect("pull");
    let outbox_a: i64 = Connection::open(&db_a)
        .expect("db")
        .query_row("SELECT count(*) FROM lib_outbox", [], |r| r.get(0))
        .expect("count");
    assert_eq!(
        pulled.pulled as i64, outbox_a,
        "every event of A reached the brain exactly once"
    );
    let rows = |db: &Path| -> Vec<(String, Option<String>, Option<String>)> {
        let c = Connection::open(db).expect("db");
        let mut s = c
            .prepare("SELECT path, sha256, event_ulid FROM lib_files ORDER BY path")
            .expect("prepare");
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("q")
            .collect::<Result<_, _>>()
            .expect("rows")
    };
    assert_eq!(
        rows(&b.join("agent.db")),
        rows(&db_a),
        "B's shared view is A's, row for row"
    );
    assert_eq!(rows(&db_a).len() as i64, written);
}

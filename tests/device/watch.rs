//! The watcher, with the real notify backend on real temporary folders: every kind of change
//! reaches `lib_files` and the outbox through the same indexer as `agent scan`, exactly once.
//!
//! Each test starts `daemon::run` on a thread, makes changes, waits (bounded) until the database
//! shows them, then stops the agent (which indexes anything still pending) and asserts the exact
//! events: nothing missing, nothing extra.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use lib_agent::config::{Config, Overrides};
use lib_agent::daemon::{self, RunState};
use lib_agent::store::Store;
use rusqlite::Connection;

use crate::support::wait;

struct Agent {
    dir: tempfile::TempDir,
    config: Config,
    stop: Option<crossbeam_channel::Sender<()>>,
    handle: Option<JoinHandle<Result<RunState, String>>>,
}

fn config_for(dir: &Path, extra: &str, debounce_ms: u64) -> Config {
    let toml = format!(
        "[store]\npath = {:?}\n[[library]]\nname = \"lib\"\npath = {:?}\n{extra}\n[watch]\ndebounce_ms = {debounce_ms}\n",
        dir.join("agent.db"),
        dir.join("lib")
    );
    Config::from_toml_str(&toml, None, &|_| None, &Overrides::default()).expect("config")
}

impl Agent {
    /// A library folder with these files, not yet watched.
    fn with_files(files: &[(&str, &str)]) -> Agent {
        Agent::with_files_and(files, "", 100)
    }

    fn with_files_and(files: &[(&str, &str)], library_extra: &str, debounce_ms: u64) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("lib")).expect("mkdir");
        let config = config_for(dir.path(), library_extra, debounce_ms);
        let agent = Agent {
            dir,
            config,
            stop: None,
            handle: None,
        };
        // Files that were there before the agent: a few seconds old, as a user's files are (a
        // file read within the clock tick of its write is read again next time: index::is_racy).
        let before = std::time::SystemTime::now() - std::time::Duration::from_secs(5);
        for (rel, text) in files {
            agent.write(rel, text);
            std::fs::File::options()
                .write(true)
                .open(agent.path(rel))
                .and_then(|f| f.set_modified(before))
                .expect("stamp the mtime");
        }
        agent
    }

    fn start(mut self) -> Agent {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let config = self.config.clone();
        self.handle = Some(std::thread::spawn(move || {
            let mut store = Store::open(&config.store.path).map_err(|e| e.to_string())?;
            let options = daemon::RunOptions {
                poll_interval: Duration::from_millis(300),
                ..daemon::RunOptions::default()
            };
            daemon::run(&config, &mut store, &rx, &options).map_err(|e| e.to_string())
        }));
        self.stop = Some(tx);
        self.wait_until("the agent runs", |db| {
            db.query_row(
                "SELECT v FROM lib_kv WHERE k = 'agent_run_state'",
                [],
                |r| r.get::<_, String>(0),
            )
            .is_ok_and(|v| v.contains("\"state\":\"running\""))
        });
        self
    }

    /// Stops the agent; it indexes what is still pending first.
    fn stop(&mut self) -> RunState {
        drop(self.stop.take());
        let handle = self.handle.take().expect("running");
        handle
            .join()
            .expect("agent thread")
            .expect("agent ran without error")
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join("lib").join(rel)
    }

    fn write(&self, rel: &str, text: &str) {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir -p");
        std::fs::write(path, text).expect("write");
    }

    fn db(&self) -> Connection {
        Connection::open(self.dir.path().join("agent.db")).expect("open db")
    }

    /// Polls the database (a second connection, as `agent status` would) until `done`.
    fn wait_until(&self, what: &str, done: impl Fn(&Connection) -> bool) {
        wait::wait_until(what, wait::PATIENCE, || {
            Connection::open(self.dir.path().join("agent.db")).is_ok_and(|db| done(&db))
        });
    }

    fn wait_for_events(&self, n: usize) {
        self.wait_until(&format!("{n} events"), |db| outbox(db).len() >= n);
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

fn outbox(db: &Connection) -> Vec<(String, String)> {
    let mut stmt = db
        .prepare("SELECT event_type, entity_key FROM lib_outbox ORDER BY id")
        .expect("prepare");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

/// Events after the first `skip`, as (type, key) pairs, sorted within the batch for comparison.
fn events_after(db: &Connection, skip: usize) -> Vec<(String, String)> {
    outbox(db).into_iter().skip(skip).collect()
}

fn ev(kind: &str, key: &str) -> (String, String) {
    (kind.to_owned(), key.to_owned())
}

fn live_files(db: &Connection) -> Vec<(String, String)> {
    let mut stmt = db
        .prepare("SELECT path, coalesce(content, '') FROM lib_files WHERE deleted_at IS NULL ORDER BY path")
        .expect("prepare");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

fn sorted(mut v: Vec<(String, String)>) -> Vec<(String, String)> {
    v.sort();
    v
}

#[test]
fn a_created_file_is_indexed_once() {
    let mut a = Agent::with_files(&[]).start();
    a.write("new.md", "fresh words");
    a.wait_for_events(1);
    a.stop();
    let db = a.db();
    assert_eq!(events_after(&db, 0), [ev("upsert_file", "lib/new.md")]);
    assert_eq!(
        live_files(&db),
        [("lib/new.md".to_owned(), "fresh words".to_owned())]
    );
}

#[test]
fn modify_append_and_truncate_are_each_one_upsert_with_the_new_text() {
    let mut a = Agent::with_files(&[("a.txt", "one")]).start();
    let base = outbox(&a.db()).len();
    assert_eq!(base, 1, "the start-up scan indexed the existing file");
    a.write("a.txt", "two");
    a.wait_for_events(base + 1);
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(a.path("a.txt"))
            .expect("open");
        f.write_all(b" and three").expect("append");
    }
    a.wait_for_events(base + 2);
    std::fs::OpenOptions::new()
        .write(true)
        .open(a.path("a.txt"))
        .expect("open")
        .set_len(3)
        .expect("truncate");
    a.wait_for_events(base + 3);
    a.stop();
    let db = a.db();
    assert_eq!(
        events_after(&db, base),
        vec![ev("upsert_file", "lib/a.txt"); 3]
    );
    assert_eq!(
        live_files(&db),
        [("lib/a.txt".to_owned(), "two".to_owned())]
    );
}

#[test]
fn a_deleted_file_becomes_a_tombstone() {
    let mut a = Agent::with_files(&[("a.txt", "doomed"), ("keep.txt", "stays")]).start();
    std::fs::remove_file(a.path("a.txt")).expect("rm");
    a.wait_for_events(3);
    a.stop();
    let db = a.db();
    assert_eq!(events_after(&db, 2), [ev("delete_file", "lib/a.txt")]);
    assert_eq!(
        live_files(&db),
        [("lib/keep.txt".to_owned(), "stays".to_owned())]
    );
}

#[test]
fn a_renamed_file_is_a_delete_and_an_upsert_without_reading_it_again() {
    let mut a = Agent::with_files(&[("old.md", "moving text")]).start();
    std::fs::rename(a.path("old.md"), a.path("new.md")).expect("mv");
    a.wait_for_events(3);
    let state = a.stop();
    let db = a.db();
    assert_eq!(
        sorted(events_after(&db, 1)),
        [
            ev("delete_file", "lib/old.md"),
            ev("upsert_file", "lib/new.md")
        ]
    );
    assert_eq!(
        live_files(&db),
        [("lib/new.md".to_owned(), "moving text".to_owned())]
    );
    assert_eq!(state.changes_indexed, 2);
    assert_eq!(
        state.renames_reused, 1,
        "recognised by inode, size and mtime: not read again"
    );
}

#[test]
fn a_renamed_folder_moves_everything_beneath_it() {
    let mut a = Agent::with_files(&[("d/a.txt", "A"), ("d/sub/b.txt", "B")]).start();
    std::fs::rename(a.path("d"), a.path("e")).expect("mv");
    a.wait_for_events(6);
    a.stop();
    let db = a.db();
    assert_eq!(
        sorted(events_after(&db, 2)),
        [
            ev("delete_file", "lib/d/a.txt"),
            ev("delete_file", "lib/d/sub/b.txt"),
            ev("upsert_file", "lib/e/a.txt"),
            ev("upsert_file", "lib/e/sub/b.txt"),
        ]
    );
    let paths: Vec<String> = live_files(&db).into_iter().map(|f| f.0).collect();
    assert_eq!(paths, ["lib/e/a.txt", "lib/e/sub/b.txt"]);
}

#[test]
fn a_deleted_folder_deletes_everything_beneath_it() {
    let mut a =
        Agent::with_files(&[("d/a.txt", "A"), ("d/sub/b.txt", "B"), ("keep.txt", "K")]).start();
    std::fs::remove_dir_all(a.path("d")).expect("rm -r");
    a.wait_for_events(5);
    a.stop();
    let db = a.db();
    assert_eq!(
        sorted(events_after(&db, 3)),
        [
            ev("delete_file", "lib/d/a.txt"),
            ev("delete_file", "lib/d/sub/b.txt")
        ]
    );
    assert_eq!(
        live_files(&db),
        [("lib/keep.txt".to_owned(), "K".to_owned())]
    );
}

#[test]
fn files_written_right_after_mkdir_p_are_all_indexed() {
    let mut a = Agent::with_files(&[]).start();
    std::fs::create_dir_all(a.path("x/y/z")).expect("mkdir -p");
    for (i, dir) in ["x", "x/y", "x/y/z"].iter().enumerate() {
        std::fs::write(a.path(&format!("{dir}/f{i}.txt")), format!("file {i}")).expect("write");
    }
    a.wait_for_events(3);
    a.stop();
    let db = a.db();
    assert_eq!(
        sorted(events_after(&db, 0)),
        [
            ev("upsert_file", "lib/x/f0.txt"),
            ev("upsert_file", "lib/x/y/f1.txt"),
            ev("upsert_file", "lib/x/y/z/f2.txt")
        ]
    );
}

#[test]
fn a_tree_moved_in_is_indexed_and_moved_out_is_deleted() {
    let mut a = Agent::with_files(&[]).start();
    let outside = a.dir.path().join("outside");
    std::fs::create_dir_all(outside.join("t/u")).expect("mkdir");
    std::fs::write(outside.join("t/one.txt"), "1").expect("write");
    std::fs::write(outside.join("t/u/two.txt"), "2").expect("write");
    std::fs::rename(outside.join("t"), a.path("t")).expect("move in");
    a.wait_for_events(2);
    std::fs::rename(a.path("t"), outside.join("t")).expect("move out");
    a.wait_for_events(4);
    a.stop();
    let db = a.db();
    let events = events_after(&db, 0);
    assert_eq!(
        sorted(events[..2].to_vec()),
        [
            ev("upsert_file", "lib/t/one.txt"),
            ev("upsert_file", "lib/t/u/two.txt")
        ]
    );
    assert_eq!(
        sorted(events[2..].to_vec()),
        [
            ev("delete_file", "lib/t/one.txt"),
            ev("delete_file", "lib/t/u/two.txt")
        ]
    );
    assert!(live_files(&db).is_empty());
}

#[test]
fn excluded_paths_are_never_indexed() {
    let mut a = Agent::with_files(&[]).start();
    a.write(".git/objects/ab", "blob");
    a.write("notes.swp", "swap");
    a.write("real.md", "real");
    a.wait_for_events(1);
    a.stop();
    let db = a.db();
    assert_eq!(events_after(&db, 0), [ev("upsert_file", "lib/real.md")]);
    let observed: i64 = db
        .query_row("SELECT count(*) FROM lib_observed", [], |r| r.get(0))
        .expect("count");
    assert_eq!(observed, 1, "excluded files are not even hashed");
}

#[test]
fn an_editor_style_atomic_save_is_one_upsert_of_the_real_file() {
    let mut a = Agent::with_files(&[("doc.md", "draft")]).start();
    // Write a temporary file beside it, then rename it over the original, as editors do.
    a.write(".doc.md.tmp123", "final text");
    std::fs::rename(a.path(".doc.md.tmp123"), a.path("doc.md")).expect("rename over");
    a.wait_for_events(2);
    a.stop();
    let db = a.db();
    assert_eq!(events_after(&db, 1), [ev("upsert_file", "lib/doc.md")]);
    assert_eq!(
        live_files(&db),
        [("lib/doc.md".to_owned(), "final text".to_owned())]
    );
}

#[test]
fn a_file_written_in_many_pieces_before_its_close_is_one_upsert() {
    // A long window, so that the pauses between the pieces stay well inside it on a loaded
    // machine: the file is complete only when its writer closes it.
    let mut a = Agent::with_files_and(&[], "", 1_000).start();
    {
        use std::io::Write;
        let mut f = std::fs::File::create(a.path("notes.txt")).expect("create");
        for i in 0..10 {
            writeln!(f, "piece {i}").expect("write");
            f.flush().expect("flush");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    a.wait_for_events(1);
    a.stop();
    let db = a.db();
    assert_eq!(events_after(&db, 0), [ev("upsert_file", "lib/notes.txt")]);
    let text: String = (0..10).map(|i| format!("piece {i}\n")).collect();
    assert_eq!(live_files(&db), [("lib/notes.txt".to_owned(), text)]);
}

#[test]
fn a_burst_of_a_thousand_files_is_indexed_completely() {
    let mut a = Agent::with_files(&[]).start();
    for i in 0..1000 {
        a.write(
            &format!("burst/d{}/f{i}.txt", i % 10),
            &format!("file number {i}"),
        );
    }
    a.wait_until("every file indexed with its content", |db| {
        db.query_row(
            "SELECT count(*) FROM lib_files WHERE deleted_at IS NULL AND content LIKE 'file number %'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .is_ok_and(|n| n == 1000)
    });
    a.stop();
    let db = a.db();
    let events = events_after(&db, 0);
    // On a loaded machine a file may be caught between its creation and its write (an empty
    // version that existed for a moment); every event is still an upsert of one of the files.
    assert!(events.iter().all(|(kind, _)| kind == "upsert_file"));
    let distinct: std::collections::BTreeSet<&String> = events.iter().map(|(_, k)| k).collect();
    assert_eq!(distinct.len(), 1000);
    let batches: i64 = db
        .query_row("SELECT count(*) FROM lib_runs", [], |r| r.get(0))
        .expect("runs");
    assert_eq!(batches, 1, "indexed by the watcher, not by rescans");
}

#[test]
fn a_change_made_while_the_agent_was_stopped_is_caught_at_the_next_start() {
    let mut a = Agent::with_files(&[("a.txt", "before"), ("b.txt", "gone soon")]).start();
    a.stop();
    a.write("a.txt", "edited while stopped");
    std::fs::remove_file(a.path("b.txt")).expect("rm");
    a.write("c.txt", "created while stopped");
    let mut a = a.start();
    a.stop();
    let db = a.db();
    assert_eq!(
        sorted(events_after(&db, 2)),
        [
            ev("delete_file", "lib/b.txt"),
            ev("upsert_file", "lib/a.txt"),
            ev("upsert_file", "lib/c.txt")
        ]
    );
}

#[test]
fn a_second_agent_on_the_same_database_is_refused() {
    let a = Agent::with_files(&[]).start();
    let db = a.dir.path().join("agent.db");
    let err = match daemon::RunLock::acquire(&db) {
        Ok(_) => panic!("a second lock was granted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("already using database"), "{err}");
    assert!(daemon::RunLock::is_held(&db));
}

#[test]
fn stopping_indexes_changes_still_in_their_settle_window() {
    // A settle window far longer than the test: the change is certainly still pending.
    let mut a = Agent::with_files_and(&[], "", 60_000).start();
    a.write("late.txt", "written just before the stop");
    a.wait_until("the change is in the backlog", |db| {
        db.query_row(
            "SELECT v FROM lib_kv WHERE k = 'agent_run_state'",
            [],
            |r| r.get::<_, String>(0),
        )
        .is_ok_and(|v| v.contains("\"backlog\":1"))
    });
    assert!(outbox(&a.db()).is_empty());
    a.stop();
    assert_eq!(
        events_after(&a.db(), 0),
        [ev("upsert_file", "lib/late.txt")]
    );
}

#[test]
fn a_burst_beyond_the_kernels_event_queue_loses_nothing() {
    // 20,000 new files make far more inotify events than the kernel queues by default (16,384):
    // if it overflows, the agent rescans; either way every file must be indexed exactly once.
    let mut a = Agent::with_files(&[]).start();
    let n = 20_000;
    for i in 0..n {
        let dir = a.path(&format!("flood/d{:03}", i / 100));
        if i % 100 == 0 {
            std::fs::create_dir_all(&dir).expect("mkdir");
        }
        std::fs::write(dir.join(format!("f{i}")), i.to_string()).expect("write");
    }
    a.wait_until("every file indexed", |db| {
        db.query_row(
            "SELECT count(*) FROM lib_files WHERE deleted_at IS NULL",
            [],
            |r| r.get::<_, i64>(0),
        )
        .is_ok_and(|count| count == n)
    });
    a.stop();
    let db = a.db();
    let (deletes, keys): (i64, i64) = db
        .query_row(
            "SELECT count(*) FILTER (WHERE event_type != 'upsert_file'), count(DISTINCT entity_key) FROM lib_outbox",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("count");
    assert_eq!(
        (deletes, keys),
        (0, n),
        "an upsert for every file, nothing else"
    );
    // A rescan may catch a file between its creation and its write (an empty version that really
    // existed), but the last word on every file is its final content.
    let wrong: i64 = db
        .query_row(
            // The file name after the last '/', less its leading 'f', is the content written.
            "SELECT count(*) FROM lib_files
             WHERE content IS NOT substr(replace(path, rtrim(path, replace(path, '/', '')), ''), 2)",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(wrong, 0);
}

#[test]
fn a_library_root_that_disappears_deletes_nothing_and_is_picked_up_again_when_back() {
    let mut a = Agent::with_files(&[("a.txt", "A"), ("b.txt", "B")]).start();
    let root = a.path("");
    let aside = a.dir.path().join("unmounted");
    std::fs::rename(&root, &aside).expect("unmount");
    a.wait_until("the library is polled", |db| {
        db.query_row(
            "SELECT v FROM lib_kv WHERE k = 'agent_run_state'",
            [],
            |r| r.get::<_, String>(0),
        )
        .is_ok_and(|v| v.contains("polling"))
    });
    assert_eq!(
        outbox(&a.db()).len(),
        2,
        "an unavailable root deletes nothing"
    );
    // Back, with one change made meanwhile: found by the next poll, then watched again.
    std::fs::rename(&aside, &root).expect("remount");
    a.write("c.txt", "C");
    a.wait_for_events(3);
    a.write("d.txt", "D");
    a.wait_for_events(4);
    a.stop();
    let db = a.db();
    assert_eq!(
        events_after(&db, 2),
        [
            ev("upsert_file", "lib/c.txt"),
            ev("upsert_file", "lib/d.txt")
        ]
    );
}

#[test]
fn a_file_replaced_by_a_folder_of_the_same_name_is_deleted_and_the_folder_indexed() {
    let mut a = Agent::with_files(&[("thing", "a file"), ("keep.txt", "K")]).start();
    std::fs::remove_file(a.path("thing")).expect("rm");
    std::fs::create_dir(a.path("thing")).expect("mkdir");
    std::fs::write(a.path("thing/inside.txt"), "inside").expect("write");
    a.wait_for_events(4);
    a.stop();
    let db = a.db();
    assert_eq!(
        sorted(events_after(&db, 2)),
        [
            ev("delete_file", "lib/thing"),
            ev("upsert_file", "lib/thing/inside.txt")
        ]
    );
}

fn observed_keys(db: &Connection) -> Vec<String> {
    let mut stmt = db
        .prepare("SELECT path FROM lib_observed ORDER BY path")
        .expect("prepare");
    stmt.query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

#[test]
fn a_libignore_written_under_agent_run_stops_observing_without_a_delete_and_undoing_it_admits_again(
) {
    let mut a = Agent::with_files(&[("keep.txt", "kept"), ("notes/draft.txt", "draft")]).start();
    a.wait_for_events(2);
    let observed = |db: &Connection, key: &str| observed_keys(db).iter().any(|k| k == key);

    a.write("notes/.libignore", "draft.txt\nnew.txt\n");
    a.wait_until("draft.txt no longer observed", |db| {
        !observed(db, "lib/notes/draft.txt") && observed(db, "lib/notes/.libignore")
    });
    a.write("notes/new.txt", "admitted later");
    a.write("notes/other.txt", "not ignored");
    a.wait_until("other.txt indexed", |db| {
        observed(db, "lib/notes/other.txt")
    });
    assert!(
        !observed(&a.db(), "lib/notes/new.txt"),
        "new.txt is ignored"
    );

    a.write("notes/.libignore", "");
    a.wait_until("draft.txt and new.txt observed again", |db| {
        observed(db, "lib/notes/draft.txt") && observed(db, "lib/notes/new.txt")
    });
    a.stop();
    let db = a.db();
    let events = outbox(&db);
    assert!(
        events.iter().all(|(kind, _)| kind != "delete_file"),
        "ignoring a file records no deletion: {events:?}"
    );
    assert!(events.contains(&ev("upsert_file", "lib/notes/new.txt")));
    assert!(
        live_files(&db)
            .iter()
            .any(|(k, _)| k == "lib/notes/draft.txt"),
        "the shared view keeps the file"
    );
}

/// The inodes of the folders this process holds an inotify watch on, from /proc (the agent
/// runs in the test's process).
fn watched_inodes() -> std::collections::BTreeSet<u64> {
    let Ok(fds) = std::fs::read_dir("/proc/self/fdinfo") else {
        return Default::default();
    };
    fds.filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_to_string(fd.path()).ok())
        .flat_map(|info| {
            info.lines()
                .filter(|l| l.starts_with("inotify wd:"))
                .filter_map(|l| {
                    let ino = l.split_whitespace().find_map(|f| f.strip_prefix("ino:"))?;
                    u64::from_str_radix(ino, 16).ok()
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn a_folder_listed_in_libignore_is_not_watched_and_its_new_files_are_not_indexed() {
    use std::os::unix::fs::MetadataExt;
    let mut a = Agent::with_files(&[
        (".libignore", "deps/\n"),
        ("deps/a/b/c/x.js", "x"),
        ("deps/d/y.js", "y"),
        ("src/main.rs", "fn main() {}"),
    ])
    .start();
    a.wait_for_events(2);
    a.write("deps/a/new.js", "ignored");
    a.write("src/new.rs", "indexed");
    a.wait_until("src/new.rs indexed", |db| {
        outbox(db).contains(&ev("upsert_file", "lib/src/new.rs"))
    });
    let watched = watched_inodes();
    a.stop();
    let inode = |rel: &str| std::fs::metadata(a.path(rel)).expect("stat").ino();
    let keys = observed_keys(&a.db());
    assert!(
        keys.iter().all(|k| !k.starts_with("lib/deps/")),
        "nothing under deps/ is indexed: {keys:?}"
    );
    if std::path::Path::new("/proc/self/fdinfo").exists() {
        assert!(watched.contains(&inode("src")), "src is watched");
        for rel in ["deps", "deps/a", "deps/a/b/c", "deps/d"] {
            assert!(!watched.contains(&inode(rel)), "{rel} costs no watch");
        }
    }
}

#[test]
fn a_folder_renamed_or_no_longer_ignored_is_watched_where_it_is_now() {
    let mut a = Agent::with_files(&[
        (".libignore", "deps/\n"),
        ("old/a.txt", "a"),
        ("deps/x.js", "x"),
    ])
    .start();
    a.wait_for_events(2);
    let observed = |db: &Connection, key: &str| observed_keys(db).iter().any(|k| k == key);
    std::fs::rename(a.path("old"), a.path("new")).expect("rename");
    a.wait_until("the folder's file under its new name", |db| {
        observed(db, "lib/new/a.txt")
    });
    a.write("new/b.txt", "b");
    a.wait_until("a file written in the renamed folder", |db| {
        observed(db, "lib/new/b.txt")
    });
    a.write(".libignore", "");
    a.wait_until("the folder no longer ignored", |db| {
        observed(db, "lib/deps/x.js")
    });
    a.write("deps/y.js", "y");
    a.wait_until("a file written in it since", |db| {
        observed(db, "lib/deps/y.js")
    });
    a.stop();
}

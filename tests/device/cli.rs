//! The commands of `agent` and their errors, run as a user runs them: the real binary, a
//! temporary folder, a real SQLite file (issue 2: "What to build" 6, and "Bad input gets a clear
//! error and loses nothing").

use std::collections::BTreeSet;
use std::path::Path;

use crate::support;
use crate::support::brain::SECRET;
use crate::support::brain_blocking::BlockingBrain;
use crate::support::lab::{mtime, sha256_hex, shift_mtime, Lab};
use rusqlite::Connection;
use serde_json::Value;

/// The names in the lab folder, to prove that a command left no file behind.
fn listing(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    k.sort();
    k
}

// ---- agent init --------------------------------------------------------------------------------

#[test]
fn init_creates_the_database_and_prints_the_device_id() {
    let lab = Lab::new();
    let run = lab.agent(&["init"]).success();
    assert!(lab.db.is_file(), "init creates the database");
    let (device, sequence) = lab.db().device();
    assert_eq!(sequence, 0, "no event yet");
    assert_eq!(device.len(), 36, "a UUID: {device}");
    assert!(uuid_like(&device), "{device}");
    assert!(
        run.stdout.contains(&device),
        "init prints the device id: {:?}",
        run.stdout
    );
    assert!(
        run.stdout.contains(lab.db.to_str().expect("utf-8")),
        "and the database: {:?}",
        run.stdout
    );
    assert!(run.stderr.is_empty(), "nothing on stderr: {:?}", run.stderr);
}

fn uuid_like(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.iter().map(|g| g.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && groups
            .iter()
            .all(|g| g.chars().all(|c| c.is_ascii_hexdigit()))
}

#[test]
fn init_twice_keeps_the_same_device_id() {
    let lab = Lab::new();
    let first = lab.json(&["init"]);
    let second = lab.json(&["init"]);
    assert_eq!(first["device_id"], second["device_id"]);
    let text = lab.agent(&["init"]).success();
    assert!(text
        .stdout
        .contains(first["device_id"].as_str().expect("id")));
    assert_eq!(lab.db().device().0, first["device_id"]);
}

#[test]
fn init_json_has_the_device_the_database_and_the_schema_version() {
    let lab = Lab::new();
    let out = lab.json(&["init"]);
    assert_eq!(
        keys(&out),
        ["database", "device_id", "ok", "schema_version"]
    );
    assert_eq!(out["ok"], true);
    assert_eq!(out["database"], lab.db.to_str().expect("utf-8"));
    assert_eq!(out["schema_version"], 2);
    assert!(uuid_like(out["device_id"].as_str().expect("a string")));
    let version: i64 = lab
        .db()
        .conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("user_version");
    assert_eq!(version, 2);
}

#[test]
fn init_creates_the_folder_of_the_database() {
    let mut lab = Lab::new();
    lab.db = lab.path("deep/er/agent.db");
    lab.agent(&["init"]).success();
    assert!(lab.db.is_file());
}

// ---- agent search ------------------------------------------------------------------------------

fn fruit_lab() -> Lab {
    let lab = Lab::new();
    lab.write("notes/apple.txt", "apple apple apple pie\n");
    lab.write(
        "notes/fruit.md",
        "A long list of things to buy at the market on saturday: apple, banana, cherry, date, \
         elderberry, fig, grape, honeydew, kiwi, lemon, mango, nectarine, orange, papaya.\n",
    );
    lab.write("notes/other.txt", "banana bread recipe\n");
    lab.write(
        "notes/photo.jpg",
        b"\xff\xd8\xff\xe0 apple in a binary file",
    );
    lab.scan(&["notes"]);
    lab
}

fn result_paths(out: &Value) -> Vec<&str> {
    out["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["path"].as_str().expect("path"))
        .collect()
}

#[test]
fn search_ranks_results_and_returns_paths_and_snippets() {
    let lab = fruit_lab();
    let out = lab.json(&["search", "apple"]);
    assert_eq!(out["ok"], true);
    assert_eq!(out["query"], "apple");
    assert_eq!(
        result_paths(&out),
        ["notes/apple.txt", "notes/fruit.md"],
        "the denser match first; binary content is not searched"
    );
    let results = out["results"].as_array().expect("results");
    let scores: Vec<f64> = results
        .iter()
        .map(|r| r["score"].as_f64().expect("score"))
        .collect();
    assert!(scores[0] > scores[1], "scores descend: {scores:?}");
    assert!(
        results[0]["snippet"]
            .as_str()
            .expect("snippet")
            .contains("[apple]"),
        "{:#}",
        results[0]
    );
    assert!(
        results[1]["snippet"]
            .as_str()
            .expect("snippet")
            .contains("[apple]"),
        "{:#}",
        results[1]
    );

    let text = lab.agent(&["search", "apple"]).success();
    let lines: Vec<&str> = text.stdout.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some("notes/apple.txt"),
        "{:?}",
        text.stdout
    );
    assert!(
        lines
            .get(1)
            .is_some_and(|l| l.starts_with("    ") && l.contains("[apple]")),
        "{:?}",
        text.stdout
    );
    assert!(text.stdout.contains("notes/fruit.md"));
}

#[test]
fn search_json_results_have_a_stable_shape() {
    let lab = fruit_lab();
    let out = lab.json(&["search", "pie"]);
    assert_eq!(keys(&out), ["ok", "query", "results"]);
    let hit = &out["results"][0];
    assert_eq!(
        keys(hit),
        [
            "bytes",
            "mime",
            "mtime_unix",
            "on_this_device",
            "path",
            "score",
            "snippet"
        ]
    );
    assert_eq!(hit["on_this_device"], true);
    assert_eq!(hit["path"], "notes/apple.txt");
    assert_eq!(hit["bytes"], "apple apple apple pie\n".len());
    assert_eq!(hit["mime"], "text/plain");
    assert_eq!(hit["mtime_unix"], mtime(&lab.path("notes/apple.txt")).0);
}

#[test]
fn search_needs_every_word_and_takes_the_last_as_a_prefix() {
    let lab = fruit_lab();
    assert_eq!(
        result_paths(&lab.json(&["search", "apple", "banana"])),
        ["notes/fruit.md"]
    );
    assert_eq!(
        result_paths(&lab.json(&["search", "apple banana"])),
        ["notes/fruit.md"]
    );
    let mut prefix = result_paths(&lab.json(&["search", "ban"]))
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    prefix.sort();
    assert_eq!(prefix, ["notes/fruit.md", "notes/other.txt"]);
    assert_eq!(
        result_paths(&lab.json(&["search", "recipe"])),
        ["notes/other.txt"]
    );
}

#[test]
fn search_matches_file_names_too() {
    let lab = fruit_lab();
    assert_eq!(
        result_paths(&lab.json(&["search", "fruit"])),
        ["notes/fruit.md"]
    );
    assert_eq!(
        result_paths(&lab.json(&["search", "photo"])),
        ["notes/photo.jpg"],
        "a binary file is found by its name"
    );
}

#[test]
fn search_honours_limit() {
    let lab = fruit_lab();
    assert_eq!(
        result_paths(&lab.json(&["search", "apple", "--limit", "1"])),
        ["notes/apple.txt"]
    );
    assert_eq!(
        result_paths(&lab.json(&["search", "-n", "1", "banana"])).len(),
        1
    );
    let text = lab.agent(&["search", "--limit", "1", "apple"]).success();
    assert!(!text.stdout.contains("fruit.md"), "{:?}", text.stdout);
    lab.agent(&["search", "--limit", "0", "apple"])
        .failure_or_usage();
}

/// A usage error from the argument parser (exit 2) or an error (exit 1), never success or a crash.
trait UsageError {
    fn failure_or_usage(self);
}

impl UsageError for support::lab::Run {
    #[track_caller]
    fn failure_or_usage(self) {
        assert!(matches!(self.code, Some(1) | Some(2)), "{self:#?}");
        assert!(!self.stderr.contains("panicked"), "{self:#?}");
    }
}

#[test]
fn search_with_no_match_is_not_an_error() {
    let lab = fruit_lab();
    let out = lab.json(&["search", "zucchini"]);
    assert_eq!(out["results"], serde_json::json!([]));
    let text = lab.agent(&["search", "zucchini"]).success();
    assert!(text.stdout.is_empty(), "{:?}", text.stdout);
}

#[test]
fn search_takes_fts5_syntax_characters_as_plain_text() {
    let lab = fruit_lab();
    for query in [
        "\"foo",
        "a AND (",
        "NEAR(apple",
        "apple OR",
        "*",
        "col:x",
        "'",
        "^apple",
        "\"",
        ")",
        "{a b}",
        "a + b",
        "NOT",
    ] {
        let run = lab.agent(&["--json", "search", query]).success();
        assert!(
            run.json()["results"].is_array(),
            "{query:?}: {}",
            run.stdout
        );
        assert!(!run.stderr.contains("error"), "{query:?}: {:?}", run.stderr);
    }
    // A leading dash is an option to the argument parser; after `--` it is a word.
    for query in ["-x", "-apple", "--"] {
        let run = lab.agent(&["--json", "search", "--", query]).success();
        assert!(run.json()["results"].is_array(), "{query:?}");
    }
    // The syntax characters are dropped, the words still found.
    assert_eq!(
        result_paths(&lab.json(&["search", "\"apple"])),
        ["notes/apple.txt", "notes/fruit.md"]
    );
    assert_eq!(
        result_paths(&lab.json(&["search", "pie)"])),
        ["notes/apple.txt"]
    );
}

#[test]
fn search_without_a_database_says_to_run_init_or_scan_and_creates_nothing() {
    let lab = Lab::new();
    let before = listing(lab.root());
    for args in [
        &["search", "apple"][..],
        &["--json", "search", "apple"],
        &["status"],
        &["--json", "status"],
        &["conflicts"],
    ] {
        let run = lab.agent(args).failure();
        run.assert_one_line_error(&[lab.db.to_str().expect("utf-8"), "agent init", "agent scan"]);
        run.assert_stdout_of_a_failure();
        assert_eq!(listing(lab.root()), before, "{args:?} left a file behind");
    }
}

#[test]
fn search_without_a_database_in_a_missing_folder_creates_no_folder() {
    let mut lab = Lab::new();
    lab.db = lab.path("not/yet/agent.db");
    lab.agent(&["search", "x"])
        .failure()
        .assert_one_line_error(&["agent init"]);
    assert!(!lab.path("not").exists());
}

// ---- agent status ------------------------------------------------------------------------------

const NOTES_LIBRARY: &str = "[[library]]\nname = \"notes\"\npath = '{root}/notes'\n";

#[test]
fn status_before_any_scan_shows_the_device_and_never() {
    let lab = Lab::with_config(NOTES_LIBRARY);
    let device = lab.device_id();
    let out = lab.json(&["status"]);
    assert_eq!(out["device_id"], device);
    assert_eq!(out["last_scan"], Value::Null);
    assert_eq!(out["counts"]["files"], 0);
    assert_eq!(out["counts"]["outbox_pending"], 0);
    let text = lab.agent(&["status"]).success();
    assert!(text.stdout.contains(&device), "{}", text.stdout);
    assert!(
        text.stdout
            .lines()
            .any(|l| l.starts_with("last scan") && l.contains("never")),
        "{}",
        text.stdout
    );
}

#[test]
fn status_shows_device_libraries_file_counts_outbox_backlog_and_last_scan() {
    let lab = Lab::with_config(NOTES_LIBRARY);
    lab.write("notes/a.txt", "alpha\n");
    lab.write("notes/b.txt", "bravo!\n");
    lab.write("notes/c.txt", "charlie\n");
    let device = lab.device_id();
    let scan = lab.scan(&[]);
    std::fs::remove_file(lab.path("notes/c.txt")).expect("rm");
    let scan2 = lab.scan(&[]);

    let out = lab.json(&["status"]);
    for key in [
        "device_id",
        "sequence",
        "database",
        "config",
        "libraries",
        "counts",
        "last_scan",
        "brain_url",
        "ok",
    ] {
        assert!(out.get(key).is_some(), "status --json has {key}: {out:#}");
    }
    assert_eq!(out["ok"], true);
    assert_eq!(out["device_id"], device);
    assert_eq!(out["sequence"], 4, "three upserts and one delete");
    assert_eq!(out["database"], lab.db.to_str().expect("utf-8"));
    assert_eq!(out["config"], lab.config.to_str().expect("utf-8"));
    assert_eq!(out["brain_url"], Value::Null);
    let counts = &out["counts"];
    assert_eq!(counts["files"], 2);
    assert_eq!(counts["deleted"], 1);
    assert_eq!(counts["bytes"], "alpha\n".len() + "bravo!\n".len());
    assert_eq!(counts["outbox_pending"], 4);
    assert_eq!(counts["outbox_total"], 4);
    assert_eq!(counts["conflicts"], 0);
    let libs = out["libraries"].as_array().expect("libraries");
    assert_eq!(libs.len(), 1);
    assert_eq!(libs[0]["name"], "notes");
    assert_eq!(libs[0]["path"], lab.path("notes").to_str().expect("utf-8"));
    assert_eq!(libs[0]["available"], true);
    assert_eq!(libs[0]["files"], 2);
    let last = &out["last_scan"];
    assert_eq!(last["id"], scan2["run_id"]);
    assert_ne!(last["id"], scan["run_id"]);
    assert_eq!(last["status"], "ok");
    assert_eq!(last["files_seen"], 2);
    assert_eq!(last["files_deleted"], 1);
    assert!(last["ended_at"].is_string());

    let text = lab.agent(&["status"]).success().stdout;
    assert!(text.contains(&device), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("outbox") && l.contains("4 waiting")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("files") && l.contains("2 live") && l.contains("1 deleted")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("library") && l.contains("notes") && l.contains("2 files")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("last scan") && l.contains("ok") && l.contains("1 deleted")),
        "{text}"
    );
}

#[test]
fn status_flags_a_library_whose_root_is_unavailable() {
    let lab = Lab::with_config(NOTES_LIBRARY);
    lab.agent(&["init"]).success();
    let out = lab.json(&["status"]);
    assert_eq!(out["libraries"][0]["available"], false);
    let text = lab.agent(&["status"]).success().stdout;
    assert!(text.contains("unavailable"), "{text}");
}

// ---- agent conflicts ---------------------------------------------------------------------------

#[test]
fn conflicts_on_a_fresh_index_says_none() {
    let lab = Lab::new();
    lab.write("notes/a.txt", "a\n");
    lab.agent(&["init"]).success();
    let text = lab.agent(&["conflicts"]).success();
    assert_eq!(text.stdout.trim(), "no conflicts");
    assert_eq!(
        lab.json(&["conflicts"]),
        serde_json::json!({"ok": true, "conflicts": []})
    );

    // Local edits never conflict with themselves.
    lab.scan(&["notes"]);
    lab.write("notes/a.txt", "a, edited\n");
    lab.scan(&["notes"]);
    assert_eq!(
        lab.json(&["conflicts"]),
        serde_json::json!({"ok": true, "conflicts": []})
    );
}

// ---- a bad config ------------------------------------------------------------------------------

const EVERY_COMMAND: &[&[&str]] = &[
    &["init"],
    &["scan"],
    &["scan", "notes"],
    &["search", "x"],
    &["status"],
    &["conflicts"],
    &["--json", "status"],
];

/// Every command, given this config file, fails with one line on stderr naming the file and
/// `parts` (the key, the line), prints nothing on stdout (with `--json`, the error as a JSON
/// document), and creates no database.
#[track_caller]
fn assert_bad_config(text: &str, parts: &[&str]) {
    let lab = Lab::new();
    std::fs::write(&lab.config, text).expect("write config");
    std::fs::create_dir(lab.path("notes")).expect("mkdir");
    let config = lab.config.to_str().expect("utf-8").to_owned();
    let mut expected = vec![config.as_str()];
    expected.extend_from_slice(parts);
    for args in EVERY_COMMAND {
        let run = lab.agent(args).failure();
        let lines = run.stderr_lines();
        assert!(
            lines.len() == 1 && expected.iter().all(|p| lines[0].contains(p)),
            "`agent {}` should print one line naming {expected:?}, got {:?}",
            args.join(" "),
            run.stderr
        );
        run.assert_stdout_of_a_failure();
        assert!(
            !lab.db.exists(),
            "`agent {}` created the database",
            args.join(" ")
        );
    }
}

#[test]
fn a_config_with_an_unknown_key_is_one_line_naming_the_file_and_the_key() {
    assert_bad_config("colour = \"blue\"\n", &["line 1", "colour"]);
    assert_bad_config(
        "[index]\nmax_contnet_bytes = 3\n",
        &["line 2", "max_contnet_bytes"],
    );
    assert_bad_config(
        "[[library]]\nname = \"n\"\npaht = \"/tmp\"\n",
        &["line 3", "paht"],
    );
}

#[test]
fn a_config_that_is_not_toml_is_one_line_naming_the_file_and_the_line() {
    assert_bad_config("[[library]\nname = \"n\"\n", &["line 1"]);
    assert_bad_config("[index]\nmax_content_bytes = \n", &["line 2"]);
    assert_bad_config(
        "[index]\nmax_content_bytes = 3\n[index]\nhash_threads = 1\n",
        &["line 3"],
    );
}

#[test]
fn a_config_with_a_duplicate_library_name_is_one_line_naming_both() {
    assert_bad_config(
        "[[library]]\nname = \"notes\"\npath = \"/tmp/a\"\n\n[[library]]\nname = \"notes\"\npath = \"/tmp/b\"\n",
        &["line 6", "library[1].name", "notes", "twice", "library[0]"],
    );
}

#[test]
fn a_config_value_out_of_range_is_one_line_naming_the_key() {
    assert_bad_config(
        "[index]\nmax_content_bytes = 0\n",
        &["line 2", "max_content_bytes"],
    );
}

#[test]
fn a_config_value_of_the_wrong_type_is_one_line_naming_the_key() {
    // Issue 2: "A bad config gives a one-line error naming the key and file". A string where a
    // number goes must say which key, not only the line.
    assert_bad_config(
        "[index]\nmax_content_bytes = \"big\"\n",
        &["line 2", "max_content_bytes"],
    );
    assert_bad_config(
        "[[library]]\nname = 7\npath = \"/tmp/a\"\n",
        &["line 2", "name"],
    );
}

#[test]
fn a_config_file_that_does_not_exist_is_an_error_naming_it() {
    let mut lab = Lab::new();
    lab.config = lab.path("no-such.toml");
    let run = lab.agent(&["status"]).failure();
    run.assert_one_line_error(&["no-such.toml"]);
    assert!(!lab.db.exists());
}

// ---- a database this agent must not touch --------------------------------------------------------

/// Runs every command against the lab's database and checks that each refuses with one line
/// containing `parts` and leaves the folder (names and the database's bytes) as it was.
#[track_caller]
fn assert_every_command_refuses_and_touches_nothing(lab: &Lab, parts: &[&str]) {
    std::fs::create_dir_all(lab.path("notes")).expect("mkdir");
    lab.write("notes/a.txt", "a\n");
    let bytes = std::fs::read(&lab.db).expect("read db");
    let names = listing(lab.root());
    for args in [
        &["init"][..],
        &["--json", "init"],
        &["scan", "notes"],
        &["search", "a"],
        &["status"],
        &["--json", "status"],
        &["conflicts"],
    ] {
        let run = lab.agent(args).failure();
        run.assert_one_line_error(parts);
        assert!(
            std::fs::read(&lab.db).expect("read db") == bytes,
            "`agent {}` changed the database file",
            args.join(" ")
        );
        assert_eq!(
            listing(lab.root()),
            names,
            "`agent {}` left files behind",
            args.join(" ")
        );
    }
}

#[test]
fn a_database_from_a_newer_version_is_refused_by_every_command_and_left_untouched() {
    let lab = Lab::new();
    lab.agent(&["init"]).success();
    {
        let conn = Connection::open(&lab.db).expect("open");
        conn.pragma_update(None, "user_version", 999)
            .expect("set user_version");
    }
    let db = lab.db.to_str().expect("utf-8").to_owned();
    assert_every_command_refuses_and_touches_nothing(&lab, &[db.as_str(), "999", "newer"]);
}

#[test]
fn a_database_from_a_newer_version_in_rollback_journal_mode_is_left_untouched() {
    // Not in WAL mode: switching it to WAL would rewrite its header.
    let lab = Lab::new();
    {
        let conn = Connection::open(&lab.db).expect("create");
        conn.execute_batch("CREATE TABLE future_table (x); PRAGMA user_version = 999;")
            .expect("create");
    }
    assert_every_command_refuses_and_touches_nothing(&lab, &["999", "newer"]);
}

#[test]
fn a_file_that_is_not_a_database_is_a_clear_error_and_is_left_untouched() {
    let lab = Lab::new();
    // Deterministic noise (xorshift), the size of a few database pages.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let noise: Vec<u8> = (0..8192)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    std::fs::write(&lab.db, &noise).expect("write noise");
    let db = lab.db.to_str().expect("utf-8").to_owned();
    assert_every_command_refuses_and_touches_nothing(&lab, &[db.as_str(), "not a database"]);
}

#[test]
fn a_text_file_at_the_database_path_is_a_clear_error_and_is_left_untouched() {
    let lab = Lab::new();
    std::fs::write(&lab.db, "these are my notes, not a database\n".repeat(20)).expect("write");
    assert_every_command_refuses_and_touches_nothing(&lab, &["not a database"]);
}

// ---- a LIB v1.0 database -----------------------------------------------------------------------

/// Files on disk under `<lab>/notes`, and a LIB v1.0 database at the lab's `--db` whose
/// `lib_files` holds `rows` (key, content as indexed by LIB).
fn lib_v1_database(lab: &Lab, disk: &[(&str, &str)], rows: &[(&str, &str)]) {
    for (key, content) in disk {
        // Written long before: a file read right after a write is re-read next time (racy stat).
        shift_mtime(&lab.write(key, content), -3600);
    }
    let conn = Connection::open(&lab.db).expect("create LIB v1.0 db");
    conn.execute_batch(
        "CREATE TABLE lib_files(path TEXT PRIMARY KEY, sha256 TEXT, bytes INTEGER, mtime_unix INTEGER,
                                ext TEXT, mime TEXT, content TEXT, indexed_at TEXT);
         CREATE TABLE lib_runs(id INTEGER PRIMARY KEY, started_at TEXT, files_seen INTEGER);
         CREATE VIRTUAL TABLE lib_files_fts USING fts5(path, content);
         INSERT INTO lib_runs (id, started_at, files_seen) VALUES (1, '2025-03-01T09:00:00Z', 2);",
    )
    .expect("LIB v1.0 schema");
    for (key, content) in rows {
        conn.execute(
            "INSERT INTO lib_files (path, sha256, bytes, mtime_unix, ext, mime, content, indexed_at)
             VALUES (?1, ?2, ?3, ?4, 'md', 'text/markdown', ?5, '2025-03-01T09:00:01Z')",
            rusqlite::params![key, sha256_hex(content), content.len() as i64, 1_740_819_600i64, content],
        )
        .expect("LIB v1.0 row");
    }
    conn.execute_batch(
        "INSERT INTO lib_files_fts (path, content) SELECT path, content FROM lib_files;",
    )
    .expect("fts");
}

const A: (&str, &str) = ("notes/a.md", "alpha written under lib one\n");
const B: (&str, &str) = ("notes/b.md", "bravo written under lib one\n");

#[test]
fn a_lib_v1_database_is_adopted_and_its_rows_backfilled_once_as_initial_sync() {
    let lab = Lab::new();
    lib_v1_database(&lab, &[A, B], &[A, B]);

    let summary = lab.scan(&["notes"]);
    assert_eq!(summary["backfilled"], 2, "{summary:#}");
    assert_eq!(
        summary["upserted"], 0,
        "the bytes on disk are the ones LIB indexed: {summary:#}"
    );

    let db = lab.db();
    let (device, _) = db.device();
    let events = db.outbox();
    let kinds: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.event_type.as_str(), e.entity_key.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("initial_sync", "notes/a.md"),
            ("initial_sync", "notes/b.md")
        ]
    );
    for (event, (key, content)) in events.iter().zip([A, B]) {
        assert_eq!(
            event.payload,
            serde_json::json!({
                "sha256": sha256_hex(content), "bytes": content.len(), "mtime_unix": 1_740_819_600i64,
                "ext": "md", "mime": "text/markdown", "content": content,
            }),
            "{key}"
        );
        assert_eq!(event.vector_clock.keys().collect::<Vec<_>>(), [&device]);
        assert_eq!(event.device_id, device);
    }

    // The rows are kept, now owned by the events that announced them.
    let rows = db.files();
    assert_eq!(
        rows.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(),
        ["notes/a.md", "notes/b.md"]
    );
    for (row, event) in rows.iter().zip(&events) {
        assert_eq!(
            row.sha256,
            event.payload["sha256"].as_str().map(str::to_owned)
        );
        assert_eq!(row.deleted_at, None);
        assert_eq!(row.event_ulid.as_deref(), Some(event.event_ulid.as_str()));
    }
    assert_eq!(db.kv("backfill_pending"), None, "the backfill is done");
    let version: i64 = db
        .conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("user_version");
    assert_eq!(version, lib_agent::store::SCHEMA_VERSION);

    // LIB's run history stays.
    let runs = db.runs();
    assert_eq!(runs[0].id, 1);
    assert_eq!(runs[0].started_at.as_deref(), Some("2025-03-01T09:00:00Z"));
    assert_eq!(runs[0].files_seen, Some(2));
    assert_eq!(runs.len(), 2, "LIB's run and this scan");
    drop(db);

    let found = lab.json(&["search", "alpha"]);
    assert_eq!(found["results"][0]["path"], "notes/a.md");
    assert_eq!(
        lab.json(&["search", "written"])["results"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );

    // Once: a second scan adds nothing.
    let summary = lab.scan(&["notes"]);
    assert_eq!(
        (
            summary["backfilled"].as_u64(),
            summary["upserted"].as_u64(),
            summary["hashed"].as_u64()
        ),
        (Some(0), Some(0), Some(0))
    );
    assert_eq!(lab.db().outbox(), events);
    assert_eq!(lab.db().runs().len(), 3);
}

#[test]
fn a_lib_v1_row_whose_file_changed_since_is_backfilled_then_updated() {
    let lab = Lab::new();
    let edited = ("notes/b.md", "bravo edited after lib one\n");
    lib_v1_database(&lab, &[A, edited], &[A, B]);
    let summary = lab.scan(&["notes"]);
    assert_eq!(
        (summary["backfilled"].as_u64(), summary["upserted"].as_u64()),
        (Some(2), Some(1)),
        "{summary:#}"
    );

    let events = lab.db().outbox();
    let kinds: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.event_type.as_str(), e.entity_key.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("initial_sync", "notes/a.md"),
            ("initial_sync", "notes/b.md"),
            ("upsert_file", "notes/b.md")
        ]
    );
    assert!(support::lab::dominates(
        &events[2].vector_clock,
        &events[1].vector_clock
    ));
    assert_eq!(
        lab.db().file("notes/b.md").sha256,
        Some(sha256_hex(edited.1))
    );
    assert_eq!(
        result_paths(&lab.json(&["search", "edited"])),
        ["notes/b.md"]
    );
}

#[test]
fn a_lib_v1_row_whose_file_was_deleted_since_becomes_a_delete_event() {
    // LIB v1.0 never synced, so its rows are this device's files: one gone from disk is a deletion.
    let lab = Lab::new();
    lib_v1_database(&lab, &[A], &[A, B]);
    let summary = lab.scan(&["notes"]);
    assert_eq!(
        (summary["backfilled"].as_u64(), summary["deleted"].as_u64()),
        (Some(2), Some(1)),
        "{summary:#}"
    );
    let events = lab.db().outbox();
    let kinds: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.event_type.as_str(), e.entity_key.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("initial_sync", "notes/a.md"),
            ("initial_sync", "notes/b.md"),
            ("delete_file", "notes/b.md")
        ]
    );
    assert!(lab.db().file("notes/b.md").deleted_at.is_some());
    // The file still there was read once to confirm it, and announced nothing more.
    assert_eq!(summary["upserted"], 0);
    assert_eq!(lab.scan(&["notes"])["hashed"], 0);
}

#[test]
fn a_lib_v1_database_is_searchable_before_the_first_scan() {
    let lab = Lab::new();
    lib_v1_database(&lab, &[A, B], &[A, B]);
    assert_eq!(
        result_paths(&lab.json(&["search", "bravo"])),
        ["notes/b.md"]
    );
    let status = lab.json(&["status"]);
    assert_eq!(status["counts"]["files"], 2);
    // Searching adopts the database but announces nothing: that is the scan's job, once.
    assert!(lab.db().outbox().is_empty());
    assert_eq!(lab.scan(&["notes"])["backfilled"], 2);
}

// ---- agent sync, and what agent status says of it ------------------------------------------------

/// The notes library and a brain to sync it with.
fn synced_lab(brain: &BlockingBrain) -> Lab {
    Lab::with_config(&format!(
        "{NOTES_LIBRARY}[sync]\nbrain_url = \"{}\"\n",
        brain.url()
    ))
}

fn sync_json(lab: &Lab, args: &[&str]) -> Value {
    let mut full = vec!["--json", "sync"];
    full.extend_from_slice(args);
    lab.agent_env(&full, &[("LIB_SYNC_SECRET", SECRET)])
        .success()
        .json()
}

fn line<'a>(text: &'a str, start: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no line starting with {start:?} in:\n{text}"))
}

#[test]
fn sync_json_prints_the_lib_v1_1_summary_with_true_figures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let brain = BlockingBrain::start(dir.path());
    let other = synced_lab(&brain);
    other.write("notes/theirs.md", "from another device\n");
    other.scan(&[]);
    sync_json(&other, &["--push"]);

    let lab = synced_lab(&brain);
    lab.write("notes/a.md", "alpha\n");
    lab.write("notes/b.md", "bravo\n");
    lab.scan(&[]);
    let summary = sync_json(&lab, &[]);
    // LIB v1.1's keys, with two additions: push.parked (events the brain refused) and
    // pull.convergence (what the brain says of this replica once the pull caught up).
    assert_eq!(
        summary,
        serde_json::json!({
            "ok": true,
            "push": {
                "pushed": 2,
                "result": {"inserted_events": 2, "upserted_entities": 2},
                "parked": 0,
            },
            "pull": {"pulled": 3, "applied": 1, "new_after_id": 3,
                     "convergence": {"state": "converged", "lag": 0}},
            "backfill": {"backfilled": 0, "already_done": true},
        })
    );
    assert_eq!(brain.last_id(), 3);

    // Nothing new: the same keys, zeros, the cursor where it was.
    let again = sync_json(&lab, &[]);
    assert_eq!(again["push"]["pushed"], 0);
    assert_eq!(
        again["pull"],
        serde_json::json!({"pulled": 0, "applied": 0, "new_after_id": 3,
                           "convergence": {"state": "converged", "lag": 0}})
    );
    // Only one half: the other is null.
    let pull_only = sync_json(&lab, &["--pull"]);
    assert_eq!(keys(&pull_only), ["backfill", "ok", "pull", "push"]);
    assert_eq!(pull_only["push"], Value::Null);
    assert_eq!(sync_json(&lab, &["--push"])["pull"], Value::Null);
}

#[test]
fn sync_json_counts_the_lib_backfill_it_delivers_and_says_whether_one_still_waits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let brain = BlockingBrain::start(dir.path());
    let lab = synced_lab(&brain);
    lib_v1_database(&lab, &[A, B], &[A, B]);

    // Adopted, not scanned yet: the rows wait for their backfill, and sync says so.
    let waiting = sync_json(&lab, &[]);
    assert_eq!(waiting["push"]["pushed"], 0);
    assert_eq!(
        waiting["backfill"],
        serde_json::json!({"backfilled": 0, "already_done": false})
    );
    let text = lab
        .agent_env(&["sync"], &[("LIB_SYNC_SECRET", SECRET)])
        .success()
        .stdout;
    assert!(text.contains("run `agent scan`"), "{text}");

    // The first scan makes the initial_sync events; the next sync delivers them.
    assert_eq!(lab.scan(&[])["backfilled"], 2);
    let delivered = sync_json(&lab, &[]);
    assert_eq!(delivered["push"]["pushed"], 2);
    assert_eq!(
        delivered["backfill"],
        serde_json::json!({"backfilled": 2, "already_done": true})
    );
    let again = sync_json(&lab, &[]);
    assert_eq!(
        again["backfill"],
        serde_json::json!({"backfilled": 0, "already_done": true})
    );
}

#[test]
fn status_shows_the_brain_reachability_backlog_parked_event_cursor_and_last_push_and_pull() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut brain = BlockingBrain::start(dir.path());
    let lab = synced_lab(&brain);
    lab.write("notes/good.md", "fine\n");
    lab.scan(&[]);

    let before = lab.json(&["status"]);
    assert_eq!(before["brain_url"], brain.url().as_str());
    assert_eq!(before["sync"]["state"], Value::Null);
    let text = lab.agent(&["status"]).success().stdout;
    assert!(line(&text, "brain").contains("not contacted yet"), "{text}");
    assert!(
        line(&text, "sync").contains("last push never, last pull never"),
        "{text}"
    );

    // A corrupt row (as a buggy older version might have written): the brain refuses it.
    Connection::open(&lab.db)
        .expect("db")
        .execute(
            "UPDATE lib_outbox SET payload_json = '{\"sha256\":\"not-a-hash\",\"bytes\":1}' WHERE entity_key = 'notes/good.md'",
            [],
        )
        .expect("corrupt");
    lab.write("notes/later.md", "also fine\n");
    lab.scan(&[]);
    lab.agent_env(&["sync"], &[("LIB_SYNC_SECRET", SECRET)])
        .success();
    lab.write("notes/pending.md", "not pushed yet\n");
    lab.scan(&[]);
    let cursor = brain.last_id();
    assert_eq!(cursor, 1, "later.md alone reached the brain");

    let out = lab.json(&["status"]);
    let sync = &out["sync"];
    assert_eq!(out["brain_url"], brain.url().as_str());
    assert_eq!(sync["state"]["brain_url"], brain.url().as_str());
    assert_eq!(sync["state"]["reachable"], true);
    assert_eq!(sync["state"]["last_error"], Value::Null);
    assert_eq!(out["counts"]["outbox_pending"], 1);
    assert_eq!(sync["cursor"], cursor);
    let parked = sync["parked"].as_array().expect("parked");
    assert_eq!(parked.len(), 1, "{sync:#}");
    assert_eq!(parked[0]["entity_key"], "notes/good.md");
    assert!(
        parked[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("sha256")),
        "{parked:?}"
    );
    for at in ["last_push_at", "last_pull_at"] {
        let stamp = sync["state"][at].as_str().unwrap_or_default();
        assert!(stamp.len() == 20 && stamp.ends_with('Z'), "{at}: {stamp:?}");
    }
    assert_eq!(sync["realtime"], "longpoll");
    assert_eq!(
        sync["realtime_in_effect"],
        Value::Null,
        "no agent runs: nothing is in effect"
    );

    let text = lab.agent(&["status"]).success().stdout;
    let brain_line = line(&text, "brain");
    assert!(
        brain_line.contains(&brain.url())
            && brain_line.contains("(reachable)")
            && brain_line.contains(&format!("cursor {cursor}")),
        "{brain_line}"
    );
    let sync_line = line(&text, "sync");
    assert!(
        sync_line.contains(&format!(
            "last push {}",
            sync["state"]["last_push_at"].as_str().unwrap_or("?")
        )) && sync_line.contains(&format!(
            "last pull {}",
            sync["state"]["last_pull_at"].as_str().unwrap_or("?")
        )),
        "{sync_line}"
    );
    assert!(line(&text, "outbox").contains("1 waiting"), "{text}");
    assert!(
        line(&text, "parked").contains("1 event the brain refused"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("notes/good.md") && l.contains("sha256")),
        "{text}"
    );

    // The brain goes away: a sync fails, and status says so; the last successes stay.
    brain.stop();
    lab.agent_env(&["sync"], &[("LIB_SYNC_SECRET", SECRET)])
        .failure();
    let down = lab.json(&["status"]);
    assert_eq!(down["sync"]["state"]["reachable"], false);
    assert_eq!(
        down["sync"]["state"]["last_push_at"],
        sync["state"]["last_push_at"]
    );
    let text = lab.agent(&["status"]).success().stdout;
    assert!(line(&text, "brain").contains("UNREACHABLE"), "{text}");
    assert!(
        text.contains("last error: push: cannot reach the brain"),
        "{text}"
    );
}

#[test]
fn with_json_an_error_is_also_one_document_on_stdout() {
    let lab = Lab::new();
    let run = lab
        .agent(&["--json", "scan", "--library", "nope"])
        .failure();
    run.assert_one_line_error(&["nope"]);
    run.assert_stdout_of_a_failure();
    assert!(run.json()["error"]
        .as_str()
        .is_some_and(|e| e.contains("nope")));
}

#[test]
fn a_scan_with_a_refused_library_prints_its_own_summary_only() {
    // The summary says `"ok": false` itself: one document on stdout, not two.
    let lab = Lab::with_config("[[library]]\nname = \"gone\"\npath = \"{root}/gone\"\n");
    let run = lab.agent(&["--json", "scan"]).failure();
    let doc = run.json();
    assert_eq!(doc["ok"], false);
    assert!(doc["libraries"].is_array(), "the scan's summary: {doc}");
}

#[test]
fn counts_of_one_are_singular() {
    let lab = Lab::with_config("[[library]]\nname = \"notes\"\npath = \"{root}/notes\"\n");
    lab.write("notes/a.md", "alpha");
    lab.scan(&[]);
    let status = lab.agent(&["status"]).success();
    assert!(status.stdout.contains("notes  "), "{}", status.stdout);
    assert!(
        status.stdout.contains("1 file\n") || status.stdout.contains("1 file "),
        "{}",
        status.stdout
    );
    assert!(status.stdout.contains("0 conflicts"), "{}", status.stdout);
}

#[test]
fn sync_retry_parked_puts_the_refused_events_back_in_the_queue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let brain = BlockingBrain::start(dir.path());
    let lab = synced_lab(&brain);
    lab.write("notes/good.md", "fine\n");
    lab.scan(&[]);
    let original: String = Connection::open(&lab.db)
        .expect("db")
        .query_row(
            "SELECT payload_json FROM lib_outbox WHERE entity_key = 'notes/good.md'",
            [],
            |r| r.get(0),
        )
        .expect("payload");
    let set_payload = |payload: &str| {
        Connection::open(&lab.db)
            .expect("db")
            .execute(
                "UPDATE lib_outbox SET payload_json = ?1 WHERE entity_key = 'notes/good.md'",
                [payload],
            )
            .expect("update");
    };
    set_payload("{\"sha256\":\"not-a-hash\",\"bytes\":1}");
    lab.agent_env(&["sync", "--push"], &[("LIB_SYNC_SECRET", SECRET)])
        .success();
    assert_eq!(
        lab.json(&["status"])["sync"]["parked"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(brain.last_id(), 0, "refused");

    // What made the brain refuse it is fixed (here: the row as it was written).
    set_payload(&original);
    let run = lab
        .agent_env(
            &["sync", "--push", "--retry-parked"],
            &[("LIB_SYNC_SECRET", SECRET)],
        )
        .success();
    assert!(
        run.stderr.contains("1 parked event back in the queue"),
        "{}",
        run.stderr
    );
    assert_eq!(brain.last_id(), 1, "pushed this time");
    let status = lab.json(&["status"]);
    assert_eq!(
        status["sync"]["parked"].as_array().map(Vec::len),
        Some(0),
        "{status}"
    );
    assert_eq!(status["counts"]["outbox_pending"], 0);
}

//! `agent scan` as a user runs it: the real binary over real folders, checked through its `--json`
//! summary and through the SQLite file it leaves behind (issue 2: "What to build" 4 and 5, and
//! "Bad input gets a clear error and loses nothing").

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::support::lab::{
    dominates, inode, mtime, set_mode, sha256_hex, shift_mtime, Lab, OutboxRow,
};
use serde_json::json;

/// Outbox events created after the first `before` ones.
fn new_events(lab: &Lab, before: usize) -> Vec<OutboxRow> {
    lab.db().outbox().into_iter().skip(before).collect()
}

fn event_types(events: &[OutboxRow]) -> Vec<(&str, &str)> {
    events
        .iter()
        .map(|e| (e.event_type.as_str(), e.entity_key.as_str()))
        .collect()
}

/// The library entry of a `--json` scan summary.
fn library<'a>(summary: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    summary["libraries"]
        .as_array()
        .expect("libraries is a list")
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no library {name} in {summary:#}"))
}

fn search_paths(lab: &Lab, query: &str) -> Vec<String> {
    let out = lab.json(&["search", query]);
    out["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["path"].as_str().expect("path").to_owned())
        .collect()
}

// ---- a first scan ------------------------------------------------------------------------------

/// (path below the library, bytes, mime, ext, content kept for search)
type Expected = (
    &'static str,
    Vec<u8>,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
);

fn sample_library(lab: &Lab) -> Vec<Expected> {
    let png: Vec<u8> = [&b"\x89PNG\r\n\x1a\n"[..], &[0u8; 64]].concat();
    let files: Vec<Expected> = vec![
        (
            "a.md",
            b"# Title\nhello world\n".to_vec(),
            "text/markdown",
            Some("md"),
            Some("# Title\nhello world\n"),
        ),
        (
            "sub/c.txt",
            b"deep text in a folder\n".to_vec(),
            "text/plain",
            Some("txt"),
            Some("deep text in a folder\n"),
        ),
        (
            "sub/deeper/d.json",
            b"{\"k\": \"v\"}\n".to_vec(),
            "application/json",
            Some("json"),
            Some("{\"k\": \"v\"}\n"),
        ),
        (
            "README",
            b"plain words without an extension\n".to_vec(),
            "text/plain",
            None,
            Some("plain words without an extension\n"),
        ),
        ("image.png", png, "image/png", Some("png"), None),
        (
            "blob.bin",
            b"bin\0ary\xff\xfe".to_vec(),
            "application/octet-stream",
            Some("bin"),
            None,
        ),
        (
            "data",
            b"\0\x01\x02 no extension, binary".to_vec(),
            "application/octet-stream",
            None,
            None,
        ),
    ];
    for (rel, bytes, ..) in &files {
        lab.write(&format!("notes/{rel}"), bytes);
    }
    files
}

#[test]
fn a_first_scan_indexes_every_file_with_its_hash_size_type_and_text() {
    let lab = Lab::new();
    let files = sample_library(&lab);
    let device = lab.device_id();

    let summary = lab.scan(&["notes"]);
    let n = files.len() as u64;
    assert_eq!(summary["ok"], true);
    let lib = library(&summary, "notes");
    assert_eq!(lib["status"], "ok");
    for (field, value) in [
        ("seen", n),
        ("hashed", n),
        ("upserted", n),
        ("unchanged", 0),
        ("deleted", 0),
        ("errors", 0),
    ] {
        assert_eq!(lib[field], value, "libraries[notes].{field} in {summary:#}");
        assert_eq!(summary[field], value, "total {field} in {summary:#}");
    }
    let total_bytes: usize = files.iter().map(|f| f.1.len()).sum();
    assert_eq!(summary["bytes_hashed"], total_bytes as u64);

    let db = lab.db();
    let rows = db.files();
    let mut expected_paths: Vec<String> = files.iter().map(|f| format!("notes/{}", f.0)).collect();
    expected_paths.sort();
    assert_eq!(
        rows.iter().map(|r| r.path.clone()).collect::<Vec<_>>(),
        expected_paths
    );
    for (rel, bytes, mime, ext, content) in &files {
        let key = format!("notes/{rel}");
        let row = db.file(&key);
        let disk = lab.path(&key);
        assert_eq!(
            row.sha256.as_deref(),
            Some(sha256_hex(bytes).as_str()),
            "{key} sha256"
        );
        assert_eq!(row.bytes, Some(bytes.len() as i64), "{key} bytes");
        assert_eq!(row.mtime_unix, Some(mtime(&disk).0), "{key} mtime_unix");
        assert_eq!(row.mime.as_deref(), Some(*mime), "{key} mime");
        assert_eq!(row.ext.as_deref(), *ext, "{key} ext");
        assert_eq!(
            row.content.as_deref(),
            *content,
            "{key} content (NULL for binary)"
        );
        assert_eq!(row.deleted_at, None, "{key} is live");
        assert_eq!(
            row.device_id.as_deref(),
            Some(device.as_str()),
            "{key} origin device"
        );
    }

    // One upsert_file per file, each with the clock {device: seq}, seq strictly increasing.
    let events = db.outbox();
    assert_eq!(events.len(), files.len(), "one event per file: {events:#?}");
    let mut last_seq = 0;
    let mut ulids = std::collections::HashSet::new();
    for e in &events {
        assert_eq!(e.event_type, "upsert_file");
        assert_eq!(e.entity_type, "file");
        assert_eq!(e.device_id, device);
        assert_eq!(e.pushed_at, None, "nothing is pushed without a brain");
        assert_eq!(e.event_ulid.len(), 26, "a ULID: {}", e.event_ulid);
        assert!(ulids.insert(e.event_ulid.clone()), "ULIDs are unique");
        assert_eq!(
            e.vector_clock.len(),
            1,
            "only this device has touched it: {:?}",
            e.vector_clock
        );
        let seq = e.vector_clock[&device];
        assert!(
            seq > last_seq,
            "sequence numbers strictly increase: {seq} after {last_seq}"
        );
        last_seq = seq;

        let (rel, bytes, mime, ext, content) = files
            .iter()
            .find(|f| format!("notes/{}", f.0) == e.entity_key)
            .expect("event for a known file");
        let mut payload = json!({
            "sha256": sha256_hex(bytes),
            "bytes": bytes.len(),
            "mtime_unix": mtime(&lab.path(&format!("notes/{rel}"))).0,
            "mime": mime,
        });
        if let Some(ext) = ext {
            payload["ext"] = json!(ext);
        }
        if let Some(content) = content {
            payload["content"] = json!(content);
        }
        assert_eq!(e.payload, payload, "payload of {}", e.entity_key);

        // The shared row's winner is this very event.
        let row = db.file(&e.entity_key);
        assert_eq!(row.event_ulid.as_deref(), Some(e.event_ulid.as_str()));
        assert_eq!(row.vector_clock.as_ref(), Some(&e.vector_clock));
    }
    assert_eq!(
        db.device(),
        (device.clone(), last_seq as i64),
        "lib_device holds the last sequence handed out"
    );
    assert_eq!(
        last_seq, n,
        "sequence numbers 1..=n, none skipped or reused"
    );

    // What this device saw on its disk, for the next scan to compare with.
    let observed = db.observed();
    assert_eq!(
        observed.iter().map(|o| o.path.clone()).collect::<Vec<_>>(),
        expected_paths
    );
    for o in &observed {
        let disk = lab.path(&o.path);
        let bytes = std::fs::read(&disk).expect("read");
        assert_eq!(o.sha256, sha256_hex(&bytes), "{}", o.path);
        assert_eq!(o.bytes, bytes.len() as i64, "{}", o.path);
        assert_eq!(o.mtime_ns, mtime(&disk).1, "{}", o.path);
        assert_eq!(o.inode, inode(&disk), "{}", o.path);
    }

    // One lib_runs row, with the counts.
    let runs = db.runs();
    assert_eq!(runs.len(), 1, "{runs:#?}");
    let run = &runs[0];
    assert_eq!(run.status.as_deref(), Some("ok"));
    assert!(
        run.started_at.is_some() && run.ended_at.is_some(),
        "{run:?}"
    );
    assert_eq!(run.files_seen, Some(n as i64));
    assert_eq!(run.files_hashed, Some(n as i64));
    assert_eq!(run.files_upserted, Some(n as i64));
    assert_eq!(run.files_unchanged, Some(0));
    assert_eq!(run.files_deleted, Some(0));
    assert_eq!(run.errors, Some(0));
    assert_eq!(summary["run_id"], run.id);
}

#[test]
fn a_second_scan_with_nothing_changed_hashes_nothing_and_emits_nothing() {
    let lab = Lab::new();
    let files = sample_library(&lab);
    lab.scan(&["notes"]);
    let before = lab.db().outbox();
    let files_before = lab.db().files();

    let summary = lab.scan(&["notes"]);
    let n = files.len() as u64;
    for (field, value) in [
        ("seen", n),
        ("unchanged", n),
        ("hashed", 0),
        ("bytes_hashed", 0),
        ("upserted", 0),
        ("deleted", 0),
        ("errors", 0),
    ] {
        assert_eq!(summary[field], value, "{field} in {summary:#}");
    }
    let db = lab.db();
    assert_eq!(db.outbox(), before, "no new events");
    assert_eq!(db.files(), files_before, "the shared view is untouched");
    let runs = db.runs();
    assert_eq!(runs.len(), 2, "one lib_runs row per scan");
    assert_eq!(
        (
            runs[1].files_seen,
            runs[1].files_unchanged,
            runs[1].files_hashed
        ),
        (Some(n as i64), Some(n as i64), Some(0))
    );
}

// ---- changes between scans ---------------------------------------------------------------------

#[test]
fn a_modified_file_gets_one_upsert_whose_clock_dominates_the_old_one() {
    let lab = Lab::new();
    lab.write("notes/a.txt", "alpha version one\n");
    lab.write("notes/b.txt", "bravo stays\n");
    lab.scan(&["notes"]);
    let old = lab.db().outbox();
    let old_a = old
        .iter()
        .find(|e| e.entity_key == "notes/a.txt")
        .expect("first event of a")
        .clone();

    lab.write("notes/a.txt", "alpha version two, longer\n");
    let summary = lab.scan(&["notes"]);
    assert_eq!(
        (
            summary["hashed"].as_u64(),
            summary["upserted"].as_u64(),
            summary["unchanged"].as_u64()
        ),
        (Some(1), Some(1), Some(1))
    );

    let events = new_events(&lab, old.len());
    assert_eq!(event_types(&events), [("upsert_file", "notes/a.txt")]);
    let new = &events[0];
    assert!(
        dominates(&new.vector_clock, &old_a.vector_clock),
        "{:?} should dominate {:?}",
        new.vector_clock,
        old_a.vector_clock
    );
    assert_eq!(
        new.payload["sha256"],
        sha256_hex("alpha version two, longer\n")
    );
    assert_eq!(new.payload["content"], "alpha version two, longer\n");

    let row = lab.db().file("notes/a.txt");
    assert_eq!(row.sha256, Some(sha256_hex("alpha version two, longer\n")));
    assert_eq!(row.event_ulid.as_deref(), Some(new.event_ulid.as_str()));
    assert_eq!(search_paths(&lab, "longer"), ["notes/a.txt"]);
    assert_eq!(
        search_paths(&lab, "one"),
        Vec::<String>::new(),
        "the old text is gone from search"
    );
}

#[test]
fn a_deleted_file_gets_one_delete_event_with_an_empty_payload_and_leaves_search() {
    let lab = Lab::new();
    lab.write("notes/a.txt", "alpha\n");
    lab.write("notes/b.txt", "bravo\n");
    lab.scan(&["notes"]);
    let old = lab.db().outbox();
    let old_b = old
        .iter()
        .find(|e| e.entity_key == "notes/b.txt")
        .expect("event of b")
        .clone();
    assert_eq!(search_paths(&lab, "bravo"), ["notes/b.txt"]);

    std::fs::remove_file(lab.path("notes/b.txt")).expect("rm");
    let summary = lab.scan(&["notes"]);
    assert_eq!(
        (
            summary["deleted"].as_u64(),
            summary["upserted"].as_u64(),
            summary["hashed"].as_u64()
        ),
        (Some(1), Some(0), Some(0))
    );

    let events = new_events(&lab, old.len());
    assert_eq!(event_types(&events), [("delete_file", "notes/b.txt")]);
    assert_eq!(events[0].payload, json!({}), "a delete is a tombstone");
    assert!(dominates(&events[0].vector_clock, &old_b.vector_clock));

    let db = lab.db();
    let row = db.file("notes/b.txt");
    assert!(row.deleted_at.is_some(), "the row is a tombstone: {row:?}");
    assert_eq!(
        row.event_ulid.as_deref(),
        Some(events[0].event_ulid.as_str())
    );
    assert!(
        db.observed().iter().all(|o| o.path != "notes/b.txt"),
        "no longer observed on disk"
    );
    assert_eq!(db.runs().last().expect("run").files_deleted, Some(1));
    assert_eq!(
        search_paths(&lab, "bravo"),
        Vec::<String>::new(),
        "a deleted file is not found"
    );
    assert_eq!(search_paths(&lab, "alpha"), ["notes/a.txt"]);

    // The deletion is recorded once: the next scan says nothing more.
    lab.scan(&["notes"]);
    assert_eq!(new_events(&lab, old.len()).len(), 1);
}

#[test]
fn a_file_created_again_after_its_deletion_is_live_again() {
    let lab = Lab::new();
    lab.write("notes/a.txt", "alpha\n");
    lab.write("notes/b.txt", "bravo\n");
    lab.scan(&["notes"]);
    std::fs::remove_file(lab.path("notes/b.txt")).expect("rm");
    lab.scan(&["notes"]);
    let before = lab.db().outbox();
    let tombstone = before.last().expect("delete event").clone();
    assert_eq!(tombstone.event_type, "delete_file");

    lab.write("notes/b.txt", "bravo is back\n");
    lab.scan(&["notes"]);
    let events = new_events(&lab, before.len());
    assert_eq!(event_types(&events), [("upsert_file", "notes/b.txt")]);
    assert!(
        dominates(&events[0].vector_clock, &tombstone.vector_clock),
        "the new version causally follows the delete"
    );
    let row = lab.db().file("notes/b.txt");
    assert_eq!(row.deleted_at, None);
    assert_eq!(row.content.as_deref(), Some("bravo is back\n"));
    assert_eq!(search_paths(&lab, "back"), ["notes/b.txt"]);
}

#[test]
fn touching_a_file_without_changing_its_bytes_emits_no_event() {
    let lab = Lab::new();
    let path = lab.write("notes/a.txt", "alpha\n");
    lab.write("notes/b.txt", "bravo\n");
    lab.scan(&["notes"]);
    let before = lab.db().outbox();
    let row_before = lab.db().file("notes/a.txt");

    // Back an hour (an mtime in the future is never trusted, so it would be read every time).
    shift_mtime(&path, -3600);
    let summary = lab.scan(&["notes"]);
    // The new mtime makes the scan read the file again; the same hash makes it no change.
    assert_eq!(
        (
            summary["hashed"].as_u64(),
            summary["upserted"].as_u64(),
            summary["unchanged"].as_u64()
        ),
        (Some(1), Some(0), Some(1))
    );
    assert_eq!(lab.db().outbox(), before, "no event for a touch");
    assert_eq!(
        lab.db().file("notes/a.txt").event_ulid,
        row_before.event_ulid
    );
    let observed = lab
        .db()
        .observed()
        .into_iter()
        .find(|o| o.path == "notes/a.txt")
        .expect("observed");
    assert_eq!(
        observed.mtime_ns,
        mtime(&path).1,
        "the observed mtime follows the disk"
    );

    // And having seen the new mtime, the scan after that does not read it again.
    let summary = lab.scan(&["notes"]);
    assert_eq!(summary["hashed"], 0);
}

// ---- what is indexed ---------------------------------------------------------------------------

#[test]
fn content_is_capped_at_max_content_bytes_on_a_character_boundary() {
    let lab = Lab::with_config(
        "[index]\nmax_content_bytes = 10\n\n[[library]]\nname = \"capped\"\npath = '{root}/capped'\n",
    );
    let euros = "€".repeat(6); // 18 bytes, 3 per character: the cap falls inside the 4th
    lab.write("capped/euro.txt", &euros);
    lab.write("capped/ascii.txt", "abcdefghijklmnop");
    lab.write("capped/short.txt", "tiny");
    let summary = lab.scan(&[]);
    assert_eq!(summary["upserted"], 3);

    let db = lab.db();
    let euro = db.file("capped/euro.txt");
    assert_eq!(
        euro.content.as_deref(),
        Some("€€€"),
        "cut before the character the cap splits"
    );
    assert_eq!(
        euro.bytes,
        Some(18),
        "the size is the file's, not the content's"
    );
    assert_eq!(
        euro.sha256,
        Some(sha256_hex(&euros)),
        "the hash covers every byte"
    );
    assert_eq!(
        db.file("capped/ascii.txt").content.as_deref(),
        Some("abcdefghij")
    );
    assert_eq!(db.file("capped/short.txt").content.as_deref(), Some("tiny"));
    let event = db
        .outbox()
        .into_iter()
        .find(|e| e.entity_key == "capped/euro.txt")
        .expect("event");
    assert_eq!(
        event.payload["content"], "€€€",
        "the event carries the same capped text"
    );
    assert_eq!(event.payload["bytes"], 18);
}

#[test]
fn git_folders_and_swap_files_are_never_indexed() {
    let lab = Lab::new();
    lab.write("notes/keep.md", "kept\n");
    lab.write("notes/sub/keep.txt", "kept too\n");
    lab.write("notes/.git/config", "[core]\n");
    lab.write("notes/.git/objects/ab/cdef", "object\n");
    lab.write("notes/sub/.git/HEAD", "ref: refs/heads/main\n");
    lab.write("notes/keep.md.swp", "swap\n");
    lab.write("notes/sub/.keep.txt.swp", "swap\n");
    let summary = lab.scan(&["notes"]);
    assert_eq!(summary["seen"], 2, "{summary:#}");
    assert_eq!(
        lab.db().live_paths(),
        ["notes/keep.md", "notes/sub/keep.txt"]
    );
    assert_eq!(lab.db().observed().len(), 2);
}

#[test]
fn include_globs_restrict_the_library_to_what_they_match() {
    let lab = Lab::with_config(
        "[[library]]\nname = \"docs\"\npath = '{root}/docs'\ninclude = [\"**/*.md\"]\n",
    );
    lab.write("docs/a.md", "a\n");
    lab.write("docs/deep/er/b.md", "b\n");
    lab.write("docs/c.txt", "c\n");
    lab.write("docs/deep/d.rs", "fn d() {}\n");
    lab.write("docs/.git/x.md", "excluded by the default excludes\n");
    let summary = lab.scan(&[]);
    assert_eq!(summary["seen"], 2, "{summary:#}");
    assert_eq!(lab.db().live_paths(), ["docs/a.md", "docs/deep/er/b.md"]);
}

#[test]
fn the_database_inside_the_scanned_folder_is_not_indexed() {
    let mut lab = Lab::new();
    lab.write("notes/a.txt", "alpha\n");
    lab.db = lab.path("notes/agent.db");
    let summary = lab.scan(&["notes"]);
    assert_eq!(summary["seen"], 1, "{summary:#}");
    // A second scan while the database (and its WAL) changed under the library: still nothing.
    let summary = lab.scan(&["notes"]);
    assert_eq!(
        (summary["seen"].as_u64(), summary["upserted"].as_u64()),
        (Some(1), Some(0)),
        "{summary:#}"
    );
    assert_eq!(
        lab.db()
            .files()
            .iter()
            .map(|f| f.path.as_str())
            .collect::<Vec<_>>(),
        ["notes/a.txt"]
    );
    assert_eq!(lab.db().outbox().len(), 1);
}

#[test]
fn the_database_inside_the_scanned_folder_is_not_indexed_when_named_through_a_symlink() {
    // `--db ~/notes/agent.db` with a home reached through a symlink (or macOS's /var ->
    // /private/var): the walk meets the database under its real path.
    let mut lab = Lab::new();
    lab.write("notes/a.txt", "alpha\n");
    std::os::unix::fs::symlink("notes", lab.path("via-link")).expect("symlink");
    lab.db = lab.path("via-link/agent.db");
    let summary = lab.scan(&["notes"]);
    assert_eq!(
        summary["seen"], 1,
        "the database and its WAL files were walked: {summary:#}"
    );
    let summary = lab.scan(&["notes"]);
    assert_eq!(summary["upserted"], 0, "{summary:#}");
    assert_eq!(
        lab.db()
            .files()
            .iter()
            .map(|f| f.path.as_str())
            .collect::<Vec<_>>(),
        ["notes/a.txt"]
    );
}

#[test]
fn a_file_larger_than_any_buffer_is_hashed_whole_and_its_text_capped_at_the_default() {
    let lab = Lab::new();
    // 1 MiB of text: several read chunks, four times the default cap of 262144 bytes.
    let line = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ \n";
    assert_eq!(line.len(), 64);
    let text = line.repeat(16 * 1024);
    lab.write("notes/big.txt", &text);
    lab.scan(&["notes"]);
    let row = lab.db().file("notes/big.txt");
    assert_eq!(row.sha256, Some(sha256_hex(&text)));
    assert_eq!(row.bytes, Some(1 << 20));
    assert_eq!(row.content.as_deref(), Some(&text[..262_144]));
}

#[test]
fn an_empty_file_is_indexed() {
    let lab = Lab::new();
    lab.write("notes/empty.txt", "");
    lab.write("notes/other.txt", "x");
    lab.scan(&["notes"]);
    let row = lab.db().file("notes/empty.txt");
    assert_eq!((row.sha256, row.bytes), (Some(sha256_hex("")), Some(0)));
}

#[test]
fn a_decomposed_unicode_name_is_indexed_under_its_nfc_key() {
    let lab = Lab::new();
    lab.write("notes/cafe\u{301}.txt", "coffee\n"); // "café" as macOS writes it: e + combining acute
    lab.scan(&["notes"]);
    assert_eq!(lab.db().live_paths(), ["notes/caf\u{e9}.txt"]);
    let summary = lab.scan(&["notes"]);
    assert_eq!(
        (summary["hashed"].as_u64(), summary["upserted"].as_u64()),
        (Some(0), Some(0)),
        "{summary:#}"
    );
    assert_eq!(lab.db().outbox().len(), 1);
}

#[test]
fn two_names_that_are_one_key_after_normalisation_do_not_make_an_event_on_every_scan() {
    // Linux allows both "café" spellings side by side; they map to one entity key. Whatever the
    // agent does about it, it must not flip the key between the two files on every scan (an
    // endless stream of upserts, pushed to every device).
    let lab = Lab::new();
    lab.write("notes/caf\u{e9}.txt", "composed\n");
    lab.write("notes/cafe\u{301}.txt", "decomposed, longer\n");
    lab.write("notes/plain.txt", "plain\n");
    let first = lab.agent(&["--json", "scan", "notes"]).success();
    let events = lab.db().outbox();
    let for_key = events
        .iter()
        .filter(|e| e.entity_key == "notes/caf\u{e9}.txt")
        .count();
    assert!(
        for_key <= 1,
        "one scan made {for_key} events for one key: {:#?}",
        event_types(&events)
    );
    assert!(
        first.stderr.contains("caf"),
        "the clash is reported: {:?}",
        first.stderr
    );

    for _ in 0..2 {
        let summary = lab.scan(&["notes"]);
        assert_eq!(
            summary["upserted"], 0,
            "a scan with nothing changed made events: {summary:#}"
        );
    }
    assert_eq!(lab.db().outbox().len(), events.len());
}

#[test]
fn a_configured_library_root_that_is_a_symlink_is_followed() {
    // ~/notes -> /mnt/data/notes is common; only links *inside* a library are not followed.
    let lab = Lab::with_config("[[library]]\nname = \"notes\"\npath = '{root}/notes'\n");
    lab.write("real/a.txt", "alpha\n");
    std::os::unix::fs::symlink("real", lab.path("notes")).expect("symlink");
    let summary = lab.scan(&[]);
    assert_eq!(summary["seen"], 1, "{summary:#}");
    assert_eq!(lab.db().live_paths(), ["notes/a.txt"]);
}

// ---- bad input: unreadable, symlinks, special files, bad names ---------------------------------

#[test]
fn an_unreadable_file_is_a_warning_counted_in_the_run_and_the_scan_goes_on() {
    let lab = Lab::unprivileged();
    lab.write("notes/ok.txt", "readable\n");
    let secret = lab.write("notes/secret.txt", "no one may read this\n");
    set_mode(&secret, 0o000);

    let run = lab.agent(&["--json", "scan", "notes"]).success();
    let summary = run.json();
    assert_eq!(
        (
            summary["seen"].as_u64(),
            summary["upserted"].as_u64(),
            summary["errors"].as_u64()
        ),
        (Some(2), Some(1), Some(1)),
        "{summary:#}"
    );
    assert!(
        run.stderr.contains("secret.txt"),
        "the warning names the file: {:?}",
        run.stderr
    );
    assert!(
        run.stderr.to_lowercase().contains("permission denied"),
        "and says why: {:?}",
        run.stderr
    );

    let db = lab.db();
    assert_eq!(db.live_paths(), ["notes/ok.txt"]);
    assert_eq!(db.runs()[0].errors, Some(1));
}

#[test]
fn a_file_that_becomes_unreadable_is_not_taken_for_deleted() {
    let lab = Lab::unprivileged();
    lab.write("notes/ok.txt", "readable\n");
    let secret = lab.write("notes/secret.txt", "version one\n");
    lab.agent(&["scan", "notes"]).success();

    // Changed, so the scan must read it, and unreadable, so it cannot.
    lab.write("notes/secret.txt", "version two, which cannot be read\n");
    set_mode(&secret, 0o000);
    let summary = lab.agent(&["--json", "scan", "notes"]).success().json();
    assert_eq!(
        (
            summary["errors"].as_u64(),
            summary["deleted"].as_u64(),
            summary["upserted"].as_u64()
        ),
        (Some(1), Some(0), Some(0)),
        "{summary:#}"
    );

    let db = lab.db();
    assert_eq!(
        event_types(&db.outbox())
            .iter()
            .filter(|(t, _)| *t != "upsert_file")
            .count(),
        0,
        "no delete event"
    );
    let row = db.file("notes/secret.txt");
    assert_eq!(row.deleted_at, None);
    assert_eq!(
        row.sha256,
        Some(sha256_hex("version one\n")),
        "the last hash that matched its bytes stays"
    );
}

#[test]
fn a_folder_that_cannot_be_read_does_not_delete_the_files_indexed_under_it() {
    let lab = Lab::unprivileged();
    lab.write("notes/top.txt", "top\n");
    lab.write("notes/gone.txt", "to be deleted\n");
    lab.write("notes/locked/a.txt", "a\n");
    lab.write("notes/locked/deeper/b.txt", "b\n");
    lab.agent(&["scan", "notes"]).success();

    set_mode(&lab.path("notes/locked"), 0o000);
    std::fs::remove_file(lab.path("notes/gone.txt")).expect("rm");
    let run = lab.agent(&["--json", "scan", "notes"]).success();
    let summary = run.json();
    set_mode(&lab.path("notes/locked"), 0o755);

    assert!(
        summary["errors"].as_u64() >= Some(1),
        "the unreadable folder is counted: {summary:#}"
    );
    assert!(
        run.stderr.contains("locked"),
        "and named on stderr: {:?}",
        run.stderr
    );
    let db = lab.db();
    let deletes: Vec<String> = db
        .outbox()
        .into_iter()
        .filter(|e| e.event_type == "delete_file")
        .map(|e| e.entity_key)
        .collect();
    assert_eq!(
        deletes,
        ["notes/gone.txt"],
        "only the file really gone is deleted"
    );
    assert_eq!(
        db.live_paths(),
        [
            "notes/locked/a.txt",
            "notes/locked/deeper/b.txt",
            "notes/top.txt"
        ]
    );
}

#[test]
fn a_folder_that_can_be_listed_but_not_entered_does_not_delete_the_files_indexed_under_it() {
    let lab = Lab::unprivileged();
    lab.write("notes/top.txt", "top\n");
    lab.write("notes/half/a.txt", "a\n");
    lab.agent(&["scan", "notes"]).success();

    set_mode(&lab.path("notes/half"), 0o644); // r without x: names visible, files not
    let summary = lab.agent(&["--json", "scan", "notes"]).success().json();
    set_mode(&lab.path("notes/half"), 0o755);

    assert!(summary["errors"].as_u64() >= Some(1), "{summary:#}");
    assert_eq!(summary["deleted"], 0, "{summary:#}");
    let db = lab.db();
    assert!(db.outbox().iter().all(|e| e.event_type == "upsert_file"));
    assert_eq!(db.live_paths(), ["notes/half/a.txt", "notes/top.txt"]);
}

#[test]
fn an_unreadable_library_root_deletes_nothing() {
    let lab = Lab::unprivileged();
    lab.write("notes/a.txt", "a\n");
    lab.write("notes/sub/b.txt", "b\n");
    lab.agent(&["scan", "notes"]).success();

    set_mode(&lab.path("notes"), 0o000);
    let run = lab.agent(&["scan", "notes"]);
    set_mode(&lab.path("notes"), 0o755);
    let run = run.failure();
    run.error_line(&["notes"]);

    let db = lab.db();
    assert!(
        db.outbox().iter().all(|e| e.event_type == "upsert_file"),
        "no delete event"
    );
    assert_eq!(db.live_paths(), ["notes/a.txt", "notes/sub/b.txt"]);
}

#[test]
fn permission_tests_really_ran_without_read_access() {
    // The tests above are only worth something if the unprivileged run cannot read a mode-000
    // file; as root without the uid switch they would pass for the wrong reason.
    let lab = Lab::unprivileged();
    let f = lab.write("probe/f.txt", "x\n");
    set_mode(&f, 0o000);
    let summary = lab.agent(&["--json", "scan", "probe"]).success().json();
    assert_eq!(
        summary["errors"], 1,
        "the agent could read a mode-000 file: {summary:#}"
    );
}

#[test]
fn symlinks_are_not_followed_and_a_symlink_loop_terminates() {
    let lab = Lab::new();
    lab.write("lib/ok.txt", "inside\n");
    lab.write("outside/secret.txt", "outsider words\n");
    lab.write("outside/dir/more.txt", "outsider folder\n");
    std::fs::create_dir_all(lab.path("lib/sub")).expect("mkdir");
    let link =
        |target: &str, at: &str| std::os::unix::fs::symlink(target, lab.path(at)).expect("symlink");
    link("../outside/secret.txt", "lib/link.txt");
    link("../outside/dir", "lib/linked-dir");
    link("..", "lib/sub/loop");
    link("../lib", "lib/self");
    link("nowhere", "lib/dangling");

    let summary = lab.scan(&["lib"]);
    assert_eq!(
        (summary["seen"].as_u64(), summary["errors"].as_u64()),
        (Some(1), Some(0)),
        "{summary:#}"
    );
    assert_eq!(
        lab.db()
            .files()
            .iter()
            .map(|f| f.path.as_str())
            .collect::<Vec<_>>(),
        ["lib/ok.txt"]
    );
    assert_eq!(search_paths(&lab, "outsider"), Vec::<String>::new());
}

#[test]
fn a_fifo_is_skipped_and_the_scan_does_not_block_on_it() {
    let lab = Lab::new();
    lab.write("notes/a.txt", "alpha\n");
    let fifo = std::ffi::CString::new(lab.path("notes/pipe").as_os_str().as_bytes()).expect("path");
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0, "mkfifo");
    let summary = lab.scan(&["notes"]);
    assert_eq!(summary["errors"], 0);
    assert_eq!(lab.db().live_paths(), ["notes/a.txt"]);
}

#[test]
fn a_name_that_is_not_utf8_is_reported_and_skipped_and_the_rest_is_indexed() {
    let lab = Lab::new();
    lab.write("notes/good.txt", "good\n");
    let root = lab.path("notes");
    let bad_file = root.join(std::ffi::OsStr::from_bytes(b"bad\xff.txt"));
    std::fs::write(&bad_file, "latin-1 name\n").expect("write");
    let bad_dir = root.join(std::ffi::OsStr::from_bytes(b"folder\xfe"));
    std::fs::create_dir(&bad_dir).expect("mkdir");
    std::fs::write(bad_dir.join("inside.txt"), "inside a badly named folder\n").expect("write");

    let run = lab.agent(&["--json", "scan", "notes"]).success();
    let summary = run.json();
    assert_eq!(
        (
            summary["seen"].as_u64(),
            summary["upserted"].as_u64(),
            summary["errors"].as_u64()
        ),
        (Some(1), Some(1), Some(2)),
        "{summary:#}"
    );
    let warnings: Vec<&str> = run
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains("not valid UTF-8"))
        .collect();
    assert_eq!(
        warnings.len(),
        2,
        "one warning per bad name: {:?}",
        run.stderr
    );
    assert!(
        warnings.iter().any(|w| w.contains("bad")) && warnings.iter().any(|w| w.contains("folder")),
        "{warnings:?}"
    );

    let db = lab.db();
    assert_eq!(
        db.files()
            .iter()
            .map(|f| f.path.as_str())
            .collect::<Vec<_>>(),
        ["notes/good.txt"]
    );
    assert_eq!(db.runs()[0].errors, Some(2));
}

// ---- the mass-delete guard ---------------------------------------------------------------------

const NOTES_LIBRARY: &str = "[[library]]\nname = \"notes\"\npath = '{root}/notes'\n";

/// A library of three files, scanned once: configured as `notes` when `configured`, else named
/// on the command line (`agent scan notes`).
fn indexed_notes_as(configured: bool) -> (Lab, Vec<OutboxRow>) {
    let lab = if configured {
        Lab::with_config(NOTES_LIBRARY)
    } else {
        Lab::new()
    };
    lab.write("notes/a.txt", "alpha\n");
    lab.write("notes/b.md", "bravo\n");
    lab.write("notes/sub/c.txt", "charlie\n");
    lab.scan(if configured { &[] } else { &["notes"] });
    let events = lab.db().outbox();
    assert_eq!(events.len(), 3);
    (lab, events)
}

fn indexed_notes() -> (Lab, Vec<OutboxRow>) {
    indexed_notes_as(true)
}

/// The refused scan: non-zero, a reason naming the library, no delete, every row live.
#[track_caller]
fn assert_refused_and_nothing_lost(lab: &Lab, before: &[OutboxRow], args: &[&str], reason: &str) {
    let mut full = vec!["scan"];
    full.extend_from_slice(args);
    let run = lab.agent(&full).failure();
    let line = run.error_line(&["notes", reason]);
    assert!(!line.contains('\n'));
    let db = lab.db();
    assert_eq!(
        db.outbox(),
        before,
        "no event at all, and above all no delete_file"
    );
    assert_eq!(
        db.live_paths(),
        ["notes/a.txt", "notes/b.md", "notes/sub/c.txt"]
    );
    assert_eq!(
        db.observed().len(),
        3,
        "what this device saw is kept for when the root is back"
    );
    let run_row = db
        .runs()
        .last()
        .cloned()
        .expect("the refused scan is recorded");
    assert_ne!(run_row.status.as_deref(), Some("ok"), "{run_row:?}");
    assert!(
        run_row
            .message
            .as_deref()
            .is_some_and(|m| m.contains("notes")),
        "{run_row:?}"
    );
}

#[test]
fn a_missing_library_root_is_an_error_and_deletes_nothing() {
    let (lab, before) = indexed_notes();
    std::fs::rename(lab.path("notes"), lab.path("elsewhere")).expect("mv");
    assert_refused_and_nothing_lost(&lab, &before, &[], "unavailable");

    // Back where it was (same inodes): nothing happened, nothing to read.
    std::fs::rename(lab.path("elsewhere"), lab.path("notes")).expect("mv back");
    let summary = lab.scan(&[]);
    assert_eq!(
        (
            summary["hashed"].as_u64(),
            summary["upserted"].as_u64(),
            summary["deleted"].as_u64()
        ),
        (Some(0), Some(0), Some(0))
    );
}

#[test]
fn a_missing_folder_named_on_the_command_line_is_an_error_and_deletes_nothing() {
    let (lab, before) = indexed_notes_as(false);
    std::fs::remove_dir_all(lab.path("notes")).expect("rm -r");
    assert_refused_and_nothing_lost(&lab, &before, &["notes"], "unavailable");
}

#[test]
fn an_emptied_folder_named_on_the_command_line_is_an_error_and_deletes_nothing() {
    let (lab, before) = indexed_notes_as(false);
    std::fs::remove_dir_all(lab.path("notes")).expect("rm -r");
    std::fs::create_dir(lab.path("notes")).expect("mkdir");
    assert_refused_and_nothing_lost(&lab, &before, &["notes"], "empty");
}

#[test]
fn a_missing_configured_root_named_on_the_command_line_is_that_library_and_deletes_nothing() {
    // `agent scan ~/notes` where ~/notes is the configured library `notes`, unmounted: the same
    // library, reported as unavailable, not "a library named notes with another root".
    let (lab, before) = indexed_notes();
    std::fs::remove_dir_all(lab.path("notes")).expect("rm -r");
    assert_refused_and_nothing_lost(&lab, &before, &["notes"], "unavailable");
}

#[test]
fn an_emptied_library_root_is_an_error_and_deletes_nothing() {
    let (lab, before) = indexed_notes();
    std::fs::remove_dir_all(lab.path("notes")).expect("rm -r");
    std::fs::create_dir(lab.path("notes")).expect("mkdir: an empty mount point");
    assert_refused_and_nothing_lost(&lab, &before, &[], "empty");

    // The disk comes back with the same bytes (new inodes): read again, no event.
    lab.write("notes/a.txt", "alpha\n");
    lab.write("notes/b.md", "bravo\n");
    lab.write("notes/sub/c.txt", "charlie\n");
    let summary = lab.scan(&[]);
    assert_eq!(
        (summary["upserted"].as_u64(), summary["deleted"].as_u64()),
        (Some(0), Some(0)),
        "{summary:#}"
    );
    assert_eq!(lab.db().outbox(), before);
}

#[test]
fn a_library_root_replaced_by_a_file_is_an_error_and_deletes_nothing() {
    let (lab, before) = indexed_notes();
    std::fs::remove_dir_all(lab.path("notes")).expect("rm -r");
    std::fs::write(lab.path("notes"), "not a folder").expect("write");
    assert_refused_and_nothing_lost(&lab, &before, &[], "not a folder");
}

#[test]
fn a_refused_library_does_not_stop_the_others_from_being_scanned() {
    let lab = Lab::with_config(&format!(
        "{NOTES_LIBRARY}\n[[library]]\nname = \"work\"\npath = '{{root}}/work'\n"
    ));
    lab.write("notes/a.txt", "alpha\n");
    lab.write("work/w.txt", "work one\n");
    lab.scan(&[]);
    let before = lab.db().outbox();

    std::fs::remove_dir_all(lab.path("notes")).expect("rm -r");
    lab.write("work/w.txt", "work two, edited\n");
    let run = lab.agent(&["--json", "scan"]).failure();
    run.error_line(&["notes"]);
    let summary = run.json();
    assert_eq!(summary["ok"], false);
    assert_eq!(library(&summary, "notes")["status"], "refused");
    assert_eq!(library(&summary, "work")["status"], "ok");
    assert_eq!(library(&summary, "work")["upserted"], 1);

    assert_eq!(
        event_types(&new_events(&lab, before.len())),
        [("upsert_file", "work/w.txt")]
    );
    assert_eq!(lab.db().live_paths(), ["notes/a.txt", "work/w.txt"]);
}

#[test]
fn a_refused_library_is_reported_once_on_stderr_as_one_plain_line() {
    // DESIGN.md: "non-zero with a one-line reason on stderr". Today the reason is also logged at
    // ERROR level just before, so it shows twice, the first time with colour escape codes even
    // when stderr is a file or a pipe.
    let (lab, _) = indexed_notes();
    std::fs::remove_dir_all(lab.path("notes")).expect("rm -r");
    let run = lab.agent(&["scan"]).failure();
    run.assert_one_line_error(&["library notes", "unavailable"]);
}

#[test]
fn warnings_written_to_a_pipe_carry_no_terminal_colour_codes() {
    let lab = Lab::new();
    lab.write("notes/good.txt", "good\n");
    std::fs::write(
        lab.path("notes")
            .join(std::ffi::OsStr::from_bytes(b"bad\xff.txt")),
        "x",
    )
    .expect("write");
    let run = lab.agent(&["scan", "notes"]).success();
    assert!(run.stderr.contains("not valid UTF-8"), "{:?}", run.stderr);
    assert!(
        !run.stderr.contains('\u{1b}'),
        "stderr is not a terminal, yet has escape codes: {:?}",
        run.stderr
    );
}

// ---- --library ---------------------------------------------------------------------------------

#[test]
fn library_option_scans_only_that_library() {
    let lab = Lab::with_config(
        "[[library]]\nname = \"alpha\"\npath = '{root}/alpha'\n\n[[library]]\nname = \"beta\"\npath = '{root}/beta'\n",
    );
    lab.write("alpha/a.txt", "a one\n");
    lab.write("beta/b.txt", "b one\n");
    let summary = lab.scan(&[]);
    assert_eq!(summary["libraries"].as_array().map(Vec::len), Some(2));
    assert_eq!(lab.db().live_paths(), ["alpha/a.txt", "beta/b.txt"]);
    let before = lab.db().outbox();

    lab.write("alpha/a.txt", "a two, edited\n");
    lab.write("beta/b.txt", "b two, edited\n");
    std::fs::remove_file(lab.path("beta/b.txt")).expect("rm");
    lab.write("beta/new.txt", "new\n");
    let summary = lab.scan(&["--library", "alpha"]);
    let names: Vec<&str> = summary["libraries"]
        .as_array()
        .expect("list")
        .iter()
        .map(|l| l["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["alpha"]);
    assert_eq!(
        event_types(&new_events(&lab, before.len())),
        [("upsert_file", "alpha/a.txt")]
    );
    assert_eq!(
        lab.db().live_paths(),
        ["alpha/a.txt", "beta/b.txt"],
        "beta was not looked at"
    );
    assert_eq!(
        lab.db()
            .runs()
            .last()
            .and_then(|r| r.library.clone())
            .as_deref(),
        Some("alpha")
    );
}

#[test]
fn library_option_with_an_unknown_name_is_an_error() {
    let lab = Lab::with_config(NOTES_LIBRARY);
    lab.write("notes/a.txt", "a\n");
    let run = lab.agent(&["scan", "--library", "nope"]).failure();
    run.assert_one_line_error(&["nope"]);
    assert!(run.stdout.is_empty(), "{:?}", run.stdout);
    if lab.db.exists() {
        assert!(lab.db().outbox().is_empty(), "nothing scanned");
    }
}

#[test]
fn scan_without_libraries_or_folders_is_an_error_that_says_what_to_do() {
    let lab = Lab::new();
    let run = lab.agent(&["scan"]).failure();
    run.assert_one_line_error(&["agent library add PATH", "agent scan PATH"]);
}

#[test]
fn a_scan_run_is_recorded_in_status() {
    let lab = Lab::with_config(NOTES_LIBRARY);
    lab.write("notes/a.txt", "a\n");
    lab.write("notes/b.txt", "b\n");
    lab.scan(&[]);
    std::fs::remove_file(Path::new(&lab.path("notes/b.txt"))).expect("rm");
    lab.scan(&[]);
    let status = lab.json(&["status"]);
    let last = &status["last_scan"];
    assert_eq!(last["files_seen"], 1);
    assert_eq!(last["files_deleted"], 1);
    assert_eq!(last["status"], "ok");
    assert_eq!(status["counts"]["files"], 1);
    assert_eq!(status["counts"]["deleted"], 1);
    assert_eq!(status["counts"]["outbox_pending"], 3);
}

/// A lab whose library `notes` holds `n` files, scanned.
fn scanned_notes(n: usize) -> Lab {
    let lab = Lab::with_config(NOTES_LIBRARY);
    for i in 0..n {
        lab.write(&format!("notes/f{i:03}.txt"), format!("{i}\n"));
    }
    lab.scan(&[]);
    lab
}

fn remove_notes(lab: &Lab, n: usize) {
    for i in 0..n {
        std::fs::remove_file(lab.path(&format!("notes/f{i:03}.txt"))).expect("remove");
    }
}

fn delete_events(lab: &Lab) -> usize {
    lab.db()
        .outbox()
        .iter()
        .filter(|e| e.event_type == "delete_file")
        .count()
}

#[test]
fn a_scan_that_would_delete_most_of_a_library_records_none_until_allowed() {
    let lab = scanned_notes(150);
    remove_notes(&lab, 120);
    let run = lab.agent(&["scan"]).failure();
    run.assert_one_line_error(&[
        "120 of the 150",
        "agent scan --allow-mass-delete --library notes",
    ]);
    assert_eq!(delete_events(&lab), 0, "nothing recorded");
    assert_eq!(lab.db().live_paths().len(), 150);

    let out = lab.scan(&["--allow-mass-delete"]);
    assert_eq!(out["deleted"], 120, "{out}");
    assert_eq!(delete_events(&lab), 120);
}

#[test]
fn deleting_half_a_library_or_a_hundred_files_is_an_ordinary_scan() {
    let lab = scanned_notes(150);
    remove_notes(&lab, 75);
    assert_eq!(lab.scan(&[])["deleted"], 75, "exactly half");
    let small = scanned_notes(110);
    remove_notes(&small, 100);
    assert_eq!(small.scan(&[])["deleted"], 100, "a hundred at most");
}

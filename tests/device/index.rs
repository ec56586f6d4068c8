//! The indexer and the store, through the library API: the two views of a file (observed vs
//! shared), the full-text index kept in step, clocks, conflicts, and the read guard.

use std::path::Path;

use lib_agent::config::{Config, Overrides};
use lib_agent::index::scan::{self, ScanOptions, ScanSummary};
use lib_agent::index::{self, ReadError};
use lib_agent::model::{Event, EventType, FilePayload, VectorClock};
use lib_agent::store::{Clock, Store};

/// A connection of the test's own, to look at the tables as a user's `sqlite3` would.
fn db_of(store: &Store) -> rusqlite::Connection {
    rusqlite::Connection::open(store.path()).expect("open the database")
}

struct Fixture {
    dir: tempfile::TempDir,
    config: Config,
    store: Store,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("notes")).expect("mkdir");
        // A library that becomes empty is held back by the mass-delete guard: keep one file.
        std::fs::write(dir.path().join("notes/keep.bin"), [0u8; 4]).expect("write");
        let toml = format!(
            "[store]\npath = {:?}\n[[library]]\nname = \"notes\"\npath = {:?}\n",
            dir.path().join("agent.db"),
            dir.path().join("notes")
        );
        let config =
            Config::from_toml_str(&toml, None, &|_| None, &Overrides::default()).expect("config");
        let store = Store::open(&config.store.path).expect("open store");
        Fixture { dir, config, store }
    }

    fn write(&self, rel: &str, text: &str) {
        let path = self.dir.path().join("notes").join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }

    fn scan(&mut self) -> ScanSummary {
        scan::scan(&mut self.store, &self.config, &ScanOptions::default()).expect("scan")
    }

    fn search(&self, q: &str) -> Vec<String> {
        self.store
            .search(q, 10)
            .expect("search")
            .into_iter()
            .map(|h| h.path)
            .collect()
    }

    fn outbox(&self) -> Vec<(String, String, VectorClock)> {
        let db = db_of(&self.store);
        let mut stmt = db
            .prepare("SELECT event_type, entity_key, vector_clock FROM lib_outbox ORDER BY id")
            .expect("prepare");
        stmt.query_map([], |r| {
            let clock: String = r.get(2)?;
            Ok((
                r.get(0)?,
                r.get(1)?,
                serde_json::from_str(&clock).expect("clock json"),
            ))
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
    }

    fn shared_sha(&self, key: &str) -> Option<String> {
        db_of(&self.store)
            .query_row("SELECT sha256 FROM lib_files WHERE path = ?1", [key], |r| {
                r.get(0)
            })
            .expect("row")
    }

    /// An event from another device, applied as the puller will apply it.
    fn apply_remote(
        &mut self,
        device: &str,
        key: &str,
        clock: VectorClock,
        text: Option<&str>,
    ) -> Event {
        let payload = text.map(|t| FilePayload {
            sha256: Some(format!("{:064x}", t.len())),
            bytes: Some(t.len() as u64),
            mtime_unix: Some(0),
            ext: Some("md".into()),
            mime: Some("text/markdown".into()),
            content: Some(t.into()),
        });
        self.apply_remote_payload(device, key, clock, payload)
    }

    /// [`Fixture::apply_remote`] with the payload given whole; `None` is a delete.
    fn apply_remote_payload(
        &mut self,
        device: &str,
        key: &str,
        clock: VectorClock,
        payload: Option<FilePayload>,
    ) -> Event {
        let event = Event {
            event_ulid: ulid::Ulid::new().to_string(),
            device_id: device.into(),
            event_type: if payload.is_some() {
                EventType::UpsertFile
            } else {
                EventType::DeleteFile
            },
            entity_type: "file".into(),
            entity_key: key.into(),
            payload: payload.unwrap_or_default(),
            vector_clock: clock,
            created_at: "2026-11-25T00:00:00Z".into(),
        };
        event.validate(1 << 20).expect("valid event");
        let batch = self.store.batch().expect("batch");
        batch.apply(&event).expect("apply");
        batch.commit().expect("commit");
        event
    }
}

#[test]
fn search_follows_edits_and_deletes() {
    let mut f = Fixture::new();
    f.write("a.md", "the quick brown fox");
    f.scan();
    assert_eq!(f.search("quick"), ["notes/a.md"]);
    f.write("a.md", "a lazy dog, longer now");
    f.scan();
    assert!(
        f.search("quick").is_empty(),
        "old text must leave the index"
    );
    assert_eq!(f.search("lazy"), ["notes/a.md"]);
    assert_eq!(f.search("a.md"), ["notes/a.md"], "names are searchable too");
    std::fs::remove_file(f.dir.path().join("notes/a.md")).expect("rm");
    f.scan();
    assert!(
        f.search("lazy").is_empty(),
        "a tombstone is not a search result"
    );
    let integrity = db_of(&f.store).execute(
        "INSERT INTO lib_files_fts(lib_files_fts) VALUES ('integrity-check')",
        [],
    );
    assert!(
        integrity.is_ok(),
        "FTS index consistent with lib_files: {integrity:?}"
    );
}

#[test]
fn local_edits_bump_this_devices_entry_over_the_seen_clock() {
    let mut f = Fixture::new();
    let me = f.store.device_id().to_owned();
    f.write("a.md", "one");
    f.scan();
    f.write("a.md", "two!");
    f.scan();
    let events: Vec<_> = f
        .outbox()
        .into_iter()
        .filter(|e| e.1 == "notes/a.md")
        .collect();
    assert_eq!(events.len(), 2);
    assert_eq!(
        events[0].2.entries().map(|(d, _)| d).collect::<Vec<_>>(),
        [me.as_str()]
    );
    assert_eq!(
        events[1].2.entries().map(|(d, _)| d).collect::<Vec<_>>(),
        [me.as_str()]
    );
    assert!(events[1].2.get(&me) > events[0].2.get(&me));
    assert!(events[1].2.dominates(&events[0].2));
}

#[test]
fn a_remote_version_changes_the_shared_view_but_not_what_this_device_observed() {
    let mut f = Fixture::new();
    let me = f.store.device_id().to_owned();
    f.write("a.md", "mine");
    f.scan();
    let local_sha = f.shared_sha("notes/a.md");
    // Another device edited after seeing ours: it wins in the shared view. (Our entry is whatever
    // number the scan gave a.md: the readers finish in any order.)
    let ours = f
        .outbox()
        .into_iter()
        .find(|e| e.1 == "notes/a.md")
        .expect("a.md's event")
        .2;
    let mut theirs = ours.clone();
    theirs.set("dev-b", 1);
    f.apply_remote("dev-b", "notes/a.md", theirs, Some("theirs"));
    assert_ne!(f.shared_sha("notes/a.md"), local_sha);
    assert_eq!(f.search("theirs"), ["notes/a.md"]);
    // Our disk did not change, so a rescan says nothing: no ping-pong between the two versions.
    let before = f.outbox().len();
    let summary = f.scan();
    assert_eq!(summary.totals.upserted, 0);
    assert_eq!(f.outbox().len(), before);
    // A later local edit has seen dev-b's version and dominates it.
    f.write("a.md", "mine again, edited");
    f.scan();
    let last = f.outbox().pop().expect("event");
    assert_eq!(last.1, "notes/a.md");
    assert_eq!(last.2.get("dev-b"), 1);
    assert!(last.2.get(&me) > 1);
    assert_eq!(f.store.counts().expect("counts").conflicts, 0);
}

#[test]
fn a_concurrent_remote_edit_that_loses_is_listed_as_a_conflict() {
    let mut f = Fixture::new();
    f.write("a.md", "mine");
    f.scan();
    // dev-0 sorts below any UUID, and its clock sum equals ours: ours wins, theirs is the conflict.
    let theirs = f.apply_remote(
        "0-dev",
        "notes/a.md",
        VectorClock::from([("0-dev", 1)]),
        Some("theirs"),
    );
    let conflicts = f.store.conflicts().expect("conflicts");
    assert_eq!(conflicts.len(), 1);
    assert_eq!(
        conflicts[0].loser.event_ulid.as_deref(),
        Some(theirs.event_ulid.as_str())
    );
    assert_eq!(
        conflicts[0].winner.device_id.as_deref(),
        Some(f.store.device_id())
    );
    // Editing after seeing the conflict resolves it.
    f.write("a.md", "merged by hand");
    f.scan();
    assert!(f.store.conflicts().expect("conflicts").is_empty());
}

#[test]
fn an_older_remote_upsert_does_not_resurrect_a_local_delete() {
    let mut f = Fixture::new();
    f.write("a.md", "doomed");
    f.scan();
    // dev-b's version arrives, then this device deletes the file having seen it.
    let stale = f.apply_remote(
        "dev-b",
        "notes/a.md",
        VectorClock::from([("dev-b", 1)]),
        Some("stale"),
    );
    std::fs::remove_file(f.dir.path().join("notes/a.md")).expect("rm");
    f.scan();
    let delete = f.outbox().pop().expect("delete event");
    assert_eq!(delete.0, "delete_file");
    assert!(delete.2.dominates(&stale.vector_clock));
    // dev-b's upsert delivered again (as a re-pull would) changes nothing.
    let batch = f.store.batch().expect("batch");
    batch.apply(&stale).expect("apply");
    batch.commit().expect("commit");
    let deleted: Option<String> = db_of(&f.store)
        .query_row(
            "SELECT deleted_at FROM lib_files WHERE path = 'notes/a.md'",
            [],
            |r| r.get(0),
        )
        .expect("row");
    assert!(deleted.is_some());
    assert!(f.search("stale").is_empty());
    assert!(f.store.conflicts().expect("conflicts").is_empty());
}

#[test]
fn sequence_numbers_survive_reopening_and_stay_above_our_own_entries_seen_elsewhere() {
    let mut f = Fixture::new();
    let me = f.store.device_id().to_owned();
    f.write("a.md", "one");
    f.scan();
    let path = f.config.store.path.clone();
    drop(std::mem::replace(
        &mut f.store,
        Store::open(&path).expect("reopen"),
    ));
    assert_eq!(f.store.device_id(), me, "the device id is stable");
    // As if this database were restored from an old backup: the brain knows our entry 7.
    f.apply_remote(
        "dev-b",
        "notes/b.md",
        VectorClock::from([(me.as_str(), 7), ("dev-b", 1)]),
        Some("b"),
    );
    f.write("b.md", "edited here");
    f.scan();
    let last = f.outbox().pop().expect("event");
    assert!(
        last.2.get(&me) > 7,
        "never reuse a number our events carried: {}",
        last.2
    );
}

#[test]
fn a_file_first_seen_here_that_another_device_indexed_is_merged_with_its_version() {
    let mut f = Fixture::new();
    let me = f.store.device_id().to_owned();
    f.write("mine.md", "made here");
    f.scan();
    let mine = f.outbox().pop().expect("mine.md's event").2.get(&me);
    // dev-b indexed two files this device has not seen yet: one with the bytes this device will
    // find, one with other bytes.
    let same = f.dir.path().join("same.md");
    std::fs::write(&same, "the same bytes").expect("write");
    let file = index::read_file(&same, 1 << 20).expect("read");
    f.apply_remote_payload(
        "dev-b",
        "notes/same.md",
        VectorClock::from([("dev-b", 1)]),
        Some(file.payload()),
    );
    f.apply_remote(
        "dev-b",
        "notes/other.md",
        VectorClock::from([("dev-b", 2)]),
        Some("theirs"),
    );
    let before = f.outbox().len();
    f.write("same.md", "the same bytes");
    f.write("other.md", "other bytes here");
    let summary = f.scan();
    // The same bytes say nothing new; the other bytes are an edit made after seeing dev-b's.
    assert_eq!(summary.totals.upserted, 1);
    let events = f.outbox();
    assert_eq!(events.len(), before + 1);
    let (kind, key, clock) = events.last().expect("event");
    assert_eq!(
        (kind.as_str(), key.as_str()),
        ("upsert_file", "notes/other.md")
    );
    assert_eq!(clock.get("dev-b"), 2, "it has seen dev-b's version");
    assert_eq!(clock.get(&me), mine + 1, "no sequence number skipped");
    assert_eq!(f.search("other"), ["notes/other.md"]);
    assert_eq!(f.store.counts().expect("counts").conflicts, 0);
}

#[test]
fn a_file_whose_bytes_do_not_match_its_size_is_not_recorded() {
    // /proc files report size 0 but have content: the same guard that catches a file written
    // while it is being hashed.
    let result = index::read_file(Path::new("/proc/self/status"), 1024);
    assert!(matches!(result, Err(ReadError::Changed)), "{result:?}");
}

#[test]
fn text_is_kept_up_to_the_cap_and_binary_is_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = dir.path().join("t.txt");
    std::fs::write(&text, "é".repeat(100)).expect("write");
    let read = index::read_file(&text, 11).expect("read");
    assert_eq!(
        read.content.as_deref(),
        Some("ééééé"),
        "cut on a character boundary"
    );
    assert_eq!(read.mime, "text/plain");
    assert_eq!(read.stat.bytes, 200);
    let bin = dir.path().join("b.bin");
    std::fs::write(&bin, [0u8, 1, 2, 255]).expect("write");
    let read = index::read_file(&bin, 1024).expect("read");
    assert_eq!(read.content, None);
    let noext = dir.path().join("Makefile");
    std::fs::write(&noext, "all:\n\techo hi\n").expect("write");
    let read = index::read_file(&noext, 1024).expect("read");
    assert_eq!(
        read.mime, "text/plain",
        "text without an extension is sniffed"
    );
    assert!(read.content.is_some());
}

#[test]
fn a_large_file_is_hashed_in_bounded_memory_and_correctly() {
    use sha2::{Digest, Sha256};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("big.bin");
    let chunk: Vec<u8> = (0..1_000_003u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &chunk).expect("write");
    let read = index::read_file(&path, 1024).expect("read");
    assert_eq!(read.sha256, format!("{:x}", Sha256::digest(&chunk)));
    assert_eq!(read.content, None);
}

#[test]
fn a_same_size_write_in_the_same_clock_tick_as_the_read_is_not_missed() {
    let mut fx = Fixture::new();
    let path = fx.dir.path().join("notes/draft.md");
    fx.write("draft.md", "first take\n");
    let stamped = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .expect("mtime");
    assert_eq!(fx.scan().totals.upserted, 2, "draft.md and keep.bin");

    // Rewritten with as many bytes within the same tick of the kernel's coarse clock: size, mtime
    // and inode are what the scan saw, only the bytes differ.
    fx.write("draft.md", "other take\n");
    std::fs::File::options()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_modified(stamped))
        .expect("restore mtime");
    let summary = fx.scan();
    assert_eq!(summary.totals.upserted, 1, "{summary:?}");
    assert_eq!(fx.search("other"), ["notes/draft.md"]);

    // Once the files are older than the racy window, their stat is trusted again: not re-read.
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    for file in [path.clone(), fx.dir.path().join("notes/keep.bin")] {
        std::fs::File::options()
            .write(true)
            .open(&file)
            .and_then(|f| f.set_modified(old))
            .expect("age the file");
    }
    assert_eq!(fx.scan().totals.upserted, 0, "the same bytes: no event");
    assert_eq!(
        fx.scan().totals.hashed,
        0,
        "an old, unchanged file is not read"
    );
}

#[test]
fn only_a_stat_taken_well_after_the_write_vouches_for_the_file() {
    use std::time::{Duration, UNIX_EPOCH};
    let at = |ns: u64| UNIX_EPOCH + Duration::from_nanos(ns);
    let second = 1_000_000_000i64;
    let mtime = 1_780_000_000 * second + 123_456_789;
    assert!(
        index::is_racy(mtime, at(mtime as u64)),
        "read in the tick of the write"
    );
    assert!(
        index::is_racy(mtime, at(mtime as u64 + 10_000_000)),
        "10 ms later"
    );
    assert!(
        !index::is_racy(mtime, at(mtime as u64 + 100_000_000)),
        "100 ms later"
    );
    assert!(
        index::is_racy(mtime, at(mtime as u64 - 5 * second as u64)),
        "mtime in the future"
    );
    let whole = 1_780_000_000 * second;
    assert!(
        index::is_racy(whole, at(whole as u64 + second as u64)),
        "whole-second stamps: 1 s later"
    );
    assert!(!index::is_racy(whole, at(whole as u64 + 3 * second as u64)));
}

/// The store's clock, not the system's, stamps what the store keeps and tells a read that came
/// too soon after a write: the deterministic simulation runs the indexer on a clock of its own.
#[test]
fn the_stores_clock_stamps_what_it_keeps_and_decides_which_reads_are_racy() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    let mut fx = Fixture::new();
    let start = UNIX_EPOCH + Duration::from_secs(1_900_000_000);
    let elapsed_ms = Arc::new(AtomicU64::new(0));
    let clock = elapsed_ms.clone();
    fx.store.set_clock(Clock::from_fn(move || {
        start + Duration::from_millis(clock.load(Ordering::Relaxed))
    }));
    let notes = fx.dir.path().join("notes");
    let set_mtime = |rel: &str, at: std::time::SystemTime| {
        std::fs::File::options()
            .write(true)
            .open(notes.join(rel))
            .and_then(|f| f.set_modified(at))
            .expect("set mtime");
    };
    let observed_mtime = |store: &Store, key: &str| {
        store
            .observed(key)
            .expect("observed")
            .expect("observed row")
            .mtime_ns
    };

    // Written 10 ms before the scan's clock says it reads: racy. An hour before: trusted.
    fx.write("draft.md", "first\n");
    set_mtime("draft.md", start - Duration::from_millis(10));
    set_mtime("keep.bin", start - Duration::from_secs(3600));
    assert_eq!(fx.scan().totals.upserted, 2);
    assert_eq!(
        observed_mtime(&fx.store, "notes/draft.md"),
        index::UNTRUSTED_MTIME
    );
    assert_ne!(
        observed_mtime(&fx.store, "notes/keep.bin"),
        index::UNTRUSTED_MTIME
    );
    let stamp = lib_agent::model::event::format_rfc3339(start);
    for sql in [
        "SELECT created_at FROM lib_outbox",
        "SELECT event_created_at FROM lib_files",
        "SELECT indexed_at FROM lib_files",
        "SELECT observed_at FROM lib_observed",
    ] {
        let db = db_of(&fx.store);
        let mut stmt = db.prepare(sql).expect("prepare");
        let stamps: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(stamps, [stamp.as_str(), stamp.as_str()], "{sql}");
    }

    // A minute later the watcher's path reads it again (its stat could not vouch for it), finds
    // the same bytes, and now trusts the stat.
    elapsed_ms.store(60_000, Ordering::Relaxed);
    let libs = index::Libraries::new(&fx.config, &fx.config.store.path);
    let draft = notes.join("draft.md");
    let outcome =
        index::index_paths(&mut fx.store, &libs, std::slice::from_ref(&draft)).expect("index");
    assert_eq!((outcome.unchanged, outcome.racy), (1, 0), "{outcome:?}");
    assert_ne!(
        observed_mtime(&fx.store, "notes/draft.md"),
        index::UNTRUSTED_MTIME
    );

    // Rewritten 5 ms before the clock's now: racy again.
    fx.write("draft.md", "second\n");
    set_mtime("draft.md", start + Duration::from_millis(60_000 - 5));
    let outcome =
        index::index_paths(&mut fx.store, &libs, std::slice::from_ref(&draft)).expect("index");
    assert_eq!((outcome.upserted, outcome.racy), (1, 1), "{outcome:?}");
    assert_eq!(
        observed_mtime(&fx.store, "notes/draft.md"),
        index::UNTRUSTED_MTIME
    );
}

/// The merge-state columns of a row: (seen_vc, siblings) as stored.
fn stored_merge_columns(store: &Store, key: &str) -> (Option<String>, Option<String>) {
    db_of(store)
        .query_row(
            "SELECT seen_vc, siblings FROM lib_files WHERE path = ?1",
            [key],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("row")
}

fn merge_state(store: &Store, key: &str) -> lib_agent::model::merge::EntityState {
    store
        .merge_states()
        .expect("merge states")
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, state)| state)
        .expect("a merge state")
}

#[test]
fn a_lone_winner_keeps_no_copy_of_itself_and_reads_back_whole() {
    let mut f = Fixture::new();
    f.write("a.md", "mine");
    f.scan();
    assert_eq!(stored_merge_columns(&f.store, "notes/a.md"), (None, None));
    let (created_at, clock): (String, String) = db_of(&f.store)
        .query_row(
            "SELECT created_at, vector_clock FROM lib_outbox WHERE entity_key = 'notes/a.md'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("the event");
    let clock: VectorClock = serde_json::from_str(&clock).expect("clock");
    let state = merge_state(&f.store, "notes/a.md");
    assert_eq!(state.seen_vc, clock);
    assert_eq!(state.siblings.len(), 1);
    let winner = state.winner();
    assert_eq!(winner.device_id, f.store.device_id());
    assert_eq!(winner.clock, clock);
    assert_eq!(winner.created_at, created_at);
    assert!(!winner.deleted);
    assert_eq!(winner.sha256, f.shared_sha("notes/a.md"));
    assert_eq!(winner.bytes, Some(4));
}

#[test]
fn a_conflict_stores_every_sibling_until_an_edit_resolves_it() {
    let mut f = Fixture::new();
    f.write("a.md", "mine");
    f.scan();
    f.apply_remote(
        "0-dev",
        "notes/a.md",
        VectorClock::from([("0-dev", 1)]),
        Some("theirs"),
    );
    let (seen_vc, siblings) = stored_merge_columns(&f.store, "notes/a.md");
    assert!(
        seen_vc.is_some() && siblings.is_some(),
        "two siblings are kept"
    );
    let state = merge_state(&f.store, "notes/a.md");
    assert_eq!(state.siblings.len(), 2);
    assert_eq!(state.seen_vc.get("0-dev"), 1);
    let ours_before = state.seen_vc.get(f.store.device_id());

    f.write("a.md", "merged by hand");
    f.scan();
    assert_eq!(stored_merge_columns(&f.store, "notes/a.md"), (None, None));
    let state = merge_state(&f.store, "notes/a.md");
    assert_eq!(state.siblings.len(), 1);
    assert_eq!(state.seen_vc.get("0-dev"), 1, "what was seen stays seen");
    assert!(state.seen_vc.get(f.store.device_id()) > ours_before);
}

#[test]
fn rows_whose_merge_state_is_stored_as_json_keep_merging_the_same() {
    // Schema 1 stored every row's seen_vc and siblings as JSON, with no event_created_at.
    let mut f = Fixture::new();
    f.write("a.md", "mine");
    f.scan();
    let before = merge_state(&f.store, "notes/a.md");
    db_of(&f.store)
        .execute(
            "UPDATE lib_files SET seen_vc = ?1, siblings = ?2, event_created_at = NULL
             WHERE path = 'notes/a.md'",
            (
                before.seen_vc.to_json(),
                serde_json::to_string(&before.siblings).expect("json"),
            ),
        )
        .expect("write the schema 1 form");
    assert_eq!(merge_state(&f.store, "notes/a.md"), before);

    // A remote edit made after seeing ours wins, and the row goes back to the compact form.
    let mut clock = before.seen_vc.clone();
    clock.set("0-dev", 1);
    f.apply_remote("0-dev", "notes/a.md", clock.clone(), Some("theirs, later"));
    assert_eq!(stored_merge_columns(&f.store, "notes/a.md"), (None, None));
    let after = merge_state(&f.store, "notes/a.md");
    assert_eq!(after.winner().device_id, "0-dev");
    assert_eq!(after.seen_vc, clock);
    assert_eq!(after.winner().created_at, "2026-11-25T00:00:00Z");
}

#[test]
fn a_schema_1_database_migrates_in_place_and_keeps_its_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.db");
    {
        let conn = rusqlite::Connection::open(&path).expect("create");
        conn.execute_batch(include_str!("../../migrations/agent/0001_init.sql"))
            .expect("schema 1");
        conn.execute_batch(
            "INSERT INTO lib_files (path, sha256, bytes, event_ulid, device_id, vector_clock, seen_vc, siblings)
             VALUES ('notes/a.md', 'aa', 2, '01JD0000000000000000000000', 'dev-a', '{\"dev-a\":1}',
                     '{\"dev-a\":1}',
                     '[{\"event_ulid\":\"01JD0000000000000000000000\",\"device_id\":\"dev-a\",\"clock\":{\"dev-a\":1},\"deleted\":false,\"sha256\":\"aa\",\"bytes\":2,\"created_at\":\"2026-01-01T00:00:00Z\"}]');
             PRAGMA user_version = 1;",
        )
        .expect("a schema 1 row");
    }
    let store = Store::open(&path).expect("open migrates");
    let version: i64 = db_of(&store)
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("user_version");
    assert_eq!(version, lib_agent::store::SCHEMA_VERSION);
    let state = merge_state(&store, "notes/a.md");
    assert_eq!(state.winner().created_at, "2026-01-01T00:00:00Z");
    assert_eq!(state.seen_vc, VectorClock::from([("dev-a", 1)]));
}

#[test]
fn a_file_taken_for_new_that_was_observed_meanwhile_is_not_evented_twice() {
    // A scan decides "new" from the observed state at its start; another writer (agent run
    // beside agent scan) may record the file before the scan commits it.
    let mut f = Fixture::new();
    f.write("a.md", "same bytes");
    f.scan();
    let events = f.outbox().len();
    let path = f.dir.path().join("notes/a.md");
    let file = index::read_file(&path, 1024).expect("read");
    let batch = f.store.batch().expect("batch");
    let change = index::commit(
        &batch,
        &index::Observation::Present {
            key: "notes/a.md".into(),
            file,
            unobserved: true,
        },
    )
    .expect("commit");
    batch.commit().expect("commit");
    assert_eq!(change, index::Change::Unchanged);
    assert_eq!(
        f.outbox().len(),
        events,
        "no second event for the same bytes"
    );
}

/// The digest of the shared view from DESIGN.md's definition, computed here over the rows.
fn digest_of_rows(store: &Store) -> String {
    use sha2::{Digest, Sha256};
    let db = db_of(store);
    let mut stmt = db
        .prepare("SELECT path, event_ulid, deleted_at IS NOT NULL, sha256 FROM lib_files")
        .expect("query");
    let mut digest = [0u8; 32];
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, bool>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        })
        .expect("rows");
    for row in rows {
        let (key, ulid, deleted, sha) = row.expect("row");
        let mut h = Sha256::new();
        h.update(key.as_bytes());
        h.update([0]);
        h.update(ulid.as_bytes());
        h.update([0]);
        h.update(
            if deleted {
                "deleted".to_owned()
            } else {
                sha.unwrap_or_default()
            }
            .as_bytes(),
        );
        for (d, b) in digest.iter_mut().zip(h.finalize()) {
            *d ^= b;
        }
    }
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// DESIGN.md "Convergence you can check": the digest kept at every commit is the digest of the
/// rows after local edits, deletions, pulled versions that win and lose; a hand edit of a row is
/// found by re-deriving it.
#[test]
fn the_kept_replica_digest_follows_every_change_and_a_hand_edit_is_found() {
    let mut f = Fixture::new();
    let kept_is_the_rows = |f: &Fixture, when: &str| {
        let check = f.store.check_replica_digest().expect("derive");
        assert!(
            check.matches(),
            "{when}: kept {:?} vs rows {}",
            check.kept,
            check.derived
        );
        assert_eq!(check.derived.to_hex(), digest_of_rows(&f.store), "{when}");
        assert_eq!(
            f.store.replica_digest().expect("kept"),
            check.derived,
            "{when}"
        );
    };
    f.write("a.md", "alpha");
    f.write("b.md", "bravo");
    f.scan();
    kept_is_the_rows(&f, "after a first scan");
    f.write("a.md", "alpha, edited");
    std::fs::remove_file(f.dir.path().join("notes/b.md")).expect("rm");
    f.scan();
    kept_is_the_rows(&f, "after an edit and a deletion");
    f.apply_remote(
        "0-dev",
        "notes/a.md",
        VectorClock::from([("0-dev", 1)]),
        Some("loses"),
    );
    f.apply_remote(
        "zz-dev",
        "notes/c.md",
        VectorClock::from([("zz-dev", 7)]),
        Some("new"),
    );
    kept_is_the_rows(&f, "after pulled versions, one losing, one new");
    let before = f.store.replica_digest().expect("kept");
    assert_ne!(before.to_hex(), "0".repeat(64));

    db_of(&f.store)
        .execute(
            "UPDATE lib_files SET sha256 = ?1 WHERE path = 'notes/c.md'",
            ["f".repeat(64)],
        )
        .expect("a hand edit");
    let check = f.store.check_replica_digest().expect("derive");
    assert!(!check.matches(), "the hand edit is found");
    assert_eq!(check.kept, Some(before));
    let kept = f.store.rederive_replica_digest().expect("rederive");
    assert_eq!(kept.derived.to_hex(), digest_of_rows(&f.store));
    assert!(
        f.store.check_replica_digest().expect("derive").matches(),
        "the rows as they are are what is kept (and reported) from then on"
    );
}

/// A database from before digests were kept has none: it is derived from the rows, and the
/// first commit keeps it whole.
#[test]
fn a_database_without_a_kept_digest_derives_it_and_keeps_it_at_the_next_commit() {
    let mut f = Fixture::new();
    f.write("a.md", "alpha");
    f.scan();
    let digest = f.store.replica_digest().expect("kept");
    db_of(&f.store)
        .execute("DELETE FROM lib_kv WHERE k = 'replica_digest'", [])
        .expect("forget it");
    assert_eq!(f.store.check_replica_digest().expect("derive").kept, None);
    assert_eq!(f.store.replica_digest().expect("derived"), digest);
    f.write("b.md", "bravo");
    f.scan();
    let check = f.store.check_replica_digest().expect("derive");
    assert!(check.kept.is_some() && check.matches(), "{check:?}");
    assert_eq!(check.derived.to_hex(), digest_of_rows(&f.store));
}

//! Sync between real agents' stores and a real brain (SQLite, HTTP on loopback): what one device
//! changes reaches the others, concurrent edits end the same everywhere, and nothing is lost or
//! doubled when the brain is down or a response is lost.

use lib_agent::sync::{self, BrainClient};
use rusqlite::Connection;

use crate::support::brain::{config, SECRET};
use crate::support::brain_blocking::BlockingBrain;
use crate::support::device::Device;

#[test]
fn a_file_written_on_one_device_reaches_the_others_with_its_hash() {
    let brain_dir = tempfile::tempdir().expect("tempdir");
    let brain = BlockingBrain::start(brain_dir.path());
    let (mut a, mut b, mut c) = (Device::new(), Device::new(), Device::new());
    a.write("idea.md", "an idea from A");
    a.scan();
    a.sync(&brain);
    b.sync(&brain);
    c.sync(&brain);
    let expected = a.winner("notes/idea.md");
    assert_eq!(expected.0, a.device_id());
    assert_eq!(b.winner("notes/idea.md"), expected);
    assert_eq!(c.winner("notes/idea.md"), expected);
    let hits = b.store.search("idea", 10).expect("search");
    assert_eq!(
        hits.iter().map(|h| h.path.as_str()).collect::<Vec<_>>(),
        ["notes/idea.md"]
    );
    // Pulling never writes the user's files.
    assert!(!b.dir.path().join("notes/idea.md").exists());
}

#[test]
fn a_delete_propagates_as_a_tombstone() {
    let brain_dir = tempfile::tempdir().expect("tempdir");
    let brain = BlockingBrain::start(brain_dir.path());
    let (mut a, mut b) = (Device::new(), Device::new());
    a.write("gone.md", "soon deleted");
    a.scan();
    a.sync(&brain);
    b.sync(&brain);
    a.remove("gone.md");
    a.scan();
    a.sync(&brain);
    b.sync(&brain);
    assert_eq!(b.winner("notes/gone.md").1, None);
    assert_eq!(brain.winner("notes/gone.md").1, None);
    assert!(b.store.search("deleted", 10).expect("search").is_empty());
}

#[test]
fn an_edit_made_after_seeing_another_devices_version_wins_everywhere() {
    let brain_dir = tempfile::tempdir().expect("tempdir");
    let brain = BlockingBrain::start(brain_dir.path());
    let (mut a, mut b) = (Device::new(), Device::new());
    a.write("doc.md", "first draft by A");
    a.scan();
    a.sync(&brain);
    b.sync(&brain);
    b.write("doc.md", "second draft by B, having seen A's");
    b.scan();
    b.sync(&brain);
    a.sync(&brain);
    let expected = b.winner("notes/doc.md");
    assert_eq!(expected.0, b.device_id());
    assert_eq!(a.winner("notes/doc.md"), expected);
    assert_eq!(brain.winner("notes/doc.md"), expected);
    assert!(a.conflicts().is_empty() && b.conflicts().is_empty());
}

#[test]
fn concurrent_edits_end_with_the_same_winner_and_conflict_on_every_replica() {
    let brain_dir = tempfile::tempdir().expect("tempdir");
    let brain = BlockingBrain::start(brain_dir.path());
    let (mut a, mut b) = (Device::new(), Device::new());
    a.write("same.md", "A's words");
    b.write("same.md", "B's different words");
    a.scan();
    b.scan();
    a.sync(&brain);
    b.sync(&brain);
    a.sync(&brain);
    let winner = brain.winner("notes/same.md");
    assert_eq!(a.winner("notes/same.md"), winner);
    assert_eq!(b.winner("notes/same.md"), winner);
    assert_eq!(
        a.shared_rows(),
        b.shared_rows(),
        "the same shared view, row for row"
    );
    let (ca, cb) = (a.conflicts(), b.conflicts());
    assert_eq!(ca.len(), 1, "the loser is listed");
    assert_eq!(ca, cb, "the same conflict on every replica");
}

#[test]
fn a_conflict_resolved_on_one_device_is_resolved_on_every_replica() {
    let brain_dir = tempfile::tempdir().expect("tempdir");
    let brain = BlockingBrain::start(brain_dir.path());
    let (mut a, mut b) = (Device::new(), Device::new());
    a.write("same.md", "A's words");
    b.write("same.md", "B's different words");
    a.scan();
    b.scan();
    a.sync(&brain);
    b.sync(&brain);
    a.sync(&brain);
    let loser = a.store.conflicts().expect("conflicts").remove(0).loser;
    let loser_sha = loser.sha256.clone();
    assert_ne!(a.winner("notes/same.md").1, loser_sha);
    // A keeps the version that lost, whichever device made it: its text is in A's outbox (its
    // own) or inbox (pulled).
    let batch = a.store.batch().expect("batch");
    let event = batch
        .resolve_conflict("notes/same.md", loser.event_ulid.as_deref().expect("ulid"))
        .expect("resolve");
    batch.commit().expect("commit");
    assert_eq!(event.device_id, a.device_id());
    assert!(a.conflicts().is_empty());
    a.sync(&brain);
    b.sync(&brain);
    for (name, device) in [("A", &a), ("B", &b)] {
        assert_eq!(
            device.winner("notes/same.md"),
            (a.device_id(), loser_sha.clone()),
            "{name}"
        );
        assert!(
            device.conflicts().is_empty(),
            "{name} still lists a conflict"
        );
    }
    assert_eq!(brain.winner("notes/same.md"), (a.device_id(), loser_sha));
    assert_eq!(a.shared_rows(), b.shared_rows());
}

#[test]
fn with_the_brain_down_the_outbox_keeps_everything_until_it_is_back() {
    let brain_dir = tempfile::tempdir().expect("tempdir");
    let mut brain = BlockingBrain::start(brain_dir.path());
    let (mut a, mut b) = (Device::new(), Device::new());
    let (addr, _) = brain.stop();
    for i in 0..5 {
        a.write(
            &format!("f{i}.md"),
            &format!("written while the brain is down {i}"),
        );
        a.scan();
    }
    let client = BrainClient::new(&format!("http://{addr}"), Some(SECRET.into())).expect("client");
    let err = sync::push(&mut a.store, &client, 200).expect_err("the brain is down");
    assert!(err.is_retryable(), "{err}");
    assert_eq!(a.store.counts().expect("counts").outbox_pending, 6);
    // Back on the same address and database.
    let brain = BlockingBrain::start_with(brain_dir.path(), &addr.to_string(), config());
    a.sync(&brain);
    b.sync(&brain);
    assert_eq!(a.store.counts().expect("counts").outbox_pending, 0);
    assert_eq!(a.shared_rows(), b.shared_rows());
    assert_eq!(b.shared_rows().len(), 6);
}

#[test]
fn a_push_whose_answer_was_lost_duplicates_nothing_when_retried() {
    let brain_dir = tempfile::tempdir().expect("tempdir");
    let brain = BlockingBrain::start(brain_dir.path());
    let (mut a, mut b) = (Device::new(), Device::new());
    a.write("once.md", "only once");
    a.scan();
    let first = sync::push(&mut a.store, &brain.client(), 200).expect("push");
    assert_eq!(first.result.inserted_events, 2);
    // As if the brain had committed but its answer never arrived: the rows are still unpushed.
    a.db()
        .execute("UPDATE lib_outbox SET pushed_at = NULL", [])
        .expect("forget");
    let again = sync::push(&mut a.store, &brain.client(), 200).expect("push again");
    assert_eq!((again.pushed, again.result.inserted_events), (2, 0));
    let pulled = sync::pull(&mut b.store, &brain.client(), 200, None).expect("pull");
    assert_eq!((pulled.pulled, pulled.applied), (2, 2));
    let inbox: i64 = b
        .db()
        .query_row("SELECT count(*) FROM lib_inbox", [], |r| r.get(0))
        .expect("count");
    assert_eq!(inbox, 2);
    // Pulling again applies nothing twice.
    let again = sync::pull(&mut b.store, &brain.client(), 200, None).expect("pull");
    assert_eq!((again.pulled, again.applied), (0, 0));
}

#[test]
fn an_event_the_brain_refuses_is_parked_and_the_rest_go_through() {
    let brain_dir = tempfile::tempdir().expect("tempdir");
    let brain = BlockingBrain::start(brain_dir.path());
    let mut a = Device::new();
    a.write("good.md", "fine");
    a.scan();
    // A corrupt row between good ones (as a buggy older version might have written).
    a.db()
        .execute(
            "UPDATE lib_outbox SET payload_json = '{\"sha256\":\"not-a-hash\",\"bytes\":1}' WHERE entity_key = 'notes/good.md'",
            [],
        )
        .expect("corrupt");
    a.write("later.md", "also fine");
    a.scan();
    let summary = sync::push(&mut a.store, &brain.client(), 200).expect("push");
    assert_eq!((summary.pushed, summary.parked), (2, 1));
    let parked = a.store.parked_outbox().expect("parked");
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].1, "notes/good.md");
    assert!(
        parked[0].2.contains("sha256"),
        "the brain's reason is kept: {}",
        parked[0].2
    );
    assert_eq!(
        a.store.counts().expect("counts").outbox_pending,
        0,
        "parked is not pending"
    );
}

#[test]
fn a_wrong_secret_is_refused_and_nothing_is_marked_pushed() {
    let brain_dir = tempfile::tempdir().expect("tempdir");
    let brain = BlockingBrain::start(brain_dir.path());
    let mut a = Device::new();
    a.scan();
    let client = BrainClient::new(&brain.url(), Some("wrong".into())).expect("client");
    let err = sync::push(&mut a.store, &client, 200).expect_err("refused");
    assert!(err.to_string().contains("401"), "{err}");
    assert_eq!(a.store.counts().expect("counts").outbox_pending, 1);
}

#[test]
fn a_device_whose_cursor_was_pruned_reseeds_from_the_snapshot_and_matches() {
    let brain_dir = tempfile::tempdir().expect("tempdir");
    let brain = BlockingBrain::start(brain_dir.path());
    let (mut a, mut b, mut late) = (Device::new(), Device::new(), Device::new());
    a.write("x.md", "A's x");
    b.write("x.md", "B's concurrent x");
    a.write("y.md", "A's y");
    a.scan();
    b.scan();
    a.sync(&brain);
    b.sync(&brain);
    a.remove("y.md");
    a.scan();
    a.sync(&brain);
    b.sync(&brain);
    brain.prune_everything();
    // A device that never pulled: its cursor (0) is older than the pruned log.
    let summary = sync::pull(&mut late.store, &brain.client(), 200, None).expect("pull");
    assert!(summary.reseeded, "{summary:?}");
    let shared = |d: &Device| -> Vec<(String, Option<String>, String)> {
        d.shared_rows()
            .into_iter()
            .filter(|r| !r.0.ends_with(".keep"))
            .map(|r| (r.0, r.1, r.3))
            .collect()
    };
    assert_eq!(
        shared(&late),
        shared(&b),
        "the same winners, tombstones included"
    );
    assert_eq!(late.conflicts(), b.conflicts(), "and the same conflicts");
    // As `agent conflicts --json` prints them: byte for byte, times included.
    let listed = |d: &Device| serde_json::to_string(&d.store.conflicts().expect("conflicts"));
    assert_eq!(listed(&late).expect("JSON"), listed(&b).expect("JSON"));
    assert_eq!(late.winner("notes/y.md").1, None);
    // And it goes on pulling from the watermark.
    a.write("z.md", "after the prune");
    a.scan();
    a.sync(&brain);
    sync::pull(&mut late.store, &brain.client(), 200, None).expect("pull");
    assert_eq!(late.winner("notes/z.md"), a.winner("notes/z.md"));
}

/// Appends an event to the brain's log behind its back, as a damaged log or a writer that
/// bypassed the brain's validation would: the brain serves it as stored.
fn insert_unvalidated_event(brain: &BlockingBrain, ulid: &str, key: &str, sha256: &str) {
    let db = Connection::open(&brain.db).expect("brain db");
    db.execute(
        "INSERT INTO events (event_ulid, device_id, event_type, entity_type, entity_key, payload,
                             vector_clock, created_at, received_at, digest)
         VALUES (?1, 'rogue-device', 'upsert_file', 'file', ?2, ?3, '{\"rogue-device\":1}',
                 '2026-11-25T10:00:00Z', strftime('%s','now'), 'none')",
        rusqlite::params![
            ulid,
            key,
            format!("{{\"sha256\":\"{sha256}\",\"bytes\":3}}")
        ],
    )
    .expect("insert into the brain's log");
}

#[test]
fn an_invalid_pulled_event_is_recorded_and_skipped_and_the_valid_ones_around_it_are_applied() {
    let brain_dir = tempfile::tempdir().expect("tempdir");
    let brain = BlockingBrain::start(brain_dir.path());
    let (mut a, mut b) = (Device::new(), Device::new());
    a.write("before.md", "before the bad event");
    a.scan();
    a.sync(&brain);
    // A key that climbs out of every library: applying it would be wrong anywhere.
    let bad_ulid = "01JDZZZZZZZZZZZZZZZZZZZZZZ";
    insert_unvalidated_event(&brain, bad_ulid, "../outside.md", &"a".repeat(64));
    a.write("after.md", "after the bad event");
    a.scan();
    a.sync(&brain);
    let last_id = brain
        .client()
        .pull(0, 500, None, None)
        .expect("pull")
        .next_after_id;

    let summary = sync::pull(&mut b.store, &brain.client(), 200, None).expect("pull goes on");
    assert_eq!(
        (summary.pulled, summary.applied, summary.refused),
        (4, 3, 1),
        "{summary:?}"
    );
    assert_eq!(summary.new_after_id, last_id, "the cursor moves past it");
    assert_eq!(b.winner("notes/before.md"), a.winner("notes/before.md"));
    assert_eq!(b.winner("notes/after.md"), a.winner("notes/after.md"));
    let keys: Vec<String> = b.shared_rows().into_iter().map(|r| r.0).collect();
    assert!(!keys.iter().any(|k| k.contains("outside")), "{keys:?}");
    let in_inbox: i64 = b
        .db()
        .query_row(
            "SELECT count(*) FROM lib_inbox WHERE event_ulid = ?1",
            [bad_ulid],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(in_inbox, 0, "never recorded as pulled");

    let refused = sync::refused_pulls(&b.store).expect("refused");
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].event_ulid, bad_ulid);
    assert_eq!(refused[0].entity_key, "../outside.md");
    assert_eq!(refused[0].device_id, "rogue-device");
    assert!(
        refused[0].id > 0 && refused[0].id < last_id,
        "{:?}",
        refused[0]
    );
    assert!(refused[0].reason.contains(".."), "{}", refused[0].reason);

    // Once: the next pull starts after it.
    let again = sync::pull(&mut b.store, &brain.client(), 200, None).expect("pull");
    assert_eq!((again.pulled, again.refused), (0, 0));
    assert_eq!(sync::refused_pulls(&b.store).expect("refused").len(), 1);
}

/// Replaces the brain's database with `with` (a backup, or nothing for a new store) and starts
/// the brain again on its address.
fn restore(
    brain: BlockingBrain,
    dir: &std::path::Path,
    with: Option<&std::path::Path>,
) -> BlockingBrain {
    let addr = brain.addr;
    drop(brain);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.join(format!("brain.db{suffix}")));
    }
    if let Some(backup) = with {
        std::fs::copy(backup, dir.join("brain.db")).expect("restore the backup");
    }
    BlockingBrain::start_with(dir, &addr.to_string(), config())
}

#[test]
fn a_brain_restored_from_an_older_backup_gets_back_what_devices_pushed_after_it() {
    let brain_dir = tempfile::tempdir().expect("tempdir");
    let brain = BlockingBrain::start(brain_dir.path());
    let (mut a, mut b) = (Device::new(), Device::new());
    a.write_and_scan("before.md", "in the backup");
    a.sync(&brain);
    b.sync(&brain);
    let backup = brain_dir.path().join("backup.db");
    lib_agent::brain::store::sqlite::backup::backup(&brain.db, &backup).expect("backup");
    // After the backup: an edit on each device, seen by both.
    a.write_and_scan("after-a.md", "pushed after the backup by A");
    a.sync(&brain);
    b.write_and_scan("after-b.md", "pushed after the backup by B");
    b.sync(&brain);
    a.sync(&brain);
    let before_restore = a.shared_rows();
    let keys: Vec<&str> = before_restore.iter().map(|r| r.0.as_str()).collect();
    for key in ["notes/before.md", "notes/after-a.md", "notes/after-b.md"] {
        assert!(keys.contains(&key), "{key} in {keys:?}");
    }

    let brain = restore(brain, brain_dir.path(), Some(&backup));
    // Each device finds the log ends before its cursor, re-seeds, and pushes its events again.
    a.sync(&brain);
    b.sync(&brain);
    a.sync(&brain);
    assert_eq!(a.shared_rows(), before_restore, "A lost nothing");
    assert_eq!(b.shared_rows(), before_restore, "B lost nothing");
    for key in ["notes/before.md", "notes/after-a.md", "notes/after-b.md"] {
        assert!(brain.winner(key).1.is_some(), "the brain has {key} again");
    }
    // A new device gets everything from the restored brain.
    let mut c = Device::new();
    c.sync(&brain);
    assert_eq!(c.shared_rows(), before_restore);
    // And the next sync is quiet: nothing re-seeded, nothing pushed.
    let pulled = sync::pull(&mut a.store, &brain.client(), 200, None).expect("pull");
    assert!(!pulled.reseeded);
    assert_eq!(a.pending(), 0);
}

#[test]
fn a_brain_rebuilt_as_a_new_store_is_noticed_by_its_epoch_even_past_the_cursor() {
    let brain_dir = tempfile::tempdir().expect("tempdir");
    let brain = BlockingBrain::start(brain_dir.path());
    let mut a = Device::new();
    a.write_and_scan("mine.md", "A's file");
    a.sync(&brain);
    // A new, empty store, which another device fills past A's cursor before A comes back.
    let brain = restore(brain, brain_dir.path(), None);
    let mut b = Device::new();
    for i in 0..5 {
        b.write_and_scan(&format!("b{i}.md"), &format!("B's file {i}"));
    }
    b.sync(&brain);
    let pulled = sync::pull(&mut a.store, &brain.client(), 200, None).expect("pull");
    assert!(pulled.reseeded, "another epoch: re-seeded");
    a.sync(&brain);
    b.sync(&brain);
    assert_eq!(a.shared_rows(), b.shared_rows());
    let rows = b.shared_rows();
    assert!(
        rows.iter().any(|r| r.0 == "notes/mine.md" && r.1.is_some()),
        "A's file, pushed again, reached B: {rows:?}"
    );
}

#[test]
fn an_own_event_a_pull_brings_back_is_acknowledged_before_the_push_hears_the_brains_answer() {
    let brain_dir = tempfile::tempdir().expect("tempdir");
    let brain = BlockingBrain::start(brain_dir.path());
    let mut a = Device::new();
    a.write("x.md", "pushed, answer not heard yet");
    a.scan();
    // The push reached the brain; its answer has not reached the pusher (in `agent run` the
    // puller, woken by the brain, can pull between the two).
    let rows = a.store.pending_outbox(10).expect("outbox");
    let events: Vec<_> = rows.into_iter().map(|(_, e)| e).collect();
    brain.client().ingest(&events).expect("ingest");
    assert_eq!(a.pending(), 2, ".keep and x.md");

    let summary = sync::pull(&mut a.store, &brain.client(), 200, None).expect("pull");
    assert_eq!(a.pending(), 0, "the brain served them back: it holds them");
    assert_eq!(
        summary.convergence.map(|c| c.state),
        Some(lib_agent::model::digest::ConvergenceState::Converged),
        "{summary:?}"
    );
    // The pusher's own mark, when its answer comes, changes nothing.
    sync::push(&mut a.store, &brain.client(), 200).expect("push");
    assert_eq!(a.pending(), 0);
}

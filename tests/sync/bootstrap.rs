//! A new device's first sync far behind the log bootstraps from the brain's snapshot instead of
//! replaying the log: it ends row for row equal to a device that replayed it, goes on pulling from
//! the snapshot's watermark, and a scan of its own identical copy afterwards records no event.

use lib_agent::sync::{self, BOOTSTRAP_LAG};
use rusqlite::Connection;

use crate::support::brain::{delete, many, upsert};
use crate::support::brain_blocking::BlockingBrain;
use crate::support::device::Device;

/// Every column of the shared view but the row id and the time it was written here.
fn shared_view(db: &Connection) -> Vec<Vec<rusqlite::types::Value>> {
    let mut stmt = db
        .prepare(
            "SELECT path, sha256, bytes, mtime_unix, ext, mime, content, deleted_at, event_ulid,
                    device_id, vector_clock, seen_vc, siblings, event_created_at
             FROM lib_files ORDER BY path",
        )
        .expect("prepare");
    stmt.query_map([], |r| {
        (0..14)
            .map(|i| r.get::<_, rusqlite::types::Value>(i))
            .collect()
    })
    .expect("query")
    .collect::<Result<_, _>>()
    .expect("rows")
}

fn conflicts(db: &Connection) -> Vec<(String, String)> {
    let mut stmt = db
        .prepare("SELECT path, event_ulid FROM lib_conflicts ORDER BY path, event_ulid")
        .expect("prepare");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

#[test]
fn a_device_that_bootstrapped_ends_row_for_row_equal_to_one_that_replayed_the_log() {
    let brain_dir = tempfile::tempdir().expect("tempdir");
    let brain = BlockingBrain::start(brain_dir.path());
    let (mut a, mut b, mut replayed, mut fresh) =
        (Device::new(), Device::new(), Device::new(), Device::new());
    a.write("x.md", "A's x");
    b.write("x.md", "B's concurrent x");
    a.write("y.md", "A's y");
    a.scan();
    b.scan();
    a.sync(&brain);
    b.sync(&brain);
    // Pulled while the log was short: this device goes on replaying it.
    replayed.sync(&brain);

    // A long log: more events than the bootstrap threshold, with second versions, deletes and
    // concurrent versions among them.
    let client = brain.client();
    let n = BOOTSTRAP_LAG as usize + 200;
    for chunk in many("dev-x", n, 1).chunks(500) {
        client.ingest(chunk).expect("ingest");
    }
    let mut later = Vec::new();
    for i in 0..50u64 {
        let key = format!("notes/dev-x/f{:06}.md", i + 1);
        later.push(upsert("dev-x", &key, &[("dev-x", n as u64 + 1 + i)], 'b'));
        later.push(upsert("dev-y", &key, &[("dev-y", i + 1)], 'c'));
    }
    for i in 50..80u64 {
        let key = format!("notes/dev-x/f{:06}.md", i + 1);
        later.push(delete("dev-x", &key, &[("dev-x", n as u64 + 100 + i)]));
    }
    client.ingest(&later).expect("ingest");
    a.remove("y.md");
    a.scan();
    a.sync(&brain);

    replayed.sync(&brain);
    let summary = sync::pull(&mut fresh.store, &client, 200, None).expect("pull");
    assert!(summary.bootstrapped > BOOTSTRAP_LAG as u64, "{summary:?}");
    assert!(summary.pulled < 10, "the log was not replayed: {summary:?}");

    let (r, f) = (replayed.db(), fresh.db());
    let view = shared_view(&r);
    assert!(view.len() > n, "{} rows", view.len());
    assert_eq!(shared_view(&f), view, "the same rows, column for column");
    let open = conflicts(&r);
    assert!(open.len() >= 50, "{} conflicts", open.len());
    assert_eq!(conflicts(&f), open);
    let hits = fresh.store.search("content", 5).expect("search");
    assert_eq!(hits.len(), 5, "the full-text index was built with it");
    let no_inbox: i64 = f
        .query_row("SELECT count(*) FROM lib_inbox", [], |row| row.get(0))
        .expect("inbox");
    assert!(
        no_inbox < 10,
        "one version per entity, not the log: {no_inbox}"
    );

    // And it goes on pulling from the snapshot's watermark.
    a.write("z.md", "after the bootstrap");
    a.scan();
    a.sync(&brain);
    let next = sync::pull(&mut fresh.store, &client, 200, None).expect("pull");
    assert_eq!(next.bootstrapped, 0, "{next:?}");
    assert_eq!(fresh.winner("notes/z.md"), a.winner("notes/z.md"));
}

#[test]
fn a_device_that_bootstrapped_then_scans_its_identical_copy_records_no_event() {
    let brain_dir = tempfile::tempdir().expect("tempdir");
    let brain = BlockingBrain::start(brain_dir.path());
    let (mut a, mut fresh) = (Device::new(), Device::new());
    let files = BOOTSTRAP_LAG as usize + 100;
    for i in 0..files {
        let text = format!("note {i}: the same words on both machines");
        a.write(&format!("n{i:05}.md"), &text);
        fresh.write(&format!("n{i:05}.md"), &text);
    }
    a.scan();
    a.sync(&brain);

    let summary = sync::pull(&mut fresh.store, &brain.client(), 200, None).expect("pull");
    assert!(summary.bootstrapped >= files as u64, "{summary:?}");
    fresh.scan();
    let outbox: i64 = fresh
        .db()
        .query_row("SELECT count(*) FROM lib_outbox", [], |r| r.get(0))
        .expect("outbox");
    assert_eq!(
        outbox, 0,
        "its files are the shared view's: nothing to tell the others"
    );
    let observed: i64 = fresh
        .db()
        .query_row("SELECT count(*) FROM lib_observed", [], |r| r.get(0))
        .expect("observed");
    assert_eq!(
        observed,
        files as i64 + 1,
        "every file (and .keep) observed here"
    );
}

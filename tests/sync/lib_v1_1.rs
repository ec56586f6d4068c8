//! A new agent joins a LIB v1.1 deployment before its brain moves: against a stand-in of the old
//! edge function (`support::old_brain`, written from the reference), it pushes, pulls pages that
//! carry no cursor, takes the old function's `x-webhook-secret` wake-ups when told to, does not
//! busy-loop on a brain that does not hold long-polls, and says once that the old brain cannot
//! give it what it pruned.

use std::time::Duration;

use crate::support::brain::SECRET;
use crate::support::lab::Lab;
use crate::support::net::reserved_port;
use crate::support::old_brain::{OldBrain, FUNCTION_PATH};
use crate::sync_run::Agent;

/// An agent woken by the old function's webhooks: LIB v1.1's header, accepted on purpose.
fn webhook_agent(old: &OldBrain) -> Agent {
    let port = reserved_port();
    let sync = format!(
        "realtime = \"webhook\"\nwebhook_auth = \"shared-secret\"\nlisten = \"127.0.0.1:{port}\"\n\
         public_url = \"http://127.0.0.1:{port}/webhook\"\ninterval_secs = 3600"
    );
    Agent::start_at(
        &format!("{}{FUNCTION_PATH}", old.addr),
        &sync,
        &[("LIB_WEBHOOK_SECRET", "hook-secret-0123456")],
    )
}

#[test]
fn two_agents_converge_through_lib_v1_1s_edge_function_woken_by_its_webhooks() {
    let old = OldBrain::start(SECRET);
    let a = webhook_agent(&old);
    let b = webhook_agent(&old);
    crate::support::wait::wait_until(
        "both webhooks registered",
        crate::support::wait::PATIENCE,
        || old.webhooks().len() == 2,
    );
    assert!(
        old.webhooks().iter().all(|(_, secret)| secret.is_some()),
        "each agent registered its webhook secret: {:?}",
        old.webhooks()
    );

    a.write("from-a.md", "written on A, through the old brain");
    b.wait_until("B has A's file", |db| Agent::has(db, "notes/from-a.md"));
    b.write("from-b.md", "written on B, back through the old brain");
    a.wait_until("A has B's file", |db| Agent::has(db, "notes/from-b.md"));
    assert_eq!(old.events(), 2, "each change was pushed once");
}

#[test]
fn a_long_polling_agent_pulls_from_a_brain_that_does_not_hold_long_polls_without_a_busy_loop() {
    let old = OldBrain::start(SECRET);
    let a = Agent::start_at(
        &format!("{}{FUNCTION_PATH}", old.addr),
        "realtime = \"longpoll\"\ninterval_secs = 3600",
        &[],
    );
    let before = old.pulls();
    std::thread::sleep(Duration::from_secs(3));
    let during = old.pulls() - before;
    // Asking again at once would be hundreds of requests in 3 s; the pause is 10 s.
    assert!(during <= 2, "{during} pulls in 3 s");
    drop(a);
}

#[test]
fn agent_sync_against_the_old_edge_function_pulls_every_page_and_warns_that_pruned_files_cannot_come_back(
) {
    let old = OldBrain::start(SECRET);
    let writer = Lab::with_config("[[library]]\nname = \"notes\"\npath = \"{root}/notes\"\n");
    // More than one page of the old function (it caps at 500; the agent asks for 200).
    for i in 0..450 {
        writer.write(&format!("notes/n{i:03}.md"), format!("note {i}"));
    }
    let env = [
        ("LIB_SUPABASE_FN_URL", old.url()),
        ("LIB_SYNC_SECRET", SECRET.to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    writer.agent(&["scan"]).success();
    writer.agent_env(&["sync", "--push"], &env).success();
    assert_eq!(old.events(), 450);

    let reader = Lab::with_config("[[library]]\nname = \"notes\"\npath = \"{root}/notes\"\n");
    let run = reader.agent_env(&["sync"], &env).success();
    assert!(
        run.stderr.contains("has no /snapshot") && run.stderr.contains("365 days"),
        "the user is told what the old brain cannot give: {}",
        run.stderr
    );
    assert_eq!(reader.db().live_paths().len(), 450, "every page was pulled");
    assert_eq!(
        reader.db().kv("sync_after_id").as_deref(),
        Some("450"),
        "the cursor is the last event's id"
    );
    // Caught up: a second sync pulls nothing and fails nothing.
    reader.agent_env(&["sync", "--pull"], &env).success();
    assert_eq!(reader.db().live_paths().len(), 450);
}

// ---- a LIB v1.1 local database ----------------------------------------------------------------

const A2: &str = "alpha, edited on the mac before the move\n";
const C2: &str = "charlie, edited again on the other device\n";
const D: &str = "delta, indexed by LIB v1.0 and never synced\n";

/// The events of `table` in the fixture that the brain already has (pushed, or pulled).
fn fixture_events(db: &rusqlite::Connection, sql: &str) -> Vec<lib_agent::model::Event> {
    let mut stmt = db.prepare(sql).expect("query");
    let rows = stmt
        .query_map([], |r| {
            let json = serde_json::json!({
                "device_id": r.get::<_, String>(0)?,
                "event_ulid": r.get::<_, String>(1)?,
                "event_type": r.get::<_, String>(2)?,
                "entity_type": r.get::<_, String>(3)?,
                "entity_key": r.get::<_, String>(4)?,
                "payload": serde_json::from_str::<serde_json::Value>(&r.get::<_, String>(5)?).expect("payload"),
                "vector_clock": serde_json::from_str::<serde_json::Value>(&r.get::<_, String>(6)?).expect("clock"),
                "created_at": r.get::<_, String>(7)?,
            });
            Ok(serde_json::from_value(json).expect("an event"))
        })
        .expect("rows");
    rows.map(|r| r.expect("row")).collect()
}

const EVENT: &str =
    "device_id, event_ulid, event_type, entity_type, entity_key, payload_json, vector_clock, created_at";

#[test]
fn a_lib_v1_1_database_is_adopted_in_place_its_pending_events_pushed_once_and_its_cursor_honoured()
{
    let dir = tempfile::tempdir().expect("tempdir");
    let brain = crate::support::brain_blocking::BlockingBrain::start(dir.path());
    let lab = Lab::with_config("[[library]]\nname = \"notes\"\npath = \"{root}/notes\"\n");
    let fixture = rusqlite::Connection::open(&lab.db).expect("create");
    fixture
        .execute_batch(include_str!("../fixtures/lib_v11_local.sql"))
        .expect("the fixture");
    // The brain has what the device pushed (ids 1, 2) and pulled (id 3), then an edit of c.md
    // the device has not pulled yet (id 4).
    let client = brain.client();
    let pushed = fixture_events(
        &fixture,
        &format!("SELECT {EVENT} FROM lib_outbox WHERE pushed_at IS NOT NULL ORDER BY id"),
    );
    let pulled = fixture_events(
        &fixture,
        &format!("SELECT {EVENT} FROM lib_inbox ORDER BY source_id"),
    );
    client.ingest(&pushed).expect("ingest pushed");
    client.ingest(&pulled).expect("ingest pulled");
    let mut c2 = crate::support::brain::upsert("dev-other", "notes/c.md", &[("dev-other", 2)], 'c');
    c2.payload.sha256 = Some(crate::support::lab::sha256_hex(C2));
    c2.payload.bytes = Some(C2.len() as u64);
    c2.payload.content = Some(C2.to_owned());
    client.ingest(&[c2]).expect("ingest c2");
    assert_eq!(brain.last_id(), 4);
    drop(fixture);
    for (key, text) in [
        ("notes/a.md", A2),
        ("notes/c.md", "charlie, from the other device\n"),
        ("notes/d.md", D),
    ] {
        lab.write(key, text);
    }

    let env = [
        ("LIB_BRAIN_URL", brain.url()),
        ("LIB_SYNC_SECRET", SECRET.to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    lab.agent(&["scan"]).success();
    let (device, sequence) = lab.db().device();
    assert_eq!(device, "mac-v11", "its device id is kept");
    assert!(
        sequence >= 4,
        "its sequence goes on from LIB v1.1's: {sequence}"
    );
    lab.agent_env(&["sync"], &env).success();

    // Pushed once: the edit of a.md, the deletion of b.md, and d.md's backfill.
    let at_brain = client.pull(0, 500, None, None).expect("pull").events;
    let from_mac: Vec<&str> = at_brain
        .iter()
        .filter(|e| e.event.device_id == "mac-v11")
        .map(|e| e.event.event_ulid.as_str())
        .collect();
    let mut unique = from_mac.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        from_mac.len(),
        "no event pushed twice: {from_mac:?}"
    );
    assert!(
        from_mac.contains(&"01JKP0A1B2C3D4E5F6G7H8J9K2")
            && from_mac.contains(&"01JKP0A1B2C3D4E5F6G7H8J9K3")
    );
    assert_eq!(
        brain.winner("notes/a.md"),
        (
            "mac-v11".to_owned(),
            Some(crate::support::lab::sha256_hex(A2))
        )
    );
    assert_eq!(
        brain.winner("notes/b.md").1,
        None,
        "b.md's deletion reached the brain"
    );
    assert_eq!(
        brain.winner("notes/d.md").1,
        Some(crate::support::lab::sha256_hex(D))
    );
    for e in at_brain.iter().filter(|e| e.event.device_id == "mac-v11") {
        assert!(
            lib_agent::model::event::is_rfc3339(&e.event.created_at),
            "{}",
            e.event.created_at
        );
    }

    // Its cursor was honoured: the pull went on after id 3, and brought c.md's edit.
    let db = lab.db();
    let c = db.file("notes/c.md");
    assert_eq!(
        c.sha256.as_deref(),
        Some(crate::support::lab::sha256_hex(C2).as_str())
    );
    assert_eq!(
        db.kv("sync_after_id")
            .map(|v| v.parse::<i64>().expect("a number") >= 4),
        Some(true)
    );
    assert!(db.live_paths().contains(&"notes/d.md".to_owned()));
    assert!(!db.live_paths().contains(&"notes/b.md".to_owned()));

    // Nothing more to push.
    let before = brain.last_id();
    lab.agent_env(&["sync"], &env).success();
    assert_eq!(brain.last_id(), before, "a second sync pushes nothing");
}

#[test]
fn a_lib_database_the_agent_cannot_place_is_refused_untouched() {
    for (what, sql, says) in [
        (
            "an outbox without entity_key",
            "CREATE TABLE lib_outbox (id INTEGER PRIMARY KEY, device_id TEXT, event_ulid TEXT,
               event_type TEXT, entity_type TEXT, payload_json TEXT, vector_clock TEXT, created_at TEXT);",
            "lib_outbox has no column entity_key",
        ),
        (
            "an outbox row that is not an event",
            "CREATE TABLE lib_outbox (id INTEGER PRIMARY KEY, device_id TEXT, event_ulid TEXT,
               event_type TEXT, entity_type TEXT, entity_key TEXT, payload_json TEXT,
               vector_clock TEXT, created_at TEXT);
             INSERT INTO lib_outbox VALUES (1, 'mac', '01JKM0A1B2C3D4E5F6G7H8J9K0', 'upsert_file',
               'file', 'notes/a.md', '{not json', '{\"mac\":1}', '2026-02-10T10:00:00Z');",
            "payload_json",
        ),
        (
            "another program's database",
            "CREATE TABLE moz_places (id INTEGER PRIMARY KEY, url TEXT);",
            "another program's tables (moz_places)",
        ),
    ] {
        let lab = Lab::new();
        rusqlite::Connection::open(&lab.db)
            .and_then(|c| c.execute_batch(sql))
            .expect("make the database");
        let bytes = std::fs::read(&lab.db).expect("read");
        for args in [&["status"][..], &["scan"], &["init"]] {
            let run = lab.agent(args).failure();
            assert!(run.stderr.contains(says), "{what}: `agent {}`: {}", args.join(" "), run.stderr);
            assert!(run.stderr.contains("left untouched"), "{what}: {}", run.stderr);
            assert_eq!(std::fs::read(&lab.db).expect("read"), bytes, "{what}: `agent {}` wrote to it", args.join(" "));
        }
    }
}

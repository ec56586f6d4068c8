//! Conflicts you can act on: `agent conflicts` prints the same list on every replica, names
//! devices, `show` prints each version's text or a diff, `resolve` keeps one version by an
//! event that wins everywhere and writes no file; search and status mark the files this device
//! does not have on its disk.

use std::time::{Duration, SystemTime};

use lib_agent::model::{Event, EventType, FilePayload, VectorClock};
use lib_agent::store::kv::DeviceNames;
use lib_agent::store::{Clock, Store};
use serde_json::Value;

use crate::support::lab::{dominates, sha256_hex, Lab};

const NOTES_LIBRARY: &str = "[[library]]\nname = \"notes\"\npath = '{root}/notes'\n";

/// Another device's event for `key`: an upsert of `text`, or a delete when `None`.
fn remote(device: &str, key: &str, clock: VectorClock, text: Option<&str>) -> Event {
    Event {
        event_ulid: ulid::Ulid::new().to_string(),
        device_id: device.into(),
        event_type: if text.is_some() {
            EventType::UpsertFile
        } else {
            EventType::DeleteFile
        },
        entity_type: "file".into(),
        entity_key: key.into(),
        payload: text.map_or_else(FilePayload::default, |t| FilePayload {
            sha256: Some(sha256_hex(t)),
            bytes: Some(t.len() as u64),
            mtime_unix: Some(1_732_500_000),
            ext: Some("md".into()),
            mime: Some("text/markdown".into()),
            content: Some(t.into()),
        }),
        vector_clock: clock,
        created_at: format!("2026-11-25T10:00:0{}Z", second_of(device)),
    }
}

/// The second of a test device's event times: fixed, and different between the devices.
fn second_of(device: &str) -> u8 {
    device.bytes().map(u32::from).sum::<u32>() as u8 % 10
}

/// Applies events as the puller does: recorded in the inbox, then merged into the shared view.
fn pull(store: &mut Store, events: &[&Event]) {
    let batch = store.batch().expect("batch");
    for (i, event) in events.iter().enumerate() {
        assert!(batch.record_inbox(i as i64 + 1, event).expect("inbox"));
        batch.apply(event).expect("apply");
    }
    batch.commit().expect("commit");
}

/// Merges events into the shared view without their payloads in the inbox, as a re-seed from
/// the brain's snapshot does for a losing version (the snapshot has only its hash).
fn reseed(store: &mut Store, events: &[&Event]) {
    let batch = store.batch().expect("batch");
    for event in events {
        batch.apply(event).expect("apply");
    }
    batch.commit().expect("commit");
}

fn names(pairs: &[(&str, &str)]) -> DeviceNames {
    pairs
        .iter()
        .map(|(id, name)| (id.to_string(), name.to_string()))
        .collect()
}

#[test]
fn replicas_that_applied_the_same_events_in_other_orders_at_other_times_print_the_same_list() {
    let winner = remote(
        "dev-a",
        "notes/a.md",
        VectorClock::from([("dev-a", 2)]),
        Some("A"),
    );
    let text = remote(
        "dev-b",
        "notes/a.md",
        VectorClock::from([("dev-b", 1)]),
        Some("B"),
    );
    let delete = remote(
        "dev-c",
        "notes/a.md",
        VectorClock::from([("dev-c", 1)]),
        None,
    );
    let orders: [[&Event; 3]; 2] = [[&winner, &text, &delete], [&delete, &text, &winner]];
    let mut printed = Vec::new();
    for (order, year) in orders.iter().zip([2020, 2030]) {
        let lab = Lab::new();
        let mut store = Store::open(&lab.db).expect("store");
        // Each replica writes its rows at another time of its own: none of it may show.
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs((year - 1970) * 365 * 86_400);
        store.set_clock(Clock::from_fn(move || at));
        pull(&mut store, order);
        store
            .set_device_names(&names(&[("dev-a", "laptop")]))
            .expect("names");
        drop(store);
        printed.push(lab.agent(&["--json", "conflicts"]).success().stdout);
    }
    assert_eq!(printed[0], printed[1], "byte for byte");
    let list: Value = serde_json::from_str(&printed[0]).expect("JSON");
    let conflicts = list["conflicts"].as_array().expect("conflicts");
    assert_eq!(conflicts.len(), 2, "{list:#}");
    for c in conflicts {
        assert_eq!(c["winner"]["event_ulid"], winner.event_ulid.as_str());
        assert_eq!(
            c["winner"]["at"],
            winner.created_at.as_str(),
            "the event's time"
        );
        assert_eq!(c["winner"]["device_name"], "laptop");
    }
    let losers: Vec<(&str, &str)> = conflicts
        .iter()
        .map(|c| {
            (
                c["loser"]["device_id"].as_str().expect("id"),
                c["loser"]["at"].as_str().expect("at"),
            )
        })
        .collect();
    let mut expected = vec![
        (text.device_id.as_str(), text.created_at.as_str()),
        (delete.device_id.as_str(), delete.created_at.as_str()),
    ];
    // Listed by key, then by ULID.
    expected.sort_by_key(|(device, _)| {
        if *device == "dev-b" {
            text.event_ulid.clone()
        } else {
            delete.event_ulid.clone()
        }
    });
    assert_eq!(losers, expected);
}

/// A lab whose `notes/a.md` holds "line 1\nmine\n", scanned, and a concurrent version of it
/// from device `0-dev` (named "phone"), which loses: its clock sum is ours and its id sorts
/// below any UUID. `text` is the remote version's (`None`: a delete); `pulled` says whether its
/// event reached the inbox (pulled) or only the shared view (re-seeded).
pub(crate) fn conflict_lab(text: Option<&str>, pulled: bool) -> (Lab, Event) {
    let lab = Lab::with_config(NOTES_LIBRARY);
    lab.write("notes/a.md", "line 1\nmine\n");
    lab.scan(&[]);
    let ours = lab.db().file("notes/a.md").vector_clock.expect("clock");
    let mut store = Store::open(&lab.db).expect("store");
    let sum: u64 = ours.values().sum();
    let theirs = remote(
        "0-dev",
        "notes/a.md",
        VectorClock::from([("0-dev", sum)]),
        text,
    );
    if pulled {
        pull(&mut store, &[&theirs]);
    } else {
        reseed(&mut store, &[&theirs]);
    }
    store
        .set_device_names(&names(&[("0-dev", "phone")]))
        .expect("names");
    (lab, theirs)
}

#[test]
fn the_list_names_this_device_and_the_others_by_the_brains_names() {
    let (lab, theirs) = conflict_lab(Some("line 1\ntheirs\n"), true);
    let text = lab.agent(&["conflicts"]).success().stdout;
    assert!(
        text.lines()
            .any(|l| l.contains("won:") && l.contains("by this device")),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.contains("lost:")
            && l.contains("by phone (0-dev)")
            && l.contains(&theirs.created_at)
            && l.contains(&theirs.event_ulid)),
        "{text}"
    );
    let list = lab.json(&["conflicts"]);
    assert_eq!(list["conflicts"][0]["loser"]["device_name"], "phone");
    assert_eq!(list["conflicts"][0]["winner"]["device_name"], Value::Null);
}

#[test]
fn show_prints_every_version_with_its_text_and_diff_prints_what_the_loser_changed() {
    let (lab, theirs) = conflict_lab(Some("line 1\ntheirs\n"), true);
    let ours = lab.db().file("notes/a.md");
    let text = lab
        .agent(&["conflicts", "show", "notes/a.md"])
        .success()
        .stdout;
    for expected in [
        "WON  by this device",
        "LOST by phone (0-dev)",
        "    | mine",
        "    | theirs",
        &sha256_hex("line 1\ntheirs\n"),
        &theirs.event_ulid,
        ours.event_ulid.as_deref().expect("ulid"),
    ] {
        assert!(text.contains(expected), "{expected:?} in:\n{text}");
    }

    let diff = lab
        .agent(&["conflicts", "show", "notes/a.md", "--diff"])
        .success()
        .stdout;
    let lines: Vec<&str> = diff.lines().collect();
    assert_eq!(
        lines,
        [
            format!("--- {} (won)", ours.event_ulid.as_deref().expect("ulid")).as_str(),
            format!("+++ {} (lost)", theirs.event_ulid).as_str(),
            "@@ -1,2 +1,2 @@",
            " line 1",
            "-mine",
            "+theirs",
        ]
    );

    let json = lab.json(&["conflicts", "show", "notes/a.md", "--diff"]);
    let versions = json["versions"].as_array().expect("versions");
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[0]["winner"], true);
    assert_eq!(versions[0]["text"], "line 1\nmine\n");
    assert_eq!(versions[1]["winner"], false);
    assert_eq!(versions[1]["device_name"], "phone");
    assert_eq!(versions[1]["text_state"], "kept");
    assert_eq!(versions[1]["text"], "line 1\ntheirs\n");
    assert!(versions[1]["diff"]
        .as_str()
        .is_some_and(|d| d.contains("-mine\n+theirs\n")));
}

#[test]
fn show_and_resolve_of_a_key_without_a_conflict_fail_and_say_so() {
    let (lab, _) = conflict_lab(Some("line 1\ntheirs\n"), true);
    for args in [
        &["conflicts", "show", "notes/other.md"][..],
        &["conflicts", "resolve", "notes/other.md", "--keep", "phone"],
    ] {
        lab.agent(args)
            .failure()
            .assert_one_line_error(&["notes/other.md has no open conflict"]);
    }
}

#[test]
fn resolve_keeps_the_losing_version_by_an_event_that_dominates_every_version_and_writes_no_file() {
    let (lab, theirs) = conflict_lab(Some("line 1\ntheirs\n"), true);
    let ours = lab.db().file("notes/a.md");
    let out = lab
        .agent(&["conflicts", "resolve", "notes/a.md", "--keep", "phone"])
        .success()
        .stdout;
    assert!(out.contains("no file on disk was written"), "{out}");
    assert!(out.contains("differs from the kept version"), "{out}");

    // The shared view has the kept version as its winner, and no conflict is left.
    let file = lab.db().file("notes/a.md");
    assert_eq!(file.sha256, theirs.payload.sha256);
    assert_eq!(file.content.as_deref(), Some("line 1\ntheirs\n"));
    assert_eq!(
        file.device_id,
        Some(lab.device_id()),
        "a change of this device"
    );
    assert_eq!(lab.json(&["conflicts"])["conflicts"], serde_json::json!([]));
    // The event waits in the outbox with the kept payload, above both versions.
    let event = lab.db().outbox().pop().expect("the resolving event");
    assert_eq!(
        (event.event_type.as_str(), event.entity_key.as_str()),
        ("upsert_file", "notes/a.md")
    );
    assert_eq!(event.pushed_at, None);
    assert_eq!(event.payload["content"], "line 1\ntheirs\n");
    assert_eq!(event.payload["sha256"], sha256_hex("line 1\ntheirs\n"));
    let theirs_clock = theirs
        .vector_clock
        .entries()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    assert!(dominates(&event.vector_clock, &theirs_clock));
    assert!(dominates(
        &event.vector_clock,
        &ours.vector_clock.expect("clock")
    ));
    // The file on disk is untouched, and a rescan finds nothing to record.
    assert_eq!(
        std::fs::read_to_string(lab.path("notes/a.md")).expect("read"),
        "line 1\nmine\n"
    );
    let before = lab.db().outbox().len();
    lab.scan(&[]);
    assert_eq!(lab.db().outbox().len(), before);
    assert_eq!(lab.db().file("notes/a.md").sha256, theirs.payload.sha256);
}

#[test]
fn resolve_keeps_a_deleted_version_by_a_delete() {
    let (lab, _) = conflict_lab(None, true);
    let json = lab.json(&["conflicts", "resolve", "notes/a.md", "--keep", "0-dev"]);
    assert_eq!(json["event"]["event_type"], "delete_file");
    assert_eq!(json["file_written"], false);
    assert!(lab.db().file("notes/a.md").deleted_at.is_some());
    assert!(lab.path("notes/a.md").exists(), "no file is touched");
    assert_eq!(lab.json(&["conflicts"])["conflicts"], serde_json::json!([]));
}

#[test]
fn resolve_refuses_a_version_whose_content_this_device_never_received() {
    let (lab, theirs) = conflict_lab(Some("line 1\ntheirs\n"), false);
    let show = lab.json(&["conflicts", "show", "notes/a.md"]);
    assert_eq!(show["versions"][1]["text_state"], "not_kept");
    assert_eq!(show["versions"][1]["text"], Value::Null);
    let text = lab
        .agent(&["conflicts", "show", "notes/a.md"])
        .success()
        .stdout;
    assert!(
        text.contains("its text is not kept on this device"),
        "{text}"
    );

    let outbox = lab.db().outbox().len();
    lab.agent(&[
        "conflicts",
        "resolve",
        "notes/a.md",
        "--keep",
        &theirs.event_ulid,
    ])
    .failure()
    .assert_one_line_error(&["knows only its hash", &theirs.event_ulid]);
    assert_eq!(lab.db().outbox().len(), outbox, "nothing recorded");
    assert_eq!(
        lab.json(&["conflicts"])["conflicts"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}

#[test]
fn resolve_with_a_keep_that_names_no_version_lists_the_choices() {
    let (lab, theirs) = conflict_lab(Some("line 1\ntheirs\n"), true);
    let ours = lab.db().file("notes/a.md").event_ulid.expect("ulid");
    lab.agent(&["conflicts", "resolve", "notes/a.md", "--keep", "tablet"])
        .failure()
        .assert_one_line_error(&["no version", "tablet", &ours, &theirs.event_ulid]);
}

#[test]
fn search_and_status_mark_the_files_this_device_does_not_have() {
    let lab = Lab::with_config(NOTES_LIBRARY);
    lab.write("notes/here.md", "alpha on this device\n");
    lab.scan(&[]);
    let mut store = Store::open(&lab.db).expect("store");
    let elsewhere = remote(
        "0-dev",
        "notes/there.md",
        VectorClock::from([("0-dev", 1)]),
        Some("alpha on another device\n"),
    );
    pull(&mut store, &[&elsewhere]);
    drop(store);

    let json = lab.json(&["search", "alpha"]);
    let mut marks: Vec<(String, bool)> = json["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|h| {
            (
                h["path"].as_str().expect("path").to_owned(),
                h["on_this_device"].as_bool().expect("on_this_device"),
            )
        })
        .collect();
    marks.sort();
    assert_eq!(
        marks,
        [
            ("notes/here.md".to_owned(), true),
            ("notes/there.md".to_owned(), false)
        ]
    );
    let text = lab.agent(&["search", "alpha"]).success().stdout;
    assert!(
        text.lines()
            .any(|l| l == "notes/there.md  [not on this device]"),
        "{text}"
    );
    assert!(text.lines().any(|l| l == "notes/here.md"), "{text}");

    assert_eq!(lab.json(&["status"])["counts"]["not_on_this_device"], 1);
    let status = lab.agent(&["status"]).success().stdout;
    assert!(
        status.contains("1 file not on this device's disk"),
        "{status}"
    );
}

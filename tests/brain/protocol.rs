//! The brain, through its HTTP routes, as a specification. One suite, run twice: against the SQLite
//! store and against the PostgreSQL store (`LIB_TEST_DATABASE_URL`, each test in its own schema).

use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use crate::support::brain::*;
use crate::support::wait::PATIENCE;
use lib_agent::brain::server::ServerConfig;
use lib_agent::brain::webhooks;

suite!(
    ingested_events_are_pulled_back_in_id_order_with_their_fields,
    reingesting_a_batch_inserts_nothing_and_changes_nothing,
    a_ulid_reused_with_other_content_is_409_and_nothing_of_the_batch_is_stored,
    pulls_page_through_the_log_with_next_after_id_and_has_more,
    a_long_poll_returns_as_soon_as_an_event_commits,
    a_long_poll_with_nothing_new_returns_empty_after_the_wait,
    the_merge_rule_picks_one_winner_and_keeps_concurrent_losers_as_conflicts,
    a_later_edit_that_saw_the_conflict_resolves_it,
    a_delete_is_a_tombstone_and_an_older_upsert_does_not_resurrect_it,
    a_wrong_or_missing_secret_is_401_and_stores_nothing,
    malformed_json_is_400_and_stores_nothing,
    an_invalid_event_anywhere_refuses_the_batch_naming_index_and_field,
    a_batch_over_500_events_or_a_body_over_the_cap_is_413,
    bad_pull_parameters_are_400,
    snapshot_pages_through_entities_by_key_with_the_watermark,
    a_cursor_older_than_the_pruned_log_is_410_and_a_snapshot_reseeds,
    a_prune_through_an_id_removes_the_events_up_to_it_and_no_further,
    a_scheduled_prune_runs_once_per_period_and_its_status_says_what_it_did,
    a_pruned_event_pushed_again_with_the_same_content_is_not_inserted_again,
    a_pruned_ulid_pushed_again_with_other_content_is_409_and_nothing_of_the_batch_is_stored,
    a_retry_mixing_pruned_and_new_events_inserts_only_the_new_ones,
    webhooks_are_notified_signed_after_an_ingest_and_can_be_deactivated,
    a_webhook_that_never_answers_does_not_delay_ingest,
    only_http_webhook_urls_are_accepted,
    health_needs_no_secret_and_metrics_count_requests,
    metrics_are_off_without_their_own_token,
    concurrent_ingests_lose_nothing,
);

async fn ingested_events_are_pulled_back_in_id_order_with_their_fields(f: Fixture) {
    let brain = f.serve().await;
    let batch = many("dev-a", 5, 1);
    assert_eq!(brain.ingest_ok(&batch).await, (5, 5));
    let events = brain.pull_all().await;
    assert_eq!(
        ulids(&events),
        batch
            .iter()
            .map(|e| e.event_ulid.clone())
            .collect::<Vec<_>>()
    );
    let ids = ids(&events);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids ascend: {ids:?}");
    // Every field comes back as it was sent, plus the brain's id.
    let first: lib_agent::model::wire::PulledEvent =
        serde_json::from_value(events[0].clone()).unwrap();
    assert_eq!(first.event, batch[0]);
    assert_eq!(first.id, ids[0]);
}

async fn reingesting_a_batch_inserts_nothing_and_changes_nothing(f: Fixture) {
    let brain = f.serve().await;
    let batch = many("dev-a", 3, 1);
    assert_eq!(brain.ingest_ok(&batch).await, (3, 3));
    let before = (brain.pull_all().await, brain.snapshot_all().await);
    assert_eq!(brain.ingest_ok(&batch).await, (0, 0));
    // A retry that mixes known and new events inserts only the new ones.
    let mut retry = batch.clone();
    retry.extend(many("dev-a", 1, 10));
    assert_eq!(brain.ingest_ok(&retry).await, (1, 1));
    let after = brain.pull_all().await;
    assert_eq!(after[..3], before.0[..]);
    assert_eq!(after.len(), 4);
    assert_eq!(brain.snapshot_all().await[..3], before.1[..]);
}

async fn a_ulid_reused_with_other_content_is_409_and_nothing_of_the_batch_is_stored(f: Fixture) {
    let brain = f.serve().await;
    let original = upsert("dev-a", "notes/a.md", &[("dev-a", 1)], 'a');
    brain.ingest_ok(std::slice::from_ref(&original)).await;
    let mut forged = original.clone();
    forged.payload.sha256 = Some(sha('b'));
    let fresh = upsert("dev-a", "notes/b.md", &[("dev-a", 2)], 'c');
    let r = brain.ingest(&[fresh.clone(), forged]).await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert_eq!(r.body["ok"], false);
    assert!(
        r.body["error"]
            .as_str()
            .unwrap()
            .contains(&original.event_ulid),
        "{}",
        r.text
    );
    let events = brain.pull_all().await;
    assert_eq!(
        ulids(&events),
        std::slice::from_ref(&original.event_ulid),
        "the fresh event of the refused batch is not stored"
    );
    assert_eq!(
        brain.entity("notes/a.md").await.unwrap()["payload"]["sha256"],
        sha('a')
    );
    // Inside one request too.
    let mut twin = fresh.clone();
    twin.payload.bytes = Some(1);
    assert_eq!(brain.ingest(&[fresh, twin]).await.status, 409);
    assert_eq!(brain.pull_all().await.len(), 1);
}

async fn pulls_page_through_the_log_with_next_after_id_and_has_more(f: Fixture) {
    let brain = f.serve().await;
    brain.ingest_ok(&many("dev-a", 25, 1)).await;
    let mut after = 0;
    let mut sizes = Vec::new();
    let mut seen = Vec::new();
    loop {
        let r = brain.pull(after, 10).await;
        assert_eq!(r.status, 200);
        let events = r.body["events"].as_array().unwrap().clone();
        sizes.push((events.len(), r.body["has_more"].as_bool().unwrap()));
        if let Some(last) = events.last() {
            assert_eq!(r.body["next_after_id"], last["id"]);
        } else {
            assert_eq!(r.body["next_after_id"], after);
        }
        seen.extend(ids(&events));
        after = r.body["next_after_id"].as_i64().unwrap();
        if !r.body["has_more"].as_bool().unwrap() {
            break;
        }
    }
    assert_eq!(sizes, [(10, true), (10, true), (5, false)]);
    assert_eq!(seen.len(), 25);
    // Past the end: empty, and the cursor stays.
    let r = brain.pull(after, 10).await;
    assert_eq!(r.body["events"], json!([]));
    assert_eq!(r.body["next_after_id"], after);
    assert_eq!(r.body["has_more"], false);
    // A limit over 500 is served as 500, not refused.
    assert_eq!(brain.pull(0, 10_000).await.status, 200);
}

async fn a_long_poll_returns_as_soon_as_an_event_commits(f: Fixture) {
    let brain = std::sync::Arc::new(f.serve().await);
    let waiting = {
        let brain = brain.clone();
        tokio::spawn(async move { brain.get("/pull?after_id=0&limit=10&wait_ms=20000").await })
    };
    // The waiter is parked once the request is in flight; an ingest must wake it, whenever it
    // lands relative to the waiter's first read.
    tokio::task::yield_now().await;
    let event = upsert("dev-a", "notes/a.md", &[("dev-a", 1)], 'a');
    brain.ingest_ok(std::slice::from_ref(&event)).await;
    let r = waiting.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    // A wait that runs out answers with what it read before it slept (nothing): an answer that
    // holds the event is one the commit woke (or one that found it at its first read).
    assert_eq!(
        ulids(r.body["events"].as_array().unwrap()),
        [event.event_ulid]
    );
}

async fn a_long_poll_with_nothing_new_returns_empty_after_the_wait(f: Fixture) {
    let brain = f.serve().await;
    brain.ingest_ok(&many("dev-a", 2, 1)).await;
    let last = *ids(&brain.pull_all().await).last().unwrap();
    let started = Instant::now();
    let r = brain
        .get(&format!("/pull?after_id={last}&wait_ms=300"))
        .await;
    let elapsed = started.elapsed();
    assert_eq!(r.status, 200);
    assert_eq!(r.body["events"], json!([]));
    assert_eq!(r.body["next_after_id"], last);
    assert!(
        elapsed >= Duration::from_millis(290),
        "returned after {elapsed:?}, before the wait"
    );
    // With events already there, wait_ms does not delay the answer: asked to wait the longest
    // allowed (60 s), it answers well within PATIENCE.
    let r = tokio::time::timeout(PATIENCE, brain.get("/pull?after_id=0&wait_ms=60000"))
        .await
        .expect("answered at once, not after the wait");
    assert_eq!(r.body["events"].as_array().unwrap().len(), 2);
}

async fn the_merge_rule_picks_one_winner_and_keeps_concurrent_losers_as_conflicts(f: Fixture) {
    let brain = f.serve().await;
    let a = upsert("dev-a", "notes/x.md", &[("dev-a", 2)], 'a');
    let b = upsert("dev-b", "notes/x.md", &[("dev-b", 2)], 'b');
    // Concurrent, equal sums: the greater device id (dev-b) wins, whatever the arrival order.
    brain.ingest_ok(std::slice::from_ref(&b)).await;
    assert_eq!(brain.ingest_ok(std::slice::from_ref(&a)).await, (1, 1));
    let x = brain.entity("notes/x.md").await.unwrap();
    assert_eq!(x["event_ulid"], b.event_ulid);
    assert_eq!(x["payload"]["sha256"], sha('b'));
    assert_eq!(x["seen_vc"], json!({"dev-a": 2, "dev-b": 2}));
    let siblings: Vec<&str> = x["siblings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["event_ulid"].as_str().unwrap())
        .collect();
    assert_eq!(
        siblings,
        [b.event_ulid.as_str(), a.event_ulid.as_str()],
        "winner first, the loser kept"
    );
    // A greater clock sum wins over a greater device id.
    let c = upsert("dev-a", "notes/y.md", &[("dev-a", 3)], 'c');
    let d = upsert("dev-b", "notes/y.md", &[("dev-b", 1)], 'd');
    brain.ingest_ok(&[c.clone(), d]).await;
    assert_eq!(
        brain.entity("notes/y.md").await.unwrap()["event_ulid"],
        c.event_ulid
    );
}

async fn a_later_edit_that_saw_the_conflict_resolves_it(f: Fixture) {
    let brain = f.serve().await;
    let a = upsert("dev-a", "notes/x.md", &[("dev-a", 1)], 'a');
    let b = upsert("dev-b", "notes/x.md", &[("dev-b", 1)], 'b');
    brain.ingest_ok(&[a, b]).await;
    assert_eq!(
        brain.entity("notes/x.md").await.unwrap()["siblings"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let merged = upsert("dev-a", "notes/x.md", &[("dev-a", 2), ("dev-b", 1)], 'e');
    brain.ingest_ok(std::slice::from_ref(&merged)).await;
    let x = brain.entity("notes/x.md").await.unwrap();
    assert_eq!(x["event_ulid"], merged.event_ulid);
    assert_eq!(
        x["siblings"].as_array().unwrap().len(),
        1,
        "the edit dominates both: no conflict left"
    );
}

async fn a_delete_is_a_tombstone_and_an_older_upsert_does_not_resurrect_it(f: Fixture) {
    let brain = f.serve().await;
    let up = upsert("dev-a", "notes/x.md", &[("dev-a", 1)], 'a');
    let del = delete("dev-b", "notes/x.md", &[("dev-a", 1), ("dev-b", 1)]);
    // The delete arrives first; the upsert it saw arrives later.
    brain.ingest_ok(std::slice::from_ref(&del)).await;
    brain.ingest_ok(std::slice::from_ref(&up)).await;
    let x = brain.entity("notes/x.md").await.unwrap();
    assert_eq!(x["event_type"], "delete_file");
    assert_eq!(x["event_ulid"], del.event_ulid);
    assert_eq!(x["deleted_at"], del.created_at);
    assert_eq!(x["payload"], json!({}));
    assert_eq!(x["siblings"].as_array().unwrap().len(), 1);
    // Both events are in the log: devices apply the same rule to the same set.
    assert_eq!(brain.pull_all().await.len(), 2);
}

async fn a_wrong_or_missing_secret_is_401_and_stores_nothing(f: Fixture) {
    let brain = f.serve().await;
    let body = serde_json::to_vec(&json!({"batch": many("dev-a", 1, 1)})).unwrap();
    for secret in [
        None,
        Some("wrong"),
        Some(""),
        Some("test-secret-Zq8x"),
        Some("test-secret-Zq"),
    ] {
        let r = brain.send("POST", "/ingest", secret, body.clone()).await;
        assert_eq!(r.status, 401, "secret {secret:?}: {}", r.text);
        assert_eq!(r.body["ok"], false);
        assert!(
            !r.text.contains(SECRET),
            "the secret never appears in an answer"
        );
    }
    for path in ["/pull", "/snapshot", "/metrics"] {
        assert_eq!(
            brain
                .send("GET", path, Some("wrong"), Vec::new())
                .await
                .status,
            401,
            "{path}"
        );
    }
    assert_eq!(
        brain
            .send("DELETE", "/webhook/dev-a", None, Vec::new())
            .await
            .status,
        401
    );
    assert!(brain.pull_all().await.is_empty());
}

async fn malformed_json_is_400_and_stores_nothing(f: Fixture) {
    let brain = f.serve().await;
    for body in [
        &b"{\"batch\": ["[..],
        b"not json",
        b"{}",
        b"{\"batch\": {}}",
        b"[]",
    ] {
        let r = brain
            .send("POST", "/ingest", Some(SECRET), body.to_vec())
            .await;
        assert_eq!(
            r.status,
            400,
            "{:?}: {}",
            String::from_utf8_lossy(body),
            r.text
        );
        assert_eq!(r.body["ok"], false, "{}", r.text);
        assert!(!r.body["error"].as_str().unwrap().is_empty());
    }
    assert!(brain.pull_all().await.is_empty());
}

async fn an_invalid_event_anywhere_refuses_the_batch_naming_index_and_field(f: Fixture) {
    let brain = f.serve().await;
    type Breaker = fn(&mut Value);
    let cases: [(&str, Breaker, &str); 9] = [
        (
            "sha256",
            |e| e["payload"]["sha256"] = json!("XYZ"),
            "batch[3].payload.sha256",
        ),
        (
            "ulid",
            |e| e["event_ulid"] = json!("not-a-ulid"),
            "batch[3].event_ulid",
        ),
        (
            "device",
            |e| e["device_id"] = json!(""),
            "batch[3].device_id",
        ),
        (
            "event type",
            |e| e["event_type"] = json!("rename_file"),
            "batch[3].event_type",
        ),
        (
            "key",
            |e| e["entity_key"] = json!("notes/../etc/passwd"),
            "batch[3].entity_key",
        ),
        (
            "absolute key",
            |e| e["entity_key"] = json!("/etc/passwd"),
            "batch[3].entity_key",
        ),
        (
            "negative clock",
            |e| e["vector_clock"] = json!({"dev-a": -1}),
            "batch[3].vector_clock",
        ),
        (
            "fractional clock",
            |e| e["vector_clock"] = json!({"dev-a": 1.5}),
            "batch[3].vector_clock",
        ),
        (
            "clock without own device",
            |e| e["vector_clock"] = json!({"dev-z": 1}),
            "batch[3].vector_clock",
        ),
    ];
    for (what, breaker, field) in cases {
        let mut batch: Vec<Value> = many("dev-a", 5, 1)
            .iter()
            .map(|e| serde_json::to_value(e).unwrap())
            .collect();
        breaker(&mut batch[3]);
        let r = brain.post("/ingest", &json!({ "batch": batch })).await;
        assert_eq!(r.status, 400, "{what}: {}", r.text);
        let error = r.body["error"].as_str().unwrap();
        assert!(
            error.starts_with(field),
            "{what}: error {error:?} does not start with {field:?}"
        );
    }
    let mut big = many("dev-a", 1, 1);
    big[0].payload.content = Some("x".repeat(1024 * 1024 + 1));
    let r = brain.ingest(&big).await;
    assert_eq!(r.status, 400);
    assert!(
        r.body["error"]
            .as_str()
            .unwrap()
            .starts_with("batch[0].payload.content"),
        "{}",
        r.text
    );
    assert!(
        brain.pull_all().await.is_empty(),
        "nothing of any refused batch is stored"
    );
}

async fn a_batch_over_500_events_or_a_body_over_the_cap_is_413(f: Fixture) {
    let small_cap = lib_agent::brain::server::ServerConfig {
        max_body_bytes: 64 * 1024,
        ..config()
    };
    let brain = Brain::start(f.store.clone(), small_cap).await;
    let r = brain.ingest(&many("dev-a", 501, 1)).await;
    assert_eq!(r.status, 413, "{}", r.text);
    assert_eq!(r.body["ok"], false);
    let mut fat = many("dev-a", 1, 1);
    fat[0].payload.content = Some("x".repeat(100 * 1024));
    let r = brain.ingest(&fat).await;
    assert_eq!(r.status, 413, "{}", r.text);
    assert!(
        r.body["error"].as_str().unwrap().contains("65536"),
        "{}",
        r.text
    );
    let default_cap = f.serve().await;
    let r = default_cap.ingest(&many("dev-a", 501, 1)).await;
    assert_eq!(r.status, 413);
    assert!(
        r.body["error"].as_str().unwrap().contains("500"),
        "{}",
        r.text
    );
    assert!(default_cap.pull_all().await.is_empty());
    assert_eq!(
        default_cap.ingest_ok(&many("dev-a", 500, 1)).await.0,
        500,
        "500 is allowed"
    );
}

async fn bad_pull_parameters_are_400(f: Fixture) {
    let brain = f.serve().await;
    for query in [
        "after_id=-1",
        "after_id=abc",
        "limit=0",
        "limit=-5",
        "wait_ms=soon",
    ] {
        let r = brain.get(&format!("/pull?{query}")).await;
        assert_eq!(r.status, 400, "{query}: {}", r.text);
        assert_eq!(r.body["ok"], false, "{query}");
    }
}

async fn snapshot_pages_through_entities_by_key_with_the_watermark(f: Fixture) {
    let brain = f.serve().await;
    brain.ingest_ok(&many("dev-a", 7, 1)).await;
    brain
        .ingest_ok(&[upsert(
            "dev-a",
            "notes/dev-a/f000001.md",
            &[("dev-a", 100)],
            'f',
        )])
        .await;
    let newest = *ids(&brain.pull_all().await).last().unwrap();
    let r = brain.get("/snapshot?limit=3").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["watermark"], newest);
    assert_eq!(r.body["has_more"], true);
    let all = brain.snapshot_all().await;
    let keys: Vec<&str> = all
        .iter()
        .map(|e| e["entity_key"].as_str().unwrap())
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    assert_eq!(keys.len(), 7, "one entity per key");
    assert_eq!(all[0]["payload"]["sha256"], sha('f'), "the current winner");
}

async fn a_scheduled_prune_runs_once_per_period_and_its_status_says_what_it_did(f: Fixture) {
    let brain = f.serve().await;
    let never = brain.store.prune_status().await;
    assert_eq!(
        (never.last_run_at, never.total_deleted, never.oldest_kept),
        (None, 0, None)
    );
    brain.ingest_ok(&many("dev-a", 3, 1)).await;
    let later = SystemTime::now() + Duration::from_secs(5);
    let week = Duration::from_secs(7 * 86_400);
    // Due: no prune ever ran.
    let report = brain
        .store
        .prune_unless_ran_since(later, later - week)
        .await
        .expect("due");
    assert_eq!(report.deleted_events, 3);
    let status = brain.store.prune_status().await;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        status.last_run_at.is_some_and(|t| (t - now).abs() < 60),
        "{status:?}"
    );
    assert_eq!((status.last_deleted, status.total_deleted), (3, 3));
    assert_eq!(status.pruned_through, report.pruned_through);
    assert_eq!(status.oldest_kept, None, "the log is empty");

    // Another brain on the store, in the same period: not due, nothing done.
    brain.ingest_ok(&many("dev-b", 2, 1)).await;
    let again = brain
        .store
        .prune_unless_ran_since(later, later - week)
        .await;
    assert_eq!(again, None);
    // A period later it is due again, and the totals add up.
    let report = brain
        .store
        .prune_unless_ran_since(later, later)
        .await
        .expect("due");
    assert_eq!(report.deleted_events, 2);
    let status = brain.store.prune_status().await;
    assert_eq!((status.last_deleted, status.total_deleted), (2, 5));
    // Nothing old enough: a run that deletes nothing is still a run.
    brain.ingest_ok(&many("dev-c", 1, 1)).await;
    let past = SystemTime::now() - Duration::from_secs(3600);
    let report = brain
        .store
        .prune_unless_ran_since(past, later)
        .await
        .expect("due");
    assert_eq!(report.deleted_events, 0);
    let status = brain.store.prune_status().await;
    assert_eq!((status.last_deleted, status.total_deleted), (0, 5));
    assert!(
        status
            .oldest_kept
            .is_some_and(|(id, _)| id > report.pruned_through),
        "{status:?}"
    );
}

async fn a_cursor_older_than_the_pruned_log_is_410_and_a_snapshot_reseeds(f: Fixture) {
    let brain = f.serve().await;
    brain.ingest_ok(&many("dev-a", 3, 1)).await;
    let report = brain
        .store
        .prune(SystemTime::now() + Duration::from_secs(5))
        .await;
    assert_eq!(report.deleted_events, 3);
    let pruned = report.pruned_through;
    brain.ingest_ok(&many("dev-b", 2, 1)).await;
    let r = brain.pull(0, 100).await;
    assert_eq!(r.status, 410, "{}", r.text);
    assert!(
        r.body["error"].as_str().unwrap().contains("snapshot"),
        "the body says how to re-seed: {}",
        r.text
    );
    assert_eq!(r.body["code"], "cursor_pruned", "{}", r.text);
    assert_eq!(r.body["after_id"], 0);
    assert_eq!(
        r.body["pruned_through"], pruned,
        "where a client can go on from"
    );
    // Re-seed: the snapshot still holds every entity, and pulling from its watermark continues.
    let snap = brain.get("/snapshot").await;
    assert_eq!(
        snap.body["entities"].as_array().unwrap().len(),
        5,
        "entities outlive the pruned log"
    );
    let watermark = snap.body["watermark"].as_i64().unwrap();
    let r = brain.pull(watermark, 100).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["events"], json!([]));
    let r = brain.pull(pruned, 100).await;
    assert_eq!(
        r.status, 200,
        "a cursor at the pruned mark is fine: {}",
        r.text
    );
    assert_eq!(r.body["events"].as_array().unwrap().len(), 2);
    // Pruning again with nothing old is a no-op.
    assert_eq!(
        brain
            .store
            .prune(SystemTime::now() - Duration::from_secs(3600))
            .await
            .deleted_events,
        0
    );
}

/// The clock-free prune (tests and the deterministic simulation prune this way): by id, with the
/// same prune mark and 410 as a prune by age, never past the newest event.
async fn a_prune_through_an_id_removes_the_events_up_to_it_and_no_further(f: Fixture) {
    let brain = f.serve().await;
    brain.ingest_ok(&many("dev-a", 5, 1)).await;
    let all = ids(&brain.pull_all().await);
    let report = brain.store.prune_through(all[1]).await;
    assert_eq!(report.deleted_events, 2);
    assert_eq!(report.pruned_through, all[1]);
    assert_eq!(brain.pull(0, 100).await.status, 410);
    let r = brain.pull(all[1], 100).await;
    assert_eq!(ids(r.body["events"].as_array().unwrap()), all[2..]);
    // Below the mark: nothing left to prune, and the mark stays.
    let report = brain.store.prune_through(all[0]).await;
    assert_eq!((report.deleted_events, report.pruned_through), (0, all[1]));
    // Past the newest event: the mark is the newest event, so a device at it is not sent to
    // re-seed, and the next event is pulled from it.
    let report = brain.store.prune_through(all[4] + 100).await;
    assert_eq!((report.deleted_events, report.pruned_through), (3, all[4]));
    brain.ingest_ok(&many("dev-b", 1, 1)).await;
    let r = brain.pull(all[4], 100).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["events"].as_array().unwrap().len(), 1);
}

/// Prunes the whole log; returns the prune mark (pull from it to see what came after).
async fn prune_everything(brain: &Brain) -> i64 {
    let report = brain
        .store
        .prune(SystemTime::now() + Duration::from_secs(5))
        .await;
    assert!(report.deleted_events > 0, "there was something to prune");
    assert_eq!(
        brain.pull(report.pruned_through, 10).await.body["events"],
        json!([])
    );
    report.pruned_through
}

/// A device whose push was stored but whose answer was lost comes back after the retention
/// window and pushes the same events again: the brain still knows them, so no device pulls them
/// twice.
async fn a_pruned_event_pushed_again_with_the_same_content_is_not_inserted_again(f: Fixture) {
    let brain = f.serve().await;
    let batch = vec![
        upsert("dev-a", "notes/x.md", &[("dev-a", 1)], 'a'),
        // Concurrent with the first: an open conflict, which a re-applied event could disturb.
        upsert("dev-b", "notes/x.md", &[("dev-b", 1)], 'b'),
        upsert("dev-a", "notes/y.md", &[("dev-a", 2)], 'c'),
        delete("dev-a", "notes/y.md", &[("dev-a", 3)]),
    ];
    assert_eq!(brain.ingest_ok(&batch).await, (4, 2));
    let pruned = prune_everything(&brain).await;
    let entities = brain.snapshot_all().await;
    let watermark = brain.get("/snapshot").await.body["watermark"].clone();

    assert_eq!(brain.ingest_ok(&batch).await, (0, 0));
    // One at a time, as a device retrying event by event would.
    for event in &batch {
        assert_eq!(brain.ingest_ok(std::slice::from_ref(event)).await, (0, 0));
    }
    assert_eq!(
        brain.pull_all_after(pruned).await,
        Vec::<Value>::new(),
        "nothing appended to the log"
    );
    assert_eq!(brain.snapshot_all().await, entities, "entities unchanged");
    assert_eq!(brain.get("/snapshot").await.body["watermark"], watermark);
}

async fn a_pruned_ulid_pushed_again_with_other_content_is_409_and_nothing_of_the_batch_is_stored(
    f: Fixture,
) {
    let brain = f.serve().await;
    let original = upsert("dev-a", "notes/a.md", &[("dev-a", 1)], 'a');
    brain.ingest_ok(std::slice::from_ref(&original)).await;
    let pruned = prune_everything(&brain).await;
    let entities = brain.snapshot_all().await;

    let mut forged = original.clone();
    forged.payload.sha256 = Some(sha('b'));
    let fresh = upsert("dev-a", "notes/b.md", &[("dev-a", 2)], 'c');
    let r = brain.ingest(&[fresh.clone(), forged]).await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert_eq!(r.body["ok"], false);
    assert!(
        r.body["error"]
            .as_str()
            .unwrap()
            .contains(&original.event_ulid),
        "the error names the ULID: {}",
        r.text
    );
    assert_eq!(
        brain.pull_all_after(pruned).await,
        Vec::<Value>::new(),
        "the fresh event of the refused batch is not stored"
    );
    assert_eq!(brain.snapshot_all().await, entities, "entities unchanged");
    // The refusal lasts: a ULID names one event forever.
    let mut other_key = original.clone();
    other_key.entity_key = "notes/elsewhere.md".into();
    assert_eq!(brain.ingest(&[other_key]).await.status, 409);
}

async fn a_retry_mixing_pruned_and_new_events_inserts_only_the_new_ones(f: Fixture) {
    let brain = f.serve().await;
    let old = many("dev-a", 3, 1);
    brain.ingest_ok(&old).await;
    let pruned = prune_everything(&brain).await;
    let before = brain.snapshot_all().await;

    let new = many("dev-a", 2, 10);
    let mut retry = vec![old[0].clone(), new[0].clone(), old[1].clone()];
    retry.extend([new[1].clone(), old[2].clone()]);
    assert_eq!(brain.ingest_ok(&retry).await, (2, 2));
    let pulled = brain.pull_all_after(pruned).await;
    assert_eq!(
        ulids(&pulled),
        [new[0].event_ulid.clone(), new[1].event_ulid.clone()],
        "only the new events are appended, in batch order"
    );
    let after = brain.snapshot_all().await;
    assert_eq!(after.len(), 5);
    assert_eq!(
        after[..3],
        before[..],
        "the pruned events' entities are unchanged"
    );
}

async fn webhooks_are_notified_signed_after_an_ingest_and_can_be_deactivated(f: Fixture) {
    use axum::http::HeaderMap;
    let brain = f.serve().await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(HeaderMap, axum::body::Bytes)>();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((headers, body));
                "ok"
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let r = brain
        .post(
            "/webhook",
            &json!({"device_id": "dev-b", "webhook_url": format!("http://{hook_addr}/hook"), "secret": "hook-secret-0123456"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.body["webhook_id"].as_i64().is_some());

    // A second device whose listener is gone: its delivery fails, is counted, and delays nothing.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let r = brain
        .post("/webhook", &json!({"device_id": "dev-c", "webhook_url": format!("http://{dead}/hook"), "secret": "x-secret-0123456"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    brain.ingest_ok(&many("dev-a", 2, 1)).await;
    let (headers, body) = rx.recv().await.expect("a notification");
    let signature = headers.get("x-lib-signature").unwrap().to_str().unwrap();
    webhooks::verify("hook-secret-0123456", signature, &body, SystemTime::now())
        .expect("a valid signature");
    assert!(webhooks::verify("other-secret", signature, &body, SystemTime::now()).is_err());
    let note: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(note["event"], "new_events");
    // Pulling from after_id returns the new events.
    let r = brain.pull(note["after_id"].as_i64().unwrap(), 10).await;
    assert_eq!(r.body["events"].as_array().unwrap().len(), 2);
    assert!(note["timestamp"].as_str().is_some());

    // Both outcomes are counted; no event tells when, so poll the metrics (bounded).
    let started = Instant::now();
    loop {
        let metrics = brain.metrics().await;
        // The delivery counts once the listener's answer is back, a moment after it got the body.
        if metrics.contains("lib_brain_webhook_failures_total 1")
            && metrics.contains("lib_brain_webhook_deliveries_total 1")
        {
            break;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "delivery and failure not counted: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let r = brain
        .send("DELETE", "/webhook/dev-c", Some(SECRET), Vec::new())
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = brain
        .send("DELETE", "/webhook/dev-b", Some(SECRET), Vec::new())
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body, json!({"ok": true}));
    assert!(brain.store.active_webhooks().await.is_empty());
    // Registering again reactivates it.
    let r = brain
        .post(
            "/webhook",
            &json!({"device_id": "dev-b", "webhook_url": format!("http://{hook_addr}/hook"), "secret": "s2-secret-0123456"}),
        )
        .await;
    assert_eq!(r.status, 200);
    let active = brain.store.active_webhooks().await;
    assert_eq!(active.len(), 1);
    assert!(
        !format!("{active:?}").contains("s2-secret"),
        "a webhook's Debug hides its secret"
    );
}

async fn a_webhook_that_never_answers_does_not_delay_ingest(f: Fixture) {
    let brain = f.serve().await;
    // Accepts connections and never answers: each delivery waits for its 5 s timeout.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
            let _ = accepted_tx.send(());
        }
    });
    let url = format!("http://{addr}/hook");
    let r = brain
        .post(
            "/webhook",
            &json!({"device_id": "dev-slow", "webhook_url": url, "secret": "slow-secret-0123456"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    for round in 0..3 {
        brain.ingest_ok(&many("dev-a", 10, 1 + round * 10)).await;
    }
    accepted.recv().await.expect("the delivery was attempted");
    // An ingest that waited for its notification would have seen it time out (5 s) and be
    // counted as failed before answering: every ingest answered while none had ended.
    let metrics = brain.metrics().await;
    assert!(
        metrics.contains("lib_brain_webhook_failures_total 0")
            && metrics.contains("lib_brain_webhook_deliveries_total 0"),
        "ingest waited for a webhook: {metrics}"
    );
}

async fn only_http_webhook_urls_are_accepted(f: Fixture) {
    let brain = f.serve().await;
    for url in [
        "ftp://example.com/x",
        "file:///etc/passwd",
        "not a url",
        "http://",
        "javascript:alert(1)",
    ] {
        let r = brain
            .post(
                "/webhook",
                &json!({"device_id": "dev-a", "webhook_url": url, "secret": "a-secret-0123456"}),
            )
            .await;
        assert_eq!(r.status, 400, "{url}: {}", r.text);
        assert!(
            r.body["error"].as_str().unwrap().contains("webhook_url"),
            "{}",
            r.text
        );
    }
    let r = brain
        .post(
            "/webhook",
            &json!({"device_id": "dev-a", "webhook_url": "https://example.com/hook", "secret": "s"}),
        )
        .await;
    assert_eq!(r.status, 400, "a secret under 16 bytes: {}", r.text);
    assert!(
        r.body["error"].as_str().unwrap().contains("secret"),
        "{}",
        r.text
    );
    assert!(brain.store.active_webhooks().await.is_empty());
}

async fn health_needs_no_secret_and_metrics_count_requests(f: Fixture) {
    let config = ServerConfig {
        metrics_token: Some(METRICS_TOKEN.into()),
        ..config()
    };
    let brain = Brain::start(f.store.clone(), config).await;
    let r = brain.send("GET", "/health", None, Vec::new()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["status"], "healthy");
    assert_eq!(r.body["version"], env!("CARGO_PKG_VERSION"));
    let r = brain.get("/no/such/route").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body["ok"], false);
    brain.ingest_ok(&many("dev-a", 4, 1)).await;
    brain.pull(0, 10).await;
    let r = brain.get("/metrics").await;
    assert_eq!(
        r.status, 401,
        "the read-write secret is not the metrics token: {}",
        r.text
    );
    let bearer = format!("Bearer {METRICS_TOKEN}");
    let r = brain
        .send_with("GET", "/metrics", &[("authorization", &bearer)], Vec::new())
        .await;
    assert_eq!(r.status, 200);
    assert!(
        r.text.contains("lib_brain_events_ingested_total 4"),
        "{}",
        r.text
    );
    assert!(r.text.contains("lib_brain_pulls_total 1"), "{}", r.text);
    assert!(
        r.text.contains(
            "lib_brain_request_duration_seconds_count{route=\"/ingest\",status=\"200\"} 1"
        ),
        "{}",
        r.text
    );
    assert!(
        r.text.contains("lib_brain_auth_failures_total 1"),
        "the metrics request with the wrong credential counts: {}",
        r.text
    );
    assert!(!r.text.contains(SECRET) && !r.text.contains(METRICS_TOKEN));
}

async fn metrics_are_off_without_their_own_token(f: Fixture) {
    let config = ServerConfig {
        metrics_token: None,
        ..config()
    };
    let brain = Brain::start(f.store.clone(), config).await;
    let r = brain.get("/metrics").await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert!(r.text.contains("LIB_METRICS_TOKEN"), "{}", r.text);
}

async fn concurrent_ingests_lose_nothing(f: Fixture) {
    let brain = std::sync::Arc::new(f.serve().await);
    let mut writers = Vec::new();
    for w in 0..4 {
        let brain = brain.clone();
        writers.push(tokio::spawn(async move {
            let device = format!("dev-{w}");
            for round in 0..5 {
                brain.ingest_ok(&many(&device, 20, 1 + round * 20)).await;
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let events = brain.pull_all().await;
    assert_eq!(events.len(), 400);
    let ids = ids(&events);
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(brain.snapshot_all().await.len(), 400);
}

/// A database that drops the brain's connections (a restart, a failover) costs at most the
/// requests in flight, which get 503 and store nothing; the brain reconnects by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_the_brain_recovers_when_its_database_connections_drop() {
    require_postgres!();
    let f = Fixture::postgres().await;
    let AnyStore::Postgres(store) = &f.store else {
        unreachable!()
    };
    let schema = store.schema().to_owned();
    let run = async {
        let brain = f.serve().await;
        brain.ingest_ok(&many("dev-a", 3, 1)).await;
        let (admin, conn) = tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let killed = admin
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
                &[&format!("lib brain {schema}")],
            )
            .await
            .unwrap();
        assert!(!killed.is_empty(), "the brain's sessions were found");
        let mut stored = 3;
        for round in 0..3u64 {
            let r = brain.ingest(&many("dev-b", 2, 1 + round * 2)).await;
            match r.status {
                200 => stored += 2,
                503 => assert_eq!(r.body["ok"], false, "{}", r.text),
                other => panic!("status {other}: {}", r.text),
            }
        }
        assert!(stored >= 7, "the brain reconnected: {stored} events stored");
        assert_eq!(
            brain.pull_all().await.len(),
            stored,
            "a refused ingest stored nothing"
        );
        // Long-polls wake again once the LISTEN connection is back.
        let last = *ids(&brain.pull_all().await).last().unwrap();
        let brain = std::sync::Arc::new(brain);
        let waiter = {
            let brain = brain.clone();
            tokio::spawn(async move {
                brain
                    .get(&format!("/pull?after_id={last}&wait_ms=20000"))
                    .await
            })
        };
        brain.ingest_ok(&many("dev-c", 1, 1)).await;
        let r = waiter.await.unwrap();
        assert_eq!(r.body["events"].as_array().unwrap().len(), 1, "{}", r.text);
    };
    tokio::time::timeout(TEST_LIMIT, run)
        .await
        .expect("test timed out");
}

/// Two brain instances on one database: a long-poll on one wakes when the other commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_long_poll_wakes_when_another_brain_instance_commits() {
    require_postgres!();
    let f = Fixture::postgres().await;
    let run = async {
        let one = std::sync::Arc::new(f.serve().await);
        let two = Brain::start(f.second_instance().await, config()).await;
        let waiter = {
            let one = one.clone();
            tokio::spawn(async move { one.get("/pull?after_id=0&wait_ms=20000").await })
        };
        two.ingest_ok(&many("dev-a", 1, 1)).await;
        // A wait that runs out answers with nothing: an answer holding the event is a wake-up.
        let r = waiter.await.unwrap();
        assert_eq!(r.body["events"].as_array().unwrap().len(), 1, "{}", r.text);
    };
    tokio::time::timeout(TEST_LIMIT, run)
        .await
        .expect("test timed out");
}

/// A SQLite brain whose file another process holds locked answers 503 after its busy timeout,
/// stores nothing of the refused batch, and serves again once the lock is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_locked_database_is_503_and_the_brain_recovers() {
    use lib_agent::brain::store::{SqliteOptions, SqliteStore};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("brain.db");
    let options = SqliteOptions {
        busy_timeout: Duration::from_millis(100),
    };
    let store = SqliteStore::open_with(&path, options).unwrap();
    let run = async {
        let brain = Brain::start(AnyStore::Sqlite(store), config()).await;
        brain.ingest_ok(&many("dev-a", 1, 1)).await;
        let other = rusqlite::Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let r = brain.ingest(&many("dev-b", 2, 1)).await;
        assert_eq!(r.status, 503, "{}", r.text);
        assert_eq!(r.body["ok"], false);
        // Reads go on while the writer is locked out (WAL).
        assert_eq!(brain.pull_all().await.len(), 1);
        other.execute_batch("ROLLBACK").unwrap();
        assert_eq!(brain.ingest_ok(&many("dev-b", 2, 1)).await, (2, 2));
        assert_eq!(brain.pull_all().await.len(), 3);
    };
    tokio::time::timeout(TEST_LIMIT, run)
        .await
        .expect("test timed out");
}

/// The same events, ingested in different orders and batchings into separate brains, leave every
/// brain with the same entities: winners, merge state and conflicts depend on the set of events,
/// never on their arrival order.
async fn every_arrival_order_converges_to_the_same_entities(new_fixture: fn() -> FixtureFuture) {
    let (a, b, c) = ("dev-a", "dev-b", "dev-c");
    let events = vec![
        upsert(a, "n/x.md", &[(a, 1)], 'a'),
        upsert(b, "n/x.md", &[(b, 1)], 'b'),
        upsert(c, "n/x.md", &[(a, 1), (c, 1)], 'c'),
        delete(a, "n/y.md", &[(a, 2)]),
        upsert(b, "n/y.md", &[(b, 2)], 'd'),
        upsert(c, "n/y.md", &[(a, 2), (b, 2), (c, 3)], 'e'),
        upsert(a, "n/z.md", &[(a, 3)], 'f'),
        delete(b, "n/z.md", &[(a, 3), (b, 3)]),
        upsert(c, "n/z.md", &[(c, 4)], '1'),
    ];
    let orders: [Vec<Vec<usize>>; 3] = [
        vec![(0..9).collect()],
        vec![vec![8, 7], vec![6, 5, 4], vec![3, 2, 1, 0]],
        vec![vec![4], vec![0, 8], vec![2], vec![6, 1], vec![3, 7, 5]],
    ];
    let mut results = Vec::new();
    for order in orders {
        let fixture = new_fixture().await;
        let brain = fixture.serve().await;
        for batch in order {
            let batch: Vec<_> = batch.iter().map(|i| events[*i].clone()).collect();
            brain.ingest_ok(&batch).await;
        }
        results.push(brain.snapshot_all().await);
    }
    assert_eq!(results[0], results[1]);
    assert_eq!(results[0], results[2]);
    let x = &results[0][0];
    assert_eq!(
        x["payload"]["sha256"],
        sha('c'),
        "c saw a's version: its edit wins"
    );
    assert_eq!(
        x["siblings"].as_array().unwrap().len(),
        2,
        "b's concurrent version is a conflict"
    );
}

type FixtureFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Fixture> + Send>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_every_arrival_order_converges_to_the_same_entities() {
    let run = every_arrival_order_converges_to_the_same_entities(|| Box::pin(Fixture::sqlite()));
    tokio::time::timeout(TEST_LIMIT, run)
        .await
        .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_every_arrival_order_converges_to_the_same_entities() {
    require_postgres!();
    let run = every_arrival_order_converges_to_the_same_entities(|| Box::pin(Fixture::postgres()));
    tokio::time::timeout(TEST_LIMIT, run)
        .await
        .expect("test timed out");
}

/// The columns a brain of schema 1 (before it kept pruned ULIDs) wrote for an event alone on its
/// key: `event_ulid, device_id, event_type, entity_type, entity_key, payload, vector_clock,
/// created_at, digest` for the log, then the entity's `seen_vc, siblings`.
fn schema_1_columns(e: &lib_agent::model::Event) -> [String; 11] {
    use lib_agent::brain::store::CheckedEvent;
    [
        e.event_ulid.clone(),
        e.device_id.clone(),
        e.event_type.as_str().to_owned(),
        e.entity_type.clone(),
        e.entity_key.clone(),
        serde_json::to_string(&e.payload).unwrap(),
        e.vector_clock.to_json(),
        e.created_at.clone(),
        CheckedEvent::new(e.clone()).digest,
        e.vector_clock.to_json(),
        serde_json::to_string(&[e.version()]).unwrap(),
    ]
}

/// How many migrations a store's folder holds: what a migrated database records.
fn migrations_in(folder: &str) -> i64 {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(folder);
    std::fs::read_dir(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .filter(|f| {
            f.as_ref()
                .is_ok_and(|f| f.path().extension().is_some_and(|x| x == "sql"))
        })
        .count() as i64
}

/// A brain database written by schema 1, opened by this brain: migrated in place, its log (with
/// its ids) and entities kept, its events still known, and the ones it prunes from now on
/// recognised when pushed again.
async fn a_schema_1_database_keeps_its_data_and_recognises_what_it_prunes(
    brain: Brain,
    old: &[lib_agent::model::Event],
) {
    let pulled = brain.pull_all().await;
    assert_eq!(
        ulids(&pulled),
        old.iter().map(|e| e.event_ulid.clone()).collect::<Vec<_>>()
    );
    assert_eq!(ids(&pulled), (1..=old.len() as i64).collect::<Vec<_>>());
    let entities = brain.snapshot_all().await;
    assert_eq!(entities.len(), old.len());
    assert_eq!(entities[0]["event_ulid"], old[0].event_ulid);
    assert_eq!(
        brain.ingest_ok(old).await,
        (0, 0),
        "the old events are known"
    );

    let new = many("dev-b", 1, 1);
    assert_eq!(brain.ingest_ok(&new).await, (1, 1));
    let pruned = prune_everything(&brain).await;
    let mut again = old.to_vec();
    again.extend(new);
    assert_eq!(brain.ingest_ok(&again).await, (0, 0));
    assert_eq!(brain.pull_all_after(pruned).await, Vec::<Value>::new());
    assert_eq!(brain.snapshot_all().await[..old.len()], entities[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_brain_database_of_schema_1_migrates_in_place_with_its_data() {
    use lib_agent::brain::store::SqliteStore;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("brain.db");
    let old = many("dev-a", 2, 1);
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(include_str!("../../migrations/brain/sqlite/0001_init.sql"))
            .unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        for e in &old {
            let c = schema_1_columns(e);
            conn.execute(
                "INSERT INTO events (event_ulid, device_id, event_type, entity_type, entity_key,
                   payload, vector_clock, created_at, digest, received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, CAST(strftime('%s', 'now') AS INTEGER))",
                rusqlite::params_from_iter(&c[..9]),
            )
            .unwrap();
            conn.execute(
                "INSERT INTO entities (entity_key, entity_type, event_ulid, device_id, event_type,
                   payload, vector_clock, created_at, seen_vc, siblings, updated_at)
                 VALUES (?5, ?4, ?1, ?2, ?3, ?6, ?7, ?8, ?10, ?11, CAST(strftime('%s', 'now') AS INTEGER))",
                rusqlite::params_from_iter(&c),
            )
            .unwrap();
        }
    }
    let store = SqliteStore::open(&path).expect("a schema 1 database opens");
    let version: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, migrations_in("migrations/brain/sqlite"));
    let brain = Brain::start(AnyStore::Sqlite(store), config()).await;
    tokio::time::timeout(
        TEST_LIMIT,
        a_schema_1_database_keeps_its_data_and_recognises_what_it_prunes(brain, &old),
    )
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_brain_database_of_schema_1_migrates_in_place_with_its_data() {
    require_postgres!();
    let run = async {
        let schema = TestSchema::new();
        schema
            .execute(include_str!(
                "../../migrations/brain/postgres/0001_lib_shared.sql"
            ))
            .await;
        schema
            .execute(
                "CREATE TABLE lib_shared.schema_migrations (version integer PRIMARY KEY,
                   name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());
                 INSERT INTO lib_shared.schema_migrations (version, name) VALUES (1, '0001_lib_shared');",
            )
            .await;
        let old = many("dev-a", 2, 1);
        let admin = schema.admin().await;
        for e in &old {
            let c = schema_1_columns(e);
            let p: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                c.iter().map(|v| v as _).collect();
            admin
                .execute(
                    &format!(
                        "INSERT INTO {}.events (event_ulid, device_id, event_type, entity_type,
                           entity_key, payload, vector_clock, created_at, digest)
                         VALUES ($1, $2, $3, $4, $5, $6::text::jsonb, $7::text::jsonb, $8, $9)",
                        schema.name
                    ),
                    &p[..9],
                )
                .await
                .unwrap();
            admin
                .execute(
                    &format!(
                        "INSERT INTO {}.entities (entity_key, entity_type, event_ulid, device_id,
                           event_type, payload, vector_clock, created_at, seen_vc, siblings)
                         VALUES ($5, $4, $1, $2, $3, $6::text::jsonb, $7::text::jsonb, $8,
                                 $9::text::jsonb, $10::text::jsonb)",
                        schema.name
                    ),
                    &[p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[9], p[10]],
                )
                .await
                .unwrap();
        }
        let store = schema.open().await.expect("a schema 1 database opens");
        assert_eq!(
            store.adopted(),
            None,
            "schema 1 is this brain's, not LIB v1.1's"
        );
        let recorded: i64 = admin
            .query_one(
                &format!("SELECT count(*) FROM {}.schema_migrations", schema.name),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(recorded, migrations_in("migrations/brain/postgres"));
        let f = Fixture::postgres_on(schema, store);
        let brain = f.serve().await;
        a_schema_1_database_keeps_its_data_and_recognises_what_it_prunes(brain, &old).await;
    };
    tokio::time::timeout(TEST_LIMIT, run)
        .await
        .expect("test timed out");
}

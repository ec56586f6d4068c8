//! Convergence you can check (DESIGN.md), on the brain's side, as a specification: the brain
//! keeps the digest of its entities with every ingest, compares it with what a pulling device
//! reports, answers with the device's state, and shows every enrolled device's state and lag in
//! `GET /devices` and `/metrics`. Both stores, real HTTP on loopback.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::support::brain::*;
use crate::support::wait::PATIENCE;
use lib_agent::brain::auth::{hash_token, new_token};
use lib_agent::brain::server::ServerConfig;
use lib_agent::brain::store::{BrainStore, DigestRederived, ReplicaPoint};

suite!(
    the_kept_digest_is_the_digest_of_the_entities_after_every_ingest,
    a_pull_that_reports_a_digest_is_answered_with_the_devices_state,
    entities_changed_outside_the_brain_are_found_when_it_starts,
    devices_and_metrics_show_each_devices_state_and_lag,
);

impl AnyStore {
    async fn replica_point(&self) -> ReplicaPoint {
        match self {
            AnyStore::Sqlite(s) => s.replica().await.unwrap(),
            AnyStore::Postgres(s) => s.replica().await.unwrap(),
        }
    }

    async fn rederive(&self) -> DigestRederived {
        match self {
            AnyStore::Sqlite(s) => s.rederive_digest().await.unwrap(),
            AnyStore::Postgres(s) => s.rederive_digest().await.unwrap(),
        }
    }

    async fn enrol_device(&self, name: &str) -> String {
        let token = new_token().unwrap();
        match self {
            AnyStore::Sqlite(s) => s.add_device(name, &hash_token(&token)).await.unwrap(),
            AnyStore::Postgres(s) => s.add_device(name, &hash_token(&token)).await.unwrap(),
        };
        token
    }

    /// Runs SQL written for `lib_shared` on the store's own database, as a hand edit would.
    async fn tamper(&self, sql: &str) {
        match self {
            AnyStore::Sqlite(s) => {
                let conn = rusqlite::Connection::open(s.path()).unwrap();
                conn.execute_batch(&sql.replace("lib_shared.", "")).unwrap();
            }
            AnyStore::Postgres(s) => {
                let (client, connection) =
                    tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls)
                        .await
                        .unwrap();
                tokio::spawn(connection);
                client
                    .batch_execute(&sql.replace("lib_shared", s.schema()))
                    .await
                    .unwrap();
            }
        }
    }
}

/// The digest of entities as `/snapshot` serves them, from DESIGN.md's definition: the XOR of
/// sha256(key, 0, winner ULID, 0, sha256 or "deleted").
fn digest_of(entities: &[Value]) -> String {
    let mut digest = [0u8; 32];
    for e in entities {
        let mut h = Sha256::new();
        h.update(e["entity_key"].as_str().unwrap().as_bytes());
        h.update([0]);
        h.update(e["event_ulid"].as_str().unwrap().as_bytes());
        h.update([0]);
        if e["deleted_at"].is_null() {
            h.update(e["payload"]["sha256"].as_str().unwrap_or("").as_bytes());
        } else {
            h.update(b"deleted");
        }
        for (d, b) in digest.iter_mut().zip(h.finalize()) {
            *d ^= b;
        }
    }
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Events that replace winners, delete, conflict and repeat.
async fn eventful_log(brain: &Brain) {
    brain
        .ingest_ok(&[
            upsert("dev-a", "notes/one.md", &[("dev-a", 1)], 'a'),
            upsert("dev-a", "notes/two.md", &[("dev-a", 2)], 'b'),
        ])
        .await;
    let repeat = upsert("dev-b", "notes/one.md", &[("dev-a", 1), ("dev-b", 1)], 'c');
    brain.ingest_ok(std::slice::from_ref(&repeat)).await;
    brain.ingest_ok(&[repeat]).await;
    brain
        .ingest_ok(&[
            delete("dev-a", "notes/two.md", &[("dev-a", 3)]),
            // Concurrent with each other: one wins, the other is a conflict.
            upsert("dev-a", "notes/three.md", &[("dev-a", 4)], 'd'),
            upsert("dev-b", "notes/three.md", &[("dev-b", 2)], 'e'),
        ])
        .await;
}

async fn the_kept_digest_is_the_digest_of_the_entities_after_every_ingest(f: Fixture) {
    assert_eq!(
        f.store.replica_point().await,
        ReplicaPoint {
            head: 0,
            digest: Default::default()
        },
        "an empty store: the empty digest at 0"
    );
    let brain = f.serve().await;
    eventful_log(&brain).await;
    let point = f.store.replica_point().await;
    assert_eq!(point.head, 6, "the newest id (the repeat got none)");
    assert_eq!(
        point.digest.to_hex(),
        digest_of(&brain.snapshot_all().await)
    );
    let again = f.store.rederive().await;
    assert_eq!(again.kept, Some(point.digest), "kept by the ingests");
    assert_eq!(again.derived, point.digest, "derived from the rows");
    assert_eq!(again.entities, 3);
}

/// `GET /pull` with the device's report as headers.
async fn pull_reporting(
    brain: &Brain,
    after_id: i64,
    digest: Option<&str>,
    pending: &str,
) -> Value {
    let mut headers = vec![("x-lib-sync-secret", SECRET)];
    if let Some(digest) = digest {
        headers.push(("x-lib-digest", digest));
    }
    headers.push(("x-lib-pending", pending));
    let r = brain
        .send_with(
            "GET",
            &format!("/pull?after_id={after_id}&limit=1"),
            &headers,
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body
}

async fn a_pull_that_reports_a_digest_is_answered_with_the_devices_state(f: Fixture) {
    let brain = f.serve().await;
    eventful_log(&brain).await;
    let digest = digest_of(&brain.snapshot_all().await);
    let other = "0".repeat(64);
    let state = |body: &Value| body["convergence"].clone();

    assert_eq!(
        state(&pull_reporting(&brain, 6, Some(&digest), "0").await),
        json!({"state": "converged", "lag": 0}),
        "at the head, nothing pending, the brain's digest"
    );
    assert_eq!(
        state(&pull_reporting(&brain, 6, Some(&other), "0").await),
        json!({"state": "diverged", "lag": 0}),
        "at the head, nothing pending, another digest"
    );
    assert_eq!(
        state(&pull_reporting(&brain, 4, Some(&other), "0").await),
        json!({"state": "behind", "lag": 2}),
        "events to pull: digests are not compared"
    );
    assert_eq!(
        state(&pull_reporting(&brain, 6, Some(&other), "3").await),
        json!({"state": "behind", "lag": 0}),
        "its own events in flight: not comparable yet"
    );
    let v11 = pull_reporting(&brain, 6, None, "0").await;
    assert!(
        v11.get("convergence").is_none(),
        "a client that reports no digest (LIB v1.1's) gets LIB v1.1's answer: {v11}"
    );
    let bad = pull_reporting(&brain, 6, Some("not-a-digest"), "0").await;
    assert!(
        bad.get("convergence").is_none(),
        "a malformed digest is no report: {bad}"
    );
}

async fn entities_changed_outside_the_brain_are_found_when_it_starts(f: Fixture) {
    let brain = f.serve().await;
    eventful_log(&brain).await;
    let kept = f.store.replica_point().await.digest;
    f.store
        .tamper(
            "UPDATE lib_shared.entities SET event_ulid = '7ZZZZZZZZZZZZZZZZZZZZZZZZZ'
             WHERE entity_key = 'notes/one.md'",
        )
        .await;
    let found = f.store.rederive().await;
    assert_eq!(found.kept, Some(kept));
    assert_ne!(
        found.derived, kept,
        "the rows no longer match what the ingests kept"
    );
    assert_eq!(
        f.store.replica_point().await.digest,
        found.derived,
        "devices are compared with the rows as they are"
    );
    assert_eq!(
        found.derived.to_hex(),
        digest_of(&brain.snapshot_all().await)
    );
}

async fn devices_and_metrics_show_each_devices_state_and_lag(f: Fixture) {
    let laptop = f.store.enrol_device("laptop").await;
    let desktop = f.store.enrol_device("desktop").await;
    f.store.enrol_device("phone").await;
    let config = ServerConfig {
        seen_every: Duration::from_millis(100),
        ..config()
    };
    let brain = Brain::start(f.store.clone(), config).await;
    eventful_log(&brain).await;
    let digest = digest_of(&brain.snapshot_all().await);
    for (token, id, after) in [(&laptop, "dev-laptop", 6), (&desktop, "dev-desktop", 2)] {
        let bearer = format!("Bearer {token}");
        let headers = [
            ("authorization", bearer.as_str()),
            ("x-lib-device-id", id),
            ("x-lib-digest", digest.as_str()),
            ("x-lib-pending", "0"),
        ];
        let r = brain
            .send_with(
                "GET",
                &format!("/pull?after_id={after}"),
                &headers,
                Vec::new(),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    // Written at most every `seen_every`: wait for both.
    let bearer = format!("Bearer {laptop}");
    let as_laptop = [
        ("authorization", bearer.as_str()),
        ("x-lib-device-id", "dev-laptop"),
    ];
    let deadline = Instant::now() + PATIENCE;
    let devices = loop {
        let r = brain
            .send_with("GET", "/devices", &as_laptop, Vec::new())
            .await;
        assert_eq!(
            r.status, 200,
            "any enrolled device may list them: {}",
            r.text
        );
        let seen = r.body["devices"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| !d["cursor"].is_null())
            .count();
        if seen == 2 {
            break r.body;
        }
        assert!(Instant::now() < deadline, "never recorded: {}", r.text);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(devices["head"], 6);
    let by_name = |name: &str| {
        devices["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} listed: {devices}"))
    };
    let (l, d, p) = (by_name("laptop"), by_name("desktop"), by_name("phone"));
    assert_eq!((&l["state"], &l["lag"]), (&json!("converged"), &json!(0)));
    assert_eq!(l["device_id"], "dev-laptop");
    assert_eq!((&d["state"], &d["lag"]), (&json!("behind"), &json!(4)));
    assert_eq!((&p["state"], &p["lag"]), (&json!("never seen"), &json!(6)));

    let metrics = brain.metrics().await;
    for line in [
        "lib_brain_device_lag_events{device=\"desktop\"} 4",
        "lib_brain_device_lag_events{device=\"laptop\"} 0",
        "lib_brain_device_state{device=\"laptop\",state=\"converged\"} 1",
        "lib_brain_device_state{device=\"laptop\",state=\"diverged\"} 0",
        "lib_brain_device_state{device=\"desktop\",state=\"behind\"} 1",
        "lib_brain_device_state{device=\"phone\",state=\"never seen\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
}

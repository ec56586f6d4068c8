//! Device credentials (DESIGN.md "Trust"), as a specification: every device has its own token,
//! bound to its device id, and no device can act for another. Run against both stores, through
//! real HTTP on loopback; the `agent brain device` commands through the real binary.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::brain::*;
use crate::support::wait::PATIENCE;
use lib_agent::brain::auth::{hash_token, new_token, MAX_FAILURES};
use lib_agent::brain::server::ServerConfig;
use lib_agent::brain::store::{Binding, BrainStore, DeviceRecord};
use lib_agent::brain::BrainError;

suite!(
    a_token_is_bound_to_the_first_device_id_it_names_and_another_id_is_403,
    a_device_id_bound_to_one_token_cannot_be_claimed_by_another,
    an_unknown_token_or_a_token_without_its_device_id_is_401,
    an_ingest_carrying_another_devices_event_is_refused_whole_naming_it,
    a_device_cannot_claim_another_devices_sequence_beyond_what_it_sent,
    a_device_registers_replaces_and_removes_only_its_own_webhook,
    a_revoked_device_is_refused_at_once_its_long_poll_ends_and_its_webhook_is_off,
    a_rotated_token_works_at_once_and_the_old_one_stops_or_lasts_its_grace,
    the_shared_secret_acts_for_any_device_and_the_previous_one_works_during_a_rotation,
    with_no_shared_secret_only_device_tokens_are_accepted,
    failed_authentications_are_counted_and_throttled_per_client_address,
    a_device_holds_only_a_few_long_polls_and_one_more_is_503_at_once,
    a_devices_last_request_and_cursor_are_recorded,
    the_store_refuses_a_second_enrolment_under_one_name_and_rotating_a_revoked_device,
);

/// Device-credential calls on either store.
impl AnyStore {
    async fn enrol(&self, name: &str) -> String {
        let token = new_token().unwrap();
        let hash = hash_token(&token);
        match self {
            AnyStore::Sqlite(s) => s.add_device(name, &hash).await.unwrap(),
            AnyStore::Postgres(s) => s.add_device(name, &hash).await.unwrap(),
        };
        token
    }

    async fn try_enrol(&self, name: &str, hash: &str) -> Result<DeviceRecord, BrainError> {
        match self {
            AnyStore::Sqlite(s) => s.add_device(name, hash).await,
            AnyStore::Postgres(s) => s.add_device(name, hash).await,
        }
    }

    async fn devices(&self) -> Vec<DeviceRecord> {
        match self {
            AnyStore::Sqlite(s) => s.list_devices().await.unwrap(),
            AnyStore::Postgres(s) => s.list_devices().await.unwrap(),
        }
    }

    async fn device(&self, name: &str) -> DeviceRecord {
        self.devices()
            .await
            .into_iter()
            .find(|d| d.name == name)
            .unwrap_or_else(|| panic!("device {name} enrolled"))
    }

    async fn revoke(&self, name: &str) -> bool {
        match self {
            AnyStore::Sqlite(s) => s.revoke_device(name).await.unwrap(),
            AnyStore::Postgres(s) => s.revoke_device(name).await.unwrap(),
        }
    }

    async fn rotate(&self, name: &str, grace_until: Option<i64>) -> Result<String, BrainError> {
        let token = new_token().unwrap();
        let hash = hash_token(&token);
        let rotated = match self {
            AnyStore::Sqlite(s) => s.rotate_device(name, &hash, grace_until).await,
            AnyStore::Postgres(s) => s.rotate_device(name, &hash, grace_until).await,
        }?;
        assert!(rotated, "{name} is enrolled");
        Ok(token)
    }

    async fn bind(&self, name: &str, device_id: &str) -> Binding {
        match self {
            AnyStore::Sqlite(s) => s.bind_device(name, device_id).await.unwrap(),
            AnyStore::Postgres(s) => s.bind_device(name, device_id).await.unwrap(),
        }
    }
}

/// A device's credential headers.
fn as_device<'a>(bearer: &'a str, device_id: &'a str) -> [(&'a str, &'a str); 2] {
    [("authorization", bearer), ("x-lib-device-id", device_id)]
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn ingest_as(
    brain: &Brain,
    token: &str,
    device_id: &str,
    batch: &[lib_agent::model::Event],
) -> Reply {
    let body = serde_json::to_vec(&json!({ "batch": batch })).unwrap();
    brain
        .send_with(
            "POST",
            "/ingest",
            &as_device(&bearer(token), device_id),
            body,
        )
        .await
}

async fn get_as(brain: &Brain, token: &str, device_id: &str, path: &str) -> Reply {
    brain
        .send_with(
            "GET",
            path,
            &as_device(&bearer(token), device_id),
            Vec::new(),
        )
        .await
}

async fn a_token_is_bound_to_the_first_device_id_it_names_and_another_id_is_403(f: Fixture) {
    let token = f.store.enrol("laptop").await;
    let brain = f.serve().await;
    assert_eq!(f.store.device("laptop").await.device_id, None);
    let r = get_as(&brain, &token, "dev-laptop", "/pull?after_id=0").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        f.store.device("laptop").await.device_id.as_deref(),
        Some("dev-laptop"),
        "the first request bound it"
    );
    let r = ingest_as(&brain, &token, "dev-laptop", &many("dev-laptop", 2, 1)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = get_as(&brain, &token, "dev-other", "/pull?after_id=0").await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert!(
        r.text.contains("dev-laptop") && r.text.contains("device rotate laptop"),
        "says what it is bound to and how to rebind: {}",
        r.text
    );
    let r = ingest_as(&brain, &token, "dev-other", &many("dev-other", 1, 1)).await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(
        brain.pull_all().await.len(),
        2,
        "nothing of dev-other stored"
    );
}

async fn a_device_id_bound_to_one_token_cannot_be_claimed_by_another(f: Fixture) {
    let first = f.store.enrol("laptop").await;
    let second = f.store.enrol("desktop").await;
    let brain = f.serve().await;
    assert_eq!(get_as(&brain, &first, "dev-a", "/pull").await.status, 200);
    let r = get_as(&brain, &second, "dev-a", "/pull").await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert!(r.text.contains("laptop"), "{}", r.text);
    assert_eq!(f.store.device("desktop").await.device_id, None);
    assert_eq!(
        f.store.bind("desktop", "dev-a").await,
        Binding::Taken {
            by: "laptop".into()
        }
    );
    assert_eq!(get_as(&brain, &second, "dev-b", "/pull").await.status, 200);
}

async fn an_unknown_token_or_a_token_without_its_device_id_is_401(f: Fixture) {
    let token = f.store.enrol("laptop").await;
    let brain = f.serve().await;
    let unknown = new_token().unwrap();
    let r = get_as(&brain, &unknown, "dev-a", "/pull").await;
    assert_eq!(r.status, 401, "{}", r.text);
    let r = brain
        .send_with(
            "GET",
            "/pull",
            &[("authorization", &bearer(&token))],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert!(r.text.contains("x-lib-device-id"), "{}", r.text);
    for bad_id in ["", "dev a", "dev/a", &"x".repeat(129)] {
        let r = get_as(&brain, &token, bad_id, "/pull").await;
        assert_eq!(r.status, 401, "{bad_id:?}: {}", r.text);
    }
    let r = brain
        .send_with(
            "GET",
            "/pull",
            &[("authorization", "Basic abc"), ("x-lib-device-id", "dev-a")],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(
        f.store.device("laptop").await.device_id,
        None,
        "nothing bound"
    );
}

async fn an_ingest_carrying_another_devices_event_is_refused_whole_naming_it(f: Fixture) {
    let token = f.store.enrol("laptop").await;
    let brain = f.serve().await;
    let mut batch = many("dev-laptop", 3, 1);
    batch[1] = upsert("dev-victim", "notes/victim.md", &[("dev-victim", 1)], 'v');
    let r = ingest_as(&brain, &token, "dev-laptop", &batch).await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert!(r.text.contains("batch[1].device_id"), "{}", r.text);
    assert!(
        brain.pull_all().await.is_empty(),
        "nothing of the batch is stored"
    );
    // Its own events, whose clocks carry the other devices' entries it pulled, are its to push.
    brain
        .ingest_ok(&[upsert(
            "dev-victim",
            "notes/victim.md",
            &[("dev-victim", 3)],
            'f',
        )])
        .await;
    let own = upsert(
        "dev-laptop",
        "notes/victim.md",
        &[("dev-victim", 3), ("dev-laptop", 4)],
        'e',
    );
    let r = ingest_as(&brain, &token, "dev-laptop", &[own]).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

/// A clock entry for another device above anything that device sent would make its next
/// sequence number one past the cap: refused before it can reach the victim.
async fn a_device_cannot_claim_another_devices_sequence_beyond_what_it_sent(f: Fixture) {
    let token = f.store.enrol("laptop").await;
    let brain = f.serve().await;
    let poison = upsert(
        "dev-laptop",
        "notes/a.md",
        &[("dev-victim", 1 << 53), ("dev-laptop", 1)],
        'a',
    );
    let r = ingest_as(&brain, &token, "dev-laptop", &[poison]).await;
    assert_eq!(r.status, 403, "{}", r.text);
    let error = r.body["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("batch[0].vector_clock[\"dev-victim\"]"),
        "{error}"
    );
    brain
        .ingest_ok(&[upsert(
            "dev-victim",
            "notes/b.md",
            &[("dev-victim", 7)],
            'b',
        )])
        .await;
    let seen = upsert(
        "dev-laptop",
        "notes/b.md",
        &[("dev-victim", 7), ("dev-laptop", 2)],
        'c',
    );
    assert_eq!(
        ingest_as(&brain, &token, "dev-laptop", &[seen])
            .await
            .status,
        200
    );
    let ahead = upsert(
        "dev-laptop",
        "notes/b.md",
        &[("dev-victim", 8), ("dev-laptop", 3)],
        'd',
    );
    let r = ingest_as(&brain, &token, "dev-laptop", &[ahead]).await;
    assert_eq!(r.status, 403, "{}", r.text);
    // Its own entry is its own business.
    let own = upsert("dev-laptop", "notes/c.md", &[("dev-laptop", 1 << 40)], 'e');
    assert_eq!(
        ingest_as(&brain, &token, "dev-laptop", &[own]).await.status,
        200
    );
}

async fn a_device_registers_replaces_and_removes_only_its_own_webhook(f: Fixture) {
    let token = f.store.enrol("laptop").await;
    let brain = f.serve().await;
    let victim = json!({"device_id": "dev-victim", "webhook_url": "http://127.0.0.1:9/hook",
        "secret": "victim-secret-0123456789"});
    assert_eq!(
        brain.post("/webhook", &victim).await.status,
        200,
        "registered by the shared secret"
    );
    let bearer = bearer(&token);
    let headers = as_device(&bearer, "dev-laptop");
    let hijack = json!({"device_id": "dev-victim", "webhook_url": "http://127.0.0.1:9/evil",
        "secret": "attacker-secret-0123456789"});
    let r = brain
        .send_with(
            "POST",
            "/webhook",
            &headers,
            serde_json::to_vec(&hijack).unwrap(),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    let r = brain
        .send_with("DELETE", "/webhook/dev-victim", &headers, Vec::new())
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    let hooks = f.store.active_webhooks().await;
    assert_eq!(hooks.len(), 1);
    assert_eq!(
        hooks[0].url, "http://127.0.0.1:9/hook",
        "the victim's webhook is untouched"
    );
    let own = json!({"device_id": "dev-laptop", "webhook_url": "http://127.0.0.1:9/mine",
        "secret": "laptop-secret-0123456789"});
    let r = brain
        .send_with(
            "POST",
            "/webhook",
            &headers,
            serde_json::to_vec(&own).unwrap(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = brain
        .send_with("DELETE", "/webhook/dev-laptop", &headers, Vec::new())
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(f.store.active_webhooks().await.len(), 1);
}

/// A 60 s long-poll from the start of the log; tried again while the brain refuses it because a
/// probe of the test held the slot for a moment.
async fn long_poll(brain: &Brain, token: &str, device_id: &str) -> Reply {
    loop {
        let r = get_as(brain, token, device_id, "/pull?after_id=0&wait_ms=60000").await;
        if r.status != 503 {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn a_revoked_device_is_refused_at_once_its_long_poll_ends_and_its_webhook_is_off(f: Fixture) {
    let token = f.store.enrol("laptop").await;
    let other = f.store.enrol("desktop").await;
    // One long-poll per device: a second one refused says the first is open.
    let config = ServerConfig {
        max_polls_per_device: 1,
        ..config()
    };
    let brain = std::sync::Arc::new(Brain::start(f.store.clone(), config).await);
    assert_eq!(
        get_as(&brain, &token, "dev-laptop", "/pull").await.status,
        200
    );
    let hook = json!({"device_id": "dev-laptop", "webhook_url": "http://127.0.0.1:9/mine",
        "secret": "laptop-secret-0123456789"});
    let bearer = bearer(&token);
    let headers = as_device(&bearer, "dev-laptop");
    let r = brain
        .send_with(
            "POST",
            "/webhook",
            &headers,
            serde_json::to_vec(&hook).unwrap(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let poll = {
        let (brain, token) = (brain.clone(), token.clone());
        tokio::spawn(async move { long_poll(&brain, &token, "dev-laptop").await })
    };
    let deadline = Instant::now() + PATIENCE;
    while get_as(&brain, &token, "dev-laptop", "/pull?after_id=0&wait_ms=1")
        .await
        .status
        != 503
    {
        assert!(Instant::now() < deadline, "the long-poll never opened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(f.store.revoke("laptop").await);
    let r = get_as(&brain, &token, "dev-laptop", "/pull").await;
    assert_eq!(r.status, 401, "the next request: {}", r.text);
    // A wait that ran out would answer 200 with nothing: 401 is the recheck ending it early.
    let r = poll.await.unwrap();
    assert_eq!(r.status, 401, "the open long-poll ends refused: {}", r.text);
    assert!(
        f.store.active_webhooks().await.is_empty(),
        "its webhook is off"
    );
    assert!(f.store.device("laptop").await.revoked_at.is_some());
    assert_eq!(
        get_as(&brain, &other, "dev-desktop", "/pull").await.status,
        200,
        "others go on"
    );
    assert!(!f.store.revoke("no-such-device").await);
}

async fn a_rotated_token_works_at_once_and_the_old_one_stops_or_lasts_its_grace(f: Fixture) {
    let old = f.store.enrol("laptop").await;
    let brain = f.serve().await;
    assert_eq!(
        get_as(&brain, &old, "dev-laptop", "/pull").await.status,
        200
    );
    let new = f.store.rotate("laptop", None).await.unwrap();
    assert_eq!(
        get_as(&brain, &old, "dev-laptop", "/pull").await.status,
        401
    );
    // A reinstalled device comes back with a new id: the rotation cleared the binding.
    assert_eq!(
        get_as(&brain, &new, "dev-laptop-2", "/pull").await.status,
        200
    );
    assert_eq!(
        f.store.device("laptop").await.device_id.as_deref(),
        Some("dev-laptop-2")
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let newer = f.store.rotate("laptop", Some(now + 3600)).await.unwrap();
    assert_eq!(
        get_as(&brain, &new, "dev-laptop-2", "/pull").await.status,
        200,
        "within its grace"
    );
    assert_eq!(
        get_as(&brain, &newer, "dev-laptop-2", "/pull").await.status,
        200
    );
    let _newest = f.store.rotate("laptop", Some(now - 1)).await.unwrap();
    assert_eq!(
        get_as(&brain, &newer, "dev-laptop-2", "/pull").await.status,
        401,
        "a grace in the past is over"
    );
}

async fn the_shared_secret_acts_for_any_device_and_the_previous_one_works_during_a_rotation(
    f: Fixture,
) {
    f.store.enrol("laptop").await;
    let config = ServerConfig {
        previous_secret: Some("the-old-secret".into()),
        ..config()
    };
    let brain = Brain::start(f.store.clone(), config).await;
    brain.ingest_ok(&many("dev-a", 1, 1)).await;
    brain.ingest_ok(&many("dev-b", 1, 1)).await;
    let body = serde_json::to_vec(&json!({"batch": many("dev-c", 1, 1)})).unwrap();
    let r = brain
        .send("POST", "/ingest", Some("the-old-secret"), body.clone())
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = brain
        .send("POST", "/ingest", Some("another-secret"), body)
        .await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(brain.pull_all().await.len(), 3);
}

async fn with_no_shared_secret_only_device_tokens_are_accepted(f: Fixture) {
    let token = f.store.enrol("laptop").await;
    let config = ServerConfig {
        secret: None,
        ..config()
    };
    let brain = Brain::start(f.store.clone(), config).await;
    let r = brain.get("/pull").await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert!(
        r.text.contains("--no-shared-secret"),
        "says why: {}",
        r.text
    );
    let r = brain.send("GET", "/pull", None, Vec::new()).await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(
        get_as(&brain, &token, "dev-laptop", "/pull").await.status,
        200
    );
}

async fn failed_authentications_are_counted_and_throttled_per_client_address(f: Fixture) {
    let token = f.store.enrol("laptop").await;
    let config = ServerConfig {
        trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
        metrics_token: Some(METRICS_TOKEN.into()),
        ..config()
    };
    let brain = Brain::start(f.store.clone(), config).await;
    let from = |addr: &'static str| [("x-forwarded-for", addr), ("x-lib-sync-secret", "wrong")];
    for _ in 0..MAX_FAILURES {
        let r = brain
            .send_with("GET", "/pull", &from("198.51.100.7"), Vec::new())
            .await;
        assert_eq!(r.status, 401, "{}", r.text);
    }
    let r = brain
        .send_with("GET", "/pull", &from("198.51.100.7"), Vec::new())
        .await;
    assert_eq!(r.status, 429, "{}", r.text);
    // Throttled before the credential is looked at: the right one waits too.
    let right = [
        ("x-forwarded-for", "198.51.100.7"),
        ("x-lib-sync-secret", SECRET),
    ];
    assert_eq!(
        brain
            .send_with("GET", "/pull", &right, Vec::new())
            .await
            .status,
        429
    );
    // Another address is not held back, nor a device on it.
    let r = brain
        .send_with("GET", "/pull", &from("198.51.100.8"), Vec::new())
        .await;
    assert_eq!(r.status, 401, "{}", r.text);
    let laptop = bearer(&token);
    let mut device = as_device(&laptop, "dev-laptop").to_vec();
    device.push(("x-forwarded-for", "198.51.100.9"));
    assert_eq!(
        brain
            .send_with("GET", "/pull", &device, Vec::new())
            .await
            .status,
        200
    );
    let metrics = brain
        .send_with(
            "GET",
            "/metrics",
            &[("authorization", &bearer(METRICS_TOKEN))],
            Vec::new(),
        )
        .await;
    assert!(
        metrics.text.contains(&format!(
            "lib_brain_auth_failures_total {}",
            MAX_FAILURES + 1
        )),
        "{}",
        metrics.text
    );
    assert!(
        metrics.text.contains("lib_brain_auth_throttled_total 2"),
        "{}",
        metrics.text
    );
}

async fn a_device_holds_only_a_few_long_polls_and_one_more_is_503_at_once(f: Fixture) {
    let token = f.store.enrol("laptop").await;
    let other = f.store.enrol("desktop").await;
    let config = ServerConfig {
        max_polls_per_device: 2,
        ..config()
    };
    let brain = std::sync::Arc::new(Brain::start(f.store.clone(), config).await);
    assert_eq!(
        get_as(&brain, &token, "dev-laptop", "/pull").await.status,
        200
    );
    let mut polls = Vec::new();
    for _ in 0..2 {
        let (brain, token) = (brain.clone(), token.clone());
        polls.push(tokio::spawn(async move {
            long_poll(&brain, &token, "dev-laptop").await
        }));
    }
    // Both long-polls are waiting once a third is refused; until then, try again.
    let deadline = Instant::now() + PATIENCE;
    let refused = loop {
        let r = get_as(&brain, &token, "dev-laptop", "/pull?after_id=0&wait_ms=1").await;
        if r.status == 503 {
            break r;
        }
        assert!(Instant::now() < deadline, "no refusal: {}", r.text);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(refused.text.contains("long-polls"), "{}", refused.text);
    assert_eq!(
        get_as(&brain, &token, "dev-laptop", "/pull?after_id=0")
            .await
            .status,
        200,
        "a pull that does not wait is not counted"
    );
    assert_eq!(
        get_as(&brain, &other, "dev-desktop", "/pull?after_id=0&wait_ms=1")
            .await
            .status,
        200,
        "another device has its own"
    );
    // An event ends both waits; their slots are free again.
    brain.ingest_ok(&many("dev-x", 1, 1)).await;
    for poll in polls {
        assert_eq!(poll.await.unwrap().status, 200);
    }
    assert_eq!(
        get_as(&brain, &token, "dev-laptop", "/pull?after_id=1&wait_ms=1")
            .await
            .status,
        200
    );
}

async fn a_devices_last_request_and_cursor_are_recorded(f: Fixture) {
    let token = f.store.enrol("laptop").await;
    let config = ServerConfig {
        seen_every: Duration::from_millis(100),
        ..config()
    };
    let brain = Brain::start(f.store.clone(), config).await;
    brain.ingest_ok(&many("dev-x", 3, 1)).await;
    assert_eq!(f.store.device("laptop").await.last_seen_at, None);
    let digest = "d".repeat(64);
    let bearer = bearer(&token);
    let mut headers = as_device(&bearer, "dev-laptop").to_vec();
    headers.push(("x-lib-digest", &digest));
    headers.push(("x-lib-pending", "0"));
    assert_eq!(
        brain
            .send_with("GET", "/pull?after_id=3", &headers, Vec::new())
            .await
            .status,
        200
    );
    let deadline = Instant::now() + PATIENCE;
    let device = loop {
        let d = f.store.device("laptop").await;
        if d.last_cursor.is_some() {
            break d;
        }
        assert!(Instant::now() < deadline, "never recorded: {d:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(device.last_cursor, Some(3));
    assert_eq!(device.digest.as_deref(), Some(digest.as_str()));
    assert_eq!(device.pending, Some(0));
    assert!(device.last_seen_at.is_some());
}

async fn the_store_refuses_a_second_enrolment_under_one_name_and_rotating_a_revoked_device(
    f: Fixture,
) {
    f.store.enrol("laptop").await;
    let err = f
        .store
        .try_enrol("laptop", &"0".repeat(64))
        .await
        .unwrap_err();
    assert!(matches!(err, BrainError::Conflict(_)), "{err}");
    assert!(f.store.revoke("laptop").await);
    let err = f.store.rotate("laptop", None).await.unwrap_err();
    assert!(
        matches!(err, BrainError::Invalid(ref m) if m.contains("revoked")),
        "{err}"
    );
    assert_eq!(f.store.bind("laptop", "dev-a").await, Binding::Gone);
    let list = f.store.devices().await;
    assert_eq!(list.len(), 1);
}

// --- `agent brain device` through the binary ---------------------------------------------------

fn agent(dir: &std::path::Path, args: &[&str]) -> Output {
    let config = dir.join("agent.toml");
    if !config.exists() {
        std::fs::write(&config, "").unwrap();
    }
    let mut c = Command::new(env!("CARGO_BIN_EXE_agent"));
    c.arg("--config").arg(&config).args(args);
    for var in [
        "LIB_SYNC_SECRET",
        "LIB_BRAIN_DATABASE_URL",
        "LIB_SQLITE_PATH",
        "LIB_LOG",
        "RUST_LOG",
    ] {
        c.env_remove(var);
    }
    c.stdin(Stdio::null()).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn device_add_prints_a_token_once_and_stores_only_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("brain.db");
    let db_arg = db.to_str().unwrap();
    let out = agent(
        dir.path(),
        &["--json", "brain", "device", "add", "laptop", "--db", db_arg],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["name"], "laptop");
    let token = answer["token"].as_str().unwrap().to_owned();
    assert!(token.len() >= 64, "at least 32 random bytes: {token}");
    let bytes = std::fs::read(&db).unwrap();
    let wal = std::fs::read(dir.path().join("brain.db-wal")).unwrap_or_default();
    let needle = token.as_bytes();
    let contains = |hay: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    assert!(
        !contains(&bytes) && !contains(&wal),
        "the token itself is not stored"
    );

    let again = agent(
        dir.path(),
        &["brain", "device", "add", "laptop", "--db", db_arg],
    );
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("enrolled already"),
        "{}",
        stderr(&again)
    );

    let text = agent(
        dir.path(),
        &["brain", "device", "add", "desktop", "--db", db_arg],
    );
    assert!(text.status.success(), "{}", stderr(&text));
    let printed = stdout(&text);
    assert_eq!(
        printed.lines().count(),
        1,
        "stdout holds the token alone: {printed}"
    );
    assert!(
        stderr(&text).contains("token_file"),
        "says what to do with it"
    );

    let bad = agent(
        dir.path(),
        &["brain", "device", "add", "my laptop", "--db", db_arg],
    );
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("device name"), "{}", stderr(&bad));
}

#[test]
fn device_list_revoke_and_rotate_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("brain.db");
    let db_arg = db.to_str().unwrap();
    let missing = agent(dir.path(), &["brain", "device", "list", "--db", db_arg]);
    assert!(
        !missing.status.success(),
        "no database: {}",
        stdout(&missing)
    );
    for name in ["laptop", "desktop"] {
        assert!(agent(
            dir.path(),
            &["brain", "device", "add", name, "--db", db_arg]
        )
        .status
        .success());
    }
    let out = agent(
        dir.path(),
        &["--json", "brain", "device", "list", "--db", db_arg],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<_> = list["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("desktop"), json!("laptop")]);
    assert_eq!(list["devices"][1]["revoked"], false);
    assert_eq!(list["devices"][1]["last_seen_at"], Value::Null);
    assert!(
        !stdout(&out).contains("sha256"),
        "no token hashes in the list"
    );

    let out = agent(
        dir.path(),
        &["brain", "device", "revoke", "laptop", "--db", db_arg],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("401"), "{}", stdout(&out));
    let out = agent(
        dir.path(),
        &["brain", "device", "revoke", "nobody", "--db", db_arg],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no device named"), "{}", stderr(&out));

    let out = agent(
        dir.path(),
        &[
            "--json", "brain", "device", "rotate", "desktop", "--grace", "1h", "--db", db_arg,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let rotated: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(rotated["token"].as_str().unwrap().len() >= 64);
    let out = agent(
        dir.path(),
        &["brain", "device", "rotate", "laptop", "--db", db_arg],
    );
    assert!(!out.status.success(), "a revoked device is not rotated");
    let out = agent(dir.path(), &["brain", "device", "list", "--db", db_arg]);
    let text = stdout(&out);
    assert!(text.contains("revoked"), "{text}");
    assert!(
        text.contains("previous token works until") || text.contains("not bound yet"),
        "{text}"
    );
}

#[test]
fn serve_needs_a_secret_unless_it_accepts_device_tokens_only() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("brain.db");
    let out = agent(
        dir.path(),
        &[
            "brain",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--db",
            db.to_str().unwrap(),
            "--insecure-no-auth",
            "--no-shared-secret",
        ],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("pick one"), "{}", stderr(&out));
    let out = agent(
        dir.path(),
        &[
            "brain",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--db",
            db.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--no-shared-secret"),
        "names the way out: {}",
        stderr(&out)
    );
    let out = agent(
        dir.path(),
        &[
            "brain",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--db",
            db.to_str().unwrap(),
            "--no-shared-secret",
            "--metrics-listen",
            "0.0.0.0:0",
        ],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("loopback"), "{}", stderr(&out));
}

//! Safe webhooks (DESIGN.md "Trust", webhooks), as a specification, on both stores: what a device
//! may register, which addresses the brain delivers to (resolved at delivery time through an
//! injectable resolver, so that no test sends traffic anywhere but loopback), one pending
//! notification per device, and the back-off of a failing URL.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::support;
use crate::support::brain::*;
use crate::support::wait::PATIENCE;
use lib_agent::brain::server::{self, ServerConfig};
use lib_agent::brain::store::{BrainStore, DeliveryFailure, Webhook};
use lib_agent::brain::webhooks::{self, Resolve, Resolving, WebhookPolicy};

suite!(
    a_registration_over_the_limits_is_400_and_stores_nothing,
    a_device_token_must_give_a_secret_and_the_shared_secret_may_not,
    a_webhook_on_a_non_public_address_is_refused_without_a_connection,
    with_allow_private_a_delivery_reaches_the_checked_loopback_address,
    a_registration_without_a_secret_is_delivered_unsigned,
    with_the_legacy_header_a_shared_secret_registration_gets_x_webhook_secret_and_a_device_tokens_never,
    notifications_to_a_busy_device_are_coalesced_into_one_pending,
    a_failing_url_backs_off_and_a_success_clears_it,
    registering_the_same_url_again_keeps_its_back_off_and_a_new_url_clears_it,
    a_registration_the_brain_lost_comes_back_at_the_next_periodic_sync,
);

/// Maps made-up names to the addresses a test needs, and counts its lookups.
#[derive(Default)]
struct TestResolver {
    names: HashMap<String, Vec<IpAddr>>,
    lookups: AtomicUsize,
}

impl Resolve for TestResolver {
    fn resolve(&self, host: &str, _port: u16) -> Resolving {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let found = self.names.get(host).cloned();
        let host = host.to_owned();
        Box::pin(async move {
            found.ok_or_else(|| std::io::Error::other(format!("{host}: no such test name")))
        })
    }
}

fn policy(allow_private: bool, resolver: Arc<TestResolver>) -> WebhookPolicy {
    WebhookPolicy {
        allow_private,
        resolver,
        legacy_secret_header: false,
    }
}

/// A brain with a webhook policy, and its `/metrics` on a loopback listener of its own.
struct Hooked {
    http: Http,
    metrics: Http,
    store: AnyStore,
    _stop: oneshot::Sender<()>,
}

impl Hooked {
    async fn start(f: &Fixture, webhooks: WebhookPolicy) -> Hooked {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, metrics_addr) = (
            listener.local_addr().unwrap(),
            metrics.local_addr().unwrap(),
        );
        let config = ServerConfig {
            webhooks,
            ..config()
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        match f.store.clone() {
            AnyStore::Sqlite(s) => {
                tokio::spawn(server::serve_with_metrics(
                    listener,
                    Some(metrics),
                    Arc::new(s),
                    config,
                    shutdown,
                ));
            }
            AnyStore::Postgres(s) => {
                tokio::spawn(server::serve_with_metrics(
                    listener,
                    Some(metrics),
                    Arc::new(s),
                    config,
                    shutdown,
                ));
            }
        }
        Hooked {
            http: Http::new(addr),
            metrics: Http::new(metrics_addr),
            store: f.store.clone(),
            _stop: stop,
        }
    }

    async fn register(&self, device: &str, url: &str) {
        let r = self
            .http
            .post(
                "/webhook",
                &json!({"device_id": device, "webhook_url": url, "secret": HOOK_SECRET}),
            )
            .await;
        assert_eq!(r.status, 200, "{url}: {}", r.text);
    }

    /// A counter of `/metrics`.
    async fn metric(&self, name: &str) -> u64 {
        let text = self
            .metrics
            .send("GET", "/metrics", None, Vec::new())
            .await
            .text;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    }

    /// Waits until a counter reaches `at_least`. Deliveries run in the background and no event
    /// says when one ended, so this polls, bounded in time.
    async fn await_metric(&self, name: &str, at_least: u64) {
        let started = Instant::now();
        loop {
            let value = self.metric(name).await;
            if value >= at_least {
                assert_eq!(value, at_least, "{name} went past {at_least}");
                return;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "{name} stayed at {value}, below {at_least}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn webhooks(&self) -> Vec<Webhook> {
        self.store.active_webhooks().await
    }
}

const HOOK_SECRET: &str = "hook-secret-0123456789";

/// One request a [`HookListener`] received: its headers (lower-case names) and body, and, when
/// the listener holds requests, the sender that lets it answer.
struct Received {
    headers: HashMap<String, String>,
    body: Value,
    raw: Vec<u8>,
    release: Option<oneshot::Sender<()>>,
}

/// A webhook listener on 127.0.0.1 that counts the connections it accepts, answers each request
/// with `status` (after the test releases it, when `hold`), one request per connection.
struct HookListener {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    status: Arc<AtomicU16>,
    most_in_flight: Arc<AtomicUsize>,
    requests: mpsc::UnboundedReceiver<Received>,
}

impl HookListener {
    async fn start(hold: bool) -> HookListener {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let status = Arc::new(AtomicU16::new(200));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let most_in_flight = Arc::new(AtomicUsize::new(0));
        let (tx, requests) = mpsc::unbounded_channel();
        let (c, s, m) = (connections.clone(), status.clone(), most_in_flight.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let (tx, s, m, in_flight) = (tx.clone(), s.clone(), m.clone(), in_flight.clone());
                tokio::spawn(async move {
                    let Some((headers, body)) = read_request(&mut socket).await else {
                        return;
                    };
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    m.fetch_max(now, Ordering::SeqCst);
                    let (release, released) = oneshot::channel();
                    let _ = tx.send(Received {
                        headers,
                        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                        raw: body,
                        release: hold.then_some(release),
                    });
                    if hold {
                        let _ = released.await;
                    }
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    let status = s.load(Ordering::SeqCst);
                    let answer = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    let _ = socket.write_all(answer.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        HookListener {
            addr,
            connections,
            status,
            most_in_flight,
            requests,
        }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    async fn next(&mut self) -> Received {
        self.requests.recv().await.expect("a notification")
    }
}

/// Reads one HTTP/1.1 request with a content-length body.
async fn read_request(
    socket: &mut tokio::net::TcpStream,
) -> Option<(HashMap<String, String>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let headers: HashMap<String, String> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[end..].to_vec();
    while body.len() < length {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some((headers, body))
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn record_delivery(store: &AnyStore, id: i64, failure: Option<DeliveryFailure>) {
    match store {
        AnyStore::Sqlite(s) => s.record_delivery(id, failure).await.unwrap(),
        AnyStore::Postgres(s) => s.record_delivery(id, failure).await.unwrap(),
    }
}

async fn a_registration_over_the_limits_is_400_and_stores_nothing(f: Fixture) {
    let brain = Hooked::start(&f, WebhookPolicy::default()).await;
    let long_url = format!("https://hooks.example/{}", "p".repeat(2048));
    for (url, secret, field) in [
        (long_url.as_str(), HOOK_SECRET.to_owned(), "webhook_url"),
        (
            "gopher://hooks.example/",
            HOOK_SECRET.to_owned(),
            "webhook_url",
        ),
        ("https://hooks.example/h", "x".repeat(15), "secret"),
        ("https://hooks.example/h", "x".repeat(257), "secret"),
    ] {
        let r = brain
            .http
            .post(
                "/webhook",
                &json!({"device_id": "dev-a", "webhook_url": url, "secret": secret}),
            )
            .await;
        assert_eq!(r.status, 400, "{url:.40} {}: {}", secret.len(), r.text);
        let error = r.body["error"].as_str().unwrap();
        assert!(error.starts_with(field), "{error}");
        assert!(
            error.len() < 300,
            "the error does not echo a long URL: {error:.80}"
        );
    }
    assert!(brain.webhooks().await.is_empty());
    // At the limits, both ends are accepted.
    let url = format!("https://hooks.example/{}", "p".repeat(2048 - 22));
    assert_eq!(url.len(), 2048);
    for secret in ["x".repeat(16), "y".repeat(256)] {
        let r = brain
            .http
            .post(
                "/webhook",
                &json!({"device_id": "dev-a", "webhook_url": url, "secret": secret}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    assert_eq!(brain.webhooks().await[0].secret, "y".repeat(256));
}

async fn a_device_token_must_give_a_secret_and_the_shared_secret_may_not(f: Fixture) {
    let brain = Hooked::start(&f, WebhookPolicy::default()).await;
    let token = "device-token-for-the-webhook-test-0123456789";
    let digest = hex::encode(Sha256::digest(token.as_bytes()));
    match &f.store {
        AnyStore::Sqlite(s) => s.add_device("laptop", &digest).await.map(|_| ()),
        AnyStore::Postgres(s) => s.add_device("laptop", &digest).await.map(|_| ()),
    }
    .unwrap();
    let client = reqwest::Client::new();
    let register = |body: Value| {
        client
            .post(brain.http.url("/webhook"))
            .bearer_auth(token)
            .header("x-lib-device-id", "dev-laptop")
            .json(&body)
            .send()
    };
    let r = register(json!({"device_id": "dev-laptop", "webhook_url": "https://laptop.example/h"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(text.contains("secret"), "{text}");
    assert!(brain.webhooks().await.is_empty());
    let r = register(json!({"device_id": "dev-laptop", "webhook_url": "https://laptop.example/h", "secret": HOOK_SECRET}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A LIB v1.1 client, with the shared secret, may leave the secret out.
    let r = brain
        .http
        .post(
            "/webhook",
            &json!({"device_id": "dev-v11", "webhook_url": "https://v11.example/h"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let hooks = brain.webhooks().await;
    let v11 = hooks.iter().find(|h| h.device_id == "dev-v11").unwrap();
    assert_eq!(v11.secret, "");
}

async fn a_webhook_on_a_non_public_address_is_refused_without_a_connection(f: Fixture) {
    let listener = HookListener::start(false).await;
    let port = listener.port();
    let refused = [
        "10.0.0.1",
        "192.168.1.1",
        "172.16.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "fd00::1",
        "::1",
        "::ffff:10.0.0.1",
        "::ffff:127.0.0.1",
        "127.0.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "192.0.2.10",
    ];
    let mut resolver = TestResolver::default();
    for (i, ip) in refused.iter().enumerate() {
        // Each name also answers the loopback listener: a delivery that slipped past the check
        // would show up there.
        resolver.names.insert(
            format!("n{i}.hooks.test"),
            vec![ip.parse().unwrap(), "127.0.0.1".parse().unwrap()],
        );
    }
    let resolver = Arc::new(resolver);
    let brain = Hooked::start(&f, policy(false, resolver.clone())).await;
    for i in 0..refused.len() {
        brain
            .register(
                &format!("dev-{i}"),
                &format!("http://n{i}.hooks.test:{port}/hook"),
            )
            .await;
    }
    // IP literals are checked as they are (the client never resolves them).
    brain
        .register("dev-lit4", &format!("http://127.0.0.1:{port}/hook"))
        .await;
    brain
        .register(
            "dev-lit6",
            &format!("http://[::ffff:127.0.0.1]:{port}/hook"),
        )
        .await;
    let hooks = refused.len() as u64 + 2;

    brain.http.ingest_ok(&many("dev-a", 1, 1)).await;
    brain
        .await_metric("lib_brain_webhook_refused_total", hooks)
        .await;
    assert_eq!(
        listener.connections.load(Ordering::SeqCst),
        0,
        "no connection to a refused address"
    );
    assert_eq!(brain.metric("lib_brain_webhook_deliveries_total").await, 0);
    assert_eq!(
        resolver.lookups.load(Ordering::SeqCst),
        refused.len(),
        "every name is resolved once, literals never"
    );
    // A refusal counts as a failure of the URL: it backs off like one.
    let later = now();
    for hook in brain.webhooks().await {
        assert_eq!(hook.failures, 1, "{hook:?}");
        assert!(hook.retry_after.is_some_and(|t| t > later - 10), "{hook:?}");
    }
}

async fn with_allow_private_a_delivery_reaches_the_checked_loopback_address(f: Fixture) {
    let mut listener = HookListener::start(false).await;
    let mut resolver = TestResolver::default();
    // A name no real resolver knows: only the brain's resolver can have answered it.
    resolver
        .names
        .insert("nas.hooks.test".into(), vec!["127.0.0.1".parse().unwrap()]);
    let resolver = Arc::new(resolver);
    let brain = Hooked::start(&f, policy(true, resolver.clone())).await;
    brain
        .register(
            "dev-nas",
            &format!("http://nas.hooks.test:{}/hook", listener.port()),
        )
        .await;
    brain.http.ingest_ok(&many("dev-a", 2, 1)).await;
    let received = listener.next().await;
    assert_eq!(received.body["event"], "new_events");
    assert_eq!(received.body["after_id"], 0);
    let signature = &received.headers["x-lib-signature"];
    webhooks::verify(HOOK_SECRET, signature, &received.raw, SystemTime::now()).expect("signed");
    brain
        .await_metric("lib_brain_webhook_deliveries_total", 1)
        .await;
    assert_eq!(listener.connections.load(Ordering::SeqCst), 1);
    assert_eq!(resolver.lookups.load(Ordering::SeqCst), 1);
    // Each delivery resolves again.
    brain.http.ingest_ok(&many("dev-a", 1, 3)).await;
    assert_eq!(listener.next().await.body["after_id"], 2);
    brain
        .await_metric("lib_brain_webhook_deliveries_total", 2)
        .await;
    assert_eq!(resolver.lookups.load(Ordering::SeqCst), 2);
}

async fn a_registration_without_a_secret_is_delivered_unsigned(f: Fixture) {
    let mut listener = HookListener::start(false).await;
    let brain = Hooked::start(&f, policy(true, Arc::default())).await;
    let url = format!("http://127.0.0.1:{}/hook", listener.port());
    let r = brain
        .http
        .post(
            "/webhook",
            &json!({"device_id": "dev-v11", "webhook_url": url}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    brain.http.ingest_ok(&many("dev-a", 1, 1)).await;
    let received = listener.next().await;
    assert_eq!(received.body["event"], "new_events");
    assert!(
        !received.headers.contains_key("x-lib-signature"),
        "{:?}",
        received.headers
    );
}

async fn with_the_legacy_header_a_shared_secret_registration_gets_x_webhook_secret_and_a_device_tokens_never(
    f: Fixture,
) {
    let mut v11 = HookListener::start(false).await;
    let mut laptop = HookListener::start(false).await;
    let brain = Hooked::start(
        &f,
        WebhookPolicy {
            legacy_secret_header: true,
            ..policy(true, Arc::default())
        },
    )
    .await;
    // A LIB v1.1 listener, registered through the shared secret.
    let v11_url = format!("http://127.0.0.1:{}/webhook", v11.port());
    brain.register("dev-v11", &v11_url).await;
    // An enrolled device, registered with its own token.
    let token = "device-token-for-the-legacy-header-test-0123";
    let digest = hex::encode(Sha256::digest(token.as_bytes()));
    match &f.store {
        AnyStore::Sqlite(s) => s.add_device("laptop", &digest).await.map(|_| ()),
        AnyStore::Postgres(s) => s.add_device("laptop", &digest).await.map(|_| ()),
    }
    .unwrap();
    let laptop_url = format!("http://127.0.0.1:{}/webhook", laptop.port());
    let r = reqwest::Client::new()
        .post(brain.http.url("/webhook"))
        .bearer_auth(token)
        .header("x-lib-device-id", "dev-laptop")
        .json(&json!({"device_id": "dev-laptop", "webhook_url": laptop_url, "secret": HOOK_SECRET}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    brain.http.ingest_ok(&many("dev-a", 1, 1)).await;
    let to_v11 = v11.next().await;
    assert_eq!(
        to_v11.headers["x-webhook-secret"], HOOK_SECRET,
        "what a LIB v1.1 listener checks"
    );
    assert!(
        to_v11.headers.contains_key("x-lib-signature"),
        "and signed as always"
    );
    let to_laptop = laptop.next().await;
    assert!(
        !to_laptop.headers.contains_key("x-webhook-secret"),
        "a device token's secret is an HMAC key and never travels: {:?}",
        to_laptop.headers
    );
    webhooks::verify(
        HOOK_SECRET,
        &to_laptop.headers["x-lib-signature"],
        &to_laptop.raw,
        SystemTime::now(),
    )
    .expect("signed");
}

async fn notifications_to_a_busy_device_are_coalesced_into_one_pending(f: Fixture) {
    let mut listener = HookListener::start(true).await;
    let brain = Hooked::start(&f, policy(true, Arc::default())).await;
    brain
        .register(
            "dev-b",
            &format!("http://127.0.0.1:{}/hook", listener.port()),
        )
        .await;
    brain.http.ingest_ok(&many("dev-a", 1, 1)).await;
    // The first notification is held by the listener: in flight.
    let first = listener.next().await;
    assert_eq!(first.body["after_id"], 0);
    const INGESTS: u64 = 10;
    for i in 2..=INGESTS {
        brain.http.ingest_ok(&many("dev-a", 1, i)).await;
    }
    // The first of them waits as the device's one pending notification; the others fold into it.
    brain
        .await_metric("lib_brain_webhook_coalesced_total", INGESTS - 2)
        .await;
    assert_eq!(listener.connections.load(Ordering::SeqCst), 1);
    first.release.unwrap().send(()).unwrap();

    let second = listener.next().await;
    // The smallest cursor not yet delivered: pulling from it returns every later event.
    assert_eq!(second.body["after_id"], 1);
    let after = brain.http.pull_all_after(1).await;
    assert_eq!(after.len() as u64, INGESTS - 1);
    second.release.unwrap().send(()).unwrap();
    brain
        .await_metric("lib_brain_webhook_deliveries_total", 2)
        .await;
    // Every notification is accounted for: 2 delivered, the rest coalesced; nothing else came.
    assert_eq!(listener.connections.load(Ordering::SeqCst), 2);
    assert_eq!(listener.most_in_flight.load(Ordering::SeqCst), 1);
}

async fn a_failing_url_backs_off_and_a_success_clears_it(f: Fixture) {
    let mut listener = HookListener::start(false).await;
    listener.status.store(500, Ordering::SeqCst);
    let brain = Hooked::start(&f, policy(true, Arc::default())).await;
    brain
        .register(
            "dev-b",
            &format!("http://127.0.0.1:{}/hook", listener.port()),
        )
        .await;
    let before = now();
    brain.http.ingest_ok(&many("dev-a", 1, 1)).await;
    listener.next().await;
    brain
        .await_metric("lib_brain_webhook_failures_total", 1)
        .await;
    let hook = brain.webhooks().await.remove(0);
    assert_eq!(hook.failures, 1);
    let retry_after = hook.retry_after.expect("a back-off");
    // 5 s after the failure, which came after `before`.
    assert!(retry_after >= before + 5, "{retry_after} vs {before}");

    // In back-off: the next notification is skipped, with no connection.
    brain.http.ingest_ok(&many("dev-a", 1, 2)).await;
    brain
        .await_metric("lib_brain_webhook_backed_off_total", 1)
        .await;
    assert_eq!(listener.connections.load(Ordering::SeqCst), 1);

    // Once retry_after has passed (set back here rather than waited for) it is called again;
    // a success clears the back-off.
    record_delivery(
        &brain.store,
        hook.id,
        Some(DeliveryFailure {
            failures: 1,
            error: "answered 500".into(),
            retry_after: now() - 1,
        }),
    )
    .await;
    listener.status.store(200, Ordering::SeqCst);
    brain.http.ingest_ok(&many("dev-a", 1, 3)).await;
    assert_eq!(listener.next().await.body["after_id"], 2);
    brain
        .await_metric("lib_brain_webhook_deliveries_total", 1)
        .await;
    let hook = brain.webhooks().await.remove(0);
    assert_eq!((hook.failures, hook.retry_after), (0, None));
}

async fn registering_the_same_url_again_keeps_its_back_off_and_a_new_url_clears_it(f: Fixture) {
    let brain = Hooked::start(&f, WebhookPolicy::default()).await;
    brain.register("dev-b", "https://b.example/hook").await;
    let id = brain.webhooks().await[0].id;
    let failure = DeliveryFailure {
        failures: 3,
        error: "answered 502".into(),
        retry_after: now() + 600,
    };
    record_delivery(&brain.store, id, Some(failure.clone())).await;
    // The agent re-registers at every periodic sync: that does not end a back-off.
    brain.register("dev-b", "https://b.example/hook").await;
    let hook = brain.webhooks().await.remove(0);
    assert_eq!(
        (hook.failures, hook.retry_after),
        (3, Some(failure.retry_after))
    );
    brain.register("dev-b", "https://b2.example/hook").await;
    let hook = brain.webhooks().await.remove(0);
    assert_eq!((hook.failures, hook.retry_after), (0, None));
}

/// Waits (bounded) until the brain's active webhooks satisfy `done`.
async fn await_webhooks(brain: &Hooked, what: &str, done: impl Fn(&[Webhook]) -> bool) {
    let started = Instant::now();
    loop {
        if done(&brain.webhooks().await) {
            return;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn a_registration_the_brain_lost_comes_back_at_the_next_periodic_sync(f: Fixture) {
    use lib_agent::config::{Config, Overrides};
    use lib_agent::daemon::{self, RunOptions};
    use lib_agent::store::Store;

    let brain = Hooked::start(&f, policy(true, Arc::default())).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("notes")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let toml = format!(
        "[store]\npath = {:?}\n[[library]]\nname = \"notes\"\npath = {:?}\n[sync]\n\
         brain_url = \"http://{}\"\nrealtime = \"webhook\"\nlisten = \"127.0.0.1:{port}\"\n\
         public_url = \"http://127.0.0.1:{port}/webhook\"\ninterval_secs = 1\n",
        dir.path().join("agent.db"),
        dir.path().join("notes"),
        brain.http.addr,
    );
    let lookup = |key: &str| match key {
        "LIB_SYNC_SECRET" => Some(SECRET.to_owned()),
        "LIB_WEBHOOK_SECRET" => Some(HOOK_SECRET.to_owned()),
        _ => None,
    };
    let config = Config::from_toml_str(&toml, None, &lookup, &Overrides::default()).unwrap();
    let (stop, stopped) = crossbeam_channel::bounded::<()>(1);
    let agent = std::thread::spawn(move || {
        let mut store = Store::open(&config.store.path).unwrap();
        daemon::run(&config, &mut store, &stopped, &RunOptions::default()).unwrap();
    });
    let url = format!("http://127.0.0.1:{port}/webhook");
    await_webhooks(&brain, "the agent registers its webhook", |hooks| {
        hooks.iter().any(|h| h.url == url)
    })
    .await;
    let device = brain.webhooks().await[0].device_id.clone();

    // The brain loses it (a restored backup, an operator's mistake).
    match &brain.store {
        AnyStore::Sqlite(s) => s.deactivate_webhook(&device).await,
        AnyStore::Postgres(s) => s.deactivate_webhook(&device).await,
    }
    .unwrap();
    assert!(brain.webhooks().await.is_empty());
    await_webhooks(
        &brain,
        "the next periodic sync registers it again",
        |hooks| hooks.iter().any(|h| h.url == url && h.device_id == device),
    )
    .await;
    drop(stop);
    tokio::task::spawn_blocking(move || agent.join().unwrap())
        .await
        .unwrap();
}

// ---- private files and terminal output (unix modes) -------------------------------------------

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[cfg(unix)]
fn with_suffix(path: &std::path::Path, suffix: &str) -> std::path::PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    p.into()
}

#[cfg(unix)]
#[test]
fn agent_init_creates_its_database_0600_in_a_new_folder_0700() {
    let lab = support::lab::Lab::new();
    let db = lab.path("private/data/agent.db");
    let config = lab.path("agent.toml");
    lab.agent_raw(&[
        "--db".as_ref(),
        db.as_os_str(),
        "--config".as_ref(),
        config.as_os_str(),
        "init".as_ref(),
    ])
    .success();
    assert_eq!(mode(&db), 0o600);
    assert_eq!(mode(&lab.path("private")), 0o700);
    assert_eq!(mode(&lab.path("private/data")), 0o700);
}

#[cfg(unix)]
#[test]
fn the_agents_wal_shm_and_run_lock_are_0600_too() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("new/agent.db");
    let store = lib_agent::store::Store::open(&db).unwrap();
    // While a connection is open, SQLite keeps the -wal and -shm beside the database.
    for suffix in ["", "-wal", "-shm"] {
        assert_eq!(mode(&with_suffix(&db, suffix)), 0o600, "agent.db{suffix}");
    }
    let lock = lib_agent::daemon::RunLock::acquire(&db).unwrap();
    assert_eq!(mode(&lib_agent::daemon::lock_path(&db)), 0o600);
    drop((lock, store));
}

#[cfg(unix)]
#[tokio::test]
async fn the_brains_sqlite_database_and_its_wal_and_shm_are_0600() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("brain/state/brain.db");
    let store = lib_agent::brain::store::SqliteStore::open(&db).unwrap();
    store.active_webhooks().await.unwrap();
    for suffix in ["", "-wal", "-shm"] {
        assert_eq!(mode(&with_suffix(&db, suffix)), 0o600, "brain.db{suffix}");
    }
    assert_eq!(mode(&dir.path().join("brain")), 0o700);
    assert_eq!(mode(&dir.path().join("brain/state")), 0o700);
}

#[cfg(unix)]
#[test]
fn agent_status_warns_about_a_database_others_can_read_and_says_the_chmod() {
    let lab = support::lab::Lab::new();
    lab.agent(&["init"]).success();
    let status = lab.json(&["status"]);
    assert_eq!(status["warnings"], json!([]), "a new database is private");
    support::lab::set_mode(&lab.db, 0o644);
    let fix = format!("chmod 600 {}", lab.db.display());
    let text = lab.agent(&["status"]).success().stdout;
    assert!(
        text.contains("readable by others") && text.contains(&fix),
        "{text}"
    );
    let status = lab.json(&["status"]);
    let warnings = status["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].as_str().unwrap().contains(&fix), "{warnings:?}");
}

#[test]
fn a_snippet_holding_an_osc_52_sequence_prints_escaped() {
    let lab = support::lab::Lab::new();
    lab.write(
        "notes/evil.txt",
        "pineapple \u{1b}]52;c;aGVsbG8=\u{7} pineapple\n",
    );
    lab.scan(&["notes"]);
    let out = lab.agent(&["search", "pineapple"]).success().stdout;
    assert!(out.contains("evil.txt"), "{out}");
    assert!(!out.contains('\u{1b}') && !out.contains('\u{7}'), "{out:?}");
    assert!(out.contains("\\u{1b}]52;c;aGVsbG8=\\u{7}"), "{out}");
}

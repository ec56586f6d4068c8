//! A stand-in of LIB v1.1's brain, its Supabase edge function `lib-brain-sync`, written from the
//! reference's description of it (`../shared/reference/`): the routes under
//! `/functions/v1/lib-brain-sync`, the shared secret in `x-lib-sync-secret`, `/pull` answering
//! `{"ok": true, "events": [...]}` and nothing else (no cursor, no `has_more`, no long-poll, no
//! `/snapshot`, never 410), pages capped at 500, and after an ingest that inserted events a
//! `POST` of `{"event": "new_events", "after_id", "timestamp"}` to every registered webhook with
//! the secret it was registered with in `x-webhook-secret`.
//!
//! It keeps the log only: the old function's entity merge is not what a device reads.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

/// Where the edge function is mounted, as in LIB v1.1's `LIB_SUPABASE_FN_URL`.
pub const FUNCTION_PATH: &str = "/functions/v1/lib-brain-sync";

#[derive(Default)]
struct Log {
    events: Vec<Value>,
    webhooks: Vec<(String, Option<String>)>,
    /// Every `/pull` request, to tell polling from a busy loop.
    pulls: usize,
}

/// The old edge function on a loopback port, served on a thread of its own until dropped.
pub struct OldBrain {
    pub addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Clone)]
struct Ctx {
    secret: String,
    log: Arc<Mutex<Log>>,
}

impl OldBrain {
    pub fn start(secret: &str) -> OldBrain {
        let log = Arc::new(Mutex::new(Log::default()));
        let ctx = Ctx {
            secret: secret.to_owned(),
            log: Arc::clone(&log),
        };
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
                let app = Router::new()
                    .route(&format!("{FUNCTION_PATH}/ingest"), post(ingest))
                    .route(&format!("{FUNCTION_PATH}/pull"), get(pull))
                    .route(&format!("{FUNCTION_PATH}/webhook"), post(webhook))
                    .route(&format!("{FUNCTION_PATH}/health"), get(health))
                    .fallback(|| async {
                        (StatusCode::NOT_FOUND, Json(json!({"error": "Not found"})))
                    })
                    .with_state(ctx);
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        OldBrain {
            addr,
            log,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// What a LIB v1.1 device holds in `LIB_SUPABASE_FN_URL`.
    pub fn url(&self) -> String {
        format!("http://{}{FUNCTION_PATH}", self.addr)
    }

    pub fn events(&self) -> usize {
        self.log.lock().expect("log").events.len()
    }

    pub fn pulls(&self) -> usize {
        self.log.lock().expect("log").pulls
    }

    pub fn webhooks(&self) -> Vec<(String, Option<String>)> {
        self.log.lock().expect("log").webhooks.clone()
    }
}

impl Drop for OldBrain {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn unauthorized() -> (StatusCode, Json<Value>) {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"ok": false, "error": "Unauthorized"})),
    )
}

fn authorized(ctx: &Ctx, headers: &HeaderMap) -> bool {
    headers
        .get("x-lib-sync-secret")
        .is_some_and(|v| v.as_bytes() == ctx.secret.as_bytes())
}

async fn ingest(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    if !authorized(&ctx, &headers) {
        return unauthorized();
    }
    let Some(batch) = body["batch"].as_array() else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"ok": false, "error": "batch must be an array"})),
        );
    };
    if batch.len() > 500 {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"ok": false, "error": "batch too large (max 500)"})),
        );
    }
    let (inserted, after_id, hooks) = {
        let mut log = ctx.log.lock().expect("log");
        let after_id = log.events.len() as i64;
        let mut inserted = 0;
        for event in batch {
            let known = log
                .events
                .iter()
                .any(|e| e["event_ulid"] == event["event_ulid"]);
            if known {
                continue;
            }
            let id = log.events.len() as i64 + 1;
            let mut row = event.clone();
            row["id"] = json!(id);
            // PostgreSQL's timestamptz as PostgREST renders it.
            row["created_at"] = json!("2026-12-05T10:00:00.123456+00:00");
            log.events.push(row);
            inserted += 1;
        }
        (inserted, after_id, log.webhooks.clone())
    };
    if inserted > 0 {
        // Non-blocking, as the old function's triggerWebhooks.
        std::thread::spawn(move || notify(&hooks, after_id));
    }
    (
        StatusCode::OK,
        Json(
            json!({"ok": true, "result": {"inserted_events": inserted, "upserted_entities": inserted}}),
        ),
    )
}

/// POSTs the notification to every webhook, the secret in `x-webhook-secret`, as LIB v1.1 did.
fn notify(hooks: &[(String, Option<String>)], after_id: i64) {
    for (url, secret) in hooks {
        let Some(rest) = url.strip_prefix("http://") else {
            continue;
        };
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let body = json!({"event": "new_events", "after_id": after_id,
                          "timestamp": "2026-12-05T10:00:00.000Z"})
        .to_string();
        let secret = secret
            .as_ref()
            .map(|s| format!("x-webhook-secret: {s}\r\n"))
            .unwrap_or_default();
        if let Ok(mut stream) = std::net::TcpStream::connect(host) {
            let _ = write!(
                stream,
                "POST /{path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n{secret}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let mut reply = Vec::new();
            let _ = std::io::Read::read_to_end(&mut stream, &mut reply);
        }
    }
}

async fn pull(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> (StatusCode, Json<Value>) {
    if !authorized(&ctx, &headers) {
        return unauthorized();
    }
    let after_id: i64 = query
        .get("after_id")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let limit: usize = query
        .get("limit")
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
        .min(500);
    let mut log = ctx.log.lock().expect("log");
    log.pulls += 1;
    let events: Vec<Value> = log
        .events
        .iter()
        .filter(|e| e["id"].as_i64().is_some_and(|id| id > after_id))
        .take(limit)
        .cloned()
        .collect();
    (StatusCode::OK, Json(json!({"ok": true, "events": events})))
}

async fn webhook(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    if !authorized(&ctx, &headers) {
        return unauthorized();
    }
    let (Some(_device), Some(url)) = (body["device_id"].as_str(), body["webhook_url"].as_str())
    else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"ok": false, "error": "device_id and webhook_url are required"})),
        );
    };
    if !url.starts_with("http://") && !url.starts_with("https://") {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"ok": false, "error": "Invalid webhook URL"})),
        );
    }
    let secret = body["secret"].as_str().filter(|s| !s.is_empty());
    let mut log = ctx.log.lock().expect("log");
    log.webhooks.retain(|(u, _)| u != url);
    log.webhooks
        .push((url.to_owned(), secret.map(str::to_owned)));
    let id = log.webhooks.len();
    (StatusCode::OK, Json(json!({"ok": true, "webhook_id": id})))
}

async fn health() -> Json<Value> {
    Json(json!({"status": "healthy", "version": "1.1.0"}))
}

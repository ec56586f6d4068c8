//! The brain's HTTP routes (DESIGN.md "Wire protocol"), generic over the store.
//!
//! Each handler parses and validates its request completely before the store sees it, so a bad
//! request changes nothing; the store makes each accepted request all-or-nothing.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::watch;
use tracing::Instrument;

use super::metrics::Metrics;
use super::store::{check_batch, BrainStore, CheckedEvent};
use super::webhooks::Notifier;
use super::BrainError;
use crate::model::wire::{
    ErrorBody, HealthResponse, IngestRequest, IngestResponse, OkResponse, PullResponse,
    SnapshotResponse, WebhookRequest, WebhookResponse, MAX_BATCH, SECRET_HEADER,
};
use crate::tls::ExtraRoots;

/// How the server behaves; every limit has a default a careful operator would pick.
#[derive(Clone)]
pub struct ServerConfig {
    /// The shared secret every route but `/health` requires; `None` only with `--insecure-no-auth`.
    pub secret: Option<String>,
    /// Requests with a larger body get 413.
    pub max_body_bytes: usize,
    /// `payload.content` of one event, at most.
    pub max_content_bytes: usize,
    /// The longest `wait_ms` honoured.
    pub max_wait: Duration,
    /// Certificates trusted for https:// webhook URLs besides the web PKI roots.
    pub webhook_roots: ExtraRoots,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            secret: None,
            max_body_bytes: 32 * 1024 * 1024,
            max_content_bytes: 1024 * 1024,
            max_wait: Duration::from_secs(60),
            webhook_roots: ExtraRoots::none(),
        }
    }
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_content_bytes", &self.max_content_bytes)
            .field("max_wait", &self.max_wait)
            .field("webhook_roots", &self.webhook_roots)
            .finish()
    }
}

/// Default page size of `/pull` and `/snapshot` (LIB v1.1's clients ask for 200).
const DEFAULT_LIMIT: usize = 200;

struct AppState<S> {
    store: Arc<S>,
    config: ServerConfig,
    /// sha256 of the secret: comparing digests in constant time leaks neither bytes nor length.
    secret_digest: Option<[u8; 32]>,
    metrics: Arc<Metrics>,
    notifier: Notifier,
    /// Flips to true when the server shuts down: long-polls return at once.
    stopping: watch::Receiver<bool>,
}

impl<S> Clone for AppState<S> {
    fn clone(&self) -> Self {
        AppState {
            store: self.store.clone(),
            config: self.config.clone(),
            secret_digest: self.secret_digest,
            metrics: self.metrics.clone(),
            notifier: self.notifier.clone(),
            stopping: self.stopping.clone(),
        }
    }
}

impl IntoResponse for BrainError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "request failed");
        }
        (
            status,
            Json(ErrorBody {
                ok: false,
                error: self.to_string(),
            }),
        )
            .into_response()
    }
}

/// The router with every route. `stopping` ends pending long-polls when it flips to true.
pub fn router<S: BrainStore>(
    store: Arc<S>,
    config: ServerConfig,
    stopping: watch::Receiver<bool>,
) -> Router {
    let metrics = Arc::new(Metrics::default());
    let secret_digest = config
        .secret
        .as_ref()
        .map(|s| Sha256::digest(s.as_bytes()).into());
    let state = AppState {
        store,
        secret_digest,
        notifier: Notifier::new(metrics.clone(), &config.webhook_roots),
        metrics,
        stopping,
        config: config.clone(),
    };
    let protected = Router::new()
        .route("/ingest", post(ingest::<S>))
        .route("/pull", get(pull::<S>))
        .route("/snapshot", get(snapshot::<S>))
        .route("/webhook", post(register_webhook::<S>))
        .route("/webhook/{device_id}", delete(deactivate_webhook::<S>))
        .route("/metrics", get(metrics_text::<S>))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_secret::<S>,
        ));
    Router::new()
        .route("/health", get(health))
        .merge(protected)
        .fallback(|| async { BrainError::NotFound("no such route".into()) })
        .layer(middleware::from_fn_with_state(state.clone(), observe::<S>))
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .with_state(state)
}

/// Serves until `shutdown` resolves, then stops taking requests, ends long-polls and waits for
/// the requests in flight.
pub async fn serve<S: BrainStore>(
    listener: tokio::net::TcpListener,
    store: Arc<S>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let app = router(store, config, stop_rx);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        })
        .await
}

/// Span and latency per route; the route is the matched pattern, never the raw URL.
async fn observe<S: BrainStore>(
    State(state): State<AppState<S>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().clone();
    let started = Instant::now();
    let span = tracing::debug_span!("request", %method, route = %route);
    let response = next.run(request).instrument(span).await;
    let elapsed = started.elapsed();
    state
        .metrics
        .observe(&route, response.status().as_u16(), elapsed);
    tracing::debug!(%method, route = %route, status = response.status().as_u16(), elapsed_ms = elapsed.as_millis() as u64, "request");
    response
}

async fn require_secret<S: BrainStore>(
    State(state): State<AppState<S>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if let Some(expected) = &state.secret_digest {
        let given = headers
            .get(SECRET_HEADER)
            .map(|v| Sha256::digest(v.as_bytes()));
        let ok = given.is_some_and(|g| bool::from(g.as_slice().ct_eq(expected.as_slice())));
        if !ok {
            let error = if given.is_none() {
                format!("missing {SECRET_HEADER} header")
            } else {
                format!("wrong {SECRET_HEADER}")
            };
            return (
                StatusCode::UNAUTHORIZED,
                Json(ErrorBody { ok: false, error }),
            )
                .into_response();
        }
    }
    next.run(request).await
}

async fn health() -> Json<HealthResponse> {
    Json(HealthResponse {
        status: "healthy".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

async fn metrics_text<S: BrainStore>(State(state): State<AppState<S>>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// The body, or 413 over the cap.
fn body(body: Result<Bytes, BytesRejection>, cap: usize) -> Result<Bytes, BrainError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            BrainError::TooLarge(format!("request body is over the cap of {cap} bytes"))
        } else {
            BrainError::Invalid(format!(
                "cannot read the request body: {}",
                rejection.body_text()
            ))
        }
    })
}

/// Parses JSON, naming the field that is wrong (`batch[3].payload.sha256: ...`).
fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, BrainError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            BrainError::Invalid(format!("malformed JSON: {inner}"))
        } else {
            BrainError::Invalid(format!("{path}: {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| BrainError::Invalid(format!("malformed JSON: {e}")))?;
    // JSON text is UTF-8 (RFC 8259), but serde_json skips the strings of unknown fields without
    // checking them. Checked after the parse, so a bad byte in a known field keeps its named error.
    if let Err(e) = std::str::from_utf8(bytes) {
        return Err(BrainError::Invalid(format!(
            "malformed JSON: invalid UTF-8 at byte {}",
            e.valid_up_to()
        )));
    }
    Ok(value)
}

/// Everything `POST /ingest` does to a body before the store sees it: parse the JSON, cap the
/// batch, validate every event and drop exact repeats. Public so the fuzz target (`fuzz/`) drives
/// this very code.
pub fn parse_ingest(raw: &[u8], max_content_bytes: usize) -> Result<Vec<CheckedEvent>, BrainError> {
    let request: IngestRequest = parse_json(raw)?;
    if request.batch.len() > MAX_BATCH {
        return Err(BrainError::TooLarge(format!(
            "batch has {} events, at most {MAX_BATCH} are allowed per request",
            request.batch.len()
        )));
    }
    check_batch(request.batch, max_content_bytes)
}

async fn ingest<S: BrainStore>(
    State(state): State<AppState<S>>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<IngestResponse>, BrainError> {
    let raw = body(raw, state.config.max_body_bytes)?;
    let batch = parse_ingest(&raw, state.config.max_content_bytes)?;
    let ingested = state.store.ingest(batch).await?;
    Metrics::add(&state.metrics.ingest_requests, 1);
    Metrics::add(
        &state.metrics.events_ingested,
        ingested.result.inserted_events,
    );
    if let Some((after_id, _)) = ingested.new_ids {
        state.notifier.notify_all(state.store.clone(), after_id);
    }
    Ok(Json(IngestResponse {
        ok: true,
        result: ingested.result,
    }))
}

#[derive(Debug, Deserialize)]
struct PullParams {
    #[serde(default)]
    after_id: i64,
    limit: Option<usize>,
    #[serde(default)]
    wait_ms: u64,
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, BrainError> {
    q.map(|Query(v)| v)
        .map_err(|e| BrainError::Invalid(e.body_text()))
}

fn page_size(limit: Option<usize>) -> Result<usize, BrainError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(0) => Err(BrainError::Invalid("limit must be at least 1".into())),
        Some(n) => Ok(n.min(MAX_BATCH)),
    }
}

async fn pull<S: BrainStore>(
    State(state): State<AppState<S>>,
    params: Result<Query<PullParams>, QueryRejection>,
) -> Result<Json<PullResponse>, BrainError> {
    let params = query(params)?;
    if params.after_id < 0 {
        return Err(BrainError::Invalid(format!(
            "after_id must be 0 or more, not {}",
            params.after_id
        )));
    }
    let limit = page_size(params.limit)?;
    let wait = Duration::from_millis(params.wait_ms).min(state.config.max_wait);
    let deadline = tokio::time::Instant::now() + wait;
    // Subscribed before the first read: a commit after that read wakes the wait below.
    let mut newest = state.store.subscribe();
    let mut stopping = state.stopping.clone();
    let page = loop {
        newest.borrow_and_update();
        let page = state.store.pull(params.after_id, limit).await?;
        if !page.events.is_empty() || wait.is_zero() || *stopping.borrow() {
            break page;
        }
        let woke = tokio::select! {
            changed = newest.changed() => changed.is_ok(),
            _ = stopping.changed() => false,
            _ = tokio::time::sleep_until(deadline) => false,
        };
        if !woke {
            break page;
        }
    };
    Metrics::add(&state.metrics.pulls, 1);
    Metrics::add(&state.metrics.events_pulled, page.events.len() as u64);
    Ok(Json(PullResponse {
        ok: true,
        events: page.events,
        next_after_id: page.next_after_id,
        has_more: page.has_more,
    }))
}

#[derive(Debug, Deserialize)]
struct SnapshotParams {
    #[serde(default)]
    after_key: String,
    limit: Option<usize>,
}

async fn snapshot<S: BrainStore>(
    State(state): State<AppState<S>>,
    params: Result<Query<SnapshotParams>, QueryRejection>,
) -> Result<Json<SnapshotResponse>, BrainError> {
    let params = query(params)?;
    let limit = page_size(params.limit)?;
    let page = state.store.snapshot(&params.after_key, limit).await?;
    Ok(Json(SnapshotResponse {
        ok: true,
        entities: page.entities,
        watermark: page.watermark,
        has_more: page.has_more,
    }))
}

fn check_device_id(device_id: &str) -> Result<(), BrainError> {
    if device_id.is_empty() || device_id.len() > 128 || device_id.chars().any(char::is_control) {
        return Err(BrainError::Invalid(format!(
            "device_id {device_id:?} is empty, too long or has control characters"
        )));
    }
    Ok(())
}

async fn register_webhook<S: BrainStore>(
    State(state): State<AppState<S>>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<WebhookResponse>, BrainError> {
    let raw = body(raw, state.config.max_body_bytes)?;
    let request: WebhookRequest = parse_json(&raw)?;
    check_device_id(&request.device_id)?;
    let uri: axum::http::Uri = request.webhook_url.parse().map_err(|e| {
        BrainError::Invalid(format!(
            "webhook_url {:?} is not a URL: {e}",
            request.webhook_url
        ))
    })?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none_or(str::is_empty) {
        return Err(BrainError::Invalid(format!(
            "webhook_url {:?} must be an http:// or https:// URL with a host",
            request.webhook_url
        )));
    }
    if request.secret.is_empty() {
        return Err(BrainError::Invalid(
            "secret is empty: notifications are signed with it".into(),
        ));
    }
    let webhook_id = state
        .store
        .register_webhook(&request.device_id, &request.webhook_url, &request.secret)
        .await?;
    tracing::info!(device_id = %request.device_id, webhook_id, "webhook registered");
    Ok(Json(WebhookResponse {
        ok: true,
        webhook_id,
    }))
}

async fn deactivate_webhook<S: BrainStore>(
    State(state): State<AppState<S>>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Json<OkResponse>, BrainError> {
    let device_id = params.get("device_id").cloned().unwrap_or_default();
    check_device_id(&device_id)?;
    state.store.deactivate_webhook(&device_id).await?;
    Ok(Json(OkResponse { ok: true }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (fuzz target `ingest`): a body whose only bad UTF-8 sat in a field the brain
    /// does not know was accepted, though it is not JSON.
    #[test]
    fn a_body_that_is_not_utf8_is_refused_even_in_an_unknown_field() {
        let body = |note: &[u8]| {
            let text = serde_json::json!({"batch": [{
                "event_ulid": "01J9ZQ8X4T6B2N3M5K7P9R1S2V", "device_id": "dev-a",
                "event_type": "delete_file", "entity_type": "file", "entity_key": "notes/a.md",
                "payload": {}, "vector_clock": {"dev-a": 1}, "created_at": "2026-11-25T10:00:00Z",
                "note": "NOTE",
            }]})
            .to_string();
            let (head, tail) = text.split_once("NOTE").expect("the placeholder");
            [head.as_bytes(), note, tail.as_bytes()].concat()
        };
        assert_eq!(parse_ingest(&body(b"ok"), 10).map(|b| b.len()), Ok(1));
        let err = parse_ingest(&body(b"\xff"), 10).unwrap_err();
        assert!(
            matches!(&err, BrainError::Invalid(m) if m.starts_with("malformed JSON: invalid UTF-8")),
            "{err}"
        );
    }
}

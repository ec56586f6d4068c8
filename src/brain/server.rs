//! The brain's HTTP routes (DESIGN.md "Wire protocol"), generic over the store.
//!
//! Each handler parses and validates its request completely before the store sees it, so a bad
//! request changes nothing; the store makes each accepted request all-or-nothing.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::Instrument;

use super::auth::{self, Auth, Caller, Credentials, Refusal};
use super::convergence;
use super::metrics::Metrics;
use super::store::{
    check_batch, check_foreign_entries, foreign_devices, unix_seconds, BrainStore, CheckedEvent,
    DeviceSeen,
};
use super::webhooks::{check_registration, Notifier, WebhookPolicy};
use super::BrainError;
use crate::http_server::{self as http, BodyLimits, ConnLimits, LocalOnly};
use crate::model::digest::{ReplicaDigest, DIGEST_HEADER, PENDING_HEADER};
use crate::model::wire::{
    DevicesResponse, ErrorBody, HealthResponse, IngestRequest, IngestResponse, OkResponse,
    PullResponse, SnapshotResponse, WebhookRequest, WebhookResponse, MAX_BATCH, PROTOCOL,
};
use crate::tls::ExtraRoots;

/// How the server behaves; every limit has a default a careful operator would pick.
#[derive(Clone)]
pub struct ServerConfig {
    /// LIB v1.1's shared secret (`LIB_SYNC_SECRET`), accepted beside device tokens; `None`:
    /// device tokens only (`--no-shared-secret`), or no credential at all with
    /// `insecure_no_auth`.
    pub secret: Option<String>,
    /// The shared secret being rotated out (`LIB_SYNC_SECRET_PREVIOUS`), accepted too.
    pub previous_secret: Option<String>,
    /// Serve without any credential (`--insecure-no-auth`).
    pub insecure_no_auth: bool,
    /// Connections from these addresses are a reverse proxy's: the client address is the last
    /// entry of their `X-Forwarded-For` (`--trusted-proxy`).
    pub trusted_proxies: Vec<IpAddr>,
    /// `/metrics` answers `Authorization: Bearer <this>` (`LIB_METRICS_TOKEN`); without it the
    /// route is off here (serve it on a listener of its own with [`metrics_router`]).
    pub metrics_token: Option<String>,
    /// Long-polls one device (or, for the shared secret, one address) may hold open at once;
    /// one more is 503 at once.
    pub max_polls_per_device: usize,
    /// A device's last request, cursor and digest are written at most this often.
    pub seen_every: Duration,
    /// Requests with a larger body get 413.
    pub max_body_bytes: usize,
    /// `payload.content` of one event, at most.
    pub max_content_bytes: usize,
    /// The longest `wait_ms` honoured.
    pub max_wait: Duration,
    /// Certificates trusted for https:// webhook URLs besides the web PKI roots.
    pub webhook_roots: ExtraRoots,
    /// Which webhook URLs the brain delivers to, and how.
    pub webhooks: WebhookPolicy,
    /// Timeouts and caps of client connections.
    pub connections: ConnLimits,
    /// Every route is served under this prefix too (`--base-path`, checked by
    /// [`check_base_path`]): LIB v1.1 clients hold the edge function's URL, which ends in
    /// `/functions/v1/lib-brain-sync`, and append the route to it.
    pub base_path: Option<String>,
    /// Browser origins allowed to call the brain (`--cors-origin`), as LIB v1.1's edge function
    /// allowed browser clients.
    pub cors_origins: Vec<String>,
    /// Prune the log on a schedule (`--prune-older-than`, `--prune-every`).
    pub prune: Option<PruneSchedule>,
}

/// The scheduled prune: events received longer ago than `older_than`, once per `every`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneSchedule {
    pub older_than: Duration,
    pub every: Duration,
}

/// How often the prune task asks whether a prune is due: the schedule is kept in the store
/// (the last run's time), so a restart, or another brain on the database, does not reset it.
const PRUNE_CHECK_EVERY: Duration = Duration::from_secs(3600);

/// Prunes whenever the last prune (by any brain on the store, or the command) is older than
/// `schedule.every`, until `stop` flips.
async fn prune_on_schedule<S: BrainStore>(
    store: Arc<S>,
    schedule: PruneSchedule,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let now = std::time::SystemTime::now();
        let cutoff = now.checked_sub(schedule.older_than);
        let ran_since = now.checked_sub(schedule.every);
        if let (Some(cutoff), Some(ran_since)) = (cutoff, ran_since) {
            match store.prune_unless_ran_since(cutoff, ran_since).await {
                Ok(Some(report)) => tracing::info!(
                    deleted = report.deleted_events,
                    pruned_through = report.pruned_through,
                    "scheduled prune: deleted the events received more than {} ago; next in {}",
                    humantime::format_duration(schedule.older_than),
                    humantime::format_duration(schedule.every)
                ),
                Ok(None) => tracing::debug!("scheduled prune not due yet"),
                Err(e) => tracing::warn!("scheduled prune failed (tried again later): {e}"),
            }
        }
        let wait = PRUNE_CHECK_EVERY.min(schedule.every);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            secret: None,
            previous_secret: None,
            insecure_no_auth: false,
            trusted_proxies: Vec::new(),
            metrics_token: None,
            max_polls_per_device: 4,
            seen_every: auth::SEEN_EVERY,
            max_body_bytes: 32 * 1024 * 1024,
            max_content_bytes: 1024 * 1024,
            max_wait: Duration::from_secs(60),
            webhook_roots: ExtraRoots::none(),
            webhooks: WebhookPolicy::default(),
            connections: ConnLimits::default(),
            base_path: None,
            cors_origins: Vec::new(),
            prune: None,
        }
    }
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field(
                "previous_secret",
                &self.previous_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("insecure_no_auth", &self.insecure_no_auth)
            .field("trusted_proxies", &self.trusted_proxies)
            .field(
                "metrics_token",
                &self.metrics_token.as_ref().map(|_| "<redacted>"),
            )
            .field("max_polls_per_device", &self.max_polls_per_device)
            .field("seen_every", &self.seen_every)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_content_bytes", &self.max_content_bytes)
            .field("max_wait", &self.max_wait)
            .field("webhook_roots", &self.webhook_roots)
            .field("webhooks", &self.webhooks)
            .field("connections", &self.connections)
            .field("base_path", &self.base_path)
            .field("cors_origins", &self.cors_origins)
            .field("prune", &self.prune)
            .finish()
    }
}

/// Default page size of `/pull` and `/snapshot` (LIB v1.1's clients ask for 200).
const DEFAULT_LIMIT: usize = 200;

struct AppState<S> {
    store: Arc<S>,
    config: ServerConfig,
    auth: Arc<Auth>,
    polls: Arc<PollSlots>,
    /// sha256 of `LIB_METRICS_TOKEN`, compared in constant time.
    metrics_token_digest: Option<[u8; 32]>,
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
            auth: self.auth.clone(),
            polls: self.polls.clone(),
            metrics_token_digest: self.metrics_token_digest,
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
        // A pruned cursor says where to go on, for clients that read more than `error` (LIB
        // v1.1's reads `events` only: see README "LIB v1.1 clients against the brain").
        if let BrainError::CursorPruned {
            after_id,
            pruned_through,
        } = self
        {
            let body = serde_json::json!({
                "ok": false,
                "error": self.to_string(),
                "code": "cursor_pruned",
                "after_id": after_id,
                "pruned_through": pruned_through,
            });
            return (status, Json(body)).into_response();
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
    let auth = Arc::new(auth_of(&config, metrics.clone()));
    app(store, config, stopping, metrics, auth)
}

fn auth_of(config: &ServerConfig, metrics: Arc<Metrics>) -> Auth {
    let secrets = [&config.secret, &config.previous_secret]
        .into_iter()
        .filter_map(|s| s.as_deref());
    Auth::new(
        Credentials::new(secrets, config.insecure_no_auth),
        config.trusted_proxies.clone(),
        metrics,
    )
}

fn app<S: BrainStore>(
    store: Arc<S>,
    config: ServerConfig,
    stopping: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    auth: Arc<Auth>,
) -> Router {
    let metrics_token_digest = config
        .metrics_token
        .as_ref()
        .filter(|t| !t.is_empty())
        .map(|t| Sha256::digest(t.as_bytes()).into());
    let state = AppState {
        store,
        auth,
        polls: Arc::new(PollSlots::new(config.max_polls_per_device)),
        metrics_token_digest,
        notifier: Notifier::new(
            metrics.clone(),
            &config.webhook_roots,
            config.webhooks.clone(),
        ),
        metrics,
        stopping,
        config: config.clone(),
    };
    let prefixes: Vec<&str> = std::iter::once("")
        .chain(config.base_path.as_deref())
        .collect();
    let mut protected = Router::new();
    let mut open = Router::new();
    for p in &prefixes {
        protected = protected
            .route(&format!("{p}/ingest"), post(ingest::<S>))
            .route(&format!("{p}/pull"), get(pull::<S>))
            .route(&format!("{p}/snapshot"), get(snapshot::<S>))
            .route(&format!("{p}/webhook"), post(register_webhook::<S>))
            .route(
                &format!("{p}/webhook/{{device_id}}"),
                delete(deactivate_webhook::<S>),
            )
            .route(&format!("{p}/devices"), get(devices::<S>));
        open = open
            .route(&format!("{p}/health"), get(health))
            .route(&format!("{p}/metrics"), get(metrics_text::<S>));
    }
    let protected = protected
        // Inside `authenticate` (a later route_layer wraps the earlier ones): a body is read only
        // after its credential checks out.
        .route_layer(middleware::from_fn_with_state(
            BodyLimits {
                timeout: config.connections.body_timeout,
                max_bytes: config.max_body_bytes,
            },
            http::read_body,
        ))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            authenticate::<S>,
        ));
    let origins = Arc::new(config.cors_origins.clone());
    open.merge(protected)
        .fallback(|| async { BrainError::NotFound("no such route".into()) })
        .layer(middleware::from_fn_with_state(state.clone(), observe::<S>))
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        // Outermost: a preflight carries no credential and must be answered before the check.
        .layer(middleware::from_fn_with_state(origins, cors))
        .with_state(state)
}

/// Why a `--base-path` cannot be used: it must start with `/`, have no `/` at the end and no
/// empty segment, and hold only letters, digits and `-._~` between its slashes (no `{`, which
/// the router would read as a parameter).
pub fn check_base_path(path: &str) -> Result<(), String> {
    let segments: Vec<&str> = match path.strip_prefix('/') {
        Some(rest) => rest.split('/').collect(),
        None => return Err(format!("{path:?} does not start with /")),
    };
    if segments.iter().any(|s| s.is_empty()) {
        return Err(format!(
            "{path:?} has an empty segment (no trailing /, no //, not / alone)"
        ));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-._~".contains(c);
    if let Some(bad) = path.chars().find(|&c| c != '/' && !allowed(c)) {
        return Err(format!(
            "{path:?} holds {bad:?}: only letters, digits, -._~ and / are allowed"
        ));
    }
    Ok(())
}

/// The request headers a browser client may send: the credentials and what a pull reports.
const CORS_ALLOW_HEADERS: &str =
    "authorization, content-type, x-lib-sync-secret, x-lib-device-id, x-lib-digest, x-lib-pending";

/// CORS for the origins of `--cors-origin`: a preflight (`OPTIONS` with
/// `Access-Control-Request-Method`) from one of them is answered 204 at once; their other
/// requests go through and get `Access-Control-Allow-Origin`. Other origins get no CORS headers,
/// so browsers keep their pages out.
async fn cors(State(origins): State<Arc<Vec<String>>>, request: Request, next: Next) -> Response {
    use axum::http::header::{self, HeaderValue};
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .filter(|o| origins.iter().any(|allowed| allowed == o))
        .and_then(|o| HeaderValue::from_str(o).ok());
    let Some(origin) = origin else {
        return next.run(request).await;
    };
    let preflight = request.method() == axum::http::Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(CORS_ALLOW_HEADERS),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        r
    } else {
        next.run(request).await
    };
    let h = response.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    response
}

/// Open connections of the `--metrics-listen` listener at most (a scraper or two).
const METRICS_CONNECTIONS: usize = 16;

/// Serves until `shutdown` resolves, then stops taking requests, ends long-polls and waits for
/// the requests in flight (at most `config.connections.shutdown_timeout`).
pub async fn serve<S: BrainStore>(
    listener: tokio::net::TcpListener,
    store: Arc<S>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_metrics(listener, None, store, config, shutdown).await
}

/// [`serve`], and `/metrics` alone, without a credential, on `metrics_listener`
/// (`--metrics-listen`: a loopback address of its own for a local scraper).
pub async fn serve_with_metrics<S: BrainStore>(
    listener: tokio::net::TcpListener,
    metrics_listener: Option<tokio::net::TcpListener>,
    store: Arc<S>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let metrics = Arc::new(Metrics::default());
    let auth = Arc::new(auth_of(&config, metrics.clone()));
    let seen = tokio::spawn(auth::record_seen_loop(
        auth.clone(),
        store.clone(),
        config.seen_every,
        stop_rx.clone(),
    ));
    if let Some(metrics_listener) = metrics_listener {
        let scrape = Router::new()
            .route("/metrics", get(open_metrics::<S>))
            .with_state(Scrape {
                metrics: metrics.clone(),
                store: store.clone(),
            });
        let mut stop = stop_rx.clone();
        let limits = ConnLimits {
            max_connections: METRICS_CONNECTIONS,
            ..config.connections.clone()
        };
        tokio::spawn(async move {
            let served = http::serve(metrics_listener, scrape, limits, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the metrics listener stopped");
            }
        });
    }
    let pruner = config
        .prune
        .map(|schedule| tokio::spawn(prune_on_schedule(store.clone(), schedule, stop_rx.clone())));
    let limits = config.connections.clone();
    let local_only = match config.insecure_no_auth {
        true => Some(LocalOnly {
            listen: listener.local_addr()?,
        }),
        false => None,
    };
    let mut app = app(store, config, stop_rx, metrics, auth);
    if let Some(local) = local_only {
        app = app.layer(middleware::from_fn_with_state(local, http::local_only));
    }
    let served = http::serve(listener, app, limits, async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    })
    .await;
    // The last devices' requests are written before the brain stops.
    let _ = seen.await;
    if let Some(pruner) = pruner {
        let _ = pruner.await;
    }
    served
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

/// The client address of a request, as [`Auth::client_address`] found it.
#[derive(Debug, Clone, Copy)]
struct ClientAddr(IpAddr);

/// Checks the credential before anything reads the body, and hands the handlers the
/// [`Caller`].
async fn authenticate<S: BrainStore>(
    State(state): State<AppState<S>>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let client = state.auth.client_address(peer, request.headers());
    let caller = match state
        .auth
        .check(&*state.store, client, request.headers())
        .await
    {
        Ok(caller) => caller,
        Err(Refusal::Unauthorized(error)) => {
            return BrainError::Unauthorized(error).into_response()
        }
        Err(Refusal::Forbidden(error)) => return BrainError::Forbidden(error).into_response(),
        Err(Refusal::Throttled { retry_after }) => {
            let seconds = retry_after.as_secs().max(1);
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", seconds.to_string())],
                Json(ErrorBody {
                    ok: false,
                    error: format!(
                        "too many failed authentications from {client}: retry in {seconds} s"
                    ),
                }),
            )
                .into_response();
        }
        Err(Refusal::Store(e)) => return e.into_response(),
    };
    if let Caller::Device { name, .. } = &caller {
        state.auth.note_seen(DeviceSeen {
            name: name.clone(),
            at: unix_seconds(SystemTime::now()),
            cursor: None,
            digest: None,
            pending: None,
        });
    }
    request.extensions_mut().insert(caller);
    request.extensions_mut().insert(ClientAddr(client));
    next.run(request).await
}

async fn health() -> Json<HealthResponse> {
    Json(HealthResponse {
        status: "healthy".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        protocol: Some(PROTOCOL.into()),
    })
}

/// `/metrics` on the main listener: its own token, never the read-write credential.
async fn metrics_text<S: BrainStore>(
    State(state): State<AppState<S>>,
    headers: HeaderMap,
) -> Response {
    let Some(expected) = &state.metrics_token_digest else {
        return BrainError::NotFound(
            "/metrics is off on this listener: set LIB_METRICS_TOKEN, or serve it with \
             --metrics-listen on an address of its own"
                .into(),
        )
        .into_response();
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !given.is_some_and(|t| auth::digest_matches(expected, t.trim().as_bytes())) {
        Metrics::add(&state.metrics.auth_failures, 1);
        return BrainError::Unauthorized(
            "/metrics needs `Authorization: Bearer <LIB_METRICS_TOKEN>`".into(),
        )
        .into_response();
    }
    open_metrics(State(Scrape {
        metrics: state.metrics.clone(),
        store: state.store.clone(),
    }))
    .await
}

/// What `/metrics` reads: the counters, and the store for the devices' convergence.
struct Scrape<S> {
    metrics: Arc<Metrics>,
    store: Arc<S>,
}

impl<S> Clone for Scrape<S> {
    fn clone(&self) -> Self {
        Scrape {
            metrics: self.metrics.clone(),
            store: self.store.clone(),
        }
    }
}

async fn open_metrics<S: BrainStore>(State(scrape): State<Scrape<S>>) -> Response {
    let mut text = crate::prometheus::Text::new();
    scrape.metrics.render(&mut text);
    match convergence::devices(&*scrape.store).await {
        Ok((_, devices)) => convergence::render_metrics(&mut text, &devices),
        // The counters still go out: a scrape that fails whole would hide them too.
        Err(e) => tracing::warn!(error = %e, "/metrics: cannot read the devices' convergence"),
    }
    (
        [("content-type", crate::prometheus::CONTENT_TYPE)],
        text.finish(),
    )
        .into_response()
}

/// `GET /devices`: every enrolled device, its lag and its convergence state.
async fn devices<S: BrainStore>(
    State(state): State<AppState<S>>,
) -> Result<Json<DevicesResponse>, BrainError> {
    let (point, devices) = convergence::devices(&*state.store).await?;
    Ok(Json(convergence::response(&point, &devices)))
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
    parse_ingest_as(raw, max_content_bytes, &Caller::SharedSecret)
}

/// [`parse_ingest`] for a caller: a device token pushes only events of its own device, and a
/// batch with one other event is refused whole, naming it.
pub fn parse_ingest_as(
    raw: &[u8],
    max_content_bytes: usize,
    caller: &Caller,
) -> Result<Vec<CheckedEvent>, BrainError> {
    let request: IngestRequest = parse_json(raw)?;
    if request.batch.len() > MAX_BATCH {
        return Err(BrainError::TooLarge(format!(
            "batch has {} events, at most {MAX_BATCH} are allowed per request",
            request.batch.len()
        )));
    }
    if let Caller::Device {
        name, device_id, ..
    } = caller
    {
        if let Some((index, event)) = request
            .batch
            .iter()
            .enumerate()
            .find(|(_, e)| e.device_id != *device_id)
        {
            return Err(BrainError::Forbidden(format!(
                "batch[{index}].device_id {:?} is not the device id of {name:?} ({device_id}): a \
                 device pushes only its own events",
                event.device_id
            )));
        }
    }
    check_batch(request.batch, max_content_bytes)
}

async fn ingest<S: BrainStore>(
    State(state): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<IngestResponse>, BrainError> {
    let raw = body(raw, state.config.max_body_bytes)?;
    let batch = parse_ingest_as(&raw, state.config.max_content_bytes, &caller)?;
    if let Caller::Device { device_id, .. } = &caller {
        // What the brain has seen only grows, so a check passed here stays true at commit.
        let foreign = foreign_devices(&batch, device_id);
        if !foreign.is_empty() {
            let known = state.store.known_sequences(foreign).await?;
            check_foreign_entries(&batch, device_id, &known)?;
        }
    }
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

/// How often a long-poll of a device token checks that the token still works: a revocation
/// ends the device's long-polls within this, on every brain instance.
const RECHECK_EVERY: Duration = Duration::from_secs(2);

/// What a pull's headers say of the device's replica (DESIGN.md "Convergence you can check").
fn convergence_headers(headers: &HeaderMap) -> (Option<String>, Option<i64>) {
    let digest = headers
        .get(DIGEST_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(ReplicaDigest::from_hex)
        .map(|d| d.to_hex());
    let pending = headers
        .get(PENDING_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok())
        .map(i64::from);
    (digest, pending)
}

async fn pull<S: BrainStore>(
    State(state): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Extension(ClientAddr(client)): Extension<ClientAddr>,
    headers: HeaderMap,
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
    if let Caller::Device { name, .. } = &caller {
        let (digest, pending) = convergence_headers(&headers);
        state.auth.note_seen(DeviceSeen {
            name: name.clone(),
            at: unix_seconds(SystemTime::now()),
            cursor: Some(params.after_id),
            digest,
            pending,
        });
    }
    let wait = Duration::from_millis(params.wait_ms).min(state.config.max_wait);
    let _slot = if wait.is_zero() {
        None
    } else {
        let key = caller.poll_key(client);
        match PollSlots::take(&state.polls, &key) {
            Some(slot) => Some(slot),
            None => {
                Metrics::add(&state.metrics.polls_refused, 1);
                return Err(BrainError::Unavailable(format!(
                    "{key} holds {} long-polls open already, the most allowed: retry after one ends",
                    state.polls.max
                )));
            }
        }
    };
    let deadline = tokio::time::Instant::now() + wait;
    // Subscribed before the first read: a commit after that read wakes the wait below.
    let mut newest = state.store.subscribe();
    let mut stopping = state.stopping.clone();
    let mut recheck =
        tokio::time::interval_at(tokio::time::Instant::now() + RECHECK_EVERY, RECHECK_EVERY);
    let page = loop {
        newest.borrow_and_update();
        let page = state.store.pull(params.after_id, limit).await?;
        if !page.events.is_empty() || wait.is_zero() || *stopping.borrow() {
            break page;
        }
        let woke = loop {
            tokio::select! {
                changed = newest.changed() => break changed.is_ok(),
                _ = stopping.changed() => break false,
                _ = tokio::time::sleep_until(deadline) => break false,
                _ = recheck.tick(), if matches!(caller, Caller::Device { .. }) => {
                    if !state.auth.still_valid(&*state.store, &caller).await {
                        return Err(BrainError::Unauthorized(
                            "unknown or revoked device token".into(),
                        ));
                    }
                }
            }
        };
        if !woke {
            break page;
        }
    };
    Metrics::add(&state.metrics.pulls, 1);
    Metrics::add(&state.metrics.events_pulled, page.events.len() as u64);
    // Read after the page: a device that is behind it is behind the head too. Only for a
    // client that reports a digest (LIB v1.1's do not, and would not read the answer).
    let (digest, pending) = convergence_headers(&headers);
    let digest = digest.as_deref().and_then(ReplicaDigest::from_hex);
    // The head, read fresh (not the wake-up channel, which lags other brains' commits): with
    // an empty page it tells a device whose cursor is past it that this log is older than the
    // one it pulled from (a restored backup).
    let replica = match digest.is_some() || (page.events.is_empty() && params.after_id > 0) {
        true => Some(state.store.replica().await?),
        false => None,
    };
    let convergence = match (&replica, digest) {
        (Some(replica), Some(digest)) => {
            Some(replica.compare(params.after_id, Some(&digest), pending))
        }
        _ => None,
    };
    Ok(Json(PullResponse {
        ok: true,
        events: page.events,
        next_after_id: page.next_after_id,
        has_more: page.has_more,
        convergence,
        head: replica.map(|r| r.head),
        epoch: Some(epoch_hex(state.store.epoch())),
    }))
}

/// The epoch on the wire: 16 lower-case hex digits.
pub fn epoch_hex(epoch: i64) -> String {
    format!("{epoch:016x}")
}

#[derive(Debug, Deserialize)]
struct SnapshotParams {
    #[serde(default)]
    after_key: String,
    limit: Option<usize>,
}

/// Long-polls held open per device (or per address, for the shared secret), capped.
struct PollSlots {
    max: usize,
    open: std::sync::Mutex<HashMap<String, usize>>,
}

/// One open long-poll; dropping it frees the slot.
struct PollSlot {
    slots: Arc<PollSlots>,
    key: String,
}

impl PollSlots {
    fn new(max: usize) -> PollSlots {
        PollSlots {
            max,
            open: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn take(slots: &Arc<PollSlots>, key: &str) -> Option<PollSlot> {
        let mut open = slots.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(key.to_owned()).or_insert(0);
        if *count >= slots.max {
            return None;
        }
        *count += 1;
        Some(PollSlot {
            slots: slots.clone(),
            key: key.to_owned(),
        })
    }
}

impl Drop for PollSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
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
    if !crate::model::event::is_device_id(device_id) {
        let shown: String = device_id.chars().take(64).collect();
        return Err(BrainError::Invalid(format!(
            "device_id {shown:?} is not 1 to 128 letters, digits, `.`, `_` or `-`"
        )));
    }
    Ok(())
}

/// A device registers, replaces or removes only its own webhook.
fn check_acts_for(caller: &Caller, device_id: &str) -> Result<(), BrainError> {
    match caller {
        Caller::Device {
            name,
            device_id: own,
            ..
        } if own != device_id => Err(BrainError::Forbidden(format!(
            "device {name:?} ({own}) may change only its own webhook, not the one of {device_id:?}"
        ))),
        _ => Ok(()),
    }
}

/// Active webhooks at most: every ingest notifies each of them.
pub const MAX_WEBHOOKS: usize = 1000;

async fn register_webhook<S: BrainStore>(
    State(state): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<WebhookResponse>, BrainError> {
    let raw = body(raw, state.config.max_body_bytes)?;
    let request: WebhookRequest = parse_json(&raw)?;
    check_device_id(&request.device_id)?;
    check_acts_for(&caller, &request.device_id)?;
    let via_shared_secret = !matches!(caller, Caller::Device { .. });
    check_registration(&request, via_shared_secret)?;
    // The shared secret may register for any device id: without a cap, made-up ids would each
    // add a URL that every ingest fans out to.
    let hooks = state.store.active_webhooks().await?;
    if hooks.len() >= MAX_WEBHOOKS && !hooks.iter().any(|h| h.device_id == request.device_id) {
        return Err(BrainError::Invalid(format!(
            "the brain delivers to {MAX_WEBHOOKS} webhooks already, the most it keeps: remove \
             one (DELETE /webhook/{{device_id}}) or long-poll instead"
        )));
    }
    let webhook_id = state
        .store
        .register_webhook(
            &request.device_id,
            &request.webhook_url,
            &request.secret,
            via_shared_secret,
        )
        .await?;
    if request.secret.is_empty() {
        tracing::warn!(device_id = %request.device_id, webhook_id,
            "webhook registered without a secret (a LIB v1.1 client, through the shared secret): \
             its notifications are unsigned");
    } else {
        tracing::info!(device_id = %request.device_id, webhook_id, "webhook registered");
    }
    Ok(Json(WebhookResponse {
        ok: true,
        webhook_id,
    }))
}

async fn deactivate_webhook<S: BrainStore>(
    State(state): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Json<OkResponse>, BrainError> {
    let device_id = params.get("device_id").cloned().unwrap_or_default();
    check_device_id(&device_id)?;
    check_acts_for(&caller, &device_id)?;
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

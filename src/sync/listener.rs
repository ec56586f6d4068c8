//! The webhook listener: the brain POSTs `{"event": "new_events", ...}` here after an ingest; a
//! valid signature (HMAC-SHA256 with this device's webhook secret, timestamp within ±5 minutes,
//! checked by [`webhook_signature::verify`], the same code the brain signs with) wakes the
//! puller. With `[sync] webhook_auth = "shared-secret"`, LIB v1.1's `x-webhook-secret` header
//! holding the webhook secret itself does too (what LIB v1.1's edge function sends). Anything
//! else gets 401 and wakes nothing. `GET /health` answers as LIB v1.1's listener did.

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware;
use axum::routing::{get, post};
use axum::{Json, Router};
use crossbeam_channel::{Receiver, Sender};
use serde_json::{json, Value};

use sha2::{Digest, Sha256};

use super::SyncError;
use crate::brain::auth::digest_matches;
use crate::config::WebhookAuth;
use crate::http_server::{self as http, BodyLimits, ConnLimits};
use crate::model::webhook_signature;
use crate::model::wire::{LEGACY_WEBHOOK_SECRET_HEADER, SIGNATURE_HEADER};

#[derive(Clone)]
struct Listener {
    secret: String,
    /// With `shared-secret`: the SHA-256 of the secret, compared in constant time.
    legacy_secret: Option<[u8; 32]>,
    wake: Sender<()>,
}

/// Open connections at most: the brain sends one notification at a time.
const MAX_CONNECTIONS: usize = 16;

/// A notification is a few hundred bytes.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The listener's routes: `POST /` and `POST /webhook` (either may be registered as the URL).
pub fn router(secret: String, auth: WebhookAuth, wake: Sender<()>) -> Router {
    let body = BodyLimits {
        timeout: ConnLimits::default().body_timeout,
        max_bytes: MAX_BODY_BYTES,
    };
    let legacy_secret =
        (auth == WebhookAuth::SharedSecret).then(|| Sha256::digest(secret.as_bytes()).into());
    Router::new()
        .route("/", post(notified))
        .route("/webhook", post(notified))
        .route_layer(middleware::from_fn_with_state(body, http::read_body))
        .route("/health", get(health))
        .with_state(Listener {
            secret,
            legacy_secret,
            wake,
        })
}

/// LIB v1.1's listener's answer, so its monitoring keeps working.
async fn health() -> Json<Value> {
    Json(json!({
        "status": "healthy",
        "version": env!("CARGO_PKG_VERSION"),
        "service": "lib-webhook-listener",
    }))
}

async fn notified(
    State(l): State<Listener>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, Json<Value>) {
    let legacy = headers
        .get(LEGACY_WEBHOOK_SECRET_HEADER)
        .map(|v| v.as_bytes());
    if let (Some(expected), Some(given)) = (&l.legacy_secret, legacy) {
        if digest_matches(expected, given) {
            let _ = l.wake.try_send(());
            return (StatusCode::OK, Json(json!({"ok": true})));
        }
        tracing::warn!("webhook refused: x-webhook-secret does not match");
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"ok": false, "error": "invalid x-webhook-secret"})),
        );
    }
    let Some(signature) = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok()) else {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"ok": false, "error": "missing x-lib-signature"})),
        );
    };
    if let Err(e) = webhook_signature::verify(&l.secret, signature, &body, SystemTime::now()) {
        tracing::warn!("webhook refused: {e}");
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"ok": false, "error": e.to_string()})),
        );
    }
    let _ = l.wake.try_send(());
    (StatusCode::OK, Json(json!({"ok": true})))
}

/// Binds `addr` now (so a taken port is an error at start) and serves on a thread until `stop`.
pub fn spawn(
    addr: SocketAddr,
    secret: String,
    auth: WebhookAuth,
    wake: Sender<()>,
    stop: Receiver<()>,
) -> Result<JoinHandle<()>, SyncError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            SyncError::Client(super::ClientError::Network {
                url: addr.to_string(),
                reason: e.to_string(),
            })
        })?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(addr))
        .map_err(|e| {
            SyncError::Client(super::ClientError::Network {
                url: addr.to_string(),
                reason: format!("cannot listen: {e}"),
            })
        })?;
    tracing::info!(%addr, "webhook listener ready");
    if auth == WebhookAuth::SharedSecret {
        tracing::warn!(
            "webhook_auth = \"shared-secret\": notifications carrying the webhook secret in \
             x-webhook-secret (LIB v1.1's edge function) are accepted. That is weaker than a \
             signature: whoever sees one such request can send more. Go back to \"signature\" \
             once the brain is `agent brain serve`"
        );
    }
    Ok(std::thread::spawn(move || {
        let app = router(secret, auth, wake);
        let shutdown = async move {
            let _ = tokio::task::spawn_blocking(move || stop.recv()).await;
        };
        let limits = ConnLimits {
            max_connections: MAX_CONNECTIONS,
            ..ConnLimits::default()
        };
        if let Err(e) = runtime.block_on(http::serve(listener, app, limits, shutdown)) {
            tracing::error!("webhook listener stopped: {e}");
        }
    }))
}

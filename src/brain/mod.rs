//! The brain: the shared server devices push events to and pull events from (`agent brain serve`).
//!
//! Data flow: `server.rs` checks the secret and validates each request, the store (`store/`,
//! SQLite or PostgreSQL behind one trait) appends events to the log and applies them to `entities`
//! with the merge rule of `model::merge`, then `webhooks.rs` tells registered devices in the
//! background. `metrics.rs` counts what happened for `GET /metrics`.

pub mod auth;
pub mod convergence;
pub mod metrics;
pub mod server;
pub mod store;
pub mod webhooks;

use axum::http::StatusCode;

/// Everything a brain request can fail with, classified by the HTTP status it answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrainError {
    /// Malformed or invalid input (400). The message names the field and the event index.
    #[error("{0}")]
    Invalid(String),
    /// No credential, or one the brain does not accept (401).
    #[error("{0}")]
    Unauthorized(String),
    /// A valid credential acting for another device (403).
    #[error("{0}")]
    Forbidden(String),
    /// An event ULID already stored with other content (409).
    #[error("{0}")]
    Conflict(String),
    /// The cursor is older than the pruned log (410).
    #[error(
        "after_id {after_id} is older than the pruned log (events up to id {pruned_through} were \
         pruned): re-seed from GET /snapshot, then pull from its watermark"
    )]
    CursorPruned { after_id: i64, pruned_through: i64 },
    /// No such route (404).
    #[error("{0}")]
    NotFound(String),
    /// The body is over the byte cap (413).
    #[error("{0}")]
    TooLarge(String),
    /// The store cannot be reached or is busy; nothing was written (503).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Anything else; nothing was written (500).
    #[error("internal error: {0}")]
    Internal(String),
}

impl BrainError {
    pub fn status(&self) -> StatusCode {
        match self {
            BrainError::Invalid(_) => StatusCode::BAD_REQUEST,
            BrainError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            BrainError::Forbidden(_) => StatusCode::FORBIDDEN,
            BrainError::Conflict(_) => StatusCode::CONFLICT,
            BrainError::CursorPruned { .. } => StatusCode::GONE,
            BrainError::NotFound(_) => StatusCode::NOT_FOUND,
            BrainError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            BrainError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            BrainError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

pub type Result<T, E = BrainError> = std::result::Result<T, E>;

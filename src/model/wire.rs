//! Request and response bodies of the brain's HTTP protocol (DESIGN.md "Wire protocol"), shared by
//! the brain's routes and the agent's sync client so both ends agree on every field.
//! The shapes are LIB v1.1's edge function's, so its Python clients keep working.

use serde::{Deserialize, Serialize};

use super::clock::VectorClock;
use super::event::{Event, EventType, FilePayload};
use super::merge::Version;

/// The header that carries the shared secret on every route but `/health`.
pub const SECRET_HEADER: &str = "x-lib-sync-secret";
/// The header that names the device a device token (`Authorization: Bearer <token>`) acts for.
pub const DEVICE_ID_HEADER: &str = "x-lib-device-id";
/// The header that signs a webhook notification: `t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub const SIGNATURE_HEADER: &str = "x-lib-signature";
/// LIB v1.1's webhook header: the webhook's secret itself, which its edge function sent and its
/// listeners compare (weaker than [`SIGNATURE_HEADER`]: replayable by whoever sees it).
pub const LEGACY_WEBHOOK_SECRET_HEADER: &str = "x-webhook-secret";
/// At most this many events in one `POST /ingest`, and in one page of `/pull` or `/snapshot`.
pub const MAX_BATCH: usize = 500;

/// `POST /ingest`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestRequest {
    pub batch: Vec<Event>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestResult {
    /// Events new to the log (a re-sent event with a known ULID is not counted).
    pub inserted_events: u64,
    /// Entities whose merged state changed.
    pub upserted_entities: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestResponse {
    pub ok: bool,
    pub result: IngestResult,
}

/// One event of the log, with the brain's id (the pull cursor).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PulledEvent {
    pub id: i64,
    #[serde(flatten)]
    pub event: Event,
}

/// `GET /pull?after_id=N&limit=M[&wait_ms=W]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullResponse {
    pub ok: bool,
    pub events: Vec<PulledEvent>,
    /// The cursor for the next pull: the id of the last event returned, or `after_id` if none.
    pub next_after_id: i64,
    pub has_more: bool,
    /// How the pulling device's replica compares with the brain's (DESIGN.md "Convergence you
    /// can check"); absent from a brain that does not compare (LIB v1.1's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub convergence: Option<super::digest::Convergence>,
    /// The newest id of the log, when the brain read it for this answer (an empty page, or a
    /// comparison). A cursor past it means the log is older than the one the device pulled
    /// from: a restored backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<i64>,
    /// The store's epoch (16 hex digits), a random id made with it: another value than the one
    /// a device kept means another store. Absent from LIB v1.1's brain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
}

/// The merged state of one entity, as `/snapshot` serves it for re-seeding a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotEntity {
    pub entity_type: String,
    pub entity_key: String,
    /// The winning event.
    pub event_ulid: String,
    pub device_id: String,
    pub event_type: EventType,
    pub payload: FilePayload,
    pub vector_clock: VectorClock,
    pub created_at: String,
    /// Set when the winner is a tombstone.
    pub deleted_at: Option<String>,
    /// Pointwise maximum of every applied clock.
    pub seen_vc: VectorClock,
    /// The versions no applied version dominates, the winner first: the losers with other bytes
    /// are the entity's open conflicts.
    pub siblings: Vec<Version>,
}

/// `GET /snapshot?after_key=K&limit=M`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotResponse {
    pub ok: bool,
    pub entities: Vec<SnapshotEntity>,
    /// The log id this page includes every event up to. A device re-seeding keeps the watermark
    /// of its *first* page and pulls from it afterwards (events applied twice are harmless).
    pub watermark: i64,
    pub has_more: bool,
}

/// `POST /webhook`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookRequest {
    pub device_id: String,
    pub webhook_url: String,
    /// Signs the notifications. A LIB v1.1 client registering with the shared secret may leave
    /// it out (empty): its notifications are then unsigned.
    #[serde(default)]
    pub secret: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookResponse {
    pub ok: bool,
    pub webhook_id: i64,
}

/// The body the brain POSTs to a registered webhook after an ingest that inserted events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookNotification {
    /// Always `"new_events"`.
    pub event: String,
    /// Pulling from this id returns the new events.
    pub after_id: i64,
    /// RFC 3339, UTC.
    pub timestamp: String,
}

/// `{"ok": true}` (`DELETE /webhook/{device_id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OkResponse {
    pub ok: bool,
}

/// Every error: `{"ok": false, "error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub ok: bool,
    pub error: String,
}

/// `GET /health`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthResponse {
    pub status: String,
    pub version: String,
    /// The LIB protocol version the brain speaks ([`PROTOCOL`]); absent from LIB v1.1's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// The protocol of DESIGN.md "Wire protocol": LIB v1.1's, with this project's additions.
pub const PROTOCOL: &str = "1.1";

/// `GET /devices`: every enrolled device and how its replica compares with the brain's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicesResponse {
    pub ok: bool,
    /// The log's head the lags are counted from.
    pub head: i64,
    pub devices: Vec<DeviceView>,
}

/// One enrolled device, as `GET /devices` shows it to any device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceView {
    pub name: String,
    /// The device id its token is bound to; `None` until its first request.
    pub device_id: Option<String>,
    /// RFC 3339.
    pub last_seen_at: Option<String>,
    /// The `after_id` of its last pull.
    pub cursor: Option<i64>,
    /// Its events the brain had not acknowledged, at its last pull.
    pub pending: Option<i64>,
    pub revoked: bool,
    pub state: super::digest::ConvergenceState,
    /// Events of the log it has still to pull.
    pub lag: i64,
    /// How deliveries to its webhook go, if it registered one (not its URL: that stays with
    /// the operator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookHealth>,
}

/// A device's webhook as `GET /devices` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookHealth {
    pub active: bool,
    /// Deliveries failed in a row.
    pub failures: i64,
}

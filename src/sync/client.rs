//! The brain's HTTP client: one method per route, errors classified so callers know whether to
//! retry (network, 5xx, 408, 429) or not (the brain refused the request as invalid).
//!
//! http:// and https:// both work: TLS is rustls (ring) trusting the web PKI roots, plus the
//! certificates of `[sync] brain_ca_file` / `LIB_BRAIN_CA_FILE` for a brain behind a private CA
//! (see [`crate::tls`]).
//!
//! What the client sends and reads is bounded by what it trusts (DESIGN.md "Trust"): it follows
//! no redirect (a 3xx is an error naming where it pointed: the credential and file text must not
//! travel to another origin), reads at most [`MAX_ANSWER_BYTES`] of an answer, and warns once per
//! process when it sends a credential over plain http:// to a host that is not loopback.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::header::{HeaderValue, AUTHORIZATION};
use serde::de::DeserializeOwned;

use crate::config::{SyncConfig, TokenFileError, ENV_BRAIN_CA_FILE};
use crate::model::digest::{Convergence, ReplicaReport, DIGEST_HEADER, PENDING_HEADER};
use crate::model::wire::{
    DevicesResponse, ErrorBody, IngestRequest, IngestResponse, IngestResult, PullResponse,
    PulledEvent, SnapshotResponse, WebhookRequest, WebhookResponse, DEVICE_ID_HEADER, MAX_BATCH,
    SECRET_HEADER,
};
use crate::model::Event;
use crate::tls::{self, CaFileError, ExtraRoots};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The configured extra CA file cannot be used; nothing was sent.
    #[error(transparent)]
    CaFile(#[from] CaFileError),
    #[error("cannot reach the brain at {url}: {reason}")]
    Network { url: String, reason: String },
    /// The TLS handshake failed on the brain's certificate. Retryable, like a network error: a
    /// certificate gets renewed, a clock gets fixed, and the agent should then carry on by itself.
    #[error(
        "the brain at {url} presented a certificate that is not trusted: {reason}; if the brain \
         uses a private CA, name its certificate in [sync] brain_ca_file or {ENV_BRAIN_CA_FILE}"
    )]
    Certificate { url: String, reason: String },
    #[error("the brain answered {status} to {route}: {message}")]
    Status {
        route: &'static str,
        status: u16,
        message: String,
    },
    #[error("the brain's answer to {route} is not what the protocol says: {reason}")]
    Protocol { route: &'static str, reason: String },
    /// The answer is larger than [`MAX_ANSWER_BYTES`]; it was not read further.
    #[error(
        "the brain's answer to {route} is larger than {cap} bytes; refused without reading it \
         whole (a damaged or hostile brain, or one that pages by count only)"
    )]
    TooLarge { route: &'static str, cap: u64 },
    /// The brain answered a redirect. It is not followed: the credential and the text of files
    /// would go to wherever it points.
    #[error(
        "the brain answered {status} to {route}, a redirect to {location}; redirects are not \
         followed (the credential and file text would go there): set [sync] brain_url to the \
         brain's own URL"
    )]
    Redirect {
        route: &'static str,
        status: u16,
        location: String,
    },
    /// The device token cannot be read, or cannot travel in a header; nothing was sent.
    #[error(transparent)]
    TokenFile(#[from] TokenFileError),
    #[error("the device token {0}")]
    BadToken(&'static str),
}

/// The largest answer the client reads, counted as it arrives (after decompression, were bodies
/// ever compressed): the brain's pages stop at 16 MiB of stored text, which JSON may escape to a
/// few times that.
pub const MAX_ANSWER_BYTES: u64 = 64 << 20;

impl ClientError {
    /// Worth retrying later with the same request: the brain may be down or busy.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Network { .. } | ClientError::Certificate { .. } => true,
            ClientError::Status { status, .. } => {
                *status >= 500 || *status == 408 || *status == 429
            }
            ClientError::CaFile(_)
            | ClientError::Protocol { .. }
            | ClientError::TooLarge { .. }
            | ClientError::Redirect { .. }
            | ClientError::TokenFile(_)
            | ClientError::BadToken(_) => false,
        }
    }

    /// The brain refused the request itself (400, 409, 413): resending it cannot succeed.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            ClientError::Status {
                status: 400 | 409 | 413,
                ..
            }
        )
    }

    pub fn is_cursor_pruned(&self) -> bool {
        matches!(self, ClientError::Status { status: 410, .. })
    }
}

/// What the client authenticates with.
#[derive(Clone, Default)]
pub enum Credential {
    /// Nothing (a brain run with `--insecure-no-auth`).
    #[default]
    None,
    /// LIB v1.1's shared secret, in `x-lib-sync-secret`.
    Secret(String),
    /// This device's token (`Authorization: Bearer`) and its id (`x-lib-device-id`).
    Device { token: String, device_id: String },
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::None => f.write_str("None"),
            Credential::Secret(_) => f.write_str("Secret(<redacted>)"),
            Credential::Device { device_id, .. } => f
                .debug_struct("Device")
                .field("token", &"<redacted>")
                .field("device_id", device_id)
                .finish(),
        }
    }
}

impl Credential {
    /// The credential the configuration gives this device: its token when it has one (then
    /// never the shared secret), else the shared secret.
    pub fn from_config(sync: &SyncConfig, device_id: &str) -> Result<Credential, ClientError> {
        Ok(match (sync.device_token()?, &sync.secret) {
            (Some(token), _) => Credential::Device {
                token,
                device_id: device_id.to_owned(),
            },
            (None, Some(secret)) => Credential::Secret(secret.clone()),
            (None, None) => Credential::None,
        })
    }

    /// The headers every request carries, built once, marked sensitive (kept out of debug logs).
    fn headers(&self) -> Result<Vec<(&'static str, HeaderValue)>, ClientError> {
        let sensitive = |value: &str, what: &'static str| {
            let mut v = HeaderValue::from_str(value).map_err(|_| ClientError::BadToken(what))?;
            v.set_sensitive(true);
            Ok::<_, ClientError>(v)
        };
        Ok(match self {
            Credential::None => Vec::new(),
            Credential::Secret(secret) => vec![(
                SECRET_HEADER,
                sensitive(secret, "(the shared secret) cannot be sent in a header")?,
            )],
            Credential::Device { token, device_id } => vec![
                (
                    AUTHORIZATION.as_str(),
                    sensitive(&format!("Bearer {token}"), "cannot be sent in a header")?,
                ),
                (
                    DEVICE_ID_HEADER,
                    HeaderValue::from_str(device_id)
                        .map_err(|_| ClientError::BadToken("'s device id is not a header value"))?,
                ),
            ],
        })
    }
}

pub struct BrainClient {
    http: reqwest::blocking::Client,
    base: String,
    credential: Credential,
    headers: Vec<(&'static str, HeaderValue)>,
    /// Set at the first `/pull` page in LIB v1.1's shape, whose brain was then checked for
    /// `/snapshot` (see [`BrainClient::pull`]).
    legacy_checked: AtomicBool,
}

impl std::fmt::Debug for BrainClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrainClient")
            .field("base", &self.base)
            .field("credential", &self.credential)
            .finish()
    }
}

impl BrainClient {
    /// A client of the brain at `base` (http:// or https://) sending the shared secret, trusting
    /// the web PKI roots.
    pub fn new(base: &str, secret: Option<String>) -> Result<BrainClient, ClientError> {
        let credential = secret.map_or(Credential::None, Credential::Secret);
        BrainClient::with_credential(base, credential, &ExtraRoots::none())
    }

    /// The client the configuration describes for the device `device_id`: its token (or the
    /// shared secret) and the extra CA file of `sync`.
    pub fn from_config(
        base: &str,
        sync: &SyncConfig,
        device_id: &str,
    ) -> Result<BrainClient, ClientError> {
        let roots = match &sync.brain_ca_file {
            Some(file) => ExtraRoots::load(file)?,
            None => ExtraRoots::none(),
        };
        let credential = Credential::from_config(sync, device_id)?;
        BrainClient::with_credential(base, credential, &roots)
    }

    /// A client that trusts `roots` besides the web PKI roots.
    pub fn with_roots(
        base: &str,
        secret: Option<String>,
        roots: &ExtraRoots,
    ) -> Result<BrainClient, ClientError> {
        let credential = secret.map_or(Credential::None, Credential::Secret);
        BrainClient::with_credential(base, credential, roots)
    }

    /// A client that sends `credential` and trusts `roots` besides the web PKI roots.
    pub fn with_credential(
        base: &str,
        credential: Credential,
        roots: &ExtraRoots,
    ) -> Result<BrainClient, ClientError> {
        let headers = credential.headers()?;
        let mut builder = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none());
        for cert in roots.certificates() {
            builder = builder.add_root_certificate(cert);
        }
        let http = builder.build().map_err(|e| ClientError::Network {
            url: base.to_owned(),
            reason: tls::one_line(&e),
        })?;
        let base = base.trim_end_matches('/').to_owned();
        if !matches!(credential, Credential::None) && plain_http_to_remote(&base) {
            warn_plain_http_once(&base);
        }
        Ok(BrainClient {
            http,
            base,
            credential,
            headers,
            legacy_checked: AtomicBool::new(false),
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        timeout: Duration,
    ) -> reqwest::blocking::RequestBuilder {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .timeout(timeout);
        for (name, value) in &self.headers {
            request = request.header(*name, value.clone());
        }
        request
    }

    fn send<T: DeserializeOwned>(
        &self,
        route: &'static str,
        request: reqwest::blocking::RequestBuilder,
    ) -> Result<T, ClientError> {
        self.send_dated(route, request).map(|(answer, _)| answer)
    }

    /// [`BrainClient::send`], with the brain's clock from the answer's `Date` header.
    fn send_dated<T: DeserializeOwned>(
        &self,
        route: &'static str,
        request: reqwest::blocking::RequestBuilder,
    ) -> Result<(T, Option<std::time::SystemTime>), ClientError> {
        let network = |e: reqwest::Error| match tls::certificate_error(&e) {
            Some(reason) => ClientError::Certificate {
                url: self.base.clone(),
                reason,
            },
            None => ClientError::Network {
                url: self.base.clone(),
                reason: tls::one_line(&e),
            },
        };
        let response = request.send().map_err(network)?;
        let status = response.status();
        let date = response
            .headers()
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok());
        if status.is_redirection() {
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .map_or_else(
                    || "nowhere (no Location header)".to_owned(),
                    |l| format!("{:?}", String::from_utf8_lossy(l.as_bytes())),
                );
            return Err(ClientError::Redirect {
                route,
                status: status.as_u16(),
                location,
            });
        }
        let too_large = ClientError::TooLarge {
            route,
            cap: MAX_ANSWER_BYTES,
        };
        if response
            .content_length()
            .is_some_and(|n| n > MAX_ANSWER_BYTES)
        {
            return Err(too_large);
        }
        // Read with a limit, one byte past it to tell "exactly the cap" from "more".
        let mut body = Vec::new();
        response
            .take(MAX_ANSWER_BYTES + 1)
            .read_to_end(&mut body)
            .map_err(|e| ClientError::Network {
                url: self.base.clone(),
                reason: e.to_string(),
            })?;
        if body.len() as u64 > MAX_ANSWER_BYTES {
            return Err(too_large);
        }
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&body)
                .map(|b| b.error)
                .unwrap_or_else(|_| {
                    String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()
                });
            return Err(ClientError::Status {
                route,
                status: status.as_u16(),
                message,
            });
        }
        let answer = serde_json::from_slice(&body).map_err(|e| ClientError::Protocol {
            route,
            reason: e.to_string(),
        })?;
        Ok((answer, date))
    }

    /// An authenticated request that reads nothing (a pull after the last possible id): whether
    /// the brain answers and takes the credential, and its clock (`agent doctor`).
    pub fn probe(&self) -> Result<Option<std::time::SystemTime>, ClientError> {
        let path = format!("/pull?after_id={}&limit=1", i64::MAX);
        let request = self.request(reqwest::Method::GET, &path, Duration::from_secs(10));
        self.send_dated::<PullResponse>("/pull", request)
            .map(|(_, date)| date)
    }

    /// `POST /ingest`. The body is serialised here once; callers bound it by count and bytes.
    pub fn ingest(&self, batch: &[Event]) -> Result<IngestResult, ClientError> {
        let body = serde_json::to_vec(&IngestRequest {
            batch: batch.to_vec(),
        })
        .map_err(|e| ClientError::Protocol {
            route: "/ingest",
            reason: e.to_string(),
        })?;
        let request = self
            .request(reqwest::Method::POST, "/ingest", Duration::from_secs(60))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        let response: IngestResponse = self.send("/ingest", request)?;
        Ok(response.result)
    }

    /// `GET /pull`; with `wait` it long-polls until an event exists or the wait passes.
    pub fn pull(
        &self,
        after_id: i64,
        limit: usize,
        wait: Option<Duration>,
        replica: Option<&ReplicaReport>,
    ) -> Result<PullResponse, ClientError> {
        let mut path = format!("/pull?after_id={after_id}&limit={limit}");
        let mut timeout = Duration::from_secs(60);
        if let Some(wait) = wait {
            path.push_str(&format!("&wait_ms={}", wait.as_millis()));
            timeout += wait;
        }
        let mut request = self.request(reqwest::Method::GET, &path, timeout);
        if let Some(replica) = replica {
            request = request
                .header(DIGEST_HEADER, replica.digest.to_hex())
                .header(PENDING_HEADER, replica.pending.to_string());
        }
        let page: PullPage = self.send("/pull", request)?;
        if page.is_legacy() && !self.legacy_checked.swap(true, Ordering::Relaxed) {
            self.warn_without_snapshot();
        }
        page.into_response(after_id, limit)
    }

    /// LIB v1.1's edge function has no `/snapshot` and never answers 410: a device joining it
    /// gets the log from its oldest kept event, so entities whose every event it pruned (it
    /// pruned after 365 days) never reach this device. Nothing can fetch them from that brain;
    /// the user must know, once per process.
    fn warn_without_snapshot(&self) {
        let request = self
            .request(reqwest::Method::GET, "/snapshot", Duration::from_secs(10))
            .query(&[("after_key", ""), ("limit", "1")]);
        match self.send::<SnapshotResponse>("/snapshot", request) {
            Ok(_) => {}
            Err(ClientError::Status { status: 404, .. }) => tracing::warn!(
                brain = %self.base,
                "this brain answers as LIB v1.1's edge function does: it has no /snapshot and \
                 never says when it pruned its log, so files whose every event it pruned (LIB v1.1 \
                 pruned events older than 365 days) cannot be fetched from it and will be missing \
                 here. Moving the brain to `agent brain serve` first avoids this"
            ),
            Err(e) => tracing::debug!("cannot tell whether the brain has /snapshot: {e}"),
        }
    }

    /// `GET /devices`: every enrolled device and how its replica compares with the brain's.
    pub fn devices(&self, timeout: Duration) -> Result<DevicesResponse, ClientError> {
        self.send(
            "/devices",
            self.request(reqwest::Method::GET, "/devices", timeout),
        )
    }

    /// `GET /snapshot`, one page of current entities after `after_key`.
    pub fn snapshot(&self, after_key: &str, limit: usize) -> Result<SnapshotResponse, ClientError> {
        self.snapshot_within(after_key, limit, Duration::from_secs(60))
    }

    /// [`BrainClient::snapshot`] with a timeout of the caller's (a question asked by hand).
    pub fn snapshot_within(
        &self,
        after_key: &str,
        limit: usize,
        timeout: Duration,
    ) -> Result<SnapshotResponse, ClientError> {
        let request = self
            .request(reqwest::Method::GET, "/snapshot", timeout)
            .query(&[("after_key", after_key), ("limit", &limit.to_string())]);
        self.send("/snapshot", request)
    }
}

/// A `/pull` answer as read: the brain's own, or LIB v1.1's edge function's, which is
/// `{"ok": true, "events": [...]}` without the cursor and `has_more`.
#[derive(serde::Deserialize)]
struct PullPage {
    events: Vec<PulledEvent>,
    next_after_id: Option<i64>,
    has_more: Option<bool>,
    #[serde(default)]
    convergence: Option<Convergence>,
    #[serde(default)]
    head: Option<i64>,
    #[serde(default)]
    epoch: Option<String>,
}

impl PullPage {
    fn is_legacy(&self) -> bool {
        self.next_after_id.is_none() || self.has_more.is_none()
    }

    /// The page as the brain's own would be: for LIB v1.1's, the cursor is the last event's id
    /// and there is more when the page is full (that function returns at most 500).
    fn into_response(self, after_id: i64, limit: usize) -> Result<PullResponse, ClientError> {
        let full = self.events.len() >= limit.min(MAX_BATCH);
        let last = self.events.last().map(|e| e.id);
        let next_after_id = self
            .next_after_id
            .unwrap_or_else(|| last.unwrap_or(after_id).max(after_id));
        let has_more = self.has_more.unwrap_or(full);
        // A page that says "more" must move the cursor, or the puller would ask for it forever.
        if has_more && next_after_id <= after_id {
            return Err(ClientError::Protocol {
                route: "/pull",
                reason: format!(
                    "the page says there is more after id {after_id} but does not move past it"
                ),
            });
        }
        Ok(PullResponse {
            ok: true,
            events: self.events,
            next_after_id,
            has_more,
            convergence: self.convergence,
            head: self.head,
            // Kept by the device and compared at every pull: only the brain's own form.
            epoch: self
                .epoch
                .filter(|e| e.len() == 16 && e.bytes().all(|b| b.is_ascii_hexdigit())),
        })
    }
}

impl BrainClient {
    /// `POST /webhook`: asks the brain to notify `url` of new events, signed with `secret`.
    pub fn register_webhook(
        &self,
        device_id: &str,
        url: &str,
        secret: &str,
    ) -> Result<i64, ClientError> {
        let body = WebhookRequest {
            device_id: device_id.to_owned(),
            webhook_url: url.to_owned(),
            secret: secret.to_owned(),
        };
        let request = self
            .request(reqwest::Method::POST, "/webhook", Duration::from_secs(30))
            .json(&body);
        let response: WebhookResponse = self.send("/webhook", request)?;
        Ok(response.webhook_id)
    }
}

/// Whether `base` is plain http:// to a host that is not loopback (`localhost`, 127.0.0.0/8,
/// `::1`): what a credential should not travel over.
fn plain_http_to_remote(base: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(base) else {
        return false;
    };
    if url.scheme() != "http" {
        return false;
    }
    let Some(host) = url.host_str() else {
        return true;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => !ip.is_loopback(),
        Err(_) => {
            let name = host.trim_end_matches('.').to_ascii_lowercase();
            name != "localhost" && !name.ends_with(".localhost")
        }
    }
}

/// Set once the plain-http warning is logged: once per process, not per client (the daemon
/// builds several).
static WARNED_PLAIN_HTTP: AtomicBool = AtomicBool::new(false);

/// Logs the plain-http warning unless this process did already; true when it logged.
fn warn_plain_http_once(base: &str) -> bool {
    if WARNED_PLAIN_HTTP.swap(true, Ordering::Relaxed) {
        return false;
    }
    tracing::warn!(brain = %base, "the brain's URL is plain http:// to a host that is not \
        loopback: the credential and the text of files travel unencrypted; use https://");
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(json: &str) -> PullPage {
        serde_json::from_str(json).expect("a pull page")
    }

    fn event_json(id: i64) -> String {
        format!(
            r#"{{"id": {id}, "event_ulid": "01HZX3K4M5N6P7Q8R9S0T1V2W{}", "device_id": "dev-a",
               "event_type": "upsert_file", "entity_type": "file", "entity_key": "/notes/{id}.md",
               "payload": {{"sha256": null}}, "vector_clock": {{"dev-a": {id}}},
               "created_at": "2026-01-01T00:00:00+00:00"}}"#,
            id % 10
        )
    }

    #[test]
    fn a_lib_v1_1_page_moves_the_cursor_to_its_last_event_and_has_more_when_full() {
        let two = format!(
            r#"{{"ok": true, "events": [{}, {}]}}"#,
            event_json(7),
            event_json(9)
        );
        let p = page(&two);
        assert!(p.is_legacy());
        let answer = p.into_response(5, 2).expect("a full page");
        assert_eq!((answer.next_after_id, answer.has_more), (9, true));

        let answer = page(&two).into_response(5, 200).expect("a short page");
        assert_eq!((answer.next_after_id, answer.has_more), (9, false));

        let empty = page(r#"{"ok": true, "events": []}"#).into_response(42, 200);
        let empty = empty.expect("an empty page");
        assert_eq!((empty.next_after_id, empty.has_more), (42, false));
    }

    #[test]
    fn lib_v1_1_caps_its_pages_at_500_so_500_events_are_a_full_page_whatever_was_asked() {
        let events: Vec<String> = (1..=500).map(event_json).collect();
        let json = format!(r#"{{"ok": true, "events": [{}]}}"#, events.join(","));
        let answer = page(&json).into_response(0, 2000).expect("a page");
        assert_eq!((answer.next_after_id, answer.has_more), (500, true));
    }

    #[test]
    fn the_brains_own_page_is_taken_as_it_says_but_more_must_move_the_cursor() {
        let own = page(r#"{"ok": true, "events": [], "next_after_id": 10, "has_more": false}"#);
        assert!(!own.is_legacy());
        let answer = own.into_response(10, 200).expect("a page");
        assert_eq!((answer.next_after_id, answer.has_more), (10, false));

        let stuck = page(r#"{"ok": true, "events": [], "next_after_id": 10, "has_more": true}"#);
        let err = stuck.into_response(10, 200).expect_err("no progress");
        assert!(err.to_string().contains("does not move past it"), "{err}");
    }

    fn status(status: u16) -> ClientError {
        ClientError::Status {
            route: "/ingest",
            status,
            message: String::new(),
        }
    }

    #[test]
    fn timeouts_throttling_server_errors_and_network_errors_are_retried() {
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(status(code).is_retryable(), "{code}");
            assert!(!status(code).is_refusal(), "{code}");
        }
        let network = ClientError::Network {
            url: "http://127.0.0.1:1".into(),
            reason: "connection refused".into(),
        };
        assert!(network.is_retryable());
        let certificate = ClientError::Certificate {
            url: "https://brain".into(),
            reason: "UnknownIssuer".into(),
        };
        assert!(certificate.is_retryable());
    }

    #[test]
    fn a_request_the_brain_refuses_is_not_retried() {
        for code in [400, 409, 413] {
            assert!(!status(code).is_retryable(), "{code}");
            assert!(status(code).is_refusal(), "{code}: split and park");
        }
        // A wrong secret is neither: the whole push stops until the secret is fixed.
        assert!(!status(401).is_retryable() && !status(401).is_refusal());
        let garbled = ClientError::Protocol {
            route: "/ingest",
            reason: "expected value".into(),
        };
        assert!(!garbled.is_retryable());
        assert!(status(410).is_cursor_pruned() && !status(410).is_retryable());
        let redirect = ClientError::Redirect {
            route: "/pull",
            status: 307,
            location: "\"http://elsewhere/\"".into(),
        };
        assert!(!redirect.is_retryable() && !redirect.is_refusal());
        let large = ClientError::TooLarge {
            route: "/pull",
            cap: MAX_ANSWER_BYTES,
        };
        assert!(!large.is_retryable() && !large.is_refusal());
    }

    #[test]
    fn plain_http_is_fine_to_loopback_only() {
        for remote in [
            "http://brain.example.com",
            "http://192.168.1.10:8787",
            "http://10.0.0.1",
            "http://[fe80::1]:80",
            "http://localhost.example.com",
        ] {
            assert!(plain_http_to_remote(remote), "{remote}");
        }
        for fine in [
            "http://127.0.0.1:8787",
            "http://127.8.9.1",
            "http://localhost:8787",
            "http://LOCALHOST.",
            "http://brain.localhost",
            "http://[::1]:8787",
            "https://brain.example.com",
        ] {
            assert!(!plain_http_to_remote(fine), "{fine}");
        }
    }

    #[test]
    fn the_plain_http_warning_is_logged_once_per_process() {
        // Whichever call came first in this process logged it; none after does.
        warn_plain_http_once("http://brain.example.com");
        assert!(!warn_plain_http_once("http://brain.example.com"));
        assert!(!warn_plain_http_once("http://other.example.com"));
    }

    #[test]
    fn debug_of_a_client_shows_no_credential() {
        let token = "tok-1234567890abcdef";
        let credential = Credential::Device {
            token: token.into(),
            device_id: "dev-a".into(),
        };
        let client =
            BrainClient::with_credential("http://127.0.0.1:9", credential, &ExtraRoots::none())
                .expect("client");
        let shown = format!("{client:?}");
        assert!(!shown.contains(token) && shown.contains("dev-a"), "{shown}");
        let client = BrainClient::new("http://127.0.0.1:9", Some("s3cret".into())).expect("client");
        assert!(!format!("{client:?}").contains("s3cret"));
    }

    #[test]
    fn a_token_that_cannot_be_a_header_is_refused_before_anything_is_sent() {
        let credential = Credential::Device {
            token: "bad\ntoken".into(),
            device_id: "dev-a".into(),
        };
        let err =
            BrainClient::with_credential("http://127.0.0.1:9", credential, &ExtraRoots::none())
                .expect_err("refused");
        assert!(matches!(err, ClientError::BadToken(_)), "{err}");
        assert!(!err.to_string().contains("bad\ntoken"), "{err}");
    }
}

//! The brain's HTTP client: one method per route, errors classified so callers know whether to
//! retry (network, 5xx, 408, 429) or not (the brain refused the request as invalid).
//!
//! http:// and https:// both work: TLS is rustls (ring) trusting the web PKI roots, plus the
//! certificates of `[sync] brain_ca_file` / `LIB_BRAIN_CA_FILE` for a brain behind a private CA
//! (see [`crate::tls`]).

use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::config::{SyncConfig, ENV_BRAIN_CA_FILE};
use crate::model::wire::{
    ErrorBody, IngestRequest, IngestResponse, IngestResult, PullResponse, SnapshotResponse,
    WebhookRequest, WebhookResponse, SECRET_HEADER,
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
}

impl ClientError {
    /// Worth retrying later with the same request: the brain may be down or busy.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Network { .. } | ClientError::Certificate { .. } => true,
            ClientError::Status { status, .. } => {
                *status >= 500 || *status == 408 || *status == 429
            }
            ClientError::CaFile(_) | ClientError::Protocol { .. } => false,
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

pub struct BrainClient {
    http: reqwest::blocking::Client,
    base: String,
    secret: Option<String>,
}

impl std::fmt::Debug for BrainClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrainClient")
            .field("base", &self.base)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl BrainClient {
    /// A client of the brain at `base` (http:// or https://), trusting the web PKI roots.
    pub fn new(base: &str, secret: Option<String>) -> Result<BrainClient, ClientError> {
        BrainClient::with_roots(base, secret, &ExtraRoots::none())
    }

    /// The client the configuration describes: the secret and the extra CA file of `sync`.
    pub fn from_config(base: &str, sync: &SyncConfig) -> Result<BrainClient, ClientError> {
        let roots = match &sync.brain_ca_file {
            Some(file) => ExtraRoots::load(file)?,
            None => ExtraRoots::none(),
        };
        BrainClient::with_roots(base, sync.secret.clone(), &roots)
    }

    /// A client that trusts `roots` besides the web PKI roots.
    pub fn with_roots(
        base: &str,
        secret: Option<String>,
        roots: &ExtraRoots,
    ) -> Result<BrainClient, ClientError> {
        let mut builder =
            reqwest::blocking::Client::builder().connect_timeout(Duration::from_secs(5));
        for cert in roots.certificates() {
            builder = builder.add_root_certificate(cert);
        }
        let http = builder.build().map_err(|e| ClientError::Network {
            url: base.to_owned(),
            reason: tls::one_line(&e),
        })?;
        Ok(BrainClient {
            http,
            base: base.trim_end_matches('/').to_owned(),
            secret,
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
        if let Some(secret) = &self.secret {
            request = request.header(SECRET_HEADER, secret);
        }
        request
    }

    fn send<T: DeserializeOwned>(
        &self,
        route: &'static str,
        request: reqwest::blocking::RequestBuilder,
    ) -> Result<T, ClientError> {
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
        let body = response.bytes().map_err(network)?;
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
        serde_json::from_slice(&body).map_err(|e| ClientError::Protocol {
            route,
            reason: e.to_string(),
        })
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
    ) -> Result<PullResponse, ClientError> {
        let mut path = format!("/pull?after_id={after_id}&limit={limit}");
        let mut timeout = Duration::from_secs(60);
        if let Some(wait) = wait {
            path.push_str(&format!("&wait_ms={}", wait.as_millis()));
            timeout += wait;
        }
        self.send("/pull", self.request(reqwest::Method::GET, &path, timeout))
    }

    /// `GET /snapshot`, one page of current entities after `after_key`.
    pub fn snapshot(&self, after_key: &str, limit: usize) -> Result<SnapshotResponse, ClientError> {
        let request = self
            .request(reqwest::Method::GET, "/snapshot", Duration::from_secs(60))
            .query(&[("after_key", after_key), ("limit", &limit.to_string())]);
        self.send("/snapshot", request)
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

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}

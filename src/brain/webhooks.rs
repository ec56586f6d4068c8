//! Webhook notifications: after an ingest that inserted events, every active webhook gets
//! `{"event": "new_events", "after_id": N, "timestamp": ...}`, signed, in the background, with a
//! 5 s timeout. A failure is logged and counted, never retried: the device's periodic sync (or its
//! long-poll) catches up anyway.
//!
//! [`sign`] and [`verify`] are the one implementation of the signature; the agent's listener
//! verifies with [`verify`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use sha2::Sha256;

use super::metrics::Metrics;
use super::store::{unix_seconds, BrainStore, Webhook};
use crate::model::event::now_rfc3339;
use crate::model::wire::{WebhookNotification, SIGNATURE_HEADER};

pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);
/// A notification whose timestamp is further than this from the listener's clock is refused.
pub const MAX_SKEW_SECS: i64 = 300;

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length.
    let mut mac =
        HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `x-lib-signature` header value: `t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = mac(secret, timestamp, body).finalize().into_bytes();
    format!("t={timestamp},v1={}", hex::encode(tag))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("signature header is malformed (expected t=<unix>,v1=<hex>)")]
    Malformed,
    #[error(
        "signature timestamp is {skew_secs} s away from now (at most {MAX_SKEW_SECS} s allowed)"
    )]
    Stale { skew_secs: i64 },
    #[error("signature does not match")]
    Mismatch,
}

/// Checks a signature header against the body, in constant time, and its timestamp against `now`.
pub fn verify(
    secret: &str,
    header: &str,
    body: &[u8],
    now: SystemTime,
) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut tags = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", v)) => tags.push(hex::decode(v).map_err(|_| SignatureError::Malformed)?),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if tags.is_empty() {
        return Err(SignatureError::Malformed);
    }
    let skew = (unix_seconds(now) - timestamp).abs();
    if skew > MAX_SKEW_SECS {
        return Err(SignatureError::Stale { skew_secs: skew });
    }
    // verify_slice compares in constant time.
    if tags
        .iter()
        .any(|tag| mac(secret, timestamp, body).verify_slice(tag).is_ok())
    {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// Sends notifications. One client, so connections to a listener are reused.
#[derive(Clone)]
pub struct Notifier {
    client: Client<HttpConnector, Full<Bytes>>,
    metrics: Arc<Metrics>,
}

impl Notifier {
    pub fn new(metrics: Arc<Metrics>) -> Notifier {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(DELIVERY_TIMEOUT));
        Notifier {
            client: Client::builder(TokioExecutor::new()).build(connector),
            metrics,
        }
    }

    /// Notifies every active webhook that events after `after_id` exist. Returns at once: the
    /// deliveries run in the background.
    pub fn notify_all<S: BrainStore>(&self, store: Arc<S>, after_id: i64) {
        let this = self.clone();
        tokio::spawn(async move {
            let hooks = match store.active_webhooks().await {
                Ok(hooks) => hooks,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list webhooks; no notification sent");
                    return;
                }
            };
            for hook in hooks {
                let this = this.clone();
                tokio::spawn(async move { this.deliver(&hook, after_id).await });
            }
        });
    }

    async fn deliver(&self, hook: &Webhook, after_id: i64) {
        let notification = WebhookNotification {
            event: "new_events".into(),
            after_id,
            timestamp: now_rfc3339(),
        };
        let body = serde_json::to_vec(&notification).unwrap_or_default();
        let signature = sign(&hook.secret, unix_seconds(SystemTime::now()), &body);
        let request = match axum::http::Request::post(&hook.url)
            .header("content-type", "application/json")
            .header(SIGNATURE_HEADER, signature)
            .body(Full::new(Bytes::from(body)))
        {
            Ok(r) => r,
            Err(e) => {
                Metrics::add(&self.metrics.webhook_failures, 1);
                tracing::warn!(device_id = %hook.device_id, url = %hook.url, error = %e, "webhook URL unusable");
                return;
            }
        };
        let outcome = tokio::time::timeout(DELIVERY_TIMEOUT, self.client.request(request)).await;
        match outcome {
            Ok(Ok(response)) if response.status().is_success() => {
                Metrics::add(&self.metrics.webhook_deliveries, 1);
                tracing::debug!(device_id = %hook.device_id, after_id, "webhook delivered");
            }
            Ok(Ok(response)) => {
                Metrics::add(&self.metrics.webhook_failures, 1);
                tracing::warn!(device_id = %hook.device_id, url = %hook.url, status = %response.status(), "webhook refused");
            }
            Ok(Err(e)) => {
                Metrics::add(&self.metrics.webhook_failures, 1);
                tracing::warn!(device_id = %hook.device_id, url = %hook.url, error = %e, "webhook delivery failed");
            }
            Err(_) => {
                Metrics::add(&self.metrics.webhook_failures, 1);
                tracing::warn!(device_id = %hook.device_id, url = %hook.url, "webhook delivery timed out after 5 s");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Computed independently (Python's hmac module), so a listener in any language agrees.
        let body = br#"{"event":"new_events","after_id":41,"timestamp":"2026-11-25T10:00:00Z"}"#;
        assert_eq!(
            sign("whsec_test", 1_732_500_000, body),
            "t=1732500000,v1=b6c021af2257636f779522751f596a2c8f2188cdfa8cf4063a85546b9c5342cb"
        );
    }

    #[test]
    fn a_signature_verifies_with_its_secret_body_and_time_only() {
        let now = SystemTime::now();
        let t = unix_seconds(now);
        let header = sign("s3cret", t, b"{\"a\":1}");
        assert!(header.starts_with(&format!("t={t},v1=")));
        assert_eq!(verify("s3cret", &header, b"{\"a\":1}", now), Ok(()));
        assert_eq!(
            verify("other", &header, b"{\"a\":1}", now),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify("s3cret", &header, b"{\"a\":2}", now),
            Err(SignatureError::Mismatch)
        );
        let later = now + Duration::from_secs(301);
        assert!(matches!(
            verify("s3cret", &header, b"{\"a\":1}", later),
            Err(SignatureError::Stale { .. })
        ));
        assert_eq!(
            verify("s3cret", "v1=00", b"", now),
            Err(SignatureError::Malformed)
        );
    }
}

//! Webhook notifications: after an ingest that inserted events, every active webhook gets
//! `{"event": "new_events", "after_id": N, "timestamp": ...}`, signed, in the background, with a
//! 5 s timeout. A failure is logged and counted, never retried: the device's periodic sync (or its
//! long-poll) catches up anyway.
//!
//! A webhook URL may be http:// or https://; TLS is the agent's own stack ([`crate::tls`]):
//! rustls (ring) with the web PKI roots, plus the operator's extra CA certificates if any.
//!
//! [`sign`] and [`verify`] are the one implementation of the signature; the agent's listener
//! verifies with [`verify`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::metrics::Metrics;
use super::store::{unix_seconds, BrainStore, Webhook};
use crate::model::event::now_rfc3339;
use crate::model::wire::{WebhookNotification, SIGNATURE_HEADER};
use crate::tls::ExtraRoots;

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

/// Where and how the brain may deliver notifications (DESIGN.md "Trust", webhooks).
#[derive(Clone, Debug, Default)]
pub struct WebhookPolicy {
    /// Deliver to loopback, private, link-local and other non-public addresses too
    /// (`--webhook-allow-private`: a brain and its devices on one LAN, and tests).
    pub allow_private: bool,
}

/// Sends notifications. One client, so connections to a listener are reused.
#[derive(Clone)]
pub struct Notifier {
    client: reqwest::Client,
    metrics: Arc<Metrics>,
}

impl Notifier {
    /// `roots`: certificates trusted for https:// webhook URLs besides the web PKI roots.
    pub fn new(metrics: Arc<Metrics>, roots: &ExtraRoots) -> Notifier {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(DELIVERY_TIMEOUT)
            // A notification goes to the URL the device registered and nowhere else: not through
            // a proxy from the server's environment, and not on to wherever a redirect points
            // (a 3xx counts as refused).
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none());
        for cert in roots.certificates() {
            builder = builder.add_root_certificate(cert);
        }
        // Building can only fail on a root certificate rustls refuses, and ExtraRoots checked
        // each one with rustls's own test when it was loaded.
        let client = builder
            .build()
            .expect("the webhook client's settings and roots are valid");
        Notifier { client, metrics }
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
        let url = match reqwest::Url::parse(&hook.url) {
            Ok(url) => url,
            Err(e) => {
                Metrics::add(&self.metrics.webhook_failures, 1);
                tracing::warn!(device_id = %hook.device_id, url = %hook.url, error = %e, "webhook URL unusable");
                return;
            }
        };
        let request = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature)
            .body(body)
            .send();
        let outcome = tokio::time::timeout(DELIVERY_TIMEOUT, request).await;
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
                let error =
                    crate::tls::certificate_error(&e).unwrap_or_else(|| crate::tls::one_line(&e));
                tracing::warn!(device_id = %hook.device_id, url = %hook.url, %error, "webhook delivery failed");
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

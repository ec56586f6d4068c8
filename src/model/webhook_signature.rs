//! The signature of webhook notifications (DESIGN.md "Wire protocol"): the brain signs each
//! delivery with [`sign`], the agent's listener checks it with [`verify`]. One implementation
//! for both ends, here in `model/` so that the agent does not depend on the brain's server.

use std::time::SystemTime;

use hmac::{Hmac, Mac};
use sha2::Sha256;

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
    // The timestamp is the sender's: any i64. The distance saturates instead of overflowing.
    let skew = unix_seconds(now)
        .checked_sub(timestamp)
        .and_then(i64::checked_abs)
        .unwrap_or(i64::MAX);
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

/// `SystemTime` as whole Unix seconds (before the epoch: negative).
fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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

    #[test]
    fn the_freshness_check_cannot_overflow_for_extreme_timestamps() {
        let now = SystemTime::now();
        for t in [i64::MIN, i64::MIN + 1, i64::MAX, -1] {
            let header = format!("t={t},v1=00");
            assert!(
                matches!(
                    verify("s3cret", &header, b"{}", now),
                    Err(SignatureError::Stale { skew_secs }) if skew_secs > MAX_SKEW_SECS
                ),
                "t={t}"
            );
        }
    }
}

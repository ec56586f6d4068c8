//! Who a request acts for (DESIGN.md "Trust"): a device token bound to one device id, LIB v1.1's
//! shared secret, or nobody (`--insecure-no-auth`). The server's middleware asks [`Auth::check`]
//! before it reads a body; the handlers then hold a [`Caller`] and refuse what it may not do.
//!
//! Failed attempts are counted, logged at a bounded rate and throttled per client address in a
//! table of bounded size, so a flood of wrong tokens costs the brain little and says so once a
//! second, not once a request.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::metrics::Metrics;
use super::store::{unix_seconds, Binding, BrainStore, DeviceSeen};
use super::BrainError;
use crate::model::wire::{DEVICE_ID_HEADER, SECRET_HEADER};

/// Failed authentications from one address within [`FAILURE_WINDOW`] before it gets 429.
pub const MAX_FAILURES: u32 = 20;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at most; beyond, the oldest windows make room.
const MAX_TRACKED: usize = 10_000;
/// A device's last request is written at most this often.
pub const SEEN_EVERY: Duration = Duration::from_secs(5);

/// Who a request acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A device token, bound to `device_id`.
    Device {
        name: String,
        device_id: String,
        token_sha256: String,
    },
    /// LIB v1.1's shared secret: may act for any device.
    SharedSecret,
    /// `--insecure-no-auth`: no credential at all.
    Anonymous,
}

impl Caller {
    /// Whether this caller may act for `device_id`: a device only for itself.
    pub fn may_act_for(&self, device_id: &str) -> bool {
        match self {
            Caller::Device { device_id: own, .. } => own == device_id,
            Caller::SharedSecret | Caller::Anonymous => true,
        }
    }

    /// The key its long-polls are counted under: the device, or the address it came from.
    pub fn poll_key(&self, client: IpAddr) -> String {
        match self {
            Caller::Device { name, .. } => format!("device {name}"),
            Caller::SharedSecret | Caller::Anonymous => format!("address {client}"),
        }
    }
}

/// The credentials a brain accepts.
#[derive(Clone, Default)]
pub struct Credentials {
    /// sha256 of `LIB_SYNC_SECRET` and of `LIB_SYNC_SECRET_PREVIOUS`: comparing digests in
    /// constant time leaks neither bytes nor length.
    shared: Vec<[u8; 32]>,
    /// No credential needed (`--insecure-no-auth`).
    open: bool,
}

impl Credentials {
    /// `secrets`: the shared secrets accepted (none: device tokens only, `--no-shared-secret`).
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>, open: bool) -> Credentials {
        Credentials {
            shared: secrets
                .into_iter()
                .filter(|s| !s.is_empty())
                .map(|s| Sha256::digest(s.as_bytes()).into())
                .collect(),
            open,
        }
    }

    fn shared_secret_matches(&self, given: &[u8]) -> bool {
        // Every candidate is compared, so timing does not say which one matched.
        self.shared.iter().fold(false, |found, expected| {
            found | digest_matches(expected, given)
        })
    }
}

/// Whether `given` hashes to `expected`, compared in constant time: comparing digests leaks
/// neither the secret's bytes nor its length.
pub fn digest_matches(expected: &[u8; 32], given: &[u8]) -> bool {
    bool::from(Sha256::digest(given).as_slice().ct_eq(expected.as_slice()))
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 401: no credential, or one the brain does not accept.
    Unauthorized(String),
    /// 403: a valid token acting for another device.
    Forbidden(String),
    /// 429: this address failed too often.
    Throttled { retry_after: Duration },
    /// The store could not say.
    Store(BrainError),
}

/// Authentication state shared by every request of one server.
pub struct Auth {
    credentials: Credentials,
    trusted_proxies: Vec<IpAddr>,
    failures: Mutex<HashMap<IpAddr, Window>>,
    log: RateLimitedLog,
    seen: Mutex<HashMap<String, Seen>>,
    metrics: Arc<Metrics>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

/// A device's latest request: written when `dirty` and [`SEEN_EVERY`] passed since the last write.
struct Seen {
    latest: DeviceSeen,
    dirty: bool,
}

impl Auth {
    pub fn new(
        credentials: Credentials,
        trusted_proxies: Vec<IpAddr>,
        metrics: Arc<Metrics>,
    ) -> Auth {
        Auth {
            credentials,
            trusted_proxies,
            failures: Mutex::new(HashMap::new()),
            log: RateLimitedLog::default(),
            seen: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    pub fn is_open(&self) -> bool {
        self.credentials.open
    }

    /// The address a request came from: the peer, or, when the peer is a trusted proxy, the
    /// last address of `X-Forwarded-For` (the one the proxy itself added).
    pub fn client_address(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> IpAddr {
        let peer = peer.map_or(IpAddr::from([0, 0, 0, 0]), |p| p.ip());
        if !self.trusted_proxies.contains(&peer) {
            return peer;
        }
        headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| a.trim().parse::<IpAddr>().ok())
            .next_back()
            .unwrap_or(peer)
    }

    /// Checks a request's credential. A device token's first request binds it to the device id
    /// it names.
    pub async fn check<S: BrainStore>(
        &self,
        store: &S,
        client: IpAddr,
        headers: &HeaderMap,
    ) -> Result<Caller, Refusal> {
        if let Some(retry_after) = self.throttled_for(client) {
            Metrics::add(&self.metrics.auth_throttled, 1);
            return Err(Refusal::Throttled { retry_after });
        }
        let outcome = self.identify(store, headers).await;
        match &outcome {
            Err(Refusal::Unauthorized(reason) | Refusal::Forbidden(reason)) => {
                Metrics::add(&self.metrics.auth_failures, 1);
                self.note_failure(client);
                self.log.warn(client, reason);
            }
            Ok(_) | Err(Refusal::Throttled { .. } | Refusal::Store(_)) => {}
        }
        outcome
    }

    async fn identify<S: BrainStore>(
        &self,
        store: &S,
        headers: &HeaderMap,
    ) -> Result<Caller, Refusal> {
        if let Some(authorization) = headers.get(axum::http::header::AUTHORIZATION) {
            let token = authorization
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    Refusal::Unauthorized("Authorization is not `Bearer <device token>`".into())
                })?;
            return self.device(store, token, headers).await;
        }
        if let Some(secret) = headers.get(SECRET_HEADER) {
            if self.credentials.shared_secret_matches(secret.as_bytes()) {
                return Ok(Caller::SharedSecret);
            }
            return Err(Refusal::Unauthorized(
                if self.credentials.shared.is_empty() {
                    format!(
                    "this brain does not accept {SECRET_HEADER} (it runs with --no-shared-secret): \
                     enrol the device with `agent brain device add NAME` and set LIB_DEVICE_TOKEN"
                )
                } else {
                    format!("wrong {SECRET_HEADER}")
                },
            ));
        }
        if self.credentials.open {
            return Ok(Caller::Anonymous);
        }
        Err(Refusal::Unauthorized(format!(
            "no credential: send `Authorization: Bearer <device token>` with {DEVICE_ID_HEADER}, \
             or {SECRET_HEADER}"
        )))
    }

    async fn device<S: BrainStore>(
        &self,
        store: &S,
        token: &str,
        headers: &HeaderMap,
    ) -> Result<Caller, Refusal> {
        let device_id = headers
            .get(DEVICE_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Refusal::Unauthorized(format!(
                    "a device token needs the {DEVICE_ID_HEADER} header"
                ))
            })?;
        if !crate::model::event::is_device_id(device_id) {
            return Err(Refusal::Unauthorized(format!(
                "{DEVICE_ID_HEADER} {device_id:?} is not a device id (1 to 128 letters, digits, \
                 `.`, `_` or `-`)"
            )));
        }
        let token_sha256 = hash_token(token);
        let now = unix_seconds(SystemTime::now());
        let found = store
            .authenticate(&token_sha256, now)
            .await
            .map_err(Refusal::Store)?
            .ok_or_else(|| Refusal::Unauthorized("unknown or revoked device token".into()))?;
        match &found.device_id {
            Some(bound) if bound == device_id => {}
            Some(bound) => return Err(wrong_device(&found.name, bound, device_id)),
            None => match store
                .bind_device(&found.name, device_id)
                .await
                .map_err(Refusal::Store)?
            {
                Binding::Bound => {
                    tracing::info!(device = %found.name, device_id, "device token bound to its device id");
                }
                Binding::OtherId(bound) => {
                    return Err(wrong_device(&found.name, &bound, device_id))
                }
                Binding::Taken { by } => {
                    return Err(Refusal::Forbidden(format!(
                        "device id {device_id} belongs to enrolled device {by:?}, not to {:?}",
                        found.name
                    )))
                }
                Binding::Gone => {
                    return Err(Refusal::Unauthorized(
                        "unknown or revoked device token".into(),
                    ))
                }
            },
        }
        Ok(Caller::Device {
            name: found.name,
            device_id: device_id.to_owned(),
            token_sha256,
        })
    }

    /// Whether a device's token still works (a long-poll checks while it waits: a revocation
    /// ends it).
    pub async fn still_valid<S: BrainStore>(&self, store: &S, caller: &Caller) -> bool {
        let Caller::Device {
            token_sha256, name, ..
        } = caller
        else {
            return true;
        };
        let now = unix_seconds(SystemTime::now());
        match store.authenticate(token_sha256, now).await {
            Ok(found) => found.is_some_and(|f| &f.name == name),
            // The store is down: the pull's own read will say so; do not end it for that.
            Err(_) => true,
        }
    }

    fn throttled_for(&self, client: IpAddr) -> Option<Duration> {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let window = failures.get(&client)?;
        let age = window.started.elapsed();
        (window.failures >= MAX_FAILURES && age < FAILURE_WINDOW).then(|| FAILURE_WINDOW - age)
    }

    fn note_failure(&self, client: IpAddr) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if failures.len() >= MAX_TRACKED && !failures.contains_key(&client) {
            failures.retain(|_, w| w.started.elapsed() < FAILURE_WINDOW);
            if failures.len() >= MAX_TRACKED {
                // Still full of live windows: an attack from many addresses. Forget the oldest.
                if let Some(oldest) = failures
                    .iter()
                    .min_by_key(|(_, w)| w.started)
                    .map(|(ip, _)| *ip)
                {
                    failures.remove(&oldest);
                }
            }
        }
        let window = failures.entry(client).or_insert(Window {
            started: Instant::now(),
            failures: 0,
        });
        if window.started.elapsed() >= FAILURE_WINDOW {
            *window = Window {
                started: Instant::now(),
                failures: 0,
            };
        }
        window.failures = window.failures.saturating_add(1);
    }

    /// Notes a device's request; [`Auth::due_seen`] hands out what is due for writing.
    pub fn note_seen(&self, seen: DeviceSeen) {
        let mut all = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match all.get_mut(&seen.name) {
            Some(entry) => {
                let latest = &mut entry.latest;
                latest.at = seen.at;
                latest.cursor = seen.cursor.or(latest.cursor);
                latest.digest = seen.digest.or(latest.digest.take());
                latest.pending = seen.pending.or(latest.pending);
                entry.dirty = true;
            }
            None => {
                all.insert(
                    seen.name.clone(),
                    Seen {
                        latest: seen,
                        dirty: true,
                    },
                );
            }
        }
    }

    /// The devices' latest requests not written yet, marked written.
    pub fn due_seen(&self) -> Vec<DeviceSeen> {
        let mut all = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        all.values_mut()
            .filter(|s| s.dirty)
            .map(|s| {
                s.dirty = false;
                s.latest.clone()
            })
            .collect()
    }
}

fn wrong_device(name: &str, bound: &str, given: &str) -> Refusal {
    Refusal::Forbidden(format!(
        "the token of device {name:?} is bound to device id {bound}, not {given}; a reinstalled \
         device gets a new binding with `agent brain device rotate {name}`"
    ))
}

/// Writes the devices' latest requests every `every` until `stop` flips, then once more.
pub async fn record_seen_loop<S: BrainStore>(
    auth: Arc<Auth>,
    store: Arc<S>,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let stopping = tokio::select! {
            _ = ticker.tick() => false,
            _ = stop.changed() => true,
        };
        let due = auth.due_seen();
        if !due.is_empty() {
            if let Err(e) = store.record_seen(due).await {
                tracing::warn!(error = %e, "cannot record devices' last requests");
            }
        }
        if stopping || *stop.borrow() {
            return;
        }
    }
}

/// A warning at most once a second, saying how many were held back meanwhile.
#[derive(Default)]
struct RateLimitedLog {
    last_second: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimitedLog {
    fn warn(&self, client: IpAddr, reason: &str) {
        let now = unix_seconds(SystemTime::now()).max(0) as u64;
        let last = self.last_second.load(Ordering::Relaxed);
        if now > last
            && self
                .last_second
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
            tracing::warn!(%client, suppressed, "authentication failed: {reason}");
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A new device token: 32 random bytes from the operating system, as 64 hex digits behind a
/// prefix that says what it is (found in a log or a dotfile, it is recognisable).
pub fn new_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!("libdev_{}", hex::encode(bytes)))
}

/// The sha256 of a token, as stored.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.trim().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn the_shared_secret_and_the_previous_one_both_match_and_nothing_else() {
        let c = Credentials::new(["new-secret", "old-secret"], false);
        assert!(c.shared_secret_matches(b"new-secret"));
        assert!(c.shared_secret_matches(b"old-secret"));
        assert!(!c.shared_secret_matches(b"new-secre"));
        assert!(!Credentials::new([""], false).shared_secret_matches(b""));
    }

    #[test]
    fn forwarded_for_counts_only_from_a_trusted_proxy_and_its_last_entry_wins() {
        let proxy: SocketAddr = "10.0.0.5:443".parse().unwrap();
        let auth = Auth::new(Credentials::default(), vec![proxy.ip()], Arc::default());
        let h = headers(&[("x-forwarded-for", "1.2.3.4, 5.6.7.8")]);
        assert_eq!(
            auth.client_address(Some(proxy), &h),
            "5.6.7.8".parse::<IpAddr>().unwrap()
        );
        let other: SocketAddr = "10.0.0.6:443".parse().unwrap();
        assert_eq!(auth.client_address(Some(other), &h), other.ip());
        let junk = headers(&[("x-forwarded-for", "not an address")]);
        assert_eq!(auth.client_address(Some(proxy), &junk), proxy.ip());
    }

    #[test]
    fn an_address_is_throttled_after_its_failures_and_the_table_stays_bounded() {
        let auth = Auth::new(Credentials::default(), vec![], Arc::default());
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..MAX_FAILURES - 1 {
            auth.note_failure(client);
        }
        assert_eq!(auth.throttled_for(client), None);
        auth.note_failure(client);
        assert!(auth.throttled_for(client).is_some());
        for i in 0..(MAX_TRACKED as u32 + 50) {
            auth.note_failure(IpAddr::from((i + 1).to_be_bytes()));
        }
        assert!(auth.failures.lock().unwrap().len() <= MAX_TRACKED);
    }

    #[test]
    fn a_devices_requests_are_written_once_per_flush_with_the_latest_values() {
        let auth = Auth::new(Credentials::default(), vec![], Arc::default());
        let seen = |at, cursor| DeviceSeen {
            name: "laptop".into(),
            at,
            cursor,
            digest: None,
            pending: None,
        };
        auth.note_seen(seen(1, Some(5)));
        auth.note_seen(seen(2, None));
        auth.note_seen(seen(3, Some(9)));
        let due = auth.due_seen();
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].at, due[0].cursor), (3, Some(9)));
        assert!(auth.due_seen().is_empty(), "written already");
    }

    #[test]
    fn tokens_are_long_random_and_stored_as_their_hash() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("libdev_") && a.len() == 7 + 64);
        assert_eq!(hash_token(&a).len(), 64);
        assert_eq!(hash_token(&format!("{a}\n")), hash_token(&a));
    }
}

//! Webhook notifications: after an ingest that inserted events, every active webhook gets
//! `{"event": "new_events", "after_id": N, "timestamp": ...}`, signed, in the background, with a
//! 5 s timeout. The device's periodic sync (or its long-poll) catches up whatever a lost
//! notification missed, so delivery is best effort, and bounded (DESIGN.md "Trust", webhooks):
//!
//! - [`check_registration`] caps what a device may register;
//! - at every delivery the host is resolved ([`WebhookPolicy::resolver`]) and each address
//!   classified ([`classify`]); only the addresses that pass are handed to the HTTP client, whose
//!   own resolver answers from them and never looks up a name itself, so a second lookup cannot
//!   swap in another address (DNS rebinding);
//! - at most [`MAX_CONCURRENT_DELIVERIES`] run at once, and a device has at most one delivery in
//!   flight and one pending: a newer notification replaces the pending one, keeping the smallest
//!   `after_id` not yet delivered;
//! - a failing URL backs off ([`backoff_delay`], 5 s doubling to 1 h), recorded in the store so
//!   that every brain instance and `device list` see it.
//!
//! A webhook URL may be http:// or https://; TLS is the agent's own stack ([`crate::tls`]):
//! rustls (ring) with the web PKI roots, plus the operator's extra CA certificates if any.
//!
//! The signature is [`crate::model::webhook_signature`]'s, shared with the agent's listener; it
//! is re-exported here for the brain's callers.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Semaphore;

use super::metrics::Metrics;
use super::store::{unix_seconds, BrainStore, DeliveryFailure, Webhook};
use super::BrainError;
use crate::model::event::now_rfc3339;
use crate::model::wire::{
    WebhookNotification, WebhookRequest, LEGACY_WEBHOOK_SECRET_HEADER, SIGNATURE_HEADER,
};
use crate::tls::ExtraRoots;

pub use crate::model::webhook_signature::{sign, verify, SignatureError, MAX_SKEW_SECS};

pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest webhook URL accepted, in bytes.
pub const MAX_URL_BYTES: usize = 2048;
/// A webhook secret's length, in bytes (when one is given).
pub const SECRET_BYTES: std::ops::RangeInclusive<usize> = 16..=256;
/// Deliveries in flight at once, all devices together.
pub const MAX_CONCURRENT_DELIVERIES: usize = 16;
/// The first back-off after a failed delivery; each further failure doubles it, up to
/// [`BACKOFF_MAX`].
pub const BACKOFF_FIRST: Duration = Duration::from_secs(5);
pub const BACKOFF_MAX: Duration = Duration::from_secs(3600);
/// At most one warning of a kind (refusal, failure) per this long; the others are counted.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// What a device may register: a URL of at most [`MAX_URL_BYTES`], http:// or https:// with a
/// host, and a secret of [`SECRET_BYTES`]. Only a caller with the shared secret (a LIB v1.1
/// client) may give none: its deliveries are unsigned.
pub fn check_registration(
    request: &WebhookRequest,
    via_shared_secret: bool,
) -> Result<(), BrainError> {
    let url = &request.webhook_url;
    if url.len() > MAX_URL_BYTES {
        return Err(BrainError::Invalid(format!(
            "webhook_url is {} bytes long (at most {MAX_URL_BYTES})",
            url.len()
        )));
    }
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| BrainError::Invalid(format!("webhook_url {url:?} is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none_or(str::is_empty) {
        return Err(BrainError::Invalid(format!(
            "webhook_url {url:?} must be an http:// or https:// URL with a host"
        )));
    }
    let secret = request.secret.len();
    if secret == 0 && !via_shared_secret {
        return Err(BrainError::Invalid(format!(
            "secret is missing: notifications are signed with it ({} to {} bytes)",
            SECRET_BYTES.start(),
            SECRET_BYTES.end()
        )));
    }
    if secret != 0 && !SECRET_BYTES.contains(&secret) {
        return Err(BrainError::Invalid(format!(
            "secret is {secret} bytes long (from {} to {} bytes)",
            SECRET_BYTES.start(),
            SECRET_BYTES.end()
        )));
    }
    Ok(())
}

/// Why an address is no place to deliver to, or that it is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// A public unicast address: delivered to.
    Public,
    /// Loopback, private, link-local, shared or reserved: delivered to only with
    /// `--webhook-allow-private`. The name says which.
    NonPublic(&'static str),
    /// Unspecified, multicast or broadcast: never a listener, refused always.
    Never(&'static str),
}

/// Classifies an address for delivery. IPv4 addresses embedded in IPv6 (mapped, compatible,
/// NAT64, 6to4) are judged by the IPv4 address they reach.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    use AddressClass::{Never, NonPublic, Public};
    let [a, b, c, _] = ip.octets();
    if ip.is_unspecified() {
        return Never("unspecified");
    }
    if ip.is_broadcast() {
        return Never("broadcast");
    }
    if ip.is_multicast() {
        return Never("multicast");
    }
    match (a, b, c) {
        (0, _, _) => NonPublic("\"this network\" (0.0.0.0/8)"),
        (10, _, _) => NonPublic("private (10.0.0.0/8)"),
        (100, 64..=127, _) => NonPublic("carrier-grade NAT (100.64.0.0/10)"),
        (127, _, _) => NonPublic("loopback"),
        (169, 254, _) => NonPublic("link-local (169.254.0.0/16)"),
        (172, 16..=31, _) => NonPublic("private (172.16.0.0/12)"),
        (192, 0, 0) => NonPublic("IETF protocol assignments (192.0.0.0/24)"),
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => NonPublic("documentation"),
        (192, 88, 99) => NonPublic("6to4 relay anycast (192.88.99.0/24)"),
        (192, 168, _) => NonPublic("private (192.168.0.0/16)"),
        (198, 18..=19, _) => NonPublic("benchmarking (198.18.0.0/15)"),
        (240..=255, _, _) => NonPublic("reserved (240.0.0.0/4)"),
        _ => Public,
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    use AddressClass::{Never, NonPublic, Public};
    let s = ip.segments();
    let embedded =
        |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if ip.is_unspecified() {
        return Never("unspecified");
    }
    if ip.is_loopback() {
        return NonPublic("loopback");
    }
    if ip.is_multicast() {
        return Never("multicast");
    }
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    match s {
        // IPv4-compatible (::a.b.c.d, deprecated): some stacks still route it to the IPv4 address.
        [0, 0, 0, 0, 0, 0, hi, lo] => classify_v4(embedded(hi, lo)),
        // NAT64 (64:ff9b::/96) reaches the IPv4 address in its last 32 bits.
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => classify_v4(embedded(hi, lo)),
        [0x64, 0xff9b, 1, ..] => NonPublic("local-use NAT64 (64:ff9b:1::/48)"),
        [0x100, 0, 0, 0, ..] => NonPublic("discard-only (100::/64)"),
        // 6to4 (2002::/16) reaches the IPv4 address in bits 16..48.
        [0x2002, hi, lo, ..] => classify_v4(embedded(hi, lo)),
        [0x2001, 0xdb8, ..] => NonPublic("documentation (2001:db8::/32)"),
        [0x2001, 0..=0x1ff, ..] => NonPublic("IETF protocol assignments (2001::/23)"),
        [0x3fff, 0..=0x0fff, ..] => NonPublic("documentation (3fff::/20)"),
        [first, ..] if first & 0xfe00 == 0xfc00 => NonPublic("unique-local (fc00::/7)"),
        [first, ..] if first & 0xffc0 == 0xfe80 => NonPublic("link-local (fe80::/10)"),
        [first, ..] if first & 0xffc0 == 0xfec0 => NonPublic("site-local (fec0::/10)"),
        _ => Public,
    }
}

/// Whether the policy lets a delivery connect to `ip`; the reason when it does not.
fn permitted(ip: IpAddr, allow_private: bool) -> Result<(), &'static str> {
    match classify(ip) {
        AddressClass::Public => Ok(()),
        AddressClass::NonPublic(_) if allow_private => Ok(()),
        AddressClass::NonPublic(why) | AddressClass::Never(why) => Err(why),
    }
}

/// What a resolver answers: the addresses of a host.
pub type Resolving = Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>>;

/// Resolves a webhook's host at delivery time. The default is the system's resolver; tests map
/// made-up names to the addresses they need.
pub trait Resolve: Send + Sync + 'static {
    fn resolve(&self, host: &str, port: u16) -> Resolving;
}

/// The operating system's resolver, through tokio's `lookup_host`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> Resolving {
        let host = host.to_owned();
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), port)).await?;
            Ok(addrs.map(|a| a.ip()).collect())
        })
    }
}

/// Where and how the brain may deliver notifications (DESIGN.md "Trust", webhooks).
#[derive(Clone)]
pub struct WebhookPolicy {
    /// Deliver to loopback, private, link-local and other non-public addresses too
    /// (`--webhook-allow-private`: a brain and its devices on one LAN, and tests).
    pub allow_private: bool,
    /// Also send LIB v1.1's `x-webhook-secret` (the secret itself) to webhooks registered with a
    /// secret through the shared secret, whose LIB v1.1 listeners check that header
    /// (`--webhook-legacy-secret-header`).
    pub legacy_secret_header: bool,
    /// Resolves a webhook's host at every delivery.
    pub resolver: Arc<dyn Resolve>,
}

impl Default for WebhookPolicy {
    fn default() -> Self {
        WebhookPolicy {
            allow_private: false,
            legacy_secret_header: false,
            resolver: Arc::new(SystemResolver),
        }
    }
}

impl std::fmt::Debug for WebhookPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookPolicy")
            .field("allow_private", &self.allow_private)
            .field("legacy_secret_header", &self.legacy_secret_header)
            .finish_non_exhaustive()
    }
}

/// The back-off after `failures` failed deliveries in a row (>= 1): 5 s doubled per failure,
/// at most an hour.
pub fn backoff_delay(failures: i64) -> Duration {
    let doublings = failures.saturating_sub(1).clamp(0, 16) as u32;
    BACKOFF_FIRST
        .saturating_mul(1 << doublings)
        .min(BACKOFF_MAX)
}

/// The HTTP client's resolver: it answers a host with the addresses the last check of that host
/// let through, and never looks a name up itself.
#[derive(Default)]
struct CheckedAddrs {
    hosts: Mutex<HashMap<String, Vec<IpAddr>>>,
}

/// More hosts than this in [`CheckedAddrs`] (URLs come and go): it starts over.
const MAX_CHECKED_HOSTS: usize = 4096;

impl CheckedAddrs {
    fn set(&self, host: &str, addrs: Vec<IpAddr>) {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        if hosts.len() >= MAX_CHECKED_HOSTS && !hosts.contains_key(host) {
            hosts.clear();
        }
        hosts.insert(host.to_ascii_lowercase(), addrs);
    }
}

impl reqwest::dns::Resolve for CheckedAddrs {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        let found = hosts.get(&name.as_str().to_ascii_lowercase()).cloned();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            match found {
                // The port is the URL's: reqwest puts it in.
                Some(ips) => Ok(Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)))
                    as reqwest::dns::Addrs),
                None => Err(format!("{host} was not checked for delivery").into()),
            }
        })
    }
}

/// Lets one warning through per [`LOG_EVERY`], and counts the ones it held back.
#[derive(Default)]
struct LogGate {
    last: Mutex<Option<Instant>>,
    held: AtomicU64,
}

impl LogGate {
    /// `Some(n)`: log now, mentioning the `n` warnings held back since the last one.
    fn pass(&self) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            self.held.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.held.swap(0, Ordering::Relaxed))
    }
}

/// How one delivery went.
enum Outcome {
    Delivered,
    /// Not attempted: no address of the host may be connected to.
    Refused(String),
    Failed(String),
}

/// A device's delivery queue: present while a delivery of its runs; `pending` the one notification
/// that waits behind it.
struct Slot {
    pending: Option<(Webhook, i64)>,
}

struct Inner {
    client: reqwest::Client,
    checked: Arc<CheckedAddrs>,
    policy: WebhookPolicy,
    metrics: Arc<Metrics>,
    pool: Semaphore,
    slots: Mutex<HashMap<String, Slot>>,
    refusals: LogGate,
    failures: LogGate,
}

/// Sends notifications. One client, so connections to a listener are reused.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

impl Notifier {
    /// `roots`: certificates trusted for https:// webhook URLs besides the web PKI roots.
    pub fn new(metrics: Arc<Metrics>, roots: &ExtraRoots, policy: WebhookPolicy) -> Notifier {
        let checked = Arc::new(CheckedAddrs::default());
        let mut builder = reqwest::Client::builder()
            .connect_timeout(DELIVERY_TIMEOUT)
            // A notification goes to the URL the device registered and nowhere else: not through
            // a proxy from the server's environment, not on to wherever a redirect points
            // (a 3xx counts as refused), and only to the addresses checked for this delivery.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(checked.clone());
        for cert in roots.certificates() {
            builder = builder.add_root_certificate(cert);
        }
        // Building can only fail on a root certificate rustls refuses, and ExtraRoots checked
        // each one with rustls's own test when it was loaded.
        let client = builder
            .build()
            .expect("the webhook client's settings and roots are valid");
        Notifier {
            inner: Arc::new(Inner {
                client,
                checked,
                policy,
                metrics,
                pool: Semaphore::new(MAX_CONCURRENT_DELIVERIES),
                slots: Mutex::new(HashMap::new()),
                refusals: LogGate::default(),
                failures: LogGate::default(),
            }),
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
            let now = unix_seconds(SystemTime::now());
            for hook in hooks {
                if hook.retry_after.is_some_and(|t| t > now) {
                    Metrics::add(&this.inner.metrics.webhook_backed_off, 1);
                    continue;
                }
                this.enqueue(&store, hook, after_id);
            }
        });
    }

    /// Delivers at once when the device has no delivery running; otherwise becomes (or merges
    /// into) its one pending notification.
    fn enqueue<S: BrainStore>(&self, store: &Arc<S>, hook: Webhook, after_id: i64) {
        let mut slots = self.inner.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = slots.get_mut(&hook.device_id) {
            let after_id = match slot.pending.take() {
                Some((_, pending)) => {
                    Metrics::add(&self.inner.metrics.webhook_coalesced, 1);
                    pending.min(after_id)
                }
                None => after_id,
            };
            // The newest registration, with the smallest cursor not yet delivered.
            slot.pending = Some((hook, after_id));
            return;
        }
        slots.insert(hook.device_id.clone(), Slot { pending: None });
        drop(slots);
        let (this, store) = (self.clone(), store.clone());
        tokio::spawn(async move { this.run_device(store, hook, after_id).await });
    }

    /// Delivers a device's notifications one at a time until none is pending.
    async fn run_device<S: BrainStore>(self, store: Arc<S>, mut hook: Webhook, mut after_id: i64) {
        loop {
            let now = unix_seconds(SystemTime::now());
            let delivered = if hook.retry_after.is_some_and(|t| t > now) {
                Metrics::add(&self.inner.metrics.webhook_backed_off, 1);
                false
            } else {
                let outcome = {
                    let _permit = self.inner.pool.acquire().await;
                    self.deliver(&hook, after_id).await
                };
                self.record(&*store, &mut hook, outcome).await
            };
            let mut slots = self.inner.slots.lock().unwrap_or_else(|p| p.into_inner());
            let next = slots
                .get_mut(&hook.device_id)
                .and_then(|slot| slot.pending.take());
            match next {
                Some((mut next, next_after)) => {
                    if !delivered {
                        after_id = after_id.min(next_after);
                    } else {
                        after_id = next_after;
                    }
                    // A listing from before this failure does not know its back-off yet.
                    if next.id == hook.id && next.url == hook.url {
                        next.failures = next.failures.max(hook.failures);
                        next.retry_after = next.retry_after.max(hook.retry_after);
                    }
                    hook = next;
                }
                None => {
                    slots.remove(&hook.device_id);
                    return;
                }
            }
            drop(slots);
        }
    }

    /// Stores, then counts and logs (at a bounded rate) an outcome; updates `hook`'s back-off.
    /// True when it was delivered. The store comes first: once a counter moved, `device list`
    /// shows the outcome.
    async fn record<S: BrainStore>(&self, store: &S, hook: &mut Webhook, outcome: Outcome) -> bool {
        let metrics = &self.inner.metrics;
        let (error, refused) = match outcome {
            Outcome::Delivered => {
                if hook.failures > 0 || hook.retry_after.is_some() {
                    hook.failures = 0;
                    hook.retry_after = None;
                    if let Err(e) = store.record_delivery(hook.id, None).await {
                        tracing::warn!(error = %e, "cannot record a webhook delivery");
                    }
                }
                Metrics::add(&metrics.webhook_deliveries, 1);
                tracing::debug!(device_id = %hook.device_id, "webhook delivered");
                return true;
            }
            Outcome::Refused(error) => (error, true),
            Outcome::Failed(error) => (error, false),
        };
        let failures = hook.failures.saturating_add(1);
        let retry_after = unix_seconds(SystemTime::now())
            .saturating_add(backoff_delay(failures).as_secs() as i64);
        hook.failures = failures;
        hook.retry_after = Some(retry_after);
        let failure = DeliveryFailure {
            failures,
            error: error.clone(),
            retry_after,
        };
        if let Err(e) = store.record_delivery(hook.id, Some(failure)).await {
            tracing::warn!(error = %e, "cannot record a failed webhook delivery");
        }
        let (counter, gate, what) = if refused {
            (
                &metrics.webhook_refused,
                &self.inner.refusals,
                "webhook delivery refused",
            )
        } else {
            (
                &metrics.webhook_failures,
                &self.inner.failures,
                "webhook delivery failed",
            )
        };
        Metrics::add(counter, 1);
        if let Some(held) = gate.pass() {
            tracing::warn!(device_id = %hook.device_id, url = %hook.url, %error, failures, held_back = held, "{what}");
        }
        false
    }

    /// One delivery: check the host's addresses, then POST, all within [`DELIVERY_TIMEOUT`].
    async fn deliver(&self, hook: &Webhook, after_id: i64) -> Outcome {
        match tokio::time::timeout(DELIVERY_TIMEOUT, self.try_deliver(hook, after_id)).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Failed("timed out after 5 s".into()),
        }
    }

    async fn try_deliver(&self, hook: &Webhook, after_id: i64) -> Outcome {
        let url = match reqwest::Url::parse(&hook.url) {
            Ok(url) => url,
            Err(e) => return Outcome::Failed(format!("the URL is unusable: {e}")),
        };
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return Outcome::Failed("the URL has no host".into());
        };
        // An IP literal is never resolved by the client: it is checked here, as it is.
        let literal = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok();
        let addrs = match literal {
            Some(ip) => vec![ip],
            None => match self.inner.policy.resolver.resolve(host, port).await {
                Ok(addrs) => addrs,
                Err(e) => return Outcome::Failed(format!("cannot resolve {host}: {e}")),
            },
        };
        let allow_private = self.inner.policy.allow_private;
        let mut allowed = Vec::new();
        let mut refused = Vec::new();
        for ip in addrs {
            match permitted(ip, allow_private) {
                Ok(()) => allowed.push(ip),
                Err(why) => refused.push(format!("{ip} ({why})")),
            }
        }
        if allowed.is_empty() {
            let why = if refused.is_empty() {
                format!("{host} has no address")
            } else {
                format!(
                    "{host} resolves only to addresses the brain does not deliver to: {} \
                     (--webhook-allow-private allows non-public ones)",
                    refused.join(", ")
                )
            };
            return Outcome::Refused(why);
        }
        if literal.is_none() {
            self.inner.checked.set(host, allowed);
        }
        let notification = WebhookNotification {
            event: "new_events".into(),
            after_id,
            timestamp: now_rfc3339(),
        };
        let body = serde_json::to_vec(&notification).unwrap_or_default();
        let mut request = self
            .inner
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        // A LIB v1.1 registration without a secret is delivered unsigned.
        if !hook.secret.is_empty() {
            let signature = sign(&hook.secret, unix_seconds(SystemTime::now()), &body);
            request = request.header(SIGNATURE_HEADER, signature);
            if self.inner.policy.legacy_secret_header && hook.via_shared_secret {
                request = request.header(LEGACY_WEBHOOK_SECRET_HEADER, hook.secret.as_str());
            }
        }
        match request.body(body).send().await {
            Ok(response) if response.status().is_success() => Outcome::Delivered,
            Ok(response) => Outcome::Failed(format!("answered {}", response.status())),
            Err(e) => Outcome::Failed(
                crate::tls::certificate_error(&e).unwrap_or_else(|| crate::tls::one_line(&e)),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_classified_for_delivery() {
        use AddressClass::{Never, NonPublic, Public};
        type Expect = fn(AddressClass) -> bool;
        let cases: &[(&str, Expect)] = &[
            // Public unicast: delivered to.
            ("1.1.1.1", |c| c == Public),
            ("8.8.8.8", |c| c == Public),
            ("93.184.216.34", |c| c == Public),
            ("100.63.255.255", |c| c == Public),
            ("100.128.0.1", |c| c == Public),
            ("172.15.255.255", |c| c == Public),
            ("172.32.0.1", |c| c == Public),
            ("192.169.0.1", |c| c == Public),
            ("2606:4700:4700::1111", |c| c == Public),
            ("2001:4860:4860::8888", |c| c == Public),
            ("::ffff:8.8.8.8", |c| c == Public),
            ("64:ff9b::808:808", |c| c == Public),
            // Not public: only with --webhook-allow-private.
            ("127.0.0.1", |c| matches!(c, NonPublic(_))),
            ("127.255.0.9", |c| matches!(c, NonPublic(_))),
            ("10.0.0.1", |c| matches!(c, NonPublic(_))),
            ("172.16.0.1", |c| matches!(c, NonPublic(_))),
            ("172.31.255.254", |c| matches!(c, NonPublic(_))),
            ("192.168.1.1", |c| matches!(c, NonPublic(_))),
            ("169.254.169.254", |c| matches!(c, NonPublic(_))),
            ("100.64.0.1", |c| matches!(c, NonPublic(_))),
            ("100.127.255.254", |c| matches!(c, NonPublic(_))),
            ("0.1.2.3", |c| matches!(c, NonPublic(_))),
            ("192.0.0.8", |c| matches!(c, NonPublic(_))),
            ("192.0.2.1", |c| matches!(c, NonPublic(_))),
            ("198.51.100.7", |c| matches!(c, NonPublic(_))),
            ("203.0.113.9", |c| matches!(c, NonPublic(_))),
            ("198.18.0.1", |c| matches!(c, NonPublic(_))),
            ("198.19.255.1", |c| matches!(c, NonPublic(_))),
            ("240.0.0.1", |c| matches!(c, NonPublic(_))),
            ("::1", |c| matches!(c, NonPublic(_))),
            ("fd00::1", |c| matches!(c, NonPublic(_))),
            ("fc00::1", |c| matches!(c, NonPublic(_))),
            ("fe80::1", |c| matches!(c, NonPublic(_))),
            ("fec0::1", |c| matches!(c, NonPublic(_))),
            ("2001:db8::1", |c| matches!(c, NonPublic(_))),
            ("2001::1", |c| matches!(c, NonPublic(_))),
            ("3fff::1", |c| matches!(c, NonPublic(_))),
            ("100::1", |c| matches!(c, NonPublic(_))),
            // IPv4 hidden in IPv6 is judged by the IPv4 address.
            ("::ffff:10.0.0.1", |c| matches!(c, NonPublic(_))),
            ("::ffff:127.0.0.1", |c| matches!(c, NonPublic(_))),
            ("::ffff:169.254.169.254", |c| matches!(c, NonPublic(_))),
            ("::10.0.0.1", |c| matches!(c, NonPublic(_))),
            ("::127.0.0.1", |c| matches!(c, NonPublic(_))),
            ("64:ff9b::a00:1", |c| matches!(c, NonPublic(_))),
            ("2002:c0a8:101::1", |c| matches!(c, NonPublic(_))),
            // Never a listener.
            ("0.0.0.0", |c| matches!(c, Never(_))),
            ("255.255.255.255", |c| matches!(c, Never(_))),
            ("224.0.0.1", |c| matches!(c, Never(_))),
            ("239.255.255.250", |c| matches!(c, Never(_))),
            ("::", |c| matches!(c, Never(_))),
            ("ff02::1", |c| matches!(c, Never(_))),
            ("::ffff:0.0.0.0", |c| matches!(c, Never(_))),
            ("::ffff:224.0.0.1", |c| matches!(c, Never(_))),
        ];
        for (text, expected) in cases {
            let ip: IpAddr = text.parse().unwrap();
            let class = classify(ip);
            assert!(expected(class), "{text}: {class:?}");
        }
        assert_eq!(permitted("10.0.0.1".parse().unwrap(), true), Ok(()));
        assert!(permitted("10.0.0.1".parse().unwrap(), false).is_err());
        assert!(
            permitted("0.0.0.0".parse().unwrap(), true).is_err(),
            "allow_private never allows an address that is no listener"
        );
        assert_eq!(permitted("8.8.8.8".parse().unwrap(), false), Ok(()));
    }

    fn request(url: &str, secret: &str) -> WebhookRequest {
        WebhookRequest {
            device_id: "dev-a".into(),
            webhook_url: url.into(),
            secret: secret.into(),
        }
    }

    #[test]
    fn a_registration_is_checked_for_url_and_secret() {
        let secret = "s".repeat(16);
        assert_eq!(
            check_registration(&request("https://a.example/hook", &secret), false),
            Ok(())
        );
        assert_eq!(
            check_registration(&request("http://[::1]:8/h", &"x".repeat(256)), false),
            Ok(())
        );
        let long = format!("https://a.example/{}", "p".repeat(MAX_URL_BYTES));
        for (url, secret, via_shared, field) in [
            (long.as_str(), secret.as_str(), true, "webhook_url"),
            ("ftp://a.example/x", &secret, true, "webhook_url"),
            ("file:///etc/passwd", &secret, true, "webhook_url"),
            ("http://", &secret, true, "webhook_url"),
            ("not a url", &secret, true, "webhook_url"),
            ("https://a.example/h", "short", true, "secret"),
            ("https://a.example/h", &"x".repeat(257), true, "secret"),
            ("https://a.example/h", "", false, "secret"),
        ] {
            let err = check_registration(&request(url, secret), via_shared).unwrap_err();
            assert!(
                matches!(&err, BrainError::Invalid(m) if m.starts_with(field)),
                "{url:.40}: {err}"
            );
        }
        // A LIB v1.1 client, through the shared secret, may register without a secret.
        assert_eq!(
            check_registration(&request("https://a.example/h", ""), true),
            Ok(())
        );
    }

    #[test]
    fn a_failing_url_backs_off_from_5_seconds_doubling_to_an_hour() {
        let secs: Vec<u64> = (1..=12).map(|f| backoff_delay(f).as_secs()).collect();
        assert_eq!(
            secs,
            [5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600]
        );
        assert_eq!(backoff_delay(i64::MAX), BACKOFF_MAX);
        assert_eq!(backoff_delay(0), BACKOFF_FIRST);
        assert_eq!(backoff_delay(i64::MIN), BACKOFF_FIRST);
    }
}

//! Counters for `GET /metrics`, in the Prometheus text format. Plain atomics: a handful of
//! counters and one latency histogram per route do not need a metrics framework.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::prometheus::{Kind, Text};

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

#[derive(Default)]
pub struct Metrics {
    pub events_ingested: AtomicU64,
    pub ingest_requests: AtomicU64,
    pub pulls: AtomicU64,
    pub events_pulled: AtomicU64,
    pub webhook_deliveries: AtomicU64,
    pub webhook_failures: AtomicU64,
    /// Deliveries not attempted: the host has no address the policy lets the brain connect to.
    pub webhook_refused: AtomicU64,
    /// Notifications folded into the one already pending for their device.
    pub webhook_coalesced: AtomicU64,
    /// Notifications skipped because their webhook was backing off.
    pub webhook_backed_off: AtomicU64,
    /// Requests whose credential was missing, wrong, revoked or acting for another device.
    pub auth_failures: AtomicU64,
    /// Requests refused with 429 because their address failed too often.
    pub auth_throttled: AtomicU64,
    /// Long-polls refused with 503: the device held too many open.
    pub polls_refused: AtomicU64,
    latencies: Mutex<Vec<RouteLatency>>,
}

struct RouteLatency {
    route: String,
    status: u16,
    /// Cumulative count per bucket, then the total count.
    counts: Vec<u64>,
    sum_seconds: f64,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Records one request of `route` (the matched path, never the raw URL) that answered `status`.
    pub fn observe(&self, route: &str, status: u16, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let mut all = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
        let index = match all
            .iter()
            .position(|l| l.route == route && l.status == status)
        {
            Some(i) => i,
            None => {
                all.push(RouteLatency {
                    route: route.to_owned(),
                    status,
                    counts: vec![0; BUCKETS.len() + 1],
                    sum_seconds: 0.0,
                });
                all.len() - 1
            }
        };
        let entry = &mut all[index];
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                entry.counts[i] += 1;
            }
        }
        entry.counts[BUCKETS.len()] += 1;
        entry.sum_seconds += seconds;
    }

    /// The counters and the latency histograms, into `text`.
    pub fn render(&self, text: &mut Text) {
        let counters: [(&str, &str, &AtomicU64); 12] = [
            (
                "lib_brain_events_ingested_total",
                "Events appended to the log",
                &self.events_ingested,
            ),
            (
                "lib_brain_ingest_requests_total",
                "Successful ingest requests",
                &self.ingest_requests,
            ),
            (
                "lib_brain_pulls_total",
                "Successful pull requests",
                &self.pulls,
            ),
            (
                "lib_brain_events_pulled_total",
                "Events served by pulls",
                &self.events_pulled,
            ),
            (
                "lib_brain_webhook_deliveries_total",
                "Webhook notifications delivered (2xx)",
                &self.webhook_deliveries,
            ),
            (
                "lib_brain_webhook_failures_total",
                "Webhook notifications that failed",
                &self.webhook_failures,
            ),
            (
                "lib_brain_webhook_refused_total",
                "Webhook notifications not sent: no address of the host may be delivered to",
                &self.webhook_refused,
            ),
            (
                "lib_brain_webhook_coalesced_total",
                "Webhook notifications folded into the one pending for their device",
                &self.webhook_coalesced,
            ),
            (
                "lib_brain_webhook_backed_off_total",
                "Webhook notifications skipped while their URL backs off after failures",
                &self.webhook_backed_off,
            ),
            (
                "lib_brain_auth_failures_total",
                "Requests refused for their credential (401, 403)",
                &self.auth_failures,
            ),
            (
                "lib_brain_auth_throttled_total",
                "Requests refused with 429 after too many failed authentications from their address",
                &self.auth_throttled,
            ),
            (
                "lib_brain_polls_refused_total",
                "Long-polls refused with 503: the device held too many open",
                &self.polls_refused,
            ),
        ];
        for (name, help, value) in counters {
            text.single(name, Kind::Counter, help, value.load(Ordering::Relaxed));
        }
        let name = "lib_brain_request_duration_seconds";
        text.family(
            name,
            Kind::Histogram,
            "HTTP request latency by route and status",
        );
        let (bucket, sum, count) = (
            format!("{name}_bucket"),
            format!("{name}_sum"),
            format!("{name}_count"),
        );
        let all = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
        for l in all.iter() {
            let status = l.status.to_string();
            let labels = [("route", l.route.as_str()), ("status", status.as_str())];
            for (i, bound) in BUCKETS.iter().enumerate() {
                let le = bound.to_string();
                let with_le = [labels[0], labels[1], ("le", le.as_str())];
                text.sample(&bucket, &with_le, l.counts[i]);
            }
            let total = l.counts[BUCKETS.len()];
            text.sample(&bucket, &[labels[0], labels[1], ("le", "+Inf")], total);
            text.sample(&sum, &labels, l.sum_seconds);
            text.sample(&count, &labels, total);
        }
    }
}

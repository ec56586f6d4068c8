//! What the brain knows of each enrolled device's convergence (DESIGN.md "Convergence you can
//! check"): the cursor, digest and pending count of its last pull, compared with the brain's own
//! replica digest at the log's head. `GET /devices`, `/metrics` and `agent brain device list`
//! all read it from here.

use crate::prometheus::{Kind, Text};
use std::time::{Duration, SystemTime};

use super::store::{BrainStore, DeviceRecord, ReplicaPoint};
use super::Result;
use crate::model::digest::{Convergence, ConvergenceState};
use crate::model::event::format_rfc3339;
use crate::model::wire::{DeviceView, DevicesResponse, WebhookHealth};

/// An enrolled device and how it compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConvergence {
    pub record: DeviceRecord,
    pub convergence: Convergence,
}

/// Every enrolled device with its convergence, and the brain's replica they were compared with.
pub async fn devices<S: BrainStore>(store: &S) -> Result<(ReplicaPoint, Vec<DeviceConvergence>)> {
    // The devices first, then the head: a pull recorded in between can only look behind a head
    // read later, never compare its digest with a digest older than its cursor.
    let records = store.list_devices().await?;
    let point = store.replica().await?;
    let devices = records
        .into_iter()
        .map(|record| DeviceConvergence {
            convergence: point.device(&record),
            record,
        })
        .collect();
    Ok((point, devices))
}

/// The answer of `GET /devices`: what any enrolled device may know of the others (no webhook
/// URL, no token state).
pub fn response(point: &ReplicaPoint, devices: &[DeviceConvergence]) -> DevicesResponse {
    let time = |t: Option<i64>| {
        t.map(|s| format_rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(s.max(0) as u64)))
    };
    DevicesResponse {
        ok: true,
        head: point.head,
        devices: devices
            .iter()
            .map(|d| DeviceView {
                name: d.record.name.clone(),
                device_id: d.record.device_id.clone(),
                last_seen_at: time(d.record.last_seen_at),
                cursor: d.record.last_cursor,
                pending: d.record.pending,
                revoked: d.record.revoked_at.is_some(),
                state: d.convergence.state,
                lag: d.convergence.lag,
                webhook: d.record.webhook.as_ref().map(|w| WebhookHealth {
                    active: w.active,
                    failures: w.failures,
                }),
            })
            .collect(),
    }
}

/// The devices' gauges for `/metrics`: each enrolled (not revoked) device's lag, and a 0/1
/// gauge per state, so an alert can say `lib_brain_device_state{state="diverged"} == 1`.
pub fn render_metrics(text: &mut Text, devices: &[DeviceConvergence]) {
    let live: Vec<&DeviceConvergence> = devices
        .iter()
        .filter(|d| d.record.revoked_at.is_none())
        .collect();
    let name = "lib_brain_device_lag_events";
    text.family(
        name,
        Kind::Gauge,
        "Events of the log the device has still to pull, at its last pull",
    );
    for d in &live {
        text.sample(name, &[("device", &d.record.name)], d.convergence.lag);
    }
    let name = "lib_brain_device_state";
    text.family(
        name,
        Kind::Gauge,
        "1 for the device's convergence state (converged, behind, diverged, unknown, never seen)",
    );
    for d in &live {
        for state in ConvergenceState::ALL {
            let labels = [
                ("device", d.record.name.as_str()),
                ("state", state.as_str()),
            ];
            text.sample(name, &labels, u8::from(d.convergence.state == state));
        }
    }
}

//! The simulated network and the brain behind it.
//!
//! Every request of a device goes through [`Endpoint`], which implements the same
//! `sync::Brain` trait the HTTP client does, so push and pull run unchanged. Each request is
//! dropped, answered, answered and then lost, delivered twice, or held back and delivered later
//! out of order, as the seeded generator decides. The brain is the real SQLite brain store;
//! requests cross the wire as the same JSON the HTTP server parses.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use lib_agent::brain::server::parse_ingest;
use lib_agent::brain::store::{BrainStore, PgStore, ReplicaPoint, SqliteStore};
use lib_agent::brain::BrainError;
use lib_agent::model::digest::ReplicaReport;
use lib_agent::model::wire::{
    IngestRequest, IngestResult, PullResponse, SnapshotEntity, SnapshotResponse, MAX_BATCH,
};
use lib_agent::model::Event;
use lib_agent::sync::{self, ClientError};

use super::rng::Rng;
use crate::support::brain::TestSchema;

/// The cap the brain puts on `payload.content` (the server's default).
const MAX_CONTENT: usize = 1024 * 1024;

/// How hostile the network is in one run: each a probability per request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    pub drop_request: f64,
    /// The brain committed, the answer never arrives.
    pub drop_answer: f64,
    pub duplicate: f64,
    /// Held back and delivered later, after other requests.
    pub delay: f64,
    /// The device dies with the request in flight (before or after the brain sees it).
    pub crash: f64,
    pub drop_wakeup: f64,
}

impl Faults {
    pub fn random(rng: &mut Rng) -> Faults {
        let mut p = |max: f64| {
            if rng.chance(0.25) {
                0.0
            } else {
                max * (rng.below(100) as f64 / 100.0)
            }
        };
        Faults {
            drop_request: p(0.2),
            drop_answer: p(0.2),
            duplicate: p(0.2),
            delay: p(0.2),
            crash: p(0.05),
            drop_wakeup: p(0.5),
        }
    }
}

/// What a run went through, so the suite can show (and check) that faults really happen.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    pub requests: u64,
    pub dropped: u64,
    pub answers_lost: u64,
    pub duplicated: u64,
    pub delayed: u64,
    pub device_crashes: u64,
    /// Of `device_crashes`, those with a push, or a pull or snapshot, in flight.
    pub crashes_mid_push: u64,
    pub crashes_mid_pull: u64,
    pub brain_restarts: u64,
    /// Prunes that removed events: of the whole log, or of its older part only.
    pub prunes: u64,
    pub partial_prunes: u64,
    pub reseeds: u64,
    /// Files read so soon after a write that their stat could not vouch for them.
    pub racy_reads: u64,
    /// Writes, after a racy read of the file, that left its size, mtime and inode as they were,
    /// with other bytes: only the second look a racy read asks for finds them.
    pub stat_blind_rewrites: u64,
    pub events: u64,
    pub conflicts: u64,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        self.requests += o.requests;
        self.dropped += o.dropped;
        self.answers_lost += o.answers_lost;
        self.duplicated += o.duplicated;
        self.delayed += o.delayed;
        self.device_crashes += o.device_crashes;
        self.crashes_mid_push += o.crashes_mid_push;
        self.crashes_mid_pull += o.crashes_mid_pull;
        self.brain_restarts += o.brain_restarts;
        self.prunes += o.prunes;
        self.partial_prunes += o.partial_prunes;
        self.reseeds += o.reseeds;
        self.racy_reads += o.racy_reads;
        self.stat_blind_rewrites += o.stat_blind_rewrites;
        self.events += o.events;
        self.conflicts += o.conflicts;
    }
}

/// Which store the brain runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

enum Store {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

/// Awaits `$call` on whichever store the brain runs.
macro_rules! on_store {
    ($brain:expr, $s:ident => $call:expr) => {
        match $brain.store.as_ref().expect("brain store open") {
            Store::Sqlite($s) => $brain.rt.block_on($call),
            Store::Postgres($s) => $brain.rt.block_on($call),
        }
    };
}

/// The brain store, restartable, and what it acknowledged.
pub struct SimBrain {
    kind: StoreKind,
    path: PathBuf,
    /// The PostgreSQL schema of this run, dropped at its end.
    schema: Option<TestSchema>,
    store: Option<Store>,
    rt: tokio::runtime::Runtime,
    /// Every event the brain committed (the device may never have heard), by ULID.
    pub committed: BTreeMap<String, Event>,
    /// ULIDs a prune removed from the log, by design.
    pub pruned: BTreeSet<String>,
}

impl SimBrain {
    pub fn open(kind: StoreKind, path: PathBuf) -> SimBrain {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut brain = SimBrain {
            kind,
            path,
            schema: (kind == StoreKind::Postgres).then(TestSchema::new),
            store: None,
            rt,
            committed: BTreeMap::new(),
            pruned: BTreeSet::new(),
        };
        brain.restart();
        brain
    }

    /// The process dies and starts again: nothing but the database survives.
    pub fn restart(&mut self) {
        self.store = None;
        self.store = Some(match (&self.kind, &self.schema) {
            (StoreKind::Postgres, Some(schema)) => Store::Postgres(
                self.rt
                    .block_on(schema.open())
                    .expect("open the PostgreSQL brain store"),
            ),
            _ => Store::Sqlite(SqliteStore::open(&self.path).expect("open the brain store")),
        });
    }

    /// `agent brain prune`: of the whole log, or of its older part. Devices whose cursor is
    /// behind the prune mark must re-seed. The bound is an id, not a time: the brain stamps
    /// `received_at` from the real clock (PostgreSQL's own, even), which a replay must not
    /// depend on. Returns whether events were removed, and whether some were left.
    pub fn prune(&mut self, rng: &mut Rng) -> (bool, bool) {
        let log = self.log_ids();
        let Some(&(newest, _)) = log.last() else {
            return (false, false);
        };
        let through = if rng.chance(0.5) {
            newest
        } else {
            log[rng.below(log.len())].0
        };
        let report = on_store!(self, s => s.prune_through(through)).expect("prune the brain log");
        assert_eq!(report.pruned_through, through, "the prune mark");
        let gone: Vec<&String> = log
            .iter()
            .filter(|(id, _)| *id <= through)
            .map(|(_, ulid)| ulid)
            .collect();
        assert_eq!(report.deleted_events, gone.len() as u64, "events pruned");
        self.pruned.extend(gone.into_iter().cloned());
        (true, through < newest)
    }

    /// The ids and ULIDs of the log that pruning left, in id order.
    fn log_ids(&self) -> Vec<(i64, String)> {
        let (mut out, mut cursor) = (Vec::new(), 0);
        loop {
            match self.pull(cursor, MAX_BATCH, None) {
                Ok(page) => {
                    out.extend(page.events.into_iter().map(|e| (e.id, e.event.event_ulid)));
                    cursor = page.next_after_id.max(cursor);
                    if !page.has_more {
                        return out;
                    }
                }
                Err(BrainError::CursorPruned { pruned_through, .. }) => cursor = pruned_through,
                Err(e) => panic!("reading the brain's log: {e}"),
            }
        }
    }

    /// What `POST /ingest` does with a body: the handler's own parsing and validation, then the
    /// store. True when new events were appended (the brain then notifies the webhooks).
    fn ingest(&mut self, batch: &[Event]) -> Result<(IngestResult, bool), BrainError> {
        let body = serde_json::to_vec(&IngestRequest {
            batch: batch.to_vec(),
        })
        .expect("serialise a batch");
        let checked = parse_ingest(&body, MAX_CONTENT)?;
        let events: Vec<Event> = checked.iter().map(|c| c.event.clone()).collect();
        let ingested = on_store!(self, s => s.ingest(checked))?;
        self.committed
            .extend(events.into_iter().map(|e| (e.event_ulid.clone(), e)));
        Ok((ingested.result, ingested.new_ids.is_some()))
    }

    /// What `GET /pull` answers: the page, and how the device's `replica` report compares.
    fn pull(
        &self,
        after_id: i64,
        limit: usize,
        replica: Option<&ReplicaReport>,
    ) -> Result<PullResponse, BrainError> {
        let limit = limit.clamp(1, MAX_BATCH);
        let page = on_store!(self, s => s.pull(after_id, limit))?;
        let convergence = match replica {
            Some(r) => Some(on_store!(self, s => s.replica())?.compare(
                after_id,
                Some(&r.digest),
                Some(r.pending),
            )),
            None => None,
        };
        Ok(wire(&PullResponse {
            ok: true,
            events: page.events,
            next_after_id: page.next_after_id,
            has_more: page.has_more,
            convergence,
            head: None,
            epoch: None,
        }))
    }

    /// The brain's head and replica digest.
    pub fn replica(&self) -> ReplicaPoint {
        on_store!(self, s => s.replica()).expect("read the brain's replica digest")
    }

    fn snapshot(&self, after_key: &str, limit: usize) -> Result<SnapshotResponse, BrainError> {
        let limit = limit.clamp(1, MAX_BATCH);
        let page = on_store!(self, s => s.snapshot(after_key, limit))?;
        Ok(wire(&SnapshotResponse {
            ok: true,
            entities: page.entities,
            watermark: page.watermark,
            has_more: page.has_more,
        }))
    }

    /// Every entity, as `/snapshot` serves them.
    pub fn entities(&self) -> Vec<SnapshotEntity> {
        let (mut all, mut after) = (Vec::new(), String::new());
        loop {
            let page = self.snapshot(&after, MAX_BATCH).expect("snapshot");
            all.extend(page.entities);
            match all.last() {
                Some(last) if page.has_more => after = last.entity_key.clone(),
                _ => return all,
            }
        }
    }

    /// The events in the log (what pruning left of it) by ULID, and the newest id.
    pub fn log(&self) -> (BTreeMap<String, Event>, i64) {
        let (mut events, mut cursor) = (BTreeMap::new(), 0);
        loop {
            match self.pull(cursor, MAX_BATCH, None) {
                Ok(page) => {
                    events.extend(
                        page.events
                            .into_iter()
                            .map(|e| (e.event.event_ulid.clone(), e.event)),
                    );
                    cursor = page.next_after_id.max(cursor);
                    if !page.has_more {
                        return (events, cursor);
                    }
                }
                Err(BrainError::CursorPruned { pruned_through, .. }) => cursor = pruned_through,
                Err(e) => panic!("reading the brain's log: {e}"),
            }
        }
    }

    /// The open conflicts as the store's own table lists them.
    pub fn conflicts_table(&self) -> BTreeSet<(String, String)> {
        match &self.schema {
            Some(schema) => self.rt.block_on(async {
                let sql = format!(
                    "SELECT entity_key, event_ulid FROM {}.conflicts",
                    schema.name
                );
                let rows = schema
                    .admin()
                    .await
                    .query(&sql, &[])
                    .await
                    .expect("conflicts");
                rows.iter().map(|r| (r.get(0), r.get(1))).collect()
            }),
            None => {
                let conn = rusqlite::Connection::open(&self.path).expect("open the brain db");
                let mut stmt = conn
                    .prepare("SELECT entity_key, event_ulid FROM conflicts")
                    .expect("prepare");
                let rows = stmt
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                    .expect("query");
                rows.map(|r| r.expect("row")).collect()
            }
        }
    }
}

/// An answer as the device reads it: serialised and parsed again, as over HTTP.
fn wire<T: serde::Serialize + serde::de::DeserializeOwned>(value: &T) -> T {
    serde_json::from_slice(&serde_json::to_vec(value).expect("serialise")).expect("parse")
}

fn status(e: BrainError, route: &'static str) -> ClientError {
    ClientError::Status {
        route,
        status: e.status().as_u16(),
        message: e.to_string(),
    }
}

fn lost(reason: &str) -> ClientError {
    ClientError::Network {
        url: "sim://brain".into(),
        reason: reason.into(),
    }
}

pub struct Net {
    pub brain: SimBrain,
    rng: Rng,
    pub faults: Faults,
    /// The brain is down: every request fails.
    pub down: bool,
    /// Ingest requests held back by the network.
    pub in_flight: Vec<Vec<Event>>,
    /// Webhook notifications on their way, by device index.
    pub wakeups: Vec<usize>,
    /// Devices a fault killed mid-request: the world restarts them.
    pub crashed: BTreeSet<usize>,
    pub devices: usize,
    pub log: Vec<String>,
    pub stats: Stats,
}

impl Net {
    pub fn new(brain: SimBrain, rng: Rng, faults: Faults, devices: usize) -> Net {
        Net {
            brain,
            rng,
            faults,
            down: false,
            in_flight: Vec::new(),
            wakeups: Vec::new(),
            crashed: BTreeSet::new(),
            devices,
            log: Vec::new(),
            stats: Stats::default(),
        }
    }

    /// The brain takes an ingest; on new events it notifies every other device (some
    /// notifications are lost, some arrive twice).
    fn deliver_ingest(
        &mut self,
        from: Option<usize>,
        batch: &[Event],
    ) -> Result<IngestResult, ClientError> {
        let (result, inserted) = self.brain.ingest(batch).map_err(|e| status(e, "/ingest"))?;
        if inserted {
            for device in (0..self.devices).filter(|d| Some(*d) != from) {
                if !self.rng.chance(self.faults.drop_wakeup) {
                    self.wakeups.push(device);
                    if self.rng.chance(self.faults.duplicate) {
                        self.wakeups.push(device);
                    }
                }
            }
        }
        Ok(result)
    }

    /// Delivers one held-back ingest, chosen at random (so they arrive out of order).
    pub fn deliver_delayed(&mut self) -> bool {
        if self.in_flight.is_empty() {
            return false;
        }
        let i = self.rng.below(self.in_flight.len());
        let batch = self.in_flight.swap_remove(i);
        let outcome = self.deliver_ingest(None, &batch);
        self.log.push(format!(
            "  delayed ingest of {} events delivered: {outcome:?}",
            batch.len()
        ));
        true
    }

    /// The device dies with a request on `route` in flight.
    fn crash(&mut self, device: usize, route: &str) {
        self.crashed.insert(device);
        match route {
            "/ingest" => self.stats.crashes_mid_push += 1,
            _ => self.stats.crashes_mid_pull += 1,
        }
    }

    /// Decides the fate of a request before the brain sees it.
    fn before(&mut self, device: usize, route: &str) -> Result<(), ClientError> {
        self.stats.requests += 1;
        if self.down {
            return Err(lost("brain down"));
        }
        if self.rng.chance(self.faults.crash / 2.0) {
            self.crash(device, route);
            return Err(lost("device crashed before sending"));
        }
        if self.rng.chance(self.faults.drop_request) {
            self.stats.dropped += 1;
            return Err(lost("request dropped"));
        }
        Ok(())
    }

    /// Decides the fate of an answer the brain gave.
    fn after(&mut self, device: usize, route: &str) -> Result<(), ClientError> {
        if self.rng.chance(self.faults.crash / 2.0) {
            self.crash(device, route);
            return Err(lost("device crashed before the answer"));
        }
        if self.rng.chance(self.faults.drop_answer) {
            self.stats.answers_lost += 1;
            return Err(lost("answer dropped"));
        }
        Ok(())
    }
}

/// One device's view of the network.
pub struct Endpoint<'a> {
    pub net: &'a RefCell<Net>,
    pub device: usize,
}

impl sync::Brain for Endpoint<'_> {
    fn ingest(&self, batch: &[Event]) -> Result<IngestResult, ClientError> {
        let mut net = self.net.borrow_mut();
        let faults = net.faults;
        net.before(self.device, "/ingest")?;
        if net.rng.chance(faults.delay) {
            net.in_flight.push(batch.to_vec());
            net.stats.delayed += 1;
            return Err(lost("request delayed past the timeout"));
        }
        let result = net.deliver_ingest(Some(self.device), batch)?;
        if net.rng.chance(faults.duplicate) {
            net.stats.duplicated += 1;
            let again = net.deliver_ingest(Some(self.device), batch);
            assert_eq!(
                again.as_ref().map(|r| r.inserted_events).ok(),
                Some(0),
                "a repeated ingest inserted events: {again:?}"
            );
        }
        net.after(self.device, "/ingest")?;
        Ok(result)
    }

    fn pull(
        &self,
        after_id: i64,
        limit: usize,
        _wait: Option<Duration>,
        replica: Option<&ReplicaReport>,
    ) -> Result<PullResponse, ClientError> {
        let mut net = self.net.borrow_mut();
        net.before(self.device, "/pull")?;
        let page = net
            .brain
            .pull(after_id, limit, replica)
            .map_err(|e| status(e, "/pull"))?;
        net.after(self.device, "/pull")?;
        Ok(page)
    }

    fn snapshot(&self, after_key: &str, limit: usize) -> Result<SnapshotResponse, ClientError> {
        let mut net = self.net.borrow_mut();
        net.before(self.device, "/snapshot")?;
        let page = net
            .brain
            .snapshot(after_key, limit)
            .map_err(|e| status(e, "/snapshot"))?;
        net.after(self.device, "/snapshot")?;
        Ok(page)
    }
}

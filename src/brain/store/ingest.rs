//! One ingest, carried out by both brain stores: [`run`] decides every step (which events are
//! new, what the merge rule makes of them, what to write), and each store only translates the
//! steps of [`IngestTx`] to its SQL, inside the one transaction it opened (atuin's `Database`
//! trait with the logic both backends share in `db/shared.rs` is the model).
//!
//! The flow, after [`super::check_batch`] dropped the repeats inside the request:
//!
//! 1. the digests stored under the batch's ULIDs, in the log or among the pruned ULIDs
//!    ([`IngestTx::stored_digests`]); [`is_new`] sorts each event into new, a repeat (skipped) or
//!    a ULID reused with other content (the whole batch is 409);
//! 2. the new events appended to the log, in batch order ([`IngestTx::append`]);
//! 3. [`apply`]: the current merge state of the entities they touch, the plan of the merge rule
//!    over the batch ([`plan_entities`]), its writes (winners, merge states, conflicts) and the
//!    greatest sequence number each device's clocks carried ([`clock_maxima`]).
//!
//! The SQLite store's steps are synchronous (it runs on the blocking pool): their futures are
//! ready at once, and it drives [`run`] with [`run_ready`].

use std::collections::{BTreeMap, HashMap};
use std::future::Future;

use futures_util::FutureExt;

use super::{CheckedEvent, Ingested};
use crate::brain::{BrainError, Result};
use crate::model::digest::ReplicaDigest;
use crate::model::merge::{self, EntityState, Outcome, Version};
use crate::model::wire::IngestResult;
use crate::model::Event;

/// The database side of an ingest, inside one transaction the store opened (and commits after
/// [`run`] returns). Each step is one statement, or one per row where the store has no arrays.
pub(crate) trait IngestTx {
    /// The digest stored under each of `ulids` that is stored, in the log or among the ULIDs a
    /// prune kept, read as one snapshot (a ULID is in one of the two at most: a prune moves it,
    /// and an ingest appends only ULIDs found in neither).
    async fn stored_digests(&self, ulids: &[&str]) -> Result<HashMap<String, String>>;

    /// Appends the events to the log in the order given. Returns the greatest id before them
    /// (pull from it to get them) and the id of the last one.
    async fn append(&self, events: &[&CheckedEvent]) -> Result<(i64, i64)>;

    /// The merge state of each of `keys` (sorted, distinct) that has an entity.
    async fn entity_states(&self, keys: &[&str]) -> Result<HashMap<String, EntityState>>;

    /// Writes the plan: for each entity the new winner (an index into `events`) with its merge
    /// state, or the merge state alone, and its conflicts when [`EntityWrite::refresh_conflicts`].
    async fn write_entities(&self, events: &[&Event], writes: &[EntityWrite]) -> Result<()>;

    /// Raises each device's known sequence number to at least the given one.
    async fn raise_sequences(&self, maxima: &BTreeMap<String, i64>) -> Result<()>;

    /// XORs `delta` into the kept replica digest (`model::digest`).
    async fn add_to_digest(&self, delta: &ReplicaDigest) -> Result<()>;
}

/// The ingest of a checked batch: see the module's documentation.
pub(crate) async fn run(tx: &impl IngestTx, batch: &[CheckedEvent]) -> Result<Ingested> {
    let ulids: Vec<&str> = batch.iter().map(|c| c.event.event_ulid.as_str()).collect();
    let stored = tx.stored_digests(&ulids).await?;
    let mut new: Vec<&CheckedEvent> = Vec::with_capacity(batch.len());
    for checked in batch {
        if is_new(
            checked,
            stored.get(&checked.event.event_ulid).map(String::as_str),
        )? {
            new.push(checked);
        }
    }
    if new.is_empty() {
        return Ok(Ingested::default());
    }
    let new_ids = tx.append(&new).await?;
    let events: Vec<&Event> = new.iter().map(|c| &c.event).collect();
    let (upserted, delta) = apply(tx, &events).await?;
    if !delta.is_empty() {
        tx.add_to_digest(&delta).await?;
    }
    Ok(Ingested {
        result: IngestResult {
            inserted_events: events.len() as u64,
            upserted_entities: upserted as u64,
        },
        new_ids: Some(new_ids),
    })
}

/// The part of an ingest after the log append: reads the current merge state of the entities
/// the events touch, applies the events to it with the merge rule, and writes the result.
/// Returns how many entities changed and what their new winners change in the replica digest.
/// The adoption of a LIB v1.1 schema replays its log through this too (and derives the digest
/// afterwards, from the rows).
pub(crate) async fn apply(tx: &impl IngestTx, events: &[&Event]) -> Result<(usize, ReplicaDigest)> {
    let mut keys: Vec<&str> = events.iter().map(|e| e.entity_key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    let current = tx.entity_states(&keys).await?;
    let winners_before: HashMap<String, Version> = current
        .iter()
        .map(|(key, state)| (key.clone(), state.winner().clone()))
        .collect();
    let writes = plan_entities(events, current);
    let mut delta = ReplicaDigest::EMPTY;
    for write in writes.iter().filter(|w| w.new_winner.is_some()) {
        delta.replace(
            &write.key,
            winners_before.get(&write.key),
            write.state.winner(),
        );
    }
    tx.write_entities(events, &writes).await?;
    tx.raise_sequences(&clock_maxima(events)).await?;
    Ok((writes.len(), delta))
}

/// Runs a future whose steps never wait (the SQLite store's, on its own blocking thread).
pub(crate) fn run_ready<T>(future: impl Future<Output = Result<T>>) -> Result<T> {
    future.now_or_never().unwrap_or_else(|| {
        Err(BrainError::Internal(
            "a synchronous ingest step waited: the store's steps must not".into(),
        ))
    })
}

/// Whether an event is new to the store, given the digest stored under its ULID: in the log, or
/// kept by a prune after the event left the log (a ULID names one event forever, pruned or not).
/// `Ok(false)` is a repeat (a retry), to skip; the same ULID with other content is 409.
pub(crate) fn is_new(checked: &CheckedEvent, stored_digest: Option<&str>) -> Result<bool> {
    match stored_digest {
        None => Ok(true),
        Some(digest) if digest == checked.digest => Ok(false),
        Some(_) => Err(BrainError::Conflict(format!(
            "event_ulid {} is stored already with other content: a ULID names one event forever",
            checked.event.event_ulid
        ))),
    }
}

/// What to write for one entity after a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityWrite {
    pub key: String,
    pub state: EntityState,
    /// Index (into the batch given to [`plan_entities`]) of the event that is the new winner, or
    /// `None` when the winner stays and only `seen_vc`/siblings change.
    pub new_winner: Option<usize>,
    /// Whether the conflicts of the entity must be rewritten
    /// ([`merge::conflicts_may_change`] for one of the batch's events).
    pub refresh_conflicts: bool,
}

/// Applies a batch of new events to the current states of their entities with the merge rule.
/// Returns the writes by key (a deterministic order, so concurrent writers lock rows alike).
pub fn plan_entities(
    events: &[&Event],
    mut current: HashMap<String, EntityState>,
) -> Vec<EntityWrite> {
    let mut writes: BTreeMap<String, EntityWrite> = BTreeMap::new();
    for (index, event) in events.iter().enumerate() {
        let key = &event.entity_key;
        let before = current.get(key);
        let Outcome::Applied {
            state,
            winner_changed,
        } = merge::apply(before, event.version())
        else {
            continue;
        };
        let refresh = merge::conflicts_may_change(before, &state);
        let write = writes.entry(key.clone()).or_insert_with(|| EntityWrite {
            key: key.clone(),
            state: state.clone(),
            new_winner: None,
            refresh_conflicts: false,
        });
        write.state = state.clone();
        if winner_changed {
            write.new_winner = Some(index);
        }
        write.refresh_conflicts |= refresh;
        current.insert(key.clone(), state);
    }
    writes.into_values().collect()
}

/// The greatest entry of each device over the clocks of `events`, by device id (a deterministic
/// order, so concurrent writers lock rows alike): what `device_sequences` must hold at least.
pub(crate) fn clock_maxima(events: &[&Event]) -> BTreeMap<String, i64> {
    let mut maxima: BTreeMap<String, i64> = BTreeMap::new();
    for event in events {
        for (device, value) in event.vector_clock.entries() {
            // Validated clocks hold at most 2^53; clamp anyway, so no value can wrap an i64.
            let value = i64::try_from(value).unwrap_or(i64::MAX);
            let entry = maxima.entry(device.to_owned()).or_insert(value);
            *entry = (*entry).max(value);
        }
    }
    maxima
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::super::tests::event;
    use super::*;
    use crate::model::VectorClock;

    #[test]
    fn a_batch_is_planned_as_if_applied_event_by_event() {
        let a = event("a", "n/x", VectorClock::from([("a", 1)]), 'a');
        let b = event("b", "n/x", VectorClock::from([("b", 1)]), 'b');
        let c = event("a", "n/y", VectorClock::from([("a", 2)]), 'c');
        let writes = plan_entities(&[&a, &b, &c], HashMap::new());
        assert_eq!(writes.len(), 2);
        assert_eq!(writes[0].key, "n/x");
        assert_eq!(writes[0].new_winner, Some(1), "equal sums: device b wins");
        assert!(writes[0].refresh_conflicts);
        assert_eq!(writes[0].state.conflicts().count(), 1);
        assert_eq!(
            writes[1].new_winner,
            Some(2),
            "indexes point into the whole batch"
        );
        assert!(!writes[1].refresh_conflicts, "a lone version has none");
    }

    #[test]
    fn a_stored_or_pruned_digest_makes_a_repeat_or_a_409() {
        let checked = CheckedEvent::new(event("a", "n/x", VectorClock::from([("a", 1)]), 'a'));
        assert_eq!(is_new(&checked, None), Ok(true));
        assert_eq!(is_new(&checked, Some(&checked.digest)), Ok(false));
        let err = is_new(&checked, Some(&"0".repeat(64))).unwrap_err();
        assert!(
            matches!(err, BrainError::Conflict(ref m) if m.contains(&checked.event.event_ulid)),
            "{err}"
        );
    }

    /// A store in memory: what the flow asks of it, and what it answers.
    #[derive(Default)]
    struct Recorder {
        stored: HashMap<String, String>,
        appended: RefCell<Vec<String>>,
        writes: RefCell<Vec<EntityWrite>>,
        maxima: RefCell<BTreeMap<String, i64>>,
        digest: RefCell<ReplicaDigest>,
    }

    impl IngestTx for Recorder {
        async fn stored_digests(&self, ulids: &[&str]) -> Result<HashMap<String, String>> {
            Ok(ulids
                .iter()
                .filter_map(|u| self.stored.get(*u).map(|d| (u.to_string(), d.clone())))
                .collect())
        }

        async fn append(&self, events: &[&CheckedEvent]) -> Result<(i64, i64)> {
            let mut appended = self.appended.borrow_mut();
            let before = appended.len() as i64;
            appended.extend(events.iter().map(|c| c.event.event_ulid.clone()));
            Ok((before, appended.len() as i64))
        }

        async fn entity_states(&self, _keys: &[&str]) -> Result<HashMap<String, EntityState>> {
            Ok(HashMap::new())
        }

        async fn write_entities(&self, _events: &[&Event], writes: &[EntityWrite]) -> Result<()> {
            self.writes.borrow_mut().extend_from_slice(writes);
            Ok(())
        }

        async fn raise_sequences(&self, maxima: &BTreeMap<String, i64>) -> Result<()> {
            self.maxima.borrow_mut().extend(maxima.clone());
            Ok(())
        }

        async fn add_to_digest(&self, delta: &ReplicaDigest) -> Result<()> {
            self.digest.borrow_mut().toggle(*delta);
            Ok(())
        }
    }

    #[test]
    fn an_ingest_appends_only_new_events_and_applies_them() {
        let stored = CheckedEvent::new(event("a", "n/x", VectorClock::from([("a", 1)]), 'a'));
        let new = CheckedEvent::new(event(
            "b",
            "n/y",
            VectorClock::from([("a", 1), ("b", 3)]),
            'b',
        ));
        let tx = Recorder {
            stored: HashMap::from([(stored.event.event_ulid.clone(), stored.digest.clone())]),
            ..Recorder::default()
        };
        let ingested = run_ready(run(&tx, &[stored.clone(), new.clone()])).unwrap();
        assert_eq!(ingested.result.inserted_events, 1);
        assert_eq!(ingested.result.upserted_entities, 1);
        assert_eq!(ingested.new_ids, Some((0, 1)));
        assert_eq!(
            *tx.appended.borrow(),
            std::slice::from_ref(&new.event.event_ulid)
        );
        assert_eq!(tx.writes.borrow()[0].key, "n/y");
        assert_eq!(
            *tx.maxima.borrow(),
            BTreeMap::from([("a".to_owned(), 1), ("b".to_owned(), 3)])
        );

        assert_eq!(
            *tx.digest.borrow(),
            {
                let mut d = ReplicaDigest::EMPTY;
                d.replace("n/y", None, &new.event.version());
                d
            },
            "the new winner's leaf is added to the digest"
        );

        let again = run_ready(run(&tx, &[stored])).unwrap();
        assert_eq!(again, Ingested::default(), "a repeat writes nothing");
        assert_eq!(tx.appended.borrow().len(), 1);
    }

    #[test]
    fn a_reused_ulid_refuses_the_batch_before_anything_is_written() {
        let stored = CheckedEvent::new(event("a", "n/x", VectorClock::from([("a", 1)]), 'a'));
        let new = CheckedEvent::new(event("a", "n/y", VectorClock::from([("a", 2)]), 'b'));
        let tx = Recorder {
            stored: HashMap::from([(stored.event.event_ulid.clone(), "0".repeat(64))]),
            ..Recorder::default()
        };
        let err = run_ready(run(&tx, &[new, stored])).unwrap_err();
        assert!(matches!(err, BrainError::Conflict(_)), "{err}");
        assert!(tx.appended.borrow().is_empty());
        assert!(tx.writes.borrow().is_empty());
    }
}

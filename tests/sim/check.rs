//! The invariants every run must end with, once the network healed and every device synced.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use lib_agent::model::digest::{Convergence, ConvergenceState, ReplicaDigest};
use lib_agent::model::merge::{self, EntityState, Outcome};
use lib_agent::model::wire::SnapshotEntity;
use lib_agent::model::{Event, EventType, VectorClock, Version};
use lib_agent::store::read;
use rusqlite::Connection;
use sha2::{Digest, Sha256};

use super::world::World;

/// One entity as a replica holds it: the winner's fields and the merge state.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    key: String,
    winner: String,
    device: String,
    deleted: bool,
    sha256: Option<String>,
    bytes: Option<i64>,
    mtime_unix: Option<i64>,
    content: Option<String>,
    clock: VectorClock,
    seen_vc: VectorClock,
    siblings: Vec<Version>,
}

fn json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> T {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{what} is not valid JSON ({e}): {text}"))
}

fn brain_rows(entities: Vec<SnapshotEntity>) -> Vec<Row> {
    entities
        .into_iter()
        .map(|e| Row {
            key: e.entity_key,
            winner: e.event_ulid,
            device: e.device_id,
            deleted: e.deleted_at.is_some(),
            sha256: e.payload.sha256,
            bytes: e.payload.bytes.map(|b| b as i64),
            mtime_unix: e.payload.mtime_unix,
            content: e.payload.content,
            clock: e.vector_clock,
            seen_vc: e.seen_vc,
            siblings: e.siblings,
        })
        .collect()
}

fn device_rows(conn: &Connection) -> Vec<Row> {
    // The merge state is read through the store, which derives `seen_vc` and `siblings` when the
    // winner is the only sibling (it keeps no JSON copy of it then).
    let states: BTreeMap<String, EntityState> = read::merge_states(conn)
        .expect("read merge states")
        .into_iter()
        .collect();
    let mut stmt = conn
        .prepare(
            "SELECT path, event_ulid, device_id, deleted_at IS NOT NULL, sha256, bytes, mtime_unix,
                    content, vector_clock FROM lib_files ORDER BY path",
        )
        .expect("query lib_files");
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get::<_, String>(8)?,
            ))
        })
        .expect("read lib_files");
    rows.map(|r| {
        let (key, winner, device, deleted, sha256, bytes, mtime_unix, content, clock) =
            r.expect("lib_files row");
        let state = states
            .get(&key)
            .unwrap_or_else(|| panic!("{key} has no merge state"))
            .clone();
        Row {
            key,
            winner,
            device,
            deleted,
            sha256,
            bytes,
            mtime_unix,
            content,
            clock: json(&clock, "vector_clock"),
            seen_vc: state.seen_vc,
            siblings: state.siblings,
        }
    })
    .collect()
}

fn pairs(conn: &Connection, sql: &str) -> BTreeSet<(String, String)> {
    let mut stmt = conn.prepare(sql).expect("prepare");
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query");
    rows.map(|r| r.expect("row")).collect()
}

/// Every event a device ever made, in the order it made them (its outbox keeps pushed rows).
fn outbox_events(conn: &Connection) -> Vec<Event> {
    let mut stmt = conn
        .prepare(
            "SELECT event_ulid, device_id, event_type, entity_type, entity_key, payload_json,
                    vector_clock, created_at FROM lib_outbox ORDER BY id",
        )
        .expect("query outbox");
    let rows = stmt
        .query_map([], |r| {
            Ok(Event {
                event_ulid: r.get(0)?,
                device_id: r.get(1)?,
                event_type: EventType::parse(&r.get::<_, String>(2)?).expect("event type"),
                entity_type: r.get(3)?,
                entity_key: r.get(4)?,
                payload: json(&r.get::<_, String>(5)?, "payload_json"),
                vector_clock: json(&r.get::<_, String>(6)?, "vector_clock"),
                created_at: r.get(7)?,
            })
        })
        .expect("read outbox");
    rows.map(|r| r.expect("outbox row")).collect()
}

/// The files on a device's disk, by key, with the sha256 of their bytes.
fn disk(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root) {
        let entry = entry.expect("walk");
        if entry.file_type().is_file() {
            let rel = entry.path().strip_prefix(root).expect("under root");
            let bytes = std::fs::read(entry.path()).expect("read");
            out.insert(
                format!("lib/{}", rel.to_str().expect("utf-8")),
                hex::encode(Sha256::digest(&bytes)),
            );
        }
    }
    out
}

/// Timestamp columns of a device's store: all of them come from the store's clock.
const TIMESTAMPS: &[(&str, &str)] = &[
    ("lib_files", "indexed_at"),
    ("lib_files", "deleted_at"),
    ("lib_files", "event_created_at"),
    ("lib_observed", "observed_at"),
    ("lib_conflicts", "created_at"),
    ("lib_outbox", "created_at"),
    ("lib_outbox", "pushed_at"),
    ("lib_outbox", "parked_at"),
    ("lib_inbox", "created_at"),
    ("lib_inbox", "applied_at"),
];

/// Every timestamp a device's store keeps is a time of the simulated run: none came from the
/// real clock. (The device row, made with the database before a clock can be set, is the one
/// the system clock stamps.)
fn check_timestamps(id: &str, conn: &Connection, (start, end): (SystemTime, SystemTime)) {
    let seconds = |t: SystemTime| t.duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
    let range = seconds(start)..=seconds(end);
    let durable = "SELECT v FROM lib_kv WHERE k = 'durable_at'".to_owned();
    let queries = TIMESTAMPS
        .iter()
        .map(|(table, column)| format!("SELECT {column} FROM {table} WHERE {column} IS NOT NULL"))
        .chain([durable]);
    for sql in queries {
        let mut stmt = conn.prepare(&sql).expect("prepare");
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .expect("query");
        for text in rows {
            let text = text.expect("row");
            let at = humantime::parse_rfc3339(&text)
                .unwrap_or_else(|e| panic!("{id}: {sql}: {text:?} is not RFC 3339: {e}"));
            assert!(
                range.contains(&seconds(at)),
                "{id}: {sql}: {text} is not a time of the simulated run ({range:?})"
            );
        }
    }
}

/// What a run leaves behind, as lines to compare: the run's log, every row of every device's
/// store (inode numbers aside: the file system picks them) and every event the brain committed.
pub fn fingerprint(world: &mut World) -> Vec<String> {
    let mut lines = world.net.borrow().log.clone();
    for device in &mut world.devices {
        let id = device.id.clone();
        let db = rusqlite::Connection::open(device.store().path()).expect("open the database");
        let conn = &db;
        for sql in [
            "SELECT device_id, sequence FROM lib_device",
            "SELECT * FROM lib_files ORDER BY path",
            "SELECT path, bytes, mtime_ns, sha256, observed_at FROM lib_observed ORDER BY path",
            "SELECT * FROM lib_conflicts ORDER BY path, event_ulid",
            "SELECT * FROM lib_outbox ORDER BY id",
            "SELECT * FROM lib_inbox ORDER BY event_ulid",
            "SELECT * FROM lib_kv ORDER BY k",
        ] {
            let mut stmt = conn.prepare(sql).expect("prepare");
            let columns = stmt.column_count();
            let rows = stmt
                .query_map([], |r| {
                    (0..columns)
                        .map(|i| r.get_ref(i).map(|v| format!("{v:?}")))
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .expect("query");
            for row in rows {
                lines.push(format!("{id}: {sql}: {}", row.expect("row").join(", ")));
            }
        }
    }
    let net = world.net.borrow();
    lines.extend(
        net.brain
            .committed
            .values()
            .map(|e| format!("brain: {e:?}")),
    );
    lines
}

/// Panics with the first invariant the world breaks. Returns how many events and open conflicts
/// the run ended with.
pub fn check(world: &mut World) -> (u64, u64) {
    let (brain_rows, stored_conflicts, (logged, newest)) = {
        let net = world.net.borrow();
        let brain = &net.brain;
        (
            brain_rows(brain.entities()),
            brain.conflicts_table(),
            brain.log(),
        )
    };

    // Every event any device made, and what the merge rule says they add up to, in any order.
    let mut events: Vec<Event> = Vec::new();
    let mut last_local: Vec<(String, BTreeMap<String, Event>)> = Vec::new();
    for device in &mut world.devices {
        let id = device.id.clone();
        let store = device.store();
        let db = rusqlite::Connection::open(store.path()).expect("open the database");
        let conn = &db;
        assert!(
            store.pending_outbox(1).expect("outbox").is_empty(),
            "{id}: outbox not empty"
        );
        assert!(
            store.parked_outbox().expect("parked").is_empty(),
            "{id}: parked events"
        );
        let made = outbox_events(conn);
        let mut last = BTreeMap::new();
        for event in &made {
            last.insert(event.entity_key.clone(), event.clone());
        }
        last_local.push((id, last));
        events.extend(made);
    }
    let mut expected: BTreeMap<String, EntityState> = BTreeMap::new();
    for event in &events {
        let current = expected.get(&event.entity_key);
        if let Outcome::Applied { state, .. } = merge::apply(current, event.version()) {
            expected.insert(event.entity_key.clone(), state);
        }
    }

    // The brain holds exactly that.
    let keys: Vec<&String> = brain_rows.iter().map(|r| &r.key).collect();
    assert_eq!(
        keys,
        expected.keys().collect::<Vec<_>>(),
        "brain entities vs events made"
    );
    for row in &brain_rows {
        let state = &expected[&row.key];
        assert_eq!(
            row.winner,
            state.winner().event_ulid,
            "brain winner of {}",
            row.key
        );
        assert_eq!(row.seen_vc, state.seen_vc, "brain seen_vc of {}", row.key);
        assert_eq!(
            row.siblings, state.siblings,
            "brain siblings of {}",
            row.key
        );
    }
    let expected_conflicts: BTreeSet<(String, String)> = expected
        .iter()
        .flat_map(|(k, s)| {
            s.conflicts()
                .map(move |v| (k.clone(), v.event_ulid.clone()))
        })
        .collect();
    assert_eq!(stored_conflicts, expected_conflicts, "brain conflicts");

    // Every replica's shared view is the brain's entities, row for row, with the same conflicts.
    let span = world.span();
    let mut listed_by: Option<(String, String)> = None;
    for device in &mut world.devices {
        let id = device.id.clone();
        let root = device.root.clone();
        // And `agent conflicts --json` prints the same list everywhere, byte for byte: every
        // field is the events', none the replica's own.
        let listed =
            serde_json::to_string(&device.store().conflicts().expect("conflicts")).expect("JSON");
        match &listed_by {
            None => listed_by = Some((id.clone(), listed)),
            Some((first, theirs)) => {
                assert_eq!(&listed, theirs, "{id} lists conflicts other than {first}")
            }
        }
        let db = rusqlite::Connection::open(device.store().path()).expect("open the database");
        let conn = &db;
        check_timestamps(&id, conn, span);
        let rows = device_rows(conn);
        for (mine, theirs) in rows.iter().zip(&brain_rows) {
            assert_eq!(mine, theirs, "{id}: shared view differs from the brain");
        }
        assert_eq!(rows.len(), brain_rows.len(), "{id}: number of entities");
        assert_eq!(
            pairs(conn, "SELECT path, event_ulid FROM lib_conflicts"),
            expected_conflicts,
            "{id}: conflicts"
        );
        let cursor: i64 = conn
            .query_row("SELECT v FROM lib_kv WHERE k = 'sync_after_id'", [], |r| {
                r.get::<_, String>(0)
            })
            .map(|v| v.parse().expect("cursor"))
            .unwrap_or(0);
        assert!(
            cursor >= newest,
            "{id}: cursor {cursor} is behind the brain's newest event {newest}"
        );

        // Nothing on its disk went unnoticed: the observed state is the disk.
        let observed = pairs(conn, "SELECT path, sha256 FROM lib_observed");
        let on_disk: BTreeSet<(String, String)> = disk(&root).into_iter().collect();
        assert_eq!(
            observed, on_disk,
            "{id}: observed state vs the files on its disk"
        );
    }

    // No change silently gone: each device's last change of a key is the winner, an open
    // conflict, or was seen by a version that is.
    for (id, last) in &last_local {
        for (key, event) in last {
            let state = &expected[key];
            let kept = state.siblings.iter().any(|s| {
                s.event_ulid == event.event_ulid || s.clock.dominates(&event.vector_clock)
            });
            assert!(
                kept,
                "{id}: its last change of {key} ({}) was lost",
                event.event_ulid
            );
        }
    }
    // No winner is older than an event applied to its entity: no tombstone resurrected.
    for event in &events {
        let winner = expected[&event.entity_key].winner();
        assert!(
            !event.vector_clock.dominates(&winner.clock),
            "{}: winner {} is older than applied event {}",
            event.entity_key,
            winner.event_ulid,
            event.event_ulid
        );
    }

    // Every acknowledged event is in the brain's log as it was sent, unless a prune removed it;
    // a pruned one is gone from it.
    let net = world.net.borrow();
    let committed = &net.brain.committed;
    for (ulid, event) in committed {
        match logged.get(ulid) {
            Some(logged) => {
                assert_eq!(logged, event, "event {ulid} as the brain's log holds it");
                assert!(
                    !net.brain.pruned.contains(ulid),
                    "pruned event {ulid} is still in the brain's log"
                );
            }
            None => assert!(
                net.brain.pruned.contains(ulid),
                "acknowledged event {ulid} is missing from the brain's log"
            ),
        }
    }
    for event in &events {
        assert_eq!(
            committed.get(&event.event_ulid),
            Some(event),
            "event {} as it reached the brain",
            event.event_ulid
        );
    }
    assert_eq!(
        committed.len(),
        events.len(),
        "the brain committed events no device made"
    );

    // The same outcome again, from the events the brain committed and the rule as DESIGN.md
    // states it, without the merge code the stores share.
    let by_rule = by_the_rule(committed.values());
    assert_eq!(
        brain_rows
            .iter()
            .map(|r| r.key.as_str())
            .collect::<Vec<_>>(),
        by_rule.keys().copied().collect::<Vec<_>>(),
        "brain entities vs the entities of the logged events"
    );
    for row in &brain_rows {
        let want = &by_rule[row.key.as_str()];
        let siblings: BTreeSet<&str> = row.siblings.iter().map(|v| v.event_ulid.as_str()).collect();
        assert_eq!(
            siblings, want.siblings,
            "{}: the siblings are the applied versions no other one dominates",
            row.key
        );
        assert_eq!(
            row.winner, want.winner,
            "{}: the winner is the sibling with the greatest (clock sum, device, ULID)",
            row.key
        );
        let seen: BTreeMap<&str, u64> = row.seen_vc.entries().collect();
        assert_eq!(
            seen, want.seen_vc,
            "{}: seen_vc is the pointwise maximum",
            row.key
        );
    }
    let conflicts_by_rule: BTreeSet<(String, String)> = by_rule
        .iter()
        .flat_map(|(key, e)| {
            e.conflicts
                .iter()
                .map(move |u| (key.to_string(), u.to_string()))
        })
        .collect();
    assert_eq!(stored_conflicts, conflicts_by_rule, "conflicts by the rule");
    drop(net);
    check_convergence(world);
    (events.len() as u64, expected_conflicts.len() as u64)
}

/// DESIGN.md "Convergence you can check": every device's kept digest is the digest of its rows,
/// equals the brain's, and a pull at the head says so.
fn check_convergence(world: &mut World) {
    let brain = world.net.borrow().brain.replica();
    let derived = brain_digest(&world.net.borrow().brain.entities());
    assert_eq!(
        brain.digest, derived,
        "the brain's kept digest vs its entities"
    );
    for d in 0..world.devices.len() {
        let id = world.devices[d].id.clone();
        let check = world.devices[d]
            .store()
            .check_replica_digest()
            .expect("derive the digest");
        assert!(
            check.matches(),
            "{id}: the digest its commits kept ({:?}) is not its rows' ({})",
            check.kept,
            check.derived
        );
        assert_eq!(check.derived, brain.digest, "{id}: digest vs the brain's");
        assert_eq!(
            world.pull_convergence(d),
            Some(Convergence {
                state: ConvergenceState::Converged,
                lag: 0
            }),
            "{id}: what the brain says of it at the head"
        );
    }
}

/// The digest of the brain's entities, computed here from the definition.
fn brain_digest(entities: &[SnapshotEntity]) -> ReplicaDigest {
    let mut digest = ReplicaDigest::EMPTY;
    for e in entities {
        let mut h = Sha256::new();
        h.update(e.entity_key.as_bytes());
        h.update([0]);
        h.update(e.event_ulid.as_bytes());
        h.update([0]);
        match (&e.deleted_at, &e.payload.sha256) {
            (Some(_), _) => h.update(b"deleted"),
            (None, sha) => h.update(sha.as_deref().unwrap_or("").as_bytes()),
        }
        let leaf: [u8; 32] = h.finalize().into();
        digest.toggle(ReplicaDigest::from_hex(&hex(&leaf)).expect("64 hex digits"));
    }
    digest
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One entity as DESIGN.md's merge rule defines it over the set of applied events.
struct ByRule<'a> {
    winner: &'a str,
    siblings: BTreeSet<&'a str>,
    seen_vc: BTreeMap<&'a str, u64>,
    conflicts: BTreeSet<&'a str>,
}

/// `a` dominates `b`: no entry smaller, one greater (a missing entry is 0).
fn dominates(a: &BTreeMap<&str, u64>, b: &BTreeMap<&str, u64>) -> bool {
    let at = |c: &BTreeMap<&str, u64>, k: &str| c.get(k).copied().unwrap_or(0);
    let keys: BTreeSet<&str> = a.keys().chain(b.keys()).copied().collect();
    keys.iter().all(|k| at(a, k) >= at(b, k)) && keys.iter().any(|k| at(a, k) > at(b, k))
}

/// Every entity's winner, siblings, `seen_vc` and open conflicts, straight from the rule's
/// definitions: siblings are the applied versions no other applied version dominates; the winner
/// is the sibling with the greatest (clock sum, device id, ULID); the conflicts are the other
/// siblings whose bytes (or tombstone) differ from the winner's.
fn by_the_rule<'a>(events: impl Iterator<Item = &'a Event>) -> BTreeMap<&'a str, ByRule<'a>> {
    let mut by_key: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for event in events {
        by_key.entry(&event.entity_key).or_default().push(event);
    }
    by_key
        .into_iter()
        .map(|(key, versions)| {
            let clocks: Vec<BTreeMap<&str, u64>> = versions
                .iter()
                .map(|e| e.vector_clock.entries().collect())
                .collect();
            let siblings: Vec<usize> = (0..versions.len())
                .filter(|&i| !clocks.iter().any(|other| dominates(other, &clocks[i])))
                .collect();
            let rank = |i: &usize| {
                let e = versions[*i];
                let sum: u128 = clocks[*i].values().map(|&n| u128::from(n)).sum();
                (sum, e.device_id.as_str(), e.event_ulid.as_str())
            };
            let winner = *siblings.iter().max_by_key(|i| rank(i)).expect("a sibling");
            assert_eq!(
                Some(winner),
                (0..versions.len()).max_by_key(rank),
                "{key}: the greatest rank of all applied versions is a sibling's"
            );
            let bytes = |i: usize| {
                let e = versions[i];
                (e.event_type.is_delete(), e.payload.sha256.as_deref())
            };
            let mut seen_vc: BTreeMap<&str, u64> = BTreeMap::new();
            for clock in &clocks {
                for (&device, &n) in clock {
                    let entry = seen_vc.entry(device).or_default();
                    *entry = (*entry).max(n);
                }
            }
            let rule = ByRule {
                winner: &versions[winner].event_ulid,
                siblings: siblings
                    .iter()
                    .map(|&i| versions[i].event_ulid.as_str())
                    .collect(),
                seen_vc,
                conflicts: siblings
                    .iter()
                    .filter(|&&i| i != winner && bytes(i) != bytes(winner))
                    .map(|&i| versions[i].event_ulid.as_str())
                    .collect(),
            };
            (key, rule)
        })
        .collect()
}

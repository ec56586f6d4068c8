//! Generated, near-valid ingest batches, serialised to JSON and given to the handler's parse and
//! validation (`brain::server::parse_ingest`), so the fuzzer spends its time past the JSON layer.
//!
//! Every field is drawn from values whose validity is known (a good or a bad ULID, key, device id,
//! sha256...), and an event may carry one JSON-level defect (a missing field, a wrong type). That
//! gives an oracle: the target predicts the exact outcome (which events are kept, or which
//! `batch[i].field` the error names) and checks the brain decides the same, on top of the checks
//! every accepted batch gets (`fuzz/src/lib.rs`).
#![no_main]

use std::collections::{BTreeMap, HashMap};

use arbitrary::Arbitrary;
use lib_agent::brain::BrainError;
use lib_agent::model::wire::MAX_BATCH;
use lib_agent::model::Event;
use lib_agent_fuzz::MAX_CONTENT_BYTES;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};

const GOOD_ULIDS: &[&str] = &[
    "01J9ZQ8X4T6B2N3M5K7P9R1S2V",
    "01ARZ3NDEKTSV4RRFFQ69G5FAV",
    "00000000000000000000000000",
    "7ZZZZZZZZZZZZZZZZZZZZZZZZZ",
];
const BAD_ULIDS: &[&str] = &[
    "",
    "nope",
    "01ARZ3NDEKTSV4RRFFQ69G5FA",
    "01ARZ3NDEKTSV4RRFFQ69G5FAVV",
    "01ARZ3NDEKTSV4RRFFQ69G5FAU",
    "01ARZ3NDEKTSV4RRFFQ69G5FAI",
    // Over 128 bits: the top bits would be dropped, giving "7ZZ...Z" another spelling.
    "8ZZZZZZZZZZZZZZZZZZZZZZZZZ",
    // Lowercase: the same ULID as GOOD_ULIDS[1] spelled differently, so the same event could be
    // ingested twice under two idempotency keys.
    "01arz3ndektsv4rrffq69g5fav",
];
const GOOD_DEVICES: &[&str] = &[
    "dev-a",
    "dev-b",
    "5f0c1c9e-8d2a-4b7e-9a41-3c2d1e0f9a8b",
    "laptop.home_2",
    // "y" stands for an id of exactly 128 bytes.
    "y",
];
// "x" stands for an id one byte over the 128 allowed.
const BAD_DEVICES: &[&str] = &["", "a\u{0}b", "tab\there", "\u{85}", "x", "ünï", "a b", "a/b"];
const GOOD_ENTITY_TYPES: &[&str] = &["file"];
const BAD_ENTITY_TYPES: &[&str] = &["", "File", "dir", "file "];
const GOOD_KEYS: &[&str] = &[
    "notes/a.md",
    "notes/ideas/today.md",
    "n/caf\u{e9}.md",
    "lib/a b/c.txt",
    "a/.hidden",
    "a/..x",
    "a/b/c/d",
    // Stand-ins (see `entity_key`): exactly 1,024 bytes, exactly 64 segments.
    "EDGE_BYTES",
    "EDGE_SEGMENTS",
];
const BAD_KEYS: &[&str] = &[
    "",
    "/notes/a",
    "notes/../x",
    "notes/./a",
    "./a",
    "a/.",
    "notes//a",
    "notes/a/",
    "notes",
    "notes/a\nb",
    "notes/a\tb",
    "notes/a\u{7f}",
    "notes\\a",
    "notes/cafe\u{301}",
    // Stand-ins: 1,025 bytes, 65 segments.
    "OVER_BYTES",
    "OVER_SEGMENTS",
];
const GOOD_SHAS: &[&str] = &[
    "0000000000000000000000000000000000000000000000000000000000000000",
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
];
const BAD_SHAS: &[&str] = &[
    "",
    "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b8555",
    "g3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
];
/// Clock keys: device ids, and some that are not ("ünï", "", "a b").
const CLOCK_DEVICES: &[&str] = &["dev-a", "dev-b", "ünï", "", "other", "a b", "laptop.home_2"];
/// 0 entries are dropped as the clock is read; up to 2^53 is valid.
const CLOCK_VALUES: &[u64] = &[0, 1, 2, 3, 7, 1 << 53, (1 << 53) + 1, u64::MAX];
const GOOD_TIMES: &[&str] = &[
    "2026-11-25T10:00:00Z",
    "2026-02-10T10:06:00.25Z",
    "2026-02-10T11:06:00.123456789+01:00",
    "2024-02-29t23:59:60z",
];
const BAD_TIMES: &[&str] = &[
    "",
    "not a time",
    "2026-02-10 10:06:00.250+00",
    "2026-02-10T10:06:00",
    "2026-02-10T10:06:00+0100",
    "2025-02-29T10:00:00Z",
    "2026-02-10T24:00:00Z",
    "2026-02-10T10:06:00.Z",
];
const EVENT_TYPES: &[&str] = &["upsert_file", "delete_file", "initial_sync"];
const FIELDS: &[&str] = &[
    "event_ulid",
    "device_id",
    "event_type",
    "entity_type",
    "entity_key",
    "payload",
    "vector_clock",
    "created_at",
];

/// A value from a list of good ones or a list of bad ones.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum Pick {
    Good(u8),
    Bad(u8),
}

impl Pick {
    fn get(self, good: &[&'static str], bad: &[&'static str]) -> (&'static str, bool) {
        match self {
            Pick::Good(i) => (good[usize::from(i) % good.len()], true),
            Pick::Bad(i) if bad.is_empty() => (good[usize::from(i) % good.len()], true),
            Pick::Bad(i) => (bad[usize::from(i) % bad.len()], false),
        }
    }
}

/// A fault the JSON layer must catch, at `batch[i]` (a missing field) or `batch[i].field`.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum Defect {
    Missing(u8),
    WrongType(u8),
    BadPayloadValue(u8),
    BadClockValue(u8),
    UnknownEventType,
}

#[derive(Debug, Arbitrary)]
struct GenEvent {
    ulid: Pick,
    device: Pick,
    event_type: u8,
    entity_type: Pick,
    key: Pick,
    clock: Vec<(u8, u8)>,
    sha: Option<Pick>,
    bytes: Option<u64>,
    mtime_unix: Option<i64>,
    ext: Option<String>,
    mime: Option<String>,
    content: Option<String>,
    created_at: Pick,
    /// Pad the clock with this many more valid entries (257 and over is refused).
    wide: Option<u16>,
    /// Absent payload fields written as explicit `null`s (the same event).
    nulls: bool,
    /// A field the brain does not know (`id`, as a pulled event carries it): ignored.
    extra: Option<u32>,
    defect: Option<Defect>,
}

#[derive(Debug, Arbitrary)]
struct Input {
    events: Vec<GenEvent>,
    /// Repeat the first event until the batch is over the cap.
    oversize: bool,
}

/// The first field the brain's validation must name, if any (same order as `Event::validate`).
fn first_invalid(g: &GenEvent) -> Option<String> {
    let invalid = |field: &str| Some(field.to_owned());
    let (_, ulid_ok) = g.ulid.get(GOOD_ULIDS, BAD_ULIDS);
    let (_, device_ok) = g.device.get(GOOD_DEVICES, BAD_DEVICES);
    let device = device_id(g);
    let (_, entity_type_ok) = g.entity_type.get(GOOD_ENTITY_TYPES, BAD_ENTITY_TYPES);
    let (_, key_ok) = g.key.get(GOOD_KEYS, BAD_KEYS);
    let clock = clock(g);
    let own_entry = clock.get(device.as_str()).copied().unwrap_or(0) > 0;
    let is_delete = EVENT_TYPES[usize::from(g.event_type) % EVENT_TYPES.len()] == "delete_file";
    if !ulid_ok {
        return invalid("event_ulid");
    }
    if !device_ok {
        return invalid("device_id");
    }
    if !entity_type_ok {
        return invalid("entity_type");
    }
    if !key_ok {
        return invalid("entity_key");
    }
    if clock.len() > 256 {
        return invalid("vector_clock has");
    }
    // Entries in key order; a key is checked before its value.
    for (key, value) in &clock {
        let key_is_id = (1..=128).contains(&key.len())
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !key_is_id {
            return invalid("vector_clock key");
        }
        if *value > 1 << 53 {
            return Some(format!("vector_clock[{key:?}]"));
        }
    }
    if !own_entry {
        return invalid("vector_clock has no entry");
    }
    if !g.created_at.get(GOOD_TIMES, BAD_TIMES).1 {
        return invalid("created_at");
    }
    let printable = |s: &str, cap: usize| s.len() <= cap && s.bytes().all(|b| (0x20..=0x7e).contains(&b));
    if is_delete {
        let present = [
            ("payload.sha256", g.sha.is_some()),
            ("payload.bytes", g.bytes.is_some()),
            ("payload.mtime_unix", g.mtime_unix.is_some()),
            ("payload.ext", g.ext.is_some()),
            ("payload.mime", g.mime.is_some()),
            ("payload.content", g.content.is_some()),
        ];
        return present.iter().find(|(_, set)| *set).map(|(f, _)| (*f).to_owned());
    }
    if g.ext.as_deref().is_some_and(|e| !printable(e, 32)) {
        return invalid("payload.ext");
    }
    if g.mime.as_deref().is_some_and(|m| !printable(m, 255)) {
        return invalid("payload.mime");
    }
    if g.content.as_ref().is_some_and(|c| c.len() > MAX_CONTENT_BYTES) {
        return invalid("payload.content");
    }
    if g.bytes.is_some_and(|b| b > 1 << 53) {
        return invalid("payload.bytes");
    }
    match g.sha.map(|p| p.get(GOOD_SHAS, BAD_SHAS)) {
        None | Some((_, false)) => return invalid("payload.sha256"),
        Some((_, true)) => {}
    }
    if g.bytes.is_none() {
        return invalid("payload.bytes");
    }
    None
}

/// The clock as the brain reads it: later entries of a key win (as in a JSON object), zeros are
/// dropped.
fn clock(g: &GenEvent) -> BTreeMap<String, u64> {
    let mut clock: BTreeMap<String, u64> = g
        .clock
        .iter()
        .map(|&(d, v)| {
            (
                CLOCK_DEVICES[usize::from(d) % CLOCK_DEVICES.len()].to_owned(),
                CLOCK_VALUES[usize::from(v) % CLOCK_VALUES.len()],
            )
        })
        .collect();
    for i in 0..g.wide.map_or(0, |n| n % 300) {
        clock.insert(format!("w{i:03}"), 1);
    }
    clock.retain(|_, v| *v > 0);
    clock
}

fn device_id(g: &GenEvent) -> String {
    match g.device.get(GOOD_DEVICES, BAD_DEVICES) {
        ("x", false) => "x".repeat(129),
        ("y", true) => "y".repeat(128),
        (d, _) => d.to_owned(),
    }
}

fn entity_key(g: &GenEvent) -> String {
    match g.key.get(GOOD_KEYS, BAD_KEYS).0 {
        "EDGE_BYTES" => format!("notes/{}", "k".repeat(1024 - 6)),
        "OVER_BYTES" => format!("notes/{}", "k".repeat(1025 - 6)),
        "EDGE_SEGMENTS" => format!("notes{}", "/k".repeat(63)),
        "OVER_SEGMENTS" => format!("notes{}", "/k".repeat(64)),
        k => k.to_owned(),
    }
}

fn to_json(g: &GenEvent) -> Value {
    let mut payload = Map::new();
    let sha = g.sha.map(|p| p.get(GOOD_SHAS, BAD_SHAS).0);
    let optional: [(&str, Option<Value>); 6] = [
        ("sha256", sha.map(Value::from)),
        ("bytes", g.bytes.map(Value::from)),
        ("mtime_unix", g.mtime_unix.map(Value::from)),
        ("ext", g.ext.clone().map(Value::from)),
        ("mime", g.mime.clone().map(Value::from)),
        ("content", g.content.clone().map(Value::from)),
    ];
    for (name, value) in optional {
        match value {
            Some(v) => {
                payload.insert(name.into(), v);
            }
            None if g.nulls => {
                payload.insert(name.into(), Value::Null);
            }
            None => {}
        }
    }
    let mut event = json!({
        "event_ulid": g.ulid.get(GOOD_ULIDS, BAD_ULIDS).0,
        "device_id": device_id(g),
        "event_type": EVENT_TYPES[usize::from(g.event_type) % EVENT_TYPES.len()],
        "entity_type": g.entity_type.get(GOOD_ENTITY_TYPES, BAD_ENTITY_TYPES).0,
        "entity_key": entity_key(g),
        "payload": payload,
        "vector_clock": clock(g),
        "created_at": g.created_at.get(GOOD_TIMES, BAD_TIMES).0,
    });
    let obj = event.as_object_mut().expect("an object");
    if let Some(id) = g.extra {
        obj.insert("id".into(), Value::from(id));
    }
    match g.defect {
        None => {}
        Some(Defect::Missing(f)) => {
            obj.remove(FIELDS[usize::from(f) % FIELDS.len()]);
        }
        Some(Defect::WrongType(f)) => {
            let field = FIELDS[usize::from(f) % FIELDS.len()];
            let wrong = match field {
                "payload" => json!("x"),
                "vector_clock" => json!([1]),
                _ => json!(1),
            };
            obj.insert(field.into(), wrong);
        }
        Some(Defect::BadPayloadValue(f)) => {
            let (name, wrong) = match f % 6 {
                0 => ("bytes", json!(-1)),
                1 => ("bytes", json!(1.5)),
                2 => ("bytes", json!("1")),
                3 => ("mtime_unix", json!(1.5)),
                4 => ("sha256", json!(1)),
                _ => ("content", json!([])),
            };
            obj["payload"][name] = wrong;
        }
        Some(Defect::BadClockValue(f)) => {
            let wrong = match f % 3 {
                0 => json!(-1),
                1 => json!(1.5),
                _ => json!("1"),
            };
            obj["vector_clock"]["dev-a"] = wrong;
        }
        Some(Defect::UnknownEventType) => {
            obj.insert("event_type".into(), json!("rename_file"));
        }
    }
    event
}

/// The brain's answer, as the oracle expects it.
enum Expect {
    /// These events, in this order.
    Accepted(Vec<Event>),
    /// 400 whose message starts with `batch[i].field` (or `batch[i]:` for a missing field).
    Invalid(usize, Option<String>),
    TooLarge,
    /// 409 at `batch[i]`, naming the earlier `batch[first]`.
    Conflict(usize, usize),
}

fn expect(events: &[GenEvent], json: &[Value]) -> Expect {
    // serde stops at the first event it cannot read, before any validation.
    if let Some(i) = events.iter().position(|g| g.defect.is_some()) {
        let field = match events[i].defect {
            Some(Defect::Missing(_)) => None,
            _ => Some(String::new()),
        };
        return Expect::Invalid(i, field);
    }
    if json.len() > MAX_BATCH {
        return Expect::TooLarge;
    }
    let mut kept: Vec<Event> = Vec::new();
    let mut seen: HashMap<String, (usize, Event)> = HashMap::new();
    for (i, (g, value)) in events.iter().zip(json).enumerate() {
        if let Some(field) = first_invalid(g) {
            return Expect::Invalid(i, Some(field));
        }
        let event: Event = serde_json::from_value(value.clone()).expect("a defect-free event");
        match seen.get(&event.event_ulid) {
            Some((_, same)) if *same == event => continue,
            Some((first, _)) => return Expect::Conflict(i, *first),
            None => {}
        }
        seen.insert(event.event_ulid.clone(), (i, event.clone()));
        kept.push(event);
    }
    Expect::Accepted(kept)
}

fn starts_with_field(message: &str, i: usize, field: &str) -> bool {
    let prefix = if field.is_empty() {
        format!("batch[{i}].")
    } else {
        format!("batch[{i}].{field}")
    };
    message.strip_prefix(&prefix).is_some_and(|rest| {
        field.is_empty() || field.ends_with(']') || rest.starts_with(' ') || rest.starts_with(':')
    })
}

fuzz_target!(|input: Input| {
    let Input { mut events, oversize } = input;
    events.truncate(64);
    let mut json: Vec<Value> = events.iter().map(to_json).collect();
    if oversize && !json.is_empty() {
        while json.len() <= MAX_BATCH {
            json.push(json[0].clone());
        }
    }
    let body = serde_json::to_vec(&json!({ "batch": json })).expect("JSON serialises");
    let got = lib_agent_fuzz::ingest(&body);
    match (expect(&events, &json), got) {
        (Expect::Accepted(want), Ok(got)) => {
            let got: Vec<Event> = got.into_iter().map(|c| c.event).collect();
            assert_eq!(got, want, "accepted other events than expected");
        }
        (Expect::Invalid(i, Some(field)), Err(BrainError::Invalid(m))) => {
            assert!(
                starts_with_field(&m, i, &field),
                "expected an error at batch[{i}].{field}, got {m:?}"
            );
        }
        (Expect::Invalid(i, None), Err(BrainError::Invalid(m))) => {
            assert!(
                m.starts_with(&format!("batch[{i}]: missing field")),
                "expected a missing field at batch[{i}], got {m:?}"
            );
        }
        (Expect::TooLarge, Err(BrainError::TooLarge(m))) => {
            assert!(m.contains(&MAX_BATCH.to_string()), "{m}");
        }
        (Expect::Conflict(i, first), Err(BrainError::Conflict(m))) => {
            assert!(
                starts_with_field(&m, i, "event_ulid") && m.contains(&format!("batch[{first}]")),
                "expected a reused ULID at batch[{i}] (first at batch[{first}]), got {m:?}"
            );
        }
        (want, got) => {
            let want = match want {
                Expect::Accepted(e) => format!("accepted {} events", e.len()),
                Expect::Invalid(i, f) => format!("400 at batch[{i}] {f:?}"),
                Expect::TooLarge => "413".to_owned(),
                Expect::Conflict(i, first) => format!("409 at batch[{i}] (batch[{first}])"),
            };
            panic!("expected {want}, got {got:?}");
        }
    }
});

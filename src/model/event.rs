//! The event: one change to one entity, as stored in the outbox, sent to the brain and pulled back.
//! The JSON shape is LIB v1.1's (see DESIGN.md "Events").

use serde::{Deserialize, Serialize};

use super::clock::{VectorClock, MAX_CLOCK_ENTRIES, MAX_CLOCK_VALUE};
use super::key::{self, KeyError};
use super::merge::Version;

pub const ENTITY_TYPE_FILE: &str = "file";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    UpsertFile,
    DeleteFile,
    /// An upsert made by the backfill of a LIB v1.0 index.
    InitialSync,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::UpsertFile => "upsert_file",
            EventType::DeleteFile => "delete_file",
            EventType::InitialSync => "initial_sync",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        match s {
            "upsert_file" => Some(EventType::UpsertFile),
            "delete_file" => Some(EventType::DeleteFile),
            "initial_sync" => Some(EventType::InitialSync),
            _ => None,
        }
    }

    pub fn is_delete(self) -> bool {
        self == EventType::DeleteFile
    }
}

/// What an upsert says about the file. A delete's payload is `{}`: every field absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePayload {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_unix: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ext: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub event_ulid: String,
    pub device_id: String,
    pub event_type: EventType,
    pub entity_type: String,
    pub entity_key: String,
    pub payload: FilePayload,
    pub vector_clock: VectorClock,
    pub created_at: String,
}

/// At most this many bytes in `payload.ext`, printable ASCII.
pub const MAX_EXT_BYTES: usize = 32;
/// At most this many bytes in `payload.mime`, printable ASCII.
pub const MAX_MIME_BYTES: usize = 255;
/// The greatest `payload.bytes`, 2^53 (a file size every JSON reader holds exactly).
pub const MAX_FILE_BYTES: u64 = 1 << 53;
/// At most this many bytes in `created_at`: an RFC 3339 time with nanoseconds and an offset is 35.
pub const MAX_CREATED_AT_BYTES: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("event_ulid {} is not a ULID (26 uppercase base32 digits, at most 7ZZ…Z)", shown(.0))]
    Ulid(String),
    #[error(
        "device_id {} is not 1 to 128 bytes of ASCII letters, digits, `.`, `_` and `-`",
        shown(.0)
    )]
    DeviceId(String),
    #[error("entity_type {} is not \"file\"", shown(.0))]
    EntityType(String),
    #[error("entity_key: {0}")]
    Key(#[from] KeyError),
    #[error("vector_clock has no entry for its own device {}", shown(.0))]
    ClockMissingDevice(String),
    #[error("vector_clock has {0} entries, over the cap of {MAX_CLOCK_ENTRIES}")]
    ClockTooLarge(usize),
    #[error(
        "vector_clock key {} is not a device id (1 to 128 bytes of ASCII letters, digits, `.`, \
         `_` and `-`)",
        shown(.0)
    )]
    ClockKey(String),
    #[error("vector_clock[{}] is {value}, outside 1..=2^53", shown(.device))]
    ClockValue { device: String, value: u64 },
    #[error("payload.sha256 {} is not 64 lowercase hex digits", shown(.0))]
    Sha256(String),
    #[error("payload.{0} is missing from an upsert")]
    MissingField(&'static str),
    #[error("payload.{0} must be absent from a delete_file: its payload is {{}}")]
    DeletePayload(&'static str),
    #[error("payload.bytes is {0}, over the cap of 2^53")]
    Bytes(u64),
    #[error("payload.ext {} is not at most {MAX_EXT_BYTES} bytes of printable ASCII", shown(.0))]
    Ext(String),
    #[error("payload.mime {} is not at most {MAX_MIME_BYTES} bytes of printable ASCII", shown(.0))]
    Mime(String),
    #[error("payload.content is {size} bytes, over the cap of {cap}")]
    ContentTooLarge { size: usize, cap: usize },
    #[error(
        "created_at {} is not an RFC 3339 time (like 2026-02-10T10:06:00Z or \
         2026-02-10T11:06:00.25+01:00)",
        shown(.0)
    )]
    CreatedAt(String),
}

/// A value from the network, quoted for an error message: escaped, and cut to 64 characters
/// (a refused field may be megabytes).
fn shown(s: &str) -> String {
    const KEEP: usize = 64;
    match s.char_indices().nth(KEEP) {
        None => format!("{s:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &s[..cut], s.len()),
    }
}

pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A device id: 1 to 128 bytes of ASCII letters, digits, `.`, `_` and `-` (LIB v1.1's are UUIDs).
pub fn is_device_id(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A `payload.ext`: at most 32 bytes of printable ASCII (the indexer leaves out any other).
pub fn is_ext(s: &str) -> bool {
    s.len() <= MAX_EXT_BYTES && is_printable_ascii(s)
}

/// A `payload.mime`: at most 255 bytes of printable ASCII.
pub fn is_mime(s: &str) -> bool {
    s.len() <= MAX_MIME_BYTES && is_printable_ascii(s)
}

fn is_printable_ascii(s: &str) -> bool {
    s.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

/// A ULID in its one canonical spelling: 26 uppercase Crockford base32 digits, at most `7ZZ…Z`.
/// The `ulid` crate also reads lowercase, and silently drops the bits over 128 that a first digit
/// above `7` carries; the event ULID is the idempotency key, compared as a string, so either would
/// let one ULID name two events (found by fuzzing: `fuzz/`, target `ingest_structured`).
pub fn is_ulid(s: &str) -> bool {
    ulid::Ulid::from_string(s).is_ok_and(|u| u.to_string() == s)
}

/// An RFC 3339 `date-time` (section 5.6), strictly: `YYYY-MM-DDTHH:MM:SS`, an optional fraction,
/// then `Z` or `±HH:MM`; `T` and `Z` in either case; real calendar dates, a leap second allowed.
/// Written out because the parsers at hand accept more (humantime's takes a space for the `T`
/// and no offset at all).
pub fn is_rfc3339(s: &str) -> bool {
    fn digits(b: &[u8], at: usize, n: usize) -> Option<u32> {
        let part = b.get(at..at + n)?;
        part.iter().try_fold(0u32, |acc, d| {
            d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0'))
        })
    }
    let b = s.as_bytes();
    if b.len() > MAX_CREATED_AT_BYTES || b.len() < 20 {
        return false;
    }
    let fixed = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    if fixed.iter().any(|&(at, c)| b[at] != c) || !matches!(b[10], b'T' | b't') {
        return false;
    }
    let (Some(year), Some(month), Some(day), Some(hour), Some(minute), Some(second)) = (
        digits(b, 0, 4),
        digits(b, 5, 2),
        digits(b, 8, 2),
        digits(b, 11, 2),
        digits(b, 14, 2),
        digits(b, 17, 2),
    ) else {
        return false;
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    if !(1..=days).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return false;
    }
    let mut at = 19;
    if b[at] == b'.' {
        let fraction = b[at + 1..]
            .iter()
            .take_while(|d| d.is_ascii_digit())
            .count();
        if fraction == 0 {
            return false;
        }
        at += 1 + fraction;
    }
    match &b[at..] {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', _, _, b':', _, _] => {
            matches!((digits(b, at + 1, 2), digits(b, at + 4, 2)), (Some(h), Some(m)) if h <= 23 && m <= 59)
        }
        _ => false,
    }
}

/// Which rules [`Event::check`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rules {
    /// Every rule: what the brain accepts at ingest.
    Ingest,
    /// The size caps and what applying needs, without the format checks brains before the caps
    /// did not make (created_at, the device-id character set, a delete's empty payload, the
    /// characters of ext and mime): what the agent applies to a pulled event.
    Pulled,
}

impl Event {
    /// Checks every rule of DESIGN.md "Trust", as the brain does at ingest. Errors start with
    /// the field they are about (`payload.ext ...`).
    pub fn validate(&self, max_content_bytes: usize) -> Result<(), EventError> {
        self.check(max_content_bytes, Rules::Ingest)
    }

    /// Checks what a replica relies on before it applies a pulled event: the size caps, and the
    /// rules it needs to apply the event at all. An event a brain stored before the format rules
    /// (a `created_at` that is not RFC 3339, say) is still applied.
    pub fn validate_pulled(&self, max_content_bytes: usize) -> Result<(), EventError> {
        self.check(max_content_bytes, Rules::Pulled)
    }

    fn check(&self, max_content_bytes: usize, rules: Rules) -> Result<(), EventError> {
        let strict = rules == Rules::Ingest;
        if !is_ulid(&self.event_ulid) {
            return Err(EventError::Ulid(self.event_ulid.clone()));
        }
        let device_ok = if strict {
            is_device_id(&self.device_id)
        } else {
            is_device_id_sized(&self.device_id) && !self.device_id.chars().any(char::is_control)
        };
        if !device_ok {
            return Err(EventError::DeviceId(self.device_id.clone()));
        }
        if self.entity_type != ENTITY_TYPE_FILE {
            return Err(EventError::EntityType(self.entity_type.clone()));
        }
        key::validate(&self.entity_key)?;
        check_clock(&self.vector_clock, strict)?;
        // Every event bumps its own device's entry; without it the clock could not order it.
        if self.vector_clock.get(&self.device_id) == 0 {
            return Err(EventError::ClockMissingDevice(self.device_id.clone()));
        }
        if strict && !is_rfc3339(&self.created_at) {
            return Err(EventError::CreatedAt(self.created_at.clone()));
        }
        if !strict && self.created_at.len() > MAX_CREATED_AT_BYTES {
            return Err(EventError::CreatedAt(self.created_at.clone()));
        }
        let p = &self.payload;
        if self.event_type.is_delete() && strict {
            let present = [
                ("sha256", p.sha256.is_some()),
                ("bytes", p.bytes.is_some()),
                ("mtime_unix", p.mtime_unix.is_some()),
                ("ext", p.ext.is_some()),
                ("mime", p.mime.is_some()),
                ("content", p.content.is_some()),
            ];
            if let Some((field, _)) = present.iter().find(|(_, set)| *set) {
                return Err(EventError::DeletePayload(field));
            }
            return Ok(());
        }
        // Sizes, for every event a replica might keep (an old brain's delete may carry a payload).
        if let Some(ext) = &p.ext {
            if ext.len() > MAX_EXT_BYTES || (strict && !is_ext(ext)) {
                return Err(EventError::Ext(ext.clone()));
            }
        }
        if let Some(mime) = &p.mime {
            if mime.len() > MAX_MIME_BYTES || (strict && !is_mime(mime)) {
                return Err(EventError::Mime(mime.clone()));
            }
        }
        if let Some(content) = &p.content {
            if content.len() > max_content_bytes {
                return Err(EventError::ContentTooLarge {
                    size: content.len(),
                    cap: max_content_bytes,
                });
            }
        }
        if let Some(bytes) = p.bytes {
            if bytes > MAX_FILE_BYTES {
                return Err(EventError::Bytes(bytes));
            }
        }
        if !self.event_type.is_delete() {
            let sha = p
                .sha256
                .as_deref()
                .ok_or(EventError::MissingField("sha256"))?;
            if !is_sha256_hex(sha) {
                return Err(EventError::Sha256(sha.to_owned()));
            }
            if p.bytes.is_none() {
                return Err(EventError::MissingField("bytes"));
            }
        }
        Ok(())
    }

    /// The event as a version for the merge rule.
    pub fn version(&self) -> Version {
        let deleted = self.event_type.is_delete();
        Version {
            event_ulid: self.event_ulid.clone(),
            device_id: self.device_id.clone(),
            clock: self.vector_clock.clone(),
            deleted,
            sha256: if deleted {
                None
            } else {
                self.payload.sha256.clone()
            },
            bytes: if deleted { None } else { self.payload.bytes },
            mtime_unix: if deleted {
                None
            } else {
                self.payload.mtime_unix
            },
            created_at: self.created_at.clone(),
        }
    }
}

/// 1 to 128 bytes: the size part of the device-id rule, what a pulled clock key must meet.
fn is_device_id_sized(s: &str) -> bool {
    (1..=128).contains(&s.len())
}

/// The caps of a clock: at most 256 entries, each value 1..=2^53, each key a device id (with
/// `strict`; else only its size, as pulled events are checked).
pub fn check_clock(clock: &VectorClock, strict: bool) -> Result<(), EventError> {
    if clock.len() > MAX_CLOCK_ENTRIES {
        return Err(EventError::ClockTooLarge(clock.len()));
    }
    for (device, value) in clock.entries() {
        let key_ok = if strict {
            is_device_id(device)
        } else {
            is_device_id_sized(device)
        };
        if !key_ok {
            return Err(EventError::ClockKey(device.to_owned()));
        }
        if !(1..=MAX_CLOCK_VALUE).contains(&value) {
            return Err(EventError::ClockValue {
                device: device.to_owned(),
                value,
            });
        }
    }
    Ok(())
}

/// `created_at` timestamps: RFC 3339, UTC, whole seconds, as LIB v1.1 wrote them.
pub fn now_rfc3339() -> String {
    format_rfc3339(std::time::SystemTime::now())
}

/// A time as RFC 3339 text to the second, the form of every timestamp events and stores keep.
pub fn format_rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upsert() -> Event {
        Event {
            event_ulid: ulid::Ulid::new().to_string(),
            device_id: "dev-a".into(),
            event_type: EventType::UpsertFile,
            entity_type: "file".into(),
            entity_key: "notes/a.md".into(),
            payload: FilePayload {
                sha256: Some("a".repeat(64)),
                bytes: Some(3),
                mtime_unix: Some(1),
                ext: Some("md".into()),
                mime: Some("text/markdown".into()),
                content: Some("abc".into()),
            },
            vector_clock: VectorClock::from([("dev-a", 1)]),
            created_at: now_rfc3339(),
        }
    }

    #[test]
    fn the_json_shape_is_lib_v11s() {
        let mut e = upsert();
        e.event_type = EventType::DeleteFile;
        e.payload = FilePayload::default();
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["event_type"], "delete_file");
        assert_eq!(json["payload"], serde_json::json!({}));
        assert_eq!(json["vector_clock"], serde_json::json!({"dev-a": 1}));
        let back: Event = serde_json::from_value(json).unwrap();
        assert_eq!(back, e);
    }

    /// Regression (fuzz target `ingest_structured`): the brain accepted `01arz3…` next to
    /// `01ARZ3…`, and `8ZZ…Z`, which decodes to the same 128 bits as `0ZZ…Z`: two idempotency keys
    /// for one ULID.
    #[test]
    fn a_ulid_has_one_spelling() {
        let mut e = upsert();
        e.event_ulid = "01ARZ3NDEKTSV4RRFFQ69G5FAV".into();
        assert_eq!(e.validate(10), Ok(()));
        for other in [
            "01arz3ndektsv4rrffq69g5fav",
            "01ARZ3NDEKTSV4RRFFQ69G5FAv",
            "8ZZZZZZZZZZZZZZZZZZZZZZZZZ",
            "ZZZZZZZZZZZZZZZZZZZZZZZZZZ",
        ] {
            e.event_ulid = other.into();
            assert!(
                matches!(e.validate(10), Err(EventError::Ulid(_))),
                "{other} accepted"
            );
        }
        e.event_ulid = "7ZZZZZZZZZZZZZZZZZZZZZZZZZ".into();
        assert_eq!(e.validate(10), Ok(()), "the greatest ULID");
        assert!(is_ulid(&ulid::Ulid::new().to_string()));
    }

    #[test]
    fn validation_names_the_bad_field() {
        assert_eq!(upsert().validate(10), Ok(()));
        let mut e = upsert();
        e.event_ulid = "nope".into();
        assert!(matches!(e.validate(10), Err(EventError::Ulid(_))));
        let mut e = upsert();
        e.payload.sha256 = Some("A".repeat(64));
        assert!(matches!(e.validate(10), Err(EventError::Sha256(_))));
        let mut e = upsert();
        e.vector_clock = VectorClock::from([("other", 3)]);
        assert!(matches!(
            e.validate(10),
            Err(EventError::ClockMissingDevice(_))
        ));
        let mut e = upsert();
        e.entity_key = "notes/../x".into();
        assert!(matches!(e.validate(10), Err(EventError::Key(_))));
        assert!(matches!(
            upsert().validate(2),
            Err(EventError::ContentTooLarge { size: 3, cap: 2 })
        ));
        let mut e = upsert();
        e.payload.bytes = None;
        assert_eq!(e.validate(10), Err(EventError::MissingField("bytes")));
    }

    fn delete() -> Event {
        let mut e = upsert();
        e.event_type = EventType::DeleteFile;
        e.payload = FilePayload::default();
        e
    }

    /// Runs `edit` on a valid upsert; the error must start with `field`.
    fn refused(edit: impl FnOnce(&mut Event), field: &str) -> EventError {
        let mut e = upsert();
        edit(&mut e);
        let err = e.validate(10).expect_err(field);
        assert!(err.to_string().starts_with(field), "{field}: {err}");
        err
    }

    fn accepted(edit: impl FnOnce(&mut Event)) {
        let mut e = upsert();
        edit(&mut e);
        assert_eq!(e.validate(10), Ok(()));
    }

    #[test]
    fn device_ids_are_1_to_128_bytes_of_letters_digits_dot_underscore_dash() {
        for good in [
            "a",
            "5f0c2b8e-1d3a-4c7e-9b21-0a6f3c1d2e4a",
            "laptop.home_2",
            &"d".repeat(128),
        ] {
            assert!(is_device_id(good), "{good}");
            accepted(|e| {
                e.device_id = good.into();
                e.vector_clock = VectorClock::from([(good, 1)]);
            });
        }
        for bad in [
            "",
            &"d".repeat(129),
            "a b",
            "a/b",
            "caf\u{e9}",
            "a\u{1b}[31m",
            "a:b",
        ] {
            assert!(!is_device_id(bad), "{bad:?}");
            refused(
                |e| {
                    e.device_id = bad.into();
                    e.vector_clock = VectorClock::from([(bad, 1)]);
                },
                "device_id",
            );
        }
    }

    #[test]
    fn ext_is_at_most_32_and_mime_at_most_255_bytes_of_printable_ascii() {
        accepted(|e| e.payload.ext = Some("x".repeat(32)));
        accepted(|e| e.payload.ext = Some(String::new()));
        refused(|e| e.payload.ext = Some("x".repeat(33)), "payload.ext");
        refused(|e| e.payload.ext = Some("m\u{7}d".into()), "payload.ext");
        refused(|e| e.payload.ext = Some("\u{e9}".into()), "payload.ext");
        accepted(|e| e.payload.mime = Some("m".repeat(255)));
        accepted(|e| e.payload.mime = Some("text/plain; charset=utf-8".into()));
        refused(|e| e.payload.mime = Some("m".repeat(256)), "payload.mime");
        refused(
            |e| e.payload.mime = Some("text/\u{1b}]52;c;x".into()),
            "payload.mime",
        );
        refused(
            |e| e.payload.mime = Some("text/\u{7f}".into()),
            "payload.mime",
        );
    }

    #[test]
    fn bytes_is_at_most_2_pow_53() {
        accepted(|e| e.payload.bytes = Some(MAX_FILE_BYTES));
        let err = refused(
            |e| e.payload.bytes = Some(MAX_FILE_BYTES + 1),
            "payload.bytes",
        );
        assert_eq!(err, EventError::Bytes((1 << 53) + 1));
        refused(|e| e.payload.bytes = Some(u64::MAX), "payload.bytes");
    }

    #[test]
    fn a_clock_has_at_most_256_entries_each_a_device_id_with_a_value_up_to_2_pow_53() {
        let wide = |n: usize| {
            let mut clock = VectorClock::from([("dev-a", 1)]);
            for i in 1..n {
                clock.set(&format!("d{i}"), 1);
            }
            clock
        };
        accepted(|e| e.vector_clock = wide(256));
        let err = refused(|e| e.vector_clock = wide(257), "vector_clock");
        assert_eq!(err, EventError::ClockTooLarge(257));
        accepted(|e| e.vector_clock = VectorClock::from([("dev-a", MAX_CLOCK_VALUE)]));
        for value in [MAX_CLOCK_VALUE + 1, u64::MAX] {
            let err = refused(
                |e| e.vector_clock = VectorClock::from([("dev-a", 1), ("dev-b", value)]),
                "vector_clock[\"dev-b\"]",
            );
            assert!(matches!(err, EventError::ClockValue { .. }), "{err}");
        }
        for key in ["", "a b", &"k".repeat(129), "x\u{0}"] {
            refused(
                |e| e.vector_clock = VectorClock::from([("dev-a", 1), (key, 1)]),
                "vector_clock key",
            );
        }
    }

    #[test]
    fn created_at_is_an_rfc_3339_time() {
        for good in [
            "2026-02-10T10:06:00Z",
            "2026-02-10T10:06:00.25Z",
            "2026-02-10T10:06:00.123456789+01:00",
            "2026-02-10t10:06:00z",
            "2024-02-29T23:59:60-23:59",
            "0001-01-01T00:00:00Z",
        ] {
            assert!(is_rfc3339(good), "{good}");
            accepted(|e| e.created_at = good.into());
        }
        for bad in [
            "",
            "not a time",
            "2026-02-10 10:06:00.250+00",
            "2026-02-10T10:06:00",
            "2026-02-10T10:06:00+01",
            "2026-02-10T10:06:00+0100",
            "2026-02-10T10:06Z",
            "2026-02-10T10:06:00.Z",
            "2026-02-30T10:06:00Z",
            "2025-02-29T10:06:00Z",
            "2026-13-10T10:06:00Z",
            "2026-00-10T10:06:00Z",
            "2026-02-10T24:00:00Z",
            "2026-02-10T10:60:00Z",
            "2026-02-10T10:06:61Z",
            "2026-02-10T10:06:00+24:00",
            "2026-02-10T10:06:00Z ",
            "+2026-02-10T10:06:00Z",
            "2026-02-10T10:06:00.٣Z",
            &format!("2026-02-10T10:06:00.{}Z", "1".repeat(50)),
        ] {
            assert!(!is_rfc3339(bad), "{bad:?}");
            refused(|e| e.created_at = bad.into(), "created_at");
        }
    }

    #[test]
    fn a_delete_payload_is_empty() {
        assert_eq!(delete().validate(10), Ok(()));
        for (field, edit) in [
            (
                "sha256",
                (|p: &mut FilePayload| p.sha256 = Some("a".repeat(64))) as fn(&mut FilePayload),
            ),
            ("bytes", |p| p.bytes = Some(0)),
            ("mtime_unix", |p| p.mtime_unix = Some(1)),
            ("ext", |p| p.ext = Some("md".into())),
            ("mime", |p| p.mime = Some("text/plain".into())),
            ("content", |p| p.content = Some(String::new())),
        ] {
            let mut e = delete();
            edit(&mut e.payload);
            assert_eq!(e.validate(10), Err(EventError::DeletePayload(field)));
            assert!(
                e.validate(10)
                    .unwrap_err()
                    .to_string()
                    .starts_with(&format!("payload.{field}")),
                "{field}"
            );
        }
    }

    #[test]
    fn content_is_at_most_the_cap_and_keys_are_capped_too() {
        accepted(|e| e.payload.content = Some("x".repeat(10)));
        refused(
            |e| e.payload.content = Some("x".repeat(11)),
            "payload.content",
        );
        refused(
            |e| e.entity_key = format!("notes/{}", "a".repeat(1019)),
            "entity_key",
        );
        refused(
            |e| e.entity_key = format!("notes{}", "/a".repeat(64)),
            "entity_key",
        );
    }

    /// A pulled event is checked for sizes, not for the formats brains before the caps let in.
    #[test]
    fn a_pulled_event_meets_the_size_caps_but_not_the_newer_format_rules() {
        let lenient = |edit: fn(&mut Event)| {
            let mut e = upsert();
            edit(&mut e);
            assert!(e.validate(10).is_err(), "ingest refuses it");
            assert_eq!(e.validate_pulled(10), Ok(()), "a pull applies it");
        };
        lenient(|e| e.created_at = "2026-02-10 10:06:00.250+00".into());
        lenient(|e| e.created_at = String::new());
        lenient(|e| {
            e.device_id = "laptop one".into();
            e.vector_clock = VectorClock::from([("laptop one", 1)]);
        });
        lenient(|e| e.payload.ext = Some("\u{e9}t\u{e9}".into()));
        lenient(|e| {
            e.event_type = EventType::DeleteFile;
            e.payload.content = Some("junk".into());
        });
        let capped = |edit: fn(&mut Event), field: &str| {
            let mut e = upsert();
            edit(&mut e);
            let err = e.validate_pulled(10).expect_err(field);
            assert!(err.to_string().starts_with(field), "{field}: {err}");
        };
        capped(|e| e.created_at = "9".repeat(65), "created_at");
        capped(|e| e.payload.ext = Some("x".repeat(33)), "payload.ext");
        capped(|e| e.payload.mime = Some("x".repeat(256)), "payload.mime");
        capped(
            |e| e.payload.content = Some("x".repeat(11)),
            "payload.content",
        );
        capped(
            |e| {
                e.event_type = EventType::DeleteFile;
                e.payload.content = Some("x".repeat(11));
            },
            "payload.content",
        );
        capped(|e| e.payload.bytes = Some(u64::MAX), "payload.bytes");
        capped(
            |e| e.vector_clock = VectorClock::from([("dev-a", u64::MAX)]),
            "vector_clock",
        );
        capped(
            |e| e.vector_clock = VectorClock::from([("dev-a", 1), (&"k".repeat(129), 1)]),
            "vector_clock key",
        );
        capped(|e| e.device_id = "d".repeat(129), "device_id");
        capped(
            |e| e.entity_key = format!("notes/{}", "a".repeat(1019)),
            "entity_key",
        );
    }

    #[test]
    fn an_error_quotes_at_most_64_characters_of_the_value() {
        let err = refused(
            |e| e.payload.mime = Some("m".repeat(1 << 20)),
            "payload.mime",
        );
        let text = err.to_string();
        assert!(text.len() < 300, "{}", text.len());
        assert!(text.contains("1048576 bytes"), "{text}");
    }
}

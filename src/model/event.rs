//! The event: one change to one entity, as stored in the outbox, sent to the brain and pulled back.
//! The JSON shape is LIB v1.1's (see DESIGN.md "Events").

use serde::{Deserialize, Serialize};

use super::clock::VectorClock;
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

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("event_ulid {0:?} is not a ULID (26 uppercase base32 digits, at most 7ZZ…Z)")]
    Ulid(String),
    #[error("device_id {0:?} is empty, too long or has control characters")]
    DeviceId(String),
    #[error("entity_type {0:?} is not \"file\"")]
    EntityType(String),
    #[error("entity_key: {0}")]
    Key(#[from] KeyError),
    #[error("vector_clock has no entry for its own device {0:?}")]
    ClockMissingDevice(String),
    #[error("payload.sha256 {0:?} is not 64 lowercase hex digits")]
    Sha256(String),
    #[error("payload.{0} is missing from an upsert")]
    MissingField(&'static str),
    #[error("payload.content is {size} bytes, over the cap of {cap}")]
    ContentTooLarge { size: usize, cap: usize },
}

pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A device id: 1 to 128 bytes of ASCII letters, digits, `.`, `_` and `-` (LIB v1.1's are UUIDs).
pub fn is_device_id(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A ULID in its one canonical spelling: 26 uppercase Crockford base32 digits, at most `7ZZ…Z`.
/// The `ulid` crate also reads lowercase, and silently drops the bits over 128 that a first digit
/// above `7` carries; the event ULID is the idempotency key, compared as a string, so either would
/// let one ULID name two events (found by fuzzing: `fuzz/`, target `ingest_structured`).
pub fn is_ulid(s: &str) -> bool {
    ulid::Ulid::from_string(s).is_ok_and(|u| u.to_string() == s)
}

impl Event {
    /// Checks everything a replica relies on before it applies the event.
    pub fn validate(&self, max_content_bytes: usize) -> Result<(), EventError> {
        if !is_ulid(&self.event_ulid) {
            return Err(EventError::Ulid(self.event_ulid.clone()));
        }
        if self.device_id.is_empty()
            || self.device_id.len() > 128
            || self.device_id.chars().any(char::is_control)
        {
            return Err(EventError::DeviceId(self.device_id.clone()));
        }
        if self.entity_type != ENTITY_TYPE_FILE {
            return Err(EventError::EntityType(self.entity_type.clone()));
        }
        key::validate(&self.entity_key)?;
        // Every event bumps its own device's entry; without it the clock could not order it.
        if self.vector_clock.get(&self.device_id) == 0 {
            return Err(EventError::ClockMissingDevice(self.device_id.clone()));
        }
        if !self.event_type.is_delete() {
            let sha = self
                .payload
                .sha256
                .as_deref()
                .ok_or(EventError::MissingField("sha256"))?;
            if !is_sha256_hex(sha) {
                return Err(EventError::Sha256(sha.to_owned()));
            }
            if self.payload.bytes.is_none() {
                return Err(EventError::MissingField("bytes"));
            }
            if let Some(content) = &self.payload.content {
                if content.len() > max_content_bytes {
                    return Err(EventError::ContentTooLarge {
                        size: content.len(),
                        cap: max_content_bytes,
                    });
                }
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
}

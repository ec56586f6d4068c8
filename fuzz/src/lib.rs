//! What must hold of every body `POST /ingest` accepts or refuses, shared by the `ingest` (raw
//! bytes) and `ingest_structured` (generated, near-valid events) fuzz targets.
//!
//! Both drive `lib_agent::brain::server::parse_ingest`, the very function the handler runs before
//! the store sees a request, so a crash or a broken check here is one in the brain.

use std::collections::HashSet;

use lib_agent::brain::server::parse_ingest;
use lib_agent::brain::store::CheckedEvent;
use lib_agent::brain::BrainError;
use lib_agent::model::wire::{IngestRequest, MAX_BATCH};
use lib_agent::model::Event;

/// The content cap the targets run with: small, so that short inputs reach the cap's check.
pub const MAX_CONTENT_BYTES: usize = 64;

/// Runs the handler's parse and validation on `body` and checks what it decided.
pub fn ingest(body: &[u8]) -> Result<Vec<CheckedEvent>, BrainError> {
    let result = parse_ingest(body, MAX_CONTENT_BYTES);
    match &result {
        Ok(batch) => check_accepted(body, batch),
        Err(e) => check_refused(e),
    }
    result
}

/// A refusal is a 400, 409 or 413 with a reason: bad input is never a 5xx.
fn check_refused(e: &BrainError) {
    assert!(
        matches!(
            e,
            BrainError::Invalid(_) | BrainError::Conflict(_) | BrainError::TooLarge(_)
        ),
        "a bad body must be refused as 400/409/413, got {e:?}"
    );
    assert!(!e.to_string().is_empty(), "an error without a reason");
}

fn check_accepted(body: &[u8], batch: &[CheckedEvent]) {
    assert!(batch.len() <= MAX_BATCH, "accepted {} events", batch.len());
    // JSON text is UTF-8. (Not "parses as a serde_json::Value": a lone `\ud800` escape is valid
    // JSON syntax, which Value refuses and an unknown field may carry harmlessly.)
    assert!(
        std::str::from_utf8(body).is_ok(),
        "accepted a body that is not UTF-8, so not JSON"
    );
    let mut ulids = HashSet::new();
    for checked in batch {
        let event = &checked.event;
        if let Err(e) = event.validate(MAX_CONTENT_BYTES) {
            panic!("an accepted event fails validation again: {e}: {event:?}");
        }
        // The ULID is the idempotency key, compared as a string: one ULID must have one spelling,
        // and a string that decodes only by dropping bits (over 128) is no ULID at all.
        let canonical = ulid::Ulid::from_string(&event.event_ulid).map(|u| u.to_string());
        assert_eq!(
            canonical.as_deref(),
            Ok(event.event_ulid.as_str()),
            "accepted an event_ulid that is not a ULID in canonical form"
        );
        assert!(
            ulids.insert(event.event_ulid.as_str()),
            "ULID {} twice in an accepted batch",
            event.event_ulid
        );
        // The digest decides "same event" for idempotency: it must not depend on anything but
        // the event, nor change when the event goes through JSON again (push, pull, re-push).
        assert_eq!(&CheckedEvent::new(event.clone()), checked, "digest unstable");
        let json = serde_json::to_vec(event).expect("an event serialises");
        let back: Event = match serde_json::from_slice(&json) {
            Ok(back) => back,
            Err(e) => panic!("an accepted event does not parse back: {e}: {event:?}"),
        };
        assert_eq!(&back, event, "JSON round trip changed the event");
        assert_eq!(
            CheckedEvent::new(back).digest,
            checked.digest,
            "JSON round trip changed the digest"
        );
    }
    // What the brain accepted, sent again (a retried push, another brain), is accepted unchanged.
    let resent = serde_json::to_vec(&IngestRequest {
        batch: batch.iter().map(|c| c.event.clone()).collect(),
    })
    .expect("a request serialises");
    match parse_ingest(&resent, MAX_CONTENT_BYTES) {
        Ok(again) => assert_eq!(again, batch, "a re-sent accepted batch changed"),
        Err(e) => panic!("a re-sent accepted batch is refused: {e}"),
    }
}

//! Arbitrary bytes as the body of `POST /ingest`: the handler's parse and validation
//! (`brain::server::parse_ingest`) never panics, and whatever it accepts re-validates, round-trips
//! through JSON unchanged and keeps its digest (checks in `fuzz/src/lib.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let _ = lib_agent_fuzz::ingest(body);
});

//! What the integration tests share, in one place: a throw-away home for runs of the real binary
//! (`lab`), a real brain server in process with its HTTP client and event builders (`brain`),
//! real processes of the binary that tests kill and restart (`process`), one `wait_until`
//! (`wait`), and the seeded generator of the simulation and the chaos test (`rng`).
//!
//! Each test binary (`tests/<name>/main.rs`) includes it with `#[path = "../support/mod.rs"]`:
//! cargo gives integration tests no other way to share code, and a few binaries share one copy.

#![allow(dead_code)] // each binary uses its own part of it

#[macro_use]
pub mod brain;
pub mod brain_blocking;
pub mod device;
pub mod lab;
pub mod net;
pub mod old_brain;
pub mod process;
pub mod rng;
pub mod wait;

//! Devices and a brain together: push, pull and merge between real stores, sync inside `agent
//! run` by long-poll and webhook, https end to end, crashes and faults at the worst moments, and
//! the chaos test of real processes. One test binary (fewer links, a faster build).

#[macro_use]
#[path = "../support/mod.rs"]
mod support;

mod bootstrap;
mod chaos;
mod lib_v1_1;
mod push_pull;
mod run_metrics;
mod sync_crash;
mod sync_faults;
mod sync_run;
mod tls;

//! lib-agent: keeps a searchable index of a person's files converged across their machines.
//!
//! Data flow: `scan` (and the watcher) feed `index`, which commits each change to the local
//! `store` (observed state, shared view, full-text index and outbox in one transaction); `model`
//! holds what the agent and the brain share: the event, vector clocks and the merge rule.

pub mod brain;
pub mod burst_log;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod explain;
pub mod filter;
pub mod http_server;
pub mod index;
pub mod model;
pub mod private;
pub mod prometheus;
pub mod service;
pub mod store;
pub mod sync;
pub mod term;
pub mod tls;
pub mod watch;

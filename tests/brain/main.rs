//! The brain: its HTTP protocol on both stores, its command line, PostgreSQL over TLS and under
//! two concurrent brains, adopting LIB v1.1's database, and the trust rules (device tokens, caps,
//! bounded connections, safe webhooks). One test binary (fewer links, a faster build).

#[macro_use]
#[path = "../support/mod.rs"]
mod support;

mod brain_cli;
mod brain_concurrency;
mod brain_pg_tls;
mod brain_v11;
mod convergence;
mod protocol;
mod trust_caps;
mod trust_connections;
mod trust_devices;
mod trust_webhooks;

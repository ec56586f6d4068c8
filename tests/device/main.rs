//! One device on its own: the configuration contract, `agent scan`, the indexer and its store,
//! the watcher, the commands of `agent` and a full disk. One test binary (each links the whole
//! crate with its HTTP, TLS and SQLite dependencies, so fewer binaries build faster).

#[macro_use]
#[path = "../support/mod.rs"]
mod support;

mod cli;
mod config;
mod conflicts;
mod disk_full;
mod doctor;
mod explain;
mod guard;
mod ignore;
mod index;
mod library;
mod repository;
mod scan;
mod service;
mod watch;

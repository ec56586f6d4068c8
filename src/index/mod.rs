//! Indexing: what the disk holds, into the store. Two inputs feed one pipeline:
//!
//! - `agent scan` ([`scan`]): the tree [`walk`] of each library -> [`pipeline`] -> deletions of
//!   what the walk did not meet, behind the mass-delete [`guard`], on the file system the root
//!   was last seen on ([`root_fs`]);
//! - the watcher ([`watched`]): changed paths, looked at (a folder is walked whole) and compared
//!   with what this device observed -> [`pipeline`], its deletions through `agent run`'s
//!   sliding window ([`guard::DeleteGuard`]).
//!
//! A library taken out of the configuration is left ([`leave`]): no longer observed here; so are
//! the files its ignore files ([`ignore_rules`]) ignore now, which neither walk meets.
//!
//! The pipeline [`read`]s files on many threads (hash, mime, text, the racy-stat rule) and one
//! writer [`commit`]s them: observed state, shared view, FTS and outbox in one transaction.

mod commit;
pub mod guard;
pub mod ignore_rules;
mod leave;
mod pipeline;
mod read;
pub mod root_fs;
pub mod scan;
mod walk;
mod watched;

pub use commit::{commit, Change, Observation};
pub use leave::{forget_keys, leave_library, Left};
pub use read::{
    is_racy, read_file, read_file_at, read_file_with, FileStat, ReadError, ReadFile,
    UNTRUSTED_MTIME,
};
pub use walk::{folders_to_watch, Libraries};
pub use watched::{index_paths, index_paths_guarded, PathsOutcome};

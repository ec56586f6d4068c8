//! The run state: what `agent status` shows of a running agent, kept in `lib_kv` and rewritten
//! at most every [`STATE_INTERVAL`] while the agent is busy.

use std::time::{Duration, Instant};

use crate::index::PathsOutcome;
use crate::model::event::now_rfc3339;
use crate::store::{Store, StoreError};

/// The run state in `lib_kv` is rewritten at most this often while busy.
pub const STATE_INTERVAL: Duration = Duration::from_secs(1);

// The state's type and its `lib_kv` key belong to the store's typed `lib_kv` (`store::kv`);
// what the daemon does with it lives here.
pub use crate::store::kv::{LibraryMode, RunState, RUN_STATE_KEY as STATE_KEY};

impl RunState {
    /// The state of an agent starting now.
    pub fn starting() -> RunState {
        RunState {
            pid: std::process::id(),
            started_at: now_rfc3339(),
            state: "starting".into(),
            ..RunState::default()
        }
    }

    /// Records how a library is kept current, and says so when that changes (once, not at every
    /// retry). True when it changed.
    pub fn set_mode(&mut self, name: &str, mode: LibraryMode) -> bool {
        if self.libraries.get(name) == Some(&mode) {
            return false;
        }
        match &mode {
            LibraryMode::Polling { reason } => tracing::warn!(library = name, "{reason}"),
            LibraryMode::Watching if self.libraries.contains_key(name) => {
                tracing::info!(library = name, "watching again")
            }
            LibraryMode::Watching => {}
        }
        self.libraries.insert(name.to_owned(), mode);
        true
    }

    pub fn is_polled(&self, name: &str) -> bool {
        matches!(self.libraries.get(name), Some(LibraryMode::Polling { .. }))
    }

    /// Counts what one call of the indexer did (the daemon says it, a line a second at most).
    pub fn note_indexed(&mut self, outcome: &PathsOutcome) {
        self.changes_indexed += outcome.upserted + outcome.deleted;
        self.renames_reused += outcome.reused;
    }
}

/// The saved state, if any (one that cannot be read back counts as none: it is only a report).
pub fn read_state(store: &Store) -> Result<Option<RunState>, StoreError> {
    store.run_state()
}

/// Saves `state`, stamped now.
pub fn save_state(store: &mut Store, state: &mut RunState) -> Result<(), StoreError> {
    state.updated_at = now_rfc3339();
    let batch = store.batch()?;
    batch.set_run_state(state)?;
    batch.commit()
}

/// When the run state is due to be saved: once it changed, at most every [`STATE_INTERVAL`], so
/// a burst of changes does not cost a write per batch.
#[derive(Debug)]
pub struct StateSaver {
    dirty: bool,
    last_saved: Instant,
}

impl StateSaver {
    /// Just saved at `now`.
    pub fn new(now: Instant) -> StateSaver {
        StateSaver {
            dirty: false,
            last_saved: now,
        }
    }

    /// The state changed (when `changed`).
    pub fn changed(&mut self, changed: bool) {
        self.dirty |= changed;
    }

    /// When a save will be due, if one is.
    pub fn wake_at(&self) -> Option<Instant> {
        self.dirty.then_some(self.last_saved + STATE_INTERVAL)
    }

    pub fn is_due(&self, now: Instant) -> bool {
        self.dirty && now >= self.last_saved + STATE_INTERVAL
    }

    /// A save was tried at `now`; `written` when it got to the disk (otherwise it stays due).
    pub fn tried(&mut self, now: Instant, written: bool) {
        if written {
            self.dirty = false;
        }
        self.last_saved = now;
    }
}

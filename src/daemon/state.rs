//! The run state: what `agent status` shows of a running agent, kept in `lib_kv` and rewritten
//! at most every [`STATE_INTERVAL`] while the agent is busy.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::index::PathsOutcome;
use crate::model::event::now_rfc3339;
use crate::store::{Store, StoreError};

/// `lib_kv` key of the saved [`RunState`] (JSON).
pub const STATE_KEY: &str = "agent_run_state";
/// The run state in `lib_kv` is rewritten at most this often while busy.
pub const STATE_INTERVAL: Duration = Duration::from_secs(1);

/// How each library is being kept current.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum LibraryMode {
    Watching,
    /// Rescanned every poll interval (`RunOptions::poll_interval`), because it could not be
    /// watched.
    Polling {
        reason: String,
    },
}

/// What `agent status` shows of a running agent.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunState {
    pub pid: u32,
    pub started_at: String,
    pub updated_at: String,
    /// "starting", "running" or "stopped".
    pub state: String,
    pub libraries: BTreeMap<String, LibraryMode>,
    /// Paths changed and waiting for their settle window.
    pub backlog: usize,
    pub last_change_at: Option<String>,
    pub changes_indexed: u64,
    /// Renamed files whose hash and text were reused instead of read again.
    pub renames_reused: u64,
}

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

    /// Counts (and logs) what one call of the indexer, begun at `started`, did.
    pub fn note_indexed(&mut self, outcome: &PathsOutcome, started: Instant) {
        self.changes_indexed += outcome.upserted + outcome.deleted;
        self.renames_reused += outcome.reused;
        if outcome.upserted + outcome.deleted > 0 {
            tracing::info!(
                upserted = outcome.upserted,
                deleted = outcome.deleted,
                renamed = outcome.reused,
                errors = outcome.errors,
                ms = started.elapsed().as_millis() as u64,
                "indexed changes"
            );
        }
    }
}

/// The saved state, if any (one that cannot be read back counts as none: it is only a report).
pub fn read_state(store: &Store) -> Result<Option<RunState>, StoreError> {
    Ok(store
        .kv_get(STATE_KEY)?
        .and_then(|s| serde_json::from_str(&s).ok()))
}

/// Saves `state`, stamped now.
pub fn save_state(store: &mut Store, state: &mut RunState) -> Result<(), StoreError> {
    state.updated_at = now_rfc3339();
    let json = serde_json::to_string(state).unwrap_or_default();
    let batch = store.batch()?;
    batch.kv_set(STATE_KEY, &json)?;
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

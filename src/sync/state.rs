//! What `agent status` shows of sync: the brain, whether it answered, the wake-up in effect, and
//! when a push and a pull last succeeded. `agent run`'s threads and `agent sync` both record their
//! outcome here, so the status is the same whichever of them talked to the brain last.

use super::SyncError;
use crate::store::{Store, StoreError};

pub use crate::store::kv::SyncState;

/// Which half of a sync an outcome is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Push,
    Pull,
}

impl Step {
    fn as_str(self) -> &'static str {
        match self {
            Step::Push => "push",
            Step::Pull => "pull",
        }
    }
}

/// How one push or pull ended.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    /// It succeeded. `answered` is false when there was nothing to send (an empty outbox): the
    /// brain was not asked, so this says nothing about whether it is reachable.
    Done {
        answered: bool,
    },
    Failed(&'a SyncError),
}

impl<'a> Outcome<'a> {
    /// The outcome of a push (answered when it sent a request) or a pull (always answered).
    pub fn of<T>(result: &'a Result<T, SyncError>, answered: impl FnOnce(&T) -> bool) -> Self {
        match result {
            Ok(value) => Outcome::Done {
                answered: answered(value),
            },
            Err(e) => Outcome::Failed(e),
        }
    }
}

/// The saved state, if any (one that cannot be read back counts as none: it is only a report).
pub fn load(store: &Store) -> Result<Option<SyncState>, StoreError> {
    store.sync_state()
}

/// Records the outcome of one push or pull. `realtime` is the wake-up in effect, `None` from
/// `agent sync`, which has none and leaves `agent run`'s alone.
///
/// Read, update and write happen in one write transaction: the pusher and the puller (and an
/// `agent sync` beside them) record concurrently, and neither may put back a field the other
/// just changed.
pub fn record(
    store: &mut Store,
    brain_url: &str,
    realtime: Option<&str>,
    step: Step,
    outcome: Outcome<'_>,
) -> Result<(), StoreError> {
    let batch = store.batch()?;
    let mut state = batch.sync_state()?.unwrap_or_default();
    brain_url.clone_into(&mut state.brain_url);
    if let Some(realtime) = realtime {
        realtime.clone_into(&mut state.realtime);
    }
    match outcome {
        Outcome::Done { answered } => {
            if answered {
                state.reachable = Some(true);
                state.last_error = None;
            }
            let at = Some(batch.now());
            match step {
                Step::Push => state.last_push_at = at,
                Step::Pull => state.last_pull_at = at,
            }
        }
        Outcome::Failed(e) => {
            // A refusal (401, 400) is an answer: the brain is reachable, the request is wrong.
            state.reachable = Some(!e.is_retryable());
            state.last_error = Some(format!("{}: {e}", step.as_str()));
        }
    }
    batch.set_sync_state(&state)?;
    batch.commit()
}

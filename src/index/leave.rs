//! A library taken out of the configuration (`agent library remove`): this device stops
//! observing it. Files an ignore file ignores now are left the same way, one by one. Its entries stay in the shared view, where other devices may still have those
//! files; with `forget`, each file this device observed there is recorded as deleted, on purpose,
//! as if it had been deleted from the disk.

use super::commit::{commit, Change, Observation};
use super::pipeline::BATCH;
use crate::store::{self, Store};

/// What leaving a library did.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Left {
    /// Observed files this device no longer observes.
    pub unobserved: u64,
    /// Delete events recorded (with `forget`).
    pub deleted: u64,
}

/// Drops this device's observed rows of library `name`, recording their deletions when
/// `forget`; in transactions of [`BATCH`] files, like a scan's.
pub fn leave_library(store: &mut Store, name: &str, forget: bool) -> store::Result<Left> {
    let keys: Vec<String> = store
        .observed_under(&format!("{name}/"))?
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    let mut left = Left::default();
    if forget {
        for chunk in keys.chunks(BATCH) {
            let batch = store.batch()?;
            for key in chunk {
                let gone = Observation::Gone { key: key.clone() };
                if commit(&batch, &gone)? == Change::Deleted {
                    left.deleted += 1;
                }
                left.unobserved += 1;
            }
            batch.commit()?;
        }
    } else {
        left.unobserved = unobserve(store, &keys)?;
    }
    // A library added back under this name is a new one: its file system is learnt afresh,
    // and nothing is held for it.
    let batch = store.batch()?;
    batch.forget_library_guards(name)?;
    batch.commit()?;
    Ok(left)
}

/// Stops observing `keys` here, with no event: the files stay in the shared view, as they are
/// on the other devices. A library left, or files its ignore files ignore now. In transactions
/// of [`BATCH`] keys; returns how many there were.
pub(super) fn unobserve(store: &mut Store, keys: &[String]) -> store::Result<u64> {
    for chunk in keys.chunks(BATCH) {
        let batch = store.batch()?;
        for key in chunk {
            batch.forget_observed(key)?;
        }
        batch.commit()?;
    }
    Ok(keys.len() as u64)
}

/// The keys among `keys` (of `library`) that its ignore files ignore now: not met by a walk,
/// yet not gone either.
pub(super) fn ignored_now<'k>(
    library: &crate::config::LibraryConfig,
    keys: impl IntoIterator<Item = &'k str>,
) -> Vec<String> {
    let mut keys = keys.into_iter().peekable();
    if keys.peek().is_none() {
        return Vec::new(); // the usual case: no ignore file read again, nor warned about again
    }
    let mut rules = super::ignore_rules::Rules::new(library);
    let prefix = format!("{}/", library.name);
    keys.filter(|key| {
        key.strip_prefix(&prefix)
            .is_some_and(|rel| rules.ignores(&library.path.join(rel), false))
    })
    .map(str::to_owned)
    .collect()
}

/// Records the deletion of `keys` on purpose (`agent forget`): a delete event for each that
/// the shared view does not have deleted already, and this device stops observing them.
pub fn forget_keys(store: &mut Store, keys: &[String]) -> store::Result<Left> {
    let mut left = Left::default();
    for chunk in keys.chunks(BATCH) {
        let batch = store.batch()?;
        for key in chunk {
            if batch.observed(key)?.is_some() {
                left.unobserved += 1;
            }
            let forgotten = Observation::Forgotten { key: key.clone() };
            if commit(&batch, &forgotten)? == Change::Deleted {
                left.deleted += 1;
            }
        }
        batch.commit()?;
    }
    Ok(left)
}

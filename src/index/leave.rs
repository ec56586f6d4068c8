//! A library taken out of the configuration (`agent library remove`): this device stops
//! observing it. Its entries stay in the shared view, where other devices may still have those
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
    for chunk in keys.chunks(BATCH) {
        let batch = store.batch()?;
        for key in chunk {
            if forget {
                let gone = Observation::Gone { key: key.clone() };
                if commit(&batch, &gone)? == Change::Deleted {
                    left.deleted += 1;
                }
            } else {
                batch.forget_observed(key)?;
            }
            left.unobserved += 1;
        }
        batch.commit()?;
    }
    // A library added back under this name is a new one: its file system is learnt afresh,
    // and nothing is held for it.
    let batch = store.batch()?;
    batch.forget_library_guards(name)?;
    batch.commit()?;
    Ok(left)
}

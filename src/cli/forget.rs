//! `agent forget PATH...`: deletions recorded on purpose, for files this device will not delete
//! from its disk (an ignore file keeps a file out of view here with no delete event; this is how
//! the other devices are told to delete it too).

use std::path::{Path, PathBuf};

use anyhow::bail;
use serde::Serialize;

use super::GlobalArgs;
use crate::config::{Config, LibraryConfig};
use crate::model::key;
use crate::store::Store;

/// Record files as deleted, for every device: a delete event for each, and this device stops
/// observing it. A file still on the disk and not ignored is indexed again by the next scan:
/// list it in a .libignore first to keep it out here
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Files (or folders: every file indexed below) of a library; each must be indexed
    #[arg(value_name = "PATH", required = true)]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Forgotten {
    ok: bool,
    /// The entity keys recorded as deleted (or deleted already in the shared view).
    forgotten: Vec<String>,
    /// Delete events recorded.
    deleted: u64,
    /// Of those keys, how many this device observed.
    unobserved: u64,
}

pub fn run(args: Args, global: &GlobalArgs, config: &Config) -> anyhow::Result<()> {
    let mut store = Store::open(&config.store.path)?;
    // Every path is checked before anything is recorded: a typo leaves the index as it was.
    let mut keys = Vec::new();
    for path in &args.paths {
        for key in keys_of(&store, config, path)? {
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    let left = crate::index::forget_keys(&mut store, &keys)?;
    if global.json {
        super::print_json(&Forgotten {
            ok: true,
            forgotten: keys,
            deleted: left.deleted,
            unobserved: left.unobserved,
        })?;
    } else {
        for key in &keys {
            println!("forgot {key}");
        }
        println!(
            "recorded {}",
            crate::term::count(left.deleted, "deletion", "deletions")
        );
    }
    Ok(())
}

/// The indexed keys `path` stands for: its own, or those of the files indexed below it.
fn keys_of(store: &Store, config: &Config, path: &Path) -> anyhow::Result<Vec<String>> {
    let Some((library, rel)) = locate(config, path) else {
        bail!("{}: not in any library", path.display());
    };
    let rel = key::relative_key(&rel)?;
    if rel.is_empty() {
        bail!(
            "{}: is the root of library {}; `agent library remove --forget {}` forgets a whole library",
            path.display(),
            library.name,
            library.name
        );
    }
    let key = key::entity_key(&library.name, &rel)?;
    if store.observed(&key)?.is_some() || store.live_file(&key)?.is_some() {
        return Ok(vec![key]);
    }
    let below: Vec<String> = store
        .observed_under(&format!("{key}/"))?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    if below.is_empty() {
        bail!("{}: not indexed (no file {key})", path.display());
    }
    Ok(below)
}

/// The innermost library holding `path` (as spelled, or with its symlinks resolved), and the
/// path relative to its root.
fn locate<'a>(config: &'a Config, path: &Path) -> Option<(&'a LibraryConfig, PathBuf)> {
    let absolute = std::path::absolute(path).ok()?;
    let canonical = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_owned());
    let spellings = [absolute.clone(), canonical(&absolute)];
    let mut best: Option<(&LibraryConfig, PathBuf, usize)> = None;
    for library in &config.libraries {
        for root in [library.path.clone(), canonical(&library.path)] {
            for spelled in &spellings {
                if let Ok(rel) = spelled.strip_prefix(&root) {
                    let depth = root.as_os_str().len();
                    if best.as_ref().is_none_or(|(_, _, d)| depth > *d) {
                        best = Some((library, rel.to_path_buf(), depth));
                    }
                }
            }
        }
    }
    best.map(|(library, rel, _)| (library, rel))
}

//! The tree walk: every included regular file under a folder of a library, in path order,
//! leaving out what its ignore files ignore (ignored folders are not entered), the database's
//! own files and the names shadowed by an NFC twin; and the
//! libraries a running agent indexes, each with its compiled filter.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use walkdir::WalkDir;

use super::ignore_rules::Rules;
use crate::config::{Config, LibraryConfig};
use crate::model::key;

/// The database and its WAL files, as (device, inode): indexing them when the store lives inside
/// a library would turn every commit into a new change.
pub(super) fn database_files(db: &Path) -> Vec<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    ["", "-wal", "-shm", "-journal"]
        .iter()
        .filter_map(|suffix| {
            let mut p = db.as_os_str().to_owned();
            p.push(suffix);
            std::fs::metadata(PathBuf::from(p))
                .ok()
                .map(|m| (m.dev(), m.ino()))
        })
        .collect()
}

#[derive(Default)]
pub(super) struct WalkOutcome {
    /// Key prefixes of folders that could not be read: their observed files may well still exist.
    pub failed_dirs: Vec<String>,
    /// Why the starting folder itself could not be read.
    pub root_error: Option<String>,
}

/// Walks a library from `start` (its root, or a folder in it, for the watcher), handing every
/// included regular file to `sink` as (path, entity key); `sink` returns false to stop the walk.
pub(super) fn walk_tree(
    library: &LibraryConfig,
    start: &Path,
    skip_files: &[(u64, u64)],
    errors: &AtomicU64,
    mut sink: impl FnMut(PathBuf, String) -> bool,
) -> WalkOutcome {
    let root = &library.path;
    let filter = &library.filter;
    let mut outcome = WalkOutcome::default();
    let mut rules = Rules::new(library);
    rules.enter(start);
    let relative = |path: &Path| -> Option<Result<String, key::KeyError>> {
        path.strip_prefix(root).ok().map(key::relative_key)
    };
    // Sorted: keys then reach the path-keyed b-trees (lib_files, lib_observed) in order, which
    // keeps their inserts local, and events come out in a deterministic order. Siblings share
    // their parent's path, so whole paths sort as their names do, without taking each name
    // apart at every comparison (a quarter of the walk's work, measured).
    let walker = WalkDir::new(start)
        .follow_links(false)
        .min_depth(1)
        .sort_by(|a, b| a.path().as_os_str().cmp(b.path().as_os_str()))
        .into_iter()
        .filter_entry(|entry| {
        let is_dir = entry.file_type().is_dir();
        // Ignored folders are not entered; a file in one cannot be taken back out by a `!`
        // line below it, as in git.
        if let Some(parent) = entry.path().parent() {
            rules.enter(parent);
        }
        if rules.ignores_entry(entry.path(), is_dir) {
            return false;
        }
        if !is_dir {
            return true;
        }
        match relative(entry.path()) {
            Some(Ok(rel)) => !filter.prunes_dir(&rel) && !shadowed_by_nfc_twin(entry),
            Some(Err(e)) => {
                tracing::warn!(library = %library.name, path = ?entry.path(), "skipped folder: {e}");
                errors.fetch_add(1, Ordering::Relaxed);
                false
            }
            None => true,
        }
    });
    for entry in walker {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                let path = e.path().map(Path::to_path_buf);
                tracing::warn!(library = %library.name, path = ?path, "cannot read: {e}");
                errors.fetch_add(1, Ordering::Relaxed);
                if let Some(Ok(rel)) = path.as_deref().and_then(relative) {
                    if path.as_deref() == Some(start) {
                        let reason = e
                            .io_error()
                            .map_or_else(|| e.to_string(), ToString::to_string);
                        outcome.root_error = Some(reason);
                    }
                    if rel.is_empty() {
                        outcome.failed_dirs.push(format!("{}/", library.name));
                    } else {
                        outcome.failed_dirs.push(format!("{}/{rel}/", library.name));
                    }
                }
                continue;
            }
        };
        // Symlinks are not followed (no loops, no files outside the library); sockets and fifos
        // have no content to index.
        if !entry.file_type().is_file() {
            continue;
        }
        let rel = match relative(entry.path()) {
            Some(Ok(rel)) => rel,
            Some(Err(e)) => {
                tracing::warn!(library = %library.name, path = ?entry.path(), "skipped: {e}");
                errors.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            None => continue,
        };
        if !filter.includes_file(&rel) {
            continue;
        }
        if is_database_file(&entry, skip_files) || shadowed_by_nfc_twin(&entry) {
            continue;
        }
        let key = match key::entity_key(&library.name, &rel) {
            Ok(key) => key,
            Err(e) => {
                tracing::warn!(library = %library.name, path = ?entry.path(), "skipped: {e}");
                errors.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        if !sink(entry.into_path(), key) {
            break; // the consumer failed; stop walking
        }
    }
    outcome
}

/// How many files [`walk_tree`] would hand over, about: the same pruning and globs, but
/// unsorted, without keys, and silent (the real walk reports what it cannot read). A progress
/// bar's total, for a library the agent has not observed yet; run on a thread of its own, it
/// races the real walk, which waits on reads. Counts into `count` as it goes; `stop` ends it.
pub(super) fn count_files(library: &LibraryConfig, count: &AtomicU64, stop: &AtomicBool) {
    let root = &library.path;
    let relative = |path: &Path| path.strip_prefix(root).ok().map(key::relative_key);
    let mut rules = Rules::new(library);
    let walker = WalkDir::new(root)
        .follow_links(false)
        .min_depth(1)
        .into_iter()
        .filter_entry(|entry| {
            let is_dir = entry.file_type().is_dir();
            if let Some(parent) = entry.path().parent() {
                rules.enter(parent);
            }
            !rules.ignores_entry(entry.path(), is_dir)
                && (!is_dir
                    || matches!(relative(entry.path()), Some(Ok(rel)) if !library.filter.prunes_dir(&rel)))
        });
    for entry in walker.flatten() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        if entry.file_type().is_file()
            && matches!(relative(entry.path()), Some(Ok(rel)) if library.filter.includes_file(&rel))
        {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The folders of `library` from `start` (itself included) that its ignore files do not ignore:
/// those the watcher watches, each on its own, so that an ignored folder (a `node_modules/` in
/// `.libignore`) costs no inotify watch. The same rules as [`walk_tree`]'s.
pub fn folders_to_watch(library: &LibraryConfig, start: &Path) -> Vec<PathBuf> {
    let mut rules = Rules::new(library);
    if start != library.path && rules.ignores(start, true) {
        return Vec::new();
    }
    let walker = WalkDir::new(start)
        .follow_links(false)
        .into_iter()
        .filter_entry(|entry| {
            if !entry.file_type().is_dir() {
                return false;
            }
            if entry.depth() == 0 {
                return true;
            }
            if let Some(parent) = entry.path().parent() {
                rules.enter(parent);
            }
            !rules.ignores_entry(entry.path(), true)
        });
    walker
        .filter_map(Result::ok)
        .map(walkdir::DirEntry::into_path)
        .collect()
}

/// Compared by device and inode, not by path: the database may be reached through a symlink,
/// and the walk sees the library's own spelling of the path.
fn is_database_file(entry: &walkdir::DirEntry, skip_files: &[(u64, u64)]) -> bool {
    use walkdir::DirEntryExt;
    skip_files.iter().any(|(_, ino)| *ino == entry.ino())
        && entry.metadata().is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            skip_files.contains(&(m.dev(), m.ino()))
        })
}

/// Two names that differ only in Unicode normalisation (possible on Linux) would be one entity
/// key and overwrite each other on every scan. The name already in NFC wins; the other is
/// reported and skipped. On a normalisation-insensitive file system (macOS) both spellings open
/// the same file, which is no clash.
fn shadowed_by_nfc_twin(entry: &walkdir::DirEntry) -> bool {
    use unicode_normalization::UnicodeNormalization;
    use walkdir::DirEntryExt;
    let Some(name) = entry.file_name().to_str() else {
        return false;
    };
    if name.is_ascii() || unicode_normalization::is_nfc(name) {
        return false;
    }
    let nfc: String = name.nfc().collect();
    let twin = entry.path().with_file_name(nfc);
    match std::fs::symlink_metadata(&twin) {
        Ok(meta) => {
            use std::os::unix::fs::MetadataExt;
            if meta.ino() == entry.ino() {
                return false;
            }
            tracing::warn!(
                path = ?entry.path(),
                twin = ?twin,
                "skipped: differs from another name only in Unicode normalisation; rename one of them"
            );
            true
        }
        Err(_) => false,
    }
}

/// The libraries of a running agent, resolved once: roots, filters, and the database's own files.
pub struct Libraries {
    entries: Vec<LibraryConfig>,
    pub(super) skip_files: Vec<(u64, u64)>,
    pub(super) max_content_bytes: usize,
    /// `[index] hash_threads`, for [`reader_threads`](super::pipeline): 0 is the default.
    pub(super) hash_threads: usize,
}

impl Libraries {
    pub fn new(config: &Config, db: &Path) -> Libraries {
        let mut entries = config.libraries.clone();
        // Longest root first, so a library nested in another claims its own paths.
        entries.sort_by_key(|l| std::cmp::Reverse(l.path.as_os_str().len()));
        Libraries {
            entries,
            skip_files: database_files(db),
            max_content_bytes: config.index.max_content_bytes,
            hash_threads: config.index.hash_threads,
        }
    }

    /// The library a path is in, and the path relative to its root.
    pub(super) fn locate<'a>(&'a self, path: &'a Path) -> Option<(&'a LibraryConfig, &'a Path)> {
        self.entries.iter().find_map(|library| {
            path.strip_prefix(&library.path)
                .ok()
                .map(|rel| (library, rel))
        })
    }

    pub(super) fn libraries(&self) -> &[LibraryConfig] {
        &self.entries
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|l| l.name.as_str())
    }
}

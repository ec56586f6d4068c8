//! The watcher's way in: changed paths -> the pipeline. Each path is looked at (a file, a folder
//! walked whole, or gone), compared with what this device observed, renames recognised, and the
//! rest read and committed by [`pipeline::read_and_commit`].

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::commit::Observation;
use super::guard::DeleteGuard;
use super::pipeline::{self, Candidate, GROUP};
use super::read::{is_racy, FileStat, ReadFile};
use super::walk::{walk_tree, Libraries};
use super::{ignore_rules, leave};
use crate::store::{self, Observed};

/// What indexing a set of changed paths did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathsOutcome {
    pub upserted: u64,
    pub deleted: u64,
    pub unchanged: u64,
    /// Files recognised as renamed (same inode, size and mtime as a path gone in the same batch):
    /// their hash and text were reused instead of read again.
    pub reused: u64,
    /// Files read (or reused) so soon after they were written that their stat cannot vouch for
    /// them ([`is_racy`]): the next look at them reads them again.
    pub racy: u64,
    /// Observed files an ignore file ignores now: no longer observed, no event.
    pub ignored: u64,
    pub errors: u64,
    /// Libraries whose root itself changed: the caller rescans them (behind the mass-delete guard).
    pub rescan: Vec<String>,
}

/// What one changed path turned out to be, before the database is asked anything.
enum Seen {
    /// The library's root itself changed: the caller rescans it, behind the mass-delete guard.
    Root(String),
    /// A file to look at, with its stat (`None` when it vanished or changed kind meanwhile: the
    /// probe takes it again).
    File {
        key: String,
        path: std::path::PathBuf,
        stat: Option<FileStat>,
    },
    /// A folder created or moved in, walked: every file met, with its path and stat unless it
    /// still settles after events of its own (it is left to those), and the folders that could
    /// not be read.
    Folder {
        key: String,
        walked: Vec<(String, Option<Found>)>,
        failed: Vec<String>,
    },
    /// Deleted, moved out, or replaced by something that is not a file (a symlink).
    Gone { key: String },
}

/// A file a walk met and that is to be looked at: its path, and its stat if it could be taken.
type Found = (std::path::PathBuf, Option<FileStat>);

/// Looks at every path (stat, and a walk of each folder) on a few threads, in the paths'
/// order: this is file system work, and on the single writer's thread it took about as long as
/// the commits of a burst of new files.
fn look_at_all(
    libs: &Libraries,
    paths: &[std::path::PathBuf],
    pending: &(dyn Fn(&Path) -> bool + Sync),
    errors: &std::sync::atomic::AtomicU64,
) -> Vec<Seen> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    // A changed ignore file changes what its folder holds: the folder is looked at whole (its
    // walk meets what the file admits now; what it ignores now is not met).
    let mut expanded: Vec<PathBuf> = paths.to_vec();
    for path in paths {
        if let Some((library, _)) = libs.locate(path) {
            if let Some(folder) = ignore_rules::ignore_file_folder(library, path) {
                if !expanded.iter().any(|p| p == folder) {
                    expanded.push(folder.to_path_buf());
                }
            }
        }
    }
    let paths = &expanded[..];
    let rounds = paths.len().div_ceil(GROUP);
    let threads = pipeline::reader_threads(libs.hash_threads, pipeline::Reads::Cached).min(rounds);
    if threads <= 1 {
        let mut rules = RulesByLibrary::default();
        return paths
            .iter()
            .filter_map(|p| look_at(libs, &mut rules, p, pending, errors))
            .collect();
    }
    let next = AtomicUsize::new(0);
    let mut parts: Vec<(usize, Vec<Seen>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let round = next.fetch_add(1, Ordering::Relaxed);
                        let Some(chunk) = paths.chunks(GROUP).nth(round) else {
                            break;
                        };
                        let mut rules = RulesByLibrary::default();
                        let seen = chunk
                            .iter()
                            .filter_map(|p| look_at(libs, &mut rules, p, pending, errors))
                            .collect();
                        mine.push((round, seen));
                    }
                    mine
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| {
                w.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    parts.sort_by_key(|(round, _)| *round);
    parts.into_iter().flat_map(|(_, seen)| seen).collect()
}

/// The ignore rules of the libraries a group of paths is in, each kept while the group is
/// looked at (the paths are sorted: neighbours share their folders' ignore files).
#[derive(Default)]
struct RulesByLibrary<'a>(Vec<ignore_rules::Rules<'a>>);

impl<'a> RulesByLibrary<'a> {
    fn of(&mut self, library: &'a crate::config::LibraryConfig) -> &mut ignore_rules::Rules<'a> {
        let at = match self.0.iter().position(|r| r.library().name == library.name) {
            Some(at) => at,
            None => {
                self.0.push(ignore_rules::Rules::new(library));
                self.0.len() - 1
            }
        };
        &mut self.0[at]
    }
}

fn look_at<'a>(
    libs: &'a Libraries,
    rules: &mut RulesByLibrary<'a>,
    path: &'a std::path::PathBuf,
    pending: &(dyn Fn(&Path) -> bool + Sync),
    errors: &std::sync::atomic::AtomicU64,
) -> Option<Seen> {
    use std::sync::atomic::Ordering;
    let (library, rel) = libs.locate(path)?;
    let filter = &library.filter;
    if rel.as_os_str().is_empty() {
        return Some(Seen::Root(library.name.clone()));
    }
    let rel = match crate::model::key::relative_key(rel) {
        Ok(rel) => rel,
        Err(e) => {
            tracing::warn!(library = %library.name, path = ?path, "skipped: {e}");
            errors.fetch_add(1, Ordering::Relaxed);
            return None;
        }
    };
    let key = crate::model::key::entity_key(&library.name, &rel).ok()?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() => {
            let included = filter.includes_file(&rel)
                && !libs.skip_files.contains(&(meta.dev(), meta.ino()))
                && !rules.of(library).ignores(path, false);
            included.then(|| Seen::File {
                key,
                path: path.clone(),
                stat: Some(FileStat::of(&meta)),
            })
        }
        Ok(meta) if meta.is_dir() => {
            if filter.prunes_dir(&rel) || rules.of(library).ignores(path, true) {
                return None;
            }
            let mut walked = Vec::new();
            let walk = walk_tree(library, path, &libs.skip_files, errors, |p, k| {
                let found = (!pending(&p)).then(|| {
                    let stat = std::fs::symlink_metadata(&p)
                        .ok()
                        .filter(std::fs::Metadata::is_file)
                        .map(|meta| FileStat::of(&meta));
                    (p, stat)
                });
                walked.push((k, found));
                true
            });
            Some(Seen::Folder {
                key,
                walked,
                failed: walk.failed_dirs,
            })
        }
        Ok(_) => Some(Seen::Gone { key }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Some(Seen::Gone { key }),
        Err(e) => {
            tracing::warn!(path = ?path, "cannot stat: {e}");
            errors.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Indexes paths the watcher saw change, in transactions as large as the scan's. A path may be a
/// file (created, modified, renamed in), a folder (created or moved in: indexed whole), or gone
/// (deleted or moved out: it and everything observed beneath it become deletions). Files that
/// are new under a name but were observed under a name gone in the same batch are renames.
pub fn index_paths(
    store: &mut store::Store,
    libs: &Libraries,
    paths: &[std::path::PathBuf],
) -> store::Result<PathsOutcome> {
    index_paths_leaving(store, libs, paths, &|_| false, None)
}

/// [`index_paths`] for `agent run`: the walk of a folder leaves out the files `pending` names
/// (the watcher's, still settling after events of their own: a folder is walked as soon as it
/// is created, and a file being written in it would be read half-written, then again when
/// done), and deletions pass the mass-delete `guard` (renames are not deletions to it).
pub fn index_paths_guarded(
    store: &mut store::Store,
    libs: &Libraries,
    paths: &[std::path::PathBuf],
    pending: &(dyn Fn(&Path) -> bool + Sync),
    guard: &mut DeleteGuard,
) -> store::Result<PathsOutcome> {
    index_paths_leaving(store, libs, paths, pending, Some(guard))
}

fn index_paths_leaving(
    store: &mut store::Store,
    libs: &Libraries,
    paths: &[std::path::PathBuf],
    pending: &(dyn Fn(&Path) -> bool + Sync),
    guard: Option<&mut DeleteGuard>,
) -> store::Result<PathsOutcome> {
    use std::collections::{BTreeMap, BTreeSet, HashMap};
    use std::sync::atomic::{AtomicU64, Ordering};

    let mut outcome = PathsOutcome::default();
    let errors = AtomicU64::new(0);
    // Each file to look at, with its stat when it was taken already.
    let mut files: BTreeMap<String, (std::path::PathBuf, Option<FileStat>)> = BTreeMap::new();
    let mut gone: BTreeSet<String> = BTreeSet::new();
    let mut gone_prefixes: Vec<String> = Vec::new();
    let mut failed_dirs: Vec<String> = Vec::new();

    for seen in look_at_all(libs, paths, pending, &errors) {
        match seen {
            Seen::Root(name) => {
                if !outcome.rescan.contains(&name) {
                    outcome.rescan.push(name);
                }
            }
            Seen::File { key, path, stat } => {
                files.insert(key, (path, stat));
            }
            Seen::Folder {
                key,
                walked,
                failed,
            } => {
                failed_dirs.extend(failed);
                let mut met = BTreeSet::new();
                for (k, found) in walked {
                    met.insert(k.clone());
                    if let Some((path, stat)) = found {
                        files.insert(k, (path, stat));
                    }
                }
                // A file this folder replaced is gone; so are observed files under the folder
                // that the walk did not meet.
                let prefix = format!("{key}/");
                gone.insert(key);
                for (k, _) in store.observed_under(&prefix)? {
                    if !met.contains(&k) {
                        gone.insert(k);
                    }
                }
            }
            Seen::Gone { key } => {
                gone_prefixes.push(format!("{key}/"));
                gone.insert(key);
            }
        }
    }

    // What went away, with its observed stat: a file that appears elsewhere with the same inode,
    // size and mtime is the same file renamed.
    let mut gone_rows: HashMap<(u64, u64, i64), (String, Observed)> = HashMap::new();
    for prefix in &gone_prefixes {
        for (k, row) in store.observed_under(prefix)? {
            gone.insert(k.clone());
            gone_rows.insert((row.inode, row.bytes, row.mtime_ns), (k, row));
        }
    }
    gone.retain(|k| {
        !files.contains_key(k) && !failed_dirs.iter().any(|d| k.starts_with(d.as_str()))
    });
    // Files an ignore file ignores now are not gone: no longer observed here, no event.
    let mut ignored: Vec<String> = Vec::new();
    for library in libs.libraries() {
        let prefix = format!("{}/", library.name);
        let keys = gone
            .iter()
            .filter(|k| k.starts_with(&prefix))
            .map(String::as_str);
        ignored.extend(leave::ignored_now(library, keys));
    }
    for k in &ignored {
        gone.remove(k);
    }
    if !ignored.is_empty() {
        outcome.ignored = leave::unobserve(store, &ignored)?;
    }
    for k in &gone {
        if let Some(row) = store.observed(k)? {
            gone_rows.insert((row.inode, row.bytes, row.mtime_ns), (k.clone(), row));
        }
    }

    // Probe: skip what is unchanged, reuse what was renamed, read the rest. One read
    // transaction for all the lookups, rather than one (with its file locks) per lookup.
    let mut present: Vec<Observation> = Vec::new();
    let mut to_read: Vec<Candidate> = Vec::new();
    let mut renamed: BTreeSet<String> = BTreeSet::new();
    let probe = store.read_transaction()?;
    for (key, (path, stat)) in files {
        let stat = match stat {
            Some(stat) => stat,
            None => match std::fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_file() => FileStat::of(&meta),
                _ => continue, // gone again already; its own event follows
            },
        };
        let observed = store.observed(&key)?;
        if observed
            .as_ref()
            .is_some_and(|o| stat.unchanged_since(&FileStat::from(o)))
        {
            outcome.unchanged += 1;
            continue;
        }
        if let Some((file, old_key)) = reuse_renamed(store, &gone_rows, &path, &stat)? {
            outcome.reused += 1;
            renamed.insert(old_key);
            present.push(Observation::Present {
                key,
                file,
                unobserved: observed.is_none(),
            });
            continue;
        }
        to_read.push(Candidate {
            path,
            key,
            unobserved: observed.is_none(),
            bytes: stat.bytes,
        });
    }
    drop(probe);
    let gone = match guard {
        Some(guard) => {
            let (moved, lost): (Vec<String>, Vec<String>) =
                gone.into_iter().partition(|k| renamed.contains(k));
            let mut admitted = guard.admit(store, lost, std::time::Instant::now())?;
            admitted.extend(moved);
            admitted.sort();
            admitted
        }
        None => gone.into_iter().collect(),
    };
    let gone = gone
        .into_iter()
        .map(|key| Observation::Gone { key })
        .collect();
    let mut committed = pipeline::Committed::default();
    pipeline::read_and_commit(
        store,
        libs,
        present,
        &to_read,
        gone,
        &errors,
        &mut committed,
    )?;
    outcome.upserted += committed.upserted;
    outcome.deleted += committed.deleted;
    outcome.unchanged += committed.unchanged;
    outcome.racy += committed.racy;
    outcome.errors = errors.load(Ordering::Relaxed);
    Ok(outcome)
}

/// A file with the inode, size and mtime of a path gone in the same batch is that file renamed:
/// its hash is the observed one, and its text the shared view's when the mime type is unchanged.
fn reuse_renamed(
    store: &store::Store,
    gone_rows: &std::collections::HashMap<(u64, u64, i64), (String, Observed)>,
    path: &Path,
    stat: &FileStat,
) -> store::Result<Option<(ReadFile, String)>> {
    let Some((old_key, row)) = gone_rows.get(&(stat.inode, stat.bytes, stat.mtime_ns)) else {
        return Ok(None);
    };
    let Some((sha, old_mime, content)) = store.live_file(old_key)? else {
        return Ok(None);
    };
    let mime = mime_guess::from_path(path).first();
    let new_mime = mime.as_ref().map(|m| m.essence_str().to_owned());
    // Only when the text the new name calls for is the text the old name had.
    if sha != row.sha256 || new_mime.is_none() || new_mime != old_mime {
        return Ok(None);
    }
    Ok(Some((
        ReadFile {
            stat: *stat,
            racy: is_racy(stat.mtime_ns, store.clock().now()),
            sha256: sha,
            ext: path
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase),
            mime: new_mime.unwrap_or_default(),
            content,
            payload_json: None,
        }
        .with_payload_json(),
        old_key.clone(),
    )))
}

//! `agent explain PATH|KEY`: everything this device knows of one path, gathered in one place,
//! like `git check-ignore -v` and more. Which library it belongs to and the rule that decided
//! whether it is indexed; whether `agent run` watches its folder; its observed state against the
//! disk now (would the next look read it again, and why); the text kept; the shared view's winner,
//! siblings and conflicts; and this device's outbox and inbox events for it. The brain's side is
//! asked by the command (`cli::explain`), which owns the network.
//!
//! Nothing here writes: it reads the config, the disk and the store as they are.

use std::path::{Component, Path, PathBuf};

use serde::Serialize;

use crate::config::{Config, LibraryConfig};
use crate::index::ignore_rules::{RuleHit, Rules};
use crate::index::{FileStat, UNTRUSTED_MTIME};
use crate::model::key;
use crate::store::history::{LocalEvent, SharedEntry};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("{path} is in no library of this device ({libraries})")]
    OutsideLibraries { path: PathBuf, libraries: String },
    #[error("{what} is not a usable entity key: {reason}")]
    BadKey { what: String, reason: String },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The entity a command-line argument names.
#[derive(Debug, Clone)]
pub struct Target {
    pub key: String,
    /// Its library, when this device configures it.
    pub library: Option<LibraryConfig>,
    /// Where it is (or would be) on this device's disk.
    pub path: Option<PathBuf>,
}

/// Which rule decided whether the path is indexed, in the order they apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum Decision {
    /// Indexed: it matches this include glob, no exclude glob and no ignore file (or a `!` line
    /// re-included it).
    Indexed {
        include: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        reincluded_by: Option<RuleHit>,
    },
    /// No include glob matches it.
    NotIncluded {
        include: Vec<String>,
    },
    Excluded {
        exclude: String,
    },
    /// An ignore file's line ignores it, or a folder above it.
    Ignored {
        by: RuleHit,
    },
    /// A folder, not a file: folders are walked, not indexed.
    Folder,
    /// Its library is not configured on this device: only the shared view knows it.
    NotConfigured,
}

impl Decision {
    pub fn indexed(&self) -> bool {
        matches!(self, Decision::Indexed { .. })
    }
}

/// Whether `agent run` watches the path's folder.
#[derive(Debug, Clone, Serialize)]
pub struct Watch {
    /// `agent run` holds this database now.
    pub agent_running: bool,
    pub folder: Option<PathBuf>,
    pub watched: bool,
    pub why: String,
}

/// The path on disk now, against what this device last observed of it.
#[derive(Debug, Clone, Serialize)]
pub struct Disk {
    /// `file`, `folder`, `symlink`, `other` or `missing`.
    pub kind: &'static str,
    pub bytes: Option<u64>,
    pub mtime_ns: Option<i64>,
    pub inode: Option<u64>,
    /// This device's last observation (`lib_observed`).
    pub observed: Option<Observation>,
    /// Whether the next look (a scan, or the watcher) reads the file again.
    pub next_look_reads: bool,
    pub why: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Observation {
    pub bytes: u64,
    pub mtime_ns: i64,
    pub inode: u64,
    pub sha256: String,
}

/// The text the shared view keeps of the file.
#[derive(Debug, Clone, Serialize)]
pub struct TextKept {
    pub bytes: i64,
    /// It reached `max_content_bytes`: the rest was cut.
    pub truncated: bool,
    pub max_content_bytes: usize,
}

/// One version of an open conflict.
#[derive(Debug, Clone, Serialize)]
pub struct ConflictVersion {
    pub winner: bool,
    pub event_ulid: String,
    pub device_id: String,
    pub clock: crate::model::VectorClock,
    pub deleted: bool,
    pub sha256: Option<String>,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub key: String,
    pub path: Option<PathBuf>,
    pub library: Option<String>,
    pub decision: Decision,
    pub watch: Watch,
    pub disk: Option<Disk>,
    pub text: Option<TextKept>,
    pub shared: Option<SharedEntry>,
    pub conflict: Vec<ConflictVersion>,
    pub outbox: Vec<LocalEvent>,
    pub inbox: Vec<LocalEvent>,
}

/// The entity `arg` names: a path on disk (absolute, or relative to `cwd`), or else an entity
/// key (`<library>/<path>`).
pub fn locate(config: &Config, arg: &str, cwd: &Path) -> Result<Target, ExplainError> {
    let as_path = cwd.join(arg);
    let looks_like_path = Path::new(arg).is_absolute()
        || arg.starts_with("./")
        || arg.starts_with("../")
        || arg == "."
        || std::fs::symlink_metadata(&as_path).is_ok();
    if looks_like_path {
        return locate_path(config, &normalize(&as_path));
    }
    let bad = |reason: String| ExplainError::BadKey {
        what: arg.to_owned(),
        reason,
    };
    let normalized = key::relative_key(Path::new(arg)).map_err(|e| bad(e.to_string()))?;
    key::validate(&normalized).map_err(|e| bad(e.to_string()))?;
    let name = key::library_of(&normalized);
    let library = config.libraries.iter().find(|l| l.name == name).cloned();
    let path = library.as_ref().map(|l| {
        let rel = &normalized[name.len()..].trim_start_matches('/');
        l.path.join(rel)
    });
    Ok(Target {
        key: normalized,
        library,
        path,
    })
}

fn locate_path(config: &Config, path: &Path) -> Result<Target, ExplainError> {
    // The library roots as written, then as the file system resolves them (a root reached
    // through a symlink, or given with one).
    let resolved = resolve_parent(path);
    for candidate in [Some(path.to_path_buf()), resolved].into_iter().flatten() {
        for library in &config.libraries {
            let roots = [Some(library.path.clone()), library.path.canonicalize().ok()];
            for root in roots.into_iter().flatten() {
                let Ok(rel) = candidate.strip_prefix(&root) else {
                    continue;
                };
                let rel_key = key::relative_key(rel).map_err(|e| ExplainError::BadKey {
                    what: path.display().to_string(),
                    reason: e.to_string(),
                })?;
                let key = if rel_key.is_empty() {
                    library.name.clone()
                } else {
                    key::entity_key(&library.name, &rel_key).map_err(|e| ExplainError::BadKey {
                        what: path.display().to_string(),
                        reason: e.to_string(),
                    })?
                };
                return Ok(Target {
                    key,
                    library: Some(library.clone()),
                    path: Some(library.path.join(rel)),
                });
            }
        }
    }
    let libraries = if config.libraries.is_empty() {
        "none is configured".to_owned()
    } else {
        config
            .libraries
            .iter()
            .map(|l| format!("{} at {}", l.name, l.path.display()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(ExplainError::OutsideLibraries {
        path: path.to_path_buf(),
        libraries,
    })
}

/// `path` with its folder resolved by the file system and its last component kept as it is (it
/// may be a symlink, or gone).
fn resolve_parent(path: &Path) -> Option<PathBuf> {
    let parent = path.parent()?.canonicalize().ok()?;
    Some(parent.join(path.file_name()?))
}

/// `.` and `..` taken out lexically: the path need not exist.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Gathers what the device knows of `target` (the brain's side excepted).
/// Without a database yet (`store` is `None`), the rules, the watch and the disk are still told.
pub fn explain(
    config: &Config,
    store: Option<&Store>,
    target: &Target,
) -> Result<Explanation, ExplainError> {
    let meta = target
        .path
        .as_ref()
        .map(|p| std::fs::symlink_metadata(p))
        .transpose();
    let meta = match meta {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(ExplainError::Io {
                path: target.path.clone().unwrap_or_default(),
                source,
            })
        }
    };
    let is_dir = meta.as_ref().is_some_and(|m| m.is_dir());
    let decision = match (&target.library, &target.path) {
        (Some(library), Some(path)) => decide(library, &target.key, path, is_dir),
        _ => Decision::NotConfigured,
    };
    let watch = watch(config, store, target, &decision);
    let observed = store
        .map(|s| s.observed(&target.key))
        .transpose()?
        .flatten();
    let disk = target
        .path
        .as_ref()
        .map(|_| disk(meta.as_ref(), observed, &decision));
    let shared = store
        .map(|s| s.shared_entry(&target.key))
        .transpose()?
        .flatten();
    let cap = config.index.max_content_bytes;
    let text = shared
        .as_ref()
        .and_then(|s| s.content_bytes)
        .map(|bytes| TextKept {
            bytes,
            // Text is cut on a character boundary, up to 3 bytes short of the cap.
            truncated: bytes as usize + 4 > cap,
            max_content_bytes: cap,
        });
    let conflict = store
        .map(|s| s.open_conflict(&target.key))
        .transpose()?
        .flatten()
        .map(|open| {
            open.versions
                .into_iter()
                .map(|v| ConflictVersion {
                    winner: v.winner,
                    event_ulid: v.version.event_ulid,
                    device_id: v.version.device_id,
                    clock: v.version.clock,
                    deleted: v.version.deleted,
                    sha256: v.version.sha256,
                    created_at: v.version.created_at,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Explanation {
        key: target.key.clone(),
        path: target.path.clone(),
        library: target.library.as_ref().map(|l| l.name.clone()),
        decision,
        watch,
        disk,
        text,
        shared,
        conflict,
        outbox: store
            .map(|s| s.outbox_of(&target.key))
            .transpose()?
            .unwrap_or_default(),
        inbox: store
            .map(|s| s.inbox_of(&target.key))
            .transpose()?
            .unwrap_or_default(),
    })
}

/// The rules in the order the indexer applies them: globs, then ignore files.
fn decide(library: &LibraryConfig, key: &str, path: &Path, is_dir: bool) -> Decision {
    if is_dir {
        return Decision::Folder;
    }
    let rel = key
        .strip_prefix(&library.name)
        .unwrap_or(key)
        .trim_start_matches('/');
    let (include, exclude) = library.filter.deciding_globs(rel);
    let Some(include) = include else {
        return Decision::NotIncluded {
            include: library.include.clone(),
        };
    };
    if let Some(exclude) = exclude {
        return Decision::Excluded {
            exclude: library.exclude.get(exclude).cloned().unwrap_or_default(),
        };
    }
    let include = library.include.get(include).cloned().unwrap_or_default();
    match Rules::new(library).decide(path, false) {
        Some(by) if !by.negated => Decision::Ignored { by },
        reincluded_by => Decision::Indexed {
            include,
            reincluded_by,
        },
    }
}

/// Whether `agent run` watches the folder the path is in: it must run, watch the library (not
/// poll it), and not leave the folder out (an ignored or excluded folder gets no watch).
fn watch(config: &Config, store: Option<&Store>, target: &Target, decision: &Decision) -> Watch {
    let agent_running = crate::daemon::RunLock::is_held(&config.store.path);
    let folder = target
        .path
        .as_ref()
        .and_then(|p| p.parent())
        .map(Path::to_path_buf);
    let answer = |watched: bool, why: String| Watch {
        agent_running,
        folder: folder.clone(),
        watched,
        why,
    };
    let (Some(library), Some(folder)) = (&target.library, &folder) else {
        return answer(false, "its library is not configured on this device".into());
    };
    if let Some(why) = folder_left_out(library, folder) {
        return answer(false, why);
    }
    if !agent_running {
        return answer(false, "`agent run` is not running".into());
    }
    let mode = store
        .and_then(|s| crate::daemon::read_state(s).ok())
        .flatten()
        .and_then(|s| s.libraries.get(&library.name).cloned());
    match mode {
        Some(crate::store::kv::LibraryMode::Watching) => answer(
            true,
            if matches!(decision, Decision::Indexed { .. }) {
                "`agent run` watches it: a change is indexed once it settles".into()
            } else {
                "`agent run` watches the folder, but this file is not indexed".into()
            },
        ),
        Some(crate::store::kv::LibraryMode::Polling { reason }) => answer(
            false,
            format!("`agent run` rescans the library on a timer instead: {reason}"),
        ),
        None => answer(
            false,
            "`agent run` has not started watching this library yet".into(),
        ),
    }
}

/// Why the walk leaves `folder` out, if it does: a folder above it (or it) is excluded whole by
/// a glob, or ignored by an ignore file.
fn folder_left_out(library: &LibraryConfig, folder: &Path) -> Option<String> {
    let rel = folder.strip_prefix(&library.path).ok()?;
    let mut at = PathBuf::new();
    for part in rel.components() {
        at.push(part);
        let rel_key = at.to_string_lossy().replace('\\', "/");
        if library.filter.prunes_dir(&rel_key) {
            return Some(format!(
                "the folder {} is excluded whole by a glob of `exclude`",
                library.path.join(&at).display()
            ));
        }
    }
    let hit = Rules::new(library).decide(folder, true)?;
    (!hit.negated).then(|| {
        format!(
            "the folder {} is ignored ({}), so it is neither walked nor watched",
            hit.matched.display(),
            describe_hit(&hit)
        )
    })
}

/// `file:line:pattern`, as `git check-ignore -v` writes it.
pub fn describe_hit(hit: &RuleHit) -> String {
    let line = hit.line.map_or("?".to_owned(), |n| n.to_string());
    format!("{}:{line}:{}", hit.file.display(), hit.pattern)
}

/// The disk now against the last observation: whether the next look reads the file, and why.
fn disk(
    meta: Option<&std::fs::Metadata>,
    observed: Option<crate::store::Observed>,
    decision: &Decision,
) -> Disk {
    let kind = match meta {
        None => "missing",
        Some(m) if m.is_file() => "file",
        Some(m) if m.is_dir() => "folder",
        Some(m) if m.file_type().is_symlink() => "symlink",
        Some(_) => "other",
    };
    let stat = meta.filter(|m| m.is_file()).map(FileStat::of);
    let observation = observed.as_ref().map(|o| Observation {
        bytes: o.bytes,
        mtime_ns: o.mtime_ns,
        inode: o.inode,
        sha256: o.sha256.clone(),
    });
    let (next_look_reads, why) = match (&stat, &observed) {
        _ if !decision.indexed() => (
            false,
            "not indexed: the next look does not read it".to_owned(),
        ),
        (None, Some(_)) => (
            false,
            format!("observed here but {kind} on disk now: the next look records its deletion"),
        ),
        (None, None) => (false, format!("{kind} on disk, never observed here")),
        (Some(_), None) => (
            true,
            "not observed here yet: the next look reads and indexes it".to_owned(),
        ),
        (Some(now), Some(o)) => {
            let before = FileStat::from(o);
            if o.mtime_ns == UNTRUSTED_MTIME {
                (
                    true,
                    "its mtime was too recent to trust when it was read (the clock tick may hide \
                     a write): the next look reads it again"
                        .to_owned(),
                )
            } else if now.unchanged_since(&before) {
                (
                    false,
                    "unchanged since observed (size, mtime and inode): the next look does not read it"
                        .to_owned(),
                )
            } else {
                let mut changed = Vec::new();
                if now.bytes != before.bytes {
                    changed.push(format!("size {} -> {}", before.bytes, now.bytes));
                }
                if now.mtime_ns != before.mtime_ns {
                    changed.push("mtime".to_owned());
                }
                if now.inode != before.inode {
                    changed.push(format!("inode {} -> {}", before.inode, now.inode));
                }
                (
                    true,
                    format!(
                        "changed since observed ({}): the next look reads it",
                        changed.join(", ")
                    ),
                )
            }
        }
    };
    Disk {
        kind,
        bytes: stat.as_ref().map(|s| s.bytes),
        mtime_ns: stat.as_ref().map(|s| s.mtime_ns),
        inode: stat.as_ref().map(|s| s.inode),
        observed: observation,
        next_look_reads,
        why,
    }
}

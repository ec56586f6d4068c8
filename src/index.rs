//! "Index one path": the one step the scanner and the watcher share.
//!
//! A path is first *probed* (lstat, compared with what this device observed last), then, only if it
//! changed, *read* (streamed through sha256, mime guessed, text kept up to the cap), and finally
//! *committed*: observed state, shared view, FTS and outbox in the caller's transaction. Probing and
//! reading run on worker threads; committing runs on the single writer.

use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::model::{EventType, FilePayload};
use crate::store::{self, Batch, LocalChange, Observed, Shared};

/// Size, mtime and inode: what decides "unchanged" without reading the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStat {
    pub bytes: u64,
    pub mtime_ns: i64,
    pub inode: u64,
}

impl FileStat {
    pub fn of(meta: &Metadata) -> FileStat {
        FileStat {
            bytes: meta.len(),
            mtime_ns: meta
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.mtime_nsec()),
            inode: meta.ino(),
        }
    }

    pub fn mtime_unix(&self) -> i64 {
        self.mtime_ns.div_euclid(1_000_000_000)
    }
}

/// Stored as the observed mtime of a file read too soon after it was written (see
/// [`is_racy`]): no stat matches it, so the next look at the file reads it again.
pub const UNTRUSTED_MTIME: i64 = i64::MIN;

/// Whether a stat taken at `read_at` may miss a later write. The kernel stamps mtimes from a
/// coarse clock (one tick, up to 10 ms), so a write in the same tick as the one we read, of the
/// same size, leaves size and mtime unchanged: trusting them would skip it forever. Timestamps
/// with no nanoseconds may come from a filesystem that keeps whole (or even pairs of) seconds;
/// mtimes in the future (clock skew) are never trusted.
pub fn is_racy(mtime_ns: i64, read_at: std::time::SystemTime) -> bool {
    let read_at_ns = match read_at.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(_) => return true,
    };
    let window: i64 = if mtime_ns % 1_000_000_000 == 0 {
        2_000_000_000
    } else {
        50_000_000
    };
    mtime_ns > read_at_ns.saturating_sub(window)
}

/// A file read and hashed, ready to commit.
#[derive(Debug, Clone)]
pub struct ReadFile {
    pub stat: FileStat,
    /// Read so soon after a write that its stat cannot vouch for it next time ([`is_racy`]).
    pub racy: bool,
    pub sha256: String,
    pub ext: Option<String>,
    pub mime: String,
    pub content: Option<String>,
    /// [`ReadFile::payload`] as JSON, made where the file was read (a reader thread), so the
    /// single writer does not serialise, and escape, every file's text itself.
    pub payload_json: Option<String>,
}

impl ReadFile {
    /// The payload of the upsert event this read makes.
    pub fn payload(&self) -> FilePayload {
        FilePayload {
            sha256: Some(self.sha256.clone()),
            bytes: Some(self.stat.bytes),
            mtime_unix: Some(self.stat.mtime_unix()),
            ext: self.ext.clone(),
            mime: Some(self.mime.clone()),
            content: self.content.clone(),
        }
    }

    fn with_payload_json(mut self) -> ReadFile {
        self.payload_json = serde_json::to_string(&self.payload()).ok();
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Gone between the walk and the read: not an error, the deletion is noticed on its own.
    #[error("vanished")]
    Vanished,
    /// Written to while it was read: the hash would not match any version of its bytes.
    #[error("changed while it was being read")]
    Changed,
    #[error("not a regular file")]
    NotAFile,
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl ReadError {
    fn from_io(e: io::Error) -> ReadError {
        if e.kind() == io::ErrorKind::NotFound {
            ReadError::Vanished
        } else {
            ReadError::Io(e)
        }
    }
}

const CHUNK: usize = 64 * 1024;
/// Bytes looked at to decide whether a file without a known type is text.
const SNIFF: usize = 8 * 1024;

/// Streams a file through sha256 with bounded memory (one chunk plus the content cap), keeping its
/// text when it is text. Fails with `Changed` when its size or mtime moved during the read.
pub fn read_file(path: &Path, max_content_bytes: usize) -> Result<ReadFile, ReadError> {
    read_file_with(path, max_content_bytes, &mut Vec::new())
}

/// [`read_file`] with a caller-owned read buffer, so a reader thread allocates it once.
pub fn read_file_with(
    path: &Path,
    max_content_bytes: usize,
    buf: &mut Vec<u8>,
) -> Result<ReadFile, ReadError> {
    read_file_at(path, max_content_bytes, buf, std::time::SystemTime::now())
}

/// [`read_file_with`], with the time of the read from the caller's clock (the store's
/// [`Clock`](crate::store::Clock)): `read_at` is now, taken before the read; it decides whether
/// the file was written too recently for its stat to vouch for it ([`is_racy`]).
pub fn read_file_at(
    path: &Path,
    max_content_bytes: usize,
    buf: &mut Vec<u8>,
    read_at: std::time::SystemTime,
) -> Result<ReadFile, ReadError> {
    if buf.len() < CHUNK {
        buf.resize(CHUNK, 0);
    }
    let mut file = File::open(path).map_err(ReadError::from_io)?;
    let before = file.metadata().map_err(ReadError::from_io)?;
    if !before.file_type().is_file() {
        return Err(ReadError::NotAFile);
    }
    let stat = FileStat::of(&before);
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        // The brain refuses an ext over 32 bytes or with other than printable ASCII.
        .filter(|e| crate::model::event::is_ext(e));
    let guessed = mime_guess::from_path(path).first();
    // Keep a prefix only when it may become content: known text types, or unknown types to sniff.
    let keep = match &guessed {
        Some(m) if !is_text_mime(m) => 0,
        Some(_) => max_content_bytes,
        None => max_content_bytes.max(SNIFF),
    };

    let mut hasher = Sha256::new();
    let mut kept: Vec<u8> = Vec::with_capacity(keep.min(stat.bytes as usize));
    let mut total: u64 = 0;
    loop {
        let n = match file.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ReadError::from_io(e)),
        };
        hasher.update(&buf[..n]);
        if kept.len() < keep {
            let take = n.min(keep - kept.len());
            kept.extend_from_slice(&buf[..take]);
        }
        total += n as u64;
        // At the size fstat reported, stop without the extra read() that would return EOF: the
        // second fstat below catches a file that grew meanwhile.
        if total >= stat.bytes {
            break;
        }
    }
    let after = file.metadata().map_err(ReadError::from_io)?;
    let after = FileStat::of(&after);
    if after.bytes != stat.bytes || after.mtime_ns != stat.mtime_ns || total != stat.bytes {
        return Err(ReadError::Changed);
    }

    let (mime, content) = match guessed {
        Some(m) if is_text_mime(&m) => {
            let content = if kept.contains(&0) {
                None
            } else {
                Some(text_prefix(&kept, max_content_bytes))
            };
            (m.essence_str().to_owned(), content)
        }
        Some(m) => (m.essence_str().to_owned(), None),
        None => {
            let sniff = &kept[..kept.len().min(SNIFF)];
            if looks_like_text(sniff, kept.len() < SNIFF || total as usize <= SNIFF) {
                (
                    "text/plain".to_owned(),
                    Some(text_prefix(&kept, max_content_bytes)),
                )
            } else {
                ("application/octet-stream".to_owned(), None)
            }
        }
    };
    Ok(ReadFile {
        stat,
        racy: is_racy(stat.mtime_ns, read_at),
        sha256: hex(&hasher.finalize()),
        ext,
        mime,
        content,
        payload_json: None,
    }
    .with_payload_json())
}

fn is_text_mime(m: &mime_guess::Mime) -> bool {
    if m.type_() == mime_guess::mime::TEXT {
        return true;
    }
    let sub = m.subtype().as_str();
    let suffix = m.suffix().map(|s| s.as_str());
    matches!(
        sub,
        "json"
            | "xml"
            | "javascript"
            | "ecmascript"
            | "x-sh"
            | "x-csh"
            | "toml"
            | "x-toml"
            | "yaml"
            | "x-yaml"
            | "sql"
            | "x-python"
            | "x-perl"
            | "x-ruby"
            | "x-tex"
            | "x-latex"
            | "rtf"
            | "x-httpd-php"
            | "graphql"
            | "ld+json"
            | "x-ipynb+json"
    ) || matches!(suffix, Some("xml" | "json"))
}

/// No NUL byte and valid UTF-8, except for a character cut by the end of the sample.
fn looks_like_text(sample: &[u8], whole_file: bool) -> bool {
    if sample.contains(&0) {
        return false;
    }
    match std::str::from_utf8(sample) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none() && !whole_file,
    }
}

/// The longest valid UTF-8 prefix within `cap` bytes. Invalid bytes inside a text file (say a
/// stray Latin-1 character) become U+FFFD rather than losing the whole file for search.
fn text_prefix(bytes: &[u8], cap: usize) -> String {
    let bytes = &bytes[..bytes.len().min(cap)];
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(e) if e.error_len().is_none() => {
            // Only the last character was cut by the cap.
            String::from_utf8_lossy(&bytes[..e.valid_up_to()]).into_owned()
        }
        Err(_) => {
            let lossy = String::from_utf8_lossy(bytes);
            let mut end = lossy.len().min(cap);
            while !lossy.is_char_boundary(end) {
                end -= 1;
            }
            lossy[..end].to_owned()
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// What the disk says about one key.
#[derive(Debug, Clone)]
pub enum Observation {
    Present {
        key: String,
        file: ReadFile,
        /// This device had not observed the path when it was probed (a new file, most of a
        /// first scan): committing inserts its observed row outright, and looks for a previous
        /// one only if that insert finds one after all.
        unobserved: bool,
    },
    Gone {
        key: String,
    },
}

/// What committing an observation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A new upsert event.
    Upserted,
    /// A new delete event.
    Deleted,
    /// Same bytes as observed last time (a touch): observed state refreshed, no event.
    Unchanged,
    /// First sight of bytes the shared view already holds: observed, no event.
    AlreadyShared,
    /// Gone, and it was never observed here: nothing to do.
    Nothing,
}

/// Commits one observation in the caller's transaction. Decides against the *observed* state
/// whether this device changed the file; the event's clock and the winner come from the store.
pub fn commit(batch: &Batch<'_>, observation: &Observation) -> store::Result<Change> {
    match observation {
        Observation::Present {
            key,
            file,
            unobserved,
        } => {
            let observed = Observed {
                bytes: file.stat.bytes,
                mtime_ns: if file.racy {
                    UNTRUSTED_MTIME
                } else {
                    file.stat.mtime_ns
                },
                inode: file.stat.inode,
                sha256: file.sha256.clone(),
            };
            let previous = if *unobserved && batch.insert_observed(key, &observed)? {
                None
            } else {
                let previous = batch.observed(key)?;
                batch.put_observed(key, &observed)?;
                previous
            };
            if previous.as_ref().is_some_and(|p| p.sha256 == file.sha256) {
                return Ok(Change::Unchanged);
            }
            // Made for each attempt: the payload holds the file's text.
            let change = || {
                LocalChange::new(key, EventType::UpsertFile, file.payload())
                    .with_payload_json(file.payload_json.as_deref())
            };
            if previous.is_none()
                && batch
                    .record_local(change().over(Shared::AssumedAbsent))?
                    .is_some()
            {
                return Ok(Change::Upserted);
            }
            let shared = batch.shared(key)?;
            if previous.is_none() {
                let winner = shared
                    .as_ref()
                    .and_then(|row| row.state.as_ref())
                    .map(|s| s.winner());
                if winner.is_some_and(|w| {
                    !w.deleted && w.sha256.as_deref() == Some(file.sha256.as_str())
                }) {
                    return Ok(Change::AlreadyShared);
                }
            }
            batch.record_local(change().over(Shared::Read(shared.as_ref())))?;
            Ok(Change::Upserted)
        }
        Observation::Gone { key } => {
            if batch.observed(key)?.is_none() {
                return Ok(Change::Nothing);
            }
            batch.forget_observed(key)?;
            // A delete of something the shared view already has as a tombstone says nothing new.
            let shared = batch.shared(key)?;
            if shared
                .as_ref()
                .and_then(|row| row.state.as_ref())
                .is_some_and(|s| s.winner().deleted)
            {
                return Ok(Change::Nothing);
            }
            batch.record_local(
                LocalChange::new(key, EventType::DeleteFile, FilePayload::default())
                    .over(Shared::Read(shared.as_ref())),
            )?;
            Ok(Change::Deleted)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_prefix_cuts_on_a_character_boundary() {
        let s = "aé€😀".as_bytes(); // 1 + 2 + 3 + 4 bytes
        assert_eq!(text_prefix(s, 10), "aé€😀");
        assert_eq!(text_prefix(s, 9), "aé€");
        assert_eq!(text_prefix(s, 3), "aé");
        assert_eq!(text_prefix(s, 2), "a");
        assert_eq!(text_prefix(b"ab\xffcd", 10), "ab\u{fffd}cd");
    }

    #[test]
    fn sniffing_tells_text_from_binary() {
        assert!(looks_like_text(b"hello\n", true));
        assert!(!looks_like_text(b"hel\0lo", true));
        assert!(!looks_like_text(b"\xff\xfe", true));
        // A multi-byte character cut by the end of a partial sample is still text.
        assert!(looks_like_text(&"€".as_bytes()[..2], false));
    }

    /// The brain refuses an ext over 32 bytes or outside printable ASCII: such a file is indexed
    /// without one rather than parked at every push.
    #[test]
    fn an_extension_the_brain_would_refuse_is_left_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, ext) in [
            ("a.MD", Some("md")),
            (
                &format!("a.{}", "x".repeat(32)),
                Some("x".repeat(32).as_str()),
            ),
            (&format!("a.{}", "x".repeat(33)), None),
            ("a.caf\u{e9}", None),
            ("a.b c", Some("b c")),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, "text").expect("write");
            let read = read_file(&path, 100).expect("read");
            assert_eq!(read.ext.as_deref(), ext, "{name}");
        }
    }

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex(&[0x00, 0xab, 0xff]), "00abff");
    }
}

/// The libraries of a running agent, resolved once: roots, filters, and the database's own files.
pub struct Libraries {
    entries: Vec<(crate::config::LibraryConfig, crate::filter::LibraryFilter)>,
    skip_files: Vec<(u64, u64)>,
    max_content_bytes: usize,
    threads: usize,
}

impl Libraries {
    pub fn new(
        config: &crate::config::Config,
        db: &Path,
    ) -> Result<Libraries, crate::filter::FilterError> {
        let mut entries = Vec::new();
        for library in &config.libraries {
            entries.push((library.clone(), crate::filter::LibraryFilter::new(library)?));
        }
        // Longest root first, so a library nested in another claims its own paths.
        entries.sort_by_key(|(l, _)| std::cmp::Reverse(l.path.as_os_str().len()));
        let threads = if config.index.hash_threads > 0 {
            config.index.hash_threads
        } else {
            std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .clamp(2, 8)
        };
        Ok(Libraries {
            entries,
            skip_files: crate::scan::database_files(db),
            max_content_bytes: config.index.max_content_bytes,
            threads,
        })
    }

    /// The library a path is in, and the path relative to its root.
    fn locate<'a>(
        &'a self,
        path: &'a Path,
    ) -> Option<(
        &'a crate::config::LibraryConfig,
        &'a crate::filter::LibraryFilter,
        &'a Path,
    )> {
        self.entries.iter().find_map(|(library, filter)| {
            path.strip_prefix(&library.path)
                .ok()
                .map(|rel| (library, filter, rel))
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(l, _)| l.name.as_str())
    }
}

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
    pub errors: u64,
    /// Libraries whose root itself changed: the caller rescans them (behind the mass-delete guard).
    pub rescan: Vec<String>,
}

struct Candidate {
    path: std::path::PathBuf,
    key: String,
    unobserved: bool,
    /// Its size at the probe: its text, once read, is no longer.
    bytes: u64,
}

/// Files read per round of the reader threads ...
const READ_CHUNK_FILES: usize = 512;
/// ... and the text they may bring at most (content and its copy in the payload JSON), which
/// bounds what a tree of text files moved in holds in memory.
const READ_CHUNK_TEXT: u64 = 4 << 20;

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

/// Paths looked at per round of the threads that look at them.
const LOOK_CHUNK: usize = 64;

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
    let rounds = paths.len().div_ceil(LOOK_CHUNK);
    let threads = libs.threads.min(rounds);
    if threads <= 1 {
        return paths
            .iter()
            .filter_map(|p| look_at(libs, p, pending, errors))
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
                        let Some(chunk) = paths.chunks(LOOK_CHUNK).nth(round) else {
                            break;
                        };
                        let seen = chunk
                            .iter()
                            .filter_map(|p| look_at(libs, p, pending, errors))
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

fn look_at(
    libs: &Libraries,
    path: &std::path::PathBuf,
    pending: &(dyn Fn(&Path) -> bool + Sync),
    errors: &std::sync::atomic::AtomicU64,
) -> Option<Seen> {
    use std::sync::atomic::Ordering;
    let (library, filter, rel) = libs.locate(path)?;
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
            let included =
                filter.includes_file(&rel) && !libs.skip_files.contains(&(meta.dev(), meta.ino()));
            included.then(|| Seen::File {
                key,
                path: path.clone(),
                stat: Some(FileStat::of(&meta)),
            })
        }
        Ok(meta) if meta.is_dir() => {
            if filter.prunes_dir(&rel) {
                return None;
            }
            let mut walked = Vec::new();
            let walk =
                crate::scan::walk_tree(library, filter, path, &libs.skip_files, errors, |p, k| {
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
    index_paths_leaving(store, libs, paths, &|_| false)
}

/// [`index_paths`], where the walk of a folder leaves out the files `pending` names: the
/// watcher's, still settling after events of their own (a folder is walked as soon as it is
/// created, and a file being written in it would be read half-written, then again when done).
pub fn index_paths_leaving(
    store: &mut store::Store,
    libs: &Libraries,
    paths: &[std::path::PathBuf],
    pending: &(dyn Fn(&Path) -> bool + Sync),
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
    for k in &gone {
        if let Some(row) = store.observed(k)? {
            gone_rows.insert((row.inode, row.bytes, row.mtime_ns), (k.clone(), row));
        }
    }

    // Probe: skip what is unchanged, reuse what was renamed, read the rest. One read
    // transaction for all the lookups, rather than one (with its file locks) per lookup.
    let mut present: Vec<Observation> = Vec::new();
    let mut to_read: Vec<Candidate> = Vec::new();
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
        if observed.as_ref().is_some_and(|o| {
            o.bytes == stat.bytes && o.mtime_ns == stat.mtime_ns && o.inode == stat.inode
        }) {
            outcome.unchanged += 1;
            continue;
        }
        if let Some(file) = reuse_renamed(store, &gone_rows, &path, &stat)? {
            outcome.reused += 1;
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
    let gone = gone
        .into_iter()
        .map(|key| Observation::Gone { key })
        .collect();
    read_and_commit(store, libs, present, &to_read, gone, &errors, &mut outcome)?;
    outcome.errors = errors.load(Ordering::Relaxed);
    Ok(outcome)
}

/// Reads the candidates a chunk ahead of the single writer, which commits everything (renames
/// reused, then what was read, in candidate order, then deletions) in transactions as large as
/// the scan's: a transaction per chunk read made a burst of new files rewrite the same b-tree
/// pages a dozen times.
fn read_and_commit(
    store: &mut store::Store,
    libs: &Libraries,
    present: Vec<Observation>,
    to_read: &[Candidate],
    gone: Vec<Observation>,
    errors: &std::sync::atomic::AtomicU64,
    outcome: &mut PathsOutcome,
) -> store::Result<()> {
    let clock = store.clock().clone();
    let chunks = read_chunks(to_read, libs.max_content_bytes);
    std::thread::scope(|scope| {
        // One chunk read ahead: its text is bounded, and so is the memory of two of them.
        let (tx, rx) = crossbeam_channel::bounded::<Vec<Observation>>(1);
        let clock = &clock;
        scope.spawn(move || {
            for chunk in chunks {
                if tx.send(read_parallel(chunk, libs, errors, clock)).is_err() {
                    break; // the writer failed
                }
            }
        });
        let mut all = present
            .into_iter()
            .chain(rx.iter().flatten())
            .chain(gone)
            .peekable();
        while all.peek().is_some() {
            let batch = store.batch()?;
            let (mut changes, mut text) = (0, 0);
            while changes < crate::scan::BATCH && text < crate::scan::BATCH_TEXT_BYTES {
                let Some(observation) = all.next() else { break };
                if let Observation::Present { file, .. } = &observation {
                    outcome.racy += u64::from(file.racy);
                }
                match commit(&batch, &observation)? {
                    Change::Upserted => outcome.upserted += 1,
                    Change::Deleted => outcome.deleted += 1,
                    Change::Unchanged | Change::AlreadyShared => outcome.unchanged += 1,
                    Change::Nothing => {}
                }
                changes += 1;
                text += crate::scan::text_len(&observation);
            }
            batch.commit()?;
        }
        Ok(())
    })
}

/// Splits the candidates into rounds of reading of at most [`READ_CHUNK_FILES`] files and
/// [`READ_CHUNK_TEXT`] of text (a file's text is at most its size and at most the cap).
fn read_chunks(candidates: &[Candidate], max_content: usize) -> Vec<&[Candidate]> {
    let mut chunks = Vec::new();
    let (mut start, mut text) = (0, 0u64);
    for (i, c) in candidates.iter().enumerate() {
        let t = 2 * c.bytes.min(max_content as u64);
        if i > start && (i - start == READ_CHUNK_FILES || text + t > READ_CHUNK_TEXT) {
            chunks.push(&candidates[start..i]);
            (start, text) = (i, 0);
        }
        text += t;
    }
    if start < candidates.len() {
        chunks.push(&candidates[start..]);
    }
    chunks
}

/// A file with the inode, size and mtime of a path gone in the same batch is that file renamed:
/// its hash is the observed one, and its text the shared view's when the mime type is unchanged.
fn reuse_renamed(
    store: &store::Store,
    gone_rows: &std::collections::HashMap<(u64, u64, i64), (String, Observed)>,
    path: &Path,
    stat: &FileStat,
) -> store::Result<Option<ReadFile>> {
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
    Ok(Some(
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
    ))
}

/// Reads files on a few threads (reads of small files wait on the disk, not the CPU).
fn read_parallel(
    candidates: &[Candidate],
    libs: &Libraries,
    errors: &std::sync::atomic::AtomicU64,
    clock: &store::Clock,
) -> Vec<Observation> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let next = AtomicUsize::new(0);
    let out = Mutex::new(Vec::with_capacity(candidates.len()));
    let threads = libs.threads.min(candidates.len().div_ceil(16)).max(1);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                // Behind the writer, and behind the watcher's thread: at equal priority they
                // took the core the watcher needed, and its events reached the daemon late.
                store::run_behind_the_writer();
                let mut buf = Vec::new();
                let mut mine = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(c) = candidates.get(i) else { break };
                    let mut attempt = 0;
                    let result = loop {
                        attempt += 1;
                        match read_file_at(&c.path, libs.max_content_bytes, &mut buf, clock.now()) {
                            Err(ReadError::Changed) if attempt < 3 => continue,
                            other => break other,
                        }
                    };
                    match result {
                        Ok(file) => mine.push(Observation::Present {
                            key: c.key.clone(),
                            file,
                            unobserved: c.unobserved,
                        }),
                        // Gone or still being written: its next event brings it back.
                        Err(ReadError::Vanished | ReadError::NotAFile | ReadError::Changed) => {}
                        Err(ReadError::Io(e)) => {
                            tracing::warn!(path = ?c.path, "cannot read: {e}");
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                if let Ok(mut out) = out.lock() {
                    out.extend(mine);
                }
            });
        }
    });
    let mut out = out.into_inner().unwrap_or_default();
    // Deterministic commit order, whatever the threads did.
    out.sort_by(|a, b| match (a, b) {
        (Observation::Present { key: x, .. }, Observation::Present { key: y, .. }) => x.cmp(y),
        _ => std::cmp::Ordering::Equal,
    });
    out
}

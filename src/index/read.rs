//! Read one file: stream it through sha256, guess its mime type, keep its text up to the cap,
//! and decide whether its stat can vouch for it next time (the racy-stat rule). Runs on reader
//! threads; nothing here touches the store.

use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::model::FilePayload;

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

    /// The one "unchanged" rule: same size, mtime and inode as `earlier`. A file that passes is
    /// never opened; one whose observed mtime is [`UNTRUSTED_MTIME`] never passes.
    #[inline]
    pub fn unchanged_since(&self, earlier: &FileStat) -> bool {
        self.bytes == earlier.bytes
            && self.mtime_ns == earlier.mtime_ns
            && self.inode == earlier.inode
    }
}

impl From<&crate::store::Observed> for FileStat {
    fn from(o: &crate::store::Observed) -> FileStat {
        FileStat {
            bytes: o.bytes,
            mtime_ns: o.mtime_ns,
            inode: o.inode,
        }
    }
}

impl From<&crate::store::read::ObservedStat> for FileStat {
    fn from(o: &crate::store::read::ObservedStat) -> FileStat {
        FileStat {
            bytes: o.bytes,
            mtime_ns: o.mtime_ns,
            inode: o.inode,
        }
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

    pub(super) fn with_payload_json(mut self) -> ReadFile {
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
    // The same open file: its inode cannot differ, so this is the size and mtime check.
    if !FileStat::of(&after).unchanged_since(&stat) || total != stat.bytes {
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

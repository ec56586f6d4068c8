//! Entity keys: `<library name>/<path relative to the library root>`, NFC-normalised, `/`-separated.
//!
//! One validation serves the scanner (building keys from disk paths), the puller and the brain
//! (checking keys that came over the network).

use std::path::Path;

use unicode_normalization::UnicodeNormalization;

/// At most this many bytes in an entity key (DESIGN.md "Trust").
pub const MAX_KEY_BYTES: usize = 1024;
/// At most this many `/`-separated segments in an entity key, the library name included.
pub const MAX_KEY_SEGMENTS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("entity key is empty")]
    Empty,
    // The key itself is not echoed: it may be megabytes.
    #[error("entity key is {0} bytes, over the cap of {MAX_KEY_BYTES}")]
    TooLong(usize),
    #[error("entity key {0:?} has {1} segments, over the cap of {MAX_KEY_SEGMENTS}")]
    TooManySegments(String, usize),
    #[error("entity key {0:?} is absolute")]
    Absolute(String),
    #[error("entity key {0:?} has an empty, `.` or `..` segment")]
    BadSegment(String),
    #[error("entity key {0:?} has no path below the library name")]
    NoPath(String),
    #[error("entity key {0:?} contains a control character or a backslash")]
    BadCharacter(String),
    #[error("path {0:?} is not valid UTF-8")]
    NotUtf8(String),
}

/// Checks a key that arrived from elsewhere. Keys are compared byte for byte, so a key that is not
/// NFC would name a different entity than the same path indexed on another device: refused too.
pub fn validate(key: &str) -> Result<(), KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    // Sizes first: every later check (and its error message) then deals with a bounded key.
    if key.len() > MAX_KEY_BYTES {
        return Err(KeyError::TooLong(key.len()));
    }
    let segments = key.split('/').count();
    if segments > MAX_KEY_SEGMENTS {
        return Err(KeyError::TooManySegments(key.to_owned(), segments));
    }
    if key.starts_with('/') {
        return Err(KeyError::Absolute(key.to_owned()));
    }
    if key.chars().any(|c| c.is_control() || c == '\\') {
        return Err(KeyError::BadCharacter(key.to_owned()));
    }
    if key
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(KeyError::BadSegment(key.to_owned()));
    }
    if !key.contains('/') {
        return Err(KeyError::NoPath(key.to_owned()));
    }
    if !unicode_normalization::is_nfc(key) {
        return Err(KeyError::BadSegment(key.to_owned()));
    }
    Ok(())
}

/// The part of a disk path below its library root, as a `/`-separated NFC string.
/// A name that is not valid UTF-8 is an error, never mangled: two devices must agree on the key.
pub fn relative_key(rel: &Path) -> Result<String, KeyError> {
    let mut out = String::new();
    for component in rel.components() {
        let part = component.as_os_str();
        let part = part
            .to_str()
            .ok_or_else(|| KeyError::NotUtf8(rel.to_string_lossy().into_owned()))?;
        if !out.is_empty() {
            out.push('/');
        }
        out.push_str(part);
    }
    if out.is_ascii() {
        Ok(out)
    } else {
        Ok(out.nfc().collect())
    }
}

/// `library/rel`, validated.
pub fn entity_key(library: &str, rel: &str) -> Result<String, KeyError> {
    let key = format!("{library}/{rel}");
    validate(&key)?;
    Ok(key)
}

/// The library name of a valid key.
pub fn library_of(key: &str) -> &str {
    key.split_once('/').map_or(key, |(lib, _)| lib)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_keys() {
        assert_eq!(validate("notes/ideas/today.md"), Ok(()));
        assert_eq!(validate("notes/a"), Ok(()));
    }

    #[test]
    fn invalid_keys_are_refused() {
        assert_eq!(validate(""), Err(KeyError::Empty));
        assert!(matches!(validate("/notes/a"), Err(KeyError::Absolute(_))));
        assert!(matches!(
            validate("notes/../etc/passwd"),
            Err(KeyError::BadSegment(_))
        ));
        assert!(matches!(
            validate("notes/./a"),
            Err(KeyError::BadSegment(_))
        ));
        assert!(matches!(validate("notes//a"), Err(KeyError::BadSegment(_))));
        assert!(matches!(validate("notes/a/"), Err(KeyError::BadSegment(_))));
        assert!(matches!(validate("notes"), Err(KeyError::NoPath(_))));
        assert!(matches!(
            validate("notes/a\nb"),
            Err(KeyError::BadCharacter(_))
        ));
        assert!(matches!(
            validate("notes\\a"),
            Err(KeyError::BadCharacter(_))
        ));
        // "é" as e + combining acute is not NFC.
        assert!(validate("notes/cafe\u{301}").is_err());
    }

    /// The caps at their boundaries: 1,024 bytes and 64 segments pass, one more of either fails.
    #[test]
    fn a_key_is_at_most_1024_bytes_and_64_segments() {
        let of_len = |n: usize| format!("notes/{}", "a".repeat(n - "notes/".len()));
        assert_eq!(validate(&of_len(MAX_KEY_BYTES)), Ok(()));
        assert_eq!(
            validate(&of_len(MAX_KEY_BYTES + 1)),
            Err(KeyError::TooLong(1025))
        );
        let of_segments = |n: usize| format!("notes{}", "/a".repeat(n - 1));
        assert_eq!(validate(&of_segments(MAX_KEY_SEGMENTS)), Ok(()));
        assert!(matches!(
            validate(&of_segments(MAX_KEY_SEGMENTS + 1)),
            Err(KeyError::TooManySegments(_, 65))
        ));
        // Multi-byte characters count in bytes, not characters.
        let wide = format!("notes/{}", "\u{e9}".repeat(510));
        assert_eq!(wide.len(), 1026);
        assert_eq!(validate(&wide), Err(KeyError::TooLong(1026)));
        for control in [
            "notes/a\u{7f}",
            "notes/a\u{9b}x",
            "notes/\u{1b}]52;c;x\u{7}",
        ] {
            assert!(
                matches!(validate(control), Err(KeyError::BadCharacter(_))),
                "{control:?}"
            );
        }
    }

    #[test]
    fn relative_keys_are_nfc_and_slash_separated() {
        let rel = Path::new("dir").join("cafe\u{301}.md");
        assert_eq!(relative_key(&rel).unwrap(), "dir/caf\u{e9}.md");
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_names_are_an_error() {
        use std::os::unix::ffi::OsStrExt;
        let rel = Path::new(std::ffi::OsStr::from_bytes(b"bad\xffname"));
        assert!(matches!(relative_key(rel), Err(KeyError::NotUtf8(_))));
    }
}

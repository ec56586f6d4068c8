//! Terminal output of text that came from files, devices or the network: control characters are
//! escaped (as `\u{1b}`) so that a key, a snippet or an error string cannot move the cursor,
//! rewrite the screen, set the clipboard (OSC 52) or reorder what follows (bidi overrides).
//! JSON output needs none of this: serde escapes control characters in strings.

use std::borrow::Cow;
use std::fmt::Write as _;

/// `one` or `many`, as `n` asks.
pub fn plural<'a>(n: u64, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 {
        one
    } else {
        many
    }
}

/// `n` and its noun: "1 file", "3 files".
pub fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", plural(n, one, many))
}

/// `n` with a comma every three digits: "1,234,567".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    out
}

/// Whether a character is escaped: C0 controls (tab and newline too: one field stays on one
/// line), DEL, C1 controls, and the Unicode bidirectional formatting characters.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// `text` with each control character as `\u{XX}`; borrowed when there is none.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if needs_escape(c) {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A file's text for the terminal, lines kept: [`escape`] on each line, with newlines and tabs
/// left as they are (they only move the cursor the way the text means) and every other control
/// character escaped, a carriage return included (it would let a line overwrite itself).
pub fn escape_text(text: &str) -> Cow<'_, str> {
    if !text
        .chars()
        .any(|c| c != '\n' && c != '\t' && needs_escape(c))
    {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        for (j, part) in line.split('\t').enumerate() {
            if j > 0 {
                out.push('\t');
            }
            out.push_str(&escape(part));
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_separated() {
        let cases = [
            (0, "0"),
            (999, "999"),
            (1_000, "1,000"),
            (1_234_567, "1,234,567"),
        ];
        for (n, text) in cases {
            assert_eq!(thousands(n), text);
        }
    }

    #[test]
    fn control_characters_are_escaped_and_the_rest_is_left_alone() {
        assert!(matches!(escape("notes/a b.md — ü"), Cow::Borrowed(_)));
        // OSC 52 writes the clipboard in many terminals.
        assert_eq!(
            escape("x\u{1b}]52;c;aGk=\u{7}y"),
            "x\\u{1b}]52;c;aGk=\\u{7}y"
        );
        assert_eq!(escape("a\tb\nc\rd"), "a\\u{9}b\\u{a}c\\u{d}d");
        assert_eq!(escape("\u{7f}\u{9b}31m"), "\\u{7f}\\u{9b}31m");
        assert_eq!(escape("abc\u{202e}gpj.exe"), "abc\\u{202e}gpj.exe");
        assert_eq!(
            escape("\u{2066}x\u{2069}\u{200f}"),
            "\\u{2066}x\\u{2069}\\u{200f}"
        );
    }

    #[test]
    fn a_text_keeps_its_lines_and_tabs_and_loses_its_other_controls() {
        assert!(matches!(escape_text("a\n\tb\n"), Cow::Borrowed(_)));
        assert_eq!(
            escape_text("line\r\n\u{1b}[2Jx\ty\n"),
            "line\\u{d}\n\\u{1b}[2Jx\ty\n"
        );
    }
}

//! Ignore files, with git's semantics: `.libignore` in any folder of a library, always; and, when
//! the library sets `respect_gitignore`, `.gitignore` files and the `.git/info/exclude` of a
//! repository at its root. The matching is ripgrep's (`ignore::gitignore`), not ours.
//!
//! The walk ([`walk`](super::walk)) asks a [`Rules`] about every entry as it goes down a tree,
//! and leaves out (does not enter) the folders it ignores; the watcher asks it about single
//! paths, and about whether a folder is worth a watch; a scan or the watcher asks it why an
//! observed file was not met, because an ignored file is no longer observed here (and gets no
//! delete event: ignore rules are this device's, a delete would remove the file everywhere).
//!
//! Only ignore files inside the library count: no `core.excludesFile`, none above the root. The
//! files are read from the disk as folders are entered, never cached across walks, so an edit
//! takes effect at the next look. A line that does not compile (or a file that cannot be read)
//! is logged, naming the file and line, and skipped: it never stops a scan.

use std::path::{Path, PathBuf};

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use ignore::Match;

use crate::config::LibraryConfig;

/// The ignore file every library honours, in any of its folders.
pub const LIBIGNORE: &str = ".libignore";
/// Honoured when the library sets `respect_gitignore`.
pub const GITIGNORE: &str = ".gitignore";

/// Whether a change to `path` (in `library`) changes what is ignored: it is (or was) an ignore
/// file the library honours. Returns the folder whose contents its rules apply to.
pub fn ignore_file_folder<'a>(library: &LibraryConfig, path: &'a Path) -> Option<&'a Path> {
    let name = path.file_name()?;
    let parent = path.parent()?;
    if !parent.starts_with(&library.path) {
        return None;
    }
    if name == LIBIGNORE || (library.respect_gitignore && name == GITIGNORE) {
        return Some(parent);
    }
    if library.respect_gitignore && path == library.path.join(".git/info/exclude") {
        return parent.parent()?.parent(); // the root
    }
    None
}

/// The matchers of one folder, most specific first: its `.libignore`, then its `.gitignore`.
type Folder = Vec<Gitignore>;

/// The ignore rules of one library along one path from its root: the folders above the folder
/// last entered, each with its ignore files. Deeper folders' rules are asked first, and the
/// first that says "ignored" or "not ignored" (a `!` line) decides, as in git.
pub struct Rules<'a> {
    library: &'a LibraryConfig,
    /// The root's `.git/info/exclude`: below every `.gitignore` in precedence, as in git.
    exclude_file: Option<Gitignore>,
    /// The library's root and its folders down to the one entered last.
    folders: Vec<(PathBuf, Folder)>,
}

impl<'a> Rules<'a> {
    /// The rules of `library`, entered at its root.
    pub fn new(library: &'a LibraryConfig) -> Rules<'a> {
        let exclude_file = library.respect_gitignore.then(|| {
            let git = library.path.join(".git");
            load(library, &library.path, &git.join("info").join("exclude"))
        });
        let root = load_folder(library, &library.path);
        Rules {
            library,
            exclude_file: exclude_file.flatten(),
            folders: vec![(library.path.clone(), root)],
        }
    }

    /// The library whose rules these are.
    pub fn library(&self) -> &'a LibraryConfig {
        self.library
    }

    /// Moves to `dir`, a folder of the library: forgets the folders that are not above it and
    /// reads the ignore files of those entered anew.
    pub fn enter(&mut self, dir: &Path) {
        while self.folders.len() > 1 && !dir.starts_with(&self.folders[self.folders.len() - 1].0) {
            self.folders.pop();
        }
        let Some((top, _)) = self.folders.last() else {
            return;
        };
        let Ok(below) = dir.strip_prefix(top) else {
            return; // not in this library
        };
        let mut at = top.clone();
        for part in below.components() {
            at.push(part);
            let folder = load_folder(self.library, &at);
            self.folders.push((at.clone(), folder));
        }
    }

    /// Whether the rules of the folders entered ignore `path`, an entry of the folder entered
    /// last. Says nothing of the folders above it: the walk did not enter ignored ones.
    pub fn ignores_entry(&self, path: &Path, is_dir: bool) -> bool {
        for (_, folder) in self.folders.iter().rev() {
            for matcher in folder {
                match matcher.matched(path, is_dir) {
                    Match::Ignore(_) => return true,
                    Match::Whitelist(_) => return false,
                    Match::None => {}
                }
            }
        }
        self.exclude_file
            .as_ref()
            .is_some_and(|m| m.matched(path, is_dir).is_ignore())
    }

    /// Whether `path`, anywhere in the library, is ignored: by the rules of its folders, or
    /// because one of the folders above it is (a `!` line does not take a file out of an
    /// ignored folder, as in git). The library's root is never ignored.
    pub fn ignores(&mut self, path: &Path, is_dir: bool) -> bool {
        let Ok(rel) = path.strip_prefix(&self.library.path) else {
            return false;
        };
        let mut at = self.library.path.clone();
        let parts: Vec<_> = rel.components().collect();
        for (i, part) in parts.iter().enumerate() {
            self.enter(&at);
            at.push(part);
            let last = i + 1 == parts.len();
            if self.ignores_entry(&at, if last { is_dir } else { true }) {
                return true;
            }
        }
        false
    }
}

/// The ignore-file line that decided about a path (`agent explain`, like `git check-ignore -v`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RuleHit {
    /// The ignore file the line is in.
    pub file: PathBuf,
    /// Its line number, from 1; `None` when the file changed since it was read.
    pub line: Option<usize>,
    /// The pattern as written (a `!` line re-includes).
    pub pattern: String,
    /// True for a `!` line: the path is not ignored, by this line.
    pub negated: bool,
    /// What the line matched: the path itself, or a folder above it (everything below an
    /// ignored folder is ignored, whatever deeper lines say).
    pub matched: PathBuf,
}

impl Rules<'_> {
    /// The line that decides whether `path` is ignored: the first ignored folder above it, else
    /// the line that matched the path itself (ignoring or re-including it); `None` when no ignore
    /// file says anything about it.
    pub fn decide(&mut self, path: &Path, is_dir: bool) -> Option<RuleHit> {
        let rel = path.strip_prefix(&self.library.path).ok()?;
        let mut at = self.library.path.clone();
        let parts: Vec<_> = rel.components().collect();
        let mut last = None;
        for (i, part) in parts.iter().enumerate() {
            self.enter(&at);
            at.push(part);
            let is_last = i + 1 == parts.len();
            match self.matched_entry(&at, if is_last { is_dir } else { true }) {
                Some(hit) if !hit.negated => return Some(hit),
                Some(hit) if is_last => last = Some(hit),
                _ => {}
            }
        }
        last
    }

    /// [`Rules::ignores_entry`], saying which line decided.
    fn matched_entry(&self, path: &Path, is_dir: bool) -> Option<RuleHit> {
        let hit = |glob: &ignore::gitignore::Glob| {
            let file = glob.from().map(Path::to_path_buf).unwrap_or_default();
            RuleHit {
                line: line_of(&file, glob.original()),
                file,
                pattern: glob.original().to_owned(),
                negated: glob.is_whitelist(),
                matched: path.to_path_buf(),
            }
        };
        for (_, folder) in self.folders.iter().rev() {
            for matcher in folder {
                match matcher.matched(path, is_dir) {
                    Match::Ignore(glob) | Match::Whitelist(glob) => return Some(hit(glob)),
                    Match::None => {}
                }
            }
        }
        match self.exclude_file.as_ref()?.matched(path, is_dir) {
            Match::Ignore(glob) => Some(hit(glob)),
            _ => None,
        }
    }
}

/// The number of the last line of `file` that holds `pattern` (the matcher keeps no line
/// numbers; of equal lines the last one wins, as in git). Trailing blanks were trimmed from it.
fn line_of(file: &Path, pattern: &str) -> Option<usize> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| {
            line.strip_prefix(pattern)
                .is_some_and(|rest| rest.chars().all(|c| c == ' ' || c == '\t' || c == '\r'))
        })
        .last()
        .map(|(i, _)| i + 1)
}

/// The ignore files of folder `dir` that `library` honours.
fn load_folder(library: &LibraryConfig, dir: &Path) -> Folder {
    let mut folder = Vec::new();
    folder.extend(load(library, dir, &dir.join(LIBIGNORE)));
    if library.respect_gitignore {
        folder.extend(load(library, dir, &dir.join(GITIGNORE)));
    }
    folder
}

/// One ignore file whose patterns are relative to `dir`; `None` when it does not exist or holds
/// no pattern. Lines that cannot be used are reported and left out.
fn load(library: &LibraryConfig, dir: &Path, file: &Path) -> Option<Gitignore> {
    let mut builder = GitignoreBuilder::new(dir);
    if let Some(e) = builder.add(file) {
        if e.io_error()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
        {
            return None;
        }
        // A partial error: the lines named were skipped, the others are in the builder.
        tracing::warn!(library = %library.name, file = ?file, "ignore file: {e}; skipped");
    }
    match builder.build() {
        Ok(matcher) if matcher.is_empty() => None,
        Ok(matcher) => Some(matcher),
        Err(e) => {
            tracing::warn!(library = %library.name, file = ?file, "ignore file not used: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn library(root: &Path, respect_gitignore: bool) -> LibraryConfig {
        let mut library = LibraryConfig::new(
            "t".into(),
            root.to_path_buf(),
            vec!["**/*".into()],
            Vec::new(),
        )
        .expect("library");
        library.respect_gitignore = respect_gitignore;
        library
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }

    #[test]
    fn a_deeper_ignore_file_overrides_but_cannot_reopen_an_ignored_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write(root, ".libignore", "*.log\nbuild/\n");
        write(root, "a/.libignore", "!keep.log\n");
        write(root, "build/.libignore", "!x.o\n");
        let lib = library(root, false);
        let mut rules = Rules::new(&lib);
        assert!(rules.ignores(&root.join("top.log"), false));
        assert!(!rules.ignores(&root.join("a/keep.log"), false));
        assert!(rules.ignores(&root.join("a/other.log"), false));
        assert!(rules.ignores(&root.join("build"), true));
        assert!(rules.ignores(&root.join("build/x.o"), false));
        assert!(!rules.ignores(&root.join("a/b.txt"), false));
    }

    #[test]
    fn gitignore_counts_only_when_the_library_says_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write(root, ".gitignore", "*.pdf\n");
        write(root, ".git/info/exclude", "*.tmp\n");
        let plain = library(root, false);
        assert!(!Rules::new(&plain).ignores(&root.join("a.pdf"), false));
        assert!(!Rules::new(&plain).ignores(&root.join("a.tmp"), false));
        let git = library(root, true);
        assert!(Rules::new(&git).ignores(&root.join("a.pdf"), false));
        assert!(Rules::new(&git).ignores(&root.join("x/a.tmp"), false));
    }

    #[test]
    fn a_bad_line_is_skipped_and_the_rest_applies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write(root, ".libignore", "a{b\n*.log\n");
        let lib = library(root, false);
        assert!(Rules::new(&lib).ignores(&root.join("x.log"), false));
    }

    #[test]
    fn ignore_files_are_recognised_by_name() {
        let root = Path::new("/lib");
        let lib = library(root, false);
        assert_eq!(
            ignore_file_folder(&lib, Path::new("/lib/a/.libignore")),
            Some(Path::new("/lib/a"))
        );
        assert_eq!(ignore_file_folder(&lib, Path::new("/lib/.gitignore")), None);
        let git = library(root, true);
        assert_eq!(
            ignore_file_folder(&git, Path::new("/lib/.git/info/exclude")),
            Some(root)
        );
    }
}

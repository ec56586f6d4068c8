//! Include/exclude globs of one library: which paths under its root become entities.
//!
//! The scanner asks [`LibraryFilter::prunes_dir`] for every directory it enters and
//! [`LibraryFilter::includes_file`] for every file it finds; the watcher asks `includes_file` for
//! every changed path. Both feed the one indexer, so both must agree on what a library holds:
//! that is why the rule lives here, once. Each [`LibraryConfig`](crate::config::LibraryConfig)
//! carries its filter, compiled once when the configuration is loaded (a bad glob is a
//! configuration error, not a surprise in the middle of a scan).
//!
//! Globs are matched against the path relative to the library root, `/`-separated, with no
//! leading `/`. `*` and `?` never cross a `/`; `**` as a whole component crosses any number of
//! them, including zero, so `**/*` matches `a.txt` as well as `x/y/a.txt`.

use globset::{Candidate, Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use thiserror::Error;

/// A glob of a library that cannot be used.
#[derive(Debug, Error)]
pub enum FilterError {
    /// The glob does not compile.
    #[error("library {library:?}: glob {glob:?}: {}", source.kind())]
    Invalid {
        library: String,
        glob: String,
        #[source]
        source: globset::Error,
    },
    /// The glob is empty or starts with `/`. Paths are matched relative to the library root, so
    /// such a glob could never match anything; refusing it beats silently ignoring it.
    #[error("library {library:?}: glob {glob:?}: {reason}")]
    Unusable {
        library: String,
        glob: String,
        reason: &'static str,
    },
}

impl FilterError {
    /// The glob at fault, as written.
    pub fn glob(&self) -> &str {
        match self {
            FilterError::Invalid { glob, .. } | FilterError::Unusable { glob, .. } => glob,
        }
    }

    /// The library whose glob it is.
    pub fn library(&self) -> &str {
        match self {
            FilterError::Invalid { library, .. } | FilterError::Unusable { library, .. } => library,
        }
    }
}

/// The compiled include/exclude globs of one library. Build once, ask many times.
#[derive(Debug, Clone)]
pub struct LibraryFilter {
    include: GlobSet,
    exclude: GlobSet,
    /// Globs that match a directory when *everything* below it is excluded: for each exclude
    /// `P/**`, both `P` and `P/**` (see [`LibraryFilter::prunes_dir`]).
    prune: GlobSet,
}

impl LibraryFilter {
    /// A filter from glob lists; `library` only names the library in errors.
    pub fn from_globs(
        library: &str,
        include: &[String],
        exclude: &[String],
    ) -> Result<LibraryFilter, FilterError> {
        let mut include_set = GlobSetBuilder::new();
        for glob in include {
            include_set.add(compile(library, glob)?);
        }
        let mut exclude_set = GlobSetBuilder::new();
        let mut prune_set = GlobSetBuilder::new();
        for glob in exclude {
            let compiled = compile(library, glob)?;
            exclude_set.add(compiled.clone());
            if glob == "**" {
                // Everything is excluded, so every directory can go.
                prune_set.add(compiled);
            } else if let Some(prefix) = glob.strip_suffix("/**") {
                // `P/**` excludes everything below a directory that matches `P`, and everything
                // below a directory that itself matches `P/**` (it lies below such a `P`).
                // A prefix that does not compile on its own (say `a\/**`, an escaped slash) only
                // costs us the shortcut: the files below are still tested one by one.
                if let Ok(p) = compile(library, prefix) {
                    prune_set.add(p);
                    prune_set.add(compiled);
                }
            }
        }
        let build = |set: GlobSetBuilder, glob_list: &[String]| {
            set.build().map_err(|source| FilterError::Invalid {
                library: library.to_owned(),
                // globset names the glob it choked on in its error; fall back to the whole list.
                glob: source
                    .glob()
                    .map(str::to_owned)
                    .unwrap_or_else(|| glob_list.join(", ")),
                source,
            })
        };
        Ok(LibraryFilter {
            include: build(include_set, include)?,
            exclude: build(exclude_set, exclude)?,
            prune: build(prune_set, exclude)?,
        })
    }

    /// Whether the file at `rel` (relative to the library root, `/`-separated, no leading `/`)
    /// belongs to the library: it matches some include glob and no exclude glob.
    pub fn includes_file(&self, rel: &str) -> bool {
        // One candidate for both sets: globset splits the path into basename/extension once.
        let candidate = Candidate::new(rel);
        self.include.is_match_candidate(&candidate) && !self.exclude.is_match_candidate(&candidate)
    }

    /// Which globs decide about the file at `rel` (`agent explain`): the index of the first
    /// include glob that matches it, and of the first exclude glob, in the library's lists.
    pub fn deciding_globs(&self, rel: &str) -> (Option<usize>, Option<usize>) {
        let candidate = Candidate::new(rel);
        let first = |set: &GlobSet| set.matches_candidate(&candidate).into_iter().min();
        (first(&self.include), first(&self.exclude))
    }

    /// True when the directory `rel_dir` can be skipped whole during a walk, because an exclude
    /// glob excludes everything below it: exclude `**/.git/**` prunes `.git` and `a/b/.git`.
    ///
    /// Only says yes when certain: exclude `**/*.swp` prunes nothing, though a directory named
    /// `x.swp` exists, because a file below it (`x.swp/a.txt`) is not excluded. The library root
    /// (`""`) is never pruned.
    pub fn prunes_dir(&self, rel_dir: &str) -> bool {
        let rel_dir = rel_dir.trim_end_matches('/');
        !rel_dir.is_empty() && self.prune.is_match(rel_dir)
    }
}

/// Compiles one glob with the matching rules this module promises.
fn compile(library: &str, glob: &str) -> Result<Glob, FilterError> {
    let unusable = |reason| FilterError::Unusable {
        library: library.to_owned(),
        glob: glob.to_owned(),
        reason,
    };
    if glob.is_empty() {
        return Err(unusable("is empty"));
    }
    if glob.starts_with('/') {
        return Err(unusable(
            "starts with '/': globs match paths relative to the library root, so drop the '/'",
        ));
    }
    GlobBuilder::new(glob)
        .literal_separator(true)
        // The same config file is shared between machines; a backslash must mean the same on
        // all of them (globset's default differs on Windows).
        .backslash_escape(true)
        .build()
        .map_err(|source| FilterError::Invalid {
            library: library.to_owned(),
            glob: glob.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(include: &[&str], exclude: &[&str]) -> LibraryFilter {
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        LibraryFilter::from_globs("t", &own(include), &own(exclude)).expect("globs compile")
    }

    #[test]
    fn single_star_stays_within_one_directory() {
        let f = filter(&["*.md"], &[]);
        assert!(f.includes_file("a.md"));
        assert!(!f.includes_file("x/a.md"));
    }

    #[test]
    fn double_star_exclude_of_everything_prunes_every_directory_but_the_root() {
        let f = filter(&["**/*"], &["**"]);
        assert!(!f.includes_file("a.txt"));
        assert!(f.prunes_dir("a"));
        assert!(f.prunes_dir("a/b"));
        assert!(!f.prunes_dir(""));
    }

    #[test]
    fn anchored_directory_exclude_prunes_it_and_everything_below() {
        let f = filter(&["**/*"], &["build/**"]);
        assert!(f.prunes_dir("build"));
        assert!(f.prunes_dir("build/sub"));
        assert!(!f.prunes_dir("src/build"));
        assert!(f.includes_file("src/build/x.rs"));
        assert!(!f.includes_file("build/x.o"));
    }

    #[test]
    fn trailing_slash_on_a_directory_is_ignored() {
        let f = filter(&["**/*"], &["**/.git/**"]);
        assert!(f.prunes_dir(".git/"));
    }

    #[test]
    fn escaped_slash_prefix_still_compiles_without_pruning() {
        // "a\\/**" is a valid glob whose prefix "a\\" is not; the filter must not fail or prune.
        let f = filter(&["**/*"], &["a\\/**"]);
        assert!(!f.prunes_dir("a"));
    }

    #[test]
    fn empty_include_includes_nothing() {
        let f = filter(&[], &[]);
        assert!(!f.includes_file("a.txt"));
    }
}

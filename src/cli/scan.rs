//! `agent scan`: full rescan and backfill of every (or one) library.

use std::path::PathBuf;

use anyhow::{bail, Context};

use super::GlobalArgs;
use crate::config::Config;
use crate::index::scan::{self, ScanOptions};
use crate::store::Store;

/// Rescan libraries: index new and changed files, record deletions, queue events for the brain
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Scan only the library with this name
    #[arg(long, value_name = "NAME")]
    pub library: Option<String>,
    /// Folders to scan as libraries named after the folder, besides the configured ones
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// A library root that is empty really is: record its indexed files as deleted (without this,
    /// an empty root is taken for an unmounted disk and nothing is deleted)
    #[arg(long)]
    pub allow_empty: bool,
    /// The files this scan finds gone really are: record their deletions even when they are
    /// more than half of a library (and more than 100), which is refused without this; also
    /// records the deletions `agent run` held (those still gone) and ends the hold
    #[arg(long)]
    pub allow_mass_delete: bool,
    /// A library root now on another file system than when last scanned is the right one:
    /// scan it and remember that file system (without this, it is taken for the mount point of
    /// an unmounted disk and nothing is scanned or deleted)
    #[arg(long)]
    pub allow_other_file_system: bool,
}

pub fn run(args: Args, global: &GlobalArgs, mut config: Config) -> anyhow::Result<()> {
    let mut only = args.library.clone();
    let mut unconfigured = Vec::new();
    for path in &args.paths {
        let (name, made) = add_folder(&mut config, path)?;
        unconfigured.extend(made);
        if !args.paths.is_empty() && args.library.is_none() && args.paths.len() == 1 {
            only = Some(name);
        }
    }
    if let Some(name) = &only {
        if config.library(name).is_none() {
            bail!("no library named {name:?} in the configuration");
        }
    }
    let mut store = Store::open(&config.store.path)?;
    let options = ScanOptions {
        library: only,
        progress: !global.json,
        log_progress: false,
        allow_empty: args.allow_empty,
        allow_mass_delete: args.allow_mass_delete,
        allow_other_file_system: args.allow_other_file_system,
    };
    let summary = scan::scan(&mut store, &config, &options)?;
    if global.json {
        super::print_json(&summary)?;
    } else {
        for lib in &summary.libraries {
            let c = &lib.counts;
            println!(
                "{}: {} seen, {} unchanged, {} hashed ({:.1} MB), {} upserted, {} deleted, {} errors",
                lib.name,
                c.seen,
                c.unchanged,
                c.hashed,
                c.bytes_hashed as f64 / 1e6,
                c.upserted,
                c.deleted,
                c.errors
            );
        }
        if summary.backfilled > 0 {
            println!(
                "backfilled {} LIB rows as initial_sync events",
                summary.backfilled
            );
        }
        let n = summary.libraries.len();
        println!(
            "scanned {n} {} in {:.2} s",
            crate::term::plural(n as u64, "library", "libraries"),
            summary.seconds
        );
    }
    if !summary.ok {
        let reasons: Vec<String> = summary
            .libraries
            .iter()
            .filter_map(|l| l.error.as_ref().map(|e| format!("library {}: {e}", l.name)))
            .collect();
        bail!("{}", reasons.join("; "));
    }
    say_how_to_keep(&unconfigured);
    Ok(())
}

/// Adds a folder named on the command line as a library for this run, named after the folder,
/// unless a configured library already has that root. Returns the library's name, and its root
/// when it was made for this run only.
pub(crate) fn add_folder(
    config: &mut Config,
    path: &std::path::Path,
) -> anyhow::Result<(String, Option<PathBuf>)> {
    let root = std::path::absolute(path).with_context(|| format!("folder {}", path.display()))?;
    // Compared in canonical form (symlinks resolved) when the folder exists; as spelled otherwise.
    let canonical = |p: &std::path::Path| p.canonicalize().unwrap_or_else(|_| p.to_owned());
    let wanted = canonical(&root);
    if let Some(existing) = config
        .libraries
        .iter()
        .find(|l| canonical(&l.path) == wanted)
    {
        return Ok((existing.name.clone(), None));
    }
    // Named as the user spelled it (a symlink's own name), unless that is `..` or `/`.
    let named = if root.file_name().is_some() {
        &root
    } else {
        &wanted
    };
    let Some(name) = named
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
    else {
        bail!(
            "folder {} has no usable name to call its library by; add it to the config file",
            root.display()
        );
    };
    if config.library(&name).is_some() {
        bail!(
            "folder {}: a library named {name:?} with another root is configured already",
            root.display()
        );
    }
    let library = crate::config::LibraryConfig::new(
        name.clone(),
        root.clone(),
        crate::config::DEFAULT_INCLUDE
            .iter()
            .map(|g| (*g).to_owned())
            .collect(),
        crate::config::DEFAULT_EXCLUDE
            .iter()
            .map(|g| (*g).to_owned())
            .collect(),
    )?;
    config.libraries.push(library);
    Ok((name, Some(root)))
}

/// Says, once, how to keep a folder named on the command line: after the work, so that an
/// error stays the one line on stderr.
pub(crate) fn say_how_to_keep(roots: &[std::path::PathBuf]) {
    for root in roots {
        eprintln!(
            "agent: {} is not a configured library, so it is a library for this run only; \
             `agent library add {}` keeps it",
            root.display(),
            shell_word(&root.to_string_lossy())
        );
    }
}

/// `s` as one word for a POSIX shell: as it is when that is safe, else in single quotes.
fn shell_word(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+,:@%".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

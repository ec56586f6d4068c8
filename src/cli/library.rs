//! `agent library add | remove | list`: the libraries of the config file, edited in place
//! (`config::edit`), the file created at the platform path when there is none.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::json;
use unicode_normalization::UnicodeNormalization;

use super::GlobalArgs;
use crate::config::edit::ConfigFile;
use crate::config::{self, Config, LibraryConfig, Overrides};
use crate::index;
use crate::store::Store;

/// Keep folders as libraries: add, remove and list them in the config file
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: LibraryCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum LibraryCommand {
    Add(AddArgs),
    Remove(RemoveArgs),
    List,
}

/// Add a folder as a library (the config file is created when there is none)
#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// The library's root folder; it must exist
    #[arg(value_name = "PATH")]
    pub path: PathBuf,
    /// Its name, the first segment of its files' keys on every device [default: the folder's name]
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Index only files matching this glob (repeat for several) [default: every file]
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,
    /// Leave out files matching this glob (repeat for several) [default: .git, node_modules, ...]
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
}

/// Remove a library from the config file; this device stops observing it
#[derive(Debug, clap::Args)]
pub struct RemoveArgs {
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Also record the deletion of every file of it this device observed, for every device
    /// (without this, its entries stay in the shared view, where other devices may have them)
    #[arg(long)]
    pub forget: bool,
}

pub fn run(args: Args, global: &GlobalArgs) -> anyhow::Result<()> {
    let overrides = global.overrides();
    let env = &config::process_env;
    let Some(path) = config::file_path(&overrides, env)? else {
        bail!("no config file: the home directory is unknown; name one with --config");
    };
    let exists = path.exists();
    // The file as it loads now: an edit starts from a file that works.
    let config = if exists {
        Config::load(&overrides, env)?
    } else {
        Config::from_toml_str("", None, env, &overrides)?
    };
    match args.command {
        LibraryCommand::Add(add) => run_add(add, global, &path, &config, &overrides),
        LibraryCommand::Remove(remove) => run_remove(remove, global, &path, &config, &overrides),
        LibraryCommand::List => run_list(global, &path, exists, &config),
    }
}

fn run_add(
    args: AddArgs,
    global: &GlobalArgs,
    path: &Path,
    config: &Config,
    overrides: &Overrides,
) -> anyhow::Result<()> {
    let spelled = std::path::absolute(&args.path)
        .with_context(|| format!("folder {}", args.path.display()))?;
    let root = match std::fs::metadata(&spelled) {
        Ok(meta) if meta.is_dir() => spelled
            .canonicalize()
            .with_context(|| format!("folder {}", spelled.display()))?,
        Ok(_) => bail!("{} is not a folder", spelled.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("folder {} does not exist", spelled.display())
        }
        Err(e) => bail!("folder {}: {e}", spelled.display()),
    };
    let Some(root_text) = root.to_str() else {
        bail!(
            "folder {}: the config file holds UTF-8 paths only",
            root.display()
        );
    };
    let name: String = match &args.name {
        Some(name) => name.nfc().collect(),
        // Named as the user spelled it (a symlink's own name), unless that is `..` or `/`.
        None => spelled
            .file_name()
            .or_else(|| root.file_name())
            .and_then(|n| n.to_str())
            .map(|n| n.nfc().collect())
            .with_context(|| {
                format!(
                    "folder {} has no name to call its library by: give one with --name",
                    root.display()
                )
            })?,
    };
    if let Some(existing) = config.library(&name) {
        bail!(
            "a library named {name:?} exists already, at {}: choose another name with --name",
            existing.path.display()
        );
    }
    if let Some(problem) = overlap(&root, &config.libraries) {
        bail!("{}: {problem}", root.display());
    }
    let mut file = ConfigFile::open(path)?;
    file.add_library(&name, root_text, &args.include, &args.exclude)?;
    file.save(|text| loads(text, path, overrides))?;
    let created = !file.exists();
    if global.json {
        return super::print_json(&json!({
            "ok": true,
            "config": path,
            "created": created,
            "library": { "name": name, "path": root, "include": args.include, "exclude": args.exclude },
        }));
    }
    let verb = if created { "created" } else { "updated" };
    println!(
        "added library {name} ({}); {verb} {}",
        root.display(),
        path.display()
    );
    println!("a running `agent run` watches it within a few seconds; `agent scan --library {name}` indexes it now");
    Ok(())
}

/// Why a new root cannot be a library beside `libraries`: the same folder, or one inside the
/// other, would index the same files under two keys.
fn overlap(root: &Path, libraries: &[LibraryConfig]) -> Option<String> {
    libraries.iter().find_map(|lib| {
        let other = lib.path.canonicalize().unwrap_or_else(|_| lib.path.clone());
        if other == root {
            Some(format!("is library {:?} already", lib.name))
        } else if root.starts_with(&other) {
            Some(format!(
                "is inside library {:?} ({}): its files are in that library already",
                lib.name,
                other.display()
            ))
        } else if other.starts_with(root) {
            Some(format!(
                "holds library {:?} ({}): its files would be indexed twice",
                lib.name,
                other.display()
            ))
        } else {
            None
        }
    })
}

/// The check before a write: the new text must load, as the next `agent run` will load it.
fn loads(text: &str, path: &Path, overrides: &Overrides) -> Result<(), String> {
    Config::from_toml_str(text, Some(path), &config::process_env, overrides)
        .map(drop)
        .map_err(|e| e.to_string())
}

fn run_remove(
    args: RemoveArgs,
    global: &GlobalArgs,
    path: &Path,
    config: &Config,
    overrides: &Overrides,
) -> anyhow::Result<()> {
    let name: String = args.name.nfc().collect();
    if config.library(&name).is_none() {
        let names: Vec<&str> = config.libraries.iter().map(|l| l.name.as_str()).collect();
        if names.is_empty() {
            bail!(
                "no library named {name:?}: {} configures none",
                path.display()
            );
        }
        bail!(
            "no library named {name:?} in {}; there are: {}",
            path.display(),
            names.join(", ")
        );
    }
    let mut file = ConfigFile::open(path)?;
    if !file.remove_library(&name)? {
        bail!("no library named {name:?} in {}", path.display());
    }
    file.save(|text| loads(text, path, overrides))?;
    // No database yet: nothing was observed.
    let left = if config.store.path.exists() {
        let mut store = Store::open(&config.store.path)?;
        index::leave_library(&mut store, &name, args.forget)
            .with_context(|| format!("library {name}: the config file no longer names it, but"))?
    } else {
        index::Left::default()
    };
    if global.json {
        return super::print_json(&json!({
            "ok": true,
            "config": path,
            "removed": name,
            "unobserved": left.unobserved,
            "deleted": left.deleted,
        }));
    }
    println!("removed library {name} from {}", path.display());
    let files = crate::term::plural(left.unobserved, "file", "files");
    if args.forget {
        println!(
            "recorded the deletion of {} of its {} {files}, for every device",
            left.deleted, left.unobserved
        );
    } else {
        println!(
            "this device no longer observes its {} {files}; their entries stay in the shared view, \
             where other devices may have them (`--forget` records their deletions)",
            left.unobserved
        );
    }
    println!("a running `agent run` stops watching it within a few seconds");
    Ok(())
}

fn run_list(global: &GlobalArgs, path: &Path, exists: bool, config: &Config) -> anyhow::Result<()> {
    if global.json {
        let libraries: Vec<_> = config
            .libraries
            .iter()
            .map(|l| {
                json!({
                    "name": l.name,
                    "path": l.path,
                    "include": l.include,
                    "exclude": l.exclude,
                    "exists": l.path.is_dir(),
                })
            })
            .collect();
        return super::print_json(&json!({
            "ok": true,
            "config": path,
            "config_exists": exists,
            "libraries": libraries,
        }));
    }
    if exists {
        println!("config {}", path.display());
    } else {
        println!(
            "config {} (not created yet: `agent library add PATH` creates it)",
            path.display()
        );
    }
    if config.libraries.is_empty() {
        println!("no libraries: `agent library add PATH` adds one");
    }
    let width = config
        .libraries
        .iter()
        .map(|l| l.name.len())
        .max()
        .unwrap_or(0);
    for l in &config.libraries {
        let missing = if l.path.is_dir() { "" } else { "  (missing)" };
        println!("{:width$}  {}{missing}", l.name, l.path.display());
        println!("{:width$}  include {}", "", l.include.join(" "));
        println!("{:width$}  exclude {}", "", l.exclude.join(" "));
    }
    Ok(())
}

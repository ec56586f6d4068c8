//! The command line: global options, one file per subcommand.

pub mod brain;
mod brain_store;
mod conflicts;
mod device;
mod doctor;
mod explain;
mod forget;
mod init;
mod library;
mod run;
mod scan;
mod search;
mod service;
mod status;
mod sync;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{self, Config, Overrides};

/// Keeps a searchable index of your files, converged across all your machines.
#[derive(Debug, Parser)]
#[command(name = "agent", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Args)]
pub struct GlobalArgs {
    /// Config file [default: the platform config dir's lib-agent/agent.toml, or $LIB_AGENT_CONFIG]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// SQLite database; overrides $LIB_SQLITE_PATH and the config file
    #[arg(long, global = true, value_name = "PATH")]
    pub db: Option<PathBuf>,
    /// Machine-readable JSON on stdout (logs and progress stay on stderr)
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output on stderr (-v info, -vv debug); $LIB_LOG takes a full filter
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Init(init::Args),
    Run(run::Args),
    Scan(scan::Args),
    Forget(forget::Args),
    Search(search::Args),
    Explain(explain::Args),
    Status(status::Args),
    Sync(sync::Args),
    Conflicts(conflicts::Args),
    Doctor(doctor::Args),
    Library(library::Args),
    Service(service::Args),
    Brain(Box<brain::Args>),
}

impl GlobalArgs {
    /// The flags that reach into the configuration.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            config_path: self.config.clone(),
            db_path: self.db.clone(),
        }
    }

    pub fn load_config(&self) -> anyhow::Result<Config> {
        let overrides = self.overrides();
        Ok(Config::load(&overrides, &config::process_env)?)
    }
}

/// Runs the command; the error becomes one line on stderr and a non-zero exit in main.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let global = &cli.global;
    let load = || global.load_config();
    match cli.command {
        Command::Init(args) => init::run(args, global, &load()?),
        Command::Run(args) => run::run(args, global, load()?),
        Command::Scan(args) => scan::run(args, global, load()?),
        Command::Forget(args) => forget::run(args, global, &load()?),
        Command::Search(args) => search::run(args, global, &load()?),
        Command::Explain(args) => explain::run(args, global, &load()?),
        Command::Status(args) => status::run(args, global, &load()?),
        Command::Sync(args) => sync::run(args, global, &load()?),
        Command::Conflicts(args) => conflicts::run(args, global, &load()?),
        // It may create the config file, so it loads it itself.
        Command::Doctor(args) => doctor::run(args, global),
        Command::Library(args) => library::run(args, global),
        Command::Service(args) => service::run(args, global),
        Command::Brain(args) => brain::run(*args, global, &load()?),
    }
}

/// Set once a command has printed its JSON document, which then says how it ended.
static PRINTED_JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Prints a value as one JSON document on stdout.
pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    PRINTED_JSON.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// Whether the command printed a JSON document (with `--json`, an error that ends it after that,
/// such as a scan with a refused library, is in the document already: stdout holds one).
pub fn printed_json() -> bool {
    PRINTED_JSON.load(std::sync::atomic::Ordering::Relaxed)
}

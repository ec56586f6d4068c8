//! `agent run`: the background agent (today: the watcher; see `daemon.rs`).

use std::path::PathBuf;

use anyhow::Context;
use serde_json::json;

use super::GlobalArgs;
use crate::config::Config;
use crate::daemon;
use crate::store::Store;

/// Run in the background: watch every library and keep the index current, until SIGINT/SIGTERM
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folders to watch as libraries named after the folder, besides the configured ones
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

pub fn run(args: Args, global: &GlobalArgs, mut config: Config) -> anyhow::Result<()> {
    // SIGINT and SIGTERM end the loop; the pending changes are indexed before exiting.
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("installing the signal handlers")?;
    let handle = signals.handle();
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            tracing::info!(signal, "stopping");
            let _ = stop_tx.send(());
        }
    });

    let mut unconfigured = Vec::new();
    for path in &args.paths {
        // A folder named here must be there now: a typo would otherwise watch nothing, quietly.
        // (A configured library may still be missing at start: a disk not mounted yet.)
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => anyhow::bail!("{} is not a folder", path.display()),
            Err(e) => anyhow::bail!("folder {}: {e}", path.display()),
        }
        unconfigured.extend(super::scan::add_folder(&mut config, path)?.1);
    }
    let mut store = Store::open(&config.store.path)?;
    super::scan::say_how_to_keep(&unconfigured);
    if !global.json {
        // One line, so a user starting it by hand sees what it does before the first log line.
        eprintln!(
            "agent: watching {} {} into {}; {}; Ctrl-C stops",
            config.libraries.len(),
            crate::term::plural(config.libraries.len() as u64, "library", "libraries"),
            store.path().display(),
            match &config.sync.brain_url {
                Some(url) => format!("syncing with {url} ({})", config.sync.realtime.as_str()),
                None => "local-only: no brain configured, events wait in the outbox".to_owned(),
            }
        );
    }

    // The config file is followed: `agent library add` and `remove` apply without a restart.
    // Folders named here stay libraries of this run whatever the file says.
    let overrides = global.overrides();
    let reload = crate::config::file_path(&overrides, &crate::config::process_env)?.map(|path| {
        let folders = args.paths.clone();
        let load: daemon::Load = std::sync::Arc::new(move || {
            let mut config =
                Config::load(&overrides, &crate::config::process_env).map_err(|e| e.to_string())?;
            for folder in &folders {
                super::scan::add_folder(&mut config, folder).map_err(|e| format!("{e:#}"))?;
            }
            Ok(config)
        });
        daemon::Reload { path, load }
    });
    let options = daemon::RunOptions {
        reload,
        ..daemon::RunOptions::default()
    };
    let state = daemon::run(&config, &mut store, &stop_rx, &options)?;
    handle.close();
    if global.json {
        super::print_json(&json!({ "ok": true, "changes_indexed": state.changes_indexed }))?;
    }
    Ok(())
}

//! `agent status`: device, libraries, file counts, outbox backlog, last scan, and sync: the brain,
//! the wake-up in effect, cursor, last push and pull, and the events parked or refused.

use serde_json::json;

use super::GlobalArgs;
use crate::config::Config;
use crate::store::Store;
use crate::term::escape;

/// Show this device, its libraries, file counts, the outbox backlog and the last scan
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args, global: &GlobalArgs, config: &Config) -> anyhow::Result<()> {
    let store = Store::open_existing(&config.store.path)?;
    let counts = store.counts()?;
    let sequence = store.device_sequence()?;
    let last_run = store.last_run()?;
    let mut libraries = Vec::new();
    for lib in &config.libraries {
        let (files, bytes) = store.library_counts(&lib.name)?;
        libraries.push(json!({
            "name": lib.name,
            "path": lib.path,
            "configured": true,
            "available": lib.path.is_dir(),
            "files": files,
            "bytes": bytes,
        }));
    }
    // Libraries in the index that the config does not name: folders scanned by path, or
    // libraries of other devices.
    for (name, files, bytes) in store.indexed_libraries()? {
        if config.library(&name).is_none() {
            libraries.push(json!({
                "name": name,
                "path": null,
                "configured": false,
                "files": files,
                "bytes": bytes,
            }));
        }
    }
    let brain = config.sync.brain_url.clone();
    let running = crate::daemon::RunLock::is_held(store.path());
    let sync_state = crate::sync::state::load(&store)?;
    let cursor = store.pull_cursor()?;
    let parked = store.parked_outbox()?;
    let refused = crate::sync::refused_pulls(&store)?;
    // What a running agent uses: a webhook device long-polls until the brain has its
    // registration. With no agent running, nothing is in effect.
    let realtime_in_effect = sync_state
        .as_ref()
        .filter(|s| running && !s.realtime.is_empty())
        .map(|s| s.realtime.clone());
    let run_state = crate::daemon::read_state(&store)?;
    let warnings = exposure_warnings(store.path());
    if global.json {
        return super::print_json(&json!({
            "ok": true,
            "warnings": warnings,
            "device_id": store.device_id(),
            "sequence": sequence,
            "database": store.path(),
            "config": config.source,
            "libraries": libraries,
            "counts": counts,
            "last_scan": last_run,
            "brain_url": brain,
            "sync": {
                "realtime": config.sync.realtime.as_str(),
                "realtime_in_effect": realtime_in_effect,
                "cursor": cursor,
                "parked": parked.iter().map(|(ulid, key, error)| json!({"event_ulid": ulid, "entity_key": key, "error": error})).collect::<Vec<_>>(),
                "refused": refused,
                "state": sync_state,
            },
            "agent": {
                "running": running,
                "state": run_state,
            },
        }));
    }
    for warning in &warnings {
        println!("WARNING    {}", escape(warning));
    }
    println!("device     {} (sequence {sequence})", store.device_id());
    // Below, what came from files, the brain or other devices (keys, errors, reasons, paths) is
    // escaped for the terminal.
    println!("database   {}", escape(&store.path().display().to_string()));
    match &config.source {
        Some(path) => println!("config     {}", escape(&path.display().to_string())),
        None => println!("config     none (defaults)"),
    }
    match &brain {
        None => println!("brain      none configured: local-only, events queue in the outbox"),
        Some(url) => {
            let st = sync_state.clone().unwrap_or_default();
            let reach = match st.reachable {
                Some(true) => "reachable",
                Some(false) => "UNREACHABLE",
                None => "not contacted yet",
            };
            let configured = config.sync.realtime.as_str();
            let realtime = match realtime_in_effect.as_deref() {
                Some(now) if now != configured => format!("{now} (configured: {configured})"),
                Some(now) => now.to_owned(),
                None => configured.to_owned(),
            };
            let url = escape(url);
            println!("brain      {url} ({reach}), realtime {realtime}, cursor {cursor}");
            println!(
                "sync       last push {}, last pull {}",
                st.last_push_at.as_deref().unwrap_or("never"),
                st.last_pull_at.as_deref().unwrap_or("never")
            );
            if let Some(error) = &st.last_error {
                println!("           last error: {}", escape(error));
            }
        }
    }
    println!(
        "files      {} live ({:.1} MB), {} deleted, {} conflicts",
        counts.files,
        counts.bytes as f64 / 1e6,
        counts.deleted,
        counts.conflicts
    );
    println!(
        "outbox     {} waiting to be pushed, {} in all",
        counts.outbox_pending, counts.outbox_total
    );
    if !parked.is_empty() {
        println!(
            "parked     {} events the brain refused (not retried):",
            parked.len()
        );
        for (ulid, key, error) in &parked {
            println!(
                "           {} ({}): {}",
                escape(key),
                escape(ulid),
                escape(error)
            );
        }
    }
    if !refused.is_empty() {
        println!(
            "refused    {} pulled events that are invalid (skipped, never applied):",
            refused.len()
        );
        const SHOWN: usize = 10;
        for r in refused.iter().take(SHOWN) {
            let at = if r.snapshot {
                format!("snapshot at {}", r.id)
            } else {
                format!("brain id {}", r.id)
            };
            println!(
                "           {at} {} ({}): {}",
                escape(&format!("{:?}", r.entity_key)),
                escape(&format!("{:?}", r.event_ulid)),
                escape(&r.reason)
            );
        }
        if refused.len() > SHOWN {
            println!(
                "           and {} more (`agent status --json` lists them all)",
                refused.len() - SHOWN
            );
        }
    }
    if libraries.is_empty() {
        println!("libraries  none configured or indexed");
    }
    for info in &libraries {
        let name = escape(info["name"].as_str().unwrap_or_default());
        let files = info["files"].as_i64().unwrap_or_default();
        match config.library(info["name"].as_str().unwrap_or_default()) {
            Some(lib) => {
                let state = if lib.path.is_dir() {
                    ""
                } else {
                    "  [root unavailable]"
                };
                println!(
                    "library    {name}  {}  {files} files{state}",
                    escape(&lib.path.display().to_string())
                );
            }
            None => println!("library    {name}  (not in the config)  {files} files"),
        }
    }
    match (&run_state, running) {
        (Some(run), true) => {
            let watching = run
                .libraries
                .values()
                .filter(|m| matches!(m, crate::daemon::LibraryMode::Watching))
                .count();
            println!(
                "agent      running (pid {}), watching {watching} of {} libraries, {} changes waiting, last change {}",
                run.pid,
                run.libraries.len(),
                run.backlog,
                run.last_change_at.as_deref().unwrap_or("none yet")
            );
            for (name, mode) in &run.libraries {
                if let crate::daemon::LibraryMode::Polling { reason } = mode {
                    println!("           {}: {}", escape(name), escape(reason));
                }
            }
        }
        (Some(run), false) => println!(
            "agent      not running (last stopped at {})",
            run.updated_at
        ),
        (None, _) => println!("agent      not running (never started: `agent run`)"),
    }
    match last_run {
        Some(run) => println!(
            "last scan  {} {} ({} seen, {} upserted, {} deleted, {} errors){}",
            run.ended_at.or(run.started_at).unwrap_or_default(),
            run.status.unwrap_or_default(),
            run.files_seen,
            run.files_upserted,
            run.files_deleted,
            run.errors,
            run.message
                .map(|m| format!(": {}", escape(&m)))
                .unwrap_or_default()
        ),
        None => println!("last scan  never"),
    }
    Ok(())
}

/// A warning when the database or its `-wal`/`-shm` can be read by its group or others: they
/// hold the text of the user's files. It says the `chmod` that fixes it.
fn exposure_warnings(db: &std::path::Path) -> Vec<String> {
    let mut exposed = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let mut path = db.as_os_str().to_owned();
        path.push(suffix);
        let path = std::path::PathBuf::from(path);
        if let Some(mode) = crate::private::readable_by_others(&path) {
            exposed.push((path, mode));
        }
    }
    let Some((_, mode)) = exposed.first() else {
        return Vec::new();
    };
    let paths: Vec<String> = exposed
        .iter()
        .map(|(p, _)| p.display().to_string())
        .collect();
    vec![format!(
        "the database is readable by others (mode {mode:04o}) and holds the text of your files: \
         chmod 600 {}",
        paths.join(" ")
    )]
}

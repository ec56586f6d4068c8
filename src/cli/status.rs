//! `agent status`: device, libraries, file counts, outbox backlog, last scan, and sync: the brain,
//! the wake-up in effect, cursor, last push and pull, and the events parked or refused.
//!
//! [`gather`] reads it all into one [`Status`]; `--json` prints that, and the text output is
//! written from the same struct.

use std::path::PathBuf;

use serde::Serialize;

use super::GlobalArgs;
use crate::config::Config;
use crate::daemon::{LibraryMode, RunState};
use crate::model::digest::{Convergence, ConvergenceState};
use crate::model::wire::DeviceView;
use crate::store::read::{Counts, RunRow};
use crate::store::Store;
use crate::sync::client::BrainClient;
use crate::sync::state::SyncState;
use crate::sync::RefusedPull;
use crate::term::escape;

/// Show this device, its libraries, file counts, the outbox backlog and the last scan
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Everything `agent status` says, in the shape of its `--json` output.
#[derive(Debug, Serialize)]
struct Status {
    ok: bool,
    warnings: Vec<String>,
    device_id: String,
    sequence: i64,
    database: PathBuf,
    config: Option<PathBuf>,
    libraries: Vec<LibraryStatus>,
    counts: Counts,
    last_scan: Option<RunRow>,
    brain_url: Option<String>,
    sync: SyncStatus,
    agent: AgentStatus,
}

/// A library: configured, or only found in the index (a folder scanned by path, or a library of
/// another device).
#[derive(Debug, Serialize)]
struct LibraryStatus {
    name: String,
    /// `None` for a library the config does not name.
    path: Option<PathBuf>,
    configured: bool,
    /// Whether its root is a folder now; only for a configured library.
    #[serde(skip_serializing_if = "Option::is_none")]
    available: Option<bool>,
    files: i64,
    bytes: i64,
    /// Deletions `agent run` holds (too many at once), waiting for
    /// `agent scan --allow-mass-delete --library NAME`; only when there are some.
    #[serde(skip_serializing_if = "Option::is_none")]
    held_deletions: Option<u64>,
}

#[derive(Debug, Serialize)]
struct SyncStatus {
    /// As configured.
    realtime: &'static str,
    /// What a running agent uses: a webhook device long-polls until the brain has its
    /// registration. With no agent running, nothing is in effect.
    realtime_in_effect: Option<String>,
    cursor: i64,
    parked: Vec<Parked>,
    refused: Vec<RefusedPull>,
    state: Option<SyncState>,
    /// What the brain said of this replica at the last pull.
    convergence: Option<Convergence>,
    /// Every enrolled device as the brain sees it now (`GET /devices`); `None` with no brain,
    /// or when it did not answer (then `devices_error` says why).
    devices: Option<Vec<DeviceView>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    devices_error: Option<String>,
}

/// An event the brain refused, set aside in the outbox.
#[derive(Debug, Serialize)]
struct Parked {
    event_ulid: String,
    entity_key: String,
    error: String,
}

#[derive(Debug, Serialize)]
struct AgentStatus {
    running: bool,
    state: Option<RunState>,
}

pub fn run(_args: Args, global: &GlobalArgs, config: &Config) -> anyhow::Result<()> {
    let status = gather(config)?;
    if global.json {
        // Through a `Value`, as when this output was built with `json!`: its keys come out in
        // the same order, at every level.
        return super::print_json(&serde_json::to_value(&status)?);
    }
    print_text(&status);
    Ok(())
}

/// Reads what `agent status` shows from the database and the config.
fn gather(config: &Config) -> anyhow::Result<Status> {
    let mut store = Store::open_existing(&config.store.path)?;
    let counts = store.counts()?;
    let sequence = store.device_sequence()?;
    let last_run = store.last_run()?;
    let mut libraries = Vec::new();
    for lib in &config.libraries {
        let (files, bytes) = store.library_counts(&lib.name)?;
        libraries.push(LibraryStatus {
            name: lib.name.clone(),
            path: Some(lib.path.clone()),
            configured: true,
            available: Some(lib.path.is_dir()),
            files,
            bytes,
            held_deletions: store.held_deletions(&lib.name)?.map(|h| h.count()),
        });
    }
    for (name, files, bytes) in store.indexed_libraries()? {
        if config.library(&name).is_none() {
            libraries.push(LibraryStatus {
                name,
                path: None,
                configured: false,
                available: None,
                files,
                bytes,
                held_deletions: None,
            });
        }
    }
    let running = crate::daemon::RunLock::is_held(store.path());
    let sync_state = crate::sync::state::load(&store)?;
    let cursor = store.pull_cursor()?;
    let parked = store
        .parked_outbox()?
        .into_iter()
        .map(|(event_ulid, entity_key, error)| Parked {
            event_ulid,
            entity_key,
            error,
        })
        .collect();
    let refused = crate::sync::refused_pulls(&store)?;
    let realtime_in_effect = sync_state
        .as_ref()
        .filter(|s| running && !s.realtime.is_empty())
        .map(|s| s.realtime.clone());
    let run_state = crate::daemon::read_state(&store)?;
    let (devices, devices_error) = match brain_devices(config, store.device_id()) {
        None => (None, None),
        Some(Ok(devices)) => {
            // For `agent conflicts`; only a nicety, so a failure to keep them is not this
            // command's.
            if let Err(e) = crate::sync::keep_device_names(&mut store, &devices) {
                tracing::debug!("cannot keep the devices' names: {e}");
            }
            (Some(devices), None)
        }
        Some(Err(e)) => (None, Some(e)),
    };
    let convergence = sync_state.as_ref().and_then(|s| s.convergence);
    Ok(Status {
        ok: true,
        warnings: exposure_warnings(store.path()),
        device_id: store.device_id().to_owned(),
        sequence,
        database: store.path().to_owned(),
        config: config.source.clone(),
        libraries,
        counts,
        last_scan: last_run,
        brain_url: config.sync.brain_url.clone(),
        sync: SyncStatus {
            realtime: config.sync.realtime.as_str(),
            realtime_in_effect,
            cursor,
            parked,
            refused,
            state: sync_state,
            convergence,
            devices,
            devices_error,
        },
        agent: AgentStatus {
            running,
            state: run_state,
        },
    })
}

/// The devices the brain knows, asked now with a short timeout: `status` must stay quick when
/// the brain is away. `None` without a brain.
fn brain_devices(config: &Config, device_id: &str) -> Option<Result<Vec<DeviceView>, String>> {
    let url = config.sync.brain_url.as_ref()?;
    let client = match BrainClient::from_config(url, &config.sync, device_id) {
        Ok(client) => client,
        Err(e) => return Some(Err(e.to_string())),
    };
    Some(
        client
            .devices(DEVICES_TIMEOUT)
            .map(|answer| answer.devices)
            .map_err(|e| e.to_string()),
    )
}

const DEVICES_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// The text output. What came from files, the brain or other devices (keys, errors, reasons,
/// paths) is escaped for the terminal.
fn print_text(status: &Status) {
    for warning in &status.warnings {
        println!("WARNING    {}", escape(warning));
    }
    println!(
        "device     {} (sequence {})",
        status.device_id, status.sequence
    );
    println!(
        "database   {}",
        escape(&status.database.display().to_string())
    );
    match &status.config {
        Some(path) => println!("config     {}", escape(&path.display().to_string())),
        None => println!("config     none (defaults)"),
    }
    print_brain(status);
    let counts = &status.counts;
    println!(
        "files      {} live ({:.1} MB), {} deleted, {}",
        counts.files,
        counts.bytes as f64 / 1e6,
        counts.deleted,
        crate::term::count(counts.conflicts as u64, "conflict", "conflicts")
    );
    if counts.not_on_this_device > 0 {
        // Search finds them too, marked: the shared view lists every device's files.
        println!(
            "           {} not on this device's disk (known from other devices)",
            crate::term::count(counts.not_on_this_device as u64, "file", "files")
        );
    }
    println!(
        "outbox     {} waiting to be pushed, {} in all",
        counts.outbox_pending, counts.outbox_total
    );
    print_parked(&status.sync.parked);
    print_refused(&status.sync.refused);
    print_libraries(&status.libraries);
    print_agent(&status.agent);
    print_last_scan(status.last_scan.as_ref());
}

/// The brain, whether it answered, the wake-up in effect, the cursor, and the last sync.
fn print_brain(status: &Status) {
    let Some(url) = &status.brain_url else {
        println!("brain      none configured: local-only, events queue in the outbox");
        return;
    };
    let sync = &status.sync;
    let st = sync.state.clone().unwrap_or_default();
    let reach = match st.reachable {
        Some(true) => "reachable",
        Some(false) => "UNREACHABLE",
        None => "not contacted yet",
    };
    let configured = sync.realtime;
    let realtime = match sync.realtime_in_effect.as_deref() {
        Some(now) if now != configured => format!("{now} (configured: {configured})"),
        Some(now) => now.to_owned(),
        None => configured.to_owned(),
    };
    let url = escape(url);
    println!(
        "brain      {url} ({reach}), realtime {realtime}, cursor {}",
        sync.cursor
    );
    println!(
        "sync       last push {}, last pull {}",
        st.last_push_at.as_deref().unwrap_or("never"),
        st.last_pull_at.as_deref().unwrap_or("never")
    );
    if let Some(error) = &st.last_error {
        println!("           last error: {}", escape(error));
    }
    match sync.convergence {
        Some(c) => println!("replica    {c} (as the brain said at the last pull)"),
        None => println!("replica    not compared yet (no pull since this agent keeps a digest)"),
    }
    if sync
        .convergence
        .is_some_and(|c| c.state == ConvergenceState::Diverged)
    {
        println!(
            "           repair: `agent sync --reseed` replaces the shared view with the brain's"
        );
    }
    if let Some(devices) = &sync.devices {
        println!("devices    {} enrolled:", devices.len());
        for d in devices {
            let convergence = Convergence {
                state: d.state,
                lag: d.lag,
            };
            let this = if d.device_id.as_deref() == Some(status.device_id.as_str()) {
                " (this device)"
            } else {
                ""
            };
            println!(
                "           {}{this}: {}{}",
                escape(&d.name),
                if d.revoked {
                    "revoked".to_owned()
                } else {
                    convergence.to_string()
                },
                d.last_seen_at
                    .as_deref()
                    .map(|t| format!(", last seen {}", escape(t)))
                    .unwrap_or_default()
            );
        }
    } else if let Some(error) = &sync.devices_error {
        println!("devices    not listed: {}", escape(error));
    }
}

fn print_parked(parked: &[Parked]) {
    if parked.is_empty() {
        return;
    }
    println!(
        "parked     {} the brain refused (not retried):",
        crate::term::count(parked.len() as u64, "event", "events")
    );
    for p in parked {
        println!(
            "           {} ({}): {}",
            escape(&p.entity_key),
            escape(&p.event_ulid),
            escape(&p.error)
        );
    }
}

/// The pulled events refused as invalid: the first few (`--json` has them all).
fn print_refused(refused: &[RefusedPull]) {
    if refused.is_empty() {
        return;
    }
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

fn print_libraries(libraries: &[LibraryStatus]) {
    if libraries.is_empty() {
        println!("libraries  none configured or indexed");
    }
    for info in libraries {
        let name = escape(&info.name);
        let files = info.files;
        match &info.path {
            Some(path) if info.configured => {
                let state = if info.available == Some(false) {
                    "  [root unavailable]"
                } else {
                    ""
                };
                println!(
                    "library    {name}  {}  {}{state}",
                    escape(&path.display().to_string()),
                    crate::term::count(files as u64, "file", "files")
                );
                if let Some(held) = info.held_deletions {
                    println!(
                        "           {} held (too many at once); if they really are gone: {}",
                        crate::term::count(held, "deletion", "deletions"),
                        crate::index::guard::release_command(&info.name)
                    );
                }
            }
            _ => println!(
                "library    {name}  (not in the config)  {}",
                crate::term::count(files as u64, "file", "files")
            ),
        }
    }
}

/// Whether `agent run` is running, and how it keeps each library current.
fn print_agent(agent: &AgentStatus) {
    match (&agent.state, agent.running) {
        (Some(run), true) => {
            let watching = run
                .libraries
                .values()
                .filter(|m| matches!(m, LibraryMode::Watching))
                .count();
            println!(
                "agent      running (pid {}), watching {watching} of {}, {} waiting, last change {}",
                run.pid,
                crate::term::count(run.libraries.len() as u64, "library", "libraries"),
                crate::term::count(run.backlog as u64, "change", "changes"),
                run.last_change_at.as_deref().unwrap_or("none yet")
            );
            for (name, mode) in &run.libraries {
                if let LibraryMode::Polling { reason } = mode {
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
}

fn print_last_scan(last_run: Option<&RunRow>) {
    match last_run {
        Some(run) => println!(
            "last scan  {} {} ({} seen, {} upserted, {} deleted, {} errors){}",
            run.ended_at
                .as_deref()
                .or(run.started_at.as_deref())
                .unwrap_or_default(),
            run.status.as_deref().unwrap_or_default(),
            run.files_seen,
            run.files_upserted,
            run.files_deleted,
            run.errors,
            run.message
                .as_ref()
                .map(|m| format!(": {}", escape(m)))
                .unwrap_or_default()
        ),
        None => println!("last scan  never"),
    }
}

/// A warning when the database or its `-wal`/`-shm` can be read by its group or others: they
/// hold the text of the user's files. It says the `chmod` that fixes it.
pub(super) fn exposure_warnings(db: &std::path::Path) -> Vec<String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `--json` keeps the shape it had when it was built with `json!` (scripts read it): the same
    /// keys, nesting and order, `path: null` and no `available` for a library only in the index.
    #[test]
    fn the_json_output_keeps_its_shape() {
        let counts = Counts {
            files: 2,
            deleted: 1,
            bytes: 30,
            observed: 3,
            outbox_pending: 4,
            outbox_total: 5,
            conflicts: 0,
            not_on_this_device: 1,
        };
        let refused = RefusedPull {
            id: 7,
            snapshot: false,
            event_ulid: "01J".into(),
            device_id: "dev".into(),
            entity_key: "notes/x".into(),
            reason: "bad".into(),
            refused_at: "2026-01-01T00:00:00Z".into(),
        };
        let sync_state = SyncState {
            brain_url: "http://brain".into(),
            realtime: "longpoll".into(),
            reachable: Some(true),
            last_push_at: None,
            last_pull_at: Some("t".into()),
            last_error: None,
            convergence: None,
        };
        let run_state = RunState {
            pid: 9,
            state: "running".into(),
            ..RunState::default()
        };
        let status = Status {
            ok: true,
            warnings: vec!["w".into()],
            device_id: "dev".into(),
            sequence: 3,
            database: "/db".into(),
            config: None,
            libraries: vec![
                LibraryStatus {
                    name: "notes".into(),
                    path: Some("/notes".into()),
                    configured: true,
                    available: Some(false),
                    files: 2,
                    bytes: 30,
                    held_deletions: None,
                },
                LibraryStatus {
                    name: "other".into(),
                    path: None,
                    configured: false,
                    available: None,
                    files: 1,
                    bytes: 4,
                    held_deletions: None,
                },
            ],
            counts: counts.clone(),
            last_scan: None,
            brain_url: Some("http://brain".into()),
            sync: SyncStatus {
                realtime: "webhook",
                realtime_in_effect: Some("longpoll".into()),
                cursor: 12,
                parked: vec![Parked {
                    event_ulid: "01K".into(),
                    entity_key: "notes/y".into(),
                    error: "too big".into(),
                }],
                refused: vec![refused.clone()],
                state: Some(sync_state.clone()),
                convergence: Some(Convergence {
                    state: ConvergenceState::Behind,
                    lag: 4,
                }),
                devices: None,
                devices_error: Some("down".into()),
            },
            agent: AgentStatus {
                running: true,
                state: Some(run_state.clone()),
            },
        };
        let config: Option<PathBuf> = None;
        let last_run: Option<RunRow> = None;
        let before = json!({
            "ok": true,
            "warnings": ["w"],
            "device_id": "dev",
            "sequence": 3,
            "database": "/db",
            "config": config,
            "libraries": [
                {"name": "notes", "path": "/notes", "configured": true, "available": false,
                 "files": 2, "bytes": 30},
                {"name": "other", "path": null, "configured": false, "files": 1, "bytes": 4},
            ],
            "counts": counts,
            "last_scan": last_run,
            "brain_url": "http://brain",
            "sync": {
                "realtime": "webhook",
                "realtime_in_effect": "longpoll",
                "cursor": 12,
                "parked": [{"event_ulid": "01K", "entity_key": "notes/y", "error": "too big"}],
                "refused": [refused],
                "state": sync_state,
                "convergence": {"state": "behind", "lag": 4},
                "devices": null,
                "devices_error": "down",
            },
            "agent": {
                "running": true,
                "state": run_state,
            },
        });
        let after = serde_json::to_value(&status).expect("serialises");
        assert_eq!(after, before);
        assert_eq!(
            serde_json::to_string_pretty(&after).expect("prints"),
            serde_json::to_string_pretty(&before).expect("prints"),
            "byte for byte"
        );
    }
}

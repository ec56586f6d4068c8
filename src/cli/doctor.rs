//! `agent doctor`: checks a setup and says what is wrong and what to do. Each check is `ok`,
//! `warn` (works, but worth a look) or `fail` (something does not work); any failure makes
//! the exit status 1.

use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::json;

use super::GlobalArgs;
use crate::config::{self, Config, Overrides};
use crate::model::digest::{ConvergenceState, ReplicaReport};
use crate::store::Store;
use crate::sync::client::{BrainClient, ClientError};
use crate::term::{count, escape};

/// Check the setup (config, database, libraries, watches, agent, brain) and say what to fix
#[derive(Debug, clap::Args)]
pub struct Args {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Serialize)]
struct Check {
    name: String,
    status: Level,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

#[derive(Default)]
struct Report {
    checks: Vec<Check>,
}

impl Report {
    fn add(&mut self, name: &str, status: Level, detail: String, fix: Option<String>) {
        self.checks.push(Check {
            name: name.to_owned(),
            status,
            detail,
            fix,
        });
    }
    fn ok(&mut self, name: &str, detail: String) {
        self.add(name, Level::Ok, detail, None);
    }
    fn warn(&mut self, name: &str, detail: String, fix: impl Into<String>) {
        self.add(name, Level::Warn, detail, Some(fix.into()));
    }
    fn fail(&mut self, name: &str, detail: String, fix: impl Into<String>) {
        self.add(name, Level::Fail, detail, Some(fix.into()));
    }
}

/// A brain whose clock is further off than this makes timestamps (conflict times, prune ages)
/// disagree between devices.
const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Events waiting longer than this for the brain are worth a look.
const BACKLOG_AGE: Duration = Duration::from_secs(3600);

pub fn run(_args: Args, global: &GlobalArgs) -> anyhow::Result<()> {
    let mut report = Report::default();
    let config = check_config(&mut report, global)?;
    let store = check_database(&mut report, &config);
    check_libraries(&mut report, &config);
    check_agent(&mut report, &config);
    let client = check_brain(&mut report, &config, store.as_ref());
    if let Some(store) = &store {
        check_replica(&mut report, store, client.as_ref())?;
    }
    if let Some(store) = &store {
        check_guards(&mut report, &config, store)?;
        check_outbox(&mut report, store)?;
    }
    let failed = report
        .checks
        .iter()
        .filter(|c| c.status == Level::Fail)
        .count();
    if global.json {
        super::print_json(&json!({ "ok": failed == 0, "checks": report.checks }))?;
    } else {
        for c in &report.checks {
            let tag = match c.status {
                Level::Ok => "ok  ",
                Level::Warn => "WARN",
                Level::Fail => "FAIL",
            };
            println!("{tag}  {:10} {}", c.name, escape(&c.detail));
            if let Some(fix) = &c.fix {
                println!("      {:10} -> {}", "", escape(fix));
            }
        }
    }
    if failed > 0 {
        anyhow::bail!(
            "{} failed (see above)",
            count(failed as u64, "check", "checks")
        );
    }
    Ok(())
}

/// The config file: found, and loads. A file that does not load is a failure; the other checks
/// then go on with the defaults.
fn check_config(report: &mut Report, global: &GlobalArgs) -> anyhow::Result<Config> {
    let overrides = global.overrides();
    let env = &config::process_env;
    // The environment and the flags over the defaults; the defaults alone when those are bad
    // too (the config check reports it).
    let defaults = || -> anyhow::Result<Config> {
        Config::from_toml_str("", None, env, &overrides)
            .or_else(|_| Config::from_toml_str("", None, &|_| None, &Overrides::default()))
            .map_err(anyhow::Error::from)
    };
    let path = match config::file_path(&overrides, env) {
        Ok(Some(path)) => path,
        Ok(None) => {
            report.warn(
                "config",
                "no home directory, so no config file".into(),
                "name one with --config",
            );
            return defaults();
        }
        Err(e) => {
            report.fail("config", e.to_string(), "fix the path it names");
            return defaults();
        }
    };
    let exists = path.exists();
    if !exists {
        report.warn(
            "config",
            format!("no config file at {}", path.display()),
            "`agent library add PATH` creates it with a library",
        );
    }
    match Config::load(&overrides, env) {
        // The environment and the flags still apply without a file.
        Ok(config) if !exists => Ok(config),
        Ok(config) => {
            report.ok(
                "config",
                format!(
                    "{} ({})",
                    path.display(),
                    count(config.libraries.len() as u64, "library", "libraries")
                ),
            );
            Ok(config)
        }
        Err(e) => {
            report.fail("config", e.to_string(), "fix the file at the line it names");
            defaults()
        }
    }
}

fn check_database(report: &mut Report, config: &Config) -> Option<Store> {
    let db = &config.store.path;
    if !db.exists() {
        report.warn(
            "database",
            format!("no database at {} yet", db.display()),
            "`agent scan` or `agent run` creates it",
        );
        return None;
    }
    match Store::open_existing(db) {
        Ok(store) => {
            report.ok(
                "database",
                format!(
                    "{} (schema {}, device {})",
                    db.display(),
                    crate::store::SCHEMA_VERSION,
                    store.device_id()
                ),
            );
            for warning in super::status::exposure_warnings(db) {
                report.warn("database", warning, "chmod 600 the files it names");
            }
            Some(store)
        }
        Err(e) => {
            report.fail(
                "database",
                e.to_string(),
                "restore it from a backup, or move it away and run `agent scan` to build a new one",
            );
            None
        }
    }
}

fn check_libraries(report: &mut Report, config: &Config) {
    if config.libraries.is_empty() {
        report.warn(
            "libraries",
            "none configured".into(),
            "`agent library add PATH`",
        );
        return;
    }
    let mut folders = 0u64;
    for lib in &config.libraries {
        let name = format!("library {}", lib.name);
        match std::fs::metadata(&lib.path) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                report.fail(
                    &name,
                    format!("root {} is not a folder", lib.path.display()),
                    format!("fix its path, or `agent library remove {}`", lib.name),
                );
                continue;
            }
            Err(e) => {
                report.fail(
                    &name,
                    format!("root {}: {e}", lib.path.display()),
                    format!(
                        "mount or restore it (nothing is deleted meanwhile), or `agent library remove {}`",
                        lib.name
                    ),
                );
                continue;
            }
        }
        let dirs = crate::watch::folders_to_watch(lib);
        folders += dirs;
        match crate::index::root_fs::remote_kind(&lib.path) {
            Some(kind) => report.warn(
                &name,
                format!("{} is on a {kind} file system", lib.path.display()),
                "the kernel reports no change made there by another machine: such changes are \
                 seen by the next scan (`agent scan`, or when `agent run` starts)",
            ),
            None => report.ok(
                &name,
                format!(
                    "{} ({})",
                    lib.path.display(),
                    count(dirs, "folder", "folders")
                ),
            ),
        }
    }
    match crate::watch::watch_limit() {
        Some(limit) if folders > limit => report.fail(
            "watches",
            format!("{folders} folders to watch, fs.inotify.max_user_watches = {limit}"),
            format!(
                "sudo sysctl fs.inotify.max_user_watches={} (and in /etc/sysctl.d/ to keep it); \
                 meanwhile the libraries over it are rescanned every minute",
                crate::watch::suggested_watch_limit(folders, Some(limit))
            ),
        ),
        Some(limit) if folders * 10 > limit * 8 => report.warn(
            "watches",
            format!("{folders} folders to watch, fs.inotify.max_user_watches = {limit}: near it"),
            format!(
                "sudo sysctl fs.inotify.max_user_watches={}",
                crate::watch::suggested_watch_limit(folders, Some(limit))
            ),
        ),
        Some(limit) => report.ok(
            "watches",
            format!(
                "{} to watch of fs.inotify.max_user_watches = {limit}",
                count(folders, "folder", "folders")
            ),
        ),
        None => {}
    }
}

/// Per library: is its root on the file system it was observed on, and are deletions held?
fn check_guards(report: &mut Report, config: &Config, store: &Store) -> anyhow::Result<()> {
    use crate::index::root_fs::{self, Compared};
    for lib in &config.libraries {
        let now = root_fs::identify(&lib.path);
        let recorded = store.library_root_fs(&lib.name)?;
        let name = format!("same_file_system {}", lib.name);
        match root_fs::compare(recorded.as_deref(), now.as_ref()) {
            Compared::Other { was, now } => report.fail(
                &name,
                format!(
                    "root {} is on another file system ({}) than when last scanned ({}): an \
                     unmounted disk's mount point looks like this; scans refuse it",
                    lib.path.display(),
                    now.describe(),
                    was.describe()
                ),
                format!(
                    "mount it again; if the library really moved there, `agent scan \
                     --allow-other-file-system --library {}`",
                    lib.name
                ),
            ),
            Compared::Same => report.ok(&name, now.map(|n| n.describe()).unwrap_or_default()),
            Compared::Unknown => {}
        }
        if let Some(held) = store.held_deletions(&lib.name)? {
            report.fail(
                &format!("held_deletions {}", lib.name),
                format!(
                    "`agent run` holds {} since {}: too many files went at once",
                    count(held.count(), "deletion", "deletions"),
                    held.since
                ),
                format!(
                    "if they really are gone, `{}` (it records those still gone)",
                    crate::index::guard::release_command(&lib.name)
                ),
            );
        }
    }
    Ok(())
}

fn check_agent(report: &mut Report, config: &Config) {
    if crate::daemon::RunLock::is_held(&config.store.path) {
        report.ok("agent", "`agent run` is running on this database".into());
    } else {
        report.warn(
            "agent",
            "`agent run` is not running: changes are indexed by the next scan only".into(),
            "`agent service install` runs it at every login, or start `agent run`",
        );
    }
}

/// The brain: it answers, takes the credential, keeps time. Returns the client when it took it.
fn check_brain(report: &mut Report, config: &Config, store: Option<&Store>) -> Option<BrainClient> {
    let Some(url) = &config.sync.brain_url else {
        report.ok("brain", "none configured: this device is local-only".into());
        return None;
    };
    let device = store.map_or("", Store::device_id);
    let client = match BrainClient::from_config(url, &config.sync, device) {
        Ok(client) => client,
        Err(e) => {
            report.fail(
                "brain",
                e.to_string(),
                "fix the credential or CA file it names",
            );
            return None;
        }
    };
    match client.probe() {
        Ok(date) => {
            report.ok(
                "brain",
                format!("{url} answers and accepts this device's credential"),
            );
            let Some(date) = date else {
                return Some(client);
            };
            let now = SystemTime::now();
            let skew = now
                .duration_since(date)
                .or_else(|_| date.duration_since(now))
                .unwrap_or_default();
            if skew > CLOCK_SKEW {
                report.warn(
                    "clock",
                    format!(
                        "this machine's clock is {} off the brain's",
                        humantime::format_duration(Duration::from_secs(skew.as_secs()))
                    ),
                    "turn on time synchronisation (timedatectl set-ntp true)",
                );
            } else {
                report.ok("clock", "within a minute of the brain's".into());
            }
            return Some(client);
        }
        Err(ClientError::Status {
            status: status @ (401 | 403),
            message,
            ..
        }) => report.fail(
            "brain",
            format!("{url} refused the credential ({status}: {message})"),
            "set LIB_DEVICE_TOKEN (from `agent brain device add` on the brain), or \
             LIB_SYNC_SECRET to the brain's shared secret",
        ),
        Err(e) => report.fail(
            "brain",
            e.to_string(),
            "check that the brain runs and that [sync] brain_url is its address",
        ),
    }
    None
}

/// The shared view's digest re-derived from its rows against the one its commits kept (a
/// replica changed outside the agent), then, with a brain, compared with the brain's at this
/// device's cursor, and how the brain's webhook deliveries to this device go.
fn check_replica(
    report: &mut Report,
    store: &Store,
    client: Option<&BrainClient>,
) -> anyhow::Result<()> {
    let check = store.check_replica_digest()?;
    if check.matches() {
        report.ok(
            "replica",
            format!(
                "the shared view's {} match the digest its commits kept",
                count(check.rows, "row", "rows")
            ),
        );
    } else {
        report.fail(
            "replica",
            "the shared view's rows no longer match the digest the agent's own commits kept: \
             the database was changed outside the agent (a disk error, a hand edit)"
                .into(),
            "`agent sync --reseed` replaces the shared view with the brain's (this device's \
             own changes not yet acknowledged are applied again)",
        );
    }
    let Some(client) = client else {
        return Ok(());
    };
    // The rows as they are: a damaged replica must show as such.
    let replica = ReplicaReport {
        digest: check.derived,
        pending: store.unacknowledged()?,
    };
    match client.pull(store.pull_cursor()?, 1, None, Some(&replica)) {
        Ok(page) => match page.convergence {
            Some(c) if c.state == ConvergenceState::Diverged => report.fail(
                "converged",
                "DIVERGED: at the brain's head with nothing pending, this device holds other \
                 winners than the brain"
                    .into(),
                "`agent sync --reseed` replaces the shared view with the brain's",
            ),
            Some(c) if c.state == ConvergenceState::Converged => {
                report.ok("converged", "the same shared view as the brain's".into())
            }
            Some(c) => report.ok(
                "converged",
                format!("not comparable yet: {c}; `agent sync` catches up"),
            ),
            None => report.warn(
                "converged",
                "the brain does not compare replicas (LIB v1.1's edge function?)".into(),
                "move the brain to `agent brain serve` to check convergence",
            ),
        },
        Err(e) => report.warn(
            "converged",
            format!("could not ask the brain: {e}"),
            "`agent doctor` again once the brain answers",
        ),
    }
    if let Ok(answer) = client.devices(Duration::from_secs(5)) {
        let me = answer
            .devices
            .iter()
            .find(|d| d.device_id.as_deref() == Some(store.device_id()));
        if let Some(webhook) = me.and_then(|d| d.webhook.as_ref()) {
            if webhook.failures > 0 || !webhook.active {
                report.warn(
                    "webhook",
                    format!(
                        "the brain's deliveries to this device's webhook fail ({} in a row{})",
                        webhook.failures,
                        if webhook.active { "" } else { ", turned off" }
                    ),
                    "check that [sync] public_url reaches the listener from the brain's side \
                     (the agent long-polls meanwhile); `agent brain device list` on the brain \
                     shows the last error",
                );
            } else {
                report.ok(
                    "webhook",
                    "the brain's deliveries to this device go through".into(),
                );
            }
        }
    }
    Ok(())
}

fn check_outbox(report: &mut Report, store: &Store) -> anyhow::Result<()> {
    let pending = store.counts()?.outbox_pending;
    let oldest = store.pending_outbox(1)?;
    let age = oldest.first().and_then(|(_, e)| {
        let at = humantime::parse_rfc3339_weak(&e.created_at).ok()?;
        SystemTime::now().duration_since(at).ok()
    });
    match age {
        Some(age) if age > BACKLOG_AGE => report.warn(
            "outbox",
            format!(
                "{} waiting for the brain, the oldest for {}",
                count(pending as u64, "event", "events"),
                humantime::format_duration(Duration::from_secs(age.as_secs()))
            ),
            "see `agent status`; `agent sync` pushes now",
        ),
        _ => report.ok(
            "outbox",
            format!(
                "{} waiting for the brain",
                count(pending as u64, "event", "events")
            ),
        ),
    }
    let parked = store.parked_outbox()?;
    if !parked.is_empty() {
        report.warn(
            "parked",
            format!(
                "{} the brain refused, set aside (not retried)",
                count(parked.len() as u64, "event", "events")
            ),
            "`agent status` lists them with the brain's reasons; once that is fixed, \
             `agent sync --retry-parked` sends them again",
        );
    }
    Ok(())
}

//! `agent service install | uninstall | status`: the agent as a systemd user unit (Linux) or a
//! launchd agent (macOS), or the brain as a systemd system unit or a launchd daemon (`--brain`). The files come
//! from `crate::service`; this writes them and asks systemctl or launchctl to start them, or
//! prints the commands when that cannot be done here.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use serde_json::json;

use super::GlobalArgs;
use crate::config;
use crate::service::{self, AGENT_UNIT, BRAIN_UNIT, LAUNCHD_BRAIN_LABEL, LAUNCHD_LABEL};

/// Run the agent in the background at login (systemd user unit, launchd agent), or the brain
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: ServiceCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ServiceCommand {
    Install(InstallArgs),
    Uninstall(Where),
    Status(Where),
}

/// Which service, and where its files are.
#[derive(Debug, Clone, clap::Args)]
pub struct Where {
    /// The brain (`agent brain serve`) as a system service (a systemd system unit; macOS: a
    /// launchd daemon), instead of this user's agent
    #[arg(long)]
    pub brain: bool,
    /// The folder of the unit file [default: ~/.config/systemd/user; --brain: /etc/systemd/system;
    /// macOS: ~/Library/LaunchAgents; --brain: /Library/LaunchDaemons]. systemctl or launchctl
    /// is then left to you: the commands are printed
    #[arg(long, value_name = "DIR")]
    pub unit_dir: Option<PathBuf>,
    /// The environment file the unit reads its secrets from [default: next to the config file,
    /// agent.env; --brain: /etc/lib-agent/brain.env]
    #[arg(long, value_name = "PATH")]
    pub env_file: Option<PathBuf>,
    /// A launchd agent even where this is not macOS (to look at the file)
    #[arg(long, hide = true)]
    pub launchd: bool,
}

/// Install the service: write its unit (and its secrets, 0600) and start it
#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    #[command(flatten)]
    pub at: Where,
    /// Print what would be written, and where, and write nothing
    #[arg(long)]
    pub dry_run: bool,
    /// With --brain, after `--`: the options of `agent brain serve` the unit runs it with
    /// (e.g. `-- --listen 127.0.0.1:8787 --trusted-proxy 127.0.0.1 --prune-older-than 365d`),
    /// checked now. Secrets go in the environment file, never here
    #[arg(last = true, value_name = "SERVE-OPTIONS", requires = "brain")]
    pub serve_options: Vec<String>,
}

/// The files of one service, resolved.
struct Service {
    launchd: bool,
    brain: bool,
    unit: PathBuf,
    env_file: Option<PathBuf>,
    /// The unit is where the service manager looks: it may be asked to start it.
    managed: bool,
}

impl Service {
    fn resolve(at: &Where, global: &GlobalArgs) -> anyhow::Result<Service> {
        let launchd = at.launchd || cfg!(target_os = "macos");
        let home = || dirs::home_dir().context("the home directory is unknown: give --unit-dir");
        let (default_dir, file) = if launchd && at.brain {
            (
                PathBuf::from("/Library/LaunchDaemons"),
                format!("{LAUNCHD_BRAIN_LABEL}.plist"),
            )
        } else if launchd {
            (
                home()?.join("Library/LaunchAgents"),
                format!("{LAUNCHD_LABEL}.plist"),
            )
        } else if at.brain {
            (PathBuf::from("/etc/systemd/system"), BRAIN_UNIT.to_owned())
        } else {
            let config =
                dirs::config_dir().context("the config folder is unknown: give --unit-dir")?;
            (config.join("systemd/user"), AGENT_UNIT.to_owned())
        };
        let unit = at.unit_dir.clone().unwrap_or(default_dir).join(file);
        let env_file = if launchd {
            None
        } else if let Some(path) = &at.env_file {
            Some(std::path::absolute(path)?)
        } else if at.brain {
            Some(PathBuf::from("/etc/lib-agent/brain.env"))
        } else {
            let overrides = global.overrides();
            let config_file = config::file_path(&overrides, &config::process_env)?
                .context("the config folder is unknown: give --env-file")?;
            Some(config_file.with_file_name("agent.env"))
        };
        Ok(Service {
            launchd,
            brain: at.brain,
            unit: std::path::absolute(unit)?,
            env_file,
            managed: at.unit_dir.is_none(),
        })
    }

    /// The commands that start (`start`) or stop the service.
    fn commands(&self, start: bool) -> Vec<Vec<String>> {
        let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        if self.launchd {
            let unit = self.unit.to_string_lossy().into_owned();
            let verb = if start { "load" } else { "unload" };
            return vec![vec!["launchctl".into(), verb.into(), "-w".into(), unit]];
        }
        let scope: &[&str] = if self.brain { &[] } else { &["--user"] };
        let name = if self.brain { BRAIN_UNIT } else { AGENT_UNIT };
        let mut reload = owned(&["systemctl"]);
        reload.extend(owned(scope));
        reload.push("daemon-reload".into());
        let mut enable = owned(&["systemctl"]);
        enable.extend(owned(scope));
        enable.extend(owned(if start {
            &["enable", "--now"]
        } else {
            &["disable", "--now"]
        }));
        enable.push(name.into());
        if start {
            vec![reload, enable]
        } else {
            vec![enable, reload]
        }
    }
}

pub fn run(args: Args, global: &GlobalArgs) -> anyhow::Result<()> {
    match args.command {
        ServiceCommand::Install(install) => run_install(install, global),
        ServiceCommand::Uninstall(at) => run_uninstall(&at, global),
        ServiceCommand::Status(at) => run_status(&at, global),
    }
}

/// What the service runs: this binary, by its absolute path, with the `--config` and `--db` the
/// install was given.
fn exec_args(
    global: &GlobalArgs,
    brain: bool,
    serve_options: &[String],
) -> anyhow::Result<Vec<String>> {
    let exe = std::env::current_exe().context("finding this binary's path")?;
    let exe = exe.canonicalize().unwrap_or(exe);
    let text = |p: &Path, what: &str| -> anyhow::Result<String> {
        let p = std::path::absolute(p).with_context(|| format!("{what} {}", p.display()))?;
        p.to_str()
            .map(str::to_owned)
            .with_context(|| format!("{what} {}: not UTF-8", p.display()))
    };
    let mut args = vec![text(&exe, "binary")?];
    if let Some(config) = &global.config {
        args.extend(["--config".to_owned(), text(config, "config file")?]);
    }
    if let Some(db) = &global.db {
        args.extend(["--db".to_owned(), text(db, "database")?]);
    }
    if brain {
        args.extend(["brain".to_owned(), "serve".to_owned()]);
        args.extend(serve_options.iter().cloned());
    } else {
        args.push("run".to_owned());
    }
    Ok(args)
}

/// The serve options parse as `agent brain serve` parses them, so a typo fails the install, not
/// every start of the unit; and no secret sits in the unit file, which is world-readable.
fn check_serve_options(options: &[String]) -> anyhow::Result<()> {
    use clap::Parser;
    if options.is_empty() {
        return Ok(());
    }
    let holds_url =
        |o: &String| o.starts_with("--database-url") || o.contains("://") && o.contains('@');
    if options.iter().any(holds_url) {
        bail!(
            "the database URL (it may hold a password) goes in the environment file as \
             LIB_BRAIN_DATABASE_URL, not in the unit's command line"
        );
    }
    let mut argv = vec!["agent".to_owned(), "brain".to_owned(), "serve".to_owned()];
    argv.extend(options.iter().cloned());
    super::Cli::try_parse_from(&argv)
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("the options after `--` are not `agent brain serve`'s: {e}"))
}

fn run_install(args: InstallArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    if let Some(config) = &global.config {
        if !config.is_file() {
            bail!(
                "config {} does not exist, and the service would fail to start on it: \
                 `agent --config {} library add PATH` creates it",
                config.display(),
                config.display()
            );
        }
    }
    let service = Service::resolve(&args.at, global)?;
    check_serve_options(&args.serve_options)?;
    let exec = exec_args(global, service.brain, &args.serve_options)?;
    let names = if service.brain {
        service::BRAIN_ENV
    } else {
        service::AGENT_ENV
    };
    let (unit_text, env_text, set) = if service.launchd {
        let env: Vec<(String, String)> = names
            .iter()
            .filter_map(|n| std::env::var(n).ok().map(|v| ((*n).to_owned(), v)))
            .collect();
        let set = env.iter().map(|(k, _)| k.clone()).collect();
        let logs = match service.brain {
            true => PathBuf::from("/Library/Logs/lib-agent"),
            false => dirs::home_dir()
                .context("the home directory is unknown")?
                .join("Library/Logs/lib-agent"),
        };
        (
            service::launchd_plist(service.brain, &exec, &env, &logs),
            None,
            set,
        )
    } else {
        let Some(env_file) = &service.env_file else {
            bail!("no environment file for the unit");
        };
        let (env_text, set) = service::env_file(names, &|k| std::env::var(k).ok())?;
        let unit = service::systemd_unit(service.brain, &exec, env_file)?;
        (unit, Some(env_text), set)
    };
    if !service.brain
        && !set
            .iter()
            .any(|n| n == "LIB_DEVICE_TOKEN" || n == "LIB_SYNC_SECRET")
    {
        eprintln!(
            "agent: neither LIB_DEVICE_TOKEN nor LIB_SYNC_SECRET is set here, so the service has no \
             credential for a brain (fine for a device without one); set it and install again"
        );
    }
    let commands = service.commands(true);
    if args.dry_run {
        if global.json {
            return super::print_json(&json!({
                "ok": true, "dry_run": true, "unit": service.unit, "unit_text": unit_text,
                "env_file": service.env_file, "env": set, "commands": commands,
            }));
        }
        println!("would write {}:\n{unit_text}", service.unit.display());
        if let Some(env_file) = &service.env_file {
            println!(
                "would write {} (0600) with: {}",
                env_file.display(),
                shown(&set)
            );
        }
        println!("then run: {}", joined(&commands));
        return Ok(());
    }
    // The secrets first: a unit must not start before the file it reads them from is there.
    if let (Some(env_file), Some(env_text)) = (&service.env_file, &env_text) {
        write_file(env_file, env_text, 0o600)?;
    }
    let mode = if service.launchd && !set.is_empty() {
        0o600
    } else {
        0o644
    };
    write_file(&service.unit, &unit_text, mode)?;
    let started = service.managed && run_all(&commands);
    if global.json {
        return super::print_json(&json!({
            "ok": true, "unit": service.unit, "env_file": service.env_file, "env": set,
            "started": started, "commands": commands,
        }));
    }
    println!("wrote {}", service.unit.display());
    if let Some(env_file) = &service.env_file {
        println!("wrote {} (0600) with: {}", env_file.display(), shown(&set));
    }
    if started {
        println!("started, and enabled at every start: `agent service status` says how it runs");
    } else {
        let when = if service.brain { "boot" } else { "login" };
        println!(
            "to start it now and at every {when}, run: {}",
            joined(&commands)
        );
    }
    Ok(())
}

fn run_uninstall(at: &Where, global: &GlobalArgs) -> anyhow::Result<()> {
    let service = Service::resolve(at, global)?;
    let commands = service.commands(false);
    let stopped = service.managed && service.unit.exists() && run_all(&commands[..1]);
    let mut removed = Vec::new();
    for path in [Some(&service.unit), service.env_file.as_ref()]
        .into_iter()
        .flatten()
    {
        match std::fs::remove_file(path) {
            Ok(()) => removed.push(path.clone()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    if stopped && !service.launchd {
        run_all(&commands[1..]);
    }
    if global.json {
        return super::print_json(&json!({ "ok": true, "removed": removed, "stopped": stopped }));
    }
    if removed.is_empty() {
        println!("nothing to remove: {} is not there", service.unit.display());
    }
    for path in &removed {
        println!("removed {}", path.display());
    }
    if !stopped && !removed.is_empty() {
        println!("if it still runs, stop it: {}", joined(&commands));
    }
    Ok(())
}

fn run_status(at: &Where, global: &GlobalArgs) -> anyhow::Result<()> {
    let service = Service::resolve(at, global)?;
    let installed = service.unit.exists();
    let state = if !installed || !service.managed {
        None
    } else if service.launchd {
        let label = match service.brain {
            true => LAUNCHD_BRAIN_LABEL,
            false => LAUNCHD_LABEL,
        };
        output(&["launchctl", "list", label]).map(|_| "loaded".to_owned())
    } else {
        let name = if service.brain {
            BRAIN_UNIT
        } else {
            AGENT_UNIT
        };
        let mut cmd = vec!["systemctl"];
        if !service.brain {
            cmd.push("--user");
        }
        cmd.extend(["is-active", name]);
        output(&cmd)
    };
    if global.json {
        return super::print_json(&json!({
            "ok": true, "unit": service.unit, "installed": installed, "state": state,
        }));
    }
    match (installed, &state) {
        (false, _) => println!(
            "not installed ({} is not there): `agent service install`",
            service.unit.display()
        ),
        (true, Some(state)) => println!("installed at {}: {state}", service.unit.display()),
        (true, None) => println!(
            "installed at {}; its state is unknown here (no service manager answered)",
            service.unit.display()
        ),
    }
    Ok(())
}

/// Writes `text` to `path` (its folder created) with `mode`, by a rename over the old file.
fn write_file(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    crate::private::replace_file(path, text.as_bytes(), mode)
        .with_context(|| format!("writing {}", path.display()))
}

/// Runs each command in turn; true when all succeeded. A failure is said, not fatal: the files
/// are written and the commands printed.
fn run_all(commands: &[Vec<String>]) -> bool {
    for command in commands {
        let Some((program, args)) = command.split_first() else {
            continue;
        };
        match Command::new(program).args(args).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                let err = String::from_utf8_lossy(&out.stderr);
                eprintln!("agent: `{}` failed: {}", command.join(" "), err.trim());
                return false;
            }
            Err(e) => {
                eprintln!("agent: cannot run {program}: {e}");
                return false;
            }
        }
    }
    true
}

/// The trimmed stdout of a command that succeeded.
fn output(command: &[&str]) -> Option<String> {
    let (program, args) = command.split_first()?;
    let out = Command::new(program).args(args).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    // `systemctl is-active` exits non-zero for "inactive" and "failed", which are answers too.
    (!text.is_empty()).then_some(text)
}

fn joined(commands: &[Vec<String>]) -> String {
    commands
        .iter()
        .map(|c| c.join(" "))
        .collect::<Vec<_>>()
        .join(" && ")
}

fn shown(names: &[String]) -> String {
    if names.is_empty() {
        "no variables (none of them is set here)".to_owned()
    } else {
        names.join(", ")
    }
}

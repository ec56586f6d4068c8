//! `agent brain serve` and `agent brain prune`: the shared brain, on a SQLite file by default or
//! on PostgreSQL (`--database-url postgres://...`, the `lib_shared` schema).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _};
use serde_json::json;

pub use super::brain_store::StoreArgs;
use super::brain_store::Target;
use super::GlobalArgs;
use crate::brain::server::{self, PruneSchedule, ServerConfig};
use crate::brain::store::{BrainStore, PgStore, PruneStatus, SqliteStore};
use crate::config::{self, Config};
use crate::http_server::ConnLimits;

/// The shared brain server that devices push events to and pull events from
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The brain's SQLite file [default: the platform data dir's lib-agent/brain.db]; not used
    /// with --database-url
    //
    // The agent's global `--db` under its own help: clap gives a subcommand the global flag only
    // when it has none of that name, and the value still reaches `GlobalArgs::db`, which is
    // what the brain reads. Without it, the brain's help would send an operator to the agent's
    // $LIB_SQLITE_PATH, which the brain never reads.
    #[arg(long = "db", id = "db", global = true, value_name = "PATH")]
    pub db: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub command: BrainCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum BrainCommand {
    Serve(ServeArgs),
    Prune(PruneArgs),
    Backup(BackupArgs),
    Device(super::device::Args),
}

/// Run the brain server (SQLite file by default, PostgreSQL with --database-url)
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8787")]
    pub listen: String,
    /// Accept requests without any credential; only when LIB_SYNC_SECRET is unset, and only
    /// on a loopback --listen address. Then every request must name localhost or the listening
    /// address in Host (403), and every POST be Content-Type: application/json (415), so that
    /// web pages the user opens cannot use the brain
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// Accept device tokens only (`agent brain device add`), not LIB v1.1's shared secret
    /// (LIB_SYNC_SECRET, LIB_SYNC_SECRET_PREVIOUS); the brain then starts without LIB_SYNC_SECRET
    #[arg(long)]
    pub no_shared_secret: bool,
    /// A reverse proxy in front of the brain: for connections from this address the client
    /// address (throttling of failed logins, logs) is the last entry of X-Forwarded-For.
    /// Repeat for several
    #[arg(long, value_name = "ADDR")]
    pub trusted_proxy: Vec<std::net::IpAddr>,
    /// Serve GET /metrics, without a credential, on this loopback address of its own. On the
    /// main listener /metrics needs `Authorization: Bearer $LIB_METRICS_TOKEN`
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Largest request body accepted, in bytes (bigger: 413)
    #[arg(long, value_name = "BYTES", default_value_t = ServerConfig::default().max_body_bytes)]
    pub max_body_bytes: usize,
    /// Largest payload.content of one event, in bytes
    #[arg(long, value_name = "BYTES", default_value_t = ServerConfig::default().max_content_bytes)]
    pub max_content_bytes: usize,
    /// Open client connections at most (long-polls included); one more is answered 503 at once
    /// and closed
    #[arg(
        long,
        value_name = "N",
        default_value_t = ConnLimits::default().max_connections,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
    pub max_connections: usize,
    /// A request's headers must arrive within this (from the first byte of a request on a
    /// kept-alive connection), else the connection is closed
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,
    /// A request's body must arrive within this once its credential checked out, else 408
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    pub body_timeout: Duration,
    /// A kept-alive connection with no request in flight is closed after this (a long-poll is a
    /// request in flight)
    #[arg(long, value_name = "DURATION", default_value = "90s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// Deliver webhooks to loopback, private (RFC 1918), link-local and other non-public
    /// addresses too: for a brain and its devices on one LAN. Without it such URLs are refused
    /// at every delivery, so a registered URL cannot reach the brain's own network
    #[arg(long)]
    pub webhook_allow_private: bool,
    /// Also send LIB v1.1's x-webhook-secret header (the webhook's secret itself) to webhooks
    /// registered with a secret through the shared secret, for LIB v1.1 listeners that check it.
    /// Webhooks of device tokens never get it
    #[arg(long)]
    pub webhook_legacy_secret_header: bool,
    /// Serve every route under this path too, e.g. /functions/v1/lib-brain-sync: LIB v1.1
    /// clients keep their LIB_SUPABASE_FN_URL with only the host changed
    #[arg(long, value_name = "PATH", value_parser = parse_base_path)]
    pub base_path: Option<String>,
    /// A browser origin (like https://app.example) allowed to call the brain: preflights from it
    /// are answered and its requests get CORS headers, the credential headers allowed. Repeat
    /// for several
    #[arg(long = "cors-origin", value_name = "ORIGIN", value_parser = parse_origin)]
    pub cors_origins: Vec<String>,
    /// Prune, on a schedule, the log events received longer ago than this (365d, as LIB v1.1's
    /// weekly job did; a bare number is days). Off by default
    #[arg(long, value_name = "DURATION", value_parser = parse_age)]
    pub prune_older_than: Option<Duration>,
    /// How often the scheduled prune runs (with --prune-older-than); several brains on one
    /// database prune once per period between them
    #[arg(long, value_name = "DURATION", value_parser = parse_age, default_value = "7d", requires = "prune_older_than")]
    pub prune_every: Duration,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Copy a SQLite brain's database, consistently, while it serves (PostgreSQL: use pg_dump)
#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// The new file to write (never overwritten)
    #[arg(value_name = "PATH")]
    pub path: std::path::PathBuf,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Delete old log events (entities stay, for re-seeding), or say when that last happened
#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// Delete events the brain received longer ago than this: a duration like 365d or 12h; a
    /// bare number is days
    #[arg(long, value_name = "DURATION", value_parser = parse_age, required_unless_present = "status")]
    pub older_than: Option<Duration>,
    /// Say when the log was last pruned, how many events went, and its oldest event (LIB
    /// v1.1's lib_shared_pruning_status)
    #[arg(long, conflicts_with = "older_than")]
    pub status: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// A duration (`365d`, `12h`, `90m`), or a bare number of days as LIB v1.1 and earlier versions
/// of this command took. At least a minute: a shorter one would prune what devices are pulling.
pub fn parse_age(value: &str) -> Result<Duration, String> {
    let parsed = match value.trim().parse::<u64>() {
        Ok(days) => days
            .checked_mul(86_400)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{value} days is too long"))?,
        Err(_) => humantime::parse_duration(value.trim())
            .map_err(|e| format!("{value:?} is not a duration like 365d or 12h: {e}"))?,
    };
    if parsed < Duration::from_secs(60) {
        return Err(format!("{value:?} is shorter than a minute"));
    }
    Ok(parsed)
}

pub fn run(args: Args, global: &GlobalArgs, _config: &Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match args.command {
        BrainCommand::Serve(args) => runtime.block_on(serve(args, global)),
        BrainCommand::Prune(args) => runtime.block_on(prune(args, global)),
        BrainCommand::Backup(args) => backup(&args, global),
        BrainCommand::Device(args) => runtime.block_on(super::device::run(args, global)),
    }
}

fn parse_base_path(value: &str) -> Result<String, String> {
    crate::brain::server::check_base_path(value).map(|()| value.to_owned())
}

/// An origin as browsers send it: scheme, host and port if any, nothing after.
fn parse_origin(value: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(value).map_err(|e| format!("{value:?} is not an origin: {e}"))?;
    let origin = url.origin().ascii_serialization();
    if !matches!(url.scheme(), "http" | "https") || origin != value {
        return Err(format!(
            "{value:?} is not an origin like https://app.example or http://localhost:3000 \
             (scheme, host and port only, no path or trailing /)"
        ));
    }
    Ok(origin)
}

/// The shared secret being rotated out, accepted beside `LIB_SYNC_SECRET`.
pub const ENV_SYNC_SECRET_PREVIOUS: &str = "LIB_SYNC_SECRET_PREVIOUS";
/// The token `/metrics` needs on the main listener.
pub const ENV_METRICS_TOKEN: &str = "LIB_METRICS_TOKEN";

/// Which credentials `serve` accepts, from its flags and environment.
fn credentials(args: &ServeArgs) -> anyhow::Result<(Option<String>, Option<String>)> {
    let env = |name| config::process_env(name).filter(|s: &String| !s.is_empty());
    let secret = env(config::ENV_SYNC_SECRET);
    let previous = env(ENV_SYNC_SECRET_PREVIOUS);
    let shared = config::ENV_SYNC_SECRET;
    if args.insecure_no_auth {
        if secret.is_some() || previous.is_some() {
            bail!("--insecure-no-auth and {shared} are both given: unset one");
        }
        if args.no_shared_secret {
            bail!("--insecure-no-auth and --no-shared-secret are both given: pick one");
        }
        return Ok((None, None));
    }
    if args.no_shared_secret {
        if secret.is_some() || previous.is_some() {
            tracing::warn!(
                "--no-shared-secret: {shared} and {ENV_SYNC_SECRET_PREVIOUS} are ignored; only \
                 device tokens are accepted"
            );
        }
        return Ok((None, None));
    }
    match secret {
        Some(secret) => Ok((Some(secret), previous)),
        None if previous.is_some() => bail!(
            "{ENV_SYNC_SECRET_PREVIOUS} is set but {shared} is not: set {shared} to the new \
             secret while the old one is rotated out"
        ),
        None => bail!(
            "{shared} is not set: set it to the secret LIB v1.1 devices send, or pass \
             --no-shared-secret to accept device tokens only (`agent brain device add`), or \
             --insecure-no-auth to serve without any credential"
        ),
    }
}

async fn serve(args: ServeArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let (secret, previous_secret) = credentials(&args)?;
    if let Some(addr) = args.metrics_listen.filter(|a| !a.ip().is_loopback()) {
        bail!(
            "--metrics-listen {addr} is not a loopback address: /metrics needs no credential \
             there; to scrape from another host, set {ENV_METRICS_TOKEN} and use the main listener"
        );
    }
    let server_config = ServerConfig {
        secret,
        previous_secret,
        insecure_no_auth: args.insecure_no_auth,
        trusted_proxies: args.trusted_proxy.clone(),
        metrics_token: config::process_env(ENV_METRICS_TOKEN).filter(|s| !s.is_empty()),
        max_body_bytes: args.max_body_bytes,
        max_content_bytes: args.max_content_bytes,
        connections: ConnLimits {
            header_timeout: args.header_timeout,
            body_timeout: args.body_timeout,
            idle_timeout: args.idle_timeout,
            max_connections: args.max_connections,
            ..ConnLimits::default()
        },
        webhooks: crate::brain::webhooks::WebhookPolicy {
            allow_private: args.webhook_allow_private,
            legacy_secret_header: args.webhook_legacy_secret_header,
            ..Default::default()
        },
        base_path: args.base_path.clone(),
        cors_origins: args.cors_origins.clone(),
        prune: args.prune_older_than.map(|older_than| PruneSchedule {
            older_than,
            every: args.prune_every,
        }),
        ..ServerConfig::default()
    };
    let target = Target::from_args(&args.store, global)?;
    match &target {
        Target::Sqlite(path) => {
            let store = SqliteStore::open(path)
                .with_context(|| format!("opening {}", target.describe()))?;
            listen(Arc::new(store), server_config, &args, &target, global).await
        }
        Target::Postgres(url, options) => {
            let store = PgStore::connect(url, options.clone())
                .await
                .with_context(|| format!("opening {}", target.describe()))?;
            listen(Arc::new(store), server_config, &args, &target, global).await
        }
    }
}

async fn listen<S: BrainStore>(
    store: Arc<S>,
    config: ServerConfig,
    args: &ServeArgs,
    target: &Target,
    global: &GlobalArgs,
) -> anyhow::Result<()> {
    let addr = &args.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener
        .local_addr()
        .context("reading the listening address")?;
    if config.insecure_no_auth && !local.ip().is_loopback() {
        bail!(
            "--insecure-no-auth serves without any credential: listen on a loopback address \
             (127.0.0.1 or [::1]), not {local}"
        );
    }
    let metrics_listener = match args.metrics_listen {
        Some(metrics) => Some(
            tokio::net::TcpListener::bind(metrics)
                .await
                .with_context(|| format!("cannot listen on {metrics} (--metrics-listen)"))?,
        ),
        None => None,
    };
    if config.insecure_no_auth {
        tracing::warn!("serving without authentication (--insecure-no-auth)");
    }
    say_what_credentials(&*store, &config).await?;
    // On stdout so a supervisor (or a test) that asked for port 0 learns the port.
    if global.json {
        println!(
            "{}",
            json!({"ok": true, "listen": local.to_string(), "store": target.describe()})
        );
    } else {
        println!("brain listening on http://{local} ({})", target.describe());
    }
    // Off the start path: the port is open before the log is read.
    let (counted, max_content) = (store.clone(), config.max_content_bytes);
    tokio::spawn(async move {
        crate::brain::store::report_over_caps(&*counted, max_content).await;
    });
    server::serve_with_metrics(listener, metrics_listener, store, config, shutdown_signal())
        .await
        .context("serving")?;
    tracing::info!("brain stopped");
    Ok(())
}

/// One line at start on what the brain accepts, and a warning while enrolled devices could still
/// be impersonated with the shared secret.
async fn say_what_credentials<S: BrainStore>(
    store: &S,
    config: &ServerConfig,
) -> anyhow::Result<()> {
    let devices = store
        .list_devices()
        .await
        .context("reading the enrolled devices")?;
    let active = devices.iter().filter(|d| d.revoked_at.is_none()).count();
    match (&config.secret, config.insecure_no_auth) {
        (_, true) => {}
        (Some(_), false) if active > 0 => tracing::warn!(
            devices = active,
            "{active} device(s) are enrolled and the brain still accepts the shared secret \
             ({}), with which any client may act for any device: once every device has its token, \
             restart with --no-shared-secret",
            config::ENV_SYNC_SECRET
        ),
        (Some(_), false) => tracing::info!(
            "accepting the shared secret; enrol devices with `agent brain device add NAME`"
        ),
        (None, false) => {
            tracing::info!(
                devices = active,
                "accepting device tokens only (--no-shared-secret)"
            );
            if active == 0 {
                tracing::warn!(
                    "no device is enrolled: every request is refused until one is \
                     (`agent brain device add NAME`)"
                );
            }
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

fn backup(args: &BackupArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let from = match Target::from_args(&args.store, global)? {
        Target::Sqlite(path) => path,
        Target::Postgres(..) => bail!(
            "`agent brain backup` copies a SQLite brain; for PostgreSQL use `pg_dump --schema={}` \
             (docs/DEPLOYMENT.md, \"Backups and restoring\")",
            args.store.schema
        ),
    };
    let report = crate::brain::store::sqlite::backup::backup(&from, &args.path)?;
    if global.json {
        return super::print_json(&json!({
            "ok": true,
            "path": args.path,
            "bytes": report.bytes,
            "head": report.head,
        }));
    }
    println!(
        "backed up {} to {} ({:.1} MB, events up to id {}); to restore, stop the brain and put \
         the file in its place: devices past id {} re-seed by themselves",
        from.display(),
        args.path.display(),
        report.bytes as f64 / 1e6,
        report.head,
        report.head
    );
    Ok(())
}

async fn prune(args: PruneArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let target = Target::from_args(&args.store, global)?;
    match &target {
        Target::Sqlite(path) => {
            if !path.exists() {
                bail!("no brain database at {}", path.display());
            }
            let store = SqliteStore::open(path)
                .with_context(|| format!("opening {}", target.describe()))?;
            prune_with(&store, &args, global).await
        }
        Target::Postgres(url, options) => {
            let store = PgStore::connect(url, options.clone())
                .await
                .with_context(|| format!("opening {}", target.describe()))?;
            prune_with(&store, &args, global).await
        }
    }
}

async fn prune_with(
    store: &impl BrainStore,
    args: &PruneArgs,
    global: &GlobalArgs,
) -> anyhow::Result<()> {
    let Some(older_than) = args.older_than else {
        let status = store.prune_status().await?;
        if global.json {
            let mut value = serde_json::to_value(&status)?;
            value["ok"] = json!(true);
            return super::print_json(&value);
        }
        print!("{}", render_prune_status(&status));
        return Ok(());
    };
    let cutoff = SystemTime::now()
        .checked_sub(older_than)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let report = store.prune(cutoff).await?;
    if global.json {
        return super::print_json(
            &json!({"ok": true, "deleted_events": report.deleted_events, "pruned_through": report.pruned_through}),
        );
    }
    println!(
        "pruned {} received more than {} ago; devices with a cursor below {} re-seed from a snapshot",
        events(report.deleted_events),
        humantime::format_duration(older_than),
        report.pruned_through
    );
    Ok(())
}

fn events(n: u64) -> String {
    format!("{n} {}", crate::term::plural(n, "event", "events"))
}

fn render_prune_status(s: &PruneStatus) -> String {
    let at = |unix: i64| {
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64);
        humantime::format_rfc3339_seconds(time).to_string()
    };
    let last = match s.last_run_at {
        Some(t) => format!("{}, deleted {}", at(t), events(s.last_deleted)),
        None => "never".to_owned(),
    };
    let oldest = match s.oldest_kept {
        Some((id, received)) => format!("id {id}, received {}", at(received)),
        None => "none (the log is empty)".to_owned(),
    };
    format!(
        "last prune     {last}\npruned in all  {}\npruned through id {}\noldest kept    {oldest}\n",
        events(s.total_deleted),
        s.pruned_through
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }

    #[test]
    fn the_connection_flags_default_to_the_servers_defaults() {
        let args = Serve::parse_from(["serve"]).args;
        let defaults = ConnLimits::default();
        assert_eq!(args.header_timeout, defaults.header_timeout);
        assert_eq!(args.body_timeout, defaults.body_timeout);
        assert_eq!(args.idle_timeout, defaults.idle_timeout);
        assert_eq!(args.max_connections, defaults.max_connections);
        assert!(Serve::try_parse_from(["serve", "--max-connections", "0"]).is_err());
    }
}

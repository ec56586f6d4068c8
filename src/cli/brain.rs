//! `agent brain serve` and `agent brain prune`: the shared brain, on a SQLite file by default or
//! on PostgreSQL (`--database-url postgres://...`, the `lib_shared` schema).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _};
use serde_json::json;

use super::GlobalArgs;
use crate::brain::server::{self, ServerConfig};
use crate::brain::store::{BrainStore, PgOptions, PgStore, SqliteStore};
use crate::config::{self, Config};

/// The shared brain server that devices push events to and pull events from
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: BrainCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum BrainCommand {
    Serve(ServeArgs),
    Prune(PruneArgs),
}

/// Where the brain keeps its data: a SQLite file (`--db`, the default) or PostgreSQL.
#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    /// PostgreSQL URL (postgres:// or postgresql://); the brain uses its `lib_shared` schema,
    /// creating it if needed, or adopting LIB v1.1's in place. TLS as libpq's `sslmode`:
    /// disable, prefer (default), require, verify-ca, verify-full, with `sslrootcert=PATH` for
    /// the CA (Supabase: `?sslmode=verify-full&sslrootcert=prod-ca-2021.crt`). Without it the
    /// brain uses the SQLite file of `--db` [default: the platform data dir's lib-agent/brain.db]
    #[arg(
        long,
        value_name = "URL",
        env = "LIB_BRAIN_DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// PostgreSQL schema holding the brain's tables (several brains can share one database)
    #[arg(long, value_name = "NAME", default_value = crate::brain::store::postgres::DEFAULT_SCHEMA)]
    pub schema: String,
}

/// Run the brain server (SQLite file by default, PostgreSQL with --database-url)
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8787")]
    pub listen: String,
    /// Accept requests without the x-lib-sync-secret header; only when LIB_SYNC_SECRET is unset
    /// (never on a network others can reach)
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// Largest request body accepted, in bytes (bigger: 413)
    #[arg(long, value_name = "BYTES", default_value_t = ServerConfig::default().max_body_bytes)]
    pub max_body_bytes: usize,
    /// Largest payload.content of one event, in bytes
    #[arg(long, value_name = "BYTES", default_value_t = ServerConfig::default().max_content_bytes)]
    pub max_content_bytes: usize,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Delete log events older than a number of days (entities stay, for re-seeding)
#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// Delete events the brain received more than this many days ago
    #[arg(long, value_name = "DAYS")]
    pub older_than: u64,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// The store named on the command line.
enum Target {
    Sqlite(PathBuf),
    Postgres(String, PgOptions),
}

impl Target {
    fn from_args(store: &StoreArgs, global: &GlobalArgs) -> anyhow::Result<Target> {
        match (&store.database_url, &global.db) {
            (Some(_), Some(_)) => bail!("give either --db PATH or --database-url URL, not both"),
            (Some(url), None) => {
                if url.starts_with("postgres://") || url.starts_with("postgresql://") {
                    Ok(Target::Postgres(
                        url.clone(),
                        PgOptions {
                            schema: store.schema.clone(),
                            ..PgOptions::default()
                        },
                    ))
                } else if let Some(path) = url.strip_prefix("sqlite://") {
                    Ok(Target::Sqlite(PathBuf::from(path)))
                } else {
                    bail!("--database-url must start with postgres://, postgresql:// or sqlite://")
                }
            }
            (None, Some(path)) => Ok(Target::Sqlite(path.clone())),
            (None, None) => {
                let dir = dirs::data_dir().context("no platform data directory: give --db PATH")?;
                Ok(Target::Sqlite(dir.join("lib-agent").join("brain.db")))
            }
        }
    }

    /// Where, for messages: never the URL's password.
    fn describe(&self) -> String {
        match self {
            Target::Sqlite(path) => format!("sqlite {}", path.display()),
            Target::Postgres(url, options) => {
                format!(
                    "postgres {} schema {}",
                    crate::brain::store::postgres::redact(url),
                    options.schema
                )
            }
        }
    }
}

pub fn run(args: Args, global: &GlobalArgs, _config: &Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match args.command {
        BrainCommand::Serve(args) => runtime.block_on(serve(args, global)),
        BrainCommand::Prune(args) => runtime.block_on(prune(args, global)),
    }
}

async fn serve(args: ServeArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let secret = config::process_env(config::ENV_SYNC_SECRET).filter(|s| !s.is_empty());
    if secret.is_none() && !args.insecure_no_auth {
        bail!(
            "{} is not set: set it to the secret devices send, or pass --insecure-no-auth to serve \
             without one",
            config::ENV_SYNC_SECRET
        );
    }
    if secret.is_some() && args.insecure_no_auth {
        bail!(
            "--insecure-no-auth and {} are both given: unset one",
            config::ENV_SYNC_SECRET
        );
    }
    let server_config = ServerConfig {
        secret,
        max_body_bytes: args.max_body_bytes,
        max_content_bytes: args.max_content_bytes,
        ..ServerConfig::default()
    };
    let target = Target::from_args(&args.store, global)?;
    match &target {
        Target::Sqlite(path) => {
            let store = SqliteStore::open(path)
                .with_context(|| format!("opening {}", target.describe()))?;
            listen(
                Arc::new(store),
                server_config,
                &args.listen,
                &target,
                global,
            )
            .await
        }
        Target::Postgres(url, options) => {
            let store = PgStore::connect(url, options.clone())
                .await
                .with_context(|| format!("opening {}", target.describe()))?;
            listen(
                Arc::new(store),
                server_config,
                &args.listen,
                &target,
                global,
            )
            .await
        }
    }
}

async fn listen<S: BrainStore>(
    store: Arc<S>,
    config: ServerConfig,
    addr: &str,
    target: &Target,
    global: &GlobalArgs,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener
        .local_addr()
        .context("reading the listening address")?;
    if config.secret.is_none() {
        tracing::warn!("serving without authentication (--insecure-no-auth)");
    }
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
    server::serve(listener, store, config, shutdown_signal())
        .await
        .context("serving")?;
    tracing::info!("brain stopped");
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

async fn prune(args: PruneArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let cutoff = SystemTime::now()
        .checked_sub(Duration::from_secs(args.older_than.saturating_mul(86_400)))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let target = Target::from_args(&args.store, global)?;
    let report = match &target {
        Target::Sqlite(path) => {
            if !path.exists() {
                bail!("no brain database at {}", path.display());
            }
            let store = SqliteStore::open(path)
                .with_context(|| format!("opening {}", target.describe()))?;
            store.prune(cutoff).await?
        }
        Target::Postgres(url, options) => {
            let store = PgStore::connect(url, options.clone())
                .await
                .with_context(|| format!("opening {}", target.describe()))?;
            store.prune(cutoff).await?
        }
    };
    if global.json {
        return super::print_json(
            &json!({"ok": true, "deleted_events": report.deleted_events, "pruned_through": report.pruned_through}),
        );
    }
    println!(
        "pruned {} event(s) older than {} day(s); devices with a cursor below {} re-seed from a snapshot",
        report.deleted_events, args.older_than, report.pruned_through
    );
    Ok(())
}

//! Which store a brain command works on: a SQLite file (`--db`, the default) or PostgreSQL
//! (`--database-url`). Shared by `agent brain serve`, `prune` and `device`.

use std::path::PathBuf;

use anyhow::{bail, Context as _};

use super::GlobalArgs;
use crate::brain::store::PgOptions;

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

/// The store named on the command line.
pub(super) enum Target {
    Sqlite(PathBuf),
    Postgres(String, PgOptions),
}

impl Target {
    pub(super) fn from_args(store: &StoreArgs, global: &GlobalArgs) -> anyhow::Result<Target> {
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
    pub(super) fn describe(&self) -> String {
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

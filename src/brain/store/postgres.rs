//! The brain on PostgreSQL (plain or Supabase), for deployments where several brain instances
//! share one database. The tables live in the `lib_shared` schema of `migrations/postgres/`.
//!
//! Ordering: every ingest takes a transaction-level advisory lock before it assigns ids, and holds
//! it until it commits, so ids become visible in id order across every instance: a puller that
//! has seen id N will never later find a smaller id committing behind it.
//! Wake-ups: ingests `pg_notify` the newest id; each instance LISTENs on its own connection, so a
//! long-poll on one instance wakes when another instance commits.
//! Connections speak TLS as the URL's `sslmode` says ([`tls`]); a schema left by LIB v1.1's
//! Supabase brain is adopted in place at the first start ([`v11`]).

mod devices;
mod tls;
mod v11;

pub use tls::{RootCert, SslMode, TlsSettings};
pub use v11::{AdoptReport, Rejected};

use std::borrow::Cow;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::future::poll_fn;
use tokio::sync::{watch, Semaphore, SemaphorePermit};
use tokio_postgres::{AsyncMessage, Client, Config};

use super::{
    clock_maxima, corrupt, is_new, parse_event_type, parse_state, plan_entities, to_json, Binding,
    BrainStore, CheckedEvent, DeliveryFailure, DeviceAuth, DeviceRecord, DeviceSeen, Ingested,
    PruneBound, PruneReport, PullPage, SnapshotPage, Webhook,
};
use crate::brain::{BrainError, Result};
use crate::model::wire::{IngestResult, PulledEvent, SnapshotEntity};
use crate::model::{Event, FilePayload};

/// The migrations, in order: (version, name, SQL written for the `lib_shared` schema).
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "0001_lib_shared",
        include_str!("../../../migrations/postgres/0001_lib_shared.sql"),
    ),
    (
        2,
        "0002_pruned_events",
        include_str!("../../../migrations/postgres/0002_pruned_events.sql"),
    ),
    (
        3,
        "0003_devices",
        include_str!("../../../migrations/postgres/0003_devices.sql"),
    ),
];

pub const DEFAULT_SCHEMA: &str = "lib_shared";

#[derive(Debug, Clone)]
pub struct PgOptions {
    /// The schema holding the brain's tables. Tests give each case its own, so they run in
    /// parallel on one database.
    pub schema: String,
    /// Connections kept per brain instance.
    pub pool_size: usize,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            schema: DEFAULT_SCHEMA.to_owned(),
            pool_size: 16,
        }
    }
}

#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    schema: String,
    /// `schema.` to put before a table name.
    lock_key: i64,
    channel: String,
    newest: watch::Sender<i64>,
    listener: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// What the first start did to a LIB v1.1 schema it found; `None` when there was none.
    adopted: Option<AdoptReport>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

/// The URL with its password replaced, for messages and logs: the userinfo's password, and the
/// `password` and `sslpassword` parameters of the query string (whatever their case or percent
/// encoding). When in doubt it hides more (a host with a port before an `@` in the query):
/// a message may lose a detail, never leak a secret. A string that is not a URL (libpq's
/// `key=value` form, which the brain refuses) is not shown at all.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<unparseable URL>".to_owned();
    };
    // The userinfo ends at the last '@', wherever a password's raw '/', '?' or '@' put others.
    // A userinfo without ':' has no password to hide: the rest is left whole for the query.
    let (userinfo, tail) = match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => (format!("{user}:***@"), host),
            None => (String::new(), rest),
        },
        None => (String::new(), rest),
    };
    // Every `key=value` between '?' and '&' separators is a parameter, even where a password's
    // raw '?' moved the query's start into the userinfo.
    let mut shown = String::with_capacity(tail.len());
    let mut rest = tail;
    loop {
        let end = rest.find(['?', '&']).unwrap_or(rest.len());
        let param = &rest[..end];
        match param.split_once('=') {
            Some((key, _)) if is_password_key(key) => {
                shown.push_str(key);
                shown.push_str("=***");
            }
            _ => shown.push_str(param),
        }
        let Some(separator) = rest[end..].chars().next() else {
            break;
        };
        shown.push(separator);
        rest = &rest[end + 1..];
    }
    let tail = shown;
    format!("{scheme}://{userinfo}{tail}")
}

/// Whether a query parameter's name, percent-decoded and in any case, names a password.
fn is_password_key(key: &str) -> bool {
    let bytes = key.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                decoded.push(b);
                i += 3;
            }
            (b'+', _) => {
                decoded.push(b' ');
                i += 1;
            }
            (b, _) => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    let name = String::from_utf8_lossy(&decoded)
        .trim()
        .to_ascii_lowercase();
    name == "password" || name == "sslpassword"
}

fn pg_err(context: &str, e: tokio_postgres::Error) -> BrainError {
    let message = format!("{context}: {}", describe(&e));
    let unavailable = e.is_closed()
        || e.code().is_none_or(|c| {
            let code = c.code();
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57")
                || code == "40001"
                || code == "40P01"
        });
    if unavailable {
        BrainError::Unavailable(message)
    } else {
        BrainError::Internal(message)
    }
}

/// The server's message when there is one (tokio-postgres's Display says only "db error").
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    }
}

fn valid_schema(schema: &str) -> bool {
    let mut chars = schema.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && schema.len() <= 48
}

/// A few connections, reused; a closed one is dropped and replaced on the next checkout.
struct Pool {
    config: Config,
    tls: Tls,
    idle: Mutex<Vec<Client>>,
    permits: Semaphore,
    /// Bumped when the database was found unreachable: connections checked out before then are
    /// not reused (one may have just received its FATAL while its socket still looks open).
    generation: AtomicU64,
}

struct Conn<'a> {
    client: Option<Client>,
    pool: &'a Pool,
    generation: u64,
    _permit: SemaphorePermit<'a>,
}

impl std::ops::Deref for Conn<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client
            .as_ref()
            .expect("a checked-out connection holds its client until dropped")
    }
}

impl std::ops::DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client
            .as_mut()
            .expect("a checked-out connection holds its client until dropped")
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let mut idle = self.pool.idle.lock().unwrap_or_else(|p| p.into_inner());
            if self.pool.generation.load(Ordering::SeqCst) != self.generation {
                // Checked out before the database was found unreachable: do not trust it.
            } else if client.is_closed() {
                // The server closed it: a restart or failover closed the idle ones too. Drop
                // them all rather than fail one request per stale connection.
                idle.clear();
            } else {
                idle.push(client);
            }
        }
    }
}

/// The URL's TLS settings and the connector built from them.
#[derive(Clone)]
struct Tls {
    settings: TlsSettings,
    connector: tls::MakeRustls,
    /// Whether a `prefer` connection went on without TLS (said once).
    fell_back: Arc<std::sync::atomic::AtomicBool>,
}

impl Tls {
    /// Opens one connection. With `sslmode=prefer`, a TLS handshake that fails is retried without
    /// TLS, as libpq does (prefer never promised encryption; require and verify-* never fall back).
    async fn open(
        &self,
        config: &Config,
    ) -> std::result::Result<
        (
            Client,
            tokio_postgres::Connection<
                tokio_postgres::Socket,
                tls::RustlsStream<tokio_postgres::Socket>,
            >,
        ),
        tokio_postgres::Error,
    > {
        match config.connect(self.connector.clone()).await {
            Err(e)
                if self.settings.mode == SslMode::Prefer
                    && crate::tls::one_line(&e).contains("error performing TLS handshake") =>
            {
                if !self.fell_back.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        error = %describe(&e),
                        "TLS with PostgreSQL failed; sslmode=prefer: going on without TLS"
                    );
                }
                let mut plain = config.clone();
                plain.ssl_mode(tokio_postgres::config::SslMode::Disable);
                plain.connect(self.connector.clone()).await
            }
            other => other,
        }
    }

    /// A failed connection, with what to do about TLS when TLS is why it failed.
    fn connect_error(&self, e: tokio_postgres::Error) -> BrainError {
        match self.settings.hint(&e) {
            Some(hint) => {
                let context = format!("connecting to PostgreSQL: {hint}");
                pg_err(&context, e)
            }
            None => pg_err("connecting to PostgreSQL", e),
        }
    }
}

impl Pool {
    async fn connect(config: &Config, tls: &Tls) -> Result<Client> {
        let (client, connection) = tls.open(config).await.map_err(|e| tls.connect_error(e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "PostgreSQL connection closed");
            }
        });
        Ok(client)
    }

    /// [`pg_err`], and when the database is unreachable, drops the idle connections: after a
    /// restart or failover they are all dead, and each would fail one more request.
    fn err(&self, context: &str, e: tokio_postgres::Error) -> BrainError {
        let error = pg_err(context, e);
        if matches!(error, BrainError::Unavailable(_)) {
            self.generation.fetch_add(1, Ordering::SeqCst);
            self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
        error
    }

    async fn get(&self) -> Result<Conn<'_>> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| BrainError::Internal("pool closed".into()))?;
        let generation = self.generation.load(Ordering::SeqCst);
        let reused = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                match idle.pop() {
                    Some(c) if c.is_closed() => continue,
                    other => break other,
                }
            }
        };
        let client = match reused {
            Some(c) => c,
            None => Self::connect(&self.config, &self.tls).await?,
        };
        Ok(Conn {
            client: Some(client),
            pool: self,
            generation,
            _permit: permit,
        })
    }
}

impl PgStore {
    /// Connects, creates or migrates the schema, and starts listening for other instances' commits.
    pub async fn connect(url: &str, options: PgOptions) -> Result<PgStore> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(BrainError::Invalid(format!(
                "{} is not a postgres:// URL",
                redact(url)
            )));
        }
        if !valid_schema(&options.schema) {
            return Err(BrainError::Invalid(format!(
                "schema name {:?} is not a plain lowercase identifier",
                options.schema
            )));
        }
        let (parsed_url, tls_settings) = TlsSettings::split_url(url)
            .map_err(|e| BrainError::Invalid(format!("database URL {}: {e}", redact(url))))?;
        let connector = tls_settings
            .connector()
            .map_err(|e| BrainError::Invalid(format!("database URL {}: {e}", redact(url))))?;
        let tls = Tls {
            settings: tls_settings,
            connector,
            fell_back: Arc::default(),
        };
        let mut config = Config::from_str(&parsed_url)
            .map_err(|e| BrainError::Invalid(format!("database URL {}: {e}", redact(url))))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        let schema = options.schema.clone();
        // Names this brain's sessions in pg_stat_activity (and lets a test find them).
        config.application_name(format!("lib brain {schema}"));
        tracing::debug!(
            sslmode = tls.settings.mode.as_str(),
            "connecting to PostgreSQL"
        );
        let mut client = Pool::connect(&config, &tls).await?;
        let adopted = migrate(&mut client, &schema).await?;
        let pool = Pool {
            config,
            tls,
            idle: Mutex::new(vec![client]),
            permits: Semaphore::new(options.pool_size.max(1)),
            generation: AtomicU64::new(0),
        };
        // One lock per schema: brains sharing a schema serialise their ingests, other schemas
        // (other tests) do not wait for them.
        let lock_key = schema.bytes().fold(0x6c69_625f_6272_6169_i64, |h, b| {
            h.wrapping_mul(31).wrapping_add(i64::from(b))
        });
        let (newest, _) = watch::channel(0);
        let store = PgStore {
            inner: Arc::new(Inner {
                pool,
                channel: format!("{schema}_events"),
                schema,
                lock_key,
                newest,
                listener: Mutex::new(None),
                adopted,
            }),
        };
        let newest = store.newest_id().await?;
        store.inner.newest.send_replace(newest);
        let task = tokio::spawn(listen(Arc::downgrade(&store.inner)));
        *store
            .inner
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(task);
        Ok(store)
    }

    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// What this store's start did to a LIB v1.1 schema (`None`: there was none to adopt, or it
    /// was adopted by an earlier start).
    pub fn adopted(&self) -> Option<&AdoptReport> {
        self.inner.adopted.as_ref()
    }

    /// Drops the whole schema: for tests that made their own.
    pub async fn drop_schema(&self) -> Result<()> {
        let conn = self.inner.pool.get().await?;
        conn.batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            self.inner.schema
        ))
        .await
        .map_err(|e| pg_err("dropping the schema", e))
    }

    /// SQL written for `lib_shared`, for this store's schema.
    fn sql<'a>(&self, sql: &'a str) -> Cow<'a, str> {
        in_schema(sql, &self.inner.schema)
    }

    async fn newest_id(&self) -> Result<i64> {
        let conn = self.inner.pool.get().await?;
        let row = conn
            .query_one(
                &*self.sql(
                    "SELECT GREATEST(COALESCE((SELECT max(id) FROM lib_shared.events), 0),
                       (SELECT v FROM lib_shared.brain_meta WHERE k = 'pruned_through'))",
                ),
                &[],
            )
            .await
            .map_err(|e| pg_err("reading the newest event id", e))?;
        Ok(row.get(0))
    }

    fn bump(&self, id: i64) {
        bump(&self.inner.newest, id);
    }

    /// Deletes the events up to `bound`, keeping their ULIDs and digests (see
    /// [`BrainStore::prune`]).
    async fn prune_up_to(&self, bound: PruneBound) -> Result<PruneReport> {
        let mut conn = self.inner.pool.get().await?;
        let tx = conn
            .transaction()
            .await
            .map_err(|e| self.inner.pool.err("starting a prune", e))?;
        let (cutoff, id);
        let (sql, param): (&str, &(dyn tokio_postgres::types::ToSql + Sync)) = match bound {
            PruneBound::ReceivedBefore(seconds) => {
                cutoff = seconds as f64;
                (
                    "SELECT max(id) FROM lib_shared.events WHERE received_at < to_timestamp($1)",
                    &cutoff,
                )
            }
            PruneBound::Id(through) => {
                id = through;
                ("SELECT max(id) FROM lib_shared.events WHERE id <= $1", &id)
            }
        };
        let through: Option<i64> = tx
            .query_one(&*self.sql(sql), &[param])
            .await
            .map_err(|e| self.inner.pool.err("finding old events", e))?
            .get(0);
        let old: i64 = tx
            .query_one(
                &*self.sql(
                    "SELECT v FROM lib_shared.brain_meta WHERE k = 'pruned_through' FOR UPDATE",
                ),
                &[],
            )
            .await
            .map_err(|e| self.inner.pool.err("reading the prune mark", e))?
            .get(0);
        let Some(through) = through else {
            return Ok(PruneReport {
                deleted_events: 0,
                pruned_through: old,
            });
        };
        // One statement moves exactly the rows it deletes: a concurrent prune that deleted some
        // first leaves them out here (no duplicate ULID), and the ULIDs and digests stay, so a
        // late re-push of a pruned event is still recognised.
        let deleted = tx
            .execute(
                &*self.sql(
                    "WITH gone AS (DELETE FROM lib_shared.events WHERE id <= $1
                                   RETURNING event_ulid, digest)
                     INSERT INTO lib_shared.pruned_events (event_ulid, digest)
                     SELECT event_ulid, digest FROM gone",
                ),
                &[&through],
            )
            .await
            .map_err(|e| {
                self.inner
                    .pool
                    .err("pruning events (keeping their ULIDs)", e)
            })?;
        let pruned = old.max(through);
        tx.execute(
            &*self.sql("UPDATE lib_shared.brain_meta SET v = $1 WHERE k = 'pruned_through'"),
            &[&pruned],
        )
        .await
        .map_err(|e| self.inner.pool.err("recording the prune mark", e))?;
        tx.commit()
            .await
            .map_err(|e| self.inner.pool.err("committing a prune", e))?;
        Ok(PruneReport {
            deleted_events: deleted,
            pruned_through: pruned,
        })
    }
}

fn bump(newest: &watch::Sender<i64>, id: i64) {
    newest.send_if_modified(|v| {
        let bumped = id > *v;
        *v = (*v).max(id);
        bumped
    });
}

fn in_schema<'a>(sql: &'a str, schema: &str) -> Cow<'a, str> {
    if schema == DEFAULT_SCHEMA {
        Cow::Borrowed(sql)
    } else {
        Cow::Owned(sql.replace(DEFAULT_SCHEMA, schema))
    }
}

async fn migrate(client: &mut Client, schema: &str) -> Result<Option<AdoptReport>> {
    // A session lock: two brains starting at once on a new database must not both create tables.
    let lock = format!("SELECT pg_advisory_lock(hashtext('lib-agent migrate {schema}'))");
    client
        .batch_execute(&lock)
        .await
        .map_err(|e| pg_err("locking for migrations", e))?;
    let result = async {
        // Tables of ours with no migration recorded are LIB v1.1's (CREATE TABLE IF NOT EXISTS
        // would keep them, and every query would fail later): adopt them first, in place. Unless
        // their columns are ours: our files applied by hand (`supabase db push`) made them, and
        // applying the files again below only records them.
        let adopted = if tracked(client, schema).await? {
            None
        } else {
            v11::adopt(client, schema).await?
        };
        client
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {schema};
                 CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
                     version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now()
                 );"
            ))
            .await
            .map_err(|e| pg_err("creating the migrations table", e))?;
        let applied = applied_migrations(client, schema).await?;
        for migration in MIGRATIONS {
            if applied.contains(&migration.0) {
                continue;
            }
            let tx = client.transaction().await.map_err(|e| pg_err("starting a migration", e))?;
            apply_migration(&tx, schema, migration).await?;
            tx.commit().await.map_err(|e| pg_err("committing a migration", e))?;
            tracing::info!(schema, migration = migration.1, "applied PostgreSQL migration");
        }
        Ok(adopted)
    }
    .await;
    let unlock = format!("SELECT pg_advisory_unlock(hashtext('lib-agent migrate {schema}'))");
    client
        .batch_execute(&unlock)
        .await
        .map_err(|e| pg_err("unlocking after migrations", e))?;
    result
}

/// Whether the schema holds this brain's migration records (at least one: an empty table is
/// what an older brain left when its first migration failed on LIB v1.1's tables).
async fn tracked(client: &Client, schema: &str) -> Result<bool> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&format!("{schema}.schema_migrations")],
        )
        .await
        .map_err(|e| pg_err("looking for the migrations table", e))?
        .get(0);
    if !exists {
        return Ok(false);
    }
    client
        .query_one(
            &format!("SELECT EXISTS (SELECT 1 FROM {schema}.schema_migrations)"),
            &[],
        )
        .await
        .map(|r| r.get(0))
        .map_err(|e| pg_err("reading applied migrations", e))
}

/// The recorded migrations; refuses a schema migrated by a newer brain.
async fn applied_migrations(
    client: &impl tokio_postgres::GenericClient,
    schema: &str,
) -> Result<Vec<i32>> {
    let applied: Vec<i32> = client
        .query(
            &format!("SELECT version FROM {schema}.schema_migrations"),
            &[],
        )
        .await
        .map_err(|e| pg_err("reading applied migrations", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if let Some(newer) = applied
        .iter()
        .find(|v| !MIGRATIONS.iter().any(|(m, _, _)| m == *v))
    {
        return Err(BrainError::Internal(format!(
            "schema {schema} has migration {newer}, unknown to this brain: upgrade the agent"
        )));
    }
    Ok(applied)
}

/// Runs one migration and records it, inside the caller's transaction.
async fn apply_migration(
    tx: &tokio_postgres::Transaction<'_>,
    schema: &str,
    (version, name, sql): &(i32, &str, &str),
) -> Result<()> {
    tx.batch_execute(&in_schema(sql, schema))
        .await
        .map_err(|e| pg_err(&format!("applying migration {name}"), e))?;
    tx.execute(
        &format!("INSERT INTO {schema}.schema_migrations (version, name) VALUES ($1, $2)"),
        &[version, name],
    )
    .await
    .map_err(|e| pg_err("recording a migration", e))?;
    Ok(())
}

/// LISTENs for commits of every instance and bumps `newest`. Reconnects with backoff; after a
/// reconnect it re-reads the newest id, so a notification missed meanwhile still wakes waiters.
async fn listen(inner: std::sync::Weak<Inner>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let config = strong.pool.config.clone();
        let tls = strong.pool.tls.clone();
        let channel = strong.channel.clone();
        let store = PgStore { inner: strong };
        let connected = tls.open(&config).await;
        let (client, mut connection) = match connected {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %describe(&e), "LISTEN connection failed; retrying");
                drop(store);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        let newest = store.inner.newest.clone();
        drop(store);
        let (messages_tx, mut messages_rx) = tokio::sync::mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            loop {
                match poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(n))) => {
                        if messages_tx.send(n.payload().to_owned()).is_err() {
                            return;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return,
                }
            }
        });
        if let Err(e) = client.batch_execute(&format!("LISTEN {channel}")).await {
            tracing::warn!(error = %describe(&e), "LISTEN failed; retrying");
            driver.abort();
            tokio::time::sleep(backoff).await;
            continue;
        }
        backoff = Duration::from_millis(100);
        // Commits between the last read and LISTEN: catch up once.
        if let Some(strong) = inner.upgrade() {
            if let Ok(id) = (PgStore { inner: strong }).newest_id().await {
                bump(&newest, id);
            }
        }
        while let Some(payload) = messages_rx.recv().await {
            if let Ok(id) = payload.parse::<i64>() {
                bump(&newest, id);
            }
        }
        driver.abort();
        drop(client);
        if inner.upgrade().is_none() {
            return;
        }
        tracing::warn!("LISTEN connection lost; reconnecting");
    }
}

/// The part of an ingest after the log append: reads the current merge state of the entities the
/// events touch, applies the events to it with the merge rule ([`plan_entities`]), and writes the
/// new winners, merge states and conflicts, each as one statement over arrays. Returns how many
/// entities changed. The adoption of a LIB v1.1 schema replays its log through this too.
async fn apply_to_entities(
    tx: &tokio_postgres::Transaction<'_>,
    schema: &str,
    events: &[&Event],
    err: &(dyn Fn(&str, tokio_postgres::Error) -> BrainError + Sync),
) -> Result<usize> {
    let sql = |s: &'static str| in_schema(s, schema);
    let mut keys: Vec<&str> = events.iter().map(|e| e.entity_key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    let mut current = HashMap::new();
    for row in tx
        .query(
            &*sql(
                "SELECT entity_key, seen_vc::text, siblings::text FROM lib_shared.entities
                 WHERE entity_key = ANY($1)",
            ),
            &[&keys],
        )
        .await
        .map_err(|e| err("reading entities", e))?
    {
        let key: String = row.get(0);
        let state = parse_state(&key, row.get(1), row.get(2))?;
        current.insert(key, state);
    }
    let writes = plan_entities(events, current);

    // Winners, merge-state-only updates, and conflicts, each as one statement over arrays.
    let mut winners: [Vec<String>; 9] = Default::default();
    let mut winner_deleted: Vec<Option<String>> = Vec::new();
    let mut winner_siblings = Vec::new();
    let (mut merge_keys, mut merge_vcs, mut other_siblings) = (Vec::new(), Vec::new(), Vec::new());
    let mut refreshed: Vec<&str> = Vec::new();
    let mut c_key = Vec::new();
    let mut c_ulid = Vec::new();
    let mut c_device = Vec::new();
    let mut c_clock = Vec::new();
    let mut c_deleted = Vec::new();
    let mut c_sha = Vec::new();
    let mut c_bytes: Vec<Option<i64>> = Vec::new();
    let mut c_mtime: Vec<Option<i64>> = Vec::new();
    let mut c_created = Vec::new();
    for w in &writes {
        let seen_vc = w.state.seen_vc.to_json();
        let siblings = to_json(&w.state.siblings);
        match w.new_winner {
            Some(i) => {
                let e = events[i];
                let values = [
                    w.key.clone(),
                    e.entity_type.clone(),
                    e.event_ulid.clone(),
                    e.device_id.clone(),
                    e.event_type.as_str().to_owned(),
                    to_json(&e.payload),
                    e.vector_clock.to_json(),
                    e.created_at.clone(),
                    seen_vc,
                ];
                for (column, value) in winners.iter_mut().zip(values) {
                    column.push(value);
                }
                winner_deleted.push(e.event_type.is_delete().then(|| e.created_at.clone()));
                winner_siblings.push(siblings);
            }
            None => {
                merge_keys.push(w.key.clone());
                merge_vcs.push(seen_vc);
                other_siblings.push(siblings);
            }
        }
        if w.refresh_conflicts {
            refreshed.push(&w.key);
            for v in w.state.conflicts() {
                c_key.push(w.key.clone());
                c_ulid.push(v.event_ulid.clone());
                c_device.push(v.device_id.clone());
                c_clock.push(v.clock.to_json());
                c_deleted.push(v.deleted);
                c_sha.push(v.sha256.clone());
                c_bytes.push(v.bytes.map(|b| b as i64));
                c_mtime.push(v.mtime_unix);
                c_created.push(v.created_at.clone());
            }
        }
    }
    let winner_count = winners[0].len();
    if winner_count > 0 {
        tx.execute(
            &*sql(
                "INSERT INTO lib_shared.entities (entity_key, entity_type, event_ulid, device_id, event_type,
                   payload, vector_clock, created_at, deleted_at, seen_vc, siblings, updated_at)
                 SELECT k, et, u, d, t, p::jsonb, vc::jsonb, c, del, svc::jsonb, sib::jsonb, now()
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                             $7::text[], $8::text[], $9::text[], $10::text[], $11::text[])
                      AS x(k, et, u, d, t, p, vc, c, svc, del, sib)
                 ON CONFLICT (entity_key) DO UPDATE SET entity_type = excluded.entity_type,
                   event_ulid = excluded.event_ulid, device_id = excluded.device_id,
                   event_type = excluded.event_type, payload = excluded.payload,
                   vector_clock = excluded.vector_clock, created_at = excluded.created_at,
                   deleted_at = excluded.deleted_at, seen_vc = excluded.seen_vc,
                   siblings = excluded.siblings, updated_at = excluded.updated_at",
            ),
            &[
                &winners[0],
                &winners[1],
                &winners[2],
                &winners[3],
                &winners[4],
                &winners[5],
                &winners[6],
                &winners[7],
                &winners[8],
                &winner_deleted,
                &winner_siblings,
            ],
        )
        .await
        .map_err(|e| err("writing entities", e))?;
    }
    if !merge_keys.is_empty() {
        tx.execute(
            &*sql(
                "UPDATE lib_shared.entities AS e SET seen_vc = x.svc::jsonb, siblings = x.sib::jsonb,
                   updated_at = now()
                 FROM unnest($1::text[], $2::text[], $3::text[]) AS x(k, svc, sib)
                 WHERE e.entity_key = x.k",
            ),
            &[&merge_keys, &merge_vcs, &other_siblings],
        )
        .await
        .map_err(|e| err("updating merge state", e))?;
    }
    if !refreshed.is_empty() {
        tx.execute(
            &*sql("DELETE FROM lib_shared.conflicts WHERE entity_key = ANY($1)"),
            &[&refreshed],
        )
        .await
        .map_err(|e| err("clearing conflicts", e))?;
        if !c_key.is_empty() {
            tx.execute(
                &*sql(
                    "INSERT INTO lib_shared.conflicts (entity_key, event_ulid, device_id, vector_clock, deleted,
                       sha256, bytes, mtime_unix, created_at)
                     SELECT k, u, d, vc::jsonb, del, sha, b, m, c
                     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bool[], $6::text[],
                                 $7::int8[], $8::int8[], $9::text[]) AS x(k, u, d, vc, del, sha, b, m, c)",
                ),
                &[&c_key, &c_ulid, &c_device, &c_clock, &c_deleted, &c_sha, &c_bytes, &c_mtime, &c_created],
            )
            .await
            .map_err(|e| err("recording conflicts", e))?;
        }
    }
    let (devices, maxima): (Vec<String>, Vec<i64>) = clock_maxima(events).into_iter().unzip();
    if !devices.is_empty() {
        tx.execute(
            &*sql(
                "INSERT INTO lib_shared.device_sequences (device_id, max_sequence)
                 SELECT d, m FROM unnest($1::text[], $2::int8[]) AS x(d, m)
                 ON CONFLICT (device_id) DO UPDATE SET max_sequence =
                   GREATEST(lib_shared.device_sequences.max_sequence, excluded.max_sequence)",
            ),
            &[&devices, &maxima],
        )
        .await
        .map_err(|e| err("recording devices' sequences", e))?;
    }
    Ok(writes.len())
}

impl BrainStore for PgStore {
    async fn ingest(&self, batch: Vec<CheckedEvent>) -> Result<Ingested> {
        let mut conn = self.inner.pool.get().await?;
        let tx = conn
            .transaction()
            .await
            .map_err(|e| self.inner.pool.err("starting an ingest", e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&self.inner.lock_key])
            .await
            .map_err(|e| self.inner.pool.err("taking the ingest lock", e))?;

        let ulids: Vec<&str> = batch.iter().map(|c| c.event.event_ulid.as_str()).collect();
        // One statement, so one snapshot: a prune committing meanwhile moves a ULID from the log
        // to pruned_events atomically, and this sees it in exactly one of the two.
        let stored: HashMap<String, String> = tx
            .query(
                &*self.sql(
                    "SELECT event_ulid, digest FROM lib_shared.events WHERE event_ulid = ANY($1)
                     UNION ALL
                     SELECT event_ulid, digest FROM lib_shared.pruned_events WHERE event_ulid = ANY($1)",
                ),
                &[&ulids],
            )
            .await
            .map_err(|e| self.inner.pool.err("looking up event ULIDs", e))?
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let mut new_events: Vec<&Event> = Vec::with_capacity(batch.len());
        let mut digests: Vec<&str> = Vec::with_capacity(batch.len());
        for checked in &batch {
            if is_new(
                checked,
                stored.get(&checked.event.event_ulid).map(String::as_str),
            )? {
                new_events.push(&checked.event);
                digests.push(&checked.digest);
            }
        }
        if new_events.is_empty() {
            return Ok(Ingested::default());
        }

        let col =
            |f: fn(&Event) -> String| new_events.iter().map(|e| f(e)).collect::<Vec<String>>();
        let ids: Vec<i64> = tx
            .query(
                &*self.sql(
                    "INSERT INTO lib_shared.events (event_ulid, device_id, event_type, entity_type, entity_key,
                       payload, vector_clock, created_at, digest)
                     SELECT u, d, t, et, k, p::jsonb, vc::jsonb, c, dg
                     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                 $7::text[], $8::text[], $9::text[]) WITH ORDINALITY
                          AS x(u, d, t, et, k, p, vc, c, dg, n)
                     ORDER BY n
                     RETURNING id",
                ),
                &[
                    &col(|e| e.event_ulid.clone()),
                    &col(|e| e.device_id.clone()),
                    &col(|e| e.event_type.as_str().to_owned()),
                    &col(|e| e.entity_type.clone()),
                    &col(|e| e.entity_key.clone()),
                    &col(|e| to_json(&e.payload)),
                    &col(|e| e.vector_clock.to_json()),
                    &col(|e| e.created_at.clone()),
                    &digests,
                ],
            )
            .await
            .map_err(|e| self.inner.pool.err("appending events", e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let first = ids.iter().copied().min().unwrap_or(0);
        let last = ids.iter().copied().max().unwrap_or(0);

        let writes = apply_to_entities(&tx, &self.inner.schema, &new_events, &|context, e| {
            self.inner.pool.err(context, e)
        })
        .await?;
        tx.execute(
            "SELECT pg_notify($1, $2)",
            &[&self.inner.channel, &last.to_string()],
        )
        .await
        .map_err(|e| self.inner.pool.err("notifying other brains", e))?;
        tx.commit()
            .await
            .map_err(|e| self.inner.pool.err("committing an ingest", e))?;
        self.bump(last);
        Ok(Ingested {
            result: IngestResult {
                inserted_events: new_events.len() as u64,
                upserted_entities: writes as u64,
            },
            new_ids: Some((first - 1, last)),
        })
    }

    async fn pull(&self, after_id: i64, limit: usize) -> Result<PullPage> {
        let conn = self.inner.pool.get().await?;
        // Rows are read as they stream in and the read stops at the page's byte bound: a log of
        // large events (stored before the caps) never sits whole in memory.
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
            [&after_id, &(limit as i64 + 1)];
        let rows = conn
            .query_raw(
                &*self.sql(
                    "SELECT id, event_ulid, device_id, event_type, entity_type, entity_key, payload::text,
                       vector_clock::text, created_at
                     FROM lib_shared.events WHERE id > $1 ORDER BY id LIMIT $2",
                ),
                params,
            )
            .await
            .map_err(|e| self.inner.pool.err("pulling events", e))?;
        // Boxed, so that the drop below ends the stream (and its unread rows) before the
        // connection runs its next statement.
        let mut rows = Box::pin(rows);
        let mut events = Vec::with_capacity(limit.min(512));
        let mut has_more = false;
        let mut page = super::PageFill::new(limit);
        while let Some(row) = futures_util::StreamExt::next(&mut rows).await {
            let row = row.map_err(|e| self.inner.pool.err("pulling events", e))?;
            let id: i64 = row.get(0);
            let (device_id, entity_key, payload, clock): (String, String, &str, &str) =
                (row.get(2), row.get(5), row.get(6), row.get(7));
            let row_bytes = payload.len() + clock.len() + entity_key.len() + device_id.len();
            if !page.take(row_bytes) {
                has_more = true;
                break;
            }
            events.push(PulledEvent {
                id,
                event: Event {
                    event_ulid: row.get(1),
                    device_id,
                    event_type: parse_event_type(row.get(3))?,
                    entity_type: row.get(4),
                    entity_key,
                    payload: serde_json::from_str::<FilePayload>(payload)
                        .map_err(|e| corrupt(&format!("payload of event {id}"), e))?,
                    vector_clock: serde_json::from_str(clock)
                        .map_err(|e| corrupt(&format!("clock of event {id}"), e))?,
                    created_at: row.get(8),
                },
            });
        }
        drop(rows);
        // The prune mark is read *after* the events: a prune that committed before the read above
        // shows here, so its gap is never served as if nothing were missing. (One that commits
        // later only costs a re-seed that was not strictly needed.)
        let pruned: i64 = conn
            .query_one(
                &*self.sql("SELECT v FROM lib_shared.brain_meta WHERE k = 'pruned_through'"),
                &[],
            )
            .await
            .map_err(|e| self.inner.pool.err("reading the prune mark", e))?
            .get(0);
        if after_id < pruned {
            return Err(BrainError::CursorPruned {
                after_id,
                pruned_through: pruned,
            });
        }
        let next_after_id = events.last().map_or(after_id, |e| e.id);
        Ok(PullPage {
            events,
            next_after_id,
            has_more,
        })
    }

    async fn snapshot(&self, after_key: &str, limit: usize) -> Result<SnapshotPage> {
        let mut conn = self.inner.pool.get().await?;
        // One snapshot of the database for the watermark and the entities.
        let tx = conn
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(|e| self.inner.pool.err("starting a snapshot", e))?;
        let watermark: i64 = tx
            .query_one(
                &*self.sql(
                    "SELECT GREATEST(COALESCE((SELECT max(id) FROM lib_shared.events), 0),
                       (SELECT v FROM lib_shared.brain_meta WHERE k = 'pruned_through'))",
                ),
                &[],
            )
            .await
            .map_err(|e| self.inner.pool.err("reading the watermark", e))?
            .get(0);
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
            [&after_key, &(limit as i64 + 1)];
        let rows = tx
            .query_raw(
                &*self.sql(
                    "SELECT entity_key, entity_type, event_ulid, device_id, event_type, payload::text,
                       vector_clock::text, created_at, deleted_at, seen_vc::text, siblings::text
                     FROM lib_shared.entities WHERE entity_key > $1 ORDER BY entity_key LIMIT $2",
                ),
                params,
            )
            .await
            .map_err(|e| self.inner.pool.err("reading entities", e))?;
        // Boxed, so that the drop below ends the stream (and its unread rows) before the
        // connection runs its next statement.
        let mut rows = Box::pin(rows);
        let mut entities = Vec::with_capacity(limit.min(512));
        let mut has_more = false;
        let mut page = super::PageFill::new(limit);
        while let Some(row) = futures_util::StreamExt::next(&mut rows).await {
            let row = row.map_err(|e| self.inner.pool.err("reading entities", e))?;
            let key: String = row.get(0);
            let (payload, clock, vc, sib): (&str, &str, &str, &str) =
                (row.get(5), row.get(6), row.get(9), row.get(10));
            let row_bytes = key.len() + payload.len() + clock.len() + vc.len() + sib.len();
            if !page.take(row_bytes) {
                has_more = true;
                break;
            }
            let state = parse_state(&key, vc, sib)?;
            entities.push(SnapshotEntity {
                entity_type: row.get(1),
                event_ulid: row.get(2),
                device_id: row.get(3),
                event_type: parse_event_type(row.get(4))?,
                payload: serde_json::from_str(payload)
                    .map_err(|e| corrupt(&format!("payload of {key}"), e))?,
                vector_clock: serde_json::from_str(clock)
                    .map_err(|e| corrupt(&format!("clock of {key}"), e))?,
                created_at: row.get(7),
                deleted_at: row.get(8),
                seen_vc: state.seen_vc,
                siblings: state.siblings,
                entity_key: key,
            });
        }
        drop(rows);
        tx.commit()
            .await
            .map_err(|e| self.inner.pool.err("ending a snapshot", e))?;
        Ok(SnapshotPage {
            entities,
            watermark,
            has_more,
        })
    }

    async fn prune(&self, cutoff: SystemTime) -> Result<PruneReport> {
        self.prune_up_to(PruneBound::ReceivedBefore(super::unix_seconds(cutoff)))
            .await
    }

    async fn prune_through(&self, through: i64) -> Result<PruneReport> {
        self.prune_up_to(PruneBound::Id(through)).await
    }

    async fn register_webhook(&self, device_id: &str, url: &str, secret: &str) -> Result<i64> {
        let conn = self.inner.pool.get().await?;
        let row = conn
            .query_one(
                &*self.sql(
                    "INSERT INTO lib_shared.device_webhooks (device_id, webhook_url, secret) VALUES ($1, $2, $3)
                     ON CONFLICT (device_id) DO UPDATE SET webhook_url = excluded.webhook_url,
                       secret = excluded.secret, active = true, updated_at = now(),
                       failures = CASE WHEN device_webhooks.webhook_url = excluded.webhook_url
                         THEN device_webhooks.failures ELSE 0 END,
                       last_error = CASE WHEN device_webhooks.webhook_url = excluded.webhook_url
                         THEN device_webhooks.last_error END,
                       retry_after = CASE WHEN device_webhooks.webhook_url = excluded.webhook_url
                         THEN device_webhooks.retry_after END
                     RETURNING id",
                ),
                &[&device_id, &url, &secret],
            )
            .await
            .map_err(|e| self.inner.pool.err("registering a webhook", e))?;
        Ok(row.get(0))
    }

    async fn deactivate_webhook(&self, device_id: &str) -> Result<bool> {
        let conn = self.inner.pool.get().await?;
        let n = conn
            .execute(
                &*self.sql(
                    "UPDATE lib_shared.device_webhooks SET active = false, updated_at = now()
                     WHERE device_id = $1 AND active",
                ),
                &[&device_id],
            )
            .await
            .map_err(|e| self.inner.pool.err("deactivating a webhook", e))?;
        Ok(n > 0)
    }

    async fn active_webhooks(&self) -> Result<Vec<Webhook>> {
        let conn = self.inner.pool.get().await?;
        let rows = conn
            .query(
                &*self.sql(
                    "SELECT id, device_id, webhook_url, secret, failures::bigint, retry_after
                     FROM lib_shared.device_webhooks WHERE active",
                ),
                &[],
            )
            .await
            .map_err(|e| self.inner.pool.err("listing webhooks", e))?;
        Ok(rows
            .iter()
            .map(|r| Webhook {
                id: r.get(0),
                device_id: r.get(1),
                url: r.get(2),
                secret: r.get(3),
                failures: r.get(4),
                retry_after: r.get(5),
            })
            .collect())
    }

    async fn record_delivery(&self, id: i64, failure: Option<DeliveryFailure>) -> Result<()> {
        let (failures, error, retry_after) = match failure {
            Some(f) => (f.failures, Some(f.error), Some(f.retry_after)),
            None => (0, None, None),
        };
        // The column is an integer: a count past its range stays at its end.
        let failures = i32::try_from(failures).unwrap_or(i32::MAX);
        let conn = self.inner.pool.get().await?;
        conn.execute(
            &*self.sql(
                "UPDATE lib_shared.device_webhooks SET failures = $2, last_error = $3, retry_after = $4
                 WHERE id = $1",
            ),
            &[&id, &failures, &error, &retry_after],
        )
        .await
        .map_err(|e| self.inner.pool.err("recording a webhook delivery", e))?;
        Ok(())
    }

    async fn add_device(&self, name: &str, token_sha256: &str) -> Result<DeviceRecord> {
        self.add_device_row(name, token_sha256).await
    }

    async fn list_devices(&self) -> Result<Vec<DeviceRecord>> {
        self.devices().await
    }

    async fn revoke_device(&self, name: &str) -> Result<bool> {
        self.revoke(name).await
    }

    async fn rotate_device(
        &self,
        name: &str,
        token_sha256: &str,
        grace_until: Option<i64>,
    ) -> Result<bool> {
        self.rotate(name, token_sha256, grace_until).await
    }

    async fn authenticate(&self, token_sha256: &str, now: i64) -> Result<Option<DeviceAuth>> {
        self.auth(token_sha256, now).await
    }

    async fn bind_device(&self, name: &str, device_id: &str) -> Result<Binding> {
        self.bind(name, device_id).await
    }

    async fn record_seen(&self, seen: Vec<DeviceSeen>) -> Result<()> {
        self.seen(seen).await
    }

    async fn known_sequences(&self, devices: Vec<String>) -> Result<HashMap<String, i64>> {
        self.known(devices).await
    }

    fn subscribe(&self) -> watch::Receiver<i64> {
        self.inner.newest.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_the_password_only() {
        assert_eq!(
            redact("postgres://u:pw@h:5432/db?x=1"),
            "postgres://u:***@h:5432/db?x=1"
        );
        assert_eq!(redact("postgresql://u@h/db"), "postgresql://u@h/db");
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }

    #[test]
    fn redaction_hides_every_form_of_password() {
        let cases = [
            ("postgres://u:pw@h/db", "postgres://u:***@h/db"),
            // A raw '/', '?' or '@' in the password does not end the userinfo early.
            ("postgres://u:p/w@h/db", "postgres://u:***@h/db"),
            ("postgres://u:p?w@h/db", "postgres://u:***@h/db"),
            ("postgres://u:p@w@h/db", "postgres://u:***@h/db"),
            (
                "postgres://u@h/db?password=pw",
                "postgres://u@h/db?password=***",
            ),
            (
                "postgres://h/db?sslmode=require&PASSWORD=pw&x=1",
                "postgres://h/db?sslmode=require&PASSWORD=***&x=1",
            ),
            (
                "postgres://h/db?Pass%77ord=pw",
                "postgres://h/db?Pass%77ord=***",
            ),
            (
                "postgres://h/db?%70%61%73%73%77%6F%72%64=pw",
                "postgres://h/db?%70%61%73%73%77%6F%72%64=***",
            ),
            (
                "postgres://h/db?sslpassword=pw",
                "postgres://h/db?sslpassword=***",
            ),
            (
                "postgres://h/db?password=p@w",
                "postgres://h/db?password=***",
            ),
            (
                "postgres://u:pw@h/db?password=pw2",
                "postgres://u:***@h/db?password=***",
            ),
            (
                "postgres://h/db?passwords=1&password",
                "postgres://h/db?passwords=1&password",
            ),
            ("host=h password=pw dbname=db", "<unparseable URL>"),
        ];
        for (url, expected) in cases {
            let shown = redact(url);
            assert_eq!(shown, expected, "{url}");
            assert!(
                !shown.contains("pw") && !shown.contains("p/w"),
                "{url}: {shown}"
            );
        }
        // When in doubt, more is hidden, never less.
        let shown = redact("postgres://h:5432/db?application_name=a@b&password=pw");
        assert!(!shown.contains("pw"), "{shown}");
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert!(valid_schema("lib_shared"));
        assert!(valid_schema("lib_shared_t01"));
        assert!(!valid_schema("Lib"));
        assert!(!valid_schema("x;drop"));
        assert!(!valid_schema(""));
    }
}

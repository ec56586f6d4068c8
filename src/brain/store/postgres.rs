//! The brain on PostgreSQL (plain or Supabase), for deployments where several brain instances
//! share one database. The tables live in the `lib_shared` schema of `migrations/brain/postgres/`
//! ([`migrate`]), or in another schema the operator names.
//!
//! Ordering: every ingest takes a transaction-level advisory lock before it assigns ids, and holds
//! it until it commits, so ids become visible in id order across every instance: a puller that
//! has seen id N will never later find a smaller id committing behind it. The ingest itself is
//! the flow both stores share ([`crate::brain::store::ingest`]), in SQL here ([`ingest`]).
//! Wake-ups: ingests `pg_notify` the newest id, and each instance LISTENs ([`listen`]).
//! Connections ([`pool`], [`connect`]) speak TLS as the URL's `sslmode` says ([`sslmode`]); a
//! schema left by LIB v1.1's Supabase brain is adopted in place at the first start ([`v11`]).
//! A URL in a message or a log goes through [`redact`] first.

mod connect;
mod devices;
mod digest;
mod error;
mod ingest;
mod listen;
mod migrate;
mod pool;
mod prune;
mod read;
mod redact;
mod schema;
mod sslmode;
mod v11;
mod webhooks;

pub use redact::redact;
pub use schema::DEFAULT_SCHEMA;
pub use sslmode::{RootCert, SslMode, TlsSettings};
pub use v11::{AdoptReport, Rejected};

use std::borrow::Cow;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_postgres::Config;

use super::ingest as flow;
use super::{
    unix_seconds, Binding, BrainStore, CheckedEvent, DeliveryFailure, DeviceAuth, DeviceRecord,
    DeviceSeen, DigestRederived, Ingested, PruneBound, PruneReport, PruneStatus, PullPage,
    ReplicaPoint, SnapshotPage, Webhook,
};
use crate::brain::{BrainError, Result};
use crate::model::digest::ReplicaDigest;
use connect::Connector;
use error::pg_err;
use ingest::PgIngest;
use pool::Pool;
use schema::{in_schema, valid_schema};

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
    /// How connections are made: the pool's, and the LISTEN task's own.
    config: Config,
    connector: Connector,
    schema: String,
    /// The advisory lock every ingest into this schema takes.
    lock_key: i64,
    channel: String,
    newest: watch::Sender<i64>,
    epoch: i64,
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
        let tls = tls_settings
            .connector()
            .map_err(|e| BrainError::Invalid(format!("database URL {}: {e}", redact(url))))?;
        let connector = Connector::new(tls_settings, tls);
        let mut config = Config::from_str(&parsed_url)
            .map_err(|e| BrainError::Invalid(format!("database URL {}: {e}", redact(url))))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        let schema = options.schema.clone();
        // Names this brain's sessions in pg_stat_activity (and lets a test find them).
        config.application_name(format!("lib brain {schema}"));
        tracing::debug!(
            sslmode = connector.mode().as_str(),
            "connecting to PostgreSQL"
        );
        let pool = Pool::new(config.clone(), connector.clone(), options.pool_size)?;
        // The first connection migrates, then stays in the pool.
        let (adopted, epoch) = {
            let mut conn = pool.get().await?;
            let adopted = migrate::migrate(&mut conn, &schema).await?;
            (adopted, make_epoch(&conn, &schema).await?)
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
                config,
                connector,
                channel: format!("{schema}_events"),
                schema,
                lock_key,
                newest,
                epoch,
                listener: Mutex::new(None),
                adopted,
            }),
        };
        // Re-derived at every start: a store changed outside the brain is found and said.
        store.rederive_digest().await?.report();
        let newest = store.newest_id().await?;
        store.inner.newest.send_replace(newest);
        let task = tokio::spawn(listen::listen(Arc::downgrade(&store.inner)));
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
}

/// The schema's epoch ([`BrainStore::epoch`]), made by the first brain that opens it.
async fn make_epoch(conn: &tokio_postgres::Client, schema: &str) -> Result<i64> {
    let err = |e: tokio_postgres::Error| {
        BrainError::Unavailable(format!("making the store's epoch: {e}"))
    };
    conn.execute(
        &format!(
            "INSERT INTO {schema}.brain_meta (k, v) VALUES ($1, $2) ON CONFLICT (k) DO NOTHING"
        ),
        &[&super::META_EPOCH, &super::new_epoch()],
    )
    .await
    .map_err(err)?;
    let row = conn
        .query_one(
            &format!("SELECT v FROM {schema}.brain_meta WHERE k = $1"),
            &[&super::META_EPOCH],
        )
        .await
        .map_err(err)?;
    Ok(row.get(0))
}

impl BrainStore for PgStore {
    /// [`flow::run`] in one transaction that holds the schema's ingest lock from before the ids
    /// are assigned until the commit, and notifies the other instances of the newest id.
    async fn ingest(&self, batch: Vec<CheckedEvent>) -> Result<Ingested> {
        let pool = &self.inner.pool;
        let mut conn = pool.get().await?;
        let tx = conn
            .transaction()
            .await
            .map_err(|e| pool.err("starting an ingest", e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&self.inner.lock_key])
            .await
            .map_err(|e| pool.err("taking the ingest lock", e))?;
        let err = |context: &str, e| pool.err(context, e);
        let steps = PgIngest {
            tx: &tx,
            schema: &self.inner.schema,
            err: &err,
        };
        let ingested = flow::run(&steps, &batch).await?;
        let Some((_, last)) = ingested.new_ids else {
            return Ok(ingested);
        };
        tx.execute(
            "SELECT pg_notify($1, $2)",
            &[&self.inner.channel, &last.to_string()],
        )
        .await
        .map_err(|e| pool.err("notifying other brains", e))?;
        tx.commit()
            .await
            .map_err(|e| pool.err("committing an ingest", e))?;
        listen::bump(&self.inner.newest, last);
        Ok(ingested)
    }

    async fn pull(&self, after_id: i64, limit: usize) -> Result<PullPage> {
        self.read_log(after_id, limit).await
    }

    async fn snapshot(&self, after_key: &str, limit: usize) -> Result<SnapshotPage> {
        self.read_entities(after_key, limit).await
    }

    async fn prune(&self, cutoff: SystemTime) -> Result<PruneReport> {
        self.prune_up_to(PruneBound::ReceivedBefore(unix_seconds(cutoff)))
            .await
    }

    async fn prune_through(&self, through: i64) -> Result<PruneReport> {
        self.prune_up_to(PruneBound::Id(through)).await
    }

    async fn prune_unless_ran_since(
        &self,
        cutoff: SystemTime,
        ran_since: SystemTime,
    ) -> Result<Option<PruneReport>> {
        self.prune_unless_ran(
            PruneBound::ReceivedBefore(unix_seconds(cutoff)),
            Some(unix_seconds(ran_since)),
        )
        .await
    }

    async fn prune_status(&self) -> Result<PruneStatus> {
        self.pruning_status().await
    }

    async fn register_webhook(
        &self,
        device_id: &str,
        url: &str,
        secret: &str,
        via_shared_secret: bool,
    ) -> Result<i64> {
        self.upsert_webhook(device_id, url, secret, via_shared_secret)
            .await
    }

    async fn deactivate_webhook(&self, device_id: &str) -> Result<bool> {
        self.deactivate_hook(device_id).await
    }

    async fn active_webhooks(&self) -> Result<Vec<Webhook>> {
        self.active_hooks().await
    }

    async fn record_delivery(&self, id: i64, failure: Option<DeliveryFailure>) -> Result<()> {
        self.record_hook_delivery(id, failure).await
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

    async fn replica(&self) -> Result<ReplicaPoint> {
        let conn = self.inner.pool.get().await?;
        // One statement, one snapshot: ingests are serialised and write the digest in the
        // transaction that appends their events, so the head and the digest agree.
        let row = conn
            .query_one(
                &*self.sql(
                    "SELECT GREATEST(COALESCE((SELECT max(id) FROM lib_shared.events), 0),
                       (SELECT v FROM lib_shared.brain_meta WHERE k = 'pruned_through')),
                     (SELECT digest FROM lib_shared.replica_digest WHERE id = 1)",
                ),
                &[],
            )
            .await
            .map_err(|e| self.inner.pool.err("reading the replica digest", e))?;
        let text: Option<String> = row.get(1);
        let digest = text
            .map(|t| ReplicaDigest::from_hex(&t).ok_or_else(|| super::corrupt_digest(&t)))
            .transpose()?;
        Ok(ReplicaPoint {
            head: row.get(0),
            digest: digest.unwrap_or_default(),
        })
    }

    async fn rederive_digest(&self) -> Result<DigestRederived> {
        let pool = &self.inner.pool;
        let mut conn = pool.get().await?;
        let tx = conn
            .transaction()
            .await
            .map_err(|e| pool.err("starting the replica digest's derivation", e))?;
        // Under the ingest lock: no instance's ingest lands between the pass and its write.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&self.inner.lock_key])
            .await
            .map_err(|e| pool.err("taking the ingest lock", e))?;
        let err = |context: &str, e| pool.err(context, e);
        let schema = &self.inner.schema;
        let kept = digest::kept(&tx, schema, &err).await?;
        let (derived, entities) = digest::derive(&tx, schema, &err).await?;
        // No row stands for the empty digest: a store without entities is left as it is.
        if kept.unwrap_or_default() != derived {
            digest::save(&tx, schema, &err, &derived).await?;
        }
        tx.commit()
            .await
            .map_err(|e| pool.err("committing the replica digest", e))?;
        Ok(DigestRederived {
            kept,
            derived,
            entities,
        })
    }

    fn epoch(&self) -> i64 {
        self.inner.epoch
    }

    fn subscribe(&self) -> watch::Receiver<i64> {
        self.inner.newest.subscribe()
    }
}

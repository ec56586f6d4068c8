//! The connections of one brain instance: a deadpool-postgres pool of at most
//! [`super::PgOptions::pool_size`], opened by [`Connector`] (so `sslmode=prefer` falls back as
//! libpq does), a closed connection dropped and replaced at checkout.
//!
//! On top of deadpool, one rule of its own: after a restart or failover every connection is
//! dead, and each would fail one more request. So when a statement finds the database
//! unreachable ([`Pool::err`]) or a connection comes back closed, the idle connections are
//! dropped at once, and those checked out before that moment are not reused (one may have just
//! received its FATAL while its socket still looks open).

use std::sync::atomic::{AtomicU64, Ordering};

use deadpool_postgres::{Manager, ManagerConfig, Object, PoolError, RecyclingMethod};
use tokio_postgres::{Client, Config};

use super::connect::Connector;
use super::error::pg_err;
use crate::brain::{BrainError, Result};

pub(super) struct Pool {
    pool: deadpool_postgres::Pool,
    connector: Connector,
    /// Bumped when the database was found unreachable: connections checked out before then are
    /// not given back.
    generation: AtomicU64,
}

/// A checked-out connection; given back to the pool when dropped, unless [`Pool`]'s rule says
/// otherwise.
pub(super) struct Conn<'a> {
    object: Option<Object>,
    pool: &'a Pool,
    generation: u64,
}

impl Pool {
    pub(super) fn new(config: Config, connector: Connector, size: usize) -> Result<Pool> {
        // `Fast`: a checkout checks `is_closed` only, no round trip (as the pool before did).
        let manager = Manager::from_connect(
            config,
            connector.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(size.max(1))
            .build()
            .map_err(|e| BrainError::Internal(format!("building the PostgreSQL pool: {e}")))?;
        Ok(Pool {
            pool,
            connector,
            generation: AtomicU64::new(0),
        })
    }

    /// A connection: an idle one, or a new one; waits while all of them are checked out.
    pub(super) async fn get(&self) -> Result<Conn<'_>> {
        let object = self.pool.get().await.map_err(|e| match e {
            PoolError::Backend(e) => self.connector.connect_error(e),
            PoolError::Closed => BrainError::Internal("pool closed".into()),
            other => BrainError::Unavailable(format!("connecting to PostgreSQL: {other}")),
        })?;
        Ok(Conn {
            object: Some(object),
            pool: self,
            generation: self.generation.load(Ordering::SeqCst),
        })
    }

    /// [`pg_err`], and when the database is unreachable, drops the idle connections (see the
    /// module's documentation).
    pub(super) fn err(&self, context: &str, e: tokio_postgres::Error) -> BrainError {
        let error = pg_err(context, e);
        if matches!(error, BrainError::Unavailable(_)) {
            self.generation.fetch_add(1, Ordering::SeqCst);
            self.drop_idle();
        }
        error
    }

    fn drop_idle(&self) {
        self.pool.retain(|_, _| false);
    }
}

impl std::ops::Deref for Conn<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.object
            .as_ref()
            .expect("a checked-out connection holds its client until dropped")
    }
}

impl std::ops::DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.object
            .as_mut()
            .expect("a checked-out connection holds its client until dropped")
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        let Some(object) = self.object.take() else {
            return;
        };
        if self.pool.generation.load(Ordering::SeqCst) != self.generation {
            // Checked out before the database was found unreachable: do not trust it.
            drop(Object::take(object));
        } else if object.is_closed() {
            // The server closed it: a restart or failover closed the idle ones too. Drop
            // them all rather than fail one request per stale connection.
            drop(Object::take(object));
            self.pool.drop_idle();
        }
        // Otherwise dropping the object gives it back to the pool.
    }
}

//! Opening one connection as the URL's `sslmode` says ([`super::sslmode`]), with libpq's
//! fallback for `prefer`; the pool and the LISTEN task both open theirs here.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio_postgres::{Client, Config, Socket};

use super::error::{describe, pg_err};
use super::sslmode::{MakeRustls, RustlsStream, SslMode, TlsSettings};
use crate::brain::BrainError;

/// A connection's client and the I/O half that must be driven for it to work.
pub(super) type Opened = (
    Client,
    tokio_postgres::Connection<Socket, RustlsStream<Socket>>,
);

/// The URL's TLS settings and the connector built from them.
#[derive(Clone)]
pub(super) struct Connector {
    settings: TlsSettings,
    tls: MakeRustls,
    /// Whether a `prefer` connection went on without TLS (said once).
    fell_back: Arc<AtomicBool>,
}

impl Connector {
    pub(super) fn new(settings: TlsSettings, tls: MakeRustls) -> Connector {
        Connector {
            settings,
            tls,
            fell_back: Arc::default(),
        }
    }

    pub(super) fn mode(&self) -> SslMode {
        self.settings.mode
    }

    /// Opens one connection. With `sslmode=prefer`, a TLS handshake that fails is retried without
    /// TLS, as libpq does (prefer never promised encryption; require and verify-* never fall back).
    pub(super) async fn open(&self, config: &Config) -> Result<Opened, tokio_postgres::Error> {
        match config.connect(self.tls.clone()).await {
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
                plain.connect(self.tls.clone()).await
            }
            other => other,
        }
    }

    /// A failed connection, with what to do about TLS when TLS is why it failed.
    pub(super) fn connect_error(&self, e: tokio_postgres::Error) -> BrainError {
        match self.settings.hint(&e) {
            Some(hint) => {
                let context = format!("connecting to PostgreSQL: {hint}");
                pg_err(&context, e)
            }
            None => pg_err("connecting to PostgreSQL", e),
        }
    }
}

/// How the pool opens its connections: [`Connector::open`], the I/O half driven by a task of
/// its own (aborted when the pool drops the client).
impl deadpool_postgres::Connect for Connector {
    fn connect(
        &self,
        config: &Config,
    ) -> Pin<
        Box<
            dyn Future<
                    Output = Result<(Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>,
                > + Send
                + '_,
        >,
    > {
        let config = config.clone();
        Box::pin(async move {
            let (client, connection) = self.open(&config).await?;
            let task = tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "PostgreSQL connection closed");
                }
            });
            Ok((client, task))
        })
    }
}

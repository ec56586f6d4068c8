//! Wake-ups across brain instances: every ingest `pg_notify`s the newest id, and each instance
//! LISTENs on a connection of its own, so a long-poll on one instance wakes when another
//! instance commits.

use std::time::Duration;

use futures_util::future::poll_fn;
use tokio::sync::watch;
use tokio_postgres::AsyncMessage;

use super::error::describe;
use super::{Inner, PgStore};

/// LISTENs for commits of every instance and bumps `newest`. Reconnects with backoff; after a
/// reconnect it re-reads the newest id, so a notification missed meanwhile still wakes waiters.
pub(super) async fn listen(inner: std::sync::Weak<Inner>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let config = strong.config.clone();
        let connector = strong.connector.clone();
        let channel = strong.channel.clone();
        let store = PgStore { inner: strong };
        let connected = connector.open(&config).await;
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

/// Raises the newest id seen to `id`, waking the waiters when it grew.
pub(super) fn bump(newest: &watch::Sender<i64>, id: i64) {
    newest.send_if_modified(|v| {
        let bumped = id > *v;
        *v = (*v).max(id);
        bumped
    });
}

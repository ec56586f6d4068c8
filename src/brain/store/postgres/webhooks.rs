//! The `device_webhooks` table: registrations, and how deliveries to them go.

use super::PgStore;
use crate::brain::store::{DeliveryFailure, Webhook};
use crate::brain::Result;

impl PgStore {
    /// [`crate::brain::store::BrainStore::register_webhook`].
    pub(super) async fn upsert_webhook(
        &self,
        device_id: &str,
        url: &str,
        secret: &str,
        via_shared_secret: bool,
    ) -> Result<i64> {
        let conn = self.inner.pool.get().await?;
        let row = conn
            .query_one(
                &*self.sql(
                    "INSERT INTO lib_shared.device_webhooks (device_id, webhook_url, secret, via_shared_secret)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (device_id) DO UPDATE SET webhook_url = excluded.webhook_url,
                       secret = excluded.secret, active = true, updated_at = now(),
                       via_shared_secret = excluded.via_shared_secret,
                       failures = CASE WHEN device_webhooks.webhook_url = excluded.webhook_url
                         THEN device_webhooks.failures ELSE 0 END,
                       last_error = CASE WHEN device_webhooks.webhook_url = excluded.webhook_url
                         THEN device_webhooks.last_error END,
                       retry_after = CASE WHEN device_webhooks.webhook_url = excluded.webhook_url
                         THEN device_webhooks.retry_after END
                     RETURNING id",
                ),
                &[&device_id, &url, &secret, &via_shared_secret],
            )
            .await
            .map_err(|e| self.inner.pool.err("registering a webhook", e))?;
        Ok(row.get(0))
    }

    /// [`crate::brain::store::BrainStore::deactivate_webhook`].
    pub(super) async fn deactivate_hook(&self, device_id: &str) -> Result<bool> {
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

    /// [`crate::brain::store::BrainStore::active_webhooks`].
    pub(super) async fn active_hooks(&self) -> Result<Vec<Webhook>> {
        let conn = self.inner.pool.get().await?;
        let rows = conn
            .query(
                &*self.sql(
                    "SELECT id, device_id, webhook_url, secret, failures::bigint, retry_after,
                       via_shared_secret
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
                via_shared_secret: r.get(6),
                failures: r.get(4),
                retry_after: r.get(5),
            })
            .collect())
    }

    /// [`crate::brain::store::BrainStore::record_delivery`].
    pub(super) async fn record_hook_delivery(
        &self,
        id: i64,
        failure: Option<DeliveryFailure>,
    ) -> Result<()> {
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
}

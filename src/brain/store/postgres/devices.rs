//! Device credentials on PostgreSQL: the `BrainStore` device methods of [`PgStore`], in the
//! `devices` table of migration 3.

use std::collections::HashMap;
use std::time::SystemTime;

use tokio_postgres::types::Type;

use super::error::pg_err;
use super::PgStore;
use crate::brain::store::{Binding, DeviceAuth, DeviceRecord, DeviceSeen, WebhookStatus};
use crate::brain::{BrainError, Result};

/// The device columns `device list` shows, with the webhook of the bound id.
const DEVICE_COLUMNS: &str = "d.name, d.device_id, d.created_at, d.revoked_at, d.last_seen_at,
    d.last_cursor, d.digest, d.pending, d.previous_expires_at,
    w.webhook_url, w.active, w.failures::bigint, w.last_error, w.retry_after";

fn device_row(r: &tokio_postgres::Row) -> DeviceRecord {
    let url: Option<String> = r.get(9);
    DeviceRecord {
        name: r.get(0),
        device_id: r.get(1),
        created_at: r.get(2),
        revoked_at: r.get(3),
        last_seen_at: r.get(4),
        last_cursor: r.get(5),
        digest: r.get(6),
        pending: r.get(7),
        previous_expires_at: r.get(8),
        webhook: url.map(|url| WebhookStatus {
            url,
            active: r.get(10),
            failures: r.get(11),
            last_error: r.get(12),
            retry_after: r.get(13),
        }),
    }
}

fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
}

impl PgStore {
    pub(super) async fn add_device_row(
        &self,
        name: &str,
        token_sha256: &str,
    ) -> Result<DeviceRecord> {
        let conn = self.inner.pool.get().await?;
        let now = crate::brain::store::unix_seconds(SystemTime::now());
        match conn
            .execute(
                &*self.sql(
                    "INSERT INTO lib_shared.devices (name, token_sha256, created_at) VALUES ($1, $2, $3)",
                ),
                &[&name, &token_sha256, &now],
            )
            .await
        {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(BrainError::Conflict(format!(
                    "a device named {name:?} is enrolled already: pick another name, or \
                     `device rotate {name}` for a new token"
                )))
            }
            Err(e) => return Err(self.inner.pool.err("enrolling a device", e)),
        }
        let row = conn
            .query_one(
                &*self.sql(&format!(
                    "SELECT {DEVICE_COLUMNS} FROM lib_shared.devices d
                     LEFT JOIN lib_shared.device_webhooks w ON w.device_id = d.device_id
                     WHERE d.name = $1"
                )),
                &[&name],
            )
            .await
            .map_err(|e| self.inner.pool.err("reading an enrolled device", e))?;
        Ok(device_row(&row))
    }

    pub(super) async fn devices(&self) -> Result<Vec<DeviceRecord>> {
        let conn = self.inner.pool.get().await?;
        let rows = conn
            .query(
                &*self.sql(&format!(
                    "SELECT {DEVICE_COLUMNS} FROM lib_shared.devices d
                     LEFT JOIN lib_shared.device_webhooks w ON w.device_id = d.device_id
                     ORDER BY d.name COLLATE \"C\""
                )),
                &[],
            )
            .await
            .map_err(|e| self.inner.pool.err("listing devices", e))?;
        Ok(rows.iter().map(device_row).collect())
    }

    pub(super) async fn revoke(&self, name: &str) -> Result<bool> {
        let mut conn = self.inner.pool.get().await?;
        let now = crate::brain::store::unix_seconds(SystemTime::now());
        let tx = conn
            .transaction()
            .await
            .map_err(|e| pg_err("starting a revocation", e))?;
        let row = tx
            .query_opt(
                &*self.sql(
                    "UPDATE lib_shared.devices SET revoked_at = COALESCE(revoked_at, $2)
                     WHERE name = $1 RETURNING device_id",
                ),
                &[&name, &now],
            )
            .await
            .map_err(|e| pg_err(&format!("revoking device {name:?}"), e))?;
        let Some(row) = row else {
            return Ok(false);
        };
        if let Some(device_id) = row.get::<_, Option<String>>(0) {
            tx.execute(
                &*self.sql(
                    "UPDATE lib_shared.device_webhooks SET active = false, updated_at = now()
                     WHERE device_id = $1",
                ),
                &[&device_id],
            )
            .await
            .map_err(|e| pg_err("deactivating a revoked device's webhook", e))?;
        }
        tx.commit()
            .await
            .map_err(|e| pg_err("committing a revocation", e))?;
        Ok(true)
    }

    pub(super) async fn rotate(
        &self,
        name: &str,
        token_sha256: &str,
        grace_until: Option<i64>,
    ) -> Result<bool> {
        let mut conn = self.inner.pool.get().await?;
        let tx = conn
            .transaction()
            .await
            .map_err(|e| pg_err("starting a rotation", e))?;
        let row = tx
            .query_opt(
                &*self.sql("SELECT revoked_at FROM lib_shared.devices WHERE name = $1 FOR UPDATE"),
                &[&name],
            )
            .await
            .map_err(|e| pg_err(&format!("reading device {name:?}"), e))?;
        let Some(row) = row else {
            return Ok(false);
        };
        if row.get::<_, Option<i64>>(0).is_some() {
            return Err(crate::brain::store::revoked_rotation(name));
        }
        tx.execute(
            &*self.sql(
                "UPDATE lib_shared.devices SET
                   previous_sha256 = CASE WHEN $3::bigint IS NULL THEN NULL ELSE token_sha256 END,
                   previous_expires_at = $3, token_sha256 = $2, device_id = NULL
                 WHERE name = $1",
            ),
            &[&name, &token_sha256, &grace_until],
        )
        .await
        .map_err(|e| pg_err(&format!("rotating device {name:?}"), e))?;
        tx.commit()
            .await
            .map_err(|e| pg_err("committing a rotation", e))?;
        Ok(true)
    }

    pub(super) async fn auth(&self, token_sha256: &str, now: i64) -> Result<Option<DeviceAuth>> {
        let conn = self.inner.pool.get().await?;
        // Every request of a device runs this: typed parameters make it one round trip (no
        // separate prepare), and the two unique indexes answer it.
        let rows = conn
            .query_typed(
                &self.sql(
                    "SELECT name, device_id FROM lib_shared.devices WHERE revoked_at IS NULL
                       AND token_sha256 = $1
                     UNION ALL
                     SELECT name, device_id FROM lib_shared.devices WHERE revoked_at IS NULL
                       AND previous_sha256 = $1 AND previous_expires_at > $2",
                ),
                &[(&token_sha256, Type::TEXT), (&now, Type::INT8)],
            )
            .await
            .map_err(|e| self.inner.pool.err("checking a device token", e))?;
        Ok(rows.first().map(|r| DeviceAuth {
            name: r.get(0),
            device_id: r.get(1),
        }))
    }

    pub(super) async fn bind(&self, name: &str, device_id: &str) -> Result<Binding> {
        let mut conn = self.inner.pool.get().await?;
        let tx = conn
            .transaction()
            .await
            .map_err(|e| pg_err("starting a binding", e))?;
        let row = tx
            .query_opt(
                &*self.sql(
                    "SELECT device_id, revoked_at FROM lib_shared.devices WHERE name = $1 FOR UPDATE",
                ),
                &[&name],
            )
            .await
            .map_err(|e| pg_err(&format!("reading device {name:?}"), e))?;
        let current = row.map(|r| (r.get::<_, Option<String>>(0), r.get::<_, Option<i64>>(1)));
        let binding = match current {
            None | Some((_, Some(_))) => Binding::Gone,
            Some((Some(bound), None)) if bound == device_id => Binding::Bound,
            Some((Some(bound), None)) => Binding::OtherId(bound),
            Some((None, None)) => {
                let updated = tx
                    .execute(
                        &*self.sql(
                            "UPDATE lib_shared.devices SET device_id = $2 WHERE name = $1
                             AND NOT EXISTS (SELECT 1 FROM lib_shared.devices WHERE device_id = $2)",
                        ),
                        &[&name, &device_id],
                    )
                    .await;
                match updated {
                    Ok(1) => Binding::Bound,
                    Ok(_) => Binding::Taken {
                        by: self.holder(&tx, device_id).await?,
                    },
                    // Two tokens binding one id at once: the other one committed first.
                    Err(e) if is_unique_violation(&e) => {
                        return Ok(Binding::Taken {
                            by: "another device".into(),
                        })
                    }
                    Err(e) => return Err(pg_err(&format!("binding device {name:?}"), e)),
                }
            }
        };
        tx.commit()
            .await
            .map_err(|e| pg_err("committing a binding", e))?;
        Ok(binding)
    }

    async fn holder(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        device_id: &str,
    ) -> Result<String> {
        let row = tx
            .query_opt(
                &*self.sql("SELECT name FROM lib_shared.devices WHERE device_id = $1"),
                &[&device_id],
            )
            .await
            .map_err(|e| pg_err("looking up a device id", e))?;
        Ok(row.map_or_else(|| "another device".to_owned(), |r| r.get(0)))
    }

    pub(super) async fn seen(&self, seen: Vec<DeviceSeen>) -> Result<()> {
        if seen.is_empty() {
            return Ok(());
        }
        let mut conn = self.inner.pool.get().await?;
        let tx = conn
            .transaction()
            .await
            .map_err(|e| pg_err("starting to record devices' requests", e))?;
        let update = tx
            .prepare(&self.sql(
                "UPDATE lib_shared.devices SET last_seen_at = $2,
                   last_cursor = COALESCE($3, last_cursor),
                   digest = COALESCE($4, digest), pending = COALESCE($5, pending)
                 WHERE name = $1",
            ))
            .await
            .map_err(|e| pg_err("preparing the last-seen update", e))?;
        for s in &seen {
            tx.execute(&update, &[&s.name, &s.at, &s.cursor, &s.digest, &s.pending])
                .await
                .map_err(|e| pg_err("recording a device's last request", e))?;
        }
        tx.commit()
            .await
            .map_err(|e| pg_err("committing devices' last requests", e))
    }

    pub(super) async fn known(&self, devices: Vec<String>) -> Result<HashMap<String, i64>> {
        if devices.is_empty() {
            return Ok(HashMap::new());
        }
        let conn = self.inner.pool.get().await?;
        let rows = conn
            .query(
                &*self.sql(
                    "SELECT device_id, max_sequence FROM lib_shared.device_sequences
                     WHERE device_id = ANY($1)",
                ),
                &[&devices],
            )
            .await
            .map_err(|e| self.inner.pool.err("reading devices' sequences", e))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

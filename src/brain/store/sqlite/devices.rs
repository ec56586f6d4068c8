//! Device credentials on SQLite: the `BrainStore` device methods of [`SqliteStore`], in the
//! `devices` table of migration 3.

use std::collections::HashMap;
use std::time::SystemTime;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use super::{sql_err, SqliteStore};
use crate::brain::store::{
    revoked_rotation, unix_seconds, Binding, DeviceAuth, DeviceRecord, DeviceSeen, WebhookStatus,
};
use crate::brain::{BrainError, Result};

/// The device columns `device list` shows, with the webhook of the bound id.
const DEVICE_COLUMNS: &str = "d.name, d.device_id, d.created_at, d.revoked_at, d.last_seen_at,
    d.last_cursor, d.digest, d.pending, d.previous_expires_at,
    w.webhook_url, w.active, w.failures, w.last_error, w.retry_after";

fn device_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeviceRecord> {
    let url: Option<String> = r.get(9)?;
    Ok(DeviceRecord {
        name: r.get(0)?,
        device_id: r.get(1)?,
        created_at: r.get(2)?,
        revoked_at: r.get(3)?,
        last_seen_at: r.get(4)?,
        last_cursor: r.get(5)?,
        digest: r.get(6)?,
        pending: r.get(7)?,
        previous_expires_at: r.get(8)?,
        webhook: match url {
            Some(url) => Some(WebhookStatus {
                url,
                active: r.get(10)?,
                failures: r.get(11)?,
                last_error: r.get(12)?,
                retry_after: r.get(13)?,
            }),
            None => None,
        },
    })
}

fn device_by_name(conn: &Connection, name: &str) -> Result<Option<DeviceRecord>> {
    conn.query_row(
        &format!(
            "SELECT {DEVICE_COLUMNS} FROM devices d
             LEFT JOIN device_webhooks w ON w.device_id = d.device_id WHERE d.name = ?1"
        ),
        [name],
        device_row,
    )
    .optional()
    .map_err(|e| sql_err(&format!("reading device {name:?}"), e))
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation)
}

impl SqliteStore {
    pub(super) async fn add_device_row(
        &self,
        name: String,
        token_sha256: String,
    ) -> Result<DeviceRecord> {
        self.write(move |conn| {
            let now = unix_seconds(SystemTime::now());
            match conn.execute(
                "INSERT INTO devices (name, token_sha256, created_at) VALUES (?1, ?2, ?3)",
                rusqlite::params![name, token_sha256, now],
            ) {
                Ok(_) => {}
                Err(e) if is_unique_violation(&e) => {
                    return Err(BrainError::Conflict(format!(
                        "a device named {name:?} is enrolled already: pick another name, or \
                         `device rotate {name}` for a new token"
                    )))
                }
                Err(e) => return Err(sql_err("enrolling a device", e)),
            }
            device_by_name(conn, &name)?
                .ok_or_else(|| BrainError::Internal(format!("device {name:?} vanished")))
        })
        .await
    }
}

impl SqliteStore {
    pub(super) async fn devices(&self) -> Result<Vec<DeviceRecord>> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT {DEVICE_COLUMNS} FROM devices d
                     LEFT JOIN device_webhooks w ON w.device_id = d.device_id ORDER BY d.name"
                ))
                .map_err(|e| sql_err("preparing the device list", e))?;
            let rows = stmt
                .query_map([], device_row)
                .map_err(|e| sql_err("listing devices", e))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(|e| sql_err("reading a device", e))
        })
        .await
    }

    pub(super) async fn revoke(&self, name: String) -> Result<bool> {
        self.write(move |conn| {
            let now = unix_seconds(SystemTime::now());
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| sql_err("starting a revocation", e))?;
            let device_id: Option<Option<String>> = tx
                .query_row(
                    "UPDATE devices SET revoked_at = COALESCE(revoked_at, ?2) WHERE name = ?1
                     RETURNING device_id",
                    rusqlite::params![name, now],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|e| sql_err(&format!("revoking device {name:?}"), e))?;
            let Some(device_id) = device_id else {
                return Ok(false);
            };
            if let Some(device_id) = device_id {
                tx.execute(
                    "UPDATE device_webhooks SET active = 0, updated_at = ?2 WHERE device_id = ?1",
                    rusqlite::params![device_id, now],
                )
                .map_err(|e| sql_err("deactivating a revoked device's webhook", e))?;
            }
            tx.commit()
                .map_err(|e| sql_err("committing a revocation", e))?;
            Ok(true)
        })
        .await
    }

    pub(super) async fn rotate(
        &self,
        name: String,
        token_sha256: String,
        grace_until: Option<i64>,
    ) -> Result<bool> {
        self.write(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| sql_err("starting a rotation", e))?;
            let revoked: Option<Option<i64>> = tx
                .query_row(
                    "SELECT revoked_at FROM devices WHERE name = ?1",
                    [&name],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|e| sql_err(&format!("reading device {name:?}"), e))?;
            match revoked {
                None => return Ok(false),
                Some(Some(_)) => return Err(revoked_rotation(&name)),
                Some(None) => {}
            }
            tx.execute(
                "UPDATE devices SET
                   previous_sha256 = CASE WHEN ?3 IS NULL THEN NULL ELSE token_sha256 END,
                   previous_expires_at = ?3, token_sha256 = ?2, device_id = NULL
                 WHERE name = ?1",
                rusqlite::params![name, token_sha256, grace_until],
            )
            .map_err(|e| sql_err(&format!("rotating device {name:?}"), e))?;
            tx.commit()
                .map_err(|e| sql_err("committing a rotation", e))?;
            Ok(true)
        })
        .await
    }

    pub(super) async fn auth(&self, token_sha256: String, now: i64) -> Result<Option<DeviceAuth>> {
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT name, device_id FROM devices WHERE revoked_at IS NULL
                   AND (token_sha256 = ?1 OR (previous_sha256 = ?1 AND previous_expires_at > ?2))",
            )
            .and_then(|mut stmt| {
                stmt.query_row(rusqlite::params![token_sha256, now], |r| {
                    Ok(DeviceAuth {
                        name: r.get(0)?,
                        device_id: r.get(1)?,
                    })
                })
                .optional()
            })
            .map_err(|e| sql_err("checking a device token", e))
        })
        .await
    }

    pub(super) async fn bind(&self, name: String, device_id: String) -> Result<Binding> {
        self.write(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| sql_err("starting a binding", e))?;
            let current: Option<(Option<String>, Option<i64>)> = tx
                .query_row(
                    "SELECT device_id, revoked_at FROM devices WHERE name = ?1",
                    [&name],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(|e| sql_err(&format!("reading device {name:?}"), e))?;
            let binding = match current {
                None | Some((_, Some(_))) => Binding::Gone,
                Some((Some(bound), None)) if bound == device_id => Binding::Bound,
                Some((Some(bound), None)) => Binding::OtherId(bound),
                Some((None, None)) => {
                    let holder: Option<String> = tx
                        .query_row(
                            "SELECT name FROM devices WHERE device_id = ?1",
                            [&device_id],
                            |r| r.get(0),
                        )
                        .optional()
                        .map_err(|e| sql_err("looking up a device id", e))?;
                    match holder {
                        Some(by) => Binding::Taken { by },
                        None => {
                            tx.execute(
                                "UPDATE devices SET device_id = ?2 WHERE name = ?1",
                                rusqlite::params![name, device_id],
                            )
                            .map_err(|e| sql_err(&format!("binding device {name:?}"), e))?;
                            Binding::Bound
                        }
                    }
                }
            };
            tx.commit()
                .map_err(|e| sql_err("committing a binding", e))?;
            Ok(binding)
        })
        .await
    }

    pub(super) async fn seen(&self, seen: Vec<DeviceSeen>) -> Result<()> {
        if seen.is_empty() {
            return Ok(());
        }
        self.write(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| sql_err("starting to record devices' requests", e))?;
            {
                let mut update = tx
                    .prepare_cached(
                        "UPDATE devices SET last_seen_at = ?2,
                           last_cursor = COALESCE(?3, last_cursor),
                           digest = COALESCE(?4, digest), pending = COALESCE(?5, pending)
                         WHERE name = ?1",
                    )
                    .map_err(|e| sql_err("preparing the last-seen update", e))?;
                for s in &seen {
                    update
                        .execute(rusqlite::params![
                            s.name, s.at, s.cursor, s.digest, s.pending
                        ])
                        .map_err(|e| sql_err("recording a device's last request", e))?;
                }
            }
            tx.commit()
                .map_err(|e| sql_err("committing devices' last requests", e))
        })
        .await
    }

    pub(super) async fn known(&self, devices: Vec<String>) -> Result<HashMap<String, i64>> {
        if devices.is_empty() {
            return Ok(HashMap::new());
        }
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT max_sequence FROM device_sequences WHERE device_id = ?1")
                .map_err(|e| sql_err("preparing the sequence lookup", e))?;
            let mut known = HashMap::with_capacity(devices.len());
            for device in devices {
                let max: Option<i64> = stmt
                    .query_row([&device], |r| r.get(0))
                    .optional()
                    .map_err(|e| sql_err("reading a device's sequence", e))?;
                if let Some(max) = max {
                    known.insert(device, max);
                }
            }
            Ok(known)
        })
        .await
    }
}

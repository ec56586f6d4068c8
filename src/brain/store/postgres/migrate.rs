//! The schema's migrations: `migrations/brain/postgres/*.sql`, plain SQL written for
//! `lib_shared`, applied in order at start under a session advisory lock, each in its own
//! transaction, and recorded in `<schema>.schema_migrations` by version and name.
//!
//! A recorded migration is known by its version and its name, the file's stem: never by its
//! folder. The files moved from `migrations/postgres/` to `migrations/brain/postgres/` and a
//! schema migrated from the old folder reads as fully migrated; a name here must never change.

use tokio_postgres::Client;

use super::error::pg_err;
use super::schema::in_schema;
use super::v11::{self, AdoptReport};
use crate::brain::{BrainError, Result};

/// The migrations, in order: (version, name, SQL written for the `lib_shared` schema).
pub(super) const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "0001_lib_shared",
        include_str!("../../../../migrations/brain/postgres/0001_lib_shared.sql"),
    ),
    (
        2,
        "0002_pruned_events",
        include_str!("../../../../migrations/brain/postgres/0002_pruned_events.sql"),
    ),
    (
        3,
        "0003_devices",
        include_str!("../../../../migrations/brain/postgres/0003_devices.sql"),
    ),
    (
        4,
        "0004_replica_digest",
        include_str!("../../../../migrations/brain/postgres/0004_replica_digest.sql"),
    ),
    (
        5,
        "0005_webhook_origin",
        include_str!("../../../../migrations/brain/postgres/0005_webhook_origin.sql"),
    ),
];

/// Creates or migrates the schema; adopts a LIB v1.1 schema found in its place first.
pub(super) async fn migrate(client: &mut Client, schema: &str) -> Result<Option<AdoptReport>> {
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
pub(super) async fn applied_migrations(
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
pub(super) async fn apply_migration(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_keep_the_names_schemas_recorded_them_by() {
        // Recorded in every migrated schema: renaming one would apply it again over its tables.
        let names: Vec<(i32, &str)> = MIGRATIONS.iter().map(|(v, n, _)| (*v, *n)).collect();
        assert_eq!(
            names,
            [
                (1, "0001_lib_shared"),
                (2, "0002_pruned_events"),
                (3, "0003_devices"),
                (4, "0004_replica_digest"),
                (5, "0005_webhook_origin")
            ]
        );
    }
}

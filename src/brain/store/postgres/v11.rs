//! Adopting the `lib_shared` schema of LIB v1.1's Supabase brain in place, at the first start of a
//! brain pointed at it.
//!
//! LIB v1.1 left `events`, `entities` and `device_webhooks` (and plpgsql functions) but none of
//! this brain's columns, and no `schema_migrations` record. (Tables with this brain's columns and
//! no record were made by its migration files applied by hand, and are not adopted.) In one
//! transaction, this:
//!
//! 1. checks the old columns (read through `information_schema`, never assumed) and refuses, with
//!    one line naming the table and column, a schema it cannot read: nothing changes then;
//! 2. moves the old tables aside (`events` -> `events_v11`, with their indexes and sequences) and
//!    renames the schema's old functions (`ingest_events` -> `ingest_events_v11`), so nothing
//!    LIB v1.1 left can write to the new tables; nothing is dropped;
//! 3. creates this brain's tables (the migrations, recorded as usual);
//! 4. copies every valid event **with its id** (LIB v1.1 devices hold cursors that are ids) and
//!    replays them, in id order, through the ingest's own entity code (`flow::apply`, the
//!    merge rule of `plan_entities`): `entities` and `conflicts` are what a brain fed the same
//!    events would hold, not LIB v1.1's (its merge rule lost edits);
//! 5. keeps the entity rows of keys whose events LIB v1.1 pruned, as single-version entities;
//! 6. keeps the webhooks, sets the id counter past every id LIB v1.1 ever handed out, and marks
//!    the ids below the oldest kept event as pruned (a device whose cursor is older re-seeds).
//!
//! A row that fails validation is counted, named in the log (first few ULIDs and reasons) and left
//! in the `_v11` table: never silently dropped, never served to devices that would choke on it.

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use tokio_postgres::{Client, Row, Transaction};

use super::error::pg_err;
use super::ingest::PgIngest;
use super::migrate::{apply_migration, MIGRATIONS};
use crate::brain::store::ingest as flow;
use crate::brain::store::{to_json, CheckedEvent};
use crate::brain::{BrainError, Result};
use crate::model::event::is_rfc3339;
use crate::model::{Event, EventType, FilePayload, VectorClock};

/// This brain's table names; any of them found with no migration record is LIB v1.1's, unless
/// its columns say this brain's own migration files made it ([`made_by_our_files`]).
/// `pruned_events` is not one: LIB v1.1 had none, and one found here was made by this brain's
/// migration applied by hand; moving it aside would forget the pruned ULIDs it keeps.
const OURS: &[&str] = &[
    "events",
    "entities",
    "conflicts",
    "device_webhooks",
    "brain_meta",
];
/// The tables LIB v1.1 had: finding one of them starts an adoption.
const LIB_V11: &[&str] = &["events", "entities", "device_webhooks"];
/// What moved tables, indexes, sequences and functions are renamed with.
const SUFFIX: &str = "_v11";
/// Rows read and replayed at a time.
const PAGE: i32 = 500;
/// Rejected rows named in the log and kept in the report.
const SHOWN: usize = 5;

const EVENT_COLUMNS: &[&str] = &[
    "id",
    "event_ulid",
    "device_id",
    "event_type",
    "entity_type",
    "entity_key",
    "payload",
    "vector_clock",
    "created_at",
];
const ENTITY_COLUMNS: &[&str] = &["entity_key", "payload", "vector_clock"];
const WEBHOOK_COLUMNS: &[&str] = &["device_id", "webhook_url"];
const INTEGER_TYPES: &[&str] = &["smallint", "integer", "bigint"];

/// A LIB v1.1 row that was not adopted, and why. It stays in the `_v11` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// `events_v11` or `entities_v11`.
    pub table: String,
    /// The event id, or the entity key.
    pub row: String,
    pub ulid: Option<String>,
    pub reason: String,
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = if self.table.starts_with("events") {
            "id"
        } else {
            "key"
        };
        write!(f, "{} {what} {}", self.table, self.row)?;
        if let Some(ulid) = &self.ulid {
            write!(f, " ({ulid})")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// What an adoption did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdoptReport {
    /// Events copied, each with its LIB v1.1 id.
    pub events: u64,
    /// The greatest id LIB v1.1 handed out (its rows' and its sequence's): new events get more.
    pub max_id: i64,
    /// Ids up to this are treated as pruned: a cursor below it is answered 410 (re-seed).
    pub pruned_through: i64,
    /// Entities after the replay.
    pub entities: u64,
    /// Of those, kept from LIB v1.1 entity rows whose events were pruned.
    pub kept_entities: u64,
    pub webhooks: u64,
    /// Devices whose LIB v1.1 webhook had no secret: kept, inactive (notifications are signed).
    pub unsigned_webhooks: Vec<String>,
    /// Rows not adopted (left in the `_v11` tables), and the first few of them.
    pub rejected_count: u64,
    pub rejected: Vec<Rejected>,
    /// `events -> events_v11`, ...
    pub moved: Vec<String>,
    /// `ingest_events(jsonb)`, ...: renamed with `_v11`.
    pub renamed_functions: Vec<String>,
}

impl AdoptReport {
    fn reject(&mut self, table: &str, row: String, ulid: Option<String>, reason: String) {
        self.rejected_count += 1;
        if self.rejected.len() < SHOWN {
            self.rejected.push(Rejected {
                table: format!("{table}{SUFFIX}"),
                row,
                ulid,
                reason,
            });
        }
    }
}

/// The columns of one old table: name -> `information_schema` data type.
struct Columns(HashMap<String, String>);

impl Columns {
    fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    fn data_type(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// The first of the candidate names the table has.
    fn first<'a>(&self, candidates: &[&'a str]) -> Option<&'a str> {
        candidates.iter().copied().find(|c| self.has(c))
    }

    fn is_timestamp(&self, name: &str) -> bool {
        self.data_type(name)
            .is_some_and(|t| t.starts_with("timestamp"))
    }

    /// The first candidate that is a timestamp column.
    fn first_timestamp<'a>(&self, candidates: &[&'a str]) -> Option<&'a str> {
        candidates.iter().copied().find(|c| self.is_timestamp(c))
    }
}

fn refuse(schema: &str, problem: String) -> BrainError {
    BrainError::Invalid(format!(
        "cannot adopt the LIB v1.1 schema {schema}: {problem}; nothing was changed"
    ))
}

/// Adopts the schema's LIB v1.1 tables when there are some; `None` when there is nothing of
/// LIB v1.1's. The caller holds the migration lock and found no migration record.
pub(super) async fn adopt(client: &mut Client, schema: &str) -> Result<Option<AdoptReport>> {
    let present: Vec<String> = client
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = ANY($2) AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
             ORDER BY c.relname",
            &[&schema, &OURS],
        )
        .await
        .map_err(|e| pg_err("looking for LIB v1.1 tables", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !present.iter().any(|t| LIB_V11.contains(&t.as_str())) {
        return Ok(None);
    }
    if made_by_our_files(&read_columns(&*client, schema, &present).await?) {
        // Recording them is the caller's: it applies every unrecorded migration, and the files
        // are idempotent, so applying them again over the hand-made tables changes nothing.
        tracing::info!(
            schema,
            "found this brain's tables with no migration record (migration files applied by \
             hand): nothing of LIB v1.1's to adopt"
        );
        return Ok(None);
    }
    let tx = client
        .transaction()
        .await
        .map_err(|e| pg_err("starting the adoption", e))?;
    // LIB v1.1's edge function may still be writing: it waits here, and fails once its tables
    // have moved, rather than writing into a log half copied. A transaction of its that never
    // ends stops the start with an error rather than a silent wait.
    let list: Vec<String> = present.iter().map(|t| format!("{schema}.{t}")).collect();
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = '30s'; LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
        list.join(", ")
    ))
    .await
    .map_err(|e| pg_err("locking LIB v1.1's tables", e))?;

    let mut columns = read_columns(&tx, schema, &present).await?;
    let events = columns
        .remove("events")
        .ok_or_else(|| refuse(schema, format!("table {schema}.events is missing")))?;
    let entities = columns.remove("entities");
    let webhooks = columns.remove("device_webhooks");
    for (table, cols, required) in [
        ("events", Some(&events), EVENT_COLUMNS),
        ("entities", entities.as_ref(), ENTITY_COLUMNS),
        ("device_webhooks", webhooks.as_ref(), WEBHOOK_COLUMNS),
    ] {
        let Some(cols) = cols else { continue };
        if let Some(missing) = required.iter().find(|c| !cols.has(c)) {
            return Err(refuse(
                schema,
                format!("table {schema}.{table} has no column {missing}"),
            ));
        }
    }
    let id_type = events.data_type("id").unwrap_or_default();
    if !INTEGER_TYPES.contains(&id_type) {
        return Err(refuse(
            schema,
            format!(
                "column {schema}.events.id is {id_type}, not an integer (devices hold event ids as cursors)"
            ),
        ));
    }

    let mut report = AdoptReport::default();
    let old_sequence = sequence_value(&tx, schema).await?;
    move_aside(&tx, schema, &present, &mut report).await?;

    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
             version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now()
         );"
    ))
    .await
    .map_err(|e| pg_err("creating the migrations table", e))?;
    for migration in MIGRATIONS {
        apply_migration(&tx, schema, migration).await?;
    }

    let (min_id, max_id) = copy_events(&tx, schema, &events, &mut report).await?;
    if let Some(entities) = &entities {
        keep_pruned_entities(&tx, schema, &events, entities, &mut report).await?;
    }
    if let Some(webhooks) = &webhooks {
        copy_webhooks(&tx, schema, webhooks, &mut report).await?;
    }

    // Ids are never handed out twice: a device may hold a cursor at an id whose event is gone.
    report.max_id = max_id.unwrap_or(0).max(old_sequence);
    report.pruned_through = match min_id {
        Some(min) => (min - 1).max(0),
        None => report.max_id,
    };
    if report.max_id > 0 {
        tx.execute(
            "SELECT setval(pg_get_serial_sequence($1, 'id'), $2)",
            &[&format!("{schema}.events"), &report.max_id],
        )
        .await
        .map_err(|e| pg_err("moving the event id counter past LIB v1.1's ids", e))?;
    }
    tx.execute(
        &format!("UPDATE {schema}.brain_meta SET v = $1 WHERE k = 'pruned_through'"),
        &[&report.pruned_through],
    )
    .await
    .map_err(|e| pg_err("recording the prune mark", e))?;
    tx.execute(
        &format!(
            "INSERT INTO {schema}.brain_meta (k, v)
             VALUES ('lib_v11_adopted_at', extract(epoch FROM now())::int8)"
        ),
        &[],
    )
    .await
    .map_err(|e| pg_err("recording the adoption", e))?;
    report.entities = tx
        .query_one(&format!("SELECT count(*) FROM {schema}.entities"), &[])
        .await
        .map_err(|e| pg_err("counting entities", e))?
        .get::<_, i64>(0) as u64;
    tx.commit()
        .await
        .map_err(|e| pg_err("committing the adoption", e))?;

    log(schema, &report);
    warn_about_cron(client, schema).await;
    Ok(Some(report))
}

/// Whether the tables found, with no migration record, were made by this brain's own migration
/// files applied by hand (`supabase db push`, psql) before its first start, rather than left by
/// LIB v1.1. Told by what LIB v1.1 never had: `events.digest` (the test the first migration file
/// itself makes before it creates anything), `entities.seen_vc`, and an integer webhook id (LIB
/// v1.1's were uuids). `events` must be there: the files create it first. A mix (LIB v1.1's
/// tables kept next to ours by CREATE TABLE IF NOT EXISTS) is not ours: it goes to the adoption.
fn made_by_our_files(columns: &HashMap<String, Columns>) -> bool {
    let events = columns.get("events").is_some_and(|c| c.has("digest"));
    let entities = columns.get("entities").is_none_or(|c| c.has("seen_vc"));
    let webhooks = columns.get("device_webhooks").is_none_or(|c| {
        c.data_type("id")
            .is_some_and(|t| INTEGER_TYPES.contains(&t))
    });
    events && entities && webhooks
}

async fn read_columns(
    client: &impl tokio_postgres::GenericClient,
    schema: &str,
    tables: &[String],
) -> Result<HashMap<String, Columns>> {
    let mut out: HashMap<String, Columns> = HashMap::new();
    for row in client
        .query(
            "SELECT table_name::text, column_name::text, data_type::text FROM information_schema.columns
             WHERE table_schema = $1 AND table_name = ANY($2)",
            &[&schema, &tables],
        )
        .await
        .map_err(|e| pg_err("reading LIB v1.1's columns", e))?
    {
        out.entry(row.get(0))
            .or_insert_with(|| Columns(HashMap::new()))
            .0
            .insert(row.get(1), row.get(2));
    }
    Ok(out)
}

/// The last value LIB v1.1's event id sequence handed out (0 when none or unused).
async fn sequence_value(tx: &Transaction<'_>, schema: &str) -> Result<i64> {
    let sequence: Option<String> = tx
        .query_one(
            "SELECT pg_get_serial_sequence($1, 'id')",
            &[&format!("{schema}.events")],
        )
        .await
        .map_err(|e| pg_err("finding LIB v1.1's event id sequence", e))?
        .get(0);
    let Some(sequence) = sequence else {
        return Ok(0);
    };
    // The name comes quoted from PostgreSQL itself.
    tx.query_one(
        &format!("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {sequence}"),
        &[],
    )
    .await
    .map(|r| r.get(0))
    .map_err(|e| pg_err("reading LIB v1.1's event id sequence", e))
}

/// Renames the old tables, their indexes and sequences (index and sequence names are unique per
/// schema: the new tables' `events_pkey` would collide), and the schema's functions.
async fn move_aside(
    tx: &Transaction<'_>,
    schema: &str,
    tables: &[String],
    report: &mut AdoptReport,
) -> Result<()> {
    let relations = tx
        .query(
            "WITH t AS (
                 SELECT c.oid, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relname = ANY($2)
             )
             SELECT 0 AS kind, relname::text, format('ALTER TABLE %I.%I RENAME TO %I', $1, relname, relname || $3)
             FROM t
             UNION ALL
             SELECT 1, i.relname::text, format('ALTER INDEX %I.%I RENAME TO %I', $1, i.relname, i.relname || $3)
             FROM t JOIN pg_index x ON x.indrelid = t.oid JOIN pg_class i ON i.oid = x.indexrelid
             UNION ALL
             SELECT 2, s.relname::text, format('ALTER SEQUENCE %I.%I RENAME TO %I', $1, s.relname, s.relname || $3)
             FROM t JOIN pg_depend d ON d.refobjid = t.oid AND d.refclassid = 'pg_class'::regclass
                    AND d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
                  JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
             ORDER BY 1, 2",
            &[&schema, &tables, &SUFFIX],
        )
        .await
        .map_err(|e| pg_err("listing LIB v1.1's tables, indexes and sequences", e))?;
    let targets: Vec<String> = relations
        .iter()
        .map(|r| format!("{}{SUFFIX}", r.get::<_, String>(1)))
        .collect();
    let taken: Vec<String> = tx
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = ANY($2) ORDER BY 1",
            &[&schema, &targets],
        )
        .await
        .map_err(|e| pg_err("checking the _v11 names", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if let Some(name) = taken.first() {
        return Err(refuse(
            schema,
            format!("{schema}.{name} exists already (left by an earlier try?): rename or drop it"),
        ));
    }
    for row in &relations {
        let (kind, name, statement): (i32, String, String) = (row.get(0), row.get(1), row.get(2));
        tx.batch_execute(&statement)
            .await
            .map_err(|e| pg_err(&format!("moving {schema}.{name} aside"), e))?;
        if kind == 0 {
            report.moved.push(format!("{name} -> {name}{SUFFIX}"));
        }
    }
    // Functions of the schema (not an extension's): LIB v1.1's ingest and prune functions name
    // the tables, and would otherwise act on the new ones.
    let functions = tx
        .query(
            "SELECT format('ALTER ROUTINE %I.%I(%s) RENAME TO %I', n.nspname, p.proname,
                           pg_get_function_identity_arguments(p.oid), p.proname || $2),
                    p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')'
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname = $1 AND p.prokind IN ('f', 'p')
               AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                               AND d.objid = p.oid AND d.deptype = 'e')
             ORDER BY 2",
            &[&schema, &SUFFIX],
        )
        .await
        .map_err(|e| pg_err("listing LIB v1.1's functions", e))?;
    for row in &functions {
        let (statement, name): (String, String) = (row.get(0), row.get(1));
        tx.batch_execute(&statement)
            .await
            .map_err(|e| pg_err(&format!("renaming function {schema}.{name}"), e))?;
        report.renamed_functions.push(name);
    }
    Ok(())
}

/// SQL giving a timestamp column as RFC 3339 UTC text (whole seconds unless it has a fraction),
/// the shape of the events' `created_at`; a text column as it is.
fn timestamp_text(column: &str, data_type: &str) -> String {
    let utc = match data_type {
        "timestamp with time zone" => format!("({column} AT TIME ZONE 'UTC')"),
        "timestamp without time zone" => column.to_owned(),
        _ => return format!("{column}::text"),
    };
    format!(
        "CASE WHEN date_trunc('second', {utc}) = {utc}
              THEN to_char({utc}, 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
              ELSE rtrim(to_char({utc}, 'YYYY-MM-DD\"T\"HH24:MI:SS.US'), '0') || 'Z' END"
    )
}

/// Applies events already in the log to `entities`, as an ingest does after its append.
async fn replay(tx: &Transaction<'_>, schema: &str, events: &[&Event]) -> Result<usize> {
    let steps = PgIngest {
        tx,
        schema,
        err: &pg_err,
    };
    // The replica digest is derived from the rows once the brain has opened the schema.
    flow::apply(&steps, events)
        .await
        .map(|(upserted, _)| upserted)
}

/// Copies the valid events with their ids and replays them into `entities`, a page at a time.
/// Returns the least and greatest id of all old rows, rejected ones included.
async fn copy_events(
    tx: &Transaction<'_>,
    schema: &str,
    columns: &Columns,
    report: &mut AdoptReport,
) -> Result<(Option<i64>, Option<i64>)> {
    let created = timestamp_text("created_at", columns.data_type("created_at").unwrap_or(""));
    // When the brain received it, for pruning: LIB v1.1's insertion time if it kept one.
    let received = match columns
        .first_timestamp(&["received_at", "inserted_at", "ingested_at"])
        .or_else(|| columns.first_timestamp(&["created_at"]))
    {
        Some(c) => format!("extract(epoch FROM {c})::float8"),
        None => "NULL::float8".to_owned(),
    };
    let no_id: i64 = tx
        .query_one(
            &format!("SELECT count(*) FROM {schema}.events{SUFFIX} WHERE id IS NULL"),
            &[],
        )
        .await
        .map_err(|e| pg_err("reading LIB v1.1's events", e))?
        .get(0);
    for _ in 0..no_id {
        report.reject("events", "NULL".into(), None, "id is NULL".into());
    }
    let select = format!(
        "SELECT id::int8, event_ulid::text, device_id::text, event_type::text, entity_type::text,
                entity_key::text, payload::text, vector_clock::text, {created}, {received}
         FROM {schema}.events{SUFFIX} WHERE id IS NOT NULL ORDER BY id"
    );
    let portal = tx
        .bind(select.as_str(), &[])
        .await
        .map_err(|e| pg_err("reading LIB v1.1's events", e))?;
    let mut seen: HashMap<String, (i64, String)> = HashMap::new();
    let (mut min_id, mut max_id) = (None::<i64>, None::<i64>);
    loop {
        let rows = tx
            .query_portal(&portal, PAGE)
            .await
            .map_err(|e| pg_err("reading LIB v1.1's events", e))?;
        if rows.is_empty() {
            break;
        }
        let mut page: Vec<(i64, CheckedEvent, Option<f64>)> = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: i64 = row.get(0);
            min_id = Some(min_id.map_or(id, |m| m.min(id)));
            max_id = Some(max_id.map_or(id, |m| m.max(id)));
            let ulid: Option<String> = row.get(1);
            let event = match event_from_row(row) {
                Ok(event) => event,
                Err(reason) => {
                    report.reject("events", id.to_string(), ulid, reason);
                    continue;
                }
            };
            if id <= 0 {
                report.reject(
                    "events",
                    id.to_string(),
                    ulid,
                    "the id is not positive (cursors start at 0)".into(),
                );
                continue;
            }
            let checked = CheckedEvent::new(event);
            if let Some((first, digest)) = seen.get(&checked.event.event_ulid) {
                let reason = if *digest == checked.digest {
                    format!("a repeat of event id {first}")
                } else {
                    format!("its ULID names event id {first}, which has other content")
                };
                report.reject("events", id.to_string(), ulid, reason);
                continue;
            }
            seen.insert(
                checked.event.event_ulid.clone(),
                (id, checked.digest.clone()),
            );
            let received = row
                .get::<_, Option<f64>>(9)
                .or_else(|| epoch_seconds(&checked.event.created_at));
            page.push((id, checked, received));
        }
        if page.is_empty() {
            continue;
        }
        insert_events(tx, schema, &page).await?;
        let events: Vec<&Event> = page.iter().map(|(_, c, _)| &c.event).collect();
        replay(tx, schema, &events).await?;
        report.events += page.len() as u64;
    }
    Ok((min_id, max_id))
}

async fn insert_events(
    tx: &Transaction<'_>,
    schema: &str,
    page: &[(i64, CheckedEvent, Option<f64>)],
) -> Result<()> {
    let ids: Vec<i64> = page.iter().map(|(id, _, _)| *id).collect();
    let text =
        |f: fn(&CheckedEvent) -> String| page.iter().map(|(_, c, _)| f(c)).collect::<Vec<_>>();
    let received: Vec<Option<f64>> = page.iter().map(|(_, _, r)| *r).collect();
    tx.execute(
        &format!(
            "INSERT INTO {schema}.events (id, event_ulid, device_id, event_type, entity_type, entity_key,
               payload, vector_clock, created_at, received_at, digest)
             OVERRIDING SYSTEM VALUE
             SELECT i, u, d, t, et, k, p::jsonb, vc::jsonb, c, COALESCE(to_timestamp(r), now()), dg
             FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                         $7::text[], $8::text[], $9::text[], $10::float8[], $11::text[])
                  AS x(i, u, d, t, et, k, p, vc, c, r, dg)"
        ),
        &[
            &ids,
            &text(|c| c.event.event_ulid.clone()),
            &text(|c| c.event.device_id.clone()),
            &text(|c| c.event.event_type.as_str().to_owned()),
            &text(|c| c.event.entity_type.clone()),
            &text(|c| c.event.entity_key.clone()),
            &text(|c| to_json(&c.event.payload)),
            &text(|c| c.event.vector_clock.to_json()),
            &text(|c| c.event.created_at.clone()),
            &received,
            &text(|c| c.digest.clone()),
        ],
    )
    .await
    .map_err(|e| pg_err("copying LIB v1.1's events", e))?;
    Ok(())
}

/// A `created_at` as Unix seconds, when it parses as RFC 3339.
fn epoch_seconds(created_at: &str) -> Option<f64> {
    let t = humantime::parse_rfc3339_weak(created_at).ok()?;
    Some(
        t.duration_since(std::time::SystemTime::UNIX_EPOCH)
            .ok()?
            .as_secs_f64(),
    )
}

/// The event of an old row, checked as an ingest checks it (with no content cap: LIB v1.1
/// accepted it, and devices pull without one).
fn event_from_row(row: &Row) -> std::result::Result<Event, String> {
    let text = |i: usize, name: &str| {
        row.get::<_, Option<String>>(i)
            .ok_or_else(|| format!("{name} is NULL"))
    };
    let event_type = text(3, "event_type")?;
    let event = Event {
        event_ulid: text(1, "event_ulid")?,
        device_id: text(2, "device_id")?,
        event_type: EventType::parse(&event_type).ok_or_else(|| {
            format!("event_type {event_type:?} is not upsert_file, delete_file or initial_sync")
        })?,
        entity_type: text(4, "entity_type")?,
        entity_key: text(5, "entity_key")?,
        payload: serde_json::from_str::<FilePayload>(&text(6, "payload")?)
            .map_err(|e| format!("payload: {e}"))?,
        vector_clock: serde_json::from_str::<VectorClock>(&text(7, "vector_clock")?)
            .map_err(|e| format!("vector_clock: {e}"))?,
        created_at: adopted_time(&text(8, "created_at")?),
    };
    event.validate(usize::MAX).map_err(|e| e.to_string())?;
    Ok(event)
}

/// Applies, as single versions, the old entity rows whose event is gone from LIB v1.1's log
/// (pruned): with a ULID column, rows whose ULID no old event has; without one, rows whose key no
/// old event has. A version dominated by a kept event changes nothing; a concurrent one is a
/// sibling, as it would have been.
async fn keep_pruned_entities(
    tx: &Transaction<'_>,
    schema: &str,
    events: &Columns,
    entities: &Columns,
    report: &mut AdoptReport,
) -> Result<()> {
    let opt_text = |candidates: &[&str]| match entities.first(candidates) {
        Some(c) => format!("{c}::text"),
        None => "NULL::text".to_owned(),
    };
    let entity_type = match entities.has("entity_type") {
        true => "entity_type::text".to_owned(),
        false => "'file'".to_owned(),
    };
    let ulid_column = entities.first(&["event_ulid", "last_event_ulid", "winner_event_ulid"]);
    let mut deleted = Vec::new();
    if entities.has("deleted_at") {
        deleted.push("deleted_at IS NOT NULL".to_owned());
    }
    for c in ["deleted", "is_deleted"] {
        if entities.data_type(c) == Some("boolean") {
            deleted.push(format!("COALESCE({c}, false)"));
        }
    }
    let deleted = if deleted.is_empty() {
        "false".to_owned()
    } else {
        deleted.join(" OR ")
    };
    let stamp = entities.first_timestamp(&["updated_at", "created_at"]);
    let created = match stamp {
        Some(c) => timestamp_text(c, entities.data_type(c).unwrap_or("")),
        None => "NULL::text".to_owned(),
    };
    let millis = match stamp {
        Some(c) => format!("(extract(epoch FROM {c}) * 1000)::int8"),
        None => "NULL::int8".to_owned(),
    };
    let gone = match ulid_column {
        Some(u) if events.has("event_ulid") => format!(
            "CASE WHEN v.{u} IS NOT NULL
                  THEN NOT EXISTS (SELECT 1 FROM {schema}.events{SUFFIX} o WHERE o.event_ulid::text = v.{u}::text)
                  ELSE NOT EXISTS (SELECT 1 FROM {schema}.events{SUFFIX} o WHERE o.entity_key::text = v.entity_key::text) END"
        ),
        _ => format!(
            "NOT EXISTS (SELECT 1 FROM {schema}.events{SUFFIX} o WHERE o.entity_key::text = v.entity_key::text)"
        ),
    };
    let select = format!(
        "SELECT entity_key::text, {entity_type}, payload::text, vector_clock::text, {ulid}, {device},
                {event_type}, {deleted}, {created}, {millis}
         FROM {schema}.entities{SUFFIX} v WHERE {gone} ORDER BY entity_key",
        ulid = opt_text(&["event_ulid", "last_event_ulid", "winner_event_ulid"]),
        device = opt_text(&["device_id", "last_device_id", "origin_device_id", "updated_by"]),
        event_type = opt_text(&["event_type", "last_event_type"]),
    );
    let portal = tx
        .bind(select.as_str(), &[])
        .await
        .map_err(|e| pg_err("reading LIB v1.1's entities", e))?;
    loop {
        let rows = tx
            .query_portal(&portal, PAGE)
            .await
            .map_err(|e| pg_err("reading LIB v1.1's entities", e))?;
        if rows.is_empty() {
            break;
        }
        let mut page = Vec::with_capacity(rows.len());
        for row in &rows {
            let key: Option<String> = row.get(0);
            let ulid: Option<String> = row.get(4);
            match entity_from_row(row) {
                Ok(event) => page.push(event),
                Err(reason) => report.reject(
                    "entities",
                    key.unwrap_or_else(|| "NULL".into()),
                    ulid,
                    reason,
                ),
            }
        }
        let refs: Vec<&Event> = page.iter().collect();
        replay(tx, schema, &refs).await?;
        report.kept_entities += page.len() as u64;
    }
    Ok(())
}

/// A LIB v1.1 time as RFC 3339. Its timestamptz columns are read as RFC 3339 already
/// ([`timestamp_text`]); a text column may hold PostgreSQL's own spelling of one
/// (`2026-02-10 10:06:00.250+00`), which names one instant as plainly and is rewritten
/// (`2026-02-10T10:06:00.250Z`). Anything else stays as it is, and the row is refused by validation.
fn adopted_time(text: &str) -> String {
    if is_rfc3339(text) {
        return text.to_owned();
    }
    let b = text.as_bytes();
    if b.len() < 22 || b[10] != b' ' {
        return text.to_owned();
    }
    let zone = match text.rfind(['+', '-']) {
        Some(at) if at > 18 => at,
        _ => return text.to_owned(),
    };
    let (time, offset) = text.split_at(zone);
    let offset = match offset.len() {
        3 => format!("{offset}:00"),
        _ => offset.to_owned(),
    };
    let offset = match offset.as_str() {
        "+00:00" | "-00:00" => "Z".to_owned(),
        _ => offset,
    };
    let candidate = format!("{}T{}{offset}", &time[..10], &time[11..]);
    if is_rfc3339(&candidate) {
        candidate
    } else {
        text.to_owned()
    }
}

/// The time a ULID carries (its first 48 bits, milliseconds), as RFC 3339.
fn ulid_time(ulid: &str) -> String {
    let millis = ulid::Ulid::from_string(ulid).map_or(0, |u| u.timestamp_ms());
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(millis);
    humantime::format_rfc3339_millis(t).to_string()
}

/// The version an old entity row stands for, as an event (never written to the log).
fn entity_from_row(row: &Row) -> std::result::Result<Event, String> {
    let key: String = row
        .get::<_, Option<String>>(0)
        .ok_or("entity_key is NULL")?;
    let vector_clock: VectorClock = serde_json::from_str(
        &row.get::<_, Option<String>>(3)
            .ok_or("vector_clock is NULL")?,
    )
    .map_err(|e| format!("vector_clock: {e}"))?;
    // Without a device column: the device with the greatest entry is the likeliest author, and
    // the only choice that keeps the clock valid for it.
    let device_id = match row.get::<_, Option<String>>(5) {
        Some(d) => d,
        None => vector_clock
            .entries()
            .max_by_key(|(device, n)| (*n, *device))
            .map(|(device, _)| device.to_owned())
            .ok_or("vector_clock is empty and there is no device column")?,
    };
    let last_type = row.get::<_, Option<String>>(6);
    let deleted = row.get::<_, Option<bool>>(7).unwrap_or(false)
        || last_type.as_deref() == Some(EventType::DeleteFile.as_str());
    let event_type = if deleted {
        EventType::DeleteFile
    } else {
        match last_type.as_deref() {
            Some(t) => EventType::parse(t).ok_or_else(|| {
                format!("event_type {t:?} is not upsert_file, delete_file or initial_sync")
            })?,
            None => EventType::UpsertFile,
        }
    };
    let payload = if deleted {
        FilePayload::default()
    } else {
        serde_json::from_str(&row.get::<_, Option<String>>(2).ok_or("payload is NULL")?)
            .map_err(|e| format!("payload: {e}"))?
    };
    // A version needs a ULID; without the winner's, one is derived from the row (its time and
    // key), the same on every run.
    let event_ulid = row.get::<_, Option<String>>(4).unwrap_or_else(|| {
        let millis = row.get::<_, Option<i64>>(9).unwrap_or(0).max(0) as u64;
        let hash = Sha256::digest(key.as_bytes());
        let mut random = [0u8; 16];
        random.copy_from_slice(&hash[..16]);
        ulid::Ulid::from_parts(millis, u128::from_be_bytes(random)).to_string()
    });
    let event = Event {
        device_id,
        event_type,
        entity_type: row
            .get::<_, Option<String>>(1)
            .unwrap_or_else(|| "file".into()),
        entity_key: key,
        payload,
        vector_clock,
        created_at: match row.get::<_, Option<String>>(8) {
            Some(t) => adopted_time(&t),
            // No time column: the winner's ULID says when it was made.
            None => ulid_time(&event_ulid),
        },
        event_ulid,
    };
    event.validate(usize::MAX).map_err(|e| e.to_string())?;
    Ok(event)
}

/// Copies one webhook per device (the active, most recently updated one), keeping integer ids.
async fn copy_webhooks(
    tx: &Transaction<'_>,
    schema: &str,
    columns: &Columns,
    report: &mut AdoptReport,
) -> Result<()> {
    let keep_ids = columns
        .data_type("id")
        .is_some_and(|t| INTEGER_TYPES.contains(&t));
    let secret = match columns.has("secret") {
        true => "COALESCE(secret::text, '')",
        false => "''",
    };
    let active = match columns.first(&["active", "is_active"]) {
        Some(c) if columns.data_type(c) == Some("boolean") => format!("COALESCE({c}, true)"),
        _ => "true".to_owned(),
    };
    let stamp = |c: &str| match columns.is_timestamp(c) {
        true => format!("COALESCE({c}, now())"),
        false => "now()".to_owned(),
    };
    let (id_column, id_value) = match keep_ids {
        true => ("id, ", "id::int8 AS id, "),
        false => ("", ""),
    };
    let rows = tx
        .query(
            &format!(
                "INSERT INTO {schema}.device_webhooks ({id_column}device_id, webhook_url, secret, active,
                   created_at, updated_at, via_shared_secret)
                 OVERRIDING SYSTEM VALUE
                 SELECT DISTINCT ON (device_id) {id_column}device_id, webhook_url, secret,
                   active AND secret <> '', created_at, updated_at, true
                 FROM (SELECT {id_value}device_id::text AS device_id, webhook_url::text AS webhook_url,
                         {secret} AS secret, {active} AS active, {created} AS created_at,
                         {updated} AS updated_at
                       FROM {schema}.device_webhooks{SUFFIX}
                       WHERE device_id IS NOT NULL AND webhook_url IS NOT NULL) w
                 ORDER BY device_id, active DESC, updated_at DESC
                 RETURNING device_id, secret = ''",
                created = stamp("created_at"),
                updated = stamp("updated_at"),
            ),
            &[],
        )
        .await
        .map_err(|e| pg_err("copying LIB v1.1's webhooks", e))?;
    report.webhooks = rows.len() as u64;
    report.unsigned_webhooks = rows
        .iter()
        .filter(|r| r.get::<_, bool>(1))
        .map(|r| r.get(0))
        .collect();
    report.unsigned_webhooks.sort();
    if keep_ids && !rows.is_empty() {
        tx.execute(
            &format!(
                "SELECT setval(pg_get_serial_sequence($1, 'id'), (SELECT max(id) FROM {schema}.device_webhooks))"
            ),
            &[&format!("{schema}.device_webhooks")],
        )
        .await
        .map_err(|e| pg_err("moving the webhook id counter", e))?;
    }
    Ok(())
}

fn log(schema: &str, report: &AdoptReport) {
    tracing::warn!(
        schema,
        events = report.events,
        max_id = report.max_id,
        pruned_through = report.pruned_through,
        entities = report.entities,
        kept_entities = report.kept_entities,
        webhooks = report.webhooks,
        rejected = report.rejected_count,
        "adopted LIB v1.1's schema {schema} in place: events kept with their ids, entities rebuilt \
         by the merge rule; its old tables are kept, moved aside ({}), and its functions renamed \
         with {SUFFIX} ({})",
        report.moved.join(", "),
        report.renamed_functions.len(),
    );
    if report.rejected_count > 0 {
        let shown: Vec<String> = report.rejected.iter().map(ToString::to_string).collect();
        tracing::warn!(
            schema,
            rejected = report.rejected_count,
            "{} LIB v1.1 row(s) failed validation and were not adopted; they stay in the {SUFFIX} \
             tables: {}{}",
            report.rejected_count,
            shown.join("; "),
            if report.rejected_count as usize > shown.len() {
                "; ..."
            } else {
                ""
            },
        );
    }
    if !report.unsigned_webhooks.is_empty() {
        tracing::warn!(
            schema,
            "LIB v1.1 webhooks without a secret are kept inactive (notifications are signed): \
             devices {} must register again",
            report.unsigned_webhooks.join(", ")
        );
    }
}

/// LIB v1.1 scheduled its prune function with pg_cron; after the rename that job only fails.
/// Says how to remove it. Best effort, after the commit: most databases have no pg_cron.
async fn warn_about_cron(client: &Client, schema: &str) {
    let has_cron = client
        .query_one("SELECT to_regclass('cron.job') IS NOT NULL", &[])
        .await
        .is_ok_and(|r| r.get::<_, bool>(0));
    if !has_cron {
        return;
    }
    let Ok(jobs) = client
        .query(
            "SELECT jobid::int8, schedule::text, command::text FROM cron.job
             WHERE strpos(command, $1) > 0",
            &[&format!("{schema}.")],
        )
        .await
    else {
        return;
    };
    for job in jobs {
        let (id, schedule, command): (i64, String, String) = (job.get(0), job.get(1), job.get(2));
        tracing::warn!(
            schema,
            "pg_cron job {id} ({schedule}) runs `{command}` against LIB v1.1's renamed functions: \
             remove it with SELECT cron.unschedule({id}) (use `agent brain prune` instead)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// LIB v1.1's brain ran on PostgreSQL: a time it kept in a text column is in PostgreSQL's
    /// spelling, one instant as plainly as RFC 3339's, so adoption rewrites it; anything else is
    /// left for validation to refuse (and the adoption to report).
    #[test]
    fn lib_v11_times_are_adopted_as_rfc_3339() {
        for (old, adopted) in [
            ("2026-02-10T10:06:00.25Z", "2026-02-10T10:06:00.25Z"),
            ("2026-02-10 10:06:00.250+00", "2026-02-10T10:06:00.250Z"),
            ("2026-02-10 10:06:00+00", "2026-02-10T10:06:00Z"),
            ("2026-02-10 11:06:00+01", "2026-02-10T11:06:00+01:00"),
            ("2026-02-10 04:36:00-05:30", "2026-02-10T04:36:00-05:30"),
            ("not a time", "not a time"),
            ("2026-02-10 10:06:00", "2026-02-10 10:06:00"),
            ("2026-02-31 10:06:00+00", "2026-02-31 10:06:00+00"),
        ] {
            assert_eq!(adopted_time(old), adopted, "{old}");
        }
        assert_eq!(
            ulid_time("01KH3G2610ZQTWSCK9MEN437QX"),
            "2026-02-10T10:03:00.000Z"
        );
    }

    fn columns(tables: &[(&str, &[(&str, &str)])]) -> HashMap<String, Columns> {
        tables
            .iter()
            .map(|(table, cols)| {
                let cols = cols
                    .iter()
                    .map(|(c, t)| ((*c).to_owned(), (*t).to_owned()))
                    .collect();
                ((*table).to_owned(), Columns(cols))
            })
            .collect()
    }

    const OUR_EVENTS: (&str, &[(&str, &str)]) = ("events", &[("id", "bigint"), ("digest", "text")]);
    const OUR_ENTITIES: (&str, &[(&str, &str)]) = ("entities", &[("seen_vc", "jsonb")]);
    const OUR_WEBHOOKS: (&str, &[(&str, &str)]) = ("device_webhooks", &[("id", "bigint")]);
    const V11_EVENTS: (&str, &[(&str, &str)]) = ("events", &[("id", "bigint")]);
    const V11_ENTITIES: (&str, &[(&str, &str)]) = ("entities", &[("id", "bigint")]);
    const V11_WEBHOOKS: (&str, &[(&str, &str)]) = ("device_webhooks", &[("id", "uuid")]);

    #[test]
    fn tables_made_by_our_files_are_told_from_lib_v11s() {
        assert!(made_by_our_files(&columns(&[
            OUR_EVENTS,
            OUR_ENTITIES,
            OUR_WEBHOOKS
        ])));
        assert!(made_by_our_files(&columns(&[OUR_EVENTS])));
        assert!(!made_by_our_files(&columns(&[
            V11_EVENTS,
            V11_ENTITIES,
            V11_WEBHOOKS
        ])));
        // Mixes: our first file applied by hand next to LIB v1.1 tables it kept (CREATE TABLE IF
        // NOT EXISTS) are not ours.
        assert!(!made_by_our_files(&columns(&[OUR_EVENTS, V11_ENTITIES])));
        assert!(!made_by_our_files(&columns(&[
            OUR_EVENTS,
            OUR_ENTITIES,
            V11_WEBHOOKS
        ])));
        assert!(!made_by_our_files(&columns(&[OUR_ENTITIES, OUR_WEBHOOKS])));
    }
}

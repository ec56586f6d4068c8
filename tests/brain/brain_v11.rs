//! Moving from LIB v1.1's Supabase brain: `agent brain serve --database-url` pointed at a database
//! holding LIB v1.1's `lib_shared` schema (`tests/fixtures/lib_v11_supabase.sql`, loaded into a
//! schema of each test's own on the real PostgreSQL of `LIB_TEST_DATABASE_URL`) adopts it in place.
//!
//! - Every valid event is kept with its id, so a LIB v1.1 device's cursor pulls exactly the events
//!   after it; the invalid ones are reported and left in `events_v11`.
//! - `entities` and `conflicts` are what a fresh brain fed the same events holds; entity rows of
//!   keys whose events LIB v1.1 pruned are kept as single versions; webhooks are kept.
//! - The old tables and functions are moved aside, not dropped; a second start changes nothing.
//! - A schema missing a column the adoption needs is refused in one line naming the table and
//!   column, and is left exactly as it was.

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::{json, Value};

use crate::support::brain::*;
use lib_agent::model::Event;

const FIXTURE: &str = include_str!("../fixtures/lib_v11_supabase.sql");
const A: &str = "5f0c2b8e-1d3a-4c7e-9b21-0a6f3c1d2e4a";
const B: &str = "9ab14e02-77c3-4f5d-8e19-3b2c5d6e7f80";
/// The fixture's events by id; ids 9 and 10 are invalid, 1 and 2 were pruned by LIB v1.1.
const ULIDS: &[(i64, &str)] = &[
    (3, "01KH3G2610ZQTWSCK9MEN437QX"),
    (4, "01KH3G40M0XP606FZ2PK7GNAJW"),
    (5, "01KH3G5V70Q0Q0035YZ7AT36V3"),
    (6, "01KH3G7NT0DDSQZ8T9CMPAFD55"),
    (7, "01KH3G9GD0A2MHP8GMRP2FQ48V"),
    (8, "01KH3GBB00JTENAZ1VXC88AGZN"),
    (11, "01KH3GGTS0WGY2HSMXPSR5GW8P"),
    (12, "01KH3GJNC0BK6DS3M7J2VF1F5B"),
];
const INVALID: &[&str] = &["01KH3GD5K0S3KWVVDQBYER890K", "01KH3GF0602K3SBEQF28MSAVHS"];

/// A test schema holding the fixture, not yet opened by a brain.
async fn v11_schema() -> TestSchema {
    let schema = TestSchema::new();
    schema.execute(FIXTURE).await;
    schema
}

async fn count(schema: &TestSchema, table: &str) -> i64 {
    schema
        .admin()
        .await
        .query_one(
            &format!("SELECT count(*) FROM {}.{table}", schema.name),
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Every relation and function of the schema, and the rows of each table: what "nothing changed"
/// compares.
async fn inventory(schema: &TestSchema) -> BTreeMap<String, i64> {
    let admin = schema.admin().await;
    let mut out = BTreeMap::new();
    for row in admin
        .query(
            "SELECT c.relname::text, c.relkind::text FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1",
            &[&schema.name],
        )
        .await
        .unwrap()
    {
        let (name, kind): (String, String) = (row.get(0), row.get(1));
        let rows = if kind == "r" {
            admin
                .query_one(&format!("SELECT count(*) FROM {}.{name}", schema.name), &[])
                .await
                .unwrap()
                .get(0)
        } else {
            -1
        };
        out.insert(format!("{kind} {name}"), rows);
    }
    for row in admin
        .query(
            "SELECT p.oid::regprocedure::text FROM pg_proc p
             JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = $1",
            &[&schema.name],
        )
        .await
        .unwrap()
    {
        out.insert(format!("function {}", row.get::<_, String>(0)), -1);
    }
    out
}

fn ids_after(cursor: i64) -> Vec<i64> {
    ULIDS
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| *id > cursor)
        .collect()
}

/// A brain serving an adopted schema; the fixture drops the schema at the end.
async fn adopted_brain() -> (Fixture, Brain) {
    let schema = v11_schema().await;
    let store = schema.open().await.expect("the LIB v1.1 schema is adopted");
    assert!(store.adopted().is_some(), "the first start adopts");
    let fixture = Fixture::postgres_on(schema, store);
    let brain = fixture.serve().await;
    (fixture, brain)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adoption_keeps_every_valid_event_with_its_id_and_reports_the_invalid_ones() {
    require_postgres!();
    tokio::time::timeout(TEST_LIMIT, async {
        let schema = v11_schema().await;
        let store = schema.open().await.expect("adopted");
        let report = store.adopted().expect("a report").clone();
        assert_eq!(report.events, 8);
        assert_eq!(report.rejected_count, 2);
        let rejected: Vec<_> = report
            .rejected
            .iter()
            .map(|r| (r.table.as_str(), r.row.as_str(), r.ulid.as_deref().unwrap()))
            .collect();
        assert_eq!(
            rejected,
            [
                ("events_v11", "9", INVALID[0]),
                ("events_v11", "10", INVALID[1])
            ]
        );
        assert!(
            report.rejected[0].reason.contains("payload.sha256"),
            "{:?}",
            report.rejected
        );
        assert!(
            report.rejected[1].reason.contains("entity_key"),
            "{:?}",
            report.rejected
        );
        assert_eq!(report.max_id, 14, "the sequence had handed out 13 and 14");
        assert_eq!(
            report.pruned_through, 2,
            "ids 1 and 2 were pruned by LIB v1.1"
        );
        assert_eq!(report.kept_entities, 2);
        assert_eq!(report.webhooks, 2);
        assert_eq!(report.unsigned_webhooks, [B]);
        assert_eq!(
            report.moved,
            [
                "device_webhooks -> device_webhooks_v11",
                "entities -> entities_v11",
                "events -> events_v11"
            ]
        );
        assert!(report
            .renamed_functions
            .contains(&"ingest_events(batch jsonb)".to_owned()));

        // Nothing of LIB v1.1's was dropped: every old row is in the _v11 tables, the functions
        // are there under their new names, and the old ones are gone (nothing can write to the
        // new tables through them).
        assert_eq!(count(&schema, "events_v11").await, 10);
        assert_eq!(count(&schema, "entities_v11").await, 7);
        assert_eq!(count(&schema, "device_webhooks_v11").await, 2);
        let admin = schema.admin().await;
        let function = |name: &str| format!("{}.{name}(jsonb)", schema.name);
        let exists = admin
            .query_one(
                "SELECT to_regprocedure($1) IS NOT NULL, to_regprocedure($2) IS NOT NULL",
                &[&function("ingest_events"), &function("ingest_events_v11")],
            )
            .await
            .unwrap();
        assert_eq!(
            (exists.get::<_, bool>(0), exists.get::<_, bool>(1)),
            (false, true)
        );

        let fixture = Fixture::postgres_on(schema, store);
        let brain = fixture.serve().await;
        let events = brain.pull_all_after(2).await;
        assert_eq!(ids(&events), ids_after(2));
        assert_eq!(
            ulids(&events),
            ULIDS.iter().map(|(_, u)| u.to_string()).collect::<Vec<_>>()
        );
        // Fields as LIB v1.1 stored them; its timestamptz created_at as RFC 3339 UTC.
        let e6 = &events[3];
        assert_eq!(e6["id"], 6);
        assert_eq!(e6["device_id"], B);
        assert_eq!(e6["event_type"], "upsert_file");
        assert_eq!(e6["entity_key"], "notes/todo.md");
        assert_eq!(e6["payload"]["content"], "todo on B");
        assert_eq!(e6["vector_clock"], json!({ B: 3 }));
        assert_eq!(e6["created_at"], "2026-02-10T10:06:00.25Z");
        assert_eq!(events[0]["created_at"], "2026-02-10T10:03:00Z");
        assert_eq!(events[4]["event_type"], "initial_sync");
        assert_eq!(events[5]["event_type"], "delete_file");
        assert_eq!(events[5]["payload"], json!({}));

        // Re-sending an adopted event (a LIB v1.1 client retrying a push) inserts nothing.
        let again: Event = serde_json::from_value(events[0].clone()).unwrap();
        assert_eq!(brain.ingest_ok(&[again]).await, (0, 0));
        // A new event gets an id past every id LIB v1.1 handed out.
        brain
            .ingest_ok(&[upsert(A, "notes/new.md", &[(A, 8), (B, 6)], 'a')])
            .await;
        let new = brain.pull(12, 100).await;
        assert_eq!(ids(new.body["events"].as_array().unwrap()), [15]);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v11_devices_cursor_pulls_exactly_the_events_after_it() {
    require_postgres!();
    tokio::time::timeout(TEST_LIMIT, async {
        let (_fixture, brain) = adopted_brain().await;
        // Cursors a LIB v1.1 device may hold: any id it pulled, the rejected ones included.
        for cursor in [2, 3, 5, 8, 9, 10, 11, 12, 14] {
            let events = brain.pull_all_after(cursor).await;
            assert_eq!(ids(&events), ids_after(cursor), "cursor {cursor}");
        }
        // Paging as the LIB v1.1 client does (limit, then next_after_id).
        let page = brain.pull(2, 3).await;
        assert_eq!(ids(page.body["events"].as_array().unwrap()), [3, 4, 5]);
        assert_eq!(page.body["next_after_id"], 5);
        assert_eq!(page.body["has_more"], true);
        // Below the ids LIB v1.1 pruned: re-seed from the snapshot (410), never a silent gap.
        for cursor in [0, 1] {
            let r = brain.pull(cursor, 100).await;
            assert_eq!(r.status, 410, "cursor {cursor}: {}", r.text);
        }
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopted_entities_equal_a_fresh_brain_fed_the_same_events() {
    require_postgres!();
    tokio::time::timeout(TEST_LIMIT, async {
        let (_fixture, adopted) = adopted_brain().await;
        let fresh = Fixture::postgres().await;
        let fresh_brain = fresh.serve().await;
        let events: Vec<Event> = adopted
            .pull_all_after(2)
            .await
            .into_iter()
            .map(|e| serde_json::from_value(e).unwrap())
            .collect();
        assert_eq!(events.len(), ULIDS.len());
        fresh_brain.ingest_ok(&events).await;

        let pruned = ["notes/gone.md", "notes/old.md"];
        let mut kept: BTreeMap<String, Value> = adopted
            .snapshot_all()
            .await
            .into_iter()
            .map(|e| (e["entity_key"].as_str().unwrap().to_owned(), e))
            .collect();
        let fed: BTreeMap<String, Value> = fresh_brain
            .snapshot_all()
            .await
            .into_iter()
            .map(|e| (e["entity_key"].as_str().unwrap().to_owned(), e))
            .collect();
        let old: Vec<Value> = pruned.iter().map(|k| kept.remove(*k).unwrap()).collect();
        assert_eq!(kept, fed, "entities rebuilt by the merge rule");
        assert_eq!(
            conflicts(&adopted).await,
            conflicts(&fresh_brain).await,
            "conflicts"
        );

        // LIB v1.1 kept B's concurrent edit of notes/todo.md (greater device id); the merge rule
        // keeps A's (greater clock sum), and B's is an open conflict, not lost.
        let todo = &kept["notes/todo.md"];
        assert_eq!(todo["event_ulid"], ULIDS[2].1);
        assert_eq!(
            conflicts(&adopted).await,
            [("notes/todo.md".to_owned(), ULIDS[3].1.to_owned())]
        );
        assert!(
            kept["notes/readme.md"]["deleted_at"].is_string(),
            "the delete is a tombstone"
        );
        assert!(
            !kept.contains_key("notes/bad.md"),
            "an invalid event makes no entity"
        );

        // Keys whose events LIB v1.1 pruned keep their entity, as one version.
        let (gone, old) = (&old[0], &old[1]);
        assert_eq!(old["event_ulid"], "01KH3FYGV0P342MEPY6JBSCK5R");
        assert_eq!(old["device_id"], A);
        assert_eq!(old["payload"]["content"], "old");
        assert_eq!(old["seen_vc"], json!({ A: 1 }));
        assert_eq!(old["siblings"].as_array().unwrap().len(), 1);
        assert!(old["deleted_at"].is_null());
        assert_eq!(gone["event_type"], "delete_file");
        assert_eq!(gone["deleted_at"], "2026-02-10T10:02:00Z");
        assert_eq!(gone["siblings"].as_array().unwrap().len(), 1);
    })
    .await
    .expect("test timed out");
}

/// (key, losing ULID) of every open conflict, behind the brain.
async fn conflicts(brain: &Brain) -> Vec<(String, String)> {
    let AnyStore::Postgres(store) = &brain.store else {
        unreachable!()
    };
    let (client, conn) = tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .query(
            &format!(
                "SELECT entity_key, event_ulid FROM {}.conflicts ORDER BY 1, 2",
                store.schema()
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adoption_is_done_once_and_a_second_start_changes_nothing() {
    require_postgres!();
    tokio::time::timeout(TEST_LIMIT, async {
        let schema = v11_schema().await;
        let first = schema.open().await.expect("adopted");
        assert!(first.adopted().is_some());
        drop(first);
        let after_first = inventory(&schema).await;
        let second = schema.open().await.expect("opened again");
        assert_eq!(second.adopted(), None, "nothing left to adopt");
        assert_eq!(inventory(&schema).await, after_first);
        assert!(!after_first.contains_key("r events_v11_v11"));
        let folder = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/brain/postgres");
        let migrations = std::fs::read_dir(folder).unwrap().count() as i64;
        assert_eq!(
            count(&schema, "schema_migrations").await,
            migrations,
            "every migration, once"
        );
        let webhooks = schema
            .admin()
            .await
            .query(
                &format!(
                    "SELECT device_id, webhook_url, secret, active FROM {}.device_webhooks ORDER BY 1",
                    schema.name
                ),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect::<Vec<(String, String, String, bool)>>();
        assert_eq!(
            webhooks,
            [
                (A.into(), "http://127.0.0.1:9/webhook".into(), "whsec-a-7Qp2".into(), true),
                // No secret in LIB v1.1: kept, inactive, until the device registers again.
                (B.into(), "http://127.0.0.1:9/hook-b".into(), String::new(), false),
            ]
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_migration_table_left_by_an_older_brain_does_not_stop_the_adoption() {
    require_postgres!();
    tokio::time::timeout(TEST_LIMIT, async {
        // What a brain before the adoption left: its first migration failed on LIB v1.1's
        // tables after the (autocommitted) migration table was created.
        let schema = v11_schema().await;
        schema
            .execute(
                "CREATE TABLE lib_shared.schema_migrations (version integer PRIMARY KEY,
                   name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
            )
            .await;
        let store = schema.open().await.expect("adopted");
        assert_eq!(store.adopted().map(|r| r.events), Some(8));
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_missing_a_required_column_is_refused_in_one_line_and_left_as_it_was() {
    require_postgres!();
    tokio::time::timeout(TEST_LIMIT, async {
        for (table, column) in [
            ("events", "entity_key"),
            ("events", "vector_clock"),
            ("entities", "payload"),
            ("device_webhooks", "webhook_url"),
        ] {
            let schema = v11_schema().await;
            schema
                .execute(&format!("ALTER TABLE lib_shared.{table} DROP COLUMN {column} CASCADE"))
                .await;
            let before = inventory(&schema).await;
            let err = schema.open().await.err().expect("refused").to_string();
            assert!(
                err.contains(&format!("table {}.{table} has no column {column}", schema.name)),
                "{err}"
            );
            assert!(err.contains("nothing was changed") && !err.contains('\n'), "{err}");
            assert_eq!(inventory(&schema).await, before, "{table}.{column}: nothing changed");
        }
        // Ids that are not integers cannot be cursors.
        let schema = v11_schema().await;
        schema
            .execute("ALTER TABLE lib_shared.events ALTER COLUMN id DROP DEFAULT, ALTER COLUMN id TYPE text")
            .await;
        let before = inventory(&schema).await;
        let err = schema.open().await.err().expect("refused").to_string();
        assert!(err.contains(".events.id is text, not an integer"), "{err}");
        assert_eq!(inventory(&schema).await, before);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migration_file_applied_by_hand_to_a_v11_schema_points_to_the_adoption() {
    require_postgres!();
    tokio::time::timeout(TEST_LIMIT, async {
        // As `supabase db push` would run migrations/brain/postgres/0001_lib_shared.sql.
        let schema = v11_schema().await;
        let before = inventory(&schema).await;
        let sql = include_str!("../../migrations/brain/postgres/0001_lib_shared.sql")
            .replace("lib_shared", &schema.name);
        let err = schema
            .admin()
            .await
            .batch_execute(&sql)
            .await
            .expect_err("refused");
        let message = err
            .as_db_error()
            .map(|e| e.message().to_owned())
            .unwrap_or_default();
        assert!(
            message.contains("is LIB v1.1's: start `agent brain serve"),
            "{err:?}"
        );
        assert_eq!(inventory(&schema).await, before, "nothing changed");
        // Once adopted, the file applies harmlessly again.
        let store = schema.open().await.expect("adopted");
        assert!(store.adopted().is_some());
        schema
            .admin()
            .await
            .batch_execute(&sql)
            .await
            .expect("idempotent");
    })
    .await
    .expect("test timed out");
}

/// Brains before the migrations moved to `migrations/brain/postgres/` read them from
/// `migrations/postgres/`, and recorded each by version and file name: a schema they migrated
/// opens as fully migrated, nothing applied or recorded again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_migrated_from_the_old_migrations_folder_opens_as_it_is() {
    require_postgres!();
    tokio::time::timeout(TEST_LIMIT, async {
        let schema = TestSchema::new();
        // What the old brain recorded, spelled out here rather than read from today's files.
        let old_names = [
            (1, "0001_lib_shared"),
            (2, "0002_pruned_events"),
            (3, "0003_devices"),
            (4, "0004_replica_digest"),
            (5, "0005_webhook_origin"),
        ];
        let files = migration_files();
        assert_eq!(
            files.len(),
            old_names.len(),
            "a new migration: extend this test"
        );
        let mut script = format!(
            "CREATE SCHEMA IF NOT EXISTS {s};
             CREATE TABLE {s}.schema_migrations (version integer PRIMARY KEY, name text NOT NULL,
               applied_at timestamptz NOT NULL DEFAULT now());",
            s = schema.name
        );
        for ((_, _, sql), (version, name)) in files.iter().zip(old_names) {
            script.push_str(&sql.replace("lib_shared", &schema.name));
            script.push_str(&format!(
                ";\nINSERT INTO {}.schema_migrations (version, name, applied_at)
                 VALUES ({version}, '{name}', '2026-01-01T00:00:00Z');",
                schema.name
            ));
        }
        schema.admin().await.batch_execute(&script).await.unwrap();
        let before = inventory(&schema).await;
        let records = migration_records(&schema).await;

        let store = schema
            .open()
            .await
            .expect("a schema migrated from the old folder opens");
        assert_eq!(
            store.adopted(),
            None,
            "this brain's own tables, not LIB v1.1's"
        );
        assert_eq!(
            migration_records(&schema).await,
            records,
            "nothing recorded again"
        );
        let mut after = inventory(&schema).await;
        // The store's epoch, made at its first open (a row, not a migration applied again).
        if let Some(rows) = after.get_mut("r brain_meta") {
            *rows -= 1;
        }
        assert_eq!(after, before, "nothing applied again");
        assert_eq!(
            recorded_migrations(&records),
            old_names.map(|(v, n)| (v, n.to_owned())),
        );
    })
    .await
    .expect("test timed out");
}

/// The files of `migrations/brain/postgres/`, in order: (version, name, SQL written for `lib_shared`).
fn migration_files() -> Vec<(i32, String, String)> {
    let folder = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/brain/postgres");
    let mut files: Vec<_> = std::fs::read_dir(folder)
        .unwrap()
        .map(|f| f.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|path| {
            let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
            let version = name.split('_').next().unwrap().parse().unwrap();
            (version, name, std::fs::read_to_string(path).unwrap())
        })
        .collect()
}

/// Applies every migration file to the schema, in order, as a human (`supabase db push`, psql)
/// would: each file as one script, through a plain SQL client, with no brain involved.
async fn apply_by_hand(schema: &TestSchema) {
    let admin = schema.admin().await;
    for (_, name, sql) in migration_files() {
        admin
            .batch_execute(&sql.replace("lib_shared", &schema.name))
            .await
            .unwrap_or_else(|e| panic!("{name} applied by hand: {e:?}"));
    }
}

/// The schema's migration records: (version, name, applied_at).
async fn migration_records(schema: &TestSchema) -> Vec<(i32, String, String)> {
    schema
        .admin()
        .await
        .query(
            &format!(
                "SELECT version, name, applied_at::text FROM {}.schema_migrations ORDER BY version",
                schema.name
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

fn recorded_migrations(records: &[(i32, String, String)]) -> Vec<(i32, String)> {
    records.iter().map(|(v, n, _)| (*v, n.clone())).collect()
}

fn every_migration() -> Vec<(i32, String)> {
    migration_files()
        .into_iter()
        .map(|(v, n, _)| (v, n))
        .collect()
}

/// The relations and functions an adoption moved aside (`events_v11`, `ingest_events_v11`, ...).
fn moved_aside(inventory: &BTreeMap<String, i64>) -> Vec<&String> {
    inventory.keys().filter(|k| k.contains("_v11")).collect()
}

/// Regression: on a fresh database, the migration files applied by hand (as `supabase db push`
/// does) before the brain's first start made it take the schema for LIB v1.1's and adopt it
/// (tables moved aside as `*_v11`, data copied). A schema made by our own files is ours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_files_applied_by_hand_before_the_first_start_are_not_taken_for_v11() {
    require_postgres!();
    tokio::time::timeout(TEST_LIMIT, async {
        let schema = TestSchema::new();
        apply_by_hand(&schema).await;
        let by_hand = inventory(&schema).await;

        let store = schema.open().await.expect("opens the schema made by hand");
        assert_eq!(store.adopted(), None, "nothing of LIB v1.1's to adopt");
        let started = inventory(&schema).await;
        assert_eq!(
            moved_aside(&started),
            Vec::<&String>::new(),
            "nothing moved aside"
        );
        let mut without_records = started.clone();
        without_records.retain(|k, _| !k.contains("schema_migrations"));
        // The store's epoch, made at its first open (a row, not a change to what was applied).
        if let Some(rows) = without_records.get_mut("r brain_meta") {
            *rows -= 1;
        }
        assert_eq!(
            without_records, by_hand,
            "the brain only recorded the migrations: no table, row or function changed"
        );
        let records = migration_records(&schema).await;
        assert_eq!(recorded_migrations(&records), every_migration());

        let brain = Brain::start(AnyStore::Postgres(store), config()).await;
        let events = many(A, 3, 1);
        assert_eq!(brain.ingest_ok(&events).await, (3, 3));
        assert_eq!(brain.ingest_ok(&events).await, (0, 0), "idempotent");
        let pulled = brain.pull_all().await;
        assert_eq!(ids(&pulled), [1, 2, 3]);
        assert_eq!(
            ulids(&pulled),
            events
                .iter()
                .map(|e| e.event_ulid.clone())
                .collect::<Vec<_>>()
        );
        drop(brain);

        // The files applied by hand again, and the brain started again: nothing changes.
        let serving = inventory(&schema).await;
        apply_by_hand(&schema).await;
        assert_eq!(inventory(&schema).await, serving, "re-applied by hand");
        assert_eq!(migration_records(&schema).await, records);
        let again = schema.open().await.expect("opens again");
        assert_eq!(again.adopted(), None);
        assert_eq!(inventory(&schema).await, serving, "started again");
        assert_eq!(migration_records(&schema).await, records);
        let brain = Brain::start(AnyStore::Postgres(again), config()).await;
        assert_eq!(ids(&brain.pull_all().await), [1, 2, 3]);
    })
    .await
    .expect("test timed out");
}

/// The other order: the brain creates the schema, then the files are applied by hand (a Supabase
/// project's migration history catching up): nothing changes, and the next start adopts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_files_applied_by_hand_after_the_brain_change_nothing() {
    require_postgres!();
    tokio::time::timeout(TEST_LIMIT, async {
        let schema = TestSchema::new();
        let store = schema.open().await.expect("creates the schema");
        let brain = Brain::start(AnyStore::Postgres(store), config()).await;
        let events = many(A, 2, 1);
        assert_eq!(brain.ingest_ok(&events).await, (2, 2));
        drop(brain);
        let serving = inventory(&schema).await;
        let records = migration_records(&schema).await;
        assert_eq!(recorded_migrations(&records), every_migration());

        apply_by_hand(&schema).await;
        assert_eq!(inventory(&schema).await, serving);
        assert_eq!(migration_records(&schema).await, records);
        let again = schema.open().await.expect("opens again");
        assert_eq!(again.adopted(), None);
        assert_eq!(inventory(&schema).await, serving);
        assert_eq!(moved_aside(&serving), Vec::<&String>::new());
        let brain = Brain::start(AnyStore::Postgres(again), config()).await;
        assert_eq!(ids(&brain.pull_all().await), [1, 2]);
        assert_eq!(brain.ingest_ok(&events).await, (0, 0));
    })
    .await
    .expect("test timed out");
}

/// `agent brain prune` (any command that opens the store) adopts the schema and says so in one
/// line on stderr; a broken schema stops it with one line and exit status 1.
#[test]
fn the_binary_says_in_one_line_what_it_moved() {
    require_postgres!();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let schema = runtime.block_on(v11_schema());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("agent.toml"), "").unwrap();
    let run = || {
        run_bounded(
            Command::new(env!("CARGO_BIN_EXE_agent"))
                .arg("--config")
                .arg(dir.path().join("agent.toml"))
                .args([
                    "brain",
                    "prune",
                    "--older-than",
                    "36500",
                    "--schema",
                    &schema.name,
                ])
                .args(["--database-url", &pg_url()])
                .env_remove("LIB_LOG")
                .env_remove("RUST_LOG"),
        )
    };
    let out = run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("adopted LIB v1.1"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("events -> events_v11") && lines[0].contains("entities -> entities_v11"),
        "{}",
        lines[0]
    );
    assert!(
        stderr.contains(INVALID[0]) && stderr.contains("not adopted"),
        "{stderr}"
    );
    // The second run finds nothing to adopt.
    let out = run();
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("adopted"));

    let broken = runtime.block_on(async {
        let s = v11_schema().await;
        s.execute("ALTER TABLE lib_shared.events DROP COLUMN device_id")
            .await;
        s
    });
    let out = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_agent"))
            .arg("--config")
            .arg(dir.path().join("agent.toml"))
            .args([
                "brain",
                "prune",
                "--older-than",
                "36500",
                "--schema",
                &broken.name,
            ])
            .args(["--database-url", &pg_url()]),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("{}.events has no column device_id", broken.name)),
        "{stderr}"
    );
    drop(runtime);
}

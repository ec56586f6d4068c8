-- The brain's SQLite store, schema 4: the replica digest of `entities` (DESIGN.md "Convergence you
-- can check"), kept by every ingest in its transaction and re-derived from the rows at start.
-- The same table as migrations/brain/postgres/0004_replica_digest.sql. No row until the brain
-- first derives it.
CREATE TABLE replica_digest (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    digest TEXT NOT NULL                      -- 64 lower-case hex digits
);

-- Schema 4: the replica digest of `entities` (DESIGN.md "Convergence you can check"), kept by
-- every ingest in its transaction (under the ingest lock) and re-derived from the rows at start.
-- No row until a brain first derives it.
CREATE TABLE IF NOT EXISTS lib_shared.replica_digest (
    id     integer PRIMARY KEY CHECK (id = 1),
    digest text NOT NULL                      -- 64 lower-case hex digits
);
ALTER TABLE lib_shared.replica_digest ENABLE ROW LEVEL SECURITY;

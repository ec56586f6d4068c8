-- The brain's SQLite store, schema 2: the ULIDs pruning removed from the log, with their digests
-- (sha256 of the canonical event JSON, as in events.digest). Ingest looks here as well as in
-- `events`, so a device that re-pushes an event after the retention window (its first push was
-- stored, the answer lost) is recognised: the same content inserts nothing, other content is 409.
-- A prune moves the rows here in the transaction that deletes them from `events`. Events pruned
-- before this migration are not known here: their ULIDs are gone.
CREATE TABLE pruned_events (
    event_ulid TEXT PRIMARY KEY,
    digest     TEXT NOT NULL
) WITHOUT ROWID;

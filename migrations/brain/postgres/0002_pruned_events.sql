-- lib-agent brain on PostgreSQL, schema 2: the ULIDs pruning removed from the log, with their
-- digests (sha256 of the canonical event JSON, as in events.digest). Plain SQL, applied after
-- 0001_lib_shared.sql and tracked in lib_shared.schema_migrations; it can also be run unchanged as
-- a Supabase migration (applying it again is harmless).
--
-- Ingest looks here as well as in `events`, so a device that re-pushes an event after the
-- retention window (its first push was stored, the answer lost) is recognised: the same content
-- inserts nothing, other content is 409. A prune moves the rows here in the statement that deletes
-- them from `events`. Events pruned before this migration are not known here: their ULIDs are gone.
CREATE TABLE IF NOT EXISTS lib_shared.pruned_events (
    event_ulid text PRIMARY KEY,
    digest     text NOT NULL
);

-- As every table of the schema: no Supabase API role may read it.
ALTER TABLE lib_shared.pruned_events ENABLE ROW LEVEL SECURITY;

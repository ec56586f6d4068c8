-- lib-agent brain on PostgreSQL, schema 1: the lib_shared schema. Plain SQL, applied in order by
-- `agent brain serve --database-url postgres://...` and tracked in lib_shared.schema_migrations;
-- it can also be run unchanged as a Supabase migration.

CREATE SCHEMA IF NOT EXISTS lib_shared;

-- LIB v1.1's tables (its events have no digest column) are not migrated by this file: CREATE TABLE
-- IF NOT EXISTS would keep them, and the brain's queries would fail later. The brain adopts them in
-- place at its first start instead, before it applies this file.
DO $$
BEGIN
    IF to_regclass('lib_shared.events') IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM information_schema.columns
        WHERE table_schema = 'lib_shared' AND table_name = 'events' AND column_name = 'digest'
    ) THEN
        RAISE EXCEPTION 'lib_shared.events is LIB v1.1''s: start `agent brain serve --database-url ...` on this database to adopt it in place (README: "Moving from LIB v1.1''s Supabase brain")';
    END IF;
END
$$;

-- The append-only log. Ids are assigned under a transaction-level advisory lock, so they become
-- visible in id order: a puller never passes an id that commits later.
CREATE TABLE IF NOT EXISTS lib_shared.events (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_ulid   text NOT NULL UNIQUE,           -- the idempotency key
    device_id    text NOT NULL,
    event_type   text NOT NULL,
    entity_type  text NOT NULL,
    entity_key   text NOT NULL,
    payload      jsonb NOT NULL,
    vector_clock jsonb NOT NULL,
    created_at   text NOT NULL,                  -- as the device wrote it (RFC 3339)
    received_at  timestamptz NOT NULL DEFAULT now(),
    digest       text NOT NULL                   -- sha256 of the canonical event JSON
);
CREATE INDEX IF NOT EXISTS events_received_at ON lib_shared.events (received_at);

-- The merged current state of each entity: the winner's fields and the merge state.
CREATE TABLE IF NOT EXISTS lib_shared.entities (
    entity_key   text COLLATE "C" PRIMARY KEY,  -- byte order: snapshot pages as on SQLite
    entity_type  text NOT NULL,
    event_ulid   text NOT NULL,                  -- the winning event
    device_id    text NOT NULL,
    event_type   text NOT NULL,
    payload      jsonb NOT NULL,                 -- {} for a tombstone
    vector_clock jsonb NOT NULL,
    created_at   text NOT NULL,
    deleted_at   text,                           -- NULL unless the winner is a tombstone
    seen_vc      jsonb NOT NULL,                 -- pointwise max of every applied clock
    siblings     jsonb NOT NULL,                 -- versions no applied version dominates
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS entities_updated_at ON lib_shared.entities (updated_at);

-- Open conflicts, derived from entities.siblings on every apply.
CREATE TABLE IF NOT EXISTS lib_shared.conflicts (
    entity_key   text NOT NULL,
    event_ulid   text NOT NULL,
    device_id    text NOT NULL,
    vector_clock jsonb NOT NULL,
    deleted      boolean NOT NULL,
    sha256       text,
    bytes        bigint,
    mtime_unix   bigint,
    created_at   text,
    PRIMARY KEY (entity_key, event_ulid)
);

CREATE TABLE IF NOT EXISTS lib_shared.device_webhooks (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id        text NOT NULL UNIQUE,
    webhook_url      text NOT NULL,
    secret           text NOT NULL,
    active           boolean NOT NULL DEFAULT true,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- pruned_through: every event up to this id was pruned.
CREATE TABLE IF NOT EXISTS lib_shared.brain_meta (
    k text PRIMARY KEY,
    v bigint NOT NULL
);
INSERT INTO lib_shared.brain_meta (k, v) VALUES ('pruned_through', 0) ON CONFLICT (k) DO NOTHING;

-- On Supabase, no API role may read these tables (the webhook secrets are in them); the brain
-- connects as their owner, which row level security does not restrict.
ALTER TABLE lib_shared.events ENABLE ROW LEVEL SECURITY;
ALTER TABLE lib_shared.entities ENABLE ROW LEVEL SECURITY;
ALTER TABLE lib_shared.conflicts ENABLE ROW LEVEL SECURITY;
ALTER TABLE lib_shared.device_webhooks ENABLE ROW LEVEL SECURITY;
ALTER TABLE lib_shared.brain_meta ENABLE ROW LEVEL SECURITY;

-- lib-agent brain on PostgreSQL, schema 3: device credentials (DESIGN.md "Trust") and the
-- delivery state of each webhook. Plain SQL, applied after 0002_pruned_events.sql and tracked in
-- lib_shared.schema_migrations; it can also be run unchanged as a Supabase migration (applying it
-- again is harmless). Times are unix seconds, as on SQLite.

-- One row per enrolled device. Only the sha256 of a token is stored: the token is printed once.
CREATE TABLE IF NOT EXISTS lib_shared.devices (
    name                text PRIMARY KEY,
    token_sha256        text NOT NULL UNIQUE,   -- lower-case hex
    -- After `device rotate --grace`: the old token keeps working until previous_expires_at.
    previous_sha256     text UNIQUE,
    previous_expires_at bigint,
    created_at          bigint NOT NULL,
    revoked_at          bigint,                 -- NULL unless revoked
    -- Bound by the token's first request; another id with this token is 403 after that.
    device_id           text UNIQUE,
    last_seen_at        bigint,
    last_cursor         bigint,                 -- the after_id of its last pull
    digest              text,                   -- the replica digest its last pull carried
    pending             bigint                  -- its unacknowledged events, as it said
);

-- A webhook that keeps failing is backed off: not called before retry_after.
ALTER TABLE lib_shared.device_webhooks ADD COLUMN IF NOT EXISTS failures integer NOT NULL DEFAULT 0;
ALTER TABLE lib_shared.device_webhooks ADD COLUMN IF NOT EXISTS last_error text;
ALTER TABLE lib_shared.device_webhooks ADD COLUMN IF NOT EXISTS retry_after bigint;

-- As every table of the schema: no Supabase API role may read it.
ALTER TABLE lib_shared.devices ENABLE ROW LEVEL SECURITY;

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

-- The greatest sequence number of each device that any accepted clock carried. A device token may
-- put another device's entry in its clock only up to this (it learned it from the brain): a made-up
-- {victim: 2^53} would make the victim's next sequence number one the brain refuses, forever.
CREATE TABLE IF NOT EXISTS lib_shared.device_sequences (
    device_id    text PRIMARY KEY,
    max_sequence bigint NOT NULL
);
-- What the existing entities' merged clocks carry (every applied clock is merged into them).
INSERT INTO lib_shared.device_sequences (device_id, max_sequence)
    SELECT j.key, LEAST(MAX(j.value::numeric), 9007199254740992)::bigint
    FROM lib_shared.entities, jsonb_each_text(lib_shared.entities.seen_vc) AS j
    WHERE j.value ~ '^[0-9]+$'
    GROUP BY j.key
ON CONFLICT (device_id) DO UPDATE SET
    max_sequence = GREATEST(lib_shared.device_sequences.max_sequence, excluded.max_sequence);

-- As every table of the schema: no Supabase API role may read it.
ALTER TABLE lib_shared.devices ENABLE ROW LEVEL SECURITY;
ALTER TABLE lib_shared.device_sequences ENABLE ROW LEVEL SECURITY;

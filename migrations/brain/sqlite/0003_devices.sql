-- The brain's SQLite store, schema 3: device credentials (DESIGN.md "Trust") and the delivery
-- state of each webhook. The same tables as migrations/brain/postgres/0003_devices.sql.

-- One row per enrolled device. Only the sha256 of a token is stored: the token is printed once.
CREATE TABLE devices (
    name                TEXT PRIMARY KEY,
    token_sha256        TEXT NOT NULL UNIQUE,   -- lower-case hex
    -- After `device rotate --grace`: the old token keeps working until previous_expires_at.
    previous_sha256     TEXT UNIQUE,
    previous_expires_at INTEGER,                -- unix seconds
    created_at          INTEGER NOT NULL,       -- unix seconds
    revoked_at          INTEGER,                -- NULL unless revoked
    -- Bound by the token's first request; another id with this token is 403 after that.
    device_id           TEXT UNIQUE,
    last_seen_at        INTEGER,
    last_cursor         INTEGER,                -- the after_id of its last pull
    digest              TEXT,                   -- the replica digest its last pull carried
    pending             INTEGER                 -- its unacknowledged events, as it said
);

-- A webhook that keeps failing is backed off: not called before retry_after.
ALTER TABLE device_webhooks ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE device_webhooks ADD COLUMN last_error TEXT;
ALTER TABLE device_webhooks ADD COLUMN retry_after INTEGER;  -- unix seconds; NULL: no back-off

-- The greatest sequence number of each device that any accepted clock carried. A device token may
-- put another device's entry in its clock only up to this (it learned it from the brain): a made-up
-- {victim: 2^53} would make the victim's next sequence number one the brain refuses, forever.
CREATE TABLE device_sequences (
    device_id    TEXT PRIMARY KEY,
    max_sequence INTEGER NOT NULL
) WITHOUT ROWID;
-- What the existing entities' merged clocks carry (every applied clock is merged into them).
INSERT INTO device_sequences (device_id, max_sequence)
    SELECT j.key, MIN(MAX(CAST(j.value AS INTEGER)), 9007199254740992)
    FROM entities, json_each(entities.seen_vc) AS j
    WHERE j.type = 'integer' OR j.type = 'real'
    GROUP BY j.key;

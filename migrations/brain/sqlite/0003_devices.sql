-- The brain's SQLite store, schema 3: device credentials (DESIGN.md "Trust") and the delivery
-- state of each webhook. The same tables as migrations/postgres/0003_devices.sql.

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

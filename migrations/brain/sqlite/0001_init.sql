-- The brain's SQLite store, schema 1. The same tables as migrations/brain/postgres/ (lib_shared schema).

-- The append-only log. AUTOINCREMENT: an id is never handed out twice, even after pruning emptied
-- the log, so a device's cursor always means the same place.
CREATE TABLE events (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    event_ulid   TEXT NOT NULL UNIQUE,      -- the idempotency key
    device_id    TEXT NOT NULL,
    event_type   TEXT NOT NULL,
    entity_type  TEXT NOT NULL,
    entity_key   TEXT NOT NULL,
    payload      TEXT NOT NULL,             -- JSON
    vector_clock TEXT NOT NULL,             -- JSON
    created_at   TEXT NOT NULL,             -- as the device wrote it
    received_at  INTEGER NOT NULL,          -- unix seconds; pruning goes by it
    digest       TEXT NOT NULL              -- sha256 of the canonical event JSON: same ULID, same event?
);
CREATE INDEX events_received ON events(received_at);

-- The merged current state of each entity: the winner's fields and the merge state.
CREATE TABLE entities (
    entity_key    TEXT PRIMARY KEY,
    entity_type   TEXT NOT NULL,
    event_ulid    TEXT NOT NULL,            -- the winning event
    device_id     TEXT NOT NULL,
    event_type    TEXT NOT NULL,
    payload       TEXT NOT NULL,            -- JSON; {} for a tombstone
    vector_clock  TEXT NOT NULL,            -- the winner's clock
    created_at    TEXT NOT NULL,
    deleted_at    TEXT,                     -- NULL unless the winner is a tombstone
    seen_vc       TEXT NOT NULL,            -- pointwise max of every applied clock
    siblings      TEXT NOT NULL,            -- versions no applied version dominates (JSON)
    updated_at    INTEGER NOT NULL
) WITHOUT ROWID;

-- Open conflicts, derived from entities.siblings on every apply.
CREATE TABLE conflicts (
    entity_key   TEXT NOT NULL,
    event_ulid   TEXT NOT NULL,
    device_id    TEXT NOT NULL,
    vector_clock TEXT NOT NULL,
    deleted      INTEGER NOT NULL,
    sha256       TEXT,
    bytes        INTEGER,
    mtime_unix   INTEGER,
    created_at   TEXT,
    PRIMARY KEY (entity_key, event_ulid)
) WITHOUT ROWID;

CREATE TABLE device_webhooks (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id   TEXT NOT NULL UNIQUE,
    webhook_url TEXT NOT NULL,
    secret      TEXT NOT NULL,
    active      INTEGER NOT NULL DEFAULT 1,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

-- pruned_through: every event up to this id was pruned.
CREATE TABLE brain_meta (
    k TEXT PRIMARY KEY,
    v INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO brain_meta (k, v) VALUES ('pruned_through', 0);

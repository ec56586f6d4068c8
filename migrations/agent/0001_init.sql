-- lib-agent local store, schema 1.
-- Table and column names are LIB v1.0/v1.1's, so existing tools and queries keep working.
-- Tables that an older LIB database already has were adopted (missing columns added) before this
-- file runs, hence IF NOT EXISTS everywhere.

-- The shared view: the converged winner of every entity.
CREATE TABLE IF NOT EXISTS lib_files (
    id           INTEGER PRIMARY KEY,          -- stable rowid for the FTS index (VACUUM keeps it)
    path         TEXT NOT NULL UNIQUE,         -- the entity key: <library>/<relative path>
    sha256       TEXT,
    bytes        INTEGER,
    mtime_unix   INTEGER,
    ext          TEXT,
    mime         TEXT,
    content      TEXT,
    deleted_at   TEXT,                         -- NULL unless the winner is a tombstone
    indexed_at   TEXT,
    event_ulid   TEXT,                         -- the winning event
    device_id    TEXT,                         -- the winning event's origin device
    vector_clock TEXT,                         -- the winning event's clock (JSON)
    seen_vc      TEXT,                         -- pointwise max of every applied clock (JSON)
    siblings     TEXT                          -- versions no applied version dominates (JSON)
);

-- Search over path and content of live files. External content: the text is stored once, in
-- lib_files. The agent writes the index itself, statement by statement: FTS5 flushes its pending
-- terms to disk at every statement savepoint, which a trigger would open for each row (measured:
-- 3x slower indexing).
CREATE VIRTUAL TABLE IF NOT EXISTS lib_files_fts USING fts5(
    path, content, content='lib_files', content_rowid='id'
);

-- What this device last saw on its own disk. Change detection compares the disk to this, never to
-- the shared view (two devices holding different bytes would otherwise overwrite each other forever).
CREATE TABLE IF NOT EXISTS lib_observed (
    path        TEXT PRIMARY KEY,              -- the entity key
    bytes       INTEGER NOT NULL,
    mtime_ns    INTEGER NOT NULL,
    inode       INTEGER NOT NULL,
    sha256      TEXT NOT NULL,
    observed_at TEXT NOT NULL
) WITHOUT ROWID;

-- Open conflicts: siblings that lost to the winner with other bytes. Derived from lib_files.siblings
-- on every apply, so every replica lists the same ones.
CREATE TABLE IF NOT EXISTS lib_conflicts (
    path         TEXT NOT NULL,
    event_ulid   TEXT NOT NULL,
    device_id    TEXT NOT NULL,
    vector_clock TEXT NOT NULL,
    deleted      INTEGER NOT NULL,
    sha256       TEXT,
    bytes        INTEGER,
    mtime_unix   INTEGER,
    created_at   TEXT,
    PRIMARY KEY (path, event_ulid)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS lib_runs (
    id              INTEGER PRIMARY KEY,
    started_at      TEXT,
    ended_at        TEXT,
    library         TEXT,                      -- NULL: every library
    status          TEXT,                      -- running | ok | partial | failed
    files_seen      INTEGER DEFAULT 0,
    files_hashed    INTEGER DEFAULT 0,
    files_unchanged INTEGER DEFAULT 0,
    files_upserted  INTEGER DEFAULT 0,
    files_deleted   INTEGER DEFAULT 0,
    bytes_hashed    INTEGER DEFAULT 0,
    errors          INTEGER DEFAULT 0,
    message         TEXT
);

CREATE TABLE IF NOT EXISTS lib_device (
    device_id  TEXT PRIMARY KEY,
    sequence   INTEGER NOT NULL DEFAULT 0,
    created_at TEXT
);

CREATE TABLE IF NOT EXISTS lib_outbox (
    id           INTEGER PRIMARY KEY,          -- the pusher's order
    device_id    TEXT NOT NULL,
    event_ulid   TEXT NOT NULL UNIQUE,
    event_type   TEXT NOT NULL,
    entity_type  TEXT NOT NULL,
    entity_key   TEXT NOT NULL,
    payload_json TEXT NOT NULL,
    vector_clock TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    pushed_at    TEXT,
    parked_at    TEXT,                         -- the brain refused it: kept aside, not retried
    parked_error TEXT                          -- and why
);
-- Only what the pusher reads: the backlog in id order. (LIB's indexes on created_at and device_id
-- served no query here and cost two b-tree writes per event.)
CREATE INDEX IF NOT EXISTS idx_outbox_pending ON lib_outbox(id) WHERE pushed_at IS NULL;

CREATE TABLE IF NOT EXISTS lib_inbox (
    id           INTEGER PRIMARY KEY,
    source_id    INTEGER,                      -- the brain's event id
    device_id    TEXT NOT NULL,
    event_ulid   TEXT NOT NULL UNIQUE,
    event_type   TEXT NOT NULL,
    entity_type  TEXT NOT NULL,
    entity_key   TEXT NOT NULL,
    payload_json TEXT NOT NULL,
    vector_clock TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    applied_at   TEXT
);
CREATE INDEX IF NOT EXISTS idx_inbox_applied ON lib_inbox(applied_at);
CREATE INDEX IF NOT EXISTS idx_inbox_created ON lib_inbox(created_at);
CREATE INDEX IF NOT EXISTS idx_inbox_source ON lib_inbox(source_id);

CREATE TABLE IF NOT EXISTS lib_kv (
    k TEXT PRIMARY KEY,
    v TEXT
);

-- lib-agent local store, schema 2.
-- The winning event's creation time. With it, the winner's own columns describe its version
-- whole, so an entity whose only sibling is its winner (nearly every file) keeps `seen_vc` and
-- `siblings` NULL instead of a JSON copy of that version: both then derive from the winner's
-- columns (one maximal version means every applied clock is at or below the winner's).
-- Rows written before keep their JSON, which stays authoritative wherever it is present.
ALTER TABLE lib_files ADD COLUMN event_created_at TEXT;

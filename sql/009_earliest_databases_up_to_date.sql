-- 002 and 004 were edited after the first versions of the pipeline had applied them (a demo's
-- .pgdata from then among such databases), and a database never runs a recorded file again:
-- bring those databases to what the current files create. On any other database nothing
-- changes. Idempotent.

-- The sync log: columns 002 gained (a sync writes all three). Rows logged before they existed
-- get 0: not recorded; normaliser_version 0 is older than any version, so those days are
-- re-derived on their next sync.
ALTER TABLE group_call_sync_log ADD COLUMN IF NOT EXISTS normaliser_version integer NOT NULL DEFAULT 0;
ALTER TABLE group_call_sync_log ALTER COLUMN normaliser_version DROP DEFAULT;
ALTER TABLE group_call_sync_log ADD COLUMN IF NOT EXISTS open_before integer NOT NULL DEFAULT 0;
ALTER TABLE group_call_sync_log ALTER COLUMN open_before DROP DEFAULT;
ALTER TABLE group_call_sync_log ADD COLUMN IF NOT EXISTS became_final integer NOT NULL DEFAULT 0;
ALTER TABLE group_call_sync_log ALTER COLUMN became_final DROP DEFAULT;

COMMENT ON COLUMN group_call_sync_log.normaliser_version IS
    'Version of the pipeline''s parsing rules; a newer one rewrites the day''s rows on its next sync.';
COMMENT ON COLUMN group_call_sync_log.open_before IS
    'Tasks of the day that were stored as in progress before this sync (the ones it refreshed).';
COMMENT ON COLUMN group_call_sync_log.became_final IS 'Of those, tasks this sync found final (2, 3, 4).';
COMMENT ON COLUMN group_call_sync_log.unchanged IS
    'Tasks re-read unchanged (their rows were not touched; records identical to the stored raw are not even re-parsed).';

-- The fingerprints: keyed by task only since (the day comes from group_call_tasks).
DROP INDEX IF EXISTS group_call_task_fingerprints_date_idx;
ALTER TABLE group_call_task_fingerprints DROP COLUMN IF EXISTS created_date;
COMMENT ON TABLE group_call_task_fingerprints IS
    'Internal to the pipeline: a 128-bit BLAKE2b hash of each task''s record as last written, so '
    're-syncs of a day whose pages changed skip its unchanged records cheaply. Safe to truncate '
    '(the next sync of a changed day re-parses all of that day''s records).';
COMMENT ON COLUMN group_call_task_fingerprints.task_id IS 'The task (group_call_tasks.task_id).';
COMMENT ON COLUMN group_call_task_fingerprints.fingerprint IS 'BLAKE2b-128 of the record''s JSON as received.';

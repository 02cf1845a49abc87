-- What a day's sync read and left, so that a re-sync of a day whose API pages are byte for byte
-- the same skips its records unread. Idempotent.

ALTER TABLE group_call_sync_log ADD COLUMN IF NOT EXISTS window_digest bytea;
ALTER TABLE group_call_sync_log ADD COLUMN IF NOT EXISTS partition_rows integer;

COMMENT ON COLUMN group_call_sync_log.window_digest IS
    'SHA-256 over the bodies of the API pages this sync read for the window (internal: a re-sync '
    'finding the same digest, time zone and parsing rules, and partition_rows rows still there, '
    'has nothing to parse or write). NULL before it was recorded.';
COMMENT ON COLUMN group_call_sync_log.partition_rows IS
    'Rows of group_call_tasks with this created_date after the sync. NULL before it was recorded.';

COMMENT ON TABLE group_call_task_fingerprints IS
    'Internal to the pipeline: a 128-bit BLAKE2b hash of each task''s record as last written, so '
    're-syncs of a day whose pages changed skip its unchanged records cheaply. Safe to truncate '
    '(the next sync of a changed day re-parses all of that day''s records).';

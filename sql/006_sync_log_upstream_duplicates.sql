-- Rows the API listed twice for a window (the same taskId on two pages, or twice on one), so
-- that a day's stored rows are compared with what it really holds: api_total less the repeats.
-- Idempotent.

ALTER TABLE group_call_sync_log
    ADD COLUMN IF NOT EXISTS upstream_duplicates integer NOT NULL DEFAULT 0;

COMMENT ON COLUMN group_call_sync_log.upstream_duplicates IS
    'Rows the API listed more than once in the window (same taskId): counted in api_total, stored '
    'once. The day holds api_total - upstream_duplicates tasks. 0 before it was recorded.';

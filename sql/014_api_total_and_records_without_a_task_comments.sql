-- What 010 said the day holds of the API's total left out a record without a usable taskId:
-- the API counts it, the day holds no row for it (it is kept whole in group_call_task_rejects).
-- Comments only. Idempotent.

COMMENT ON COLUMN group_call_sync_log.api_total IS
    'Rows the API reported for the window (its total): a task listed twice counts twice, and a '
    'record without a usable taskId once (kept whole in group_call_task_rejects, no row). The day '
    'holds api_total - upstream_duplicates tasks, less one for each such record.';
COMMENT ON COLUMN group_call_sync_log.upstream_duplicates IS
    'Rows the API listed more than once in the window (same taskId): counted in api_total, stored '
    'once. The day holds api_total - upstream_duplicates tasks, less one for each record without a '
    'usable taskId (see api_total). 0 before it was recorded.';
COMMENT ON COLUMN group_call_sync_status.api_total IS
    'Rows the API reported then: a task it listed twice counts twice (how many did is '
    'group_call_sync_log.upstream_duplicates), and a record without a usable taskId once (no row: '
    'kept whole in group_call_task_rejects); the day held api_total - upstream_duplicates tasks, '
    'less one for each such record.';

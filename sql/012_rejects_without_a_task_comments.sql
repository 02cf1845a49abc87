-- What a record without a usable taskId leaves, as the comments now say: it is no row and not
-- among a sync's received tasks (it is a reject kept whole), and its reject is never resolved
-- (there is no task for a later sync to re-read). Comments only. Idempotent.

COMMENT ON COLUMN group_call_sync_log.received IS
    'Distinct tasks received (a record without a usable taskId is not one: it is kept whole in '
    'group_call_task_rejects).';
COMMENT ON COLUMN group_call_task_rejects.resolved_at IS
    'Set when a later sync of the task no longer had this value; NULL while the problem stands. A '
    'record without a usable taskId has no task to re-read: its reject stays NULL even once the API '
    'no longer sends it.';

-- Tasks an earlier pipeline version stored with created_date NULL (their createdTime refused,
-- before 011): put on the day whose window refused it, as a sync now stores them. Their day is
-- re-derived only on its next sync, which a day of final tasks never gets, so until then they
-- were in no day's summary, row count or open-task refresh. Idempotent.

UPDATE group_call_tasks AS t SET created_date = r.window_date
FROM (
    SELECT DISTINCT ON (task_id) task_id, window_date
    FROM group_call_task_rejects
    WHERE field = 'createdTime' AND task_id IS NOT NULL
    ORDER BY task_id, last_seen_at DESC
) AS r
WHERE t.created_date IS NULL AND t.task_id = r.task_id;

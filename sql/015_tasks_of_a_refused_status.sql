-- Tasks whose status the pipeline refused (NULL; the reject is in group_call_task_rejects) are
-- not known to be final: the open-tasks sensor follows them like the open ones, so that the next
-- readable answer is stored. This partial index lets it find them as cheaply (a BitmapOr with
-- group_call_tasks_open_idx). Idempotent.

CREATE INDEX IF NOT EXISTS group_call_tasks_status_refused_idx
    ON group_call_tasks (created_date) WHERE status IS NULL;

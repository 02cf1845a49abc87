-- created_date when createdTime could not be read: the day whose window listed the task (the API
-- selects a day's window by createdTime), no longer NULL. Comment only. Idempotent.

COMMENT ON COLUMN group_call_tasks.created_date IS
    'The account-local calendar date of createdTime; equals the Dagster daily partition key. When '
    'createdTime was refused (created_time NULL, see group_call_task_rejects), the day whose window '
    'the API listed the task in.';

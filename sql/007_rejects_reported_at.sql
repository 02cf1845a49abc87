-- When the no_new_rejects check reported each refused value, so that a value first refused by a
-- sync whose checks never ran (its run failed, or a step retry synced the day again) is still
-- reported by the next check of its day. Idempotent: the column is added once, and the rejects
-- already there when it is (reported by the check as it worked before) count as reported.

ALTER TABLE group_call_task_rejects
    ADD COLUMN IF NOT EXISTS reported_at timestamptz DEFAULT now();
ALTER TABLE group_call_task_rejects ALTER COLUMN reported_at DROP DEFAULT;

COMMENT ON COLUMN group_call_task_rejects.reported_at IS
    'When the no_new_rejects asset check first reported this value; NULL until a check of its day '
    'has run since it was first refused.';

-- Record what was just written for each staged task (see migration 004).
INSERT INTO group_call_task_fingerprints AS f (task_id, created_date, fingerprint)
SELECT task_id, created_date, fingerprint FROM group_call_tasks_stage
ON CONFLICT (task_id) DO UPDATE SET
    created_date = EXCLUDED.created_date,
    fingerprint = EXCLUDED.fingerprint
WHERE (f.created_date, f.fingerprint) IS DISTINCT FROM (EXCLUDED.created_date, EXCLUDED.fingerprint)

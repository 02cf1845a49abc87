-- Record what was just written for each staged task (see migration 004).
INSERT INTO group_call_task_fingerprints AS f (task_id, fingerprint)
SELECT task_id, fingerprint FROM group_call_tasks_stage
ON CONFLICT (task_id) DO UPDATE SET fingerprint = EXCLUDED.fingerprint
WHERE f.fingerprint IS DISTINCT FROM EXCLUDED.fingerprint

-- What the pipeline last wrote for each task, as a hash of the record's JSON: lets a re-sync
-- skip the records that did not change without parsing them or reading `raw` back. Internal:
-- not for BI (no grant to laaffic_reader). Idempotent.

CREATE TABLE IF NOT EXISTS group_call_task_fingerprints (
    task_id      bigint PRIMARY KEY,
    fingerprint  bytea  NOT NULL
);

COMMENT ON TABLE group_call_task_fingerprints IS
    'Internal to the pipeline: a 128-bit BLAKE2b hash of each task''s record as last written, so '
    're-syncs skip unchanged records cheaply. Safe to truncate (the next sync re-parses everything).';
COMMENT ON COLUMN group_call_task_fingerprints.task_id IS 'The task (group_call_tasks.task_id).';
COMMENT ON COLUMN group_call_task_fingerprints.fingerprint IS 'BLAKE2b-128 of the record''s JSON as received.';

-- Values the pipeline could not parse, and one row per synced window. Idempotent.

CREATE TABLE IF NOT EXISTS group_call_task_rejects (
    reject_id     bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id       bigint,
    field         text        NOT NULL,
    raw_value     text,
    error         text        NOT NULL,
    window_date   date        NOT NULL,
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    resolved_at   timestamptz,
    reject_key    text        GENERATED ALWAYS AS (
        md5(coalesce(task_id::text, '') || ':' || field || ':' || coalesce(raw_value, ''))
    ) STORED UNIQUE
);
CREATE INDEX IF NOT EXISTS group_call_task_rejects_window_idx
    ON group_call_task_rejects (window_date);
CREATE INDEX IF NOT EXISTS group_call_task_rejects_task_idx
    ON group_call_task_rejects (task_id);

COMMENT ON TABLE group_call_task_rejects IS
    'API values that could not be parsed. The task row is still written (that column NULL, raw kept); '
    'a record without a usable taskId is kept here whole (field taskId, raw_value = the record).';
COMMENT ON COLUMN group_call_task_rejects.reject_id IS 'Surrogate key.';
COMMENT ON COLUMN group_call_task_rejects.task_id IS 'The task (NULL when the record had no usable taskId).';
COMMENT ON COLUMN group_call_task_rejects.field IS 'The API field name, e.g. groupCallPayFee.';
COMMENT ON COLUMN group_call_task_rejects.raw_value IS 'The value as received (JSON text for non-strings).';
COMMENT ON COLUMN group_call_task_rejects.error IS 'Why it was refused.';
COMMENT ON COLUMN group_call_task_rejects.window_date IS 'The daily partition (account-local date) whose sync saw it.';
COMMENT ON COLUMN group_call_task_rejects.first_seen_at IS 'First sync that saw this value.';
COMMENT ON COLUMN group_call_task_rejects.last_seen_at IS 'Latest sync that saw this value.';
COMMENT ON COLUMN group_call_task_rejects.resolved_at IS
    'Set when a later sync of the task no longer had this value; NULL while the problem stands.';
COMMENT ON COLUMN group_call_task_rejects.reject_key IS 'Deduplication key: md5(task_id:field:raw_value).';

CREATE TABLE IF NOT EXISTS group_call_sync_log (
    sync_id       bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    window_date   date        NOT NULL,
    window_start  timestamp   NOT NULL,
    window_end    timestamp   NOT NULL,
    time_zone     text        NOT NULL,
    normaliser_version integer NOT NULL,
    api_total     integer     NOT NULL,
    pages         integer     NOT NULL,
    requests      integer     NOT NULL,
    retries       integer     NOT NULL,
    received      integer     NOT NULL,
    inserted      integer     NOT NULL,
    updated       integer     NOT NULL,
    unchanged     integer     NOT NULL,
    rejected      integer     NOT NULL,
    new_rejects   integer     NOT NULL,
    open_tasks    integer     NOT NULL,
    open_before   integer     NOT NULL,
    became_final  integer     NOT NULL,
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    run_id        text
);
CREATE INDEX IF NOT EXISTS group_call_sync_log_window_idx
    ON group_call_sync_log (window_date, finished_at DESC);

COMMENT ON TABLE group_call_sync_log IS
    'One row per synced window (daily partition): what the API reported and what the write did. '
    'The latest row per window_date says when that day was last synced.';
COMMENT ON COLUMN group_call_sync_log.sync_id IS 'Surrogate key.';
COMMENT ON COLUMN group_call_sync_log.window_date IS 'The daily partition (account-local date).';
COMMENT ON COLUMN group_call_sync_log.window_start IS 'Window start, account-local time (inclusive).';
COMMENT ON COLUMN group_call_sync_log.window_end IS 'Window end, account-local time (inclusive).';
COMMENT ON COLUMN group_call_sync_log.time_zone IS 'The account time zone the window was read in.';
COMMENT ON COLUMN group_call_sync_log.normaliser_version IS
    'Version of the pipeline''s parsing rules; a newer one rewrites the day''s rows on its next sync.';
COMMENT ON COLUMN group_call_sync_log.api_total IS 'Tasks the API reported for the window.';
COMMENT ON COLUMN group_call_sync_log.pages IS 'Pages read.';
COMMENT ON COLUMN group_call_sync_log.requests IS 'HTTP requests made, retries included.';
COMMENT ON COLUMN group_call_sync_log.retries IS 'Requests repeated after a transient failure or a re-sign.';
COMMENT ON COLUMN group_call_sync_log.received IS 'Distinct records received.';
COMMENT ON COLUMN group_call_sync_log.inserted IS 'Tasks new to the table.';
COMMENT ON COLUMN group_call_sync_log.updated IS 'Tasks whose data changed.';
COMMENT ON COLUMN group_call_sync_log.unchanged IS
    'Tasks re-read unchanged (their rows were not touched; records identical to the stored raw are not even re-parsed).';
COMMENT ON COLUMN group_call_sync_log.rejected IS 'Values refused in this sync (see group_call_task_rejects).';
COMMENT ON COLUMN group_call_sync_log.new_rejects IS 'Of those, values not seen by an earlier sync.';
COMMENT ON COLUMN group_call_sync_log.open_tasks IS 'Tasks still in progress (status 0, 1, 5, 6) after this sync.';
COMMENT ON COLUMN group_call_sync_log.open_before IS
    'Tasks of the day that were stored as in progress before this sync (the ones it refreshed).';
COMMENT ON COLUMN group_call_sync_log.became_final IS 'Of those, tasks this sync found final (2, 3, 4).';
COMMENT ON COLUMN group_call_sync_log.started_at IS 'When the sync of this window started.';
COMMENT ON COLUMN group_call_sync_log.finished_at IS 'When its transaction wrote this row.';
COMMENT ON COLUMN group_call_sync_log.run_id IS 'The Dagster run that synced it.';

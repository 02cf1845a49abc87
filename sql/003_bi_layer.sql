-- The BI layer: status labels, a daily rollup, sync status, and a read-only role. Idempotent.

CREATE TABLE IF NOT EXISTS group_call_task_statuses (
    status   smallint PRIMARY KEY,
    label    text     NOT NULL,
    is_final boolean  NOT NULL
);
INSERT INTO group_call_task_statuses (status, label, is_final) VALUES
    (0, 'waiting to submit', false),
    (1, 'calling', false),
    (2, 'finished', true),
    (3, 'submission failed', true),
    (4, 'canceled', true),
    (5, 'suspended', false),
    (6, 'submitting', false)
ON CONFLICT (status) DO UPDATE SET label = EXCLUDED.label, is_final = EXCLUDED.is_final;

COMMENT ON TABLE group_call_task_statuses IS 'Labels for group_call_tasks.status; join on status.';
COMMENT ON COLUMN group_call_task_statuses.status IS 'The status code as in group_call_tasks.status.';
COMMENT ON COLUMN group_call_task_statuses.label IS 'Its documented meaning.';
COMMENT ON COLUMN group_call_task_statuses.is_final IS
    'True when the task''s figures no longer change (2, 3, 4).';

CREATE OR REPLACE VIEW group_call_daily_summary AS
SELECT
    t.created_date,
    t.task_sum_pay_fee_currency                                        AS currency,
    count(*)                                                           AS tasks,
    count(*) FILTER (WHERE s.is_final IS NOT TRUE)                     AS open_tasks,
    sum(t.num_cnt)                                                     AS numbers,
    sum(t.call_num)                                                    AS calls,
    sum(t.answered_num)                                                AS answered,
    round(100.0 * sum(t.answered_num) / nullif(sum(t.call_num), 0), 2) AS answer_rate_pct,
    sum(t.charge_len)                                                  AS billed_call_seconds,
    sum(t.agent_total_feetime)                                         AS billed_agent_seconds,
    sum(t.group_call_pay_fee_amount)                                   AS group_call_spend,
    sum(t.sms_pay_fee_amount)                                          AS sms_spend,
    sum(t.agent_fee_amount)                                            AS agent_spend,
    sum(t.task_sum_pay_fee_amount)                                     AS total_spend
FROM group_call_tasks AS t
LEFT JOIN group_call_task_statuses AS s ON s.status = t.status
GROUP BY t.created_date, t.task_sum_pay_fee_currency;

COMMENT ON VIEW group_call_daily_summary IS
    'Per account-local day and currency: tasks, numbers, calls, answers, billed seconds and spend by fee kind.';
COMMENT ON COLUMN group_call_daily_summary.created_date IS 'Account-local creation date (the partition).';
COMMENT ON COLUMN group_call_daily_summary.currency IS 'The currency of the fees (taskSumPayFee''s).';
COMMENT ON COLUMN group_call_daily_summary.tasks IS 'Tasks created that day.';
COMMENT ON COLUMN group_call_daily_summary.open_tasks IS 'Of those, still in progress (figures may still change).';
COMMENT ON COLUMN group_call_daily_summary.numbers IS 'Sum of numCnt.';
COMMENT ON COLUMN group_call_daily_summary.calls IS 'Sum of callNum.';
COMMENT ON COLUMN group_call_daily_summary.answered IS 'Sum of answeredNum.';
COMMENT ON COLUMN group_call_daily_summary.answer_rate_pct IS 'answered / calls, percent.';
COMMENT ON COLUMN group_call_daily_summary.billed_call_seconds IS 'Sum of chargeLen.';
COMMENT ON COLUMN group_call_daily_summary.billed_agent_seconds IS 'Sum of agentTotalFeetime.';
COMMENT ON COLUMN group_call_daily_summary.group_call_spend IS 'Sum of groupCallPayFee amounts.';
COMMENT ON COLUMN group_call_daily_summary.sms_spend IS 'Sum of smsPayFee amounts.';
COMMENT ON COLUMN group_call_daily_summary.agent_spend IS 'Sum of agentFee amounts.';
COMMENT ON COLUMN group_call_daily_summary.total_spend IS 'Sum of taskSumPayFee amounts.';

CREATE OR REPLACE VIEW group_call_sync_status AS
SELECT DISTINCT ON (window_date)
    window_date, finished_at AS last_synced_at, api_total, inserted, updated, unchanged,
    rejected, open_tasks, run_id
FROM group_call_sync_log
ORDER BY window_date, finished_at DESC;

COMMENT ON VIEW group_call_sync_status IS 'Per day: when it was last synced and what that sync found.';
COMMENT ON COLUMN group_call_sync_status.window_date IS 'The daily partition (account-local date).';
COMMENT ON COLUMN group_call_sync_status.last_synced_at IS 'When the latest sync of the day committed.';
COMMENT ON COLUMN group_call_sync_status.api_total IS 'Tasks the API reported then.';
COMMENT ON COLUMN group_call_sync_status.inserted IS 'Tasks new in that sync.';
COMMENT ON COLUMN group_call_sync_status.updated IS 'Tasks changed in that sync.';
COMMENT ON COLUMN group_call_sync_status.unchanged IS 'Tasks unchanged in that sync.';
COMMENT ON COLUMN group_call_sync_status.rejected IS 'Values refused in that sync.';
COMMENT ON COLUMN group_call_sync_status.open_tasks IS 'Tasks still in progress after that sync.';
COMMENT ON COLUMN group_call_sync_status.run_id IS 'The Dagster run.';

-- Read-only role for BI tools: grant it to a login role (GRANT laaffic_reader TO metabase;).
-- Creating roles needs CREATEROLE; without it the role is left to a DBA and a notice says so.
-- Roles belong to the server, not the database: a migration of another database on the same
-- server may create it at the same moment (the advisory lock is per database); then this one
-- finds it created (unique_violation, or duplicate_object once the other has committed).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'laaffic_reader') THEN
        CREATE ROLE laaffic_reader NOLOGIN;
    END IF;
EXCEPTION
    WHEN insufficient_privilege THEN
        RAISE NOTICE 'cannot create role laaffic_reader (no CREATEROLE); ask a DBA to create it';
    WHEN unique_violation OR duplicate_object THEN
        NULL;  -- created concurrently by another database's migration: granted to below
END
$$;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'laaffic_reader') THEN
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO laaffic_reader', current_schema());
        GRANT SELECT ON group_call_tasks, group_call_task_statuses, group_call_task_rejects,
            group_call_sync_log, group_call_daily_summary, group_call_sync_status TO laaffic_reader;
    END IF;
END
$$;

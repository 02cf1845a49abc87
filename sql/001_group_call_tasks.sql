-- One row per LAAFFIC AI-Agent group-call task: the table BI tools read.
-- Idempotent: safe to run again. Column names are a contract with analysts; keep them.

CREATE TABLE IF NOT EXISTS group_call_tasks (
    task_id                      bigint        PRIMARY KEY,
    task_name                    text,
    status                       smallint,
    rate                         numeric,
    num_cnt                      integer,
    call_num                     integer,
    success                      integer,
    fail                         integer,
    answered_num                 integer,
    send_sms_num                 integer,
    created_time                 timestamptz,
    created_date                 date,
    script_id                    integer,
    task_type                    smallint,
    asr                          numeric,
    agent_total_feetime          integer,
    charge_len                   integer,
    agent_fee_amount             numeric(20, 6),
    acd_seconds                  numeric,
    group_call_pay_fee_amount    numeric(20, 6),
    group_call_pay_fee_currency  char(3),
    sms_pay_fee_amount           numeric(20, 6),
    sms_pay_fee_currency         char(3),
    task_sum_pay_fee_amount      numeric(20, 6),
    task_sum_pay_fee_currency    char(3),
    raw                          jsonb         NOT NULL,
    first_seen_at                timestamptz   NOT NULL DEFAULT now(),
    last_changed_at              timestamptz   NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS group_call_tasks_created_date_idx
    ON group_call_tasks (created_date);
-- The in-progress tasks (status 0, 1, 5, 6) that later syncs must revisit.
CREATE INDEX IF NOT EXISTS group_call_tasks_open_idx
    ON group_call_tasks (created_date) WHERE status IN (0, 1, 5, 6);

COMMENT ON TABLE group_call_tasks IS
    'LAAFFIC AI-Agent group-call tasks (taskType 3), one row per task, synced daily by the '
    'Dagster asset group_call_tasks. Rows are upserted and only rewritten when the task changed.';
COMMENT ON COLUMN group_call_tasks.task_id IS 'taskId: the task''s ID at LAAFFIC.';
COMMENT ON COLUMN group_call_tasks.task_name IS 'taskName: the task''s name as entered.';
COMMENT ON COLUMN group_call_tasks.status IS
    'status: 0 waiting to submit, 1 calling, 2 finished, 3 submission failed, 4 canceled, '
    '5 suspended, 6 submitting (labels: group_call_task_statuses). 2, 3, 4 are final.';
COMMENT ON COLUMN group_call_tasks.rate IS 'rate: call progress, percent (0-100).';
COMMENT ON COLUMN group_call_tasks.num_cnt IS 'numCnt: phone numbers in the task.';
COMMENT ON COLUMN group_call_tasks.call_num IS 'callNum: numbers called so far.';
COMMENT ON COLUMN group_call_tasks.success IS 'success: successful calls.';
COMMENT ON COLUMN group_call_tasks.fail IS 'fail: failed calls.';
COMMENT ON COLUMN group_call_tasks.answered_num IS 'answeredNum: answered calls.';
COMMENT ON COLUMN group_call_tasks.send_sms_num IS 'sendSmsNum: hang-up SMS sent.';
COMMENT ON COLUMN group_call_tasks.created_time IS
    'createdTime: when the task was submitted, read in the account''s time zone (LAAFFIC_TIMEZONE).';
COMMENT ON COLUMN group_call_tasks.created_date IS
    'The account-local calendar date of createdTime; equals the Dagster daily partition key.';
COMMENT ON COLUMN group_call_tasks.script_id IS 'scriptId: AI Agent template ID (may be NULL).';
COMMENT ON COLUMN group_call_tasks.task_type IS 'taskType: always 3 (AI Agent group call).';
COMMENT ON COLUMN group_call_tasks.asr IS 'asr: answer rate, percent (0-100).';
COMMENT ON COLUMN group_call_tasks.agent_total_feetime IS 'agentTotalFeetime: AI Agent billed duration, seconds.';
COMMENT ON COLUMN group_call_tasks.charge_len IS 'chargeLen: billed call duration, seconds.';
COMMENT ON COLUMN group_call_tasks.agent_fee_amount IS
    'agentFee: AI Agent consumption, exact, in the account''s quote currency (the currency of the other fees).';
COMMENT ON COLUMN group_call_tasks.acd_seconds IS 'acd: average call duration, seconds ("60s" -> 60).';
COMMENT ON COLUMN group_call_tasks.group_call_pay_fee_amount IS 'groupCallPayFee: group-call consumption, exact amount.';
COMMENT ON COLUMN group_call_tasks.group_call_pay_fee_currency IS 'groupCallPayFee: ISO 4217 currency (USD, EUR).';
COMMENT ON COLUMN group_call_tasks.sms_pay_fee_amount IS 'smsPayFee: hang-up SMS consumption, exact amount.';
COMMENT ON COLUMN group_call_tasks.sms_pay_fee_currency IS 'smsPayFee: ISO 4217 currency.';
COMMENT ON COLUMN group_call_tasks.task_sum_pay_fee_amount IS
    'taskSumPayFee: task total consumption, exact (= group call + SMS + agent fee).';
COMMENT ON COLUMN group_call_tasks.task_sum_pay_fee_currency IS 'taskSumPayFee: ISO 4217 currency.';
COMMENT ON COLUMN group_call_tasks.raw IS 'The record exactly as the API returned it (all fields, unknown ones too).';
COMMENT ON COLUMN group_call_tasks.first_seen_at IS 'When the pipeline first wrote this task.';
COMMENT ON COLUMN group_call_tasks.last_changed_at IS
    'When the task''s data last really changed (a re-sync of an unchanged task does not touch the row).';

-- The daily summary when a value was refused (NULL in its column, see group_call_task_rejects):
-- a task whose taskSumPayFee was refused is still counted under its currency (that of its other
-- fees), each fee is summed only under its own currency, the answer rate only over tasks whose
-- callNum and answeredNum are both known, and a task with an unknown status is not "open" (as
-- everywhere else in the pipeline). Same columns as before. Idempotent.

CREATE OR REPLACE VIEW group_call_daily_summary AS
WITH tasks AS (
    SELECT t.*,
           coalesce(t.task_sum_pay_fee_currency, t.group_call_pay_fee_currency,
                    t.sms_pay_fee_currency) AS currency,
           s.is_final
    FROM group_call_tasks AS t
    LEFT JOIN group_call_task_statuses AS s ON s.status = t.status
)
SELECT
    created_date,
    currency,
    count(*)                                                           AS tasks,
    count(*) FILTER (WHERE is_final = false)                           AS open_tasks,
    sum(num_cnt)                                                       AS numbers,
    sum(call_num)                                                      AS calls,
    sum(answered_num)                                                  AS answered,
    round(100.0 * sum(answered_num) FILTER (WHERE call_num IS NOT NULL)
          / nullif(sum(call_num) FILTER (WHERE answered_num IS NOT NULL), 0), 2)
                                                                       AS answer_rate_pct,
    sum(charge_len)                                                    AS billed_call_seconds,
    sum(agent_total_feetime)                                           AS billed_agent_seconds,
    sum(group_call_pay_fee_amount)
        FILTER (WHERE group_call_pay_fee_currency = currency)          AS group_call_spend,
    sum(sms_pay_fee_amount) FILTER (WHERE sms_pay_fee_currency = currency) AS sms_spend,
    sum(agent_fee_amount)                                              AS agent_spend,
    sum(task_sum_pay_fee_amount)
        FILTER (WHERE task_sum_pay_fee_currency = currency)            AS total_spend
FROM tasks
GROUP BY created_date, currency;

COMMENT ON VIEW group_call_daily_summary IS
    'Per account-local day and currency: tasks, numbers, calls, answers, billed seconds and spend by '
    'fee kind. A refused value (see group_call_task_rejects) is left out of its sum, so the fee sums '
    'may then not add up to total_spend.';
COMMENT ON COLUMN group_call_daily_summary.currency IS
    'The task''s currency: taskSumPayFee''s, else that of its other fees (when taskSumPayFee was refused).';
COMMENT ON COLUMN group_call_daily_summary.open_tasks IS
    'Of those, still in progress (status 0, 1, 5 or 6: figures may still change).';
COMMENT ON COLUMN group_call_daily_summary.answer_rate_pct IS
    'answered / calls, percent, over the tasks whose callNum and answeredNum are both known.';
COMMENT ON COLUMN group_call_daily_summary.group_call_spend IS
    'Sum of groupCallPayFee amounts in this currency.';
COMMENT ON COLUMN group_call_daily_summary.sms_spend IS 'Sum of smsPayFee amounts in this currency.';
COMMENT ON COLUMN group_call_daily_summary.agent_spend IS
    'Sum of agentFee amounts (no currency marker: the account''s quote currency, the task''s).';
COMMENT ON COLUMN group_call_daily_summary.total_spend IS 'Sum of taskSumPayFee amounts in this currency.';

COMMENT ON COLUMN group_call_sync_status.rejected IS
    'Values refused among the records that sync parsed (0 when the day''s pages were unchanged and '
    'nothing was parsed); group_call_task_rejects holds those still standing (resolved_at NULL).';
COMMENT ON COLUMN group_call_task_rejects.last_seen_at IS
    'Latest sync that parsed the record and refused this value (a sync that finds the record '
    'unchanged does not parse it again).';

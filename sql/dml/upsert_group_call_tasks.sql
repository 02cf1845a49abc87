-- Merge the staged window into group_call_tasks. A row is rewritten only when something in it
-- really changed, so re-syncing unchanged tasks creates no row versions (xmin stays).
-- created_local is read in the transaction's TimeZone, set to the account's IANA zone by the
-- writer (not `AT TIME ZONE`, which takes 'CET', 'EET', 'MET', 'WET' as fixed-offset abbreviations).
WITH merged AS (
    INSERT INTO group_call_tasks AS t (
        task_id, task_name, status, rate, num_cnt, call_num, success, fail, answered_num,
        send_sms_num, created_time, created_date, script_id, task_type, asr,
        agent_total_feetime, charge_len, agent_fee_amount, acd_seconds,
        group_call_pay_fee_amount, group_call_pay_fee_currency,
        sms_pay_fee_amount, sms_pay_fee_currency,
        task_sum_pay_fee_amount, task_sum_pay_fee_currency, raw
    )
    SELECT
        task_id, task_name, status, rate, num_cnt, call_num, success, fail, answered_num,
        send_sms_num, created_local::timestamptz, created_date, script_id,
        task_type, asr, agent_total_feetime, charge_len, agent_fee_amount, acd_seconds,
        group_call_pay_fee_amount, group_call_pay_fee_currency,
        sms_pay_fee_amount, sms_pay_fee_currency,
        task_sum_pay_fee_amount, task_sum_pay_fee_currency, raw
    FROM group_call_tasks_stage
    ON CONFLICT (task_id) DO UPDATE SET
        task_name = EXCLUDED.task_name,
        status = EXCLUDED.status,
        rate = EXCLUDED.rate,
        num_cnt = EXCLUDED.num_cnt,
        call_num = EXCLUDED.call_num,
        success = EXCLUDED.success,
        fail = EXCLUDED.fail,
        answered_num = EXCLUDED.answered_num,
        send_sms_num = EXCLUDED.send_sms_num,
        created_time = EXCLUDED.created_time,
        created_date = EXCLUDED.created_date,
        script_id = EXCLUDED.script_id,
        task_type = EXCLUDED.task_type,
        asr = EXCLUDED.asr,
        agent_total_feetime = EXCLUDED.agent_total_feetime,
        charge_len = EXCLUDED.charge_len,
        agent_fee_amount = EXCLUDED.agent_fee_amount,
        acd_seconds = EXCLUDED.acd_seconds,
        group_call_pay_fee_amount = EXCLUDED.group_call_pay_fee_amount,
        group_call_pay_fee_currency = EXCLUDED.group_call_pay_fee_currency,
        sms_pay_fee_amount = EXCLUDED.sms_pay_fee_amount,
        sms_pay_fee_currency = EXCLUDED.sms_pay_fee_currency,
        task_sum_pay_fee_amount = EXCLUDED.task_sum_pay_fee_amount,
        task_sum_pay_fee_currency = EXCLUDED.task_sum_pay_fee_currency,
        raw = EXCLUDED.raw,
        last_changed_at = now()
    WHERE (
        t.task_name, t.status, t.rate, t.num_cnt, t.call_num, t.success, t.fail,
        t.answered_num, t.send_sms_num, t.created_time, t.created_date, t.script_id,
        t.task_type, t.asr, t.agent_total_feetime, t.charge_len, t.agent_fee_amount,
        t.acd_seconds, t.group_call_pay_fee_amount, t.group_call_pay_fee_currency,
        t.sms_pay_fee_amount, t.sms_pay_fee_currency, t.task_sum_pay_fee_amount,
        t.task_sum_pay_fee_currency, t.raw
    ) IS DISTINCT FROM (
        EXCLUDED.task_name, EXCLUDED.status, EXCLUDED.rate, EXCLUDED.num_cnt,
        EXCLUDED.call_num, EXCLUDED.success, EXCLUDED.fail, EXCLUDED.answered_num,
        EXCLUDED.send_sms_num, EXCLUDED.created_time, EXCLUDED.created_date,
        EXCLUDED.script_id, EXCLUDED.task_type, EXCLUDED.asr, EXCLUDED.agent_total_feetime,
        EXCLUDED.charge_len, EXCLUDED.agent_fee_amount, EXCLUDED.acd_seconds,
        EXCLUDED.group_call_pay_fee_amount, EXCLUDED.group_call_pay_fee_currency,
        EXCLUDED.sms_pay_fee_amount, EXCLUDED.sms_pay_fee_currency,
        EXCLUDED.task_sum_pay_fee_amount, EXCLUDED.task_sum_pay_fee_currency, EXCLUDED.raw
    )
    RETURNING (xmax = 0) AS inserted
)
SELECT
    count(*) FILTER (WHERE inserted)     AS inserted,
    count(*) FILTER (WHERE NOT inserted) AS updated
FROM merged

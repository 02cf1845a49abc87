-- What the BI comments left unsaid: api_total is the API's total, in which a task listed twice
-- counts twice, and the daily summary sums a fee only under its task's currency, so a fee in
-- another currency than its task's (an API anomaly task_invariants_hold reports) is in no sum.
-- Comments only. Idempotent.

COMMENT ON COLUMN group_call_sync_log.api_total IS
    'Rows the API reported for the window (its total): a task listed twice counts twice. The day '
    'holds api_total - upstream_duplicates tasks.';
COMMENT ON COLUMN group_call_sync_log.rejected IS
    'Values refused among the records this sync parsed (0 when the day''s pages were unchanged and '
    'nothing was parsed; a record unchanged since the last sync is not parsed again); '
    'group_call_task_rejects holds those still standing (resolved_at NULL).';
COMMENT ON COLUMN group_call_sync_status.api_total IS
    'Rows the API reported then: a task it listed twice counts twice (how many did is '
    'group_call_sync_log.upstream_duplicates; the day held api_total - upstream_duplicates tasks).';
COMMENT ON COLUMN group_call_sync_status.rejected IS
    'Values refused among the records that sync parsed (0 when the day''s pages were unchanged and '
    'nothing was parsed; a record unchanged since the last sync is not parsed again); '
    'group_call_task_rejects holds those still standing (resolved_at NULL).';

COMMENT ON VIEW group_call_daily_summary IS
    'Per account-local day and currency: tasks, numbers, calls, answers, billed seconds and spend by '
    'fee kind. A refused value (see group_call_task_rejects) is left out of its sum, and so is a fee '
    'in another currency than its task''s (task_invariants_hold reports such a task), so the fee '
    'sums may then not add up to total_spend.';
COMMENT ON COLUMN group_call_daily_summary.group_call_spend IS
    'Sum of these tasks'' groupCallPayFee amounts in this currency (one in another currency than '
    'its task''s is in no row).';
COMMENT ON COLUMN group_call_daily_summary.sms_spend IS
    'Sum of these tasks'' smsPayFee amounts in this currency (one in another currency than its '
    'task''s is in no row).';

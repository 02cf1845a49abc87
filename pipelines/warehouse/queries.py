"""Read-side queries behind materialization metadata, asset checks and sensors."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

import psycopg
from psycopg import sql

from pipelines.laaffic.models import FINAL_STATUSES, OPEN_STATUSES

TABLE = "group_call_tasks"

#: A task still in progress / final, as SQL. The values are literals, not parameters: only then
#: can PostgreSQL use the partial index on open tasks (sql/001), whose predicate a migration test
#: keeps equal to IS_OPEN.
IS_OPEN = sql.SQL("status IN ({})").format(
    sql.SQL(", ").join(map(sql.Literal, sorted(OPEN_STATUSES)))
)
IS_FINAL = sql.SQL("status IN ({})").format(
    sql.SQL(", ").join(map(sql.Literal, sorted(FINAL_STATUSES)))
)
#: Not known to be final: open, or a status that was refused (NULL). The sensor follows these: a
#: task whose status was unreadable once must be re-read, not left with that sync's figures.
#: (sql/015 indexes the NULL ones, so this is a BitmapOr of two partial indexes.)
IS_UNSETTLED = sql.SQL("({} OR status IS NULL)").format(IS_OPEN)


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    description: str


def table_columns(conn: psycopg.Connection, table: str = TABLE) -> list[Column]:
    """The table's columns with their SQL types and COMMENTs (the one source of descriptions)."""
    rows = conn.execute(
        """
        SELECT a.attname, format_type(a.atttypid, a.atttypmod),
               coalesce(col_description(a.attrelid, a.attnum), '')
        FROM pg_attribute AS a
        WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum
        """,
        (table,),
    ).fetchall()
    return [Column(*row) for row in rows]


def table_row_count(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT count(*) FROM group_call_tasks").fetchone()
    return int(row[0]) if row else 0


@dataclass(frozen=True)
class SyncedWindow:
    window_date: date
    api_total: int
    run_id: str | None
    upstream_duplicates: int = 0

    @property
    def expected_rows(self) -> int:
        """The tasks the day holds: what the API reported, less the rows it listed twice."""
        return self.api_total - self.upstream_duplicates


def synced_windows(conn: psycopg.Connection, run_id: str | None) -> list[SyncedWindow]:
    """The windows a run synced (its latest sync of each). With no such rows (a check run on its
    own), the latest sync of every day."""
    rows = conn.execute(
        """
        SELECT DISTINCT ON (window_date)
               window_date, api_total, run_id, upstream_duplicates
        FROM group_call_sync_log
        WHERE run_id = %(run_id)s
           OR NOT EXISTS (SELECT 1 FROM group_call_sync_log WHERE run_id = %(run_id)s)
        ORDER BY window_date, finished_at DESC
        """,
        {"run_id": run_id},
    ).fetchall()
    return [SyncedWindow(*row) for row in rows]


def row_count_mismatches(
    conn: psycopg.Connection, windows: list[SyncedWindow]
) -> list[tuple[date, int, int, int]]:
    """(day, API total, rows the API listed twice, rows stored) for each window whose stored
    rows differ from what the API reported (a repeated row is stored once)."""
    if not windows:
        return []
    by_day = {w.window_date: w for w in windows}
    counts: dict[date, int] = dict(
        conn.execute(
            """
            SELECT created_date, count(*) FROM group_call_tasks
            WHERE created_date = ANY(%s) GROUP BY created_date
            """,
            (list(by_day),),
        ).fetchall()
    )
    return [
        (day, w.api_total, w.upstream_duplicates, int(counts.get(day, 0)))
        for day, w in sorted(by_day.items())
        if int(counts.get(day, 0)) != w.expected_rows
    ]


#: A call still ringing has no outcome yet, so only a final task must have success + fail = callNum.
#: A refused value is NULL and breaks no comparison it is in (the rejects check reports it); the
#: currencies are compared pairwise, so that a refused taskSumPayFee does not hide the other two
#: fees disagreeing.
INVARIANTS_SQL = sql.SQL("""
SELECT task_id, created_date, problems FROM (
    SELECT task_id, created_date, array_remove(ARRAY[
        CASE WHEN success + fail > call_num THEN 'success + fail > callNum'
             WHEN success + fail < call_num AND {is_final}
             THEN 'success + fail < callNum on a final task' END,
        CASE WHEN answered_num > call_num THEN 'answeredNum > callNum' END,
        CASE WHEN call_num > num_cnt THEN 'callNum > numCnt' END,
        CASE WHEN task_sum_pay_fee_amount
                  <> group_call_pay_fee_amount + sms_pay_fee_amount + agent_fee_amount
             THEN 'taskSumPayFee <> groupCallPayFee + smsPayFee + agentFee' END,
        CASE WHEN least(group_call_pay_fee_amount, sms_pay_fee_amount, agent_fee_amount,
                        task_sum_pay_fee_amount) < 0 THEN 'negative amount' END,
        CASE WHEN group_call_pay_fee_currency <> task_sum_pay_fee_currency
                  OR sms_pay_fee_currency <> task_sum_pay_fee_currency
                  OR group_call_pay_fee_currency <> sms_pay_fee_currency
             THEN 'fees in different currencies' END
    ], NULL) AS problems
    FROM group_call_tasks
    WHERE created_date = ANY(%s)
) AS checked
WHERE cardinality(problems) > 0
ORDER BY created_date, task_id
""").format(is_final=IS_FINAL)


def invariant_violations(
    conn: psycopg.Connection, days: list[date]
) -> list[tuple[int, date, list[str]]]:
    """(task_id, day, broken invariants) for every stored task of `days` that breaks one."""
    if not days:
        return []
    return [(int(t), d, list(p)) for t, d, p in conn.execute(INVARIANTS_SQL, (days,)).fetchall()]


def report_new_rejects(
    conn: psycopg.Connection, days: list[date], limit: int = 20
) -> tuple[int, list[tuple[int | None, str, str | None, str]]]:
    """How many standing rejects of `days` no check has reported yet, and some examples; marks
    them reported. Not the syncs' own `new_rejects`: a value first refused by a sync whose run
    failed before its checks, or by an attempt a step retry replaced, is still reported here.

    A reject that a write of its day holds (the check is no step of the pool laaffic_api: it
    runs while the next run writes) is left for a later check of the day, that run's own: the
    check waiting for it while the write waited for one the check holds was a deadlock."""
    if not days:
        return 0, []
    rows = conn.execute(
        """
        UPDATE group_call_task_rejects SET reported_at = now()
        WHERE reject_id IN (
            SELECT reject_id FROM group_call_task_rejects
            WHERE window_date = ANY(%s) AND resolved_at IS NULL AND reported_at IS NULL
            FOR UPDATE SKIP LOCKED
        )
        RETURNING task_id, field, left(raw_value, 200), error, first_seen_at, reject_id
        """,
        (days,),
    ).fetchall()
    rows.sort(key=lambda row: (row[4], row[5]), reverse=True)  # the latest first
    return len(rows), [(row[0], row[1], row[2], row[3]) for row in rows[:limit]]


@dataclass(frozen=True)
class OpenDay:
    """A day with stored tasks still in progress, and the latest sync of that day."""

    day: date
    open_tasks: int
    last_sync_id: int | None
    #: when that sync finished: with the id, it tells this warehouse's sync from another's
    last_synced_at: datetime | None = None


def open_task_days(conn: psycopg.Connection, since: date, until: date) -> list[OpenDay]:
    """Days in [since, until] whose stored tasks are not final yet (IS_UNSETTLED).

    Reads the partial indexes on those tasks: the cost follows them, not the history.
    """
    rows = conn.execute(
        sql.SQL(
            """
            SELECT o.created_date, o.open_tasks, l.sync_id, l.finished_at
            FROM (
                SELECT created_date, count(*) AS open_tasks FROM group_call_tasks
                WHERE {unsettled} AND created_date BETWEEN %s AND %s
                GROUP BY created_date
            ) AS o
            LEFT JOIN LATERAL (
                SELECT sync_id, finished_at FROM group_call_sync_log
                WHERE window_date = o.created_date ORDER BY sync_id DESC LIMIT 1
            ) AS l ON true
            ORDER BY o.created_date
            """
        ).format(unsettled=IS_UNSETTLED),
        (since, until),
    ).fetchall()
    return [OpenDay(day, int(count), sync_id, at) for day, count, sync_id, at in rows]


def open_tasks_created_before(
    conn: psycopg.Connection, before: date, limit: int = 20
) -> tuple[int, list[tuple[int, date, int | None]]]:
    """Tasks not final yet (IS_UNSETTLED: the sensor's) that were created before `before`: a
    count and examples (a refused status shows as None)."""
    row = conn.execute(
        sql.SQL(
            "SELECT count(*) FROM group_call_tasks WHERE {unsettled} AND created_date < %s"
        ).format(unsettled=IS_UNSETTLED),
        (before,),
    ).fetchone()
    examples = conn.execute(
        sql.SQL(
            """
            SELECT task_id, created_date, status FROM group_call_tasks
            WHERE {unsettled} AND created_date < %s
            ORDER BY created_date, task_id LIMIT %s
            """
        ).format(unsettled=IS_UNSETTLED),
        (before, limit),
    ).fetchall()
    return (int(row[0]) if row else 0), [
        (int(t), d, None if s is None else int(s)) for t, d, s in examples
    ]

"""The practical limit: the least work that gets the same rows into `group_call_tasks`.

Serial signed POSTs over one `requests.Session`, page by page, day by day; one compiled regex
splits the three fee strings; everything is held in memory, then COPY into a temporary staging
table and one `INSERT … ON CONFLICT (task_id) DO UPDATE` into the project's own table (its
migrations applied, so the target is identical). No validation, no drift protection, no retries,
no Dagster. No raw payload by default: `raw` (NOT NULL in the table) gets an empty `{}`; with
`--raw` each record is re-encoded to JSON and stored there as jsonb, as the pipeline stores it.

`python -m benchmarks.baseline --base-url URL --database-url URL --first-day D --last-day D`
"""

from __future__ import annotations

import json
import re
import sys
import time
from datetime import date, timedelta
from typing import Any

import psycopg
import requests

from benchmarks.contender_cli import contender_parser
from pipelines.laaffic.client import QUERY_PATH, sign
from pipelines.warehouse.migrate import apply_migrations

FEE = re.compile(r"(-?\d+(?:\.\d+)?)\(([A-Z]{3})\)")
NO_FEE = (None, None)

STAGE = """
CREATE TEMP TABLE baseline_stage (
    task_id bigint, task_name text, status smallint, rate numeric, num_cnt integer,
    call_num integer, success integer, fail integer, answered_num integer, send_sms_num integer,
    created_local timestamp, script_id integer, task_type smallint, asr numeric,
    agent_total_feetime integer, charge_len integer, agent_fee_amount numeric(20, 6),
    acd_seconds numeric, group_call_pay_fee_amount numeric(20, 6),
    group_call_pay_fee_currency char(3), sms_pay_fee_amount numeric(20, 6),
    sms_pay_fee_currency char(3), task_sum_pay_fee_amount numeric(20, 6),
    task_sum_pay_fee_currency char(3), raw jsonb
) ON COMMIT DROP
"""
COLUMNS = (
    "task_id, task_name, status, rate, num_cnt, call_num, success, fail, answered_num, "
    "send_sms_num, created_time, created_date, script_id, task_type, asr, agent_total_feetime, "
    "charge_len, agent_fee_amount, acd_seconds, group_call_pay_fee_amount, "
    "group_call_pay_fee_currency, sms_pay_fee_amount, sms_pay_fee_currency, "
    "task_sum_pay_fee_amount, task_sum_pay_fee_currency, raw"
)
UPSERT = (
    f"INSERT INTO group_call_tasks ({COLUMNS}) "
    "SELECT task_id, task_name, status, rate, num_cnt, call_num, success, fail, answered_num, "
    "send_sms_num, created_local AT TIME ZONE %(tz)s, created_local::date, script_id, "
    "task_type, asr, agent_total_feetime, charge_len, agent_fee_amount, acd_seconds, "
    "group_call_pay_fee_amount, group_call_pay_fee_currency, sms_pay_fee_amount, "
    "sms_pay_fee_currency, task_sum_pay_fee_amount, task_sum_pay_fee_currency, "
    "coalesce(raw, '{}') "
    "FROM baseline_stage ON CONFLICT (task_id) DO UPDATE SET "
    + ", ".join(
        f"{column} = EXCLUDED.{column}" for column in COLUMNS.split(", ") if column != "task_id"
    )
    + ", last_changed_at = now()"
)


def fetch_day(
    session: requests.Session, url: str, key: str, secret: str, day: date
) -> list[dict[str, Any]]:
    """Every record of one account-local day, page after page."""
    params = {
        "strTime": f"{day} 00:00:00",
        "endTime": f"{day} 23:59:59",
        "taskType": 3,
        "statusList": [],
    }
    records: list[dict[str, Any]] = []
    page = 1
    while True:
        timestamp = str(int(time.time()))
        response = session.post(
            url,
            json={"current": page, "size": 100, "params": params},
            headers={
                "Content-Type": "application/json;charset=UTF-8",
                "Api-Key": key,
                "Timestamp": timestamp,
                "Sign": sign(key, secret, timestamp),
            },
            timeout=60,
        )
        response.raise_for_status()
        envelope = response.json()
        if str(envelope.get("code")) != "0":
            raise RuntimeError(f"API code {envelope.get('code')}: {envelope.get('msg')}")
        data = envelope["data"]
        records.extend(data["records"])
        if page >= data["pages"]:
            return records
        page += 1


STAGE_COLUMNS = (
    "task_id, task_name, status, rate, num_cnt, call_num, success, fail, answered_num, "
    "send_sms_num, created_local, script_id, task_type, asr, agent_total_feetime, charge_len, "
    "agent_fee_amount, acd_seconds, group_call_pay_fee_amount, group_call_pay_fee_currency, "
    "sms_pay_fee_amount, sms_pay_fee_currency, task_sum_pay_fee_amount, "
    "task_sum_pay_fee_currency"
)


def row(record: dict[str, Any]) -> tuple[Any, ...]:
    match = FEE.fullmatch
    group = match(record["groupCallPayFee"])
    sms = match(record["smsPayFee"])
    total = match(record["taskSumPayFee"])
    acd = record.get("acd")
    return (
        record["taskId"],
        record.get("taskName"),
        record["status"],
        record.get("rate"),
        record["numCnt"],
        record["callNum"],
        record["success"],
        record["fail"],
        record["answeredNum"],
        record["sendSmsNum"],
        record["createdTime"],
        record.get("scriptId"),
        record.get("taskType"),
        record.get("asr"),
        record["agentTotalFeetime"],
        record["chargeLen"],
        record["agentFee"],
        acd[:-1] if acd else None,
        *(group.groups() if group else NO_FEE),
        *(sms.groups() if sms else NO_FEE),
        *(total.groups() if total else NO_FEE),
    )


def row_with_raw(record: dict[str, Any]) -> tuple[Any, ...]:
    return (*row(record), json.dumps(record, ensure_ascii=False, separators=(",", ":")))


def run(
    base_url: str,
    api_key: str,
    api_secret: str,
    database_url: str,
    first_day: date,
    last_day: date,
    time_zone: str = "Asia/Shanghai",
    keep_raw: bool = False,
) -> dict[str, Any]:
    url = base_url.rstrip("/") + QUERY_PATH
    to_row = row_with_raw if keep_raw else row
    rows: list[tuple[Any, ...]] = []
    started = time.perf_counter()
    with requests.Session() as session:
        day = first_day
        while day <= last_day:
            rows.extend(map(to_row, fetch_day(session, url, api_key, api_secret, day)))
            day += timedelta(days=1)
    fetched = time.perf_counter()
    copy_sql = f"COPY baseline_stage ({STAGE_COLUMNS}{', raw' if keep_raw else ''}) FROM STDIN"
    with psycopg.connect(database_url) as conn:
        apply_migrations(conn)
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(STAGE)
            with cur.copy(copy_sql) as copy:
                for values in rows:
                    copy.write_row(values)
            cur.execute(UPSERT, {"tz": time_zone})
            written = cur.rowcount
    loaded = time.perf_counter()
    return {
        "rows": len(rows),
        "written": written,
        "raw": keep_raw,
        "fetch_seconds": round(fetched - started, 3),
        "load_seconds": round(loaded - fetched, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = contender_parser(__doc__)
    parser.add_argument("--time-zone", default="Asia/Shanghai")
    parser.add_argument("--raw", action="store_true", help="store each record as jsonb in raw")
    args = parser.parse_args(argv)
    result = run(
        args.base_url,
        args.api_key,
        args.api_secret,
        args.database_url,
        args.first_day,
        args.last_day,
        args.time_zone,
        args.raw,
    )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

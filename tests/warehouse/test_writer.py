"""The write path on a real PostgreSQL: exact money, change-aware upsert, rejects, sync log, one
transaction per window, and the BI rollup."""

from __future__ import annotations

import copy
import json
import random
import threading
import time
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

import psycopg
import pytest
from psycopg.rows import dict_row

from pipelines.laaffic.client import FetchStats
from pipelines.laaffic.models import OPEN_STATUSES
from pipelines.warehouse.normalise import normalise_records
from pipelines.warehouse.queries import (
    open_task_days,
    report_new_rejects,
    row_count_mismatches,
    synced_windows,
)
from pipelines.warehouse.writer import write_window
from tests.warehouse.helpers import TIME_ZONE, day_window, make_records, write

DAY = date(2024, 6, 4)
FEE_FIELDS = ("groupCallPayFee", "smsPayFee", "taskSumPayFee")


def _dicts(conn: psycopg.Connection, query: str) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query.encode()).fetchall()


def _rows(conn: psycopg.Connection) -> dict[int, dict[str, Any]]:
    """task_id -> the whole stored row, with its row version (xmin)."""
    rows = _dicts(conn, "SELECT xmin::text AS xmin, * FROM group_call_tasks")
    return {row["task_id"]: row for row in rows}


def _sync_log(conn: psycopg.Connection) -> list[dict[str, Any]]:
    return _dicts(conn, "SELECT * FROM group_call_sync_log ORDER BY sync_id")


def _comment(conn: psycopg.Connection, relation: str, column: str | None = None) -> str:
    """The COMMENT a BI tool shows for `relation`, or for its `column`."""
    row = conn.execute(
        "SELECT obj_description(%s::regclass, 'pg_class')"
        if column is None
        else "SELECT col_description(%s::regclass, (SELECT attnum FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attname = %s))",
        (relation,) if column is None else (relation, relation, column),
    ).fetchone()
    return (row[0] if row else None) or ""


def _rejects(conn: psycopg.Connection) -> list[dict[str, Any]]:
    return _dicts(conn, "SELECT * FROM group_call_task_rejects ORDER BY reject_id")


# -- exactness -----------------------------------------------------------------------------------


def test_sum_of_100k_fee_amounts_is_exact(migrated: psycopg.Connection) -> None:
    """100,000 random amounts with 6 places (up to 14 integer digits, where binary floating point
    cannot hold them) go through the normaliser and the staging COPY; Postgres' SUM equals the
    Decimal sum in Python, for every fee column and in the BI rollup."""
    rng = random.Random(20240604)
    templates = make_records(DAY, 50)
    records: list[dict[str, Any]] = []
    amounts: dict[str, list[Decimal]] = {field: [] for field in (*FEE_FIELDS, "agentFee")}
    for n in range(100_000):
        record = dict(templates[n % len(templates)], taskId=10_000_000 + n)
        for field, values in amounts.items():
            magnitude = rng.choice((10**6, 10**12, 10**20))  # cents-ish .. 14 integer digits
            amount = Decimal(rng.randrange(magnitude)).scaleb(-6)
            values.append(amount)
            record[field] = f"{amount}" if field == "agentFee" else f"{amount}(USD)"
        records.append(record)

    result = write(migrated, records, DAY)
    assert (result.inserted, result.rejected) == (100_000, 0)

    sums = migrated.execute(
        """
        SELECT sum(group_call_pay_fee_amount), sum(sms_pay_fee_amount),
               sum(task_sum_pay_fee_amount), sum(agent_fee_amount), count(*)
        FROM group_call_tasks
        """
    ).fetchone()
    expected = tuple(sum(values, Decimal(0)) for values in amounts.values())
    assert sums == (*expected, 100_000)
    # The test can tell: binary floating point gets this sum wrong.
    assert Decimal(sum(float(a) for a in amounts["groupCallPayFee"])) != expected[0]

    rollup = migrated.execute(
        "SELECT group_call_spend, sms_spend, total_spend, agent_spend "
        "FROM group_call_daily_summary WHERE created_date = %s",
        (DAY,),
    ).fetchall()
    assert rollup == [expected]

    stored: dict[int, Decimal] = dict(
        migrated.execute("SELECT task_id, group_call_pay_fee_amount FROM group_call_tasks")
    )
    assert all(
        stored[10_000_000 + n] == amount for n, amount in enumerate(amounts["groupCallPayFee"])
    )


# -- change-aware upsert -------------------------------------------------------------------------


def test_writing_the_same_window_twice_creates_no_row_version(
    migrated: psycopg.Connection,
) -> None:
    records = make_records(DAY, 300)
    records[7]["rate"] = "abc"  # a NULL column compares as unchanged too
    first = write(migrated, records, DAY)
    assert (first.inserted, first.updated, first.unchanged) == (300, 0, 0)
    before = _rows(migrated)

    second = write(migrated, records, DAY)
    assert (second.inserted, second.updated, second.unchanged) == (0, 0, 300)
    assert second.received == 300
    assert _rows(migrated) == before  # xmin of every row unchanged: no new row version

    # The API listing the same record with its keys in another order changes nothing either.
    shuffled = [dict(reversed(list(record.items()))) for record in records]
    third = write(migrated, shuffled, DAY)
    assert (third.inserted, third.updated, third.unchanged) == (0, 0, 300)
    assert _rows(migrated) == before


def test_a_changed_task_is_updated_and_keeps_first_seen(migrated: psycopg.Connection) -> None:
    records = make_records(DAY, 20)
    write(migrated, records, DAY)
    before = _rows(migrated)

    changed = copy.deepcopy(records)
    changed[3].update(numCnt=changed[3]["numCnt"] + 1, taskName="progressed")
    changed[5]["vendorAddedField"] = "x"  # only the raw payload differs: still a change
    new = make_records(DAY, 1, seed=99, first_id=5_000_000)
    result = write(migrated, changed + new, DAY)
    assert (result.inserted, result.updated, result.unchanged) == (1, 2, 18)

    after = _rows(migrated)
    for task_id in (records[3]["taskId"], records[5]["taskId"]):
        assert after[task_id]["xmin"] != before[task_id]["xmin"]  # a new row version
        assert after[task_id]["first_seen_at"] == before[task_id]["first_seen_at"]
        assert after[task_id]["last_changed_at"] > before[task_id]["last_changed_at"]
    moved = after[records[3]["taskId"]]
    assert (moved["num_cnt"], moved["task_name"]) == (changed[3]["numCnt"], "progressed")
    assert moved["raw"] == changed[3]
    assert after[records[5]["taskId"]]["raw"] == changed[5]
    untouched = set(before) - {records[3]["taskId"], records[5]["taskId"]}
    assert all(after[task_id] == before[task_id] for task_id in untouched)
    inserted = after[new[0]["taskId"]]
    assert inserted["first_seen_at"] == inserted["last_changed_at"]


def _changed_in_every_field(record: dict[str, Any]) -> dict[str, Any]:
    """`record` as the API could list it later: every documented field has another value."""
    later = dict(record)
    for field in ("numCnt", "callNum", "success", "fail", "answeredNum", "sendSmsNum"):
        later[field] = record[field] + 1
    for field in ("scriptId", "taskType", "agentTotalFeetime", "chargeLen"):
        later[field] = record[field] + 1
    created = datetime.strptime(record["createdTime"], "%Y-%m-%d %H:%M:%S")
    currency = "EUR" if record["taskSumPayFee"].endswith("(USD)") else "USD"
    later.update(
        taskName=record["taskName"] + " (renamed)",
        status=4 if record["status"] != 4 else 3,
        rate=str(Decimal(record["rate"]) + Decimal("0.5")),
        asr=str(Decimal(record["asr"]) + Decimal("0.5")),
        acd=str(Decimal(record["acd"].removesuffix("s")) + 1) + "s",
        createdTime=(created + timedelta(days=1)).strftime("%Y-%m-%d %H:%M:%S"),
        agentFee=str(Decimal(record["agentFee"]) + Decimal("0.000001")),
    )
    for field in FEE_FIELDS:
        amount = Decimal(record[field][: record[field].index("(")]) + Decimal("0.000001")
        later[field] = f"{amount}({currency})"
    return later


def test_an_update_rewrites_every_column(migrated: psycopg.Connection) -> None:
    """A task the API lists again with every field changed is stored exactly as a task first
    inserted with those values: every column the upsert's SET must carry (money included)."""
    records = make_records(DAY, 5)
    write(migrated, records, DAY)
    before = _rows(migrated)

    changed = _changed_in_every_field(records[2])
    fresh = dict(changed, taskId=9_000_000)  # the same values on a task seen for the first time
    result = write(migrated, [changed, fresh], DAY)
    assert (result.inserted, result.updated, result.rejected) == (1, 1, 0)

    after = _rows(migrated)
    bookkeeping = {"xmin", "task_id", "raw", "first_seen_at", "last_changed_at"}
    columns = sorted(set(after[fresh["taskId"]]) - bookkeeping)
    old, updated, inserted = (
        {c: row[c] for c in columns}
        for row in (before[changed["taskId"]], after[changed["taskId"]], after[fresh["taskId"]])
    )
    # The test can tell: every compared column differs between the old row and the new values.
    assert [c for c in columns if old[c] == inserted[c]] == []
    assert updated == inserted
    assert after[changed["taskId"]]["raw"] == changed


def test_values_land_typed_and_in_the_account_time_zone(migrated: psycopg.Connection) -> None:
    record = make_records(DAY, 1)[0]
    record.update(
        createdTime="2024-06-04 00:00:00",
        rate="66.67",
        asr="80",
        acd="60s",
        agentFee="0.125000",
        groupCallPayFee="0.034827(USD)",
        smsPayFee="0(USD)",
        taskSumPayFee="0.159827(USD)",
        scriptId=None,
    )
    write(migrated, [record], DAY, time_zone="Asia/Shanghai")
    row = migrated.execute(
        """
        SELECT created_time, created_date, rate, asr, acd_seconds, agent_fee_amount,
               group_call_pay_fee_amount, group_call_pay_fee_currency, sms_pay_fee_amount,
               task_sum_pay_fee_amount, script_id, raw
        FROM group_call_tasks
        """
    ).fetchone()
    assert row == (
        datetime(2024, 6, 4, tzinfo=ZoneInfo("Asia/Shanghai")),  # = 2024-06-03 16:00 UTC
        DAY,
        Decimal("66.67"),
        Decimal(80),
        Decimal(60),
        Decimal("0.125"),
        Decimal("0.034827"),
        "USD",
        Decimal(0),
        Decimal("0.159827"),
        None,
        record,
    )


@pytest.mark.parametrize("zone", ["UTC", "America/New_York", "Australia/Adelaide"])
def test_created_time_is_read_in_the_configured_zone(
    migrated: psycopg.Connection, zone: str
) -> None:
    records = make_records(DAY, 30)
    write(migrated, records, DAY, time_zone=zone)
    stored: dict[int, datetime] = dict(
        migrated.execute("SELECT task_id, created_time FROM group_call_tasks")
    )
    for record in records:
        local = datetime.strptime(record["createdTime"], "%Y-%m-%d %H:%M:%S")
        assert stored[record["taskId"]] == local.replace(tzinfo=ZoneInfo(zone))


@pytest.mark.parametrize("first_load", [True, False], ids=["first load", "merge"])
def test_zones_postgres_also_knows_as_abbreviations_keep_their_daylight_saving_time(
    migrated: psycopg.Connection, first_load: bool
) -> None:
    """The IANA zones CET, EET, MET and WET have summer time, and are also PostgreSQL
    abbreviations for fixed offsets, which `AT TIME ZONE` or a zone suffix would take first. Every
    zone that is both must read createdTime as Python's zoneinfo (the partitions' reading) does,
    in winter and in summer, on both write paths."""
    abbreviations = {
        name
        for (name,) in migrated.execute("SELECT upper(abbrev) FROM pg_timezone_abbrevs")
        if name in available_timezones()
    }
    assert {"CET", "EET", "MET", "WET"} <= abbreviations
    for zone in sorted(abbreviations):
        for day in (date(2024, 1, 15), date(2024, 7, 15)):
            migrated.execute("TRUNCATE group_call_tasks, group_call_task_fingerprints")
            migrated.commit()
            records = make_records(day, 3)
            write(migrated, records, day, time_zone=zone, first_load=first_load)
            stored = dict(migrated.execute("SELECT task_id, created_time FROM group_call_tasks"))
            for record in records:
                local = datetime.strptime(record["createdTime"], "%Y-%m-%d %H:%M:%S")
                expected = local.replace(tzinfo=ZoneInfo(zone))
                assert stored[record["taskId"]] == expected, (zone, record["createdTime"])


# -- rejects and the sync log --------------------------------------------------------------------


def test_rejects_are_recorded_deduplicated_and_resolved(migrated: psycopg.Connection) -> None:
    records = make_records(DAY, 5)
    bad_task = records[1]["taskId"]
    records[1]["rate"] = "abc"
    unkeyed = dict(records[4])
    del unkeyed["taskId"]

    first = write(migrated, [*records, unkeyed], DAY)
    assert (first.received, first.rejected, first.new_rejects) == (5, 2, 2)
    by_field = {r["field"]: r for r in _rejects(migrated)}
    assert sorted(by_field) == ["rate", "taskId"]
    assert (by_field["rate"]["task_id"], by_field["rate"]["raw_value"]) == (bad_task, "abc")
    assert by_field["taskId"]["task_id"] is None  # the record is kept whole
    assert by_field["rate"]["resolved_at"] is None
    assert json.loads(by_field["taskId"]["raw_value"]) == unkeyed
    assert by_field["rate"]["window_date"] == DAY
    assert "abc" in by_field["rate"]["error"]
    stored = migrated.execute(
        "SELECT rate, raw->>'rate' FROM group_call_tasks WHERE task_id = %s", (bad_task,)
    ).fetchone()
    assert stored == (None, "abc")  # the row is written, the column NULL, raw kept

    again = write(migrated, records, DAY)  # same bad value: no new reject row
    assert (again.rejected, again.new_rejects) == (1, 0)
    seen_again = {r["field"]: r for r in _rejects(migrated)}
    assert len(seen_again) == 2
    assert seen_again["rate"]["last_seen_at"] > by_field["rate"]["last_seen_at"]
    assert seen_again["rate"]["first_seen_at"] == by_field["rate"]["first_seen_at"]
    assert seen_again["rate"]["resolved_at"] is None

    records[1]["rate"] = "80"  # a later sync parses the field: the reject is resolved
    fixed = write(migrated, records, DAY)
    assert (fixed.rejected, fixed.updated) == (0, 1)
    resolved = {r["field"]: r for r in _rejects(migrated)}
    assert resolved["rate"]["resolved_at"] is not None
    assert resolved["taskId"]["resolved_at"] is None  # no task to re-read: stays open
    assert migrated.execute(
        "SELECT rate FROM group_call_tasks WHERE task_id = %s", (bad_task,)
    ).fetchone() == (Decimal(80),)

    records[1]["rate"] = "abc"  # the problem is back: the same reject re-opens
    back = write(migrated, records, DAY)
    assert (back.rejected, back.new_rejects) == (1, 0)
    assert {r["field"]: r["resolved_at"] for r in _rejects(migrated)}["rate"] is None


def test_reporting_rejects_while_a_write_of_their_day_resolves_some_does_not_deadlock(
    migrated: psycopg.Connection, database_url: str
) -> None:
    """no_new_rejects is no step of the pool laaffic_api: a run's checks run while the next run
    (a refresh of the same day, say) writes. That write re-refuses one value (its reject row
    locked) and resolves another, which the check's UPDATE had locked first, waiting for the
    first: a deadlock, one of them failing 'deadlock detected'. The check skips what a write
    holds (reported by a later check of the day) instead of waiting for it."""
    records = make_records(DAY, 4)
    fixed, still_bad = records[0], records[1]  # listed first: its reject has the lower id
    fixed["rate"], still_bad["rate"] = "bad fixed later", "bad for good"
    write(migrated, records, DAY)
    fixed["rate"], still_bad["taskName"] = "50", "renamed"
    # The write, re-refusing `still_bad`'s value (its reject row locked), waits for the test
    # before it goes on to resolve `fixed`'s.
    migrated.execute(
        """
        CREATE FUNCTION test_hold() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.raw_value = 'bad for good' THEN PERFORM pg_advisory_xact_lock(4261); END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER test_hold BEFORE UPDATE ON group_call_task_rejects
            FOR EACH ROW EXECUTE FUNCTION test_hold();
        """
    )
    outcome: dict[str, Any] = {}

    def run(name: str, action: Any) -> threading.Thread:
        def target() -> None:
            try:
                with psycopg.connect(database_url) as conn:
                    outcome[name] = action(conn)
                    conn.commit()
            except psycopg.Error as exc:
                outcome[name] = exc

        thread = threading.Thread(target=target)
        thread.start()
        return thread

    def waiting(kind: str) -> bool:
        return migrated.execute(
            "SELECT count(*) > 0 FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND (wait_event = 'advisory') = %s",
            (kind == "advisory",),
        ).fetchone() == (True,)

    with psycopg.connect(database_url, autocommit=True) as gate:
        gate.execute("SELECT pg_advisory_lock(4261)")
        writer = run("write", lambda conn: write(conn, records, DAY))
        while not waiting("advisory"):
            time.sleep(0.001)
        check = run("check", lambda conn: report_new_rejects(conn, [DAY]))
        while not waiting("row") and check.is_alive():
            time.sleep(0.001)
        gate.execute("SELECT pg_advisory_unlock(4261)")
        writer.join(60)
        check.join(60)

    assert not isinstance(outcome["write"], psycopg.Error), outcome["write"]
    assert not isinstance(outcome["check"], psycopg.Error), outcome["check"]
    assert outcome["write"].rejected == 1
    # Each standing reject is reported once, by this check or the next.
    reported, _ = outcome["check"]
    later, _ = report_new_rejects(migrated, [DAY])
    standing = migrated.execute(
        "SELECT count(*) FROM group_call_task_rejects WHERE resolved_at IS NULL"
    ).fetchone()
    assert standing == (1,)
    assert later == 1 and reported in (0, 1)


@pytest.mark.parametrize("first_load", [True, False], ids=["first load", "merge"])
def test_a_task_whose_created_time_was_refused_is_stored_on_its_window_s_day(
    migrated: psycopg.Connection, first_load: bool
) -> None:
    """The API lists a task in the window of the day it was created (the window filters on
    createdTime), so a createdTime the pipeline cannot read still says which day the task is:
    with created_date NULL the task was on no day, left out of its day's summary and of the
    row-count check (which reported it missing), and, still open, never refreshed by the
    open-tasks sensor nor reported by open_tasks_within_horizon."""
    records = make_records(DAY, 5, open_fraction=1.0)
    bad = records[2]
    bad["createdTime"] = "2024-06-04T12:00"  # not the API's format
    result = write(migrated, records, DAY, first_load=first_load)
    assert result.rejected == 1
    assert result.partition_rows == 5
    row = migrated.execute(
        "SELECT created_date, created_time, raw->>'createdTime' FROM group_call_tasks "
        "WHERE task_id = %s",
        (bad["taskId"],),
    ).fetchone()
    assert row == (DAY, None, "2024-06-04T12:00")
    assert migrated.execute(
        "SELECT created_date, sum(tasks), sum(open_tasks) FROM group_call_daily_summary "
        "GROUP BY created_date"
    ).fetchall() == [(DAY, 5, 5)]
    assert row_count_mismatches(migrated, synced_windows(migrated, None)) == []
    assert [(d.day, d.open_tasks) for d in open_task_days(migrated, DAY, DAY)] == [(DAY, 5)]
    assert "refused" in _comment(migrated, "group_call_tasks", "created_date")


def test_what_a_record_without_a_task_id_leaves_is_what_the_comments_say(
    migrated: psycopg.Connection,
) -> None:
    """A record without a usable taskId is no row and not among the sync's `received` tasks,
    and its reject stays standing once the API no longer sends it (there is no task to re-read):
    the COMMENTs a BI tool shows say both, instead of 'distinct records received' and 'NULL
    while the problem stands'."""
    records = make_records(DAY, 5)
    unkeyed = dict(records[4])
    del unkeyed["taskId"]
    assert write(migrated, [*records, unkeyed], DAY).received == 5
    write(migrated, records, DAY)  # the API no longer sends it
    assert [(r["field"], r["resolved_at"]) for r in _rejects(migrated)] == [("taskId", None)]
    received = _comment(migrated, "group_call_sync_log", "received")
    assert "taskId" in received, received
    resolved = _comment(migrated, "group_call_task_rejects", "resolved_at")
    assert "taskId" in resolved, resolved


def test_what_the_day_holds_of_the_api_s_total_is_what_the_comments_say(
    migrated: psycopg.Connection,
) -> None:
    """The API's total counts a task listed twice twice (upstream_duplicates) and a record
    without a usable taskId once, though that record is no row: the day holds fewer tasks than
    api_total - upstream_duplicates by those records, which the COMMENTs of api_total and
    upstream_duplicates (sync log and sync status) must say, not that it holds exactly that."""
    records = make_records(DAY, 5)
    unkeyed = dict(records[4])
    del unkeyed["taskId"]
    # What the client reports for a window listing records[0] twice and the unkeyed record.
    stats = FetchStats(api_total=7, pages=1, upstream_duplicates=1)
    stats.requests = 1
    write(migrated, [*records, unkeyed], DAY, stats=stats)
    row = migrated.execute(
        "SELECT api_total, upstream_duplicates, partition_rows FROM group_call_sync_log"
    ).fetchone()
    assert row == (7, 1, 5)  # 7 - 1 - the record without a taskId
    for relation, column in (
        ("group_call_sync_log", "api_total"),
        ("group_call_sync_log", "upstream_duplicates"),
        ("group_call_sync_status", "api_total"),
    ):
        comment = _comment(migrated, relation, column)
        assert "taskId" in comment, (relation, column, comment)


def test_sync_log_row_carries_the_counts(migrated: psycopg.Connection) -> None:
    records = make_records(DAY, 120, open_fraction=0.5)
    records[0]["acd"] = "sixty"
    stats = FetchStats(api_total=121, pages=2, requests=3, retries=1)
    started = datetime.now(UTC)
    window = day_window(DAY)
    result = write_window(
        migrated,
        window_date=DAY,
        window=window,
        time_zone=TIME_ZONE,
        normalised=normalise_records(records),
        stats=stats,
        started_at=started,
        run_id="run-1",
    )
    (log,) = _sync_log(migrated)
    open_tasks = sum(r["status"] in OPEN_STATUSES for r in records)
    assert open_tasks > 0
    expected = {
        "window_date": DAY,
        "window_start": window.start,
        "window_end": window.end,
        "time_zone": TIME_ZONE,
        "api_total": 121,
        "pages": 2,
        "requests": 3,
        "retries": 1,
        "received": 120,
        "inserted": 120,
        "updated": 0,
        "unchanged": 0,
        "rejected": 1,
        "new_rejects": 1,
        "open_tasks": open_tasks,
        "started_at": started,
        "run_id": "run-1",
    }
    assert {name: log[name] for name in expected} == expected
    assert result.open_tasks == open_tasks
    assert log["finished_at"] >= started

    write(migrated, records, DAY, run_id="run-2")
    status = migrated.execute(
        "SELECT window_date, inserted, unchanged, rejected, run_id, last_synced_at "
        "FROM group_call_sync_status"
    ).fetchall()
    latest = _sync_log(migrated)[-1]
    assert status == [(DAY, 0, 120, 1, "run-2", latest["finished_at"])]


def test_sync_status_says_its_api_total_counts_a_repeated_row_twice(
    migrated: psycopg.Connection,
) -> None:
    """A day whose API listing repeated rows: the view's api_total is the API's total, more
    than the day's tasks, and its COMMENT (what a BI tool shows) says so and where the repeats
    are counted, instead of calling it the tasks the API reported."""
    records = make_records(DAY, 40)
    stats = FetchStats(api_total=43, pages=1, requests=2, upstream_duplicates=3)
    write(migrated, records, DAY, stats=stats)
    assert migrated.execute(
        "SELECT api_total FROM group_call_sync_status WHERE window_date = %s", (DAY,)
    ).fetchall() == [(43,)]
    assert migrated.execute(
        "SELECT sum(tasks) FROM group_call_daily_summary WHERE created_date = %s", (DAY,)
    ).fetchone() == (40,)
    for relation in ("group_call_sync_status", "group_call_sync_log"):
        comment = _comment(migrated, relation, "api_total")
        assert "upstream_duplicates" in comment and "twice" in comment, (relation, comment)


def test_an_empty_window_is_logged(migrated: psycopg.Connection) -> None:
    result = write(migrated, [], DAY)
    assert (result.received, result.inserted, result.updated, result.unchanged) == (0, 0, 0, 0)
    (log,) = _sync_log(migrated)
    assert (log["window_date"], log["received"], log["api_total"]) == (DAY, 0, 0)


def test_hostile_values_are_rejected_without_failing_the_window(
    migrated: psycopg.Connection,
) -> None:
    """Values PostgreSQL itself would refuse (digits of other scripts, NUL, NaN, year 0, a leap
    second, an amount past numeric(20,6)) become rejects; the window is written and the other
    tasks are untouched by them."""
    records = make_records(DAY, 10)
    records[0]["rate"] = "\u0661\u0662"  # Arabic-Indic "12"
    records[1]["groupCallPayFee"] = "\u0663(USD)"
    records[2]["taskName"] = "bad\x00name"
    records[3]["asr"] = float("nan")
    records[3]["vendorExtra"] = [float("inf"), "nul\x00inside"]
    records[4]["createdTime"] = "0000-01-01 00:00:00"
    records[5]["createdTime"] = "2024-06-04 23:59:60"
    records[6]["taskName"] = "\U0001f600 fine"  # an emoji (a surrogate pair in JSON) is fine
    records[8]["agentFee"] = "123456789012345"  # 15 integer digits: numeric(20,6) overflows
    records[9]["taskSumPayFee"] = "123456789012345.5(USD)"
    result = write(migrated, records, DAY)
    assert (result.received, result.inserted) == (10, 10)
    refused = sorted((r["task_id"], r["field"]) for r in _rejects(migrated))
    assert refused == sorted(
        [
            (records[0]["taskId"], "rate"),
            (records[1]["taskId"], "groupCallPayFee"),
            (records[2]["taskId"], "taskName"),
            (records[3]["taskId"], "asr"),
            (records[4]["taskId"], "createdTime"),
            (records[5]["taskId"], "createdTime"),
            (records[8]["taskId"], "agentFee"),
            (records[9]["taskId"], "taskSumPayFee"),
        ]
    )
    stored: dict[int, Any] = dict(migrated.execute("SELECT task_id, raw FROM group_call_tasks"))
    assert stored[records[2]["taskId"]]["taskName"] == "bad\ufffdname"
    assert stored[records[3]["taskId"]]["vendorExtra"] == ["Infinity", "nul\ufffdinside"]
    assert stored[records[6]["taskId"]]["taskName"] == "\U0001f600 fine"
    assert stored[records[7]["taskId"]] == records[7]


# -- one transaction per window ------------------------------------------------------------------


def _window_state(conn: psycopg.Connection) -> dict[str, Any]:
    return {
        "tasks": _rows(conn),
        "rejects": _rejects(conn),
        "sync_log": _sync_log(conn),
    }


def test_a_failure_mid_window_leaves_the_window_as_it_was(
    migrated: psycopg.Connection, database_url: str
) -> None:
    """The writer's connection is killed while it waits inside its transaction, after its upsert:
    every row of the window is exactly as before, and a retry then writes it all."""
    records = make_records(DAY, 200)
    write(migrated, records, DAY)
    before = _window_state(migrated)

    changed = copy.deepcopy(records)
    for record in changed[::2]:
        record.update(numCnt=record["numCnt"] + 1, taskName="renamed")
    changed[1]["rate"] = "abc"
    changed += make_records(DAY, 50, seed=7, first_id=8_000_000)

    failures: list[BaseException] = []
    with (
        psycopg.connect(database_url) as locker,
        psycopg.connect(database_url, autocommit=True) as victim,
    ):
        # Hold the sync log: the writer stages and upserts, then blocks on its log row.
        locker.execute("LOCK TABLE group_call_sync_log IN ACCESS EXCLUSIVE MODE")
        pid = victim.info.backend_pid

        def run() -> None:
            try:
                write(victim, changed, DAY)
            except BaseException as exc:
                failures.append(exc)

        writer = threading.Thread(target=run)
        writer.start()
        deadline = time.monotonic() + 60
        while True:
            waiting = migrated.execute(
                "SELECT wait_event_type, state, query FROM pg_stat_activity WHERE pid = %s", (pid,)
            ).fetchone()
            if waiting and waiting[0] == "Lock" and "group_call_sync_log" in waiting[2]:
                break
            assert time.monotonic() < deadline, f"the writer never blocked: {waiting}"
            assert writer.is_alive(), f"the writer finished: {failures}"
            time.sleep(0.02)
        assert waiting[1] == "active"
        # It is inside its transaction with the upsert done: it holds the table for writing.
        held = migrated.execute(
            """
            SELECT mode FROM pg_locks
            WHERE pid = %s AND relation = 'group_call_tasks'::regclass AND granted
            """,
            (pid,),
        ).fetchall()
        assert ("RowExclusiveLock",) in held
        assert migrated.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        locker.rollback()
        writer.join(timeout=60)
        assert not writer.is_alive()

    assert len(failures) == 1
    assert isinstance(failures[0], psycopg.OperationalError)
    assert _window_state(migrated) == before

    retried = write(migrated, changed, DAY)  # the next attempt writes the window whole
    assert (retried.inserted, retried.updated, retried.unchanged) == (50, 101, 99)
    assert len(_sync_log(migrated)) == 2


# -- the BI rollup -------------------------------------------------------------------------------


def test_daily_rollup_sums_per_day_and_currency(migrated: psycopg.Connection) -> None:
    days = [date(2024, 6, 3), date(2024, 6, 4)]
    by_day = {
        day: make_records(day, 80, seed=n, first_id=1_000_000 * (n + 1), open_fraction=0.3)
        for n, day in enumerate(days)
    }
    # NULLs are skipped by the sums, as in SQL, and a task without answeredNum by the answer rate.
    by_day[days[0]][0]["answeredNum"] = None
    for day, records in by_day.items():
        write(migrated, records, day)

    def amount(text: str) -> Decimal:
        return Decimal(text.split("(")[0])

    expected: dict[tuple[date, str], dict[str, Any]] = defaultdict(
        lambda: defaultdict(lambda: Decimal(0))
    )
    rate_calls: dict[tuple[date, str], int] = defaultdict(int)
    for day, records in by_day.items():
        for r in records:
            row = expected[(day, r["taskSumPayFee"][-4:-1])]
            row["tasks"] += 1
            row["open_tasks"] += r["status"] in OPEN_STATUSES
            row["numbers"] += r["numCnt"]
            row["calls"] += r["callNum"]
            row["answered"] += r["answeredNum"] or 0
            rate_calls[(day, r["taskSumPayFee"][-4:-1])] += (
                r["callNum"] if r["answeredNum"] is not None else 0
            )
            row["billed_call_seconds"] += r["chargeLen"]
            row["billed_agent_seconds"] += r["agentTotalFeetime"]
            row["group_call_spend"] += amount(r["groupCallPayFee"])
            row["sms_spend"] += amount(r["smsPayFee"])
            row["agent_spend"] += amount(r["agentFee"])
            row["total_spend"] += amount(r["taskSumPayFee"])
    for key, row in expected.items():
        row["answer_rate_pct"] = (
            (100 * row["answered"] / rate_calls[key]).quantize(Decimal("0.01"), ROUND_HALF_UP)
            if rate_calls[key]
            else None
        )
    assert {currency for _, currency in expected} == {"USD", "EUR"}

    got = {
        (row.pop("created_date"), row.pop("currency")): row
        for row in _dicts(migrated, "SELECT * FROM group_call_daily_summary")
    }
    assert got == {key: dict(value) for key, value in expected.items()}


def test_daily_rollup_leaves_out_a_fee_in_another_currency_than_its_task_and_says_so(
    migrated: psycopg.Connection,
) -> None:
    """A task whose SMS fee is in EUR while its other fees are in USD (an API anomaly that
    task_invariants_hold reports) counts under USD, and its EUR fee is in no sum: not mixed
    into the USD one, and no EUR row is made for it. The view's COMMENTs say so."""
    records = make_records(DAY, 20, seed=3)
    odd = next(
        r for r in records if r["taskSumPayFee"].endswith("(USD)") and r["smsPayFee"] != "0(USD)"
    )
    sms = odd["smsPayFee"].replace("(USD)", "(EUR)")
    odd["smsPayFee"] = sms
    write(migrated, records, DAY)
    rows = _dicts(migrated, "SELECT currency, tasks, sms_spend FROM group_call_daily_summary")
    usd_sms = sum(Decimal(r["smsPayFee"][:-5]) for r in records if r["smsPayFee"].endswith("(USD)"))
    usd_tasks = sum(r["taskSumPayFee"].endswith("(USD)") for r in records)
    assert {"currency": "USD", "tasks": usd_tasks, "sms_spend": usd_sms} in rows
    assert all(row["currency"] != "EUR" or row["tasks"] for row in rows)
    for column in (None, "group_call_spend", "sms_spend"):
        comment = _comment(migrated, "group_call_daily_summary", column)
        assert "another currency than" in comment, (column, comment)


def test_daily_rollup_keeps_refused_values_out_of_the_wrong_sums(
    migrated: psycopg.Connection,
) -> None:
    """A refused value is NULL in its column: the task still counts under its own currency (its
    other fees'), each fee is summed under its own currency only, the answer rate is taken over
    tasks whose callNum and answeredNum are both known, and an unknown status is not open."""
    day = date(2024, 6, 4)
    records = make_records(day, 60, seed=7, open_fraction=0.3, eur_fraction=0.5)
    usd = next(r for r in records if r["taskSumPayFee"].endswith("(USD)") and r["callNum"])
    eur = next(r for r in records if r["taskSumPayFee"].endswith("(EUR)") and r["callNum"])
    unanswered = next(r for r in records if r["callNum"] and r not in (usd, eur))
    unknown = next(r for r in records if r["status"] in OPEN_STATUSES and r not in (usd, eur))
    usd["taskSumPayFee"] = "10 USD"
    eur["taskSumPayFee"] = "20 EUR"
    unanswered["answeredNum"] = "n/a"
    unknown["status"] = 9
    assert write(migrated, records, day).rejected == 4

    def fee(text: str) -> tuple[Decimal, str] | None:
        if not text.endswith(")") or "(" not in text:
            return None
        value, currency = text[:-1].split("(")
        return Decimal(value), currency

    def currency(r: dict[str, Any]) -> str:
        known = fee(r["taskSumPayFee"]) or fee(r["groupCallPayFee"])
        assert known is not None
        return known[1]

    expected = {}
    for cur in ("USD", "EUR"):
        mine = [r for r in records if currency(r) == cur]
        rated = [r for r in mine if isinstance(r["answeredNum"], int)]
        expected[cur] = {
            "tasks": len(mine),
            "open_tasks": sum(r["status"] in OPEN_STATUSES for r in mine),
            "answer_rate_pct": (
                100
                * Decimal(sum(r["answeredNum"] for r in rated))
                / sum(r["callNum"] for r in rated)
            ).quantize(Decimal("0.01"), ROUND_HALF_UP),
            **{
                column: sum(
                    (f[0] for r in mine if (f := fee(r[field])) and f[1] == cur), Decimal(0)
                )
                for column, field in (
                    ("group_call_spend", "groupCallPayFee"),
                    ("sms_spend", "smsPayFee"),
                    ("total_spend", "taskSumPayFee"),
                )
            },
        }
    got = {
        row.pop("currency"): {k: row[k] for k in expected["USD"]}
        for row in _dicts(migrated, "SELECT * FROM group_call_daily_summary")
    }
    assert got == expected

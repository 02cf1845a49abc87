"""A first load (no stored row for the day) COPYs straight into `group_call_tasks` instead of
staging and merging: it must store exactly what the merge stores, and fall back to the merge
when a task turns out to be stored already."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.warehouse.helpers import make_records, write

DAY = date(2024, 11, 3)  # America/Los_Angeles falls back: 01:00-01:59 happens twice
SPRING = date(2024, 3, 10)  # ... and springs forward: 02:00-02:59 does not exist
VOLATILE = ("first_seen_at", "last_changed_at", "last_seen_at", "resolved_at", "synced_at")


def _snapshot(conn: psycopg.Connection) -> dict[str, list[dict[str, Any]]]:
    """Every row the write touched, minus the clock columns."""
    tables = {
        "tasks": "SELECT * FROM group_call_tasks ORDER BY task_id",
        "fingerprints": "SELECT * FROM group_call_task_fingerprints ORDER BY task_id",
        "rejects": "SELECT * FROM group_call_task_rejects ORDER BY task_id NULLS FIRST, field",
    }
    out: dict[str, list[dict[str, Any]]] = {}
    with conn.cursor(row_factory=dict_row) as cur:
        for name, query in tables.items():
            rows = cur.execute(query.encode()).fetchall()
            out[name] = [
                {k: v for k, v in row.items() if k not in VOLATILE and k != "reject_id"}
                for row in rows
            ]
    return out


def _tricky_records(day: date) -> list[dict[str, Any]]:
    records = make_records(day, 60)
    records[0]["createdTime"] = f"{day} 01:30:00"  # a fold on DAY
    records[1]["createdTime"] = f"{day} 02:30:00"  # a gap on SPRING
    records[2]["createdTime"] = f"{day} 00:00:00"
    records[3]["createdTime"] = f"{day} 23:59:59"
    records[4]["rate"] = "abc"  # rejected: column NULL, raw kept
    records[5]["taskSumPayFee"] = "1.1234567(USD)"  # too many places: rejected
    records[6]["taskName"] = 'quote " comma , newline \n backslash \\ and ünïcödé'
    records[7]["createdTime"] = f"{day - timedelta(days=1)} 12:00:00"  # outside the day: kept
    unkeyed = dict(records[8])
    del unkeyed["taskId"]
    return [*records, unkeyed]


@pytest.mark.parametrize("zone", ["America/Los_Angeles", "Asia/Shanghai", "UTC", "Etc/GMT+5"])
@pytest.mark.parametrize("day", [DAY, SPRING])
def test_a_first_load_stores_exactly_what_the_merge_stores(
    migrated: psycopg.Connection, zone: str, day: date
) -> None:
    records = _tricky_records(day)
    copied = write(migrated, records, day, time_zone=zone, first_load=True)
    by_copy = _snapshot(migrated)
    migrated.execute(
        "TRUNCATE group_call_tasks, group_call_task_fingerprints, group_call_task_rejects"
    )
    migrated.commit()
    merged = write(migrated, records, day, time_zone=zone, first_load=False)

    assert by_copy == _snapshot(migrated)
    assert copied == merged
    assert (copied.inserted, copied.updated, copied.rejected) == (60, 0, 3)


def test_a_first_load_of_tasks_already_stored_falls_back_to_the_merge(
    migrated: psycopg.Connection,
) -> None:
    """Tasks stored under another day (a different time zone moved them, or another run wrote
    them first): the COPY fails on the primary key, is undone, and the window is merged."""
    day = date(2024, 6, 4)
    stored = make_records(day, 10)
    write(migrated, stored, day)
    following = make_records(day + timedelta(days=1), 10, first_id=2_000_000)
    moved = dict(stored[3], taskName="renamed meanwhile")

    result = write(migrated, [*following, moved], day + timedelta(days=1), first_load=True)

    assert (result.received, result.inserted, result.updated) == (11, 10, 1)
    count, distinct, name = migrated.execute(
        "SELECT count(*), count(DISTINCT task_id), "
        "max(task_name) FILTER (WHERE task_id = %s) FROM group_call_tasks",
        (moved["taskId"],),
    ).fetchone() or (None, None, None)
    assert (count, distinct, name) == (20, 20, "renamed meanwhile")
    fingerprints = migrated.execute("SELECT count(*) FROM group_call_task_fingerprints")
    assert fingerprints.fetchone() == (20,)
    log = migrated.execute(
        "SELECT inserted, updated, received FROM group_call_sync_log ORDER BY sync_id DESC LIMIT 1"
    ).fetchone()
    assert log == (10, 1, 11)

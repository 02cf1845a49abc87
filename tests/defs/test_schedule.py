"""The daily schedule: 00:15 in the account's time zone, asking for the local day that ended."""

from __future__ import annotations

from datetime import UTC, date, datetime
from itertools import islice
from zoneinfo import ZoneInfo

import pytest
from dagster import RunRequest, build_schedule_context
from dagster._utils.schedules import cron_string_iterator

from pipelines.defs.assets import daily_partitions
from pipelines.defs.schedules import daily_sync_job, daily_sync_schedule

START = date(2024, 1, 1)


def _requested(timezone: str, tick: datetime) -> list[str | None]:
    schedule = daily_sync_schedule(daily_sync_job(daily_partitions(timezone, START)))
    data = schedule.evaluate_tick(build_schedule_context(scheduled_execution_time=tick))
    requests = data.run_requests or []
    assert all(isinstance(r, RunRequest) for r in requests)
    assert all(r.job_name == "daily_group_call_tasks_sync" for r in requests)
    return [r.partition_key for r in requests]


@pytest.mark.parametrize(
    ("timezone", "local_tick", "partition"),
    [
        ("Asia/Shanghai", datetime(2024, 6, 5, 0, 15), "2024-06-04"),
        ("Asia/Shanghai", datetime(2024, 1, 2, 0, 15), "2024-01-01"),  # the first partition
        ("America/Los_Angeles", datetime(2024, 6, 5, 0, 15), "2024-06-04"),
        # The morning after the spring-forward night (a 23-hour day) and after the fall-back
        # night (a 25-hour day): still the local day that ended.
        ("America/Los_Angeles", datetime(2024, 3, 11, 0, 15), "2024-03-10"),
        ("America/Los_Angeles", datetime(2024, 11, 4, 0, 15), "2024-11-03"),
    ],
)
def test_tick_asks_for_the_local_day_that_just_ended(
    timezone: str, local_tick: datetime, partition: str
) -> None:
    tick = local_tick.replace(tzinfo=ZoneInfo(timezone))
    assert _requested(timezone, tick) == [partition]
    # The same instant given in UTC asks for the same partition: the key is the account's local
    # day, not the UTC day (in Shanghai, 00:15 local is 16:15 UTC of the day before).
    assert _requested(timezone, tick.astimezone(UTC)) == [partition]


def test_the_same_instant_is_a_different_day_in_each_zone() -> None:
    # 2024-06-04 16:15 UTC is 00:15 on June 5 in Shanghai but 09:15 on June 4 in Los Angeles:
    # a tick then (the Shanghai schedule's) asks Shanghai for June 4 and Los Angeles for June 3.
    instant = datetime(2024, 6, 4, 16, 15, tzinfo=UTC)
    assert _requested("Asia/Shanghai", instant) == ["2024-06-04"]
    assert _requested("America/Los_Angeles", instant) == ["2024-06-03"]


@pytest.mark.parametrize(
    ("timezone", "utc_ticks"),
    [
        (
            "Asia/Shanghai",
            ["2024-03-09T16:15:00+00:00", "2024-03-10T16:15:00+00:00", "2024-03-11T16:15:00+00:00"],
        ),
        (  # across the spring-forward night: 08:15 UTC in PST, 07:15 UTC in PDT
            "America/Los_Angeles",
            ["2024-03-10T08:15:00+00:00", "2024-03-11T07:15:00+00:00", "2024-03-12T07:15:00+00:00"],
        ),
    ],
)
def test_cron_is_00_15_in_the_account_time_zone(timezone: str, utc_ticks: list[str]) -> None:
    schedule = daily_sync_schedule(daily_sync_job(daily_partitions(timezone, START)))
    assert schedule.cron_schedule == "15 0 * * *"
    assert schedule.execution_timezone == timezone
    start = datetime(2024, 3, 9, 12, 0, tzinfo=ZoneInfo(timezone)).timestamp()
    assert isinstance(schedule.cron_schedule, str)
    ticks = islice(cron_string_iterator(start, schedule.cron_schedule, timezone), 3)
    assert [t.astimezone(UTC).isoformat() for t in ticks] == utc_ticks

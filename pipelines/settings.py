"""Load-time settings from the environment (Dagster needs them to build the partitions).

Secrets are not here: they are `EnvVar`s on the resources, read at run launch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_TIMEZONE = "Asia/Shanghai"
DEFAULT_START_DATE = date(2024, 1, 1)
DEFAULT_FRESHNESS_DEADLINE_CRON = "0 3 * * *"
DEFAULT_OPEN_TASKS_INTERVAL_SECONDS = 3600
DEFAULT_OPEN_TASKS_HORIZON_DAYS = 30


def _int_env(name: str, default: int) -> int:
    value = os.getenv(name)
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a whole number") from None
    if number < 1:
        raise ValueError(f"{name}={value!r} must be at least 1")
    return number


@dataclass(frozen=True)
class Settings:
    timezone: str = DEFAULT_TIMEZONE
    start_date: date = DEFAULT_START_DATE
    #: yesterday's partition (account time) must be materialized by this cron tick
    freshness_deadline_cron: str = DEFAULT_FRESHNESS_DEADLINE_CRON
    #: how often the sensor looks for days whose stored tasks are still in progress
    open_tasks_interval_seconds: int = DEFAULT_OPEN_TASKS_INTERVAL_SECONDS
    #: tasks still open this many days after creation are no longer followed automatically
    open_tasks_horizon_days: int = DEFAULT_OPEN_TASKS_HORIZON_DAYS

    @classmethod
    def from_env(cls) -> Settings:
        timezone = os.getenv("LAAFFIC_TIMEZONE") or DEFAULT_TIMEZONE
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # (a region, "Asia": a directory)
            raise ValueError(
                f"LAAFFIC_TIMEZONE={timezone!r} is not an IANA time zone (e.g. Asia/Shanghai)"
            ) from None
        start = os.getenv("LAAFFIC_START_DATE") or DEFAULT_START_DATE.isoformat()
        try:
            start_date = date.fromisoformat(start)
        except ValueError:
            raise ValueError(f"LAAFFIC_START_DATE={start!r} is not a date (YYYY-MM-DD)") from None
        cron = os.getenv("LAAFFIC_FRESHNESS_DEADLINE_CRON") or DEFAULT_FRESHNESS_DEADLINE_CRON
        from dagster._utils.schedules import is_valid_cron_string  # the rule Dagster applies

        if not is_valid_cron_string(cron):
            raise ValueError(
                f"LAAFFIC_FRESHNESS_DEADLINE_CRON={cron!r} is not a cron expression "
                "(e.g. '0 3 * * *': 03:00 every day)"
            )
        return cls(
            timezone=timezone,
            start_date=start_date,
            freshness_deadline_cron=cron,
            open_tasks_interval_seconds=_int_env(
                "LAAFFIC_OPEN_TASKS_INTERVAL_SECONDS", DEFAULT_OPEN_TASKS_INTERVAL_SECONDS
            ),
            open_tasks_horizon_days=_int_env(
                "LAAFFIC_OPEN_TASKS_HORIZON_DAYS", DEFAULT_OPEN_TASKS_HORIZON_DAYS
            ),
        )

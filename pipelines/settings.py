"""Load-time settings from the environment (Dagster builds the partitions, checks, sensors and
the API resource from them): a bad value fails the load, naming its variable.

Secrets are not here: they are `EnvVar`s on the resources, read at run launch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date, timedelta
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import requests

from pipelines.laaffic.client import DEFAULT_BASE_URL, QUERY_PATH

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


def _http_url(name: str, value: str) -> str:
    """`value` if it is an http(s) URL with a host that requests can send to: it refuses
    anything else on every request, an error the run would retry as if the API were down."""
    try:
        parts = urlsplit(value)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        _ = parts.port  # a port that is no number, or past 65535
        requests.Request("POST", value.rstrip("/") + QUERY_PATH).prepare()  # (a host "a b")
    except ValueError:  # e.g. an unclosed [IPv6 address; requests' InvalidURL is one too
        ok = False
    if not ok:
        raise ValueError(f"{name}={value!r} is not an http(s) URL (e.g. {DEFAULT_BASE_URL})")
    return value


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
    #: the API's base URL (the credentials, secrets, are EnvVars on the resource instead)
    base_url: str = DEFAULT_BASE_URL

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
        from dagster._utils.schedules import (  # the rules Dagster applies
            get_smallest_cron_interval,
            is_valid_cron_string,
        )

        if not is_valid_cron_string(cron):
            raise ValueError(
                f"LAAFFIC_FRESHNESS_DEADLINE_CRON={cron!r} is not a cron expression "
                "(e.g. '0 3 * * *': 03:00 every day)"
            )
        if get_smallest_cron_interval(cron) < timedelta(days=1):
            raise ValueError(
                f"LAAFFIC_FRESHNESS_DEADLINE_CRON={cron!r} ticks more than once a day: it is the "
                "time by which yesterday's partition must be there (e.g. '0 3 * * *': 03:00)"
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
            base_url=_http_url(
                "LAAFFIC_BASE_URL", os.getenv("LAAFFIC_BASE_URL") or DEFAULT_BASE_URL
            ),
        )

"""Load-time settings: defaults, and a bad value refused with an error naming its variable."""

from __future__ import annotations

import re
from datetime import date

import pytest

from pipelines.settings import Settings

VARIABLES = (
    "LAAFFIC_TIMEZONE",
    "LAAFFIC_START_DATE",
    "LAAFFIC_FRESHNESS_DEADLINE_CRON",
    "LAAFFIC_OPEN_TASKS_INTERVAL_SECONDS",
    "LAAFFIC_OPEN_TASKS_HORIZON_DAYS",
    "LAAFFIC_BASE_URL",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_defaults() -> None:
    assert Settings.from_env() == Settings(
        timezone="Asia/Shanghai",
        start_date=date(2024, 1, 1),
        freshness_deadline_cron="0 3 * * *",
        open_tasks_interval_seconds=3600,
        open_tasks_horizon_days=30,
        base_url="https://api.laaffic.com",
    )


def test_values_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in zip(
        VARIABLES,
        ("Europe/Berlin", "2025-02-03", "30 4 * * *", "600", "7", "http://127.0.0.1:8765/"),
        strict=True,
    ):
        monkeypatch.setenv(name, value)
    assert Settings.from_env() == Settings(
        "Europe/Berlin", date(2025, 2, 3), "30 4 * * *", 600, 7, "http://127.0.0.1:8765/"
    )


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("LAAFFIC_TIMEZONE", "Mars/Base", "is not an IANA time zone"),
        ("LAAFFIC_TIMEZONE", "UTC+8", "is not an IANA time zone"),
        # A region of the tz database, not a zone: zoneinfo raises IsADirectoryError for it.
        ("LAAFFIC_TIMEZONE", "Asia", "is not an IANA time zone"),
        ("LAAFFIC_TIMEZONE", "America", "is not an IANA time zone"),
        ("LAAFFIC_START_DATE", "2024-13-01", "is not a date (YYYY-MM-DD)"),
        ("LAAFFIC_FRESHNESS_DEADLINE_CRON", "bogus", "is not a cron expression"),
        ("LAAFFIC_FRESHNESS_DEADLINE_CRON", "0 25 * * *", "is not a cron expression"),
        # A deadline for yesterday's partition: Dagster refused a cron policy ticking more often
        # than its 3-hour window (a CheckError at load naming no variable).
        ("LAAFFIC_FRESHNESS_DEADLINE_CRON", "0 * * * *", "ticks more than once a day"),
        ("LAAFFIC_FRESHNESS_DEADLINE_CRON", "0 3,15 * * *", "ticks more than once a day"),
        ("LAAFFIC_OPEN_TASKS_INTERVAL_SECONDS", "hourly", "is not a whole number"),
        ("LAAFFIC_OPEN_TASKS_HORIZON_DAYS", "0", "must be at least 1"),
        # Without a scheme requests refused it on every request (InvalidSchema, MissingSchema),
        # which the step retried as if the API were down, naming no variable.
        ("LAAFFIC_BASE_URL", "api.laaffic.com", "is not an http(s) URL"),
        ("LAAFFIC_BASE_URL", "127.0.0.1:8765", "is not an http(s) URL"),
        ("LAAFFIC_BASE_URL", "ftp://api.laaffic.com", "is not an http(s) URL"),
        ("LAAFFIC_BASE_URL", "https://", "is not an http(s) URL"),
        # A scheme and a host, but a URL requests cannot prepare (InvalidURL, on every request).
        ("LAAFFIC_BASE_URL", "http://127.0.0.1:abc", "is not an http(s) URL"),
        ("LAAFFIC_BASE_URL", "http://127.0.0.1:99999", "is not an http(s) URL"),
        ("LAAFFIC_BASE_URL", "https://api laaffic.com", "is not an http(s) URL"),
    ],
)
def test_a_bad_value_is_refused_naming_its_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, words: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="^" + re.escape(f"{name}={value!r} {words}")):
        Settings.from_env()

"""API faults during a multi-day single-run backfill (six days, 150..300 tasks each, in one Dagster
run). Transient faults are survived with exact results; a fatal one stops the run with a message
naming the problem, keeps the days already committed exact, and a rerun completes."""

from __future__ import annotations

from typing import Any

import pytest

from pipelines.laaffic.simulator import SimulatorServer
from tests.reliability.helpers import (
    DAY_COUNTS,
    DAYS,
    assert_days_absent,
    assert_days_exact,
    committed_days,
    event_types,
    failure_text,
    partition_metadata,
    run_days,
)

#: Faults scripted in the middle of the run (after a few good answers). name -> (the fault, how
#: many in a row, client settings).
TRANSIENT: dict[str, tuple[str, int, dict[str, Any]]] = {
    "burst of -18": ("-18", 4, {}),
    "burst of HTTP 502": ("http:502", 4, {}),
    "dropped connections": ("drop", 4, {}),
    # The simulator answers after 2 s, the client gives up after 0.5 s and asks again.
    "slower than the client timeout": ("slow", 2, {"timeout_seconds": 0.5}),
    "-16 from clock skew": ("-16", 1, {}),
}


@pytest.mark.parametrize("name", list(TRANSIENT))
def test_transient_faults_mid_backfill_are_survived_exactly(
    simulator: SimulatorServer, database_url: str, name: str
) -> None:
    fault, count, client = TRANSIENT[name]
    sim = simulator.simulator
    sim.configure(day_counts=DAY_COUNTS, slow_seconds=2.0)
    sim.script(*["ok"] * 5, *[fault] * count)

    result = run_days(simulator, database_url, DAYS, **client)

    assert result.success, failure_text(result)
    assert sim.stats.outcomes[fault] == count  # every fault was served to the run
    assert_days_exact(simulator, database_url, DAYS)
    assert committed_days(database_url) == DAYS
    retries = sum(partition_metadata(result, "retries").values())
    if fault == "slow":
        assert retries >= count  # (a loaded machine may time out an ordinary answer too)
    else:
        assert retries == count  # each fault cost exactly one repeated request


def test_random_faults_throughout_a_backfill_are_survived_exactly(
    simulator: SimulatorServer, database_url: str
) -> None:
    """A quarter of all answers fail (-18, 502, dropped) all run long."""
    sim = simulator.simulator
    sim.configure(day_counts=DAY_COUNTS, fault_rate=0.25, fault_kinds=("-18", "502", "drop"))

    result = run_days(simulator, database_url, DAYS, max_attempts=12)

    assert result.success, failure_text(result)
    failures = sum(sim.stats.outcomes[kind] for kind in ("-18", "http:502", "drop"))
    assert failures > 0
    assert sum(partition_metadata(result, "retries").values()) == failures
    assert_days_exact(simulator, database_url, DAYS)


def test_auth_error_mid_run_stops_it_keeps_committed_days_and_a_rerun_completes(
    simulator: SimulatorServer, database_url: str
) -> None:
    """-1 after twelve good answers. The client reads up to three days at once, so which day
    meets it is not fixed: what is committed is asserted, not an exact day. (The days take 2, 2,
    3, 3, 3 and 3 requests; a day's reads start only once the day three before it is read, so at
    most 9 requests come before day 2's last and the 13th belongs to day 3 or later: by the time
    the run meets it, day 1 is committed.)"""
    sim = simulator.simulator
    sim.configure(day_counts=DAY_COUNTS)
    sim.script(*["ok"] * 12, "-1")

    result = run_days(simulator, database_url, DAYS)

    assert not result.success
    message = failure_text(result)
    assert "authentication error" in message
    assert "LAAFFIC_API_KEY" in message and "LAAFFIC_API_SECRET" in message
    assert "STEP_UP_FOR_RETRY" not in event_types(result)  # fatal: not retried
    assert sim.stats.outcomes["-1"] == 1

    committed = committed_days(database_url)
    assert committed, "day 1 was read and written before the -1: it must be committed"
    assert committed == DAYS[: len(committed)], "committed days are a prefix of the range"
    assert len(committed) < len(DAYS), "the day that met -1 must not be committed"
    assert_days_exact(simulator, database_url, committed)
    assert_days_absent(database_url, DAYS[len(committed) :])
    assert f"{len(committed)} day(s) were committed before it" in message
    assert all(day.isoformat() in message for day in committed)

    rerun = run_days(simulator, database_url, DAYS)

    assert rerun.success, failure_text(rerun)
    assert_days_exact(simulator, database_url, DAYS)
    assert committed_days(database_url) == DAYS
    # The rerun re-read the committed days and found nothing to change.
    unchanged = partition_metadata(rerun, "unchanged")
    assert all(unchanged[day.isoformat()] == DAY_COUNTS[day] for day in committed)

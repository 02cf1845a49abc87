"""Shared by the reliability suite: runs over a range of days, what a run committed, what it said,
and processes started in their own process group (stopped by PID)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg
from dagster import DagsterInstance, ExecuteInProcessResult, materialize
from dagster._serdes import serialize_value

from pipelines.defs.assets import group_call_tasks
from pipelines.defs.resources import LaafficApiResource, WarehouseResource
from pipelines.laaffic.simulator import SimulatorServer
from tests.defs.helpers import PROJECT_ROOT, SIM_KEY, SIM_SECRET, days_between, range_tags

T = TypeVar("T")

#: Six account-local days: a multi-day single-run backfill.
DAYS = days_between(date(2024, 6, 1), date(2024, 6, 6))
#: 150..300 tasks a day: two or three pages of 100 each.
DAY_COUNTS = {day: 150 + 30 * n for n, day in enumerate(DAYS)}
MATERIALIZE = [
    "asset", "materialize", "-m", "pipelines.definitions", "--select", "group_call_tasks",
]  # fmt: skip
#: Run config that turns off the asset's step RetryPolicy (30 s and more between attempts), so
#: that a failing CLI run fails at once and the test can look at what the failure left behind.
NO_STEP_RETRIES = '{"execution": {"config": {"retries": {"disabled": {}}}}}'


def api_resource(sim: SimulatorServer, **overrides: Any) -> LaafficApiResource:
    options: dict[str, Any] = {
        "base_url": sim.url,
        "api_key": SIM_KEY,
        "api_secret": SIM_SECRET,
        "backoff_base_seconds": 0.001,
    }
    options.update(overrides)
    return LaafficApiResource(**options)


def run_days(
    sim: SimulatorServer, database_url: str, days: list[date], **api: Any
) -> ExecuteInProcessResult:
    """Materialize `days` in one run (a single-run backfill), on an ephemeral instance."""
    with DagsterInstance.ephemeral() as instance:
        return materialize(
            [group_call_tasks],
            resources={
                "laaffic": api_resource(sim, **api),
                "warehouse": WarehouseResource(url=database_url),
            },
            instance=instance,
            tags=range_tags(days[0], days[-1]),
            raise_on_error=False,
        )


def failure_text(result: ExecuteInProcessResult) -> str:
    """Every step failure's message and description, as the UI shows them."""
    texts: list[str] = []
    for event in result.all_events:
        if event.is_step_failure:
            data = event.step_failure_data
            if data.error is not None:
                texts.append(data.error.to_string())
            if data.user_failure_data is not None and data.user_failure_data.description:
                texts.append(data.user_failure_data.description)
    return "\n".join(texts)


def event_types(result: ExecuteInProcessResult) -> list[str]:
    return [event.event_type_value for event in result.all_events]


def partition_metadata(result: ExecuteInProcessResult, key: str) -> dict[str, Any]:
    """partition key -> that partition's value of metadata `key`."""
    return {
        m.partition or "": getattr(m.metadata[key], "value", m.metadata[key])
        for m in result.asset_materializations_for_node("group_call_tasks")
    }


def committed_days(database_url: str) -> list[date]:
    """Days with a sync-log row: the windows whose transaction committed."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT DISTINCT window_date FROM group_call_sync_log ORDER BY window_date"
        ).fetchall()
    return [day for (day,) in rows]


def row_counts(database_url: str) -> tuple[int, int]:
    """(rows, distinct task IDs) of group_call_tasks."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*), count(DISTINCT task_id) FROM group_call_tasks")
        rows, distinct = row.fetchone() or (0, 0)
    return int(rows), int(distinct)


def with_password(url: str, password: str) -> str:
    """`url` with `password` as its password (a server on trust auth ignores it). A URL that
    already has one keeps it: that is then the secret the tests look for."""
    parts = urlsplit(url)
    if parts.password:
        return url
    user = parts.username or "postgres"
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


def instance_dump(home: Path) -> str:
    """Everything the Dagster instance in `home` stores about its runs, as text: run records
    (config, tags), every event of every run, and every file under DAGSTER_HOME (SQLite
    databases, compute logs) decoded leniently."""
    from tests.defs.helpers import open_instance

    parts: list[str] = []
    with open_instance(home) as instance:
        for record in instance.get_run_records():
            parts.append(serialize_value(record.dagster_run))
            for event in instance.get_records_for_run(record.dagster_run.run_id).records:
                parts.append(serialize_value(event.event_log_entry))
    for path in sorted(home.rglob("*")):
        if path.is_file():
            parts.append(path.read_bytes().decode("utf-8", "replace"))
    return "\n".join(parts)


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, *, alive: Any = None) -> T:
    """Poll `probe` until it returns a value; fail after `timeout` seconds, or at once if the
    process `alive` (a Popen) has exited."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if alive is not None and alive.poll() is not None:
            raise AssertionError(f"the process exited (code {alive.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class Process:
    """A process this test started, leading its own process group, output to a file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.popen = subprocess.Popen(
                args,
                cwd=PROJECT_ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid = self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signum)

    def stop(self, first: int = signal.SIGTERM, grace: float = 30) -> None:
        """`first` to the whole group, then SIGKILL to what is left of it."""
        if self.popen.poll() is None:
            self.signal_group(first)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.signal_group(signal.SIGKILL)
                self.popen.wait(timeout=30)
        self.signal_group(signal.SIGKILL)  # a grandchild that outlived its parent


@contextlib.contextmanager
def started(args: list[str], env: dict[str, str], log: Path) -> Iterator[Process]:
    process = Process(args, env, log)
    try:
        yield process
    finally:
        process.stop()


def dagster_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dagster", *args]


def range_arg(days: list[date]) -> str:
    return f"{days[0].isoformat()}...{days[-1].isoformat()}"


def assert_days_exact(sim: SimulatorServer, database_url: str, days: list[date]) -> None:
    """Each day holds exactly the simulator's tasks of that day, every record as served."""
    from tests.defs.helpers import simulated, stored_tasks

    for day in days:
        stored = stored_tasks(database_url, day)
        expected = simulated(sim, [day])
        assert stored.keys() == expected.keys(), f"{day}: other tasks than the API's"
        assert stored == expected, f"{day}: a task differs from the API's record"


def assert_days_absent(database_url: str, days: list[date]) -> None:
    from tests.defs.helpers import stored_days

    present = stored_days(database_url)
    assert not [day for day in days if day in present], f"rows of uncommitted days: {present}"

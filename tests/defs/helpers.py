"""Shared helpers for the Dagster-layer tests: resources, subprocess environments, instances."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import psycopg
from dagster import DagsterInstance
from dagster._core.instance.ref import InstanceRef

from pipelines.defs.resources import LaafficApiResource, WarehouseResource
from pipelines.laaffic.simulator import SimulatorServer

PROJECT_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
SIM_KEY = "sim-key"
SIM_SECRET = "sim-secret"
#: Variables of the project (and of Dagster) that a subprocess must not inherit from this one.
PROJECT_VARIABLES = ("LAAFFIC_", "WAREHOUSE_URL", "DAGSTER_HOME", "TEST_DATABASE_URL")


def resources(sim: SimulatorServer, database_url: str) -> dict[str, Any]:
    return {
        "laaffic": LaafficApiResource(
            base_url=sim.url, api_key=SIM_KEY, api_secret=SIM_SECRET, backoff_base_seconds=0.001
        ),
        "warehouse": WarehouseResource(url=database_url),
    }


def days_between(first: date, last: date) -> list[date]:
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def range_tags(first: date, last: date) -> dict[str, str]:
    """The run tags of a single-run partition range (what a single-run backfill sets)."""
    return {
        "dagster/asset_partition_range_start": first.isoformat(),
        "dagster/asset_partition_range_end": last.isoformat(),
    }


def stored_tasks(database_url: str, day: date | None = None) -> dict[int, dict[str, Any]]:
    """task_id -> raw record, of one day or of the whole table."""
    with psycopg.connect(database_url) as conn:
        if day is None:
            rows = conn.execute("SELECT task_id, raw FROM group_call_tasks").fetchall()
        else:
            rows = conn.execute(
                "SELECT task_id, raw FROM group_call_tasks WHERE created_date = %s", (day,)
            ).fetchall()
    return {int(task_id): raw for task_id, raw in rows}


def stored_days(database_url: str) -> dict[date, int]:
    """created_date -> number of stored tasks."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT created_date, count(*) FROM group_call_tasks GROUP BY created_date"
        ).fetchall()
    return {day: int(count) for day, count in rows}


def simulated(sim: SimulatorServer, days: list[date]) -> dict[int, dict[str, Any]]:
    """task_id -> record, as the simulator serves them for `days`."""
    return {t.task_id: t.record for d in days for t in sim.simulator.store.day(d)}


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any project or Dagster variable, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(PROJECT_VARIABLES)}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def sim_env(sim: SimulatorServer, database_url: str, home: Path) -> dict[str, str]:
    """Environment for a subprocess pointed at the simulator, a test database and an instance."""
    return clean_env(
        LAAFFIC_BASE_URL=sim.url,
        LAAFFIC_API_KEY=SIM_KEY,
        LAAFFIC_API_SECRET=SIM_SECRET,
        WAREHOUSE_URL=database_url,
        DAGSTER_HOME=str(home),
    )


def make_dagster_home(path: Path) -> Path:
    """A DAGSTER_HOME holding a copy of the project's dagster.yaml (telemetry off, queued runs)."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT_ROOT / "dagster.yaml", path / "dagster.yaml")
    return path


def open_instance(home: Path) -> DagsterInstance:
    """The instance a subprocess used, read from its DAGSTER_HOME."""
    return DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))


def run_python(
    args: list[str], env: dict[str, str], timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """`python ARGS...` (this interpreter) from the project root, output captured."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_dagster(
    args: list[str], env: dict[str, str], timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """`python -m dagster ...` from the project root, output captured."""
    return run_python(["-m", "dagster", *args], env, timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

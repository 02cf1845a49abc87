"""A backfill launched the way the Dagster UI launches one: the `launchPartitionBackfill` GraphQL
mutation against a running webserver, carried out by a running daemon. With the asset's
single-run backfill policy a week is one run, and the UI then shows every partition materialized.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
import requests
from dagster import AssetKey, DagsterEventType, DagsterRunStatus, RunsFilter

from pipelines.laaffic.simulator import SimulatorServer
from pipelines.warehouse.migrate import apply_migrations
from tests.defs.helpers import (
    PROJECT_ROOT,
    VENV_BIN,
    days_between,
    free_port,
    make_dagster_home,
    open_instance,
    sim_env,
    simulated,
    stored_days,
    stored_tasks,
)

WEEK = days_between(date(2024, 6, 1), date(2024, 6, 7))
ASSET = AssetKey("group_call_tasks")
STARTUP_TIMEOUT = 120
BACKFILL_TIMEOUT = 240
T = TypeVar("T")

# The UI's own mutation (dagster-webserver's LAUNCH_PARTITION_BACKFILL_MUTATION), with its
# PythonErrorFragment spelled out.
LAUNCH_PARTITION_BACKFILL = """
mutation LaunchPartitionBackfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PartitionSetNotFoundError { message }
    ... on PartitionKeysNotFoundError { message }
    ... on InvalidStepError { invalidStepKey }
    ... on InvalidOutputError { stepKey invalidOutputName }
    ... on UnauthorizedError { message }
    ... on PipelineNotFoundError { message }
    ... on RunConflict { message }
    ... on ConflictingExecutionParamsError { message }
    ... on PresetNotFoundError { message }
    ... on RunConfigValidationInvalid { pipelineName errors { message path reason } }
    ... on PythonError { message stack }
  }
}
"""

WORKSPACE = """
{ workspaceOrError { __typename ... on Workspace { locationEntries {
    name loadStatus
    locationOrLoadError { __typename ... on PythonError { message } }
} } } }
"""

BACKFILL = """
query Backfill($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill {
      status
      isAssetBackfill
      error { message }
      runs(limit: 10) { id status tags { key value } }
      assetBackfillData { assetBackfillStatuses {
        ... on AssetPartitionsStatusCounts {
          assetKey { path }
          numPartitionsTargeted numPartitionsInProgress numPartitionsMaterialized
          numPartitionsFailed
        }
      } }
    }
    ... on PythonError { message }
  }
}
"""

ASSET_PARTITIONS = """
query AssetPartitions($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    __typename
    ... on AssetNode {
      partitionStats { numMaterialized numPartitions numFailed numMaterializing }
      assetPartitionStatuses {
        __typename
        ... on TimePartitionStatuses { ranges { startKey endKey status } }
      }
    }
  }
}
"""


@dataclass
class Service:
    """A process this test started, in its own process group, logging to a file."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 60) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name} (exit {self.process.poll()}) ---\n" + "\n".join(
            text.splitlines()[-lines:]
        )

    def stop(self) -> None:
        """SIGTERM to the group it leads (its own children: code server, run workers), then
        SIGKILL if it has not exited."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        # Anything left in the group (a grandchild that outlived its parent).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


class Services:
    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs, self.started = env, logs, list[Service]()

    def start(self, name: str, *args: str) -> Service:
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [str(VENV_BIN / name), *args],
                cwd=PROJECT_ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        service = Service(name, process, log)
        self.started.append(service)
        return service

    def diagnostics(self) -> str:
        return "\n".join(s.tail() for s in self.started)

    def stop_all(self) -> None:
        for service in reversed(self.started):
            service.stop()


@pytest.fixture
def services(
    simulator: SimulatorServer, database_url: str, tmp_path: Path
) -> Iterator[tuple[Services, Path]]:
    home = make_dagster_home(tmp_path / "dagster_home")
    started = Services(sim_env(simulator, database_url, home), tmp_path)
    try:
        yield started, home
    finally:
        started.stop_all()


def _wait_for(what: str, probe: Callable[[], T | None], timeout: float, services: Services) -> T:
    deadline = time.monotonic() + timeout
    while True:
        for service in services.started:
            if service.process.poll() is not None:
                pytest.fail(
                    f"{service.name} exited while waiting for {what}\n" + services.diagnostics()
                )
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n" + services.diagnostics())
        time.sleep(1)


GraphQL = Callable[..., dict[str, Any]]


def _webserver(started: Services) -> GraphQL:
    """Start the webserver on a free port; once it has loaded the code location, return a
    function that posts a GraphQL query to it, as the UI does."""
    port = free_port()
    graphql_url = f"http://127.0.0.1:{port}/graphql"

    def graphql(query: str, **variables: Any) -> dict[str, Any]:
        response = requests.post(
            graphql_url, json={"query": query, "variables": variables}, timeout=30
        )
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body
        data: dict[str, Any] = body["data"]
        return data

    started.start("dagster-webserver", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port))

    def location_loaded() -> bool | None:
        try:
            data = graphql(WORKSPACE)
        except requests.RequestException:
            return None
        entries = data["workspaceOrError"]["locationEntries"]
        if not entries or entries[0]["loadStatus"] != "LOADED":
            return None
        location = entries[0]["locationOrLoadError"]
        assert location["__typename"] == "RepositoryLocation", location
        return True

    _wait_for("the webserver to load the code location", location_loaded, STARTUP_TIMEOUT, started)
    return graphql


def _launch_week_backfill(graphql: GraphQL) -> str:
    """What the asset page's "Materialize selected" -> partition range -> "Launch backfill"
    sends, for WEEK; the backfill's id."""
    launched = graphql(
        LAUNCH_PARTITION_BACKFILL,
        backfillParams={
            "tags": [{"key": "dagster/from_ui", "value": "true"}],
            "assetSelection": [{"path": ASSET.path}],
            "partitionNames": [d.isoformat() for d in WEEK],
            "fromFailure": False,
        },
    )["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id: str = launched["backfillId"]
    return backfill_id


def test_backfill_launched_like_the_ui_is_one_run_and_materializes_the_week(
    services: tuple[Services, Path], simulator: SimulatorServer, database_url: str
) -> None:
    started, home = services
    graphql = _webserver(started)
    backfill_id = _launch_week_backfill(graphql)

    # The daemon (started now, so its first pass already sees the backfill) carries it out.
    started.start("dagster-daemon", "run", "-w", "workspace.yaml")

    def finished() -> dict[str, Any] | None:
        backfill = graphql(BACKFILL, id=backfill_id)["partitionBackfillOrError"]
        assert backfill["__typename"] == "PartitionBackfill", backfill
        in_progress = ("REQUESTED", "CANCELING", "FAILING")
        return None if backfill["status"] in in_progress else backfill

    backfill = _wait_for("the backfill to finish", finished, BACKFILL_TIMEOUT, started)
    assert backfill["status"] in ("COMPLETED", "COMPLETED_SUCCESS"), (
        f"{backfill}\n{started.diagnostics()}"
    )
    assert backfill["isAssetBackfill"]
    assert backfill["assetBackfillData"]["assetBackfillStatuses"] == [
        {
            "assetKey": {"path": ASSET.path},
            "numPartitionsTargeted": 7,
            "numPartitionsInProgress": 0,
            "numPartitionsMaterialized": 7,
            "numPartitionsFailed": 0,
        }
    ]

    # Exactly one run, for the whole week (single-run backfill policy).
    (run,) = backfill["runs"]
    assert run["status"] == "SUCCESS"
    tags = {t["key"]: t["value"] for t in run["tags"]}
    assert tags["dagster/backfill"] == backfill_id
    assert tags["dagster/asset_partition_range_start"] == WEEK[0].isoformat()
    assert tags["dagster/asset_partition_range_end"] == WEEK[-1].isoformat()

    # The UI shows the seven partitions materialized.
    node = graphql(ASSET_PARTITIONS, key={"path": ASSET.path})["assetNodeOrError"]
    assert node["__typename"] == "AssetNode"
    assert node["partitionStats"]["numMaterialized"] == 7
    assert node["partitionStats"]["numFailed"] == 0
    assert node["assetPartitionStatuses"]["ranges"] == [
        {"startKey": "2024-06-01", "endKey": "2024-06-07", "status": "MATERIALIZED"}
    ]

    # The instance agrees, and the warehouse holds exactly the week the API serves.
    with open_instance(home) as instance:
        runs = instance.get_runs(RunsFilter(tags={"dagster/backfill": backfill_id}))
        assert [r.run_id for r in runs] == [run["id"]]
        assert runs[0].status == DagsterRunStatus.SUCCESS
        assert instance.get_materialized_partitions(ASSET) == {d.isoformat() for d in WEEK}
        records = instance.fetch_materializations(ASSET, limit=100).records
        assert {r.run_id for r in records} == {run["id"]}
    assert stored_days(database_url) == {d: len(simulator.simulator.store.day(d)) for d in WEEK}
    assert stored_tasks(database_url) == simulated(simulator, WEEK)


TERMINATE_RUNS = """
mutation TerminateRuns($runIds: [String!]!) {
  terminateRuns(runIds: $runIds) {
    __typename
    ... on TerminateRunsResult { terminateRunResults {
      __typename
      ... on TerminateRunFailure { message }
      ... on PythonError { message }
    } }
    ... on PythonError { message }
  }
}
"""
RUN = """
query Run($id: ID!) {
  runOrError(runId: $id) { __typename ... on Run { status } }
}
"""


def test_a_run_terminated_from_the_ui_stops_and_keeps_the_days_it_committed(
    services: tuple[Services, Path], simulator: SimulatorServer, database_url: str
) -> None:
    """The UI's Terminate interrupts the run's step. Dagster turns an interrupt of a step with a
    RetryPolicy into a retry, which the in-process executor ran ~30 s later, syncing the rest of
    the range: the run ended SUCCESS. It now stops; the days it committed stay materialized, the
    rest are not stored."""
    started, home = services
    # 250 tasks a day (three pages), every answer 0.3 s: the week takes several seconds a day.
    simulator.simulator.configure(day_counts=dict.fromkeys(WEEK, 250), latency_seconds=0.3)
    with psycopg.connect(database_url) as conn:
        apply_migrations(conn)  # (what the run does first: the test looks at the table sooner)
    graphql = _webserver(started)
    backfill_id = _launch_week_backfill(graphql)
    started.start("dagster-daemon", "run", "-w", "workspace.yaml")

    def first_day_committed() -> str | None:
        runs = graphql(BACKFILL, id=backfill_id)["partitionBackfillOrError"]["runs"]
        return runs[0]["id"] if runs and stored_days(database_url) else None

    run_id = _wait_for("a first committed day", first_day_committed, BACKFILL_TIMEOUT, started)
    terminated = graphql(TERMINATE_RUNS, runIds=[run_id])["terminateRuns"]
    assert terminated["__typename"] == "TerminateRunsResult", terminated
    assert [r["__typename"] for r in terminated["terminateRunResults"]] == ["TerminateRunSuccess"]

    def run_finished() -> str | None:
        status: str = graphql(RUN, id=run_id)["runOrError"]["status"]
        return status if status in ("SUCCESS", "FAILURE", "CANCELED") else None

    status = _wait_for("the terminated run to finish", run_finished, 120, started)
    assert status != "SUCCESS", started.diagnostics()
    committed = sorted(stored_days(database_url))
    assert committed == WEEK[: len(committed)] and len(committed) < len(WEEK), committed
    assert stored_tasks(database_url) == simulated(simulator, committed)
    with open_instance(home) as instance:
        events = instance.all_logs(run_id)
        assert not [e for e in events if e.dagster_event_type == DagsterEventType.STEP_UP_FOR_RETRY]
        assert instance.get_materialized_partitions(ASSET) == {d.isoformat() for d in committed}

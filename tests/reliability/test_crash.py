"""The run process killed (SIGKILL) in the middle of a multi-day backfill started from the CLI;
the same backfill run again on the same Dagster instance completes, exact and without
duplicates."""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import pytest
from dagster import AssetKey, AssetPartitionStatus, DagsterRunStatus, materialize
from dagster import job as dagster_job
from dagster import op as dagster_op

from pipelines.defs.assets import DAILY_PARTITIONS, group_call_tasks
from pipelines.defs.recovery import WORKER_TAG, Worker, release_crashed_runs
from pipelines.defs.resources import API_POOL, WarehouseResource
from pipelines.laaffic.simulator import SimulatorServer
from tests.defs.helpers import make_dagster_home, open_instance, range_tags, sim_env
from tests.reliability.helpers import (
    DAYS,
    MATERIALIZE,
    api_resource,
    assert_days_absent,
    assert_days_exact,
    committed_days,
    dagster_cli,
    failure_text,
    range_arg,
    row_counts,
    started,
    wait_for,
)

ASSET = AssetKey("group_call_tasks")


def _kill_mid_backfill(
    simulator: SimulatorServer, database_url: str, tmp_path: Path
) -> tuple[Path, list[date]]:
    """A CLI run of the six DAYS, SIGKILLed once it committed a first day: its DAGSTER_HOME and
    the days it committed."""
    # 250 tasks a day (three pages); every answer takes 0.4 s, so the six days take seconds.
    simulator.simulator.configure(day_counts=dict.fromkeys(DAYS, 250), latency_seconds=0.4)
    home = make_dagster_home(tmp_path / "home")
    command = dagster_cli(*MATERIALIZE, "--partition-range", range_arg(DAYS))

    with started(command, sim_env(simulator, database_url, home), tmp_path / "run.log") as run:

        def first_commit() -> list[date] | None:
            try:
                return committed_days(database_url) or None
            except psycopg.errors.UndefinedTable:  # not migrated yet
                return None

        wait_for("a first committed day", first_commit, 120, alive=run.popen)
        run.signal_group(signal.SIGKILL)
        assert run.wait(timeout=30) == -signal.SIGKILL
    simulator.simulator.configure(latency_seconds=0.0)
    return home, committed_days(database_url)


@pytest.mark.timeout(150)  # a rerun blocked on the pool would wait for ever
def test_run_killed_mid_backfill_then_rerun_is_exact_without_duplicates(
    simulator: SimulatorServer, database_url: str, tmp_path: Path
) -> None:
    home, committed = _kill_mid_backfill(simulator, database_url, tmp_path)
    assert committed == DAYS[: len(committed)]
    assert len(committed) < len(DAYS), "the run must have been killed before it finished"
    assert_days_exact(simulator, database_url, committed)
    assert_days_absent(database_url, DAYS[len(committed) :])
    with open_instance(home) as instance:
        (dead,) = instance.get_runs()
        assert dead.status == DagsterRunStatus.STARTED  # nothing could record its end
        assert WORKER_TAG in dead.tags
        held = instance.event_log_storage.get_concurrency_info(API_POOL).claimed_slots
        assert [slot.run_id for slot in held] == [dead.run_id]  # it died holding the API pool

    with open_instance(home) as instance:
        rerun = materialize(
            [group_call_tasks],
            resources={
                "laaffic": api_resource(simulator),
                "warehouse": WarehouseResource(url=database_url),
            },
            instance=instance,
            tags=range_tags(DAYS[0], DAYS[-1]),
            raise_on_error=False,
        )
        assert rerun.success, failure_text(rerun)
        # The crashed run is marked failed, saying why, and no longer holds the pool.
        dead_now = instance.get_run_by_id(dead.run_id)
        assert dead_now is not None and dead_now.status == DagsterRunStatus.FAILURE
        assert not instance.event_log_storage.get_concurrency_info(API_POOL).claimed_slots
        reasons = [
            record.event_log_entry.message
            for record in instance.get_records_for_run(dead.run_id).records
            if record.event_log_entry.dagster_event_type is not None
            and record.event_log_entry.dagster_event_type.value == "PIPELINE_FAILURE"
        ]
        assert any("run worker" in reason and "is gone" in reason for reason in reasons), reasons
        partitions = instance.get_materialized_partitions(ASSET)
        assert partitions == {day.isoformat() for day in DAYS}

    assert_days_exact(simulator, database_url, DAYS)
    total = 250 * len(DAYS)
    assert row_counts(database_url) == (total, total)  # rows = distinct task IDs = the API's


@pytest.mark.timeout(150)
def test_the_days_a_killed_run_committed_show_as_materialized_once_it_is_released(
    simulator: SimulatorServer, database_url: str, tmp_path: Path
) -> None:
    """The run that releases a killed one need not sync the same days (the next day's scheduled
    run, say): the days the killed run committed are stored, and are recorded as materialized by
    it, each with its own figures, not shown as failed; only the others are."""
    home, committed = _kill_mid_backfill(simulator, database_url, tmp_path)
    assert 1 <= len(committed) < len(DAYS)
    with open_instance(home) as instance:
        (dead,) = instance.get_runs()
        other_day = date(2024, 6, 20)
        next_run = materialize(
            [group_call_tasks],
            resources={
                "laaffic": api_resource(simulator),
                "warehouse": WarehouseResource(url=database_url),
            },
            instance=instance,
            partition_key=other_day.isoformat(),
            raise_on_error=False,
        )
        assert next_run.success, failure_text(next_run)
        dead_now = instance.get_run_by_id(dead.run_id)
        assert dead_now is not None and dead_now.status == DagsterRunStatus.FAILURE

        status = instance.get_status_by_partition(
            ASSET, [d.isoformat() for d in DAYS], DAILY_PARTITIONS
        )
        assert status == {
            d.isoformat(): (
                AssetPartitionStatus.MATERIALIZED if d in committed else AssetPartitionStatus.FAILED
            )
            for d in DAYS
        }
        records = instance.fetch_materializations(ASSET, limit=100).records
        recovered = {r.partition_key: r for r in records if r.run_id == dead.run_id}
        assert sorted(recovered) == [d.isoformat() for d in committed]
        for record in recovered.values():
            metadata = record.asset_materialization.metadata  # type: ignore[union-attr]
            assert metadata["inserted"].value == 250
            assert metadata["dagster/partition_row_count"].value == 250
            assert metadata["requests"].value == 3
        reasons = [
            record.event_log_entry.message
            for record in instance.get_records_for_run(dead.run_id).records
            if record.event_log_entry.dagster_event_type is not None
            and record.event_log_entry.dagster_event_type.value == "PIPELINE_FAILURE"
        ]
        kept = ", ".join(d.isoformat() for d in committed)
        assert any(f"({kept})" in reason for reason in reasons), reasons


def _holder(instance: Any, worker: Worker | None) -> str:
    """A STARTED run that holds the API pool's slot, its worker recorded as `worker`."""
    tags = {WORKER_TAG: worker.tag()} if worker else {}
    run = instance.create_run_for_job(job_def=_JOB, tags=tags, status=DagsterRunStatus.STARTED)
    claim = instance.event_log_storage.claim_concurrency_slot(API_POOL, run.run_id, "step")
    assert claim.is_claimed
    return str(run.run_id)


@dagster_op
def _noop() -> None:
    pass


@dagster_job
def _JOB() -> None:
    _noop()


def test_only_runs_whose_worker_is_provably_gone_are_released(tmp_path: Path) -> None:
    """The safety of the recovery above: a run whose worker process still exists keeps its slot
    (the next run waits for it, as the pool intends), as does a run on another host or one that
    did not record its worker. Only a run whose worker is gone from this host is released."""
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait(timeout=30)
    alive = Worker.this_process()
    with open_instance(make_dagster_home(tmp_path / "home")) as instance:
        instance.event_log_storage.set_concurrency_slots(API_POOL, 8)
        live = _holder(instance, alive)
        elsewhere = _holder(instance, replace(alive, host=alive.host + "-other", pid=ended.pid))
        untagged = _holder(instance, None)
        reused_pid = _holder(instance, replace(alive, started=alive.started - 1000))
        dead = _holder(instance, replace(alive, pid=ended.pid))
        logged: list[str] = []

        class Log:
            def warning(self, message: str) -> None:
                logged.append(message)

        current = instance.create_run_for_job(job_def=_JOB, status=DagsterRunStatus.STARTED)
        released = release_crashed_runs(instance, current.run_id, API_POOL, Log())

        assert sorted(released) == sorted([reused_pid, dead])
        held = {
            s.run_id
            for s in instance.event_log_storage.get_concurrency_info(API_POOL).claimed_slots
        }
        assert held == {live, elsewhere, untagged}
        for run_id in (reused_pid, dead):
            run = instance.get_run_by_id(run_id)
            assert run is not None and run.status == DagsterRunStatus.FAILURE
        for run_id in (live, elsewhere, untagged):
            run = instance.get_run_by_id(run_id)
            assert run is not None and run.status == DagsterRunStatus.STARTED
        assert any(f"dagster run delete {untagged}" in message for message in logged)
        current_run = instance.get_run_by_id(current.run_id)
        assert current_run is not None and current_run.tags[WORKER_TAG] == alive.tag()

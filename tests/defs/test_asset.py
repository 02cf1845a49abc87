"""The `group_call_tasks` asset in process: a partition loads exactly its day, and every partition
of a single-run range carries its own metadata."""

from __future__ import annotations

import itertools
import signal
import sys
import threading
import time
import warnings
from datetime import date
from types import FrameType
from typing import Any

import psycopg
import pytest
from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetPartitionStatus,
    AssetsDefinition,
    BetaWarning,
    DagsterInstance,
    ExecuteInProcessResult,
    asset,
    materialize,
)
from dagster._core.definitions.decorators.op_decorator import DecoratedOpFunction
from dagster._core.errors import DagsterExecutionInterruptedError

from pipelines.defs.assets import DAILY_PARTITIONS, group_call_tasks
from pipelines.defs.checks import no_new_rejects, row_count_matches_api, task_invariants_hold
from pipelines.defs.resources import LaafficApiResource, WarehouseResource
from pipelines.laaffic.simulator import SimulatorServer
from pipelines.warehouse.writer import ensure_schema
from tests.defs.helpers import (
    SIM_KEY,
    SIM_SECRET,
    days_between,
    range_tags,
    resources,
    simulated,
    stored_days,
    stored_tasks,
)
from tests.warehouse.helpers import on_sync_log_insert, waiting_for_advisory_lock

CHECKS = [row_count_matches_api, no_new_rejects, task_invariants_hold]
DAY = date(2024, 6, 4)
WEEK = days_between(date(2024, 6, 1), date(2024, 6, 7))


def _value(metadata: dict[str, object], key: str) -> object:
    entry = metadata[key]
    return getattr(entry, "value", entry)


def test_single_partition_loads_exactly_its_day_with_honest_metadata(
    simulator: SimulatorServer, database_url: str
) -> None:
    # 250 tasks: three pages of 100; the first request meets a transient -18 and is retried.
    simulator.simulator.configure(day_counts={DAY: 250})
    simulator.simulator.script("-18")
    expected = simulated(simulator, [DAY])
    assert len(expected) == 250

    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            [group_call_tasks, *CHECKS],
            resources=resources(simulator, database_url),
            instance=instance,
            partition_key=DAY.isoformat(),
        )
        assert result.success
        assert all(e.passed for e in result.get_asset_check_evaluations())

        # Exactly that day's tasks, byte for byte as the API returned them, nothing of its
        # neighbours (each simulated day has tasks at 00:00:00 and 23:59:59).
        assert stored_tasks(database_url) == expected
        assert stored_days(database_url) == {DAY: 250}
        with psycopg.connect(database_url) as conn:
            columns = [
                name
                for (name,) in conn.execute(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_name = 'group_call_tasks' ORDER BY ordinal_position"
                )
            ]

        materializations = result.asset_materializations_for_node("group_call_tasks")
        assert [m.partition for m in materializations] == [DAY.isoformat()]
        metadata = dict(materializations[0].metadata)
        figures = {
            key: _value(metadata, key)
            for key in (
                "api_total",
                "pages",
                "requests",
                "retries",
                "inserted",
                "updated",
                "unchanged",
                "rejected",
                "dagster/row_count",
                "dagster/partition_row_count",
                "dagster/table_name",
            )
        }
        assert figures == {
            "api_total": 250,
            "pages": 3,
            "requests": 4,
            "retries": 1,
            "inserted": 250,
            "updated": 0,
            "unchanged": 0,
            "rejected": 0,
            "dagster/row_count": 250,
            "dagster/partition_row_count": 250,
            "dagster/table_name": "group_call_tasks",
        }
        duration = _value(metadata, "duration_seconds")
        assert isinstance(duration, float) and duration >= 0
        schema = _value(metadata, "dagster/column_schema")
        assert [c.name for c in schema.columns] == columns  # type: ignore[attr-defined]
        assert all(c.description for c in schema.columns)  # type: ignore[attr-defined]

        # The instance records the same: one materialization of that one partition.
        records = instance.fetch_materializations(AssetKey("group_call_tasks"), limit=10).records
        assert [r.partition_key for r in records] == [DAY.isoformat()]

        # Materializing it again changes nothing and says so.
        again = materialize(
            [group_call_tasks],
            resources=resources(simulator, database_url),
            instance=instance,
            partition_key=DAY.isoformat(),
        )
        metadata = dict(again.asset_materializations_for_node("group_call_tasks")[0].metadata)
        assert [_value(metadata, k) for k in ("inserted", "updated", "unchanged", "retries")] == [
            0,
            0,
            250,
            0,
        ]
        assert stored_tasks(database_url) == expected


def test_range_in_one_run_gives_each_partition_its_own_figures(
    simulator: SimulatorServer, database_url: str
) -> None:
    counts = {day: len(simulator.simulator.store.day(day)) for day in WEEK}
    assert len(set(counts.values())) > 1, "the seed should give the days different counts"

    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            [group_call_tasks, *CHECKS],
            resources=resources(simulator, database_url),
            instance=instance,
            tags=range_tags(WEEK[0], WEEK[-1]),
        )
        assert result.success
        assert stored_days(database_url) == counts
        assert stored_tasks(database_url) == simulated(simulator, WEEK)

        runs = instance.get_runs()
        assert [r.run_id for r in runs] == [result.run_id]
        records = instance.fetch_materializations(AssetKey("group_call_tasks"), limit=100).records
        assert len(records) == 7
        assert {r.run_id for r in records} == {result.run_id}
        per_partition = {
            date.fromisoformat(r.partition_key or ""): dict(r.asset_materialization.metadata)  # type: ignore[union-attr]
            for r in records
        }
        assert sorted(per_partition) == WEEK
        for day, metadata in per_partition.items():
            assert _value(metadata, "api_total") == counts[day], day
            assert _value(metadata, "dagster/partition_row_count") == counts[day], day
            assert _value(metadata, "inserted") == counts[day], day
            assert _value(metadata, "pages") == 1, day
            assert _value(metadata, "requests") == 1, day
            assert _value(metadata, "window") == f"[{day} 00:00:00 .. {day} 23:59:59]", day
        # Not one figure copied onto every partition: the api totals follow the days.
        assert [_value(per_partition[d], "api_total") for d in WEEK] == [counts[d] for d in WEEK]

        # The table-wide figures are stored once, on the run's last partition, which is the
        # asset's latest materialization (what the UI shows as its row count and columns).
        table_wide = {"dagster/row_count", "dagster/column_schema", "dagster/table_name", "query"}
        assert [d for d in WEEK if table_wide & per_partition[d].keys()] == [WEEK[-1]]
        latest = instance.get_latest_materialization_event(AssetKey("group_call_tasks"))
        assert latest is not None and latest.asset_materialization is not None
        assert latest.asset_materialization.partition == WEEK[-1].isoformat()
        metadata = dict(latest.asset_materialization.metadata)
        assert _value(metadata, "dagster/row_count") == sum(counts.values())
        assert _value(metadata, "dagster/table_name") == "group_call_tasks"
        schema = _value(metadata, "dagster/column_schema")
        assert "task_sum_pay_fee_amount" in [c.name for c in schema.columns]  # type: ignore[attr-defined]


def test_run_without_credentials_fails_at_once_naming_them(database_url: str) -> None:
    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            [group_call_tasks],
            resources={
                "laaffic": LaafficApiResource(),
                "warehouse": WarehouseResource(url=database_url),
            },
            instance=instance,
            partition_key=DAY.isoformat(),
            raise_on_error=False,
        )
        assert not result.success
        events = result.all_events
        # No step retry is requested (the asset's RetryPolicy would wait 30 s and more).
        assert not [e for e in events if e.event_type_value == "STEP_UP_FOR_RETRY"]
        failures = [e for e in events if e.event_type_value == "STEP_FAILURE"]
        assert len(failures) == 1
        error = failures[0].step_failure_data.error  # type: ignore[union-attr]
        assert error is not None
        assert "LAAFFIC_API_KEY" in error.message
        assert "LAAFFIC_API_SECRET" in error.message
        # It stopped before touching the warehouse (not even the schema was created).
        with psycopg.connect(database_url) as conn:
            row = conn.execute("SELECT to_regclass('group_call_tasks')").fetchone()
        assert row == (None,)


def _without_step_retries(assets_def: AssetsDefinition) -> AssetsDefinition:
    """The same asset function and partitions, without the step's RetryPolicy."""
    compute = assets_def.op.compute_fn
    assert isinstance(compute, DecoratedOpFunction)
    with warnings.catch_warnings():  # backfill_policy is beta (see pipelines/defs/assets.py)
        warnings.simplefilter("ignore", BetaWarning)
        return asset(
            name=assets_def.key.path[-1],
            partitions_def=assets_def.partitions_def,
            backfill_policy=assets_def.backfill_policy,
        )(compute.decorated_fn)


def _week_without_step_retries(
    instance: DagsterInstance, run_resources: dict[str, Any]
) -> ExecuteInProcessResult:
    """Materialize WEEK in one run without the step's RetryPolicy: a failed attempt is the
    run's last."""
    return materialize(
        [_without_step_retries(group_call_tasks)],
        resources=run_resources,
        instance=instance,
        tags=range_tags(WEEK[0], WEEK[-1]),
        raise_on_error=False,
    )


def test_a_terminated_range_run_records_the_days_it_committed(
    simulator: SimulatorServer, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Terminating a run from the UI interrupts its step (Ctrl-C likewise): the days committed
    before it are recorded as materialized, each with its own figures, and no other."""
    counts = {day: len(simulator.simulator.store.day(day)) for day in WEEK}
    pick_fault = simulator.simulator._pick_fault
    requests = itertools.count(1)

    def interrupt_at_the_fourth_request() -> str:
        # Days are read one after the other, one page each: the fourth request is the fourth
        # day's. The run's main thread is interrupted, as Dagster's termination does.
        if next(requests) == 4:
            main_thread = threading.main_thread().ident
            assert main_thread is not None
            signal.pthread_kill(main_thread, signal.SIGINT)
        return pick_fault()

    monkeypatch.setattr(simulator.simulator, "_pick_fault", interrupt_at_the_fourth_request)
    sequential = resources(simulator, database_url) | {
        "laaffic": LaafficApiResource(
            base_url=simulator.url, api_key=SIM_KEY, api_secret=SIM_SECRET, days_ahead=0
        )
    }
    with DagsterInstance.ephemeral() as instance:
        # With the step's RetryPolicy: Dagster turns an interrupt into a retry, and the
        # in-process executor, which never checks for one, ran it ~30 s later, syncing the rest
        # of the range: a terminated run (or Ctrl-C) did not stop.
        result = materialize(
            [group_call_tasks],
            resources=sequential,
            instance=instance,
            tags=range_tags(WEEK[0], WEEK[-1]),
            raise_on_error=False,
        )
        assert not result.success
        events = [e.event_type_value for e in result.all_events]
        assert "STEP_UP_FOR_RETRY" not in events
        (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        data = failure.step_failure_data  # type: ignore[union-attr]
        assert data.user_failure_data is not None
        assert data.user_failure_data.description.startswith("run terminated")
        assert data.error is not None
        assert "DagsterExecutionInterruptedError" in data.error.to_string()
        # The interrupt lands while the third day is normalised or the fourth read: the write
        # under way finishes, none queued after it starts. What was committed is a prefix.
        stored = stored_days(database_url)
        committed = sorted(stored)
        assert 1 <= len(committed) <= 3
        assert committed == WEEK[: len(committed)]
        assert stored == {day: counts[day] for day in committed}

        materialized = instance.get_materialized_partitions(AssetKey("group_call_tasks"))
        assert materialized == {day.isoformat() for day in committed}
        records = instance.fetch_materializations(AssetKey("group_call_tasks"), limit=100).records
        for record in records:
            metadata = dict(record.asset_materialization.metadata)  # type: ignore[union-attr]
            day = date.fromisoformat(record.partition_key or "")
            assert _value(metadata, "inserted") == counts[day], day
            assert _value(metadata, "dagster/partition_row_count") == counts[day], day


def test_a_run_terminated_between_two_days_records_the_write_then_under_way(
    simulator: SimulatorServer, database_url: str
) -> None:
    """The interrupt can land in the asset itself, between two days the sync hands it (recording
    a day's figures), while the next day's write is under way on the writer thread. That write
    commits: its day is recorded as materialized too, not left showing as failed."""
    first, second = WEEK[0], WEEK[1]
    with psycopg.connect(database_url) as conn:
        ensure_schema(conn, database_url)
        # `second`'s write, at its sync-log row, waits for a lock this test holds.
        on_sync_log_insert(
            conn, f"NEW.window_date = DATE '{second}'", "PERFORM pg_advisory_xact_lock(4245);"
        )
    interrupted: list[str] = []
    with psycopg.connect(database_url, autocommit=True) as gate:
        gate.execute("SELECT pg_advisory_lock(4245)")

        def interrupt_while_recording_the_first_day(frame: FrameType, event: str, _: Any) -> None:
            if (
                event == "call"
                and frame.f_code is AssetExecutionContext.add_asset_metadata.__code__
                and not interrupted
            ):
                interrupted.append(frame.f_locals["partition_key"])
                deadline = time.monotonic() + 60
                # `second`'s write is under way (the third's may be too): it will commit
                while not waiting_for_advisory_lock(gate, 4245):
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
                gate.execute("SELECT pg_advisory_unlock(4245)")
                raise DagsterExecutionInterruptedError()  # as Dagster's handler raises it

        with DagsterInstance.ephemeral() as instance:
            previous = sys.getprofile()
            sys.setprofile(interrupt_while_recording_the_first_day)
            try:
                result = _week_without_step_retries(instance, resources(simulator, database_url))
            finally:
                sys.setprofile(previous)
            assert not result.success
            assert interrupted == [first.isoformat()]
            committed = sorted(stored_days(database_url))
            assert committed == [first, second]
            materialized = instance.get_materialized_partitions(AssetKey("group_call_tasks"))
            assert materialized == {day.isoformat() for day in committed}


@pytest.mark.parametrize("fault", ["api-refusal", "write-failure"])
def test_a_failed_range_run_keeps_the_committed_days_materialized_with_their_figures(
    simulator: SimulatorServer, database_url: str, fault: str
) -> None:
    counts = {day: len(simulator.simulator.store.day(day)) for day in WEEK}
    committed, failed = WEEK[:3], WEEK[3:]
    asset_def = group_call_tasks
    if fault == "api-refusal":
        # Days are read one after the other (one page each): the fourth request, the fourth
        # day's, is refused with -1 (wrong credentials), which fails the step without a retry.
        simulator.simulator.script("ok", "ok", "ok", "-1")
        cause = "LAAFFIC API code -1 (authentication error)"
    else:
        # The fourth day's write raises in the database (its step would be retried; not here).
        with psycopg.connect(database_url) as conn:
            ensure_schema(conn, database_url)
            on_sync_log_insert(
                conn, f"NEW.window_date = DATE '{WEEK[3]}'", "RAISE EXCEPTION 'injected failure';"
            )
        cause = "RaiseException: injected failure"
        # Such a failure is retried by the asset's RetryPolicy, 30 s and more later: run the
        # asset's own function without it, so the run ends on this first failure.
        asset_def = _without_step_retries(group_call_tasks)
    sequential = resources(simulator, database_url) | {
        "laaffic": LaafficApiResource(
            base_url=simulator.url,
            api_key=SIM_KEY,
            api_secret=SIM_SECRET,
            backoff_base_seconds=0.001,
            days_ahead=0,
        )
    }

    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            [asset_def],
            resources=sequential,
            instance=instance,
            tags=range_tags(WEEK[0], WEEK[-1]),
            raise_on_error=False,
        )
        assert not result.success
        assert stored_days(database_url) == {day: counts[day] for day in committed}

        # The failure says what went wrong and names the days it kept.
        failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        assert len(failures) == 1
        error = failures[0].step_failure_data.error  # type: ignore[union-attr]
        assert error is not None
        assert cause in error.message
        # The day that failed is named: the API's errors name their window, a write its day.
        named = f"window [{WEEK[3]} 00:00:00" if fault == "api-refusal" else f"writing {WEEK[3]}"
        assert named in error.message
        assert "3 day(s) were committed before it (2024-06-01, 2024-06-02, 2024-06-03)" in (
            error.message
        )

        # Those days are materialized, each with its own figures; only the rest failed.
        status = instance.get_status_by_partition(
            AssetKey("group_call_tasks"), [d.isoformat() for d in WEEK], DAILY_PARTITIONS
        )
        assert status == {
            **{d.isoformat(): AssetPartitionStatus.MATERIALIZED for d in committed},
            **{d.isoformat(): AssetPartitionStatus.FAILED for d in failed},
        }
        records = instance.fetch_materializations(AssetKey("group_call_tasks"), limit=100).records
        per_partition = {
            date.fromisoformat(r.partition_key or ""): dict(r.asset_materialization.metadata)  # type: ignore[union-attr]
            for r in records
        }
        assert sorted(per_partition) == committed
        assert {r.run_id for r in records} == {result.run_id}
        for day, metadata in per_partition.items():
            assert _value(metadata, "api_total") == counts[day], day
            assert _value(metadata, "inserted") == counts[day], day
            assert _value(metadata, "dagster/partition_row_count") == counts[day], day
            assert _value(metadata, "window") == f"[{day} 00:00:00 .. {day} 23:59:59]", day


def test_a_write_failing_before_any_day_is_committed_names_its_day(
    simulator: SimulatorServer, database_url: str
) -> None:
    """With no day committed the database's error is raised as it is (the step's RetryPolicy
    retries it), still naming the day being written: a range run's first, here."""
    with psycopg.connect(database_url) as conn:
        ensure_schema(conn, database_url)
        on_sync_log_insert(conn, "true", "RAISE EXCEPTION 'injected failure';")
    with DagsterInstance.ephemeral() as instance:
        result = _week_without_step_retries(instance, resources(simulator, database_url))
    assert not result.success
    assert stored_days(database_url) == {}
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    error = failure.step_failure_data.error  # type: ignore[union-attr]
    assert error is not None and error.cause is not None  # (Dagster wraps the step's error)
    assert error.cause.cls_name == "RaiseException"
    assert f"while writing {WEEK[0]} to the warehouse" in error.cause.message


def test_a_step_that_fails_between_two_days_leaves_no_sync_thread_running(
    simulator: SimulatorServer, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any error in the asset between two days it is handed (recording a day's figures, say)
    stops the sync with the step: its threads (reading ahead, writing) do not run on after the
    step failed, nor wait for garbage collection to stop them, and the days it committed are
    recorded as materialized."""
    record = AssetExecutionContext.add_asset_metadata

    def fail_on_the_second_day(self: AssetExecutionContext, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("partition_key") == WEEK[1].isoformat():
            raise RuntimeError("injected failure while recording a day")
        record(self, *args, **kwargs)

    monkeypatch.setattr(AssetExecutionContext, "add_asset_metadata", fail_on_the_second_day)
    kept: list[threading.Thread] = []
    with DagsterInstance.ephemeral() as instance:
        result = _week_without_step_retries(instance, resources(simulator, database_url))
        kept = [t for t in threading.enumerate() if t.name.startswith("laaffic-")]
        # Every day it committed, and only those, shows as materialized.
        materialized = instance.get_materialized_partitions(AssetKey("group_call_tasks"))
        assert materialized == {day.isoformat() for day in stored_days(database_url)}
        assert {WEEK[0].isoformat(), WEEK[1].isoformat()} <= materialized
    assert not result.success
    assert kept == []

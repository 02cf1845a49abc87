"""Issue 5: in-progress tasks converge; the sensor re-syncs exactly the days that need it."""

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg
import pytest
from dagster import (
    AssetKey,
    DagsterInstance,
    DagsterRunStatus,
    RunRequest,
    RunsFilter,
    SensorResult,
    SkipReason,
    build_sensor_context,
    materialize,
)
from dagster._core.storage.tags import PRIORITY_TAG, RUN_KEY_TAG, SENSOR_NAME_TAG

from pipelines.definitions import defs
from pipelines.defs.assets import SETTINGS, group_call_tasks
from pipelines.defs.resources import LaafficApiResource, WarehouseResource
from pipelines.defs.schedules import DAILY_SYNC_JOB
from pipelines.defs.sensors import STATE_TAG, open_tasks_sensor
from pipelines.laaffic.models import OPEN_STATUSES
from pipelines.laaffic.simulator import SimulatorServer
from pipelines.warehouse.migrate import apply_migrations
from tests.defs.helpers import range_tags
from tests.warehouse.helpers import make_records, new_database, write

SENSOR = "open_tasks_sensor"


def _recent_days(count: int) -> list[date]:
    today = datetime.now(ZoneInfo(SETTINGS.timezone)).date()
    return [today - timedelta(days=n) for n in range(count, 0, -1)]


def _resources(sim: SimulatorServer, database_url: str) -> dict[str, object]:
    return {
        "laaffic": LaafficApiResource(
            base_url=sim.url, api_key="sim-key", api_secret="sim-secret", backoff_base_seconds=0.001
        ),
        "warehouse": WarehouseResource(url=database_url),
    }


def _evaluate(instance: DagsterInstance, database_url: str) -> SensorResult | SkipReason:
    with build_sensor_context(
        instance=instance, resources={"warehouse": WarehouseResource(url=database_url)}
    ) as context:
        result = open_tasks_sensor(context)
    assert isinstance(result, SensorResult | SkipReason)
    return result


def _stored(database_url: str) -> dict[int, dict[str, object]]:
    with psycopg.connect(database_url) as conn:
        return {
            task_id: raw
            for task_id, raw in conn.execute("SELECT task_id, raw FROM group_call_tasks")
        }


def _backfill(instance: DagsterInstance, resources: dict[str, object], days: list[date]) -> None:
    """Sync `days` in one run, as a single-run backfill from the UI does."""
    materialize(
        [group_call_tasks],
        resources=resources,
        instance=instance,
        tags=range_tags(days[0], days[-1]),
    )


def test_open_tasks_converge_and_only_open_days_are_refreshed(
    simulator: SimulatorServer, database_url: str
) -> None:
    store = simulator.simulator.store
    days = _recent_days(7)
    quiet_days = days[:3]
    store.advance(quiet_days, to_final=True)  # these days have nothing in progress
    open_days = [d for d in days if any(t.record["status"] in OPEN_STATUSES for t in store.day(d))]
    assert len(open_days) >= 2, "the seed should leave several days with open tasks"
    resources = _resources(simulator, database_url)

    with DagsterInstance.ephemeral() as instance:
        _backfill(instance, resources, days)
        rounds = 0
        while True:
            store.advance(days)  # the API moves on: open tasks progress, some become final
            simulator.simulator.reset_stats()
            result = _evaluate(instance, database_url)
            if isinstance(result, SkipReason):
                break
            requested = [date.fromisoformat(r.partition_key or "") for r in result.run_requests]
            # Exactly the days that still had open tasks stored; never the quiet ones.
            assert requested == [d for d in days if _open_raw(database_url, d)]
            assert not set(requested) & set(quiet_days)
            # Evaluating again before anything ran asks for the same run keys (deduplicated).
            again = _evaluate(instance, database_url)
            assert isinstance(again, SensorResult)
            assert [r.run_key for r in again.run_requests] == [
                r.run_key for r in result.run_requests
            ]
            for request in result.run_requests:
                materialize(
                    [group_call_tasks],
                    resources=resources,
                    instance=instance,
                    partition_key=request.partition_key,
                )
            # One page per requested day (each holds < 100 tasks): cost follows the open days.
            assert simulator.simulator.stats.requests == len(requested)
            rounds += 1
            assert rounds < 6, "open tasks should converge within a few refreshes"

        # The warehouse equals the API's current state for every task.
        expected = {t.task_id: t.record for d in days for t in store.day(d)}
        assert _stored(database_url) == expected
        assert all(r["status"] not in OPEN_STATUSES for r in expected.values())

        refreshed = instance.fetch_materializations(AssetKey("group_call_tasks"), limit=100)
        finals = 0
        for record in refreshed.records:
            assert record.asset_materialization is not None
            finals += int(str(record.asset_materialization.metadata["became_final"].value))
        opened = sum(1 for d in open_days for t in store.day(d))
        assert 0 < finals <= opened


def _open_raw(database_url: str, day: date) -> list[dict[str, object]]:
    with psycopg.connect(database_url) as conn:
        return [
            raw
            for (raw,) in conn.execute(
                "SELECT raw FROM group_call_tasks WHERE created_date = %s AND status IN (0,1,5,6)",
                (day,),
            )
        ]


def test_sensor_skips_when_nothing_is_open(simulator: SimulatorServer, database_url: str) -> None:
    days = _recent_days(2)
    simulator.simulator.store.advance(days, to_final=True)
    with DagsterInstance.ephemeral() as instance:
        materialize(
            [group_call_tasks],
            resources=_resources(simulator, database_url),
            instance=instance,
            partition_key=days[0].isoformat(),
        )
        assert isinstance(_evaluate(instance, database_url), SkipReason)


def test_only_days_from_the_horizon_to_yesterday_are_refreshed(database_url: str) -> None:
    """Open tasks stored for the horizon's first day and for yesterday are refreshed; open tasks
    of the day before the horizon (no longer followed) and of today (not a partition yet) are
    not."""
    today = datetime.now(ZoneInfo(SETTINGS.timezone)).date()
    first = today - timedelta(days=SETTINGS.open_tasks_horizon_days)
    days = [first - timedelta(days=1), first, today - timedelta(days=1), today]
    with psycopg.connect(database_url, autocommit=True) as conn:
        apply_migrations(conn)
        for n, day in enumerate(days):
            write(conn, make_records(day, 5, first_id=1_000_000 * (n + 1), open_fraction=1), day)
        open_days = conn.execute(
            f"SELECT DISTINCT created_date FROM group_call_tasks WHERE status IN "
            f"({', '.join(map(str, sorted(OPEN_STATUSES)))}) ORDER BY 1"
        ).fetchall()
    assert [d for (d,) in open_days] == days  # every one of the four days has open tasks
    with DagsterInstance.ephemeral() as instance:
        result = _evaluate(instance, database_url)
    if datetime.now(ZoneInfo(SETTINGS.timezone)).date() != today:  # the sensor saw another day
        pytest.skip("the account's day ended while the test ran; the days it expects moved on")
    assert isinstance(result, SensorResult)
    assert sorted(r.partition_key for r in result.run_requests) == [
        first.isoformat(),
        days[2].isoformat(),
    ]


def _request_for(result: SensorResult | SkipReason, day: str) -> RunRequest:
    assert isinstance(result, SensorResult)
    (request,) = [r for r in result.run_requests if r.partition_key == day]
    assert isinstance(request, RunRequest)
    return request


def test_a_failed_or_canceled_refresh_is_requested_again_under_a_new_run_key(
    simulator: SimulatorServer, database_url: str
) -> None:
    days = _recent_days(7)
    resources = _resources(simulator, database_url)
    with DagsterInstance.ephemeral() as instance:
        _backfill(instance, resources, days)
        first = _evaluate(instance, database_url)
        assert isinstance(first, SensorResult) and first.run_requests
        keys = {r.partition_key: r.run_key for r in first.run_requests}
        day = first.run_requests[0].partition_key or ""
        request = _request_for(first, day)

        # The run the daemon launches for it fails: the API refuses both reads of the stored
        # day (the hashing pass, then the full read). It synced nothing, so the day's latest
        # sync, its state, is unchanged. (Tagged as the sensor tagged runs before STATE_TAG: a
        # day frozen by a failed refresh before this sensor counted failures thaws too.)
        simulator.simulator.script("-1", "-1")
        old_tags = {k: v for k, v in request.tags.items() if k != STATE_TAG}
        failed = materialize(
            [group_call_tasks],
            resources=resources,
            instance=instance,
            partition_key=day,
            tags={**old_tags, RUN_KEY_TAG: request.run_key or "", SENSOR_NAME_TAG: SENSOR},
            raise_on_error=False,
        )
        assert not failed.success

        # Its refresh is requested again, under a key no run has (Dagster would skip a key a
        # run already has); the other days are asked for as before.
        retry = _request_for(_evaluate(instance, database_url), day)
        assert retry.run_key not in (None, request.run_key)
        assert not instance.get_runs(RunsFilter(tags={RUN_KEY_TAG: retry.run_key or ""}))
        again = _evaluate(instance, database_url)
        assert isinstance(again, SensorResult)
        assert {r.partition_key: r.run_key for r in again.run_requests} == {
            **keys,
            day: retry.run_key,
        }

        # While that refresh is queued or running, the key stays (so it is not requested
        # twice); once it is canceled, the refresh is requested again under yet another key.
        job = defs.resolve_job_def(DAILY_SYNC_JOB.name)
        running = instance.create_run_for_job(
            job,
            status=DagsterRunStatus.STARTED,
            tags={**retry.tags, RUN_KEY_TAG: retry.run_key or "", SENSOR_NAME_TAG: SENSOR},
        )
        assert _request_for(_evaluate(instance, database_url), day).run_key == retry.run_key
        instance.report_run_canceled(running)
        assert instance.get_run_by_id(running.run_id).status == DagsterRunStatus.CANCELED  # type: ignore[union-attr]
        third = _request_for(_evaluate(instance, database_url), day)
        assert third.run_key not in (request.run_key, retry.run_key)
        assert not instance.get_runs(RunsFilter(tags={RUN_KEY_TAG: third.run_key or ""}))


def test_a_day_synced_into_another_warehouse_is_refreshed_there_too(
    simulator: SimulatorServer, database_url: str, pg_server_url: str
) -> None:
    """Run keys live in the Dagster instance, sync ids in the warehouse. An instance that served
    one warehouse (the simulator's, under `dev`) and then serves another (WAREHOUSE_URL now a
    fresh real one) met the same `<day>:after-sync-<id>` states again: the same days synced in
    the same order get the same ids. Dagster launches no run for a key a run already has, so the
    open tasks of those days in the second warehouse were never refreshed."""
    days = _recent_days(7)
    with new_database(pg_server_url) as other, DagsterInstance.ephemeral() as instance:
        _backfill(instance, _resources(simulator, database_url), days)
        first = _evaluate(instance, database_url)
        assert isinstance(first, SensorResult) and first.run_requests
        job = defs.resolve_job_def(DAILY_SYNC_JOB.name)
        for request in first.run_requests:  # the refreshes the daemon ran for the first one
            instance.create_run_for_job(
                job,
                status=DagsterRunStatus.SUCCESS,
                tags={**request.tags, RUN_KEY_TAG: request.run_key or "", SENSOR_NAME_TAG: SENSOR},
            )

        _backfill(instance, _resources(simulator, other), days)
        second = _evaluate(instance, other)
        assert isinstance(second, SensorResult)
        assert [r.partition_key for r in second.run_requests] == [
            r.partition_key for r in first.run_requests
        ]
        for request in second.run_requests:
            assert not instance.get_runs(RunsFilter(tags={RUN_KEY_TAG: request.run_key or ""}))


def test_a_task_whose_status_was_refused_is_followed_until_it_is_final(
    simulator: SimulatorServer, database_url: str
) -> None:
    """A status the normaliser refuses is stored as NULL: neither open nor final. The sensor
    followed only open statuses, so a task whose status was unreadable once (the reject reported
    once) kept that sync's figures for good, though the API later reported it final."""
    store = simulator.simulator.store
    days = _recent_days(2)
    store.advance(days, to_final=True)
    task = store.day(days[0])[0]
    final = dict(task.record)
    task.update(status="calling", callNum=0, success=0, fail=0)  # refused: not a status code
    resources = _resources(simulator, database_url)
    with DagsterInstance.ephemeral() as instance:
        _backfill(instance, resources, days)
        assert _stored(database_url)[task.task_id]["status"] == "calling"

        task.update(**final)  # the API now reports it readable, and final
        result = _evaluate(instance, database_url)
        assert isinstance(result, SensorResult)
        assert [r.partition_key for r in result.run_requests] == [days[0].isoformat()]
        for request in result.run_requests:
            materialize(
                [group_call_tasks],
                resources=resources,
                instance=instance,
                partition_key=request.partition_key,
            )
        assert _stored(database_url)[task.task_id] == final
        assert isinstance(_evaluate(instance, database_url), SkipReason)


def test_a_refresh_is_requested_again_after_a_failed_one_was_deleted(database_url: str) -> None:
    """The retry number in the run key was the count of failed refreshes of the day's state. A
    failed run deleted from the UI (clearing up failures) lowered it to the key of a failed run
    still there, and Dagster launches no run for a key a run has: the day was never refreshed
    again. The next key now follows the highest one that failed."""
    day = _recent_days(2)[0]
    with psycopg.connect(database_url, autocommit=True) as conn:
        apply_migrations(conn)
        write(conn, make_records(day, 5, open_fraction=1), day)
    job = defs.resolve_job_def(DAILY_SYNC_JOB.name)
    with DagsterInstance.ephemeral() as instance:
        failed = []
        for _ in range(2):  # the refresh, then its retry, both fail
            request = _request_for(_evaluate(instance, database_url), day.isoformat())
            run = instance.create_run_for_job(
                job,
                status=DagsterRunStatus.FAILURE,
                tags={**request.tags, RUN_KEY_TAG: request.run_key or "", SENSOR_NAME_TAG: SENSOR},
            )
            failed.append(run)
        instance.delete_run(failed[0].run_id)

        request = _request_for(_evaluate(instance, database_url), day.isoformat())
        assert not instance.get_runs(RunsFilter(tags={RUN_KEY_TAG: request.run_key or ""}))


def test_refreshes_queue_behind_the_runs_people_and_the_schedule_launch(database_url: str) -> None:
    """Refreshes are background work, one run per day with open tasks (a month of days, say):
    queued at the default priority, a backfill launched from the UI, or the day's scheduled run,
    waited behind all of them (the API pool runs one at a time). The run queue dequeues runs of
    a higher `dagster/priority` first: the refreshes' is below the default (0)."""
    day = _recent_days(1)[0]
    with psycopg.connect(database_url, autocommit=True) as conn:
        apply_migrations(conn)
        write(conn, make_records(day, 5, first_id=7_000_000, open_fraction=1), day)
    with DagsterInstance.ephemeral() as instance:
        request = _request_for(_evaluate(instance, database_url), day.isoformat())
    assert int(request.tags[PRIORITY_TAG]) < 0
    schedule_tags = DAILY_SYNC_JOB.tags or {}
    assert int(schedule_tags.get(PRIORITY_TAG, 0)) == 0

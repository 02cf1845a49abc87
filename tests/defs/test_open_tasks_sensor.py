"""Issue 5: in-progress tasks converge; the sensor re-syncs exactly the days that need it."""

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg
from dagster import (
    AssetKey,
    DagsterInstance,
    SensorResult,
    SkipReason,
    build_sensor_context,
    materialize,
)

from pipelines.defs.assets import SETTINGS, group_call_tasks
from pipelines.defs.resources import LaafficApiResource, WarehouseResource
from pipelines.defs.sensors import open_tasks_sensor
from pipelines.laaffic.models import OPEN_STATUSES
from pipelines.laaffic.simulator import SimulatorServer


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
        materialize(
            [group_call_tasks],
            resources=resources,
            instance=instance,
            tags={
                "dagster/asset_partition_range_start": days[0].isoformat(),
                "dagster/asset_partition_range_end": days[-1].isoformat(),
            },
        )
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

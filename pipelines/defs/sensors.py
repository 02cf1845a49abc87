"""Sensors: follow in-progress tasks until they are final, and evaluate freshness on a timer."""

import warnings
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from dagster import (
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    SupersessionWarning,
    build_sensor_for_freshness_checks,
    sensor,
)

from pipelines.defs.assets import DAILY_PARTITIONS, SETTINGS
from pipelines.defs.checks import FRESHNESS_CHECKS
from pipelines.defs.resources import WarehouseResource
from pipelines.defs.schedules import DAILY_SYNC_JOB
from pipelines.warehouse.queries import open_task_days


@sensor(
    job=DAILY_SYNC_JOB,
    minimum_interval_seconds=SETTINGS.open_tasks_interval_seconds,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "Re-syncs exactly the days whose stored tasks are still in progress (status 0, 1, 5, 6) "
        f"until they are final, for {SETTINGS.open_tasks_horizon_days} days after creation. "
        "One run per day; its run key is the day's latest sync, so a day whose refresh is "
        "still queued or running is never requested twice."
    ),
)
def open_tasks_sensor(
    context: SensorEvaluationContext, warehouse: WarehouseResource
) -> SensorResult | SkipReason:
    today = datetime.now(ZoneInfo(SETTINGS.timezone)).date()
    since = max(
        DAILY_PARTITIONS.start.date(), today - timedelta(days=SETTINGS.open_tasks_horizon_days)
    )
    last_complete_day = today - timedelta(days=1)  # today's partition does not exist yet
    with warehouse.connect() as conn:
        open_days = open_task_days(conn, since, last_complete_day)
    if not open_days:
        return SkipReason(f"no stored task created since {since} is still in progress")
    context.log.info(
        "open tasks on %d day(s): %s",
        len(open_days),
        ", ".join(f"{d.day} ({d.open_tasks})" for d in open_days),
    )
    return SensorResult(
        run_requests=[
            RunRequest(
                run_key=f"open-tasks:{d.day}:after-sync-{d.last_sync_id}",
                partition_key=d.day.isoformat(),
                tags={"laaffic/reason": "open-tasks", "laaffic/open_tasks": str(d.open_tasks)},
            )
            for d in open_days
        ]
    )


with warnings.catch_warnings():  # superseded along with the partition-aware checks it runs
    warnings.simplefilter("ignore", SupersessionWarning)
    FRESHNESS_SENSOR = build_sensor_for_freshness_checks(
        freshness_checks=FRESHNESS_CHECKS,
        minimum_interval_seconds=600,
        default_status=DefaultSensorStatus.RUNNING,
    )

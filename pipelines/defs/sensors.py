"""Sensors: follow in-progress tasks until they are final, and evaluate freshness on a timer."""

import warnings
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    SupersessionWarning,
    build_sensor_for_freshness_checks,
    sensor,
)
from dagster._core.storage.tags import PRIORITY_TAG, RUN_KEY_TAG

from pipelines.defs.assets import DAILY_PARTITIONS, SETTINGS
from pipelines.defs.checks import FRESHNESS_CHECKS
from pipelines.defs.resources import WarehouseResource
from pipelines.defs.schedules import DAILY_SYNC_JOB
from pipelines.warehouse.queries import open_task_days

REASON_TAG = "laaffic/reason"
#: The day's state a refresh was requested for:
#: `open-tasks:<day>:after-sync-<latest sync_id>@<when it finished, UTC>`. The time tells one
#: warehouse's sync from another's with the same id: run keys outlive a change of WAREHOUSE_URL
#: (or the simulator's warehouse under `dev` and a real one, in one instance), and Dagster
#: launches no run for a key a run already has.
STATE_TAG = "laaffic/open_tasks_state"
FAILED_STATUSES = [DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED]
#: Refreshes are background work, a run per day with open tasks (a month of them, say): the run
#: queue launches runs of a higher `dagster/priority` first, so below the default (0) they wait
#: behind a backfill launched from the UI and the schedule's daily run, not the other way round.
REFRESH_PRIORITY = -1


def failed_refreshes(context: SensorEvaluationContext, since: datetime) -> dict[str, int]:
    """Per state, the failed or canceled refreshes this sensor requested since `since`: one more
    than the highest retry number among their run keys (runs requested before STATE_TAG existed
    carry their state as their run key). Not their count: a failed run deleted from the UI would
    lower it to a key a run still has, which Dagster never launches again."""
    runs = context.instance.get_runs(
        filters=RunsFilter(
            tags={REASON_TAG: "open-tasks"}, statuses=FAILED_STATUSES, created_after=since
        )
    )
    failed: dict[str, int] = {}
    for run in runs:
        key = run.tags.get(RUN_KEY_TAG) or ""
        state = run.tags.get(STATE_TAG) or key
        if not state:
            continue
        _, _, retry = key.removeprefix(state).partition(":retry-")
        failed[state] = max(failed.get(state, 0), (int(retry) if retry.isdigit() else 0) + 1)
    return failed


@sensor(
    job=DAILY_SYNC_JOB,
    minimum_interval_seconds=SETTINGS.open_tasks_interval_seconds,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "Re-syncs exactly the days whose stored tasks are still in progress (status 0, 1, 5, 6, "
        "or a status that was refused) until they are final, for "
        f"{SETTINGS.open_tasks_horizon_days} days after creation. "
        "One run per day; its run key is the day's latest sync and the retry after its refreshes "
        "that failed or were canceled, so a refresh queued, running or done is never requested "
        "twice, and a failed one is requested again on a later tick. Queued below the default "
        "priority: UI backfills and the schedule's runs go first."
    ),
)
def open_tasks_sensor(
    context: SensorEvaluationContext, warehouse: WarehouseResource
) -> SensorResult | SkipReason:
    zone = ZoneInfo(SETTINGS.timezone)
    today = datetime.now(zone).date()
    since = max(
        DAILY_PARTITIONS.start.date(), today - timedelta(days=SETTINGS.open_tasks_horizon_days)
    )
    last_complete_day = today - timedelta(days=1)  # today's partition does not exist yet
    with warehouse.connect() as conn:
        open_days = open_task_days(conn, since, last_complete_day)
    if not open_days:
        return SkipReason(f"no stored task created since {since} is still in progress")
    # Runs are stored with UTC times: a refresh of a day since `since` was created after it.
    failed = failed_refreshes(context, datetime.combine(since, time.min, zone).astimezone(UTC))
    requests: list[RunRequest] = []
    notes: list[str] = []
    for d in open_days:
        state = f"open-tasks:{d.day}:after-sync-{d.last_sync_id}"
        if d.last_synced_at is not None:
            state += f"@{d.last_synced_at.astimezone(UTC):%Y-%m-%dT%H:%M:%S.%fZ}"
        # Dagster launches no second run with a key a run already has, whatever became of it:
        # after failed or canceled refreshes of this state, the key is the next after theirs.
        retries = failed.get(state, 0)
        requests.append(
            RunRequest(
                run_key=f"{state}:retry-{retries}" if retries else state,
                partition_key=d.day.isoformat(),
                tags={
                    REASON_TAG: "open-tasks",
                    STATE_TAG: state,
                    PRIORITY_TAG: str(REFRESH_PRIORITY),
                    "laaffic/open_tasks": str(d.open_tasks),
                },
            )
        )
        notes.append(
            f"{d.day} ({d.open_tasks}; retry {retries})" if retries else f"{d.day} ({d.open_tasks})"
        )
    context.log.info("open tasks on %d day(s): %s", len(open_days), ", ".join(notes))
    return SensorResult(run_requests=requests)


with warnings.catch_warnings():  # superseded along with the partition-aware checks it runs
    warnings.simplefilter("ignore", SupersessionWarning)
    FRESHNESS_SENSOR = build_sensor_for_freshness_checks(
        freshness_checks=FRESHNESS_CHECKS,
        minimum_interval_seconds=600,
        default_status=DefaultSensorStatus.RUNNING,
    )

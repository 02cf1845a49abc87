"""The daily sync: shortly after local midnight, the day that just ended."""

from __future__ import annotations

from dagster import (
    AssetSelection,
    DefaultScheduleStatus,
    PartitionsDefinition,
    ScheduleDefinition,
    build_schedule_from_partitioned_job,
    define_asset_job,
)
from dagster._core.definitions.unresolved_asset_job_definition import (
    UnresolvedAssetJobDefinition,
)

from pipelines.defs.assets import DAILY_PARTITIONS, group_call_tasks

SYNC_MINUTE_PAST_MIDNIGHT = 15


def daily_sync_job(partitions_def: PartitionsDefinition) -> UnresolvedAssetJobDefinition:
    return define_asset_job(
        "daily_group_call_tasks_sync",
        selection=AssetSelection.assets(group_call_tasks),
        partitions_def=partitions_def,
        description="Sync one day (or a range, in one run) of group-call tasks, with its checks.",
    )


def daily_sync_schedule(job: UnresolvedAssetJobDefinition) -> ScheduleDefinition:
    """Runs at 00:15 in the partitions' time zone for the partition of the day that ended."""
    schedule = build_schedule_from_partitioned_job(
        job,
        hour_of_day=0,
        minute_of_hour=SYNC_MINUTE_PAST_MIDNIGHT,
        default_status=DefaultScheduleStatus.RUNNING,
    )
    assert isinstance(schedule, ScheduleDefinition)
    return schedule


DAILY_SYNC_JOB = daily_sync_job(DAILY_PARTITIONS)
DAILY_SYNC_SCHEDULE = daily_sync_schedule(DAILY_SYNC_JOB)

"""Checks on `group_call_tasks`: the first three look at the windows the run just synced (or, run
on its own, the latest sync of every day); `open_tasks_within_horizon` at every stored task. Those
three are ERROR: each failure is a real data problem. `open_tasks_within_horizon` warns: the data
is right, only no longer followed."""

import warnings
from collections.abc import Sequence
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    MetadataValue,
    SupersessionWarning,
    asset_check,
    build_time_partition_freshness_checks,
)

from pipelines.defs.assets import SETTINGS, group_call_tasks
from pipelines.defs.resources import WarehouseResource
from pipelines.warehouse.queries import (
    invariant_violations,
    open_tasks_created_before,
    report_new_rejects,
    row_count_mismatches,
    synced_windows,
)


def _md_table(header: Sequence[str], rows: Sequence[Sequence[object]], limit: int = 20) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows[:limit]]
    if len(rows) > limit:
        lines.append(f"\n... and {len(rows) - limit} more")
    return "\n".join(lines)


@asset_check(
    asset=group_call_tasks,
    description="Each synced day holds exactly as many tasks as the API reported for its window "
    "(a task the API listed twice counts once).",
)
def row_count_matches_api(
    context: AssetCheckExecutionContext, warehouse: WarehouseResource
) -> AssetCheckResult:
    with warehouse.connect() as conn:
        windows = synced_windows(conn, context.run.run_id)
        mismatches = row_count_mismatches(conn, windows)
    return AssetCheckResult(
        passed=not mismatches,
        severity=AssetCheckSeverity.ERROR,
        description=(
            f"{len(mismatches)} of {len(windows)} day(s) differ from the API's total"
            if mismatches
            else f"all {len(windows)} day(s) match the API's total"
        ),
        metadata={
            "days_checked": len(windows),
            "days_mismatched": len(mismatches),
            "upstream_duplicates": sum(w.upstream_duplicates for w in windows),
            "mismatches": MetadataValue.md(
                _md_table(("day", "API total", "listed twice", "rows stored"), mismatches)
            ),
        },
    )


@asset_check(
    asset=group_call_tasks,
    description="The synced days hold no refused value that no check has reported yet "
    "(see table group_call_task_rejects; each is reported once).",
)
def no_new_rejects(
    context: AssetCheckExecutionContext, warehouse: WarehouseResource
) -> AssetCheckResult:
    with warehouse.connect() as conn:
        days = [w.window_date for w in synced_windows(conn, context.run.run_id)]
        count, examples = report_new_rejects(conn, days)
    return AssetCheckResult(
        passed=count == 0,
        severity=AssetCheckSeverity.ERROR,
        description=(
            f"{count} new rejected value(s) in {len(days)} day(s)"
            if count
            else f"no new rejected values in {len(days)} day(s)"
        ),
        metadata={
            "days_checked": len(days),
            "new_rejects": count,
            "examples": MetadataValue.md(
                _md_table(("task_id", "field", "raw value", "error"), examples)
            ),
        },
    )


@asset_check(
    asset=group_call_tasks,
    description="success + fail <= callNum, and = callNum once final (a call still ringing has "
    "no outcome yet); answeredNum <= callNum <= numCnt; taskSumPayFee = groupCallPayFee + "
    "smsPayFee + agentFee; amounts >= 0; one currency per task.",
)
def task_invariants_hold(
    context: AssetCheckExecutionContext, warehouse: WarehouseResource
) -> AssetCheckResult:
    with warehouse.connect() as conn:
        days = [w.window_date for w in synced_windows(conn, context.run.run_id)]
        broken = invariant_violations(conn, days)
    return AssetCheckResult(
        passed=not broken,
        severity=AssetCheckSeverity.ERROR,
        description=(
            f"{len(broken)} task(s) in {len(days)} day(s) break an invariant"
            if broken
            else f"all hold in {len(days)} day(s)"
        ),
        metadata={
            "days_checked": len(days),
            "tasks_broken": len(broken),
            "broken": MetadataValue.md(
                _md_table(
                    ("task_id", "day", "problems"), [(t, d, "; ".join(p)) for t, d, p in broken]
                )
            ),
        },
    )


@asset_check(
    asset=group_call_tasks,
    description=f"No stored task has stayed in progress (or with a refused status) for more than "
    f"{SETTINGS.open_tasks_horizon_days} days: past that the open-tasks sensor stops following "
    "it (a manual backfill of its day still refreshes it).",
)
def open_tasks_within_horizon(
    context: AssetCheckExecutionContext, warehouse: WarehouseResource
) -> AssetCheckResult:
    today = datetime.now(ZoneInfo(SETTINGS.timezone)).date()
    horizon = today - timedelta(days=SETTINGS.open_tasks_horizon_days)
    with warehouse.connect() as conn:
        count, examples = open_tasks_created_before(conn, horizon)
    return AssetCheckResult(
        passed=count == 0,
        severity=AssetCheckSeverity.WARN,
        description=(
            f"{count} task(s) created before {horizon} are still open and no longer followed"
            if count
            else f"no task created before {horizon} is still open"
        ),
        metadata={
            "stale_open_tasks": count,
            "examples": MetadataValue.md(_md_table(("task_id", "day", "status"), examples)),
        },
    )


DATA_CHECKS: list[AssetChecksDefinition] = [
    row_count_matches_api,
    no_new_rejects,
    task_invariants_hold,
    open_tasks_within_horizon,
]


def freshness_checks(deadline_cron: str, timezone: str) -> Sequence[AssetChecksDefinition]:
    """Yesterday's partition (account time) must be materialized by `deadline_cron`."""
    with warnings.catch_warnings():  # superseded by FreshnessPolicy, which is not partition-aware
        warnings.simplefilter("ignore", SupersessionWarning)
        return build_time_partition_freshness_checks(
            assets=[group_call_tasks],
            deadline_cron=deadline_cron,
            timezone=timezone,
            severity=AssetCheckSeverity.ERROR,
        )


FRESHNESS_CHECKS = freshness_checks(SETTINGS.freshness_deadline_cron, SETTINGS.timezone)

"""The `group_call_tasks` asset: one daily partition = one account-local day of tasks."""

import warnings
from collections.abc import Generator
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from dagster import (
    AssetExecutionContext,
    AssetMaterialization,
    BackfillPolicy,
    Backoff,
    BetaWarning,
    DagsterExecutionInterruptedError,
    DailyPartitionsDefinition,
    Failure,
    FreshnessPolicy,
    Jitter,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    TableColumn,
    TableSchema,
    asset,
)
from dagster._utils.schedules import cron_string_iterator

from pipelines.defs.resources import API_POOL, LaafficApiResource, WarehouseResource
from pipelines.laaffic.errors import (
    LaafficApiError,
    LaafficClockSkewError,
    LaafficConfigError,
    LaafficHttpError,
)
from pipelines.settings import Settings
from pipelines.sync import DaySync, sync_days
from pipelines.warehouse.queries import TABLE, table_columns, table_row_count
from pipelines.warehouse.writer import WarehouseUrlError

SETTINGS = Settings.from_env()
warnings.filterwarnings("ignore", category=BetaWarning, message=".*backfill_policy.*")


def daily_partitions(timezone: str, start_date: date) -> DailyPartitionsDefinition:
    """Account-local days. A day's partition exists once the day has ended."""
    return DailyPartitionsDefinition(start_date=start_date.isoformat(), timezone=timezone)


DAILY_PARTITIONS = daily_partitions(SETTINGS.timezone, SETTINGS.start_date)


def freshness_policy(deadline_cron: str, timezone: str) -> FreshnessPolicy:
    """Fresh at each deadline tick if materialized since the account's midnight before it, when
    yesterday's partition came to be: Dagster looks back `lower_bound_delta` from the tick, so
    that is the tick's time of day (at least the minute Dagster requires)."""
    zone = ZoneInfo(timezone)
    start = datetime(2024, 1, 1, tzinfo=zone)  # (a day no zone changed its offset)
    tick = next(cron_string_iterator(start.timestamp(), deadline_cron, timezone))
    midnight = datetime.combine(tick.date(), time.min, zone)
    since_midnight = timedelta(seconds=tick.timestamp() - midnight.timestamp())
    return FreshnessPolicy.cron(
        deadline_cron=deadline_cron,
        lower_bound_delta=max(since_midnight, timedelta(minutes=1)),
        timezone=timezone,
    )


@asset(  # backfill_policy is beta in dagster 1.13; single-run range backfills rely on it
    name=TABLE,
    group_name="laaffic",
    kinds={"python", "postgres"},
    description=(
        "LAAFFIC AI-Agent group-call tasks, one row per task, in the Postgres table "
        "`group_call_tasks`. A partition is the tasks created on that account-local day "
        f"({SETTINGS.timezone}); re-materializing it refreshes their figures."
    ),
    partitions_def=DAILY_PARTITIONS,
    backfill_policy=BackfillPolicy.single_run(),
    pool=API_POOL,
    retry_policy=RetryPolicy(
        max_retries=2, delay=30, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS
    ),
    freshness_policy=freshness_policy(SETTINGS.freshness_deadline_cron, SETTINGS.timezone),
    metadata={"dagster/table_name": TABLE, "account_timezone": SETTINGS.timezone},
)
def group_call_tasks(
    context: AssetExecutionContext, laaffic: LaafficApiResource, warehouse: WarehouseResource
) -> MaterializeResult:
    """Sync every day of the run's partition range, each committed on its own (a failure keeps
    the days already done). Each partition's materialization carries that day's own figures; the
    table-wide ones (row count, column schema) go once, on the run's last partition. If the step
    fails or the run is terminated, the days already committed are still recorded as
    materialized, with their figures: only the others show as failed."""
    days = [date.fromisoformat(key) for key in context.partition_keys]
    context.log.info(f"syncing {len(days)} day(s): {days[0]} .. {days[-1]} ({SETTINGS.timezone})")
    committed: list[DaySync] = []
    # Wrong credentials, IP, request, clock or warehouse URL: retrying the step cannot help.
    fatal = (
        LaafficConfigError,
        LaafficApiError,
        LaafficClockSkewError,
        LaafficHttpError,
        WarehouseUrlError,
    )
    try:
        with laaffic.get_client(logger=context.log) as client, warehouse.connect() as conn:
            # sync_days yields every day it commits, also those in flight when a read fails.
            syncing = sync_days(
                client,
                conn,
                days,
                time_zone=SETTINGS.timezone,
                run_id=context.run.run_id,
                log=context.log,
                days_ahead=laaffic.days_ahead,
                write_lanes=warehouse.write_connections,
                connect=warehouse.connect,
            )
            try:
                for synced in syncing:
                    committed.append(synced)
                    context.add_asset_metadata(
                        synced.metadata(), partition_key=synced.partition_key
                    )
            except BaseException as exc:
                # Landed here, between two days (an interrupt, or an error recording a day),
                # rather than in the sync (which then has raised it already): stop the sync
                # with it, as if it had landed there, so that none of its threads runs on. The
                # writes handed over finish and their days are yielded; then it is raised again.
                committed.extend(_stop(syncing, exc))
                raise
            columns = table_columns(conn)
            rows = table_row_count(conn)
    except Exception as exc:
        retry = not isinstance(exc, fatal) and getattr(exc, "allow_retries", True)
        if not committed:
            if retry:
                raise
            raise Failure(description=_described(exc), allow_retries=False) from exc
        cause = f"{type(exc).__name__}: {_described(exc)}" if retry else _described(exc)
        kept = _record_committed(context, committed)
        raise Failure(
            description=f"{cause}; {kept}",
            allow_retries=retry,
        ) from exc
    except (KeyboardInterrupt, DagsterExecutionInterruptedError) as exc:  # terminated, Ctrl-C
        # Not retried: Dagster turns an interrupt into a retry of a step with a RetryPolicy, and
        # the in-process executor checks for none, so Ctrl-C (a demo, `dagster asset
        # materialize`) or terminating the run synced the range again ~30 s later. (Raised also
        # when a second interrupt lands while the committed days are recorded.)
        stopped = "run terminated"
        try:
            if committed:
                stopped = f"run terminated; {_record_committed(context, committed)}"
                context.log.warning(stopped)
        finally:
            raise Failure(description=stopped, allow_retries=False) from exc
    # Not in the MaterializeResult: its metadata would be copied onto every partition of the
    # range (a year's backfill stored the 28-column schema 365 times, 1.8 to 2.7 ms an event).
    context.add_asset_metadata(
        {
            "dagster/row_count": rows,
            "dagster/table_name": TABLE,
            "dagster/column_schema": TableSchema(
                columns=[TableColumn(c.name, c.type, description=c.description) for c in columns]
            ),
            "query": MetadataValue.md(
                f"```sql\nSELECT * FROM {TABLE} WHERE created_date = '<partition>';\n```"
            ),
        },
        partition_key=committed[-1].partition_key,
    )
    return MaterializeResult()


def _described(exc: BaseException) -> str:
    """`exc`'s message and its notes (the day a write failed on, say)."""
    return " ".join([str(exc), *(f"({note})" for note in getattr(exc, "__notes__", ()))])


def _stop(syncing: Generator[DaySync, None, None], exc: BaseException) -> list[DaySync]:
    """The days a sync still reports once `exc` is thrown into it (where it last yielded)."""
    reported: list[DaySync] = []
    try:
        reported.append(syncing.throw(exc))
        reported.extend(syncing)
    except BaseException:  # noqa: S110 - `exc`, or what stopping raised: the caller raises `exc`
        pass
    return reported


def _record_committed(context: AssetExecutionContext, committed: list[DaySync]) -> str:
    """Record the days a failed or terminated step committed as materialized, each with its own
    figures, and say which they were. The metadata added with `add_asset_metadata` goes out only
    with a successful step's output: without these events Dagster would mark every partition of
    the range failed, committed days too."""
    for synced in committed:
        context.log_event(
            AssetMaterialization(
                asset_key=context.asset_key,
                partition=synced.partition_key,
                metadata=synced.metadata(),
            )
        )
    kept = [s.partition_key for s in committed]
    return f"{len(kept)} day(s) were committed before it ({', '.join(kept)})"

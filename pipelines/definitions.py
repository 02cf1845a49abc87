"""The one `Definitions` object: what the Dagster UI, daemon and CLI load."""

from __future__ import annotations

from dagster import Definitions, in_process_executor

from pipelines.defs.assets import SETTINGS, group_call_tasks
from pipelines.defs.checks import DATA_CHECKS, FRESHNESS_CHECKS
from pipelines.defs.resources import LaafficApiResource, WarehouseResource, env_var_if_set
from pipelines.defs.schedules import DAILY_SYNC_JOB, DAILY_SYNC_SCHEDULE
from pipelines.defs.sensors import FRESHNESS_SENSOR, open_tasks_sensor

defs = Definitions(
    assets=[group_call_tasks],
    asset_checks=[*DATA_CHECKS, *FRESHNESS_CHECKS],
    jobs=[DAILY_SYNC_JOB],
    schedules=[DAILY_SYNC_SCHEDULE],
    sensors=[open_tasks_sensor, FRESHNESS_SENSOR],
    # One asset and its light checks (four data checks, the freshness check): a single process
    # beats a process per step.
    executor=in_process_executor,
    resources={
        "laaffic": LaafficApiResource(
            base_url=SETTINGS.base_url,
            api_key=env_var_if_set("LAAFFIC_API_KEY"),
            api_secret=env_var_if_set("LAAFFIC_API_SECRET"),
        ),
        "warehouse": WarehouseResource(url=env_var_if_set("WAREHOUSE_URL")),
    },
)

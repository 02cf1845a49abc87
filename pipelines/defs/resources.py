"""Dagster resources for the two ends: the LAAFFIC API and the Postgres warehouse.

Secrets come in as `EnvVar`s: read when a run launches and shown in the UI only by name. A
variable that is unset when the code location loads is left out, so the UI still opens; a run then
fails at once with a message naming every missing variable.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from dagster import AssetMaterialization, ConfigurableResource, EnvVar, InitResourceContext
from pydantic import Field

from pipelines.defs.recovery import release_crashed_runs
from pipelines.laaffic.client import DEFAULT_BASE_URL, LaafficClient, Logger
from pipelines.laaffic.errors import LaafficConfigError
from pipelines.sync import synced_by_run
from pipelines.warehouse.embedded import embedded_warehouse_url
from pipelines.warehouse.queries import TABLE
from pipelines.warehouse.writer import connect, ensure_schema

#: The Dagster pool of every step that calls the API (limit in dagster.yaml).
API_POOL = "laaffic_api"


def env_var_if_set(name: str) -> EnvVar | None:
    """`EnvVar(name)` when the variable exists at load time, else None (see module docstring)."""
    return EnvVar(name) if os.environ.get(name) else None


class LaafficApiResource(ConfigurableResource):
    """The LAAFFIC voice API: where it is, the credentials, and how hard to push it."""

    base_url: str = Field(default=DEFAULT_BASE_URL, description="API base URL.")
    api_key: str | None = Field(default=None, description="Api-Key (LAAFFIC_API_KEY).")
    api_secret: str | None = Field(default=None, description="Secret (LAAFFIC_API_SECRET).")
    page_size: int = Field(default=100, ge=1, le=100)
    timeout_seconds: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=6, ge=1, description="Attempts per page on transient errors.")
    backoff_base_seconds: float = Field(default=0.5, ge=0)
    max_concurrency: int = Field(
        default=4, ge=1, description="Page requests in flight at once, per running step."
    )
    max_window_days: int = Field(default=31, ge=1)
    days_ahead: int = Field(
        default=2,
        ge=0,
        description="In a range run, days read ahead while the current one is written.",
    )

    def get_client(self, logger: Logger | None = None) -> LaafficClient:
        missing = [
            (field, name)
            for field, name, value in (
                ("api_key", "LAAFFIC_API_KEY", self.api_key),
                ("api_secret", "LAAFFIC_API_SECRET", self.api_secret),
            )
            if not value
        ]
        if missing:
            # Either unset at load, or dropped by config given at launch for this resource, which
            # replaces every value the definitions gave it (a launchpad's max_concurrency, say).
            names = ", ".join(name for _, name in missing)
            fields = ", ".join(f"{field}: {{env: {name}}}" for field, name in missing)
            raise LaafficConfigError(
                f"cannot call the LAAFFIC API without {names}. Set them in the environment of "
                "the Dagster code location and reload it (or run `python -m pipelines dev` to "
                "use the local simulator). If they are set, the run's config for the resource "
                "`laaffic` left them out: config given at launch replaces all the values the "
                f"definitions give it, so give them there too ({fields}), and base_url."
            )
        return LaafficClient(
            self.base_url,
            self.api_key,
            self.api_secret,
            page_size=self.page_size,
            timeout_seconds=self.timeout_seconds,
            max_attempts=self.max_attempts,
            backoff_base_seconds=self.backoff_base_seconds,
            max_concurrency=self.max_concurrency,
            max_window_days=self.max_window_days,
            logger=logger,
        )


class WarehouseResource(ConfigurableResource):
    """The Postgres warehouse (WAREHOUSE_URL), or the embedded PostgreSQL when it is unset."""

    url: str | None = Field(default=None, description="PostgreSQL URL (WAREHOUSE_URL).")
    write_connections: int = Field(
        default=2,
        ge=1,
        le=2,
        description="Connections a range run writes its days on at once (1 or 2), committing "
        "them in order: with two, PostgreSQL loads one day while the previous one commits.",
    )

    def resolved_url(self) -> str:
        return self.url or embedded_warehouse_url()

    def setup_for_execution(self, context: InitResourceContext) -> None:
        """Before the run's step claims the API pool: free slots held by crashed runs, recording
        the days they committed (here, in the warehouse's sync log) as theirs."""
        if context.instance is not None and context.run_id is not None:
            release_crashed_runs(
                context.instance, context.run_id, API_POOL, context.log, self._committed_by
            )

    def _committed_by(self, run_id: str) -> list[tuple[AssetMaterialization, float]]:
        with self.connect() as conn:
            synced = synced_by_run(conn, run_id)
        return [
            (
                AssetMaterialization(TABLE, partition=day.partition_key, metadata=day.metadata()),
                committed_at.timestamp(),
            )
            for day, committed_at in synced
        ]

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection]:
        """A connection with the schema migrated (once per process)."""
        url = self.resolved_url()
        with connect(url) as conn:
            ensure_schema(conn, url)
            yield conn

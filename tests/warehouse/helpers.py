"""Builders shared by the warehouse tests: realistic records, and one window written."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from pipelines.laaffic.client import FetchStats
from pipelines.laaffic.models import TimeWindow
from pipelines.laaffic.simulator import SimulatorConfig, TaskStore
from pipelines.warehouse.normalise import normalise_records
from pipelines.warehouse.urls import with_database
from pipelines.warehouse.writer import WriteResult, write_window

TIME_ZONE = "Asia/Shanghai"


@contextmanager
def new_database(server_url: str) -> Iterator[str]:
    """URL of a new, empty database on the server at `server_url`, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_database(server_url, name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def waiting_for_advisory_lock(conn: psycopg.Connection, key: int) -> int:
    """How many sessions of `conn`'s database wait for the advisory lock `key` (a bigint key,
    as `pg_advisory_xact_lock(key)` takes): not for any other, such as the lanes' commit turns
    (`pipelines.sync._Turn`)."""
    row = conn.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND classid = (%(key)s::bigint >> 32)::oid "
        "AND objid = (%(key)s::bigint & 4294967295)::oid AND objsubid = 1",
        {"key": key},
    ).fetchone()
    return int(row[0]) if row else 0


def make_records(
    day: date, count: int, *, seed: int = 1, first_id: int = 1_000_000, **config: Any
) -> list[dict[str, Any]]:
    """`count` realistic records created on `day` (account-local), as the simulator makes them."""
    store = TaskStore(SimulatorConfig(seed=seed, **config))
    rng = random.Random(f"{seed}:{day}")
    midnight = datetime.combine(day, datetime.min.time())
    records = []
    for n in range(count):
        created = midnight + timedelta(seconds=rng.randrange(86_400))
        records.append(
            store.make_record(rng, first_id + n, created.strftime("%Y-%m-%d %H:%M:%S"), n)
        )
    return records


def day_window(day: date) -> TimeWindow:
    start = datetime.combine(day, datetime.min.time())
    return TimeWindow(start=start, end=start + timedelta(days=1, seconds=-1))


def write(
    conn: psycopg.Connection,
    records: Sequence[dict[str, Any]],
    day: date,
    *,
    time_zone: str = TIME_ZONE,
    stats: FetchStats | None = None,
    run_id: str | None = None,
    first_load: bool = False,
) -> WriteResult:
    """Normalise `records` and write them as the window of `day`, as a sync would."""
    if stats is None:
        stats = FetchStats(api_total=len(records), pages=max(1, -(-len(records) // 100)))
        stats.requests = stats.pages
    return write_window(
        conn,
        window_date=day,
        window=day_window(day),
        time_zone=time_zone,
        normalised=normalise_records(records),
        stats=stats,
        started_at=datetime.now(UTC),
        run_id=run_id,
        first_load=first_load,
    )


def on_sync_log_insert(conn: psycopg.Connection, condition: str, action: str) -> None:
    """Make each insert into `group_call_sync_log` whose row meets `condition` (SQL on NEW) run
    `action` (PL/pgSQL) first: a window's write held (a lock the test holds) or failed at its
    last statement, inside its transaction."""
    conn.execute(
        f"""
        CREATE FUNCTION test_on_sync_log() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF {condition} THEN
                {action}
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER test_on_sync_log BEFORE INSERT ON group_call_sync_log
            FOR EACH ROW EXECUTE FUNCTION test_on_sync_log();
        """.encode()
    )
    conn.commit()

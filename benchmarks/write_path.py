"""Write-path benchmark: the pipeline's upsert of one window against a plain COPY of the same rows.

    uv run python -m benchmarks.write_path --rows 100000

One run, one fresh database (dropped afterwards): the server is TEST_DATABASE_URL or
WAREHOUSE_URL, else an embedded PostgreSQL under `.bench/` (git-ignored). It generates realistic
records with the simulator's TaskStore, then measures side by side, each `--repeat` times (the
median is reported):

- plain COPY of the normalised rows into an unindexed copy of `group_call_tasks`, encoded on
  the client as the writer encodes them (one Arrow-encoded CSV document, the encoding timed as in
  `write_window`): the ratio's baseline; and, for reference, the same COPY from the CSV encoded
  beforehand (the server's share alone);
- the pipeline's write path on an empty table (`write_window`: staging COPY, change-aware upsert,
  rejects, sync-log row, one transaction) — and with `normalise_records` included;
- `write_window` again with the same, unchanged window (nothing rewritten);
- `write_window` of the same records with one field refused in each (`acd` sent as "n/a", as
  when the API starts sending a field in a new shape): the rejects' share of the write.

Only the ratios matter (target: upsert rate / plain COPY rate >= 0.5); absolute times depend on
the machine. Nothing here asserts.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pyarrow.csv as pa_csv
from psycopg import sql

from pipelines.laaffic.client import FetchStats
from pipelines.laaffic.models import TimeWindow
from pipelines.laaffic.simulator import SimulatorConfig, TaskStore
from pipelines.warehouse.embedded import PROJECT_ROOT, embedded_warehouse
from pipelines.warehouse.migrate import apply_migrations
from pipelines.warehouse.normalise import STAGE_COLUMNS, NormalisedWindow, normalise_records
from pipelines.warehouse.urls import redact, with_database
from pipelines.warehouse.writer import write_window

BENCH_PGDATA = PROJECT_ROOT / ".bench" / "pgdata"
PLAIN = "group_call_tasks_plain_copy"
#: The staged columns as they land in the table (the writer converts created_local in SQL).
PLAIN_COLUMNS = [("created_time" if c == "created_local" else c) for c in STAGE_COLUMNS]
MAX_PER_DAY = 100_000  # the simulator's cap


def generate(rows: int, first_day: date, seed: int) -> list[dict[str, Any]]:
    """`rows` realistic records from the simulator, 100,000 a day at most."""
    days = [first_day + timedelta(days=n) for n in range(-(-rows // MAX_PER_DAY))]
    counts = {day: min(MAX_PER_DAY, rows - n * MAX_PER_DAY) for n, day in enumerate(days)}
    store = TaskStore(SimulatorConfig(seed=seed, day_counts=counts))
    return store.all_tasks(days)


@contextmanager
def fresh_database() -> Iterator[tuple[str, str]]:
    """(URL of a new empty database, where it runs); the database is dropped afterwards."""
    server = os.environ.get("TEST_DATABASE_URL") or os.environ.get("WAREHOUSE_URL")
    if server:
        with _database_on(server) as url:
            yield url, redact(server)
        return
    with embedded_warehouse(BENCH_PGDATA) as embedded, _database_on(embedded) as url:
        yield url, f"embedded PostgreSQL in {BENCH_PGDATA}"


@contextmanager
def _database_on(server_url: str) -> Iterator[str]:
    name = f"bench_write_path_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_database(server_url, name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def encode_copy(normalised: NormalisedWindow) -> bytes:
    """The rows as the writer sends them on a first load (`NormalisedWindow.to_table_csv`): one
    CSV document encoded by Arrow, the table's columns, no header."""
    sink = io.BytesIO()
    pa_csv.write_csv(
        normalised.table.select(list(STAGE_COLUMNS)),
        sink,
        write_options=pa_csv.WriteOptions(include_header=False),
    )
    return sink.getvalue()


def _copy_bytes(conn: psycopg.Connection, data: bytes) -> None:
    copy_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
        sql.Identifier(PLAIN), sql.SQL(", ").join(map(sql.Identifier, PLAIN_COLUMNS))
    )
    with conn.transaction(), conn.cursor() as cur, cur.copy(copy_sql) as copy:
        copy.write(data)


def plain_copy(conn: psycopg.Connection, normalised: NormalisedWindow) -> None:
    """The baseline: the same rows, encoded on the client as the writer encodes them (one Arrow
    CSV, within the timing as in `write_window`), no index, no merge."""
    _copy_bytes(conn, encode_copy(normalised))


def plain_copy_text(conn: psycopg.Connection, text: bytes) -> None:
    """The same COPY from bytes encoded beforehand: the server's share alone."""
    _copy_bytes(conn, text)


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = action()
    return time.perf_counter() - start, result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3, help="measurements per step (median)")
    parser.add_argument("--day", type=date.fromisoformat, default=date(2024, 6, 4))
    parser.add_argument("--time-zone", default="Asia/Shanghai")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    seconds, records = timed(lambda: generate(args.rows, args.day, args.seed))
    print(f"generated {len(records):,} records with the simulator in {seconds:.2f} s")
    day = args.day
    window = TimeWindow(
        start=datetime.combine(day, datetime.min.time()),
        end=datetime.combine(day, datetime.min.time()) + timedelta(days=1, seconds=-1),
    )
    stats = FetchStats(api_total=len(records), pages=-(-len(records) // 100))

    def write(conn: psycopg.Connection, normalised: NormalisedWindow) -> Any:
        return write_window(
            conn,
            window_date=day,
            window=window,
            time_zone=args.time_zone,
            normalised=normalised,
            stats=stats,
            started_at=datetime.now(UTC),
            run_id="benchmark",
        )

    times: dict[str, list[float]] = {
        "normalise": [],
        "copy": [],
        "copy_text": [],
        "insert": [],
        "rewrite": [],
        "rejects": [],
    }
    refused = normalise_records([dict(record, acd="n/a") for record in records])
    with fresh_database() as (url, where), psycopg.connect(url, autocommit=True) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        apply_migrations(conn)
        conn.execute(f"CREATE TABLE {PLAIN} (LIKE group_call_tasks INCLUDING DEFAULTS)")
        conn.execute(sql.SQL("SET TimeZone TO {}").format(sql.Literal(args.time_zone)))
        print(f"PostgreSQL {version[0] if version else '?'} ({where}), median of {args.repeat}")
        for _ in range(args.repeat):
            conn.execute(f"TRUNCATE {PLAIN}, group_call_tasks, group_call_sync_log")
            conn.execute("VACUUM ANALYZE")  # a like-for-like start for every round
            seconds, normalised = timed(lambda: normalise_records(records))
            times["normalise"].append(seconds)
            times["copy"].append(timed(lambda: plain_copy(conn, normalised))[0])  # noqa: B023
            text = encode_copy(normalised)
            conn.execute(f"TRUNCATE {PLAIN}")
            times["copy_text"].append(timed(lambda: plain_copy_text(conn, text))[0])  # noqa: B023
            seconds, first = timed(lambda: write(conn, normalised))  # noqa: B023
            times["insert"].append(seconds)
            seconds, again = timed(lambda: write(conn, normalised))  # noqa: B023
            times["rewrite"].append(seconds)
            assert (first.inserted, again.unchanged) == (len(normalised),) * 2
            assert first.rejected == 0
            conn.execute(
                "TRUNCATE group_call_tasks, group_call_task_fingerprints, "
                "group_call_task_rejects, group_call_sync_log"
            )
            seconds, bad = timed(lambda: write(conn, refused))
            times["rejects"].append(seconds)
            assert bad.rejected == bad.inserted == len(refused.rows)
            conn.execute(  # what the next round's writes would otherwise resolve or compare
                "TRUNCATE group_call_task_fingerprints, group_call_task_rejects"
            )
        stored = conn.execute(
            f"SELECT (SELECT count(*) FROM {PLAIN}), count(*) FROM group_call_tasks"
        )
        counts = stored.fetchone()
    rows = len(normalised)
    median = {step: statistics.median(values) for step, values in times.items()}

    def line(label: str, seconds: float) -> str:
        return f"  {label:<48} {seconds:7.3f} s  {rows / seconds:>9,.0f} rows/s"

    def ratio(label: str, baseline: float, measured: float, note: str = "") -> str:
        return f"  {label:<48} {baseline / measured:7.2f}  {note}".rstrip()

    print(f"{rows:,} rows per step; rows stored (plain, pipeline): {counts}")
    print(line("normalise_records (Arrow kernels)", median["normalise"]))
    print(line("plain COPY into an unindexed copy of the table", median["copy"]))
    print(line("  the same from pre-encoded text (server only)", median["copy_text"]))
    print(line("write_window, first insert (upsert path)", median["insert"]))
    print(line("normalise + write_window, first insert", median["normalise"] + median["insert"]))
    print(line("write_window, unchanged re-write", median["rewrite"]))
    print(line("write_window, first insert, a reject per row", median["rejects"]))
    print("rate ratios (target for the upsert: >= 0.5 of the plain COPY rate):")
    copy, insert = median["copy"], median["insert"]
    print(ratio("upsert / plain COPY", copy, insert, "<- the target"))
    print(ratio("normalise + upsert / plain COPY", copy, median["normalise"] + insert))
    print(ratio("unchanged re-write / plain COPY", copy, median["rewrite"]))
    print(ratio("upsert / pre-encoded COPY", median["copy_text"], insert, "(stricter)"))
    print(ratio("upsert with a reject per row / upsert", insert, median["rejects"]))
    rounds = ", ".join(f"{k}={[round(v, 2) for v in vs]}" for k, vs in times.items())
    print(f"all rounds (s): {rounds}")


if __name__ == "__main__":
    main()

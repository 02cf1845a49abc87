"""The write-path benchmark's baseline: a plain COPY of what the writer sends, encoded alike."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest
from psycopg import sql

from benchmarks import write_path
from pipelines.laaffic.client import FetchStats
from pipelines.laaffic.models import TimeWindow
from pipelines.warehouse.migrate import apply_migrations
from pipelines.warehouse.normalise import normalise_records
from pipelines.warehouse.writer import write_window

DAY = date(2024, 6, 4)
ZONE = "Asia/Shanghai"


def test_plain_copy_is_the_writers_copy_without_index_or_merge(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = write_path.generate(300, DAY, 42)
    normalised = normalise_records(records)
    # The writer sends one Arrow-encoded CSV document; so must the baseline it is compared with
    # (a per-row write_row loop in Python is a slower client, which flatters the ratio).
    assert write_path.encode_copy(normalised) == normalised.to_table_csv()[0]

    def per_row(*_args: object) -> None:
        raise AssertionError("the plain COPY encodes row by row in Python")

    monkeypatch.setattr(psycopg.Copy, "write_row", per_row)
    with psycopg.connect(database_url, autocommit=True) as conn:
        apply_migrations(conn)
        conn.execute(f"CREATE TABLE {write_path.PLAIN} (LIKE group_call_tasks INCLUDING DEFAULTS)")
        conn.execute(sql.SQL("SET TimeZone TO {}").format(sql.Literal(ZONE)))
        write_path.plain_copy(conn, normalised)
        start = datetime.combine(DAY, datetime.min.time())
        write_window(
            conn,
            window_date=DAY,
            window=TimeWindow(start=start, end=start + timedelta(days=1, seconds=-1)),
            time_zone=ZONE,
            normalised=normalised,
            stats=FetchStats(api_total=len(records), pages=3),
            started_at=datetime.now(UTC),
        )
        columns = sql.SQL(", ").join(map(sql.Identifier, write_path.PLAIN_COLUMNS))
        differ = conn.execute(
            sql.SQL(
                "SELECT count(*) FROM ((SELECT {c} FROM {p} EXCEPT ALL SELECT {c} FROM "
                "group_call_tasks) UNION ALL (SELECT {c} FROM group_call_tasks EXCEPT ALL "
                "SELECT {c} FROM {p})) d"
            ).format(c=columns, p=sql.Identifier(write_path.PLAIN))
        ).fetchone()
        stored = conn.execute(f"SELECT count(*) FROM {write_path.PLAIN}").fetchone()
    assert stored == (300,)
    assert differ == (0,)

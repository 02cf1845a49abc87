"""The embedded PostgreSQL used when WAREHOUSE_URL is unset."""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from pipelines.warehouse.embedded import (
    EMBEDDED_DATABASE,
    embedded_warehouse_url,
    start_embedded_postgres,
)


@pytest.fixture
def pgdata() -> Iterator[Path]:
    """A data directory of its own (not under tmp_path, which the server's user may not reach);
    its server is stopped and the directory removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="laaffic-test-embedded-"))
    try:
        yield tmp / "pgdata"
    finally:
        if (tmp / "pgdata" / "postmaster.pid").exists():
            start_embedded_postgres(tmp / "pgdata")._stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.timeout(120)
def test_processes_starting_at_once_all_get_the_database(pgdata: Path) -> None:
    """Without WAREHOUSE_URL every Dagster process resolves the embedded warehouse itself (the
    daemon's sensors, the run workers, a run's threads): on the first start they all found no
    `laaffic` database, all created it, and all but one failed with a unique violation on
    pg_database."""
    server_url = start_embedded_postgres(pgdata).get_uri()
    for _ in range(3):
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(EMBEDDED_DATABASE)
                )
            )
        barrier = threading.Barrier(8)
        urls: list[str] = []
        errors: list[BaseException] = []

        def resolve() -> None:
            barrier.wait()
            try:
                urls.append(embedded_warehouse_url(pgdata))
            except BaseException as exc:  # reported by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=resolve) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        assert len(set(urls)) == 1 and len(urls) == 8
        with psycopg.connect(urls[0]) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == (EMBEDDED_DATABASE,)

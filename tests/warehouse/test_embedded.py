"""The embedded PostgreSQL used when WAREHOUSE_URL is unset."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest
from psycopg import sql

from pipelines.warehouse.embedded import (
    EMBEDDED_DATABASE,
    embedded_postgres_running,
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


_RESOLVE = "from pipelines.warehouse.embedded import embedded_warehouse_url as u; print(u())"


@pytest.mark.timeout(120)
def test_a_stale_postmaster_pid_naming_a_live_process_does_not_block_the_start(
    pgdata: Path,
) -> None:
    """A server killed outright (a crash, a reboot) leaves postmaster.pid behind; once its PID
    belongs to another process (PIDs are reused, soon after a container restarts), the server
    was taken for running: every command failed on a socket that does not exist ("connection
    to server on socket .../.s.PGSQL.5432 failed: No such file or directory")."""
    env = {**os.environ, "LAAFFIC_EMBEDDED_PGDATA": str(pgdata)}
    started = subprocess.run(
        [sys.executable, "-c", _RESOLVE], env=env, capture_output=True, text=True, timeout=90
    )
    assert started.returncode == 0, started.stderr
    pid_file = pgdata / "postmaster.pid"
    stale = pid_file.read_text().splitlines()
    postmaster = psutil.Process(int(stale[0]))
    postmaster.kill()  # killed outright: its postmaster.pid stays
    postmaster.wait(30)
    with subprocess.Popen(["sleep", "60"]) as other:  # now holding the server's PID, say
        try:
            pid_file.write_text("\n".join([str(other.pid), *stale[1:]]) + "\n")
            # Taken for running, `python -m pipelines demo` would not stop what it starts.
            assert not embedded_postgres_running(pgdata)
            again = subprocess.run(
                [sys.executable, "-c", _RESOLVE], env=env, capture_output=True, text=True,
                timeout=90,
            )  # fmt: skip
            assert again.returncode == 0, again.stderr
            assert other.poll() is None  # not taken for the server and stopped
        finally:
            other.kill()

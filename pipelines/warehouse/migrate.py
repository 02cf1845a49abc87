"""Applies `sql/NNN_*.sql` in order, each once, recorded in `schema_migrations`.

Every file is idempotent on its own as well, so a half-recorded history or a second runner is
harmless; an advisory lock keeps concurrent runs (parallel partitions) from racing.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import psycopg

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
_LOCK_KEY = 0x1AAFF1C  # pg_advisory_xact_lock key for migrations

log = logging.getLogger(__name__)

#: Earlier texts (SHA-256) of migrations edited since, whose edit a database that applied the
#: earlier text does not need: that database is not told the file "changed after it was applied".
SUPERSEDED_CHECKSUMS: dict[str, frozenset[str]] = {
    # 002, 004, 005 as the first versions applied them: 009 brings what they lack.
    "002_rejects_and_sync_log.sql": frozenset(
        {
            "983725d8c33c32b46c71ba7bc7438154dc64da4403758ca214233b9f74caaa3f",
            "2facaa531d457895a72aea4ee2f2cfb15cda8dbfc0e2e6c6be202e82ce0b83ae",
        }
    ),
    "004_task_fingerprints.sql": frozenset(
        {"94db87afbf8a9474371d474839e0d936569f99e24739e9d40bddf2aec841062f"}
    ),
    "005_sync_log_window_digest.sql": frozenset(
        {"8e1ab5ce6431b4275ca1e6ca3b6182b7568f0d3ad69b92d4ac6f113515c3db24"}
    ),
    # 003: the reader role created at the same moment by another database's migration is no
    # longer an error (it only matters while the role does not exist yet).
    "003_bi_layer.sql": frozenset(
        {"9eb3317db709527d6aa46cf4a4bcd6f09fc1721a94cd9e2cead36fd350bb4d7f"}
    ),
}


def migration_files(sql_dir: Path = SQL_DIR) -> list[Path]:
    files = sorted(sql_dir.glob("[0-9][0-9][0-9]_*.sql"))
    if not files:
        raise FileNotFoundError(f"no migrations found in {sql_dir}")
    return files


def _log_raised_notice(diag: psycopg.errors.Diagnostic) -> None:
    """A migration's own RAISE NOTICE (what a DBA must do, e.g. create the reader role) goes to
    the log as a warning: psycopg drops notices that no handler takes. The notices PostgreSQL
    sends for idempotent DDL ("already exists, skipping") carry no RAISE context and are not.

    The context's first line is where it was raised ("PL/pgSQL function ... line 3 at RAISE";
    callers follow), in the server's language but for the statement's name, which ends it in
    every translation ("... Zeile 3 bei RAISE")."""
    where = (diag.context or "").splitlines()[:1]
    if where and where[0].rstrip().endswith(" RAISE"):
        log.warning("migration: %s", diag.message_primary)


def apply_migrations(conn: psycopg.Connection, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply the migrations not yet recorded; return the names applied now."""
    conn.add_notice_handler(_log_raised_notice)
    try:
        return _apply_migrations(conn, sql_dir)
    finally:
        conn.remove_notice_handler(_log_raised_notice)


def _apply_migrations(conn: psycopg.Connection, sql_dir: Path) -> list[str]:
    applied_now: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        conn.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                name       text PRIMARY KEY,
                checksum   text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        conn.execute(
            "COMMENT ON TABLE schema_migrations IS "
            "'Which sql/ migration files the pipeline has applied, and when.';"
            "COMMENT ON COLUMN schema_migrations.name IS 'The migration file name, e.g. "
            "001_group_call_tasks.sql.';"
            "COMMENT ON COLUMN schema_migrations.checksum IS 'SHA-256 of the file as applied.';"
            "COMMENT ON COLUMN schema_migrations.applied_at IS 'When it was applied.'"
        )
        done: dict[str, str] = dict(
            conn.execute("SELECT name, checksum FROM schema_migrations").fetchall()
        )
        for path in migration_files(sql_dir):
            text = path.read_text(encoding="utf-8")
            checksum = hashlib.sha256(text.encode()).hexdigest()
            if path.name in done:
                if done[path.name] != checksum and done[path.name] not in (
                    SUPERSEDED_CHECKSUMS.get(path.name, frozenset())
                ):
                    log.warning("migration %s changed after it was applied", path.name)
                continue
            conn.execute(text.encode())
            conn.execute(
                "INSERT INTO schema_migrations (name, checksum) VALUES (%s, %s)",
                (path.name, checksum),
            )
            applied_now.append(path.name)
    if applied_now:
        log.info("applied migrations: %s", ", ".join(applied_now))
    return applied_now

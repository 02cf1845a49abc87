"""Writes one window to Postgres in one transaction: COPY into a staging table, a change-aware
upsert into `group_call_tasks`, the window's rejects, and its sync-log row.

A failure anywhere rolls the whole window back, so a window is either fully written or as it was.
Writes of the same day are serialised by a lock on the day in PostgreSQL (`_LOCK_DAY`), whatever
the Dagster instance's pools allow.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from datetime import date, datetime
from typing import Any, Protocol

import psycopg
from psycopg import sql

from pipelines.laaffic.client import FetchStats
from pipelines.laaffic.models import TimeWindow
from pipelines.warehouse.migrate import SQL_DIR, apply_migrations
from pipelines.warehouse.normalise import (
    FINGERPRINT,
    NORMALISER_VERSION,
    STAGE_COLUMNS,
    TABLE_COLUMNS,
    NormalisedWindow,
)
from pipelines.warehouse.queries import IS_FINAL, IS_OPEN
from pipelines.warehouse.urls import hide_password, redact

UPSERT_SQL = (SQL_DIR / "dml" / "upsert_group_call_tasks.sql").read_bytes()
UPSERT_FINGERPRINTS_SQL = (SQL_DIR / "dml" / "upsert_group_call_task_fingerprints.sql").read_bytes()

#: Staging columns and their types: text-typed input is parsed by Postgres, never by floats.
STAGE_TYPES: dict[str, str] = {
    "task_id": "bigint",
    "task_name": "text",
    "status": "smallint",
    "rate": "numeric",
    "num_cnt": "integer",
    "call_num": "integer",
    "success": "integer",
    "fail": "integer",
    "answered_num": "integer",
    "send_sms_num": "integer",
    "created_local": "timestamp",
    "created_date": "date",
    "script_id": "integer",
    "task_type": "smallint",
    "asr": "numeric",
    "agent_total_feetime": "integer",
    "charge_len": "integer",
    "agent_fee_amount": "numeric(20,6)",
    "acd_seconds": "numeric",
    "group_call_pay_fee_amount": "numeric(20,6)",
    "group_call_pay_fee_currency": "char(3)",
    "sms_pay_fee_amount": "numeric(20,6)",
    "sms_pay_fee_currency": "char(3)",
    "task_sum_pay_fee_amount": "numeric(20,6)",
    "task_sum_pay_fee_currency": "char(3)",
    "raw": "jsonb",
    FINGERPRINT: "bytea",
}
assert tuple(STAGE_TYPES) == (*STAGE_COLUMNS, FINGERPRINT), "staging types out of step"

_CREATE_STAGE = sql.SQL(
    "CREATE TEMP TABLE group_call_tasks_stage ({columns}) ON COMMIT DROP"
).format(
    columns=sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(kind))
        for name, kind in STAGE_TYPES.items()
    )
)
_COPY_STAGE = sql.SQL("COPY group_call_tasks_stage ({columns}) FROM STDIN (FORMAT csv)").format(
    columns=sql.SQL(", ").join(sql.Identifier(name) for name in STAGE_TYPES)
)
_COPY_TABLE = sql.SQL("COPY group_call_tasks ({columns}) FROM STDIN (FORMAT csv)").format(
    columns=sql.SQL(", ").join(sql.Identifier(name) for name in TABLE_COLUMNS)
)
_COPY_FINGERPRINTS = (
    b"COPY group_call_task_fingerprints (task_id, fingerprint) FROM STDIN (FORMAT csv)"
)
#: Every transaction that writes a day's window, or compares records with what the day holds,
#: first takes this lock on the day (classid, the day's ordinal), exclusive to write, shared to
#: compare; held until it commits. Two runs syncing the same day at once (nothing but the Dagster
#: instance's pool `laaffic_api` keeps them apart) then write it one after the other, each
#: seeing what the other committed, instead of interleaving their statements.
_DAY_LOCK_CLASS = 0x1AAFF1D  # (migrations lock the single key 0x1AAFF1C: another key space)
_LOCK_DAY = b"SELECT pg_advisory_xact_lock(%s, %s)"
_LOCK_DAY_SHARED = b"SELECT pg_advisory_xact_lock_shared(%s, %s)"
#: The day's latest sync that wrote a row: what a comparison with the stored rows was made
#: against (`unchanged_records`), and what a write checks it still is (`write_window`).
_LAST_WRITE = b"""
    SELECT sync_id, run_id FROM group_call_sync_log
    WHERE window_date = %s AND inserted + updated > 0
    ORDER BY sync_id DESC LIMIT 1
"""
#: The account's zone as TimeZone, for the rest of the transaction only (`is_local`).
_ACCOUNT_TIME_ZONE = b"SELECT set_config('TimeZone', %s, true)"
#: The day's stored in-progress tasks.
_OPEN_TASKS = sql.SQL(
    "SELECT coalesce(array_agg(task_id), '{{}}') FROM group_call_tasks "
    "WHERE created_date = %s AND {is_open}"
).format(is_open=IS_OPEN)
#: After a window's write: the day's rows, how many of its tasks that were open are now final,
#: and how many are still open.
_DAY_COUNTS = sql.SQL(
    """
    SELECT (SELECT count(*) FROM group_call_tasks WHERE created_date = %(day)s),
           (SELECT count(*) FROM group_call_tasks
            WHERE task_id = ANY(%(open_before)s) AND {is_final}),
           (SELECT count(*) FROM group_call_tasks WHERE created_date = %(day)s AND {is_open})
    """
).format(is_final=IS_FINAL, is_open=IS_OPEN)


@dataclass(frozen=True)
class WriteResult:
    """What writing one window did."""

    received: int
    inserted: int
    updated: int
    unchanged: int
    rejected: int
    new_rejects: int
    open_tasks: int
    open_before: int
    became_final: int
    partition_rows: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class WarehouseError(RuntimeError):
    """The warehouse could not be reached or written; the message names it (password hidden)."""


class WarehouseUrlError(WarehouseError):
    """WAREHOUSE_URL cannot be read as a connection URL: retrying cannot help."""


class CommitTurn(Protocol):
    """A write's place among writes that must commit in a given order (a range's days, written
    on more than one connection: `pipelines.sync`). `begin` runs first in the write's
    transaction, `before_commit` last; either may raise to roll it back."""

    def begin(self, conn: psycopg.Connection) -> None: ...

    def before_commit(self, conn: psycopg.Connection) -> None: ...


class ConcurrentSyncError(WarehouseError):
    """Another sync wrote the day between this one's comparison with the stored rows and its
    write: what it found unchanged may no longer be, so nothing was written. Syncing the day
    again (a step retry) re-reads it."""


def _day_lock(day: date) -> tuple[int, int]:
    return _DAY_LOCK_CLASS, day.toordinal()


def connect(url: str, **kwargs: Any) -> psycopg.Connection:
    """A session for the pipeline. JIT compilation is off for it: the pipeline's statements are
    short per-day lookups, which JIT made 3x slower (~5 ms compiling each) whenever table
    statistics were stale, e.g. right after a backfill's bulk load."""
    try:
        conn = psycopg.connect(url, **kwargs)
    except psycopg.OperationalError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WarehouseError(
            f"cannot connect to the warehouse at {redact(url)}: {hide_password(first_line, url)}. "
            "Check WAREHOUSE_URL and that the server is up."
        ) from None
    except (psycopg.ProgrammingError, ValueError):  # libpq could not parse it (the message may
        raise WarehouseUrlError(  # quote the password, so it is not repeated here)
            f"WAREHOUSE_URL ({redact(url)}) is not a valid PostgreSQL URL: expected "
            "postgresql://user:password@host:port/database, with special characters of the "
            "password percent-encoded (% as %25, # as %23, / as %2F, @ as %40)"
        ) from None
    conn.execute("SET jit = off")
    if not conn.autocommit:
        conn.commit()
    return conn


_migrated: set[str] = set()
_migrated_lock = threading.Lock()


def ensure_schema(conn: psycopg.Connection, url: str) -> list[str]:
    """Apply pending migrations once per process and database."""
    with _migrated_lock:
        if url in _migrated:
            return []
        applied = apply_migrations(conn)
        _migrated.add(url)
        return applied


def write_window(
    conn: psycopg.Connection,
    *,
    window_date: date,
    window: TimeWindow,
    time_zone: str,
    normalised: NormalisedWindow,
    stats: FetchStats,
    started_at: datetime,
    run_id: str | None = None,
    skipped_unchanged: int = 0,
    first_load: bool = False,
    window_digest: bytes | None = None,
    compared_with: int | None = None,
    turn: CommitTurn | None = None,
) -> WriteResult:
    """Stage, merge and log one window atomically. `skipped_unchanged` records were found
    identical to what was stored beforehand (see `unchanged_records`, which also returns the
    `compared_with` to pass) and are not in `normalised`: they count as received and unchanged.
    Should another sync have written rows of the day since that comparison (two runs syncing the
    day at once), they may no longer be: nothing is written, `ConcurrentSyncError`. The write
    holds the day's lock (`_LOCK_DAY`) until it commits. `window_digest` (the client's
    `WindowResult.digest`) is logged with the day's row count, for the next re-sync.

    `first_load`: the caller found no stored row for the day, so the rows are tried with a
    plain COPY straight into the table (no staging, no merge: about a third of the server's
    work). Should any of the tasks be stored after all (another run got there first, or a
    different time zone put them on other days), that COPY fails on the primary key, is rolled
    back to its savepoint, and the window takes the staging path: the result is the same.

    `turn`: where this write commits among others (`CommitTurn`)."""
    received = len(normalised)
    normalised = normalised.on_day(window_date)  # a refused createdTime: the window's day
    with conn.transaction(), conn.cursor() as cur:
        if turn is not None:
            turn.begin(conn)
        cur.execute(_LOCK_DAY, _day_lock(window_date))
        if skipped_unchanged:
            _check_compared_with(cur, window_date, compared_with)
        # createdTime is local: read in the account's zone as the transaction's TimeZone, which
        # is always an IANA zone. `AT TIME ZONE 'CET'` or a " CET" suffix would take PostgreSQL's
        # abbreviation first, a fixed +01 without summer time (likewise EET, MET, WET).
        cur.execute(_ACCOUNT_TIME_ZONE, (time_zone,))
        # The day's stored in-progress tasks, before this sync refreshes them.
        cur.execute(_OPEN_TASKS, (window_date,))
        open_row = cur.fetchone()
        open_before: list[int] = list(open_row[0]) if open_row else []
        copied = first_load and not open_before and _copy_into_table(cur, normalised)
        if copied:
            inserted, updated = received, 0
        else:
            cur.execute(_CREATE_STAGE)
            with cur.copy(_COPY_STAGE) as copy:
                copy.write(normalised.to_csv())  # one CSV document, encoded by Arrow in C++
            cur.execute(UPSERT_SQL)
            merged = cur.fetchone()
            assert merged is not None
            inserted, updated = int(merged[0]), int(merged[1])
            cur.execute(UPSERT_FINGERPRINTS_SQL)
        new_rejects = _write_rejects(cur, normalised, window_date)
        cur.execute(_DAY_COUNTS, {"day": window_date, "open_before": open_before})
        counted = cur.fetchone()
        assert counted is not None
        result = WriteResult(
            received=received + skipped_unchanged,
            inserted=inserted,
            updated=updated,
            unchanged=received + skipped_unchanged - inserted - updated,
            rejected=len(normalised.rejects),
            new_rejects=new_rejects,
            open_tasks=int(counted[2]),
            open_before=len(open_before),
            became_final=int(counted[1]),
            partition_rows=int(counted[0]),
        )
        cur.execute(
            _LOG_SYNC,
            _log_params(window_date, window, time_zone, stats, started_at, run_id, window_digest)
            | result.as_dict(),
        )
        if turn is not None:
            turn.before_commit(conn)
    return result


def _check_compared_with(cur: psycopg.Cursor, window_date: date, compared_with: int | None) -> None:
    """Raise `ConcurrentSyncError` if a sync wrote rows of the day after `compared_with` (the
    day's latest sync that had written rows when the skipped records were compared)."""
    cur.execute(_LAST_WRITE, (window_date,))
    last = cur.fetchone()
    if last is None or last[0] == compared_with:
        return
    raise ConcurrentSyncError(
        f"{window_date}: not written: another sync of this day (sync_id {last[0]}, run "
        f"{last[1] or 'unknown'}) wrote its rows after this one compared its records with them, "
        "so the records this sync found unchanged may no longer be. Two runs were syncing the "
        "same day at once, which the Dagster pool laaffic_api (limit 1) prevents when it is "
        "configured; syncing the day again re-reads it."
    )


#: Earlier rejects of the window's tasks (the parameter: their ids, whichever path wrote them)
#: that this write did not refuse again are resolved.
_RESOLVE_REJECTS = b"""
    UPDATE group_call_task_rejects AS r SET resolved_at = now()
    WHERE r.resolved_at IS NULL AND r.last_seen_at < now() AND r.task_id = ANY(%s)
"""


def _copy_into_table(cur: psycopg.Cursor, normalised: NormalisedWindow) -> bool:
    """COPY the window's rows into `group_call_tasks` and their fingerprints, under a savepoint.
    False (and nothing written) when a task is already stored: the caller merges instead."""
    rows, hashes = normalised.to_table_csv()
    try:
        with cur.connection.transaction():
            with cur.copy(_COPY_TABLE) as copy:
                copy.write(rows)
            with cur.copy(_COPY_FINGERPRINTS) as copy:
                copy.write(hashes)
    except psycopg.errors.UniqueViolation:
        return False
    return True


def _write_rejects(cur: psycopg.Cursor, normalised: NormalisedWindow, window_date: date) -> int:
    """Upsert this window's rejects; mark earlier ones of these tasks resolved. Returns new.

    One statement per reject, sent as one batch (psycopg's executemany pipelines them): a field
    the API starts sending in a new shape rejects it in every record, and one round trip each
    made such a window's write several times slower."""
    new = 0
    if normalised.rejects:
        cur.executemany(
            """
            INSERT INTO group_call_task_rejects (task_id, field, raw_value, error, window_date)
            VALUES (%s, %s, %s, %s, %s)
            ON CONFLICT (reject_key) DO UPDATE
                SET last_seen_at = now(), error = EXCLUDED.error, resolved_at = NULL
            RETURNING (xmax = 0)
            """,
            [(r.task_id, r.field, r.raw_value, r.error, window_date) for r in normalised.rejects],
            returning=True,
        )
        while True:
            row = cur.fetchone()
            new += bool(row and row[0])
            if not cur.nextset():
                break
    # A reject of a task re-read in this window but not refused again is resolved.
    cur.execute(_RESOLVE_REJECTS, (normalised.table["task_id"].to_pylist(),))
    return new


def write_unchanged_window(
    conn: psycopg.Connection,
    *,
    window_date: date,
    window: TimeWindow,
    time_zone: str,
    stats: FetchStats,
    started_at: datetime,
    run_id: str | None = None,
    window_digest: bytes,
    turn: CommitTurn | None = None,
) -> WriteResult | None:
    """A re-sync's shortcut, in one statement: if the day's last sync read exactly these API
    pages (`window_digest`, see `WindowResult.digest`) with the same time zone and parsing rules,
    and the day still holds as many rows as that sync left, log this sync (the rows that sync
    received, all unchanged) and return what it did. Otherwise write nothing and return None: in
    any doubt (no digest logged, rows deleted or moved since) the records are compared one by
    one. Rows edited in the warehouse itself are not looked for: the API is read, not the table.
    `turn`: as for `write_window`."""
    with conn.transaction():
        if turn is not None:
            turn.begin(conn)
        conn.execute(_LOCK_DAY, _day_lock(window_date))  # a write of the day under way: after it
        row = conn.execute(
            _LOG_UNCHANGED_SYNC,
            _log_params(window_date, window, time_zone, stats, started_at, run_id, window_digest),
        ).fetchone()
        if turn is not None:
            turn.before_commit(conn)
    return None if row is None else WriteResult(*map(int, row))


#: `group_call_sync_log` columns a sync writes (the rest are generated); every `WriteResult`
#: field is one of them.
_LOG_COLUMNS = (
    "window_date", "window_start", "window_end", "time_zone", "normaliser_version",
    "api_total", "pages", "requests", "retries", "received", "inserted", "updated",
    "unchanged", "rejected", "new_rejects", "open_tasks", "open_before", "became_final",
    "started_at", "run_id", "window_digest", "partition_rows", "upstream_duplicates",
)  # fmt: skip
_LOG_SYNC = sql.SQL("INSERT INTO group_call_sync_log ({}) VALUES ({})").format(
    sql.SQL(", ").join(map(sql.Identifier, _LOG_COLUMNS)),
    sql.SQL(", ").join(map(sql.Placeholder, _LOG_COLUMNS)),
)
#: The day's figures for an unchanged sync; every other column is a parameter, as in _LOG_SYNC.
_UNCHANGED_FIGURES = {
    # The same pages hold the same rows: as many as the last sync received (`api_total` would
    # also count rows the API listed twice and records without a usable taskId).
    "received": "last.received",
    "inserted": "0",
    "updated": "0",
    "unchanged": "last.received",
    "rejected": "0",
    "new_rejects": "0",
    "open_tasks": "day.open_tasks",
    "open_before": "day.open_tasks",
    "became_final": "0",
    "partition_rows": "day.partition_rows",
}
_LOG_UNCHANGED_SYNC = sql.SQL(
    """
    WITH last AS (
        SELECT time_zone, normaliser_version, window_digest, partition_rows, received
        FROM group_call_sync_log WHERE window_date = %(window_date)s
        ORDER BY sync_id DESC LIMIT 1
    ), day AS (
        SELECT count(*) AS partition_rows,
               count(*) FILTER (WHERE {is_open}) AS open_tasks
        FROM group_call_tasks WHERE created_date = %(window_date)s
    )
    INSERT INTO group_call_sync_log ({columns})
    SELECT {values} FROM last, day
    WHERE last.time_zone = %(time_zone)s AND last.normaliser_version = %(normaliser_version)s
      AND last.window_digest = %(window_digest)s AND last.partition_rows = day.partition_rows
    RETURNING {figures}
    """
).format(
    is_open=IS_OPEN,
    figures=sql.SQL(", ").join(sql.Identifier(f.name) for f in fields(WriteResult)),
    columns=sql.SQL(", ").join(map(sql.Identifier, _LOG_COLUMNS)),
    values=sql.SQL(", ").join(
        sql.SQL(_UNCHANGED_FIGURES[c]) if c in _UNCHANGED_FIGURES else sql.Placeholder(c)
        for c in _LOG_COLUMNS
    ),
)


def _log_params(
    window_date: date,
    window: TimeWindow,
    time_zone: str,
    stats: FetchStats,
    started_at: datetime,
    run_id: str | None,
    window_digest: bytes | None,
) -> dict[str, Any]:
    return {
        "window_date": window_date,
        "window_start": window.start,
        "window_end": window.end,
        "time_zone": time_zone,
        "normaliser_version": NORMALISER_VERSION,
        "api_total": stats.api_total,
        "pages": stats.pages,
        "requests": stats.requests,
        "retries": stats.retries,
        "upstream_duplicates": stats.upstream_duplicates,
        "started_at": started_at,
        "run_id": run_id,
        "window_digest": window_digest,
    }


def stored_days(
    conn: psycopg.Connection, days: list[date], time_zone: str
) -> dict[date, bytes | None]:
    """Which of `days` already have tasks stored, each with the page digest its last sync logged
    (None when that sync used another time zone or parsing rules, or logged none): a re-sync
    passes it to `LaafficClient.fetch_window` to learn, without parsing, that nothing changed.
    One index probe per day (a DISTINCT over the range would read every row's index entry, most
    of a second for a stored year)."""
    if not days:
        return {}
    rows = conn.execute(
        """
        SELECT d, (
            SELECT CASE WHEN l.time_zone = %s AND l.normaliser_version = %s
                        THEN l.window_digest END
            FROM group_call_sync_log AS l WHERE l.window_date = d
            ORDER BY l.sync_id DESC LIMIT 1)
        FROM unnest(%s::date[]) AS d
        WHERE EXISTS (SELECT FROM group_call_tasks WHERE created_date = d)
        """,
        (time_zone, NORMALISER_VERSION, days),
    ).fetchall()
    conn.commit()
    return dict(rows)


def unchanged_records(
    conn: psycopg.Connection,
    window_date: date,
    time_zone: str,
    records: Sequence[dict[str, Any]],
    hashes: Sequence[bytes],
) -> tuple[list[bool], int | None]:
    """Which records hash the same as what was last written for their task (`hashes` from
    `normalise.fingerprints`), so that a re-sync can skip parsing and writing them. Only when
    the day was last synced with the same time zone and parsing rules, and only for tasks whose
    row is still there: otherwise every row is re-derived. With them, the latest sync that wrote
    rows of the day, for `write_window(compared_with=...)` to check that none has since. Read
    under the day's lock, shared: no write of the day commits meanwhile."""
    with conn.transaction():
        conn.execute(_LOCK_DAY_SHARED, _day_lock(window_date))
        written = conn.execute(_LAST_WRITE, (window_date,)).fetchone()
        compared_with = None if written is None else int(written[0])
        last = conn.execute(
            "SELECT time_zone, normaliser_version FROM group_call_sync_log "
            "WHERE window_date = %s ORDER BY sync_id DESC LIMIT 1",
            (window_date,),
        ).fetchone()
        if last is None or tuple(last) != (time_zone, NORMALISER_VERSION):
            return [False] * len(records), compared_with
        stored: dict[int, bytes] = dict(
            conn.execute(
                """
                SELECT t.task_id,
                       (SELECT f.fingerprint FROM group_call_task_fingerprints AS f
                        WHERE f.task_id = t.task_id)
                FROM group_call_tasks AS t
                WHERE t.created_date = %s
                """,  # a primary-key probe per row: never a scan of every fingerprint
                (window_date,),
            ).fetchall()
        )
    same: list[bool] = []
    for record, digest in zip(records, hashes, strict=True):
        task_id = record.get("taskId")
        same.append(type(task_id) is int and stored.get(task_id) == digest)
    return same, compared_with

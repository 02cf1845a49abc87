"""Issue 3: on an empty database the migrations create exactly the table contract; a second run
applies nothing and changes nothing."""

from __future__ import annotations

import hashlib
import re
import shutil
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pipelines.laaffic.models import FINAL_STATUSES, OPEN_STATUSES, STATUS_LABELS
from pipelines.warehouse.migrate import apply_migrations, migration_files
from pipelines.warehouse.queries import IS_OPEN, IS_UNSETTLED
from tests.warehouse.helpers import make_records, write

TASKS = "group_call_tasks"
REJECTS = "group_call_task_rejects"
SYNC_LOG = "group_call_sync_log"
STATUSES = "group_call_task_statuses"
DAILY = "group_call_daily_summary"
SYNC_STATUS = "group_call_sync_status"
READER = "laaffic_reader"
#: Internal to the pipeline (re-sync skips unchanged records); not for BI.
FINGERPRINTS = "group_call_task_fingerprints"

#: The contract with BI, column by column, in order (issue 3's table).
TASKS_CONTRACT: list[tuple[str, str]] = [
    ("task_id", "bigint"),
    ("task_name", "text"),
    ("status", "smallint"),
    ("rate", "numeric"),
    ("num_cnt", "integer"),
    ("call_num", "integer"),
    ("success", "integer"),
    ("fail", "integer"),
    ("answered_num", "integer"),
    ("send_sms_num", "integer"),
    ("created_time", "timestamp with time zone"),
    ("created_date", "date"),
    ("script_id", "integer"),
    ("task_type", "smallint"),
    ("asr", "numeric"),
    ("agent_total_feetime", "integer"),
    ("charge_len", "integer"),
    ("agent_fee_amount", "numeric(20,6)"),
    ("acd_seconds", "numeric"),
    ("group_call_pay_fee_amount", "numeric(20,6)"),
    ("group_call_pay_fee_currency", "character(3)"),
    ("sms_pay_fee_amount", "numeric(20,6)"),
    ("sms_pay_fee_currency", "character(3)"),
    ("task_sum_pay_fee_amount", "numeric(20,6)"),
    ("task_sum_pay_fee_currency", "character(3)"),
    ("raw", "jsonb"),
    ("first_seen_at", "timestamp with time zone"),
    ("last_changed_at", "timestamp with time zone"),
]

#: What the issue names for the rejects table and the sync log (more columns are allowed).
REJECTS_REQUIRED = {
    "task_id": "bigint",
    "field": "text",
    "raw_value": "text",
    "error": "text",
    "first_seen_at": "timestamp with time zone",
    "last_seen_at": "timestamp with time zone",
}
SYNC_LOG_REQUIRED = {
    "window_date": "date",
    "window_start": "timestamp without time zone",
    "window_end": "timestamp without time zone",
    "api_total": "integer",
    "pages": "integer",
    "requests": "integer",
    "inserted": "integer",
    "updated": "integer",
    "unchanged": "integer",
    "rejected": "integer",
    "started_at": "timestamp with time zone",
    "finished_at": "timestamp with time zone",
}
DAILY_COLUMNS = [
    ("created_date", "date"),
    ("currency", "character(3)"),
    ("tasks", "bigint"),
    ("open_tasks", "bigint"),
    ("numbers", "bigint"),
    ("calls", "bigint"),
    ("answered", "bigint"),
    ("answer_rate_pct", "numeric"),
    ("billed_call_seconds", "bigint"),
    ("billed_agent_seconds", "bigint"),
    ("group_call_spend", "numeric"),
    ("sms_spend", "numeric"),
    ("agent_spend", "numeric"),
    ("total_spend", "numeric"),
]
BI_OBJECTS = (TASKS, REJECTS, SYNC_LOG, STATUSES, DAILY, SYNC_STATUS)


def _relations(conn: psycopg.Connection) -> dict[str, str]:
    """name -> relkind ('r' table, 'v' view, ...) of the current schema's relations, indexes and
    sequences aside."""
    rows = conn.execute(
        """
        SELECT c.relname, c.relkind::text FROM pg_class AS c
        WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind NOT IN ('i', 'S')
        """
    ).fetchall()
    return dict(rows)


def _columns(conn: psycopg.Connection, relation: str) -> list[tuple[str, str]]:
    return [
        (name, kind)
        for name, kind in conn.execute(
            """
            SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
            WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum
            """,
            (relation,),
        ).fetchall()
    ]


def _snapshot(conn: psycopg.Connection) -> dict[str, Any]:
    """Everything a migration could change: columns (types, nullability, defaults, comments),
    relation comments, constraints, indexes, view definitions, grants, seeded rows and the
    migration history."""
    q = conn.execute
    return {
        "relations": q(
            """
            SELECT c.relname, c.relkind::text, obj_description(c.oid, 'pg_class'),
                   c.relacl::text
            FROM pg_class AS c WHERE c.relnamespace = current_schema()::regnamespace
            ORDER BY c.relname
            """
        ).fetchall(),
        "columns": q(
            """
            SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod),
                   a.attnotnull, a.attidentity::text, a.attgenerated::text,
                   pg_get_expr(d.adbin, d.adrelid), col_description(c.oid, a.attnum)
            FROM pg_attribute AS a
            JOIN pg_class AS c ON c.oid = a.attrelid
            LEFT JOIN pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
            WHERE c.relnamespace = current_schema()::regnamespace
              AND a.attnum > 0 AND NOT a.attisdropped
            ORDER BY c.relname, a.attnum
            """
        ).fetchall(),
        "constraints": q(
            """
            SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
            FROM pg_constraint WHERE connamespace = current_schema()::regnamespace
            ORDER BY 1, 2
            """
        ).fetchall(),
        "indexes": q(
            "SELECT tablename, indexname, indexdef FROM pg_indexes "
            "WHERE schemaname = current_schema() ORDER BY 1, 2"
        ).fetchall(),
        "views": q(
            "SELECT viewname, definition FROM pg_views "
            "WHERE schemaname = current_schema() ORDER BY 1"
        ).fetchall(),
        "schema_acl": q(
            "SELECT nspacl::text FROM pg_namespace WHERE oid = current_schema()::regnamespace"
        ).fetchall(),
        "statuses": q(f"SELECT xmin::text, * FROM {STATUSES} ORDER BY status").fetchall(),
        "migrations": q(
            "SELECT xmin::text, name, checksum, applied_at FROM schema_migrations ORDER BY name"
        ).fetchall(),
    }


def test_migrations_are_numbered_one_after_another() -> None:
    """Each number once, none skipped: two branches each adding "013_…" would otherwise both
    apply, in an order that depends on their names, not on which was written against which."""
    numbers = [int(path.name[:3]) for path in migration_files()]
    assert numbers == list(range(1, len(numbers) + 1))


def test_empty_database_gets_exactly_the_contract(conn: psycopg.Connection) -> None:
    assert _relations(conn) == {}
    applied = apply_migrations(conn)
    assert applied == [path.name for path in migration_files()]
    assert applied[0].startswith("001_")

    assert _relations(conn) == {
        TASKS: "r",
        REJECTS: "r",
        SYNC_LOG: "r",
        STATUSES: "r",
        FINGERPRINTS: "r",
        "schema_migrations": "r",
        DAILY: "v",
        SYNC_STATUS: "v",
    }
    assert _columns(conn, TASKS) == TASKS_CONTRACT
    rejects = dict(_columns(conn, REJECTS))
    assert {name: rejects.get(name) for name in REJECTS_REQUIRED} == REJECTS_REQUIRED
    sync_log = dict(_columns(conn, SYNC_LOG))
    assert {name: sync_log.get(name) for name in SYNC_LOG_REQUIRED} == SYNC_LOG_REQUIRED
    assert _columns(conn, DAILY) == DAILY_COLUMNS
    assert {"window_date", "last_synced_at"} <= set(dict(_columns(conn, SYNC_STATUS)))


def test_types_as_information_schema_reports_them(migrated: psycopg.Connection) -> None:
    rows = migrated.execute(
        """
        SELECT column_name, data_type, numeric_precision, numeric_scale,
               character_maximum_length, is_nullable
        FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = %s
        """,
        (TASKS,),
    ).fetchall()
    info = {row[0]: row[1:] for row in rows}
    for money in ("agent_fee_amount", "group_call_pay_fee_amount", "sms_pay_fee_amount"):
        assert info[money][:3] == ("numeric", 20, 6)
    assert info["task_sum_pay_fee_amount"][:3] == ("numeric", 20, 6)
    for currency in ("group_call_pay_fee", "sms_pay_fee", "task_sum_pay_fee"):
        assert info[f"{currency}_currency"][0] == "character"
        assert info[f"{currency}_currency"][3] == 3
    # Unconstrained numerics: percentages and seconds keep every digit the API sends.
    for column in ("rate", "asr", "acd_seconds"):
        assert info[column][:3] == ("numeric", None, None)
    assert info["created_time"][0] == "timestamp with time zone"
    assert info["raw"][0] == "jsonb"
    assert info["task_id"][4] == "NO"
    assert info["script_id"][4] == "YES"  # nullable, as the contract says


def test_primary_key_is_task_id(migrated: psycopg.Connection) -> None:
    keys = migrated.execute(
        """
        SELECT array_agg(a.attname ORDER BY k.ord)
        FROM pg_constraint AS c
        CROSS JOIN unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord)
        JOIN pg_attribute AS a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
        WHERE c.conrelid = %s::regclass AND c.contype = 'p'
        GROUP BY c.oid
        """,
        (TASKS,),
    ).fetchall()
    assert keys == [(["task_id"],)]


def test_status_lookup_holds_the_documented_labels(migrated: psycopg.Connection) -> None:
    rows = migrated.execute(f"SELECT status, label, is_final FROM {STATUSES} ORDER BY status")
    assert rows.fetchall() == [
        (code, label, code in FINAL_STATUSES) for code, label in sorted(STATUS_LABELS.items())
    ]


def test_the_open_tasks_index_is_what_the_pipeline_calls_open(migrated: psycopg.Connection) -> None:
    """The partial index of sql/001 lists the statuses itself; IS_OPEN must match it exactly
    (and stay literal), or the open-task lookups of every sync and sensor tick scan the table."""
    row = migrated.execute(
        "SELECT pg_get_expr(indpred, indrelid) FROM pg_index "
        "WHERE indexrelid = 'group_call_tasks_open_idx'::regclass"
    ).fetchone()
    assert row is not None
    assert sorted(map(int, re.findall(r"\d+", row[0]))) == sorted(OPEN_STATUSES)
    migrated.execute("SET enable_seqscan = off")
    try:
        plan = migrated.execute(
            sql.SQL(
                "EXPLAIN SELECT count(*) FROM group_call_tasks WHERE {} AND created_date < %s"
            ).format(IS_OPEN),
            (date(2024, 1, 1),),
        ).fetchall()
    finally:
        migrated.execute("RESET enable_seqscan")
    assert "group_call_tasks_open_idx" in "\n".join(line for (line,) in plan)


def test_the_sensors_lookup_of_tasks_not_final_reads_only_partial_indexes(
    migrated: psycopg.Connection,
) -> None:
    """IS_UNSETTLED adds the tasks of a refused status (NULL) to the open ones: sql/015 indexes
    those, so the lookup is a BitmapOr of the two partial indexes, not a scan of the days."""
    migrated.execute("SET enable_seqscan = off")
    try:
        plan = "\n".join(
            line
            for (line,) in migrated.execute(
                sql.SQL(
                    "EXPLAIN SELECT count(*) FROM group_call_tasks WHERE {} AND created_date < %s"
                ).format(IS_UNSETTLED),
                (date(2024, 1, 1),),
            )
        )
    finally:
        migrated.execute("RESET enable_seqscan")
    assert "group_call_tasks_open_idx" in plan
    assert "group_call_tasks_status_refused_idx" in plan
    assert "created_date_idx" not in plan


def test_reader_role_can_read_everything_and_write_nothing(migrated: psycopg.Connection) -> None:
    role = migrated.execute(
        "SELECT rolcanlogin, rolsuper FROM pg_roles WHERE rolname = %s", (READER,)
    ).fetchone()
    assert role == (False, False)
    assert migrated.execute(
        "SELECT has_schema_privilege(%s, current_schema(), 'USAGE')", (READER,)
    ).fetchone() == (True,)
    for relation in BI_OBJECTS:
        can = migrated.execute(
            """
            SELECT has_table_privilege(%(role)s, %(rel)s, 'SELECT'),
                   has_table_privilege(%(role)s, %(rel)s, 'INSERT, UPDATE, DELETE, TRUNCATE')
            """,
            {"role": READER, "rel": relation},
        ).fetchone()
        assert can == (True, False), relation


def test_reader_role_reads_as_a_login_role_would(
    migrated: psycopg.Connection, database_url: str
) -> None:
    """SET ROLE to the reader: SELECT works on the BI views, writing is refused."""
    with psycopg.connect(database_url, autocommit=True) as bi:
        bi.execute(f"SET ROLE {READER}")
        assert bi.execute(f"SELECT count(*) FROM {DAILY}").fetchone() == (0,)
        assert bi.execute(f"SELECT count(*) FROM {STATUSES}").fetchone() == (7,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            bi.execute(f"DELETE FROM {TASKS}")


def test_every_table_view_and_column_has_a_comment(migrated: psycopg.Connection) -> None:
    missing = migrated.execute(
        """
        SELECT c.relname, NULL FROM pg_class AS c
        WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'v', 'm', 'p')
          AND coalesce(obj_description(c.oid, 'pg_class'), '') = ''
        UNION ALL
        SELECT c.relname, a.attname FROM pg_class AS c
        JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'v', 'm', 'p')
          AND coalesce(col_description(c.oid, a.attnum), '') = ''
        ORDER BY 1, 2
        """
    ).fetchall()
    assert missing == []
    # The comments really live in pg_description (what BI tools read).
    described = migrated.execute(
        """
        SELECT count(*) FROM pg_description
        WHERE objoid = %s::regclass AND classoid = 'pg_class'::regclass AND objsubid > 0
        """,
        (TASKS,),
    ).fetchone()
    assert described == (len(TASKS_CONTRACT),)


def test_migration_history_records_each_file_with_its_checksum(
    migrated: psycopg.Connection,
) -> None:
    rows = migrated.execute("SELECT name, checksum FROM schema_migrations ORDER BY name")
    assert rows.fetchall() == [
        (path.name, hashlib.sha256(path.read_text(encoding="utf-8").encode()).hexdigest())
        for path in migration_files()
    ]


def test_running_again_applies_nothing_and_changes_nothing(conn: psycopg.Connection) -> None:
    apply_migrations(conn)
    before = _snapshot(conn)
    assert apply_migrations(conn) == []
    assert apply_migrations(conn) == []
    assert _snapshot(conn) == before


def test_every_file_is_idempotent_on_its_own(conn: psycopg.Connection) -> None:
    """A half-recorded history (or a second runner) re-running a file is harmless."""
    apply_migrations(conn)
    before = _snapshot(conn)
    for path in migration_files():
        conn.execute(path.read_text(encoding="utf-8").encode())
    after = _snapshot(conn)
    # Re-seeding the status lookup may write new row versions; the rows themselves are the same.
    strip = [row[1:] for row in before.pop("statuses")], [row[1:] for row in after.pop("statuses")]
    assert strip[0] == strip[1]
    assert after == before


def test_a_forgotten_history_row_is_reapplied_harmlessly(conn: psycopg.Connection) -> None:
    apply_migrations(conn)
    before = _snapshot(conn)
    last = migration_files()[-1].name
    conn.execute("DELETE FROM schema_migrations WHERE name = %s", (last,))
    assert apply_migrations(conn) == [last]
    after = _snapshot(conn)
    for snap in (before, after):
        snap["statuses"] = [row[1:] for row in snap["statuses"]]
        snap["migrations"] = [row[1:3] for row in snap["migrations"]]
    assert after == before


def test_rejects_stored_before_reported_at_existed_count_as_reported(
    conn: psycopg.Connection, tmp_path: Path
) -> None:
    """Upgrading does not re-report every standing reject: those already stored were reported
    by the check as it worked before 007; a reject stored after it waits for a check."""
    for path in migration_files():
        if path.name < "007":
            shutil.copy(path, tmp_path / path.name)
    apply_migrations(conn, tmp_path)
    insert = (
        "INSERT INTO group_call_task_rejects (task_id, field, raw_value, error, window_date) "
        "VALUES (%s, 'agentFee', 'x', 'not an amount', '2024-06-01')"
    )
    conn.execute(insert, (1,))
    conn.commit()

    assert "007_rejects_reported_at.sql" in apply_migrations(conn)
    conn.execute(insert, (2,))
    rows = conn.execute(
        "SELECT task_id, reported_at IS NOT NULL FROM group_call_task_rejects ORDER BY task_id"
    ).fetchall()
    assert rows == [(1, True), (2, False)]


@pytest.mark.timeout(120)
def test_a_migration_racing_another_database_for_the_reader_role_still_succeeds() -> None:
    """The role is cluster-wide while the migrations' advisory lock is per database: two
    databases of one server migrated at once (staging and production, say) both find no
    laaffic_reader and both create it. The one that loses must grant to the role the other
    created, not fail its whole migration with a unique violation on pg_authid. A server of its
    own (the role must not exist yet); the other database's CREATE ROLE is held uncommitted until
    this one's is waiting on it, so the race happens every time."""
    import tempfile
    import threading
    import time

    from pipelines.warehouse.embedded import start_embedded_postgres
    from pipelines.warehouse.urls import with_database

    # Not tmp_path: the server runs as another user, who must be able to reach its directory.
    tmp = tempfile.mkdtemp(prefix="laaffic-test-roles-")
    server = start_embedded_postgres(Path(tmp) / "pgdata", cleanup_mode="delete")
    try:
        url = server.get_uri()
        with psycopg.connect(url, autocommit=True) as admin:
            assert admin.execute(
                "SELECT count(*) FROM pg_roles WHERE rolname = %s", (READER,)
            ).fetchone() == (0,)
            for name in ("staging", "production"):
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            with psycopg.connect(with_database(url, "staging")) as other:
                other.execute(f"CREATE ROLE {READER} NOLOGIN")  # not committed yet
                errors: list[BaseException] = []

                def migrate_production() -> None:
                    try:
                        with psycopg.connect(with_database(url, "production")) as conn:
                            apply_migrations(conn)
                    except BaseException as exc:  # reported by the assertion below
                        errors.append(exc)

                thread = threading.Thread(target=migrate_production)
                thread.start()
                deadline = time.monotonic() + 60
                while admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = 'production' "
                    "AND wait_event_type = 'Lock'"  # on the role the other is creating
                ).fetchone() != (1,):
                    assert thread.is_alive() and time.monotonic() < deadline, errors
                    time.sleep(0.05)
                other.commit()
                thread.join(60)
            assert errors == []
        with psycopg.connect(with_database(url, "production"), autocommit=True) as conn:
            assert [path.name for path in migration_files()] == [
                name for (name,) in conn.execute("SELECT name FROM schema_migrations ORDER BY 1")
            ]
            for relation in BI_OBJECTS:
                assert conn.execute(
                    "SELECT has_table_privilege(%s, %s, 'SELECT')", (READER, relation)
                ).fetchone() == (True,), relation
    finally:
        server.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.timeout(120)
def test_a_pipeline_role_that_cannot_create_the_reader_role_says_so_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The pipeline's own role without CREATEROLE: the migrations still succeed, leaving the
    reader role to a DBA, and the pipeline's log says so (README: "otherwise it logs a notice").
    PostgreSQL sends that as a NOTICE, which psycopg drops unless a handler takes it. A server of
    its own: the role must not exist yet."""
    import tempfile

    from pipelines.warehouse.embedded import start_embedded_postgres
    from pipelines.warehouse.urls import with_database

    # Not tmp_path: the server runs as another user, who must be able to reach its directory.
    tmp = tempfile.mkdtemp(prefix="laaffic-test-roles-")
    server = start_embedded_postgres(Path(tmp) / "pgdata", cleanup_mode="delete")
    try:
        url = server.get_uri()
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("CREATE ROLE etl LOGIN NOCREATEROLE NOSUPERUSER")
            admin.execute("CREATE DATABASE analytics OWNER etl")
        etl_url = with_database(url, "analytics").replace("//postgres:@", "//etl@", 1)
        assert "etl@" in etl_url
        with psycopg.connect(etl_url) as conn, caplog.at_level("WARNING"):
            assert apply_migrations(conn) == [path.name for path in migration_files()]
        with psycopg.connect(url, autocommit=True) as admin:
            assert admin.execute(
                "SELECT count(*) FROM pg_roles WHERE rolname = %s", (READER,)
            ).fetchone() == (0,)
        said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert any("cannot create role laaffic_reader" in line for line in said), said
    finally:
        server.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_database_that_ran_an_earlier_equivalent_text_is_not_warned(
    conn: psycopg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    """003 was edited (the reader role's creation race) after databases applied it; they need
    nothing from the edit, so they are not told on every start that it changed. A file changed
    in any other way still is."""
    from pipelines.warehouse.migrate import SUPERSEDED_CHECKSUMS

    apply_migrations(conn)
    (earlier,) = SUPERSEDED_CHECKSUMS["003_bi_layer.sql"]
    conn.execute(
        "UPDATE schema_migrations SET checksum = %s WHERE name = '003_bi_layer.sql'", (earlier,)
    )
    with caplog.at_level("WARNING", logger="pipelines.warehouse.migrate"):
        assert apply_migrations(conn) == []
    assert caplog.messages == []
    conn.execute("UPDATE schema_migrations SET checksum = 'x' WHERE name = '003_bi_layer.sql'")
    with caplog.at_level("WARNING", logger="pipelines.warehouse.migrate"):
        assert apply_migrations(conn) == []
    assert caplog.messages == ["migration 003_bi_layer.sql changed after it was applied"]


#: sql/004 as the first versions of the pipeline applied it (fingerprints kept the day too).
_EARLIEST_004 = """
CREATE TABLE IF NOT EXISTS group_call_task_fingerprints (
    task_id      bigint PRIMARY KEY,
    created_date date,
    fingerprint  bytea  NOT NULL
);
CREATE INDEX IF NOT EXISTS group_call_task_fingerprints_date_idx
    ON group_call_task_fingerprints (created_date);
COMMENT ON TABLE group_call_task_fingerprints IS 'Internal to the pipeline.';
COMMENT ON COLUMN group_call_task_fingerprints.task_id IS 'The task.';
COMMENT ON COLUMN group_call_task_fingerprints.created_date IS 'Its created_date.';
COMMENT ON COLUMN group_call_task_fingerprints.fingerprint IS 'BLAKE2b-128 of the record.';
"""


def _earliest_002() -> str:
    """sql/002 as the first versions applied it: the sync log had neither normaliser_version nor
    open_before / became_final (the files were edited in place afterwards)."""
    text = migration_files()[1].read_text(encoding="utf-8")
    for piece in (
        "    normaliser_version integer NOT NULL,\n",
        "    open_before   integer     NOT NULL,\n",
        "    became_final  integer     NOT NULL,\n",
    ):
        assert piece in text
        text = text.replace(piece, "")
    for column in ("normaliser_version", "open_before", "became_final"):
        text, found = re.subn(
            rf"COMMENT ON COLUMN group_call_sync_log\.{column} IS\s*'.*?';\n", "", text, flags=re.S
        )
        assert found == 1, column
    return text


def _shape(conn: psycopg.Connection, schema: str) -> dict[str, Any]:
    """Columns (unordered: a column added later comes last), their comments, and indexes."""
    return {
        "columns": set(
            conn.execute(
                """
                SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                       pg_get_expr(d.adbin, d.adrelid), col_description(c.oid, a.attnum)
                FROM pg_attribute AS a JOIN pg_class AS c ON c.oid = a.attrelid
                LEFT JOIN pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                WHERE c.relnamespace = %s::regnamespace AND c.relkind IN ('r', 'v')
                  AND a.attnum > 0 AND NOT a.attisdropped AND c.relname <> 'schema_migrations'
                """,
                (schema,),
            ).fetchall()
        ),
        "indexes": set(
            conn.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = %s", (schema,)
            ).fetchall()
        ),
    }


def test_a_database_first_migrated_by_the_earliest_version_is_brought_up_to_date(
    conn: psycopg.Connection, database_url: str, tmp_path: Path
) -> None:
    """002 and 004 were edited after the first versions (the demo's .pgdata among their
    databases) had applied them. Such a database skips them as applied: its sync log lacked
    normaliser_version, open_before and became_final, and every sync failed writing them. It ends
    up with the tables a fresh database gets, keeps its history, and syncs again."""
    earliest = tmp_path / "earliest"
    earliest.mkdir()
    files = migration_files()
    shutil.copy(files[0], earliest / files[0].name)
    (earliest / files[1].name).write_text(_earliest_002(), encoding="utf-8")
    shutil.copy(files[2], earliest / files[2].name)
    (earliest / files[3].name).write_text(_EARLIEST_004, encoding="utf-8")
    apply_migrations(conn, earliest)
    conn.execute(
        """
        INSERT INTO group_call_sync_log (window_date, window_start, window_end, time_zone,
            api_total, pages, requests, retries, received, inserted, updated, unchanged,
            rejected, new_rejects, open_tasks, started_at)
        VALUES ('2024-06-03', '2024-06-03', '2024-06-03 23:59:59', 'Asia/Shanghai',
            0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, now())
        """
    )
    conn.execute(
        "INSERT INTO group_call_task_fingerprints VALUES (7, '2024-06-03', '\\x00'::bytea)"
    )

    apply_migrations(conn)
    day = date(2024, 6, 4)
    records = make_records(day, 5)
    with psycopg.connect(database_url) as writer:
        result = write(writer, records, day)
    assert result.inserted == 5
    assert conn.execute("SELECT count(*) FROM group_call_sync_log").fetchone() == (2,)
    assert conn.execute(
        "SELECT normaliser_version, open_before, became_final FROM group_call_sync_log "
        "WHERE window_date = '2024-06-03'"
    ).fetchone() == (0, 0, 0)  # not recorded then: 0 (an older version re-derives the day)

    conn.execute("CREATE SCHEMA fresh")
    conn.execute("SET search_path = fresh")
    apply_migrations(conn)
    conn.execute("RESET search_path")
    assert _shape(conn, "public") == _shape(conn, "fresh")


def test_a_notice_a_migration_raises_is_logged_wherever_plpgsql_raises_it(
    conn: psycopg.Connection, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A migration's RAISE NOTICE is logged as a warning whether the DO block raises it or a
    function it calls does: the innermost line of the notice's context names the RAISE, the
    outermost the caller ("... at PERFORM"). Only that innermost line's last word is looked at:
    the rest of the line is in the server's language (German: "... Zeile 3 bei RAISE"), so the
    English "at RAISE" missed every notice of a server whose lc_messages is not English. The
    "already exists, skipping" notices of idempotent DDL have no such context and are not."""
    (tmp_path / "001_notices.sql").write_text(
        """
        CREATE TABLE IF NOT EXISTS notices_probe (a int);
        CREATE TABLE IF NOT EXISTS notices_probe (a int);
        CREATE FUNCTION pg_temp.tell() RETURNS void LANGUAGE plpgsql AS $$
        BEGIN
            RAISE NOTICE 'from a function';
        END
        $$;
        DO $$
        BEGIN
            RAISE NOTICE 'from the block';
            PERFORM pg_temp.tell();
        END
        $$;
        """
    )
    with caplog.at_level("WARNING", logger="pipelines.warehouse.migrate"):
        assert apply_migrations(conn, tmp_path) == ["001_notices.sql"]
    said = [r.getMessage() for r in caplog.records if r.name == "pipelines.warehouse.migrate"]
    assert said == ["migration: from the block", "migration: from a function"]


def test_tasks_stored_on_no_day_before_011_are_put_on_the_day_that_listed_them(
    conn: psycopg.Connection, database_url: str, tmp_path: Path
) -> None:
    """Before NORMALISER_VERSION 4 (migration 011's comment) a task whose createdTime was refused
    was stored with created_date NULL. The new version re-derives a day only on its next sync,
    which a day whose other tasks are final never gets (the open-tasks sensor cannot see such a
    task either): it stayed in the daily summary under a NULL date, its spend on no day, unlike
    what created_date's COMMENT says. Upgrading puts it on the day whose window refused it."""
    for path in migration_files():
        if path.name < "012":
            shutil.copy(path, tmp_path / path.name)
    apply_migrations(conn, tmp_path)
    day = date(2024, 6, 4)
    records = make_records(day, 3)
    records[0]["createdTime"] = "2024-06-04T12:00"  # refused
    with psycopg.connect(database_url) as writer:
        write(writer, records, day)
    # What NORMALISER_VERSION 3 stored for it.
    conn.execute(
        "UPDATE group_call_tasks SET created_date = NULL WHERE task_id = %s",
        (records[0]["taskId"],),
    )
    conn.commit()

    apply_migrations(conn)
    rows = conn.execute(
        "SELECT created_date, sum(tasks) FROM group_call_daily_summary GROUP BY created_date"
    ).fetchall()
    assert rows == [(day, 3)]

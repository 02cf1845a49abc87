"""Security: secrets come only from the environment and are shown nowhere; SQL is parametrised
and identifiers quoted; the BI role reads but cannot write; what the project serves listens on
127.0.0.1 only."""

from __future__ import annotations

import ast
import contextlib
import re
import signal
import socket
import sys
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import psycopg
import pytest
import requests

from pipelines.laaffic.client import sign
from pipelines.laaffic.simulator import SimulatorServer
from pipelines.warehouse.embedded import embedded_postgres_running
from pipelines.warehouse.migrate import apply_migrations
from tests.defs.helpers import (
    PROJECT_ROOT,
    clean_env,
    free_port,
    make_dagster_home,
    open_instance,
    run_dagster,
    run_python,
)
from tests.reliability.helpers import (
    DAY_COUNTS,
    DAYS,
    MATERIALIZE,
    Process,
    instance_dump,
    range_arg,
    with_password,
)
from tests.warehouse.helpers import make_records, write

KEY = "key-Visible-77"
SECRET = "api-S3CRET-never-seen-9d2c"
PASSWORD = "pg-PASSW0RD-never-seen-41aa"


# -- secrets -------------------------------------------------------------------------------------


def test_a_cli_run_shows_neither_the_api_secret_nor_the_warehouse_password(
    simulator: SimulatorServer, database_url: str, tmp_path: Path
) -> None:
    """A CLI backfill with both secrets in its environment meets retries, a re-sign and finally
    a -1 (so warnings, an error and a stack trace are all recorded). Neither secret, nor any
    request signature, is in its output, the run record (config, tags), the event log, or any
    file of the Dagster instance."""
    sim = simulator.simulator
    sim.configure(api_key=KEY, api_secret=SECRET, day_counts=DAY_COUNTS)
    sim.script("-18", "-16", "http:502", "drop", "nonjson", *["ok"] * 6, "-1")
    home = make_dagster_home(tmp_path / "home")
    env = clean_env(
        LAAFFIC_BASE_URL=simulator.url,
        LAAFFIC_API_KEY=KEY,
        LAAFFIC_API_SECRET=SECRET,
        WAREHOUSE_URL=with_password(database_url, PASSWORD),
        DAGSTER_HOME=str(home),
    )
    started = int(time.time())
    result = run_dagster([*MATERIALIZE, "--partition-range", range_arg(DAYS)], env, timeout=120)
    finished = int(time.time())
    output = result.stdout + result.stderr

    assert result.returncode != 0, output  # the -1
    assert sim.stats.outcomes["-1"] == 1
    stored = instance_dump(home)
    # The search is meaningful: the retries, the re-sign and the failure were all recorded.
    for recorded in ("transient failure", "re-signing", "authentication error", 'File "'):
        assert recorded in output, recorded
    for recorded in ("transient failure", "re-signing", "authentication error"):
        assert recorded in stored, recorded
    with open_instance(home) as instance:
        (run,) = instance.get_runs()
    password = urlsplit(with_password(database_url, PASSWORD)).password or ""
    assert password
    signatures = {sign(KEY, SECRET, str(t)) for t in range(started - 2, finished + 3)}
    for secret in (SECRET, password, *signatures):
        assert secret not in output
        assert secret not in stored
        assert secret not in repr(run)


UI_SNAPSHOT = """
from dagster._core.remote_representation.external_data import RepositorySnap
from dagster._serdes import serialize_value
from pipelines.definitions import defs
print(serialize_value(RepositorySnap.from_def(defs.get_repository_def())))
"""


def test_the_ui_shows_the_secrets_by_variable_name_only(database_url: str) -> None:
    """What the webserver gets from the code location (the resources' configured values shown
    in the UI) names LAAFFIC_API_SECRET and WAREHOUSE_URL, never their values."""
    env = clean_env(
        LAAFFIC_API_KEY=KEY,
        LAAFFIC_API_SECRET=SECRET,
        WAREHOUSE_URL=with_password(database_url, PASSWORD),
    )
    result = run_python(["-c", UI_SNAPSHOT], env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    snapshot = result.stdout
    assert "LAAFFIC_API_SECRET" in snapshot and "WAREHOUSE_URL" in snapshot
    password = urlsplit(with_password(database_url, PASSWORD)).password or ""
    assert password
    assert SECRET not in snapshot + result.stderr
    assert password not in snapshot + result.stderr


# -- SQL -----------------------------------------------------------------------------------------

EXECUTING = {"execute", "executemany", "copy", "stream"}
COMPOSABLE = {"SQL", "Identifier", "Literal", "Placeholder", "Composed"}


def _unsafe(node: ast.expr, assigned: dict[str, list[ast.expr]], seen: set[str]) -> str | None:
    """Why `node`, used as SQL text, is built from values by string formatting (or None)."""
    if isinstance(node, ast.JoinedStr) and any(
        isinstance(v, ast.FormattedValue) for v in node.values
    ):
        return "an f-string"
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
        return "%-formatting"
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _unsafe(node.left, assigned, seen) or _unsafe(node.right, assigned, seen)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        owner = node.func.value
        if node.func.attr == "format" and not _is_composable(owner):
            return "str.format"
        if node.func.attr in {"encode", "strip", "replace"}:
            return _unsafe(owner, assigned, seen)
        if node.func.attr == "join" and isinstance(owner, ast.Constant):
            return "str.join"
    if isinstance(node, ast.Name) and node.id in assigned and node.id not in seen:
        for value in assigned[node.id]:
            why = _unsafe(value, assigned, seen | {node.id})
            if why:
                return f"{why} (via {node.id})"
    return None


def _is_composable(node: ast.expr) -> bool:
    """psycopg.sql.SQL(...) / Identifier(...) ...: composition that quotes what it inserts."""
    while isinstance(node, ast.Call | ast.Attribute):
        if isinstance(node, ast.Attribute) and node.attr in COMPOSABLE:
            return True
        node = node.func if isinstance(node, ast.Call) else node.value
    return isinstance(node, ast.Name) and node.id in COMPOSABLE


def composed_constants(sources: list[str]) -> set[str]:
    """Module-level names that are only ever assigned a psycopg.sql composition in `sources`
    (e.g. `IS_OPEN = sql.SQL(...).format(...)`): as safe to `.format()` in as the composition."""
    values: dict[str, list[ast.expr]] = {}
    for source in sources:
        for node in ast.parse(source).body:
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        values.setdefault(target.id, []).append(node.value)
    return {
        name
        for name, assigned in values.items()
        if all(isinstance(v, ast.Call) and _is_composable(v.func) for v in assigned)
    }


def sql_problems(source: str, filename: str, composed: frozenset[str] = frozenset()) -> list[str]:
    """Every execute-like call whose SQL is formatted from values, every `sql.SQL()` of such
    text, and every psycopg.sql `.format()` given a plain value instead of an Identifier /
    Literal / SQL (or a `composed` constant, see `composed_constants`)."""
    tree = ast.parse(source, filename)
    assigned: dict[str, list[ast.expr]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    assigned.setdefault(target.id, []).append(node.value)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value:
            assigned.setdefault(node.target.id, []).append(node.value)
    problems: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        if node.func.attr in EXECUTING:
            query = node.args[0] if node.args else None
            query = next((k.value for k in node.keywords if k.arg == "query"), query)
            why = _unsafe(query, assigned, set()) if query is not None else None
            if why:
                problems.append(f"{filename}:{node.lineno}: {node.func.attr}() SQL built by {why}")
        if node.func.attr == "SQL" and node.args:
            why = _unsafe(node.args[0], assigned, set())
            if why:
                problems.append(f"{filename}:{node.lineno}: sql.SQL() of text built by {why}")
        if node.func.attr == "format" and _is_composable(node.func.value):
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                inner = arg.func if isinstance(arg, ast.Call) else arg
                if isinstance(arg, ast.Name) and arg.id in composed:
                    continue
                if not (isinstance(arg, ast.Call) and _is_composable(inner)):
                    problems.append(
                        f"{filename}:{node.lineno}: sql.SQL.format() given a plain value, not an "
                        "Identifier/Literal/SQL"
                    )
    return problems


def test_the_sql_checker_catches_values_formatted_into_sql() -> None:
    bad = """
def f(conn, cur, day, table, sql):
    conn.execute(f"SELECT * FROM t WHERE d = '{day}'")
    cur.execute("SELECT * FROM t WHERE d = '%s'" % day)
    cur.execute("SELECT * FROM t WHERE d = '{}'".format(day))
    query = "DELETE FROM t WHERE d = " + repr(day)
    query = f"DELETE FROM t WHERE d = {day!r}"
    conn.execute(query)
    conn.execute(sql.SQL("DROP TABLE {}").format(table))
    conn.execute(sql.SQL(f"DROP TABLE {table}"))
    conn.execute(sql.SQL("SELECT * FROM t WHERE {}").format(WHERE))
"""
    constants = """
WHERE = "d = '" + str(day) + "'"
IS_SET = sql.SQL("{} IS NOT NULL").format(sql.Identifier("d"))
"""
    composed = frozenset(composed_constants([bad, constants]))
    assert composed == {"IS_SET"}
    assert len(sql_problems(bad, "bad.py", composed)) == 7
    good = """
def f(conn, day, name, sql):
    conn.execute("SELECT * FROM t WHERE d = %s", (day,))
    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    conn.execute(sql.SQL("SELECT * FROM t WHERE {}").format(IS_SET))
"""
    assert sql_problems(good, "good.py", composed) == []


def test_no_sql_in_pipelines_is_formatted_from_values() -> None:
    files = sorted((PROJECT_ROOT / "pipelines").rglob("*.py"))
    assert len(files) > 10
    sources = {path: path.read_text(encoding="utf-8") for path in files}
    composed = frozenset(composed_constants(list(sources.values())))
    calls = 0
    problems: list[str] = []
    for path, source in sources.items():
        calls += len(re.findall(r"\.(execute|copy)\(", source))
        problems += sql_problems(source, str(path.relative_to(PROJECT_ROOT)), composed)
    assert calls > 10  # the check really looked at the pipeline's SQL
    assert problems == []


def test_dynamic_sql_in_migrations_quotes_identifiers() -> None:
    """PL/pgSQL `format()` in the migrations interpolates only with %I (identifier) or %L."""
    for path in sorted((PROJECT_ROOT / "sql").rglob("*.sql")):
        text = path.read_text(encoding="utf-8")
        for call in re.findall(r"format\(\s*'((?:[^']|'')*)'", text):
            assert not re.findall(r"%[^IL%]", call), f"{path.name}: {call}"


HOSTILE = [
    "x'); DROP TABLE group_call_tasks; --",
    "'; DELETE FROM group_call_sync_log; --",
    '" OR 1=1; --',
    "%s %(day)s {} $1 ?",
    "$$; DROP SCHEMA public CASCADE; $$",
    "\\'; SELECT pg_sleep(30); --",
]


def test_hostile_values_are_stored_literally(migrated: psycopg.Connection) -> None:
    """Hostile text in a name, in an unknown field's key and value, and in a value that is
    refused: all stored as text, nothing executed."""
    day = date(2024, 6, 4)
    records = make_records(day, len(HOSTILE))
    for record, text in zip(records, HOSTILE, strict=True):
        record["taskName"] = text
        record[text] = text  # an unknown field, kept in raw
    records[0]["smsPayFee"] = HOSTILE[0]  # refused: a reject carrying the text
    write(migrated, records, day)

    stored: dict[int, Any] = dict(
        migrated.execute("SELECT task_id, task_name FROM group_call_tasks").fetchall()
    )
    raws: dict[int, Any] = dict(
        migrated.execute("SELECT task_id, raw FROM group_call_tasks").fetchall()
    )
    assert stored == {r["taskId"]: r["taskName"] for r in records}
    assert raws == {r["taskId"]: r for r in records}
    assert migrated.execute(
        "SELECT raw_value FROM group_call_task_rejects WHERE field = 'smsPayFee'"
    ).fetchall() == [(HOSTILE[0],)]
    tables = {
        name
        for (name,) in migrated.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
    }
    assert {"group_call_tasks", "group_call_sync_log", "group_call_task_rejects"} <= tables
    assert migrated.execute("SELECT count(*) FROM group_call_sync_log").fetchone() == (1,)


@pytest.fixture
def migrated(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        apply_migrations(conn)
        yield conn


# -- the BI role ---------------------------------------------------------------------------------

TABLES = (
    "group_call_tasks",
    "group_call_task_statuses",
    "group_call_task_rejects",
    "group_call_sync_log",
)
VIEWS = ("group_call_daily_summary", "group_call_sync_status")
WRITES = {
    "INSERT": "INSERT INTO {t} DEFAULT VALUES",
    "UPDATE": "UPDATE {t} SET {c} = {c}",
    "DELETE": "DELETE FROM {t}",
    "TRUNCATE": "TRUNCATE {t}",
    "ALTER": "ALTER TABLE {t} ADD COLUMN intruder int",
    "DROP": "DROP TABLE {t}",
}
FIRST_COLUMN = {
    "group_call_tasks": "task_name",
    "group_call_task_statuses": "label",
    "group_call_task_rejects": "error",
    "group_call_sync_log": "time_zone",
}


def test_the_bi_role_reads_everything_and_cannot_write(
    migrated: psycopg.Connection, database_url: str
) -> None:
    day = date(2024, 6, 4)
    write(migrated, make_records(day, 5), day)
    before = {t: migrated.execute(f"SELECT count(*) FROM {t}").fetchone() for t in TABLES}
    with psycopg.connect(database_url, autocommit=True) as bi:
        bi.execute("SET ROLE laaffic_reader")
        assert bi.execute("SELECT current_user").fetchone() == ("laaffic_reader",)
        for relation in (*TABLES, *VIEWS):
            assert bi.execute(f"SELECT count(*) FROM {relation}").fetchone() is not None
        assert bi.execute("SELECT count(*) FROM group_call_tasks").fetchone() == (5,)
        for table in TABLES:
            for verb, statement in WRITES.items():
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    bi.execute(statement.format(t=table, c=FIRST_COLUMN[table]))
                    pytest.fail(f"laaffic_reader could {verb} {table}")
        for view in VIEWS:
            with pytest.raises((psycopg.errors.InsufficientPrivilege, psycopg.errors.Error)):
                bi.execute(f"DELETE FROM {view}")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            bi.execute("CREATE TABLE intruder (x int)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            bi.execute("SELECT * FROM schema_migrations")
    after = {t: migrated.execute(f"SELECT count(*) FROM {t}").fetchone() for t in TABLES}
    assert after == before


# -- listening sockets ---------------------------------------------------------------------------


def _bound_sockets(pids: list[int]) -> list[tuple[int, str, Any]]:
    """(pid, process name, local address) of every listening TCP socket and unconnected bound
    UDP socket of these processes (Unix sockets are not reachable over a network)."""
    found: list[tuple[int, str, Any]] = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            connections = process.net_connections(kind="inet")
            name = " ".join(process.cmdline()[:5])
        except psutil.NoSuchProcess:
            continue  # exited meanwhile
        for conn in connections:
            listening = conn.type == socket.SOCK_STREAM and conn.status == psutil.CONN_LISTEN
            bound_udp = conn.type == socket.SOCK_DGRAM and not conn.raddr
            if listening or bound_udp:
                found.append((pid, name, conn.laddr))
    return found


def _tree(pid: int) -> list[int]:
    try:
        root = psutil.Process(pid)
        return [root.pid, *(child.pid for child in root.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def _processes(pids: list[int]) -> list[psutil.Process]:
    found = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            found.append(psutil.Process(pid))
    return found


def _answers(url: str) -> bool | None:
    try:
        return True if requests.get(url, timeout=2).ok else None
    except requests.RequestException:
        return None


def _wait(what: str, probe: Any, timeout: float, process: Process) -> Any:
    deadline = time.monotonic() + timeout
    while (value := probe()) is None:
        assert process.popen.poll() is None, f"exited before {what}:\n{process.output()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{process.output()}"
        time.sleep(0.25)
    return value


def test_the_simulator_command_listens_on_loopback_only(tmp_path: Path) -> None:
    port = free_port()
    process = Process(
        [sys.executable, "-m", "pipelines", "simulator", "--port", str(port)],
        clean_env(),
        tmp_path / "simulator.log",
    )
    try:
        _wait("the simulator", lambda: _answers(f"http://127.0.0.1:{port}/_sim/stats"), 60, process)
        sockets = _bound_sockets(_tree(process.pid))
        assert [address.port for *_, address in sockets] == [port]
        assert all(address.ip == "127.0.0.1" for *_, address in sockets), sockets
    finally:
        process.stop(signal.SIGINT, grace=10)


def test_the_dev_ui_and_what_it_starts_listen_on_loopback_only(
    tmp_path: Path, embedded_pgdata: Path
) -> None:
    """`python -m pipelines dev`: the Dagster webserver, its daemon and code servers, the
    simulator and the embedded PostgreSQL. Every listening socket of the process tree is on
    127.0.0.1; PostgreSQL has none (Unix socket only). Stopped as Ctrl-C stops it (SIGINT to the
    process group), which also stops the PostgreSQL it started."""
    port = free_port()
    pgdata = embedded_pgdata
    env = clean_env(
        DAGSTER_HOME=str(make_dagster_home(tmp_path / "home")),
        LAAFFIC_EMBEDDED_PGDATA=str(pgdata),
    )
    process = Process(
        [sys.executable, "-m", "pipelines", "dev", "--port", str(port)], env, tmp_path / "dev.log"
    )
    postmaster: int | None = None
    started: list[psutil.Process] = []
    try:
        _wait("the UI", lambda: _answers(f"http://127.0.0.1:{port}/server_info"), 150, process)
        started = _processes(_tree(process.pid))
        match = re.search(r"local simulator at http://127\.0\.0\.1:(\d+)", process.output())
        assert match, process.output()
        simulator_port = int(match.group(1))

        sockets = _bound_sockets(_tree(process.pid))
        assert {address.port for *_, address in sockets} >= {port, simulator_port}, sockets
        exposed = [s for s in sockets if s[2].ip != "127.0.0.1"]
        assert not exposed, f"listening beyond 127.0.0.1: {exposed}"

        postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
        assert _bound_sockets([postmaster]) == []  # the embedded PostgreSQL: no TCP at all

        process.signal_group(signal.SIGINT)
        assert process.wait(timeout=60) == 0, process.output()[-3000:]
        deadline = time.monotonic() + 30
        while embedded_postgres_running(pgdata) and time.monotonic() < deadline:
            time.sleep(0.25)
        assert not embedded_postgres_running(pgdata), "the embedded PostgreSQL was left running"
    finally:
        process.stop(signal.SIGINT, grace=30)
        # `dagster dev` runs in a session of its own, which stopping the command's group misses
        # when the command did not stop it (the assertion above failed): kill what is left.
        for leftover in started:
            with contextlib.suppress(psutil.Error):
                if leftover.is_running():
                    leftover.kill()
        if postmaster is not None and psutil.pid_exists(postmaster):
            psutil.Process(postmaster).send_signal(signal.SIGINT)  # fast shutdown, by its PID

"""Bad input from the API, end to end: the simulator serves crafted records (`TaskStore.add_raw`)
among a day's ordinary tasks, one Dagster run syncs the day, and every crafted record is either
stored exactly (`raw` as received) or reported in `group_call_task_rejects` with a clear reason.
Never a crash without a message, never a silent drop. Bodies that are not the documented envelope
are retried, then fail clearly."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import psycopg
import pytest
from dagster import DagsterInstance, ExecuteInProcessResult, materialize
from psycopg import sql

from pipelines.defs.assets import group_call_tasks
from pipelines.defs.resources import WarehouseResource
from pipelines.laaffic.errors import LaafficRetriesExhaustedError
from pipelines.laaffic.simulator import Simulator, SimulatorConfig, SimulatorServer, TaskStore
from pipelines.sync import sync_day
from pipelines.warehouse.normalise import ParseError, parse_value
from pipelines.warehouse.urls import with_database
from tests.defs.helpers import PROJECT_ROOT
from tests.reliability.helpers import (
    DAY_COUNTS,
    DAYS,
    api_resource,
    assert_days_exact,
    committed_days,
    failure_text,
    partition_metadata,
    run_days,
)

DAY = date(2024, 6, 4)
NOON = f"{DAY} 12:00:00"
#: A well-formed record to start each crafted one from.
TEMPLATE: dict[str, Any] = TaskStore(SimulatorConfig()).make_record(
    random.Random(7), 0, NOON, 0, status=2
)
REQUIRED = ("status", "taskType", "agentFee", "groupCallPayFee", "smsPayFee", "taskSumPayFee")
MEGABYTE_NAME = "x" * 500_000 + "é" * 250_000  # 1,000,000 bytes of UTF-8
HOSTILE_NAMES = (
    "x'); DROP TABLE group_call_tasks; --",
    "Robert'); DELETE FROM group_call_sync_log WHERE ('1'='1",
    'O\'Brien "quoted" `backticked`',
    "a; b; c;",
    "1; SELECT pg_sleep(30); --",
    "$$ $tag$ E'\\x00' \\' \\\\",
    "%s %(day)s {} {0} ?",
    "回访客户 été Опрос ñandú 🚀 \u200b\u202e",
    "tab\tnew\nline\rcarriage",
    "'; COPY group_call_tasks TO '/tmp/x'; --",
)


def crafted(task_id: Any, **changes: Any) -> dict[str, Any]:
    record = dict(TEMPLATE, taskId=task_id, taskName=f"crafted {task_id}")
    record.update(changes)
    return record


def without(record: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in names}


@dataclass
class Case:
    records: list[dict[str, Any]]
    #: (task_id or None, field, words the error must contain)
    rejects: list[tuple[int | None, str, str]] = field(default_factory=list)


CASES: dict[str, Case] = {
    "record missing fields": Case(
        [{"taskId": 7_000_001, "createdTime": NOON}],
        [(7_000_001, name, "the field is missing from the record") for name in REQUIRED],
    ),
    "record without taskId": Case(
        [without(crafted(0), "taskId")], [(None, "taskId", "the field is missing from the record")]
    ),
    "taskId of the wrong type": Case(
        [crafted("abc"), crafted(7_000_002.5), crafted(True), crafted("7000003")],
        [
            (None, "taskId", "is not a 64-bit integer"),
            (None, "taskId", "expected an integer, got the number 7000002.5"),
            (None, "taskId", "got JSON bool"),
        ],  # "7000003", a numeric string, is a usable key: stored
    ),
    "fields of the wrong type": Case(
        [
            crafted(
                7_000_010,
                status="finished",
                numCnt="ten",
                callNum=[1],
                success={"n": 1},
                fail=True,
                groupCallPayFee=0.5,
                createdTime=20240604,
            )
        ],
        [
            (7_000_010, "status", "'finished' is not a status code (0..6)"),
            (7_000_010, "numCnt", "'ten' is not a 32-bit integer"),
            (7_000_010, "callNum", "got JSON list"),
            (7_000_010, "success", "got JSON dict"),
            (7_000_010, "fail", "got JSON bool"),
            (7_000_010, "groupCallPayFee", "got the JSON number 0.5"),
            (7_000_010, "createdTime", "is not a local date-time"),
        ],
    ),
    "unknown status codes": Case(
        [crafted(7_000_020, status=9), crafted(7_000_021, status=-1)],
        [
            (7_000_020, "status", "unknown status code 9"),
            (7_000_021, "status", "unknown status code -1"),
        ],
    ),
    "numbers beyond 32 bits": Case(
        [
            crafted(
                2**40 + 1,  # a 64-bit task ID is fine
                numCnt=2**31,
                chargeLen=-(2**31) - 1,
                scriptId=10**12,
                taskType=2**15,
            )
        ],
        [
            (2**40 + 1, "numCnt", "out of range for int"),
            (2**40 + 1, "chargeLen", "out of range for int"),
            (2**40 + 1, "scriptId", "out of range for int"),
            (2**40 + 1, "taskType", "out of range for smallint"),
        ],
    ),
    "taskId beyond 64 bits": Case(
        [crafted(2**64), crafted(-(2**63) - 1)],
        [(None, "taskId", "out of range for bigint")] * 2,
    ),
    "hostile task names (quotes, semicolons, SQL, non-ASCII)": Case(
        [crafted(7_000_100 + n, taskName=name) for n, name in enumerate(HOSTILE_NAMES)]
        + [crafted(7_000_200, groupCallPayFee="0(USD)'); DROP TABLE group_call_task_rejects; --")],
        [(7_000_200, "groupCallPayFee", "is not an amount with its currency")],
    ),
    "very long strings (1 MB)": Case(
        [
            crafted(7_000_300, taskName=MEGABYTE_NAME),
            crafted(7_000_301, vendorNote="n" * 1_000_000),
            crafted(7_000_302, agentFee="1" * 100_000),
        ],
        [(7_000_302, "agentFee", "has more than 14 digits before the decimal point")],
    ),
    "the same taskId twice in a page": Case([crafted(7_000_400)] * 2),
    # Python's int() refuses text of more than 4,300 digits (a ValueError, not a ParseError)
    "integers written with thousands of digits": Case(
        [
            crafted(7_000_500, numCnt="9" * 5000, sendSmsNum="0" * 5000 + "3"),
            crafted("9" * 5000),
            crafted("0" * 5000 + "7000501"),
        ],
        [
            (7_000_500, "numCnt", "out of range for int"),
            (None, "taskId", "out of range for bigint"),
        ],
    ),
}


@dataclass
class Synced:
    database_url: str
    result: ExecuteInProcessResult
    logs: str
    generated: dict[int, dict[str, Any]]


@pytest.fixture(scope="module")
def synced(pg_server_url: str) -> Iterator[Synced]:
    """One day of 120 ordinary tasks plus every crafted record, synced by one Dagster run."""
    name = f"t_bad_input_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    database_url = with_database(pg_server_url, name)
    try:
        with SimulatorServer(Simulator(SimulatorConfig(day_counts={DAY: 120}))) as server:
            store = server.simulator.store
            generated = {task.task_id: dict(task.record) for task in store.day(DAY)}
            for case in CASES.values():
                for record in case.records:
                    store.add_raw(DAY, record)
            with DagsterInstance.ephemeral() as instance:
                result = materialize(
                    [group_call_tasks],
                    resources={
                        "laaffic": api_resource(server),
                        "warehouse": WarehouseResource(url=database_url),
                    },
                    instance=instance,
                    partition_key=DAY.isoformat(),
                    raise_on_error=False,
                )
                logs = "\n".join(entry.user_message for entry in instance.all_logs(result.run_id))
        yield Synced(database_url, result, logs, generated)
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _stored(database_url: str) -> dict[int, Any]:
    with psycopg.connect(database_url) as conn:
        return dict(conn.execute("SELECT task_id, raw FROM group_call_tasks").fetchall())


def _rejects(database_url: str) -> list[tuple[int | None, str, str | None, str]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT task_id, field, raw_value, error FROM group_call_task_rejects"
        ).fetchall()
    return [(row[0], row[1], row[2], row[3]) for row in rows]


def _key(record: dict[str, Any]) -> int | None:
    try:
        (text,) = parse_value("bigint", record.get("taskId"), required=True)
    except ParseError:
        return None
    return int(text) if text is not None else None


def test_the_run_succeeds_and_the_ordinary_tasks_are_exact(synced: Synced) -> None:
    assert synced.result.success, failure_text(synced.result)
    stored = _stored(synced.database_url)
    assert {k: stored[k] for k in synced.generated} == synced.generated
    crafted_keys = {_key(r) for case in CASES.values() for r in case.records} - {None}
    assert set(stored) == set(synced.generated) | crafted_keys  # nothing else, nothing less
    rejected = partition_metadata(synced.result, "rejected")[DAY.isoformat()]
    assert rejected == len(_rejects(synced.database_url))


@pytest.mark.parametrize("name", list(CASES))
def test_each_bad_record_is_stored_exactly_or_rejected_with_a_reason(
    synced: Synced, name: str
) -> None:
    case = CASES[name]
    stored = _stored(synced.database_url)
    rejects = _rejects(synced.database_url)
    for record in case.records:
        key = _key(record)
        if key is not None:
            assert stored[key] == record, "stored, with raw exactly as received"
        else:
            whole = [
                json.loads(raw)
                for task_id, field_name, raw, _ in rejects
                if task_id is None and field_name == "taskId" and raw is not None
            ]
            assert record in whole, "a record without a usable key is kept whole as a reject"
    for task_id, field_name, words in case.rejects:
        matching = [
            error
            for rid, rfield, _, error in rejects
            if rid == task_id and rfield == field_name and words in error
        ]
        shown = [(r[0], r[1], r[3][:100]) for r in rejects]
        assert matching, f"no reject ({task_id}, {field_name}) saying {words!r}: {shown}"


def test_reject_rows_keep_the_raw_value_as_received(synced: Synced) -> None:
    rejects = {(r[0], r[1]): r[2] for r in _rejects(synced.database_url)}
    assert rejects[(7_000_010, "numCnt")] == "ten"
    assert rejects[(7_000_010, "callNum")] == "[1]"
    assert rejects[(7_000_010, "createdTime")] == "20240604"
    assert rejects[(2**40 + 1, "numCnt")] == str(2**31)
    assert rejects[(7_000_302, "agentFee")] == "1" * 100_000
    fee = rejects[(7_000_200, "groupCallPayFee")]
    assert fee == "0(USD)'); DROP TABLE group_call_task_rejects; --"


def test_hostile_names_are_stored_literally_and_the_schema_is_intact(synced: Synced) -> None:
    with psycopg.connect(synced.database_url) as conn:
        names: dict[int, Any] = dict(
            conn.execute(
                "SELECT task_id, task_name FROM group_call_tasks WHERE task_id = ANY(%s)",
                ([7_000_100 + n for n in range(len(HOSTILE_NAMES))],),
            ).fetchall()
        )
        long_name = conn.execute(
            "SELECT task_name, octet_length(task_name) FROM group_call_tasks WHERE task_id = %s",
            (7_000_300,),
        ).fetchone()
        tables = {
            t
            for (t,) in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
        }
    assert names == {7_000_100 + n: name for n, name in enumerate(HOSTILE_NAMES)}
    assert long_name == (MEGABYTE_NAME, 1_000_000)
    assert {"group_call_tasks", "group_call_sync_log", "group_call_task_rejects"} <= tables


def test_a_repeated_task_id_is_one_row_and_the_repeat_is_reported(synced: Synced) -> None:
    with psycopg.connect(synced.database_url) as conn:
        count = conn.execute(
            "SELECT count(*) FROM group_call_tasks WHERE task_id = %s", (7_000_400,)
        ).fetchone()
    assert count == (1,)
    # Reported in the run's log (today: "the API repeated 1 rows (same taskId twice)...").
    assert re.search(r"repeat|duplicate", synced.logs, re.IGNORECASE), synced.logs[-2000:]


# -- bodies that are not the documented envelope ------------------------------------------------


def test_non_json_body_and_missing_data_mid_backfill_are_retried_exactly(
    simulator: SimulatorServer, database_url: str
) -> None:
    sim = simulator.simulator
    sim.configure(day_counts=DAY_COUNTS)
    sim.script(*["ok"] * 4, "nonjson", "nodata", "nonjson")

    result = run_days(simulator, database_url, DAYS)

    assert result.success, failure_text(result)
    assert (sim.stats.outcomes["nonjson"], sim.stats.outcomes["nodata"]) == (2, 1)
    assert sum(partition_metadata(result, "retries").values()) == 3
    assert_days_exact(simulator, database_url, DAYS)


@pytest.mark.parametrize(
    ("outcome", "words"),
    [
        ("nonjson", "JSON"),  # today: "response is not the documented JSON envelope"
        ("nodata", "`data`"),  # today: "code 0 but the response has no `data` page"
    ],
)
def test_a_persistent_bad_body_fails_clearly_and_writes_nothing(
    simulator: SimulatorServer, database_url: str, outcome: str, words: str
) -> None:
    simulator.simulator.script(*[outcome] * 3)
    client = api_resource(simulator, max_attempts=3).get_client()
    with (
        WarehouseResource(url=database_url).connect() as conn,
        client,
        pytest.raises(LaafficRetriesExhaustedError) as caught,
    ):
        sync_day(client, conn, DAY, time_zone="Asia/Shanghai")
    message = str(caught.value)
    assert "gave up after 3 attempts while reading page 1 of window [2024-06-04 00:00:00" in message
    assert words in message
    if outcome == "nonjson":
        assert "<html>maintenance</html>" in message  # what the body was
    assert committed_days(database_url) == []


#: Run in a child process with a memory ceiling: a client that believes the total allocates
#: without bound, and must not take the test process down with it.
ABSURD_TOTAL = """
import json, os, resource, sys
from pipelines.laaffic.client import LaafficClient
from pipelines.laaffic.errors import LaafficError
from pipelines.laaffic.simulator import Simulator, SimulatorConfig, SimulatorServer
from pipelines.sync import day_window
from datetime import date

# 1 GB of address space beyond what the imports reserved (Arrow alone reserves ~1 GB up front)
mapped = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (mapped + 1_000_000_000, mapped + 1_000_000_000))

with SimulatorServer(Simulator(SimulatorConfig(day_counts={date(2024, 6, 4): 30}))) as server:
    sim = server.simulator
    honest = sim.query

    def lying(query):
        answer = json.loads(honest(query))
        answer["data"]["total"] = 10**13  # beyond 32 bits (and beyond any real day)
        return json.dumps(answer).encode()

    sim.query = lying
    client = LaafficClient(server.url, "sim-key", "sim-secret", backoff_base_seconds=0.001)
    try:
        client.fetch_window(day_window(date(2024, 6, 4)))
    except LaafficError as exc:
        print("REFUSED", type(exc).__name__, exc, "REQUESTS", sim.stats.requests)
    except BaseException as exc:
        print("CRASHED", type(exc).__name__, exc, "REQUESTS", sim.stats.requests)
    else:
        print("STORED A PARTIAL WINDOW")
    sys.stdout.flush()
    os._exit(0)  # whatever threads the client left behind
"""


def test_a_page_claiming_an_absurd_total_is_refused_not_followed() -> None:
    """A page says the window holds 10**13 tasks while returning 30: the client must refuse the
    window with a LaafficError after a bounded number of requests, not schedule ten billion page
    reads (which exhausts memory)."""
    result = subprocess.run(
        [sys.executable, "-c", ABSURD_TOTAL],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr[-2000:]
    assert result.stdout.startswith("REFUSED"), output
    assert int(result.stdout.rsplit("REQUESTS", 1)[1]) <= 100, output

"""Property-based fuzzing (hypothesis) of the response parser, the client's handling of whatever
the API sends (over real HTTP), and of normalising + writing arbitrary records to PostgreSQL.

The normaliser on its own is fuzzed in tests/warehouse/test_normalise.py
(`test_property_garbage_never_raises_and_nothing_is_dropped`, and the fast path against the
reference parser); not repeated here."""

from __future__ import annotations

import itertools
import json
import math
import threading
from collections.abc import Iterator
from datetime import date
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from pipelines.laaffic.client import LaafficClient
from pipelines.laaffic.errors import LaafficError
from pipelines.laaffic.models import ApiResponse, Page, QueryParams, QueryRequest
from pipelines.laaffic.simulator import SimulatorServer
from pipelines.sync import day_window
from pipelines.warehouse.migrate import apply_migrations
from pipelines.warehouse.normalise import FIELDS, ParseError, parse_value
from pipelines.warehouse.writer import WriteResult
from tests.defs.helpers import SIM_KEY, SIM_SECRET
from tests.warehouse.helpers import write
from tests.warehouse.test_normalise import _storable, shaped_texts

DAY = date(2024, 6, 4)
FIELD_NAMES = [f.api_name for f in FIELDS]
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# -- what an API (or whatever answers in its place) could send -----------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(
        ["0", "-1", " -18 ", "\u0660", "1e3", "0x10", "", "null", "'; DROP TABLE x; --"]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
page_records = st.builds(
    lambda task_id, fields: {**fields, "taskId": task_id},
    st.one_of(st.integers(min_value=1, max_value=30), values),  # repeats across pages, too
    st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=6), values, max_size=6),
)
#: `data` as documented (code 0), with any totals and records...
good_pages = st.fixed_dictionaries(
    {
        "total": st.integers(min_value=-5, max_value=400),
        "size": st.just(100),
        "current": st.integers(min_value=1, max_value=5),
        "pages": st.integers(min_value=0, max_value=5),
        "records": st.lists(page_records, max_size=5),
    },
    optional={"searchCount": st.booleans(), "extra": values},
)
#: ... and with any field of any type, or missing, or not an object at all.
bad_pages = st.one_of(
    values,
    st.fixed_dictionaries(
        {},
        optional={
            "total": values,
            "size": values,
            "current": values,
            "pages": values,
            "records": st.one_of(values, st.lists(st.one_of(page_records, values), max_size=4)),
        },
    ),
)
codes = st.one_of(st.sampled_from([0, "0", -1, -2, -16, -18, -22, "-18", 7, "x"]), values)
good_envelopes = st.fixed_dictionaries(
    {"code": st.sampled_from([0, "0"]), "data": good_pages},
    optional={"msg": st.one_of(st.just("success"), values)},
)
good_bodies = good_envelopes.map(lambda envelope: json.dumps(envelope).encode())
envelopes = st.one_of(
    good_envelopes,
    st.fixed_dictionaries(
        {"code": codes},
        optional={"msg": st.one_of(st.text(max_size=20), values), "data": bad_pages | good_pages},
    ),
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """Envelopes (often a good page), envelopes cut short or with bytes appended, JSON of any
    shape, and raw bytes."""
    kind = draw(st.sampled_from(["envelope"] * 4 + ["cut", "appended", "json", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=120))
    if kind == "json":
        return json.dumps(draw(values)).encode()
    encoded = json.dumps(draw(envelopes), ensure_ascii=draw(st.booleans())).encode()
    if kind == "cut":
        return encoded[: draw(st.integers(min_value=0, max_value=len(encoded)))]
    if kind == "appended":
        return encoded + draw(st.binary(min_size=1, max_size=10))
    return encoded


DEEP = b"[" * 100_000  # nesting deeper than any parser recursion limit
EDGE_CASES = [
    DEEP,
    b'{"code": 0, "data": ' + DEEP,
    b"\xff\xfe\x00",
    b'{"code": 0, "msg": "success", "data": {"total": 1, "size": 100, "current": 1, "pages": 1,'
    b' "records": [1, "two"]}}',
    b'{"code": NaN}',
    b'{"code": 1e999}',
    b'{"code": "\\ud800"}',
    b'{"code": 0, "code": -1}',
    b"",
]


def _parses_or_refuses(body: bytes) -> None:
    """The envelope parser gives a response or a pydantic ValidationError, nothing else."""
    try:
        response = ApiResponse.model_validate_json(body)
    except ValidationError:
        return
    assert isinstance(response, ApiResponse)
    assert response.code_int is None or isinstance(response.code_int, int)
    assert response.data is None or isinstance(response.data, Page)


@FUZZ
@given(bodies())
def test_property_the_envelope_parser_returns_a_response_or_a_validation_error(
    body: bytes,
) -> None:
    _parses_or_refuses(body)


@pytest.mark.parametrize("body", EDGE_CASES, ids=range(len(EDGE_CASES)))
def test_the_envelope_parser_on_edge_cases(body: bytes) -> None:
    _parses_or_refuses(body)


class Answers:
    """Plugged into the simulator in place of its query results: the bodies the test chooses,
    in turn (the simulator still checks signature, timestamp and request body first)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cycle: Iterator[bytes] = iter(())

    def set(self, bodies: list[bytes]) -> None:
        with self._lock:
            self._cycle = itertools.cycle(bodies)

    def __call__(self, query: dict[str, Any]) -> bytes:
        with self._lock:
            return next(self._cycle)


@pytest.fixture
def answering(simulator: SimulatorServer) -> Iterator[tuple[SimulatorServer, Answers]]:
    answers = Answers()
    simulator.simulator.query = answers  # type: ignore[method-assign,assignment]
    yield simulator, answers


def _client(server: SimulatorServer, **overrides: Any) -> LaafficClient:
    options: dict[str, Any] = {
        "api_key": SIM_KEY,
        "api_secret": SIM_SECRET,
        "max_attempts": 1,
        "backoff_base_seconds": 0.0,
        "timeout_seconds": 10.0,
    }
    options.update(overrides)
    return LaafficClient(server.url, **options)


REQUEST = QueryRequest(
    current=1,
    size=100,
    params=QueryParams(strTime="2024-06-04 00:00:00", endTime="2024-06-04 23:59:59"),
)


@FUZZ
@given(body=bodies(), status=st.sampled_from([200] * 6 + [400, 401, 404, 429, 500, 502, 503]))
@example(body=DEEP, status=200)
@example(body=b"<html>maintenance</html>", status=200)
def test_property_the_client_turns_any_answer_into_a_page_or_a_laaffic_error(
    answering: tuple[SimulatorServer, Answers], body: bytes, status: int
) -> None:
    server, answers = answering
    answers.set([body])
    if status != 200:
        server.simulator.script(f"http:{status}")
    client = _client(server)
    try:
        page = client.query_page(REQUEST)
    except LaafficError as exc:
        event(type(exc).__name__)
        assert str(exc)  # always says what happened
    else:
        event("a page")
        assert isinstance(page, Page)
        assert all(isinstance(record, dict) for record in page.records)
    finally:
        client.close()


@settings(FUZZ, max_examples=100)
@given(
    st.lists(st.one_of(good_bodies, good_bodies, good_bodies, bodies()), min_size=1, max_size=4),
    st.integers(min_value=1, max_value=4),
)
def test_property_reading_a_window_of_any_answers_gives_records_or_a_laaffic_error(
    answering: tuple[SimulatorServer, Answers], sequence: list[bytes], concurrency: int
) -> None:
    """Whole windows over answers that lie about totals, repeat or lack records, or are garbage.
    (Totals stay within 400 here; an absurd total is test_bad_input's.)"""
    server, answers = answering
    answers.set(sequence)
    client = _client(server, max_concurrency=concurrency, max_drift_passes=2)
    try:
        result = client.fetch_window(day_window(DAY))
    except LaafficError as exc:
        event(type(exc).__name__)
        assert str(exc)
    else:
        event(f"a window of {min(len(result.records), 3)}+ records")
        assert all(isinstance(record, dict) for record in result.records)
        keyed = [r["taskId"] for r in result.records if type(r.get("taskId")) is int]
        assert len(keyed) == len(set(keyed))  # de-duplicated by taskId
    finally:
        client.close()


# -- arbitrary records through the normaliser into PostgreSQL ------------------------------------

storable_floats = st.one_of(
    # |x| <= 1e15: jsonb gives these back as the same number (larger ones may come back as ints)
    st.floats(min_value=-1e15, max_value=1e15),
    st.sampled_from([math.nan, math.inf, -math.inf]),
)
hostile_texts = st.sampled_from(
    ["\x00", "nul\x00inside", "\ud800", "a\udfffb", "x'); DROP TABLE group_call_tasks; --", "é🚀"]
)
record_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        storable_floats,
        st.text(max_size=10),
        hostile_texts,
        shaped_texts,
    ),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=5) | hostile_texts, inner, max_size=3)
    ),
    max_leaves=6,
)
task_ids = st.one_of(
    st.integers(min_value=1, max_value=30),  # repeats within a window
    st.integers(min_value=-(2**64), max_value=2**64),
    st.integers(min_value=1, max_value=30).map(str),
    record_values,
)
window_records = st.lists(
    st.builds(
        lambda task_id, fields: {**fields, "taskId": task_id} if task_id is not None else fields,
        task_ids,
        st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=6), record_values),
    ),
    max_size=12,
)


@pytest.fixture
def warehouse(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        apply_migrations(conn)
        yield conn


def _key(record: dict[str, Any]) -> int | None:
    try:
        (text,) = parse_value("bigint", record.get("taskId"), required=True)
    except ParseError:
        return None
    return int(text) if text is not None else None


@settings(FUZZ, max_examples=60)
@given(window_records)
def test_property_any_records_are_written_whole_rows_or_rejects(
    warehouse: psycopg.Connection, records: list[dict[str, Any]]
) -> None:
    """PostgreSQL never refuses a window: every record with a usable taskId is one row whose raw
    is the record (the last one of a repeated ID; NUL, lone surrogates and NaN made storable),
    every other one a whole-record reject; and the window's sync-log row is written."""
    warehouse.execute("TRUNCATE group_call_tasks, group_call_task_rejects, group_call_sync_log")
    result = write(warehouse, records, DAY)

    assert isinstance(result, WriteResult)
    expected: dict[int, dict[str, Any]] = {}
    unkeyed: list[dict[str, Any]] = []
    for record in records:
        key = _key(record)
        if key is None:
            unkeyed.append(record)
        else:
            expected[key] = record
    stored: dict[int, Any] = dict(
        warehouse.execute("SELECT task_id, raw FROM group_call_tasks").fetchall()
    )
    assert stored.keys() == expected.keys()
    for key, record in expected.items():
        assert stored[key] == _storable(record), key
    whole = [
        json.loads(raw)
        for (raw,) in warehouse.execute(
            "SELECT raw_value FROM group_call_task_rejects WHERE task_id IS NULL"
        )
    ]
    # (identical unusable records are one reject: its key is task, field and raw value)
    assert sorted(set(map(repr, whole))) == sorted({repr(_storable(r)) for r in unkeyed})
    assert warehouse.execute("SELECT count(*) FROM group_call_sync_log").fetchone() == (1,)
    assert result.inserted == len(expected)

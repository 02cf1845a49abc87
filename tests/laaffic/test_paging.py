"""Reading a window completely: page counts, boundaries, faults, drift and upstream repeats."""

from __future__ import annotations

import json
import re
import threading
from datetime import date, datetime, timedelta
from typing import Any

import pytest

from pipelines.laaffic.errors import LaafficIncompleteWindowError
from pipelines.laaffic.models import TaskRecord, TimeWindow
from pipelines.laaffic.simulator import SimulatorConfig, _Task, fingerprint
from pipelines.warehouse.normalise import normalise_records
from tests.laaffic.conftest import Serve
from tests.laaffic.helpers import (
    DAY,
    day_window,
    make_client,
    repeat_some_rows,
    skip_across_page_boundaries,
)


@pytest.mark.parametrize("concurrency", [1, 4])
def test_1234_tasks_are_read_in_exactly_13_pages(serve: Serve, concurrency: int) -> None:
    server = serve(SimulatorConfig(day_counts={DAY: 1234}))
    client = make_client(server, max_concurrency=concurrency)

    result = client.fetch_window(day_window())

    assert server.simulator.stats.requests == 13
    assert result.stats.requests == 13
    assert result.stats.pages == 13
    assert result.stats.retries == 0
    assert result.stats.passes == 1
    assert result.stats.api_total == 1234
    ids = [record["taskId"] for record in result.records]
    assert len(ids) == 1234
    assert len(set(ids)) == 1234
    for record in result.records:
        TaskRecord.model_validate(record)
    created = {record["createdTime"] for record in result.records}
    assert "2024-06-04 00:00:00" in created
    assert "2024-06-04 23:59:59" in created
    assert fingerprint(result.records) == fingerprint(server.simulator.store.all_tasks([DAY]))


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        ("2024-06-04 00:00:00", "2024-06-04 00:00:00", ["2024-06-04 00:00:00"]),
        ("2024-06-04 23:59:59", "2024-06-04 23:59:59", ["2024-06-04 23:59:59"]),
        (
            "2024-06-04 23:59:59",
            "2024-06-05 00:00:00",
            ["2024-06-05 00:00:00", "2024-06-04 23:59:59"],
        ),
    ],
)
def test_window_ends_are_inclusive(serve: Serve, start: str, end: str, expected: list[str]) -> None:
    server = serve(SimulatorConfig(tasks_per_day=30))
    fmt = "%Y-%m-%d %H:%M:%S"
    window = TimeWindow(start=datetime.strptime(start, fmt), end=datetime.strptime(end, fmt))
    result = make_client(server).fetch_window(window)
    assert [record["createdTime"] for record in result.records] == expected


def test_an_empty_window_costs_one_request(serve: Serve) -> None:
    server = serve(SimulatorConfig(day_counts={DAY: 0}))
    result = make_client(server).fetch_window(day_window())
    assert result.records == []
    assert server.simulator.stats.requests == 1


def test_page_size_is_honoured(serve: Serve) -> None:
    server = serve(SimulatorConfig(day_counts={DAY: 95}))
    result = make_client(server, page_size=10).fetch_window(day_window())
    assert len({record["taskId"] for record in result.records}) == 95
    assert server.simulator.stats.requests == 10


def test_5000_tasks_complete_and_exact_under_20_percent_faults(serve: Serve) -> None:
    days = [DAY, DAY + timedelta(days=1)]
    server = serve(
        SimulatorConfig(
            day_counts={days[0]: 2600, days[1]: 2400},
            fault_rate=0.2,
            fault_kinds=("-18", "502", "drop", "slow"),
            slow_seconds=0.3,
        )
    )
    held = server.simulator.store.all_tasks(days)  # generated now, not during the first page
    assert len(held) == 5000
    client = make_client(server, max_attempts=15, timeout_seconds=0.1)

    result = client.fetch_window(day_window(days[0], days[1]))

    assert len(result.records) == 5000
    assert len({record["taskId"] for record in result.records}) == 5000
    assert fingerprint(result.records) == fingerprint(held)
    assert result.stats.retries > 0
    assert result.stats.pages == 50
    assert result.stats.requests == 50 + result.stats.retries  # every failure was retried
    assert server.simulator.stats.requests == result.stats.requests
    outcomes = server.simulator.stats.outcomes
    assert sum(outcomes[kind] for kind in ("-18", "http:502", "drop", "slow")) > 0


def _ids(records: list[dict[str, Any]]) -> list[int]:
    return [record["taskId"] for record in records]


@pytest.mark.parametrize("live_per_request", [1, 5])
@pytest.mark.parametrize("concurrency", [1, 4])
def test_no_task_is_lost_when_tasks_are_created_while_paging(
    serve: Serve, concurrency: int, live_per_request: int
) -> None:
    server = serve(SimulatorConfig(day_counts={DAY: 1234}, live_tasks_per_request=live_per_request))
    existing = set(_ids(server.simulator.store.all_tasks([DAY])))
    assert len(existing) == 1234

    result = make_client(server, max_concurrency=concurrency).fetch_window(day_window())

    got = _ids(result.records)
    assert len(got) == len(set(got))
    assert existing <= set(got)
    assert set(got) <= set(_ids(server.simulator.store.all_tasks([DAY])))
    assert result.stats.api_total > 1234  # tasks really were created meanwhile


@pytest.mark.parametrize("concurrency", [1, 4])
def test_upstream_duplicate_task_ids_are_kept_once_and_reported(
    serve: Serve, concurrency: int
) -> None:
    server = serve(SimulatorConfig(day_counts={DAY: 300}))
    repeat_some_rows(server.simulator.store, every=100)  # 3 repeats: the API reports 303

    result = make_client(server, max_concurrency=concurrency).fetch_window(day_window())

    ids = _ids(result.records)
    assert len(ids) == 300
    assert len(set(ids)) == 300
    assert result.stats.api_total == 303
    assert result.stats.upstream_duplicates == 3
    assert fingerprint(result.records) == fingerprint(server.simulator.store.all_tasks([DAY]))


@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_task_read_again_by_a_later_pass_is_kept_as_last_read(
    serve: Serve, concurrency: int
) -> None:
    """The first pass's answers say 301 tasks where 300 are listed, so the client reads the window
    again; before that second pass a task is created (it finds something new, so it completes the
    window itself) and every in-progress task finishes. The records kept are the ones the second
    pass read (final), not the first pass's (in progress)."""
    server = serve(SimulatorConfig(day_counts={DAY: 300}, open_fraction=0.5))
    sim = server.simulator
    query = sim.query
    lock = threading.Lock()
    calls = 0
    moved: list[int] = []

    def first_pass_short(q: dict[str, Any]) -> bytes:
        nonlocal calls
        with lock:
            calls += 1
            call = calls
            if call == 5:  # the second pass's page 1: the first pass read pages 1..4
                sim.store.add_live_task(f"{DAY.isoformat()} 23:59:59")
                moved.append(sim.store.advance([DAY], to_final=True))
        if call > 4:
            return query(q)
        answer = json.loads(query(q))
        answer["data"]["total"] += 1
        return json.dumps(answer).encode()

    sim.query = first_pass_short  # type: ignore[method-assign]

    result = make_client(server, max_concurrency=concurrency).fetch_window(day_window())

    assert result.stats.passes == 2
    assert calls == 8  # two passes of four pages, no reading in pieces
    assert moved and moved[0] > 1  # tasks really did change between the passes
    assert len(result.records) == 301
    assert {record["status"] for record in result.records} <= {2, 3, 4}  # none left in progress
    assert fingerprint(result.records) == fingerprint(sim.store.all_tasks([DAY]))


@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_task_skipped_by_two_passes_is_not_made_up_for_by_deleted_ones(
    serve: Serve, concurrency: int
) -> None:
    """Tasks deleted and created while the window is paged: each pass skips the same task (a
    deletion above it moves it onto a page read already), yet the tasks read before they were
    deleted, added to the one created meanwhile, make as many distinct ids as the latest
    `total`. Counting across passes took that for a complete window and lost the task; a pass
    must itself account for the `total` it saw, so a third, quiet pass finds it."""
    server = serve(SimulatorConfig(day_counts={DAY: 300}))
    sim, store = server.simulator, server.simulator.store
    newest_first = [t.task_id for t in store.window(f"{DAY} 00:00:00", f"{DAY} 23:59:59")]
    skipped = newest_first[100]  # the first task of page 2, until a task above it goes
    query = sim.query
    lock = threading.Lock()
    calls = 0

    def drifting(q: dict[str, Any]) -> bytes:
        nonlocal calls
        with lock:
            calls += 1
            if calls == 4:  # the second pass's page 1 comes after a new task: skipped is on page 2
                store.add_live_task(f"{DAY} 23:59:59")
            answer = query(q)
            if calls in (1, 4):  # once page 1 is read, a task on it is deleted
                store.delete(DAY, newest_first[49 if calls == 1 else 19])
            return answer

    sim.query = drifting  # type: ignore[method-assign]

    result = make_client(server, max_concurrency=concurrency).fetch_window(day_window())

    got = _ids(result.records)
    assert len(got) == len(set(got))
    assert skipped in got
    assert set(_ids(store.all_tasks([DAY]))) <= set(got)
    assert result.stats.passes == 3


@pytest.mark.parametrize("concurrency", [1, 4])
def test_tasks_a_page_boundary_skips_are_found_not_taken_for_repeats(
    serve: Serve, concurrency: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Pages 2 and 3 each repeat the previous page's last task and skip one, on every pass, with
    a true `total` of 300: the same evidence as upstream repeats. Reading the window in pieces
    that fit on one page finds the two skipped tasks; none is reported as a repeat."""
    server = serve(SimulatorConfig(day_counts={DAY: 300}))
    skip_across_page_boundaries(server.simulator.store)

    result = make_client(server, max_concurrency=concurrency).fetch_window(day_window())

    assert sorted(_ids(result.records)) == sorted(_ids(server.simulator.store.all_tasks([DAY])))
    assert result.stats.api_total == 300
    assert result.stats.upstream_duplicates == 0
    assert fingerprint(result.records) == fingerprint(server.simulator.store.all_tasks([DAY]))
    assert result.stats.requests == server.simulator.stats.requests
    assert "2 task(s) the paged listing skipped" in caplog.text


@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_task_skipped_among_the_last_seconds_of_the_day_is_found(
    serve: Serve, concurrency: int
) -> None:
    """150 tasks in the day's last ten seconds (15 a second, so no second holds more than a
    page) and a page boundary that repeats one and skips another: halving the day down to those
    seconds takes 17 levels, two requests each. The search must get there, not give up and take
    the skipped task for a repeat."""
    server = serve(SimulatorConfig(day_counts={DAY: 0}))
    store = server.simulator.store
    for n in range(150):
        store.add_live_task(f"{DAY} 23:59:{50 + n // 15:02d}")
    skip_across_page_boundaries(store)

    result = make_client(server, max_concurrency=concurrency).fetch_window(day_window())

    assert sorted(_ids(result.records)) == sorted(_ids(store.all_tasks([DAY])))
    assert result.stats.upstream_duplicates == 0
    assert result.stats.requests == server.simulator.stats.requests


def test_tasks_with_their_taskid_sent_as_text_are_de_duplicated_and_completed(
    serve: Serve,
) -> None:
    """taskId "5000602" is stored as task 5000602, so paging keys it the same way: a page
    boundary that repeats one such task and skips another is found out and mended, not passed
    on as 300 records of which two are the same task."""
    server = serve(SimulatorConfig(day_counts={DAY: 300}))
    store = server.simulator.store
    listing = store.window

    def ids_as_text(start: str, end: str) -> list[Any]:
        return [
            _Task(dict(t.record, taskId=str(t.task_id)), created=t.created, task_id=t.task_id)
            for t in listing(start, end)
        ]

    store.window = ids_as_text
    skip_across_page_boundaries(store)

    result = make_client(server).fetch_window(day_window())

    expected = sorted(str(t["taskId"]) for t in store.all_tasks([DAY]))
    assert sorted(r["taskId"] for r in result.records) == expected
    assert result.stats.upstream_duplicates == 0


def test_reading_in_one_page_pieces_is_bounded_and_refuses_a_listing_that_ignores_the_window(
    serve: Serve,
) -> None:
    """An API that answers any window with the whole day, every task listed twice: no piece ever
    fits on one page. The search stops after the most requests a listing consistent with its
    `total` could need (2 x pages x (halving levels + 1) + 16) and refuses the window: its
    shortfall cannot be told from skipped tasks, so it is not taken for repeats."""
    server = serve(SimulatorConfig(day_counts={DAY: 300}))
    store = server.simulator.store
    listing = store.window

    def whole_day_twice(start: str, end: str) -> list[Any]:
        return [task for task in listing(f"{DAY} 00:00:00", f"{DAY} 23:59:59") for _ in (1, 2)]

    store.window = whole_day_twice

    with pytest.raises(LaafficIncompleteWindowError) as caught:
        make_client(server).fetch_window(day_window())

    passes = 2 * 6  # 600 rows: 6 pages a pass, two passes before the search
    levels = (86_399).bit_length()  # 17 halvings from a day to one second
    assert server.simulator.stats.requests == passes + 2 * 6 * (levels + 1) + 16
    assert "reports 600 tasks" in str(caught.value)
    assert "refusing to store a partial window" in str(caught.value)


def test_a_total_that_can_never_be_reached_is_refused_not_stored(serve: Serve) -> None:
    server = serve(SimulatorConfig(day_counts={DAY: 150}))
    sim = server.simulator
    query = sim.query

    def inflated(q: dict[str, Any]) -> bytes:
        answer = json.loads(query(q))
        answer["data"]["total"] += 7
        return json.dumps(answer).encode()

    sim.query = inflated  # type: ignore[method-assign]
    client = make_client(server, max_drift_passes=2)

    with pytest.raises(LaafficIncompleteWindowError) as caught:
        client.fetch_window(day_window())

    assert "reports 157 tasks" in str(caught.value)
    assert "found only 150" in str(caught.value)
    assert "refusing to store a partial window" in str(caught.value)


def test_filters_are_passed_to_the_api(serve: Serve) -> None:
    server = serve(SimulatorConfig(day_counts={DAY: 400}, open_fraction=0.3))
    held = server.simulator.store.all_tasks([DAY])
    result = make_client(server).fetch_window(day_window(), statusList=[1, 5])
    assert sorted(_ids(result.records)) == sorted(
        record["taskId"] for record in held if record["status"] in (1, 5)
    )
    assert result.records


def test_days_outside_the_configured_range_are_empty(serve: Serve) -> None:
    server = serve(SimulatorConfig(first_day=DAY, last_day=DAY, tasks_per_day=5))
    result = make_client(server).fetch_window(
        day_window(DAY - timedelta(days=2), DAY + timedelta(days=2))
    )
    assert len(result.records) == 5
    assert {record["createdTime"][:10] for record in result.records} == {"2024-06-04"}
    assert date.fromisoformat(result.records[0]["createdTime"][:10]) == DAY


def test_window_digest_is_the_same_for_the_same_pages_and_differs_with_any_change(
    serve: Serve,
) -> None:
    server = serve(SimulatorConfig(day_counts={DAY: 250, DAY + timedelta(days=1): 250}))
    client = make_client(server, max_concurrency=4)
    first = client.fetch_window(day_window())
    assert len(first.digest) == 32
    assert client.fetch_window(day_window()).digest == first.digest
    assert make_client(server, max_concurrency=1).fetch_window(day_window()).digest == first.digest

    next_day = day_window(DAY + timedelta(days=1))
    assert client.fetch_window(next_day).digest != first.digest
    # Fewer records a page: other page bodies, although the records are the same.
    assert make_client(server, page_size=50).fetch_window(day_window()).digest != first.digest
    # One field of one task.
    (task, *_) = server.simulator.store.day(DAY)
    task.update(taskName=f"{task.record['taskName']} (renamed)")
    assert client.fetch_window(day_window()).digest != first.digest


def test_a_record_with_an_unpaired_surrogate_escape_is_read_not_the_page_failed(
    serve: Serve,
) -> None:
    """JSON allows "\\ud800" (a Java JSON writer emits one for a broken string); pydantic-core's
    parser refuses it. The page is read by Python's json instead: the record reaches the
    normaliser, which rejects that one value, and the day is not failed on every attempt."""
    server = serve(SimulatorConfig(day_counts={DAY: 30}))
    store = server.simulator.store
    odd = dict(store.day(DAY)[0].record, taskId=7_000_500, taskName="ok")
    store.add_raw(DAY, odd)
    task = next(t for t in store.day(DAY) if t.record is odd)
    task.encoded = task.encoded.replace(b'"taskName":"ok"', b'"taskName":"bad \\ud800 name"')

    result = make_client(server).fetch_window(day_window())

    assert len(result.records) == 31
    (read,) = [r for r in result.records if r["taskId"] == 7_000_500]
    assert read["taskName"] == "bad \ud800 name"
    window = normalise_records(result.records)
    assert [(r.task_id, r.field) for r in window.rejects] == [(7_000_500, "taskName")]
    assert "unpaired" in window.rejects[0].error
    assert len(window) == 31


def test_a_json_integer_of_thousands_of_digits_is_a_reject_not_the_page_failed(
    serve: Serve,
) -> None:
    """`"numCnt": 999…` with more than 4,300 digits as a JSON number, not text: pydantic-core's
    parser refuses it ("number out of range") and Python's json, whose int() has that limit, did
    too, so the page was "not the documented JSON envelope" on every attempt and the day was
    never stored. It is read as the text of its digits: the normaliser refuses it as out of
    range, like the same digits sent as text (a taskId so: the record kept whole as a reject)."""
    server = serve(SimulatorConfig(day_counts={DAY: 30}))
    store = server.simulator.store
    huge = b"9" * 5000
    for task_id, field in ((7_000_600, "numCnt"), (7_000_601, "taskId")):
        odd = dict(store.day(DAY)[0].record, taskId=task_id, taskName=f"huge {field}")
        store.add_raw(DAY, odd)
        task = next(t for t in store.day(DAY) if t.record is odd)
        if field == "numCnt":
            task.encoded = re.sub(rb'"numCnt":\d+', b'"numCnt":' + huge, task.encoded)
        else:
            task.encoded = task.encoded.replace(b'"taskId":7000601', b'"taskId":' + huge)
        assert huge in task.encoded

    result = make_client(server, max_attempts=2).fetch_window(day_window())

    assert len(result.records) == 32
    window = normalise_records(result.records)
    assert len(window) == 31
    refused = {(r.task_id, r.field): r.error for r in window.rejects}
    assert set(refused) == {(7_000_600, "numCnt"), (None, "taskId")}
    assert "out of range for int" in refused[7_000_600, "numCnt"]
    assert "out of range for bigint" in refused[None, "taskId"]


@pytest.mark.parametrize("concurrency", [1, 4])
def test_tasks_a_page_boundary_skips_are_found_though_a_task_read_earlier_was_deleted(
    serve: Serve, concurrency: int
) -> None:
    """Every pass skips the same tasks at the page boundaries (same-second ordering) and repeats
    others, and a task the first pass read is deleted before the second: the second pass is
    stable, so the window is read in one-page pieces. Those stopped once the tasks of every
    pass, the deleted one too, numbered the latest `total`: one skipped task made up for by a
    deleted one was never looked for, and the window was stored without it, repeats none. The
    pieces now look until the tasks read since that pass account for the `total` (as a pass
    must, for itself)."""
    server = serve(SimulatorConfig(day_counts={DAY: 300}))
    sim, store = server.simulator, server.simulator.store
    newest_first = [t.task_id for t in store.window(f"{DAY} 00:00:00", f"{DAY} 23:59:59")]
    oldest = newest_first[-1]  # read by the first pass (on page 3); deleting it moves no other
    skip_across_page_boundaries(store)
    query = sim.query
    lock = threading.Lock()
    calls = 0

    def deleting(q: dict[str, Any]) -> bytes:
        nonlocal calls
        with lock:
            calls += 1
            if calls == 4:  # the second pass's page 1
                store.delete(DAY, oldest)
            return query(q)

    sim.query = deleting  # type: ignore[method-assign]

    result = make_client(server, max_concurrency=concurrency).fetch_window(day_window())

    got = set(_ids(result.records))
    assert set(_ids(store.all_tasks([DAY]))) <= got
    assert result.stats.upstream_duplicates == 0

"""pipelines.sync's write lanes on their own: tasks on two connections at once, ordered by the
tasks and days they share, halted after a failure or a stop. (Whole syncs on two lanes:
tests/test_sync.py.)"""

import threading
import time
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

import psycopg
import pytest

from pipelines.sync import WriterHalted, _first_load_keys, _WriteLanes
from pipelines.warehouse.normalise import normalise_records
from pipelines.warehouse.writer import connect
from tests.reliability.helpers import wait_for
from tests.warehouse.helpers import make_records

DAY = date(2024, 6, 4)


def test_writes_that_would_wait_on_each_other_fail_in_postgresql_instead_of_hanging(
    database_url: str,
) -> None:
    """The lanes' safety net: should two writes ever touch the same row although their tasks
    were taken for disjoint (a bug), the later one waits for the earlier one's commit inside
    PostgreSQL, whose deadlock detection then fails one of them: an error, never a hang."""
    with connect(database_url) as setup:
        setup.execute("CREATE TABLE shared (k int PRIMARY KEY)")
        setup.commit()
        lanes = _WriteLanes(setup, lambda: connect(database_url), 2)
        earlier_began, later_inserted = threading.Event(), threading.Event()

        def earlier(conn: psycopg.Connection, turn: object) -> str:
            with conn.transaction():
                turn.begin(conn)  # type: ignore[attr-defined]
                earlier_began.set()
                later_inserted.wait(30)
                conn.execute("INSERT INTO shared VALUES (1) ON CONFLICT DO NOTHING")
                turn.before_commit(conn)  # type: ignore[attr-defined]
            return "earlier"

        def later(conn: psycopg.Connection, turn: object) -> str:
            earlier_began.wait(30)
            with conn.transaction():
                turn.begin(conn)  # type: ignore[attr-defined]
                conn.execute("INSERT INTO shared VALUES (1) ON CONFLICT DO NOTHING")
                later_inserted.set()
                turn.before_commit(conn)  # type: ignore[attr-defined]
            return "later"

        try:
            first = lanes.submit("writing one", earlier, day=DAY, keys=frozenset(), commits=True)
            second = lanes.submit(
                "writing two", later, day=DAY + timedelta(days=1), keys=frozenset(), commits=True
            )
            errors = [f.exception(timeout=60) for f in (first, second)]
        finally:
            lanes.stop()
            lanes.shutdown()
    assert any(isinstance(e, psycopg.errors.DeadlockDetected) for e in errors), errors
    assert errors[1] is not None, errors  # the later one never commits unless the earlier did
    assert isinstance(lanes.first_failure(), psycopg.errors.DeadlockDetected)


def _on(day_offset: int) -> date:
    return DAY + timedelta(days=day_offset)


def test_tasks_sharing_no_task_run_at_once_and_the_others_wait(database_url: str) -> None:
    """Lane tasks that share a task (taskId) or a day run one after the other; those sharing
    neither run at once; a task that may touch any task's rows (`None`) waits for every
    earlier one."""
    with connect(database_url) as conn:
        lanes = _WriteLanes(conn, lambda: connect(database_url), 2)
        release = threading.Event()
        started: list[str] = []

        def task(name: str, hold: bool = False) -> Callable[[psycopg.Connection, object], str]:
            def run(_conn: psycopg.Connection, _turn: object) -> str:
                started.append(name)
                if hold:
                    assert release.wait(30)
                return name

            return run

        def submit(name: str, day: date, keys: frozenset[int] | None, hold: bool = False) -> Any:
            return lanes.submit(name, task(name, hold), day=day, keys=keys, commits=False)

        try:
            for later_day, later_keys in ((_on(1), frozenset({2, 3})), (_on(0), frozenset({9}))):
                release.clear()
                started.clear()
                held = submit("held", _on(0), frozenset({1, 2}), hold=True)
                wait_for("the first to start", lambda: "held" in started or None, 30)
                waiting = submit("after", later_day, later_keys)
                time.sleep(0.3)
                assert started == ["held"]  # it shares task 2, or the day
                release.set()
                assert waiting.result(30) == "after" and held.result(30) == "held"
            release.clear()
            started.clear()
            held = submit("c", _on(2), frozenset({4}), hold=True)
            apart = submit("d", _on(3), frozenset({5}))
            assert apart.result(30) == "d"  # ran while c was under way
            any_task = submit("e", _on(4), None)
            time.sleep(0.3)
            assert "e" not in started
            release.set()
            assert any_task.result(30) == "e"
        finally:
            release.set()
            lanes.stop()
            lanes.shutdown()
    assert started == ["c", "d", "e"]


def test_a_task_queued_after_a_failed_one_does_not_run(database_url: str) -> None:
    with connect(database_url) as conn:
        lanes = _WriteLanes(conn, lambda: connect(database_url), 2)

        def fail(_conn: psycopg.Connection, _turn: object) -> None:
            raise RuntimeError("injected")

        try:
            failed = lanes.submit("failing", fail, day=_on(0), keys=None, commits=False)
            after = lanes.submit("after", lambda c, t: "ran", day=_on(1), keys=None, commits=False)
            assert isinstance(failed.exception(30), RuntimeError)
            assert isinstance(after.exception(30), WriterHalted)
        finally:
            lanes.stop()
            lanes.shutdown()
    assert "while failing" in str(getattr(lanes.first_failure(), "__notes__", ""))


def test_stopped_the_task_under_way_finishes_and_the_one_waiting_for_it_does_not_start(
    database_url: str,
) -> None:
    with connect(database_url) as conn:
        lanes = _WriteLanes(conn, lambda: connect(database_url), 2)
        release, ran = threading.Event(), []

        def held(_conn: psycopg.Connection, _turn: object) -> str:
            ran.append("held")
            assert release.wait(30)
            return "held"

        try:
            first = lanes.submit("held", held, day=_on(0), keys=frozenset({1}), commits=False)
            wait_for("the first to start", lambda: ran or None, 30)
            waiting = lanes.submit(
                "waiting", lambda c, t: ran.append("waiting"), day=_on(1), keys=None, commits=False
            )
            lanes.stop()
            release.set()
            assert first.result(30) == "held"
            assert isinstance(waiting.exception(30), WriterHalted)
        finally:
            release.set()
            lanes.shutdown()
    assert ran == ["held"]


def test_no_more_than_two_lanes(database_url: str) -> None:
    with connect(database_url) as conn, pytest.raises(ValueError, match="1 or 2"):
        _WriteLanes(conn, lambda: connect(database_url), 3)


def test_a_first_load_runs_alone_if_it_may_touch_rows_other_than_its_tasks() -> None:
    """A record without a usable taskId is kept as a reject keyed by its raw text alone; a row
    created on another day than its window's changes that day's figures."""
    records = make_records(DAY, 3)
    assert _first_load_keys(normalise_records(records), DAY) == {r["taskId"] for r in records}
    without_id = [*records[:1], {k: v for k, v in records[1].items() if k != "taskId"}]
    assert _first_load_keys(normalise_records(without_id), DAY) is None
    elsewhere = [*records[:1], {**records[1], "createdTime": f"{_on(1)} 08:00:00"}]
    assert _first_load_keys(normalise_records(elsewhere), DAY) is None
    refused = [*records[:1], {**records[1], "createdTime": "not a time"}]  # (on the window's day)
    assert _first_load_keys(normalise_records(refused), DAY) == {r["taskId"] for r in records[:2]}

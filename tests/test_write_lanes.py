"""pipelines.sync's write lanes: a range's days written on two connections at once, committed in
the order of the days, and never waiting on each other's rows."""

import threading
import time
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

import psycopg
import pytest

from pipelines.laaffic.client import LaafficClient
from pipelines.laaffic.simulator import SimulatorServer
from pipelines.sync import WriterHalted, _first_load_keys, _WriteLanes, sync_days
from pipelines.warehouse.normalise import normalise_records
from pipelines.warehouse.writer import connect, ensure_schema
from tests.warehouse.helpers import make_records, on_sync_log_insert, waiting_for_advisory_lock

DAY = date(2024, 6, 4)
TZ = "Asia/Shanghai"
GATE = 4270


@pytest.fixture
def client(simulator: SimulatorServer) -> LaafficClient:
    with LaafficClient(
        simulator.url, "sim-key", "sim-secret", backoff_base_seconds=0.001
    ) as client:
        yield client


@pytest.fixture
def conn(database_url: str) -> psycopg.Connection:
    with connect(database_url) as conn:
        ensure_schema(conn, database_url)
        yield conn


def _wait_until(what: str, probe: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not probe():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _stored_days(database_url: str) -> list[date]:
    with psycopg.connect(database_url) as other:
        rows = other.execute("SELECT DISTINCT created_date FROM group_call_tasks").fetchall()
    return sorted(d for (d,) in rows)


def test_a_later_day_written_meanwhile_commits_only_after_the_earlier_one(
    client: LaafficClient, conn: psycopg.Connection, database_url: str
) -> None:
    """The first day's write is held at its last statement; the second's, on the other lane,
    does all its work meanwhile but does not commit before it: were it to, a failure of the
    first would leave a later day stored and an earlier one not (a range's committed days must
    be a prefix of it). Released, both commit and are yielded in order."""
    first, second = DAY, DAY + timedelta(days=1)
    on_sync_log_insert(
        conn, f"NEW.window_date = DATE '{first}'", f"PERFORM pg_advisory_xact_lock({GATE});"
    )
    yielded: list[date] = []
    with psycopg.connect(database_url, autocommit=True) as gate:
        gate.execute("SELECT pg_advisory_lock(%s)", (GATE,))
        syncing = threading.Thread(
            target=lambda: yielded.extend(
                s.day
                for s in sync_days(
                    client,
                    conn,
                    [first, second],
                    time_zone=TZ,
                    write_lanes=2,
                    connect=lambda: connect(database_url),
                )
            )
        )
        syncing.start()
        try:
            _wait_until(
                "the first day's write to be held", lambda: waiting_for_advisory_lock(gate, GATE)
            )
            # The second day's write has logged its sync and waits for its turn to commit.
            _wait_until(
                "the second day's write to wait for its turn",
                lambda: (
                    gate.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND query LIKE '%pg_advisory_xact_lock_shared%' "
                        "AND wait_event = 'advisory'"
                    ).fetchone()
                    == (1,)
                ),
            )
            assert _stored_days(database_url) == []
        finally:
            gate.execute("SELECT pg_advisory_unlock(%s)", (GATE,))
            syncing.join(60)
    assert not syncing.is_alive()
    assert yielded == [first, second]
    assert _stored_days(database_url) == [first, second]


def test_a_task_two_days_list_is_written_by_one_day_after_the_other(
    client: LaafficClient,
    conn: psycopg.Connection,
    database_url: str,
    simulator: SimulatorServer,
) -> None:
    """A task listed in two days' windows (moved between days upstream): the later day's write
    waits for the earlier one to end before it starts. Were they to overlap, the later one's
    row would hold the earlier one's insert of the same task while it waits for the earlier
    one's commit: a deadlock (PostgreSQL would fail one of them). The result is the serial one,
    the later day's version of the task."""
    first, second = DAY, DAY + timedelta(days=1)
    store = simulator.simulator.store
    moved = dict(store.day(first)[0].record)
    moved.update(taskName="moved upstream", createdTime=f"{second} 12:00:00")
    store.add_raw(second, moved)
    # The first day's write is held at its first row, before it writes the shared task.
    conn.execute(
        f"""
        CREATE FUNCTION test_hold() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.created_date = DATE '{first}' THEN PERFORM pg_advisory_xact_lock({GATE});
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER test_hold BEFORE INSERT ON group_call_tasks
            FOR EACH ROW EXECUTE FUNCTION test_hold();
        """.encode()
    )
    conn.commit()
    outcome: list[object] = []

    def sync() -> None:
        try:
            outcome.extend(
                s.day
                for s in sync_days(
                    client,
                    conn,
                    [first, second],
                    time_zone=TZ,
                    write_lanes=2,
                    connect=lambda: connect(database_url),
                )
            )
        except Exception as exc:
            outcome.append(exc)

    with psycopg.connect(database_url, autocommit=True) as gate:
        gate.execute("SELECT pg_advisory_lock(%s)", (GATE,))
        syncing = threading.Thread(target=sync)
        syncing.start()
        try:
            _wait_until(
                "the first day's write to be held", lambda: waiting_for_advisory_lock(gate, GATE)
            )
            time.sleep(0.5)  # time enough for the second day's write, were it to run meanwhile
        finally:
            gate.execute("SELECT pg_advisory_unlock(%s)", (GATE,))
            syncing.join(60)
    assert not syncing.is_alive()
    assert outcome == [first, second]
    stored = conn.execute(
        "SELECT task_name, created_date FROM group_call_tasks WHERE task_id = %s",
        (moved["taskId"],),
    ).fetchall()
    assert stored == [("moved upstream", second)]


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
                _wait_until("the first to start", lambda: "held" in started)
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
            _wait_until("the first to start", lambda: ran)
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

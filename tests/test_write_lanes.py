"""pipelines.sync's write lanes: a range's days written on two connections at once, committed in
the order of the days, and never waiting on each other's rows."""

import threading
import time
from datetime import date, timedelta

import psycopg
import pytest

from pipelines.laaffic.client import LaafficClient
from pipelines.laaffic.simulator import SimulatorServer
from pipelines.sync import WriterHalted, _WriteLanes, _written_keys, sync_days
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
            first = lanes.submit("writing one", earlier, keys=frozenset(), commits=True)
            second = lanes.submit("writing two", later, keys=frozenset(), commits=True)
            errors = [f.exception(timeout=60) for f in (first, second)]
        finally:
            lanes.stop()
            lanes.shutdown()
    assert any(isinstance(e, psycopg.errors.DeadlockDetected) for e in errors), errors
    assert errors[1] is not None, errors  # the later one never commits unless the earlier did
    assert isinstance(lanes.first_failure(), psycopg.errors.DeadlockDetected)


def test_tasks_sharing_no_task_run_at_once_and_the_others_wait(database_url: str) -> None:
    """Lane tasks that share a task (taskId) run one after the other; those sharing none run at
    once; a task that may touch any task's rows (`None`) waits for every earlier one."""
    with connect(database_url) as conn:
        lanes = _WriteLanes(conn, lambda: connect(database_url), 2)
        release = threading.Event()
        started: list[str] = []

        def task(name: str, hold: bool = False) -> object:
            def run(_conn: psycopg.Connection, _turn: object) -> str:
                started.append(name)
                if hold:
                    assert release.wait(30)
                return name

            return run

        try:
            held = lanes.submit("a", task("a", hold=True), keys=frozenset({1, 2}), commits=False)
            _wait_until("a to start", lambda: "a" in started)
            sharing = lanes.submit("b", task("b"), keys=frozenset({2, 3}), commits=False)
            time.sleep(0.3)
            assert started == ["a"]  # b waits for a, which holds task 2
            release.set()
            assert sharing.result(30) == "b" and held.result(30) == "a"
            release.clear()
            held = lanes.submit("c", task("c", hold=True), keys=frozenset({4}), commits=False)
            apart = lanes.submit("d", task("d"), keys=frozenset({5}), commits=False)
            assert apart.result(30) == "d"  # ran while c was under way
            any_task = lanes.submit("e", task("e"), keys=None, commits=False)
            time.sleep(0.3)
            assert "e" not in started
            release.set()
            assert any_task.result(30) == "e"
        finally:
            release.set()
            lanes.stop()
            lanes.shutdown()
    assert started == ["a", "b", "c", "d", "e"]


def test_a_task_queued_after_a_failed_one_does_not_run(database_url: str) -> None:
    with connect(database_url) as conn:
        lanes = _WriteLanes(conn, lambda: connect(database_url), 2)

        def fail(_conn: psycopg.Connection, _turn: object) -> None:
            raise RuntimeError("injected")

        try:
            failed = lanes.submit("failing", fail, keys=None, commits=False)
            after = lanes.submit("after", lambda c, t: "ran", keys=None, commits=False)
            assert isinstance(failed.exception(30), RuntimeError)
            assert isinstance(after.exception(30), WriterHalted)
        finally:
            lanes.stop()
            lanes.shutdown()
    assert "while failing" in str(getattr(lanes.first_failure(), "__notes__", ""))


def test_a_window_keeping_a_record_without_a_task_may_touch_any_task() -> None:
    """Its reject is keyed by its raw text alone: another day's write could hold the same."""
    records = make_records(DAY, 3)
    assert _written_keys(normalise_records(records)) == {r["taskId"] for r in records}
    records[1] = {k: v for k, v in records[1].items() if k != "taskId"}
    assert _written_keys(normalise_records(records)) is None

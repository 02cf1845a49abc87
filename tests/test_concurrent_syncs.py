"""Syncs of the same day at once (runs outside the pool `laaffic_api`, which is only the Dagster
instance's configuration): the warehouse must still end as the API's latest state, every sync-log
row must tell what its sync found, and a later sync must never take a stale day for an unchanged
one. The interleavings are made deterministic by holding a run's step where it would stand in a
race (its own Python call, or a lock the test holds) and waiting for that state, never by
sleeping for a guessed while."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import date
from typing import Any

import psycopg
import pytest

import pipelines.sync
from pipelines.laaffic.simulator import SimulatorServer
from pipelines.sync import sync_day
from pipelines.warehouse.writer import ConcurrentSyncError, connect, ensure_schema
from tests.laaffic.helpers import make_client
from tests.warehouse.helpers import on_sync_log_insert

DAY = date(2024, 6, 4)
TZ = "Asia/Shanghai"


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    with connect(database_url) as conn:
        ensure_schema(conn, database_url)
        yield conn


def _stored(conn: psycopg.Connection) -> dict[int, Any]:
    rows = dict(conn.execute("SELECT task_id, raw FROM group_call_tasks").fetchall())
    conn.commit()
    return rows


def _api(simulator: SimulatorServer, day: date = DAY) -> dict[int, Any]:
    return {t.task_id: t.record for t in simulator.simulator.store.day(day)}


class _Run(threading.Thread):
    """One run's sync of a day, on its own client and connection, in a thread."""

    def __init__(self, simulator: SimulatorServer, database_url: str, run_id: str) -> None:
        super().__init__(name=f"run-{run_id}")
        self.simulator, self.database_url, self.run_id = simulator, database_url, run_id
        self.error: BaseException | None = None
        self.conn: psycopg.Connection | None = None
        self.connected = threading.Event()

    def run(self) -> None:
        try:
            with make_client(self.simulator) as client, connect(self.database_url) as conn:
                self.conn = conn
                self.connected.set()
                sync_day(client, conn, DAY, time_zone=TZ, run_id=self.run_id)
        except BaseException as exc:  # reported to the test
            self.error = exc
        finally:
            self.connected.set()


def _held(
    monkeypatch: pytest.MonkeyPatch, name: str, holds: Callable[..., threading.Event | None]
) -> None:
    """Make `pipelines.sync.<name>` wait, before it runs, for the event `holds(*args, **kw)`
    returns (None: run at once): a run's step stopped where a slower run would stand."""
    real = getattr(pipelines.sync, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        gate = holds(*args, **kwargs)
        if gate is not None:
            assert gate.wait(60), f"{name} held for ever"
        return real(*args, **kwargs)

    monkeypatch.setattr(pipelines.sync, name, wrapper)


def test_a_stale_write_committed_while_another_run_compared_is_never_taken_for_unchanged(
    simulator: SimulatorServer,
    conn: psycopg.Connection,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three runs of one day, as the schedule, the open-tasks sensor and a backfill may launch
    them when nothing keeps them apart. `slow` read the day before task r became final and
    writes it late; `fast` read it afterwards, compared it with what `between` had stored
    (r already final: skipped as unchanged) and writes it after `slow` committed r as open
    again. `fast`'s sync-log row must not say that the day holds what its pages hold: a later
    sync of the same pages would take the day for unchanged and leave r open for ever."""
    store = simulator.simulator.store
    r, t, x = store.day(DAY)[:3]
    r.update(status=1, success=0, fail=0)  # in progress when `slow` reads it
    with make_client(simulator) as client:
        sync_day(client, conn, DAY, time_zone=TZ, run_id="first")

    # `slow` reads the day (x changed since the first sync, so it is read in full), then its
    # comparison with what is stored waits until the test lets it go.
    x.update(taskName="x renamed")
    slow = _Run(simulator, database_url, "slow")
    slow_may_compare = threading.Event()
    slow_read = threading.Event()

    def hold_slow(conn_: psycopg.Connection, *args: Any) -> threading.Event | None:
        if conn_ is slow.conn:
            slow_read.set()
            return slow_may_compare
        return None

    _held(monkeypatch, "unchanged_records", hold_slow)
    slow.start()
    assert slow_read.wait(60)

    # r becomes final upstream; `between` stores that.
    r.update(status=2, success=3, fail=1)
    with make_client(simulator) as client:
        sync_day(client, conn, DAY, time_zone=TZ, run_id="between")

    # t changes; `fast` reads the day, compares (r is as stored: skipped), and its write waits.
    t.update(taskName="t renamed")
    fast = _Run(simulator, database_url, "fast")
    fast_may_write = threading.Event()
    fast_compared = threading.Event()

    def hold_fast(*args: Any, **kwargs: Any) -> threading.Event | None:
        if kwargs.get("run_id") == "fast":
            fast_compared.set()
            return fast_may_write
        return None

    _held(monkeypatch, "write_window", hold_fast)
    fast.start()
    assert fast_compared.wait(60)

    # `slow` compares and writes what it read: r in progress again, committed.
    slow_may_compare.set()
    slow.join(60)
    assert slow.error is None
    # Then `fast` writes.
    fast_may_write.set()
    fast.join(60)

    # Nothing changes upstream any more: one more sync must leave the API's latest state.
    with make_client(simulator) as client:
        last = sync_day(client, conn, DAY, time_zone=TZ, run_id="last")
    assert _stored(conn) == _api(simulator)
    assert last.write.updated == 2  # r put back as final, t renamed (`fast` wrote nothing)
    # `fast` did not log as read what it did not compare with what it overwrote: it stopped,
    # saying why.
    assert isinstance(fast.error, ConcurrentSyncError)
    assert "another sync" in str(fast.error) and "laaffic_api" in str(fast.error)
    assert "slow" in str(fast.error)
    logged = conn.execute("SELECT run_id FROM group_call_sync_log ORDER BY sync_id").fetchall()
    assert [run for (run,) in logged] == ["first", "between", "slow", "last"]


def _wait_until_blocked(gate: psycopg.Connection, run: _Run) -> None:
    """Until `run` has finished or its session waits for a lock (a row's or the day's)."""
    assert run.connected.wait(60) and run.conn is not None
    pid = run.conn.info.backend_pid
    for _ in range(60_000):
        if not run.is_alive():
            return
        waiting = gate.execute(
            "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s", (pid,)
        ).fetchone()
        if waiting == (True,):
            return
        time.sleep(0.001)
    raise AssertionError(f"{run.name} neither ended nor waited for a lock")


@pytest.mark.parametrize("changed", [False, True], ids=["same-pages", "pages-changed"])
def test_a_sync_during_another_s_uncommitted_stale_write_waits_for_it(
    simulator: SimulatorServer,
    conn: psycopg.Connection,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    changed: bool,
) -> None:
    """`slow` writes task r as it read it before r became final, and has not committed yet (its
    sync-log row's number is drawn) when `fast` syncs the same day: with the very pages the day's
    last sync logged (only logged, as unchanged) or with another task changed. `fast` must see
    what `slow` commits, not log a state of the day that `slow`'s commit then undoes: a later sync
    of the same pages would take the day for unchanged and leave r in progress for ever."""
    store = simulator.simulator.store
    r, t, x = store.day(DAY)[:3]
    r.update(status=1, success=0, fail=0)
    with make_client(simulator) as client:
        sync_day(client, conn, DAY, time_zone=TZ, run_id="first")

    x.update(taskName="x renamed")  # `slow` reads the day in full ...
    slow = _Run(simulator, database_url, "slow")
    slow_may_compare, slow_read = threading.Event(), threading.Event()

    def hold_slow(conn_: psycopg.Connection, *args: Any) -> threading.Event | None:
        if conn_ is slow.conn:
            slow_read.set()
            return slow_may_compare
        return None

    _held(monkeypatch, "unchanged_records", hold_slow)
    # ... and its write, at its sync-log row, waits for a lock this test holds.
    on_sync_log_insert(conn, "NEW.run_id = 'slow'", "PERFORM pg_advisory_xact_lock(4251);")
    with psycopg.connect(database_url, autocommit=True) as gate:
        gate.execute("SELECT pg_advisory_lock(4251)")
        slow.start()
        assert slow_read.wait(60)
        r.update(status=2, success=3, fail=1)  # r becomes final; `between` stores that
        with make_client(simulator) as client:
            sync_day(client, conn, DAY, time_zone=TZ, run_id="between")
        slow_may_compare.set()  # `slow` writes r in progress again, up to its log row
        _wait_until_blocked(gate, slow)
        assert slow.is_alive()

        if changed:
            t.update(taskName="t renamed")
        fast = _Run(simulator, database_url, "fast")
        fast.start()
        _wait_until_blocked(gate, fast)
        gate.execute("SELECT pg_advisory_unlock(4251)")
        slow.join(60)
        fast.join(60)
    assert slow.error is None
    assert fast.error is None

    with make_client(simulator) as client:
        sync_day(client, conn, DAY, time_zone=TZ, run_id="last")
    assert _stored(conn) == _api(simulator)


def test_a_task_that_became_final_is_counted_once_when_two_syncs_write_it_at_once(
    simulator: SimulatorServer, conn: psycopg.Connection, database_url: str
) -> None:
    """`became_final` and `open_before` count what a sync itself saw become final; a second
    sync of the day waiting for the first's write must not count r again."""
    store = simulator.simulator.store
    r = store.day(DAY)[0]
    r.update(status=1, success=0, fail=0)
    with make_client(simulator) as client:
        sync_day(client, conn, DAY, time_zone=TZ, run_id="first")
    r.update(status=2, success=3, fail=1)

    on_sync_log_insert(conn, "NEW.run_id = 'one'", "PERFORM pg_advisory_xact_lock(4252);")
    with psycopg.connect(database_url, autocommit=True) as gate:
        gate.execute("SELECT pg_advisory_lock(4252)")
        one = _Run(simulator, database_url, "one")
        one.start()
        _wait_until_blocked(gate, one)  # r written, not committed
        two = _Run(simulator, database_url, "two")
        two.start()
        _wait_until_blocked(gate, two)
        gate.execute("SELECT pg_advisory_unlock(4252)")
        one.join(60)
        two.join(60)
    assert one.error is None and two.error is None
    logged = conn.execute(
        "SELECT run_id, updated, became_final FROM group_call_sync_log "
        "WHERE run_id IN ('one', 'two') ORDER BY sync_id"
    ).fetchall()
    assert logged == [("one", 1, 1), ("two", 0, 0)]
    assert _stored(conn) == _api(simulator)

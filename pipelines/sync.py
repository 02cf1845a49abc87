"""One account-local day, end to end: read its window from the API, normalise, write atomically.

Plain functions, no Dagster: the asset wraps them, tests and benchmarks call them directly.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

import psycopg

from pipelines.laaffic.client import FetchStats, LaafficClient, Logger, WindowResult
from pipelines.laaffic.models import TimeWindow
from pipelines.warehouse.normalise import (
    NormalisedWindow,
    fingerprints,
    normalise_records,
    raw_payloads,
)
from pipelines.warehouse.writer import (
    CommitTurn,
    WriteResult,
    stored_days,
    unchanged_records,
    write_unchanged_window,
    write_window,
)

T = TypeVar("T")


class WriterHalted(Exception):
    """A task of the writer lanes that did not run, or rolled back before its commit: an earlier
    one failed (or the sync was stopped), and nothing is written after a failure."""


#: The rows a lane task reads or writes, by taskId (`None`: it may touch any task's, or a day's
#: other rows, so it runs alone).
Keys = frozenset[int] | None


@dataclass(eq=False)
class _LaneTask:
    seq: int
    day: date
    keys: Keys
    locked: threading.Event = field(default_factory=threading.Event)  # its turn's lock, or ended
    ended: threading.Event = field(default_factory=threading.Event)
    ok: bool = False

    def conflicts(self, day: date, keys: Keys) -> bool:
        """Whether a task of `day` touching `keys` must wait for this one to end: they may
        lock the same rows (or the day's lock, `_LOCK_DAY`)."""
        if self.keys is None or keys is None or day == self.day:
            return True
        return not self.keys.isdisjoint(keys)


class _Turn:
    """`CommitTurn` of a lane task: its transaction first takes an advisory lock of its own and,
    last, waits for the one of the write queued before it, so PostgreSQL itself orders their
    commits (two transactions ever waiting on each other would be a deadlock it reports, not a
    hang); then it commits only if that write committed and the sync did not halt it."""

    def __init__(self, lanes: _WriteLanes, task: _LaneTask, after: _LaneTask | None) -> None:
        self.lanes, self.task, self.after = lanes, task, after

    def begin(self, conn: psycopg.Connection) -> None:
        conn.execute(_TURN_LOCK, (self.lanes.token + self.task.seq,))
        self.task.locked.set()

    def before_commit(self, conn: psycopg.Connection) -> None:
        after = self.after
        if after is not None:
            after.locked.wait()
            conn.execute(_WAIT_FOR_TURN, (self.lanes.token + after.seq,))  # until it ends
            after.ended.wait()
            if not after.ok:
                raise WriterHalted("rolled back: the write queued before it did not commit")
        self.lanes.check(self.task, "rolled back")


_TURN_LOCK = b"SELECT pg_advisory_xact_lock(%s)"
_WAIT_FOR_TURN = b"SELECT pg_advisory_xact_lock_shared(%s)"


class _WriteLanes:
    """The sync's database work (writes, comparisons, shortcut logs) on one or two threads
    (`lanes`), each with a connection of its own: lane 0 uses the sync's, the other opens its
    own on first use (`connect`). With two, PostgreSQL loads one day's rows while the previous
    day's write finishes: a year's first load is otherwise bound by a single backend's CPU.

    They keep what a single writer thread gave:
    - writes (and shortcut logs) commit in the order they were queued (`_Turn`);
    - a task starts only after the earlier tasks still under way that it shares tasks
      (taskIds) or its day with have ended, so their locks never meet and a comparison sees
      what an earlier write wrote; one that may touch any task's rows or its day's other rows
      (`keys` None: a re-sync's write, a shortcut log) waits for every earlier one, so a day's
      figures never count rows another write is moving;
    - a task that fails halts every task queued after it: it does not start, or rolls back;
    - stopped (`stop`), the earliest task under way finishes and none after it commits.

    Not more than two: a lane waiting in Python for an earlier one (its start, its turn) is a
    wait PostgreSQL cannot see, and with three lanes a missed conflict could close a cycle
    through such waits, a hang instead of a reported deadlock.
    """

    def __init__(
        self,
        conn: psycopg.Connection,
        connect: Callable[[], AbstractContextManager[psycopg.Connection]] | None,
        lanes: int,
    ) -> None:
        if not 1 <= lanes <= 2:
            raise ValueError(f"write lanes: 1 or 2, not {lanes}")
        if lanes > 1 and connect is None:
            raise ValueError("a second write lane needs `connect`")
        self.pool = ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="laaffic-writer")
        self.lanes = lanes
        self.token = secrets.randbits(62)  # this sync's turn locks: token + seq
        self._connect = connect
        self._free = [conn]  # lane connections not yet claimed by a lane thread
        self._opened = ExitStack()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._seq = 0
        self._under_way: dict[int, _LaneTask] = {}  # queued or running, not ended
        self._running: set[int] = set()
        self._last_commit: _LaneTask | None = None
        self._halt_from = math.inf  # tasks from this seq on neither start nor commit
        self._failures: list[tuple[int, BaseException]] = []

    def submit(
        self,
        doing: str,
        fn: Callable[[psycopg.Connection, _Turn | None], T],
        *,
        day: date,
        keys: Keys,
        commits: bool,
    ) -> Future[T]:
        """Queue `fn(lane connection, turn)`, a task of `day` touching `keys`; `turn` (with
        `commits`, on more than one lane) orders its commit. An error is noted with what it was
        `doing` (a database's error does not say which day)."""
        with self._lock:
            task = _LaneTask(self._seq, day, keys)
            self._seq += 1
            before = [t for t in self._under_way.values() if t.conflicts(day, keys)]
            # (One lane runs its tasks one after another: in order already.)
            turn = _Turn(self, task, self._last_commit) if commits and self.lanes > 1 else None
            if commits:
                self._last_commit = task
            self._under_way[task.seq] = task

        def run() -> T:
            try:
                for earlier in before:
                    earlier.ended.wait()
                self.check(task, "not run", start=True)
                try:
                    result = fn(self._connection(), turn)
                except BaseException as exc:
                    if not isinstance(exc, WriterHalted):
                        if isinstance(exc, Exception):
                            exc.add_note(f"while {doing}")
                        with self._lock:
                            self._failures.append((task.seq, exc))
                            self._halt_from = min(self._halt_from, task.seq + 1)
                    raise
                task.ok = True
                return result
            finally:
                with self._lock:
                    self._under_way.pop(task.seq, None)
                    self._running.discard(task.seq)
                task.locked.set()
                task.ended.set()

        return self.pool.submit(run)

    def check(self, task: _LaneTask, what: str, *, start: bool = False) -> None:
        """Raise `WriterHalted` if `task` may no longer start (`start`) or commit."""
        with self._lock:
            if task.seq >= self._halt_from:
                raise WriterHalted(f"{what}: an earlier write failed or the sync was stopped")
            if start:
                self._running.add(task.seq)

    def stop(self) -> None:
        """Halt: the earliest task under way finishes if it is running; none after it starts
        or commits."""
        with self._lock:
            first = min(self._under_way or [self._seq])
            self._halt_from = min(self._halt_from, first + (first in self._running))

    def first_failure(self) -> BaseException | None:
        """The failure of the earliest task that failed (in the order queued, not in time)."""
        with self._lock:
            return (
                min(self._failures, key=lambda failure: failure[0])[1] if self._failures else None
            )

    def _connection(self) -> psycopg.Connection:
        conn: psycopg.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            with self._lock:
                conn = self._free.pop() if self._free else None
            if conn is None:
                assert self._connect is not None
                opening = self._connect()
                conn = opening.__enter__()
                with self._lock:  # (lanes may open theirs at once)
                    self._opened.push(opening)
            self._local.conn = conn
        return conn

    def shutdown(self) -> None:
        """Wait for the tasks under way (none queued starts), then close the connections the
        lanes opened. Interrupted while waiting (a second Ctrl-C), it leaves them to their
        threads: closing one still in use would wait for it, then fail on its transaction."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        self._opened.close()


def day_window(day: date) -> TimeWindow:
    """The creation window of one account-local day: 00:00:00 to 23:59:59 inclusive."""
    start = datetime.combine(day, datetime.min.time())
    return TimeWindow(start=start, end=start + timedelta(days=1, seconds=-1))


@dataclass(frozen=True)
class DaySync:
    """What syncing one day did: the API side and the warehouse side."""

    day: date
    window: TimeWindow
    fetch: FetchStats
    write: WriteResult
    seconds: float

    @property
    def partition_key(self) -> str:
        return self.day.isoformat()

    def metadata(self) -> dict[str, Any]:
        """Per-partition materialization metadata."""
        return {
            "window": str(self.window),
            "api_total": self.fetch.api_total,
            "pages": self.fetch.pages,
            "requests": self.fetch.requests,
            "retries": self.fetch.retries,
            "upstream_duplicates": self.fetch.upstream_duplicates,
            "received": self.write.received,
            "inserted": self.write.inserted,
            "updated": self.write.updated,
            "unchanged": self.write.unchanged,
            "rejected": self.write.rejected,
            "new_rejects": self.write.new_rejects,
            "open_tasks": self.write.open_tasks,
            "open_tasks_refreshed": self.write.open_before,
            "became_final": self.write.became_final,
            "duration_seconds": round(self.seconds, 3),
            "dagster/partition_row_count": self.write.partition_rows,
        }

    def summary(self) -> str:
        f, w = self.fetch, self.write
        return (
            f"{self.day}: {f.api_total} tasks ({f.pages} pages, {f.requests} requests, "
            f"{f.retries} retries) -> {w.inserted} inserted, {w.updated} updated, "
            f"{w.unchanged} unchanged, {w.rejected} rejected; {w.open_before} open refreshed, "
            f"{w.became_final} became final, {w.open_tasks} still open; {self.seconds:.2f}s"
        )


#: The days a run committed: each day's latest sync by it (a step retry syncs a day again).
_SYNCED_BY_RUN = b"""
    SELECT DISTINCT ON (window_date)
        window_date, window_start, window_end, api_total, pages, requests, retries,
        upstream_duplicates, received, inserted, updated, unchanged, rejected, new_rejects,
        open_tasks, open_before, became_final, partition_rows, started_at, finished_at
    FROM group_call_sync_log WHERE run_id = %s
    ORDER BY window_date, sync_id DESC
"""


def synced_by_run(conn: psycopg.Connection, run_id: str) -> list[tuple[DaySync, datetime]]:
    """The days run `run_id` committed, as their sync reported them, and when each committed:
    from the sync log, for a run that died before it could report them."""
    synced: list[tuple[DaySync, datetime]] = []
    for row in conn.execute(_SYNCED_BY_RUN, (run_id,)).fetchall():
        day, start, end, *counts, started_at, finished_at = row
        fetch = FetchStats(*counts[:5])
        write = WriteResult(*(count or 0 for count in counts[5:]))  # (partition_rows: NULL once)
        seconds = (finished_at - started_at).total_seconds()
        window = TimeWindow(start=start, end=end)
        synced.append((DaySync(day, window, fetch, write, seconds), finished_at))
    return synced


class _Progress:
    """Progress lines for the run's log: each day when days are slow, otherwise one line per
    `every` seconds summing the days done since (each log line is an event Dagster stores: one
    per day would cost a year's backfill several seconds)."""

    def __init__(self, log: Logger | None, total: int, every: float = 2.0) -> None:
        self.log, self.total, self.every = log, total, every
        self.done: list[DaySync] = []
        self.pending: list[DaySync] = []
        self.last = time.perf_counter()

    def add(self, synced: DaySync) -> None:
        self.done.append(synced)
        self.pending.append(synced)
        if time.perf_counter() - self.last >= self.every or len(self.done) == self.total:
            self.flush()

    def flush(self) -> None:
        if self.log is None or not self.pending:
            return
        days = self.pending
        if len(days) == 1:
            line = days[0].summary()
        else:
            line = (
                f"{days[0].day}..{days[-1].day} ({len(days)} days): "
                f"{sum(d.fetch.api_total for d in days)} tasks, "
                f"{sum(d.fetch.requests for d in days)} requests, "
                f"{sum(d.fetch.retries for d in days)} retries -> "
                f"{sum(d.write.inserted for d in days)} inserted, "
                f"{sum(d.write.updated for d in days)} updated, "
                f"{sum(d.write.unchanged for d in days)} unchanged, "
                f"{sum(d.write.rejected for d in days)} rejected, "
                f"{sum(d.write.became_final for d in days)} became final"
            )
        self.log.info(f"{line} [{len(self.done)}/{self.total} days]")
        self.pending = []
        self.last = time.perf_counter()


def sync_day(
    client: LaafficClient,
    conn: psycopg.Connection,
    day: date,
    *,
    time_zone: str,
    run_id: str | None = None,
    log: Logger | None = None,
) -> DaySync:
    """Read, normalise and write one day."""
    (result,) = sync_days(
        client, conn, [day], time_zone=time_zone, run_id=run_id, log=log, days_ahead=0
    )
    return result


def sync_days(
    client: LaafficClient,
    conn: psycopg.Connection,
    days: Iterable[date],
    *,
    time_zone: str,
    run_id: str | None = None,
    log: Logger | None = None,
    days_ahead: int = 2,
    write_lanes: int = 1,
    connect: Callable[[], AbstractContextManager[psycopg.Connection]] | None = None,
) -> Generator[DaySync, None, None]:
    """Sync days in order, each in its own transaction; yields each day once it is committed.

    Three stages overlap: the next `days_ahead` days are read from the API (their requests
    share the client's bounded pool) while this thread normalises one day and the writer lanes
    (`_WriteLanes`: `write_lanes` threads, each with a connection, `conn` and more opened with
    `connect`) write the previous ones, committing them in order. At most
    `days_ahead + write_lanes + 2` windows are in memory, however long the range. If a day
    fails, nothing after it is written: the tasks queued behind a failed one do not run or roll
    back (`WriterHalted`), so the days committed are always a prefix of the range, and each of
    them is yielded before the error (the first failure, in the order of the days) is raised.
    Likewise when the sync is stopped (KeyboardInterrupt, or Dagster's interrupt when a run is
    terminated): the earliest write under way finishes, none after it commits, the days
    committed are yielded, and the interrupt is raised again.

    A stored day is re-synced in the cheapest way that is still exact: if its pages are the
    very ones its last sync read (the client tells, from their digest, before parsing them) and
    the day still holds what that sync left (`write_unchanged_window`), it is only logged;
    otherwise its records are hashed and only those that differ from what is stored are parsed
    and written.
    """
    wanted = list(days)
    stored = stored_days(conn, wanted, time_zone)  # re-syncs compare with what is stored
    progress = _Progress(log, len(wanted))
    reads: deque[tuple[date, datetime, float, Future[WindowResult]]] = deque()
    writes: deque[Future[DaySync]] = deque()
    upcoming = iter(wanted)
    lanes = _WriteLanes(conn, connect, write_lanes)
    fetchers = ThreadPoolExecutor(max_workers=days_ahead + 1, thread_name_prefix="laaffic-day")

    def read_next() -> None:
        day = next(upcoming, None)
        if day is not None:
            future = fetchers.submit(
                client.fetch_window, day_window(day), expected_digest=stored.get(day)
            )
            reads.append((day, datetime.now(UTC), time.perf_counter(), future))

    def written() -> DaySync:
        """The oldest queued write's day, once committed. It leaves the queue only then: a day
        whose wait was interrupted is still there to be reported. Its progress line is logged
        once it has been yielded (`progress.add`): an interrupt landing in the log call (with
        Dagster, an event written to the instance) must not lose a day already committed."""
        synced = writes[0].result()
        writes.popleft()
        return synced

    error: BaseException | None = None
    finished = False  # every day read and written: no read of this sync is left
    #: A day being only logged (see below), while the sync waits for it.
    being_logged: Future[DaySync | None] | None = None
    try:
        try:
            for _ in range(days_ahead + 1):
                read_next()
            while reads:
                day, started, clock, read = reads.popleft()
                fetched = read.result()
                read_next()
                stored_before = day in stored

                def log_if_unchanged(
                    conn: psycopg.Connection,
                    turn: CommitTurn | None,
                    day: date = day,
                    fetched: WindowResult = fetched,
                    started: datetime = started,
                    clock: float = clock,
                ) -> DaySync | None:
                    result = write_unchanged_window(
                        conn,
                        window_date=day,
                        window=fetched.window,
                        time_zone=time_zone,
                        stats=fetched.stats,
                        started_at=started,
                        run_id=run_id,
                        window_digest=fetched.digest,
                        turn=turn,
                    )
                    if result is None:
                        return None
                    return DaySync(
                        day, fetched.window, fetched.stats, result, time.perf_counter() - clock
                    )

                # A day whose pages are the very ones its last sync read is only logged. Kept
                # while waited for: stopped meanwhile, the log may still commit, and is reported.
                shortcut = None
                if stored_before:
                    being_logged = lanes.submit(
                        f"writing {day} to the warehouse",
                        log_if_unchanged,
                        day=day,
                        keys=None,  # (it counts the day's rows: after every earlier write)
                        commits=True,
                    )
                    shortcut = being_logged.result()
                    being_logged = None
                if shortcut is None and fetched.unchanged:
                    # Its rows changed in the warehouse since (deleted, say): read it in full.
                    # Both reads' requests are counted (the log's `requests` is every request
                    # made).
                    again = client.fetch_window(fetched.window)
                    again.stats.add(requests=fetched.stats.requests, retries=fetched.stats.retries)
                    fetched = again
                if shortcut is not None:
                    logged: Future[DaySync] = Future()
                    logged.set_result(shortcut)
                    writes.append(logged)
                else:
                    records, payloads, hashes, skipped, compared_with = _changed_records(
                        lanes, day, time_zone, fetched.records, compare=stored_before
                    )
                    normalised = normalise_records(
                        records, log=log.warning if log else None, payloads=payloads, hashes=hashes
                    )

                    def write(
                        conn: psycopg.Connection,
                        turn: CommitTurn | None,
                        day: date = day,
                        fetched: WindowResult = fetched,
                        normalised: NormalisedWindow = normalised,
                        started: datetime = started,
                        clock: float = clock,
                        skipped: int = skipped,
                        compared_with: int | None = compared_with,
                        first_load: bool = not stored_before,
                    ) -> DaySync:
                        result = write_window(
                            conn,
                            window_date=day,
                            window=fetched.window,
                            time_zone=time_zone,
                            normalised=normalised,
                            stats=fetched.stats,
                            started_at=started,
                            run_id=run_id,
                            skipped_unchanged=skipped,
                            compared_with=compared_with,
                            first_load=first_load,
                            window_digest=fetched.digest,
                            turn=turn,
                        )
                        return DaySync(
                            day, fetched.window, fetched.stats, result, time.perf_counter() - clock
                        )

                    writes.append(
                        lanes.submit(
                            f"writing {day} to the warehouse",
                            write,
                            day=day,
                            keys=None if stored_before else _first_load_keys(normalised, day),
                            commits=True,
                        )
                    )
                while writes and (writes[0].done() or len(writes) > write_lanes):
                    yield (synced := written())
                    progress.add(synced)
            while writes:
                yield (synced := written())
                progress.add(synced)
            finished = True
        except GeneratorExit:  # the caller stopped iterating: nothing more may be yielded
            raise
        except Exception as exc:  # a read, a normalisation or a write failed
            error = exc
        except BaseException as exc:  # stopped: Ctrl-C, or Dagster's interrupt of a terminated run
            error = exc
            lanes.stop()  # the earliest write under way finishes; none after it commits
        if error is not None:
            # The days handed to the lanes before the first failed write commit: report them
            # (the writes behind a failed one did not run, or rolled back).
            while writes and writes[0].exception() is None:
                yield (synced := written())
                progress.add(synced)
            # A day being only logged was queued after those: reported if it committed.
            if (
                being_logged is not None
                and not writes
                and being_logged.exception() is None
                and (only_logged := being_logged.result())
            ):
                yield only_logged
                progress.add(only_logged)
            failure = lanes.first_failure()
            if isinstance(error, Exception) and failure is not None:
                raise failure
            raise error
    finally:
        lanes.stop()  # leaving (a failure, or the caller stopped): commit no further write
        progress.flush()
        for *_, read in reads:
            read.cancel()
        # Days still being read are not wanted: stop their requests and back-offs at once
        # (in an outage, their retries would take minutes to run out). Not only those read
        # ahead: the day waited for (a one-day run's only one) has left `reads` already.
        with client.reads_stopped() if not finished else nullcontext():
            try:
                lanes.shutdown()
            finally:
                fetchers.shutdown(wait=True, cancel_futures=True)


def _first_load_keys(normalised: NormalisedWindow, day: date) -> Keys:
    """The tasks the first load of `day` touches: its rows (and fingerprints, rejects), by
    taskId. None (it runs alone) when it keeps a record without a usable taskId as a reject,
    keyed by its raw text alone, or stores a row on another day (a record the API listed
    outside its window), whose figures it would change. (A re-sync's write may move stored
    tasks between days: the caller runs it alone.)"""
    if normalised.off_day(day) or any(reject.task_id is None for reject in normalised.rejects):
        return None
    return frozenset(normalised.table["task_id"].to_pylist())


def _changed_records(
    lanes: _WriteLanes,
    day: date,
    time_zone: str,
    records: list[dict[str, Any]],
    *,
    compare: bool,
) -> tuple[list[dict[str, Any]], list[bytes], list[bytes], int, int | None]:
    """The records to parse and write, their payloads and hashes, how many were skipped, and
    what they were compared with (for `write_window`): with `compare`, those whose hash equals
    the one stored for their task are left out (the lookup runs on a writer lane, after any
    earlier write of the same tasks still under way)."""
    payloads = raw_payloads(records)
    hashes = fingerprints(payloads)
    if not compare:
        return records, payloads, hashes, 0, None
    ids = frozenset(t for r in records if type(t := r.get("taskId")) is int)
    same, compared_with = lanes.submit(
        f"comparing {day} with the warehouse",
        lambda conn, _turn: unchanged_records(conn, day, time_zone, records, hashes),
        day=day,
        keys=ids,
        commits=False,
    ).result()
    changed = [i for i, keep in enumerate(same) if not keep]
    skipped = len(records) - len(changed)
    if skipped:
        records = [records[i] for i in changed]
        payloads = [payloads[i] for i in changed]
        hashes = [hashes[i] for i in changed]
    return records, payloads, hashes, skipped, compared_with

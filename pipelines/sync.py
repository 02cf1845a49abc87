"""One account-local day, end to end: read its window from the API, normalise, write atomically.

Plain functions, no Dagster: the asset wraps them, tests and benchmarks call them directly.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg

from pipelines.laaffic.client import FetchStats, LaafficClient, Logger, WindowResult
from pipelines.laaffic.models import TimeWindow
from pipelines.warehouse.normalise import fingerprints, normalise_records, raw_payloads
from pipelines.warehouse.writer import WriteResult, unchanged_records, write_window


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


def _write_day(
    conn: psycopg.Connection,
    fetched: WindowResult,
    day: date,
    *,
    started: datetime,
    clock: float,
    time_zone: str,
    run_id: str | None,
    log: Logger | None,
) -> DaySync:
    # A re-sync mostly re-reads what is stored: skip parsing and writing identical records.
    payloads = raw_payloads(fetched.records)
    same = unchanged_records(conn, day, time_zone, fetched.records, fingerprints(payloads))
    changed = [i for i, keep in enumerate(same) if not keep]
    normalised = normalise_records(
        [fetched.records[i] for i in changed],
        log=log.warning if log else None,
        payloads=[payloads[i] for i in changed],
    )
    written = write_window(
        conn,
        window_date=day,
        window=fetched.window,
        time_zone=time_zone,
        normalised=normalised,
        stats=fetched.stats,
        started_at=started,
        run_id=run_id,
        skipped_unchanged=len(fetched.records) - len(changed),
    )
    result = DaySync(day, fetched.window, fetched.stats, written, time.perf_counter() - clock)
    if log is not None:
        log.info(result.summary())
    return result


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
) -> Iterator[DaySync]:
    """Sync days in order, each committed on its own before the next; yields as each commits.

    While one day is normalised and written, the next `days_ahead` days are already being read
    (their requests share the client's bounded pool), so the API's latency overlaps our work.
    At most `days_ahead + 1` windows are held in memory, however long the range.
    """
    pending: deque[tuple[date, datetime, float, Future[WindowResult]]] = deque()
    upcoming = iter(days)
    with ThreadPoolExecutor(max_workers=days_ahead + 1, thread_name_prefix="laaffic-day") as pool:

        def read_next() -> None:
            day = next(upcoming, None)
            if day is not None:
                started = datetime.now(UTC)
                future = pool.submit(client.fetch_window, day_window(day))
                pending.append((day, started, time.perf_counter(), future))

        try:
            for _ in range(days_ahead + 1):
                read_next()
            while pending:
                day, started, clock, future = pending.popleft()
                fetched = future.result()
                read_next()
                yield _write_day(
                    conn,
                    fetched,
                    day,
                    started=started,
                    clock=clock,
                    time_zone=time_zone,
                    run_id=run_id,
                    log=log,
                )
        finally:
            for *_, future in pending:
                future.cancel()

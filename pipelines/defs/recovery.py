"""A crashed run must not hold the API pool forever.

Dagster frees a step's pool slot when the step ends. A run worker that dies without ending it
(SIGKILL, out of memory, a lost machine) leaves its run STARTED and the slot of the pool
`laaffic_api` claimed, and with the pool's limit of 1 every later run of the asset waits for
ever ("Step blocked by limit for pool laaffic_api"): the local run launcher has no worker health
check that would notice, and a run started from the CLI has no launcher at all.

So each run records where its worker runs (host, pid, the process's start time) in the run tag
`laaffic/worker`, and before its step claims the slot it releases the slots of runs whose worker
is provably gone: on this host, and no process with that pid and start time exists. Such a run is
marked failed, saying why; the days it committed before it died (from the sync log) are first
recorded as materialized by it, each with its figures: otherwise they would show as failed,
though stored, until synced again. A run on another host, or one that did not record its worker,
is left alone (its slot can be freed with `dagster run delete <run_id>`).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psutil
from dagster import AssetMaterialization, DagsterEventType, DagsterInstance
from dagster._core.events import DagsterEvent, StepMaterializationData

#: The materializations a run committed (each with the time it committed) for `run_id`.
Committed = Callable[[str], Sequence[tuple[AssetMaterialization, float]]]

WORKER_TAG = "laaffic/worker"


@dataclass(frozen=True)
class Worker:
    host: str
    pid: int
    started: float

    def tag(self) -> str:
        return f"{self.host}|{self.pid}|{self.started:.2f}"

    @classmethod
    def from_tag(cls, text: str) -> Worker | None:
        try:
            host, pid, started = text.rsplit("|", 2)
            return cls(host, int(pid), float(started))
        except ValueError:
            return None

    @classmethod
    def this_process(cls) -> Worker:
        pid = os.getpid()
        return cls(socket.gethostname(), pid, psutil.Process(pid).create_time())

    def is_gone(self) -> bool:
        """True only when this host can tell that the process no longer exists."""
        if self.host != socket.gethostname():
            return False
        try:
            started = psutil.Process(self.pid).create_time()
        except psutil.NoSuchProcess:
            return True
        except psutil.Error:
            return False  # e.g. access denied: it exists
        return f"{started:.2f}" != f"{self.started:.2f}"  # the pid now belongs to another process


def release_crashed_runs(
    instance: DagsterInstance,
    run_id: str,
    pool: str,
    log: Any,
    committed: Committed | None = None,
) -> list[str]:
    """Tag run `run_id` with its worker; free `pool` slots held by runs whose worker is gone
    (marking those runs failed, after recording as theirs what `committed` says they committed).
    Returns the runs released. Never raises: at worst the step waits for its slot as it would
    have anyway."""
    released: list[str] = []
    try:
        instance.add_run_tags(run_id, {WORKER_TAG: Worker.this_process().tag()})
        storage = instance.event_log_storage
        if not storage.supports_global_concurrency_limits:
            return released
        holders = {slot.run_id for slot in storage.get_concurrency_info(pool).claimed_slots}
        for holder in sorted(holders - {run_id}):
            run = instance.get_run_by_id(holder)
            worker = Worker.from_tag(run.tags.get(WORKER_TAG, "")) if run else None
            if run is None or worker is None or not worker.is_gone():
                if log is not None and run is not None and worker is None:
                    log.warning(
                        f"run {holder} holds the pool {pool!r} but did not record its worker; "
                        f"if it is no longer running, free the slot: dagster run delete {holder}"
                    )
                continue
            reason = (
                f"its run worker (pid {worker.pid} on {worker.host}) is gone while it held the "
                f"pool {pool!r}; released by run {run_id}"
            )
            if committed is not None:
                reason += _record_committed(instance, run, committed, log)
            if not run.is_finished:
                instance.report_run_failed(run, f"Run failed: {reason}")
            storage.free_concurrency_slots_for_run(holder)
            released.append(holder)
            if log is not None:
                log.warning(f"released the {pool!r} slot of run {holder}: {reason}")
    except Exception as exc:  # recovery must never fail the run it runs in
        if log is not None:
            log.warning(f"could not check for crashed runs holding the pool {pool!r}: {exc}")
    return released


def _record_committed(instance: DagsterInstance, run: Any, committed: Committed, log: Any) -> str:
    """Record what dead `run` committed, and did not record itself, as its materializations; say
    which. A failure to look is logged: the slot is released all the same."""
    try:
        recorded = {
            record.event_log_entry.asset_materialization.partition
            for record in instance.get_records_for_run(
                run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION
            ).records
            if record.event_log_entry.asset_materialization is not None
        }
        kept: list[str] = []
        for materialization, committed_at in committed(run.run_id):
            kept.append(str(materialization.partition))
            if materialization.partition in recorded:
                continue
            event = DagsterEvent(
                event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value,
                job_name=run.job_name,
                event_specific_data=StepMaterializationData(materialization),
                message=f"committed by run {run.run_id} before its worker was gone",
            )
            instance.report_dagster_event(event, run_id=run.run_id, timestamp=committed_at)
    except Exception as exc:
        if log is not None:
            log.warning(f"could not record the days run {run.run_id} committed: {exc}")
        return ""
    if not kept:  # (or it wrote to another warehouse than this run's: say nothing)
        return ""
    return f"; {len(kept)} day(s) it had committed are recorded as materialized ({', '.join(kept)})"

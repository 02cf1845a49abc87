"""`python -m pipelines demo | dev | simulator`: the whole thing locally, nothing configured.

Whatever is not configured is provided: no LAAFFIC credentials → the bundled simulator on
127.0.0.1; no WAREHOUSE_URL → the embedded PostgreSQL. What this command starts, it stops. The
simulator's made-up tasks go into a configured WAREHOUSE_URL only with --simulated-into-warehouse.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def local_environment(advance_every_seconds: float | None = None) -> Iterator[dict[str, str]]:
    """Fill in the environment with local stand-ins for what is not configured."""
    from pipelines.laaffic.simulator import Simulator, SimulatorConfig, SimulatorServer
    from pipelines.warehouse.embedded import (
        EMBEDDED_DATABASE,
        SIMULATOR_DATABASE,
        embedded_pgdata,
        embedded_warehouse,
    )
    from pipelines.warehouse.urls import redact

    with ExitStack() as stack:
        provided: dict[str, str] = {}
        simulated = not (os.environ.get("LAAFFIC_API_KEY") and os.environ.get("LAAFFIC_API_SECRET"))
        if simulated:
            config = SimulatorConfig()
            server = stack.enter_context(
                SimulatorServer(Simulator(config), advance_every_seconds=advance_every_seconds)
            )
            provided.update(
                LAAFFIC_BASE_URL=server.url,
                LAAFFIC_API_KEY=config.api_key,
                LAAFFIC_API_SECRET=config.api_secret,
            )
            print(f"LAAFFIC API: local simulator at {server.url}")
        else:
            print(f"LAAFFIC API: {os.environ.get('LAAFFIC_BASE_URL', 'https://api.laaffic.com')}")
        if not os.environ.get("WAREHOUSE_URL"):
            # Made-up tasks in a database of their own: the real API's runs, which use the
            # embedded `laaffic` when WAREHOUSE_URL is unset, never see them (nor they those).
            database = SIMULATOR_DATABASE if simulated else EMBEDDED_DATABASE
            provided["WAREHOUSE_URL"] = stack.enter_context(embedded_warehouse(database=database))
            print(f"warehouse: embedded PostgreSQL ({embedded_pgdata()}, database {database})")
        else:
            print(f"warehouse: {redact(os.environ['WAREHOUSE_URL'])}")
        provided.setdefault("DAGSTER_HOME", os.environ.get("DAGSTER_HOME") or "")
        if not provided["DAGSTER_HOME"]:
            provided["DAGSTER_HOME"] = str(local_dagster_home(simulated))
        os.environ.update(provided)
        yield provided


def local_dagster_home(simulated: bool) -> Path:
    """The local Dagster instance: `.dagster_home/` (where the README's commands for the real API
    keep their runs too), or for the simulator's runs `.dagster_home/simulator/`, so that its
    made-up days never show as materializations of the real asset. Both use dagster.yaml."""
    home = PROJECT_ROOT / ".dagster_home"
    if simulated:
        home /= "simulator"
        home.mkdir(exist_ok=True)
        with contextlib.suppress(FileExistsError):  # (linked already, or by another command)
            (home / "dagster.yaml").symlink_to(Path("..", "..", "dagster.yaml"))
    return home


def simulated_into_warehouse_refusal() -> str | None:
    """Why the simulator must not write into WAREHOUSE_URL, or None. Without credentials the
    simulator stands in for the API; with a WAREHOUSE_URL exported for a real warehouse, its
    made-up tasks would be upserted there (overwriting real rows that share a taskId)."""
    from pipelines.warehouse.urls import redact

    url = os.environ.get("WAREHOUSE_URL")
    if not url or (os.environ.get("LAAFFIC_API_KEY") and os.environ.get("LAAFFIC_API_SECRET")):
        return None
    return (
        f"WAREHOUSE_URL is set ({redact(url)}) but LAAFFIC_API_KEY / LAAFFIC_API_SECRET are not: "
        "the local simulator would write its made-up tasks into that warehouse. Unset "
        "WAREHOUSE_URL to use the embedded PostgreSQL, set the credentials to read the real "
        "API, or pass --simulated-into-warehouse if that database is a scratch one."
    )


def last_days(timezone: str, count: int) -> list[date]:
    """The `count` account-local days that have ended, oldest first."""
    today = datetime.now(ZoneInfo(timezone)).date()
    return [today - timedelta(days=n) for n in range(count, 0, -1)]


def demo(days: int) -> int:
    with local_environment():
        from dagster import DagsterInstance

        from pipelines.definitions import defs
        from pipelines.defs.assets import SETTINGS
        from pipelines.warehouse.writer import connect

        wanted = last_days(SETTINGS.timezone, days)
        job = defs.resolve_job_def("daily_group_call_tasks_sync")
        print(f"materializing {wanted[0]} .. {wanted[-1]} ({SETTINGS.timezone}) in one Dagster run")
        with DagsterInstance.get() as instance:
            result = job.execute_in_process(
                run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
                instance=instance,
                tags={
                    "dagster/asset_partition_range_start": wanted[0].isoformat(),
                    "dagster/asset_partition_range_end": wanted[-1].isoformat(),
                },
                raise_on_error=False,
            )
        print(f"run {result.run_id}: {'success' if result.success else 'FAILED'}")
        for evaluation in result.get_asset_check_evaluations():
            outcome = "passed" if evaluation.passed else f"FAILED ({evaluation.severity.value})"
            print(f"  check {evaluation.check_name}: {outcome}")
        if not result.success:
            return 1
        with connect(os.environ["WAREHOUSE_URL"]) as conn:
            rows = conn.execute(
                """
                SELECT created_date, currency, tasks, calls, answered, total_spend
                FROM group_call_daily_summary
                WHERE created_date BETWEEN %s AND %s ORDER BY created_date, currency
                """,
                (wanted[0], wanted[-1]),
            ).fetchall()
        print_summary(rows)
        return 0


def print_summary(rows: list[tuple[date, str, int, int, int, Decimal]]) -> None:
    per_day: dict[date, list[int]] = defaultdict(lambda: [0, 0, 0])
    spend: dict[date, list[str]] = defaultdict(list)
    for day, currency, tasks, calls, answered, total in rows:
        per_day[day][0] += tasks
        per_day[day][1] += calls or 0
        per_day[day][2] += answered or 0
        spend[day].append(f"{total} {currency}")
    print(f"\n{'day':<12}{'tasks':>7}{'calls':>9}{'answer rate':>13}  spend")
    for day, (tasks, calls, answered) in sorted(per_day.items()):
        rate = f"{100 * answered / calls:.2f}%" if calls else "-"
        print(f"{day.isoformat():<12}{tasks:>7}{calls:>9}{rate:>13}  {', '.join(spend[day])}")


def dev(port: int) -> int:
    if _port_in_use(port):
        # `dagster dev` would carry on without its UI (the daemon, sensors and schedule running,
        # the URL printed below showing whatever else listens there): refuse before starting.
        print(
            f"cannot serve the Dagster UI on 127.0.0.1:{port}: the port is in use (another "
            "`python -m pipelines dev`?). Stop what uses it, or choose another port: "
            "python -m pipelines dev --port N",
            file=sys.stderr,
        )
        return 2
    with local_environment(advance_every_seconds=120) as provided:
        if "LAAFFIC_API_KEY" in provided:
            # On the simulator in-progress tasks move on every 2 minutes and the open-tasks
            # sensor looks every minute, so its refreshes show up in the UI within minutes. The
            # real API's (with credentials) are re-read hourly, as in production.
            os.environ.setdefault("LAAFFIC_OPEN_TASKS_INTERVAL_SECONDS", "60")
        print(f"Dagster UI on http://127.0.0.1:{port} (Ctrl-C stops it and what this started)")
        command = [
            sys.executable, "-m", "dagster", "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"),
            "-h", "127.0.0.1", "-p", str(port),
        ]  # fmt: skip
        # Its own process group: on the way out it and everything it started (webserver,
        # daemon, code servers, run workers) are stopped together, before the simulator and
        # the embedded PostgreSQL they use.
        process = subprocess.Popen(
            command, cwd=PROJECT_ROOT, env={**os.environ, **provided}, start_new_session=True
        )
        # The first Ctrl-C or SIGTERM stops the group (below); one arriving after it kills the
        # group at once, from the moment the first one is received, for the rest of the command:
        # the two often come a moment apart (a second Ctrl-C; `timeout` signals the process
        # group while `uv run` forwards the same signal), and a second one interrupting the
        # stopping left the group running.
        stopping = False

        def on_stop_signal(signum: int, frame: object) -> None:
            nonlocal stopping
            if stopping:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                return
            stopping = True
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGINT, on_stop_signal)
        signal.signal(signal.SIGTERM, on_stop_signal)
        try:
            code = process.wait()
        except (KeyboardInterrupt, SystemExit):
            return _stop_group(process)
        # It exited by itself. Killed outright (the OOM killer, say), it stopped nothing it had
        # started: none of that may outlive the simulator and the PostgreSQL it uses.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        return code


def _port_in_use(port: int) -> bool:
    """Whether something listens on 127.0.0.1:`port` (bound as the webserver binds it)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _stop_group(process: subprocess.Popen[bytes]) -> int:
    """Interrupt a process group as Ctrl-C would; kill what is left after 20 s. A further Ctrl-C
    or SIGTERM meanwhile kills the group at once (`dev`'s handler, which stays for the rest of
    the command, so stopping the simulator and the embedded PostgreSQL is not cut short either):
    raised as an exception, it left `dagster dev` and everything it started running."""
    with contextlib.suppress(ProcessLookupError):  # (killed already by a further signal)
        os.killpg(process.pid, signal.SIGINT)
    try:
        code = process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        code = -signal.SIGKILL
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # stragglers: code servers, run workers
    return code


def _exit_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so what this command started (the simulator, the embedded
    PostgreSQL, `dagster dev`) is stopped too."""
    raise SystemExit(128 + signum)


def _tcp_port(value: str) -> int:
    port = int(value) if value.isdigit() else -1
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is 1..65535, got {value!r}")
    return port


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    # Started with SIGINT ignored (a background job of a shell without job control: a script's
    # `cmd &`), Python raises no KeyboardInterrupt, so Ctrl-C stopped nothing, and `dagster dev`
    # inherited the ignored SIGINT (and maps SIGTERM to it): it could only be SIGKILLed, its
    # runs with it. Ctrl-C stops this command and what it started, whatever it inherited.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = argparse.ArgumentParser(prog="python -m pipelines", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run_demo = commands.add_parser("demo", help="sync the last days through Dagster and summarise")
    run_demo.add_argument("--days", type=int, default=7)
    run_dev = commands.add_parser("dev", help="the Dagster UI with schedule and sensors on")
    run_dev.add_argument("--port", type=_tcp_port, default=3000)
    commands.add_parser("simulator", help="serve the LAAFFIC API simulator", add_help=False)
    for command in (run_demo, run_dev):
        command.add_argument(
            "--simulated-into-warehouse",
            action="store_true",
            help="without credentials, let the simulator's tasks go into WAREHOUSE_URL",
        )
    args, rest = parser.parse_known_args(argv)
    if args.command in ("demo", "dev") and not args.simulated_into_warehouse:
        refusal = simulated_into_warehouse_refusal()
        if refusal:
            print(refusal, file=sys.stderr)
            return 2
    if args.command == "demo":
        return demo(args.days)
    if args.command == "dev":
        return dev(args.port)
    from pipelines.laaffic.simulator import main as simulator_main

    simulator_main(rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())

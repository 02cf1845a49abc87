"""`python -m pipelines dev`: what it does when it cannot serve, and what it leaves behind when
it is stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from pipelines.laaffic.simulator import SimulatorServer
from pipelines.warehouse.embedded import embedded_postgres_running
from tests.defs.helpers import (
    SIM_KEY,
    SIM_SECRET,
    clean_env,
    free_port,
    make_dagster_home,
    run_python,
)
from tests.reliability.helpers import Process


@pytest.fixture
def pgdata(embedded_pgdata: Path) -> Path:
    """Where the command's embedded PostgreSQL keeps its data (see `embedded_pgdata`)."""
    return embedded_pgdata


def _dev(tmp_path: Path, pgdata: Path, port: int) -> Process:
    env = clean_env(
        DAGSTER_HOME=str(make_dagster_home(tmp_path / "home")),
        LAAFFIC_EMBEDDED_PGDATA=str(pgdata),
    )
    return Process(
        [sys.executable, "-m", "pipelines", "dev", "--port", str(port)], env, tmp_path / "dev.log"
    )


def _serving(process: Process, port: int) -> psutil.Process:
    """Wait until the command's Dagster UI answers on `port`; its `dagster dev` process."""
    deadline = time.monotonic() + 180
    while True:
        assert process.popen.poll() is None, process.output()[-3000:]
        assert time.monotonic() < deadline, process.output()[-3000:]
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"http://127.0.0.1:{port}/server_info", timeout=2).ok:
                break
        time.sleep(0.25)
    (child,) = psutil.Process(process.pid).children()
    assert "dagster" in child.cmdline()
    return child


def _session(leader: int) -> list[psutil.Process]:
    """The live processes of the session `leader` started (dagster dev runs in its own)."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getsid(process.pid) == leader and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
    return found


def _assert_nothing_left(dagster_dev: int, pgdata: Path) -> None:
    """Nothing of `dagster dev`'s session, and not the embedded PostgreSQL, still runs."""
    left = [" ".join(p.cmdline()[:4]) for p in _session(dagster_dev)]
    assert left == [], f"left running: {left}"
    assert not embedded_postgres_running(pgdata)


def _kill_session(leader: int | None) -> None:
    if leader is not None:
        for process in _session(leader):
            with contextlib.suppress(psutil.Error):
                process.kill()


@pytest.mark.timeout(240)
def test_a_second_stop_signal_still_stops_everything_dev_started(
    tmp_path: Path, pgdata: Path
) -> None:
    """A service manager (or `timeout`, or `uv run` forwarding the signal it got itself) sends
    SIGTERM more than once, and an impatient user presses Ctrl-C twice. The second signal used to
    interrupt the shutdown of `dagster dev`: the command exited, stopping the simulator and the
    embedded PostgreSQL, and left the webserver, daemon and code servers running against them."""
    port = free_port()
    process = _dev(tmp_path, pgdata, port)
    dagster_dev: int | None = None
    try:
        dagster_dev = _serving(process, port).pid
        assert len(_session(dagster_dev)) >= 4  # dagster dev, webserver, daemon, code server

        os.kill(process.pid, signal.SIGTERM)
        time.sleep(0.2)
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=60)

        # By the time the command has exited, nothing it started is left: not a server still
        # shutting down, and not one that will never stop.
        _assert_nothing_left(dagster_dev, pgdata)
    finally:
        process.stop(signal.SIGINT, grace=30)
        _kill_session(dagster_dev)


@pytest.mark.timeout(120)
def test_a_busy_ui_port_is_refused_at_once(tmp_path: Path, pgdata: Path) -> None:
    """With the port taken (another `dev`, say), `dagster dev` carried on without its UI: the
    command had printed the URL, which showed whatever else listens there, and kept the daemon,
    the simulator and the embedded PostgreSQL running. It now says so and starts nothing."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        process = _dev(tmp_path, pgdata, port)
        try:
            code = process.wait(timeout=45)
            output = process.output()
            assert code != 0, output
            assert f"127.0.0.1:{port}" in output and "in use" in output, output
            assert "--port" in output, output
            assert not pgdata.exists(), "the embedded PostgreSQL was started anyway"
        finally:
            children: list[psutil.Process] = []
            with contextlib.suppress(psutil.Error):
                children = psutil.Process(process.pid).children()
            process.stop(signal.SIGINT, grace=30)
            for child in children:
                _kill_session(child.pid)


@pytest.mark.timeout(240)
def test_when_dagster_dev_dies_what_it_started_does_not_outlive_the_command(
    tmp_path: Path, pgdata: Path
) -> None:
    """`dagster dev` killed outright (the OOM killer, say) cannot stop its webserver, daemon and
    code servers. The command returned and stopped the simulator and the embedded PostgreSQL,
    leaving those running against nothing (the UI still on its port, the daemon's sensors
    failing every minute)."""
    port = free_port()
    process = _dev(tmp_path, pgdata, port)
    dagster_dev: int | None = None
    try:
        child = _serving(process, port)
        dagster_dev = child.pid
        child.kill()
        assert process.wait(timeout=60) != 0

        _assert_nothing_left(dagster_dev, pgdata)
    finally:
        process.stop(signal.SIGINT, grace=30)
        _kill_session(dagster_dev)


#: Stands in for `python -m pipelines dev` with `dagster dev` replaced by a process group of two
#: sleepers (its leader prints its pid), nothing else started, and the second stop signal sent
#: at the earliest moment it can arrive: just after the first one has interrupted the command,
#: before it has begun stopping the group (as `timeout` signalling the process group while `uv
#: run` forwards the same signal, a moment apart).
_SECOND_SIGNAL_EARLY = """
import contextlib, os, signal, subprocess, sys
import pipelines.__main__ as command

@contextlib.contextmanager
def nothing_provided(advance_every_seconds=None):
    yield {}

SLEEPERS = (
    "import subprocess, sys, time; "
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
    "print('ready', flush=True); time.sleep(600)"
)
popen = subprocess.Popen

def dagster_dev(args, **kwargs):
    process = popen([sys.executable, "-c", SLEEPERS], **kwargs)
    print(process.pid, flush=True)
    return process

stop_group = command._stop_group

def second_signal_now(process):
    os.kill(os.getpid(), signal.SIGTERM)
    return stop_group(process)

command.local_environment = nothing_provided
command._port_in_use = lambda port: False
command.subprocess.Popen = dagster_dev
command._stop_group = second_signal_now
sys.exit(command.main(["dev"]))
"""


@pytest.mark.timeout(120)
def test_a_second_stop_signal_arriving_at_once_still_stops_dagster_dev(tmp_path: Path) -> None:
    """The second signal may come before the command has begun stopping `dagster dev`'s group
    (the handlers that kill it were installed only then): it interrupted the command there, which
    exited leaving the whole group running."""
    import subprocess

    process = subprocess.Popen(
        [sys.executable, "-c", _SECOND_SIGNAL_EARLY],
        cwd=Path(__file__).resolve().parents[1],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    leader: int | None = None
    try:
        assert process.stdout is not None
        lines = iter(process.stdout.readline, "")
        assert next(lines).startswith("Dagster UI on")
        leader = int(next(lines))
        assert next(lines).strip() == "ready"
        deadline = time.monotonic() + 30
        while len(_session(leader)) < 2:  # the leader and its child
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=60)  # (not its output: what is left running holds the pipe)
        left = [" ".join(p.cmdline()[:3]) for p in _session(leader)]
        assert left == [], f"left running: {left}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        _kill_session(leader)


@pytest.mark.parametrize("port", ["70000", "0", "http"])
def test_a_port_that_cannot_be_is_refused_naming_it(port: str) -> None:
    result = run_python(["-m", "pipelines", "dev", "--port", port], clean_env(), timeout=60)
    assert result.returncode == 2, result.stderr
    assert f"a TCP port is 1..65535, got '{port}'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.timeout(240)
def test_ctrl_c_stops_dev_gracefully_when_it_was_started_with_sigint_ignored(
    tmp_path: Path, pgdata: Path
) -> None:
    """A shell without job control (a script's `cmd &`, a CI step run in the background) starts
    its background commands with SIGINT ignored, and Python then installs no KeyboardInterrupt.
    The command inherited that and so did `dagster dev`, which maps SIGTERM to whatever SIGINT
    does: Ctrl-C (SIGINT to the group) did nothing at all, and a SIGTERM stopped `dagster dev`
    only by SIGKILL after 20 s, its webserver, daemon and any run worker killed mid-work."""
    port = free_port()
    ignored = signal.signal(signal.SIGINT, signal.SIG_IGN)  # what the child inherits
    try:
        process = _dev(tmp_path, pgdata, port)
    finally:
        signal.signal(signal.SIGINT, ignored)
    dagster_dev: int | None = None
    try:
        dagster_dev = _serving(process, port).pid
        process.signal_group(signal.SIGINT)  # Ctrl-C
        # Exit 0: `dagster dev` stopped on the interrupt (killed after 20 s, the command would
        # return its -SIGKILL).
        assert process.wait(timeout=60) == 0, process.output()[-3000:]
        assert "Shutting down Dagster services" in process.output(), process.output()[-3000:]
        _assert_nothing_left(dagster_dev, pgdata)
    finally:
        process.stop(signal.SIGINT, grace=30)
        _kill_session(dagster_dev)


#: `python -m pipelines dev ARGS` with `dagster dev` replaced by a process that exits at once,
#: printing the open-tasks sensor's interval in the environment `dagster dev` would have got.
_INTERVAL_GIVEN_TO_DAGSTER_DEV = """
import subprocess, sys
import pipelines.__main__ as command

popen = subprocess.Popen

def dagster_dev(args, env, **kwargs):
    print("interval:", env.get("LAAFFIC_OPEN_TASKS_INTERVAL_SECONDS", "unset"), flush=True)
    return popen([sys.executable, "-c", "pass"], env=env, **kwargs)

command._port_in_use = lambda port: False
command.subprocess.Popen = dagster_dev
sys.exit(command.main(sys.argv[1:]))
"""


@pytest.mark.timeout(120)
def test_dev_follows_open_tasks_every_minute_only_on_the_simulator(
    simulator: SimulatorServer, database_url: str, tmp_path: Path
) -> None:
    """Locally the open-tasks sensor looks every minute, since the simulator moves tasks on every
    2 minutes. With credentials `dev` reads the real API, and it still set that: every day with
    open tasks was re-read every minute instead of hourly (README, and the API's undocumented
    rate limits)."""
    home = str(make_dagster_home(tmp_path / "home"))
    real = clean_env(
        DAGSTER_HOME=home,
        WAREHOUSE_URL=database_url,
        LAAFFIC_BASE_URL=simulator.url,
        LAAFFIC_API_KEY=SIM_KEY,
        LAAFFIC_API_SECRET=SIM_SECRET,
    )
    result = run_python(["-c", _INTERVAL_GIVEN_TO_DAGSTER_DEV, "dev"], real, timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "interval: unset" in result.stdout, result.stdout  # the default: hourly

    simulated = clean_env(DAGSTER_HOME=home, WAREHOUSE_URL=database_url)
    args = ["-c", _INTERVAL_GIVEN_TO_DAGSTER_DEV, "dev", "--simulated-into-warehouse"]
    result = run_python(args, simulated, timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "interval: 60" in result.stdout, result.stdout


@pytest.mark.timeout(240)
def test_ctrl_c_stops_the_demo_without_syncing_the_range_again(
    tmp_path: Path, pgdata: Path
) -> None:
    """Ctrl-C during the demo's run interrupted its step, which Dagster turned into a retry (the
    asset has a RetryPolicy; the in-process executor checks for no interrupt): ~30 s later the
    step synced the whole range again and the demo reported success, exit 0. It now stops: the
    run fails naming the days committed, and what the demo started is stopped."""
    env = clean_env(
        DAGSTER_HOME=str(make_dagster_home(tmp_path / "home")),
        LAAFFIC_EMBEDDED_PGDATA=str(pgdata),
        LAAFFIC_START_DATE="2019-01-01",
    )
    demo = [sys.executable, "-m", "pipelines", "demo", "--days", "2000"]
    process = Process(demo, env, tmp_path / "demo.log")
    try:
        deadline = time.monotonic() + 120
        while "syncing 2000 day(s)" not in process.output():
            assert process.popen.poll() is None, process.output()[-3000:]
            assert time.monotonic() < deadline, process.output()[-3000:]
            time.sleep(0.05)
        process.signal_group(signal.SIGINT)  # Ctrl-C, the first days being synced
        code = process.wait(timeout=60)
        output = process.output()
        assert code == 1, output[-3000:]
        assert "run terminated" in output and "FAILED" in output, output[-3000:]
        assert output.count("syncing 2000 day(s)") == 1, output[-3000:]  # not retried
        assert not embedded_postgres_running(pgdata)
    finally:
        process.stop(signal.SIGINT, grace=30)

"""The acceptance commands as a user types them, each in its own process: definitions validate
with nothing configured, `dagster asset materialize` for a day and for a week in one run, a run
without credentials, and the one-command demo (which keeps the simulator out of a configured
warehouse)."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import date, timedelta
from pathlib import Path

import psycopg
import pytest
from dagster import AssetKey, DagsterRunStatus

from pipelines.__main__ import PROJECT_ROOT, local_environment
from pipelines.laaffic.simulator import Simulator, SimulatorConfig, SimulatorServer
from pipelines.warehouse.embedded import embedded_postgres_running, embedded_warehouse
from tests.defs.helpers import (
    SIM_SECRET,
    clean_env,
    days_between,
    make_dagster_home,
    open_instance,
    run_dagster,
    run_python,
    sim_env,
    simulated,
    stored_days,
    stored_tasks,
)
from tests.reliability.helpers import with_password

ASSET = AssetKey("group_call_tasks")
MATERIALIZE = ["asset", "materialize", "-m", "pipelines.definitions", "--select", ASSET.path[0]]


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def test_definitions_validate_with_nothing_configured(
    tmp_path: Path, embedded_pgdata: Path
) -> None:
    pgdata = embedded_pgdata
    env = clean_env(
        DAGSTER_HOME=str(make_dagster_home(tmp_path / "home")),
        LAAFFIC_EMBEDDED_PGDATA=str(pgdata),
    )
    result = run_dagster(["definitions", "validate", "-w", "workspace.yaml"], env, timeout=120)
    assert result.returncode == 0, _output(result)
    assert "Validation successful" in result.stdout + result.stderr, _output(result)
    # Loading the definitions connected to nothing: no embedded warehouse was even created.
    assert not pgdata.exists()


def test_a_base_url_without_scheme_fails_the_load_naming_it(tmp_path: Path) -> None:
    """`host:port` for LAAFFIC_BASE_URL loaded, and every run then failed on a requests error
    naming no variable, after the step's retries (as if the API were down)."""
    env = clean_env(
        DAGSTER_HOME=str(make_dagster_home(tmp_path / "home")),
        LAAFFIC_BASE_URL="127.0.0.1:8765",
    )
    result = run_dagster(["definitions", "validate", "-w", "workspace.yaml"], env, timeout=120)
    assert result.returncode != 0, _output(result)
    assert "LAAFFIC_BASE_URL='127.0.0.1:8765' is not an http(s) URL" in result.stdout + (
        result.stderr
    ), _output(result)


def test_cli_materializes_exactly_one_day(
    simulator: SimulatorServer, database_url: str, tmp_path: Path
) -> None:
    home = make_dagster_home(tmp_path / "home")
    day = date(2024, 6, 4)
    result = run_dagster(
        [*MATERIALIZE, "--partition", day.isoformat()], sim_env(simulator, database_url, home)
    )
    assert result.returncode == 0, _output(result)

    assert stored_tasks(database_url) == simulated(simulator, [day])
    assert list(stored_days(database_url)) == [day]
    with open_instance(home) as instance:
        (run,) = instance.get_runs()
        assert run.status == DagsterRunStatus.SUCCESS
        assert instance.get_materialized_partitions(ASSET) == {day.isoformat()}


def test_cli_materializes_a_week_in_one_run(
    simulator: SimulatorServer, database_url: str, tmp_path: Path
) -> None:
    home = make_dagster_home(tmp_path / "home")
    week = days_between(date(2024, 6, 1), date(2024, 6, 7))
    result = run_dagster(
        [*MATERIALIZE, "--partition-range", f"{week[0]}...{week[-1]}"],
        sim_env(simulator, database_url, home),
    )
    assert result.returncode == 0, _output(result)

    assert stored_tasks(database_url) == simulated(simulator, week)
    assert stored_days(database_url) == {d: len(simulator.simulator.store.day(d)) for d in week}
    with open_instance(home) as instance:
        (run,) = instance.get_runs()  # one run for the whole week
        assert run.status == DagsterRunStatus.SUCCESS
        assert run.tags["dagster/asset_partition_range_start"] == week[0].isoformat()
        assert run.tags["dagster/asset_partition_range_end"] == week[-1].isoformat()
        records = instance.fetch_materializations(ASSET, limit=100).records
        assert sorted(r.partition_key or "" for r in records) == [d.isoformat() for d in week]
        assert {r.run_id for r in records} == {run.run_id}
        totals = {
            r.partition_key: r.asset_materialization.metadata["api_total"].value  # type: ignore[union-attr]
            for r in records
        }
        assert totals == {d.isoformat(): len(simulator.simulator.store.day(d)) for d in week}


def test_cli_run_without_credentials_fails_at_once_naming_them(
    database_url: str, tmp_path: Path
) -> None:
    home = make_dagster_home(tmp_path / "home")
    env = clean_env(DAGSTER_HOME=str(home), WAREHOUSE_URL=database_url)
    result = run_dagster([*MATERIALIZE, "--partition", "2024-06-04"], env)
    assert result.returncode != 0, _output(result)
    output = result.stdout + result.stderr
    assert "LAAFFIC_API_KEY" in output and "LAAFFIC_API_SECRET" in output, _output(result)
    with open_instance(home) as instance:
        (run,) = instance.get_runs()
        assert run.status == DagsterRunStatus.FAILURE
        events = [
            r.event_log_entry.dagster_event.event_type_value  # type: ignore[union-attr]
            for r in instance.get_records_for_run(run.run_id).records
            if r.event_log_entry.is_dagster_event
        ]
        assert "STEP_FAILURE" in events
        assert "STEP_UP_FOR_RETRY" not in events  # failed at once, not after the retry policy


def test_a_run_configuring_the_api_resource_names_what_its_config_must_hold(
    simulator: SimulatorServer, database_url: str, tmp_path: Path
) -> None:
    """Config given at launch for the resource `laaffic` (max_concurrency, say, from the
    launchpad) replaces every value the definitions gave it: the credentials and the base URL.
    The run said LAAFFIC_API_KEY and LAAFFIC_API_SECRET were not set, while they were."""
    env = sim_env(simulator, database_url, make_dagster_home(tmp_path / "home"))
    only = {"max_concurrency": 8}
    result = run_dagster(
        [*MATERIALIZE, "--partition", "2024-06-04", "--config-json", _resource_config(only)], env
    )
    assert result.returncode != 0, _output(result)
    output = result.stdout + result.stderr
    assert "config given at launch" in output, _output(result)
    assert SIM_SECRET not in output

    # As the message says: with the credentials and the base URL, the run does what it did.
    complete = {
        **only,
        "base_url": simulator.url,
        "api_key": {"env": "LAAFFIC_API_KEY"},
        "api_secret": {"env": "LAAFFIC_API_SECRET"},
    }
    result = run_dagster(
        [*MATERIALIZE, "--partition", "2024-06-04", "--config-json", _resource_config(complete)],
        env,
    )
    assert result.returncode == 0, _output(result)
    assert stored_tasks(database_url) == simulated(simulator, [date(2024, 6, 4)])


def _resource_config(config: dict[str, object]) -> str:
    return json.dumps({"resources": {"laaffic": {"config": config}}})


SUMMARY_LINE = re.compile(r"^(\d{4}-\d{2}-\d{2})\s+(\d+)\s+(\d+)\s+(\S+)\s+(.*)$", re.MULTILINE)


def test_demo_runs_with_nothing_configured_and_cleans_up(
    tmp_path: Path, embedded_pgdata: Path
) -> None:
    pgdata = embedded_pgdata
    env = clean_env(
        DAGSTER_HOME=str(make_dagster_home(tmp_path / "home")),
        LAAFFIC_EMBEDDED_PGDATA=str(pgdata),
    )
    result = run_python(["-m", "pipelines", "demo"], env, timeout=240)
    assert result.returncode == 0, _output(result)
    assert "local simulator" in result.stdout and "embedded PostgreSQL" in result.stdout
    assert "success" in result.stdout, _output(result)

    summary = result.stdout.split("answer rate", 1)[1]
    rows = SUMMARY_LINE.findall(summary)
    days = [date.fromisoformat(r[0]) for r in rows]
    assert len(days) == 7, _output(result)
    assert days == [days[0] + timedelta(days=n) for n in range(7)]  # the last 7 days, in order
    for _, tasks, calls, rate, spend in rows:
        assert int(tasks) > 0 and int(calls) > 0
        assert rate.endswith("%")
        assert re.fullmatch(r"\d+\.\d+ (EUR|USD)(, \d+\.\d+ (EUR|USD))*", spend), spend

    # It stopped the embedded PostgreSQL it started for that data directory.
    assert (pgdata / "PG_VERSION").exists()
    assert not embedded_postgres_running(pgdata)


@pytest.mark.timeout(600)
def test_the_simulator_and_the_real_api_keep_to_their_own_embedded_database(
    tmp_path: Path, embedded_pgdata: Path
) -> None:
    """Without WAREHOUSE_URL the demo uses the embedded PostgreSQL whether the simulator or the
    real API (here a second simulator with credentials of its own, 5 tasks a day) feeds it. Both
    wrote into one database: the real demo's summary counted the simulator's tasks too (which no
    sync deletes), and a simulated demo afterwards overwrote real tasks sharing a taskId."""
    env = clean_env(
        DAGSTER_HOME=str(make_dagster_home(tmp_path / "home")),
        LAAFFIC_EMBEDDED_PGDATA=str(embedded_pgdata),
    )
    demo = ["-m", "pipelines", "demo", "--days", "2"]
    first_simulated = run_python(demo, env, timeout=240)
    assert first_simulated.returncode == 0, _output(first_simulated)
    assert "local simulator" in first_simulated.stdout

    config = SimulatorConfig(api_key="real-key", api_secret="real-secret", tasks_per_day=5)
    with SimulatorServer(Simulator(config)) as api:
        real = run_python(
            demo,
            {**env, "LAAFFIC_BASE_URL": api.url, "LAAFFIC_API_KEY": "real-key"}
            | {"LAAFFIC_API_SECRET": "real-secret"},
            timeout=240,
        )
        assert real.returncode == 0, _output(real)
        assert "local simulator" not in real.stdout
        rows = SUMMARY_LINE.findall(real.stdout.split("answer rate", 1)[1])
        assert [int(tasks) for _, tasks, *_ in rows] == [5, 5], _output(real)
        assert "FAILED" not in real.stdout, _output(real)

        second_simulated = run_python(demo, env, timeout=240)
        assert second_simulated.returncode == 0, _output(second_simulated)
        days = [date.fromisoformat(day) for day, *_ in rows]
        with embedded_warehouse(embedded_pgdata) as url:  # what the real API's runs use
            assert stored_tasks(url) == simulated(api, days)


def test_the_simulator_keeps_to_a_dagster_instance_of_its_own(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without DAGSTER_HOME, demo and dev recorded their runs in `.dagster_home/` whether the
    simulator or the real API fed them, and the README's commands for the real API use it too:
    the simulator's runs showed there as materializations of the real asset (a backfill of the
    missing partitions skipped their days; the freshness check passed on them)."""
    names = ("DAGSTER_HOME", "LAAFFIC_API_KEY", "LAAFFIC_API_SECRET", "LAAFFIC_BASE_URL")
    for name in names:  # (set first, so that teardown restores them: local_environment sets them)
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setenv("WAREHOUSE_URL", database_url)  # (no embedded PostgreSQL to start)
    with local_environment() as simulated:
        simulated_home = Path(simulated["DAGSTER_HOME"])
    for name in names:
        monkeypatch.delenv(name)
    monkeypatch.setenv("LAAFFIC_API_KEY", "real-key")
    monkeypatch.setenv("LAAFFIC_API_SECRET", "real-secret")
    with local_environment() as real:
        assert "LAAFFIC_BASE_URL" not in real  # (the real API: nothing stands in for it)
        real_home = Path(real["DAGSTER_HOME"])
    assert real_home == PROJECT_ROOT / ".dagster_home"  # what the README's commands use
    assert simulated_home != real_home
    with open_instance(simulated_home) as instance:  # configured as the project's instance
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1


@pytest.mark.parametrize("command", ["demo", "dev"])
def test_the_simulator_is_not_let_into_a_configured_warehouse(
    database_url: str, tmp_path: Path, command: str
) -> None:
    """WAREHOUSE_URL exported for a real warehouse and no credentials: the simulator's made-up
    tasks would be upserted there. The command refuses before it starts anything."""
    env = clean_env(
        DAGSTER_HOME=str(make_dagster_home(tmp_path / "home")),
        WAREHOUSE_URL=with_password(database_url, "s3cret"),
        LAAFFIC_EMBEDDED_PGDATA=str(tmp_path / "pgdata"),
    )
    result = run_python(["-m", "pipelines", command], env, timeout=120)
    assert result.returncode == 2, _output(result)
    assert "WAREHOUSE_URL is set" in result.stderr, _output(result)
    assert "--simulated-into-warehouse" in result.stderr
    assert "s3cret" not in result.stdout + result.stderr
    assert "local simulator" not in result.stdout  # nothing was started
    assert not (tmp_path / "pgdata").exists()
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT to_regclass('group_call_tasks')").fetchone() == (None,)


def test_the_refusal_hides_a_secret_in_the_url_query(tmp_path: Path) -> None:
    """The refusal names WAREHOUSE_URL: a passphrase in its query (`sslpassword`) is hidden too."""
    env = clean_env(
        DAGSTER_HOME=str(make_dagster_home(tmp_path / "home")),
        WAREHOUSE_URL="postgresql://etl:Hunter2-x9@127.0.0.1:9/wh?sslpassword=Key-Secret9",
        LAAFFIC_EMBEDDED_PGDATA=str(tmp_path / "pgdata"),
    )
    result = run_python(["-m", "pipelines", "demo"], env, timeout=120)
    assert result.returncode == 2, _output(result)
    assert "postgresql://etl:***@127.0.0.1:9/wh" in result.stderr, _output(result)
    for secret in ("Hunter2", "Key-Secret9"):
        assert secret not in result.stdout + result.stderr, _output(result)

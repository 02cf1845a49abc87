"""Postgres faults during a run, through the real CLI (`dagster asset materialize`): the run's
connection killed inside a window's transaction, and the warehouse down when the run starts.

The CLI runs pass run config that disables step retries: the asset's RetryPolicy would retry the
step after 30 s and more, and these tests look at what the failed attempt left behind."""

from __future__ import annotations

import traceback
from pathlib import Path

import psycopg
import pytest
from dagster import DagsterInstance, materialize
from psycopg.types.json import Jsonb

from pipelines.defs.assets import group_call_tasks
from pipelines.defs.resources import WarehouseResource
from pipelines.laaffic.simulator import SimulatorServer
from pipelines.warehouse.migrate import apply_migrations
from pipelines.warehouse.writer import WarehouseError
from tests.defs.helpers import free_port, make_dagster_home, open_instance, run_dagster, sim_env
from tests.reliability.helpers import (
    DAY_COUNTS,
    DAYS,
    MATERIALIZE,
    NO_STEP_RETRIES,
    api_resource,
    assert_days_absent,
    assert_days_exact,
    committed_days,
    dagster_cli,
    failure_text,
    instance_dump,
    range_arg,
    row_counts,
    run_days,
    started,
    wait_for,
)

PLACEHOLDER = {"placeholder": "written before the run, locked by the test"}


def test_connection_killed_mid_window_rolls_it_back_and_a_rerun_completes(
    simulator: SimulatorServer, database_url: str, tmp_path: Path
) -> None:
    """The third day's upsert meets a row the test holds locked, so that window's transaction
    blocks with its rows staged and merged but not committed; the test then terminates the run's
    backend (pg_terminate_backend). Days one and two stay committed and exact, the third day has
    none of its rows, the run fails saying why, and a rerun completes exactly."""
    sim = simulator.simulator
    sim.configure(day_counts=DAY_COUNTS)
    victim_day = DAYS[2]
    held_task = sim.store.day(victim_day)[0].task_id
    with psycopg.connect(database_url, autocommit=True) as conn:
        apply_migrations(conn)
        conn.execute(
            "INSERT INTO group_call_tasks (task_id, created_date, raw) VALUES (%s, %s, %s)",
            (held_task, victim_day, Jsonb(PLACEHOLDER)),
        )
    home = make_dagster_home(tmp_path / "home")
    env = sim_env(simulator, database_url, home)
    command = dagster_cli(*MATERIALIZE, "--partition-range", range_arg(DAYS))
    command += ["--config-json", NO_STEP_RETRIES]

    with (
        psycopg.connect(database_url) as locker,
        psycopg.connect(database_url, autocommit=True) as observer,
    ):
        locker.execute("SELECT 1 FROM group_call_tasks WHERE task_id = %s FOR UPDATE", (held_task,))
        with started(command, env, tmp_path / "run.log") as run:

            def blocked_backend() -> int | None:
                row = observer.execute(
                    """
                    SELECT pid FROM pg_stat_activity
                    WHERE datname = current_database() AND pid <> pg_backend_pid()
                      AND wait_event_type = 'Lock' AND query ILIKE '%INSERT INTO group_call_tasks%'
                    """
                ).fetchone()
                return int(row[0]) if row else None

            pid = wait_for("the run to block inside a window", blocked_backend, 90, alive=run.popen)
            # The blocked transaction is the third day's: the first two are committed.
            assert committed_days(database_url) == DAYS[:2]
            assert observer.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
            locker.rollback()
            exit_code = run.wait(timeout=90)

    output = run.output()
    assert exit_code != 0, output
    assert "terminating connection due to administrator command" in output, output
    # The window rolled back whole: no sync-log row, none of its tasks, the held row as it was.
    assert committed_days(database_url) == DAYS[:2]
    assert_days_exact(simulator, database_url, DAYS[:2])
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT task_id, raw FROM group_call_tasks WHERE created_date = %s", (victim_day,)
        ).fetchall()
    assert rows == [(held_task, PLACEHOLDER)]
    assert_days_absent(database_url, DAYS[3:])
    with open_instance(home) as instance:
        (record,) = instance.get_run_records()
        assert record.dagster_run.is_failure

    rerun = run_days(simulator, database_url, DAYS)

    assert rerun.success, failure_text(rerun)
    assert_days_exact(simulator, database_url, DAYS)
    assert row_counts(database_url) == (sum(DAY_COUNTS.values()),) * 2


PASSWORD = "Pa55-never-SHOWN-4c1d"


@pytest.fixture
def down_url() -> str:
    """A warehouse URL with a password, pointing at a 127.0.0.1 port nothing listens on."""
    return f"postgresql://etl:{PASSWORD}@127.0.0.1:{free_port()}/analytics"


def test_warehouse_down_is_a_clear_error_without_the_password(down_url: str) -> None:
    redacted = down_url.replace(PASSWORD, "***")
    with pytest.raises(WarehouseError) as caught, WarehouseResource(url=down_url).connect():
        pass
    text = "".join(traceback.format_exception(caught.value))
    assert f"cannot connect to the warehouse at {redacted}" in str(caught.value)
    assert "Check WAREHOUSE_URL" in str(caught.value)
    assert PASSWORD not in text and PASSWORD not in repr(caught.value.args)


def test_warehouse_down_at_start_fails_the_run_naming_the_url_not_the_password(
    simulator: SimulatorServer, database_url: str, down_url: str, tmp_path: Path
) -> None:
    home = make_dagster_home(tmp_path / "home")
    env = sim_env(simulator, down_url, home)
    result = run_dagster(
        [*MATERIALIZE, "--partition-range", range_arg(DAYS), "--config-json", NO_STEP_RETRIES],
        env,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    redacted = down_url.replace(PASSWORD, "***")
    assert f"cannot connect to the warehouse at {redacted}" in output, output
    assert PASSWORD not in output
    assert simulator.simulator.stats.requests == 0  # it stopped before calling the API
    with open_instance(home) as instance:
        (record,) = instance.get_run_records()
        assert record.dagster_run.is_failure
    stored = instance_dump(home)
    assert f"cannot connect to the warehouse at {redacted}" in stored  # the event log says why
    assert PASSWORD not in stored


@pytest.mark.parametrize("unescaped", ["%zz", "#zz", "/zz", "@zz"])
def test_a_password_with_unescaped_url_characters_is_never_shown(unescaped: str) -> None:
    """#, /, ? and @ end a URL's host part for a URL parser, and a bare % is not an escape:
    written unescaped in WAREHOUSE_URL they used to put the password, or a piece of it, into the
    error (and from there into Dagster's event log)."""
    password = f"Hunter2{unescaped}-x9"
    url = f"postgresql://etl:{password}@127.0.0.1:{free_port()}/analytics"
    with pytest.raises(WarehouseError) as caught, WarehouseResource(url=url).connect():
        pass
    text = "".join(traceback.format_exception(caught.value))
    assert "postgresql://etl:***@127.0.0.1:" in str(caught.value)
    for piece in ("Hunter2", unescaped[1:] + "-x9"):
        assert piece not in text


def test_a_malformed_warehouse_url_fails_the_run_at_once_naming_the_setting(
    simulator: SimulatorServer,
) -> None:
    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            [group_call_tasks],
            resources={
                "laaffic": api_resource(simulator),
                "warehouse": WarehouseResource(url="postgresql://etl:Hunter2%zz@127.0.0.1/x"),
            },
            instance=instance,
            partition_key="2024-06-04",
            raise_on_error=False,
        )
    assert not result.success
    events = [e.event_type_value for e in result.all_events]
    assert "STEP_UP_FOR_RETRY" not in events  # retrying cannot mend a URL
    message = failure_text(result)
    assert (
        "WAREHOUSE_URL (postgresql://etl:***@127.0.0.1/x) is not a valid PostgreSQL URL" in message
    )
    assert "Hunter2" not in message
    assert simulator.simulator.stats.requests == 0


@pytest.mark.parametrize(
    ("query", "secret"),
    [
        ("sslpassword=Key-Secret9&sslmode=prefer", "Key-Secret9"),
        ("password=Other-Secret9", "Other-Secret9"),
    ],
)
def test_a_secret_in_the_url_query_is_hidden_too(query: str, secret: str) -> None:
    """libpq reads secrets from the query as well: `sslpassword` (the client key's passphrase),
    and `password` beside one in the user info. Only the first of those two places was hidden."""
    url = f"postgresql://etl:Hunter2-x9@127.0.0.1:{free_port()}/analytics?{query}"
    with pytest.raises(WarehouseError) as caught, WarehouseResource(url=url).connect():
        pass
    text = "".join(traceback.format_exception(caught.value))
    assert "postgresql://etl:***@127.0.0.1:" in str(caught.value)
    for piece in ("Hunter2", secret):
        assert piece not in text

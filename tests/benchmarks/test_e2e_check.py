"""The end-to-end benchmark's correctness check: it must fail when a contender's table is wrong."""

from __future__ import annotations

from datetime import date

import psycopg
import pytest

from benchmarks import baseline
from benchmarks.e2e import check, expected_totals, measured_totals
from pipelines.laaffic.simulator import Simulator, SimulatorConfig, SimulatorServer

FIRST, LAST = date(2024, 3, 1), date(2024, 3, 2)
DAYS = [FIRST, LAST]


@pytest.fixture
def loaded(database_url: str) -> str:
    """A database whose group_call_tasks holds the simulator's two days (the baseline's load)."""
    config = SimulatorConfig()
    with SimulatorServer(Simulator(config)) as server:
        baseline.run(
            server.url,
            config.api_key,
            config.api_secret,
            database_url,
            FIRST,
            LAST,
        )
    return database_url


def _verdict(url: str, contender: str = "baseline") -> tuple[bool, str]:
    return check(expected_totals(SimulatorConfig(), DAYS), measured_totals(url, contender))


def _execute(url: str, statement: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement)


def test_a_correct_table_passes(loaded: str) -> None:
    correct, detail = _verdict(loaded)
    assert correct, detail


@pytest.mark.parametrize("column", ["group_call_pay_fee_amount", "sms_pay_fee_amount"])
def test_a_wrong_fee_of_another_kind_fails(loaded: str, column: str) -> None:
    """taskSumPayFee is not the only fee: a contender that mis-parses the others is wrong."""
    _execute(
        loaded,
        f"UPDATE group_call_tasks SET {column} = {column} + 1 "
        "WHERE task_id = (SELECT min(task_id) FROM group_call_tasks)",
    )
    correct, _ = _verdict(loaded)
    assert not correct


def test_a_fee_stored_as_null_fails_instead_of_crashing(loaded: str) -> None:
    _execute(
        loaded,
        "UPDATE group_call_tasks SET task_sum_pay_fee_amount = NULL, "
        "task_sum_pay_fee_currency = NULL WHERE task_id = (SELECT min(task_id) FROM "
        "group_call_tasks)",
    )
    correct, detail = _verdict(loaded)
    assert not correct
    assert "fees" in detail


def test_wrong_task_ids_fail(loaded: str) -> None:
    """The right number of rows and fees under the wrong task ids is not the simulator's data."""
    _execute(
        loaded,
        "UPDATE group_call_tasks SET task_id = task_id + 1 "
        "WHERE task_id = (SELECT max(task_id) FROM group_call_tasks)",
    )
    correct, detail = _verdict(loaded)
    assert not correct
    assert "task ids" in detail


@pytest.mark.parametrize("contender", ["pipeline", "baseline", "dlt"])
def test_no_table_is_no_rows(database_url: str, contender: str) -> None:
    """`--tasks 0`: dlt creates no table when it loads nothing; that is right, not an error."""
    config = SimulatorConfig(day_counts={FIRST: 0, LAST: 0})
    correct, detail = check(expected_totals(config, DAYS), measured_totals(database_url, contender))
    assert correct, detail
    many = check(expected_totals(SimulatorConfig(), DAYS), measured_totals(database_url, contender))
    assert not many[0]


def test_a_lost_row_fails(loaded: str) -> None:
    _execute(
        loaded,
        "DELETE FROM group_call_tasks WHERE task_id = (SELECT min(task_id) FROM group_call_tasks)",
    )
    correct, detail = _verdict(loaded)
    assert not correct
    assert "rows" in detail


def test_a_row_stored_twice_fails(loaded: str) -> None:
    """dlt's table has no primary key: a contender could store a task twice."""
    _execute(
        loaded,
        "CREATE SCHEMA laaffic; "
        "CREATE TABLE laaffic.group_call_tasks AS SELECT * FROM public.group_call_tasks; "
        "INSERT INTO laaffic.group_call_tasks SELECT * FROM public.group_call_tasks "
        "WHERE task_id = (SELECT min(task_id) FROM public.group_call_tasks)",
    )
    correct, detail = _verdict(loaded, "dlt")
    assert not correct
    assert "duplicate" in detail


def test_a_fee_off_by_its_last_digit_fails(loaded: str) -> None:
    _execute(
        loaded,
        "UPDATE group_call_tasks SET task_sum_pay_fee_amount = task_sum_pay_fee_amount + 0.000001 "
        "WHERE task_id = (SELECT min(task_id) FROM group_call_tasks)",
    )
    correct, _ = _verdict(loaded)
    assert not correct


def test_fees_stored_on_the_wrong_tasks_fail(loaded: str) -> None:
    """Right rows, right ids, right totals, but two tasks' fees swapped (a column out of step
    with the rows, say): each task's amounts must be its own."""
    _execute(
        loaded,
        "WITH two AS (SELECT task_id, task_sum_pay_fee_amount AS amount, "
        "row_number() OVER (ORDER BY task_id) AS n FROM group_call_tasks "
        "WHERE task_sum_pay_fee_currency = 'USD' AND task_sum_pay_fee_amount > 0 "
        "ORDER BY task_id LIMIT 2) "
        "UPDATE group_call_tasks g SET task_sum_pay_fee_amount = other.amount "
        "FROM two this, two other "
        "WHERE g.task_id = this.task_id AND other.n = 3 - this.n",
    )
    correct, detail = _verdict(loaded)
    assert not correct
    assert "task_sum_pay_fee" in detail

"""Asset checks: the partition-aware freshness check and the three data checks, each shown failing
on a stale or crafted bad table and passing on a good one."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg
import pytest
from dagster import (
    AssetCheckEvaluation,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetSelection,
    DagsterInstance,
    materialize,
)

from pipelines.defs.assets import SETTINGS, freshness_policy, group_call_tasks
from pipelines.defs.checks import (
    freshness_checks,
    no_new_rejects,
    open_tasks_within_horizon,
    row_count_matches_api,
    task_invariants_hold,
)
from pipelines.laaffic.models import OPEN_STATUSES
from pipelines.laaffic.simulator import SimulatorServer
from tests.defs.helpers import clean_env, days_between, range_tags, resources, run_python
from tests.laaffic.helpers import repeat_some_rows

DATA_CHECKS = [row_count_matches_api, no_new_rejects, task_invariants_hold]
DAYS = days_between(date(2024, 6, 1), date(2024, 6, 3))


def _sync(
    sim: SimulatorServer, database_url: str, instance: DagsterInstance, days: list[date]
) -> dict[str, AssetCheckEvaluation]:
    """Materialize `days` in one run, with the data checks; their evaluations by name."""
    result = materialize(
        [group_call_tasks, *DATA_CHECKS],
        resources=resources(sim, database_url),
        instance=instance,
        tags=range_tags(days[0], days[-1]),
    )
    assert result.success
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def _run_checks(
    sim: SimulatorServer,
    database_url: str,
    instance: DagsterInstance,
    checks: Sequence[AssetChecksDefinition],
) -> dict[str, AssetCheckEvaluation]:
    """Run only `checks` (no materialization), as from the UI's "Execute checks"."""
    result = materialize(
        [group_call_tasks, *checks],
        selection=AssetSelection.checks(*checks),
        resources=resources(sim, database_url),
        instance=instance,
        raise_on_error=False,
    )
    assert result.success  # a failed check is a result, not a failed run
    assert not result.asset_materializations_for_node("group_call_tasks")
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def _md(evaluation: AssetCheckEvaluation, key: str) -> str:
    value = evaluation.metadata[key].value
    assert isinstance(value, str)
    return value


def _passed_all(evaluations: dict[str, AssetCheckEvaluation]) -> None:
    assert sorted(evaluations) == sorted(c.check_key.name for c in DATA_CHECKS)
    failed = {name: e.description for name, e in evaluations.items() if not e.passed}
    assert not failed


# -- freshness ----------------------------------------------------------------------------------


def _freshness(
    sim: SimulatorServer, database_url: str, instance: DagsterInstance
) -> AssetCheckEvaluation:
    # Deadline midnight: it has always passed already, whatever the wall clock says, and the
    # partition it expects is then the account-local day that ended at the last midnight.
    checks = freshness_checks("0 0 * * *", SETTINGS.timezone)
    (evaluation,) = _run_checks(sim, database_url, instance, checks).values()
    assert evaluation.severity == AssetCheckSeverity.ERROR
    return evaluation


def _expected_partition(description: str | None) -> date:
    assert description
    key = next(w for w in description.replace(",", " ").split() if w[:2] == "20" and len(w) == 10)
    return date.fromisoformat(key)


def test_freshness_fails_for_a_stale_partition_and_passes_once_materialized(
    simulator: SimulatorServer, database_url: str
) -> None:
    today = datetime.now(ZoneInfo(SETTINGS.timezone)).date()
    with DagsterInstance.ephemeral() as instance:
        never = _freshness(simulator, database_url, instance)
        assert not never.passed
        assert "never been observed/materialized" in (never.description or "")
        expected = _expected_partition(never.description)
        # The latest complete account-local day ("today" read before the check ran).
        assert expected in (today - timedelta(days=1), today)

        # Only an older day is there: still stale, and it says the partition is overdue.
        older = expected - timedelta(days=1)
        _sync(simulator, database_url, instance, [older])
        stale = _freshness(simulator, database_url, instance)
        assert not stale.passed
        assert "overdue" in (stale.description or "")
        assert _expected_partition(stale.description) == expected

        _sync(simulator, database_url, instance, [expected])
        fresh = _freshness(simulator, database_url, instance)
        assert fresh.passed
        assert _expected_partition(fresh.description) == expected


@pytest.mark.parametrize(
    ("deadline", "since_midnight"),
    [
        ("0 3 * * *", timedelta(hours=3)),
        ("0 9 * * *", timedelta(hours=9)),
        ("30 6 * * 1-5", timedelta(hours=6, minutes=30)),
        ("0 0 * * *", timedelta(minutes=1)),  # (Dagster's least)
    ],
)
def test_the_asset_freshness_window_opens_when_the_day_ends(
    deadline: str, since_midnight: timedelta
) -> None:
    """The asset's cron FreshnessPolicy passes at a deadline tick if the asset was materialized
    within `lower_bound_delta` before it. That was 3 hours whatever the deadline: right for the
    default 03:00, but for LAAFFIC_FRESHNESS_DEADLINE_CRON='0 9 * * *' the window was 06:00-09:00,
    which the 00:15 schedule's run never falls in: the UI showed the asset stale every day. It
    now opens at the account's midnight, when yesterday's partition came to be."""
    policy = freshness_policy(deadline, "America/Los_Angeles")
    assert policy.deadline_cron == deadline
    assert policy.timezone == "America/Los_Angeles"
    assert policy.lower_bound_delta == since_midnight


def test_the_asset_takes_its_freshness_window_from_the_deadline_setting() -> None:
    code = (
        "from pipelines.defs.assets import group_call_tasks as a; "
        "print(next(iter(a.specs)).freshness_policy.lower_bound_delta)"
    )
    env = clean_env(LAAFFIC_FRESHNESS_DEADLINE_CRON="0 9 * * *")
    result = run_python(["-c", code], env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "9:00:00"


# -- data checks --------------------------------------------------------------------------------


def test_row_count_check_fails_when_a_day_lost_a_row(
    simulator: SimulatorServer, database_url: str
) -> None:
    with DagsterInstance.ephemeral() as instance:
        _passed_all(_sync(simulator, database_url, instance, DAYS))
        # Checks run on their own re-check the latest sync of every day: still all good.
        _passed_all(_run_checks(simulator, database_url, instance, DATA_CHECKS))

        victim = DAYS[1]
        api_total = len(simulator.simulator.store.day(victim))
        with psycopg.connect(database_url) as conn:
            conn.execute(
                "DELETE FROM group_call_tasks WHERE task_id = "
                "(SELECT min(task_id) FROM group_call_tasks WHERE created_date = %s)",
                (victim,),
            )
        result = _run_checks(simulator, database_url, instance, [row_count_matches_api])
        check = result["row_count_matches_api"]
        assert not check.passed
        assert check.severity == AssetCheckSeverity.ERROR
        assert check.metadata["days_checked"].value == len(DAYS)
        assert check.metadata["days_mismatched"].value == 1
        assert f"| {victim} | {api_total} | 0 | {api_total - 1} |" in _md(check, "mismatches")


def test_row_count_check_counts_a_task_the_api_listed_twice_once(
    simulator: SimulatorServer, database_url: str
) -> None:
    store = simulator.simulator.store
    repeat_some_rows(store, every=5)
    repeats = {day: len(store.day(day)) // 5 for day in DAYS}
    assert all(repeats.values())
    with DagsterInstance.ephemeral() as instance:
        evaluations = _sync(simulator, database_url, instance, DAYS)
        _passed_all(evaluations)
        assert evaluations["row_count_matches_api"].metadata["upstream_duplicates"].value == sum(
            repeats.values()
        )
        with psycopg.connect(database_url) as conn:
            logged = dict(
                conn.execute(
                    "SELECT window_date, upstream_duplicates FROM group_call_sync_log"
                ).fetchall()
            )
            assert logged == repeats
            # A row lost afterwards is still caught, the repeats shown beside the API's total.
            victim = DAYS[0]
            conn.execute(
                "DELETE FROM group_call_tasks WHERE task_id = "
                "(SELECT min(task_id) FROM group_call_tasks WHERE created_date = %s)",
                (victim,),
            )
        check = _run_checks(simulator, database_url, instance, [row_count_matches_api])[
            "row_count_matches_api"
        ]
        assert not check.passed
        tasks = len(store.day(victim))
        row = f"| {victim} | {tasks + repeats[victim]} | {repeats[victim]} | {tasks - 1} |"
        assert row in _md(check, "mismatches")


def test_no_new_rejects_fails_on_a_bad_fee_and_names_the_task(
    simulator: SimulatorServer, database_url: str
) -> None:
    day = DAYS[0]
    bad = simulator.simulator.store.day(day)[3]
    bad.update(groupCallPayFee="n/a(USD)")  # the API starts sending a fee nobody can parse
    with DagsterInstance.ephemeral() as instance:
        good = _sync(simulator, database_url, instance, DAYS[1:])
        _passed_all(good)

        evaluations = _sync(simulator, database_url, instance, [day])
        check = evaluations["no_new_rejects"]
        assert not check.passed
        assert check.severity == AssetCheckSeverity.ERROR
        assert check.metadata["new_rejects"].value == 1
        assert check.metadata["days_checked"].value == 1  # what it looked at, like its siblings
        assert check.description == "1 new rejected value(s) in 1 day(s)"
        examples = _md(check, "examples")
        assert f"| {bad.task_id} | groupCallPayFee | n/a(USD) |" in examples
        # The task row is still stored (the fee NULL, the raw record kept): counts still match.
        assert evaluations["row_count_matches_api"].passed

        # Seen again, the same refused value is no longer new: the check is green again.
        again = _sync(simulator, database_url, instance, [day])
        assert again["no_new_rejects"].passed
        assert again["no_new_rejects"].metadata["new_rejects"].value == 0
        # Checks run on their own look at the latest sync of every day.
        alone = _run_checks(simulator, database_url, instance, [no_new_rejects])
        assert alone["no_new_rejects"].metadata["days_checked"].value == len(DAYS)


def test_invariants_check_passes_a_calling_task_whose_last_call_has_no_outcome_yet(
    simulator: SimulatorServer, database_url: str
) -> None:
    # While calling, callNum counts the number being dialled and success + fail do not yet:
    # normal data, not an error (the same shortfall on a final task is one, below).
    with DagsterInstance.ephemeral() as instance:
        evaluations = _sync(simulator, database_url, instance, DAYS)
        with psycopg.connect(database_url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM group_call_tasks "
                "WHERE status = 1 AND success + fail < call_num"
            ).fetchone()
        assert row is not None and row[0] > 0
        assert evaluations["task_invariants_hold"].passed


def test_no_new_rejects_reports_a_value_whose_first_sync_ran_no_check(
    simulator: SimulatorServer, database_url: str
) -> None:
    """A run that failed after committing a day (or a step retry that synced it again) never ran
    the checks on the sync that first refused a value; the next sync of that day no longer
    refuses it for the first time. The check still reports it, once."""
    day = DAYS[0]
    bad = simulator.simulator.store.day(day)[3]
    bad.update(groupCallPayFee="n/a(USD)")
    with DagsterInstance.ephemeral() as instance:
        unchecked = materialize(
            [group_call_tasks],
            resources=resources(simulator, database_url),
            instance=instance,
            tags=range_tags(day, day),
        )
        assert unchecked.success  # the reject is stored; no check looked at it

        evaluations = _sync(simulator, database_url, instance, [day])
        check = evaluations["no_new_rejects"]
        assert not check.passed
        assert check.metadata["new_rejects"].value == 1
        assert f"| {bad.task_id} | groupCallPayFee | n/a(USD) |" in _md(check, "examples")

        assert _sync(simulator, database_url, instance, [day])["no_new_rejects"].passed


TAMPERING = {
    # The data an API glitch or a bad write could leave behind, one broken invariant each:
    # (which task of the day to break, how).
    "success + fail > callNum": ("call_num > 0", "SET success = success + 1"),
    "success + fail < callNum on a final task": (
        "fail > 0 AND status IN (2, 3, 4)",
        "SET fail = fail - 1",
    ),
    "answeredNum > callNum": ("call_num > 0", "SET answered_num = call_num + 1"),
    "callNum > numCnt": ("call_num > 0", "SET num_cnt = call_num - 1"),
    "taskSumPayFee <> groupCallPayFee + smsPayFee + agentFee": (
        "call_num > 0",
        "SET task_sum_pay_fee_amount = task_sum_pay_fee_amount + 0.000001",
    ),
    # Negative, with the sum kept consistent so only this invariant breaks.
    "negative amount": (
        "call_num > 0",
        "SET sms_pay_fee_amount = -1, "
        "group_call_pay_fee_amount = group_call_pay_fee_amount + sms_pay_fee_amount + 1",
    ),
    "fees in different currencies": (
        "call_num > 0",
        "SET sms_pay_fee_currency = "
        "CASE WHEN task_sum_pay_fee_currency = 'EUR' THEN 'USD' ELSE 'EUR' END",
    ),
}


@pytest.mark.parametrize("problem", list(TAMPERING))
def test_invariants_check_fails_on_a_tampered_task_and_names_it(
    simulator: SimulatorServer, database_url: str, problem: str
) -> None:
    which, change = TAMPERING[problem]
    with DagsterInstance.ephemeral() as instance:
        _passed_all(_sync(simulator, database_url, instance, DAYS))
        day = DAYS[2]
        with psycopg.connect(database_url) as conn:
            row = conn.execute(
                f"SELECT min(task_id) FROM group_call_tasks WHERE created_date = %s AND {which}",
                (day,),
            ).fetchone()
            assert row is not None and row[0] is not None
            task_id = int(row[0])
            conn.execute(f"UPDATE group_call_tasks {change} WHERE task_id = %s", (task_id,))

        check = _run_checks(simulator, database_url, instance, [task_invariants_hold])[
            "task_invariants_hold"
        ]
        assert not check.passed
        assert check.severity == AssetCheckSeverity.ERROR
        assert check.metadata["days_checked"].value == len(DAYS)
        assert check.metadata["tasks_broken"].value == 1
        assert check.description == f"1 task(s) in {len(DAYS)} day(s) break an invariant"
        assert f"| {task_id} | {day} | {problem} |" in _md(check, "broken")


def test_invariants_check_sees_mixed_currencies_when_the_total_was_refused(
    simulator: SimulatorServer, database_url: str
) -> None:
    """A refused taskSumPayFee (its amount and currency NULL) does not hide that the group-call
    and SMS fees of the task are in different currencies: the daily summary, which counts the task
    under the group-call fee's currency, leaves the other fee out of every sum."""
    with DagsterInstance.ephemeral() as instance:
        _passed_all(_sync(simulator, database_url, instance, DAYS))
        day = DAYS[2]
        with psycopg.connect(database_url) as conn:
            row = conn.execute(
                "SELECT min(task_id) FROM group_call_tasks WHERE created_date = %s "
                "AND sms_pay_fee_amount > 0",
                (day,),
            ).fetchone()
            assert row is not None and row[0] is not None
            task_id = int(row[0])
            conn.execute(
                "UPDATE group_call_tasks SET task_sum_pay_fee_amount = NULL, "
                "task_sum_pay_fee_currency = NULL, sms_pay_fee_currency = "
                "CASE WHEN group_call_pay_fee_currency = 'EUR' THEN 'USD' ELSE 'EUR' END "
                "WHERE task_id = %s",
                (task_id,),
            )

        check = _run_checks(simulator, database_url, instance, [task_invariants_hold])[
            "task_invariants_hold"
        ]
        assert not check.passed
        assert check.metadata["tasks_broken"].value == 1
        assert f"| {task_id} | {day} | fees in different currencies |" in _md(check, "broken")


def test_open_tasks_past_the_horizon_warn_and_name_a_task(
    simulator: SimulatorServer, database_url: str
) -> None:
    """Open tasks of a day older than the horizon make the check warn (counted, the oldest
    named); open tasks inside the horizon do not count; once they are final it passes."""
    sim = simulator.simulator
    sim.configure(open_fraction=0.5)  # every day has open tasks, whatever today is
    horizon_days = SETTINGS.open_tasks_horizon_days
    assert horizon_days >= 3
    today = datetime.now(ZoneInfo(SETTINGS.timezone)).date()
    # Two days clear of the horizon on each side, so a midnight during the test changes nothing.
    old, recent = today - timedelta(days=horizon_days + 2), today - timedelta(days=horizon_days - 2)
    opened = {
        day: sorted(t.task_id for t in sim.store.day(day) if t.record["status"] in OPEN_STATUSES)
        for day in (old, recent)
    }
    assert opened[old] and opened[recent]
    with DagsterInstance.ephemeral() as instance:
        _sync(simulator, database_url, instance, [old])
        _sync(simulator, database_url, instance, [recent])

        check = _run_checks(simulator, database_url, instance, [open_tasks_within_horizon])[
            "open_tasks_within_horizon"
        ]
        assert not check.passed
        assert check.severity == AssetCheckSeverity.WARN
        assert check.metadata["stale_open_tasks"].value == len(opened[old])
        examples = _md(check, "examples")
        assert f"| {opened[old][0]} | {old} |" in examples
        assert all(str(task_id) not in examples for task_id in opened[recent])

        sim.store.advance([old], to_final=True)
        _sync(simulator, database_url, instance, [old])
        check = _run_checks(simulator, database_url, instance, [open_tasks_within_horizon])[
            "open_tasks_within_horizon"
        ]
        assert check.passed
        assert check.metadata["stale_open_tasks"].value == 0

"""Good records of odd but valid shapes, served by the simulator over HTTP and synced into
PostgreSQL, are stored as what the API's strings say: compared column by column with a plain
reading of each value (Decimal, int, the zone's rules) written here, not with the normaliser's
own reference parser."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from pipelines.laaffic.client import LaafficClient
from pipelines.laaffic.simulator import SimulatorServer
from pipelines.sync import sync_day
from pipelines.warehouse.migrate import apply_migrations
from pipelines.warehouse.normalise import FIELDS_BY_NAME, PY_WHITESPACE
from tests.defs.helpers import SIM_KEY, SIM_SECRET

ROUND_TRIP = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
ZONES = (
    "Asia/Shanghai",
    "Asia/Kolkata",
    "America/New_York",
    "Europe/London",
    "CET",
    "Australia/Lord_Howe",  # summer time of 30 minutes
    "America/Sao_Paulo",  # summer time that began at midnight (until 2019)
)
#: Local times just before a change of clocks in one of ZONES (each is ordinary in the others).
CLOCK_CHANGES = (
    datetime(2024, 3, 10, 1, 30),  # New York: 02:00-03:00 skipped
    datetime(2024, 11, 3, 0, 30),  # New York: 01:00-02:00 twice
    datetime(2024, 3, 31, 0, 30),  # London: 01:00-02:00 skipped; CET: 02:00-03:00
    datetime(2024, 10, 27, 0, 30),  # London: 01:00-02:00 twice; CET: 02:00-03:00
    datetime(2024, 4, 7, 1, 0),  # Lord Howe: 01:30-02:00 twice
    datetime(2024, 10, 6, 1, 30),  # Lord Howe: 02:00-02:30 skipped
    datetime(2018, 11, 3, 23, 30),  # Sao Paulo: 00:00-01:00 skipped
    datetime(2019, 2, 16, 22, 30),  # Sao Paulo: 23:00-24:00 twice
    datetime(2024, 2, 28, 23, 30),  # a leap day
)

space = st.text(alphabet=PY_WHITESPACE, max_size=2)  # what str.strip() removes
ascii_space = st.text(alphabet=" \t", max_size=2)


def _number(whole_digits: int, places: int, *, signed: bool = True) -> st.SearchStrategy[str]:
    """Decimal text within the limits: any sign, leading zeros, 0 to `places` decimals."""
    return st.builds(
        lambda sign, whole, fraction: sign + whole + fraction,
        st.sampled_from(["", "+", "-"] if signed else [""]),
        st.text(alphabet="0123456789", min_size=1, max_size=whole_digits),
        st.just("") | st.text(alphabet="0123456789", min_size=1, max_size=places).map(".{}".format),
    )


def _padded(text: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.builds(lambda left, t, right: left + t + right, space, text, space)


def _integer(low: int, high: int) -> st.SearchStrategy[int | str]:
    """A JSON integer, or the same as text with a sign, leading zeros and white space."""
    number = st.integers(min_value=low, max_value=high)
    return number | st.builds(
        lambda n, plus, zeros, left, right: (
            f"{left}{'-' if n < 0 else plus}{'0' * zeros}{abs(n)}{right}"
        ),
        number,
        st.sampled_from(["", "+"]),
        st.integers(0, 3),
        space,
        space,
    )


INT32 = (-(2**31), 2**31 - 1)
fees = _padded(
    st.builds(
        lambda amount, a, currency, b, c: f"{amount}{a}({b}{currency}{c})",
        _number(14, 6),
        ascii_space,
        st.sampled_from(["USD", "EUR", "CNY"]),
        ascii_space,
        ascii_space,
    )
)
amounts = _padded(_number(14, 6)) | st.integers(-(10**14) + 1, 10**14 - 1)
percents = _padded(
    st.builds(lambda n, suffix: n + suffix, _number(12, 30), st.sampled_from(["", "%", " %"]))
) | st.integers(-(10**12) + 1, 10**12 - 1)
durations = _padded(
    st.builds(
        lambda n, suffix: n + suffix,
        _number(12, 6, signed=False),
        st.sampled_from(["", "s", " s"]),
    )
) | st.integers(0, 10**12 - 1)
created = st.one_of(
    st.builds(
        lambda base, seconds: base + timedelta(seconds=seconds),
        st.sampled_from(CLOCK_CHANGES),
        st.integers(0, 3 * 3600),
    ),
    st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31)).map(
        lambda moment: moment.replace(microsecond=0)
    ),
)
names = st.none() | st.text().filter(lambda name: "\x00" not in name)
extras = st.dictionaries(
    st.text(max_size=8).filter(lambda key: key not in FIELDS_BY_NAME and "\x00" not in key),
    st.none() | st.booleans() | st.integers() | st.text().filter(lambda t: "\x00" not in t),
    max_size=3,
)
records = st.fixed_dictionaries(
    {
        "taskName": names,
        "status": _integer(0, 6),
        "rate": percents,
        "numCnt": _integer(*INT32),
        "callNum": _integer(*INT32),
        "success": _integer(*INT32),
        "fail": _integer(*INT32),
        "createdTime": created.map(lambda moment: moment.isoformat(sep=" ")),
        "scriptId": st.none() | _integer(*INT32),
        "taskType": _integer(-(2**15), 2**15 - 1),
        "answeredNum": _integer(*INT32),
        "asr": percents,
        "agentTotalFeetime": _integer(*INT32),
        "agentFee": amounts,
        "chargeLen": _integer(*INT32),
        "acd": durations,
        "groupCallPayFee": fees,
        "smsPayFee": fees,
        "taskSumPayFee": fees,
        "sendSmsNum": _integer(*INT32),
    }
)


def _instant(local_text: str, zone: str) -> datetime:
    """The moment a local date-time names in `zone`: a time that occurs twice (clocks go back)
    is the later of the two, one that never occurs (clocks go forward) is read with the offset
    before the change, as PostgreSQL documents for its input."""
    local = datetime.strptime(local_text, "%Y-%m-%d %H:%M:%S")
    first = local.replace(tzinfo=ZoneInfo(zone), fold=0)
    second = local.replace(tzinfo=ZoneInfo(zone), fold=1)
    occurs = first.astimezone(UTC).astimezone(ZoneInfo(zone)).replace(tzinfo=None) == local
    return second if occurs and first.utcoffset() != second.utcoffset() else first


def _zone_data_agree(conn: psycopg.Connection, local_text: str, zone: str) -> bool:
    """Whether this process's tz database (zoneinfo) and the server's give `zone` the same
    offsets around `local_text`: at the moments its two readings (fold 0 and 1) name. The
    pipeline reads createdTime with the server's data, which this test cannot check against
    when the two differ: they do for "CET" before 1947 between a system tzdata that keeps
    CET's old rule (Debian's) and the embedded PostgreSQL's own, where CET is Europe/Brussels
    (tzdata 2024b) and 1940-01-01 00:00 is UTC+0, not UTC+1."""
    local = datetime.strptime(local_text, "%Y-%m-%d %H:%M:%S")
    moments = {local.replace(tzinfo=ZoneInfo(zone), fold=fold) for fold in (0, 1)}
    with conn.transaction(force_rollback=True), conn.cursor() as cur:
        cur.execute("SELECT set_config('TimeZone', %s, true)", (zone,))
        for moment in moments:
            row = cur.execute(
                "SELECT extract(timezone FROM %s::timestamptz)", (moment.astimezone(UTC),)
            ).fetchone()
            assert row is not None and moment.utcoffset() is not None
            if Decimal(row[0]) != Decimal(int(moment.utcoffset().total_seconds())):
                return False
    return True


def _decimal(value: Any, suffix: str = "") -> Decimal:
    return Decimal(str(value).strip().removesuffix(suffix).strip())


def _fee(value: str) -> tuple[Decimal, str]:
    amount, currency = value.strip().removesuffix(")").split("(")
    return Decimal(amount.strip()), currency.strip()


def _expected(record: dict[str, Any], zone: str) -> dict[str, Any]:
    """The row a record's strings describe."""
    name = record["taskName"]
    script = record["scriptId"]
    moment = _instant(record["createdTime"], zone)
    row: dict[str, Any] = {
        "task_name": name if name is not None and name.strip() else None,
        "status": int(str(record["status"]).strip()),
        "rate": _decimal(record["rate"], "%"),
        "created_epoch": Decimal(int((moment - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds())),
        "created_date": date.fromisoformat(record["createdTime"][:10]),
        "script_id": None if script is None else int(str(script).strip()),
        "task_type": int(str(record["taskType"]).strip()),
        "asr": _decimal(record["asr"], "%"),
        "agent_fee_amount": _decimal(record["agentFee"]),
        "acd_seconds": _decimal(record["acd"], "s"),
    }
    for api, column in (
        ("numCnt", "num_cnt"),
        ("callNum", "call_num"),
        ("success", "success"),
        ("fail", "fail"),
        ("answeredNum", "answered_num"),
        ("sendSmsNum", "send_sms_num"),
        ("agentTotalFeetime", "agent_total_feetime"),
        ("chargeLen", "charge_len"),
    ):
        row[column] = int(str(record[api]).strip())
    for api, prefix in (
        ("groupCallPayFee", "group_call_pay_fee"),
        ("smsPayFee", "sms_pay_fee"),
        ("taskSumPayFee", "task_sum_pay_fee"),
    ):
        row[f"{prefix}_amount"], row[f"{prefix}_currency"] = _fee(record[api])
    row["raw"] = record
    return row


_COLUMNS = (
    "task_name, status, rate, extract(epoch FROM created_time) AS created_epoch, created_date, "
    "script_id, task_type, asr, agent_fee_amount, acd_seconds, num_cnt, call_num, success, fail, "
    "answered_num, send_sms_num, agent_total_feetime, charge_len, "
    "group_call_pay_fee_amount, group_call_pay_fee_currency, sms_pay_fee_amount, "
    "sms_pay_fee_currency, task_sum_pay_fee_amount, task_sum_pay_fee_currency, raw"
)


@pytest.fixture
def synced_into(
    simulator: SimulatorServer, database_url: str
) -> Iterator[tuple[SimulatorServer, psycopg.Connection, LaafficClient]]:
    simulator.simulator.configure(tasks_per_day=0)
    client = LaafficClient(simulator.url, SIM_KEY, SIM_SECRET, backoff_base_seconds=0.001)
    with psycopg.connect(database_url) as conn, client:
        apply_migrations(conn)
        conn.commit()
        yield simulator, conn, client


_days = itertools.count()


_ORDINARY = {
    "taskName": "t",
    "status": 2,
    "rate": "0",
    "numCnt": 0,
    "callNum": 0,
    "success": 0,
    "fail": 0,
    "scriptId": None,
    "taskType": 3,
    "answeredNum": 0,
    "asr": "0",
    "agentTotalFeetime": 0,
    "agentFee": "0",
    "chargeLen": 0,
    "acd": "0",
    "groupCallPayFee": "0(USD)",
    "smsPayFee": "0(USD)",
    "taskSumPayFee": "0(USD)",
    "sendSmsNum": 0,
}


@ROUND_TRIP
@given(st.lists(st.tuples(records, extras), min_size=1, max_size=12), st.sampled_from(ZONES))
# A local time whose zone the embedded PostgreSQL's tz database and Debian's read differently
# (see `_zone_data_agree`): the test used to fail on a machine without a PostgreSQL server.
@example(generated=[({**_ORDINARY, "createdTime": "1940-01-01 00:00:00"}, {})], zone="CET")
def test_property_good_records_are_stored_as_their_strings_say(
    synced_into: tuple[SimulatorServer, psycopg.Connection, LaafficClient],
    generated: list[tuple[dict[str, Any], dict[str, Any]]],
    zone: str,
) -> None:
    simulator, conn, client = synced_into
    n = next(_days)
    day = date(2030, 1, 1) + timedelta(days=n)  # a window of its own for each example
    assume(all(_zone_data_agree(conn, record["createdTime"], zone) for record, _ in generated))
    served: dict[int, dict[str, Any]] = {}
    for at, (record, extra) in enumerate(generated):
        task_id = (n + 1) * 1000 + at
        served[task_id] = {"taskId": task_id, **record, **extra}
        simulator.simulator.store.add_raw(day, served[task_id])

    result = sync_day(client, conn, day, time_zone=zone)

    assert result.write.rejected == 0, conn.execute(
        "SELECT task_id, field, raw_value, error FROM group_call_task_rejects"
    ).fetchall()
    for task_id, record in served.items():
        with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
            stored = cur.execute(
                f"SELECT {_COLUMNS} FROM group_call_tasks WHERE task_id = %s".encode(),
                (task_id,),
            ).fetchone()
        assert stored == _expected(record, zone), (zone, record)

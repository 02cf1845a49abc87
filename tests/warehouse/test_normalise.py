"""The normaliser: every parser kind, table-driven and property-based.

`parse_value` is the exact reference; `normalise_records` parses whole columns with Arrow compute
kernels and must agree with it value by value. A value that cannot be parsed becomes NULL in its
column and a Reject naming task, field and raw value; nothing else in the batch is affected.
"""

from __future__ import annotations

import json
import math
import re
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.laaffic.client import _task_key
from pipelines.warehouse.normalise import (
    FIELDS,
    FIELDS_BY_NAME,
    KINDS,
    STAGE_COLUMNS,
    NormalisedWindow,
    ParseError,
    Reject,
    normalise_records,
    parse_value,
)
from tests.warehouse.helpers import make_records

DAY = date(2024, 6, 4)
PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: For the costlier properties (a whole window of every field per example).
PROPERTY_FEW = settings(PROPERTY, max_examples=40)

# -- table-driven: parse_value -------------------------------------------------------------------

ACCEPTED: list[tuple[str, Any, tuple[str | None, ...]]] = [
    # fee: amount + ISO currency
    ("fee", "0.034827(USD)", ("0.034827", "USD")),
    ("fee", "0(USD)", ("0", "USD")),
    ("fee", "12.5(EUR)", ("12.5", "EUR")),
    ("fee", "0.159827(USD)", ("0.159827", "USD")),
    ("fee", "  0.034827(USD)\t\n", ("0.034827", "USD")),
    ("fee", "12.5 ( EUR )", ("12.5", "EUR")),
    ("fee", "99999999999999.999999(USD)", ("99999999999999.999999", "USD")),
    ("fee", "0.000001(USD)", ("0.000001", "USD")),
    ("fee", "-1.5(USD)", ("-1.5", "USD")),
    # amount: agentFee has no currency marker
    ("amount", "0.125000", ("0.125000",)),
    ("amount", "0", ("0",)),
    ("amount", " 3.5 ", ("3.5",)),
    ("amount", "99999999999999.999999", ("99999999999999.999999",)),
    ("amount", 3, ("3",)),  # a JSON integer is exact
    # percent
    ("percent", "80", ("80",)),
    ("percent", "66.67", ("66.67",)),
    ("percent", "100", ("100",)),
    ("percent", "0", ("0",)),
    ("percent", " 80 ", ("80",)),
    ("percent", "80%", ("80",)),
    ("percent", 80, ("80",)),
    # a rate computed in binary floating point and printed in full, as text or a JSON number
    ("percent", "66.66666666666667", ("66.66666666666667",)),
    ("percent", 66.66666666666667, ("66.66666666666667",)),
    ("percent", "0.30000000000000004%", ("0.30000000000000004",)),
    # seconds
    ("seconds", "60s", ("60",)),
    ("seconds", "0s", ("0",)),
    ("seconds", "60", ("60",)),
    ("seconds", "12.5s", ("12.5",)),
    ("seconds", " 60s ", ("60",)),
    ("seconds", 60, ("60",)),
    # integers, limits included
    ("int", 0, ("0",)),
    ("int", 10, ("10",)),
    ("int", 2**31 - 1, ("2147483647",)),
    ("int", -(2**31), ("-2147483648",)),
    ("int", "42", ("42",)),
    ("int", " 7 ", ("7",)),
    ("int", "+7", ("7",)),
    ("smallint", 3, ("3",)),
    ("smallint", 2**15 - 1, ("32767",)),
    ("smallint", -(2**15), ("-32768",)),
    ("bigint", 5000602, ("5000602",)),
    ("bigint", 2**63 - 1, ("9223372036854775807",)),
    ("bigint", -(2**63), ("-9223372036854775808",)),
    ("bigint", "5000602", ("5000602",)),
    # leading zeros past Python's 4,300-digit int() limit: still the number written
    ("bigint", "0" * 5000 + "5000602", ("5000602",)),
    ("int", "-" + "0" * 5000 + "7", ("-7",)),
    *[("status", code, (str(code),)) for code in range(7)],
    # local date-times: the text as sent, and its account-local date
    ("local_datetime", "2024-06-04 14:49:36", ("2024-06-04 14:49:36", "2024-06-04")),
    ("local_datetime", "2024-02-29 00:00:00", ("2024-02-29 00:00:00", "2024-02-29")),
    ("local_datetime", "2023-12-31 23:59:59", ("2023-12-31 23:59:59", "2023-12-31")),
    ("local_datetime", " 2024-06-04 14:49:36 ", ("2024-06-04 14:49:36", "2024-06-04")),
    ("local_datetime", "0001-01-01 00:00:00", ("0001-01-01 00:00:00", "0001-01-01")),
    ("local_datetime", "9999-12-31 23:59:59", ("9999-12-31 23:59:59", "9999-12-31")),
    # text is kept exactly (not stripped)
    ("text", "2024-06-04 14:49:17-agent", ("2024-06-04 14:49:17-agent",)),
    ("text", "回访客户-1", ("回访客户-1",)),
    ("text", "  promo 'spring'; batch 3\t", ("  promo 'spring'; batch 3\t",)),
]

REFUSED: list[tuple[str, Any]] = [
    ("fee", "abc(USD)"),
    ("fee", "0.1.2(USD)"),
    ("fee", "--"),
    ("fee", "12(US)"),
    ("fee", "12(usd)"),
    ("fee", "12(USDT)"),
    ("fee", "12"),
    ("fee", "(USD)"),
    ("fee", "12(USD)x"),
    ("fee", "1.1234567(USD)"),  # > 6 places: numeric(20,6) would round it
    ("fee", "123456789012345(USD)"),  # > 14 integer digits: numeric(20,6) overflows
    ("fee", "1e3(USD)"),
    ("fee", "١٢(USD)"),  # Arabic-Indic digits: PostgreSQL's numeric refuses them
    ("fee", 12),
    ("fee", True),
    ("fee", ["0(USD)"]),
    ("fee", {"amount": "0", "currency": "USD"}),
    ("amount", "abc"),
    ("amount", "0.1234567"),
    ("amount", "123456789012345"),
    ("amount", "1e5"),
    ("amount", "NaN"),
    ("amount", "0x10"),
    ("amount", "--"),
    ("amount", False),
    ("percent", "abc"),
    ("percent", "80%%"),
    ("percent", "1e2"),
    ("percent", "--"),
    ("percent", "٨٠"),
    ("percent", True),
    ("percent", float("nan")),
    ("percent", "1." + "3" * 31),
    ("seconds", "60m"),
    ("seconds", "-1s"),
    ("seconds", "s"),
    ("seconds", "60ss"),
    ("seconds", "1e3s"),
    ("int", 2**31),
    ("int", -(2**31) - 1),
    ("int", 2**63),
    ("int", 2**64),
    ("int", 10**30),
    ("int", 1.0),
    ("int", 2.5),
    ("int", float("inf")),
    ("int", True),
    ("int", False),
    ("int", "1.0"),
    ("int", "abc"),
    ("int", "\u0665"),  # ARABIC-INDIC DIGIT FIVE
    ("int", [1]),
    ("int", {"n": 1}),
    ("smallint", 2**15),
    ("smallint", -(2**15) - 1),
    ("bigint", 2**63),
    ("bigint", -(2**63) - 1),
    ("bigint", "9223372036854775808"),
    ("bigint", 5000602.0),
    # more digits than Python's int() converts (4,300): out of range, not a ValueError
    ("bigint", "9" * 5000),
    ("int", "-" + "9" * 5000),
    ("smallint", "1" * 4301),
    ("status", "9" * 5000),
    ("status", 7),
    ("status", -1),
    ("status", "7"),
    ("local_datetime", "2024-02-30 00:00:00"),
    ("local_datetime", "2023-02-29 00:00:00"),
    ("local_datetime", "2024-13-01 00:00:00"),
    ("local_datetime", "2024-00-10 00:00:00"),
    ("local_datetime", "2024-01-01 24:00:00"),
    ("local_datetime", "2024-01-01 00:60:00"),
    ("local_datetime", "2024-01-01 00:00:60"),
    ("local_datetime", "0000-01-01 00:00:00"),  # PostgreSQL has no year 0
    ("local_datetime", "2024-1-1 0:0:0"),
    ("local_datetime", "2024-01-01T00:00:00"),
    ("local_datetime", "2024-01-01 00:00:00+08:00"),
    ("local_datetime", "2024-01-01"),
    ("local_datetime", "\uff12\uff10\uff12\uff14-01-01 00:00:00"),  # full-width digits
    ("local_datetime", 1717483776),
    ("text", "a\x00b"),  # PostgreSQL text cannot hold NUL
    ("text", "a\ud800b"),  # a lone surrogate is not Unicode
    ("text", True),
]


@pytest.mark.parametrize(("kind", "value", "expected"), ACCEPTED)
def test_parse_value_accepts(kind: str, value: Any, expected: tuple[str | None, ...]) -> None:
    assert parse_value(kind, value) == expected
    assert parse_value(kind, value, required=True) == expected


@pytest.mark.parametrize(("kind", "value"), REFUSED)
def test_parse_value_refuses(kind: str, value: Any) -> None:
    with pytest.raises(ParseError) as refused:
        parse_value(kind, value)
    assert str(refused.value)


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("empty", [None, "", "   ", "\t\n"])
def test_empty_is_null_unless_required(kind: str, empty: str | None) -> None:
    assert parse_value(kind, empty) == (None,) * KINDS[kind].outputs
    with pytest.raises(ParseError, match="required"):
        parse_value(kind, empty, required=True)


@pytest.mark.parametrize(
    ("kind", "value", "words"),
    [
        ("fee", "1.1234567(USD)", "more than 6 decimal places"),
        ("amount", "0.1234567", "more than 6 decimal places"),
        ("fee", "12(US)", "'12(US)'"),
        ("int", 2**31, "out of range"),
        ("int", "9" * 5000, "'" + "9" * 77 + "...' is out of range for int"),
        ("status", 9, "unknown status code 9"),
        ("int", 1.0, "expected an integer"),
        ("percent", True, "got JSON bool"),
        ("amount", 0.125, "got the JSON number 0.125"),
        ("amount", 12345678901234.123456, "binary floating point"),
        ("fee", 0.5, "got the JSON number 0.5"),
        ("local_datetime", "2024-02-30 00:00:00", "not a valid date-time"),
        # A well-formed number past a limit says which limit, not that it is no number at all.
        ("fee", "123456789012345(USD)", "more than 14 digits before the decimal point"),
        ("amount", "-123456789012345.5", "more than 14 digits before the decimal point"),
        ("percent", "1." + "3" * 31, "more than 30 decimal places"),
        ("percent", "1234567890123%", "more than 12 digits before the decimal point"),
        ("seconds", "1.1234567s", "more than 6 decimal places"),
        ("seconds", "1234567890123 s", "more than 12 digits before the decimal point"),
        # ... and one that is not well-formed is not described by a limit it also exceeds.
        ("fee", "0.1234567", 'is not an amount with its currency, like "0.034827(USD)"'),
        ("amount", "1.1234567e5", "is not a decimal amount"),
        ("fee", "1.1234567(usd)", "is not an amount with its currency"),
        ("text", "a\x00b", "NUL"),
    ],
)
def test_errors_say_what_is_wrong(kind: str, value: Any, words: str) -> None:
    with pytest.raises(ParseError, match=re.escape(words)):
        parse_value(kind, value)


# -- table-driven: normalise_records -------------------------------------------------------------


def _rows(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    window = normalise_records(records)
    return {str(row["task_id"]): {str(k): v for k, v in row.items()} for row in _records(window)}


def _records(window: NormalisedWindow) -> list[dict[str, Any]]:
    return [{str(k): v for k, v in row.items()} for row in window.rows.to_dict("records")]


def test_realistic_records_normalise_without_rejects() -> None:
    records = make_records(DAY, 200)
    window = normalise_records(records)
    assert window.rejects == []
    assert list(window.rows.columns) == list(STAGE_COLUMNS)
    assert len(window.rows) == len(records)
    for record, row in zip(records, window.rows.to_dict("records"), strict=True):
        assert row["task_id"] == str(record["taskId"])
        assert row["created_local"] == record["createdTime"]
        assert row["created_date"] == record["createdTime"][:10]
        amount, currency = record["taskSumPayFee"].removesuffix(")").split("(")
        assert (row["task_sum_pay_fee_amount"], row["task_sum_pay_fee_currency"]) == (
            amount,
            currency,
        )
        assert row["agent_fee_amount"] == record["agentFee"]
        assert row["acd_seconds"] == record["acd"].removesuffix("s")
        assert row["rate"] == record["rate"]
        assert json.loads(row["raw"]) == record
        assert all(value is None or isinstance(value, str) for value in row.values())
    open_count = sum(record["status"] in (0, 1, 5, 6) for record in records)
    assert window.open_tasks == open_count


def test_the_vendor_example_record() -> None:
    record = {
        "taskId": 5000602,
        "taskName": "2024-06-04 14:49:17-agent",
        "status": 2,
        "rate": "100",
        "numCnt": 10,
        "callNum": 10,
        "success": 8,
        "fail": 2,
        "createdTime": "2024-06-04 14:49:36",
        "scriptId": 56,
        "taskType": 3,
        "answeredNum": 8,
        "asr": "80",
        "agentTotalFeetime": 320,
        "agentFee": "0.125000",
        "chargeLen": 480,
        "acd": "60s",
        "groupCallPayFee": "0.034827(USD)",
        "smsPayFee": "0(USD)",
        "taskSumPayFee": "0.159827(USD)",
        "sendSmsNum": 0,
    }
    window = normalise_records([record])
    assert window.rejects == []
    row = window.rows.to_dict("records")[0]
    assert {k: v for k, v in row.items() if k != "raw"} == {
        "task_id": "5000602",
        "task_name": "2024-06-04 14:49:17-agent",
        "status": "2",
        "rate": "100",
        "num_cnt": "10",
        "call_num": "10",
        "success": "8",
        "fail": "2",
        "answered_num": "8",
        "send_sms_num": "0",
        "created_local": "2024-06-04 14:49:36",
        "created_date": "2024-06-04",
        "script_id": "56",
        "task_type": "3",
        "asr": "80",
        "agent_total_feetime": "320",
        "charge_len": "480",
        "agent_fee_amount": "0.125000",
        "acd_seconds": "60",
        "group_call_pay_fee_amount": "0.034827",
        "group_call_pay_fee_currency": "USD",
        "sms_pay_fee_amount": "0",
        "sms_pay_fee_currency": "USD",
        "task_sum_pay_fee_amount": "0.159827",
        "task_sum_pay_fee_currency": "USD",
    }
    assert json.loads(row["raw"]) == record


#: (API field, malformed value): each lands in rejects; the rest of the batch is unaffected.
MALFORMED: list[tuple[str, Any]] = [
    ("groupCallPayFee", "abc(USD)"),
    ("groupCallPayFee", "0.1.2(USD)"),
    ("smsPayFee", "--"),
    ("taskSumPayFee", "12(US)"),
    ("taskSumPayFee", ""),  # required: empty is a reject, not a NULL
    ("groupCallPayFee", "1.1234567(USD)"),
    ("groupCallPayFee", "123456789012345(USD)"),  # > 14 integer digits: numeric(20,6) overflows
    ("agentFee", ""),
    ("agentFee", "0.1234567"),
    ("agentFee", "123456789012345"),
    ("rate", "abc"),
    ("asr", True),
    ("acd", "sixty"),
    ("numCnt", 1.5),
    ("numCnt", 3.0),
    ("callNum", True),
    ("success", [1, 2]),
    ("fail", {"n": 1}),
    ("answeredNum", 2**31),
    ("chargeLen", 2**63),
    ("sendSmsNum", "many"),
    ("scriptId", 10**20),
    ("status", 9),
    ("status", None),
    ("taskType", 2**15),
    ("chargeLen", "9" * 5000),  # beyond Python's int() limit (4,300 digits)
    ("createdTime", "2024-02-30 10:00:00"),
    ("createdTime", "2024-06-04T10:00:00"),
    ("createdTime", ""),
    ("taskName", "bad\x00name"),
    # Amounts as JSON numbers with a fraction: read as doubles, their digits are not exact.
    ("agentFee", 0.125),
    ("agentFee", 12345678901234.123456),
]


@pytest.mark.parametrize(("field", "bad"), MALFORMED)
def test_malformed_value_is_rejected_alone(field: str, bad: Any) -> None:
    records = make_records(DAY, 5)
    baseline = _rows(records)
    victim = records[2]
    victim[field] = bad
    messages: list[str] = []
    window = normalise_records(records, log=messages.append)

    assert window.rejects == [
        Reject(victim["taskId"], field, _expected_raw_value(bad), window.rejects[0].error)
    ]
    assert window.rejects[0].error
    assert len(messages) == 1
    assert field in messages[0]
    assert str(victim["taskId"]) in messages[0]
    rows = {row["task_id"]: row for row in window.rows.to_dict("records")}
    assert rows.keys() == baseline.keys()  # nothing dropped
    key = str(victim["taskId"])
    for column in FIELDS_BY_NAME[field].columns:
        assert rows[key][column] is None
    expected = dict(baseline[key], **dict.fromkeys(FIELDS_BY_NAME[field].columns))
    assert {k: v for k, v in rows[key].items() if k != "raw"} == {
        k: v for k, v in expected.items() if k != "raw"
    }
    assert json.loads(rows[key]["raw"])[field] == (
        bad.replace("\x00", "\ufffd") if isinstance(bad, str) else bad
    )
    for other, row in rows.items():  # nothing else in the batch is affected
        if other != key:
            assert row == baseline[other]


def test_missing_required_field_is_rejected_and_optional_one_is_null() -> None:
    records = make_records(DAY, 3)
    del records[0]["groupCallPayFee"]
    del records[1]["scriptId"]
    records[2]["acd"] = ""
    window = normalise_records(records)
    assert [(r.task_id, r.field, r.raw_value) for r in window.rejects] == [
        (records[0]["taskId"], "groupCallPayFee", None)
    ]
    assert "missing" in window.rejects[0].error
    rows = window.rows.to_dict("records")
    assert rows[0]["group_call_pay_fee_amount"] is None
    assert rows[0]["group_call_pay_fee_currency"] is None
    assert rows[1]["script_id"] is None
    assert rows[2]["acd_seconds"] is None


def test_optional_fields_absent_from_records_are_named_in_one_warning() -> None:
    """An absent optional field is stored as NULL, not refused (the API may leave out what it
    has no value for), but a field the API stopped sending (renamed, say) must not go NULL
    unnoticed: the window's log names each absent field, how many records lack it and a task."""
    records = make_records(DAY, 4)
    del records[1]["scriptId"]
    del records[2]["scriptId"]
    del records[2]["acd"]
    records[3]["numCnt"] = None  # sent, as null: nothing to say
    del records[0]["agentFee"]  # required: a reject of its own, not counted here
    warnings: list[str] = []
    window = normalise_records(records, log=warnings.append)
    assert [(r.task_id, r.field) for r in window.rejects] == [(records[0]["taskId"], "agentFee")]
    assert [w for w in warnings if not w.startswith("rejected agentFee")] == [
        "2 of 4 records lack documented fields, stored as NULL: scriptId (2 records, e.g. "
        f"task {records[1]['taskId']}), acd (1 record, e.g. task {records[2]['taskId']}); "
        "if the API renamed a field, its new name is in raw"
    ]
    rows = window.rows.to_dict("records")
    assert [row["script_id"] for row in rows[1:3]] == [None, None]
    warnings.clear()
    normalise_records(make_records(DAY, 4), log=warnings.append)
    assert warnings == []


@pytest.mark.parametrize("task_id", ["missing", None, "", "abc", 1.5, True, 2**63, [1]])
def test_record_without_usable_task_id_is_kept_whole_as_a_reject(task_id: Any) -> None:
    records = make_records(DAY, 3)
    victim = records[1]
    if task_id == "missing":
        del victim["taskId"]
    else:
        victim["taskId"] = task_id
    victim["rate"] = "not a percentage"  # reported once, with the whole record, not per field
    window = normalise_records(records)
    assert len(window.rejects) == 1
    reject = window.rejects[0]
    assert (reject.task_id, reject.field) == (None, "taskId")
    assert reject.raw_value is not None
    assert json.loads(reject.raw_value) == victim
    assert "kept" in reject.error
    assert window.rows["task_id"].tolist() == [str(records[0]["taskId"]), str(records[2]["taskId"])]


def test_unknown_fields_are_kept_in_raw() -> None:
    records = make_records(DAY, 1)
    records[0]["newVendorField"] = {"nested": [1, "二"]}
    window = normalise_records(records)
    assert window.rejects == []
    assert json.loads(str(window.rows["raw"].iat[0])) == records[0]


def test_empty_batch() -> None:
    window = normalise_records([])
    assert window.rejects == []
    assert len(window.rows) == 0
    assert list(window.rows.columns) == list(STAGE_COLUMNS)
    assert window.open_tasks == 0


def test_a_task_listed_twice_is_one_row_the_latest() -> None:
    first, second = make_records(DAY, 2)
    second["taskId"] = first["taskId"]
    window = normalise_records([first, second])
    assert len(window.rows) == 1
    assert json.loads(str(window.rows["raw"].iat[0])) == second


def test_mixed_json_types_in_one_column() -> None:
    """Integers arrive as numbers or numeric strings; a column mixing them (and nulls) still
    parses exactly, with no detour through float."""
    records = make_records(DAY, 4)
    for record, value in zip(records, [2**31 - 1, "17", None, 9], strict=True):
        record["numCnt"] = value
    rows = normalise_records(records).rows
    assert rows["num_cnt"].tolist() == ["2147483647", "17", None, "9"]
    for record, value in zip(records, [2**63 - 1, 1, 2, 3], strict=True):
        record["taskId"] = value
    assert normalise_records(records).rows["task_id"].tolist() == [
        "9223372036854775807",
        "1",
        "2",
        "3",
    ]


# -- property-based ------------------------------------------------------------------------------

#: ≤ 14 integer digits, ≤ 6 places: everything numeric(20,6) holds.
amounts = st.builds(
    lambda units, places: Decimal(units).scaleb(-places),
    st.integers(min_value=-(10**20) + 1, max_value=10**20 - 1),
    st.integers(min_value=0, max_value=6),
).filter(lambda d: abs(d) < Decimal(10) ** 14)
currencies = st.sampled_from(["USD", "EUR", "GBP", "CNY"])
blank = st.sampled_from(["", " ", "  ", "\t", "\n"])


@PROPERTY
@given(st.lists(st.tuples(amounts, currencies, blank, blank), min_size=1, max_size=30))
def test_property_fee_amounts_parse_back_exactly(
    fees: list[tuple[Decimal, str, str, str]],
) -> None:
    texts = [f"{left}{amount}({currency}){right}" for amount, currency, left, right in fees]
    for text, (amount, currency, _, _) in zip(texts, fees, strict=True):
        parsed = parse_value("fee", text)
        assert parsed[1] == currency
        assert parsed[0] is not None
        assert Decimal(parsed[0]) == amount
        assert parsed[0] == f"{amount}"  # the text itself: no float, no rounding, no exponent
    # The vectorised path over a whole window says the same.
    records = [{"taskId": n, "groupCallPayFee": text} for n, text in enumerate(texts)]
    rows = normalise_records(records).rows
    for (amount, currency, _, _), got, got_currency in zip(
        fees,
        rows["group_call_pay_fee_amount"],
        rows["group_call_pay_fee_currency"],
        strict=True,
    ):
        assert Decimal(got) == amount
        assert got_currency == currency


@PROPERTY
@given(amounts)
def test_property_agent_fee_amounts_parse_back_exactly(amount: Decimal) -> None:
    (text,) = parse_value("amount", f"{amount}")
    assert text is not None
    assert Decimal(text) == amount


def _two(low: int, high: int) -> st.SearchStrategy[str]:
    return st.integers(min_value=low, max_value=high).map(lambda n: f"{n:02d}")


# Value strategies, shaped after what each kind reads, plus everything JSON can carry.
datetime_texts = st.builds(
    lambda y, mo, d, h, mi, s: f"{y}-{mo}-{d} {h}:{mi}:{s}",
    st.one_of(
        st.sampled_from(["0000", "0001", "0999", "1677", "1970", "2024", "2262", "9999"]),
        st.integers(min_value=0, max_value=9999).map(lambda n: f"{n:04d}"),
    ),
    _two(0, 13),
    _two(0, 32),
    _two(0, 24),
    _two(0, 60),
    _two(0, 61),
)
number_texts = st.one_of(
    amounts.map(str),
    st.integers().map(str),
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
    st.from_regex(r"[+-]?[0-9\u0660-\u0669]{1,16}(\.[0-9]{0,8})?", fullmatch=True),
)
shaped_texts = st.one_of(
    datetime_texts,
    number_texts,
    st.builds(lambda n, c: f"{n}({c})", number_texts, st.sampled_from(["USD", "EUR", "US", "usd"])),
    st.builds(lambda n, suffix: f"{n}{suffix}", number_texts, st.sampled_from(["s", "%", " s"])),
    st.builds(lambda a, t, b: a + t + b, blank, number_texts, blank),
    st.sampled_from(["", " ", "--", "abc(USD)", "0.1.2(USD)", "12(US)", "60s", "80", "66.67"]),
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(),
    st.text(),
    shaped_texts,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
#: One column of a window: often of one shape (so the vectorised fast paths run), or mixed.
columns = st.one_of(
    st.lists(shaped_texts, max_size=12),
    st.lists(datetime_texts, max_size=12),
    st.lists(st.one_of(st.none(), shaped_texts), max_size=12),
    st.lists(st.integers(min_value=-(2**64), max_value=2**64), max_size=12),
    st.lists(st.one_of(st.none(), st.integers()), max_size=12),
    st.lists(st.floats(), max_size=12),
    st.lists(json_scalars, max_size=12),
    st.lists(json_values, max_size=12),
)


def _storable(value: Any) -> Any:
    """What the normaliser documents for values PostgreSQL cannot hold (NUL, lone surrogates,
    NaN and infinities)."""
    if isinstance(value, str):
        return re.sub("[\x00\ud800-\udfff]", "\ufffd", value)
    if isinstance(value, float) and not math.isfinite(value):
        return json.dumps(value)
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_storable(v) for v in value]
    return value


def _expected_raw_value(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return _storable(value)
    return json.dumps(_storable(value), ensure_ascii=False)


def _reference(
    records: list[dict[str, Any]],
) -> tuple[dict[str, dict[str, str | None]], list[tuple[int | None, str, str | None]]]:
    """normalise_records' documented semantics, built from `parse_value` one value at a time."""
    rows: dict[str, dict[str, str | None]] = {}
    rejects: list[tuple[int | None, str, str | None]] = []
    for record in records:
        row: dict[str, str | None] = {}
        refused: list[tuple[int | None, str, str | None]] = []
        for field in FIELDS:
            value = record.get(field.api_name)
            try:
                parsed = parse_value(field.kind, value, required=field.required)
            except ParseError:
                parsed = (None,) * len(field.columns)
                refused.append((None, field.api_name, _expected_raw_value(value)))
            row.update(zip(field.columns, parsed, strict=True))
        task_id = row["task_id"]
        if task_id is None:
            whole = json.dumps(_storable(record), ensure_ascii=False, separators=(",", ":"))
            rejects.append((None, "taskId", whole))
            continue
        rejects.extend((int(task_id), name, raw) for _, name, raw in refused)
        rows.pop(task_id, None)
        rows[task_id] = row
    return rows, rejects


def _assert_agrees(records: list[dict[str, Any]]) -> None:
    window = normalise_records(records)
    expected_rows, expected_rejects = _reference(records)
    got_rows = {
        row["task_id"]: {k: v for k, v in row.items() if k != "raw"}
        for row in window.rows.to_dict("records")
    }
    assert got_rows == expected_rows
    assert list(got_rows) == list(expected_rows)
    got_rejects = [(r.task_id, r.field, r.raw_value) for r in window.rejects]
    assert sorted(got_rejects, key=repr) == sorted(expected_rejects, key=repr)
    assert all(r.error for r in window.rejects)


@PROPERTY_FEW
@given(st.lists(columns, min_size=len(FIELDS), max_size=len(FIELDS)), st.integers(0, 12))
def test_property_vectorised_path_agrees_with_reference(values: list[list[Any]], size: int) -> None:
    """Every field at once, each column of one shape or mixed, task IDs valid and distinct."""
    records: list[dict[str, Any]] = [{"taskId": n + 1} for n in range(size)]
    for field, column in zip(FIELDS, values, strict=True):
        if field.api_name == "taskId":
            continue
        for record, value in zip(records, column, strict=False):
            record[field.api_name] = value
    _assert_agrees(records)


@settings(PROPERTY, max_examples=150)
@given(st.sampled_from([f for f in FIELDS if f.api_name != "taskId"]), columns)
def test_property_each_field_agrees_with_reference(field: Any, column: list[Any]) -> None:
    records = [{"taskId": n + 1, field.api_name: value} for n, value in enumerate(column)]
    _assert_agrees(records)


@PROPERTY
@given(columns)
def test_property_task_ids_agree_with_reference(column: list[Any]) -> None:
    """Including duplicates and unusable IDs: one row per ID (the last), the rest rejected."""
    _assert_agrees([{"taskId": value, "status": 2} for value in column])


record_keys = st.one_of(st.sampled_from([f.api_name for f in FIELDS]), st.text(max_size=8))
#: Records of garbage, most with a usable taskId (so that their rows are built), some without.
garbage_records = st.lists(
    st.builds(
        lambda task_id, fields: {**fields, "taskId": task_id} if task_id is not None else fields,
        st.one_of(st.integers(min_value=1, max_value=10**6), st.none(), json_values),
        st.dictionaries(record_keys, json_values, max_size=25),
    ),
    max_size=10,
)


@PROPERTY_FEW
@given(garbage_records)
def test_property_garbage_never_raises_and_nothing_is_dropped(
    records: list[dict[str, Any]],
) -> None:
    window = normalise_records(records)
    kept = set(window.rows["task_id"])
    unkeyed = 0
    for record in records:  # every record is a row or a whole-record reject
        try:
            (task_id,) = parse_value("bigint", record.get("taskId"), required=True)
        except ParseError:
            unkeyed += 1
        else:
            assert task_id in kept
    assert sum(r.field == "taskId" for r in window.rejects) == unkeyed
    for reject in window.rejects:
        assert isinstance(reject, Reject)
        assert reject.field in FIELDS_BY_NAME
        assert reject.error
        _assert_storable(reject.raw_value)
        _assert_storable(reject.error)
    for row in window.rows.to_dict("records"):
        assert list(row) == list(STAGE_COLUMNS)
        for column, value in row.items():
            assert value is None or isinstance(value, str), column
            _assert_storable(value)
        json.loads(row["raw"], parse_constant=_refuse)  # jsonb-valid: no NaN / Infinity
        assert "\\u0000" not in row["raw"].replace("\\\\", "")
        for column in ("group_call_pay_fee_amount", "agent_fee_amount", "rate", "acd_seconds"):
            assert row[column] is None or re.fullmatch(r"[+-]?[0-9]+(\.[0-9]+)?", row[column])


@PROPERTY
@given(st.sampled_from(sorted(KINDS)), json_values, st.booleans())
def test_property_parse_value_raises_only_parse_error(
    kind: str, value: Any, required: bool
) -> None:
    try:
        parsed = parse_value(kind, value, required=required)
    except ParseError as exc:
        assert str(exc)
    else:
        assert len(parsed) == KINDS[kind].outputs
        for text in parsed:
            _assert_storable(text)


def _assert_storable(text: str | None) -> None:
    """PostgreSQL text accepts it: valid UTF-8, no NUL."""
    if text is not None:
        assert "\x00" not in text
        text.encode("utf-8")


def _refuse(constant: str) -> None:
    raise AssertionError(f"{constant} in raw JSON")


@pytest.mark.parametrize(
    "task_id",
    [
        *(5000602, "5000602", " 5000602 ", "+7", "-3", "0", 2**63),
        *("12a", "\u0665", "", None, True, 1.0, [1]),
        *("9" * 5000, "0" * 5000 + "7", "-" + "0" * 4400),  # past int()'s 4,300 digits
    ],
)
def test_paging_keys_a_task_as_the_normaliser_reads_its_taskid(task_id: Any) -> None:
    """The client de-duplicates and completes windows by the task the warehouse will store."""
    try:
        (text,) = parse_value("bigint", task_id, required=True)
    except ParseError:
        text = None
    key = _task_key({"taskId": task_id})
    if text is not None:
        assert key == int(text)
    elif task_id != 2**63:  # out of int64: still one task to the client, a reject to the table
        assert key is None

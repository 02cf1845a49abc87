"""API records → typed, exact column values for `group_call_tasks`, per window, with pandas.

Each field has one kind. A kind has a vectorised fast path (pandas string methods over a whole
column) and an exact one-value reference (`parse_value`) that also words the error; values the
fast path cannot accept go through the reference, so the two always agree (a property test checks
it). Values leave as decimal *text* (e.g. "0.034827") and Postgres parses them into numeric:
money never passes through binary floating point. A value that cannot be parsed becomes NULL in
its column and a `Reject`; the row is still written with its raw payload.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

INT32 = (-(2**31), 2**31 - 1)
INT16 = (-(2**15), 2**15 - 1)
INT64 = (-(2**63), 2**63 - 1)
KNOWN_STATUSES = range(7)
_LOCAL_FORMAT = "%Y-%m-%d %H:%M:%S"
#: A lone surrogate (what JSON "\\ud800" decodes to) cannot be encoded as UTF-8 for PostgreSQL.
_SURROGATE = re.compile("[\ud800-\udfff]")


class ParseError(ValueError):
    """Why one value was refused."""


@dataclass(frozen=True)
class Kind:
    """How one API field is read. `pattern` must fully match the stripped text; its groups are
    the output columns (one group per column)."""

    name: str
    pattern: re.Pattern[str]
    outputs: int = 1
    int_range: tuple[int, int] | None = None
    allowed: range | None = None


_DECIMAL = r"[+-]?\d{1,14}(?:\.\d{1,6})?"
# re.ASCII: \d is 0-9 only. Python's \d also matches other scripts' digits ("١٢"), which
# PostgreSQL's numeric input refuses: one such value would fail the whole window's COPY.
_A = re.ASCII
KINDS = {
    "bigint": Kind("bigint", re.compile(r"([+-]?\d+)", _A), int_range=INT64),
    "int": Kind("int", re.compile(r"([+-]?\d+)", _A), int_range=INT32),
    "smallint": Kind("smallint", re.compile(r"([+-]?\d+)", _A), int_range=INT16),
    "status": Kind(
        "status", re.compile(r"([+-]?\d+)", _A), int_range=INT16, allowed=KNOWN_STATUSES
    ),
    "percent": Kind("percent", re.compile(r"([+-]?\d{1,12}(?:\.\d{1,12})?)\s*%?", _A)),
    "seconds": Kind("seconds", re.compile(r"(\d{1,12}(?:\.\d{1,6})?)\s*s?", _A)),
    "amount": Kind("amount", re.compile(rf"({_DECIMAL})", _A)),
    "fee": Kind("fee", re.compile(rf"({_DECIMAL})\s*\(\s*([A-Z]{{3}})\s*\)", _A), outputs=2),
    "local_datetime": Kind(
        "local_datetime", re.compile(r"(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})", _A), outputs=2
    ),
    "text": Kind("text", re.compile(r"(.*)", re.DOTALL)),
}


@dataclass(frozen=True)
class Field:
    api_name: str
    kind: str
    columns: tuple[str, ...]
    required: bool = False


#: Every documented field: where it goes and how it is read. The one place a field is parsed.
FIELDS: tuple[Field, ...] = (
    Field("taskId", "bigint", ("task_id",), required=True),
    Field("taskName", "text", ("task_name",)),
    Field("status", "status", ("status",), required=True),
    Field("rate", "percent", ("rate",)),
    Field("numCnt", "int", ("num_cnt",)),
    Field("callNum", "int", ("call_num",)),
    Field("success", "int", ("success",)),
    Field("fail", "int", ("fail",)),
    Field("answeredNum", "int", ("answered_num",)),
    Field("sendSmsNum", "int", ("send_sms_num",)),
    Field("createdTime", "local_datetime", ("created_local", "created_date"), required=True),
    Field("scriptId", "int", ("script_id",)),
    Field("taskType", "smallint", ("task_type",), required=True),
    Field("asr", "percent", ("asr",)),
    Field("agentTotalFeetime", "int", ("agent_total_feetime",)),
    Field("chargeLen", "int", ("charge_len",)),
    Field("agentFee", "amount", ("agent_fee_amount",), required=True),
    Field("acd", "seconds", ("acd_seconds",)),
    Field(
        "groupCallPayFee",
        "fee",
        ("group_call_pay_fee_amount", "group_call_pay_fee_currency"),
        required=True,
    ),
    Field("smsPayFee", "fee", ("sms_pay_fee_amount", "sms_pay_fee_currency"), required=True),
    Field(
        "taskSumPayFee",
        "fee",
        ("task_sum_pay_fee_amount", "task_sum_pay_fee_currency"),
        required=True,
    ),
)
FIELDS_BY_NAME = {f.api_name: f for f in FIELDS}

#: Columns handed to the writer, in order (`created_local` becomes `created_time` in SQL).
STAGE_COLUMNS: tuple[str, ...] = (*(c for f in FIELDS for c in f.columns), "raw")


def _describe(value: Any) -> str:
    return type(value).__name__ if not isinstance(value, str) else "string"


def parse_value(kind_name: str, value: Any, *, required: bool = False) -> tuple[str | None, ...]:
    """The exact reference parser for one value: its output column texts, or ParseError."""
    kind = KINDS[kind_name]
    if value is None or (isinstance(value, str) and value.strip() == ""):
        if required:
            raise ParseError(
                "a value is required but it is empty"
                if value is not None
                else "a value is required but it is missing or null"
            )
        return (None,) * kind.outputs
    if isinstance(value, bool | dict | list):
        raise ParseError(f"expected {_EXPECTED[kind_name]}, got JSON {_describe(value)}")
    if isinstance(value, float) and kind.int_range is not None:
        raise ParseError(f"expected an integer, got the number {value!r}")
    if kind_name == "text":
        if not isinstance(value, str):
            return (str(value),)
        if "\x00" in value:
            raise ParseError("contains a NUL character, which PostgreSQL text cannot store")
        if _SURROGATE.search(value):
            raise ParseError("contains an unpaired UTF-16 surrogate, which is not valid Unicode")
        return (value,)
    text = str(value).strip()
    match = kind.pattern.fullmatch(text)
    if match is None:
        raise ParseError(_explain(kind, text))
    groups = match.groups()
    if kind.int_range is not None:
        number = int(groups[0])
        low, high = kind.int_range
        if not low <= number <= high:
            raise ParseError(f"{number} is out of range for {kind_name} ({low}..{high})")
        if kind.allowed is not None and number not in kind.allowed:
            raise ParseError(f"unknown status code {number} (documented: 0..6)")
        return (str(number),)
    if kind_name == "local_datetime":
        try:  # the pattern fixes every field's width; strptime checks the calendar (years 1..9999)
            datetime.strptime(groups[0], _LOCAL_FORMAT)
        except ValueError:
            raise ParseError(f"{text!r} is not a valid date-time") from None
        return (groups[0], groups[0][:10])
    return tuple(groups)


def _explain(kind: Kind, text: str) -> str:
    shown = text if len(text) <= 80 else text[:77] + "..."
    if kind.name in ("amount", "fee") and re.fullmatch(r"[+-]?\d+\.\d{7,}.*", text):
        return f"{shown!r} has more than 6 decimal places; numeric(20,6) would round it"
    return f"{shown!r} is not {_EXPECTED[kind.name]}"


_EXPECTED = {
    "bigint": "a 64-bit integer",
    "int": "a 32-bit integer",
    "smallint": "a 16-bit integer",
    "status": "a status code (0..6)",
    "fee": 'an amount with its currency, like "0.034827(USD)"',
    "amount": 'a decimal amount with at most 6 places, like "0.125000"',
    "percent": 'a percentage, like "80" or "66.67"',
    "seconds": 'a duration in seconds, like "60s"',
    "local_datetime": 'a local date-time "yyyy-MM-dd HH:mm:ss"',
    "text": "text",
}


@dataclass(frozen=True)
class Reject:
    task_id: int | None
    field: str
    raw_value: str | None
    error: str


@dataclass
class NormalisedWindow:
    rows: pd.DataFrame  # STAGE_COLUMNS, values as text or None
    rejects: list[Reject]

    @property
    def open_tasks(self) -> int:
        return int(self.rows["status"].isin(["0", "1", "5", "6"]).sum())


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
#: In JSON text: a NUL escape (or a harmless false alarm after an escaped backslash) or a lone
#: surrogate (json.dumps(ensure_ascii=False) writes those as they are).
_UNSTORABLE_JSON = re.compile(r"\\u0000|[\ud800-\udfff]")


def _storable(value: Any) -> Any:
    """`value` with what PostgreSQL text and jsonb cannot hold replaced: NUL and lone surrogates
    by U+FFFD, NaN and infinities by their JSON spelling as a string ("NaN"). Applied only to
    values that need it, so that one hostile value cannot fail the whole window's write."""
    if isinstance(value, str):
        return _UNSTORABLE.sub("\ufffd", value)
    if isinstance(value, float) and not math.isfinite(value):
        return json.dumps(value)
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_storable(v) for v in value]
    return value


def _json_text(value: Any, **dump_args: Any) -> str:
    """JSON text of a value that PostgreSQL text and jsonb accept."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, **dump_args)
    except ValueError:  # NaN / Infinity: not JSON, and jsonb refuses them
        text = ""
    if not text or _UNSTORABLE_JSON.search(text):
        text = json.dumps(_storable(value), ensure_ascii=False, **dump_args)
    return text


def _raw_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return _storable(value)
    return _json_text(value)


def _fast_column(kind: Kind, column: pd.Series) -> tuple[list[pd.Series], pd.Series] | None:
    """Vectorised parse of a whole column. Returns (outputs, accepted mask); values outside the
    mask go through `parse_value`. None when the column has no fast path."""
    inferred = pd.api.types.infer_dtype(column, skipna=True)
    if kind.int_range is not None and inferred == "integer":
        try:  # exact: Python ints straight to Int64 (no float64 detour for columns with nulls)
            numbers = pd.Series(pd.array(column.to_numpy(), dtype="Int64"), index=column.index)
        except (OverflowError, TypeError, ValueError):
            return None  # beyond int64: the reference path words the error
        low, high = kind.int_range
        ok = numbers.notna() & numbers.between(low, high)
        if kind.allowed is not None:
            ok &= numbers.isin(list(kind.allowed))
        ok = ok.fillna(False).astype(bool)
        text = numbers.astype(object).where(ok, None)
        return [text.map(str, na_action="ignore")], ok
    if inferred != "string" or kind.name == "text":
        return None
    stripped = column.str.strip()
    parts = stripped.str.extract(f"^(?:{kind.pattern.pattern})$", flags=kind.pattern.flags)
    ok = parts[0].notna()
    if kind.int_range is not None or kind.name == "local_datetime":
        return None if not ok.all() else _fast_checked(kind, parts, ok)
    return [parts[i].where(ok, None).astype(object) for i in range(kind.outputs)], ok


def _fast_checked(
    kind: Kind, parts: pd.DataFrame, ok: pd.Series
) -> tuple[list[pd.Series], pd.Series] | None:
    if kind.name != "local_datetime":
        return None  # integer text needs a range check: reference path
    text = parts[0]
    stamps = pd.to_datetime(text, format=_LOCAL_FORMAT, errors="coerce")
    # pandas also takes year 0000 (PostgreSQL has none) and seconds 60 and 61 (rolled over to
    # the next minute); the reference path (datetime.strptime) refuses both, so must this one.
    valid = stamps.notna() & (text.str.slice(0, 4) != "0000") & (text.str.slice(17, 19) < "60")
    local = parts[0].where(valid, None).astype(object)
    return [local, local.str.slice(0, 10).where(valid, None).astype(object)], valid


def normalise_records(
    records: Sequence[dict[str, Any]],
    *,
    log: Callable[[str], Any] | None = None,
) -> NormalisedWindow:
    """Records of one window → staged rows and rejects. Nothing is dropped: a record without a
    usable taskId is returned as a reject carrying the whole record."""
    # dtype=object per column: no inference, so integers never pass through float64.
    frame = pd.DataFrame(
        {f.api_name: pd.Series([r.get(f.api_name) for r in records], dtype=object) for f in FIELDS}
    )
    out: dict[str, pd.Series] = {}
    problems: list[tuple[int, str, str]] = []  # (position, api field, error)
    for field in FIELDS:
        column = frame[field.api_name]
        fast = _fast_column(KINDS[field.kind], column) if len(column) else None
        if fast is not None:
            outputs = [s.reset_index(drop=True) for s in fast[0]]
            pending = np.flatnonzero(~fast[1].to_numpy(dtype=bool)).tolist()
        else:
            outputs = [pd.Series([None] * len(column), dtype=object) for _ in field.columns]
            pending = list(range(len(column)))
        values = column.tolist()
        # Fill plain lists, not Series: a pandas .iat write per value costs ~10 us, about a
        # second for a 100,000-task window's text column (which has no fast path).
        targets = [series.tolist() for series in outputs]
        for position in pending:
            try:
                parsed = parse_value(field.kind, values[position], required=field.required)
            except ParseError as exc:
                message = str(exc)
                if field.required and field.api_name not in records[position]:
                    message = "the field is missing from the record"
                problems.append((position, field.api_name, message))
                continue
            for target, text in zip(targets, parsed, strict=True):
                target[position] = text
        filled = [pd.Series(target, dtype=object) for target in targets]
        out.update(zip(field.columns, filled, strict=True))
    rows = pd.DataFrame(out, columns=list(STAGE_COLUMNS[:-1])).astype(object)
    rows = rows.where(rows.notna(), None)  # one null: None (never NaN/NA) for the COPY
    rows["raw"] = [_json_text(r, separators=(",", ":")) for r in records]
    task_ids: list[str | None] = rows["task_id"].tolist()
    rejects: list[Reject] = []
    for position, field_name, message in sorted(problems):
        task_text = task_ids[position]
        if field_name == "taskId":
            reject = Reject(
                None,
                field_name,
                str(rows["raw"].iat[position]),
                f"taskId: {message}; the whole record is kept here",
            )
        elif task_text is None:
            continue  # the record is reported once, whole, under taskId
        else:
            raw_value = _raw_text(records[position].get(field_name))
            reject = Reject(int(task_text), field_name, raw_value, message)
        rejects.append(reject)
        if log is not None:
            shown = reject.raw_value if reject.raw_value is None else reject.raw_value[:120]
            log(f"rejected {field_name}={shown!r} of task {reject.task_id}: {reject.error}")
    keyed = rows["task_id"].notna()
    rows = rows[keyed].drop_duplicates("task_id", keep="last").reset_index(drop=True)
    return NormalisedWindow(rows=rows, rejects=rejects)

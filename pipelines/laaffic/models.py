"""Typed shapes of the API's request, response envelope and task record (pydantic v2).

Records travel through the pipeline as the plain dicts the API sent, so that the raw payload is
kept exactly; `TaskRecord` documents and validates the 21 documented fields (the pipeline does not
use it: tests validate the simulator's records against it; `normalise.FIELDS` reads them). Unknown
extra fields are allowed and kept.
"""

from __future__ import annotations

import functools
import hashlib
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

LOCAL_DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S"
TASK_TYPE_AI_AGENT = 3
MAX_PAGE_SIZE = 100

#: status code -> label, as documented. 2, 3 and 4 are final; the others still change.
STATUS_LABELS: dict[int, str] = {
    0: "waiting to submit",
    1: "calling",
    2: "finished",
    3: "submission failed",
    4: "canceled",
    5: "suspended",
    6: "submitting",
}
OPEN_STATUSES: frozenset[int] = frozenset({0, 1, 5, 6})
FINAL_STATUSES: frozenset[int] = frozenset({2, 3, 4})


def format_local(dt: datetime) -> str:
    """An account-local, offset-less date-time as the API writes it."""
    return dt.strftime(LOCAL_DATETIME_FORMAT)


class QueryParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    strTime: str
    endTime: str
    taskType: int = TASK_TYPE_AI_AGENT
    statusList: list[int] = Field(default_factory=list)
    idxAppId: int | None = None
    searchCondition: str | None = None

    @field_validator("strTime", "endTime")
    @classmethod
    def _local_datetime(cls, value: str) -> str:
        datetime.strptime(value, LOCAL_DATETIME_FORMAT)
        return value

    @functools.cached_property
    def body(self) -> dict[str, Any]:
        """The JSON `params` object (computed once: every page of a window sends the same)."""
        return self.model_dump(exclude_none=True)


class QueryRequest(BaseModel):
    """The POST body: one page of one creation-time window."""

    model_config = ConfigDict(extra="forbid")

    current: int = Field(ge=1)
    size: int = Field(ge=1, le=MAX_PAGE_SIZE)
    params: QueryParams

    def body(self) -> dict[str, Any]:
        return {"current": self.current, "size": self.size, "params": self.params.body}

    def page(self, current: int) -> QueryRequest:
        """The same query for another page (no re-validation of the shared params)."""
        return self.model_copy(update={"current": current})


class Page(BaseModel):
    """`data` of a successful response. Records stay raw dicts (see module docstring)."""

    model_config = ConfigDict(extra="allow")

    total: int
    size: int
    current: int
    pages: int
    searchCount: bool | None = None
    records: list[dict[str, Any]]
    _body_sha256: bytes = PrivateAttr(default=b"")

    def with_body_digest(self, body: bytes) -> Page:
        """Keep the SHA-256 of the HTTP body this page was parsed from: a window's page digests
        tell a re-sync that nothing changed without looking at a record (`WindowResult`)."""
        self._body_sha256 = hashlib.sha256(body).digest()
        return self

    @property
    def body_sha256(self) -> bytes:
        return self._body_sha256


class ApiStatus(BaseModel):
    """An answer's `code` and `msg` alone, whatever else it holds. `code` is documented as a
    string but sent as a number: accept both."""

    model_config = ConfigDict(extra="allow")

    code: int | str
    msg: str | None = None

    @property
    def code_int(self) -> int | None:
        try:
            return int(self.code)
        except (TypeError, ValueError):
            return None


class ApiResponse(ApiStatus):
    """The envelope: the status and, on success, the page."""

    data: Page | None = None


class TaskRecord(BaseModel):
    """One AI-Agent group-call task, all 21 documented fields."""

    model_config = ConfigDict(extra="allow")

    taskId: int
    taskName: str | None = None
    status: int
    rate: str | None = None
    numCnt: int
    callNum: int
    success: int
    fail: int
    createdTime: str
    scriptId: int | None = None
    taskType: int = TASK_TYPE_AI_AGENT
    answeredNum: int
    asr: str | None = None
    agentTotalFeetime: int
    agentFee: str
    chargeLen: int
    acd: str | None = None
    groupCallPayFee: str
    smsPayFee: str
    taskSumPayFee: str
    sendSmsNum: int


class TimeWindow(BaseModel):
    """An inclusive creation-time window, account-local, to the second (as the API takes it)."""

    model_config = ConfigDict(frozen=True)

    start: datetime
    end: datetime

    def __str__(self) -> str:
        return f"[{format_local(self.start)} .. {format_local(self.end)}]"

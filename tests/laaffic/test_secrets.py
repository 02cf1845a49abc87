"""The API secret and the Sign header never show up in logs, exceptions or reprs."""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Callable
from typing import Any

import pytest

from pipelines.laaffic.client import LaafficClient, sign
from pipelines.laaffic.errors import (
    LaafficAuthError,
    LaafficClockSkewError,
    LaafficError,
    LaafficHttpError,
    LaafficIncompleteWindowError,
    LaafficIpRestrictedError,
    LaafficParameterError,
    LaafficRetriesExhaustedError,
    LaafficUnknownCodeError,
)
from pipelines.laaffic.simulator import SimulatorConfig, SimulatorServer
from tests.laaffic.conftest import Serve
from tests.laaffic.helpers import DAY, day_window, make_client

KEY = "key-Visible-Q7"
SECRET = "s3cr3t-NEVER-shown-8f2e"
WRONG_SECRET = "wr0ng-ALSO-hidden-11aa"
NOW = int(time.time())
SKEWED = NOW - 7200


def signs(secret: str = SECRET) -> set[str]:
    """Every Sign a fixed-clock client (at NOW or SKEWED) can send."""
    return {sign(KEY, secret, str(NOW)), sign(KEY, secret, str(SKEWED))}


FORBIDDEN = {SECRET, WRONG_SECRET, *signs(), *signs(WRONG_SECRET)}


def client(server: SimulatorServer, *, clock: float = NOW, **overrides: Any) -> LaafficClient:
    options: dict[str, Any] = {
        "api_secret": SECRET,
        "clock": lambda: float(clock),
        "timeout_seconds": 0.2,
        "max_attempts": 2,
    }
    options.update(overrides)
    return make_client(server, **options)


def scripted(outcome: str) -> Callable[[SimulatorServer], LaafficClient]:
    def prepare(server: SimulatorServer) -> LaafficClient:
        server.simulator.script(outcome, outcome)
        return client(server)

    return prepare


def ip_restricted(server: SimulatorServer) -> LaafficClient:
    server.simulator.configure(allowed_ips=("10.9.9.9",))
    return client(server)


def inflated_total(server: SimulatorServer) -> LaafficClient:
    sim = server.simulator
    query = sim.query

    def inflated(q: dict[str, Any]) -> bytes:
        answer = json.loads(query(q))
        answer["data"]["total"] += 1
        return json.dumps(answer).encode()

    sim.query = inflated  # type: ignore[method-assign]
    return client(server, max_drift_passes=1)


def wrong_path(server: SimulatorServer) -> LaafficClient:
    failing = client(server)
    failing.base_url = server.url + "/nowhere"
    return failing


FAILURES: dict[str, tuple[Callable[[SimulatorServer], LaafficClient], type[LaafficError]]] = {
    "-1 wrong secret": (lambda s: client(s, api_secret=WRONG_SECRET), LaafficAuthError),
    "-2": (ip_restricted, LaafficIpRestrictedError),
    "-16 persists": (lambda s: client(s, clock=SKEWED), LaafficClockSkewError),
    "-22": (scripted("-22"), LaafficParameterError),
    "-99": (scripted("-99"), LaafficUnknownCodeError),
    "-18": (scripted("-18"), LaafficRetriesExhaustedError),
    "502": (scripted("http:502"), LaafficRetriesExhaustedError),
    "429": (scripted("http:429"), LaafficRetriesExhaustedError),
    "drop": (scripted("drop"), LaafficRetriesExhaustedError),
    "slow": (scripted("slow"), LaafficRetriesExhaustedError),
    "nonjson": (scripted("nonjson"), LaafficRetriesExhaustedError),
    "nodata": (scripted("nodata"), LaafficRetriesExhaustedError),
    "404": (wrong_path, LaafficHttpError),
    "incomplete": (inflated_total, LaafficIncompleteWindowError),
}


def assert_hidden(text: str, where: str) -> None:
    for value in FORBIDDEN:
        assert value not in text, f"{where} leaks {value[:6]}..."


@pytest.mark.parametrize("name", list(FAILURES))
def test_failures_leak_neither_secret_nor_sign(
    serve: Serve, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    caplog.set_level(logging.DEBUG)
    server = serve(SimulatorConfig(api_key=KEY, api_secret=SECRET, slow_seconds=0.5))
    prepare, error = FAILURES[name]

    with pytest.raises(error) as caught:
        prepare(server).fetch_window(day_window())

    exc = caught.value
    texts = {
        "str": str(exc),
        "repr": repr(exc),
        "traceback": "".join(traceback.format_exception(exc)),
        "args": repr(exc.args),
    }
    if isinstance(exc, LaafficRetriesExhaustedError):
        texts["last"] = f"{exc.last!s} {exc.last!r}"
    for where, text in texts.items():
        assert_hidden(text, f"{name}: exception {where}")
    assert any(r.name.startswith("urllib3") for r in caplog.records)  # DEBUG really was on
    assert_hidden(caplog.text, f"{name}: logs")
    for record in caplog.records:
        assert_hidden(record.getMessage(), f"{name}: log record {record.name}")
        assert_hidden(repr(record.args), f"{name}: log args {record.name}")


def test_a_successful_sync_with_retries_logs_no_secret(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = serve(SimulatorConfig(api_key=KEY, api_secret=SECRET, day_counts={DAY: 250}))
    server.simulator.script("-18", "-16", "http:502", "drop", "nonjson")
    result = client(server, max_attempts=6).fetch_window(day_window())
    assert len(result.records) == 250
    assert result.stats.retries == 5
    assert "re-signing" in caplog.text and "transient failure" in caplog.text
    assert_hidden(caplog.text, "logs")
    assert_hidden(repr(result.stats), "stats")


def test_repr_of_the_client_hides_key_and_secret(serve: Serve) -> None:
    server = serve(SimulatorConfig(api_key=KEY, api_secret=SECRET))
    text = repr(client(server))
    assert_hidden(text, "repr")
    assert KEY not in text
    assert "***" in text
    assert server.url in text

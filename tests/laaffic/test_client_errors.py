"""Each status code and transport failure, asserted on the number of requests the API saw."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pipelines.laaffic import simulator as simulator_module
from pipelines.laaffic.client import LaafficClient
from pipelines.laaffic.errors import (
    LaafficApiError,
    LaafficAuthError,
    LaafficConfigError,
    LaafficError,
    LaafficHttpError,
    LaafficIpRestrictedError,
    LaafficParameterError,
    LaafficReadStoppedError,
    LaafficRetriesExhaustedError,
    LaafficSystemError,
    LaafficTransportError,
    LaafficUnknownCodeError,
)
from pipelines.laaffic.models import ApiResponse
from pipelines.laaffic.simulator import SimulatorConfig
from tests.laaffic.conftest import Serve
from tests.laaffic.helpers import body, day_window, make_client, raw_query

CLIENT_TIMEOUT = 0.2
SLOW = 0.6  # the simulator's "slow" answer, well past the client's timeout

# outcome scripted in the simulator -> (class of the last cause, words naming it)
TRANSIENT: dict[str, tuple[type[LaafficError], str]] = {
    "-18": (LaafficSystemError, "-18"),
    "http:502": (LaafficTransportError, "HTTP 502"),
    "http:503": (LaafficTransportError, "HTTP 503"),
    "http:429": (LaafficTransportError, "HTTP 429"),
    "slow": (LaafficTransportError, f"no answer within {CLIENT_TIMEOUT}s"),
    "drop": (LaafficTransportError, "failed or was dropped"),
    "cut": (LaafficTransportError, "broke off while the answer was read"),
    "undecodable": (LaafficTransportError, "could not be decoded"),
    "nonjson": (LaafficTransportError, "not the documented JSON"),
    "nodata": (LaafficTransportError, "no `data` page"),
}


# -- stop at once ------------------------------------------------------------------------------


def test_wrong_secret_is_minus_1_and_stops_at_once(serve: Serve) -> None:
    server = serve()
    client = make_client(server, api_secret="not-the-secret")
    with pytest.raises(LaafficAuthError) as caught:
        client.fetch_window(day_window())
    assert server.simulator.stats.requests == 1
    assert server.simulator.stats.outcomes["refused:-1"] == 1
    assert caught.value.code == -1
    assert "LAAFFIC_API_KEY" in str(caught.value)
    assert "LAAFFIC_API_SECRET" in str(caught.value)


def test_wrong_key_is_minus_1(serve: Serve) -> None:
    server = serve()
    with pytest.raises(LaafficAuthError):
        make_client(server, api_key="someone-else").fetch_window(day_window())
    assert server.simulator.stats.requests == 1


def test_ip_not_allow_listed_is_minus_2_and_stops_at_once(serve: Serve) -> None:
    server = serve(SimulatorConfig(allowed_ips=("10.9.9.9",)))
    with pytest.raises(LaafficIpRestrictedError) as caught:
        make_client(server).fetch_window(day_window())
    assert server.simulator.stats.requests == 1
    assert server.simulator.stats.outcomes["refused:-2"] == 1
    assert caught.value.code == -2
    assert "allow-list" in str(caught.value)


def test_an_allow_listed_loopback_ip_passes(serve: Serve) -> None:
    server = serve(SimulatorConfig(allowed_ips=("10.9.9.9", "127.0.0.1")))
    assert make_client(server).fetch_window(day_window()).records


ERROR_DATA: list[Any] = [{}, "", [], {"records": None}]


def _error_answers_carry(monkeypatch: pytest.MonkeyPatch, data: Any) -> None:
    """Make the simulator's error answers carry `data` instead of null."""

    def answer(code: int, msg: str) -> bytes:
        return json.dumps({"code": code, "msg": msg, "data": data}).encode()

    monkeypatch.setattr(simulator_module, "_code", answer)


@pytest.mark.parametrize("data", [None, *ERROR_DATA])
@pytest.mark.parametrize(
    ("code", "error", "hint"),
    [
        ("-1", LaafficAuthError, "LAAFFIC_API_SECRET"),
        ("-2", LaafficIpRestrictedError, "allow-list"),
        ("-22", LaafficParameterError, "check the window, page size (1..100) and filters"),
    ],
)
def test_fatal_codes_fail_after_exactly_one_request(
    serve: Serve,
    monkeypatch: pytest.MonkeyPatch,
    data: Any,
    code: str,
    error: type[LaafficApiError],
    hint: str,
) -> None:
    """The code decides, not the shape of `data` beside it (null, as documented, or not): a -1
    whose `data` was not a page was taken for a malformed answer, retried as transient and, once
    an attempt succeeded, forgotten (or reported as 'not the documented JSON envelope' without
    the credentials advice)."""
    _error_answers_carry(monkeypatch, data)
    server = serve()
    server.simulator.script(code)
    with pytest.raises(error) as caught:
        make_client(server, max_attempts=5).fetch_window(day_window())
    assert server.simulator.stats.requests == 1
    assert caught.value.code == int(code)
    assert caught.value.api_msg == "scripted failure"
    assert hint in str(caught.value)
    assert "reading page 1 of window [2024-06-04 00:00:00 .. 2024-06-04 23:59:59]" in str(
        caught.value
    )


def test_real_minus_22_from_the_simulator(serve: Serve) -> None:
    server = serve(SimulatorConfig(max_window_days=0))  # refuses any window longer than 0 days
    with pytest.raises(LaafficParameterError) as caught:
        make_client(server).fetch_window(day_window())
    assert server.simulator.stats.requests == 1
    assert server.simulator.stats.outcomes["refused:-22"] == 1
    assert "at most 0 days" in caught.value.api_msg


def test_unknown_code_fails_at_once_with_code_and_msg(serve: Serve) -> None:
    server = serve()
    server.simulator.script("-99")
    with pytest.raises(LaafficUnknownCodeError) as caught:
        make_client(server).fetch_window(day_window())
    assert server.simulator.stats.requests == 1
    assert caught.value.code == -99
    assert caught.value.api_msg == "scripted failure"
    assert "-99" in str(caught.value)
    assert "'scripted failure'" in str(caught.value)


def test_http_404_is_not_retried_and_points_at_the_base_url(serve: Serve) -> None:
    server = serve()
    client = make_client(server, max_attempts=5)
    client.base_url = server.url + "/wrong-prefix"
    with pytest.raises(LaafficHttpError) as caught:
        client.fetch_window(day_window())
    assert "HTTP 404" in str(caught.value)
    assert "LAAFFIC_BASE_URL" in str(caught.value)
    assert server.simulator.stats.requests == 0  # never reached the query endpoint


def test_missing_credentials_are_a_config_error() -> None:
    with pytest.raises(LaafficConfigError, match="LAAFFIC_API_SECRET"):
        LaafficClient("http://127.0.0.1:9", api_key="k", api_secret="")
    with pytest.raises(LaafficConfigError, match="LAAFFIC_API_KEY and LAAFFIC_API_SECRET"):
        LaafficClient("http://127.0.0.1:9")


#: What an error answer's `data` might hold: the contract documents `data` only on success.
@pytest.mark.parametrize("data", ERROR_DATA)
def test_minus_16_is_re_signed_whatever_the_answer_carries_as_data(
    serve: Serve, monkeypatch: pytest.MonkeyPatch, data: Any
) -> None:
    _error_answers_carry(monkeypatch, data)
    server = serve()
    server.simulator.script("-16", "-16")
    result = make_client(server, max_timestamp_resigns=2, max_attempts=1).fetch_window(day_window())
    assert result.records
    assert server.simulator.stats.requests == 3


# -- -16 -------------------------------------------------------------------------------------


def test_scripted_minus_16_is_re_signed_and_retried(serve: Serve) -> None:
    server = serve()
    server.simulator.script("-16", "-16")
    result = make_client(server, max_timestamp_resigns=2, max_attempts=1).fetch_window(day_window())
    assert result.records
    assert server.simulator.stats.requests == 3
    assert result.stats.requests == 3
    assert result.stats.retries == 2


# -- transient: retried, then given up on ----------------------------------------------------


@pytest.mark.parametrize("outcome", list(TRANSIENT))
@pytest.mark.parametrize("failures", [1, 3])
def test_transient_failures_are_retried(serve: Serve, outcome: str, failures: int) -> None:
    server = serve(SimulatorConfig(slow_seconds=SLOW))
    server.simulator.script(*[outcome] * failures)
    client = make_client(server, max_attempts=failures + 1, timeout_seconds=CLIENT_TIMEOUT)

    result = client.fetch_window(day_window())

    assert result.records
    assert server.simulator.stats.requests == failures + 1
    assert server.simulator.stats.outcomes[outcome] == failures
    assert result.stats.requests == failures + 1
    assert result.stats.retries == failures


@pytest.mark.parametrize("outcome", list(TRANSIENT))
def test_transient_failures_give_up_after_max_attempts(serve: Serve, outcome: str) -> None:
    server = serve(SimulatorConfig(slow_seconds=SLOW))
    server.simulator.script(*[outcome] * 3)
    client = make_client(server, max_attempts=3, timeout_seconds=CLIENT_TIMEOUT)

    with pytest.raises(LaafficRetriesExhaustedError) as caught:
        client.fetch_window(day_window())

    assert server.simulator.stats.requests == 3
    cause_class, cause_words = TRANSIENT[outcome]
    assert caught.value.attempts == 3
    assert type(caught.value.last) is cause_class
    message = str(caught.value)
    assert message.startswith("gave up after 3 attempts while reading page 1 of window")
    assert f"last cause: {cause_class.__name__}" in message
    assert cause_words in message


def test_a_mix_of_transient_failures_is_retried_to_success(serve: Serve) -> None:
    server = serve(SimulatorConfig(slow_seconds=SLOW))
    mix = ["-18", "http:502", "http:429", "drop", "cut", "undecodable", "nonjson", "nodata", "slow"]
    server.simulator.script(*mix)
    client = make_client(server, max_attempts=len(mix) + 1, timeout_seconds=CLIENT_TIMEOUT)
    result = client.fetch_window(day_window())
    assert result.records
    assert server.simulator.stats.requests == len(mix) + 1
    assert result.stats.retries == len(mix)


def test_minus_16_does_not_use_up_transient_attempts(serve: Serve) -> None:
    server = serve()
    server.simulator.script("-18", "-16", "-18", "-16")
    result = make_client(server, max_attempts=3, max_timestamp_resigns=2).fetch_window(day_window())
    assert result.records
    assert server.simulator.stats.requests == 5


def test_a_fatal_code_after_transient_failures_stops_at_once(serve: Serve) -> None:
    server = serve()
    server.simulator.script("-18", "http:502", "-22")
    with pytest.raises(LaafficParameterError):
        make_client(server, max_attempts=10).fetch_window(day_window())
    assert server.simulator.stats.requests == 3


# -- code as a string ------------------------------------------------------------------------


def test_code_zero_as_a_string_is_success(serve: Serve) -> None:
    server = serve()
    server.simulator.script("ok-string-code")
    raw = raw_query(server, body())
    assert raw["code"] == "0"
    assert raw["data"]["records"]

    server.simulator.script("ok-string-code")
    result = make_client(server).fetch_window(day_window())
    assert server.simulator.stats.requests == 2
    assert result.stats.requests == 1
    assert result.stats.retries == 0
    assert len(result.records) == raw["data"]["total"]


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b'{"code":0}', 0),
        (b'{"code":"0"}', 0),
        (b'{"code":"-22","msg":"x"}', -22),
        (b'{"code":"x"}', None),
    ],
)
def test_the_envelope_reads_code_as_number_or_string(raw: bytes, code: int | None) -> None:
    assert ApiResponse.model_validate_json(raw).code_int == code


def test_reads_stopped_refuses_requests_and_the_client_reads_again_after_it(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve(SimulatorConfig())
    client = make_client(server)
    with client.reads_stopped(), pytest.raises(LaafficReadStoppedError, match="not sent"):
        client.fetch_window(day_window())
    assert server.simulator.stats.requests == 0
    # A second interrupt while it waits for the requests in flight: still usable afterwards.
    close = client.close

    def interrupted_close() -> None:
        monkeypatch.setattr(client, "close", close)
        raise KeyboardInterrupt

    monkeypatch.setattr(client, "close", interrupted_close)
    with pytest.raises(KeyboardInterrupt), client.reads_stopped():
        pass
    assert client.fetch_window(day_window()).records

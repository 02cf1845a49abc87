"""Request signing: the vendor's test vector, and a fresh signature on every request."""

from __future__ import annotations

import hashlib
import time
from itertools import count
from typing import Any

import pytest

from pipelines.laaffic.client import sign
from pipelines.laaffic.errors import LaafficClockSkewError
from pipelines.laaffic.simulator import SimulatorConfig, SimulatorServer
from tests.laaffic.conftest import Serve
from tests.laaffic.helpers import DAY, day_window, make_client

SKEW = 4000  # the simulator's clock runs this far ahead (beyond its 1800 s window)


def test_vendor_test_vector() -> None:
    assert sign("bDqJFiq9", "7bz1lzh9", "1630468800") == "05d7a50893e22a5c4bb3216ae3396c7c"


def test_sign_is_lowercase_md5_of_plain_concatenation() -> None:
    value = sign("k€y", "sécret", "1700000000")
    assert value == hashlib.md5("k€ysécret1700000000".encode()).hexdigest()
    assert value == value.lower()
    assert len(value) == 32


def record_auth_headers(server: SimulatorServer) -> list[tuple[str, str]]:
    """Wrap the simulator's auth check to remember each request's (Timestamp, Sign)."""
    seen: list[tuple[str, str]] = []
    sim = server.simulator
    check = sim.check_auth

    def recording(headers: Any, client_ip: str) -> tuple[int, str] | None:
        seen.append((headers.get("Timestamp"), headers.get("Sign")))
        return check(headers, client_ip)

    sim.check_auth = recording  # type: ignore[method-assign]
    return seen


def test_every_request_carries_its_own_timestamp_and_signature(serve: Serve) -> None:
    server = serve(SimulatorConfig(day_counts={DAY: 250}))
    seen = record_auth_headers(server)
    ticks = count(int(time.time()))
    client = make_client(server, max_concurrency=1, clock=lambda: float(next(ticks)))

    result = client.fetch_window(day_window())

    assert len(result.records) == 250
    assert len(seen) == 3  # three pages, three requests
    stamps = [stamp for stamp, _ in seen]
    assert len(set(stamps)) == 3
    config = server.simulator.config
    assert [s for _, s in seen] == [sign(config.api_key, config.api_secret, t) for t in stamps]


def test_minus_16_is_answered_by_re_signing_with_a_fresh_timestamp(serve: Serve) -> None:
    server = serve(SimulatorConfig(clock_skew_seconds=SKEW))
    seen = record_auth_headers(server)
    offsets = iter([0, SKEW])  # stale for the first signature, right for the next

    client = make_client(server, clock=lambda: time.time() + next(offsets))
    result = client.fetch_window(day_window())

    assert result.records
    assert server.simulator.stats.requests == 2
    assert server.simulator.stats.outcomes["refused:-16"] == 1
    assert result.stats.retries == 1
    assert seen[0] != seen[1]


def test_a_clock_matching_the_server_is_accepted(serve: Serve) -> None:
    server = serve(SimulatorConfig(clock_skew_seconds=SKEW))
    client = make_client(server, clock=lambda: time.time() + SKEW)
    assert client.fetch_window(day_window()).records
    assert server.simulator.stats.requests == 1


@pytest.mark.parametrize(("offset", "accepted"), [(-1500, True), (1500, True), (-2400, False)])
def test_the_simulator_enforces_a_1800_second_timestamp_window(
    serve: Serve, offset: int, accepted: bool
) -> None:
    server = serve()
    client = make_client(server, clock=lambda: time.time() + offset, max_timestamp_resigns=0)
    if accepted:
        assert client.fetch_window(day_window()).records
    else:
        with pytest.raises(LaafficClockSkewError):
            client.fetch_window(day_window())
    assert server.simulator.stats.requests == 1


@pytest.mark.parametrize("resigns", [0, 2, 4])
def test_persistent_minus_16_means_the_local_clock_is_off(serve: Serve, resigns: int) -> None:
    server = serve(SimulatorConfig(clock_skew_seconds=SKEW))
    client = make_client(server, max_timestamp_resigns=resigns)

    with pytest.raises(LaafficClockSkewError) as caught:
        client.fetch_window(day_window())

    assert server.simulator.stats.requests == 1 + resigns
    assert server.simulator.stats.outcomes["refused:-16"] == 1 + resigns
    message = str(caught.value)
    assert "clock is off" in message
    assert "-16" in message
    assert "NTP" in message

"""Re-reading a window against the digest of an earlier read (`expected_digest`): unchanged pages
are not parsed, and anything else is read exactly as a first read would, without asking twice."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pipelines.laaffic.errors import (
    LaafficApiError,
    LaafficAuthError,
    LaafficIncompleteWindowError,
    LaafficIpRestrictedError,
    LaafficParameterError,
    LaafficUnknownCodeError,
)
from pipelines.laaffic.simulator import SimulatorConfig, fingerprint
from tests.laaffic.conftest import Serve
from tests.laaffic.helpers import DAY, day_window, make_client


@pytest.mark.parametrize("concurrency", [1, 4])
def test_unchanged_pages_are_recognised_without_parsing_a_record(
    serve: Serve, concurrency: int
) -> None:
    server = serve(SimulatorConfig(day_counts={DAY: 1234}))
    client = make_client(server, max_concurrency=concurrency)
    first = client.fetch_window(day_window())
    server.simulator.reset_stats()

    again = client.fetch_window(day_window(), expected_digest=first.digest)

    assert again.unchanged
    assert again.records == []
    assert again.received == len(first.records) == 1234
    assert again.digest == first.digest
    stats = again.stats
    assert (stats.api_total, stats.pages, stats.requests, stats.retries, stats.passes) == (
        1234,
        13,
        13,
        0,
        1,
    )
    assert server.simulator.stats.requests == 13


@pytest.mark.parametrize("concurrency", [1, 4])
def test_changed_pages_are_parsed_from_what_was_read_not_requested_again(
    serve: Serve, concurrency: int
) -> None:
    server = serve(SimulatorConfig(day_counts={DAY: 1234}, open_fraction=0.5))
    client = make_client(server, max_concurrency=concurrency)
    first = client.fetch_window(day_window())
    assert server.simulator.store.advance([DAY], to_final=True) > 0
    server.simulator.reset_stats()

    again = client.fetch_window(day_window(), expected_digest=first.digest)

    assert not again.unchanged
    assert again.received == len(again.records) == 1234
    assert fingerprint(again.records) == fingerprint(server.simulator.store.all_tasks([DAY]))
    assert fingerprint(again.records) != fingerprint(first.records)
    assert (again.stats.pages, again.stats.requests) == (13, 13)
    assert server.simulator.stats.requests == 13
    assert again.digest == client.fetch_window(day_window()).digest != first.digest


@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_total_the_listing_never_reaches_is_refused_as_soon_as_on_a_first_read(
    serve: Serve, concurrency: int
) -> None:
    """A stored day whose pages now claim 100,000 tasks while listing 250. A first read stops
    at the first page that ends early and refuses the window after a few requests; a re-read
    against the day's digest asked for all 1,000 pages the `total` implies, unparsed, before
    finding that out (with 10**13, a page storm without end, every body kept)."""
    server = serve(SimulatorConfig(day_counts={DAY: 250}))
    sim = server.simulator
    client = make_client(server, max_concurrency=concurrency)
    stored = client.fetch_window(day_window())
    honest = sim.query

    def inflated(q: dict[str, Any]) -> bytes:
        answer = json.loads(honest(q))
        answer["data"]["total"] = 100_000
        return json.dumps(answer).encode()

    sim.query = inflated  # type: ignore[method-assign]
    sim.reset_stats()
    with pytest.raises(LaafficIncompleteWindowError):
        client.fetch_window(day_window())
    first_read = sim.stats.requests
    sim.reset_stats()

    with pytest.raises(LaafficIncompleteWindowError) as caught:
        client.fetch_window(day_window(), expected_digest=stored.digest)

    # At most the last page the `total` implies more, and the few pages a concurrent read may
    # have asked for before it saw one end early.
    assert sim.stats.requests <= first_read + 1 + 2 * concurrency
    assert "reports 100000 tasks" in str(caught.value)


def test_a_digest_that_is_not_the_windows_gives_a_full_read(serve: Serve) -> None:
    server = serve(SimulatorConfig(day_counts={DAY: 250}))
    client = make_client(server)
    first = client.fetch_window(day_window())

    again = client.fetch_window(day_window(), expected_digest=bytes(32))

    assert not again.unchanged
    assert fingerprint(again.records) == fingerprint(first.records)
    assert again.digest == first.digest
    assert again.stats.requests == 3


@pytest.mark.parametrize("outcome", ["-18", "nonjson", "nodata"])
def test_an_error_answer_while_re_reading_is_asked_again_and_nothing_is_lost(
    serve: Serve, outcome: str
) -> None:
    server = serve(SimulatorConfig(day_counts={DAY: 250}))
    client = make_client(server, max_concurrency=1)
    first = client.fetch_window(day_window())
    server.simulator.script("ok", outcome)  # page 1 answers, page 2 does not (at first)

    again = client.fetch_window(day_window(), expected_digest=first.digest)

    assert fingerprint(again.records) == fingerprint(first.records)
    assert again.digest == first.digest  # the digest of the pages taken in, not of the error
    assert not again.unchanged  # (the caller compares the digest, see pipelines.sync)
    assert again.stats.retries == 1
    assert again.stats.requests == 3 + 1


def test_a_transport_failure_while_re_reading_is_retried_and_still_recognised(
    serve: Serve,
) -> None:
    server = serve(SimulatorConfig(day_counts={DAY: 250}))
    client = make_client(server, max_concurrency=1)
    first = client.fetch_window(day_window())
    server.simulator.script("ok", "http:502", "drop")

    again = client.fetch_window(day_window(), expected_digest=first.digest)

    assert again.unchanged
    assert again.received == 250
    assert (again.stats.retries, again.stats.requests) == (2, 3 + 2)


def test_a_first_page_in_error_is_asked_again(serve: Serve) -> None:
    server = serve(SimulatorConfig(day_counts={DAY: 250}))
    client = make_client(server, max_concurrency=1)
    first = client.fetch_window(day_window())
    server.simulator.script("-18")

    again = client.fetch_window(day_window(), expected_digest=first.digest)

    assert fingerprint(again.records) == fingerprint(first.records)
    assert again.digest == first.digest
    assert again.stats.retries == 1


def test_a_window_of_several_pieces_is_always_read_in_full(serve: Serve) -> None:
    server = serve(SimulatorConfig(tasks_per_day=40))
    client = make_client(server, max_window_days=1)
    window = day_window(DAY, DAY.replace(day=DAY.day + 2))
    first = client.fetch_window(window)

    again = client.fetch_window(window, expected_digest=first.digest)

    assert not again.unchanged
    assert fingerprint(again.records) == fingerprint(first.records)
    assert again.digest == first.digest


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("-1", LaafficAuthError),
        ("-2", LaafficIpRestrictedError),
        ("-22", LaafficParameterError),
        ("-99", LaafficUnknownCodeError),
    ],
)
# A re-read asks for page 1, then the last page (3), then those between (2).
@pytest.mark.parametrize(("answer", "page"), [(1, 1), (2, 3), (3, 2)])
def test_a_fatal_code_while_re_reading_stops_as_on_a_first_read(
    serve: Serve, code: str, error: type[LaafficApiError], answer: int, page: int
) -> None:
    """The contract says stop on -1, -2 and -22 (and the client does not know an undocumented
    code): a re-sync must not ask again, as if it were transient, and carry on."""
    server = serve(SimulatorConfig(day_counts={DAY: 250}))
    client = make_client(server, max_concurrency=1, max_attempts=5)
    first = client.fetch_window(day_window())
    server.simulator.reset_stats()
    server.simulator.script(*["ok"] * (answer - 1), code)

    with pytest.raises(error) as caught:
        client.fetch_window(day_window(), expected_digest=first.digest)

    assert caught.value.code == int(code)
    assert f"reading page {page} of window [2024-06-04 00:00:00 .. 2024-06-04 23:59:59]" in str(
        caught.value
    )
    assert server.simulator.stats.outcomes[code] == 1
    # Nothing is asked after the refusal (the pages between are requested before any is
    # parsed, so page 2's refusal comes to light once all three are read), least of all the
    # refused page again.
    assert server.simulator.stats.requests == answer

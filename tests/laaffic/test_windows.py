"""Long windows are split into API-sized pieces: inclusive ends, no second lost or read twice."""

from __future__ import annotations

from datetime import datetime, timedelta
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipelines.laaffic.client import split_window
from pipelines.laaffic.errors import LaafficParameterError
from pipelines.laaffic.models import TimeWindow
from pipelines.laaffic.simulator import SimulatorConfig, fingerprint
from tests.laaffic.conftest import Serve
from tests.laaffic.helpers import DAY, day_window, make_client

SECOND = timedelta(seconds=1)
FORTY_DAYS = day_window(DAY, DAY + timedelta(days=39))


def test_a_40_day_window_is_read_in_two_pieces(serve: Serve) -> None:
    server = serve(SimulatorConfig(tasks_per_day=2))
    result = make_client(server, max_window_days=31).fetch_window(FORTY_DAYS)

    assert server.simulator.stats.requests == 2  # one page per piece
    assert server.simulator.stats.outcomes == {"ok": 2}
    days = [DAY + timedelta(days=n) for n in range(40)]
    assert len(result.records) == 80
    assert fingerprint(result.records) == fingerprint(server.simulator.store.all_tasks(days))
    assert result.window == FORTY_DAYS


def test_an_unsplit_40_day_window_is_refused_with_minus_22(serve: Serve) -> None:
    server = serve(SimulatorConfig(tasks_per_day=2))
    with pytest.raises(LaafficParameterError) as caught:
        make_client(server, max_window_days=40).fetch_window(FORTY_DAYS)
    assert server.simulator.stats.requests == 1
    assert "at most 31 days" in str(caught.value)


def test_forty_days_split_at_31() -> None:
    pieces = split_window(FORTY_DAYS, 31)
    assert pieces == [
        TimeWindow(start=datetime(2024, 6, 4), end=datetime(2024, 7, 4, 23, 59, 59)),
        TimeWindow(start=datetime(2024, 7, 5), end=datetime(2024, 7, 13, 23, 59, 59)),
    ]


@pytest.mark.parametrize(
    ("end", "expected"),
    [
        (datetime(2024, 6, 4), 1),  # a single second
        (datetime(2024, 7, 4, 23, 59, 59), 1),  # exactly 31 days
        (datetime(2024, 7, 5), 2),  # 31 days and one second: the last second is its own piece
        (datetime(2024, 8, 4, 23, 59, 59), 2),  # exactly 62 days
        (datetime(2024, 8, 5), 3),
    ],
)
def test_split_edges(end: datetime, expected: int) -> None:
    window = TimeWindow(start=datetime(2024, 6, 4), end=end)
    pieces = split_window(window, 31)
    assert len(pieces) == expected
    assert pieces[0].start == window.start
    assert pieces[-1].end == window.end
    if expected == 2 and end.second == 0:
        assert pieces[-1] == TimeWindow(start=end, end=end)


def test_a_window_ending_before_it_starts_is_refused() -> None:
    with pytest.raises(ValueError, match="ends before it starts"):
        split_window(TimeWindow(start=datetime(2024, 6, 5), end=datetime(2024, 6, 4)), 31)


@given(
    start=st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1)),
    length=st.integers(min_value=0, max_value=200 * 86_400),
    max_days=st.integers(min_value=1, max_value=40),
)
def test_pieces_cover_every_second_exactly_once(
    start: datetime, length: int, max_days: int
) -> None:
    start = start.replace(microsecond=0)
    window = TimeWindow(start=start, end=start + timedelta(seconds=length))
    pieces = split_window(window, max_days)

    assert pieces[0].start == window.start
    assert pieces[-1].end == window.end
    for piece in pieces:
        assert piece.start <= piece.end
        # inclusive: a piece holds (end - start + 1 s) seconds, at most max_days' worth
        assert piece.end - piece.start + SECOND <= timedelta(days=max_days)
    for before, after in pairwise(pieces):
        assert after.start == before.end + SECOND  # no gap, no overlap
    for piece in pieces[:-1]:
        assert piece.end - piece.start + SECOND == timedelta(days=max_days)  # full pieces first
    assert sum(((p.end - p.start) + SECOND for p in pieces), timedelta()) == (
        window.end - window.start + SECOND
    )

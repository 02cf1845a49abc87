"""Helpers shared by the LAAFFIC client and simulator tests (real HTTP on loopback, no mocks)."""

from __future__ import annotations

import time
from datetime import date, datetime, timedelta
from typing import Any

import requests

from pipelines.laaffic.client import QUERY_PATH, LaafficClient, sign
from pipelines.laaffic.models import TimeWindow
from pipelines.laaffic.simulator import SimulatorConfig, SimulatorServer, _Task

DAY = date(2024, 6, 4)


def day_window(first: date = DAY, last: date | None = None) -> TimeWindow:
    """The inclusive window [first 00:00:00 .. last 23:59:59]."""
    last = last or first
    return TimeWindow(
        start=datetime.combine(first, datetime.min.time()),
        end=datetime.combine(last, datetime.min.time()) + timedelta(days=1, seconds=-1),
    )


def make_client(server: SimulatorServer, **overrides: Any) -> LaafficClient:
    """A client for `server` with the simulator's credentials and a tiny back-off."""
    config = server.simulator.config
    options: dict[str, Any] = {
        "api_key": config.api_key,
        "api_secret": config.api_secret,
        "backoff_base_seconds": 0.001,
        "backoff_max_seconds": 0.005,
        "timeout_seconds": 10.0,
    }
    options.update(overrides)
    return LaafficClient(server.url, **options)


def signed_headers(config: SimulatorConfig, timestamp: int | None = None) -> dict[str, str]:
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    return {
        "Content-Type": "application/json;charset=UTF-8",
        "Api-Key": config.api_key,
        "Timestamp": stamp,
        "Sign": sign(config.api_key, config.api_secret, stamp),
    }


def body(
    *,
    current: Any = 1,
    size: Any = 100,
    start: Any = "2024-06-04 00:00:00",
    end: Any = "2024-06-04 23:59:59",
    **params: Any,
) -> dict[str, Any]:
    """A contract-shaped request body; extra keyword arguments go into `params`."""
    all_params: dict[str, Any] = {"strTime": start, "endTime": end, "taskType": 3}
    all_params["statusList"] = []
    all_params.update(params)
    return {"current": current, "size": size, "params": all_params}


def raw_query(
    server: SimulatorServer,
    payload: Any,
    headers: dict[str, str] | None = None,
    *,
    data: bytes | None = None,
) -> dict[str, Any]:
    """POST the query endpoint directly (validly signed unless `headers` is given)."""
    response = requests.post(
        server.url + QUERY_PATH,
        json=None if data is not None else payload,
        data=data,
        headers=headers if headers is not None else signed_headers(server.simulator.config),
        timeout=10,
    )
    assert response.status_code == 200
    answer: dict[str, Any] = response.json()
    return answer


def repeat_some_rows(server_store: Any, every: int) -> None:
    """Make the store's answer list every `every`-th task twice (the API repeating rows)."""
    window = server_store.window

    def repeating(start: str, end: str) -> list[_Task]:
        tasks: list[_Task] = window(start, end)
        out: list[_Task] = []
        for n, task in enumerate(tasks):
            out.append(task)
            if n % every == every - 1:
                out.append(task)
        return out

    server_store.window = repeating


def skip_across_page_boundaries(server_store: Any, size: int = 100) -> None:
    """Make every listing longer than one page start each later page with the previous page's
    last task instead of its own first one: the API ordering tasks created in the same second
    differently from one page request to the next (LIMIT/OFFSET over ties), so that a task is
    listed twice and another never, while `total` stays true. A listing that fits on one page
    has no boundary and is right."""
    window = server_store.window

    def skipping(start: str, end: str) -> list[_Task]:
        tasks: list[_Task] = list(window(start, end))
        for boundary in range(size, len(tasks), size):
            tasks[boundary] = tasks[boundary - 1]
        return tasks

    server_store.window = skipping

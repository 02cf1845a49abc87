"""The simulator behaves as the contract says: validation, filters, order, data, admin, binding."""

from __future__ import annotations

import json
import socket
import sys
import time
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
import requests

from pipelines.laaffic.client import QUERY_PATH, sign
from pipelines.laaffic.models import FINAL_STATUSES, OPEN_STATUSES, TaskRecord
from pipelines.laaffic.simulator import (
    Simulator,
    SimulatorConfig,
    SimulatorServer,
    TaskStore,
    fingerprint,
)
from tests.laaffic.conftest import Serve
from tests.laaffic.helpers import DAY, body, day_window, make_client, raw_query, signed_headers

WEEK = [DAY + timedelta(days=n) for n in range(7)]


# -- request validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (body(size=0), "size must be an integer 1..100"),
        (body(size=101), "size must be an integer 1..100"),
        (body(size="100"), "size must be an integer 1..100"),
        (body(current=0), "current must be an integer >= 1"),
        (body(current=True), "current must be an integer >= 1"),
        (body(taskType=2), "taskType must be 3, got 2"),
        (
            body(start="2024-06-05 00:00:00", end="2024-06-04 23:59:59"),
            "strTime is after endTime (2024-06-05 00:00:00 > 2024-06-04 23:59:59)",
        ),
        (body(statusList=[7]), "statusList must be a list of status codes 0..6, got [7]"),
        (body(statusList=[-1]), "statusList must be a list of status codes 0..6"),
        (body(statusList=2), "statusList must be a list of status codes 0..6"),
        # Not a list, though falsy: these were read as "no filter" instead of refused.
        (body(statusList=0), "statusList must be a list of status codes 0..6, got 0"),
        (body(statusList=""), "statusList must be a list of status codes 0..6, got ''"),
        (body(statusList={}), "statusList must be a list of status codes 0..6, got {}"),
        (body(statusList=False), "statusList must be a list of status codes 0..6, got False"),
        (body(start="2024/06/04 00:00:00"), "strTime and endTime must be yyyy-MM-dd HH:mm:ss"),
        (body(end="2024-06-04T23:59:59"), "strTime and endTime must be yyyy-MM-dd HH:mm:ss"),
        (body(start="2024-06-04"), "strTime and endTime must be yyyy-MM-dd HH:mm:ss"),
        (body(start=None), "strTime and endTime must be yyyy-MM-dd HH:mm:ss, got strTime=None"),
        # Not zero-padded: strptime reads these, but the window is compared as text, so they
        # were answered (with the wrong tasks: 9:59:59 sorts after 23:59:59) instead of refused.
        (body(start="2024-6-4 00:00:00"), "got strTime='2024-6-4 00:00:00'"),
        (body(end="2024-06-04 9:59:59"), "got endTime='2024-06-04 9:59:59'"),
        (body(start="2024-06-04 0:0:0"), "got strTime='2024-06-04 0:0:0'"),
        (body(end="2024-07-05 00:00:01"), "the window may span at most 31 days"),
        (body(idxAppId="7"), "idxAppId must be an integer, got '7'"),
        (body(searchCondition=5), "searchCondition must be a string"),
        ({"current": 1, "size": 10}, "params is required"),
        ([1, 2], "body must be a JSON object"),
    ],
)
def test_invalid_bodies_are_minus_22(serve: Serve, payload: Any, problem: str) -> None:
    server = serve()
    answer = raw_query(server, payload)
    assert answer["code"] == -22
    assert problem in answer["msg"]
    assert answer["data"] is None
    assert server.simulator.stats.outcomes["refused:-22"] == 1


def test_a_body_that_is_not_json_is_minus_22(serve: Serve) -> None:
    answer = raw_query(serve(), None, data=b"current=1&size=10")
    assert answer["code"] == -22


@pytest.mark.parametrize(
    "payload",
    [
        body(),
        body(size=1),
        body(size=100, current=99),
        body(statusList=[0, 6]),
        body(statusList=None),  # optional: null is no filter, as leaving it out is
        body(idxAppId=12, searchCondition=""),
        body(start="2024-06-04 00:00:00", end="2024-07-05 00:00:00"),  # exactly 31 days
    ],
)
def test_valid_bodies_are_answered(serve: Serve, payload: dict[str, Any]) -> None:
    answer = raw_query(serve(), payload)
    assert answer["code"] == 0
    assert answer["msg"] == "success"
    data = answer["data"]
    assert set(data) == {"total", "size", "current", "pages", "searchCount", "records"}
    assert data["size"] == payload["size"]
    assert data["current"] == payload["current"]
    assert data["pages"] == -(-data["total"] // data["size"])


def _stale(config: SimulatorConfig) -> dict[str, str]:
    return signed_headers(config, int(time.time()) - 3600)


def _milliseconds(config: SimulatorConfig) -> dict[str, str]:
    return signed_headers(config, int(time.time() * 1000))


def _not_a_number(config: SimulatorConfig) -> dict[str, str]:
    return {**signed_headers(config), "Timestamp": "17e8"}


def _not_ascii_digits(config: SimulatorConfig) -> dict[str, str]:
    """Validly signed, but "²" is a digit to str.isdigit and none to int(): the handler crashed
    and dropped the connection (a transient failure to a client) instead of answering -1."""
    headers = signed_headers(config)
    return {
        **headers,
        "Timestamp": "\u00b2",
        "Sign": sign(config.api_key, config.api_secret, "\u00b2"),
    }


@pytest.mark.parametrize(
    ("make_headers", "code"),
    [
        (lambda c: {**signed_headers(c), "Api-Key": "other"}, -1),
        (lambda c: {**signed_headers(c), "Sign": "0" * 32}, -1),
        (lambda c: {**signed_headers(c), "Sign": ""}, -1),
        (lambda c: {k: v for k, v in signed_headers(c).items() if k != "Sign"}, -1),
        (_not_a_number, -1),
        (_not_ascii_digits, -1),
        (_stale, -16),  # validly signed, an hour old
        (_milliseconds, -16),  # validly signed, but milliseconds rather than seconds
    ],
)
def test_headers_are_checked(serve: Serve, make_headers: Any, code: int) -> None:
    server = serve()
    assert raw_query(server, body(), make_headers(server.simulator.config))["code"] == code
    assert server.simulator.stats.outcomes[f"refused:{code}"] == 1


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "text/json", None]
)
def test_a_body_not_labelled_json_is_minus_22(serve: Serve, content_type: str | None) -> None:
    """The contract's Content-Type is application/json;charset=UTF-8; a JSON body labelled as
    something else (or not labelled) is not read as JSON by the real service, so a client that
    forgot the header must fail here as well, not only against the real thing."""
    server = serve()
    headers = signed_headers(server.simulator.config)
    del headers["Content-Type"]
    if content_type is not None:
        headers["Content-Type"] = content_type
    answer = raw_query(server, None, headers, data=json.dumps(body()).encode())
    assert answer["code"] == -22
    assert "Content-Type" in answer["msg"]
    assert server.simulator.stats.outcomes["refused:-22"] == 1


@pytest.mark.parametrize(
    "content_type",
    ["application/json;charset=UTF-8", "application/json", "Application/JSON; charset=utf-8"],
)
def test_a_body_labelled_json_is_read(serve: Serve, content_type: str) -> None:
    server = serve()
    headers = {**signed_headers(server.simulator.config), "Content-Type": content_type}
    assert raw_query(server, body(), headers)["code"] == 0


def test_unknown_paths_are_404(serve: Serve) -> None:
    server = serve()
    assert (
        requests.post(server.url + "/voice/group/call/other", json={}, timeout=5).status_code == 404
    )
    assert requests.get(server.url + QUERY_PATH, timeout=5).status_code == 404
    assert requests.post(server.url + "/_sim/nothing", json={}, timeout=5).status_code == 404
    assert server.simulator.stats.requests == 0


# -- filtering and ordering ------------------------------------------------------------------


def test_status_list_filters(serve: Serve) -> None:
    server = serve(SimulatorConfig(day_counts={DAY: 500}, open_fraction=0.4))
    held = server.simulator.store.all_tasks([DAY])
    for statuses in ([2], [0, 1, 5, 6], [3, 4]):
        answer = raw_query(server, body(statusList=statuses))["data"]
        expected = [r for r in held if r["status"] in statuses]
        assert answer["total"] == len(expected) > 0
        assert {r["status"] for r in answer["records"]} <= set(statuses)


def test_search_condition_is_a_substring_match_on_the_name(serve: Serve) -> None:
    server = serve(SimulatorConfig(day_counts={DAY: 120}))
    held = server.simulator.store.all_tasks([DAY])
    for needle in ("回访客户", "Опрос", "été", "'spring'; batch", "-agent"):
        answer = raw_query(server, body(searchCondition=needle))["data"]
        expected = [r["taskId"] for r in held if needle in r["taskName"]]
        assert answer["total"] == len(expected) > 0
        assert all(needle in r["taskName"] for r in answer["records"])
    assert raw_query(server, body(searchCondition="no such task"))["data"]["total"] == 0


def test_records_are_listed_newest_first_across_pages(serve: Serve) -> None:
    server = serve(SimulatorConfig(day_counts={DAY: 250, DAY + timedelta(days=1): 50}))
    keys: list[tuple[str, int]] = []
    for page in (1, 2, 3):
        records = raw_query(server, body(current=page, end="2024-06-05 23:59:59"))["data"][
            "records"
        ]
        keys.extend((r["createdTime"], r["taskId"]) for r in records)
    assert len(keys) == 300
    assert keys == sorted(keys, reverse=True)
    assert keys[0][0] == "2024-06-05 23:59:59"
    assert keys[-1][0] == "2024-06-04 00:00:00"


def test_a_page_past_the_end_is_empty(serve: Serve) -> None:
    server = serve(SimulatorConfig(day_counts={DAY: 30}))
    data = raw_query(server, body(current=2, size=30))["data"]
    assert data["total"] == 30
    assert data["records"] == []


# -- the data --------------------------------------------------------------------------------


def test_data_is_deterministic_per_seed(serve: Serve) -> None:
    a = serve(SimulatorConfig(seed=7))
    b = serve(SimulatorConfig(seed=7))
    c = serve(SimulatorConfig(seed=8))
    window = day_window(WEEK[0], WEEK[-1])
    fetched = [fingerprint(make_client(s).fetch_window(window).records) for s in (a, b, c)]
    assert fetched[0] == fetched[1]
    assert fetched[0] != fetched[2]
    assert fetched[0] == fingerprint(a.simulator.store.all_tasks(WEEK))
    assert fingerprint(TaskStore(SimulatorConfig(seed=7)).all_tasks(WEEK)) == fetched[0]


def _amount(fee: str) -> tuple[Decimal, str | None]:
    if fee.endswith(")"):
        value, currency = fee[:-1].split("(")
        return Decimal(value), currency
    return Decimal(fee), None


def test_records_validate_and_fees_add_up(serve: Serve) -> None:
    server = serve(SimulatorConfig(seed=3))
    records = make_client(server).fetch_window(day_window(WEEK[0], WEEK[-1])).records
    assert len(records) > 100
    currencies: set[str] = set()
    for record in records:
        TaskRecord.model_validate(record)
        assert set(record) == set(TaskRecord.model_fields)
        group, c1 = _amount(record["groupCallPayFee"])
        sms, c2 = _amount(record["smsPayFee"])
        total, c3 = _amount(record["taskSumPayFee"])
        agent, none = _amount(record["agentFee"])
        assert none is None  # agentFee carries no currency marker
        assert c1 == c2 == c3 in ("USD", "EUR")
        assert c1 is not None
        currencies.add(c1)
        assert total == group + sms + agent
        assert record["callNum"] <= record["numCnt"]
        # Only a calling task may have a call without an outcome yet (at most the one ringing).
        in_flight = record["callNum"] - record["success"] - record["fail"]
        assert in_flight == 0 or (in_flight == 1 and record["status"] == 1)
        assert record["taskType"] == 3
    assert currencies == {"USD", "EUR"}
    fees = {r["smsPayFee"] for r in records} | {r["groupCallPayFee"] for r in records}
    assert "0(USD)" in fees


def test_names_are_not_only_ascii_and_survive_http(serve: Serve) -> None:
    server = serve(SimulatorConfig(day_counts={DAY: 60}))
    records = make_client(server).fetch_window(day_window()).records
    names = {r["taskName"] for r in records}
    assert any("回访客户" in n for n in names)
    assert any("Опрос клиентов" in n for n in names)
    assert any("Relance été" in n for n in names)
    assert {r["taskName"] for r in server.simulator.store.all_tasks([DAY])} == names


def test_open_tasks_move_and_become_final(serve: Serve) -> None:
    server = serve(SimulatorConfig(day_counts={DAY: 400}, open_fraction=0.5))
    store = server.simulator.store
    before = {r["taskId"]: dict(r) for r in store.all_tasks([DAY])}
    open_ids = {i for i, r in before.items() if r["status"] in OPEN_STATUSES}
    assert open_ids

    moved = store.advance([DAY])
    after = {r["taskId"]: r for r in store.all_tasks([DAY])}
    assert moved == len(open_ids)
    step = {0: 6, 6: 1, 1: 2, 5: 1}
    for task_id, record in before.items():
        expected = step.get(record["status"], record["status"])
        assert after[task_id]["status"] == expected

    store.advance([DAY], to_final=True)
    fetched = make_client(server).fetch_window(day_window()).records
    assert {r["status"] for r in fetched} <= FINAL_STATUSES
    assert store.advance([DAY]) == 0
    for record in fetched:
        TaskRecord.model_validate(record)
        if record["taskId"] in open_ids:
            assert record["status"] == 2
            assert record["callNum"] == record["numCnt"]
            # the currency of a task does not change as it moves on
            assert record["taskSumPayFee"][-4:] == before[record["taskId"]]["taskSumPayFee"][-4:]
            group, _ = _amount(record["groupCallPayFee"])
            sms, _ = _amount(record["smsPayFee"])
            assert _amount(record["taskSumPayFee"])[0] == group + sms + Decimal(record["agentFee"])
        else:
            assert record == before[record["taskId"]]  # final tasks never change


def test_live_tasks_appear_newest_first_in_the_queried_window(serve: Serve) -> None:
    server = serve(SimulatorConfig(day_counts={DAY: 10}, live_tasks_per_request=2))
    first = raw_query(server, body())["data"]
    second = raw_query(server, body())["data"]
    assert (first["total"], second["total"]) == (10, 12)
    assert [r["createdTime"] for r in second["records"][:2]] == ["2024-06-04 23:59:59"] * 2
    assert second["records"][0]["taskId"] > second["records"][1]["taskId"]


def test_a_deleted_task_is_no_longer_listed(serve: Serve) -> None:
    server = serve(SimulatorConfig(day_counts={DAY: 10}))
    before = raw_query(server, body())["data"]["records"]
    server.simulator.store.delete(DAY, before[3]["taskId"])
    after = raw_query(server, body())["data"]
    assert after["total"] == 9
    assert after["records"] == before[:3] + before[4:]


# -- admin endpoints and binding -------------------------------------------------------------


def _admin(server: SimulatorServer, path: str, payload: dict[str, Any]) -> dict[str, Any]:
    response = requests.post(server.url + path, json=payload, timeout=5)
    assert response.status_code == 200
    answer: dict[str, Any] = response.json()
    return answer


def test_admin_endpoints(serve: Serve) -> None:
    server = serve(SimulatorConfig(day_counts={DAY: 300}, open_fraction=0.5))
    open_before = sum(r["status"] in OPEN_STATUSES for r in server.simulator.store.all_tasks([DAY]))
    assert open_before

    assert _admin(server, "/_sim/script", {"outcomes": ["-18", "http:502"]}) == {}
    assert raw_query(server, body())["code"] == -18
    assert (
        requests.post(
            server.url + QUERY_PATH,
            json=body(),
            headers=signed_headers(server.simulator.config),
            timeout=5,
        ).status_code
        == 502
    )
    assert raw_query(server, body())["code"] == 0

    stats = requests.get(server.url + "/_sim/stats", timeout=5).json()
    assert stats == {"requests": 3, "outcomes": {"-18": 1, "http:502": 1, "ok": 1}}

    moved = _admin(server, "/_sim/advance", {"days": [DAY.isoformat()], "to_final": True})
    assert moved == {"moved": open_before}
    statuses = {r["status"] for r in raw_query(server, body(size=100))["data"]["records"]}
    assert statuses <= FINAL_STATUSES
    assert _admin(server, "/_sim/advance", {}) == {"moved": 0}

    assert _admin(server, "/_sim/configure", {"allowed_ips": ["10.0.0.1"]}) == {}
    assert raw_query(server, body())["code"] == -2
    assert _admin(server, "/_sim/reset_stats", {}) == {}
    assert requests.get(server.url + "/_sim/stats", timeout=5).json() == {
        "requests": 0,
        "outcomes": {},
    }


def test_it_binds_loopback_only(serve: Serve) -> None:
    server = serve()
    assert server.url.startswith("http://127.0.0.1:")
    host, port = server._server.server_address[:2]
    assert (host, port) == ("127.0.0.1", server.port)
    if sys.platform.startswith("linux"):  # 127.0.0.2 is loopback too, but not the bound address
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.2", server.port), timeout=2).close()


def test_the_conftest_simulator_fixture_serves(simulator: SimulatorServer) -> None:
    assert isinstance(simulator.simulator, Simulator)
    assert make_client(simulator).fetch_window(day_window(date(2024, 1, 1))).records


def test_advancing_leaves_crafted_records_exactly_as_given() -> None:
    """`add_raw` serves a record as it is: moving open tasks on must neither rewrite a crafted
    one (status true read as 1, its bad fees replaced by good ones) nor fail on one that lacks
    the fields a generated task has (KeyError: 'numCnt', which stopped the periodic advance)."""
    store = TaskStore(SimulatorConfig(day_counts={DAY: 20}, open_fraction=1.0))
    crafted = [
        {"taskId": 1, "status": 1},
        {"taskId": 2, "status": True, "numCnt": 5, "taskSumPayFee": "1(USD)"},
        {"taskId": 3, "status": 1, "numCnt": "5", "taskSumPayFee": "x"},
    ]
    for record in crafted:
        store.add_raw(DAY, dict(record))
    generated = len(store.day(DAY)) - len(crafted)

    assert store.advance([DAY]) == generated
    assert store.advance([DAY], to_final=True) > 0

    served = [task.record for task in store.day(DAY) if task.task_id == 1 << 61]
    assert served == crafted  # (in the order added: each sorts after the one before)

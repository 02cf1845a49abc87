"""A faithful local stand-in for `POST /voice/group/call/query`, plus fault injection.

Real HTTP on 127.0.0.1 only. It checks the signed headers and the timestamp window, validates the
body and its Content-Type as the contract does (-22 otherwise), filters on the inclusive creation
window, status list and search text, and lists newest first. Data is deterministic for a seed:
each account-local day's tasks are generated the first time the day is asked for. Admin endpoints
under `/_sim/` (and the methods behind them) advance in-progress tasks, inject faults and report
request counts;
`TaskStore.add_raw` serves a crafted record as it is (tests of bad input), `add_live_task` and
`delete` create and remove tasks (drift while a client pages).

CLI: `python -m pipelines.laaffic.simulator --port 8765` (or `python -m pipelines simulator`).
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import json
import random
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pipelines.laaffic.client import QUERY_PATH, sign
from pipelines.laaffic.models import (
    LOCAL_DATETIME_FORMAT,
    OPEN_STATUSES,
    TASK_TYPE_AI_AGENT,
    format_local,
)

EPOCH = date(2020, 1, 1)
SIX_PLACES = Decimal("0.000001")
FAULT_KINDS = ("-18", "502", "drop", "slow")
NAMES = (
    "{created}-agent",
    "回访客户-{n}",
    "Relance été #{n}",
    "Опрос клиентов {n}",
    "renewal reminder {n}",
    "promo 'spring'; batch {n}",
)


@dataclass
class SimulatorConfig:
    api_key: str = "sim-key"
    api_secret: str = "sim-secret"  # noqa: S105 - a local simulator's fixed demo secret
    seed: int = 42
    #: tasks per day; None = 20..80, varying by day
    tasks_per_day: int | None = None
    #: explicit counts for some days (overrides tasks_per_day)
    day_counts: dict[date, int] = field(default_factory=dict)
    #: days outside [first_day, last_day] have no tasks
    first_day: date | None = None
    last_day: date | None = None
    open_fraction: float = 0.08
    eur_fraction: float = 0.2
    timestamp_window_seconds: int = 1800
    clock_skew_seconds: int = 0
    max_window_days: int = 31
    latency_seconds: float = 0.0
    fault_rate: float = 0.0
    fault_kinds: tuple[str, ...] = FAULT_KINDS
    slow_seconds: float = 2.0
    #: tasks created in the queried window after each answered page (drift while paging)
    live_tasks_per_request: int = 0
    allowed_ips: tuple[str, ...] | None = None


def _pct(part: int, whole: int) -> str:
    if whole == 0:
        return "0"
    value = (Decimal(part) * 100 / Decimal(whole)).quantize(Decimal("0.01"))
    return format(value.normalize(), "f") if value != value.to_integral() else str(int(value))


def _money(amount: Decimal) -> str:
    text = format(amount.quantize(SIX_PLACES).normalize(), "f")
    return "0" if Decimal(text) == 0 else text


def _counters(rng: random.Random, status: int, num_cnt: int) -> dict[str, Any]:
    if status in (0, 3, 6):
        call_num = 0
    elif status in (1, 5):
        call_num = rng.randint(0, max(0, num_cnt - 1))
    elif status == 4:
        call_num = rng.randint(0, num_cnt)
    else:
        call_num = num_cnt
    success = round(call_num * rng.uniform(0.3, 0.95))
    answered = success
    charge_len = answered * rng.randint(8, 140)  # seconds billed: answered calls x their mean
    # While calling, the last number dialled may have no outcome yet: callNum counts it, success
    # and fail do not (inferred: the contract says only that counters move until a final status).
    in_flight = 1 if status == 1 and call_num > success else 0
    return {
        "callNum": call_num,
        "success": success,
        "fail": call_num - success - in_flight,
        "answeredNum": answered,
        "chargeLen": charge_len,
        "agentTotalFeetime": charge_len - charge_len // 10,
    }


def _fees(rng: random.Random, record: dict[str, Any], currency: str) -> None:
    """Fee strings consistent with the counters: taskSumPayFee = group + sms + agent, exactly."""
    group = Decimal(record["chargeLen"]) * Decimal("0.000435")
    sms_count = rng.randint(0, record["success"] // 4) if rng.random() < 0.3 else 0
    sms = Decimal(sms_count) * Decimal("0.0085")
    agent = (Decimal(record["agentTotalFeetime"]) * Decimal("0.000390625")).quantize(SIX_PLACES)
    group, sms = group.quantize(SIX_PLACES), sms.quantize(SIX_PLACES)
    record["sendSmsNum"] = sms_count
    record["agentFee"] = f"{agent:.6f}"
    record["groupCallPayFee"] = f"{_money(group)}({currency})"
    record["smsPayFee"] = f"{_money(sms)}({currency})"
    record["taskSumPayFee"] = f"{_money(group + sms + agent)}({currency})"
    answered = record["answeredNum"]
    record["acd"] = f"{record['chargeLen'] // answered}s" if answered else "0s"
    record["rate"] = _pct(record["callNum"], record["numCnt"])
    record["asr"] = _pct(answered, record["callNum"])


class _Task:
    """A stored task: its record and the record's JSON, re-encoded only when it changes."""

    __slots__ = ("created", "encoded", "raw", "record", "task_id")

    def __init__(
        self,
        record: dict[str, Any],
        *,
        created: str | None = None,
        task_id: int | None = None,
        raw: bool = False,
    ) -> None:
        self.record = record
        #: Crafted (add_raw): served exactly as given, never moved on by `advance`.
        self.raw = raw
        # Where it sorts: the record's own createdTime and taskId unless given (see add_raw).
        self.task_id: int = record["taskId"] if task_id is None else task_id
        self.created: str = record["createdTime"] if created is None else created
        self.encoded = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()

    def update(self, **changes: Any) -> None:
        self.record.update(changes)
        self.encoded = json.dumps(self.record, ensure_ascii=False, separators=(",", ":")).encode()

    @property
    def sort_key(self) -> tuple[str, int]:
        return (self.created, self.task_id)


class TaskStore:
    """Deterministic task data, generated per account-local day on first use."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self._days: dict[date, list[_Task]] = {}  # ascending by (createdTime, taskId)
        self._keys: dict[date, list[tuple[str, int]]] = {}
        self._lock = threading.RLock()
        self._next_live_id = 900_000_000

    def _count(self, day: date, rng: random.Random) -> int:
        cfg = self.config
        if day in cfg.day_counts:
            return cfg.day_counts[day]
        if (cfg.first_day and day < cfg.first_day) or (cfg.last_day and day > cfg.last_day):
            return 0
        return cfg.tasks_per_day if cfg.tasks_per_day is not None else rng.randint(20, 80)

    def make_record(
        self, rng: random.Random, task_id: int, created: str, n: int, status: int | None = None
    ) -> dict[str, Any]:
        if status is None:
            status = (
                rng.choice((0, 1, 1, 1, 5, 6))
                if rng.random() < self.config.open_fraction
                else rng.choices((2, 3, 4), weights=(90, 5, 5))[0]
            )
        num_cnt = rng.randint(1, 400)
        record: dict[str, Any] = {
            "taskId": task_id,
            "taskName": NAMES[n % len(NAMES)].format(created=created, n=n),
            "status": status,
            "numCnt": num_cnt,
            "createdTime": created,
            "scriptId": rng.choice((56, 57, 61, 88)),
            "taskType": TASK_TYPE_AI_AGENT,
        }
        record.update(_counters(rng, status, num_cnt))
        currency = "EUR" if rng.random() < self.config.eur_fraction else "USD"
        _fees(rng, record, currency)
        return record

    def _generate(self, day: date) -> None:
        rng = random.Random(f"{self.config.seed}:{day.isoformat()}")
        count = self._count(day, rng)
        if count > 100_000:
            raise ValueError("the simulator holds at most 100,000 tasks a day")
        seconds = sorted(rng.randrange(1, 86_399) for _ in range(max(0, count - 2)))
        if count >= 1:
            seconds.insert(0, 0)  # a task at exactly 00:00:00 ...
        if count >= 2:
            seconds.append(86_399)  # ... and one at exactly 23:59:59
        midnight = datetime.combine(day, datetime.min.time())
        base_id = 1_000_000 + (day - EPOCH).days * 100_000
        tasks = []
        for n, second in enumerate(seconds):
            created = (midnight + timedelta(seconds=second)).strftime(LOCAL_DATETIME_FORMAT)
            tasks.append(_Task(self.make_record(rng, base_id + n, created, n)))
        self._days[day] = tasks
        self._keys[day] = [task.sort_key for task in tasks]

    def day(self, day: date) -> list[_Task]:
        with self._lock:
            if day not in self._days:
                self._generate(day)
            return self._days[day]

    def window(self, start: str, end: str) -> list[_Task]:
        """Tasks created in [start, end] (inclusive, local text), newest first."""
        first = datetime.strptime(start, LOCAL_DATETIME_FORMAT).date()
        last = datetime.strptime(end, LOCAL_DATETIME_FORMAT).date()
        found: list[_Task] = []
        with self._lock:
            day = last
            while day >= first:
                tasks = self.day(day)
                keys = self._keys[day]
                lo = bisect.bisect_left(keys, (start, -1))
                hi = bisect.bisect_right(keys, (end, 1 << 62))
                found.extend(reversed(tasks[lo:hi]))
                day -= timedelta(days=1)
        return found

    def add_live_task(self, created: str) -> _Task:
        """A task created just now in some window (for drift while a client pages)."""
        with self._lock:
            self._next_live_id += 1
            rng = random.Random(self._next_live_id)
            task = _Task(self.make_record(rng, self._next_live_id, created, self._next_live_id))
            day = datetime.strptime(created, LOCAL_DATETIME_FORMAT).date()
            self.day(day)
            keys = self._keys[day]
            at = bisect.bisect_right(keys, task.sort_key)
            keys.insert(at, task.sort_key)
            self._days[day].insert(at, task)
            return task

    def delete(self, day: date, task_id: int) -> None:
        """Stop listing task `task_id` of `day` (deleted upstream, e.g. while a client pages)."""
        with self._lock:
            tasks = self.day(day)
            at = next(n for n, task in enumerate(tasks) if task.task_id == task_id)
            del tasks[at]
            del self._keys[day][at]

    def add_raw(self, day: date, record: dict[str, Any]) -> None:
        """Serve `record` exactly as given in the windows that contain `day` at 12:00:00, newest
        first among that second's tasks. Any JSON object goes: fields missing or of the wrong
        type, no taskId or createdTime, the same record twice. For testing bad input; `advance`
        leaves it as it is."""
        with self._lock:
            self.day(day)
            task = _Task(record, created=f"{day.isoformat()} 12:00:00", task_id=1 << 61, raw=True)
            keys = self._keys[day]
            at = bisect.bisect_right(keys, task.sort_key)
            keys.insert(at, task.sort_key)
            self._days[day].insert(at, task)

    def all_tasks(self, days: Iterable[date]) -> list[dict[str, Any]]:
        return [task.record for day in days for task in self.day(day)]

    def advance(self, days: Iterable[date] | None = None, *, to_final: bool = False) -> int:
        """Move open tasks one step on (0→6→1→2, 5→1), or straight to final. Returns moved."""
        moved = 0
        with self._lock:
            for day in list(days) if days is not None else list(self._days):
                for task in self.day(day):
                    if task.raw:
                        continue  # served exactly as given (add_raw)
                    status = task.record.get("status")
                    if not isinstance(status, int) or status not in OPEN_STATUSES:
                        continue  # final
                    new_status = 2 if to_final else {0: 6, 6: 1, 1: 2, 5: 1}[status]
                    rng = random.Random(f"advance:{task.task_id}:{new_status}")
                    record = dict(task.record, status=new_status)
                    record.update(_counters(rng, new_status, record["numCnt"]))
                    currency = task.record["taskSumPayFee"][-4:-1]
                    _fees(rng, record, currency)
                    task.update(**record)
                    moved += 1
        return moved


@dataclass
class SimulatorStats:
    requests: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "outcomes": dict(self.outcomes)}


class Simulator:
    """The API's behaviour, independent of HTTP (the handler below only translates)."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self.store = TaskStore(self.config)
        self.stats = SimulatorStats()
        self._scripted: deque[str] = deque()
        self._rng = random.Random(self.config.seed * 7919)
        self._lock = threading.Lock()

    # -- control -------------------------------------------------------------------------------
    def script(self, *outcomes: str) -> None:
        """Force the next responses: an API code ('-18'), 'http:502', 'drop', 'slow', 'nonjson',
        'nodata', 'cut' (the connection dropped halfway through a normal answer), 'undecodable'
        (a normal answer labelled gzip, which it is not), 'ok' or 'ok-string-code' (a normal
        answer with `"code":"0"`, as documented)."""
        with self._lock:
            self._scripted.extend(outcomes)

    def configure(self, **changes: Any) -> None:
        with self._lock:
            self.config = replace(self.config, **changes)
            self.store.config = self.config

    def reset_stats(self) -> None:
        with self._lock:
            self.stats = SimulatorStats()

    def _pick_fault(self) -> str:
        with self._lock:
            self.stats.requests += 1
            if self._scripted:
                return self._scripted.popleft()
            cfg = self.config
            if cfg.fault_rate and self._rng.random() < cfg.fault_rate:
                kind = self._rng.choice(cfg.fault_kinds)
                return {"502": "http:502"}.get(kind, kind)
            return "ok"

    def count(self, outcome: str) -> None:
        with self._lock:
            self.stats.outcomes[outcome] += 1

    # -- the endpoint --------------------------------------------------------------------------
    def check_auth(self, headers: Any, client_ip: str) -> tuple[int, str] | None:
        cfg = self.config
        if cfg.allowed_ips is not None and client_ip not in cfg.allowed_ips:
            return -2, "restricted IP access"
        key, timestamp, signature = (
            headers.get("Api-Key"),
            headers.get("Timestamp"),
            headers.get("Sign"),
        )
        digits = bool(timestamp) and timestamp.isascii() and timestamp.isdigit()  # ("²": no int)
        if key != cfg.api_key or not digits or not signature:
            return -1, "authentication error"
        if signature != sign(cfg.api_key, cfg.api_secret, timestamp):
            return -1, "authentication error"
        if (
            abs(time.time() + cfg.clock_skew_seconds - int(timestamp))
            > cfg.timestamp_window_seconds
        ):
            return -16, "timestamp expired"
        return None

    def validate(self, body: Any, content_type: str | None) -> tuple[dict[str, Any], str | None]:
        """The body's parsed parameters, or a -22 message naming the problem. A body not sent as
        `application/json` (the contract's Content-Type) is not read as JSON, whatever it holds:
        a client that drops the header must fail here as it would against the real service (how
        that refuses it is not documented: -22 is inferred)."""
        media_type = (content_type or "").split(";", 1)[0].strip().lower()
        if media_type != "application/json":
            return {}, f"Content-Type must be application/json, got {content_type!r}"
        if not isinstance(body, dict):
            return {}, "body must be a JSON object"
        current, size, params = body.get("current"), body.get("size"), body.get("params")
        if not isinstance(current, int) or isinstance(current, bool) or current < 1:
            return {}, f"current must be an integer >= 1, got {current!r}"
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= 100:
            return {}, f"size must be an integer 1..100, got {size!r}"
        if not isinstance(params, dict):
            return {}, "params is required"
        start, end = _local_datetime(params.get("strTime")), _local_datetime(params.get("endTime"))
        if start is None or end is None:
            name = "strTime" if start is None else "endTime"
            return {}, (
                f"strTime and endTime must be yyyy-MM-dd HH:mm:ss, got {name}={params.get(name)!r}"
            )
        if start > end:
            return {}, f"strTime is after endTime ({params['strTime']} > {params['endTime']})"
        if end - start > timedelta(days=self.config.max_window_days):
            return {}, f"the window may span at most {self.config.max_window_days} days"
        if params.get("taskType") != TASK_TYPE_AI_AGENT:
            return {}, f"taskType must be 3, got {params.get('taskType')!r}"
        statuses = params.get("statusList")
        if statuses is None:
            statuses = []  # optional: null or left out is no filter (0, "" or {} are no list)
        if not isinstance(statuses, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= 6 for s in statuses
        ):
            return {}, f"statusList must be a list of status codes 0..6, got {statuses!r}"
        app_id, search = params.get("idxAppId"), params.get("searchCondition")
        if app_id is not None and (not isinstance(app_id, int) or isinstance(app_id, bool)):
            return {}, f"idxAppId must be an integer, got {app_id!r}"
        if search is not None and not isinstance(search, str):
            return {}, f"searchCondition must be a string, got {search!r}"
        return {
            "current": current,
            "size": size,
            "start": params["strTime"],
            "end": params["endTime"],
            "statuses": set(statuses),
            "search": search,
        }, None

    def query(self, q: dict[str, Any]) -> bytes:
        tasks = self.store.window(q["start"], q["end"])
        if q["statuses"]:
            tasks = [t for t in tasks if _hashable(t.record.get("status")) in q["statuses"]]
        if q["search"]:
            needle = q["search"]
            tasks = [t for t in tasks if needle in _text(t.record.get("taskName"))]
        total, size, current = len(tasks), q["size"], q["current"]
        page = tasks[(current - 1) * size : current * size]
        head = json.dumps(
            {
                "total": total,
                "size": size,
                "current": current,
                "pages": -(-total // size),
                "searchCount": True,
            }
        )[:-1].encode()
        body = (
            b'{"code":0,"msg":"success","data":'
            + head
            + b',"records":['
            + b",".join(t.encoded for t in page)
            + b"]}}"
        )
        for _ in range(self.config.live_tasks_per_request):
            self.store.add_live_task(q["end"])
        return body


def _local_datetime(value: Any) -> datetime | None:
    """`value` as a date-time if it is exactly yyyy-MM-dd HH:mm:ss, zero-padded as the contract
    writes it (the window is compared as that text), else None."""
    try:
        parsed = datetime.strptime(value, LOCAL_DATETIME_FORMAT)
    except (TypeError, ValueError):
        return None
    return parsed if format_local(parsed) == value else None


def _hashable(value: Any) -> Any:
    """A raw record's (add_raw) status as a set member: lists and objects match nothing."""
    return None if isinstance(value, list | dict) else value


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _code(code: int, msg: str) -> bytes:
    return json.dumps({"code": code, "msg": msg, "data": None}).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle's algorithm on, the body would wait for
    # the client's delayed ACK (~40 ms a response).
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # silence per-request logging
        pass

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        encoding: str | None = None,
    ) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            if encoding:
                self.send_header("Content-Encoding", encoding)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (e.g. its timeout): nothing to say

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self) -> None:
        sim = self.server.simulator
        if self.path == "/_sim/stats":
            self._send(200, json.dumps(sim.stats.as_dict()).encode())
        else:
            self._send(404, b'{"error":"not found"}')

    def do_POST(self) -> None:
        sim = self.server.simulator
        raw = self._body()
        if self.path.startswith("/_sim/"):
            self._admin(sim, raw)
            return
        if self.path != QUERY_PATH:
            self._send(404, b'{"error":"not found"}')
            return
        if sim.config.latency_seconds:
            time.sleep(sim.config.latency_seconds)
        outcome = sim._pick_fault()
        sim.count(outcome)
        if outcome == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if outcome == "slow":
            time.sleep(sim.config.slow_seconds)
        elif outcome.startswith("http:"):
            self._send(int(outcome[5:]), b"<html>Bad Gateway</html>", "text/html")
            return
        elif outcome == "nonjson":
            self._send(200, b"<html>maintenance</html>", "text/html")
            return
        elif outcome == "nodata":
            self._send(200, b'{"code":0,"msg":"success"}')
            return
        elif outcome.lstrip("-").isdigit():
            self._send(200, _code(int(outcome), "scripted failure"))
            return
        refused = sim.check_auth(self.headers, self.client_address[0])
        if refused:
            sim.count(f"refused:{refused[0]}")
            self._send(200, _code(*refused))
            return
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        query, problem = sim.validate(body, self.headers.get("Content-Type"))
        if problem:
            sim.count("refused:-22")
            self._send(200, _code(-22, f"parameter exception: {problem}"))
            return
        answer = sim.query(query)
        if outcome == "ok-string-code":
            answer = answer.replace(b'{"code":0,', b'{"code":"0",', 1)
        if outcome == "cut":
            self._cut(answer)
            return
        if outcome == "undecodable":
            self._send(200, answer, "application/json", encoding="gzip")
            return
        self._send(200, answer)

    def _cut(self, body: bytes) -> None:
        """Announce the whole answer, send half of it, and drop the connection."""
        self.close_connection = True
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # the client gave up first: nothing to cut

    def _admin(self, sim: Simulator, raw: bytes) -> None:
        args = json.loads(raw or b"{}")
        if self.path == "/_sim/advance":
            days = [date.fromisoformat(d) for d in args["days"]] if "days" in args else None
            moved = sim.store.advance(days, to_final=bool(args.get("to_final")))
            self._send(200, json.dumps({"moved": moved}).encode())
        elif self.path == "/_sim/script":
            sim.script(*args.get("outcomes", []))
            self._send(200, b"{}")
        elif self.path == "/_sim/configure":
            sim.configure(**args)
            self._send(200, b"{}")
        elif self.path == "/_sim/reset_stats":
            sim.reset_stats()
            self._send(200, b"{}")
        else:
            self._send(404, b'{"error":"not found"}')


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    simulator: Simulator


class SimulatorServer:
    """The simulator served on 127.0.0.1 in a background thread. Use as a context manager."""

    def __init__(
        self,
        simulator: Simulator | None = None,
        port: int = 0,
        advance_every_seconds: float | None = None,
    ) -> None:
        """`advance_every_seconds`: move every in-progress task one step on that often, as the
        real platform does while tasks call (the dev UI's sensor then has work to show)."""
        self.simulator = simulator or Simulator()
        self._advance_every = advance_every_seconds
        self._stopped = threading.Event()
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.simulator = self.simulator
        # A short poll interval makes stop() take ~50 ms instead of serve_forever's 0.5 s.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> SimulatorServer:
        self._thread.start()
        if self._advance_every:
            threading.Thread(target=self._advance_periodically, daemon=True).start()
        return self

    def _advance_periodically(self) -> None:
        assert self._advance_every
        while not self._stopped.wait(self._advance_every):
            self.simulator.store.advance()

    def stop(self) -> None:
        self._stopped.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def even_day_counts(first_day: date, last_day: date, total: int) -> dict[date, int]:
    """`total` tasks spread evenly over [first_day, last_day]; the first days take the remainder."""
    days = (last_day - first_day).days + 1
    if days < 1:
        raise ValueError("last_day is before first_day")
    share, extra = divmod(total, days)
    return {first_day + timedelta(days=n): share + (n < extra) for n in range(days)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--api-key", default=SimulatorConfig.api_key)
    parser.add_argument("--api-secret", default=SimulatorConfig.api_secret)
    parser.add_argument("--tasks-per-day", type=int, default=None)
    parser.add_argument("--first-day", type=date.fromisoformat, default=None)
    parser.add_argument("--last-day", type=date.fromisoformat, default=None)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--fault-kinds", default=",".join(FAULT_KINDS))
    parser.add_argument("--open-fraction", type=float, default=SimulatorConfig.open_fraction)
    parser.add_argument(
        "--total-tasks",
        type=int,
        default=None,
        help="spread exactly this many tasks over --first-day..--last-day (overrides per-day)",
    )
    parser.add_argument(
        "--warm",
        action="store_true",
        help="generate --first-day..--last-day before serving (and before printing the URL)",
    )
    args = parser.parse_args(argv)
    if (args.total_tasks is not None or args.warm) and not (args.first_day and args.last_day):
        parser.error("--total-tasks and --warm need --first-day and --last-day")
    config = SimulatorConfig(
        api_key=args.api_key,
        api_secret=args.api_secret,
        seed=args.seed,
        tasks_per_day=args.tasks_per_day,
        first_day=args.first_day,
        last_day=args.last_day,
        latency_seconds=args.latency_ms / 1000,
        fault_rate=args.fault_rate,
        fault_kinds=tuple(args.fault_kinds.split(",")),
        open_fraction=args.open_fraction,
        day_counts=(
            even_day_counts(args.first_day, args.last_day, args.total_tasks)
            if args.total_tasks is not None
            else {}
        ),
    )
    server = SimulatorServer(Simulator(config), port=args.port)
    if args.warm:
        day = args.first_day
        while day <= args.last_day:
            server.simulator.store.day(day)
            day += timedelta(days=1)
    print(f"LAAFFIC simulator on {server.url} (key {config.api_key!r})", flush=True)
    try:
        server._server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server._server.server_close()


def fingerprint(records: Iterable[dict[str, Any]]) -> str:
    """Order-independent digest of records, for comparing the warehouse with the simulator."""
    digest = hashlib.sha256()
    for line in sorted(json.dumps(r, sort_keys=True) for r in records):
        digest.update(line.encode())
    return digest.hexdigest()


if __name__ == "__main__":
    main()

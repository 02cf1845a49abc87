"""Signed, retrying, drift-safe client for `POST /voice/group/call/query`.

One window is read completely: page 1 tells the total, the remaining pages are fetched with
bounded concurrency, and because the API lists newest first (new tasks push older ones onto later
pages) the client follows the latest `total` and re-reads until every task is accounted for.
Re-reading a window whose digest is known (a re-sync), the pages are first only hashed: parsing
is the larger part of the client's work, and unchanged pages need none.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import random
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, NamedTuple, TypeVar

import requests
from pydantic import ValidationError

from pipelines.laaffic.errors import (
    API_ERRORS,
    LaafficApiError,
    LaafficClockSkewError,
    LaafficConfigError,
    LaafficError,
    LaafficHttpError,
    LaafficIncompleteWindowError,
    LaafficReadStoppedError,
    LaafficRetriesExhaustedError,
    LaafficTimestampExpiredError,
    LaafficTransportError,
    LaafficUnknownCodeError,
)
from pipelines.laaffic.models import (
    MAX_PAGE_SIZE,
    ApiResponse,
    ApiStatus,
    Page,
    QueryParams,
    QueryRequest,
    TimeWindow,
    format_local,
)

QUERY_PATH = "/voice/group/call/query"
DEFAULT_BASE_URL = "https://api.laaffic.com"

Logger = logging.Logger | logging.LoggerAdapter[Any] | Any
_T = TypeVar("_T")


def sign(api_key: str, api_secret: str, timestamp: str) -> str:
    """Lowercase hex md5(key + secret + timestamp), the vendor's `Sign` header."""
    return hashlib.md5((api_key + api_secret + timestamp).encode("utf-8")).hexdigest()  # noqa: S324


def _reading(request: QueryRequest) -> str:
    """What a request was doing, for error messages."""
    return (
        f"reading page {request.current} of window "
        f"[{request.params.strTime} .. {request.params.endTime}]"
    )


class _Body(NamedTuple):
    """A page's HTTP body, unparsed, and its SHA-256."""

    content: bytes
    sha256: bytes


def split_window(window: TimeWindow, max_days: int) -> list[TimeWindow]:
    """Cut a window into consecutive inclusive pieces no longer than `max_days` each."""
    if window.end < window.start:
        raise ValueError(f"window {window} ends before it starts")
    step = timedelta(days=max_days)
    pieces: list[TimeWindow] = []
    start = window.start
    while start <= window.end:
        end = min(start + step - timedelta(seconds=1), window.end)
        pieces.append(TimeWindow(start=start, end=end))
        start = end + timedelta(seconds=1)
    return pieces


@dataclass
class FetchStats:
    """What reading a window cost; becomes Dagster metadata and the sync-log row."""

    api_total: int = 0
    pages: int = 0
    requests: int = 0
    retries: int = 0
    upstream_duplicates: int = 0
    passes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, *, requests: int = 0, retries: int = 0) -> None:
        with self._lock:
            self.requests += requests
            self.retries += retries


@dataclass
class WindowResult:
    """A window's records, what reading them cost, and `digest`: SHA-256 over the window's
    pieces and the body of every page taken in, in the order taken. The records are a function
    of exactly those bodies, so an equal digest means equal records; a re-sync that finds the
    digest its day's last sync stored skips the day's records unread (see `pipelines.sync`)."""

    window: TimeWindow
    records: list[dict[str, Any]]
    stats: FetchStats
    digest: bytes = b""
    #: The digest equalled the one the caller expected (`fetch_window(expected_digest=...)`), so
    #: the records were left unparsed: `records` is empty and `received` tells how many there are.
    unchanged: bool = False

    @property
    def received(self) -> int:
        return self.stats.api_total if self.unchanged else len(self.records)


class LaafficClient:
    """Reads creation-time windows from the API. Thread-safe; one HTTP session per thread."""

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        api_secret: str | None = None,
        *,
        page_size: int = MAX_PAGE_SIZE,
        timeout_seconds: float = 30.0,
        max_attempts: int = 6,
        backoff_base_seconds: float = 0.5,
        backoff_max_seconds: float = 30.0,
        max_timestamp_resigns: int = 2,
        max_window_days: int = 31,
        max_concurrency: int = 4,
        max_drift_passes: int = 3,
        logger: Logger | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        missing = [
            name
            for name, value in (("LAAFFIC_API_KEY", api_key), ("LAAFFIC_API_SECRET", api_secret))
            if not value
        ]
        if missing:
            raise LaafficConfigError(
                f"missing LAAFFIC credentials: set {' and '.join(missing)} "
                "(or run `python -m pipelines demo` to use the local simulator)"
            )
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be 1..{MAX_PAGE_SIZE}, got {page_size}")
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key or ""
        self._api_secret = api_secret or ""
        self.page_size = page_size
        self.timeout_seconds = timeout_seconds
        self.max_attempts = max(1, max_attempts)
        self.backoff_base_seconds = backoff_base_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self.max_timestamp_resigns = max_timestamp_resigns
        self.max_window_days = max_window_days
        self.max_concurrency = max(1, max_concurrency)
        self.max_drift_passes = max_drift_passes
        self.log: Logger = logger or logging.getLogger(__name__)
        self._clock = clock
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._stopping = threading.Event()  # set while `reads_stopped`: no request is sent

    def __repr__(self) -> str:
        return f"LaafficClient(base_url={self.base_url!r}, api_key='***', api_secret='***')"

    # -- one request -------------------------------------------------------------------------

    def _transport(self) -> tuple[requests.Session, requests.PreparedRequest]:
        """This thread's session and a request prepared once (URL, session headers), which each
        attempt copies, signs and fills: `Session.request` would re-prepare and re-merge
        settings every time (~0.15 ms a page)."""
        transport: tuple[requests.Session, requests.PreparedRequest] | None = getattr(
            self._local, "transport", None
        )
        if transport is None:
            session = requests.Session()
            # The environment (proxies, NO_PROXY, CA bundle) is read once here rather than on
            # every request, which with trust_env also stats ~/.netrc: ~0.25 ms per page.
            session.proxies.update(requests.utils.get_environ_proxies(self.base_url))
            bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
            if bundle and self.base_url.startswith("https:"):
                session.verify = bundle  # (requests stats it on every request: only for TLS)
            session.trust_env = False
            template = session.prepare_request(
                requests.Request(
                    "POST",
                    self.base_url + QUERY_PATH,
                    headers={"Content-Type": "application/json;charset=UTF-8"},
                )
            )
            transport = (session, template)
            self._local.transport = transport
        return transport

    def _headers(self) -> dict[str, str]:
        timestamp = str(int(self._clock()))
        return {
            "Api-Key": self._api_key,
            "Timestamp": timestamp,
            "Sign": sign(self._api_key, self._api_secret, timestamp),
        }

    def _post_once(self, body: dict[str, Any], context: str) -> Page:
        """One signed attempt. Raises a LaafficError subclass describing any failure."""
        return self._parse(self._send(body, context), context)

    def _send(self, body: dict[str, Any], context: str) -> bytes:
        """One signed HTTP exchange; the body of a 200 response, not yet looked at."""
        session, template = self._transport()
        request = template.copy()  # (copies the headers too)
        request.headers.update(self._headers())
        request.prepare_body(data=json.dumps(body, allow_nan=False).encode(), files=None)
        try:
            response = session.send(
                request,
                timeout=self.timeout_seconds,
                allow_redirects=False,
                proxies=session.proxies,
            )
        except requests.Timeout as exc:
            raise LaafficTransportError(
                f"no answer within {self.timeout_seconds}s ({type(exc).__name__})"
            ) from None
        except requests.ConnectionError as exc:
            raise LaafficTransportError(
                f"connection to {self.base_url} failed or was dropped ({type(exc).__name__})"
            ) from None
        # requests reads the body inside `send`: a connection dropped halfway through it is no
        # ConnectionError, and a body its Content-Encoding does not describe is as broken.
        except requests.exceptions.ChunkedEncodingError as exc:
            raise LaafficTransportError(
                f"the connection to {self.base_url} broke off while the answer was read "
                f"({type(exc).__name__})"
            ) from None
        except requests.exceptions.ContentDecodingError as exc:
            raise LaafficTransportError(
                f"the answer from {self.base_url} could not be decoded as its Content-Encoding "
                f"says ({type(exc).__name__})"
            ) from None
        if response.status_code == 429 or response.status_code >= 500:
            raise LaafficTransportError(f"HTTP {response.status_code} from {self.base_url}")
        if response.status_code != 200:
            raise LaafficHttpError(
                f"HTTP {response.status_code} from {self.base_url}{QUERY_PATH} while {context}: "
                f"{response.text[:200]!r}; check LAAFFIC_BASE_URL"
            )
        return response.content

    def _parse(self, content: bytes, context: str) -> Page:
        """A response body as a page, or the LaafficError its envelope describes."""
        envelope: ApiResponse | None
        try:
            envelope = ApiResponse.model_validate_json(content)
        except ValidationError as exc:
            envelope = _envelope_by_json_module(content, exc) or _refusal(content)
            if envelope is None:
                snippet = content[:120].decode("utf-8", "replace")
                raise LaafficTransportError(
                    f"response is not the documented JSON envelope ({exc.error_count()} "
                    f"problems, first: {_first_problem(exc)}; body starts {snippet!r})"
                ) from None
        code = envelope.code_int
        if code == 0:
            if envelope.data is None:
                raise LaafficTransportError("code 0 but the response has no `data` page")
            return envelope.data.with_body_digest(content)
        error_class = API_ERRORS.get(code) if code is not None else None
        if error_class is None:
            raise LaafficUnknownCodeError(envelope.msg or "", code=envelope.code, context=context)
        raise error_class(envelope.msg or "", context=context)

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.backoff_max_seconds, self.backoff_base_seconds * (2**attempt))
        return ceiling * random.uniform(0.5, 1.0)

    def query_page(self, request: QueryRequest, stats: FetchStats | None = None) -> Page:
        """POST one page, re-signing on -16 and retrying transient failures with back-off."""
        body = request.body()
        context = _reading(request)
        return self._retrying(lambda: self._post_once(body, context), context, stats)

    def _query_body(self, request: QueryRequest, stats: FetchStats) -> _Body:
        """POST one page and keep its body unparsed (HTTP failures are retried as above; what the
        body says is only looked at if its digest is not the one expected, see `_read_same`)."""
        body = request.body()
        context = _reading(request)
        content = self._retrying(lambda: self._send(body, context), context, stats)
        return _Body(content, hashlib.sha256(content).digest())

    def _retrying(self, attempt: Callable[[], _T], context: str, stats: FetchStats | None) -> _T:
        stats = stats or FetchStats()
        transient_failures = 0
        resigns = 0
        while True:
            if self._stopping.is_set():
                raise LaafficReadStoppedError(f"not sent: the sync stopped, while {context}")
            stats.add(requests=1)
            try:
                return attempt()
            except LaafficTimestampExpiredError:
                resigns += 1
                if resigns > self.max_timestamp_resigns:
                    raise LaafficClockSkewError(
                        f"the API refused the request timestamp (code -16) {resigns} times in a "
                        f"row although each attempt was freshly signed, while {context}: this "
                        f"machine's clock is off (local Unix time {int(self._clock())}); "
                        "synchronise it (NTP) and retry"
                    ) from None
                stats.add(retries=1)
                self.log.warning("LAAFFIC -16 timestamp expired; re-signing (%s)", context)
            except LaafficError as exc:
                if not exc.retryable:
                    raise
                transient_failures += 1
                if transient_failures >= self.max_attempts:
                    raise LaafficRetriesExhaustedError(transient_failures, exc, context) from None
                delay = self._backoff(transient_failures - 1)
                stats.add(retries=1)
                self.log.warning(
                    "LAAFFIC transient failure %d/%d (%s) %s; retrying in %.2fs",
                    transient_failures,
                    self.max_attempts,
                    exc,
                    context,
                    delay,
                )
                self._stopping.wait(delay)  # a back-off ends at once when reads are stopped

    # -- one window --------------------------------------------------------------------------

    def _request(self, window: TimeWindow, page: int, filters: dict[str, Any]) -> QueryRequest:
        return QueryRequest(
            current=page,
            size=self.page_size,
            params=QueryParams(
                strTime=format_local(window.start), endTime=format_local(window.end), **filters
            ),
        )

    def _executor(self) -> ThreadPoolExecutor:
        """The pool every request runs on: at most `max_concurrency` requests in flight from
        this client, whatever number of windows are being read at once."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=self.max_concurrency, thread_name_prefix="laaffic-http"
                )
            return self._pool

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None

    @contextmanager
    def reads_stopped(self) -> Iterator[None]:
        """Stop every read of this client while inside: no request is sent, a back-off ends at
        once, and each read raises `LaafficReadStoppedError`. For a sync that fails or is
        stopped while other days are read ahead: in an outage, waiting for their retries to run
        out would take minutes. On leaving, it waits for the requests in flight (each ends
        within its timeout, none follows), and the client reads again."""
        self._stopping.set()
        try:
            yield
        finally:
            try:
                self.close()
            finally:  # (a second interrupt while waiting must not leave it stopped for good)
                self._stopping.clear()

    def __enter__(self) -> LaafficClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read_pages(
        self,
        window: TimeWindow,
        pages: range,
        filters: dict[str, Any],
        stats: FetchStats,
        sequential: bool = False,
        bodies: dict[int, bytes] | None = None,
    ) -> Generator[Page, None, None]:
        """Pages in order, fetched on the shared pool (one at a time if `sequential`). A page
        whose body is in `bodies` (read already, see `_read_same`) is parsed from it instead,
        and requested again only if that body is a transient failure (-18, -16, not a page); a
        fatal code (-1, -2, -22, an unknown one) is raised, as the same answer to a request is."""
        first = self._request(window, 1, filters)
        bodies = bodies or {}

        def reader(number: int) -> Callable[[], Page]:
            body = bodies.pop(number, None)

            def read() -> Page:
                request = first.page(number)
                if body is not None:
                    try:
                        return self._parse(body, _reading(request))
                    except LaafficError as exc:
                        if not exc.retryable:
                            raise  # -1, -2, -22, an unknown code: stop, as on a first read
                        stats.add(retries=1)  # (-18, -16, not a page): asked again, a retry
                return self.query_page(request, stats)

            return read

        yield from self._in_order(pages, reader, sequential)

    def _in_order(
        self, numbers: range, reader: Callable[[int], Callable[[], _T]], sequential: bool
    ) -> Generator[_T, None, None]:
        """Run `reader(n)()` for each page number `n` on the shared pool, yielding the results in
        page order. A sliding window of requests: however many pages there are, only a few are
        scheduled ahead of the one being consumed."""
        pool = self._executor()
        if sequential:
            for number in numbers:
                yield pool.submit(reader(number)).result()
            return
        ahead: deque[Future[_T]] = deque()
        remaining = iter(numbers)
        try:
            for number in itertools.islice(remaining, 2 * self.max_concurrency):
                ahead.append(pool.submit(reader(number)))
            while ahead:
                result = ahead.popleft().result()
                following = next(remaining, None)
                if following is not None:
                    ahead.append(pool.submit(reader(following)))
                yield result
        finally:
            for future in ahead:
                future.cancel()  # a failed or abandoned page stops the window

    def _ends_early(self, number: int, page: Page) -> bool:
        """A page before the last one `total` implies, but not full: the listing stops short
        (tasks vanished meanwhile, or a `total` that is not true). Paging further is pointless."""
        return len(page.records) < self.page_size and number < math.ceil(
            page.total / self.page_size
        )

    def fetch_window(
        self, window: TimeWindow, *, expected_digest: bytes | None = None, **filters: Any
    ) -> WindowResult:
        """Every task created in `window` (split into API-sized pieces), de-duplicated by taskId.

        `expected_digest`, the digest of an earlier read of the same one-piece window (a day's
        last sync), lets a re-read skip parsing: if the pages come back exactly as they were, the
        result is `unchanged` and carries no records (see `_read_same`)."""
        pieces = split_window(window, self.max_window_days)
        stats = FetchStats()
        records: list[dict[str, Any]] = []
        digest = hashlib.sha256(json.dumps(filters, sort_keys=True, default=str).encode())
        bodies: dict[int, bytes] = {}  # read already, by page number (one piece only)
        in_order = True  # ... and each after the page before it
        if expected_digest is not None and len(pieces) == 1:
            read = self._read_same(pieces[0], filters, stats, digest.copy(), expected_digest)
            if read is None:
                return WindowResult(window, [], stats, expected_digest, unchanged=True)
            bodies, in_order = read
        for piece in pieces:
            digest.update(str(piece).encode())
            records.extend(self._fetch_piece(piece, filters, stats, digest, bodies, in_order))
        return WindowResult(window=window, records=records, stats=stats, digest=digest.digest())

    def _read_same(
        self,
        window: TimeWindow,
        filters: dict[str, Any],
        stats: FetchStats,
        digest: hashlib._Hash,
        expected: bytes,
    ) -> tuple[dict[int, bytes], bool] | None:
        """Read the window's pages 1..ceil(total / page size) without parsing them (page 1 and
        the last only for their `total` and count). Return None if they are exactly the pages
        whose digest is `expected`, a single complete pass. Otherwise return the bodies read,
        by page number, which `_fetch_piece` parses instead of requesting them again, and
        whether each was read after the page before it.

        Equal digests mean byte-identical bodies in the same order; the earlier read found
        these bodies complete in one pass, and the last page's `total` and count confirm it,
        so parsing them again would give the very records that read stored.

        The last page is read right after page 1: a listing that ends before its `total` (10**13,
        say) is handed to the full read, which stops at the first page that ends early, before
        the pages between are asked for; otherwise every page up to that `total` was read."""
        first = self._request(window, 1, filters)
        bodies = {1: self._executor().submit(self._query_body, first, stats).result()}
        try:
            page_one = self._parse(bodies[1].content, _reading(first))
        except LaafficError:
            # (the full read raises it, or asks again if transient)
            return {1: bodies[1].content}, True
        count = max(1, math.ceil(page_one.total / self.page_size))
        in_order = count <= 2  # pages 1, `count`, then those between
        last = page_one
        if count > 1:
            bodies[count] = (
                self._executor().submit(self._query_body, first.page(count), stats).result()
            )
            try:
                last = self._parse(bodies[count].content, _reading(first.page(count)))
            except LaafficError as exc:
                if not exc.retryable:
                    raise  # -1, -2, -22, an unknown code: stop, as on a first read
                return {n: body.content for n, body in bodies.items()}, in_order
        if last.total != page_one.total or (
            len(last.records) != page_one.total - (count - 1) * self.page_size
        ):
            return {n: body.content for n, body in bodies.items()}, in_order
        numbers = range(2, count)
        for number, body in zip(
            numbers,
            self._in_order(
                numbers,
                lambda n: lambda: self._query_body(first.page(n), stats),
                self.max_concurrency == 1,
            ),
            strict=True,
        ):
            bodies[number] = body
        digest.update(str(window).encode())
        for number in range(1, count + 1):
            digest.update(bodies[number].sha256)
        if digest.digest() != expected:
            return {number: body.content for number, body in bodies.items()}, in_order
        stats.api_total += page_one.total
        stats.pages += count
        stats.passes = max(stats.passes, 1)
        return None

    def _fetch_piece(
        self,
        window: TimeWindow,
        filters: dict[str, Any],
        stats: FetchStats,
        digest: hashlib._Hash,
        bodies: dict[int, bytes],
        in_order: bool = True,
    ) -> list[dict[str, Any]]:
        """Read one API-sized window completely (see the module docstring); the first pass
        parses `bodies` (page number -> body already read, each after the page before it if
        `in_order`) rather than requesting them."""
        by_id: dict[Any, dict[str, Any]] = {}
        unkeyed: list[dict[str, Any]] = []
        latest_total = 0
        pages_read = 0
        upstream_dups = 0

        def absorb(page: Page) -> tuple[int, int]:
            """Keep a page's records; return (rows returned, rows whose taskId was new)."""
            nonlocal latest_total, pages_read
            digest.update(page.body_sha256)
            latest_total = page.total
            pass_totals.append(page.total)
            pages_read += 1
            new = 0
            for record in page.records:
                task_id = _task_key(record)
                if task_id is None:
                    unkeyed.append(record)  # the normaliser reports it; never dropped here
                    new += 1
                    continue
                if task_id not in by_id:
                    new += 1
                by_id[task_id] = record  # a later read is the fresher one
                pass_ids.add(task_id)
            return len(page.records), new

        pass_totals: list[int] = []  # `total` of each page of the current pass, as read
        # The distinct tasks the current pass read. A pass is complete when they account for
        # every `total` it saw; tasks earlier passes read do not count: some may have been
        # deleted since, and a deletion above a task moves it onto a page read already, so
        # counting them could make up for a task no pass has read.
        pass_ids: set[int] = set()
        short_page: tuple[int, int, int] | None = None  # (page, records, total) ending early
        # Pages read one at a time, in page order (re-read passes always are, see below).
        sequential = self.max_concurrency == 1 and in_order
        (first,) = self._read_pages(window, range(1, 2), filters, stats, True, bodies)
        absorb(first)
        read_upto = 1
        passes = 1
        while True:
            # Follow the total as it grows: tasks created meanwhile push older ones back.
            while read_upto < math.ceil(latest_total / self.page_size) and not short_page:
                wanted = range(read_upto + 1, math.ceil(latest_total / self.page_size) + 1)
                with closing(
                    self._read_pages(window, wanted, filters, stats, sequential, bodies)
                ) as read:
                    for number, page in zip(wanted, read, strict=False):
                        absorb(page)
                        if self._ends_early(number, page):
                            short_page = (number, len(page.records), page.total)
                            break
                read_upto = wanted[-1]
            found = len(pass_ids) + len(unkeyed)
            if found >= max(pass_totals):
                break
            if (
                sequential
                and pass_totals == sorted(pass_totals)
                and pass_totals[-1] > pass_totals[0]
            ):
                # Tasks were created while this pass read its pages in order. New tasks are the
                # newest, so they only push older ones onto later pages (read twice, never
                # skipped): every task that existed when the pass began has been read, and the
                # shortfall is tasks created after its page 1. Another pass could never catch up.
                break
            if passes > self.max_drift_passes:
                ended = (
                    f" (page {short_page[0]} held {short_page[1]} records although `total` "
                    f"was {short_page[2]}: the listing ends before its total)"
                    if short_page
                    else ""
                )
                raise LaafficIncompleteWindowError(
                    f"window {window}: the API reports {latest_total} tasks but {passes} full "
                    f"passes each fell short, the last found only {found} distinct "
                    f"ones{ended}; refusing to store a partial window"
                )
            # Short: tasks moved while we paged (or the API repeats rows). Read it all again.
            self.log.info(
                "window %s: %d of %d tasks after pass %d; re-reading",
                window,
                found,
                latest_total,
                passes,
            )
            passes += 1
            before = len(by_id)
            returned = 0
            pages_now = range(1, max(1, math.ceil(latest_total / self.page_size)) + 1)
            unkeyed.clear()
            pass_totals.clear()
            pass_ids.clear()
            bodies.clear()  # (a pass that re-reads asks again)
            # In page order: concurrent reads while tasks are created can skip rows between pages.
            sequential = True
            short_page = None
            with closing(self._read_pages(window, pages_now, filters, stats, sequential)) as read:
                for number, page in zip(pages_now, read, strict=False):
                    returned += absorb(page)[0]
                    if self._ends_early(number, page):
                        short_page = (number, len(page.records), page.total)
                        break
            read_upto = pages_now[-1]
            if len(by_id) == before and returned >= latest_total:
                # A stable pass returned `total` rows, yet fewer distinct tasks: the API lists
                # some task twice, or it orders tasks created in the same second differently from
                # one page request to the next, so that a page boundary among them repeats one
                # task and skips another. Pieces that fit on one page have no boundary: reading
                # them finds any task skipped. What is still short of `total` is repeated rows.
                pages_read += self._read_in_one_page_pieces(
                    window, filters, stats, by_id, pass_ids, latest_total, len(unkeyed)
                )
                upstream_dups = max(0, latest_total - (len(pass_ids) + len(unkeyed)))
                break
        stats.api_total += latest_total
        stats.pages += pages_read
        stats.passes = max(stats.passes, passes)
        stats.upstream_duplicates += upstream_dups
        if upstream_dups:
            self.log.warning(
                "window %s: the API repeated %d rows (same taskId twice); kept one of each",
                window,
                upstream_dups,
            )
        return [*by_id.values(), *unkeyed]

    def _read_in_one_page_pieces(
        self,
        window: TimeWindow,
        filters: dict[str, Any],
        stats: FetchStats,
        by_id: dict[Any, dict[str, Any]],
        seen: set[int],
        total: int,
        unkeyed: int,
    ) -> int:
        """Read `window` again in pieces that each fit on one page, halving it by creation time,
        and add their keyed records to `by_id` and their ids to `seen` (the tasks the last pass
        read; unkeyed ones are kept already); return the pages read. A one-second piece holding
        more than a page is read page by page (nothing smaller can be asked for). Stops once
        `seen` accounts for `total`; what is still short when every piece has been read is
        repeated rows. Not `by_id`: it holds what earlier passes read, tasks deleted since too,
        which would make up for a task that no read has found yet (as for a pass, see
        `_fetch_piece`).

        Bounded: the pieces too big for a page at one depth are disjoint and hold more than a
        page each, so there are fewer of them than the window has pages, and each is split once.
        Halving a window of s seconds takes s.bit_length() levels, so a listing consistent with
        its `total` needs at most 2 * pages * (levels + 1) requests. Needing more means the
        answers for parts of the window contradict the whole (it ignores the window, say): the
        window is refused rather than its shortfall taken for repeats."""
        pages_in_window = max(1, math.ceil(total / self.page_size))
        levels = ((window.end - window.start) // timedelta(seconds=1)).bit_length()
        budget = 2 * pages_in_window * (levels + 1) + 16  # 16: tasks created meanwhile
        keyed_total = total - unkeyed
        known = len(by_id)
        pieces = [window]
        pages = 0
        while pieces and len(seen) < keyed_total:
            if pages >= budget:
                raise LaafficIncompleteWindowError(
                    f"window {window}: the API reports {total} tasks; reading it in pieces that "
                    f"fit on one page found {len(seen) + unkeyed} distinct ones and was not "
                    f"done after {pages} requests, more than a listing consistent with its "
                    "`total` needs (its answers for parts of the window contradict the whole); "
                    "refusing to store a partial window"
                )
            piece = pieces.pop()
            (page,) = self._read_pages(piece, range(1, 2), filters, stats, sequential=True)
            pages += 1
            by_id.update(keyed := _keyed(page))
            seen.update(keyed)
            seconds = (piece.end - piece.start) // timedelta(seconds=1)
            if page.total <= self.page_size:
                continue
            if seconds >= 1:  # the later half is read last (pieces is a stack)
                middle = piece.start + timedelta(seconds=seconds // 2)
                pieces.append(TimeWindow(start=middle + timedelta(seconds=1), end=piece.end))
                pieces.append(TimeWindow(start=piece.start, end=middle))
                continue
            later = min(math.ceil(page.total / self.page_size) - 1, budget - pages)
            for page in self._read_pages(piece, range(2, 2 + later), filters, stats, True):
                by_id.update(keyed := _keyed(page))
                seen.update(keyed)
                pages += 1
        if len(by_id) > known:
            self.log.warning(
                "window %s: %d task(s) the paged listing skipped were found by reading it in "
                "pieces of one page (the API orders tasks created in the same second "
                "differently from one page to the next)",
                window,
                len(by_id) - known,
            )
        return pages


def _envelope_by_json_module(content: bytes, exc: ValidationError) -> ApiResponse | None:
    """The envelope of a body pydantic-core's JSON parser refuses but the JSON standard allows
    (a string with an unpaired surrogate escape, "\\ud800"): read by Python's `json`, so one odd
    record reaches the normaliser, which rejects that value and keeps the rest of the page,
    instead of failing the page, and with it the day, on every attempt. None otherwise."""
    if not any(error["type"] == "json_invalid" for error in exc.errors()):
        return None
    try:
        return ApiResponse.model_validate(json.loads(content, parse_int=_json_int))
    except (ValueError, RecursionError, ValidationError):  # not JSON, or nested past any use
        return None


def _json_int(digits: str) -> int | str:
    """A JSON integer as `json` reads it, but one of more digits than Python's int() takes
    (4,300 by default; pydantic-core's parser refuses those too, "number out of range") as the
    text of its digits: the normaliser refuses it as out of range, as it does the same digits
    sent as text, rather than the page failing on every attempt. `raw` holds it as that text."""
    limit = sys.get_int_max_str_digits()  # (0: none)
    return digits if limit and len(digits.lstrip("-")) > limit else int(digits)


def _refusal(content: bytes) -> ApiResponse | None:
    """A non-zero `code` (and `msg`) from a body that is not the whole envelope: the contract
    documents `data` only on success, and what an error answer carries beside its code ({}, "",
    a partial page) must not turn a -1 into a malformed answer retried as transient. None if the
    body has no usable code, or code 0 (then it is the malformed success it appears to be)."""
    try:
        status = ApiStatus.model_validate_json(content)
    except ValidationError:
        try:
            status = ApiStatus.model_validate(json.loads(content, parse_int=_json_int))
        except (ValueError, RecursionError, ValidationError):
            return None
    if status.code_int == 0:
        return None
    return ApiResponse(code=status.code, msg=status.msg)


def _first_problem(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "the body"
    return f"{where}: {error['msg']}"


#: A taskId sent as text, read as the normaliser's bigint reads it (`parse_value`; a test keeps
#: the two equal): ASCII digits, an optional sign, surrounding white space.
_TASK_ID_TEXT = re.compile(r"[+-]?[0-9]+", re.ASCII)


def _task_key(record: dict[str, Any]) -> int | None:
    """The task the record is for, as the warehouse will key it: its taskId as an integer (JSON
    true is not one; "5000602" is 5000602), else None: unkeyed, and the normaliser rejects it."""
    task_id = record.get("taskId")
    if isinstance(task_id, bool):
        return None
    if isinstance(task_id, int):
        return task_id
    if isinstance(task_id, str) and _TASK_ID_TEXT.fullmatch(text := task_id.strip()):
        digits = text.lstrip("+-").lstrip("0") or "0"
        if len(digits) > 19:  # beyond 64 bits, and int() refuses text of more than 4,300 digits
            return None  # the normaliser rejects it whole
        return -int(digits) if text.startswith("-") else int(digits)
    return None


def _keyed(page: Page) -> dict[int, dict[str, Any]]:
    """A page's records with an integer taskId, by taskId (the rest are kept by the pass)."""
    return {key: record for record in page.records if (key := _task_key(record)) is not None}


__all__ = ["LaafficApiError", "LaafficClient", "WindowResult", "sign", "split_window"]

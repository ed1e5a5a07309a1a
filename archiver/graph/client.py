"""The Graph client: pages of call-log rows for one window, with auth, pacing and retries.

Owns the aiohttp session and nothing of Arrow or storage. One function classifies
each answer (`classify`); one loop (`GraphClient._get`) acts on the class. aiohttp
exceptions are translated here.
"""

from __future__ import annotations

import enum
import json
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Generic, TypeVar, cast
from urllib.parse import urlsplit

import aiohttp
import anyio
import orjson
import yarl

from archiver.config import Config
from archiver.errors import AuthExpiredError, RetryableError, StopRun, ThrottledError, WindowError
from archiver.graph.auth import TokenProvider
from archiver.graph.ratelimit import Gate, Limiter, Pacer, Sleep, backoff
from archiver.kinds import Kind
from archiver.metrics import Metrics
from archiver.windows import Window, format_instant

MAX_ATTEMPTS = 8  # per request, counting the first
CONNECT_TIMEOUT = 15.0  # seconds to open a connection
READ_TIMEOUT = 120.0  # seconds without a byte from Graph before giving up on a response
# Pages parsed at once, all windows together. Parsing holds the GIL, so more at once would
# not go faster, only hold more pages of parsed rows (some 3 MB of objects each) at once.
PARSING = 2

T = TypeVar("T")
Rows = list[dict[str, Any]]

PERMISSION_HINT = (
    "the app lacks the Graph application permission CallRecords.Read.All "
    "(older tenants: CallRecord-PstnCalls.Read.All); grant it with admin consent"
)


class Verdict(enum.Enum):
    """What to do with one HTTP answer."""

    OK = "ok"  # a page: use it
    RETRY = "retry"  # transient (5xx, 408): back off and try again
    THROTTLED = "throttled"  # 429: pause the whole function, then try again
    REFRESH = "refresh"  # 401: fetch a fresh token, then try again once
    STOP = "stop"  # 403: nothing in this run can succeed
    FAIL = "fail"  # other 4xx: this window fails with Graph's message


def classify(status: int) -> Verdict:
    """The one place that maps an HTTP status to what the client does."""
    if status == 200:
        return Verdict.OK
    if status == 429:
        return Verdict.THROTTLED
    if status == 401:
        return Verdict.REFRESH
    if status == 403:
        return Verdict.STOP
    if status >= 500 or status == 408:
        return Verdict.RETRY
    return Verdict.FAIL


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP-date; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    # An HTTP-date has whole seconds: wait to the end of that second.
    return max(0.0, (when - datetime.now(UTC)).total_seconds() + 1.0)


def graph_error_message(body: bytes) -> str:
    """Graph's own error message from an error body, or a short excerpt of the body."""
    try:
        error = json.loads(body)["error"]
        return f"{error.get('code', '')}: {error.get('message', '')}".strip(": ")
    except (ValueError, KeyError, TypeError):
        return body[:200].decode("utf-8", "replace").strip() or "(empty body)"


@dataclass
class Page(Generic[T]):
    """One page as its window's `read` made it, in the worker thread that parsed it."""

    link: str | None  # the nextLink; None on the last page
    value: T | None = None
    error: Exception | None = None  # what `read` raised: raised by `pages`, once the
    # answer has been counted as the success it was


def read_page(body: bytes, read: Callable[[Rows], T]) -> Page[T]:
    """Parse a 200 body and give its rows to `read`, in one worker-thread hop: a page's
    parsed rows live only for this call. RetryableError for a body that is not a page."""
    page = parse_page(body)
    link = page.get("@odata.nextLink")
    link = link if isinstance(link, str) and link else None
    try:
        return Page(link, read(page["value"]))
    except Exception as exc:  # noqa: BLE001 - raised by `pages`, after the answer is counted
        return Page(link, error=exc)


def _as_rows(rows: Rows) -> Rows:
    return rows


@dataclass
class WindowStats:
    """Counters of one window's fetch, for its summary line."""

    pages: int = 0
    requests: int = 0
    retries: int = 0
    throttled: int = 0


def first_url(config: Config, window: Window) -> str:
    """The function call for a window, from the Graph version that serves its log (the
    beta-only logs always from beta); an inclusive end still asks for the window end."""
    return (
        f"{config.graph_url}/{window.kind.version_for(config.graph_version)}"
        "/communications/callRecords/"
        f"{window.kind.function}(fromDateTime={format_instant(window.start)},"
        f"toDateTime={format_instant(window.end)})"
    )


def make_limiters(config: Config, sleep: Sleep = anyio.sleep) -> dict[Kind, Limiter]:
    """One pacer and gate per function and one tenant pacer, shared by all windows."""
    tenant = Pacer(config.tenant_requests_per_minute, sleep=sleep)
    return {
        kind: Limiter(Pacer(config.requests_per_minute, sleep=sleep), tenant, Gate(sleep=sleep))
        for kind in Kind
    }


def ssl_context(config: Config) -> ssl.SSLContext:
    """Trust `ca_bundle` when set (it wins over SSL_CERT_FILE), else the system store."""
    if config.ca_bundle:
        return ssl.create_default_context(cafile=str(config.ca_bundle))
    return ssl.create_default_context()


def open_session(config: Config) -> aiohttp.ClientSession:
    """The aiohttp session for Graph: proxies from the environment, timeouts, our CA."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ssl_context(config), limit=64),
        timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT),
        trust_env=True,  # HTTPS_PROXY / NO_PROXY
        raise_for_status=False,
    )


class GraphClient:
    """Fetches the pages of a window: follows nextLink verbatim, only to Graph's own host."""

    def __init__(
        self,
        config: Config,
        session: aiohttp.ClientSession,
        tokens: TokenProvider,
        limiters: dict[Kind, Limiter],
        sleep: Sleep = anyio.sleep,
        max_attempts: int = MAX_ATTEMPTS,
        metrics: Metrics | None = None,
    ) -> None:
        self._config = config
        self._metrics = metrics or Metrics()
        self._session = session
        self._tokens = tokens
        self._limiters = limiters
        self._sleep = sleep
        self._max_attempts = max_attempts
        graph = urlsplit(config.graph_url)
        self._origin = (graph.scheme, graph.netloc.lower())
        self.requests = 0  # Graph requests sent, all windows
        self._stopped: StopRun | None = None  # Graph's refusal, once it came
        self._parsing = anyio.CapacityLimiter(PARSING)

    async def pages(self, window: Window, stats: WindowStats) -> AsyncIterator[Rows]:
        """Yield each page's rows, first to last; raise WindowError/StopRun on failure."""
        async for rows in self.read_pages(window, stats, _as_rows):
            yield rows

    async def read_pages(
        self, window: Window, stats: WindowStats, read: Callable[[Rows], T]
    ) -> AsyncIterator[T]:
        """Yield what `read` makes of each page's rows, first to last; raise WindowError/
        StopRun on failure, or what `read` raised. `read` runs in the worker thread that
        parsed the page, so the parsed rows never reach the event loop or a queue."""
        url: str | None = first_url(self._config, window)
        seen: set[str] = set()
        while url is not None:
            if url in seen:
                raise WindowError(f"{window}: Graph repeated a nextLink ({url}); stopped paging")
            seen.add(url)
            self._check_origin(window, url)
            page = await self._get(window, url, stats, read)
            stats.pages += 1
            if page.error is not None:
                raise page.error
            yield cast(T, page.value)
            url = page.link

    def _check_origin(self, window: Window, url: str) -> None:
        """The token goes to graph_url's scheme and host only, never to a host a link names."""
        parts = urlsplit(url)
        if (parts.scheme, parts.netloc.lower()) != self._origin:
            raise WindowError(
                f"{window}: nextLink points to {parts.scheme}://{parts.netloc}, not to "
                f"{self._config.graph_url}; not followed"
            )

    async def _get(
        self, window: Window, url: str, stats: WindowStats, read: Callable[[Rows], T]
    ) -> Page[T]:
        """One page, retried with backoff; the answer's Verdict decides what happens.

        The token is taken after the pacing slot, so it is fresh when sent however long
        the request queued. A 401 for a token that had run out by the time the answer
        came costs one attempt and a fresh token; a 401 for a token still fresh fails
        the window after one refresh.
        """
        limiter = self._limiters[window.kind]
        kind = window.kind.value
        refreshed = False  # a fresh token was refused once already
        last: Exception | None = None
        for attempt in range(1, self._max_attempts + 1):
            if attempt > 1:
                stats.retries += 1
                self._metrics.retries.labels(kind).inc()
            await limiter.acquire()
            if self._stopped is not None:  # Graph refused this app: ask it nothing more
                raise StopRun(str(self._stopped))
            try:
                token = await self._tokens.token()
            except RetryableError as exc:  # the token endpoint failed: back off, try again
                last = exc
                if attempt < self._max_attempts:
                    await self._sleep(backoff(attempt))
                continue
            sent_at = time.monotonic()
            stats.requests += 1
            self.requests += 1
            try:
                page = await self._request(url, token.value, read)
                limiter.succeeded(sent_at)
                self._count(kind, "200")
                return page
            except ThrottledError as exc:
                self._count(kind, "429")
                self._metrics.throttled.labels(kind).inc()
                stats.throttled += 1
                limiter.throttled(exc.retry_after, attempt, sent_at)
                last = exc
            except AuthExpiredError as exc:
                self._count(kind, "401")
                last = exc
                self._tokens.invalidate(token)
                if token.expired_by(time.time()):
                    continue  # it ran out before or on the way: a fresh token's job
                if refreshed:
                    raise WindowError(f"{window}: {exc} (again after a fresh token)") from exc
                refreshed = True
            except RetryableError as exc:
                self._count(kind, exc.status or "error")
                last = exc
                if attempt < self._max_attempts:
                    await self._sleep(backoff(attempt))
            except StopRun as exc:
                self._count(kind, "403")
                self._stopped = exc
                raise
            except WindowError as exc:
                self._count(kind, exc.status or "error")
                raise WindowError(f"{window}: {exc}") from exc
        raise WindowError(f"{window}: gave up after {self._max_attempts} attempts: {last}")

    def _count(self, kind: str, status: str) -> None:
        self._metrics.requests.labels(kind, status).inc()

    async def _request(self, url: str, token: str, read: Callable[[Rows], T]) -> Page[T]:
        """Send one GET; return the page as `read` makes it or raise the error its Verdict
        calls for."""
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        started = time.monotonic()
        try:
            async with self._session.get(yarl.URL(url, encoded=True), headers=headers) as resp:
                body = await resp.read()
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
        except aiohttp.ClientPayloadError as exc:
            raise RetryableError(f"truncated response: {exc}") from exc
        except aiohttp.ClientConnectionError as exc:
            raise RetryableError(f"connection failed: {type(exc).__name__}: {exc}") from exc
        except TimeoutError as exc:
            waited = time.monotonic() - started
            raise RetryableError(f"timed out after {waited:.0f}s") from exc
        verdict = classify(status)
        if verdict is Verdict.OK:
            return await anyio.to_thread.run_sync(read_page, body, read, limiter=self._parsing)
        message = f"Graph answered {status}: {graph_error_message(body)}"
        if verdict is Verdict.THROTTLED:
            raise ThrottledError(message, parse_retry_after(retry_after))
        if verdict is Verdict.REFRESH:
            raise AuthExpiredError(message)
        if verdict is Verdict.STOP:
            raise StopRun(f"{message} — {PERMISSION_HINT}")
        if verdict is Verdict.RETRY:
            raise RetryableError(message, status=str(status))
        raise WindowError(message, status=str(status))


def parse_page(body: bytes) -> dict[str, Any]:
    """Parse a 200 body; a body that is not a page is a transient fault worth a retry.

    orjson parses pages about 2.6 times faster than the standard library; what it
    refuses (an integer beyond 64 bits) the standard library still reads.
    """
    try:
        page = orjson.loads(body)
    except orjson.JSONDecodeError:
        try:
            page = json.loads(body)
        except ValueError as exc:
            raise RetryableError(f"response is not JSON: {body[:80]!r}") from exc
    if not isinstance(page, dict) or not isinstance(page.get("value"), list):
        raise RetryableError("response has no 'value' list")
    return page

"""Fault injection: how the emulator misbehaves on purpose, like Graph on a bad day.

Two sources, both per Graph function (`Kind`) where it matters:
- the rate cap: Graph's per-function limit, counted per tenant (Graph limits an app in
  each tenant apart), as a sliding window or a leaky bucket, answered with 429 "cap" and
  a Retry-After (`RateCaps`, `cap_response`);
- random faults, drawn per Graph request from `Random(Faults.seed)` (`FaultDraws`):
  429 with each Retry-After form, 5xx with Graph's error JSON, a reset connection, a
  truncated body, an HTML body, a JSON body without "value".
"""

from __future__ import annotations

import email.utils
import math
import random
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass

from aiohttp import web

from archiver.emulator.data import dumps
from archiver.emulator.responses import JSON_CONTENT_TYPE, graph_error
from archiver.kinds import Kind

FAULT_NAMES = ("throttle", "server_error", "reset", "truncated", "not_json", "no_value")
BUCKET_RETRY_AFTER = 2.0  # seconds: the leaky bucket's Retry-After unless configured
_SERVER_ERRORS = {
    500: ("InternalServerError", "An internal server error occurred."),
    502: ("BadGateway", "The gateway received an invalid response."),
    503: ("ServiceUnavailable", "The service is temporarily unavailable."),
    504: ("GatewayTimeout", "The gateway timed out."),
}


@dataclass
class Faults:
    """Probabilities, per Graph request, of each misbehaviour; drawn from Random(seed)."""

    throttle: float = 0.0  # 429
    retry_after: str = "seconds"  # for those 429s: "seconds" | "date" | "none" | "mixed"
    retry_after_seconds: float = 1.0
    server_error: float = 0.0  # 500/502/503/504, Graph-style error JSON
    reset: float = 0.0  # connection closed without any response
    truncated: float = 0.0  # 200, full Content-Length, part of the body, connection closed
    not_json: float = 0.0  # 200 with an HTML body
    no_value: float = 0.0  # 200 JSON object without "value"
    seed: int = 0


# --- drawing faults --------------------------------------------------------------------


class FaultDraws:
    """The random source of faults: restarts from `Faults.seed` whenever the Faults object
    or its seed changes, so a run's faults are reproducible. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rng = random.Random()
        self._source: Faults | None = None
        self._seed: int | None = None

    def draw(self, faults: Faults) -> tuple[str | None, float]:
        """Which fault, if any, hits this request; and a uniform number for its details."""
        with self._lock:
            if faults is not self._source or faults.seed != self._seed:
                self._rng = random.Random(faults.seed)
                self._source, self._seed = faults, faults.seed
            draw, detail = self._rng.random(), self._rng.random()
        total = 0.0
        for name in FAULT_NAMES:
            total += getattr(faults, name)
            if draw < total:
                return name, detail
        return None, detail


# --- the rate cap ----------------------------------------------------------------------


class RateCaps:
    """Graph's per-function limit, one count per (tenant, Kind): Graph limits an app in
    each tenant apart, so one busy tenant does not throttle another. See `over`.
    Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._recent: defaultdict[tuple[str, Kind], deque[float]] = defaultdict(deque)
        self._bucket: dict[tuple[str, Kind], tuple[float, float]] = {}

    def over(
        self,
        kind: Kind,
        now: float,
        cap: int | None,
        window: float,
        model: str,
        fixed_wait: float | None,
        tenant: str = "",
    ) -> float | None:
        """Count a request against `kind`'s cap in `tenant`; the seconds a 429's Retry-After
        names if it is over, else None.

        Two models, both counting throttled requests too: "window" allows `cap` requests
        in any `window` seconds and names the time until a slot frees; "bucket" is a leaky
        bucket that drains at `cap / window` requests a second and holds one second's
        worth (at least one request), and names a fixed wait (`fixed_wait`, default
        BUCKET_RETRY_AFTER). `fixed_wait`, when set, replaces the window's computed wait
        too. `now` is any monotonic clock, in seconds.
        """
        if cap is None:
            return None
        key = (tenant, kind)
        if model == "bucket":
            return self._over_bucket(key, now, cap / window, fixed_wait)
        if model != "window":
            raise ValueError(f"unknown rate_cap_model {model!r}")
        with self._lock:
            recent = self._recent[key]
            while recent and recent[0] <= now - window:
                recent.popleft()
            over = len(recent) >= cap
            recent.append(now)
            if not over:
                return None
            if fixed_wait is not None:
                return fixed_wait
            if cap <= 0:
                return window
            # A request passes once at most cap-1 of the logged ones are younger than the window.
            return recent[len(recent) - cap] + window - now

    def _over_bucket(
        self, key: tuple[str, Kind], now: float, per_second: float, fixed_wait: float | None
    ) -> float | None:
        """The leaky bucket: every request pours one in; over the brim it is answered 429."""
        depth = max(1.0, per_second)  # one second of burst
        with self._lock:
            level, then = self._bucket.get(key, (0.0, 0.0))
            level = max(0.0, level - (now - then) * per_second) if now > then else level
            over = level + 1 > depth + 1e-9
            self._bucket[key] = (level + 1, max(now, then))
        if not over:
            return None
        return BUCKET_RETRY_AFTER if fixed_wait is None else fixed_wait


# --- the answers -----------------------------------------------------------------------


def retry_after(mode: str, seconds: float, integral: bool) -> str | None:
    """Retry-After text: delta-seconds, an HTTP-date, or None for no header."""
    if mode == "none":
        return None
    if mode == "date":
        return email.utils.formatdate(time.time() + math.ceil(seconds), usegmt=True)
    if integral:
        return str(max(1, math.ceil(seconds)))
    return str(int(seconds)) if float(seconds).is_integer() else repr(float(seconds))


def cap_response(mode: str, wait: float) -> web.Response:
    """The 429 of the rate cap, its Retry-After in `mode` ("seconds" | "date" | "none")."""
    value = retry_after(mode, wait, integral=True)
    return graph_error(
        429,
        "TooManyRequests",
        "Too many requests. The application exceeded the rate limit for this function.",
        {"Retry-After": value} if value is not None else None,
    )


def fault_response(
    request: web.Request, fault: str | None, detail: float, faults: Faults
) -> web.Response | None:
    """The answer of a fault that replaces the page (throttle, server_error, reset,
    not_json); None for no fault and for those that shape the page (`no_value_response`,
    `truncate`)."""
    if fault == "throttle":
        mode = faults.retry_after
        if mode == "mixed":
            mode = ("seconds", "date", "none")[int(detail * 3) % 3]
        value = retry_after(mode, faults.retry_after_seconds, integral=False)
        return graph_error(
            429,
            "TooManyRequests",
            "Too many requests.",
            {"Retry-After": value} if value is not None else None,
        )
    if fault == "server_error":
        status = (500, 502, 503, 504)[int(detail * 4) % 4]
        return graph_error(status, *_SERVER_ERRORS[status])
    if fault == "reset":
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=200)
    if fault == "not_json":
        return web.Response(
            status=200,
            text="<!DOCTYPE html><html><head><title>Service</title></head>"
            "<body><h1>The service is temporarily unavailable.</h1></body></html>",
            content_type="text/html",
        )
    return None


def no_value_response(context: str) -> web.Response:
    """200 with a JSON page that has its "@odata.context" but no "value"."""
    return web.Response(
        status=200,
        body=dumps({"@odata.context": context}).encode(),
        headers={"Content-Type": JSON_CONTENT_TYPE},
    )


async def truncate(request: web.Request, full: web.Response) -> web.StreamResponse:
    """Send `full`'s status, headers and Content-Length, half its body, then hang up."""
    body = full.body if isinstance(full.body, bytes) else b""
    partial = web.StreamResponse(status=full.status)
    partial.headers["Content-Type"] = full.headers.get("Content-Type", "application/json")
    partial.content_length = len(body)
    await partial.prepare(request)
    await partial.write(body[: len(body) // 2])
    if request.transport is not None:
        request.transport.close()
    return partial

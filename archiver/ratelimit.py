"""Pacing Graph requests under its documented limits, shared by every window.

Graph counts requests per function (50/min) and per app per tenant (200/min), and
counts throttled requests too. So requests are spaced evenly rather than sent in
bursts, and a 429 pauses the whole function, not just the request that got it.
The clock and sleep are injectable so tests run without waiting.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable

import anyio

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

BACKOFF_BASE = 1.0  # seconds: the first retry waits up to this long
BACKOFF_CAP = 60.0  # seconds: no backoff grows beyond this


def backoff(attempt: int, retry_after: float | None = None) -> float:
    """Seconds to wait before retry number `attempt` (1-based).

    Graph's Retry-After is honoured exactly; without it, exponential backoff with
    full jitter spreads the retries of many windows apart.
    """
    if retry_after is not None:
        return max(0.0, retry_after)
    return random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1)))


class Pacer:
    """Spaces requests evenly at `rate` per minute; the rate adapts to 429s (AIMD).

    Requests go out at 98 % of the rate, so that network jitter does not put one
    request too many into Graph's sliding minute. On a 429 the rate drops to 80 %
    (once per round trip: 429s for requests sent before the last drop do not count
    again). After that it climbs quickly back to 95 % of the rate that was
    throttled, then slowly (0.2 % per success), never above the configured ceiling.
    """

    SAFETY = 0.98  # share of the rate actually used
    DECREASE = 0.8  # factor on a 429
    NEAR = 0.95  # below this share of the throttled rate, climb fast
    FAST, SLOW = 1.05, 1.002  # factors per success below / above NEAR
    FLOOR = 1.0  # requests per minute: the rate never drops below this

    def __init__(
        self, per_minute: float, clock: Clock = time.monotonic, sleep: Sleep = anyio.sleep
    ) -> None:
        self.ceiling = per_minute
        self.rate = per_minute
        self._clock = clock
        self._sleep = sleep
        self._next = 0.0
        self._throttled_rate = float("inf")  # the rate at the last 429
        self._decreased_at = float("-inf")  # clock() of the last decrease

    async def acquire(self) -> None:
        """Wait for this caller's slot."""
        now = self._clock()
        at = max(now, self._next)
        self._next = at + 60.0 / (self.rate * self.SAFETY)
        if at > now:
            await self._sleep(at - now)

    def throttled(self, sent_at: float) -> None:
        """Graph answered 429 to a request sent at `sent_at` (clock time): slow down."""
        if sent_at < self._decreased_at:
            return  # sent at the old rate; this round trip already slowed us down
        self._throttled_rate = self.rate
        self.rate = max(self.FLOOR, self.rate * self.DECREASE)
        self._decreased_at = self._clock()

    def succeeded(self) -> None:
        """A request went through: climb back towards the ceiling."""
        fast = self.rate < self.NEAR * self._throttled_rate
        self.rate = min(self.ceiling, self.rate * (self.FAST if fast else self.SLOW))


class Gate:
    """A pause that holds every request of a function until Retry-After has passed."""

    def __init__(self, clock: Clock = time.monotonic, sleep: Sleep = anyio.sleep) -> None:
        self._clock = clock
        self._sleep = sleep
        self._until = 0.0

    def close_for(self, seconds: float) -> None:
        """Hold requests for `seconds` from now (a later deadline wins)."""
        self._until = max(self._until, self._clock() + seconds)

    @property
    def closed(self) -> bool:
        """True while requests must wait."""
        return self._clock() < self._until

    async def wait(self) -> None:
        """Return once the gate is open."""
        while (remaining := self._until - self._clock()) > 0:
            await self._sleep(remaining)


class Limiter:
    """Everything one function's requests pass through: its gate, its pacer, the tenant's."""

    def __init__(self, function: Pacer, tenant: Pacer, gate: Gate) -> None:
        self.function = function
        self.tenant = tenant
        self.gate = gate

    async def acquire(self) -> None:
        """Wait until a request may be sent now."""
        while True:
            await self.gate.wait()
            await self.function.acquire()
            await self.tenant.acquire()
            if not self.gate.closed:  # a 429 may have closed it while we queued
                return

    def throttled(self, retry_after: float | None, attempt: int, sent_at: float) -> None:
        """Graph answered 429 to a request sent at `sent_at`: pause the function, slow it down."""
        self.gate.close_for(backoff(attempt, retry_after))
        self.function.throttled(sent_at)

    def succeeded(self) -> None:
        """A request succeeded."""
        self.function.succeeded()

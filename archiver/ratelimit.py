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
    """Spaces requests at least 60/rate seconds apart; the rate adapts to 429s.

    On a 429 the rate halves (never below one request a minute); each success
    then raises it a little, never above the configured ceiling.
    """

    def __init__(
        self, per_minute: float, clock: Clock = time.monotonic, sleep: Sleep = anyio.sleep
    ) -> None:
        self.ceiling = per_minute
        self.rate = per_minute
        self._clock = clock
        self._sleep = sleep
        self._next = 0.0

    async def acquire(self) -> None:
        """Wait for this caller's slot."""
        now = self._clock()
        at = max(now, self._next)
        self._next = at + 60.0 / self.rate
        if at > now:
            await self._sleep(at - now)

    def throttled(self) -> None:
        """Graph answered 429: slow down."""
        self.rate = max(1.0, self.rate / 2)

    def succeeded(self) -> None:
        """A request went through: creep back towards the ceiling."""
        self.rate = min(self.ceiling, self.rate + self.ceiling / 50)


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

    def throttled(self, retry_after: float | None, attempt: int) -> None:
        """Graph answered 429: pause the whole function and slow it down."""
        self.gate.close_for(backoff(attempt, retry_after))
        self.function.throttled()

    def succeeded(self) -> None:
        """A request succeeded."""
        self.function.succeeded()

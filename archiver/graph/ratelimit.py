"""Pacing Graph requests under its documented limits, shared by every window.

Graph counts requests per function (50/min) and per app per tenant (200/min), and
counts throttled requests too. So requests are spaced evenly rather than sent in
bursts, and a 429 pauses the whole function, not just the request that got it.

Configured rates are ceilings; under them each function's pacer learns the cap Graph
enforces from its 429s (see `Pacer`), and keeps what it learned for as long as the
process lives. Every time constant is counted in requests, not seconds, so a cap of
50 a minute and the same cap compressed into 10 seconds are learned alike.

Which pacer a 429 teaches: the function's only. A 429 does not say which limit it
hit. The per-function limit is the likeliest, and teaching the shared tenant pacer
would slow every function for one function's excess. If the tenant's limit is what
bites (four functions at 4 x 45 already meet its 180; other apps of the tenant share
its 1,000), every function gets 429s and each learns the share Graph accepted from
it, so together they learn what the tenant allows. The tenant pacer stays a fixed
ceiling (`tenant_requests_per_minute`).

The clock and sleep are injectable so tests run without waiting.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
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
    """Spaces requests evenly at `rate` per minute, and learns Graph's cap from its 429s.

    Requests go out at 98 % of the rate, so that network jitter does not put one
    request too many into Graph's window; callers wait first come first served, and
    a change of rate applies at once to those already waiting. The rate starts at the
    configured ceiling and never exceeds it. What a 429 teaches:

    - the rate it was sent at is over the cap (`throttled_rate`): evenly spaced
      requests are throttled only above it;
    - Graph accepted `n` requests since the last 429 (at most `HISTORY`) and then asked
      for Retry-After seconds more: `n / (their span + Retry-After)` is the rate it
      accepts (exact for a sliding window, low for a bucket that drains faster than
      Retry-After);
    - a rate that `DWELL` successes in a row went out at (`sustained_rate`) is under it,
      unless the 429 came at about that rate.

    After a 429 the rate settles on the best of those, under the throttled rate: at
    most `SETTLE` of it, at least `HALVE` of it (a 429 right after the start says
    little). Then it probes upwards, one step per `DWELL` successes: halfway (in ratio)
    towards the throttled rate while well under it, then by `STEP`: slowly, so that a
    cap learned exactly costs one 429 per several hundred requests. A 429 teaches once
    per round trip: not for requests sent before the last cut, nor before anything has
    passed since (then Graph's Retry-After was too short, not our pace).
    """

    SAFETY = 0.98  # share of the rate actually used
    SETTLE = 0.97  # after a 429, at most this share of the throttled rate
    HALVE = 0.5  # ... and at least this share
    STEP = 0.01  # probe this much above a rate near the throttled one
    DWELL = 100  # successes at one rate before probing higher
    HISTORY = 50  # recent successes that measure the accepted rate
    FLOOR = 1.0  # requests per minute: the rate never drops below this
    CATCH_UP = 0.01  # a slot taken late shortens the next gap by at most this share

    def __init__(
        self, per_minute: float, clock: Clock = time.monotonic, sleep: Sleep = anyio.sleep
    ) -> None:
        self.ceiling = per_minute
        self.rate = per_minute
        self.throttled_rate: float | None = None  # the rate at the last 429
        self.sustained_rate: float | None = None  # the highest rate DWELL successes passed at
        self._clock = clock
        self._sleep = sleep
        self._last = float("-inf")  # the slot of the last request let through
        self._queue: deque[object] = deque()  # callers waiting for a slot, in order
        self._decreased_at = float("-inf")  # clock() of the last decrease
        self._streak = 0  # successes since the rate last changed
        self._successes: deque[float] = deque(maxlen=self.HISTORY)  # their send times

    async def acquire(self) -> None:
        """Wait for this caller's slot, first come first served.

        Callers queue; each wakes when its turn would come at the current rate and
        looks again, so a cut of the rate holds back every waiting caller at once.
        """
        ticket = object()
        self._queue.append(ticket)
        waited = False
        try:
            while True:
                spacing = 60.0 / (self.rate * self.SAFETY)
                position = self._queue.index(ticket)
                at = self._last + spacing * (position + 1)
                now = self._clock()
                if position == 0 and now >= at:
                    break
                # one behind a caller that is due now looks again a little later
                await self._sleep(at - now if position == 0 else max(at - now, spacing / 64))
                waited = True
        finally:
            self._queue.remove(ticket)
        # Count from the slot, not from when we woke, so that lag does not slow the pace;
        # but a late start shortens the next gap by at most CATCH_UP of it.
        self._last = max(at, now - self.CATCH_UP * spacing) if waited else now

    def accepted_rate(self, retry_after: float) -> float | None:
        """Requests per minute Graph accepted lately, counting the wait it asks for."""
        if len(self._successes) < 2:
            return None
        span = self._clock() - self._successes[0] + retry_after
        return 60.0 * len(self._successes) / span if span > 0 else None

    def throttled(self, sent_at: float, retry_after: float = 0.0) -> None:
        """Graph answered 429 to a request sent at `sent_at` (clock time) and asked for
        `retry_after` seconds: settle under the cap it shows, or halve."""
        if sent_at < self._decreased_at:
            return  # sent at the old rate; this round trip already slowed us down
        if not self._successes and self._decreased_at > float("-inf"):
            return  # nothing passed since the last cut: Retry-After was too short, not the pace
        over = self.rate
        if self.sustained_rate is not None and self.sustained_rate >= over * self.SETTLE:
            self.sustained_rate = None  # throttled at (about) that rate: it was not under the cap
        evidence = [over * self.HALVE]
        if (accepted := self.accepted_rate(retry_after)) is not None:
            evidence.append(accepted)
        if self.sustained_rate is not None:
            evidence.append(self.sustained_rate)
        self.throttled_rate = over
        self.rate = max(self.FLOOR, min(over * self.SETTLE, max(evidence)))
        self._decreased_at = self._clock()
        self._streak = 0
        self._successes.clear()

    def succeeded(self, sent_at: float | None = None) -> None:
        """A request sent at `sent_at` (default: now) went through; after DWELL of them
        in a row the rate is known to pass, and the pacer probes a little higher."""
        sent_at = self._clock() if sent_at is None else sent_at
        if sent_at >= self._decreased_at:  # what Graph accepted since the last 429
            self._successes.append(sent_at)
        self._streak += 1
        if self._streak < self.DWELL or self.rate >= self.ceiling:
            return
        self._streak = 0
        self.sustained_rate = max(self.sustained_rate or 0.0, self.rate)
        step = self.rate * (1 + self.STEP)
        over = self.throttled_rate
        if over is not None and step < over * self.SETTLE:  # well under the last 429
            step = min(over * self.SETTLE, math.sqrt(self.rate * over))
        self.rate = min(self.ceiling, step)


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
        """Graph answered 429 to a request sent at `sent_at`: pause the function, teach its
        pacer (not the tenant's: see the module docstring)."""
        pause = backoff(attempt, retry_after)
        self.gate.close_for(pause)
        self.function.throttled(sent_at, pause)

    def succeeded(self, sent_at: float | None = None) -> None:
        """A request sent at `sent_at` (default: now) succeeded."""
        self.function.succeeded(sent_at)

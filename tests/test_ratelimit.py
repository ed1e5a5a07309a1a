"""Pacing and throttling, on a fake clock: nothing here waits for real time."""

from __future__ import annotations

import random

import anyio

from archiver.ratelimit import BACKOFF_CAP, Gate, Limiter, Pacer, backoff


class FakeClock:
    """A clock that only moves when someone sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_pacer_spaces_requests_evenly_just_under_the_rate() -> None:
    """At 60 per minute, requests go out every 1/0.98 s: never a burst, never over the rate."""
    clock = FakeClock()
    pacer = Pacer(60, clock=clock, sleep=clock.sleep)
    times = []

    async def go() -> None:
        for _ in range(5):
            await pacer.acquire()
            times.append(round(clock.now, 6))

    anyio.run(go)
    step = 1 / 0.98
    assert [round(i * step, 6) for i in range(5)] == times


def test_a_429_slows_the_pace_once_per_round_trip() -> None:
    """A 429 cuts the rate to 80 %; more 429s for requests sent before the cut do not cut again."""
    clock = FakeClock()
    pacer = Pacer(100, clock=clock, sleep=clock.sleep)
    clock.now = 10.0
    pacer.throttled(sent_at=9.5)
    assert 80.0 == pacer.rate
    pacer.throttled(sent_at=9.9)  # in flight when the first 429 arrived
    assert 80.0 == pacer.rate
    clock.now = 11.0
    pacer.throttled(sent_at=10.5)  # sent at the new rate, still throttled
    assert 64.0 == round(pacer.rate, 6)


def test_pace_recovers_quickly_to_just_below_the_throttled_rate_then_slowly() -> None:
    """After a 429 the rate climbs 5 % per success to 95 % of where it was throttled, then
    0.2 % per success, and never above the configured ceiling."""
    pacer = Pacer(100)
    pacer.throttled(sent_at=float("inf"))
    fast = 0
    while pacer.rate < 95:
        pacer.succeeded()
        fast += 1
    assert 4 == fast  # 80 * 1.05**4 = 97.2
    before = pacer.rate
    pacer.succeeded()
    assert round(before * 1.002, 9) == round(pacer.rate, 9)
    for _ in range(10_000):
        pacer.succeeded()
    assert 100 == pacer.rate


def test_gate_holds_every_caller_until_the_latest_deadline() -> None:
    """Retry-After closes the gate for everyone; a later deadline wins over an earlier one."""
    clock = FakeClock()
    gate = Gate(clock=clock, sleep=clock.sleep)
    gate.close_for(5)
    gate.close_for(2)
    assert gate.closed
    anyio.run(gate.wait)
    assert 5.0 == clock.now
    assert not gate.closed


def test_limiter_waits_again_when_a_429_closes_the_gate_while_it_queued() -> None:
    """A request queued behind the pacer does not slip out while the function is paused."""
    clock = FakeClock()
    gate = Gate(clock=clock, sleep=clock.sleep)
    function = Pacer(60, clock=clock, sleep=clock.sleep)
    tenant = Pacer(6000, clock=clock, sleep=clock.sleep)
    limiter = Limiter(function, tenant, gate)

    async def go() -> None:
        await limiter.acquire()  # t=0
        function._next = 1.0
        real_sleep = clock.sleep

        async def sleep_and_throttle(seconds: float) -> None:
            await real_sleep(seconds)
            if clock.now < 2:
                limiter.throttled(retry_after=30, attempt=1, sent_at=0.0)

        function._sleep = sleep_and_throttle
        await limiter.acquire()

    anyio.run(go)
    assert clock.now >= 31.0


def test_backoff_honours_retry_after_and_jitters_otherwise() -> None:
    """Retry-After is used exactly; without it the wait is uniform in [0, min(cap, 2^(n-1))]."""
    assert 7.5 == backoff(3, retry_after=7.5)
    random.seed(1)
    for attempt in range(1, 12):
        waits = [backoff(attempt) for _ in range(200)]
        bound = min(BACKOFF_CAP, 2 ** (attempt - 1))
        assert all(0 <= w <= bound for w in waits)
        assert max(waits) > bound * 0.8

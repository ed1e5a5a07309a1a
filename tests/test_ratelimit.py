"""Pacing and throttling, on a fake clock: nothing here waits for real time."""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Coroutine, Generator
from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from archiver.emulator import EmulatorConfig, EmulatorState
from archiver.graph.ratelimit import BACKOFF_CAP, Gate, Limiter, Pacer, backoff
from archiver.kinds import Kind


class FakeClock:
    """A clock that only moves when someone sleeps (one task at a time)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


# --- a discrete-event simulation: many callers on one simulated clock -------------------


class _Nap:
    """What a simulated task awaits: the scheduler resumes it `seconds` later."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __await__(self) -> Generator[_Nap, None, None]:
        yield self


class Simulation:
    """Runs coroutines on simulated time: each `await sleep(s)` resumes s seconds later,
    in order of time and then of scheduling. Deterministic; no real waiting."""

    def __init__(self) -> None:
        self.now = 0.0
        self._queue: list[tuple[float, int, Coroutine[Any, Any, None]]] = []
        self._count = 0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> _Nap:
        return _Nap(max(0.0, seconds))

    def start(self, task: Coroutine[Any, Any, None], at: float | None = None) -> None:
        self._count += 1
        heapq.heappush(self._queue, (self.now if at is None else at, self._count, task))

    def run(self) -> None:
        while self._queue:
            self.now, _, task = heapq.heappop(self._queue)
            try:
                nap = task.send(None)
            except StopIteration:
                continue
            self.start(task, self.now + nap.seconds)


@dataclass
class Outcome:
    """What one simulated backfill of one function got."""

    utilisation: float  # good requests per second / the cap's rate
    throttled: float  # share of requests answered 429
    requests: int


CAP = 50  # requests per function per CAP_WINDOW: Graph's 50 a minute...
CAP_WINDOW = 10.0  # ... compressed six times, as bench/throttle.py runs it


def simulate(
    model: str,
    told: float,
    *,
    pages: int = 660,
    callers: int = 8,
    seed: int = 1,
    window: float = CAP_WINDOW,
    latency: float = 0.04,
    jitter: float = 0.01,
    pacer: Pacer | None = None,
) -> Outcome:
    """`callers` tasks fetch `pages` pages of one function through a Limiter told `told`
    times the cap, against the emulator's own cap model; each 429 is retried."""
    sim = Simulation()
    rng = random.Random(seed)
    cap = EmulatorState(
        EmulatorConfig(rate_cap_per_minute=CAP, rate_cap_window=window, rate_cap_model=model)
    )
    per_second = CAP / window
    if pacer is None:
        pacer = Pacer(per_second * 60 * told, clock=sim, sleep=sim.sleep)
    pacer._clock, pacer._sleep = sim, sim.sleep  # a pacer kept from an earlier simulation
    tenant = Pacer(1e9, clock=sim, sleep=sim.sleep)
    limiter = Limiter(pacer, tenant, Gate(clock=sim, sleep=sim.sleep))
    left = [pages]
    good: list[float] = []
    statuses = {200: 0, 429: 0}

    async def caller() -> None:
        while left[0] > 0:
            left[0] -= 1
            for attempt in range(1, 100):
                await limiter.acquire()
                sent = sim.now
                await sim.sleep(rng.uniform(0, jitter))  # on the way
                wait = cap.over_cap(Kind.PSTN, 1000.0 + sim.now)
                await sim.sleep(latency + rng.uniform(0, jitter))  # Graph's work, the way back
                if wait is None:
                    statuses[200] += 1
                    good.append(sent)
                    limiter.succeeded(sent)
                    break
                statuses[429] += 1
                limiter.throttled(max(1, math.ceil(wait)), attempt, sent)  # whole seconds

    for _ in range(callers):
        sim.start(caller())
    sim.run()
    good.sort()
    requests = statuses[200] + statuses[429]
    return Outcome(
        (len(good) - 1) / (good[-1] - good[0]) / per_second, statuses[429] / requests, requests
    )


# --- the pacer --------------------------------------------------------------------------


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


def test_waiting_callers_go_in_order_and_a_cut_holds_them_all_back() -> None:
    """Callers queue first come first served; when a 429 cuts the rate, callers already
    waiting for a slot take the new spacing at once, not the one they queued at."""
    sim = Simulation()
    pacer = Pacer(60 / 0.98, clock=sim, sleep=sim.sleep)  # one a second
    sent: list[tuple[int, float]] = []

    async def caller(name: int) -> None:
        await pacer.acquire()
        sent.append((name, round(sim.now, 6)))
        if name == 1:
            pacer.throttled(sent_at=sim.now)  # nothing known yet: halve the rate

    for name in range(5):
        sim.start(caller(name))
    sim.run()
    assert [(0, 0.0), (1, 1.0), (2, 3.0), (3, 5.0), (4, 7.0)] == sent


def test_a_cancelled_caller_leaves_the_queue() -> None:
    """A caller cancelled while it waits for its slot gives its place up."""
    pacer = Pacer(60, clock=anyio.current_time, sleep=anyio.sleep)

    async def go() -> None:
        await pacer.acquire()  # at once
        with anyio.move_on_after(0.01):
            await pacer.acquire()  # its slot is a second away
        assert not pacer._queue

    anyio.run(go)


def test_first_429_halves_and_only_once_per_round_trip() -> None:
    """With nothing learned, a 429 halves the rate; 429s for requests sent before that cut
    do not cut again, nor does one that comes before anything passed at the new rate."""
    clock = FakeClock()
    pacer = Pacer(100, clock=clock, sleep=clock.sleep)
    clock.now = 10.0
    pacer.throttled(sent_at=9.5)
    assert 50.0 == pacer.rate
    assert 100.0 == pacer.throttled_rate
    pacer.throttled(sent_at=9.9)  # in flight when the first 429 arrived
    clock.now = 12.0
    pacer.throttled(sent_at=11.0, retry_after=2)  # first after the pause: Retry-After too short
    assert 50.0 == pacer.rate
    pacer.succeeded(sent_at=12.5)
    pacer.succeeded(sent_at=13.5)
    clock.now = 14.0
    pacer.throttled(sent_at=13.9, retry_after=2)  # the new rate was tried: still too fast
    assert round(60 * 2 / (14.0 - 12.5 + 2), 6) == round(pacer.rate, 6)  # 2 per 3.5 s


def test_429_settles_at_the_rate_graph_accepted() -> None:
    """Told 600/min, Graph let 50 requests through in 5 s and asked for 5 s more: it
    accepts 50 per 10 s, so the pace settles at 300/min, not at a fixed fraction of 600."""
    clock = FakeClock()
    pacer = Pacer(600, clock=clock, sleep=clock.sleep)
    for i in range(50):
        pacer.succeeded(sent_at=i * 0.1)
    clock.now = 5.0
    pacer.throttled(sent_at=4.95, retry_after=5.0)
    assert 300.0 == round(pacer.rate, 6)
    assert 600.0 == pacer.throttled_rate


def test_429_never_settles_at_or_above_the_throttled_rate() -> None:
    """However much Graph seemed to accept, the rate after a 429 is under the one throttled."""
    clock = FakeClock()
    pacer = Pacer(100, clock=clock, sleep=clock.sleep)
    for i in range(50):
        pacer.succeeded(sent_at=i * 0.01)
    clock.now = 0.5
    pacer.throttled(sent_at=0.5, retry_after=0.0)  # 50 in half a second: 6000/min "accepted"
    assert round(100 * Pacer.SETTLE, 6) == round(pacer.rate, 6)


def test_pace_climbs_halfway_to_the_throttled_rate_then_creeps() -> None:
    """After DWELL successes a rate is known to pass; the pace moves halfway (in ratio)
    towards where it was throttled, stops SETTLE short of it, then creeps by STEP per
    DWELL successes, never above the ceiling; a 429 then falls back to what passed."""
    clock = FakeClock()
    pacer = Pacer(400, clock=clock, sleep=clock.sleep)
    pacer.throttled(sent_at=0.0)
    assert 200.0 == pacer.rate

    def dwell() -> float:
        for _ in range(Pacer.DWELL):
            pacer.succeeded()
        return round(pacer.rate, 3)

    assert 200.0 == round(pacer.rate, 3)
    for _ in range(Pacer.DWELL - 1):
        pacer.succeeded()
    assert 200.0 == pacer.rate  # not yet
    pacer.succeeded()
    assert 200.0 == pacer.sustained_rate
    assert round(math.sqrt(200 * 400), 3) == round(pacer.rate, 3)  # 282.8
    assert 336.359 == dwell()  # sqrt(282.8 * 400)
    assert 366.802 == dwell()  # sqrt(336.4 * 400)
    assert 383.041 == dwell()  # sqrt(366.8 * 400)
    assert 388.0 == dwell()  # sqrt(383.0 * 400) = 391.4: SETTLE stops it at 0.97 * 400
    assert 391.88 == dwell()  # then it creeps by 1 %
    assert 395.799 == dwell()
    for _ in range(20):
        dwell()
    assert 400 == pacer.rate  # the ceiling
    clock.now = 1.0
    pacer.throttled(sent_at=1.0)
    assert round(400 * Pacer.SETTLE, 6) == round(pacer.rate, 6)  # 399.8 passed, but too close


def test_what_a_pacer_learned_outlives_a_round() -> None:
    """A pacer kept for the next round (as `run` keeps it) starts where it settled, so the
    second backfill, told 4x the cap, is throttled far less than the first."""
    sim = Simulation()
    pacer = Pacer(CAP / CAP_WINDOW * 60 * 4, clock=sim, sleep=sim.sleep)
    first = simulate("bucket", 4, pages=400, pacer=pacer)
    assert pacer.rate < 300 * 1.1  # the cap is 300/min; told 1200
    second = simulate("bucket", 4, pages=400, pacer=pacer)
    assert first.throttled * first.requests >= 4  # learning from 4x costs a few 429s
    assert second.throttled * second.requests <= 2  # probing costs one now and then
    assert second.utilisation > 0.9


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
    sim = Simulation()
    gate = Gate(clock=sim, sleep=sim.sleep)
    function = Pacer(60 / 0.98, clock=sim, sleep=sim.sleep)
    tenant = Pacer(6000, clock=sim, sleep=sim.sleep)
    limiter = Limiter(function, tenant, gate)
    sent: list[float] = []

    async def caller() -> None:
        await limiter.acquire()
        sent.append(sim.now)

    async def throttle() -> None:
        await sim.sleep(0.5)
        limiter.throttled(retry_after=30, attempt=1, sent_at=0.0)

    sim.start(caller())  # t=0
    sim.start(caller())  # queued for t=1
    sim.start(throttle())
    sim.run()
    assert sent[0] == 0.0
    assert sent[1] >= 30.5


def test_a_429_teaches_the_function_pacer_not_the_tenant() -> None:
    """The tenant's pacer stays at its configured rate: one function's excess does not
    slow the others."""
    clock = FakeClock()
    tenant = Pacer(180, clock=clock, sleep=clock.sleep)
    pstn = Limiter(Pacer(45, clock=clock, sleep=clock.sleep), tenant, Gate(clock=clock))
    pstn.throttled(retry_after=2, attempt=1, sent_at=0.0)
    assert 22.5 == pstn.function.rate
    assert 180 == tenant.rate
    assert pstn.gate.closed


def test_backoff_honours_retry_after_and_jitters_otherwise() -> None:
    """Retry-After is used exactly; without it the wait is uniform in [0, min(cap, 2^(n-1))]."""
    assert 7.5 == backoff(3, retry_after=7.5)
    random.seed(1)
    for attempt in range(1, 12):
        waits = [backoff(attempt) for _ in range(200)]
        bound = min(BACKOFF_CAP, 2 ** (attempt - 1))
        assert all(0 <= w <= bound for w in waits)
        assert max(waits) > bound * 0.8


# --- the whole loop, simulated: 8 callers against the emulator's cap models ------------


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("model", ["window", "bucket"])
def test_told_the_cap_uses_nearly_all_of_it_without_429s(model: str, seed: int) -> None:
    """Told the cap exactly, 8 callers use >= 92 % of it and <= 1 % of requests get 429."""
    outcome = simulate(model, 1.0, seed=seed)
    assert outcome.utilisation >= 0.92
    assert outcome.throttled <= 0.01


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("model", ["window", "bucket"])
def test_told_four_times_the_cap_learns_it(model: str, seed: int) -> None:
    """Told 4x the cap (5/s against 50 per 10 s, window or leaky bucket with Retry-After 2),
    the pacer learns the cap within the run: >= 80 % of it used, <= 3 % of requests 429."""
    outcome = simulate(model, 4.0, seed=seed)
    assert outcome.utilisation >= 0.80
    assert outcome.throttled <= 0.03


@pytest.mark.parametrize("model", ["window", "bucket"])
def test_graph_own_50_a_minute_is_learned_alike(model: str) -> None:
    """At Graph's real 50 a minute (cap counted over 60 s) the same constants, counted in
    requests, learn the cap as they do compressed."""
    outcome = simulate(model, 4.0, window=60.0, pages=400)
    assert outcome.utilisation >= 0.80
    assert outcome.throttled <= 0.03

"""Graph's throttling and faults, injected in the emulator: the archive stays exact."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from helpers import archiver_env, assert_archive_exact, backfill, read_local

from archiver.config import Config, load
from archiver.emulator import Emulator, EmulatorConfig, Faults
from archiver.errors import WindowError
from archiver.graph.auth import TokenProvider
from archiver.graph.client import GraphClient, WindowStats, open_session
from archiver.graph.ratelimit import Gate, Limiter, Pacer
from archiver.kinds import DEFAULT_KINDS, Kind
from archiver.windows import Window

START = datetime(2024, 3, 4, tzinfo=UTC)
ROWS = {Kind.PSTN: 1500, Kind.DIRECT_ROUTING: 1100}

pytestmark = pytest.mark.emulator(rows_per_day=ROWS)  # two pages per day of each kind


class SkipClock:
    """Time that jumps instead of passing: the pacers, gates and Graph client of a test
    wait on it, so a Retry-After or a backoff of any length takes no time at all.

    `at()` puts a wall-clock instant (the emulator logs requests by time.time()) on the
    same timeline, so a test still measures how long the client waited between requests.
    """

    def __init__(self) -> None:
        self.skipped = 0.0  # seconds jumped so far
        self._jumps: list[tuple[float, float]] = []  # (time.time() of a jump, skipped after)

    def monotonic(self) -> float:
        """The clock for Pacer and Gate."""
        return time.monotonic() + self.skipped

    def time(self) -> float:
        """Wall-clock time on this timeline (what `time.time()` would say)."""
        return time.time() + self.skipped

    async def sleep(self, seconds: float) -> None:
        """Jump `seconds` ahead at once; still a checkpoint, so other tasks run."""
        self.skipped += max(0.0, seconds)
        self._jumps.append((time.time(), self.skipped))
        await anyio.lowlevel.checkpoint()

    def at(self, wall: float) -> float:
        """The wall-clock instant `wall` on this timeline: the jumps before it added."""
        return wall + max((total for when, total in self._jumps if when <= wall), default=0.0)


def limiters_on(clock: SkipClock, config: Config) -> dict[Kind, Limiter]:
    """What make_limiters builds (a pacer and a gate per function, one tenant pacer), on
    the skip clock."""
    tenant = Pacer(config.tenant_requests_per_minute, clock.monotonic, clock.sleep)
    return {
        kind: Limiter(
            Pacer(config.requests_per_minute, clock.monotonic, clock.sleep),
            tenant,
            Gate(clock.monotonic, clock.sleep),
        )
        for kind in DEFAULT_KINDS
    }


async def _client_pages(
    emu: Emulator,
    window: Window,
    clock: SkipClock,
    sleeps: list[float] | None = None,
    after_page: Callable[[], None] = lambda: None,
) -> list[list[dict[str, Any]]]:
    """One window's pages through a real GraphClient on `clock`: no wait takes time. The
    client's own sleeps (its backoffs) are listed in `sleeps`; `after_page` runs after
    each page."""

    async def client_sleep(seconds: float) -> None:
        if sleeps is not None:
            sleeps.append(seconds)
        await clock.sleep(seconds)

    config = load({}, archiver_env(emu, "unused") | {"ARCHIVER_CONCURRENCY": "1"})
    async with open_session(config) as session:
        tokens = TokenProvider(config)
        graph = GraphClient(config, session, tokens, limiters_on(clock, config), sleep=client_sleep)
        pages = []
        async for rows in graph.pages(window, WindowStats()):
            pages.append(rows)
            after_page()
        return pages


@pytest.mark.slow
def test_fault_mix_still_gives_the_exact_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """8 % 429, 4 % 503, 2 % resets, 2 % truncated bodies and 4-second tokens: a 10-day
    backfill of both kinds exits 0 with every row exactly once."""
    faults = Faults(
        throttle=0.08,
        retry_after="mixed",
        retry_after_seconds=0.2,
        server_error=0.04,
        reset=0.02,
        truncated=0.02,
        seed=7,
    )
    config = EmulatorConfig(rows_per_day=dict(ROWS), token_lifetime=4, faults=faults)
    with Emulator(config) as emu:
        dest = tmp_path / "archive"
        code = backfill(
            monkeypatch, archiver_env(emu, dest), "--start", "2024-03-04", "--end", "2024-03-14"
        )
        log = emu.requests
        assert 0 == code
        for kind in DEFAULT_KINDS:
            truth = emu.rows(kind, START, START + timedelta(days=10), version="v1.0")
            assert_archive_exact(kind, read_local(dest, kind), truth)
    injected = {r.fault for r in log if r.fault}
    assert {"throttle", "server_error", "reset", "truncated"} <= injected


@pytest.mark.parametrize("form", ["seconds", "date"])
def test_no_request_is_retried_before_its_retry_after(form: str) -> None:
    """After a 429 with Retry-After, the same page is asked for again only after that delay."""
    faults = Faults(throttle=0.3, retry_after=form, retry_after_seconds=1, seed=3)
    config = EmulatorConfig(rows_per_day={Kind.PSTN: 1500, Kind.DIRECT_ROUTING: 10}, faults=faults)
    days = [
        Window(Kind.PSTN, START + timedelta(days=d), START + timedelta(days=d + 1))
        for d in (0, 1, 2)
    ]
    clock = SkipClock()
    with Emulator(config) as emu:
        fetched = [anyio.run(_client_pages, emu, day, clock) for day in days]
        log = [r for r in emu.requests if r.endpoint == "graph"]
        # PSTN's end is inclusive: the row at the next midnight comes with each day
        truth = [
            emu.rows(Kind.PSTN, day.start, day.end + timedelta(microseconds=1), version="v1.0")
            for day in days
        ]
    throttled = [r for r in log if r.status == 429]
    assert throttled, "the emulator throttled nothing"
    for hit in throttled:
        assert hit.retry_after is not None
        later = [clock.at(r.at) for r in log if r.path_qs == hit.path_qs and r.at > hit.at]
        assert later, f"{hit.path_qs} was never retried"
        # An HTTP-date has whole seconds: the emulator rounds up, so 1 s is the floor either way.
        waited = min(later) - clock.at(hit.at)
        assert waited >= 1.0, f"retried after {waited:.3f}s"
    # every row of the three days exactly once, as served, despite the 429s
    assert truth == [[row for page in pages for row in page] for pages in fetched]


def test_next_link_to_another_host_gets_no_token_and_fails_its_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A nextLink naming another host is not followed: no request reaches it, the window
    fails with a clear error, the run exits 1 naming it."""
    with Emulator(EmulatorConfig(rows_per_day={Kind.PSTN: 1500, Kind.DIRECT_ROUTING: 10})) as emu:
        port = emu.url.rsplit(":", 1)[1]
        emu.config.next_link_host = f"https://localhost:{port}"
        dest = tmp_path / "archive"
        capsys.readouterr()
        code = backfill(
            monkeypatch,
            archiver_env(emu, dest),
            "--start",
            "2024-03-04",
            "--end",
            "2024-03-05",
            "--kind",
            "pstn",
        )
        out = capsys.readouterr().out
        hosts = {r.host for r in emu.requests}
    assert 1 == code
    assert {f"127.0.0.1:{port}"} == hosts
    assert (
        f"FAILED pstn 2024-03-04T00:00:00Z..2024-03-05T00:00:00Z: pstn "
        f"2024-03-04T00:00:00Z..2024-03-05T00:00:00Z: nextLink points to "
        f"https://localhost:{port}, not to {emu.url}; not followed"
    ) in out.splitlines()
    assert [] == list(dest.rglob("*.parquet"))


def test_expired_token_is_refreshed_and_the_request_retried(emulator: Emulator) -> None:
    """A 401 mid-window makes the client fetch a fresh token and ask again, once."""
    window = Window(Kind.PSTN, START, START + timedelta(days=1))
    # every token dies after its first page
    pages = anyio.run(_client_pages, emulator, window, SkipClock(), None, emulator.expire_tokens)
    sizes = [len(rows) for rows in pages]
    assert [1000, 501] == sizes  # PSTN's inclusive end returns the next midnight row too
    log = [(r.endpoint, r.status) for r in emulator.requests if r.endpoint != "discovery"]
    assert [
        ("token", 200),
        ("graph", 200),
        ("graph", 401),
        ("token", 200),
        ("graph", 200),
    ] == log


def test_window_fails_after_its_attempts_are_used_up(emulator: Emulator) -> None:
    """Persistent 503s fail the window after MAX_ATTEMPTS, backing off between attempts."""
    emulator.config.faults = Faults(server_error=1.0)
    window = Window(Kind.DIRECT_ROUTING, START, START + timedelta(days=1))
    sleeps: list[float] = []
    with pytest.raises(WindowError) as caught:
        anyio.run(_client_pages, emulator, window, SkipClock(), sleeps)
    graph = [r for r in emulator.requests if r.endpoint == "graph"]
    assert 8 == len(graph)
    assert 7 == len(sleeps)
    assert all(0 <= s <= 2**i for i, s in enumerate(sleeps))
    assert str(caught.value).startswith(
        "direct_routing 2024-03-04T00:00:00Z..2024-03-05T00:00:00Z: gave up after 8 attempts: "
        "Graph answered 5"
    )


def test_token_endpoint_outage_is_retried_with_backoff(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the token endpoint answers 503 while a window is fetched, the client backs off
    (MSAL itself replays a 5xx until its Retry-After has passed) and asks again; the
    window still gets all its pages."""
    window = Window(Kind.PSTN, START, START + timedelta(days=1))
    clock = SkipClock()
    # MSAL times its replay of a 5xx by time.time() in its HTTP cache: on the skip clock
    # too, so the client's backoffs (skipped, not slept) outlast it as real ones would.
    monkeypatch.setattr("msal.individual_cache.time", clock)

    def outage() -> None:
        emulator.expire_tokens()  # the next page needs a new token ...
        emulator.config.token_outages = 2  # ... and the token endpoint is down twice

    pages = anyio.run(_client_pages, emulator, window, clock, None, outage)
    assert [1000, 501] == [len(rows) for rows in pages]
    tokens = [r.status for r in emulator.requests if r.endpoint == "token"]
    assert [200, 503, 503, 200] == tokens

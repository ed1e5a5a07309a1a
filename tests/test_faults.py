"""Graph's throttling and faults, injected in the emulator: the archive stays exact."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from archive_check import assert_archive_exact, read_local
from test_backfill import archiver_env, backfill

from archiver.auth import TokenProvider
from archiver.config import load
from archiver.emulator import Emulator, EmulatorConfig, Faults
from archiver.errors import WindowError
from archiver.graph import GraphClient, WindowStats, make_limiters, open_session
from archiver.kinds import Kind
from archiver.windows import Window

START = datetime(2024, 3, 4, tzinfo=UTC)
ROWS = {Kind.PSTN: 1500, Kind.DIRECT_ROUTING: 1100}


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    """An emulator with two pages per day of each kind."""
    with Emulator(EmulatorConfig(rows_per_day=dict(ROWS))) as emu:
        yield emu


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
        for kind in Kind:
            truth = emu.rows(kind, START, START + timedelta(days=10), version="v1.0")
            assert_archive_exact(kind, read_local(dest, kind), truth)
    injected = {r.fault for r in log if r.fault}
    assert {"throttle", "server_error", "reset", "truncated"} <= injected


@pytest.mark.parametrize("form", ["seconds", "date"])
def test_no_request_is_retried_before_its_retry_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    """After a 429 with Retry-After, the same page is asked for again only after that delay."""
    faults = Faults(throttle=0.3, retry_after=form, retry_after_seconds=1, seed=3)
    config = EmulatorConfig(rows_per_day={Kind.PSTN: 1500, Kind.DIRECT_ROUTING: 10}, faults=faults)
    with Emulator(config) as emu:
        dest = tmp_path / "archive"
        assert 0 == backfill(
            monkeypatch,
            archiver_env(emu, dest),
            "--start",
            "2024-03-04",
            "--end",
            "2024-03-07",
            "--kind",
            "pstn",
        )
        log = [r for r in emu.requests if r.endpoint == "graph"]
    throttled = [r for r in log if r.status == 429]
    assert throttled, "the emulator throttled nothing"
    for hit in throttled:
        assert hit.retry_after is not None
        later = [r.at for r in log if r.path_qs == hit.path_qs and r.at > hit.at]
        assert later, f"{hit.path_qs} was never retried"
        # An HTTP-date has whole seconds: the emulator rounds up, so 1 s is the floor either way.
        assert min(later) - hit.at >= 1.0, f"retried after {min(later) - hit.at:.3f}s"
    for kind in (Kind.PSTN,):
        assert_archive_exact(
            kind,
            read_local(dest, kind),
            emu.rows(kind, START, START + timedelta(days=3), version="v1.0"),
        )


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


async def _client_pages(emu: Emulator, window: Window, sleeps: list[float]) -> list[int]:
    """Fetch one window through a real GraphClient; sleeps are recorded, not slept."""

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    config = load({}, archiver_env(emu, "unused") | {"ARCHIVER_CONCURRENCY": "1"})
    async with open_session(config) as session:
        tokens = TokenProvider(config)
        graph = GraphClient(config, session, tokens, make_limiters(config), sleep=fake_sleep)
        sizes = []
        async for rows in graph.pages(window, WindowStats()):
            sizes.append(len(rows))
            emu.expire_tokens()  # every token dies after its first page
        return sizes


def test_expired_token_is_refreshed_and_the_request_retried(emulator: Emulator) -> None:
    """A 401 mid-window makes the client fetch a fresh token and ask again, once."""
    window = Window(Kind.PSTN, START, START + timedelta(days=1))
    sizes = anyio.run(_client_pages, emulator, window, [])
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
        anyio.run(_client_pages, emulator, window, sleeps)
    graph = [r for r in emulator.requests if r.endpoint == "graph"]
    assert 8 == len(graph)
    assert 7 == len(sleeps)
    assert all(0 <= s <= 2**i for i, s in enumerate(sleeps))
    assert str(caught.value).startswith(
        "direct_routing 2024-03-04T00:00:00Z..2024-03-05T00:00:00Z: gave up after 8 attempts: "
        "Graph answered 5"
    )


def test_token_endpoint_outage_is_retried_with_backoff(emulator: Emulator) -> None:
    """When the token endpoint answers 503 while a window is fetched, the client backs off
    (MSAL itself replays a 5xx until its Retry-After has passed) and asks again; the
    window still gets all its pages."""
    window = Window(Kind.PSTN, START, START + timedelta(days=1))

    async def go() -> list[int]:
        config = load({}, archiver_env(emulator, "unused"))
        async with open_session(config) as session:
            tokens = TokenProvider(config)
            graph = GraphClient(config, session, tokens, make_limiters(config))
            sizes = []
            async for rows in graph.pages(window, WindowStats()):
                sizes.append(len(rows))
                emulator.expire_tokens()  # the next page needs a new token ...
                emulator.config.token_outages = 2  # ... and the token endpoint is down twice
            return sizes

    assert [1000, 501] == anyio.run(go)
    tokens = [r.status for r in emulator.requests if r.endpoint == "token"]
    assert [200, 503, 503, 200] == tokens

"""Chaos, end to end: `archiver` processes against Graph faults, S3 faults (through the
fault proxy), tokens that run out while requests queue in the pacer, several workers and
a SIGKILL. Every run ends with the exact archive, `verify` exit 0, and no traceback in
any command's output (chaos.Worker.finish checks each one).

Seeded scenarios (`test_seeded_chaos`): without CHAOS_SEEDS, two seeds (chaos.DEFAULT_SEEDS;
the profiles are in chaos.Scenario); CHAOS_SEEDS=200 (a count), `100-199` or `3,17` runs
those instead, for a soak. A failure names its seed, its scenario and how to replay it.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
from chaos import (
    KINDS,
    OUTPUTS,
    POLL,
    PROCESS_TIMEOUT,
    START,
    Bench,
    RotatingAssertion,
    Scenario,
    backfill_args,
    chaos_seeds,
    destination,
    emulator_config,
    run_scenario,
    tracebacks_in,
)
from helpers import certificate_pem
from s3_faults import FaultRates

from archiver.emulator import Emulator, Faults
from archiver.kinds import Kind
from archiver.windows import plan

SCENARIOS = [Scenario.draw(seed) for seed in chaos_seeds()]  # CHAOS_SEEDS, at collection
ROWS = {Kind.PSTN: 150, Kind.DIRECT_ROUTING: 120}  # a page a day: the pacer sets the pace
PAGE = 200
# The Graph fault mix. The emulator draws the Retry-After form of each 429 from
# three (seconds, HTTP date, none) and the 5xx status from 500/502/503/504: it cannot make
# exactly half of the 429s dates, or every 5xx a 503.
GRAPH_MIX = Faults(
    throttle=0.08,
    retry_after="mixed",
    retry_after_seconds=1.0,
    server_error=0.04,
    reset=0.02,
    truncated=0.02,
    seed=31,  # each of the four within the first dozen Graph requests
)


def queueing(lifetime: int, in_flight: int = 16, stretch: float = 1.2) -> dict[str, str]:
    """Settings under which a request waits in its function's pacer `stretch` times longer
    than a token lives: `in_flight` windows, half of them per function."""
    interval = stretch * lifetime / (in_flight // 2)
    per_minute = 60.0 / interval / 0.98
    return {
        "ARCHIVER_CONCURRENCY": str(in_flight),
        "ARCHIVER_REQUESTS_PER_MINUTE": f"{per_minute:.1f}",
        "ARCHIVER_TENANT_REQUESTS_PER_MINUTE": f"{2 * per_minute:.1f}",
    }


def token_requests(emu: Emulator) -> int:
    """Token requests the emulator answered 200."""
    return sum(1 for r in emu.requests if r.endpoint == "token" and r.status == 200)


@pytest.mark.slow
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.id() for s in SCENARIOS])
def test_seeded_chaos(scenario: Scenario, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """A seed's mix of faults, short tokens, pacing, window, concurrency and workers, one of
    them killed, then a resume: survivors exit 0 and the archive is exact."""
    run_scenario(scenario, request, tmp_path)


# --- the acceptance scenarios ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("credential", "lifetime"),
    [("client secret", 4), ("certificate", 3), ("federated token", 3)],
)
def test_graph_fault_mix_with_short_tokens_is_exact(
    tmp_path: Path, credential: str, lifetime: int
) -> None:
    """A 10-day backfill of both kinds through 8 % 429s, 4 % 5xx, 2 % resets and 2 %
    truncated bodies, with tokens (from a secret, a certificate, or a federated token file
    rotated every 2 s) that run out while requests queue: exit 0, exact."""
    config = emulator_config(
        rows_per_day=dict(ROWS), page_size=PAGE, token_lifetime=lifetime, faults=GRAPH_MIX
    )
    end = START + timedelta(days=10)
    with (
        Emulator(config) as emu,
        Bench(emu, str(tmp_path / "archive"), tmp_path, settings=queueing(lifetime)) as bench,
    ):
        bench.context = f"10 days, {credential}, {lifetime} s tokens, Graph faults {GRAPH_MIX}"
        args = backfill_args(START, end)
        if credential == "certificate":
            cert, key = certificate_pem("archiver chaos app")
            pem = tmp_path / "app.pem"
            pem.write_bytes(key + cert)
            emu.config.trusted_certificates = [cert]
            bench.credential = {"ARCHIVER_CLIENT_CERTIFICATE": str(pem)}
            done = bench.run("backfill", *args)
        elif credential == "federated token":
            token_file = tmp_path / "federated-token"
            bench.credential = {"AZURE_FEDERATED_TOKEN_FILE": str(token_file)}
            with RotatingAssertion(emu, token_file, period=2.0) as rotation:
                done = bench.run("backfill", *args)
            assert rotation.rotations >= 3, "the token file was not rotated during the run"
        else:
            done = bench.run("backfill", *args)
        assert 0 == done.returncode, bench.fail("backfill did not exit 0", done)
        bench.verify()
        bench.assert_exact(START, end)
        faults = {r.fault for r in emu.requests if r.fault}
        assert {"throttle", "server_error", "reset", "truncated"} <= faults, faults
        assert token_requests(emu) >= 3, "tokens did not run out during the run"


@pytest.mark.slow
def test_moderate_s3_faults_one_run_is_exact(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """5 % SlowDown, 2 % InternalError and 2 % resets (before and after the write) on
    every S3 request: one run of 48 hourly windows exits 0 with the exact archive."""
    rates = FaultRates.moderate(slowdown=0.05, internal=0.02, reset=0.02)
    config = emulator_config(rows_per_day={Kind.PSTN: 240, Kind.DIRECT_ROUTING: 120})
    end = START + timedelta(days=1)
    settings = {"ARCHIVER_WINDOW": "1h", "ARCHIVER_CONCURRENCY": "8"}
    with (
        Emulator(config) as emu,
        destination(request, "moto", tmp_path, rates, seed=5) as (dest, proxy),
        Bench(emu, dest, tmp_path, proxy, settings, context=f"moto, S3 {rates}") as bench,
    ):
        done = bench.run("backfill", *backfill_args(START, end))
        assert 0 == done.returncode, bench.fail("backfill did not exit 0", done)
        bench.verify()
        bench.assert_exact(START, end)
        assert proxy is not None and proxy.injected() > 0, "no S3 fault was injected"


@pytest.mark.slow
def test_heavy_s3_faults_never_stop_a_run_on_housekeeping(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """25 % SlowDown, 5 % InternalError and 5 % resets on every S3 request (claims,
    objects, journal, the compaction and its clean-up): the run exits 0, or 1 naming in a
    FAILED line every window it did not archive; the next run without faults completes
    the archive."""
    rates = FaultRates.moderate(slowdown=0.25, internal=0.05, reset=0.05)
    config = emulator_config(rows_per_day={Kind.PSTN: 96, Kind.DIRECT_ROUTING: 48})
    end = START + timedelta(days=6)
    settings = {"ARCHIVER_WINDOW": "6h", "ARCHIVER_CONCURRENCY": "16", "ARCHIVER_LEASE": "5s"}
    with (
        Emulator(config) as emu,
        destination(request, "moto", tmp_path, rates, seed=25) as (dest, proxy),
        Bench(emu, dest, tmp_path, proxy, settings, context=f"moto, S3 {rates}") as bench,
    ):
        assert proxy is not None
        faulty = bench.run("faulty", *backfill_args(START, end))
        assert faulty.returncode in (0, 1), bench.fail("the run stopped", faulty)
        named = faulty.failed_windows()
        assert (1 if named else 0) == faulty.returncode, bench.fail("exit code vs FAILED", faulty)
        unnamed = bench.windows_not_done(list(plan(KINDS, START, end, timedelta(hours=6))))
        unnamed -= named
        assert not unnamed, bench.fail(f"not archived, not named: {sorted(unnamed)}", faulty)
        # Housekeeping met the faults: the compaction's clean-up was tried, or the
        # compaction itself was left for later (its snapshot write outlived the retries).
        housekeeping = proxy.seen("DELETE") > 0 or "compaction left for later" in faulty.stderr
        assert housekeeping, "no compaction was tried: the test lost its point"
        clean = bench.run("clean", *backfill_args(START, end), faults=False)
        assert 0 == clean.returncode, bench.fail("the run without faults did not exit 0", clean)
        bench.verify()
        bench.assert_exact(START, end)


@pytest.mark.slow
def test_refused_journal_cleanup_does_not_stop_the_run(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """When S3 refuses every DELETE (the journal clean-up after a compaction), a run still
    exits 0, and so does the next one over a longer range, which reads the entries left
    over; the archive is exact."""
    rates = FaultRates(internal=1.0, methods=frozenset({"DELETE"}))
    config = emulator_config(rows_per_day={Kind.PSTN: 400, Kind.DIRECT_ROUTING: 200})
    end, later = START + timedelta(days=3), START + timedelta(days=4)
    settings = {"ARCHIVER_WINDOW": "6h", "ARCHIVER_CONCURRENCY": "8"}
    with (
        Emulator(config) as emu,
        destination(request, "moto", tmp_path, rates, seed=1) as (dest, proxy),
        Bench(emu, dest, tmp_path, proxy, settings, context="every DELETE refused") as bench,
    ):
        assert proxy is not None
        first = bench.run("first", *backfill_args(START, end))
        assert 0 == first.returncode, bench.fail("the run did not exit 0", first)
        refused = proxy.injected("internal", "DELETE")
        assert refused > 0, "no clean-up was tried"
        second = bench.run("second", *backfill_args(START, later))
        assert 0 == second.returncode, bench.fail("the next run did not exit 0", second)
        assert proxy.injected("internal", "DELETE") > refused, "the second run cleaned nothing"
        bench.verify()
        bench.assert_exact(START, later)


# --- tracebacks ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hostile", ["S3 refuses everything", "S3 resets everything mid-run", "Graph answers 403"]
)
def test_no_command_prints_a_traceback(
    request: pytest.FixtureRequest, tmp_path: Path, hostile: str
) -> None:
    """A run that cannot succeed ends with exit 1 or 2 and lines naming the problem, never
    a traceback or an exception group; nor did any command that this session ran before."""
    config = emulator_config(rows_per_day={Kind.PSTN: 400, Kind.DIRECT_ROUTING: 200})
    rates = FaultRates(internal=1.0) if hostile == "S3 refuses everything" else FaultRates()
    end = START + timedelta(days=1)
    settings = {"ARCHIVER_WINDOW": "6h", "ARCHIVER_CONCURRENCY": "8", "ARCHIVER_LEASE": "5s"}
    with (
        Emulator(config) as emu,
        destination(request, "moto", tmp_path, rates, seed=3) as (dest, proxy),
        Bench(emu, dest, tmp_path, proxy, settings, context=hostile) as bench,
    ):
        assert proxy is not None
        emu.config.permission = hostile != "Graph answers 403"
        worker = bench.start("hostile", *backfill_args(START, end))
        if hostile == "S3 resets everything mid-run":
            deadline = time.monotonic() + PROCESS_TIMEOUT
            while worker.running() and bench.pages_served() < 2 and time.monotonic() < deadline:
                time.sleep(POLL)
            proxy.rates = FaultRates(reset_before=1.0)
        done = worker.finish(hostile)  # fails on a traceback
        assert done.returncode in (1, 2), bench.fail("a hopeless run did not fail", done)
        assert (done.stdout + done.stderr).strip(), bench.fail("it failed without a word", done)
        if hostile == "S3 resets everything mid-run":  # windows failed: each one is named
            assert 1 == done.returncode, bench.fail("the run stopped", done)
            windows = list(plan(KINDS, START, end, timedelta(hours=6)))
            unnamed = bench.windows_not_done(windows) - done.failed_windows()
            assert not unnamed, bench.fail(f"not archived, not named: {sorted(unnamed)}", done)
    earlier = [(command, tracebacks_in(text)) for command, text in OUTPUTS]
    assert [] == [(command, lines) for command, lines in earlier if lines]

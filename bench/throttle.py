"""How much of Graph's allowed rate the archiver uses, and how often it is throttled.

Runs real backfills against the emulator with a per-function rate cap and page
latency, and reads the emulator's request log:

    utilisation = good pages per second / the cap's rate   (per function)
    throttled   = requests answered 429 / all Graph requests

Two scenarios: the archiver told the cap exactly, and told four times the cap (it
must adapt). To keep a run short, the emulator's cap counts over a 6-second window
instead of a minute: the same rate, but a tenth of the slack a minute leaves for
network jitter, so these figures are if anything pessimistic. The archiver is told
the rate per minute. Each figure is the median of --runs runs.

    .venv/bin/python bench/throttle.py [--runs 3] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio

from archiver.config import load
from archiver.emulator import Emulator, EmulatorConfig
from archiver.kinds import Kind
from archiver.pipeline import backfill

CAP = 60  # requests per function per CAP_WINDOW seconds
CAP_WINDOW = 6.0
LATENCY = 0.1  # seconds per page
START = datetime(2024, 1, 1, tzinfo=UTC)


def one_run(told_factor: float, days: int, rows_per_day: int) -> tuple[float, float]:
    """One backfill of both kinds; (utilisation, share of 429s)."""
    allowed_per_minute = CAP * 60 / CAP_WINDOW
    emulated = EmulatorConfig(
        rows_per_day={kind: rows_per_day for kind in Kind},
        latency=LATENCY,
        rate_cap_per_minute=CAP,
        rate_cap_window=CAP_WINDOW,
    )
    with Emulator(emulated) as emu, tempfile.TemporaryDirectory() as scratch:
        config = load(
            {},
            {
                "ARCHIVER_TENANT_ID": emulated.tenant_id,
                "ARCHIVER_CLIENT_ID": emulated.client_id,
                "ARCHIVER_CLIENT_SECRET": emulated.client_secret,
                "ARCHIVER_AUTHORITY_HOST": emu.url,
                "ARCHIVER_GRAPH_URL": emu.url,
                "ARCHIVER_CA_BUNDLE": str(emu.ca_file),
                "ARCHIVER_DESTINATION": str(Path(scratch) / "archive"),
                "ARCHIVER_REQUESTS_PER_MINUTE": str(allowed_per_minute * told_factor),
                "ARCHIVER_TENANT_REQUESTS_PER_MINUTE": "1000000",
            },
        )
        result = anyio.run(backfill, config, list(Kind), START, START + timedelta(days=days))
        assert not result.failed, result.failed
        log = [r for r in emu.requests if r.endpoint == "graph"]
    utilisations = []
    for kind in Kind:
        mine = [r for r in log if r.kind is kind]
        good = sum(1 for r in mine if r.status == 200)
        elapsed = max(r.at for r in mine) - min(r.at for r in mine)
        # n good pages span n-1 intervals of the allowed spacing
        utilisations.append((good - 1) / elapsed / (CAP / CAP_WINDOW))
    throttled = sum(1 for r in log if r.status == 429) / len(log)
    return statistics.mean(utilisations), throttled


def main() -> None:
    """Run both scenarios and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small runs, for a smoke test")
    args = parser.parse_args()
    days, rows = (3, 20_000) if args.quick else (10, 40_000)
    pages = days * (rows // 1000 + 1)
    print(
        f"cap {CAP} requests / {CAP_WINDOW:g} s per function ({CAP * 60 / CAP_WINDOW:g}/min), "
        f"latency {LATENCY * 1000:g} ms, {pages} pages per function, concurrency 8, "
        f"median of {args.runs} runs"
    )
    print("| told | utilisation | answered 429 |")
    print("|---|---|---|")
    for factor, label in ((1.0, "the cap exactly"), (4.0, "4x the cap")):
        runs = [one_run(factor, days, rows) for _ in range(args.runs)]
        utilisation = statistics.median(u for u, _ in runs)
        throttled = statistics.median(t for _, t in runs)
        print(f"| {label} | {utilisation:.1%} | {throttled:.2%} |", flush=True)


if __name__ == "__main__":
    main()

"""How much of Graph's allowed rate the archiver uses, and how often it is throttled.

Runs real backfills of both kinds against the emulator with a per-function rate cap
and page latency, and reads the emulator's request log:

    utilisation = good pages per second / the cap's rate   (per function, mean of both)
    throttled   = requests answered 429 / all Graph requests

Two models of the cap (see EmulatorState.over_cap), each with the archiver told the
cap exactly and told four times the cap (it must learn):

    window  a sliding window: CAP requests in any CAP_WINDOW seconds; the 429 names the
            time until a slot frees
    bucket  a leaky bucket draining CAP / CAP_WINDOW requests a second with one second
            of burst; the 429 says Retry-After: 2

Graph's 50 a minute is compressed six times (50 per 10 s: 5 a second) so that 60 days
of windows take minutes, not hours; --real runs a few minutes at Graph's own 50 a
minute instead (at one request of burst the bucket is harsh there, and a run of three
windows' length lets the first window's burst lift "told 4x" utilisation over 100 %).
Compression makes these figures if anything pessimistic: a Retry-After of whole
seconds costs six times as many requests' worth of time. Pages are small (100 rows) so
that the figures measure pacing, not the machine's CPU. The archiver is told the rate
per minute. Each figure is the median of --runs runs.

    .venv/bin/python bench/throttle.py [--runs 3] [--model both] [--told 1,4] [--quick]
    .venv/bin/python bench/throttle.py --real       # ~3 minutes per line, 4 lines
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio

from archiver.config import load
from archiver.emulator import Emulator, EmulatorConfig
from archiver.kinds import DEFAULT_KINDS
from archiver.pipeline import backfill

CAP = 50  # requests per function per CAP_WINDOW seconds (Graph: 50 a minute)
CAP_WINDOW = 10.0  # seconds: Graph's minute, compressed six times
LATENCY = 0.04  # seconds per page
PAGE_SIZE = 100  # rows per page: small pages keep the benchmark about pacing, not CPU
CONCURRENCY = 8
START = datetime(2024, 1, 1, tzinfo=UTC)
MODELS = ("window", "bucket")


@dataclass(frozen=True)
class Scenario:
    """One line of the table."""

    model: str  # "window" | "bucket"
    told: float  # the archiver is told this multiple of the cap
    cap_window: float  # seconds CAP counts over
    days: int
    rows_per_day: int
    store_delay: float | None = None  # seconds per S3 answer; None: a local folder

    @property
    def per_second(self) -> float:
        """The cap's rate."""
        return CAP / self.cap_window


@contextlib.contextmanager
def slow_s3(delay: float) -> Iterator[str]:
    """A moto S3 server behind the tests' proxy holding every answer back `delay` seconds
    (a store far away); yields the destination. AWS_* are set for the process."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import boto3
    from moto.server import ThreadedMotoServer
    from s3_faults import S3FaultProxy

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",  # noqa: S106 - moto's, not a secret
        AWS_DEFAULT_REGION="us-east-1",
    )
    boto3.client("s3", endpoint_url=f"http://{host}:{port}").create_bucket(Bucket="bench")
    try:
        with S3FaultProxy(f"http://{host}:{port}", delay=delay) as proxy:
            os.environ["AWS_ENDPOINT_URL_S3"] = proxy.url
            yield "s3://bench/archive"
    finally:
        server.stop()


def one_run(scenario: Scenario) -> tuple[float, float]:
    """One backfill of both kinds; (utilisation, share of 429s)."""
    emulated = EmulatorConfig(
        rows_per_day={kind: scenario.rows_per_day for kind in DEFAULT_KINDS},
        page_size=PAGE_SIZE,
        latency=LATENCY,
        rate_cap_per_minute=CAP,
        rate_cap_window=scenario.cap_window,
        rate_cap_model=scenario.model,
    )
    with contextlib.ExitStack() as stack:
        emu = stack.enter_context(Emulator(emulated))
        scratch = stack.enter_context(tempfile.TemporaryDirectory())
        destination = str(Path(scratch) / "archive")
        if scenario.store_delay is not None:
            destination = stack.enter_context(slow_s3(scenario.store_delay))
        config = load(
            {},
            {
                "ARCHIVER_TENANT_ID": emulated.tenant_id,
                "ARCHIVER_CLIENT_ID": emulated.client_id,
                "ARCHIVER_CLIENT_SECRET": emulated.client_secret,
                "ARCHIVER_AUTHORITY_HOST": emu.url,
                "ARCHIVER_GRAPH_URL": emu.url,
                "ARCHIVER_CA_BUNDLE": str(emu.ca_file),
                "ARCHIVER_DESTINATION": destination,
                "ARCHIVER_CONCURRENCY": str(CONCURRENCY),
                "ARCHIVER_REQUESTS_PER_MINUTE": str(scenario.per_second * 60 * scenario.told),
                "ARCHIVER_TENANT_REQUESTS_PER_MINUTE": "1000000",
            },
        )
        end = START + timedelta(days=scenario.days)
        result = anyio.run(backfill, config, list(DEFAULT_KINDS), START, end)
        assert not result.failed, result.failed
        log = [r for r in emu.requests if r.endpoint == "graph"]
    utilisations = []
    for kind in DEFAULT_KINDS:
        mine = [r for r in log if r.kind is kind]
        good = sum(1 for r in mine if r.status == 200)
        elapsed = max(r.at for r in mine) - min(r.at for r in mine)
        # n good pages span n-1 intervals of the allowed spacing
        utilisations.append((good - 1) / elapsed / scenario.per_second)
    throttled = sum(1 for r in log if r.status == 429) / len(log)
    return statistics.mean(utilisations), throttled


def main() -> None:
    """Run the scenarios and print a markdown table, one line as each finishes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=None, help="runs per line (3; --real 1)")
    parser.add_argument("--model", choices=(*MODELS, "both"), default="both")
    parser.add_argument("--told", default="1,4", help="multiples of the cap, comma-separated")
    parser.add_argument("--days", type=int, default=None, help="days of windows (60)")
    parser.add_argument("--rows-per-day", type=int, default=None, help="per kind (1000)")
    parser.add_argument("--quick", action="store_true", help="small runs, for a smoke test")
    parser.add_argument(
        "--store-delay",
        type=float,
        default=None,
        help="into moto S3 behind a proxy holding each answer back this many seconds",
    )
    parser.add_argument(
        "--real", action="store_true", help="Graph's own 50 a minute, a few minutes per line"
    )
    args = parser.parse_args()
    runs = args.runs or (1 if args.real else 3)
    cap_window = 60.0 if args.real else CAP_WINDOW
    days, rows = (15, 900) if args.real else (3, 500) if args.quick else (60, 1_000)
    days = args.days or days
    rows = args.rows_per_day or rows
    models = MODELS if args.model == "both" else (args.model,)
    pages = days * (rows // PAGE_SIZE + 1)
    print(
        f"cap {CAP} requests / {cap_window:g} s per function ({CAP * 60 / cap_window:g}/min), "
        f"latency {LATENCY * 1000:g} ms, {days} days x 2 kinds, {pages} pages of {PAGE_SIZE} rows "
        f"per function, "
        f"concurrency {CONCURRENCY}, median of {runs} runs"
        + (
            f", into S3 answering after {args.store_delay:g} s"
            if args.store_delay is not None
            else ", into a local folder"
        )
    )
    print("| cap model | told | utilisation | answered 429 | runs (utilisation / 429) |")
    print("|---|---|---|---|---|")
    for model in models:
        for told in (float(f) for f in args.told.split(",")):
            scenario = Scenario(model, told, cap_window, days, rows, args.store_delay)
            results = [one_run(scenario) for _ in range(runs)]
            utilisation = statistics.median(u for u, _ in results)
            throttled = statistics.median(t for _, t in results)
            each = ", ".join(f"{u:.1%} / {t:.2%}" for u, t in results)
            label = "the cap exactly" if told == 1 else f"{told:g}x the cap"
            print(
                f"| {model} | {label} | {utilisation:.1%} | {throttled:.2%} | {each} |", flush=True
            )


if __name__ == "__main__":
    main()

"""The chaos harness: `archiver` commands in subprocesses against the Graph emulator and a
destination (a folder, or S3 through the fault proxy), seeded scenarios, and the checks
every run gets.

- `Bench`: one test's emulator, destination and proxy; starts and runs commands with the
  environment a user would set (`helpers.archiver_env`), S3 through the proxy.
- `Worker`/`Finished`: a command's process and its captured output. Every finished
  command is checked for tracebacks (`TRACEBACK_MARKERS`) and remembered in `OUTPUTS`.
- `Scenario.draw(seed)`: what a seed runs — Graph faults, S3 faults, token lifetime,
  pacing, window, concurrency, workers, the SIGKILL — a pure function of the seed.
- `chaos_seeds()`: the seeds to run, from CHAOS_SEEDS (read at collection time).
- `RotatingAssertion`: a federated token file that a thread rotates, as the kubelet does.
"""

from __future__ import annotations

import io
import math
import os
import random
import re
import resource
import secrets
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import (
    archiver_command,
    archiver_env,
    assert_archive_exact,
    expected_extra,
    read_local,
    s3_keys,
)
from s3_faults import FaultRates, S3FaultProxy

from archiver.emulator import Emulator, EmulatorConfig, Faults
from archiver.kinds import Kind
from archiver.manifest import Manifest
from archiver.store import open_store
from archiver.windows import Window, parse_window, plan

TRACEBACK_MARKERS = ("Traceback", "ExceptionGroup", "exception group")
PROCESS_TIMEOUT = 120.0  # seconds any one command may take before it is killed and failed
POLL = 0.02  # seconds between looks at a running scenario (never a timing assertion)
START = datetime(2024, 3, 4, tzinfo=UTC)
KINDS = (Kind.PSTN, Kind.DIRECT_ROUTING)
_ARCHIVED = re.compile(r'"message": "archived (\S+ \S+)"')
_FAILED = re.compile(r"^FAILED (\S+) (\S+)\.\.(\S+): ", re.MULTILINE)

OUTPUTS: list[tuple[str, str]] = []  # (command, its stdout and stderr) of every finished command


# --- commands ----------------------------------------------------------------------------


def tracebacks_in(text: str) -> list[str]:
    """The lines of `text` that show a traceback or an exception group."""
    return [line for line in text.splitlines() if any(m in line for m in TRACEBACK_MARKERS)]


@dataclass
class Finished:
    """A command that ended: how, and what it printed."""

    name: str
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    killed: bool = False

    def tail(self, lines: int = 30) -> str:
        """The last lines of both streams, for failure messages."""
        out = "\n".join(self.stdout.splitlines()[-lines:])
        err = "\n".join(self.stderr.splitlines()[-lines:])
        return f"--- {self.name} exit {self.returncode} stdout:\n{out}\n--- stderr:\n{err}"

    def archived(self) -> list[str]:
        """The windows its log says it archived (JSON log lines `archived <window>`)."""
        return _ARCHIVED.findall(self.stderr)

    def failed_windows(self) -> set[tuple[str, str]]:
        """(kind, start) of each window named in a `FAILED <window>: ...` line."""
        return {(m[1], m[2]) for m in _FAILED.finditer(self.stdout)}


class Worker:
    """A command running in its own process; its output goes to files in `folder`."""

    def __init__(self, name: str, args: Sequence[str], env: dict[str, str], folder: Path) -> None:
        self.name = name
        self.args = list(args)
        self.killed = False
        folder.mkdir(parents=True, exist_ok=True)
        self._out = folder / f"{name}.stdout"
        self._err = folder / f"{name}.stderr"
        with self._out.open("wb") as out, self._err.open("wb") as err:
            self.process = subprocess.Popen(
                archiver_command(*args), env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err
            )
        self._deadline = time.monotonic() + PROCESS_TIMEOUT

    def running(self) -> bool:
        """True while the process has not exited."""
        return self.process.poll() is None

    def kill(self) -> bool:
        """SIGKILL it if it still runs; True if it was killed."""
        if not self.running():
            return False
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.killed = True
        return True

    def finish(self, context: str = "") -> Finished:
        """Wait for the end (killing it past PROCESS_TIMEOUT, which fails the test), read its
        output, and check that no traceback is in it."""
        try:
            self.process.wait(max(0.0, self._deadline - time.monotonic()))
            hung = False
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            hung = True
        done = Finished(
            self.name,
            self.args,
            self.process.returncode,
            self._out.read_text(errors="replace"),
            self._err.read_text(errors="replace"),
            self.killed,
        )
        OUTPUTS.append((f"{self.name}: archiver {' '.join(self.args)}", done.stdout + done.stderr))
        assert not hung, f"{context}\n{self.name} ran over {PROCESS_TIMEOUT:.0f} s\n{done.tail()}"
        found = tracebacks_in(done.stdout + done.stderr)
        assert not found, f"{context}\n{self.name} printed a traceback: {found[:5]}\n{done.tail()}"
        return done


# --- credentials -------------------------------------------------------------------------


class RotatingAssertion:
    """A federated token file rotated every `period` seconds by a thread: each new
    assertion is made acceptable to the emulator first, then written (atomically); only
    the newest `keep` stay acceptable, so a client that read the file once and kept the
    assertion is refused after a few rotations."""

    def __init__(self, emu: Emulator, path: Path, period: float = 2.0, keep: int = 3) -> None:
        self.emu, self.path, self.period, self.keep = emu, path, period, keep
        self.rotations = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="token-rotation", daemon=True)

    def rotate(self) -> None:
        """Accept a new assertion, forget the oldest, then put the new one in the file."""
        assertion = f"federated-{self.rotations}-{secrets.token_urlsafe(24)}"
        self.emu.config.federated_tokens = [*self.emu.config.federated_tokens, assertion][
            -self.keep :
        ]
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(assertion)
        temporary.replace(self.path)
        self.rotations += 1

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.rotate()

    def __enter__(self) -> RotatingAssertion:
        self.rotate()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(10)


# --- one test's setup ------------------------------------------------------------------


def emulator_config(**fields: Any) -> EmulatorConfig:
    """An EmulatorConfig in which every 7th row of a day carries a property no schema
    knows (the default, every 97th, never happens with fewer rows a day)."""
    return EmulatorConfig(**{"unknown_property_every": 7, **fields})


@contextmanager
def destination(
    request: pytest.FixtureRequest, store: str, folder: Path, rates: FaultRates, seed: int
) -> Iterator[tuple[str, S3FaultProxy | None]]:
    """A fresh destination: a folder ("local"), or a bucket on moto or SeaweedFS with the
    fault proxy in front (the test's AWS chain points at the server itself)."""
    if store == "local":
        yield str(folder / "archive"), None
        return
    fixture = {"moto": "s3_destination", "seaweedfs": "seaweed_destination"}[store]
    where = str(request.getfixturevalue(fixture))
    with S3FaultProxy(os.environ["AWS_ENDPOINT_URL_S3"], rates, seed) as proxy:
        yield where, proxy


@dataclass
class Bench:
    """The emulator, the destination and its proxy, and how to run commands on them."""

    emu: Emulator
    destination: str
    folder: Path
    proxy: S3FaultProxy | None = None
    settings: dict[str, str] = field(default_factory=dict)  # ARCHIVER_* for every command
    credential: dict[str, str] | None = None  # instead of the client secret
    context: str = ""  # what this test runs, for every failure message
    started: list[Worker] = field(default_factory=list, repr=False)

    def __enter__(self) -> Bench:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Kill whatever still runs (a failed test leaves no process behind)."""
        for worker in self.started:
            worker.kill()

    def env(self, faults: bool = True, **extra: str) -> dict[str, str]:
        """The process environment: the user's settings; S3 through the proxy unless not
        `faults` (then straight to the server)."""
        env = {**os.environ, **archiver_env(self.emu, self.destination, **self.settings, **extra)}
        if self.credential is not None:
            del env["ARCHIVER_CLIENT_SECRET"]
            env.update(self.credential)
        if self.proxy is not None and faults:
            env["AWS_ENDPOINT_URL_S3"] = self.proxy.url
        return env

    def start(self, name: str, *args: str, faults: bool = True, **extra: str) -> Worker:
        """Start `archiver <args>`."""
        worker = Worker(name, args, self.env(faults, **extra), self.folder / "output")
        self.started.append(worker)
        return worker

    def run(self, name: str, *args: str, faults: bool = True, **extra: str) -> Finished:
        """Run `archiver <args>` to its end (checked for tracebacks)."""
        return self.start(name, *args, faults=faults, **extra).finish(self.context)

    def fail(self, what: str, *runs: Finished) -> str:
        """A failure message: the scenario, what went wrong, the runs' output."""
        tails = "\n".join(run.tail() for run in runs)
        return f"{self.context}\n{what}\n{tails}"

    def assert_exact(self, start: datetime, end: datetime, kinds: Sequence[Kind] = KINDS) -> None:
        """Every source row of [start, end) once, typed, unknown properties kept."""
        for kind in kinds:
            truth = self.emu.rows(kind, start, end, version="v1.0")
            if self.destination.startswith("s3://"):
                table = read_s3_quickly(self.destination, kind)
            else:
                table = read_local(Path(self.destination), kind)
            if len(truth) >= 200:  # then some rows carry properties no schema knows
                assert any(expected_extra(kind, row) for row in truth), "no unknown property"
            try:
                assert_archive_exact(kind, table, truth)
            except AssertionError as exc:
                raise AssertionError(f"{self.context}\n{kind.value}: not exact: {exc}") from exc

    def verify(self) -> Finished:
        """`archiver verify` straight on the destination (no faults): exit 0."""
        done = self.run("verify", "verify", faults=False)
        assert 0 == done.returncode, self.fail("verify found problems", done)
        return done

    def windows_not_done(self, windows: Sequence[Window]) -> set[tuple[str, str]]:
        """(kind, start) of each of `windows` the manifest does not record as archived."""
        manifest = Manifest(open_store(self.destination))
        anyio.run(manifest.load)
        return {
            (w.kind.value, w.start.isoformat().replace("+00:00", "Z"))
            for w in windows
            if not manifest.is_done(w)
        }

    def pages_served(self) -> int:
        """Graph pages the emulator answered with 200."""
        return sum(1 for r in self.emu.requests if r.endpoint == "graph" and r.status == 200)


def read_s3_quickly(destination: str, kind: Kind) -> pa.Table:
    """helpers.read_s3, one GetObject per object, eight at a time (hundreds of hourly
    objects on moto take seconds instead of tens of seconds)."""
    bucket, _, prefix = destination.removeprefix("s3://").partition("/")
    client = boto3.session.Session().client("s3")
    keys = [f"{prefix}/{key}" for key in s3_keys(destination, ".parquet")]
    keys = [key for key in keys if key.startswith(f"{prefix}/{kind.value}/")]

    def read(key: str) -> pa.Table:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return pq.read_table(io.BytesIO(body), partitioning=None)

    with ThreadPoolExecutor(8) as pool:
        return pa.concat_tables(list(pool.map(read, keys)))


def _children_cpu() -> float:
    """CPU seconds the finished subprocesses of this process used."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def backfill_args(start: datetime, end: datetime) -> tuple[str, ...]:
    """`backfill` over [start, end)."""
    return ("backfill", "--start", start.strftime("%Y-%m-%d"), "--end", end.strftime("%Y-%m-%d"))


# --- seeded scenarios --------------------------------------------------------------------

PROFILES = ("queue", "many", "mixed")
STORES = ("local", "moto", "seaweedfs")
WINDOW_HOURS = {"1h": 1, "6h": 6, "1d": 24}
QUEUE_WINDOWS = 12  # at most, per kind, in a "queue" scenario
DUPLICATE_SHARE = 1.25  # windows archived, at most, per window of the range (plus the kill)


@dataclass(frozen=True)
class Scenario:
    """Everything one seed runs; `draw(seed)` makes it, so a seed replays exactly."""

    seed: int
    profile: str  # "queue": tokens outlived by the pacer's queue; "many": > 256 windows
    store: str  # "local", "moto" or "seaweedfs"
    window: str
    days: int
    rows_per_day: tuple[int, int]  # PSTN, Direct Routing
    page_size: int
    concurrency: int
    workers: int
    token_lifetime: int  # seconds
    requests_per_minute: float
    tenant_requests_per_minute: float
    lease: str
    graph: Faults
    s3: FaultRates
    victim: int  # which worker is killed
    kill_after_pages: int  # ... once the emulator has served this many pages

    @property
    def end(self) -> datetime:
        """The exclusive end of the range."""
        return START + timedelta(days=self.days)

    def windows(self) -> list[Window]:
        """Every window of the range."""
        return list(plan(KINDS, START, self.end, parse_window(self.window)))

    def id(self) -> str:
        """A short test id that names the seed first."""
        return (
            f"seed{self.seed}-{self.profile}-{self.store}-{self.window}x{self.days}d"
            f"-c{self.concurrency}-w{self.workers}-tok{self.token_lifetime}s"
        )

    def __str__(self) -> str:
        g, s = self.graph, self.s3
        return (
            f"chaos {self.id()} (replay: CHAOS_SEEDS={self.seed}-{self.seed} pytest "
            f"tests/test_chaos.py -k 'seed{self.seed}-'): rows/day {self.rows_per_day}, "
            f"page {self.page_size}, pace {self.requests_per_minute:.0f}/"
            f"{self.tenant_requests_per_minute:.0f} per min, lease {self.lease}; Graph 429 "
            f"{g.throttle:.1%} ({g.retry_after}, {g.retry_after_seconds}s), 5xx "
            f"{g.server_error:.1%}, reset {g.reset:.1%}, truncated {g.truncated:.1%}; S3 "
            f"slowdown {s.slowdown:.1%}, internal {s.internal:.1%}, reset "
            f"{s.reset_before:.1%}+{s.reset_after:.1%}; kill worker {self.victim} after "
            f"{self.kill_after_pages} pages"
        )

    @classmethod
    def draw(cls, seed: int) -> Scenario:
        """The scenario of `seed`; its profile cycles with the seed (seed % 3)."""
        rng = random.Random(seed)
        profile = PROFILES[seed % len(PROFILES)]
        store = rng.choice(STORES)
        lifetime = rng.randint(2, 5)
        workers = rng.randint(1, 3)
        if profile == "queue":
            # Each function's windows in flight wait in its pacer longer than a token
            # lives: `depth` windows a worker, a page each, one request every
            # stretch * lifetime / depth seconds.
            window = rng.choice(("6h", "1d"))
            per_day = 24 // WINDOW_HOURS[window]
            concurrency = rng.randint(8, 16)
            workers = rng.randint(1, 2)
            page_size = 200
            per_kind = concurrency // 2
            stretch = rng.uniform(1.2, 1.6)  # queue wait / token lifetime
            kind_windows = min(QUEUE_WINDOWS, per_kind * workers)
            days = math.ceil(kind_windows / per_day)
            depth = min(per_kind, kind_windows / workers)
            rpm = 60.0 / (stretch * lifetime / depth) / 0.98
            tenant = 2 * rpm * rng.uniform(0.75, 1.25)
            rows = page_size // 2 * per_day
        elif profile == "many":
            # More windows than the manifest folds into one compaction (256), and several
            # workers compacting the same manifest.
            window, days, page_size = "1h", 6, 1000
            workers = rng.randint(2, 3)
            concurrency = rng.randint(8, 16)
            rpm = float(rng.choice((3000, 100000)))
            tenant = 2 * rpm
            rows = rng.randint(40, 160)
        else:
            window = rng.choice(tuple(WINDOW_HOURS))
            per_day = 24 // WINDOW_HOURS[window]
            days = max(1, min(10, round(rng.randint(10, 30) / per_day)))
            concurrency = rng.randint(1, 16)
            page_size = rng.choice((50, 100, 200))
            rpm = float(rng.choice((600, 1200, 3000)))
            tenant = rpm * rng.uniform(1.2, 2.0)
            rows = rng.randint(1, 3) * page_size * per_day // 2
        graph = Faults(
            throttle=rng.uniform(0.02, 0.08),
            retry_after="mixed",
            retry_after_seconds=rng.choice((0.5, 1.0)),
            server_error=rng.uniform(0.0, 0.04),
            reset=rng.uniform(0.0, 0.02),
            truncated=rng.uniform(0.0, 0.02),
            seed=seed,
        )
        s3 = FaultRates.moderate(
            slowdown=rng.uniform(0.0, 0.05),
            internal=rng.uniform(0.0, 0.02),
            reset=rng.uniform(0.0, 0.02),
        )
        row_counts = (rows, max(1, round(rows * rng.uniform(0.6, 1.0))))
        windows = len(KINDS) * days * 24 // WINDOW_HOURS[window]
        pages_total = max(
            1, windows * max(1, math.ceil(rows / (24 // WINDOW_HOURS[window]) / page_size))
        )
        return cls(
            seed=seed,
            profile=profile,
            store=store,
            window=window,
            days=days,
            rows_per_day=row_counts,
            page_size=page_size,
            concurrency=concurrency,
            workers=workers,
            token_lifetime=lifetime,
            requests_per_minute=round(rpm, 1),
            tenant_requests_per_minute=round(tenant, 1),
            lease=rng.choice(("4s", "8s")),
            graph=graph,
            s3=s3,
            victim=rng.randrange(workers),
            kill_after_pages=rng.randint(1, max(1, int(pages_total * 0.7))),
        )

    def emulator_config(self) -> EmulatorConfig:
        """The emulator this scenario talks to."""
        return emulator_config(
            rows_per_day={
                Kind.PSTN: self.rows_per_day[0],
                Kind.DIRECT_ROUTING: self.rows_per_day[1],
            },
            page_size=self.page_size,
            seed=self.seed,
            token_lifetime=self.token_lifetime,
            faults=self.graph,
        )

    def settings(self) -> dict[str, str]:
        """The archiver's settings for this scenario."""
        return {
            "ARCHIVER_WINDOW": self.window,
            "ARCHIVER_CONCURRENCY": str(self.concurrency),
            "ARCHIVER_REQUESTS_PER_MINUTE": str(self.requests_per_minute),
            "ARCHIVER_TENANT_REQUESTS_PER_MINUTE": str(self.tenant_requests_per_minute),
            "ARCHIVER_LEASE": self.lease,
        }


DEFAULT_SEEDS = (4, 17)  # "many" (three workers, a folder), "mixed" (SeaweedFS); queueing
# tokens are the fixed tests' job in CI


def chaos_seeds(text: str | None = None) -> list[int]:
    """The seeds to run: CHAOS_SEEDS as a count (`50`: 0..49), a range (`100-199`,
    inclusive) or a list (`3,17,42`); the defaults without it."""
    text = os.environ.get("CHAOS_SEEDS") if text is None else text
    if not text or not text.strip():
        return list(DEFAULT_SEEDS)
    text = text.strip()
    if "," in text:
        return [int(part) for part in text.split(",") if part.strip()]
    if "-" in text:
        first, _, last = text.partition("-")
        return list(range(int(first), int(last) + 1))
    return list(range(int(text)))


def run_scenario(scenario: Scenario, request: pytest.FixtureRequest, folder: Path) -> None:
    """Start the workers at once, SIGKILL one at the seeded moment, wait for the others,
    resume; then: every survivor and the resume exit 0, `verify` exits 0, the archive is
    exact, and no output holds a traceback."""
    context = str(scenario)
    with (
        Emulator(scenario.emulator_config()) as emu,
        destination(request, scenario.store, folder, scenario.s3, scenario.seed) as (dest, proxy),
        Bench(emu, dest, folder, proxy, scenario.settings(), context=context) as bench,
    ):
        cpu = _children_cpu()
        args = backfill_args(START, scenario.end)
        clock = [time.monotonic()]
        workers = [bench.start(f"worker{i}", *args) for i in range(scenario.workers)]
        victim = workers[scenario.victim]
        deadline = time.monotonic() + PROCESS_TIMEOUT
        while victim.running() and bench.pages_served() < scenario.kill_after_pages:
            if time.monotonic() > deadline:
                break  # finish() below fails the test, naming the hung worker
            time.sleep(POLL)
        victim.kill()
        runs = [worker.finish(context) for worker in workers]
        clock.append(time.monotonic())
        fetched = [window for run in runs for window in run.archived()]
        for run in runs:
            if not run.killed:
                assert 0 == run.returncode, bench.fail(f"{run.name} did not exit 0", run)
        resumed = bench.run("resume", *args)
        assert 0 == resumed.returncode, bench.fail("the resume run did not exit 0", resumed)
        clock.append(time.monotonic())
        fetched += resumed.archived()
        bench.verify()
        clock.append(time.monotonic())
        bench.assert_exact(START, scenario.end)
        clock.append(time.monotonic())
        # "Rarely fetch the same window twice": the killed worker's windows in flight may be
        # done again, and a few whose leases ran out; not a large share of the range.
        planned = len(scenario.windows())
        allowed = planned * DUPLICATE_SHARE + scenario.concurrency
        repeated = sorted(w for w, n in Counter(fetched).items() if n > 1)
        assert len(fetched) <= allowed, (
            f"{context}\nduplicate work: {len(fetched)} windows archived for {planned} "
            f"(at most {allowed:.0f} allowed); archived more than once: {repeated[:10]}"
        )
        s3_faults = proxy.counts() if proxy is not None else {}
        s3_requests = proxy.requests() if proxy is not None else {}
        graph_faults = sorted({r.fault for r in emu.requests if r.fault})
    cpu = _children_cpu() - cpu
    phases = ", ".join(
        f"{name} {b - a:.1f}s"
        for name, a, b in zip(
            ("workers", "resume", "verify", "check"), clock, clock[1:], strict=False
        )
    )
    print(
        f"{context}\n  {phases} (commands' CPU {cpu:.1f}s); {len(fetched)} windows archived"
        f" for {len(set(fetched))}; Graph faults {graph_faults};"
        f" S3 faults {s3_faults} in requests {s3_requests}"
    )

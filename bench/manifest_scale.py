"""The manifest at scale: half a year of hourly windows, and a compaction of 100,000 records.

    .venv/bin/python bench/manifest_scale.py [--runs N] [--days D] [--store moto|local]
                                             [--rows-per-day R] [--records N]
                                             [--skip-backfill] [--skip-compaction]

Part 1, many small windows: `window = 1h`, D days (default 184, half a year) of both
kinds, i.e. D x 24 x 2 windows (8,832 by default) of a few rows each (R rows per day
and kind, default 24), with no rate cap, into S3 on a moto server (default; a fresh one
per run, started by this script in its own process on 127.0.0.1 and stopped after the
run) or into a local folder. The Graph emulator runs in a thread of this process, so
its request log can be read; every archiver command is a process of its own
(`python -m archiver ...`) and is timed whole, start-up included, as a user sees it.
Each run uses a fresh destination and measures:

- `backfill` of the range: wall time and exit code;
- exactness: the ids in the destination's Parquet objects, per kind, against the
  emulator's rows for the range (every id once, none missing, none extra);
- `status`: wall time (target <= 5 s) and exit code;
- the same `backfill` again: wall time (target <= 30 s), exit code, and the Graph
  requests it made (target 0), counted from the emulator's request log;
- the manifest left behind: the snapshot's size (gzip bytes) and the journal objects
  not yet compacted, after the first backfill and after the re-run.

Part 2, compaction at N records (default 100,000), in this process: N synthetic DONE
records (`synthetic_record`) put into a `Manifest` over a local-folder store; timed: the
first compaction (it writes the snapshot of all N), then `--runs` times one more record
through the journal and the compaction that folds it in (what every 256th record costs
at that size); the snapshot's gzip size; and the time a fresh `Manifest` takes to load it.

Figures are medians over `--runs` (default 3); exit codes and failures of every run
are listed. Progress goes to stderr, the report (Markdown) to stdout. A failing
archiver command does not stop the benchmark: its exit code and the lines of its
output that name the failure are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from archiver.emulator import Emulator, EmulatorConfig
from archiver.kinds import DEFAULT_KINDS, Kind

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
FIRST_DAY = date(2024, 1, 1)
CLEARED_PREFIXES = ("ARCHIVER_", "AWS_", "AZURE_")
MANIFEST = "_manifest/"
SNAPSHOT_KEY = MANIFEST + "snapshot.json.gz"
JOURNAL_PREFIX = MANIFEST + "journal/"
STATUS_TARGET = 5.0  # seconds
RERUN_TARGET = 30.0  # seconds
COMMAND_TIMEOUT = 1800.0  # seconds; a hung archiver is killed and reported
# Lines of an archiver's output that say what went wrong.
PROBLEM_MARKERS = (
    "Traceback",
    "ExceptionGroup",
    "Error",
    "keeps changing",
    '"level": "warning"',
    '"level": "error"',
    '"level": "critical"',
)
MOTO_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",  # moto's dummy credentials
    "AWS_DEFAULT_REGION": "us-east-1",
}


def say(message: str) -> None:
    """Progress on stderr; the report goes to stdout."""
    print(message, file=sys.stderr, flush=True)


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def child_env(**extra: str) -> dict[str, str]:
    """This environment without ARCHIVER_*/AWS_*/AZURE_* (as tests/conftest.py does)."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(CLEARED_PREFIXES)}
    for name in ("NO_PROXY", "no_proxy"):  # loopback never through a proxy
        env[name] = ",".join(filter(None, [env.get(name, ""), "127.0.0.1", "localhost"]))
    env.update(extra)
    return env


# ---------------------------------------------------------------------------------------
# Servers

_MOTO = """
import logging, signal, threading
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.WARNING)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
host, port = server.get_host_and_port()
print(f"http://{host}:{port}", flush=True)
done = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: done.set())
signal.signal(signal.SIGINT, lambda *_: done.set())
while not done.wait(1.0):
    pass
server.stop()
"""


@contextlib.contextmanager
def moto_process(scratch: Path) -> Iterator[str]:
    """A moto S3 server in its own process on 127.0.0.1 (so it does not share this
    process's GIL with the emulator); yields its endpoint, stops it at the end."""
    log = scratch / "moto.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [PY, "-c", _MOTO], env=child_env(), stdout=subprocess.PIPE, stderr=err, text=True
        )
    try:
        assert proc.stdout is not None
        endpoint = proc.stdout.readline().strip()
        if not endpoint.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"moto did not start: {log.read_text()[-2000:]}")
        yield endpoint
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


# ---------------------------------------------------------------------------------------
# Destinations: where the archiver writes, and how this script reads it back


class Destination:
    """A fresh destination; `url` is what ARCHIVER_DESTINATION is set to."""

    url: str
    env: dict[str, str]

    def list(self, prefix: str) -> list[tuple[str, int]]:
        """(key relative to the destination, size) of every object under `prefix`."""
        raise NotImplementedError

    def get(self, key: str) -> bytes:
        raise NotImplementedError

    def cleanup(self) -> None:
        """Free the space the destination takes."""


class LocalDestination(Destination):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)
        self.env = {}

    def list(self, prefix: str) -> list[tuple[str, int]]:
        base = self.root / prefix
        if not base.is_dir():
            return []
        return [
            (str(p.relative_to(self.root)), p.stat().st_size)
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        ]

    def get(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class S3Destination(Destination):
    def __init__(self, endpoint: str) -> None:
        import boto3

        self.client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=MOTO_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=MOTO_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=MOTO_CREDENTIALS["AWS_DEFAULT_REGION"],
        )
        self.bucket = f"bench-{uuid.uuid4().hex[:16]}"
        self.client.create_bucket(Bucket=self.bucket)
        self.prefix = "archive/"
        self.url = f"s3://{self.bucket}/archive"
        self.env = {"AWS_ENDPOINT_URL_S3": endpoint, **MOTO_CREDENTIALS}

    def list(self, prefix: str) -> list[tuple[str, int]]:
        found = []
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + prefix
        )
        for page in pages:
            for item in page.get("Contents", []):
                found.append((item["Key"][len(self.prefix) :], item["Size"]))
        return found

    def get(self, key: str) -> bytes:
        body = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"]
        return bytes(body.read())


def archived_ids(dest: Destination) -> dict[Kind, list[str]]:
    """Every id in every Parquet object of each kind (read concurrently)."""

    def ids_of(key: str) -> list[str]:
        table = pq.read_table(pa.BufferReader(dest.get(key)), columns=["id"])
        return [str(v) for v in table.column("id").to_pylist()]

    result: dict[Kind, list[str]] = {}
    with ThreadPoolExecutor(max_workers=16) as pool:
        for kind in DEFAULT_KINDS:
            keys = [k for k, _ in dest.list(kind.value + "/") if k.endswith(".parquet")]
            result[kind] = [i for ids in pool.map(ids_of, keys) for i in ids]
    return result


# ---------------------------------------------------------------------------------------
# The archiver as a process


@dataclass
class Command:
    """One finished archiver process."""

    code: int
    wall: float
    stdout: str
    stderr: str
    graph_requests: int

    def problems(self, limit: int = 12) -> list[str]:
        """The lines of its output that name a failure (the last `limit` of them)."""
        lines = [
            line.strip()
            for line in (self.stdout + "\n" + self.stderr).splitlines()
            if any(m in line for m in PROBLEM_MARKERS)
            and '"level": "info"' not in line
            and not line.startswith("archived ")
        ]
        if self.code != 0:  # the end of a traceback names the exception
            lines += [ln.strip() for ln in self.stderr.strip().splitlines()[-4:]]
        unique = list(dict.fromkeys(ln[:400] for ln in lines))  # once each, first seen first
        return unique[-limit:]

    def summary(self) -> str:
        """The backfill's closing line, if it printed one."""
        found = [ln for ln in self.stdout.splitlines() if ln.startswith("archived ")]
        return found[-1] if found else ""


def archiver_env(emu: Emulator, dest: Destination, **extra: str) -> dict[str, str]:
    """What a user sets to point the archiver at the emulator (as tests/test_backfill.py)."""
    return child_env(
        ARCHIVER_TENANT_ID=emu.config.tenant_id,
        ARCHIVER_CLIENT_ID=emu.config.client_id,
        ARCHIVER_CLIENT_SECRET=emu.config.client_secret,
        ARCHIVER_AUTHORITY_HOST=emu.url,
        ARCHIVER_GRAPH_URL=emu.url,
        ARCHIVER_CA_BUNDLE=str(emu.ca_file),
        ARCHIVER_DESTINATION=dest.url,
        ARCHIVER_WINDOW="1h",
        ARCHIVER_REQUESTS_PER_MINUTE="100000000",  # no cap: the emulator has none either
        ARCHIVER_TENANT_REQUESTS_PER_MINUTE="100000000",
        ARCHIVER_LOG_FORMAT="json",
        **dest.env,
        **extra,
    )


def run_archiver(emu: Emulator, env: dict[str, str], *args: str) -> Command:
    """`python -m archiver ARGS` as its own process, timed whole; Graph requests it made."""
    emu.clear_requests()
    began = time.perf_counter()
    try:
        done = subprocess.run(
            [PY, "-m", "archiver", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
        code, out, err = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as exc:
        code = -9
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        err += f"\n(killed after {COMMAND_TIMEOUT:.0f} s)"
    wall = time.perf_counter() - began
    graph = sum(1 for r in emu.requests if r.endpoint == "graph")
    return Command(code, wall, out, err, graph)


# ---------------------------------------------------------------------------------------
# Part 1: many small windows


@dataclass
class Exactness:
    expected: int
    archived: int
    missing: int
    duplicated: int  # ids archived more than once
    unexpected: int  # ids the source does not have

    @property
    def exact(self) -> bool:
        return self.expected == self.archived and not (
            self.missing or self.duplicated or self.unexpected
        )

    def describe(self) -> str:
        if self.exact:
            return f"exact ({self.archived:,} rows)"
        return (
            f"NOT exact: {self.archived:,} of {self.expected:,} rows, {self.missing:,} missing, "
            f"{self.duplicated:,} duplicated, {self.unexpected:,} unexpected"
        )


def check_exact(emu: Emulator, dest: Destination, start: datetime, end: datetime) -> Exactness:
    got = archived_ids(dest)
    expected = archived = missing = duplicated = unexpected = 0
    for kind in DEFAULT_KINDS:
        truth = {row["id"] for row in emu.rows(kind, start, end, version="v1.0")}
        ids = got[kind]
        counts = Counter(ids)
        expected += len(truth)
        archived += len(ids)
        missing += len(truth - counts.keys())
        duplicated += sum(1 for n in counts.values() if n > 1)
        unexpected += len(counts.keys() - truth)
    return Exactness(expected, archived, missing, duplicated, unexpected)


@dataclass
class ManifestShape:
    snapshot_bytes: int | None
    journal: int  # journal objects not yet compacted


def manifest_shape(dest: Destination) -> ManifestShape:
    snapshot = [size for key, size in dest.list(MANIFEST) if key == SNAPSHOT_KEY]
    journal = len(dest.list(JOURNAL_PREFIX))
    return ManifestShape(snapshot[0] if snapshot else None, journal)


@dataclass
class ScaleRun:
    backfill: Command
    exact: Exactness
    after_backfill: ManifestShape
    status: Command
    rerun: Command
    after_rerun: ManifestShape
    exact_after_rerun: Exactness | None = None  # checked only when the backfill was not exact
    status_json: dict[str, Any] = field(default_factory=dict)


def one_scale_run(
    emu: Emulator, dest: Destination, start: datetime, end: datetime, windows: int
) -> ScaleRun:
    env = archiver_env(emu, dest)
    args = ["backfill", "--start", start.date().isoformat(), "--end", end.date().isoformat()]
    say(f"  backfill of {windows:,} windows into {dest.url} ...")
    backfill = run_archiver(emu, env, *args)
    say(
        f"  backfill: exit {backfill.code} in {backfill.wall:.1f} s, "
        f"{backfill.graph_requests:,} Graph requests; {backfill.summary()}"
    )
    for line in backfill.problems(6):
        say(f"    | {line}")
    exact = check_exact(emu, dest, start, end)
    after_backfill = manifest_shape(dest)
    say(f"  {exact.describe()}; {after_backfill}")
    status = run_archiver(emu, env, "status", "--json")
    status_json: dict[str, Any] = {}
    with contextlib.suppress(ValueError):
        status_json = json.loads(status.stdout)
    say(f"  status: exit {status.code} in {status.wall:.2f} s")
    rerun = run_archiver(emu, env, *args)
    say(
        f"  re-run: exit {rerun.code} in {rerun.wall:.1f} s, "
        f"{rerun.graph_requests:,} Graph requests; {rerun.summary()}"
    )
    for line in rerun.problems(6):
        say(f"    | {line}")
    after_rerun = manifest_shape(dest)
    exact_after = None if exact.exact else check_exact(emu, dest, start, end)
    return ScaleRun(
        backfill, exact, after_backfill, status, rerun, after_rerun, exact_after, status_json
    )


def measure_scale(
    runs: int, days: int, store: str, rows_per_day: int, scratch: Path
) -> list[ScaleRun]:
    start = datetime.combine(FIRST_DAY, datetime.min.time(), tzinfo=UTC)
    end = start + timedelta(days=days)
    windows = days * 24 * len(Kind)
    results: list[ScaleRun] = []
    config = EmulatorConfig(rows_per_day=dict.fromkeys(Kind, rows_per_day))
    with Emulator(config) as emu:
        for i in range(runs):
            say(f"1. run {i + 1} of {runs}")
            # a moto server per run: one that kept the objects of earlier runs (moto keeps
            # them in memory) would slow the later runs down
            with contextlib.ExitStack() as stack:
                dest: Destination
                if store == "moto":
                    dest = S3Destination(stack.enter_context(moto_process(scratch)))
                else:
                    dest = LocalDestination(scratch / f"archive-{uuid.uuid4().hex[:8]}")
                    stack.callback(dest.cleanup)
                results.append(one_scale_run(emu, dest, start, end, windows))
    return results


# ---------------------------------------------------------------------------------------
# Part 2: compaction at many records

SYNTHETIC_BASE = datetime(2020, 1, 1, tzinfo=UTC)


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def synthetic_record(i: int) -> Any:
    """The i-th of many DONE records: hourly windows, the two kinds alternating, every
    field filled as a real backfill fills it (the fields of a journal entry).

    The one place that builds a record, so that it follows the manifest's Record type;
    it goes through the JSON form (`Record.from_json`), which outlives field types.
    """
    from archiver import __version__
    from archiver.manifest import Record

    kind = (Kind.PSTN, Kind.DIRECT_ROUTING)[i % 2].value
    start = SYNTHETIC_BASE + timedelta(hours=i // 2)
    digest = hashlib.sha256(f"{kind} {start}".encode()).digest()
    recorded = start + timedelta(days=400, seconds=i % 3600)
    return Record.from_json(
        {
            "kind": kind,
            "start": start.isoformat().replace("+00:00", "Z"),
            "end": (start + timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
            "state": "done",
            "recorded_at": iso(recorded),
            "key": f"{kind}/date={start.date().isoformat()}/{start:%Y%m%dT%H%M%SZ}.parquet",
            "rows": 40 + i % 17,
            "bytes": 9000 + i % 997,
            "sha256": digest.hex(),
            "checksum_sha256": base64.b64encode(digest).decode(),
            "pages": 1,
            "graph_version": "v1.0",
            "archiver_version": __version__,
            "started_at": iso(recorded - timedelta(seconds=1)),
        }
    )


@dataclass
class CompactionFigures:
    records: int
    fill_seconds: float
    first_seconds: float  # the compaction that writes the snapshot of all records
    compact_seconds: list[float]  # compactions folding one journal entry into them
    snapshot_bytes: int
    load_seconds: list[float]
    loaded_records: int


async def _measure_compaction(records: int, runs: int, root: Path) -> CompactionFigures:
    from archiver.manifest import Manifest
    from archiver.store import open_store

    manifest = Manifest(open_store(str(root)))
    await manifest.load()
    began = time.perf_counter()
    for i in range(records):
        record = synthetic_record(i)
        manifest.records[record.id] = record
    fill = time.perf_counter() - began
    began = time.perf_counter()
    await manifest.compact()
    first = time.perf_counter() - began
    compact: list[float] = []
    for k in range(runs):
        # what every COMPACT_AFTER-th record costs at this size: one more window through
        # the journal (below the threshold, so `record` does not compact by itself), then
        # the compaction that folds it into the snapshot
        await manifest.record(synthetic_record(records + k))
        began = time.perf_counter()
        await manifest.compact()
        compact.append(time.perf_counter() - began)
    loads: list[float] = []
    loaded = 0
    for _ in range(runs):
        fresh = Manifest(open_store(str(root)))
        began = time.perf_counter()
        await fresh.load()
        loads.append(time.perf_counter() - began)
        loaded = len(fresh.records)
    size = (root / SNAPSHOT_KEY).stat().st_size
    return CompactionFigures(records, fill, first, compact, size, loads, loaded)


def measure_compaction(records: int, runs: int, scratch: Path) -> CompactionFigures:
    root = scratch / "compaction"
    root.mkdir()
    try:
        return asyncio.run(_measure_compaction(records, runs, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# Report


def verdict(ok: bool) -> str:
    return "ok" if ok else "**MISSED**"


def report_scale(runs: list[ScaleRun], days: int, store: str, rows_per_day: int) -> list[str]:
    windows = days * 24 * len(Kind)
    label = "moto S3 (own process)" if store == "moto" else "local folder"
    lines = [
        f"### {windows:,} hourly windows ({days} days {chr(215)} 24 {chr(215)} 2 kinds, "
        f"{rows_per_day} rows per day and kind, no rate cap) into {label}",
        "",
        f"Median of {len(runs)} runs; every archiver command is its own process, timed whole.",
        "",
        "| measure | median | per run | target |",
        "|---|---|---|---|",
    ]

    def row(name: str, values: list[float], fmt: str, target: str = "") -> None:
        per_run = ", ".join(format(v, fmt) for v in values)
        lines.append(f"| {name} | {format(med(values), fmt)} | {per_run} | {target} |")

    backfill = [r.backfill.wall for r in runs]
    row("backfill wall (s)", backfill, ".1f")
    lines.append(
        "| backfill exit code | | " + ", ".join(str(r.backfill.code) for r in runs) + " | 0 |"
    )
    row("backfill Graph requests", [r.backfill.graph_requests for r in runs], ",.0f")
    exact = [r.exact.exact for r in runs]
    lines.append(
        f"| archive exact after backfill | {sum(exact)}/{len(runs)} | "
        + "; ".join(r.exact.describe() for r in runs)
        + " | all |"
    )
    status = [r.status.wall for r in runs]
    row(
        "`status` wall (s)",
        status,
        ".2f",
        f"<= {STATUS_TARGET:.0f} s: {verdict(med(status) <= STATUS_TARGET)}",
    )
    lines.append(
        "| `status` exit code | | " + ", ".join(str(r.status.code) for r in runs) + " | 0 |"
    )
    rerun = [r.rerun.wall for r in runs]
    row(
        "re-run wall (s)",
        rerun,
        ".1f",
        f"<= {RERUN_TARGET:.0f} s: {verdict(med(rerun) <= RERUN_TARGET)}",
    )
    lines.append("| re-run exit code | | " + ", ".join(str(r.rerun.code) for r in runs) + " | 0 |")
    requests = [r.rerun.graph_requests for r in runs]
    row("re-run Graph requests", requests, ",.0f", f"0: {verdict(max(requests) == 0)}")
    for name, attr in (("after backfill", "after_backfill"), ("after re-run", "after_rerun")):
        shapes: list[ManifestShape] = [getattr(r, attr) for r in runs]
        sizes = [s.snapshot_bytes for s in shapes]
        lines.append(
            f"| snapshot size {name} (bytes) | "
            + (f"{med([s for s in sizes if s is not None]):,.0f}" if any(sizes) else "none")
            + " | "
            + ", ".join("none" if s is None else f"{s:,}" for s in sizes)
            + " | |"
        )
        row(f"journal objects left {name}", [s.journal for s in shapes], ",.0f")
    lines.append("")
    for i, r in enumerate(runs, 1):
        notes = []
        for name, command in (("backfill", r.backfill), ("status", r.status), ("re-run", r.rerun)):
            if command.code != 0 or command.problems():
                notes.append(f"- run {i} {name}: exit {command.code}; {command.summary()}")
                notes += [f"    {line}" for line in command.problems()]
        if r.exact_after_rerun is not None:
            notes.append(f"- run {i} after the re-run: {r.exact_after_rerun.describe()}")
        if notes:
            lines.append(f"Run {i}, what went wrong (lines of the archiver's output):")
            lines.append("```")
            lines += notes
            lines.append("```")
    return lines


def report_compaction(figures: CompactionFigures) -> list[str]:
    runs = len(figures.compact_seconds)
    return [
        f"### Compaction of {figures.records:,} records (local-folder store, in process)",
        "",
        "| measure | median | per run |",
        "|---|---|---|",
        f"| first compaction: writes the snapshot of all records (s) | "
        f"{figures.first_seconds:.2f} | |",
        f"| one compaction folding 1 journal entry into them (s) | "
        f"{med(figures.compact_seconds):.2f} | "
        + ", ".join(f"{v:.2f}" for v in figures.compact_seconds)
        + " |",
        f"| snapshot size (gzip bytes) | {figures.snapshot_bytes:,} | |",
        f"| load of that manifest, {figures.records + runs:,} records (s) | "
        f"{med(figures.load_seconds):.2f} | "
        + ", ".join(f"{v:.2f}" for v in figures.load_seconds)
        + f" ({figures.loaded_records:,} records loaded) |",
        f"| building the records in memory (s) | {figures.fill_seconds:.2f} | |",
        "",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (default 3)")
    parser.add_argument("--days", type=int, default=184, help="days of hourly windows")
    parser.add_argument("--store", choices=["moto", "local"], default="moto")
    parser.add_argument("--rows-per-day", type=int, default=24, help="per kind (default 24)")
    parser.add_argument("--records", type=int, default=100_000, help="for the compaction")
    parser.add_argument("--skip-backfill", action="store_true", help="only the compaction")
    parser.add_argument("--skip-compaction", action="store_true", help="only the backfills")
    args = parser.parse_args()
    began = time.perf_counter()
    load_before = os.getloadavg()[0]
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="archiver-manifest-scale-") as tmp:
        scratch = Path(tmp)
        if not args.skip_backfill:
            runs = measure_scale(args.runs, args.days, args.store, args.rows_per_day, scratch)
            lines += report_scale(runs, args.days, args.store, args.rows_per_day)
        if not args.skip_compaction:
            say(f"2. compaction of {args.records:,} records")
            figures = measure_compaction(args.records, args.runs, scratch)
            say(
                f"  first compaction {figures.first_seconds:.2f} s, then "
                f"{med(figures.compact_seconds):.2f} s, snapshot "
                f"{figures.snapshot_bytes:,} bytes, load {med(figures.load_seconds):.2f} s"
            )
            lines += report_compaction(figures)
    header = [
        f"Measured by `bench/manifest_scale.py` on {os.cpu_count()} cores (load average "
        f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after), "
        f"Python {sys.version.split()[0]}, {datetime.now(UTC):%Y-%m-%d}.",
        "",
    ]
    lines.append(f"(whole benchmark: {(time.perf_counter() - began) / 60:.1f} min)")
    print("\n".join(header + lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

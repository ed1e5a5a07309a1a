"""Performance of the archiver: CPU per row, end-to-end speed, concurrency, memory, hotspots.

    .venv/bin/python bench/perf.py [--quick] [--runs N] [--no-profile]
    .venv/bin/python bench/perf.py --whole [--runs N] [--stages] [--dlt-python PY] ...

`--whole` (bench/whole.py) measures whole processes instead: the archiver, the typical
script and, where installed, dlt and the Graph SDK, on beta rows of full width, each as
its own process (wall, CPU, peak RSS), interleaved, in one run; see bench/whole.py.

Every Graph server is `python -m archiver.emulator` in its own process (so it does not
compete with the archiver for the GIL), listening on 127.0.0.1; the moto S3 server runs
in a thread of this process; each archiver run is a subprocess of its own. Every figure
is the median of several runs (the table says how many). Measured:

1. CPU per row, page bytes to typed Parquet, in this process: real emulator pages
   (fetched once with a plain client), then the archiver's own path (`graph.parse_page`,
   `archive.select_rows` -> `schema.rows_to_batch` + window filter, `parquet.WindowWriter`
   write/close incl. SHA-256, then `reconcile.reconcile`, the dedup by id) against the
   floor on the same bytes:
   `orjson.loads` + `pyarrow.parquet.write_table` (zstd) of the already-typed table.
2. End to end without a cap or latency: rows/s of a backfill of both kinds into a local
   folder and into moto S3. The archiver runs in a subprocess that times
   `archiver.cli.main(["backfill", ...])` (as tests/test_backfill.py drives it), so
   interpreter start-up and imports are not counted; the typical script likewise.
3. End to end with 100 ms latency per page: wall time of one fixed backfill at
   concurrency 1, 2, 4, 8, 16 (timed inside the subprocess, as in 2).
4. Peak RSS (`os.wait4` rusage of the child) and rows/s of `python -m archiver backfill`
   for one window of 1,000,000 rows and for ten windows of 100,000 rows (one kind);
   here the whole process is timed, start-up included, for both peers.
5. The peer: `bench/typical_script.py` (requests, nextLink loop, rows in a list,
   `pa.Table.from_pylist`, one file per window), on the same emulator and sizes.

Then hotspots: pyinstrument over item 1's archiver path (in process) and py-spy over
one item-2 local backfill (all threads of the child; py-spy is optional).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import re
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
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
TYPICAL = ROOT / "bench" / "typical_script.py"
FIRST_DAY = date(2024, 3, 4)
CHILD_FLAG = "--child-backfill"
RESULT_PREFIX = "PERF-RESULT "
CLEARED_PREFIXES = ("ARCHIVER_", "AWS_", "AZURE_")
LATENCY = 0.1
# The emulator keeps the texts of the rows it served, and every window is fetched once
# before timing: generating a row costs it ~7 µs of the same two cores the peers use.
EMULATOR_CACHE_ROWS = 3_000_000
X = "\u00d7"  # the multiplication sign, for the table


@dataclass(frozen=True)
class Sizes:
    """How big each measurement is; --quick shrinks everything."""

    runs: int  # runs per end-to-end figure
    mem_runs: int  # runs per memory figure (item 4: the slowest, and RSS hardly varies)
    cpu_runs: int  # runs per CPU-per-row figure
    cpu_pages: int  # pages per kind for item 1 (1,000 rows each)
    e2e_rows_per_day: int
    e2e_days: int
    lat_rows_per_day: int
    lat_days: int
    concurrencies: tuple[int, ...]
    big_rows: int  # one window of this many rows
    small_rows: int  # per window, for `small_windows` windows
    small_windows: int


FULL = Sizes(3, 2, 5, 50, 50_000, 5, 5_000, 8, (1, 2, 4, 8, 16), 1_000_000, 100_000, 10)
QUICK = Sizes(1, 1, 2, 5, 5_000, 2, 1_000, 4, (1, 4, 16), 50_000, 5_000, 10)


def say(message: str) -> None:
    """Progress on stderr; the results go to stdout."""
    print(message, file=sys.stderr, flush=True)


def day_text(day: date) -> str:
    return day.isoformat()


def instant(day: date) -> str:
    return f"{day.isoformat()}T00:00:00Z"


def child_env(**extra: str) -> dict[str, str]:
    """This environment without ARCHIVER_*/AWS_*/AZURE_* (as tests/conftest.py does)."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(CLEARED_PREFIXES)}
    for name in ("NO_PROXY", "no_proxy"):  # loopback never through a proxy
        env[name] = ",".join(filter(None, [env.get(name, ""), "127.0.0.1", "localhost"]))
    env.update(extra)
    return env


# ---------------------------------------------------------------------------------------
# Processes


class EmulatorProcess:
    """`python -m archiver.emulator` in its own process, on 127.0.0.1, until stop()."""

    def __init__(self, scratch: Path, *, pstn: int, direct_routing: int, latency: float = 0.0):
        self.log = scratch / f"emulator-{uuid.uuid4().hex[:8]}.log"
        cmd = [
            PY, "-m", "archiver.emulator",
            "--pstn-rows-per-day", str(pstn),
            "--direct-routing-rows-per-day", str(direct_routing),
            "--latency", str(latency),
            "--cache-rows", str(EMULATOR_CACHE_ROWS),
        ]  # fmt: skip
        with self.log.open("w") as err:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=err, text=True
            )
        info: dict[str, str] = {}
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            text = line.strip()
            if text.startswith("Graph emulator listening on"):
                info["url"] = text.split()[-1]
            elif ":" in text and not text.startswith(("export", "Point")):
                key, _, value = text.partition(":")
                info[key.strip()] = value.strip()
            if text.startswith("Ctrl-C"):
                break
        if "url" not in info:
            self.stop()
            raise RuntimeError(f"the emulator did not start: {self.log.read_text()[-2000:]}")
        self.url = info["url"]
        self.ca_file = info["CA file"]
        self.tenant_id = info["tenant id"]
        self.client_id = info["client id"]
        self.client_secret = info["client secret"]

    def cpu_seconds(self) -> float:
        """User + system CPU the emulator process has used so far."""
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextmanager
def emulator(scratch: Path, **kwargs: Any) -> Iterator[EmulatorProcess]:
    emu = EmulatorProcess(scratch, **kwargs)
    try:
        yield emu
    finally:
        emu.stop()


@dataclass
class Child:
    """One finished child process, with its own resource usage."""

    returncode: int
    wall: float  # seconds, spawn to exit
    cpu: float  # user + system seconds of the child
    maxrss: int  # bytes
    stdout: str
    stderr: str


# Linux keeps, as a child's ru_maxrss, the high-water mark of the memory image it was
# forked from (exec does not reset it): a child of this process, which holds pages and
# pyarrow, would never report less than this process. So each measured command is
# spawned by a tiny launcher process, whose own image stays small, and the launcher
# reports wait4's rusage of that one command.
_LAUNCHER = """
import json, os, sys, time
began = time.perf_counter()
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - began
with open(sys.argv[1], "w") as report:
    json.dump({"code": os.waitstatus_to_exitcode(status), "wall": wall,
               "cpu": usage.ru_utime + usage.ru_stime, "maxrss": usage.ru_maxrss * 1024}, report)
"""


def run_child(cmd: list[str], env: dict[str, str], scratch: Path, cwd: Path = ROOT) -> Child:
    """Run `cmd` (absolute program path) through the launcher; its own wall, CPU, peak RSS.

    `python -m` puts `cwd` first on sys.path: a copy of the package is measured from its
    own folder (PYTHONPATH alone would lose to the archiver/ in ROOT)."""
    tag = uuid.uuid4().hex[:8]
    out_path, err_path = scratch / f"{tag}.out", scratch / f"{tag}.err"
    usage_path = scratch / f"{tag}.usage"
    with out_path.open("w") as out, err_path.open("w") as err:
        subprocess.run(
            [PY, "-c", _LAUNCHER, str(usage_path), *cmd],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=err,
            check=False,
        )
    usage = json.loads(usage_path.read_text())
    child = Child(
        usage["code"],
        usage["wall"],
        usage["cpu"],
        usage["maxrss"],
        out_path.read_text(),
        err_path.read_text(),
    )
    for path in (out_path, err_path, usage_path):
        path.unlink()
    if child.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd[:6])}... exited {child.returncode}:\n"
            f"{child.stdout[-1500:]}\n{child.stderr[-3000:]}"
        )
    return child


def archiver_env(emu: EmulatorProcess, destination: str | Path, **extra: str) -> dict[str, str]:
    """What a user sets to point the archiver at the emulator (as tests/test_backfill.py)."""
    return child_env(
        ARCHIVER_TENANT_ID=emu.tenant_id,
        ARCHIVER_CLIENT_ID=emu.client_id,
        ARCHIVER_CLIENT_SECRET=emu.client_secret,
        ARCHIVER_AUTHORITY_HOST=emu.url,
        ARCHIVER_GRAPH_URL=emu.url,
        ARCHIVER_CA_BUNDLE=emu.ca_file,
        ARCHIVER_DESTINATION=str(destination),
        ARCHIVER_REQUESTS_PER_MINUTE="10000000",  # no cap: the emulator has none either
        ARCHIVER_TENANT_REQUESTS_PER_MINUTE="10000000",
        ARCHIVER_LOG_FORMAT="json",
        **extra,
    )


def backfill_args(days: int, kinds: list[str]) -> list[str]:
    end = FIRST_DAY + timedelta(days=days)
    args = ["backfill", "--start", day_text(FIRST_DAY), "--end", day_text(end)]
    for kind in kinds:
        args += ["--kind", kind]
    return args


_ARCHIVED = re.compile(r"archived (\d+) windows, ([\d,]+) rows")


@dataclass
class Run:
    """One end-to-end run of either peer."""

    rows: int
    seconds: float  # as the item defines it (inside the process, or whole process)
    cpu: float  # the peer's process, user + system
    maxrss: int
    emulator_cpu: float
    extra: dict[str, Any] = field(default_factory=dict)


def run_archiver(
    emu: EmulatorProcess,
    destination: str | Path,
    days: int,
    kinds: list[str],
    scratch: Path,
    *,
    inside: bool = True,
    profile: Path | None = None,
    **extra: str,
) -> Run:
    """One archiver backfill in a subprocess; `inside`: time main() in it, not the process."""
    args = backfill_args(days, kinds)
    cmd = [PY, str(Path(__file__).resolve()), CHILD_FLAG, *args] if inside else [
        PY, "-m", "archiver", *args,
    ]  # fmt: skip
    if profile is not None:
        spy = Path(PY).with_name("py-spy")
        cmd = [str(spy), "record", "-r", "200", "--function", "--format", "raw",
               "-o", str(profile), "--", *cmd]  # fmt: skip
    emu_cpu = emu.cpu_seconds()
    child = run_child(cmd, archiver_env(emu, destination, **extra), scratch)
    emu_cpu = emu.cpu_seconds() - emu_cpu
    match = _ARCHIVED.search(child.stdout)
    if match is None:
        raise RuntimeError(f"unexpected archiver output: {child.stdout[-500:]}")
    rows = int(match.group(2).replace(",", ""))
    seconds = child.wall
    if inside:
        line = [ln for ln in child.stdout.splitlines() if ln.startswith(RESULT_PREFIX)][-1]
        seconds = json.loads(line.removeprefix(RESULT_PREFIX))["seconds"]
    return Run(rows, seconds, child.cpu, child.maxrss, emu_cpu)


def run_typical(
    emu: EmulatorProcess, out: Path, days: int, kinds: list[str], scratch: Path, *, inside: bool
) -> Run:
    """One run of the typical script; `inside`: its own timer (after imports), else the process."""
    cmd = [
        PY, str(TYPICAL), "--url", emu.url, "--ca-file", emu.ca_file,
        "--tenant", emu.tenant_id, "--client-id", emu.client_id,
        "--client-secret", emu.client_secret,
        "--start", day_text(FIRST_DAY), "--end", day_text(FIRST_DAY + timedelta(days=days)),
        "--out", str(out),
    ]  # fmt: skip
    for kind in kinds:
        cmd += ["--kind", kind]
    emu_cpu = emu.cpu_seconds()
    child = run_child(cmd, child_env(), scratch)
    emu_cpu = emu.cpu_seconds() - emu_cpu
    report = json.loads(child.stdout.strip().splitlines()[-1])
    seconds = report["seconds"] if inside else child.wall
    return Run(report["rows"], seconds, child.cpu, child.maxrss, emu_cpu, report)


def child_backfill(argv: list[str]) -> int:
    """In the child: `archiver.cli.main(["backfill", ...])`, timed after the imports."""
    from archiver.cli import main

    began = time.perf_counter()
    code = main(argv)
    seconds = time.perf_counter() - began
    print(RESULT_PREFIX + json.dumps({"seconds": seconds, "code": code}), flush=True)
    return code


# ---------------------------------------------------------------------------------------
# A plain client, for item 1's pages and for warming the emulator's day cache


class PlainClient:
    """requests, a client-credentials token, nextLink followed: the bytes of each page."""

    def __init__(self, emu: EmulatorProcess) -> None:
        import requests

        self.emu = emu
        self.session = requests.Session()
        answer = self.session.post(
            f"{emu.url}/{emu.tenant_id}/oauth2/v2.0/token",
            data={
                "grant_type": "client_credentials",
                "client_id": emu.client_id,
                "client_secret": emu.client_secret,
                "scope": f"{emu.url}/.default",
            },
            verify=emu.ca_file,  # per request: REQUESTS_CA_BUNDLE beats session.verify
            timeout=60,
        )
        answer.raise_for_status()
        self.headers = {"Authorization": f"Bearer {answer.json()['access_token']}"}

    def url(self, kind: str, day: date, version: str = "v1.0") -> str:
        function = "getPstnCalls" if kind == "pstn" else "getDirectRoutingCalls"
        return (
            f"{self.emu.url}/{version}/communications/callRecords/{function}"
            f"(fromDateTime={instant(day)},toDateTime={instant(day + timedelta(days=1))})"
        )

    def get(self, url: str) -> bytes:
        answer = self.session.get(url, headers=self.headers, verify=self.emu.ca_file, timeout=120)
        answer.raise_for_status()
        return answer.content

    def pages(self, kind: str, day: date, version: str, limit: int) -> list[bytes]:
        """Up to `limit` pages of one day's window, following nextLink verbatim."""
        import orjson

        url: str | None = self.url(kind, day, version)
        pages: list[bytes] = []
        while url and len(pages) < limit:
            body = self.get(url)
            pages.append(body)
            url = orjson.loads(body).get("@odata.nextLink")
        return pages

    def warm(self, kinds: list[str], days: int) -> None:
        """Every page of every window: the emulator builds each day's index and keeps the
        texts of the rows (EMULATOR_CACHE_ROWS), so no peer pays for generating them."""
        import orjson

        for kind in kinds:
            for offset in range(days):
                url: str | None = self.url(kind, FIRST_DAY + timedelta(days=offset))
                while url:
                    url = orjson.loads(self.get(url)).get("@odata.nextLink")


# ---------------------------------------------------------------------------------------
# Item 1: CPU per row


def _metadata(kind: str) -> dict[str, str]:
    return {
        "version": "bench",
        "kind": kind,
        "window_start": instant(FIRST_DAY),
        "window_end": instant(FIRST_DAY + timedelta(days=1)),
        "graph_url": "https://127.0.0.1",
        "graph_version": "v1.0",
        "fetched_at": "2024-03-05T00:00:00Z",
    }


def archiver_path(kind_name: str, pages: list[bytes], path: Path) -> dict[str, float]:
    """The archiver's own path over the pages of one window; CPU seconds per stage."""
    from archiver.archive import select_rows
    from archiver.graph.client import parse_page
    from archiver.kinds import Kind
    from archiver.reconcile import Ids, reconcile
    from archiver.schema import schema_for
    from archiver.sinks.parquet import WindowWriter
    from archiver.windows import Window

    kind = Kind(kind_name)
    start = datetime.combine(FIRST_DAY, datetime.min.time(), UTC)
    window = Window(kind, start, start + timedelta(days=1))
    clock = time.process_time
    began, wall = clock(), time.perf_counter()
    parse = select = write = 0.0
    writer = WindowWriter(path, schema_for(kind), _metadata(kind_name))
    ids = Ids()
    for body in pages:
        t0 = clock()
        rows = parse_page(body)["value"]  # as graph/client.py parses a page
        t1 = clock()
        batch = select_rows(kind, rows, window)
        t2 = clock()
        writer.write(batch)
        ids.add(batch)
        t3 = clock()
        parse, select, write = parse + t1 - t0, select + t2 - t1, write + t3 - t2
    t3 = clock()
    fetched = writer.close()
    t4 = clock()
    final = path.with_suffix(".final")
    reconcile(fetched, ids.column(), None, final, schema_for(kind), _metadata(kind_name))
    write += t4 - t3
    return {
        "cpu": clock() - began,
        "wall": time.perf_counter() - wall,
        "parse_page": parse,
        "select_rows": select,
        "write+close": write,
        "reconcile": clock() - t4,
    }


def rows_to_batch_only(kind_name: str, pages: list[bytes]) -> float:
    """CPU seconds of `schema.rows_to_batch` alone, page by page (parsing not counted).

    Pages are parsed one at a time, never all kept: thousands of live dicts would make
    every garbage collection slower and bias the figures.
    """
    import json as stdjson

    from archiver.kinds import Kind
    from archiver.schema import rows_to_batch

    kind = Kind(kind_name)
    spent = 0.0
    for body in pages:
        rows = stdjson.loads(body)["value"]
        began = time.process_time()
        rows_to_batch(kind, rows)
        spent += time.process_time() - began
    return spent


def floor_path(pages: list[bytes], table: Any, path: Path) -> dict[str, float]:
    """orjson.loads of the same bytes + write_table of the already-typed table (zstd)."""
    import orjson
    import pyarrow.parquet as pq

    from archiver.sinks.parquet import COMPRESSION, ROW_GROUP_ROWS

    clock = time.process_time
    began, wall = clock(), time.perf_counter()
    for body in pages:
        orjson.loads(body)
    t1 = clock()
    pq.write_table(table, path, compression=COMPRESSION, row_group_size=ROW_GROUP_ROWS)
    t2 = clock()
    return {
        "cpu": t2 - began,
        "wall": time.perf_counter() - wall,
        "orjson.loads": t1 - began,
        "write_table": t2 - t1,
    }


@dataclass
class CpuFigure:
    kind: str
    version: str
    rows: int
    pages: int
    archiver: list[dict[str, float]]
    floor: list[dict[str, float]]
    to_batch: list[float]

    def median(self, runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in runs) / self.rows * 1e6  # µs per row


def measure_cpu(sizes: Sizes, scratch: Path) -> tuple[list[CpuFigure], dict[str, list[bytes]]]:
    """Item 1: fetch real pages once, then time both paths on the same bytes."""
    import orjson
    import pyarrow.parquet as pq

    per_day = sizes.cpu_pages * 1000
    figures: list[CpuFigure] = []
    page_sets: dict[str, list[bytes]] = {}
    with emulator(scratch, pstn=per_day, direct_routing=per_day) as emu:
        client = PlainClient(emu)
        for version in ("v1.0", "beta"):
            for kind in ("pstn", "direct_routing"):
                # all pages of one day's window (PSTN: +1 page with the row at the end)
                page_sets[f"{kind} {version}"] = client.pages(kind, FIRST_DAY, version, 10_000)
    for name, pages in page_sets.items():
        kind, version = name.split()
        rows = sum(len(orjson.loads(body)["value"]) for body in pages)
        out = scratch / "cpu.parquet"
        archiver_path(kind, pages, out)  # warm-up, and the typed table for the floor
        table = pq.read_table(out)
        figure = CpuFigure(kind, version, rows, len(pages), [], [], [])
        for _ in range(sizes.cpu_runs):
            gc.collect()
            figure.archiver.append(archiver_path(kind, pages, out))
            gc.collect()
            figure.floor.append(floor_path(pages, table, scratch / "floor.parquet"))
            gc.collect()
            figure.to_batch.append(rows_to_batch_only(kind, pages))
        figures.append(figure)
        say(
            f"  1. {name}: archiver {figure.median(figure.archiver, 'cpu'):.2f} µs/row, "
            f"floor {figure.median(figure.floor, 'cpu'):.2f} µs/row"
        )
    return figures, page_sets


# ---------------------------------------------------------------------------------------
# Profiles


def pyinstrument_hotspots(page_sets: dict[str, list[bytes]], scratch: Path) -> list[str]:
    """pyinstrument over the archiver path of item 1 (v1.0 pages of both kinds, twice)."""
    try:
        from pyinstrument import Profiler
    except ImportError:
        return ["(pyinstrument not installed)"]
    profiler = Profiler(interval=0.0005)
    profiler.start()
    for _ in range(2):
        for name, pages in page_sets.items():
            if name.endswith("v1.0"):
                archiver_path(name.split()[0], pages, scratch / "profile.parquet")
    session = profiler.stop()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()

    def label(frame: Any) -> str:
        return shorten(f"{frame.function} ({frame.file_path}:{frame.line_no})")

    def walk(frame: Any, stack: frozenset[str]) -> None:
        name = label(frame)
        real = [c for c in frame.children if not c.is_synthetic]
        own[name] += frame.time - sum(c.time for c in real)
        if name not in stack:
            inclusive[name] += frame.time
        for child in real:
            walk(child, stack | {name})

    root = session.root_frame()
    if root is None:
        return ["(no samples)"]
    walk(root, frozenset())
    return hotspot_lines(own, inclusive, root.time)


# Leaf functions where a thread of the archiver waits rather than works (a blocking call
# in C shows as its Python caller): the event loop's select, idle worker threads.
IDLE_LEAVES = frozenset(
    {
        "Condition.wait",  # queue.Queue.get of anyio's idle worker threads
        "_worker",  # concurrent.futures' idle threads (SimpleQueue.get)
        "EpollSelector.select",  # the event loop waiting for I/O
        "Event.wait",
        "Thread._wait_for_tstate_lock",
        "WorkerThread.run",
    }
)


def pyspy_hotspots(raw: Path) -> list[str]:
    """Self and inclusive time per function from py-spy's raw (collapsed) output.

    Start-up (any stack inside an import) and waiting (IDLE_LEAVES) are counted apart;
    the percentages are of the remaining, working samples of all threads.
    """
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = imports = idle = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [shorten(f) for f in stack.split(";") if f]
        if not frames:
            continue
        if any(f.startswith("_find_and_load") for f in frames):
            imports += count
            continue
        if frames[-1].split(" (")[0] in IDLE_LEAVES:
            idle += count
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    every = max(total + imports + idle, 1)
    head = (
        f"samples of all threads: {every:,}; start-up imports {100 * imports / every:.0f} %,"
        f" waiting {100 * idle / every:.0f} %, working {100 * total / every:.0f} %"
        " (percentages below: of the working samples)"
    )
    return [head, *hotspot_lines(own, inclusive, total)]


def shorten(frame: str) -> str:
    """`func (/long/path/site-packages/pkg/mod.py:12)` -> `func (pkg/mod.py:12)`."""
    match = re.match(r"^(.*) \((.*)\)$", frame)
    if not match:
        return frame
    function, where = match.groups()
    where = re.sub(r"^.*/(site-packages|lib/python3\.\d+)/", "", where)
    where = where.replace(str(ROOT) + "/", "")
    return f"{function} ({where})"


def hotspot_lines(own: Counter[str], inclusive: Counter[str], total: float) -> list[str]:
    if not total:
        return ["(no samples)"]
    lines = ["self time (where the CPU is spent):"]
    for name, value in own.most_common(14):
        lines.append(f"  {100 * value / total:5.1f} %  {name}")
    lines.append("inclusive time (archiver functions and what they call):")
    shown = 0
    for name, value in inclusive.most_common():
        if "archiver/" in name or name.startswith(("select_rows", "rows_to_batch")):
            lines.append(f"  {100 * value / total:5.1f} %  {name}")
            shown += 1
            if shown == 14:
                break
    return lines


# ---------------------------------------------------------------------------------------
# Items 2 to 5


def med(values: list[float]) -> float:
    return statistics.median(values)


def rate(runs: list[Run]) -> float:
    return med([r.rows / r.seconds for r in runs])


def make_bucket(endpoint: str) -> str:
    import boto3

    client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # noqa: S106 - moto's dummy credentials
        region_name="us-east-1",
    )
    bucket = f"bench-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=bucket)
    return bucket


@contextmanager
def moto_server() -> Iterator[str]:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def fresh_dir(scratch: Path) -> Path:
    return scratch / f"out-{uuid.uuid4().hex[:8]}"


def measure_end_to_end(sizes: Sizes, scratch: Path, profile: bool) -> dict[str, Any]:
    """Items 2 and 5: no cap, no latency, both kinds, local and S3, and the typical script."""
    kinds = ["pstn", "direct_routing"]
    per_day, days = sizes.e2e_rows_per_day, sizes.e2e_days
    result: dict[str, Any] = {"local": [], "s3": [], "typical": [], "profile": None}
    with emulator(scratch, pstn=per_day, direct_routing=per_day) as emu, moto_server() as s3:
        PlainClient(emu).warm(kinds, days + 1)
        s3_env = {
            "AWS_ENDPOINT_URL_S3": s3,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        for i in range(sizes.runs):
            out = fresh_dir(scratch)
            result["local"].append(run_archiver(emu, out, days, kinds, scratch))
            shutil.rmtree(out, ignore_errors=True)
            dest = f"s3://{make_bucket(s3)}/archive"
            result["s3"].append(run_archiver(emu, dest, days, kinds, scratch, **s3_env))
            out = fresh_dir(scratch)
            result["typical"].append(run_typical(emu, out, days, kinds, scratch, inside=True))
            shutil.rmtree(out, ignore_errors=True)
            last = {name: result[name][-1] for name in ("local", "s3", "typical")}
            say(
                f"  2. run {i + 1}: "
                + ", ".join(f"{k} {r.rows / r.seconds:,.0f} rows/s" for k, r in last.items())
            )
        if profile:
            spy = Path(PY).with_name("py-spy")
            if spy.exists():
                raw = scratch / "pyspy.raw"
                out = fresh_dir(scratch)
                try:
                    run_archiver(emu, out, days, kinds, scratch, profile=raw)
                    result["profile"] = pyspy_hotspots(raw)
                except (RuntimeError, OSError) as exc:
                    result["profile"] = [f"(py-spy failed: {exc})"]
                shutil.rmtree(out, ignore_errors=True)
            else:
                result["profile"] = ["(py-spy not installed: .venv/bin/pip install py-spy)"]
    return result


def measure_latency(sizes: Sizes, scratch: Path) -> dict[str, Any]:
    """Item 3: 100 ms per page, no cap; one fixed backfill at each concurrency."""
    kinds = ["pstn", "direct_routing"]
    per_day, days = sizes.lat_rows_per_day, sizes.lat_days
    by_concurrency: dict[int, list[Run]] = {c: [] for c in sizes.concurrencies}
    typical: list[Run] = []
    with emulator(scratch, pstn=per_day, direct_routing=per_day, latency=LATENCY) as emu:
        PlainClient(emu).warm(kinds, days + 1)
        for _ in range(sizes.runs):
            for c in sizes.concurrencies:
                out = fresh_dir(scratch)
                run = run_archiver(emu, out, days, kinds, scratch, ARCHIVER_CONCURRENCY=str(c))
                by_concurrency[c].append(run)
                shutil.rmtree(out, ignore_errors=True)
            out = fresh_dir(scratch)
            typical.append(run_typical(emu, out, days, kinds, scratch, inside=True))
            typical[-1].extra["out"] = None
            shutil.rmtree(out, ignore_errors=True)
        say(
            "  3. "
            + ", ".join(
                f"c={c}: {med([r.seconds for r in v]):.2f} s" for c, v in by_concurrency.items()
            )
            + f", typical {med([r.seconds for r in typical]):.2f} s"
        )
    return {
        "by_concurrency": by_concurrency,
        "typical": typical,
        "pages": typical[0].extra["pages"],
    }


def measure_memory(sizes: Sizes, scratch: Path) -> dict[str, Any]:
    """Item 4 (and 5): peak RSS and rows/s, whole process, one kind (PSTN)."""
    kinds = ["pstn"]
    result: dict[str, Any] = {}
    cases = [
        ("big", sizes.big_rows, 1, {}),
        ("small", sizes.small_rows, sizes.small_windows, {}),
        ("small-c1", sizes.small_rows, sizes.small_windows, {"ARCHIVER_CONCURRENCY": "1"}),
    ]
    for name, per_day, days, extra in cases:
        archiver_runs: list[Run] = []
        typical_runs: list[Run] = []
        with emulator(scratch, pstn=per_day, direct_routing=0) as emu:
            PlainClient(emu).warm(kinds, days + 1)
            for _ in range(sizes.mem_runs):
                out = fresh_dir(scratch)
                archiver_runs.append(
                    run_archiver(emu, out, days, kinds, scratch, inside=False, **extra)
                )
                shutil.rmtree(out, ignore_errors=True)
                if name == "small-c1":
                    continue  # the peer does not change with the archiver's concurrency
                out = fresh_dir(scratch)
                typical_runs.append(run_typical(emu, out, days, kinds, scratch, inside=False))
                shutil.rmtree(out, ignore_errors=True)
        result[name] = {"archiver": archiver_runs, "typical": typical_runs}
        mb = med([r.maxrss for r in archiver_runs]) / 2**20
        say(f"  4. {name}: archiver peak {mb:,.0f} MB, {rate(archiver_runs):,.0f} rows/s")
    # what the processes weigh before any row: imports only
    result["baseline_archiver"] = run_child(
        [PY, "-c", "import archiver.cli, archiver.store, boto3, msal"], child_env(), scratch
    ).maxrss
    result["baseline_typical"] = run_child(
        [PY, "-c", "import requests, pyarrow, pyarrow.parquet"], child_env(), scratch
    ).maxrss
    return result


# ---------------------------------------------------------------------------------------
# Report


def fmt_rate(value: float) -> str:
    return f"{value:,.0f} rows/s"


def fmt_mb(value: float) -> str:
    return f"{value / 2**20:,.0f} MB"


_BURN = """
import time
began = time.perf_counter()
total = 0
for i in range(15_000_000):
    total += i
print(time.process_time(), time.perf_counter() - began)
"""


def parallel_capacity() -> float:
    """Cores' worth of CPU the machine really gives: one busy loop per core, all at once.

    A VM may show 2 vCPUs that together get about one core of host time; then every
    process of a run (archiver, emulator, moto) shares that one core.
    """
    count = os.cpu_count() or 1
    procs = [
        subprocess.Popen([PY, "-c", _BURN], stdout=subprocess.PIPE, text=True) for _ in range(count)
    ]
    cpu = wall = 0.0
    for proc in procs:
        spent, took = map(float, proc.communicate()[0].split())
        cpu, wall = cpu + spent, max(wall, took)
    return cpu / wall


def report(
    sizes: Sizes,
    quick: bool,
    capacity: float,
    load: tuple[float, float],
    cpu: list[CpuFigure],
    e2e: dict[str, Any],
    lat: dict[str, Any],
    mem: dict[str, Any],
    hot_cpu: list[str] | None,
    elapsed: float,
) -> str:
    lines: list[str] = []
    add = lines.append
    rows_e2e = e2e["local"][0].rows
    add("### Details")
    add("")
    add("Item 1, CPU µs per row by stage (median):")
    for f in cpu:
        a, fl = f.archiver, f.floor
        to_batch = statistics.median(f.to_batch) / f.rows * 1e6
        add(
            f"- {f.kind} {f.version} ({f.rows:,} rows, {f.pages} pages): archiver "
            f"parse_page {f.median(a, 'parse_page'):.2f} + select_rows "
            f"{f.median(a, 'select_rows'):.2f} (rows_to_batch alone {to_batch:.2f}) + "
            f"write+close {f.median(a, 'write+close'):.2f} + reconcile "
            f"{f.median(a, 'reconcile'):.2f}; floor orjson.loads "
            f"{f.median(fl, 'orjson.loads'):.2f} + write_table {f.median(fl, 'write_table'):.2f}"
        )
    add("")
    add("Item 2, CPU per row of each process (median), 2 cores shared by all of them:")
    for name in ("local", "s3", "typical"):
        runs = e2e[name]
        add(
            f"- {name}: peer process {med([r.cpu / r.rows for r in runs]) * 1e6:.1f} µs/row, "
            f"emulator {med([r.emulator_cpu / r.rows for r in runs]) * 1e6:.1f} µs/row, "
            f"wall {med([r.seconds for r in runs]):.2f} s, peak RSS "
            f"{fmt_mb(med([r.maxrss for r in runs]))}"
        )
    add("")
    add(
        "Item 4, whole processes (start-up included); baselines after imports only: archiver "
        f"{fmt_mb(mem['baseline_archiver'])}, typical script {fmt_mb(mem['baseline_typical'])}."
    )
    for name, runs in mem.items():
        if not isinstance(runs, dict):
            continue
        for peer, values in runs.items():
            if values:
                add(
                    f"- {name} {peer}: {med([r.seconds for r in values]):.2f} s, "
                    f"CPU {med([r.cpu for r in values]):.2f} s, peak RSS "
                    f"{', '.join(fmt_mb(r.maxrss) for r in values)}"
                )
    add("")
    if hot_cpu:
        add("Hotspots, item 1 archiver path (pyinstrument, in process):")
        add("```")
        lines.extend(hot_cpu)
        add("```")
    if e2e.get("profile"):
        add(
            "Hotspots, item 2 local backfill (py-spy, all threads of the archiver process, "
            "idle excluded):"
        )
        add("```")
        lines.extend(e2e["profile"])
        add("```")
    add("")

    add("### Performance")
    add("")
    add(
        f"Measured by `bench/perf.py`{' --quick' if quick else ''} on {os.cpu_count()} cores "
        f"({os.cpu_count()} busy loops in parallel got {capacity:.1f} cores' worth of CPU; "
        f"load average {load[0]:.1f} before, {load[1]:.1f} after the run), "
        f"Python {sys.version.split()[0]}; the emulator runs in its "
        "own process, the archiver and the typical script (`bench/typical_script.py`) each in "
        "a subprocess, moto S3 in the benchmark's process. Each figure is the median of "
        "*runs* runs."
    )
    add("")
    add("| measure | archiver | peer | archiver vs peer | runs |")
    add("|---|---|---|---|---|")
    for f in cpu:
        a, fl = f.median(f.archiver, "cpu"), f.median(f.floor, "cpu")
        add(
            f"| 1. CPU per row, page bytes → Parquet, {f.kind} {f.version} ({f.rows:,} rows) "
            f"| {a:.2f} µs | floor (orjson + write_table) {fl:.2f} µs | {a / fl:.1f}{X} floor "
            f"| {sizes.cpu_runs} |"
        )
    typical = rate(e2e["typical"])
    for name, label in (("local", "local folder"), ("s3", "moto S3")):
        value = rate(e2e[name])
        add(
            f"| 2. backfill, no cap, both kinds, {rows_e2e:,} rows, {label} | {fmt_rate(value)} "
            f"| typical script (local) {fmt_rate(typical)} | {value / typical:.2f}{X} "
            f"| {sizes.runs} |"
        )
    base = med([r.seconds for r in lat["by_concurrency"][sizes.concurrencies[0]]])
    pages = lat["pages"]
    for c, runs in lat["by_concurrency"].items():
        value = med([r.seconds for r in runs])
        add(
            f"| 3. backfill, 100 ms/page, {pages} pages, concurrency {c} | {value:.2f} s "
            f"| concurrency {sizes.concurrencies[0]}: {base:.2f} s | {base / value:.1f}{X} speedup "
            f"| {sizes.runs} |"
        )
    t_lat = med([r.seconds for r in lat["typical"]])
    add(
        f"| 3. typical script, same backfill (sequential) | — | {t_lat:.2f} s "
        f"| concurrency 1 is {t_lat / base:.2f}{X} as fast | {sizes.runs} |"
    )
    labels = {
        "big": f"1 window {X} {sizes.big_rows:,} rows",
        "small": f"{sizes.small_windows} windows {X} {sizes.small_rows:,} rows",
        "small-c1": f"{sizes.small_windows} windows {X} {sizes.small_rows:,} rows, concurrency 1",
    }
    for name in ("big", "small", "small-c1"):
        runs = mem[name]
        a_rss = med([r.maxrss for r in runs["archiver"]])
        peer = runs["typical"] or mem["small"]["typical"]
        t_rss = med([r.maxrss for r in peer])
        add(
            f"| 4. peak RSS, {labels[name]} | {fmt_mb(a_rss)} | typical script {fmt_mb(t_rss)} "
            f"| {a_rss / t_rss:.2f}{X} | {sizes.mem_runs} |"
        )
        a_rate, t_rate = rate(runs["archiver"]), rate(peer)
        add(
            f"| 4. speed, {labels[name]} (whole process) | {fmt_rate(a_rate)} "
            f"| typical script {fmt_rate(t_rate)} | {a_rate / t_rate:.2f}{X} | {sizes.mem_runs} |"
        )
    add("")
    add(f"(whole benchmark: {elapsed / 60:.1f} min)")
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == CHILD_FLAG:
        return child_backfill(sys.argv[2:])
    if len(sys.argv) > 1 and sys.argv[1] == "--whole":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import whole  # bench/whole.py: whole processes beside the typical script

        return whole.main(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one run: a smoke run")
    parser.add_argument("--runs", type=int, help="runs per end-to-end figure (default 3)")
    parser.add_argument("--no-profile", action="store_true", help="skip the profiles")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    if args.runs:
        sizes = dataclasses.replace(sizes, runs=args.runs, mem_runs=args.runs)
    began = time.perf_counter()
    load_before = os.getloadavg()[0]
    capacity = parallel_capacity()
    say(f"0. {os.cpu_count()} cores deliver {capacity:.2f} cores of CPU in parallel")
    with tempfile.TemporaryDirectory(prefix="archiver-perf-") as tmp:
        scratch = Path(tmp)
        say("1. CPU per row")
        cpu, page_sets = measure_cpu(sizes, scratch)
        hot_cpu = None if args.no_profile else pyinstrument_hotspots(page_sets, scratch)
        del page_sets
        say("2. end to end, no cap")
        e2e = measure_end_to_end(sizes, scratch, profile=not args.no_profile)
        say("3. end to end, 100 ms latency")
        lat = measure_latency(sizes, scratch)
        say("4. memory")
        mem = measure_memory(sizes, scratch)
        elapsed = time.perf_counter() - began
        load = (load_before, os.getloadavg()[0])
        print(report(sizes, args.quick, capacity, load, cpu, e2e, lat, mem, hot_cpu, elapsed))
    return 0


if __name__ == "__main__":
    sys.exit(main())

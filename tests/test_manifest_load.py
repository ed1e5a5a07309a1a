"""The manifest under load: hourly windows recorded as fast as they come.

Hourly windows of both kinds (one row each; 14 days, 672 windows, in CI; 167 days, 8,016
windows, with MANIFEST_LOAD_DAYS=167 in a soak run) with no rate cap,
so journal entries arrive as fast as the archiver can write them and compaction runs
every few seconds, archived (a) by one `python -m archiver backfill` process, and (b) by
three of them at once on the same destination, racing each other's compactions. Either
way every process exits 0 without a traceback, the archive holds every source row
exactly once, `archiver verify` passes, the manifest counts every window done, and
Graph was asked for each window once.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import archiver_command, archiver_env, assert_archive_exact

from archiver.emulator import Emulator
from archiver.kinds import DEFAULT_KINDS, Kind

START = datetime(2024, 1, 1, tzinfo=UTC)
DAYS = int(os.environ.get("MANIFEST_LOAD_DAYS", "14"))  # 167: 8,016 windows
END = START + timedelta(days=DAYS)
WINDOWS_PER_KIND = DAYS * 24
RANGE = ("--start", START.date().isoformat(), "--end", END.date().isoformat())
PROCESS_TIMEOUT = 1800  # seconds: a hung archiver fails its test instead of hanging it
UNCAPPED = "100000000"  # requests per minute: no cap (the emulator has none)
FORBIDDEN = ("Traceback", "ExceptionGroup")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(2 * PROCESS_TIMEOUT),  # pytest-timeout: the backfills, then the checks
    # 24 rows a day: one row in every hourly window, so every window is a real one
    pytest.mark.emulator(rows_per_day={Kind.PSTN: 24, Kind.DIRECT_ROUTING: 24}),
]


def hourly_env(emu: Emulator, dest: Path) -> dict[str, str]:
    """The whole environment of an archiver process: hourly windows, no rate cap."""
    return {
        **os.environ,
        **archiver_env(
            emu,
            dest,
            ARCHIVER_WINDOW="1h",
            ARCHIVER_REQUESTS_PER_MINUTE=UNCAPPED,
            ARCHIVER_TENANT_REQUESTS_PER_MINUTE=UNCAPPED,
        ),
    }


def output_of(out: IO[str], err: IO[str]) -> str:
    """What a finished process wrote to its stdout and stderr files."""
    out.seek(0)
    err.seek(0)
    return out.read() + err.read()


def failure_lines(output: str) -> str:
    """The lines of an archiver's output worth showing in an assertion message."""
    marked = [
        line
        for line in output.splitlines()
        if any(m in line for m in (*FORBIDDEN, "Error", '"level": "error"', '"level": "warning"'))
    ]
    return "\n".join((marked or output.splitlines())[-25:])


def backfill_processes(env: dict[str, str], count: int, tmp_path: Path) -> None:
    """Start `count` backfills of RANGE at once and wait for all; assert each exited 0
    without a traceback (one still running after PROCESS_TIMEOUT is killed and named)."""
    files = [
        (
            (tmp_path / f"backfill-{i}.out").open("w+"),
            (tmp_path / f"backfill-{i}.err").open("w+"),
        )
        for i in range(count)
    ]
    try:
        processes = [
            subprocess.Popen(archiver_command("backfill", *RANGE), env=env, stdout=o, stderr=e)
            for o, e in files
        ]
        deadline = time.monotonic() + PROCESS_TIMEOUT
        codes: list[int | None] = []
        for process in processes:
            try:
                codes.append(process.wait(timeout=max(0.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                codes.append(None)
        outputs = [output_of(o, e) for o, e in files]
    finally:
        for o, e in files:
            o.close()
            e.close()
    problems = []
    for i, (code, output) in enumerate(zip(codes, outputs, strict=True)):
        name = f"backfill {i + 1} of {count}"
        if code is None:
            windows = output.count('"message": "archived ')
            problems.append(
                f"{name}: still running after {PROCESS_TIMEOUT} s, killed "
                f"({windows:,} windows archived by then)"
            )
        elif code != 0 or any(word in output for word in FORBIDDEN):
            problems.append(f"{name}: exit {code}\n{failure_lines(output)}")
    assert not problems, "\n".join(problems)


def read_archive(root: Path, kind: Kind) -> pa.Table:
    """All Parquet objects of one kind under a local destination, as one table: read_local,
    but several files at once (thousands of one-row files)."""
    files = sorted((root / kind.value).rglob("*.parquet"))
    with ThreadPoolExecutor(8) as pool:
        tables = list(pool.map(lambda f: pq.read_table(f, partitioning=None), files))
    return pa.concat_tables(tables)


def run_archiver(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """One more archiver command as its own process (verify, status)."""
    return subprocess.run(
        archiver_command(*args),
        env=env,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
        check=False,
    )


def assert_whole_archive(emu: Emulator, env: dict[str, str], dest: Path) -> None:
    """Every source row once, `verify` passes, and the manifest says every window is done."""
    for kind in DEFAULT_KINDS:
        truth = emu.rows(kind, START, END, version="v1.0")
        assert WINDOWS_PER_KIND == len(truth)  # one row per window
        assert_archive_exact(kind, read_archive(dest, kind), truth)
    verified = run_archiver(env, "verify")
    output = verified.stdout + verified.stderr
    assert 0 == verified.returncode, failure_lines(output)
    assert f"verified {2 * WINDOWS_PER_KIND} objects: 0 problems" in output
    for word in FORBIDDEN:
        assert word not in output, failure_lines(output)
    status = run_archiver(env, "status", "--json")
    assert 0 == status.returncode, failure_lines(status.stdout + status.stderr)
    kinds = json.loads(status.stdout)["kinds"]
    for kind in DEFAULT_KINDS:
        entry = kinds[kind.value]
        assert (WINDOWS_PER_KIND, 0, 0, WINDOWS_PER_KIND) == (
            entry["done"],
            entry["failed"],
            entry["pending"],
            entry["rows"],
        ), kind


def assert_each_window_fetched_once(emu: Emulator) -> None:
    """Graph was asked for every window once, across all processes: a window one worker
    archived costs the others no request (README: *Several workers*, and "windows already
    archived cost no Graph request at all")."""
    fetched = Counter(r.path_qs for r in emu.requests if r.endpoint == "graph")
    again = sum(1 for n in fetched.values() if n > 1)
    assert 2 * WINDOWS_PER_KIND == len(fetched)
    assert 0 == again, (
        f"{again:,} of {len(fetched):,} windows were fetched more than once "
        f"({sum(fetched.values()):,} Graph requests for {len(fetched):,} windows)"
    )


def test_one_process_records_hourly_windows_as_fast_as_they_come(
    emulator: Emulator, tmp_path: Path
) -> None:
    """One backfill of hourly windows, as fast as it goes: an exact archive."""
    dest = tmp_path / "archive"
    env = hourly_env(emulator, dest)
    backfill_processes(env, 1, tmp_path)
    assert_whole_archive(emulator, env, dest)
    assert_each_window_fetched_once(emulator)


def test_three_processes_at_once_on_one_destination(emulator: Emulator, tmp_path: Path) -> None:
    """Three backfills of the same hourly windows at once, each compacting the one
    manifest while the others record into it: every process exits 0, an exact archive,
    and no window fetched twice."""
    dest = tmp_path / "archive"
    env = hourly_env(emulator, dest)
    backfill_processes(env, 3, tmp_path)
    assert_whole_archive(emulator, env, dest)
    assert_each_window_fetched_once(emulator)

"""End to end: `archiver backfill` against the emulator, into S3 (moto, SeaweedFS) and a folder."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import boto3
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import (
    archiver_command,
    archiver_env,
    assert_archive_exact,
    backfill,
    read_local,
    read_s3,
    s3_keys,
)

from archiver.cli import main
from archiver.emulator import Emulator, EmulatorConfig
from archiver.kinds import DEFAULT_KINDS, Kind
from archiver.manifest import Manifest
from archiver.store import open_store

START = datetime(2024, 3, 4, tzinfo=UTC)
WEEK = START + timedelta(days=7)
ROWS = {Kind.PSTN: 1500, Kind.DIRECT_ROUTING: 1100}  # several pages per day for both kinds

pytestmark = pytest.mark.emulator(rows_per_day=ROWS)


@pytest.mark.slow
def test_week_of_both_kinds_into_s3_is_exact(
    emulator: Emulator, any_s3_destination: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Every source row of [start, end) is archived once, every column equal to the source,
    on moto and on SeaweedFS alike."""
    s3_destination = any_s3_destination
    env = archiver_env(emulator, s3_destination)
    assert 0 == backfill(monkeypatch, env, "--start", "2024-03-04", "--end", "2024-03-11")
    for kind in DEFAULT_KINDS:
        truth = emulator.rows(kind, START, WEEK, version="v1.0")
        assert 7 * ROWS[kind] == len(truth)
        assert_archive_exact(kind, read_s3(s3_destination, kind, tmp_path), truth)
    # one object per window, named by window start, partitioned by its date
    expected_keys = [
        f"{kind.value}/date=2024-03-{d:02d}/202403{d:02d}T000000Z.parquet"
        for kind in sorted(DEFAULT_KINDS, key=lambda k: k.value)
        for d in range(4, 11)
    ]
    assert expected_keys == s3_keys(s3_destination, ".parquet")
    # the manifest keeps both our SHA-256 and the checksum S3 stored and verified
    manifest = Manifest(open_store(s3_destination))
    anyio.run(manifest.load)
    bucket, _, prefix = s3_destination.removeprefix("s3://").partition("/")
    client = boto3.client("s3")
    assert 14 == len(manifest.records)
    for record in manifest.records.values():
        assert record.sha256 is not None
        expected = base64.b64encode(bytes.fromhex(record.sha256)).decode()
        head = client.head_object(
            Bucket=bucket, Key=f"{prefix}/{record.key}", ChecksumMode="ENABLED"
        )
        assert (expected, expected) == (record.checksum_sha256, head["ChecksumSHA256"])


def test_boundary_rows_land_in_exactly_one_window(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row starting exactly at midnight is in that day's object only, and the last 100 ns
    of a day stay in that day, although PSTN's end is inclusive."""
    dest = tmp_path / "archive"
    assert 0 == backfill(
        monkeypatch,
        archiver_env(emulator, dest, ARCHIVER_WINDOW="6h"),
        "--start",
        "2024-03-04",
        "--end",
        "2024-03-06",
    )
    for kind in DEFAULT_KINDS:
        for path in sorted((dest / kind.value).rglob("*.parquet")):
            table = pq.read_table(path, partitioning=None)
            meta = table.schema.metadata
            start = datetime.fromisoformat(meta[b"archiver.window_start"].decode())
            end = datetime.fromisoformat(meta[b"archiver.window_end"].decode())
            starts = table.column("startDateTime").to_pylist()
            assert all(start <= s < end for s in starts), path
            assert start in starts, f"{path}: the row at the window start is missing"
        table = read_local(dest, kind)
        midnight = datetime(2024, 3, 5, tzinfo=UTC)
        starts = table.column("startDateTime").to_pylist()
        assert 1 == starts.count(midnight)
        assert 1 == starts.count(midnight - timedelta(microseconds=1))  # 23:59:59.9999999


def test_duckdb_reads_each_kind_as_one_hive_partitioned_table(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DuckDB's read_parquet with hive partitioning counts exactly the source rows per day."""
    dest = tmp_path / "archive"
    assert 0 == backfill(
        monkeypatch, archiver_env(emulator, dest), "--start", "2024-03-04", "--end", "2024-03-07"
    )
    for kind in DEFAULT_KINDS:
        got = duckdb.sql(
            f"SELECT date, count(*) FROM read_parquet('{dest}/{kind.value}/**/*.parquet', "
            "hive_partitioning=true) GROUP BY date ORDER BY date"
        ).fetchall()
        days = [START.date() + timedelta(days=i) for i in range(3)]
        assert [(d, ROWS[kind]) for d in days] == got
        described = duckdb.sql(
            f"DESCRIBE SELECT * FROM read_parquet('{dest}/{kind.value}/**/*.parquet', "
            "hive_partitioning=true)"
        ).fetchall()
        types = {row[0]: row[1] for row in described}
        assert "TIMESTAMP WITH TIME ZONE" == types["startDateTime"]
        assert "DATE" == types["date"]
        if kind is Kind.PSTN:
            assert "DECIMAL(38,10)" == types["charge"]


def test_second_run_of_an_archived_range_makes_no_graph_request(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Re-running an archived range asks Graph for nothing and changes no object."""
    dest = tmp_path / "archive"
    env = archiver_env(emulator, dest)
    assert 0 == backfill(monkeypatch, env, "--start", "2024-03-04", "--end", "2024-03-06")
    before = {p: p.stat().st_mtime_ns for p in dest.rglob("*.parquet")}
    emulator.clear_requests()
    assert 0 == backfill(monkeypatch, env, "--start", "2024-03-04", "--end", "2024-03-06")
    assert [] == emulator.requests
    assert before == {p: p.stat().st_mtime_ns for p in dest.rglob("*.parquet")}


def test_local_folder_and_s3_hold_the_same_rows(
    emulator: Emulator, s3_destination: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same backfill into a folder and into S3 gives identical row content."""
    dest = tmp_path / "archive"
    for target in (dest, s3_destination):
        assert 0 == backfill(
            monkeypatch,
            archiver_env(emulator, target),
            "--start",
            "2024-03-04",
            "--end",
            "2024-03-06",
        )
    for kind in DEFAULT_KINDS:
        local = read_local(dest, kind).replace_schema_metadata(None).sort_by("id")
        remote = read_s3(s3_destination, kind, tmp_path).replace_schema_metadata(None)
        assert local.equals(remote.sort_by("id"))
        assert local.num_rows == 2 * ROWS[kind]


@pytest.mark.slow
def test_run_killed_half_way_resumes_to_the_same_exact_archive(tmp_path: Path) -> None:
    """SIGKILL in the middle of a backfill, then a second run: every row exactly once."""
    config = EmulatorConfig(rows_per_day=dict(ROWS), latency=0.05)
    with Emulator(config) as emu:
        dest = tmp_path / "archive"
        env = {
            **os.environ,
            **archiver_env(emu, dest, ARCHIVER_CONCURRENCY="2", ARCHIVER_LEASE="2s"),
        }
        args = archiver_command("backfill", "--start", "2024-03-04", "--end", "2024-03-18")
        process = subprocess.Popen(
            args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        journal = dest / "_manifest" / "journal"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            if journal.is_dir() and len(list(journal.glob("*.json"))) >= 5:
                break
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
        done_before = len(list(dest.rglob("*.parquet")))
        assert 5 <= done_before < 28, "the kill did not land half-way"
        finished = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
        assert 0 == finished.returncode, finished.stderr
        for kind in DEFAULT_KINDS:
            truth = emu.rows(kind, START, START + timedelta(days=14), version="v1.0")
            assert_archive_exact(kind, read_local(dest, kind), truth)
        assert [] == list((dest / "_manifest" / "spool").glob("*"))  # the dead run's files too


def test_status_reports_done_windows_rows_and_bytes(
    emulator: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`status --json` counts the archived windows and rows per kind from the manifest."""
    import json

    dest = tmp_path / "archive"
    env = archiver_env(emulator, dest)
    assert 0 == backfill(monkeypatch, env, "--start", "2024-03-04", "--end", "2024-03-06")
    capsys.readouterr()
    assert 0 == main(["status", "--json"])
    status = json.loads(capsys.readouterr().out)
    for kind in DEFAULT_KINDS:
        entry = status["kinds"][kind.value]
        assert (2, 0, 0, 2 * ROWS[kind]) == (
            entry["done"],
            entry["failed"],
            entry["pending"],
            entry["rows"],
        )
        sizes = sum(p.stat().st_size for p in (dest / kind.value).rglob("*.parquet"))
        assert sizes == entry["bytes"]


def test_parquet_metadata_records_provenance(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each object names archiver version, kind, window, Graph URL and version, and rows."""
    dest = tmp_path / "archive"
    assert 0 == backfill(
        monkeypatch,
        archiver_env(emulator, dest, ARCHIVER_GRAPH_VERSION="beta"),
        "--start",
        "2024-03-04",
        "--end",
        "2024-03-05",
        "--kind",
        "pstn",
    )
    path = dest / "pstn" / "date=2024-03-04" / "20240304T000000Z.parquet"
    meta = {
        k.decode(): v.decode()
        for k, v in pq.read_metadata(path).metadata.items()
        if k.startswith(b"archiver.")
    }
    from archiver import __version__

    assert {
        "archiver.version": __version__,
        "archiver.kind": "pstn",
        "archiver.window_start": "2024-03-04T00:00:00Z",
        "archiver.window_end": "2024-03-05T00:00:00Z",
        "archiver.graph_url": emulator.url,
        "archiver.graph_version": "beta",
        "archiver.rows": str(ROWS[Kind.PSTN]),
    } == {k: v for k, v in meta.items() if k != "archiver.fetched_at"}
    assert datetime.fromisoformat(meta["archiver.fetched_at"]).tzinfo is not None
    table = pq.read_table(path, partitioning=None)
    truth = emulator.rows(Kind.PSTN, START, START + timedelta(days=1), version="beta")
    assert_archive_exact(Kind.PSTN, table, truth)
    assert pa.types.is_list(table.schema.field("administrativeUnitInfos").type)


def test_rows_repeated_across_pages_are_archived_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When pages overlap (paging over live data), each repeated row is kept once."""
    with Emulator(EmulatorConfig(rows_per_day=dict(ROWS), page_overlap=7)) as emu:
        dest = tmp_path / "archive"
        assert 0 == backfill(
            monkeypatch, archiver_env(emu, dest), "--start", "2024-03-04", "--end", "2024-03-06"
        )
        served = sum(r.rows for r in emu.requests if r.endpoint == "graph")
        for kind in DEFAULT_KINDS:
            truth = emu.rows(kind, START, START + timedelta(days=2), version="v1.0")
            assert_archive_exact(kind, read_local(dest, kind), truth)
    archived = sum(ROWS.values()) * 2
    assert served > archived + 2  # rows were repeated (and the PSTN boundary rows returned)

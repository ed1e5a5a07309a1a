"""`table_format = "delta"`: each kind one Delta table, one commit per window, read back
with deltalake (delta-rs) and compared row by row with the emulator's truth."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pyarrow as pa
import pytest
from deltalake import DeltaTable, QueryBuilder
from helpers import archiver_command, archiver_env, assert_archive_exact, backfill, s3_keys

from archiver.emulator import Emulator, EmulatorConfig
from archiver.kinds import DEFAULT_KINDS, Kind
from archiver.manifest import Manifest
from archiver.schema import schema_for
from archiver.store import S3Store, open_store

START = datetime(2024, 3, 4, tzinfo=UTC)
ROWS = {Kind.PSTN: 40, Kind.DIRECT_ROUTING: 30}

pytestmark = pytest.mark.emulator(rows_per_day=ROWS)


def delta_env(emu: Emulator, destination: str | Path, **extra: str) -> dict[str, str]:
    """archiver_env with the Delta table format."""
    return archiver_env(emu, destination, ARCHIVER_TABLE_FORMAT="delta", **extra)


def storage_options(destination: str | Path) -> dict[str, str] | None:
    """What delta-rs needs to reach the destination: the same settings the archiver uses."""
    store = open_store(str(destination))
    return store.object_store_options() if isinstance(store, S3Store) else None


def table_of(destination: str | Path, kind: Kind) -> DeltaTable:
    """The kind's Delta table at its latest version."""
    return DeltaTable(f"{destination}/{kind.value}", storage_options=storage_options(destination))


def read_delta(destination: str | Path, kind: Kind) -> pa.Table:
    """Every row of the kind's table, typed as the table declares its columns."""
    table = table_of(destination, kind)
    schema = pa.schema(table.schema().to_arrow())
    result = QueryBuilder().register("t", table).execute("SELECT * FROM t")
    batches = [b.cast(schema) for b in pa.RecordBatchReader.from_stream(result)]
    return pa.Table.from_batches(batches, schema=schema)


def assert_table_exact(
    destination: str | Path, kind: Kind, truth: list[dict[str, Any]]
) -> pa.Table:
    """The table declares the Parquet layout's columns and types plus `date`, and holds
    every source row once, each `date` the UTC date of its start."""
    table = read_delta(destination, kind)
    expected = schema_for(kind).remove_metadata().append(pa.field("date", pa.string()))
    assert expected == table.schema
    dates = sorted(row[kind.time_column][:10] for row in truth)
    assert dates == sorted(table.column("date").to_pylist())
    assert_archive_exact(kind, table.drop_columns(["date"]), truth)
    return table


def commits(destination: str | Path, kind: Kind) -> list[dict[str, Any]]:
    """The table's history, oldest first."""
    return list(reversed(table_of(destination, kind).history()))


def journal_keys(destination: str) -> list[str]:
    """The manifest's journal entries in an s3:// destination: one per window recorded."""
    return [k for k in s3_keys(destination) if k.startswith("_manifest/journal/")]


def load_manifest(destination: str | Path) -> Manifest:
    manifest = Manifest(open_store(str(destination)))
    anyio.run(manifest.load)
    return manifest


def test_three_days_into_a_folder_are_one_commit_per_window(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every row once, typed as declared; one commit per window naming it; table
    properties that keep the history; a re-run asks Graph nothing and commits nothing."""
    dest = tmp_path / "archive"
    env = delta_env(emulator, dest)
    assert 0 == backfill(monkeypatch, env, "--start", "2024-03-04", "--end", "2024-03-07")
    end = START + timedelta(days=3)
    for kind in DEFAULT_KINDS:
        assert_table_exact(dest, kind, emulator.rows(kind, START, end, version="v1.0"))
        history = commits(dest, kind)
        windows = sorted(c["archiver.window_start"] for c in history)
        assert ["2024-03-04T00:00:00Z", "2024-03-05T00:00:00Z", "2024-03-06T00:00:00Z"] == windows
        first = history[0]
        assert kind.value == first["archiver.kind"]
        assert emulator.url == first["archiver.graph_url"]
        assert "v1.0" == first["archiver.graph_version"]
        assert str(ROWS[kind]) == first["archiver.rows"]
        config = table_of(dest, kind).metadata().configuration
        assert "false" == config["delta.enableExpiredLogCleanup"]
        assert ["date"] == table_of(dest, kind).metadata().partition_columns
    assert not list(dest.rglob("*.parquet")) or all(
        "part-" in p.name for p in dest.rglob("*.parquet")
    )
    settings = json.loads((dest / "_manifest" / "settings.json").read_text())
    assert {"window": "1d", "table_format": "delta"} == settings
    versions = {kind: table_of(dest, kind).version() for kind in DEFAULT_KINDS}
    emulator.clear_requests()
    assert 0 == backfill(monkeypatch, env, "--start", "2024-03-04", "--end", "2024-03-07")
    assert [] == emulator.requests
    assert versions == {kind: table_of(dest, kind).version() for kind in DEFAULT_KINDS}


@pytest.mark.slow
def test_a_week_into_s3_killed_half_way_resumes_to_an_exact_table(
    any_s3_destination: str, tmp_path: Path
) -> None:
    """A week of both kinds into moto and into SeaweedFS, SIGKILLed after a few windows,
    then run again: every row once, typed as declared, and verify finds nothing wrong."""
    destination = any_s3_destination
    config = EmulatorConfig(rows_per_day=dict(ROWS), latency=0.2)
    with Emulator(config) as emu:
        env = {
            **os.environ,
            **delta_env(emu, destination, ARCHIVER_CONCURRENCY="2", ARCHIVER_LEASE="2s"),
        }
        args = archiver_command("backfill", "--start", "2024-03-04", "--end", "2024-03-11")
        process = subprocess.Popen(
            args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            if len(journal_keys(destination)) >= 3:
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert 3 <= len(journal_keys(destination)) < 14, "the kill did not land half-way"
        emu.config.latency = 0.0
        finished = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
        assert 0 == finished.returncode, finished.stderr
        end = START + timedelta(days=7)
        for kind in DEFAULT_KINDS:
            assert_table_exact(destination, kind, emu.rows(kind, START, end, version="v1.0"))
        verified = subprocess.run(
            archiver_command("verify"), env=env, capture_output=True, text=True, check=False
        )
        assert (0, "verified 14 objects: 0 problems\n") == (verified.returncode, verified.stdout)

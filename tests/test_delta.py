"""`table_format = "delta"`: each kind one Delta table, one commit per window, read back
with deltalake (delta-rs) and compared row by row with the emulator's truth."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, QueryBuilder, write_deltalake
from deltalake.exceptions import TableNotFoundError
from helpers import (
    archiver_command,
    archiver_env,
    assert_archive_exact,
    backfill,
    raw_client,
    s3_keys,
)

from archiver import kinds, schema
from archiver.cli import main
from archiver.emulator import Emulator, EmulatorConfig
from archiver.kinds import DEFAULT_KINDS, Column, Kind
from archiver.manifest import Manifest
from archiver.schema import schema_for
from archiver.sinks.delta import DeltaSink
from archiver.store import S3Store, open_store
from archiver.windows import Window, align_down, format_instant

START = datetime(2024, 3, 4, tzinfo=UTC)
ROWS = {Kind.PSTN: 40, Kind.DIRECT_ROUTING: 30}
HOUR = timedelta(hours=1)

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


def test_verify_names_a_window_whose_rows_were_deleted_behind_its_back(
    emulator: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """verify passes a good table; rows deleted from one window, and a row appended twice
    to another, are named by window, with the rows counted."""
    dest = tmp_path / "archive"
    assert 0 == backfill(
        monkeypatch, delta_env(emulator, dest), "--start", "2024-03-04", "--end", "2024-03-07"
    )
    capsys.readouterr()
    assert 0 == main(["verify"])
    assert "verified 6 objects: 0 problems\n" == capsys.readouterr().out
    table = table_of(dest, Kind.PSTN)
    table.delete("date = '2024-03-05'")
    again = read_delta(dest, Kind.PSTN).filter(pc.equal(pc.field("date"), "2024-03-06")).slice(0, 1)
    write_deltalake(table, again, mode="append")
    assert 1 == main(["verify"])
    assert [
        "MISSING pstn/date=2024-03-05/20240305T000000Z: recorded in the manifest with 40 rows, "
        "none in the table",
        f"DUPLICATE pstn/date=2024-03-06: id {again['id'][0]} is in the table 2 times",
        "ROWS pstn/date=2024-03-06/20240306T000000Z: 41 rows in the table != recorded 40",
        "verified 6 objects: 3 problems",
    ] == capsys.readouterr().out.splitlines()


@pytest.mark.slow
def test_three_workers_on_a_folder_give_an_exact_table(tmp_path: Path) -> None:
    """Three processes archive the same week into one local folder at once: their commits
    interleave and conflict, and the tables hold every row once."""
    with Emulator(EmulatorConfig(rows_per_day=dict(ROWS), latency=0.05)) as emu:
        dest = tmp_path / "archive"
        env = {**os.environ, **delta_env(emu, dest, ARCHIVER_CONCURRENCY="3")}
        args = archiver_command("backfill", "--start", "2024-03-04", "--end", "2024-03-11")
        workers = [
            subprocess.Popen(
                args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            for _ in range(3)
        ]
        outputs = [w.communicate(timeout=240) for w in workers]
        assert [0, 0, 0] == [w.returncode for w in workers], outputs
        end = START + timedelta(days=7)
        for kind in DEFAULT_KINDS:
            assert_table_exact(dest, kind, emu.rows(kind, START, end, version="v1.0"))


@pytest.mark.slow
def test_two_workers_on_seaweedfs_give_an_exact_table(
    seaweed_destination: str, tmp_path: Path
) -> None:
    """Two processes commit to the same tables on SeaweedFS (conditional writes): exact."""
    with Emulator(EmulatorConfig(rows_per_day=dict(ROWS), latency=0.05)) as emu:
        env = {**os.environ, **delta_env(emu, seaweed_destination, ARCHIVER_CONCURRENCY="3")}
        args = archiver_command("backfill", "--start", "2024-03-04", "--end", "2024-03-11")
        workers = [
            subprocess.Popen(
                args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            for _ in range(2)
        ]
        outputs = [w.communicate(timeout=240) for w in workers]
        assert [0, 0] == [w.returncode for w in workers], outputs
        end = START + timedelta(days=7)
        for kind in DEFAULT_KINDS:
            truth = emu.rows(kind, START, end, version="v1.0")
            assert_table_exact(seaweed_destination, kind, truth)


def test_resweep_merges_late_rows_with_what_the_table_holds(tmp_path: Path) -> None:
    """`run` with hourly windows: a row Graph adds later arrives with the re-sweep, in a
    commit of its own, and rows Graph no longer returns stay in the table."""
    now = datetime.now(UTC)
    start = align_down(now, HOUR) - 2 * HOUR
    window = Window(Kind.PSTN, start, start + HOUR)
    with Emulator(EmulatorConfig(rows_per_day={Kind.PSTN: 240})) as emu:
        first = emu.rows(Kind.PSTN, window.start, window.end, version="v1.0")
        dest = tmp_path / "archive"
        env = {
            **os.environ,
            **delta_env(
                emu,
                dest,
                ARCHIVER_KINDS="pstn",
                ARCHIVER_WINDOW="1h",
                ARCHIVER_SETTLE="1s",
                ARCHIVER_START=format_instant(start),
                ARCHIVER_RESWEEP_INTERVAL="1s",
                ARCHIVER_GRACE="10s",
                ARCHIVER_LEASE="5s",
            ),
        }
        process = subprocess.Popen(
            archiver_command("run"),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for(lambda: window_ids(dest, window) is not None, "the first archive")
            late = dict(
                first[0],
                id="late-row-0001",
                startDateTime=format_instant(window.start + timedelta(minutes=30)),
            )
            emu.add_rows(Kind.PSTN, [late])
            emu.config.seed = 99  # Graph now returns other rows for the window: keep ours too
            second = emu.rows(Kind.PSTN, window.start, window.end, version="v1.0")
            wait_for(lambda: "late-row-0001" in (window_ids(dest, window) or []), "the re-sweep")
            process.send_signal(signal.SIGTERM)
            process.communicate(timeout=15)
        finally:
            process.kill()
        assert 0 == process.returncode
    starts = pc.field("startDateTime")
    rows = read_delta(dest, Kind.PSTN).filter((starts >= window.start) & (starts < window.end))
    union = {row["id"]: row for row in first} | {row["id"]: row for row in second}
    assert_archive_exact(Kind.PSTN, rows.drop_columns(["date"]), union.values())
    mine = [
        c for c in commits(dest, Kind.PSTN) if c["archiver.window_start"] == format_instant(start)
    ]
    assert len(mine) >= 2, "the re-sweep is a commit of its own"


def window_ids(dest: Path, window: Window) -> list[str] | None:
    """The ids the table holds for `window`, or None before its table exists."""
    try:
        table = read_delta(dest, window.kind)
    except TableNotFoundError:
        return None
    inside = pc.and_(
        pc.greater_equal(
            table["startDateTime"], pa.scalar(window.start, table["startDateTime"].type)
        ),
        pc.less(table["startDateTime"], pa.scalar(window.end, table["startDateTime"].type)),
    )
    ids = table.filter(inside)["id"].to_pylist()
    return ids or None


def wait_for(condition: Callable[[], bool], what: str, limit: float = 60) -> None:
    """Poll until `condition` holds (a deadline, not a timing assertion)."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)


@pytest.mark.emulator(rows_per_day=ROWS, unknown_property_every=3)
def test_a_property_declared_later_becomes_a_column_in_a_later_commit(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Schema evolution: rows archived while `routingTag` was unknown keep it in
    additionalData; once a release declares it, the next commit adds the column (a schema
    merge), its files are the only new ones, and the older versions still read as before."""
    dest = tmp_path / "archive"
    env = delta_env(emulator, dest, ARCHIVER_KINDS="pstn")
    assert 0 == backfill(monkeypatch, env, "--start", "2024-03-04", "--end", "2024-03-06")
    before = table_of(dest, Kind.PSTN)
    old_version, old_files = before.version(), set(before.file_uris())
    old_rows = read_delta(dest, Kind.PSTN)
    assert "routingTag" not in old_rows.schema.names
    assert any("routingTag" in (extra or "") for extra in old_rows["additionalData"].to_pylist())

    declare(monkeypatch, Kind.PSTN, Column("routingTag", since="beta"))
    assert 0 == backfill(monkeypatch, env, "--start", "2024-03-06", "--end", "2024-03-07")
    after = table_of(dest, Kind.PSTN)
    assert old_files < set(after.file_uris())
    table = read_delta(dest, Kind.PSTN)
    assert pa.field("routingTag", pa.string()) == table.schema.field("routingTag")
    names = schema_for(Kind.PSTN).names
    new = table.filter(pc.equal(pc.field("date"), "2024-03-06")).select(names)
    third = emulator.rows(Kind.PSTN, START + timedelta(days=2), START + timedelta(days=3), "v1.0")
    assert any(row.get("routingTag") for row in third)
    assert_archive_exact(Kind.PSTN, new, third)
    old = table.filter(pc.less(pc.field("date"), "2024-03-06"))
    assert [None] * old.num_rows == old["routingTag"].to_pylist()
    assert old_rows.sort_by("id").equals(old.select(old_rows.schema.names).sort_by("id")), (
        "older rows read as they were, the new column null"
    )
    at_old = DeltaTable(f"{dest}/pstn", version=old_version)
    assert old_rows.schema == pa.schema(at_old.schema().to_arrow())


def declare(monkeypatch: pytest.MonkeyPatch, kind: Kind, column: Column) -> None:
    """A release that declares one more column of `kind`: its schema and typing plan."""
    log = kinds._LOGS[kind]
    monkeypatch.setitem(kinds._LOGS, kind, replace(log, columns=(*log.columns, column)))
    monkeypatch.setitem(schema.SCHEMAS, kind, schema._declare(kind))
    monkeypatch.setitem(schema._SPECS, kind, schema._spec(kind))


def test_a_destination_keeps_its_table_format(
    emulator: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A folder of loose Parquet files refuses delta, and a Delta one parquet: exit 2, one
    line, nothing fetched."""
    for first, then in (("parquet", "delta"), ("delta", "parquet")):
        dest = tmp_path / first
        env = archiver_env(emulator, dest, ARCHIVER_TABLE_FORMAT=first)
        assert 0 == backfill(monkeypatch, env, "--start", "2024-03-04", "--end", "2024-03-05")
        capsys.readouterr()
        emulator.clear_requests()
        env["ARCHIVER_TABLE_FORMAT"] = then
        assert 2 == backfill(monkeypatch, env, "--start", "2024-03-05", "--end", "2024-03-06")
        assert [] == emulator.requests
        assert [
            f"archiver: configuration: table_format {then} differs from the {first} archive "
            f"already in {dest}; keep table_format = {first}"
        ] == capsys.readouterr().err.splitlines()


def test_without_deltalake_delta_is_refused_in_one_line(tmp_path: Path) -> None:
    """Where the deltalake package is missing, table_format = delta says how to install
    it: exit 2, one line, nothing written."""
    blocker = (
        "import sys, importlib.abc\n"
        "class NoDelta(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.partition('.')[0] == 'deltalake':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, NoDelta())\n"
        "from archiver.__main__ import run\n"
        "sys.argv = ['archiver', 'backfill', '--start', '2024-03-04', '--end', '2024-03-05']\n"
        "sys.exit(run())\n"
    )
    dest = tmp_path / "archive"
    env = {
        **os.environ,
        "ARCHIVER_TENANT_ID": "t",
        "ARCHIVER_CLIENT_ID": "c",
        "ARCHIVER_CLIENT_SECRET": "s",
        "ARCHIVER_DESTINATION": str(dest),
        "ARCHIVER_TABLE_FORMAT": "delta",
    }
    done = subprocess.run(
        [sys.executable, "-c", blocker], env=env, capture_output=True, text=True, check=False
    )
    assert (2, "") == (done.returncode, done.stdout)
    assert [
        "archiver: configuration: table_format from ARCHIVER_TABLE_FORMAT: 'delta' needs the "
        "deltalake package: pip install 'callrec-archiver[delta]'"
    ] == done.stderr.splitlines()
    assert not dest.exists()


def test_polars_and_duckdb_read_the_table_as_readme_shows(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README's queries: Polars' scan_delta, and DuckDB over deltalake's Arrow, count the
    source rows per day; the history names each window's commit."""
    polars = pytest.importorskip("polars")
    import duckdb

    dest = tmp_path / "archive"
    env = delta_env(emulator, dest, ARCHIVER_KINDS="pstn")
    assert 0 == backfill(monkeypatch, env, "--start", "2024-03-04", "--end", "2024-03-06")
    per_day = [("2024-03-04", ROWS[Kind.PSTN]), ("2024-03-05", ROWS[Kind.PSTN])]
    got = (
        polars.scan_delta(str(dest / "pstn"))
        .group_by("date")
        .agg(polars.len().alias("calls"))
        .sort("date")
        .collect()
    )
    assert per_day == list(got.iter_rows())
    table = DeltaTable(str(dest / "pstn"))
    calls = pa.table(QueryBuilder().register("t", table).execute("SELECT * FROM t").read_all())
    connection = duckdb.connect()
    connection.register("calls", calls)
    assert (
        per_day
        == connection.sql("SELECT date, count(*) FROM calls GROUP BY date ORDER BY date").fetchall()
    )
    window = [
        (c["version"], c["archiver.window_start"], c["archiver.rows"])
        for c in table.history()
        if c.get("archiver.window_start") == "2024-03-05T00:00:00Z"
    ]
    assert 1 == len(window) and str(ROWS[Kind.PSTN]) == window[0][2]


def test_object_lock_retention_covers_every_file_a_commit_wrote(
    emulator: Emulator, s3_locked_destination: str
) -> None:
    """With object_lock_mode/days, each commit's log entry and data files get the
    retention (delta-rs cannot set it itself), and a locked file refuses deletion."""
    destination = s3_locked_destination
    env = {
        **os.environ,
        **delta_env(
            emulator,
            destination,
            ARCHIVER_KINDS="pstn",
            ARCHIVER_OBJECT_LOCK_MODE="COMPLIANCE",
            ARCHIVER_OBJECT_LOCK_DAYS="30",
        ),
    }
    # Its own process, like the other S3 runs: moto serves from this one.
    args = archiver_command("backfill", "--start", "2024-03-04", "--end", "2024-03-06")
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    assert 0 == done.returncode, done.stderr
    bucket, _, prefix = destination.removeprefix("s3://").partition("/")
    client = raw_client()
    written = [k for k in s3_keys(destination) if k.startswith("pstn/")]
    data = [k for k in written if k.endswith(".parquet")]
    log = [k for k in written if k.startswith("pstn/_delta_log/") and k.endswith(".json")]
    assert (2, 2) == (len(data), len(log))
    for key in data + log:
        head = client.head_object(Bucket=bucket, Key=f"{prefix}/{key}")
        assert "COMPLIANCE" == head["ObjectLockMode"], key
        retain = head["ObjectLockRetainUntilDate"] - datetime.now(UTC)
        assert timedelta(days=29) < retain <= timedelta(days=30), key
    head = client.head_object(Bucket=bucket, Key=f"{prefix}/{data[0]}")
    with pytest.raises(client.exceptions.ClientError) as refused:
        client.delete_object(Bucket=bucket, Key=f"{prefix}/{data[0]}", VersionId=head["VersionId"])
    assert "AccessDenied" == refused.value.response["Error"]["Code"]


def test_a_re_archive_reads_the_windows_rows_back_from_s3(
    emulator: Emulator, s3_destination: str, tmp_path: Path
) -> None:
    """What a re-archive merges with: the table's rows of exactly that window, read back
    from S3 (moto) typed as declared; none for a window the table lacks."""
    env = {**os.environ, **delta_env(emulator, s3_destination, ARCHIVER_KINDS="pstn")}
    args = archiver_command("backfill", "--start", "2024-03-04", "--end", "2024-03-06")
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    assert 0 == done.returncode, done.stderr
    manifest = load_manifest(s3_destination)
    sink = DeltaSink(open_store(s3_destination))
    day = START + timedelta(days=1)
    record = manifest.get(Window(Kind.PSTN, day, day + timedelta(days=1)))
    assert record is not None
    path = tmp_path / "previous.parquet"
    assert sink.previous(record.window, record, path)
    rows = pq.read_table(path)
    assert schema_for(Kind.PSTN) == rows.schema.remove_metadata()
    truth = emulator.rows(Kind.PSTN, day, day + timedelta(days=1), version="v1.0")
    assert_archive_exact(Kind.PSTN, rows, truth)
    later = Window(Kind.PSTN, START + timedelta(days=5), START + timedelta(days=6))
    assert not sink.previous(later, record, tmp_path / "none.parquet")
    assert not (tmp_path / "none.parquet").exists()

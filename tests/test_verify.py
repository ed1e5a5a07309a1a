"""`archiver verify` after a real backfill, into a local folder and into moto S3."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import archiver_env, backfill

from archiver.cli import main
from archiver.emulator import Emulator
from archiver.kinds import Kind
from archiver.manifest import Manifest, Record, State, utcnow
from archiver.ops import verify as verify_module
from archiver.ops.verify import check_file, verify
from archiver.store import open_store

ROWS = {Kind.PSTN: 300, Kind.DIRECT_ROUTING: 300}
KEY = "pstn/date=2024-03-04/20240304T000000Z.parquet"  # the first PSTN window
NEXT_DAY_KEY = "pstn/date=2024-03-05/20240305T000000Z.parquet"

pytestmark = pytest.mark.emulator(rows_per_day=ROWS)  # a few hundred rows per day and kind


@dataclass
class Archive:
    """A backfilled destination, with raw access to its objects (bypassing the archiver)."""

    destination: str  # a folder path or s3://bucket/prefix

    def _s3(self) -> tuple[str, str]:
        bucket, _, prefix = self.destination.removeprefix("s3://").partition("/")
        return bucket, prefix

    def read(self, key: str) -> bytes:
        """The object's bytes."""
        if not self.destination.startswith("s3://"):
            return (Path(self.destination) / key).read_bytes()
        bucket, prefix = self._s3()
        answer = boto3.client("s3").get_object(Bucket=bucket, Key=f"{prefix}/{key}")
        return bytes(answer["Body"].read())

    def write(self, key: str, data: bytes) -> None:
        """Replace (or create) the object."""
        if not self.destination.startswith("s3://"):
            path = Path(self.destination) / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            return
        bucket, prefix = self._s3()
        boto3.client("s3").put_object(Bucket=bucket, Key=f"{prefix}/{key}", Body=data)

    def delete(self, key: str) -> None:
        """Remove the object."""
        if not self.destination.startswith("s3://"):
            (Path(self.destination) / key).unlink()
            return
        bucket, prefix = self._s3()
        boto3.client("s3").delete_object(Bucket=bucket, Key=f"{prefix}/{key}")


@pytest.fixture(params=["local", "s3"])
def archive(
    request: pytest.FixtureRequest,
    emulator: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Archive:
    """Two days of both kinds backfilled into a folder or a bucket; the env points at it."""
    if request.param == "local":
        destination = str(tmp_path / "archive")
    else:
        destination = request.getfixturevalue("s3_destination")
    env = archiver_env(emulator, destination)
    assert 0 == backfill(monkeypatch, env, "--start", "2024-03-04", "--end", "2024-03-06")
    return Archive(destination)


def run_verify(capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """Run `archiver verify` in-process (the env is set); its exit code and stdout lines."""
    capsys.readouterr()
    code = main(["verify"])
    return code, capsys.readouterr().out.splitlines()


def sha256(data: bytes) -> str:
    """Hex SHA-256."""
    return hashlib.sha256(data).hexdigest()


def parquet_bytes(table: pa.Table, *, statistics: bool = True) -> bytes:
    """`table` as a Parquet file."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, write_statistics=statistics)
    return bytes(sink.getvalue().to_pybytes())


def parquet_table(data: bytes) -> pa.Table:
    """A Parquet file's table."""
    return pq.read_table(pa.BufferReader(data), partitioning=None)


def test_fresh_backfill_verifies_clean(
    archive: Archive, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every object of a fresh backfill matches the manifest: exit 0 and a summary line."""
    assert (0, ["verified 4 objects: 0 problems"]) == run_verify(capsys)


def test_deleted_object_is_missing(archive: Archive, capsys: pytest.CaptureFixture[str]) -> None:
    """An object the manifest records but the destination lacks is reported MISSING."""
    archive.delete(KEY)
    assert (
        1,
        [
            f"MISSING {KEY}: recorded in the manifest, not in the destination",
            "verified 4 objects: 1 problem",
        ],
    ) == run_verify(capsys)


def test_flipped_byte_fails_the_checksum(
    archive: Archive, capsys: pytest.CaptureFixture[str]
) -> None:
    """One byte flipped in the middle of an object gives a CHECKSUM line with both digests."""
    original = archive.read(KEY)
    corrupted = bytearray(original)
    corrupted[len(corrupted) // 2] ^= 0xFF
    archive.write(KEY, bytes(corrupted))
    assert (
        1,
        [
            f"CHECKSUM {KEY}: sha256 {sha256(bytes(corrupted))} != recorded {sha256(original)}",
            "verified 4 objects: 1 problem",
        ],
    ) == run_verify(capsys)


def test_fewer_rows_fail_checksum_size_and_rows(
    archive: Archive, capsys: pytest.CaptureFixture[str]
) -> None:
    """A valid Parquet object with fewer rows than recorded gives CHECKSUM, SIZE and ROWS."""
    original = archive.read(KEY)
    shorter = parquet_bytes(parquet_table(original).slice(0, 100))
    archive.write(KEY, shorter)
    assert (
        1,
        [
            f"CHECKSUM {KEY}: sha256 {sha256(shorter)} != recorded {sha256(original)}",
            f"SIZE {KEY}: {len(shorter)} bytes != recorded {len(original)}",
            f"ROWS {KEY}: 100 rows != recorded 300",
            "verified 4 objects: 3 problems",
        ],
    ) == run_verify(capsys)


def test_rows_of_another_day_are_outside(
    archive: Archive, capsys: pytest.CaptureFixture[str]
) -> None:
    """The next day's rows under this day's key give an OUTSIDE line naming the first one."""
    next_day = archive.read(NEXT_DAY_KEY)
    archive.write(KEY, next_day)
    first = min(parquet_table(next_day).column("startDateTime").to_pylist())
    assert datetime(2024, 3, 5, tzinfo=UTC) == first  # the emulator has a row at midnight
    code, lines = run_verify(capsys)
    assert 1 == code
    assert [
        f"OUTSIDE {KEY}: startDateTime 2024-03-05T00:00:00Z outside "
        "[2024-03-04T00:00:00Z, 2024-03-05T00:00:00Z)"
    ] == [line for line in lines if line.startswith(("OUTSIDE", "ROWS"))]
    assert f"CHECKSUM {KEY}" == lines[0].partition(":")[0]


def test_stray_object_is_reported(archive: Archive, capsys: pytest.CaptureFixture[str]) -> None:
    """A Parquet object under the layout that the manifest does not know is a STRAY."""
    stray = "pstn/date=2024-03-04/20240304T120000Z.parquet"
    archive.write(stray, archive.read(KEY))
    assert (
        1,
        [f"STRAY {stray}: not in the manifest", "verified 4 objects: 1 problem"],
    ) == run_verify(capsys)


def test_garbage_object_is_unreadable(archive: Archive, capsys: pytest.CaptureFixture[str]) -> None:
    """An object pyarrow cannot open gives CHECKSUM, SIZE and an UNREADABLE line."""
    original = archive.read(KEY)
    garbage = b"PAR1 this is not a Parquet file PAR1"
    archive.write(KEY, garbage)
    code, lines = run_verify(capsys)
    assert 1 == code
    assert [
        f"CHECKSUM {KEY}: sha256 {sha256(garbage)} != recorded {sha256(original)}",
        f"SIZE {KEY}: {len(garbage)} bytes != recorded {len(original)}",
    ] == lines[:2]
    assert f"UNREADABLE {KEY}" == lines[2].partition(":")[0]
    assert ["verified 4 objects: 3 problems"] == lines[3:]


def test_destination_without_manifest_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Verifying a folder that holds no archive exits 2 with one line on stderr."""
    monkeypatch.setenv("ARCHIVER_DESTINATION", str(tmp_path))
    assert 2 == main(["verify"])
    err = capsys.readouterr().err.splitlines()
    assert [f"archiver: destination {tmp_path}: nothing archived here (no manifest)"] == err


def test_window_rearchived_during_verify_is_not_a_problem(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An object replaced and re-recorded after verify loaded the manifest, and a new
    window archived meanwhile, are checked against a fresh manifest, not reported."""
    destination = tmp_path / "archive"
    env = archiver_env(emulator, destination)
    assert 0 == backfill(monkeypatch, env, "--start", "2024-03-04", "--end", "2024-03-06")
    archive = Archive(str(destination))
    store = open_store(str(destination))
    stale = Manifest(store)
    anyio.run(stale.load)

    async def rearchive(key: str, start: datetime, data: bytes) -> None:
        writer = Manifest(store)
        await writer.load()
        archive.write(key, data)
        record = Record(
            kind=Kind.PSTN,
            start=start,
            end=start + timedelta(days=1),
            state=State.DONE,
            recorded_at=utcnow(),
            key=key,
            rows=parquet_table(data).num_rows,
            bytes=len(data),
            sha256=sha256(data),
        )
        await writer.record(record)

    shorter = parquet_bytes(parquet_table(archive.read(KEY)).slice(0, 100))
    anyio.run(rearchive, KEY, datetime(2024, 3, 4, tzinfo=UTC), shorter)
    later = parquet_bytes(parquet_table(archive.read(NEXT_DAY_KEY)).slice(0, 0))
    new_key = "pstn/date=2024-03-06/20240306T000000Z.parquet"
    anyio.run(rearchive, new_key, datetime(2024, 3, 6, tzinfo=UTC), later)
    report = anyio.run(verify, store, stale)
    assert (4, []) == (report.checked, report.problems)


def test_outside_rows_are_found_without_statistics(tmp_path: Path) -> None:
    """A file written without column statistics is read to find rows outside its window."""
    starts = [datetime(2024, 3, 4, 5, tzinfo=UTC), None, datetime(2024, 3, 5, 0, 0, 0, 7, UTC)]
    table = pa.table({"startDateTime": pa.array(starts, pa.timestamp("us", tz="UTC"))})
    data = parquet_bytes(table, statistics=False)
    assert pq.read_metadata(pa.BufferReader(data)).row_group(0).column(0).statistics is None
    path = tmp_path / "x.parquet"
    path.write_bytes(data)
    record = Record(
        kind=Kind.PSTN,
        start=datetime(2024, 3, 4, tzinfo=UTC),
        end=datetime(2024, 3, 5, tzinfo=UTC),
        state=State.DONE,
        recorded_at=utcnow(),
        key=KEY,
        rows=3,
        bytes=len(data),
        sha256=sha256(data),
    )
    assert [
        f"OUTSIDE {KEY}: startDateTime 2024-03-05T00:00:00.000007Z outside "
        "[2024-03-04T00:00:00Z, 2024-03-05T00:00:00Z)"
    ] == [str(p) for p in check_file(path, KEY, record)]


def test_reader_crash_is_unreadable_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A suspect file is parsed in a child process, so a pyarrow abort is one UNREADABLE line."""
    path = tmp_path / "x.parquet"
    path.write_bytes(b"PAR1 corrupt PAR1")
    monkeypatch.setattr(verify_module, "_CHILD", "import os; os.abort()")
    record = Record(
        kind=Kind.PSTN,
        start=datetime(2024, 3, 4, tzinfo=UTC),
        end=datetime(2024, 3, 5, tzinfo=UTC),
        state=State.DONE,
        recorded_at=utcnow(),
        key=KEY,
        sha256=sha256(b"something else"),
    )
    assert [
        f"CHECKSUM {KEY}: sha256 {sha256(path.read_bytes())} != recorded {record.sha256}",
        f"UNREADABLE {KEY}: pyarrow crashed reading it (SIGABRT)",
    ] == [str(p) for p in check_file(path, KEY, record)]

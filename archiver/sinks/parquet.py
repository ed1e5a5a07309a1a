"""Parquet files, one per window, written as a stream of row groups to a local spool file.

Batches wait for their row group in a spill file beside the Parquet file, not in
memory, and one row group is written at a time in the whole process: so the rows held
in memory grow neither with the size of a window nor with the windows in flight (with
many in flight the row groups are smaller all the same). Columns with a value per row
are written without a dictionary. Provenance goes into the file's key-value metadata.
Blocking: callers run these methods in a worker thread.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from archiver.schema import UNIQUE_PER_ROW

ROW_GROUP_ROWS = 100_000  # rows per row group: big enough for scans, small enough for memory
BUFFERED_ROWS = 200_000  # rows all windows in flight may buffer together
MIN_GROUP_ROWS = 25_000  # ... but no row group is made smaller than this for it
COMPRESSION = "zstd"
META_PREFIX = "archiver."
SPILL_SUFFIX = ".rows"  # beside the Parquet file: the rows waiting for their row group
SPILL_BUFFER = 1 << 16  # bytes gathered before each write to a spill file
# Row groups written at once, all windows together: each holds its rows in memory while it
# is written (beta rows: some 10 MB for 25,000), and windows in flight fill theirs in step.
# Writing a row group is a small part of a window's CPU, so one at a time costs no speed.
_writing_groups = threading.Semaphore(1)


def group_rows(windows_in_flight: int) -> int:
    """Rows per row group when this many windows are written at once: 100,000 for one or
    two, less beyond, so the process buffers about BUFFERED_ROWS rows in all."""
    return max(MIN_GROUP_ROWS, min(ROW_GROUP_ROWS, BUFFERED_ROWS // max(1, windows_in_flight)))


@dataclass(frozen=True)
class WrittenFile:
    """What was written: enough for the store and the manifest."""

    path: Path
    rows: int
    size: int
    sha256: str  # hex digest of the whole file


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class _Spill:
    """Rows waiting for their row group, in an Arrow IPC file: written as they are (no
    encoding, no compression), read back once, whole."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.path = path
        self.rows = 0
        self._sink = pa.BufferedOutputStream(pa.OSFile(str(path), "wb"), SPILL_BUFFER)
        self._writer = pa.ipc.new_stream(self._sink, schema)

    def add(self, rows: pa.RecordBatch | pa.Table) -> None:
        if isinstance(rows, pa.Table):
            self._writer.write_table(rows)
        else:
            self._writer.write_batch(rows)
        self.rows += rows.num_rows

    def take(self) -> pa.Table:
        """Every row spilled, as one table; the file is gone."""
        try:
            self._close()
            with pa.OSFile(str(self.path)) as source:
                return pa.ipc.open_stream(source).read_all()
        finally:
            self.path.unlink(missing_ok=True)

    def drop(self) -> None:
        """Forget the rows."""
        try:
            self._close()
        finally:
            self.path.unlink(missing_ok=True)

    def _close(self) -> None:
        try:
            self._writer.close()
        finally:
            self._sink.close()  # flushes the buffer and closes the file


class WindowWriter:
    """Writes one window's batches into `path`; `close()` finishes and hashes the file."""

    def __init__(
        self,
        path: Path,
        schema: pa.Schema,
        metadata: dict[str, str],
        group_rows: int = ROW_GROUP_ROWS,
    ) -> None:
        self.path = path
        self.rows = 0
        self.schema = schema
        self.group_rows = group_rows
        self._metadata = {f"{META_PREFIX}{k}": v for k, v in metadata.items()}
        self._spill: _Spill | None = None  # the rows not yet in a row group
        self._writer = pq.ParquetWriter(
            path,
            schema.with_metadata(self._metadata),
            compression=COMPRESSION,
            use_dictionary=[f.name for f in schema if f.name not in UNIQUE_PER_ROW],
            write_statistics=True,
        )

    def write(self, batch: pa.RecordBatch) -> None:
        """Add rows; each time a row group's worth waits in the spill file, it is written."""
        if not batch.num_rows:
            return
        self._spilled(batch)
        self.rows += batch.num_rows
        if self._spill is not None and self._spill.rows >= self.group_rows:
            self._flush(whole_groups_only=True)

    def _spilled(self, rows: pa.RecordBatch | pa.Table) -> None:
        if self._spill is None:
            self._spill = _Spill(self.path.with_name(self.path.name + SPILL_SUFFIX), self.schema)
        self._spill.add(rows)

    def _flush(self, whole_groups_only: bool = False) -> None:
        """Write the spilled rows as row groups of `group_rows`; the rest of a group stays
        spilled when `whole_groups_only` (so no small group is cut off mid-window)."""
        spill, self._spill = self._spill, None
        if spill is None:
            return
        with _writing_groups:
            table = spill.take()
            keep = table.num_rows % self.group_rows if whole_groups_only else 0
            self._writer.write_table(table.slice(0, table.num_rows - keep), self.group_rows)
            if keep:
                self._spilled(table.slice(table.num_rows - keep))
            del table

    def close(self) -> WrittenFile:
        """Flush, record the row count in the metadata, close, and hash the file."""
        self._flush()
        self._writer.add_key_value_metadata({f"{META_PREFIX}rows": str(self.rows)})
        self._writer.close()
        return WrittenFile(self.path, self.rows, self.path.stat().st_size, sha256_file(self.path))

    def abort(self) -> None:
        """Drop the unfinished file and its spilled rows."""
        try:
            if self._spill is not None:
                self._spill.drop()
        finally:
            try:
                self._writer.close()
            finally:
                self.path.unlink(missing_ok=True)

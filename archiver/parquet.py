"""Parquet files, one per window, written as a stream of row groups to a local spool file.

Batches are buffered only up to one row group, so memory does not grow with the
size of a window; with many windows in flight the row groups are smaller. Columns
with a value per row are written without a dictionary. Provenance goes into the
file's key-value metadata. Blocking: callers run these methods in a worker thread.
"""

from __future__ import annotations

import hashlib
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
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._writer = pq.ParquetWriter(
            path,
            schema.with_metadata(self._metadata),
            compression=COMPRESSION,
            use_dictionary=[f.name for f in schema if f.name not in UNIQUE_PER_ROW],
            write_statistics=True,
        )

    def write(self, batch: pa.RecordBatch) -> None:
        """Add rows; each time a row group's worth is buffered, it is written."""
        if not batch.num_rows:
            return
        self._pending.append(batch)
        self._pending_rows += batch.num_rows
        self.rows += batch.num_rows
        if self._pending_rows >= self.group_rows:
            self._flush(whole_groups_only=True)

    def _flush(self, whole_groups_only: bool = False) -> None:
        """Write the buffered rows as row groups of `group_rows`; the rest of a group stays
        buffered when `whole_groups_only` (so no small group is cut off mid-window)."""
        if not self._pending:
            return
        table = pa.Table.from_batches(self._pending, schema=self.schema)
        keep = table.num_rows % self.group_rows if whole_groups_only else 0
        self._writer.write_table(table.slice(0, table.num_rows - keep), self.group_rows)
        self._pending = table.slice(table.num_rows - keep).to_batches() if keep else []
        self._pending_rows = keep

    def close(self) -> WrittenFile:
        """Flush, record the row count in the metadata, close, and hash the file."""
        self._flush()
        self._writer.add_key_value_metadata({f"{META_PREFIX}rows": str(self.rows)})
        self._writer.close()
        return WrittenFile(self.path, self.rows, self.path.stat().st_size, sha256_file(self.path))

    def abort(self) -> None:
        """Drop the unfinished file."""
        try:
            self._writer.close()
        finally:
            self.path.unlink(missing_ok=True)

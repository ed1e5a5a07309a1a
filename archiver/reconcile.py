"""A window's rows made unique by id, once its pages are written, in bounded memory.

Paging over live data can repeat a row, and a re-archive must keep the rows of the
object already archived that this fetch did not return. Both are settled here, after
the window's spool file is complete, from its `id` column alone: per page, a Python set
of every id seen so far cost about 0.6 µs a row and 120 MB per million rows.

The ids are held as Arrow text (about 40 bytes each) and examined in partitions by
their first character, so no hash table ever holds more than about a sixteenth of
them when ids are GUIDs (any other ids are still handled exactly, with larger
partitions). The file is rewritten only when something must change.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from archiver.parquet import WindowWriter, WrittenFile

ID = "id"
BATCH_ROWS = 65_536  # rows per batch when a file is copied
WHOLE = 65_536  # up to this many ids are examined in one group


def read_ids(path: Path) -> pa.ChunkedArray:
    """The `id` column of a Parquet file, one chunk per row group."""
    with pq.ParquetFile(path) as file:
        return file.read(columns=[ID]).column(ID)


class _Partitioned:
    """Ids grouped by their first `width` characters (0: all in one group), one group
    gathered at a time."""

    def __init__(self, ids: pa.ChunkedArray, width: int) -> None:
        self.chunks: list[pa.Array] = list(ids.chunks)
        self.firsts = [pc.utf8_slice_codeunits(chunk, 0, width) for chunk in self.chunks]

    def first_characters(self) -> set[str]:
        """The first characters present."""
        return {key for first in self.firsts for key in pc.unique(first).to_pylist()}

    def part(self, key: str) -> tuple[pa.Array, pa.Array]:
        """The ids starting with `key`, and their row numbers (ascending)."""
        ids: list[pa.Array] = []
        rows: list[pa.Array] = []
        offset = 0
        for chunk, first in zip(self.chunks, self.firsts, strict=True):
            hits = pc.indices_nonzero(pc.equal(first, key))
            ids.append(chunk.take(hits))
            rows.append(pc.add(hits, pa.scalar(offset, pa.uint64())))
            offset += len(chunk)
        return pa.concat_arrays(ids) if ids else pa.array([], pa.string()), _concat(rows)


def _width(*ids: pa.ChunkedArray) -> int:
    """Characters that group ids: up to about 64k ids, one hash table is both small and
    faster than several."""
    return 0 if max(map(len, ids)) <= WHOLE else 1


def _concat(rows: list[pa.Array]) -> pa.Array:
    """Row-number arrays as one uint64 array."""
    return pa.concat_arrays(rows) if rows else pa.array([], pa.uint64())


def repeated_rows(ids: pa.ChunkedArray) -> pa.Array:
    """Row numbers of the rows whose id an earlier row already has (the first copy wins)."""
    partitioned = _Partitioned(ids, _width(ids))
    dropped: list[pa.Array] = []
    for key in partitioned.first_characters():
        part, rows = partitioned.part(key)
        if pc.count_distinct(part).as_py() == len(part):
            continue
        grouped = pa.table({ID: part, "row": rows}).group_by(ID).aggregate([("row", "min")])
        dropped.append(rows.filter(pc.invert(pc.is_in(rows, value_set=grouped["row_min"]))))
    return _concat(dropped)


def rows_not_in(ids: pa.ChunkedArray, others: pa.ChunkedArray) -> pa.Array:
    """Row numbers of the rows of `others` whose id is not among `ids`."""
    width = _width(ids, others)  # the same grouping on both sides
    mine, theirs = _Partitioned(ids, width), _Partitioned(others, width)
    missing: list[pa.Array] = []
    for key in theirs.first_characters():
        part, rows = theirs.part(key)
        known, _ = mine.part(key)
        missing.append(rows.filter(pc.invert(pc.is_in(part, value_set=known))))
    return _concat(missing)


def _mask(rows: int, listed: pa.Array, keep_listed: bool) -> pa.BooleanArray:
    """A filter over `rows` rows: True for the row numbers `listed` (or for the others)."""
    marked = pc.is_in(pa.array(range(rows), pa.uint64()), value_set=listed)
    return marked if keep_listed else pc.invert(marked)


def _copy(source: Path, writer: WindowWriter, mask: pa.BooleanArray | None) -> int:
    """Write the rows of `source`, conformed to the writer's schema, that `mask` keeps (all
    when None); how many. A column the source lacks is null in every row."""
    schema = writer.schema
    written = offset = 0
    with pq.ParquetFile(source) as file:
        for batch in file.iter_batches(batch_size=BATCH_ROWS):
            columns = [
                batch.column(f.name).cast(f.type)
                if f.name in batch.schema.names
                else pa.nulls(batch.num_rows, f.type)
                for f in schema
            ]
            conformed = pa.RecordBatch.from_arrays(columns, schema=schema)
            if mask is not None:
                conformed = conformed.filter(mask.slice(offset, batch.num_rows))
            offset += batch.num_rows
            writer.write(conformed)
            written += conformed.num_rows
    return written


@dataclass(frozen=True)
class Reconciled:
    """The window's final file, and how many rows came from the previous object."""

    file: WrittenFile
    kept: int
    repeated: int


def reconcile(
    fetched: WrittenFile,
    previous: Path | None,
    out: Path,
    schema: pa.Schema,
    metadata: dict[str, str],
) -> Reconciled:
    """Make `fetched` the window's final file: each id once (its first copy), then the rows
    of `previous` (the object already archived, if any) whose id this fetch lacks.

    Returns `fetched` itself when nothing changes; otherwise writes `out` (with `schema`
    and `metadata`, as `fetched` was written) and removes `fetched`. Blocking: run it in
    a worker thread.
    """
    ids = read_ids(fetched.path)
    repeated = repeated_rows(ids)
    unseen = rows_not_in(ids, read_ids(previous)) if previous is not None else _concat([])
    if previous is None or not len(unseen):
        previous = None
        if not len(repeated):
            return Reconciled(fetched, 0, 0)
    first_copies = _mask(len(ids), repeated, keep_listed=False) if len(repeated) else None
    del ids
    writer = WindowWriter(out, schema, metadata)
    try:
        _copy(fetched.path, writer, first_copies)
        kept = 0
        if previous is not None:
            rows = pq.read_metadata(previous).num_rows
            kept = _copy(previous, writer, _mask(rows, unseen, keep_listed=True))
        written = writer.close()
    except BaseException:
        writer.abort()
        raise
    fetched.path.unlink(missing_ok=True)
    return Reconciled(written, kept, len(repeated))

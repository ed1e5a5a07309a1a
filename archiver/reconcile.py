"""A window's rows made unique by their key, once its pages are written, in bounded memory.

A row's key is its `id` (the blocked-users log's `remediationId`); "id" below means it.

Paging over live data can repeat a row, and a re-archive must keep the rows of the
object already archived that this fetch did not return. Both are settled here, after
the window's spool file is complete, from the ids alone: per page, a Python set of
every id seen so far cost about 0.6 µs a row and 120 MB per million rows.

The ids are noted as the pages are written, in a compact lossless form (20 bytes for
a GUID: `compact`), and examined in 16 groups by their first byte, so no hash table
holds more than a small part of them. The file is rewritten only when something must
change.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from archiver.sinks.parquet import ROW_GROUP_ROWS, WindowWriter, WrittenFile

ID = "id"  # the key column, unless the kind names another
BATCH_ROWS = 65_536  # rows per batch when a file is copied
WHOLE = 65_536  # up to this many ids are examined in one group

GUID_TEXT = 36  # xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx
GUID_BYTES = 16
HYPHENS = (8, 13, 18, 23)
# Prefix of every id that is not a lowercase GUID: such an id is never 16 bytes long once
# compacted, so it can never equal a compacted GUID.
OTHER = b"\xff" * (GUID_BYTES + 1)


@functools.lru_cache(maxsize=64)
def _guid_offsets(count: int) -> pa.Buffer:
    """int32 offsets 0, 16, 32, ... for `count` 16-byte values."""
    return pa.array(range(0, GUID_BYTES * (count + 1), GUID_BYTES), pa.int32()).buffers()[1]


def _guid_bytes(text: bytes, count: int) -> bytes | None:
    """`count` lowercase GUIDs written back to back, as their 16-byte values; else None."""
    if len(text) != GUID_TEXT * count:
        return None
    if any(text[at::GUID_TEXT] != b"-" * count for at in HYPHENS):
        return None
    digits = text.replace(b"-", b"")
    if len(digits) != 2 * GUID_BYTES * count:
        return None
    try:
        hex_digits = digits.decode("ascii")
        value = bytes.fromhex(hex_digits)
    except ValueError:  # not ASCII, or not hex
        return None
    # fromhex skips whitespace and reads upper case: only lowercase survives the round trip
    return value if value.hex() == hex_digits else None


def _compact_one(text: str) -> bytes:
    """One id in compact form."""
    encoded = text.encode()
    return _guid_bytes(encoded, 1) or OTHER + encoded


def compact(ids: pa.Array) -> pa.Array:
    """Ids as binary, losslessly and one to one: a lowercase GUID as its 16 bytes, any
    other id as OTHER plus its UTF-8. A page of GUIDs is converted in a few bulk steps."""
    count = len(ids)
    if count and not ids.null_count:
        lengths = pc.min_max(pc.binary_length(ids))
        if lengths["min"].as_py() == lengths["max"].as_py() == GUID_TEXT:
            first = memoryview(ids.buffers()[1]).cast("i")[ids.offset]
            text = ids.buffers()[2].to_pybytes()[first : first + GUID_TEXT * count]
            value = _guid_bytes(text, count)
            if value is not None:
                buffers = [None, _guid_offsets(count), pa.py_buffer(value)]
                return pa.Array.from_buffers(pa.binary(), count, buffers)
    return pa.array([_compact_one(text) for text in ids.to_pylist()], pa.binary())


def read_ids(path: Path, key: str = ID) -> pa.ChunkedArray:
    """The compacted `key` column of a Parquet file, row group by row group (reading the
    whole column at once takes a few times its size)."""
    chunks: list[pa.Array] = []
    with pq.ParquetFile(path) as file:
        for group in range(file.num_row_groups):
            column = file.read_row_group(group, columns=[key], use_threads=False).column(key)
            chunks.extend(compact(chunk) for chunk in column.chunks)
    return pa.chunked_array(chunks, pa.binary())


class Ids:
    """The compacted ids of the rows a window's file holds so far, in the order written.

    Noted from the batches as they are written, rather than read back from the file at
    the end: about 20 bytes a GUID, against 40 as Arrow text.
    """

    GATHER = 64  # small arrays are combined in groups of this many

    def __init__(self, key: str = ID) -> None:
        self.key = key  # the key column
        self._chunks: list[pa.Array] = []
        self._recent: list[pa.Array] = []

    def add(self, batch: pa.RecordBatch) -> None:
        """Note the ids of a batch just written."""
        if batch.num_rows:
            self._recent.append(compact(batch.column(self.key)))
            if len(self._recent) >= self.GATHER:
                self._gather()

    def _gather(self) -> None:
        if self._recent:
            self._chunks.append(pa.concat_arrays(self._recent))
            self._recent = []

    def column(self) -> pa.ChunkedArray:
        """All ids noted, in order."""
        self._gather()
        return pa.chunked_array(self._chunks, pa.binary())


class _Groups:
    """Compacted ids in up to 16 groups by the high half of their first byte (or all in
    one group), one group gathered at a time. Equal ids are always in the same group."""

    def __init__(self, ids: pa.ChunkedArray, grouped: bool) -> None:
        self.ids = ids
        groups: list[pa.Array] = []
        for chunk in ids.chunks if grouped else ():
            firsts = pc.binary_slice(chunk, 0, 1).dictionary_encode()
            number = [first[0] >> 4 if first else 0 for first in firsts.dictionary.to_pylist()]
            groups.append(pa.array(number, pa.int8()).take(firsts.indices))
        self.group = pa.concat_arrays(groups) if groups else pa.nulls(len(ids), pa.int8())
        self.names: list[int | None] = pc.unique(self.group).to_pylist() if len(ids) else []

    def part(self, name: int | None) -> tuple[pa.Array, pa.Array]:
        """The ids of one group, and their row numbers (ascending)."""
        member = pc.is_null(self.group) if name is None else pc.equal(self.group, name)
        rows = pc.indices_nonzero(member)
        return _take(self.ids, rows), rows


def _take(ids: pa.ChunkedArray, rows: pa.Array) -> pa.Array:
    """The ids at these ascending row numbers, chunk by chunk (a take from a chunked
    array would first copy all the chunks into one)."""
    parts: list[pa.Array] = []
    begin = 0
    for chunk in ids.chunks:
        end = begin + len(chunk)
        inside = rows.filter(pc.and_(pc.greater_equal(rows, begin), pc.less(rows, end)))
        parts.append(chunk.take(pc.subtract(inside, pa.scalar(begin, pa.uint64()))))
        begin = end
    return pa.concat_arrays(parts) if parts else pa.array([], pa.binary())


def _grouped(*ids: pa.ChunkedArray) -> bool:
    """Whether to group: up to about 64k ids, one hash table is both small and faster
    than several."""
    return max(map(len, ids)) > WHOLE


def _concat(rows: list[pa.Array]) -> pa.Array:
    """Row-number arrays as one uint64 array."""
    return pa.concat_arrays(rows) if rows else pa.array([], pa.uint64())


def repeated_rows(ids: pa.ChunkedArray) -> pa.Array:
    """Row numbers of the rows whose id an earlier row already has (the first copy wins)."""
    groups = _Groups(ids, _grouped(ids))
    dropped: list[pa.Array] = []
    for name in groups.names:
        part, rows = groups.part(name)
        if pc.count_distinct(part).as_py() == len(part):
            continue
        grouped = pa.table({ID: part, "row": rows}).group_by(ID).aggregate([("row", "min")])
        dropped.append(rows.filter(pc.invert(pc.is_in(rows, value_set=grouped["row_min"]))))
    return _concat(dropped)


def rows_not_in(ids: pa.ChunkedArray, others: pa.ChunkedArray) -> pa.Array:
    """Row numbers of the rows of `others` whose id is not among `ids`."""
    grouped = _grouped(ids, others)  # the same grouping on both sides
    mine, theirs = _Groups(ids, grouped), _Groups(others, grouped)
    missing: list[pa.Array] = []
    for name in theirs.names:
        part, rows = theirs.part(name)
        known, _ = mine.part(name)
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
    ids: pa.ChunkedArray,
    previous: Path | None,
    out: Path,
    schema: pa.Schema,
    metadata: dict[str, str],
    group_rows: int = ROW_GROUP_ROWS,
    key: str = ID,
) -> Reconciled:
    """Make `fetched` (whose rows have `ids`, of column `key`) the window's final file:
    each id once (its
    first copy), then the rows of `previous` (the object already archived, if any) whose
    id this fetch lacks.

    Returns `fetched` itself when nothing changes; otherwise writes `out` (with `schema`,
    `metadata` and `group_rows`, as `fetched` was written) and removes `fetched`.
    Blocking: run it in a worker thread.
    """
    repeated = repeated_rows(ids)
    unseen = rows_not_in(ids, read_ids(previous, key)) if previous is not None else _concat([])
    if previous is None or not len(unseen):
        previous = None
        if not len(repeated):
            return Reconciled(fetched, 0, 0)
    first_copies = _mask(len(ids), repeated, keep_listed=False) if len(repeated) else None
    del ids
    writer = WindowWriter(out, schema, metadata, group_rows)
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

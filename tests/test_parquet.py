"""The window's Parquet file: row groups, dictionaries, provenance."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from archiver.kinds import Kind
from archiver.schema import rows_to_batch, schema_for
from archiver.sinks.parquet import WindowWriter, group_rows


def test_columns_with_a_value_per_row_are_written_without_a_dictionary(tmp_path: Path) -> None:
    """Ids and timestamps are plain (a dictionary of unique values only grows the file);
    repetitive text keeps its dictionary."""
    rows = [
        {
            "id": f"row-{n}",
            "callId": f"call-{n}",
            "startDateTime": f"2024-03-04T10:{n // 60:02d}:{n % 60:02d}Z",
            "callType": "user_in" if n % 2 else "user_out",
        }
        for n in range(500)
    ]
    writer = WindowWriter(tmp_path / "w.parquet", schema_for(Kind.PSTN), {"kind": "pstn"})
    writer.write(rows_to_batch(Kind.PSTN, rows))
    written = writer.close()
    group = pq.read_metadata(written.path).row_group(0)
    encodings = {
        group.column(i).path_in_schema: group.column(i).encodings for i in range(group.num_columns)
    }
    for plain in ("id", "callId", "startDateTime", "endDateTime", "additionalData"):
        assert "RLE_DICTIONARY" not in encodings[plain], plain
    for repetitive in ("callType", "currency", "userId"):
        assert "RLE_DICTIONARY" in encodings[repetitive], repetitive
    assert rows_to_batch(Kind.PSTN, rows).to_pylist() == pq.read_table(written.path).to_pylist()


@pytest.mark.parametrize(
    ("in_flight", "rows"), [(1, 100_000), (2, 100_000), (4, 50_000), (8, 25_000), (64, 25_000)]
)
def test_row_groups_shrink_as_more_windows_are_in_flight(in_flight: int, rows: int) -> None:
    """About 200,000 rows are buffered in all, never row groups under 25,000 rows."""
    assert rows == group_rows(in_flight)


def test_a_window_is_written_in_row_groups_of_the_size_asked(tmp_path: Path) -> None:
    """Pages are buffered up to one row group; the last group holds what is left."""
    writer = WindowWriter(tmp_path / "w.parquet", schema_for(Kind.PSTN), {}, group_rows=2_500)
    for page in range(6):
        rows = [{"id": f"{page}-{n}", "callType": "user_in"} for n in range(1_000)]
        writer.write(rows_to_batch(Kind.PSTN, rows))
    written = writer.close()
    metadata = pq.read_metadata(written.path)
    sizes = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
    assert ([2_500, 2_500, 1_000], 6_000) == (sizes, written.rows)

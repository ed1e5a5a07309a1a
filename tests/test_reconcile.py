"""A window's file made unique by id, and merged with the object already archived."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from archiver.kinds import Kind
from archiver.parquet import ROW_GROUP_ROWS, WindowWriter, WrittenFile
from archiver.reconcile import WHOLE, reconcile
from archiver.schema import rows_to_batch, schema_for

KIND = Kind.DIRECT_ROUTING
META = {"kind": KIND.value, "window_start": "2024-03-04T00:00:00Z"}


def row(row_id: str, phrase: str) -> dict[str, Any]:
    """A Direct Routing row; `phrase` tells its copies apart."""
    return {"id": row_id, "startDateTime": "2024-03-04T10:00:00Z", "finalSipCodePhrase": phrase}


def write(path: Path, pages: list[list[dict[str, Any]]]) -> WrittenFile:
    """A window file of these pages, as the archiver writes it."""
    writer = WindowWriter(path, schema_for(KIND), META)
    for page in pages:
        writer.write(rows_to_batch(KIND, page))
    return writer.close()


def content(path: Path) -> list[tuple[str, str | None]]:
    """(id, finalSipCodePhrase) of every row, in file order."""
    table = pq.read_table(path, columns=["id", "finalSipCodePhrase"])
    return list(zip(table["id"].to_pylist(), table["finalSipCodePhrase"].to_pylist(), strict=True))


def test_nothing_to_change_keeps_the_file_as_written(tmp_path: Path) -> None:
    """Unique ids and no previous object: the fetched file is final; nothing is rewritten."""
    fetched = write(tmp_path / "a.parquet", [[row("a1", "x"), row("b2", "x")], [row("c3", "x")]])
    result = reconcile(fetched, None, tmp_path / "out.parquet", schema_for(KIND), META)
    assert (fetched, 0, 0) == (result.file, result.kept, result.repeated)
    assert not (tmp_path / "out.parquet").exists()


def test_repeated_rows_keep_their_first_copy_in_order(tmp_path: Path) -> None:
    """Repeats within a page, across pages, within one first-character group and across
    groups: each id once, as its first copy had it, in the order first seen."""
    pages = [
        [row("a1", "first"), row("b1", "first"), row("a2", "first")],
        [row("a2", "second"), row("c1", "first"), row("a1", "second")],
        [row("b1", "second"), row("b1", "third"), row("d1", "first")],
    ]
    fetched = write(tmp_path / "a.parquet", pages)
    out = tmp_path / "out.parquet"
    result = reconcile(fetched, None, out, schema_for(KIND), META)
    assert (out, 0, 4) == (result.file.path, result.kept, result.repeated)
    assert not fetched.path.exists()
    expected = [("a1", "first"), ("b1", "first"), ("a2", "first"), ("c1", "first")]
    assert [*expected, ("d1", "first")] == content(out)
    assert 5 == result.file.rows == pq.read_metadata(out).num_rows
    # written as the archiver writes: its schema and provenance
    assert schema_for(KIND) == pq.read_schema(out).remove_metadata()
    footer = pq.read_metadata(out).metadata
    assert (b"5", b"direct_routing") == (footer[b"archiver.rows"], footer[b"archiver.kind"])


def test_ids_that_all_share_a_first_character_are_still_exact(tmp_path: Path) -> None:
    """Ids that are not GUIDs fall into one group, which is still exact."""
    ids = [f"call-{i % 700}" for i in range(1000)]  # 300 repeats
    fetched = write(tmp_path / "a.parquet", [[row(i, str(n)) for n, i in enumerate(ids)]])
    result = reconcile(fetched, None, tmp_path / "out.parquet", schema_for(KIND), META)
    assert [(f"call-{i}", str(i)) for i in range(700)] == content(result.file.path)
    assert 300 == result.repeated


def test_many_ids_are_examined_in_groups_and_still_exact(tmp_path: Path) -> None:
    """Above WHOLE ids, groups by first character: repeats in several groups, far from
    their first copies, in other row groups of the file, are all found."""
    count = ROW_GROUP_ROWS + 10
    assert count > WHOLE
    ids = [f"{n * 2_654_435_761 % 2**32:08x}" for n in range(count)]  # unique, all 16 firsts
    assert 16 == len({i[0] for i in ids})
    late = [ids[5], ids[77_777], ids[count - 1]]
    assert 3 == len({i[0] for i in late})
    pages = [[row(i, "first") for i in ids], [row(i, "late") for i in late]]
    fetched = write(tmp_path / "a.parquet", pages)
    assert pq.read_metadata(fetched.path).num_row_groups > 1
    result = reconcile(fetched, None, tmp_path / "out.parquet", schema_for(KIND), META)
    assert [(i, "first") for i in ids] == content(result.file.path)
    assert 3 == result.repeated


def test_previous_rows_this_fetch_lacks_are_kept_after_the_new_ones(tmp_path: Path) -> None:
    """A re-archive: the new copy of a row wins; rows only the old object holds are kept."""
    old = write(tmp_path / "old.parquet", [[row("a1", "old"), row("z9", "old"), row("b2", "old")]])
    fetched = write(tmp_path / "a.parquet", [[row("b2", "new"), row("c3", "new")]])
    result = reconcile(fetched, old.path, tmp_path / "out.parquet", schema_for(KIND), META)
    assert [("b2", "new"), ("c3", "new"), ("a1", "old"), ("z9", "old")] == content(result.file.path)
    assert (2, 0) == (result.kept, result.repeated)
    assert old.path.exists()  # the caller's download: not ours to remove


def test_a_large_fetch_merges_a_small_previous_object_exactly(tmp_path: Path) -> None:
    """Above WHOLE ids on one side only: both sides are grouped alike."""
    ids = [f"{n * 2_654_435_761 % 2**32:08x}" for n in range(WHOLE + 1)]
    old = write(tmp_path / "old.parquet", [[row(ids[3], "old"), row("zz-gone", "old")]])
    fetched = write(tmp_path / "a.parquet", [[row(i, "new") for i in ids]])
    result = reconcile(fetched, old.path, tmp_path / "out.parquet", schema_for(KIND), META)
    assert [*[(i, "new") for i in ids], ("zz-gone", "old")] == content(result.file.path)
    assert 1 == result.kept


def test_previous_object_with_nothing_extra_changes_nothing(tmp_path: Path) -> None:
    """When the fetch holds every id the old object held, the fetched file is final."""
    old = write(tmp_path / "old.parquet", [[row("a1", "old")]])
    fetched = write(tmp_path / "a.parquet", [[row("a1", "new"), row("b2", "new")]])
    result = reconcile(fetched, old.path, tmp_path / "out.parquet", schema_for(KIND), META)
    assert fetched == result.file
    assert [("a1", "new"), ("b2", "new")] == content(fetched.path)


def test_an_older_object_lacking_a_column_merges_with_nulls(tmp_path: Path) -> None:
    """An object written before a column existed: its rows get null there."""
    older = schema_for(KIND).remove(schema_for(KIND).get_field_index("userCountryCode"))
    table = pa.Table.from_pylist(
        [{"id": "old-1", "finalSipCodePhrase": "old", "startDateTime": None}], schema=older
    )
    pq.write_table(table, tmp_path / "old.parquet")
    fetched = write(tmp_path / "a.parquet", [[{**row("new-1", "new"), "userCountryCode": "SE"}]])
    result = reconcile(
        fetched, tmp_path / "old.parquet", tmp_path / "out.parquet", schema_for(KIND), META
    )
    merged = pq.read_table(result.file.path)
    assert schema_for(KIND) == merged.schema.remove_metadata()
    assert ["new-1", "old-1"] == merged["id"].to_pylist()
    assert ["SE", None] == merged["userCountryCode"].to_pylist()


def test_an_empty_fetch_keeps_every_previous_row(tmp_path: Path) -> None:
    """Graph returns nothing now: the archive keeps all it held."""
    old = write(tmp_path / "old.parquet", [[row("a1", "old"), row("b2", "old")]])
    fetched = write(tmp_path / "a.parquet", [])
    result = reconcile(fetched, old.path, tmp_path / "out.parquet", schema_for(KIND), META)
    assert [("a1", "old"), ("b2", "old")] == content(result.file.path)
    assert 2 == result.kept

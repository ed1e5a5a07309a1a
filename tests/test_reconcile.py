"""A window's file made unique by id, and merged with the object already archived."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from archiver.kinds import Kind
from archiver.reconcile import OTHER, WHOLE, Ids, Reconciled, compact, read_ids, reconcile
from archiver.schema import rows_to_batch, schema_for
from archiver.sinks.parquet import ROW_GROUP_ROWS, WindowWriter, WrittenFile

KIND = Kind.DIRECT_ROUTING
META = {"kind": KIND.value, "window_start": "2024-03-04T00:00:00Z"}


def row(row_id: str, phrase: str) -> dict[str, Any]:
    """A Direct Routing row; `phrase` tells its copies apart."""
    return {"id": row_id, "startDateTime": "2024-03-04T10:00:00Z", "finalSipCodePhrase": phrase}


@dataclass(frozen=True)
class Fetched:
    """A window file as the archiver writes it, and the ids it noted meanwhile."""

    file: WrittenFile
    ids: pa.ChunkedArray

    @property
    def path(self) -> Path:
        return self.file.path


def write(path: Path, pages: list[list[dict[str, Any]]]) -> Fetched:
    """A window file of these pages, as the archiver writes it."""
    writer = WindowWriter(path, schema_for(KIND), META)
    ids = Ids()
    for page in pages:
        batch = rows_to_batch(KIND, page)
        writer.write(batch)
        ids.add(batch)
    return Fetched(writer.close(), ids.column())


def settle(fetched: Fetched, previous: Path | None, out: Path) -> Reconciled:
    """reconcile() as the archiver calls it."""
    return reconcile(fetched.file, fetched.ids, previous, out, schema_for(KIND), META)


def content(path: Path) -> list[tuple[str, str | None]]:
    """(id, finalSipCodePhrase) of every row, in file order."""
    table = pq.read_table(path, columns=["id", "finalSipCodePhrase"])
    return list(zip(table["id"].to_pylist(), table["finalSipCodePhrase"].to_pylist(), strict=True))


def test_nothing_to_change_keeps_the_file_as_written(tmp_path: Path) -> None:
    """Unique ids and no previous object: the fetched file is final; nothing is rewritten."""
    fetched = write(tmp_path / "a.parquet", [[row("a1", "x"), row("b2", "x")], [row("c3", "x")]])
    result = settle(fetched, None, tmp_path / "out.parquet")
    assert (fetched.file, 0, 0) == (result.file, result.kept, result.repeated)
    assert not (tmp_path / "out.parquet").exists()
    # the ids noted while writing are the file's id column
    expected = [OTHER + b"a1", OTHER + b"b2", OTHER + b"c3"]
    assert expected == fetched.ids.to_pylist() == read_ids(fetched.path).to_pylist()


def test_ids_noted_over_many_pages_keep_their_order() -> None:
    """Ids noted page by page (combined every GATHER pages) come back in order."""
    ids = Ids()
    for page in range(3 * Ids.GATHER + 5):
        ids.add(rows_to_batch(KIND, [row(f"p{page}-{n}", "x") for n in range(3)]))
    column = ids.column()
    noted = [f"p{page}-{n}" for page in range(3 * Ids.GATHER + 5) for n in range(3)]
    assert [OTHER + i.encode() for i in noted] == column.to_pylist()
    assert 4 == column.num_chunks


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
    result = settle(fetched, None, out)
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
    result = settle(fetched, None, tmp_path / "out.parquet")
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
    result = settle(fetched, None, tmp_path / "out.parquet")
    assert [(i, "first") for i in ids] == content(result.file.path)
    assert 3 == result.repeated


def test_previous_rows_this_fetch_lacks_are_kept_after_the_new_ones(tmp_path: Path) -> None:
    """A re-archive: the new copy of a row wins; rows only the old object holds are kept."""
    old = write(tmp_path / "old.parquet", [[row("a1", "old"), row("z9", "old"), row("b2", "old")]])
    fetched = write(tmp_path / "a.parquet", [[row("b2", "new"), row("c3", "new")]])
    result = settle(fetched, old.path, tmp_path / "out.parquet")
    assert [("b2", "new"), ("c3", "new"), ("a1", "old"), ("z9", "old")] == content(result.file.path)
    assert (2, 0) == (result.kept, result.repeated)
    assert old.path.exists()  # the caller's download: not ours to remove


def test_a_large_fetch_merges_a_small_previous_object_exactly(tmp_path: Path) -> None:
    """Above WHOLE ids on one side only: both sides are grouped alike."""
    ids = [f"{n * 2_654_435_761 % 2**32:08x}" for n in range(WHOLE + 1)]
    old = write(tmp_path / "old.parquet", [[row(ids[3], "old"), row("zz-gone", "old")]])
    fetched = write(tmp_path / "a.parquet", [[row(i, "new") for i in ids]])
    result = settle(fetched, old.path, tmp_path / "out.parquet")
    assert [*[(i, "new") for i in ids], ("zz-gone", "old")] == content(result.file.path)
    assert 1 == result.kept


def test_previous_object_with_nothing_extra_changes_nothing(tmp_path: Path) -> None:
    """When the fetch holds every id the old object held, the fetched file is final."""
    old = write(tmp_path / "old.parquet", [[row("a1", "old")]])
    fetched = write(tmp_path / "a.parquet", [[row("a1", "new"), row("b2", "new")]])
    result = settle(fetched, old.path, tmp_path / "out.parquet")
    assert fetched.file == result.file
    assert [("a1", "new"), ("b2", "new")] == content(fetched.path)


def test_an_older_object_lacking_a_column_merges_with_nulls(tmp_path: Path) -> None:
    """An object written before a column existed: its rows get null there."""
    older = schema_for(KIND).remove(schema_for(KIND).get_field_index("userCountryCode"))
    table = pa.Table.from_pylist(
        [{"id": "old-1", "finalSipCodePhrase": "old", "startDateTime": None}], schema=older
    )
    pq.write_table(table, tmp_path / "old.parquet")
    fetched = write(tmp_path / "a.parquet", [[{**row("new-1", "new"), "userCountryCode": "SE"}]])
    result = settle(fetched, tmp_path / "old.parquet", tmp_path / "out.parquet")
    merged = pq.read_table(result.file.path)
    assert schema_for(KIND) == merged.schema.remove_metadata()
    assert ["new-1", "old-1"] == merged["id"].to_pylist()
    assert ["SE", None] == merged["userCountryCode"].to_pylist()


def test_an_empty_fetch_keeps_every_previous_row(tmp_path: Path) -> None:
    """Graph returns nothing now: the archive keeps all it held."""
    old = write(tmp_path / "old.parquet", [[row("a1", "old"), row("b2", "old")]])
    fetched = write(tmp_path / "a.parquet", [])
    result = settle(fetched, old.path, tmp_path / "out.parquet")
    assert [("a1", "old"), ("b2", "old")] == content(result.file.path)
    assert 2 == result.kept


GUID = "49c49270-5f63-4b58-9156-95bdf7ec8319"


def test_a_page_of_lowercase_guids_compacts_to_their_16_bytes() -> None:
    """The common page: every id a lowercase GUID, each becomes its UUID's 16 bytes, also
    from a slice of a larger array."""
    guids = [str(uuid.UUID(int=n * 2**100 + n)) for n in range(1, 6)]
    expected = [uuid.UUID(g).bytes for g in guids]
    assert expected == compact(pa.array(guids)).to_pylist()
    assert expected[2:4] == compact(pa.array(guids).slice(2, 2)).to_pylist()


@pytest.mark.parametrize(
    "odd",
    [
        GUID.upper(),  # upper case is another id, not the same one
        GUID.replace("-", " ", 1),  # fromhex would skip the space
        GUID[:-1] + "g",  # not hex
        GUID[:-1] + "é",  # not ASCII
        GUID.replace("-", "") + "abcd",  # 36 characters, no hyphens
        "-" + GUID[:-1],  # hyphens elsewhere
        "0123456789abcdef",  # 16 characters: must not look compacted
        "",
    ],
)
def test_any_other_id_keeps_its_text_and_never_meets_a_guid(odd: str) -> None:
    """In a page of GUIDs, an id that is not a lowercase GUID is kept as OTHER + its
    text; the GUIDs around it are still compacted, row by row."""
    page = compact(pa.array([GUID, odd, GUID]))
    assert [uuid.UUID(GUID).bytes, OTHER + odd.encode(), uuid.UUID(GUID).bytes] == (
        page.to_pylist()
    )
    assert len(OTHER + odd.encode()) != 16


def test_a_previous_object_of_guids_merges_exactly(tmp_path: Path) -> None:
    """The ids of an archived object are compacted as the fetched ones: equal GUIDs meet."""
    guids = [str(uuid.UUID(int=n)) for n in range(1, 5)]
    old = write(tmp_path / "old.parquet", [[row(g, "old") for g in guids]])
    fetched = write(tmp_path / "a.parquet", [[row(guids[1], "new"), row(guids[3], "new")]])
    result = settle(fetched, old.path, tmp_path / "out.parquet")
    expected = [(guids[1], "new"), (guids[3], "new"), (guids[0], "old"), (guids[2], "old")]
    assert expected == content(result.file.path)
    assert [uuid.UUID(g).bytes for g in guids] == read_ids(old.path).to_pylist()


def test_ids_that_differ_only_in_case_are_two_rows(tmp_path: Path) -> None:
    """Compaction never merges distinct ids: a GUID and its upper-case spelling both stay."""
    fetched = write(tmp_path / "a.parquet", [[row(GUID, "x")], [row(GUID.upper(), "y")]])
    result = settle(fetched, None, tmp_path / "out.parquet")
    assert [(GUID, "x"), (GUID.upper(), "y")] == content(result.file.path)
    assert 0 == result.repeated


def test_guid_repeats_across_groups_are_found(tmp_path: Path) -> None:
    """Real GUIDs above WHOLE: groups by first byte; repeats anywhere, first copy wins."""
    guids = [
        str(uuid.UUID(int=(n * 0x9E3779B97F4A7C15_F39CC0605CEDC834) % 2**128))
        for n in range(WHOLE + 500)
    ]
    late = [guids[0], guids[WHOLE // 2], guids[-1]]
    fetched = write(
        tmp_path / "a.parquet",
        [
            [row(g, "first") for g in guids[:40_000]],
            [row(late[0], "late")],
            [row(g, "first") for g in guids[40_000:]],
            [row(g, "late") for g in late],
        ],
    )
    result = settle(fetched, None, tmp_path / "out.parquet")
    assert [(g, "first") for g in guids] == content(result.file.path)
    assert 4 == result.repeated

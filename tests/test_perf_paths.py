"""What keeps a backfill's process small: the imports a local destination never needs,
pages typed where they are parsed, rows spilled to disk while they wait for their row
group."""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import archiver_env

from archiver.config import load
from archiver.emulator import Emulator
from archiver.errors import WindowError
from archiver.graph.auth import TokenProvider
from archiver.graph.client import GraphClient, WindowStats, make_limiters, open_session
from archiver.kinds import Kind
from archiver.metrics import Metrics
from archiver.schema import rows_to_batch, schema_for
from archiver.sinks.parquet import SPILL_SUFFIX, WindowWriter
from archiver.windows import Window

WINDOW = Window(Kind.PSTN, datetime(2024, 3, 4, tzinfo=UTC), datetime(2024, 3, 5, tzinfo=UTC))


def test_the_command_loads_neither_boto3_nor_cryptography() -> None:
    """boto3 is loaded for an s3:// destination only, cryptography for a certificate only."""
    code = (
        "import sys, archiver.cli, archiver.store; "
        "print(sorted(m for m in ('boto3', 'botocore', 'cryptography') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "[]" == done.stdout.strip()


def test_the_s3_names_of_the_store_load_boto3_when_asked_for() -> None:
    """Other modules still find the store's boto3-made names where they were."""
    from archiver.store import CLIENT_CONFIG, FOREIGN_ERRORS

    assert OSError in FOREIGN_ERRORS
    assert (10, 120) == (CLIENT_CONFIG.connect_timeout, CLIENT_CONFIG.read_timeout)


def page(first: int, count: int = 1_000) -> pa.RecordBatch:
    rows = [{"id": f"row-{n}", "callType": "user_in"} for n in range(first, first + count)]
    return rows_to_batch(Kind.PSTN, rows)


def test_rows_wait_for_their_row_group_on_disk_and_leave_nothing_behind(tmp_path: Path) -> None:
    """Between row groups the rows are in the spill file beside the Parquet file; closing
    writes them and removes it."""
    path = tmp_path / "w.parquet"
    spill = tmp_path / f"w.parquet{SPILL_SUFFIX}"
    writer = WindowWriter(path, schema_for(Kind.PSTN), {}, group_rows=2_500)
    writer.write(page(0))
    assert spill.exists()
    for first in range(1_000, 6_000, 1_000):
        writer.write(page(first))
    written = writer.close()
    assert [path] == list(tmp_path.iterdir())
    assert [f"row-{n}" for n in range(6_000)] == pq.read_table(path)["id"].to_pylist()
    assert 6_000 == written.rows


def test_an_aborted_window_leaves_neither_file(tmp_path: Path) -> None:
    writer = WindowWriter(tmp_path / "w.parquet", schema_for(Kind.PSTN), {}, group_rows=2_500)
    for first in range(0, 3_000, 1_000):
        writer.write(page(first))
    writer.abort()
    assert [] == list(tmp_path.iterdir())


def fetch(emu: Emulator, read: Any, metrics: Metrics) -> list[Any]:
    """Every page of WINDOW through a real GraphClient, made by `read`."""

    async def run() -> list[Any]:
        config = load({}, archiver_env(emu, "unused"))
        async with open_session(config) as session:
            graph = GraphClient(
                config, session, TokenProvider(config), make_limiters(config), metrics=metrics
            )
            return [made async for made in graph.read_pages(WINDOW, WindowStats(), read)]

    return anyio.run(run)


@pytest.mark.emulator(rows_per_day={Kind.PSTN: 2_500, Kind.DIRECT_ROUTING: 0})
def test_pages_are_read_in_a_worker_thread(emulator: Emulator) -> None:
    """`read` gets each page's rows off the event loop's thread, in order."""
    threads: set[int] = set()

    def read(rows: list[dict[str, Any]]) -> int:
        threads.add(threading.get_ident())
        return len(rows)

    counts = fetch(emulator, read, Metrics())
    assert ([1_000, 1_000], 3) == (counts[:2], len(counts))
    assert threading.get_ident() not in threads


@pytest.mark.emulator(rows_per_day={Kind.PSTN: 2_500, Kind.DIRECT_ROUTING: 0})
def test_what_read_raises_comes_out_as_it_was_after_the_answer_is_counted(
    emulator: Emulator,
) -> None:
    """A page that does not type is not a failed request: no retry, the 200 is counted,
    and the error is the reader's own (no window prefix added)."""
    refused = WindowError("row 3 has no id")

    def read(rows: list[dict[str, Any]]) -> int:
        raise refused

    metrics = Metrics()
    with pytest.raises(WindowError) as caught:
        fetch(emulator, read, metrics)
    assert caught.value is refused
    assert 1 == metrics.requests.labels("pstn", "200").get()
    assert 0 == metrics.retries.labels("pstn").get()

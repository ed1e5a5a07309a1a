"""The manifest: typed records that read what earlier releases wrote, and compaction that
never loses a record, whatever runs beside it."""

from __future__ import annotations

import gzip
import json
import shutil
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from archiver.kinds import DEFAULT_KINDS, Kind
from archiver.manifest import JOURNAL_PREFIX, SNAPSHOT_KEY, Manifest, Record, State, record_id
from archiver.manifest import manifest as manifest_module
from archiver.store import LocalStore
from archiver.windows import Window, plan

FIXTURES = Path(__file__).parent / "fixtures"
DAY = datetime(2024, 1, 1, tzinfo=UTC)


def legacy_destination(tmp_path: Path) -> Path:
    """A copy of the destination release 0.1.0 wrote (tests/fixtures/make_manifest_fixture.py)."""
    dest = tmp_path / "archive"
    shutil.copytree(FIXTURES / "manifest-0.1.0", dest)
    return dest


def test_manifest_of_release_0_1_0_reads_every_window_done(tmp_path: Path) -> None:
    """A destination written by 0.1.0 — a snapshot, then a journal left by a kill -9, with
    windows that failed and were archived later — loads with every window done."""
    manifest = Manifest(LocalStore(legacy_destination(tmp_path)))
    anyio.run(manifest.load)
    six_hours = timedelta(hours=6)
    expected = set(plan(DEFAULT_KINDS, DAY, DAY + timedelta(days=2, hours=18), six_hours))
    assert six_hours == manifest.window
    assert expected == {r.window for r in manifest.records.values() if r.done}
    assert [] == [r for r in manifest.records.values() if not r.done]
    healed = manifest.records[record_id(Kind.DIRECT_ROUTING, DAY + timedelta(days=2))]
    assert (State.DONE, None) == (healed.state, healed.error)  # failed first, then archived
    assert {Window(Kind.PSTN, DAY, DAY + six_hours).key} == {
        r.key for r in manifest.records.values() if r.id == (Kind.PSTN, DAY)
    }
    summary = manifest.summary()
    assert (11, 0) == (summary[Kind.PSTN].done, summary[Kind.PSTN].failed)
    assert summary[Kind.PSTN].pending == 16 - 11  # the killed run's plan, 2024-01-03..05


def test_records_round_trip_to_the_json_release_0_1_0_wrote(tmp_path: Path) -> None:
    """Typed records write back exactly the JSON they were read from: same keys, same
    spelling of every time."""
    dest = legacy_destination(tmp_path)
    texts = [p.read_text() for p in sorted((dest / JOURNAL_PREFIX).glob("*.json"))]
    snapshot = json.loads(gzip.decompress((dest / SNAPSHOT_KEY).read_bytes()))["records"]
    originals = [json.loads(t) for t in texts] + snapshot
    assert 24 == len(originals)
    assert originals == [Record.from_json(data).to_json() for data in originals]


class PausingStore(LocalStore):
    """A real folder store that holds the snapshot write until the test lets it go."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.writing = threading.Event()
        self.go_on = threading.Event()

    def put_bytes_if_absent(self, key: str, data: bytes) -> str | None:
        if key == SNAPSHOT_KEY:
            self.writing.set()
            self.go_on.wait(10)
        return super().put_bytes_if_absent(key, data)


def done(kind: Kind, start: datetime) -> Record:
    """A DONE record of the hour starting at `start`."""
    return Record(
        kind=kind,
        start=start,
        end=start + timedelta(hours=1),
        state=State.DONE,
        recorded_at=datetime.now(UTC),
        key=f"{kind.value}/x.parquet",
        rows=1,
    )


def test_a_window_recorded_during_a_compaction_stays_in_the_manifest(tmp_path: Path) -> None:
    """Records written while a compaction writes its snapshot are not deleted with the
    journal entries it folded: a fresh load finds every one."""
    store = PausingStore(tmp_path / "archive")
    store.check()
    manifest = Manifest(store)
    hours = [DAY + timedelta(hours=i) for i in range(20)]

    async def go() -> None:
        for start in hours[:10]:
            await manifest.record(done(Kind.PSTN, start))
        async with anyio.create_task_group() as group:
            group.start_soon(manifest.compact)
            await anyio.to_thread.run_sync(store.writing.wait)
            for start in hours[10:]:  # the snapshot write is under way
                await manifest.record(done(Kind.PSTN, start))
            store.go_on.set()

    anyio.run(go)
    fresh = Manifest(LocalStore(store.root))
    anyio.run(fresh.load)
    assert {record_id(Kind.PSTN, h) for h in hours} == set(fresh.records)
    assert 10 == len(list((store.root / JOURNAL_PREFIX).glob("*.json")))


def test_three_workers_recording_and_compacting_at_once_lose_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three manifests on one folder record 300 windows each while compacting every eight
    entries: none raises, and a fresh load holds all 900 windows."""
    monkeypatch.setattr(manifest_module, "COMPACT_AFTER", 8)
    root = tmp_path / "archive"
    LocalStore(root).check()

    def worker(kind: Kind, offset: int) -> None:
        manifest = Manifest(LocalStore(root))

        async def go() -> None:
            await manifest.load()
            for i in range(300):
                await manifest.record(done(kind, DAY + timedelta(hours=offset + i)))
            await manifest.compact()

        anyio.run(go)

    threads = [
        threading.Thread(target=worker, args=(kind, offset))
        for kind, offset in ((Kind.PSTN, 0), (Kind.PSTN, 300), (Kind.DIRECT_ROUTING, 0))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    fresh = Manifest(LocalStore(root))
    anyio.run(fresh.load)
    expected = {record_id(Kind.PSTN, DAY + timedelta(hours=i)) for i in range(600)}
    expected |= {record_id(Kind.DIRECT_ROUTING, DAY + timedelta(hours=i)) for i in range(300)}
    assert expected == set(fresh.records)

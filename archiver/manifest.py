"""The manifest: what is archived, per window — the source of truth for resume and status.

Stored in the destination under `_manifest/` (never matches `*.parquet`):

    _manifest/settings.json           window length of this destination (fixed at first run)
    _manifest/snapshot.json.gz        all records, compacted
    _manifest/journal/<time>-<id>.json  records written since the last compaction, one each

A record is written only after its window's object is durable (the commit
protocol: spool file → object replaced in one step → journal record). Journal
entries have unique names, so workers never overwrite each other's; compaction
merges them into the snapshot with a conditional write and only then deletes them.
Loading reads the snapshot plus the journal, so a crash at any point loses nothing
that was recorded, and re-applying a record is harmless.
"""

from __future__ import annotations

import enum
import gzip
import json
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio

from archiver.errors import UsageError
from archiver.kinds import Kind
from archiver.store import Store
from archiver.windows import Window, format_duration, parse_instant, parse_window, plan

PREFIX = "_manifest/"
SETTINGS_KEY = PREFIX + "settings.json"
SNAPSHOT_KEY = PREFIX + "snapshot.json.gz"
JOURNAL_PREFIX = PREFIX + "journal/"
PLANS_PREFIX = PREFIX + "plans/"
COMPACT_AFTER = 256  # journal entries that trigger a compaction


class State(enum.Enum):
    """A window's state in the manifest (a window with no record is pending)."""

    DONE = "done"  # its object is durably written and matches rows/bytes/sha256 here
    FAILED = "failed"  # its last attempt failed (`error` says why); the next run retries it


def now_iso() -> str:
    """The current UTC time as ISO-8601 with microseconds and Z."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass
class Record:
    """One window's entry."""

    kind: str
    start: str  # ISO-8601 UTC
    end: str
    state: str  # a State value
    recorded_at: str  # when this record was written
    key: str | None = None
    rows: int | None = None
    bytes: int | None = None
    sha256: str | None = None  # hex SHA-256 of the whole object, as written
    checksum_sha256: str | None = None  # the store's own checksum (S3 x-amz-checksum-sha256)
    pages: int | None = None
    graph_version: str | None = None
    archiver_version: str | None = None
    started_at: str | None = None
    error: str | None = None  # why the last attempt failed (kept on a DONE record too)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> tuple[str, str]:
        """The window this record is about."""
        return (self.kind, self.start)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        """A record from its JSON form; unknown fields are kept in `extra`."""
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(**{k: v for k, v in data.items() if k in known}, extra=extra)

    def to_json(self) -> dict[str, Any]:
        """The JSON form: no empty fields."""
        data = {k: v for k, v in asdict(self).items() if v is not None and k != "extra"}
        return data | self.extra


def window_id(window: Window) -> tuple[str, str]:
    """The manifest id of a window."""
    return (window.kind.value, window.start.isoformat().replace("+00:00", "Z"))


def merge(old: Record | None, new: Record) -> Record:
    """The record that stands after `new` arrives: the newer one, but a failure never
    hides an archived object (it is noted on the DONE record instead)."""
    if old is None:
        return new
    if (new.recorded_at, new.state) < (old.recorded_at, old.state):
        old, new = new, old
    if new.state == State.FAILED.value and old.state == State.DONE.value:
        return Record(**{**asdict(old), "error": new.error, "extra": old.extra})
    return new


class Manifest:
    """The in-memory view of the manifest, and its writes to the store.

    Store calls block, so they run in worker threads.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.records: dict[tuple[str, str], Record] = {}
        self.window: timedelta | None = None
        self._snapshot_etag: str | None = None
        self._journal: list[str] = []  # journal keys merged into `records`
        self.plans: list[dict[str, Any]] = []  # ranges that backfills were asked for

    async def load(self) -> None:
        """Read settings, snapshot and journal."""
        await anyio.to_thread.run_sync(self._load)

    def _load(self) -> None:
        for _ in range(10):
            if self._load_once():
                return
        raise UsageError(f"manifest in {self.store.description}: keeps changing while read")

    def _load_once(self) -> bool:
        """One consistent read; False if a compaction raced it (a journal entry vanished)."""
        settings = self.store.get_bytes(SETTINGS_KEY)
        if settings is not None:
            self.window = parse_window(json.loads(settings[0])["window"])
        records: dict[tuple[str, str], Record] = {}
        snapshot = self.store.get_bytes(SNAPSHOT_KEY)
        if snapshot is not None:
            for data in json.loads(gzip.decompress(snapshot[0]))["records"]:
                record = Record.from_json(data)
                records[record.id] = record
        plans = []
        for info in self.store.list(PLANS_PREFIX):
            got = self.store.get_bytes(info.key)
            if got is not None:
                plans.append(json.loads(got[0]))
        journal = []
        for info in self.store.list(JOURNAL_PREFIX):
            got = self.store.get_bytes(info.key)
            if got is None:  # compacted into a newer snapshot since we read ours
                return False
            record = Record.from_json(json.loads(got[0]))
            records[record.id] = merge(records.get(record.id), record)
            journal.append(info.key)
        self.records, self.plans, self._journal = records, plans, journal
        self._snapshot_etag = snapshot[1] if snapshot else None
        return True

    def check_window(self, length: timedelta) -> None:
        """Refuse a window length other than the one this destination was archived with.

        Objects are named by window start, so mixing lengths in one destination would
        let a day's object and an hour's object hold the same rows.
        """
        if self.window is not None and self.window != length:
            raise UsageError(
                f"configuration: window {format_duration(length)} differs from the "
                f"{format_duration(self.window)} windows already archived in "
                f"{self.store.description}; keep window = {format_duration(self.window)}"
            )

    async def fix_window(self, length: timedelta) -> None:
        """Record the destination's window length at first use (then check it again:
        another worker may have fixed a different one first)."""
        if self.window is None:
            data = json.dumps({"window": format_duration(length)}).encode()
            await anyio.to_thread.run_sync(self.store.put_bytes_if_absent, SETTINGS_KEY, data)
            await self.load()
        self.check_window(length)

    async def add_plan(self, kinds: Iterable[Kind], start: datetime, end: datetime) -> None:
        """Remember a requested range, so that `status` can count its pending windows."""
        entry = {
            "kinds": sorted(k.value for k in kinds),
            "start": start.isoformat(),
            "end": end.isoformat(),
        }
        if entry in self.plans:
            return
        key = f"{PLANS_PREFIX}{now_iso().replace(':', '')}-{uuid.uuid4().hex}.json"
        await anyio.to_thread.run_sync(self.store.put_bytes, key, json.dumps(entry).encode())
        self.plans.append(entry)

    def planned_windows(self) -> set[Window]:
        """Every window of every remembered range."""
        if self.window is None:
            return set()
        return {
            window
            for entry in self.plans
            for window in plan(
                [Kind(k) for k in entry["kinds"]],
                parse_instant(entry["start"]),
                parse_instant(entry["end"]),
                self.window,
            )
        }

    def get(self, window: Window) -> Record | None:
        """The window's record, if any."""
        return self.records.get(window_id(window))

    def is_done(self, window: Window) -> bool:
        """True when the window's object is archived."""
        record = self.get(window)
        return record is not None and record.state == State.DONE.value

    async def record(self, record: Record) -> None:
        """Write one record durably (a journal entry), then apply it in memory."""
        key = f"{JOURNAL_PREFIX}{record.recorded_at.replace(':', '')}-{uuid.uuid4().hex}.json"
        data = json.dumps(record.to_json(), sort_keys=True).encode()
        await anyio.to_thread.run_sync(self.store.put_bytes, key, data)
        self.records[record.id] = merge(self.records.get(record.id), record)
        self._journal.append(key)
        if len(self._journal) >= COMPACT_AFTER:
            await self.compact()

    async def compact(self) -> None:
        """Fold the journal into the snapshot, then delete the entries folded in."""
        await anyio.to_thread.run_sync(self._compact)

    def _compact(self) -> None:
        for _ in range(10):
            records = sorted(self.records.values(), key=lambda r: r.id)
            body = json.dumps(
                {"version": 1, "records": [r.to_json() for r in records]}, sort_keys=True
            ).encode()
            data = gzip.compress(body, compresslevel=6, mtime=0)
            if self._snapshot_etag is None:
                etag = self.store.put_bytes_if_absent(SNAPSHOT_KEY, data)
            else:
                etag = self.store.put_bytes_if_match(SNAPSHOT_KEY, data, self._snapshot_etag)
            if etag is not None:
                self._snapshot_etag = etag
                for key in self._journal:
                    self.store.delete(key)
                self._journal = []
                return
            self._load()  # another worker compacted first: merge theirs, then try again
        raise UsageError(f"manifest in {self.store.description}: snapshot keeps changing")

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per kind: windows done/failed/pending, rows, bytes, last success, failures."""
        plans = self.planned_windows()
        result: dict[str, dict[str, Any]] = {}
        for kind in Kind:
            mine = [r for r in self.records.values() if r.kind == kind.value]
            states = Counter(r.state for r in mine)
            done = [r for r in mine if r.state == State.DONE.value]
            result[kind.value] = {
                "done": states[State.DONE.value],
                "failed": states[State.FAILED.value],
                "pending": sum(
                    1 for w in plans if w.kind is kind and window_id(w) not in self.records
                ),
                "rows": sum(r.rows or 0 for r in done),
                "bytes": sum(r.bytes or 0 for r in done),
                "last_success": max((r.recorded_at for r in done), default=None),
                "newest_window": max((r.end for r in done), default=None),
                "failures": sorted(
                    f"{r.start} {r.error}" for r in mine if r.state == State.FAILED.value
                ),
            }
        return result

"""The manifest: what is archived, per window — the source of truth for resume and status.

Stored in the destination under `_manifest/` (never matches `*.parquet`):

    _manifest/settings.json             window length and table format of this destination
                                        (fixed at first run; no format: parquet)
    _manifest/snapshot.json.gz          all records, compacted
    _manifest/journal/<time>-<id>.json  records written since the last compaction, one each
    _manifest/plans/<time>-<id>.json    ranges that backfills were asked for

A record is written only after its window's object is durable (the commit
protocol: spool file → object replaced in one step → journal record). Journal
entries have unique names, so workers never overwrite each other's.

Compaction folds journal entries into the snapshot with a conditional write, then
deletes exactly the entries it folded — never one recorded meanwhile. A process runs
one compaction at a time; a lost race with another worker's compaction is merged and
tried again after a jittered pause; a compaction that still cannot land, or a
clean-up delete that fails, is housekeeping: logged, and left to the next one.

Loading reads the snapshot, then the journal. A journal entry that vanished while
it was read was deleted by a compaction that had already written a snapshot holding
it, so reading the snapshot once more makes the view whole: loading never gives up
because other workers are busy. Re-applying a record is harmless (`merge`).
"""

from __future__ import annotations

import enum
import gzip
import logging
import random
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import anyio
import orjson

from archiver.errors import ArchiverError, RetryableError, UsageError
from archiver.kinds import Kind
from archiver.store import Store
from archiver.windows import (
    Window,
    format_duration,
    format_instant,
    parse_instant,
    parse_window,
    plan,
)

log = logging.getLogger("archiver.manifest")  # the name its lines always carried
T = TypeVar("T")

PREFIX = "_manifest/"
SETTINGS_KEY = PREFIX + "settings.json"
SNAPSHOT_KEY = PREFIX + "snapshot.json.gz"
JOURNAL_PREFIX = PREFIX + "journal/"
PLANS_PREFIX = PREFIX + "plans/"
COMPACT_AFTER = 256  # journal entries that trigger a compaction, at least ...
COMPACT_SHARE = 64  # ... and one for every 64 records: a compaction rewrites every record,
# so its cost per window recorded stays bounded (about 64 records) as the manifest grows
COMPACT_ATTEMPTS = 8  # lost races with other workers before a compaction is left for later
READERS = 16  # threads reading journal entries at once
DEFAULT_FORMAT = "parquet"  # the table format of a destination that names none


class State(enum.Enum):
    """A window's state in the manifest (a window with no record is pending)."""

    DONE = "done"  # its object is durably written and matches rows/bytes/sha256 here
    FAILED = "failed"  # its last attempt failed (`error` says why); the next run retries it


RecordId = tuple[Kind, datetime]


def record_id(kind: Kind, start: datetime) -> RecordId:
    """The one way a window is named in the manifest, for writing and for looking up."""
    return (kind, start.astimezone(UTC))


def window_id(window: Window) -> RecordId:
    """The manifest id of a window."""
    return record_id(window.kind, window.start)


def format_time(value: datetime) -> str:
    """A moment as the manifest writes it: ISO-8601 UTC with microseconds and Z."""
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def utcnow() -> datetime:
    """The current time, aware UTC."""
    return datetime.now(UTC)


def now_iso() -> str:
    """The current UTC time as the manifest writes it."""
    return format_time(utcnow())


_TIMES = ("recorded_at", "started_at")  # moments, written with microseconds
_BOUNDS = ("start", "end")  # window bounds, written with whole seconds


@dataclass(frozen=True)
class Record:
    """One window's entry."""

    kind: Kind
    start: datetime
    end: datetime
    state: State
    recorded_at: datetime  # when this record was written
    key: str | None = None
    rows: int | None = None
    bytes: int | None = None
    sha256: str | None = None  # hex SHA-256 of the whole object, as written
    checksum_sha256: str | None = None  # the store's own checksum (S3 x-amz-checksum-sha256)
    pages: int | None = None
    graph_version: str | None = None
    archiver_version: str | None = None
    started_at: datetime | None = None
    error: str | None = None  # why the last attempt failed (kept on a DONE record too)
    extra: dict[str, Any] = field(default_factory=dict)  # fields a newer archiver wrote

    @property
    def id(self) -> RecordId:
        """The window this record is about."""
        return record_id(self.kind, self.start)

    @property
    def done(self) -> bool:
        """True when the window's object is archived."""
        return self.state is State.DONE

    @property
    def window(self) -> Window:
        """The window this record is about."""
        return Window(self.kind, self.start, self.end)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        """A record from its JSON form; ValueError if it is not one (an unknown kind too)."""
        known = {f.name for f in fields(cls)} - {"extra"}
        values: dict[str, Any] = {k: v for k, v in data.items() if k in known}
        try:
            values["kind"] = Kind(values["kind"])
            values["state"] = State(values["state"])
            for name in (*_BOUNDS, *_TIMES):
                if values.get(name) is not None:
                    values[name] = parse_instant(values[name])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a manifest record: {exc}") from None
        return cls(**values, extra={k: v for k, v in data.items() if k not in known})

    def to_json(self) -> dict[str, Any]:
        """The JSON form: no empty fields."""
        data: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or f.name == "extra":
                continue
            if f.name in _BOUNDS:
                value = format_instant(value)
            elif f.name in _TIMES:
                value = format_time(value)
            elif isinstance(value, enum.Enum):
                value = value.value
            data[f.name] = value
        return data | self.extra


def merge(old: Record | None, new: Record) -> Record:
    """The record that stands after `new` arrives: the newer one, but a failure never
    hides an archived object (it is noted on the DONE record instead)."""
    if old is None:
        return new
    if (new.recorded_at, new.state.value) < (old.recorded_at, old.state.value):
        old, new = new, old
    if new.state is State.FAILED and old.state is State.DONE:
        return replace(old, error=new.error)
    return new


def _latest(a: datetime | None, b: datetime | None) -> datetime | None:
    return max(a, b) if a and b else a or b


@dataclass
class KindSummary:
    """What the manifest says of one kind: read by `status`, `status --json` and metrics."""

    done: int = 0
    failed: int = 0
    pending: int = 0
    rows: int = 0
    bytes: int = 0
    last_success: datetime | None = None  # when the newest DONE record was written
    newest_window: datetime | None = None  # end of the newest archived window
    failures: list[Record] = field(default_factory=list)  # FAILED records, oldest first

    def add(self, other: KindSummary) -> None:
        """Count `other` in too (the same kind of another tenant)."""
        self.done += other.done
        self.failed += other.failed
        self.pending += other.pending
        self.rows += other.rows
        self.bytes += other.bytes
        self.last_success = _latest(self.last_success, other.last_success)
        self.newest_window = _latest(self.newest_window, other.newest_window)
        self.failures = sorted(self.failures + other.failures, key=lambda r: r.start)

    def to_json(self) -> dict[str, Any]:
        """The form `status --json` prints (its keys and formats are a contract)."""
        return {
            "done": self.done,
            "failed": self.failed,
            "pending": self.pending,
            "rows": self.rows,
            "bytes": self.bytes,
            "last_success": format_time(self.last_success) if self.last_success else None,
            "newest_window": format_instant(self.newest_window) if self.newest_window else None,
            "failures": [f"{format_instant(r.start)} {r.error}" for r in self.failures],
        }


@dataclass
class _Read:
    """One consistent read of the manifest, made in a worker thread."""

    window: timedelta | None
    records: dict[RecordId, Record]
    foreign: dict[str, dict[str, Any]]  # records this version cannot read, kept verbatim
    plans: list[dict[str, Any]]
    journal: list[str]
    snapshot_etag: str | None
    table_format: str | None = None  # None: no settings yet


STORE_ATTEMPTS = 4  # tries of a manifest read or journal write the store fails transiently


async def _retrying(function: Callable[..., T], *args: Any) -> T:
    """`function(*args)` in a worker thread, tried again after a jittered pause while the
    store fails transiently (beyond the retries botocore made already)."""
    for attempt in range(1, STORE_ATTEMPTS + 1):
        try:
            return await anyio.to_thread.run_sync(function, *args)
        except RetryableError:
            if attempt == STORE_ATTEMPTS:
                raise
            await anyio.sleep(random.uniform(0.5, 1.0) * 2**attempt)
    raise AssertionError("unreachable")


def _jittered(attempt: int) -> float:
    """Seconds to wait before compaction attempt `attempt` + 1: full jitter, capped."""
    return random.uniform(0, min(5.0, 0.05 * 2**attempt))


class Manifest:
    """The in-memory view of the manifest, and its writes to the store.

    Methods run on the event loop; store calls run in worker threads. Reads are merged
    into the view, never swapped in: a record applied meanwhile is kept.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.records: dict[RecordId, Record] = {}
        self.window: timedelta | None = None
        self.table_format: str | None = None  # fixed with the window; None until then
        self.plans: list[dict[str, Any]] = []  # ranges that backfills were asked for
        self._foreign: dict[str, dict[str, Any]] = {}
        self._journal: dict[str, None] = {}  # journal keys whose records are in `records`
        self._snapshot_etag: str | None = None
        self._compacting = anyio.Lock()

    # ---------------------------------------------------------------- reading

    async def load(self) -> None:
        """Read settings, snapshot, plans and journal, and merge them into the view.

        A store that keeps failing transiently raises RetryableError after a few tries."""
        self._apply(await _retrying(self._read))

    def _read(self) -> _Read:
        settings = self.store.get_bytes(SETTINGS_KEY)
        fixed = orjson.loads(settings[0]) if settings else None
        window = parse_window(fixed["window"]) if fixed else None
        # Destinations fixed before Delta tables existed hold loose Parquet files.
        table_format = str(fixed.get("table_format", DEFAULT_FORMAT)) if fixed else None
        snapshot = self.store.get_bytes(SNAPSHOT_KEY)
        plans = [orjson.loads(got[0]) for got in self._get_all(self._keys(PLANS_PREFIX)) if got]
        keys = self._keys(JOURNAL_PREFIX)
        entries = list(self._get_all(keys))
        if any(got is None for got in entries):
            # Compacted away while we read: the snapshot now holds what vanished.
            snapshot = self.store.get_bytes(SNAPSHOT_KEY)
        records: dict[RecordId, Record] = {}
        foreign: dict[str, dict[str, Any]] = {}
        body = orjson.loads(gzip.decompress(snapshot[0]))["records"] if snapshot else []
        for data in body:
            self._take(data, records, foreign)
        journal = []
        for key, got in zip(keys, entries, strict=True):
            if got is not None:
                self._take(orjson.loads(got[0]), records, foreign)
                journal.append(key)
        etag = snapshot[1] if snapshot else None
        return _Read(window, records, foreign, plans, journal, etag, table_format)

    def _keys(self, prefix: str) -> list[str]:
        return [info.key for info in self.store.list(prefix)]

    def _get_all(self, keys: list[str]) -> Iterator[tuple[bytes, str] | None]:
        """The objects at `keys`, in order (None where gone), read by several threads."""
        if len(keys) < 4:
            return map(self.store.get_bytes, keys)
        with ThreadPoolExecutor(min(READERS, len(keys)), "manifest-read") as pool:
            return iter(list(pool.map(self.store.get_bytes, keys)))

    @staticmethod
    def _take(
        data: dict[str, Any], records: dict[RecordId, Record], foreign: dict[str, dict[str, Any]]
    ) -> None:
        """Merge one JSON record into `records`, or keep it verbatim when unreadable here."""
        try:
            record = Record.from_json(data)
        except ValueError:
            foreign[orjson.dumps(data, option=orjson.OPT_SORT_KEYS).decode()] = data
            return
        records[record.id] = merge(records.get(record.id), record)

    def _apply(self, read: _Read) -> None:
        """Merge a read into the view (on the event loop)."""
        if read.window is not None:
            self.window = read.window
        if read.table_format is not None:
            self.table_format = read.table_format
        for record in read.records.values():
            self.records[record.id] = merge(self.records.get(record.id), record)
        self._foreign.update(read.foreign)
        self.plans = read.plans + [p for p in self.plans if p not in read.plans]
        self._journal.update(dict.fromkeys(read.journal))
        self._snapshot_etag = read.snapshot_etag

    @property
    def holds_archive(self) -> bool:
        """False for a destination nothing was ever archived into (no settings, no record,
        no plan): `status` and `verify` refuse it alike."""
        return self.window is not None or bool(self.records) or bool(self.plans)

    # ---------------------------------------------------------------- settings and plans

    def check_window(self, length: timedelta, table_format: str = DEFAULT_FORMAT) -> None:
        """Refuse a window length or table format other than the one this destination
        was archived with.

        Objects are named by window start, so mixing lengths in one destination would
        let a day's object and an hour's object hold the same rows; and a kind's folder
        is either loose Parquet files or a Delta table, never both.
        """
        if self.window is not None and self.window != length:
            raise UsageError(
                f"configuration: window {format_duration(length)} differs from the "
                f"{format_duration(self.window)} windows already archived in "
                f"{self.store.description}; keep window = {format_duration(self.window)}"
            )
        if self.table_format is not None and self.table_format != table_format:
            raise UsageError(
                f"configuration: table_format {table_format} differs from the "
                f"{self.table_format} archive already in {self.store.description}; "
                f"keep table_format = {self.table_format}"
            )

    async def fix_window(self, length: timedelta, table_format: str = DEFAULT_FORMAT) -> None:
        """Record the destination's window length and table format at first use (then
        check them again: another worker may have fixed different ones first)."""
        if self.window is None:
            data = orjson.dumps({"window": format_duration(length), "table_format": table_format})
            await anyio.to_thread.run_sync(self.store.put_bytes_if_absent, SETTINGS_KEY, data)
            await self.load()
        self.check_window(length, table_format)

    async def add_plan(self, kinds: Iterable[Kind], start: datetime, end: datetime) -> None:
        """Remember a requested range, so that `status` can count its pending windows."""
        entry = {
            "kinds": sorted(k.value for k in kinds),
            "start": start.isoformat(),
            "end": end.isoformat(),
        }
        if entry in self.plans:
            return
        key = f"{PLANS_PREFIX}{_stamp()}-{uuid.uuid4().hex}.json"
        await anyio.to_thread.run_sync(self.store.put_bytes, key, orjson.dumps(entry))
        self.plans.append(entry)

    def planned_windows(self) -> set[Window]:
        """Every window of every remembered range."""
        if self.window is None:
            return set()
        return {
            window
            for entry in self.plans
            for window in plan(
                [kind for kind in Kind if kind.value in entry["kinds"]],
                parse_instant(entry["start"]),
                parse_instant(entry["end"]),
                self.window,
            )
        }

    # ---------------------------------------------------------------- records

    def get(self, window: Window) -> Record | None:
        """The window's record, if any."""
        return self.records.get(window_id(window))

    def is_done(self, window: Window) -> bool:
        """True when the window's object is archived."""
        record = self.get(window)
        return record is not None and record.done

    def is_pending(self, window: Window) -> bool:
        """Whether `window` is not archived yet, as far as this manifest knows."""
        return not self.is_done(window)

    async def record(self, record: Record) -> None:
        """Write one record durably (a journal entry), then apply it in memory.

        Raises the store's error if the entry could not be written; a compaction
        this triggers never raises (it is housekeeping).
        """
        key = f"{JOURNAL_PREFIX}{_stamp(record.recorded_at)}-{uuid.uuid4().hex}.json"
        data = orjson.dumps(record.to_json(), option=orjson.OPT_SORT_KEYS)
        await _retrying(self.store.put_bytes, key, data)  # a unique key: safe to write again
        self.records[record.id] = merge(self.records.get(record.id), record)
        self._journal[key] = None
        due = max(COMPACT_AFTER, len(self.records) // COMPACT_SHARE)
        if len(self._journal) >= due and not self._compacting.locked():
            await self.compact()

    # ---------------------------------------------------------------- compaction

    async def compact(self) -> bool:
        """Fold the journal into the snapshot, then delete the entries folded in.

        One compaction at a time per process (a caller that finds one running waits
        for it). Returns False when it was left for later; never raises for store
        trouble or contention, since every record is durable in the journal already.
        """
        async with self._compacting:
            for attempt in range(COMPACT_ATTEMPTS):
                if not self._journal and self._snapshot_etag is not None:
                    return True
                folded = list(self._journal)  # exactly these; entries recorded later stay
                records = list(self.records.values())
                try:
                    etag = await anyio.to_thread.run_sync(self._write_snapshot, records)
                    if etag is not None:
                        self._snapshot_etag = etag
                        for key in folded:
                            self._journal.pop(key, None)
                        await anyio.to_thread.run_sync(self._delete, folded)
                        return True
                    await anyio.sleep(_jittered(attempt))
                    await self.load()  # another worker compacted first: merge theirs
                except ArchiverError as exc:
                    log.warning("manifest compaction left for later: %s", exc)
                    return False
            log.warning(
                "manifest compaction left for later: the snapshot kept changing "
                "(%d tries; other workers are compacting)",
                COMPACT_ATTEMPTS,
            )
            return False

    def _write_snapshot(self, records: list[Record]) -> str | None:
        """Write the snapshot if nobody replaced ours since we read it: its etag, or None."""
        records.sort(key=lambda r: (r.kind.value, r.start))
        body = [r.to_json() for r in records] + list(self._foreign.values())
        data = gzip.compress(
            orjson.dumps({"version": 1, "records": body}, option=orjson.OPT_SORT_KEYS),
            compresslevel=6,
            mtime=0,
        )
        if self._snapshot_etag is None:
            return self.store.put_bytes_if_absent(SNAPSHOT_KEY, data)
        return self.store.put_bytes_if_match(SNAPSHOT_KEY, data, self._snapshot_etag)

    def _delete(self, keys: list[str]) -> None:
        """Delete folded journal entries; one that will not go is left to a later compaction
        (re-applying it is harmless)."""
        failed = 0
        last: ArchiverError | None = None
        for key in keys:
            try:
                self.store.delete(key)
            except ArchiverError as exc:
                failed += 1
                last = exc
        if failed:
            log.warning(
                "manifest clean-up: %d of %d folded journal entries not deleted (left for the "
                "next compaction): %s",
                failed,
                len(keys),
                last,
            )

    # ---------------------------------------------------------------- summary

    def summary(self) -> dict[Kind, KindSummary]:
        """Per kind: windows done/failed/pending, rows, bytes, last success, failures."""
        result = {kind: KindSummary() for kind in Kind}
        for record in self.records.values():
            s = result[record.kind]
            if record.done:
                s.done += 1
                s.rows += record.rows or 0
                s.bytes += record.bytes or 0
                s.last_success = max(filter(None, (s.last_success, record.recorded_at)))
                s.newest_window = max(filter(None, (s.newest_window, record.end)))
            else:
                s.failed += 1
                s.failures.append(record)
        for window in self.planned_windows():
            if window_id(window) not in self.records:
                result[window.kind].pending += 1
        for s in result.values():
            s.failures.sort(key=lambda r: r.start)
        return result


def _stamp(when: datetime | None = None) -> str:
    """A key-safe timestamp that sorts journal and plan entries by time."""
    return format_time(when or utcnow()).replace(":", "")

"""`archiver verify`: re-read every archived object and compare it with the manifest.

(A destination of Delta tables is checked by its sink instead: every window recorded
done holds its recorded rows in the table's current version, no key twice; see
`archiver.sinks.delta`.)

For each window the manifest lists as done: the object exists, its SHA-256 and size
are the recorded ones, its Parquet footer counts the recorded rows, and every
non-null value of its kind's time column (`startDateTime`, `sentDateTime`, …) lies in
[window start, window end) (from the column
statistics, or from the column itself where a row group has none). Parquet objects
under the layout that the manifest does not know are strays.

Objects are downloaded to a private temp folder, a few at a time in worker threads
(store calls block), checked there and deleted at once, so memory does not grow with
object size. A file whose checksum is not the recorded one is parsed in a child
process: pyarrow's C++ code can abort the whole process on some corrupt footers. An
object that looks wrong is checked once more against a freshly loaded manifest, so
that a window re-archived while verify runs is not reported.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from archiver.config import Config
from archiver.errors import WindowError
from archiver.kinds import Kind
from archiver.manifest import Manifest, Record, RecordId
from archiver.pipeline import open_archive
from archiver.sinks import Problem, Sink, open_sink
from archiver.sinks.parquet import sha256_file
from archiver.store import Store

log = logging.getLogger("archiver.verify")  # the name its lines always carried

CONCURRENCY = 8  # objects checked at once, unless the caller says otherwise
LAYOUT_PREFIXES = tuple(f"{kind.value}/" for kind in Kind)
PROGRESS_EVERY = 1000  # log a progress line after this many objects
CAUSE_LENGTH = 200  # an UNREADABLE/ERROR cause is cut to this many characters
CHILD_TIMEOUT = 600.0  # seconds a child process may take to read one suspect file
# What pyarrow raises for a file it cannot read (ArrowIOError is an OSError; a
# corrupt timestamp statistic overflows datetime).
UNREADABLE_ERRORS: tuple[type[Exception], ...] = (
    pa.ArrowException,
    OSError,
    ValueError,
    KeyError,
    IndexError,
    OverflowError,
)
# The child process that reads a suspect file: prints probe()'s JSON.
_CHILD = (
    "import sys; from pathlib import Path; from archiver.ops.verify import probe; "
    "print(probe(Path(sys.argv[1]), sys.argv[2]))"
)


@dataclass(frozen=True)
class Report:
    """What verify found: how many recorded objects it checked, and every problem."""

    checked: int
    problems: list[Problem]


def format_timestamp(value: datetime) -> str:
    """ISO-8601 in UTC with `Z`; microseconds only when there are any."""
    value = value.astimezone(UTC)
    fraction = f".{value.microsecond:06d}" if value.microsecond else ""
    return value.strftime("%Y-%m-%dT%H:%M:%S") + fraction + "Z"


def _short(exc: BaseException) -> str:
    """An exception as one line of at most CAUSE_LENGTH characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= CAUSE_LENGTH else text[: CAUSE_LENGTH - 1] + "…"


def _utc(value: datetime) -> datetime:
    """An aware UTC datetime (a naive Parquet timestamp is taken as UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def record_key(record: Record) -> str:
    """The object key of a done record (derived from its window if it names none)."""
    return record.key or record.window.key


def done_records(manifest: Manifest) -> list[Record]:
    """The manifest's done records, by object key."""
    done = [r for r in manifest.records.values() if r.done]
    return sorted(done, key=record_key)


def start_range(path: Path, column: str) -> tuple[int, datetime | None, datetime | None]:
    """A Parquet file's row count and the min and max of its non-null `column` (the
    kind's time column, which a window's bounds apply to).

    Row groups with min/max statistics are not read; the others are. Raises one of
    UNREADABLE_ERRORS when the file cannot be read or has no timestamp column.
    """
    with pq.ParquetFile(path) as file:
        meta = file.metadata
        position = file.schema_arrow.get_field_index(column)
        if position < 0:
            raise ValueError(f"no {column} column")
        field = file.schema_arrow.field(position)
        if not pa.types.is_timestamp(field.type):
            raise ValueError(f"{column} is {field.type}, not a timestamp")
        columns = range(meta.num_columns)
        leaf = next((i for i in columns if meta.schema.column(i).path == column), None)
        if leaf is None:
            raise ValueError(f"no {column} column in the Parquet schema")
        low: datetime | None = None
        high: datetime | None = None
        for index in range(meta.num_row_groups):
            group = meta.row_group(index)
            if not group.num_rows:
                continue
            stats = group.column(leaf).statistics
            if (
                stats is not None
                and stats.has_min_max
                and isinstance(stats.min, datetime)
                and isinstance(stats.max, datetime)
            ):
                bounds = (_utc(stats.min), _utc(stats.max))
            elif stats is not None and stats.null_count == group.num_rows:
                continue  # all null
            else:
                values = file.read_row_group(index, columns=[column]).column(0)
                values = values.cast(pa.timestamp("us", tz="UTC"), safe=False)
                found = pc.min_max(values).as_py()
                if found["min"] is None:
                    continue
                bounds = (_utc(found["min"]), _utc(found["max"]))
            low = bounds[0] if low is None else min(low, bounds[0])
            high = bounds[1] if high is None else max(high, bounds[1])
        return meta.num_rows, low, high


def probe(path: Path, column: str) -> str:
    """start_range() as JSON: `{"rows", "low", "high"}` or `{"error"}` (the child's answer)."""
    try:
        rows, low, high = start_range(path, column)
    except UNREADABLE_ERRORS as exc:
        return json.dumps({"error": _short(exc)})
    return json.dumps(
        {
            "rows": rows,
            "low": low.isoformat() if low else None,
            "high": high.isoformat() if high else None,
        }
    )


def start_range_isolated(path: Path, column: str) -> tuple[int, datetime | None, datetime | None]:
    """start_range() in a child process; ValueError with a short cause if it fails or dies."""
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    try:
        done = subprocess.run(  # noqa: S603 - this interpreter running this module
            [sys.executable, "-c", _CHILD, str(path), column],
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT,
            check=False,
            env=env,
        )
    except subprocess.TimeoutExpired:
        raise ValueError(f"reading it took more than {CHILD_TIMEOUT:.0f}s") from None
    if done.returncode:
        last = next((ln for ln in reversed(done.stderr.splitlines()) if ln.strip()), "")
        last = last.strip().removeprefix("what():").strip()
        if done.returncode < 0:
            name = signal.Signals(-done.returncode).name
            raise ValueError(f"pyarrow crashed reading it ({name}): {last}".rstrip(": "))
        raise ValueError(last or f"reader exited with status {done.returncode}")
    answer = json.loads(done.stdout)
    if "error" in answer:
        raise ValueError(answer["error"])
    low, high = (datetime.fromisoformat(v) if v else None for v in (answer["low"], answer["high"]))
    return int(answer["rows"]), low, high


def check_file(path: Path, key: str, record: Record) -> list[Problem]:
    """The problems of a local copy of `key` against its done record (blocking)."""
    problems: list[Problem] = []
    digest = sha256_file(path)
    trusted = record.sha256 is not None and digest == record.sha256.lower()
    if record.sha256 is not None and not trusted:
        problems.append(Problem("CHECKSUM", key, f"sha256 {digest} != recorded {record.sha256}"))
    size = path.stat().st_size
    if record.bytes is not None and size != record.bytes:
        problems.append(Problem("SIZE", key, f"{size} bytes != recorded {record.bytes}"))
    try:
        # The archiver's own bytes are safe to parse here; anything else in a child.
        column = record.kind.time_column
        rows, low, high = (
            start_range(path, column) if trusted else start_range_isolated(path, column)
        )
    except UNREADABLE_ERRORS as exc:
        problems.append(Problem("UNREADABLE", key, _short(exc)))
        return problems
    if record.rows is not None and rows != record.rows:
        problems.append(Problem("ROWS", key, f"{rows} rows != recorded {record.rows}"))
    start, end = record.start, record.end
    # Name the lowest value if it is outside, else the highest: both come from statistics.
    outside = next((v for v in (low, high) if v is not None and not start <= v < end), None)
    if outside is not None:
        problems.append(
            Problem(
                "OUTSIDE",
                key,
                f"{record.kind.time_column} {format_timestamp(outside)} outside "
                f"[{format_timestamp(start)}, {format_timestamp(end)})",
            )
        )
    return problems


def check_object(store: Store, record: Record, scratch: Path) -> list[Problem]:
    """Download the object of a done record into `scratch` and check it (blocking)."""
    key = record_key(record)
    path = scratch / f"{uuid.uuid4().hex}.parquet"
    try:
        try:
            store.download(key, path)
        except WindowError as exc:
            try:
                gone = store.head(key) is None
            except WindowError:
                gone = False
            if gone:
                text = "recorded in the manifest, not in the destination"
                return [Problem("MISSING", key, text)]
            return [Problem("ERROR", key, _short(exc))]
        return check_file(path, key, record)
    finally:
        path.unlink(missing_ok=True)


def list_layout(store: Store) -> list[str]:
    """Every `*.parquet` key under the layout's kind folders (blocking)."""
    return [
        info.key
        for prefix in LAYOUT_PREFIXES
        for info in store.list(prefix)
        if info.key.endswith(".parquet")
    ]


def known_keys(manifest: Manifest) -> set[str]:
    """Every object key the manifest names."""
    return {record_key(r) for r in done_records(manifest)} | {
        r.key for r in manifest.records.values() if r.key
    }


async def _check_all(
    store: Store, records: Iterable[Record], scratch: Path, concurrency: int, total: int
) -> dict[RecordId, list[Problem]]:
    """Check `records` with `concurrency` workers; problems per record id."""
    results: dict[RecordId, list[Problem]] = {}
    todo = iter(records)
    limiter = anyio.CapacityLimiter(concurrency)

    async def worker() -> None:
        for record in todo:
            problems = await anyio.to_thread.run_sync(
                check_object, store, record, scratch, limiter=limiter
            )
            results[record.id] = problems
            if len(results) % PROGRESS_EVERY == 0:
                log.info("verified %d of %d objects", len(results), total)

    async with anyio.create_task_group() as group:
        for _ in range(concurrency):
            group.start_soon(worker)
    return results


async def verify(store: Store, manifest: Manifest, concurrency: int = CONCURRENCY) -> Report:
    """Check every done window's object against `manifest`, and look for strays."""
    records = done_records(manifest)
    listed: list[str] = []

    async def list_objects() -> None:
        listed.extend(await anyio.to_thread.run_sync(list_layout, store))

    with tempfile.TemporaryDirectory(prefix="archiver-verify-") as temp:
        scratch = Path(temp)
        async with anyio.create_task_group() as group:
            group.start_soon(list_objects)
            results = await _check_all(store, records, scratch, concurrency, len(records))
        strays = sorted(set(listed) - known_keys(manifest))
        suspects = [r for r in records if results[r.id]]
        if strays or suspects:
            # A second look with a fresh manifest: objects archived or re-archived by
            # a concurrent run since the first load are not problems.
            fresh = Manifest(store)
            await fresh.load()
            strays = sorted(set(strays) - known_keys(fresh))
            again = [
                newer
                for r in suspects
                if (newer := fresh.records.get(r.id)) is not None and newer != r and newer.done
            ]
            if again:
                results.update(await _check_all(store, again, scratch, concurrency, len(again)))
    problems = [p for r in records for p in results[r.id]]
    problems += [Problem("STRAY", key, "not in the manifest") for key in strays]
    problems.sort(key=lambda p: p.key)  # stable: an object's problems keep their order
    return Report(len(records), problems)


async def verify_tables(sink: Sink, store: Store, manifest: Manifest) -> Report | None:
    """Check a format's tables (Delta) against `manifest`: None for loose objects. Problems
    found are looked at once more with a fresh manifest, so that windows a concurrent run
    archived since the first load are not reported."""
    records = done_records(manifest)
    problems = await anyio.to_thread.run_sync(sink.verify_table, records)
    if problems is None:
        return None
    if problems:
        fresh = Manifest(store)
        await fresh.load()
        records = done_records(fresh)
        problems = await anyio.to_thread.run_sync(sink.verify_table, records) or []
    return Report(len(records), sorted(problems, key=lambda p: p.key))


async def verify_destination(config: Config) -> Report:
    """Open the configured destination and verify it (NothingArchived if it holds no
    manifest), in the table format the destination was archived in."""
    store, manifest = await open_archive(config)
    sink = open_sink(manifest.table_format or config.table_format, store)
    tables = await verify_tables(sink, store, manifest)
    if tables is not None:
        return tables
    return await verify(store, manifest, config.concurrency)

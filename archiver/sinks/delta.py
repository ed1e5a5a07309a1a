"""Delta Lake tables (the `[delta]` extra, delta-rs): `<destination>/<kind>/` is one table
per kind, partitioned by `date` (the UTC date of the window start, as the loose layout's
`date=` folders), with the kind's declared columns typed as the Parquet layout types them.

Archiving a window is one commit: `write_deltalake(mode="overwrite", predicate=...)` with
the window's predicate (its `date` and its range of the kind's time column) replaces
exactly that window's rows, so a reader sees the window before or after, never half of
it and never twice. The rows are the reconciled ones (a re-archive first reads what the
table holds for the window, so no row once archived is lost), written zstd-compressed;
the commit's metadata names the kind, window, Graph URL and version, and archiver
version, so the table's history is the archive's audit trail.

Several workers commit concurrently: delta-rs retries a commit that raced with one on
other files; a commit that still conflicts (CommitFailedError) is tried again here after
a jittered pause. Nothing here deletes a data file or a log entry: no VACUUM, and the
table's properties keep delta-rs and Spark from cleaning up expired log entries (an
Object Lock retention would refuse the deletes anyway).

Schema evolution: the table's columns are the kind's declared ones. A column declared
later (a property Graph added, kept until then in `additionalData`) is added by the
next commit through a schema merge; older files are not rewritten and read as null.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import (
    CommitProperties,
    DeltaTable,
    PostCommitHookProperties,
    QueryBuilder,
    WriterProperties,
    write_deltalake,
)
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from archiver.errors import RetryableError, WindowError
from archiver.kinds import Kind
from archiver.manifest import Record
from archiver.schema import schema_for
from archiver.sinks.base import DELTA, Problem, Published, Sink
from archiver.sinks.parquet import META_PREFIX, WrittenFile
from archiver.store import LocalStore, S3Store, Store
from archiver.windows import Window, format_instant

log = logging.getLogger(__name__)

COMMIT_ID = "archiver.commit"  # in each commit's metadata: finds the commit again
DATE = "date"  # the partition column: the UTC date of the window start, YYYY-MM-DD
BATCH_ROWS = 65_536  # rows per batch streamed into a commit or out of a query
HISTORY_SEARCH = 256  # log entries looked through for a commit just made
COMMIT_ATTEMPTS = 8  # conflicting commits before the window fails (and is retried later)
CAUSE_LENGTH = 300  # a delta-rs error is cut to this many characters
DAY_SECONDS = 86_400
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # colour codes in delta-rs's error messages
# Set when a table is created. Log entries are the table's history (and the audit trail):
# never cleaned up, however old; files a commit removed stay for time travel, and a
# VACUUM by another tool refuses to delete them for ten years.
TABLE_PROPERTIES = {
    "delta.enableExpiredLogCleanup": "false",
    "delta.logRetentionDuration": "interval 36500 days",
    "delta.deletedFileRetentionDuration": "interval 3650 days",
}
# Checkpoints, yes (they keep reads fast); log clean-up, never.
HOOKS = PostCommitHookProperties(create_checkpoint=True, cleanup_expired_logs=False)


def table_schema(kind: Kind) -> pa.Schema:
    """The Arrow schema of a kind's table: its declared columns, then `date`."""
    return schema_for(kind).remove_metadata().append(pa.field(DATE, pa.string()))


def window_label(window: Window) -> str:
    """How messages name a window of a table: `<kind>/date=YYYY-MM-DD/<start>`."""
    return f"{window.kind.value}/date={window.date.isoformat()}/{window.name}"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def predicate(window: Window) -> str:
    """The SQL predicate of exactly the window's rows: its `date` partition and its range
    of the kind's time column. A whole-day window also holds the day's rows without a
    time (Graph filters on that column, so there should be none)."""
    column = f'"{window.kind.time_column}"'
    in_range = (
        f"{column} >= {_literal(format_instant(window.start))} "
        f"AND {column} < {_literal(format_instant(window.end))}"
    )
    if _whole_day(window):
        in_range = f"(({in_range}) OR {column} IS NULL)"
    return f"{DATE} = {_literal(window.date.isoformat())} AND {in_range}"


def _inside(window: Window, batch: pa.RecordBatch) -> pa.BooleanArray:
    """Which rows of a batch of the window's `date` partition belong to the window."""
    times = batch.column(window.kind.time_column)
    inside = pc.and_(
        pc.greater_equal(times, pa.scalar(window.start, times.type)),
        pc.less(times, pa.scalar(window.end, times.type)),
    )
    return inside.fill_null(_whole_day(window))


def _whole_day(window: Window) -> bool:
    return (window.end - window.start).total_seconds() >= DAY_SECONDS


def _short(exc: BaseException) -> str:
    """A delta-rs error as one line of at most CAUSE_LENGTH characters, without the
    terminal colours delta-rs puts in its messages."""
    text = " ".join(ANSI.sub("", str(exc)).split()) or type(exc).__name__
    return text if len(text) <= CAUSE_LENGTH else text[: CAUSE_LENGTH - 1] + "…"


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """`batch` with exactly `schema`'s columns, by name, cast to its types; a column the
    batch lacks (declared after those rows were written) is null in every row."""
    columns = [
        batch.column(f.name).cast(f.type)
        if f.name in batch.schema.names
        else pa.nulls(batch.num_rows, f.type)
        for f in schema
    ]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


class DeltaSink(Sink):
    """Each kind one Delta table in the destination; one commit per window."""

    format = DELTA

    def __init__(self, store: Store) -> None:
        self.store = store
        if isinstance(store, S3Store):
            root = f"s3://{store.bucket}/{store.prefix}" if store.prefix else f"s3://{store.bucket}"
        elif isinstance(store, LocalStore):
            root = str(store.root)
        else:
            raise TypeError(f"no Delta tables on {type(store).__name__}")
        self.root = root.rstrip("/")

    # ------------------------------------------------------------------ where

    def uri(self, kind: Kind) -> str:
        """The table of `kind`."""
        return f"{self.root}/{kind.value}"

    def _options(self) -> dict[str, str] | None:
        """delta-rs's storage options: on S3 the endpoint, region and credentials boto3
        resolved (fresh each time: temporary credentials expire)."""
        if isinstance(self.store, S3Store):
            return self.store.object_store_options()
        return None

    def _table(self, kind: Kind) -> DeltaTable | None:
        """The kind's table at its latest version, or None when there is none yet."""
        try:
            return DeltaTable(self.uri(kind), storage_options=self._options())
        except TableNotFoundError:
            return None
        except (DeltaError, OSError) as exc:
            raise self._error(kind, "open", exc) from exc

    def _error(self, kind: Kind, action: str, exc: BaseException) -> WindowError:
        """A delta-rs failure as a one-line WindowError naming the table (retryable when
        the store or the network failed, not the data)."""
        text = f"{self.uri(kind)}: {action} failed: {_short(exc)}"
        lowered = text.lower()
        transient = any(
            word in lowered
            for word in ("timed out", "timeout", "connection", "503", "500", "slow down", "429")
        )
        return RetryableError(text) if transient else WindowError(text)

    # ------------------------------------------------------------------ the sink

    def previous(self, window: Window, record: Record, path: Path) -> bool:
        """The table's rows of the window, into `path` (typed as declared); False when the
        table holds none of them.

        The files of the window's `date` partition are fetched through the store and
        filtered here (a deltalake query would hold the GIL while it reads from S3,
        stalling the event loop); only a table with deletion vectors, which another
        writer may have enabled, is read through deltalake's query engine."""
        table = self._table(window.kind)
        if table is None:
            log.warning("%s: its Delta table is missing; archived anew", window)
            return False
        schema = schema_for(window.kind)
        rows = 0
        try:
            with pq.ParquetWriter(path, schema, compression="zstd") as writer:
                for batch in self._window_rows(table, window, path):
                    writer.write_batch(batch)
                    rows += batch.num_rows
        except (DeltaError, OSError, pa.ArrowException) as exc:
            path.unlink(missing_ok=True)
            raise self._error(window.kind, f"read {window_label(window)}", exc) from exc
        if not rows:
            path.unlink(missing_ok=True)
            if record.rows:
                log.warning("%s: its rows are missing from the Delta table; archived anew", window)
            return False
        return True

    def _window_rows(
        self, table: DeltaTable, window: Window, scratch: Path
    ) -> Iterator[pa.RecordBatch]:
        """The window's rows in the table's current version, conformed to the declared
        schema, batch by batch."""
        schema = schema_for(window.kind)
        if "deletionVectors" in (table.protocol().reader_features or []):
            sql = f"SELECT * FROM t WHERE {predicate(window)}"  # noqa: S608 - our own literals
            for batch in self._query(table, sql):
                yield _conform(batch, schema)
            return
        root = self.uri(window.kind) + "/"
        partition = f"/{DATE}={window.date.isoformat()}/"
        for uri in table.file_uris():
            if partition not in "/" + uri.removeprefix(root):
                continue
            local = scratch.with_name(f"{scratch.name}.{uuid.uuid4().hex}.part")
            try:
                self.store.download(f"{window.kind.value}/{unquote(uri.removeprefix(root))}", local)
                with pq.ParquetFile(local) as file:
                    for batch in file.iter_batches(batch_size=BATCH_ROWS):
                        conformed = _conform(batch, schema)
                        yield conformed.filter(_inside(window, conformed))
            finally:
                local.unlink(missing_ok=True)

    def publish(self, window: Window, written: WrittenFile, metadata: dict[str, str]) -> Published:
        """One commit replacing the window's rows with those of `written`; retried after a
        pause while it conflicts with other workers' commits."""
        kind = window.kind
        try:
            if not _whole_day(window):
                self._refuse_timeless_rows(window, written.path)
            custom: dict[str, Any] = {f"{META_PREFIX}{k}": v for k, v in metadata.items()}
            custom[f"{META_PREFIX}rows"] = str(written.rows)
            custom[COMMIT_ID] = uuid.uuid4().hex
            for attempt in range(1, COMMIT_ATTEMPTS + 1):
                try:
                    self._commit(window, written.path, custom)
                    break
                except CommitFailedError as exc:
                    if attempt == COMMIT_ATTEMPTS:
                        raise RetryableError(
                            f"{self.uri(kind)}: commit of {window_label(window)} still "
                            f"conflicts after {attempt} attempts: {_short(exc)}"
                        ) from exc
                    pause = random.uniform(0.5, 1.5) * min(10.0, 0.2 * 2**attempt)
                    log.info("%s: commit conflicted (%s); again in %.1fs", window, attempt, pause)
                    time.sleep(pause)
                except (DeltaError, OSError, pa.ArrowException) as exc:
                    raise self._error(kind, f"commit of {window_label(window)}", exc) from exc
            if isinstance(self.store, S3Store) and self.store.options.object_lock_mode:
                self._retain(window, custom[COMMIT_ID])
        finally:
            written.path.unlink(missing_ok=True)
        return Published(kind.value, None)

    def _retain(self, window: Window, commit_id: str) -> None:
        """Object Lock retention on what the window's commit wrote: its log entry and
        the data files it added (delta-rs cannot set it on its own writes, and a bucket
        default retention makes S3 refuse its PUTs, which carry no Content-MD5)."""
        assert isinstance(self.store, S3Store)
        kind = window.kind
        table = self._table(kind)
        latest = table.version() if table is not None else -1
        # Our commit is the latest or close below it (others' commits since): read the log
        # entries through the store (delta-rs's history() holds the GIL while it reads).
        for version in range(latest, max(-1, latest - HISTORY_SEARCH), -1):
            entry = f"{kind.value}/_delta_log/{version:020d}.json"
            got = self.store.get_bytes(entry)
            actions = [json.loads(line) for line in (got[0] if got else b"").splitlines() if line]
            info: dict[str, Any] = next((a["commitInfo"] for a in actions if "commitInfo" in a), {})
            if info.get(COMMIT_ID) == commit_id:
                for action in actions:
                    if "add" in action:
                        self.store.retain(f"{kind.value}/{unquote(action['add']['path'])}")
                self.store.retain(entry)
                return
        raise WindowError(
            f"{self.uri(kind)}: the commit of {window_label(window)} is not in its log"
        )

    def _refuse_timeless_rows(self, window: Window, path: Path) -> None:
        """A window shorter than a day shares its `date` partition with other windows: a
        row without a time could not be told apart, so such a window fails (Graph filters
        on this column; no such row is known)."""
        column = window.kind.time_column
        nulls = pq.read_table(path, columns=[column]).column(column).null_count
        if nulls:
            raise WindowError(
                f"{window_label(window)}: {nulls} rows have no {column}; a Delta table keeps "
                "such rows only with window = 1d"
            )

    def _commit(self, window: Window, path: Path, custom: dict[str, Any]) -> None:
        """Stream the file's rows, with their `date`, into one overwrite commit."""
        schema = table_schema(window.kind)
        date = window.date.isoformat()

        def batches() -> Iterator[pa.RecordBatch]:
            with pq.ParquetFile(path) as file:
                for batch in file.iter_batches(batch_size=BATCH_ROWS):
                    dates = pa.array([date] * batch.num_rows, pa.string())
                    yield _conform(batch.append_column(DATE, dates), schema)

        write_deltalake(
            self.uri(window.kind),
            pa.RecordBatchReader.from_batches(schema, batches()),
            partition_by=[DATE],
            mode="overwrite",
            predicate=predicate(window),
            schema_mode="merge",
            configuration=TABLE_PROPERTIES,
            storage_options=self._options(),
            writer_properties=WriterProperties(compression="ZSTD"),
            commit_properties=CommitProperties(custom_metadata=custom),
            post_commithook_properties=HOOKS,
        )

    # ------------------------------------------------------------------ verify

    def verify_table(self, records: list[Record]) -> list[Problem]:
        """Each kind's table at its current version against the done `records`: every
        window holds its recorded rows, no key is there twice in a day, and no window
        the manifest does not record as done holds rows (STRAY)."""
        problems: list[Problem] = []
        for kind in Kind:
            mine = [r for r in records if r.kind is kind]
            try:
                problems += self._verify_kind(kind, mine)
            except (DeltaError, OSError, pa.ArrowException) as exc:
                problems.append(Problem("UNREADABLE", self.uri(kind), _short(exc)))
        return problems

    def _verify_kind(self, kind: Kind, records: list[Record]) -> list[Problem]:
        table = self._table(kind)
        if table is None:
            if not records:
                return []
            text = f"no Delta table, but the manifest records {len(records)} windows done"
            return [Problem("MISSING", self.uri(kind), text)]
        problems: list[Problem] = []
        by_date: dict[str, list[Record]] = {}
        for record in records:
            by_date.setdefault(record.window.date.isoformat(), []).append(record)
        dates = {p[DATE] for p in table.partitions() if p.get(DATE)} | set(by_date)
        key, column = kind.key, kind.time_column
        shape = pa.schema([("k", pa.string()), ("t", pa.timestamp("us", tz="UTC"))])
        for date in sorted(dates):
            where = f"{DATE} = {_literal(date)}"
            sql = f'SELECT "{key}" AS k, "{column}" AS t FROM t WHERE {where}'  # noqa: S608
            batches = [_conform(b, shape) for b in self._query(table, sql)]
            day = pa.Table.from_batches(batches, schema=shape).combine_chunks()
            problems += self._verify_day(kind, date, day, by_date.get(date, []))
        return problems

    def _verify_day(
        self, kind: Kind, date: str, day: pa.Table, records: list[Record]
    ) -> list[Problem]:
        """One `date` partition: the rows of each recorded window, repeated keys, strays."""
        problems: list[Problem] = []
        placed = pa.array([False] * day.num_rows, pa.bool_())
        for record in sorted(records, key=lambda r: r.start):
            window = record.window
            inside = pc.and_(
                pc.greater_equal(day["t"], pa.scalar(window.start, day["t"].type)),
                pc.less(day["t"], pa.scalar(window.end, day["t"].type)),
            )
            if _whole_day(window):
                inside = pc.or_(inside.fill_null(False), pc.is_null(day["t"]))
            inside = inside.fill_null(False)
            placed = pc.or_(placed, inside)
            rows = pc.sum(inside.cast(pa.int64())).as_py() or 0
            if record.rows is not None and rows != record.rows:
                label = window_label(window)
                if rows == 0:
                    text = f"recorded in the manifest with {record.rows} rows, none in the table"
                    problems.append(Problem("MISSING", label, text))
                else:
                    text = f"{rows} rows in the table != recorded {record.rows}"
                    problems.append(Problem("ROWS", label, text))
        counts = pc.value_counts(day["k"])
        repeated = counts.filter(pc.greater(counts.field("counts"), 1))
        for item in repeated.to_pylist()[:20]:
            text = f"{kind.key} {item['values']} is in the table {item['counts']} times"
            problems.append(Problem("DUPLICATE", f"{kind.value}/date={date}", text))
        strays = day.num_rows - (pc.sum(placed.cast(pa.int64())).as_py() or 0)
        if strays:
            text = f"{strays} rows in no window the manifest records as done"
            problems.append(Problem("STRAY", f"{kind.value}/date={date}", text))
        return problems

    @staticmethod
    def _query(table: DeltaTable, sql: str) -> Iterator[pa.RecordBatch]:
        """The result of `sql` over `table` (registered as `t`), batch by batch."""
        result = QueryBuilder().register("t", table).execute(sql)
        yield from pa.RecordBatchReader.from_stream(result)

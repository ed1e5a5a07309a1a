"""The backfill: plan windows, fetch each through Graph, write Parquet, store it, record it.

One task group runs `concurrency` workers that take windows from one shared plan;
the rate limiters and throttling pauses inside the Graph client are shared by all.
A window is recorded done only after its object is durable in the store.
"""

from __future__ import annotations

import collections
import heapq
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from archiver import __version__
from archiver.auth import TokenProvider
from archiver.config import Config
from archiver.errors import RetryableError, StopRun, WindowError
from archiver.graph import GraphClient, WindowStats, make_limiters, open_session
from archiver.kinds import Kind
from archiver.lease import Claim, Leases, Outcome
from archiver.manifest import Manifest, Record, State, now_iso
from archiver.metrics import Metrics, serving
from archiver.parquet import WindowWriter, WrittenFile
from archiver.schema import rows_to_batch, schema_for
from archiver.spool import Spool
from archiver.store import Store, StoreOptions, open_store
from archiver.windows import Window, format_instant, parse_instant, plan

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a run did."""

    archived: list[Record] = field(default_factory=list)
    failed: list[tuple[Window, str]] = field(default_factory=list)
    already: int = 0  # windows the manifest already had
    planned: int = 0  # windows this run set out to archive
    stopped: bool = False  # a signal stopped the run
    not_closed: int = 0  # windows that end in the future, left for later
    requests: int = 0  # Graph requests made

    @property
    def rows(self) -> int:
        """Rows archived in this run."""
        return sum(r.rows or 0 for r in self.archived)


def store_options(config: Config) -> StoreOptions:
    """The store settings a Config carries."""
    return StoreOptions(
        sse=config.sse,
        sse_kms_key_id=config.sse_kms_key_id,
        object_lock_mode=config.object_lock_mode,
        object_lock_days=config.object_lock_days,
    )


async def open_destination(config: Config) -> tuple[Store, Manifest]:
    """Open and check the destination, then load its manifest (UsageError if unusable)."""
    store = open_store(config.destination, store_options(config))
    await anyio.to_thread.run_sync(store.check)
    manifest = Manifest(store)
    await manifest.load()
    return store, manifest


@contextmanager
def unwrapped() -> Iterator[None]:
    """Let the single exception a task group collected through as itself, so callers
    catch WindowError or StopRun rather than an ExceptionGroup."""
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


def worker_id() -> str:
    """This process, as claims name it: host, pid and a random part (pids repeat in containers)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def select_rows(
    kind: Kind, rows: list[dict[str, Any]], window: Window, seen: set[str]
) -> pa.RecordBatch:
    """Typed rows of one page that belong to the window and were not seen before.

    PSTN's inclusive end returns rows that start exactly at the window end: those
    belong to the next window. Paging over live data can repeat a row: the first
    copy wins. A row without a start time stays where Graph put it.
    """
    batch = rows_to_batch(kind, rows)
    if not batch.num_rows:
        return batch
    start = batch.column("startDateTime")
    unit = start.type
    inside = pc.and_(
        pc.greater_equal(start, pa.scalar(window.start, unit)),
        pc.less(start, pa.scalar(window.end, unit)),
    ).fill_null(True)
    keep: list[bool] = []
    for row_id, ok in zip(batch.column("id").to_pylist(), inside.to_pylist(), strict=True):
        fresh = ok and row_id not in seen
        if fresh:
            seen.add(row_id)
        keep.append(fresh)
    return batch.filter(pa.array(keep, pa.bool_()))


def write_page(
    writer: WindowWriter, rows: list[dict[str, Any]], window: Window, seen: set[str]
) -> None:
    """Type one page, keep what belongs to the window, write it: one worker-thread hop
    per page. The parsed rows are freed here too, not on the event loop."""
    writer.write(select_rows(window.kind, rows, window, seen))
    rows.clear()


def keep_unseen(path: Path, writer: WindowWriter, seen: set[str]) -> int:
    """Write the rows of the Parquet file `path` whose id is not in `seen`; how many.

    Read batch by batch and conformed to the current schema (a column an older file
    lacks is null), so memory stays bounded and old archives merge with new ones.
    """
    schema = writer.schema
    ids = pa.array(list(seen), pa.string())
    kept = 0
    with pq.ParquetFile(path) as file:
        for batch in file.iter_batches(batch_size=65_536):
            columns = [
                batch.column(f.name).cast(f.type)
                if f.name in batch.schema.names
                else pa.nulls(batch.num_rows, f.type)
                for f in schema
            ]
            conformed = pa.RecordBatch.from_arrays(columns, schema=schema)
            unseen = conformed.filter(pc.invert(pc.is_in(conformed.column("id"), value_set=ids)))
            writer.write(unseen)
            kept += unseen.num_rows
    return kept


class Archiver:
    """Archives windows of one destination with one Graph client."""

    def __init__(
        self,
        config: Config,
        store: Store,
        manifest: Manifest,
        graph: GraphClient,
        spool: Spool,
        leases: Leases,
        metrics: Metrics,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self._newest: dict[str, float] = {}  # per kind: end of the newest archived window
        self.store = store
        self.manifest = manifest
        self.graph = graph
        self.spool = spool
        self.leases = leases

    async def claim_and_archive(self, window: Window, queue: WindowQueue) -> Record | None:
        """Archive a window if no other worker holds it; None when it is not ours to do.

        A window another worker holds goes back to the queue until its lease expires;
        one that another worker archived meanwhile counts as already archived.
        """
        redo = self.manifest.is_done(window)  # a re-archive (run's re-sweep)
        outcome, detail = await anyio.to_thread.run_sync(self.leases.claim, window, redo)
        if outcome is Outcome.BUSY:
            assert isinstance(detail, float)
            queue.defer(window, detail)
            return None
        if outcome is Outcome.DONE:
            return None
        assert isinstance(detail, Claim)
        claim = detail
        if outcome is Outcome.TAKEN_OVER:
            await self.manifest.load()  # its dead holder may have finished it
            if self.manifest.is_done(window):
                await anyio.to_thread.run_sync(self.leases.finish, claim)
                return None
        lost = anyio.Event()
        try:
            with unwrapped():
                async with anyio.create_task_group() as group:
                    group.start_soon(self._keep_lease, claim, lost, group.cancel_scope)
                    record = await self.archive(window, lost)
                    group.cancel_scope.cancel()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.leases.release, claim)
            raise
        if lost.is_set():
            log.warning("lost the lease of %s to another worker; left to it", window)
            queue.defer(window, time.time() + self.leases.duration)
            return None
        await anyio.to_thread.run_sync(self.leases.finish, claim)
        return record

    async def _keep_lease(self, claim: Claim, lost: anyio.Event, scope: anyio.CancelScope) -> None:
        """Renew the lease while the window is worked on; on losing it, stop the work."""
        while True:
            await anyio.sleep(self.leases.duration / 3)
            if not await anyio.to_thread.run_sync(self.leases.renew, claim):
                lost.set()
                scope.cancel()
                return

    async def archive(self, window: Window, lost: anyio.Event | None = None) -> Record:
        """Fetch, write, store and record one window; WindowError if it fails.

        `lost` is set when another worker took the window over: then nothing is stored.
        """
        stats = WindowStats()
        began = time.monotonic()
        started_at = now_iso()
        spool = self.spool.path(f"{window.kind.value}-{window.name}-{uuid.uuid4().hex}.partial")
        metadata = {
            "version": __version__,
            "kind": window.kind.value,
            "window_start": format_instant(window.start),
            "window_end": format_instant(window.end),
            "graph_url": self.config.graph_url,
            "graph_version": self.config.graph_version,
            "fetched_at": started_at,
        }
        writer = await anyio.to_thread.run_sync(
            WindowWriter, spool, schema_for(window.kind), metadata
        )
        try:
            seen: set[str] = set()
            async for rows in self.graph.pages(window, stats):
                await anyio.to_thread.run_sync(write_page, writer, rows, window, seen)
            kept = await self._keep_previous(window, writer, seen)
            written: WrittenFile = await anyio.to_thread.run_sync(writer.close)
            if lost is not None and lost.is_set():
                raise anyio.get_cancelled_exc_class()()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(writer.abort)
            raise
        try:
            info = await anyio.to_thread.run_sync(
                self.store.put_file, window.key, written.path, written.sha256
            )
        finally:
            written.path.unlink(missing_ok=True)
        record = Record(
            kind=window.kind.value,
            start=format_instant(window.start),
            end=format_instant(window.end),
            state=State.DONE.value,
            recorded_at=now_iso(),
            key=info.key,
            rows=written.rows,
            bytes=written.size,
            sha256=written.sha256,
            checksum_sha256=info.checksum_sha256,
            pages=stats.pages,
            graph_version=self.config.graph_version,
            archiver_version=__version__,
            started_at=started_at,
        )
        await self.manifest.record(record)
        self.count(record, stats)
        log.info(
            "archived %s",
            window,
            extra={
                "fields": {
                    "kind": window.kind.value,
                    "window": format_instant(window.start),
                    "rows": written.rows,
                    "kept": kept,
                    "pages": stats.pages,
                    "retries": stats.retries,
                    "throttled": stats.throttled,
                    "seconds": round(time.monotonic() - began, 3),
                }
            },
        )
        return record

    def count(self, record: Record, stats: WindowStats) -> None:
        """Move the metrics for one archived window."""
        kind = record.kind
        self.metrics.rows.labels(kind).inc(record.rows or 0)
        self.metrics.pages.labels(kind).inc(stats.pages)
        self.metrics.last_success.labels(kind).set(time.time())
        end = parse_instant(record.end).timestamp()
        self._newest[kind] = max(self._newest.get(kind, 0.0), end)
        self.metrics.newest_window_end.labels(kind).set(self._newest[kind])

    def show_manifest(self) -> None:
        """Set the per-state window gauges and newest window from the manifest."""
        for kind, summary in self.manifest.summary().items():
            for state in ("done", "failed", "pending"):
                self.metrics.windows.labels(kind, state).set(summary[state])
            if summary["newest_window"]:
                end = parse_instant(summary["newest_window"]).timestamp()
                self._newest[kind] = max(self._newest.get(kind, 0.0), end)
                self.metrics.newest_window_end.labels(kind).set(self._newest[kind])
            if summary["last_success"]:
                when = parse_instant(summary["last_success"]).timestamp()
                self.metrics.last_success.labels(kind).set(when)

    async def _keep_previous(self, window: Window, writer: WindowWriter, seen: set[str]) -> int:
        """Re-archiving: add the rows of the window's current object that this fetch did not
        return, so the archive never loses a row it once held. Returns how many."""
        record = self.manifest.get(window)
        if record is None or record.state != State.DONE.value or not record.key:
            return 0
        previous = self.spool.path(f"{window.kind.value}-{window.name}-{uuid.uuid4().hex}.prev")
        try:
            try:
                await anyio.to_thread.run_sync(self.store.download, record.key, previous)
            except RetryableError:
                raise
            except WindowError:
                if await anyio.to_thread.run_sync(self.store.head, record.key) is not None:
                    raise
                log.warning(
                    "%s: its archived object %s is missing; archived anew", window, record.key
                )
                return 0
            return await anyio.to_thread.run_sync(keep_unseen, previous, writer, seen)
        finally:
            previous.unlink(missing_ok=True)

    async def fail(self, window: Window, error: str) -> None:
        """Record that a window failed, with its error."""
        record = Record(
            kind=window.kind.value,
            start=format_instant(window.start),
            end=format_instant(window.end),
            state=State.FAILED.value,
            recorded_at=now_iso(),
            error=error,
            archiver_version=__version__,
        )
        await self.manifest.record(record)
        log.error(
            "failed %s: %s",
            window,
            error,
            extra={"fields": {"kind": window.kind.value, "window": format_instant(window.start)}},
        )


class Shutdown:
    """SIGTERM/SIGINT: stop taking new windows, give the ones in flight `grace` seconds to
    finish, then cancel them; a second signal cancels at once. Cancelled windows leave
    nothing recorded: their spool files go, their claims are released."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.requested = anyio.Event()
        self.hard = False  # the grace time is over, or a second signal came
        self._scopes: set[anyio.CancelScope] = set()  # the work that a hard stop cancels

    @contextmanager
    def work(self) -> Iterator[anyio.CancelScope]:
        """A cancel scope for work that a hard stop cancels (already cancelled after one)."""
        scope = anyio.CancelScope()
        if self.hard:
            scope.cancel()
        self._scopes.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._scopes.discard(scope)

    def stop_now(self) -> None:
        """Cancel the work in flight."""
        self.hard = True
        for scope in self._scopes:
            scope.cancel()

    def request(self, reason: str) -> None:
        """Begin a graceful stop (also used by tests and by `run` between rounds)."""
        if not self.requested.is_set():
            log.warning(
                "%s: finishing windows in flight (up to %gs), starting no new ones",
                reason,
                self.grace,
            )
            self.requested.set()

    async def watch(self) -> None:
        """Turn signals into a graceful, then a hard, stop; runs until cancelled."""
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with anyio.create_task_group() as group:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if self.requested.is_set():
                        log.warning("%s again: stopping now", name)
                        self.stop_now()
                    else:
                        self.request(name)
                        group.start_soon(self._expire)

    async def _expire(self) -> None:
        await anyio.sleep(self.grace)
        log.warning("grace time over: abandoning the windows still in flight")
        self.stop_now()


class WindowQueue:
    """Windows still to archive, oldest first; a window another worker holds waits for
    its lease to expire (it is then either done, or free to take over). Empty once a
    stop is requested."""

    POLL = 2.0  # seconds: how often a window another worker holds is looked at again

    def __init__(self, windows: Iterable[Window], shutdown: Shutdown) -> None:
        self._ready: collections.deque[Window] = collections.deque(windows)
        self._waiting: list[tuple[float, Window]] = []
        self._shutdown = shutdown

    def defer(self, window: Window, until: float) -> None:
        """Look at `window` again at `until` (wall-clock seconds)."""
        heapq.heappush(self._waiting, (min(until, time.time() + self.POLL), window))

    async def next(self) -> Window | None:
        """The next window to try, waiting for a held one if that is all there is; None
        when nothing is left or a stop was requested."""
        if self._shutdown.requested.is_set():
            return None
        if self._ready:
            return self._ready.popleft()
        if not self._waiting:
            return None
        until, window = heapq.heappop(self._waiting)
        with anyio.move_on_after(max(0.0, until - time.time())):
            await self._shutdown.requested.wait()
        return None if self._shutdown.requested.is_set() else window


async def run_windows(
    archiver: Archiver,
    windows: Iterable[Window],
    result: RunResult,
    shutdown: Shutdown,
    on_done: Callable[[Record, RunResult], None] | None = None,
) -> None:
    """Archive `windows` with `concurrency` workers until done or stopped; failures are
    recorded, StopRun re-raised."""
    queue = WindowQueue(windows, shutdown)
    stop: list[StopRun] = []

    async def worker(scope: anyio.CancelScope) -> None:
        while (window := await queue.next()) is not None:
            try:
                record = await archiver.claim_and_archive(window, queue)
            except WindowError as exc:
                result.failed.append((window, str(exc)))
                await archiver.fail(window, str(exc))
            except StopRun as exc:
                stop.append(exc)
                scope.cancel()
                return
            else:
                if record is not None:
                    result.archived.append(record)
                    if on_done is not None:
                        on_done(record, result)

    with shutdown.work():
        async with anyio.create_task_group() as group:
            for _ in range(archiver.config.concurrency):
                group.start_soon(worker, group.cancel_scope)
    result.stopped = shutdown.requested.is_set()
    if stop:
        raise stop[0]


@asynccontextmanager
async def connect(
    config: Config, store: Store, manifest: Manifest, metrics: Metrics | None = None
) -> AsyncIterator[Archiver]:
    """An Archiver with its Graph session, proven credentials, spool and leases.

    The token comes first: bad credentials stop the run before anything is written.
    """
    metrics = metrics or Metrics()
    async with open_session(config) as session:
        tokens = TokenProvider(config)
        await tokens.token()
        graph = GraphClient(config, session, tokens, make_limiters(config), metrics=metrics)
        await manifest.fix_window(config.window)
        spool = await anyio.to_thread.run_sync(Spool, store.spool_dir())
        leases = Leases(store, worker_id(), config.lease.total_seconds())
        try:
            yield Archiver(config, store, manifest, graph, spool, leases, metrics)
        finally:
            with anyio.CancelScope(shield=True):
                await manifest.compact()
                await anyio.to_thread.run_sync(spool.close)


@asynccontextmanager
async def working(
    config: Config, store: Store, manifest: Manifest, shutdown: Shutdown
) -> AsyncIterator[Archiver]:
    """What a run works inside: metrics served (when configured), Graph connected with
    proven credentials, signals watched; one exception a task collects is let through."""
    metrics = Metrics()
    connected = anyio.Event()
    with unwrapped():
        async with (
            serving(metrics, config.metrics_host, config.metrics_port, connected.is_set),
            connect(config, store, manifest, metrics) as archiver,
            anyio.create_task_group() as group,
        ):
            connected.set()
            archiver.show_manifest()
            group.start_soon(shutdown.watch)
            try:
                yield archiver
            finally:
                group.cancel_scope.cancel()


async def backfill(
    config: Config,
    kinds: list[Kind],
    start: datetime,
    end: datetime,
    now: datetime | None = None,
    on_done: Callable[[Record, RunResult], None] | None = None,
) -> RunResult:
    """Archive every window of `kinds` covering [start, end) that is not archived yet.

    Windows already archived cost no Graph request at all. SIGTERM/SIGINT stop it
    gracefully (`result.stopped`).
    """
    store, manifest = await open_destination(config)
    manifest.check_window(config.window)
    now = now or datetime.now(UTC)
    result = RunResult()
    windows: list[Window] = []
    for window in plan(kinds, start, end, config.window):
        if manifest.is_done(window):
            result.already += 1
        elif window.end > now:
            result.not_closed += 1
        else:
            windows.append(window)
    if result.not_closed:
        log.warning("%d windows end in the future and were left for a later run", result.not_closed)
    result.planned = len(windows)
    if not windows:
        return result
    shutdown = Shutdown(config.grace.total_seconds())
    async with working(config, store, manifest, shutdown) as archiver:
        await manifest.add_plan(kinds, start, end)
        try:
            await run_windows(archiver, windows, result, shutdown, on_done)
        finally:
            result.requests = archiver.graph.requests
    return result

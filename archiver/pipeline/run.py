"""Running many windows: the destination, the workers, graceful stops, and `backfill`.

One task group runs workers that take windows from one shared queue (archive.py does
each window): `concurrency` of them fetch pages at a time, as many again claim,
reconcile, upload and record theirs meanwhile, so the pacers never wait on the store.
The rate limiters and throttling pauses inside the Graph client are shared by all.
SIGTERM/SIGINT stop the workers gracefully (shutdown.py).
"""

from __future__ import annotations

import collections
import heapq
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import anyio

from archiver.archive import Archiver, worker_id
from archiver.config import Config
from archiver.errors import (
    ArchiverError,
    NothingArchived,
    StopRun,
    UsageError,
    WindowError,
    internal_error,
    unwrapped,
)
from archiver.graph.auth import TokenProvider
from archiver.graph.client import GraphClient, make_limiters, open_session
from archiver.kinds import Kind
from archiver.manifest import Manifest, Record
from archiver.manifest.lease import Leases
from archiver.metrics import Metrics, serving
from archiver.pipeline.shutdown import Shutdown
from archiver.spool import Spool
from archiver.store import Store, StoreOptions, open_store
from archiver.windows import Window, plan

log = logging.getLogger("archiver.pipeline")  # the name its lines always carried

# Workers per window fetching at once: while `concurrency` windows fetch, as many again
# may be starting (claim) or finishing (reconcile, upload, journal) off Graph's pacers.
WORKERS_PER_FETCH = 2


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


async def open_archive(config: Config) -> tuple[Store, Manifest]:
    """`open_destination` for the commands that read an archive (`status`, `verify`): a
    destination that holds no manifest raises NothingArchived, one line for both."""
    store, manifest = await open_destination(config)
    if not manifest.holds_archive:
        raise NothingArchived(store.description)
    return store, manifest


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
    wanted: Callable[[Window], bool] | None = None,
    slots: anyio.CapacityLimiter | None = None,
) -> None:
    """Archive `windows` with twice `concurrency` workers until done or stopped; failures are
    recorded, StopRun re-raised.

    `wanted` tells, right before a window is claimed, whether it still needs archiving
    (default: not archived yet by anyone, as far as the manifest knows by then). `slots`,
    shared by every tenant of the process, bounds the windows in flight in all of them:
    a worker holds one while its window is claimed and archived, and a freed slot goes to
    the worker that has waited longest, so tenants take turns."""
    wanted = wanted or archiver.manifest.is_pending
    queue = WindowQueue(windows, shutdown)
    stop: list[StopRun | UsageError] = []

    async def archive(window: Window) -> Record | None:
        if slots is None:
            return await archiver.claim_and_archive(window, queue.defer, wanted)
        async with slots:
            return await archiver.claim_and_archive(window, queue.defer, wanted)

    async def worker(scope: anyio.CancelScope) -> None:
        while (window := await queue.next()) is not None:
            try:
                record = await archive(window)
            except (StopRun, UsageError) as exc:
                stop.append(exc)
                scope.cancel()
                return
            except Exception as exc:
                error = str(exc) if isinstance(exc, ArchiverError) else internal_error(exc)
                if not isinstance(exc, WindowError):
                    log.error("unexpected error in %s", window, exc_info=exc)
                result.failed.append((window, error))
                await archiver.fail(window, error)
            else:
                if record is not None:
                    result.archived.append(record)
                    if on_done is not None:
                        on_done(record, result)

    with shutdown.work():
        async with anyio.create_task_group() as group:
            for _ in range(WORKERS_PER_FETCH * archiver.config.concurrency):
                group.start_soon(worker, group.cancel_scope)
    result.stopped = shutdown.requested.is_set()
    if stop:
        raise stop[0]


@dataclass
class Shared:
    """What every tenant's job in one process shares: the graceful stop, the metrics (each
    tenant counts into its own view), the process-wide window slots (`max_windows`, with
    tenants) and whether any job has connected (readiness)."""

    shutdown: Shutdown
    metrics: Metrics
    slots: anyio.CapacityLimiter | None = None
    connected: anyio.Event = field(default_factory=anyio.Event)

    def for_tenant(self, tenant: str) -> Shared:
        """The same, counting into `tenant`'s metrics."""
        return replace(self, metrics=self.metrics.for_tenant(tenant))


@asynccontextmanager
async def process_scope(
    config: Config, shutdown: Shutdown, metrics: Metrics | None = None
) -> AsyncIterator[Shared]:
    """What a run's jobs work inside, once per process: metrics served (when configured),
    signals watched; one exception a task collects is let through."""
    metrics = metrics or Metrics(tenant=config.tenant_id or "")
    slots = anyio.CapacityLimiter(config.max_windows) if config.tenants else None
    shared = Shared(shutdown, metrics, slots)
    with unwrapped():
        async with (
            serving(metrics, config.metrics_host, config.metrics_port, shared.connected.is_set),
            anyio.create_task_group() as group,
        ):
            group.start_soon(shutdown.watch)
            try:
                yield shared
            finally:
                group.cancel_scope.cancel()


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
        await manifest.fix_window(config.window, config.table_format)
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
    config: Config, store: Store, manifest: Manifest, shared: Shared
) -> AsyncIterator[Archiver]:
    """One tenant's Archiver, connected with proven credentials, inside its process."""
    async with connect(config, store, manifest, shared.metrics) as archiver:
        shared.connected.set()
        archiver.show_manifest()
        yield archiver


async def backfill(
    config: Config,
    kinds: list[Kind],
    start: datetime,
    end: datetime,
    now: datetime | None = None,
    on_done: Callable[[Record, RunResult], None] | None = None,
) -> RunResult:
    """Archive every window of `kinds` covering [start, end) that is not archived yet
    (one tenant: `config.tenant_id`).

    Windows already archived cost no Graph request at all. SIGTERM/SIGINT stop it
    gracefully (`result.stopped`).
    """
    async with process_scope(config, Shutdown(config.grace.total_seconds())) as shared:
        return await backfill_tenant(config, kinds, start, end, shared, now, on_done)


async def backfill_tenant(
    config: Config,
    kinds: list[Kind],
    start: datetime,
    end: datetime,
    shared: Shared,
    now: datetime | None = None,
    on_done: Callable[[Record, RunResult], None] | None = None,
) -> RunResult:
    """`backfill` of one tenant's destination, inside a process shared with others."""
    store, manifest = await open_destination(config)
    manifest.check_window(config.window, config.table_format)
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
    async with working(config, store, manifest, shared) as archiver:
        await manifest.add_plan(kinds, start, end)
        try:
            await run_windows(
                archiver, windows, result, shared.shutdown, on_done, slots=shared.slots
            )
        finally:
            result.requests = archiver.graph.requests
    return result

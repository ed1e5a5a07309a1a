"""One window, start to finish: claim it, fetch its pages, type and filter the rows,
write Parquet to the spool, reconcile (each row once), publish it through the sink
(replace the object, or commit to the Delta table), record it in the manifest.

The rows of a window are typed page by page in a worker thread and streamed into one
Parquet file; a re-archive merges by id with the rows already archived. Only the sink
knows the output format.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import pyarrow as pa
import pyarrow.compute as pc

from archiver import __version__
from archiver.config import Config
from archiver.errors import ArchiverError, LeaseLost, unwrapped
from archiver.graph.client import GraphClient, WindowStats
from archiver.kinds import Kind
from archiver.manifest import Manifest, Record, State, format_time, utcnow
from archiver.manifest.lease import AlreadyDone, Busy, Claim, Leases
from archiver.metrics import Metrics
from archiver.reconcile import Ids, Reconciled, reconcile
from archiver.schema import rows_to_batch, schema_for
from archiver.sinks import Published, open_sink
from archiver.sinks.parquet import WindowWriter, WrittenFile, group_rows
from archiver.spool import Spool
from archiver.store import Store
from archiver.windows import Window, format_instant

log = logging.getLogger(__name__)

READ_AHEAD = 1  # pages fetched ahead of the one being written, per window


def worker_id() -> str:
    """This process, as claims name it: host, pid and a random part (pids repeat in containers)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def select_rows(kind: Kind, rows: list[dict[str, Any]], window: Window) -> pa.RecordBatch:
    """Typed rows of one page that belong to the window.

    PSTN's inclusive end returns rows that start exactly at the window end: those
    belong to the next window. A row without a start time stays where Graph put it.
    Repeated rows are left to `reconcile`, once the window is complete.
    """
    batch = rows_to_batch(kind, rows)
    if not batch.num_rows:
        return batch
    start = batch.column(window.kind.time_column)
    unit = start.type
    inside = pc.and_(
        pc.greater_equal(start, pa.scalar(window.start, unit)),
        pc.less(start, pa.scalar(window.end, unit)),
    )
    if inside.null_count == 0 and inside.false_count == 0:
        return batch
    return batch.filter(inside.fill_null(True))


def page_reader(window: Window) -> Callable[[list[dict[str, Any]]], pa.RecordBatch]:
    """What the Graph client makes of each page of `window` in the worker thread that
    parsed it: the typed rows that belong to the window. So a page's parsed rows (some
    3 MB of objects, ten times their Arrow form) never wait in a queue, and only as many
    pages of them exist as are being parsed."""

    def read(rows: list[dict[str, Any]]) -> pa.RecordBatch:
        return select_rows(window.kind, rows, window)

    return read


def write_page(writer: WindowWriter, batch: pa.RecordBatch, ids: Ids) -> None:
    """Write one typed page and note its ids: one worker-thread hop per page."""
    writer.write(batch)
    ids.add(batch)


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
        self._newest: dict[Kind, float] = {}  # per kind: end of the newest archived window
        self.store = store
        self.sink = open_sink(config.table_format, store)
        self.manifest = manifest
        self.graph = graph
        self.spool = spool
        self.leases = leases
        self._per_group = group_rows(config.concurrency)  # rows per Parquet row group
        # Windows fetching pages at once: `concurrency`. More workers than that (see
        # pipeline.run_windows) claim, reconcile, upload and record windows outside these
        # slots, so Graph's pacers stay busy while windows start and finish.
        self._fetching = anyio.CapacityLimiter(config.concurrency)

    async def claim_and_archive(
        self,
        window: Window,
        defer: Callable[[Window, float], None],
        wanted: Callable[[Window], bool],
    ) -> Record | None:
        """Archive a window if it is still `wanted` and no other worker holds it; None
        when it is not ours to do.

        `wanted` asks the manifest as it stands now (it is reloaded when other workers
        compact or a lease is taken over): a window another worker archived meanwhile
        is not wanted any more, and a re-archive (run's re-sweep) only while its record
        is stale. A window another worker holds (or took over from us) is handed to
        `defer` with the time to look again.
        """
        if not wanted(window):
            return None
        redo = self.manifest.is_done(window)  # a re-archive (run's re-sweep)
        outcome = await anyio.to_thread.run_sync(self.leases.claim, window, redo)
        if isinstance(outcome, Busy):
            defer(window, outcome.until)
            return None
        if isinstance(outcome, AlreadyDone):
            return None
        claim = outcome.claim
        if outcome.taken_over:
            await self.manifest.load()  # its dead holder may have finished it
            if not wanted(window):
                await self._settle_claim(self.leases.finish, claim)
                return None
        try:
            async with self.leases.hold(claim):
                record = await self.archive(window, lambda: self.leases.confirm(claim))
        except LeaseLost as exc:
            log.warning("%s; left to it", exc)
            defer(window, time.time() + self.leases.duration)
            return None
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._settle_claim(self.leases.release, claim)
            raise
        await self._settle_claim(self.leases.finish, claim)
        return record

    async def _settle_claim(self, action: Callable[[Claim], None], claim: Claim) -> None:
        """Finish or release a claim; if the store fails, the lease simply expires."""
        try:
            await anyio.to_thread.run_sync(action, claim)
        except ArchiverError as exc:
            log.warning("claim of %s left to expire: %s", claim.window, exc)

    async def archive(
        self, window: Window, confirm: Callable[[], Awaitable[None]] | None = None
    ) -> Record:
        """Fetch, write, reconcile, publish and record one window; WindowError if it fails.

        `confirm` is awaited right before the rows are published: it raises LeaseLost if
        another worker took the window over, so a worker never replaces what another
        worker archived.
        """
        began = time.monotonic()
        stats = WindowStats()
        started_at = utcnow()
        metadata = self._metadata(window, started_at)
        async with self._fetching:
            fetched, ids = await self._fetch(window, stats, metadata)
        final = await self._reconcile(window, fetched, ids, metadata)
        if confirm is not None:
            try:
                await confirm()
            except BaseException:
                final.file.path.unlink(missing_ok=True)
                raise
        info = await self._publish(window, final.file, metadata)
        record = Record(
            kind=window.kind,
            start=window.start,
            end=window.end,
            state=State.DONE,
            recorded_at=utcnow(),
            key=info.key,
            rows=final.file.rows,
            bytes=final.file.size,
            sha256=info.sha256,
            checksum_sha256=info.checksum_sha256,
            pages=stats.pages,
            graph_version=window.kind.version_for(self.config.graph_version),
            archiver_version=__version__,
            started_at=started_at,
            extra=info.extra,
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
                    "rows": final.file.rows,
                    "kept": final.kept,
                    "repeated": final.repeated,
                    "pages": stats.pages,
                    "retries": stats.retries,
                    "throttled": stats.throttled,
                    "seconds": round(time.monotonic() - began, 3),
                }
            },
        )
        return record

    def _metadata(self, window: Window, started_at: datetime) -> dict[str, str]:
        """The provenance each Parquet file of the window carries."""
        return {
            "version": __version__,
            "kind": window.kind.value,
            "window_start": format_instant(window.start),
            "window_end": format_instant(window.end),
            "graph_url": self.config.graph_url,
            "graph_version": window.kind.version_for(self.config.graph_version),
            "fetched_at": format_time(started_at),
        }

    def _spool_path(self, window: Window, suffix: str) -> Path:
        """A fresh spool file for one step of the window's work."""
        return self.spool.path(f"{window.kind.value}-{window.name}-{uuid.uuid4().hex}.{suffix}")

    async def _fetch(
        self, window: Window, stats: WindowStats, metadata: dict[str, str]
    ) -> tuple[WrittenFile, pa.ChunkedArray]:
        """Every page of the window, typed and filtered, into one spool file; and the ids
        written. Nothing of it is left behind if this fails or is cancelled."""
        path = self._spool_path(window, "partial")
        schema = schema_for(window.kind)
        writer = await anyio.to_thread.run_sync(
            WindowWriter, path, schema, metadata, self._per_group
        )
        ids = Ids(window.kind.key)
        try:
            await self._fetch_and_write(window, stats, writer, ids)
            fetched: WrittenFile = await anyio.to_thread.run_sync(writer.close)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(writer.abort)
            raise
        return fetched, ids.column()

    async def _fetch_and_write(
        self, window: Window, stats: WindowStats, writer: WindowWriter, ids: Ids
    ) -> None:
        """Write the window's pages in order, fetching (and typing, where each is parsed)
        the next page while one is written: with many windows in flight, a page's writing
        then no longer delays the request for the next one. At most READ_AHEAD typed pages
        wait, so memory stays bounded."""
        send, receive = anyio.create_memory_object_stream[pa.RecordBatch](READ_AHEAD)

        async def fetch() -> None:
            async with send:
                async for batch in self.graph.read_pages(window, stats, page_reader(window)):
                    await send.send(batch)

        with unwrapped():
            async with anyio.create_task_group() as group, receive:
                group.start_soon(fetch)
                async for batch in receive:
                    await anyio.to_thread.run_sync(write_page, writer, batch, ids)

    async def _reconcile(
        self,
        window: Window,
        fetched: WrittenFile,
        ids: pa.ChunkedArray,
        metadata: dict[str, str],
    ) -> Reconciled:
        """Each row once, and on a re-archive the rows archived for the window before that
        this fetch did not return, so the archive never loses a row it once held. A file
        rewritten for it is written as `fetched` was. `fetched` is consumed."""
        record = self.manifest.get(window)
        previous = self._spool_path(window, "prev") if record and record.done else None
        out = self._spool_path(window, "final")
        try:
            if (
                previous is not None
                and record is not None
                and not await anyio.to_thread.run_sync(self.sink.previous, window, record, previous)
            ):
                previous = None
            return await anyio.to_thread.run_sync(
                reconcile,
                fetched,
                ids,
                previous,
                out,
                schema_for(window.kind),
                metadata,
                self._per_group,
                window.kind.key,
            )
        except BaseException:
            fetched.path.unlink(missing_ok=True)
            out.unlink(missing_ok=True)  # finished after all, but cancelled meanwhile
            raise
        finally:
            if previous is not None:
                previous.unlink(missing_ok=True)

    async def _publish(
        self, window: Window, written: WrittenFile, metadata: dict[str, str]
    ) -> Published:
        """Replace the window's rows with `written` in one step (the sink consumes it)."""
        try:
            return await anyio.to_thread.run_sync(self.sink.publish, window, written, metadata)
        finally:
            written.path.unlink(missing_ok=True)

    def count(self, record: Record, stats: WindowStats) -> None:
        """Move the metrics for one archived window."""
        kind = record.kind.value
        self.metrics.rows.labels(kind).inc(record.rows or 0)
        self.metrics.pages.labels(kind).inc(stats.pages)
        self.metrics.last_success.labels(kind).set(time.time())
        self._note_newest(record.kind, record.end)

    def _note_newest(self, kind: Kind, end: datetime) -> None:
        self._newest[kind] = max(self._newest.get(kind, 0.0), end.timestamp())
        self.metrics.newest_window_end.labels(kind.value).set(self._newest[kind])

    def show_manifest(self) -> None:
        """Set the per-state window gauges and newest window from the manifest."""
        for kind, summary in self.manifest.summary().items():
            self.metrics.windows.labels(kind.value, "done").set(summary.done)
            self.metrics.windows.labels(kind.value, "failed").set(summary.failed)
            self.metrics.windows.labels(kind.value, "pending").set(summary.pending)
            if summary.newest_window:
                self._note_newest(kind, summary.newest_window)
            if summary.last_success:
                self.metrics.last_success.labels(kind.value).set(summary.last_success.timestamp())

    async def fail(self, window: Window, error: str) -> None:
        """Record that a window failed, with its error (if the store lets us: the next
        run retries the window either way)."""
        log.error(
            "failed %s: %s",
            window,
            error,
            extra={"fields": {"kind": window.kind.value, "window": format_instant(window.start)}},
        )
        record = Record(
            kind=window.kind,
            start=window.start,
            end=window.end,
            state=State.FAILED,
            recorded_at=utcnow(),
            error=error,
            archiver_version=__version__,
        )
        try:
            await self.manifest.record(record)
        except ArchiverError as exc:
            log.warning("could not record the failure of %s: %s", window, exc)

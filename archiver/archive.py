"""One window, start to finish: claim it, fetch its pages, type and filter the rows,
write Parquet to the spool, replace the object, record it in the manifest.

The rows of a window are typed page by page in a worker thread and streamed into one
Parquet file; a re-archive merges by id with the object already archived.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pyarrow as pa
import pyarrow.compute as pc

from archiver import __version__
from archiver.config import Config
from archiver.errors import RetryableError, WindowError, unwrapped
from archiver.graph import GraphClient, WindowStats
from archiver.kinds import Kind
from archiver.lease import Claim, Leases, Outcome
from archiver.manifest import Manifest, Record, State, now_iso
from archiver.metrics import Metrics
from archiver.parquet import WindowWriter, WrittenFile, group_rows
from archiver.reconcile import Ids, Reconciled, reconcile
from archiver.schema import rows_to_batch, schema_for
from archiver.spool import Spool
from archiver.store import Store
from archiver.windows import Window, format_instant, parse_instant

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
    start = batch.column("startDateTime")
    unit = start.type
    inside = pc.and_(
        pc.greater_equal(start, pa.scalar(window.start, unit)),
        pc.less(start, pa.scalar(window.end, unit)),
    )
    if inside.null_count == 0 and inside.false_count == 0:
        return batch
    return batch.filter(inside.fill_null(True))


def write_page(writer: WindowWriter, rows: list[dict[str, Any]], window: Window, ids: Ids) -> None:
    """Type one page, keep what belongs to the window, write it, note its ids: one
    worker-thread hop per page. The parsed rows are freed here too, not on the loop."""
    batch = select_rows(window.kind, rows, window)
    writer.write(batch)
    ids.add(batch)
    rows.clear()


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

    async def claim_and_archive(
        self, window: Window, defer: Callable[[Window, float], None]
    ) -> Record | None:
        """Archive a window if no other worker holds it; None when it is not ours to do.

        A window another worker holds is handed to `defer` with the time its lease
        expires; one that another worker archived meanwhile is simply not ours.
        """
        redo = self.manifest.is_done(window)  # a re-archive (run's re-sweep)
        outcome, detail = await anyio.to_thread.run_sync(self.leases.claim, window, redo)
        if outcome is Outcome.BUSY:
            assert isinstance(detail, float)
            defer(window, detail)
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
            defer(window, time.time() + self.leases.duration)
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
        schema = schema_for(window.kind)
        per_group = group_rows(self.config.concurrency)
        writer = await anyio.to_thread.run_sync(WindowWriter, spool, schema, metadata, per_group)
        ids = Ids()
        try:
            await self._fetch_and_write(window, stats, writer, ids)
            fetched: WrittenFile = await anyio.to_thread.run_sync(writer.close)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(writer.abort)
            raise
        try:
            final = await self._reconcile(
                window, fetched, ids.column(), schema, metadata, per_group
            )
        except BaseException:
            fetched.path.unlink(missing_ok=True)
            raise
        del ids  # about 20 MB per million rows: not held while the object is stored
        written = final.file
        if lost is not None and lost.is_set():
            written.path.unlink(missing_ok=True)
            raise anyio.get_cancelled_exc_class()()
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

    async def _fetch_and_write(
        self, window: Window, stats: WindowStats, writer: WindowWriter, ids: Ids
    ) -> None:
        """Write the window's pages in order, fetching the next page while one is written:
        with many windows in flight, a page's typing then no longer delays the request
        for the next one. At most READ_AHEAD pages wait, so memory stays bounded."""
        send, receive = anyio.create_memory_object_stream[list[dict[str, Any]]](READ_AHEAD)

        async def fetch() -> None:
            async with send:
                async for rows in self.graph.pages(window, stats):
                    await send.send(rows)

        with unwrapped():
            async with anyio.create_task_group() as group, receive:
                group.start_soon(fetch)
                async for rows in receive:
                    await anyio.to_thread.run_sync(write_page, writer, rows, window, ids)

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

    async def _reconcile(
        self,
        window: Window,
        fetched: WrittenFile,
        ids: pa.ChunkedArray,
        schema: pa.Schema,
        metadata: dict[str, str],
        per_group: int,
    ) -> Reconciled:
        """Each row once, and on a re-archive the rows of the window's current object that
        this fetch did not return, so the archive never loses a row it once held. A file
        rewritten for it is written as `fetched` was: `schema`, `metadata`, `per_group`."""
        record = self.manifest.get(window)
        redo = record is not None and record.state == State.DONE.value and bool(record.key)
        name = f"{window.kind.value}-{window.name}-{uuid.uuid4().hex}"
        previous = self.spool.path(f"{name}.prev") if redo else None
        out = self.spool.path(f"{name}.final")
        try:
            if previous is not None and not await self._download(window, record, previous):
                previous = None
            return await anyio.to_thread.run_sync(
                reconcile, fetched, ids, previous, out, schema, metadata, per_group
            )
        except BaseException:
            out.unlink(missing_ok=True)  # finished after all, but cancelled meanwhile
            raise
        finally:
            if previous is not None:
                previous.unlink(missing_ok=True)

    async def _download(self, window: Window, record: Record | None, path: Path) -> bool:
        """Fetch the window's archived object into `path`; False when it is gone."""
        assert record is not None and record.key
        key = record.key
        try:
            await anyio.to_thread.run_sync(self.store.download, key, path)
        except RetryableError:
            raise
        except WindowError:
            if await anyio.to_thread.run_sync(self.store.head, key) is not None:
                raise
            log.warning("%s: its archived object %s is missing; archived anew", window, key)
            return False
        return True

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

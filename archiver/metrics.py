"""Prometheus metrics, and the small HTTP server that serves them with /healthz and /readyz.

Every series is labelled by `kind` (`pstn` | `direct_routing`). The metrics live in
their own `CollectorRegistry`, so two `Metrics` (two tests, two runs in one process)
never share counts. Values that depend on the time of the scrape — the age of the
newest archived window, the days left before Microsoft drops the oldest window not yet
archived — are computed when Prometheus scrapes, so they stay true while the job is
stuck.

    archiver_rows_total{kind}                             rows archived
    archiver_pages_total{kind}                            Graph pages fetched
    archiver_graph_requests_total{kind,status}            Graph requests by HTTP status
                                                          ("200", "429", "503", ...; "error":
                                                          no response)
    archiver_throttled_total{kind}                        429 answers
    archiver_retries_total{kind}                          requests sent again
    archiver_windows{kind,state}                          windows done | failed | pending
    archiver_newest_window_end_timestamp_seconds{kind}    end of the newest archived window
    archiver_newest_window_age_seconds{kind}              now minus that end
    archiver_last_success_timestamp_seconds{kind}         when a window was last archived
    archiver_retention_margin_days{kind}                  days until Microsoft drops the
                                                          oldest window not yet archived
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import datetime

import anyio
import anyio.abc
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from archiver.errors import UsageError
from archiver.kinds import Kind

WINDOW_STATES = ("done", "failed", "pending")
_DAY = 86400.0


class Metrics:
    """The archiver's metrics in a registry of their own."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.registry = CollectorRegistry()
        registry = self.registry
        kind = ["kind"]
        self.rows = Counter("archiver_rows", "Rows archived.", kind, registry=registry)
        self.pages = Counter("archiver_pages", "Graph pages fetched.", kind, registry=registry)
        self.requests = Counter(
            "archiver_graph_requests",
            'Graph requests by HTTP status ("error": no response arrived).',
            ["kind", "status"],
            registry=registry,
        )
        self.throttled = Counter(
            "archiver_throttled", "Graph answers 429 (throttled).", kind, registry=registry
        )
        self.retries = Counter(
            "archiver_retries", "Graph requests sent again.", kind, registry=registry
        )
        self.windows = Gauge(
            "archiver_windows",
            "Windows by state (done, failed, pending).",
            ["kind", "state"],
            registry=registry,
        )
        self.newest_window_end = Gauge(
            "archiver_newest_window_end_timestamp_seconds",
            "End of the newest archived window (Unix time).",
            kind,
            registry=registry,
        )
        self.last_success = Gauge(
            "archiver_last_success_timestamp_seconds",
            "When a window was last archived (Unix time).",
            kind,
            registry=registry,
        )
        self.retention_margin = Gauge(
            "archiver_retention_margin_days",
            "Days until Microsoft's retention drops the oldest window not yet archived.",
            kind,
            registry=registry,
        )
        registry.register(_WindowAge(self.newest_window_end, clock))
        for k in Kind:  # counters exist at 0 from the start, so rate() and alerts see them
            for counter in (self.rows, self.pages, self.throttled, self.retries):
                counter.labels(kind=k.value)
            for state in WINDOW_STATES:
                self.windows.labels(kind=k.value, state=state)

    def set_oldest_pending(self, kind: Kind, start: datetime | None) -> None:
        """Track the retention margin of `kind` from the start of its oldest window not yet
        archived (None: none is behind, the margin is the whole retention); recomputed at
        every scrape."""
        oldest = None if start is None else start.timestamp()
        retention = kind.retention_days

        def margin() -> float:
            behind = 0.0 if oldest is None else self._clock() - oldest
            return retention - behind / _DAY

        self.retention_margin.labels(kind=kind.value).set_function(margin)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of every metric, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _WindowAge(Collector):
    """archiver_newest_window_age_seconds{kind}: scrape time minus the newest window's end."""

    def __init__(self, newest_end: Gauge, clock: Callable[[], float]) -> None:
        self._newest_end = newest_end
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        """One sample per kind whose newest window end is known."""
        family = GaugeMetricFamily(
            "archiver_newest_window_age_seconds",
            "Seconds since the end of the newest archived window.",
            labels=["kind"],
        )
        now = self._clock()
        for metric in self._newest_end.collect():
            for sample in metric.samples:
                family.add_metric([sample.labels["kind"]], now - sample.value)
        yield family


async def serve_metrics(
    metrics: Metrics,
    host: str,
    port: int,
    ready: Callable[[], bool],
    *,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve GET /metrics, /healthz and /readyz on host:port until cancelled (asyncio only).

    /healthz answers 200 while the event loop does; /readyz answers 200 when `ready()`
    is true, else 503. Reports the port it listens on through `task_status` (so port 0
    works); raises UsageError when it cannot listen there.
    """

    async def scrape(request: web.Request) -> web.Response:
        body, content_type = metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(request: web.Request) -> web.Response:
        if ready():
            return web.Response(text="ready")
        return web.Response(status=503, text="not ready")

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:  # port taken, address not on this host, ...
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            shown = f"[{host}]" if ":" in host else host
            raise UsageError(f"metrics_port: cannot listen on {shown}:{port}: {why}") from None
        task_status.started(runner.addresses[0][1])
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            await runner.cleanup()


@asynccontextmanager
async def serving(
    metrics: Metrics, host: str, port: int | None, ready: Callable[[], bool]
) -> AsyncIterator[int | None]:
    """Serve the metrics while the block runs (nothing when `port` is None); yields the port."""
    if port is None:
        yield None
        return
    async with anyio.create_task_group() as group:
        bound = await group.start(serve_metrics, metrics, host, port, ready)
        try:
            yield bound
        finally:
            group.cancel_scope.cancel()

"""Prometheus metrics, and the small HTTP server that serves them with /healthz and /readyz.

Every series is labelled by `tenant` (the tenant id) and `kind` (`pstn`, `direct_routing`,
`sms`, `pstn_blocked_users`); each tenant of a multi-tenant run counts into its own view
of the process's metrics (`Metrics.for_tenant`). The metrics live in
their own `CollectorRegistry`, so two `Metrics` (two tests, two runs in one process)
never share counts. Values that depend on the time of the scrape — the age of the
newest archived window, the days left before Microsoft drops the oldest window not yet
archived — are computed when Prometheus scrapes, so they stay true while the job is
stuck.

    archiver_rows_total{tenant,kind}                      rows archived
    archiver_pages_total{tenant,kind}                     Graph pages fetched
    archiver_graph_requests_total{tenant,kind,status}     Graph requests by HTTP status
                                                          ("200", "429", "503", ...; "error":
                                                          no response)
    archiver_throttled_total{tenant,kind}                 429 answers
    archiver_retries_total{tenant,kind}                   requests sent again
    archiver_windows{tenant,kind,state}                   windows done | failed | pending
    archiver_newest_window_end_timestamp_seconds{...}     end of the newest archived window
    archiver_newest_window_age_seconds{tenant,kind}       now minus that end
    archiver_last_success_timestamp_seconds{tenant,kind}  when a window was last archived
    archiver_retention_margin_days{tenant,kind}           days until Microsoft drops the
                                                          oldest window not yet archived
"""

from __future__ import annotations

import copy
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from archiver.errors import UsageError
from archiver.kinds import Kind

if TYPE_CHECKING:
    from aiohttp import web
    from prometheus_client.registry import CollectorRegistry

WINDOW_STATES = ("done", "failed", "pending")
_DAY = 86400.0


class _Series:
    """One labelled time series: a counter's or a gauge's value, kept in memory."""

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self._value = 0.0
        self._function: Callable[[], float] | None = None
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        """Add `amount` (counters only count up)."""
        if amount < 0:
            raise ValueError("counters can only be incremented by non-negative amounts")
        with self._lock:
            self._value += amount

    def set(self, value: float) -> None:
        """Set a gauge."""
        with self._lock:
            self._value = float(value)
            self._function = None

    def set_function(self, function: Callable[[], float]) -> None:
        """A gauge whose value is `function()` at each scrape."""
        with self._lock:
            self._function = function

    def get(self) -> float:
        """The value now."""
        function = self._function
        return float(function()) if function is not None else self._value


class _Family:
    """A metric and its series by label values (what prometheus_client's Counter and Gauge
    are to the archiver: `labels(...)` then `inc`/`set`/`set_function`)."""

    def __init__(self, name: str, documentation: str, labelnames: list[str], kind: str) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.kind = kind  # "counter" | "gauge"
        self._lock = threading.Lock()
        self._series: dict[tuple[str, ...], _Series] = {}

    def labels(self, *values: str, **named: str) -> _Series:
        """The series of these label values (created at zero on first use)."""
        if named:
            if values or set(named) != set(self.labelnames):
                raise ValueError(f"{self.name}: labels are {self.labelnames}")
            values = tuple(named[label] for label in self.labelnames)
        elif len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: labels are {self.labelnames}")
        key = tuple(str(value) for value in values)
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _Series(self._lock)
            return series

    def samples(self) -> list[tuple[tuple[str, ...], _Series]]:
        """Every series, in the order they were created."""
        with self._lock:
            return list(self._series.items())


class _TenantFamily:
    """A family as one tenant sees it: `labels(...)` without the tenant, which it adds."""

    def __init__(self, family: _Family, tenant: str) -> None:
        self.family = family
        self.tenant = tenant

    def labels(self, *values: str, **named: str) -> _Series:
        """The series of this tenant and these label values."""
        if named:
            return self.family.labels(tenant=self.tenant, **named)
        return self.family.labels(self.tenant, *values)


class Metrics:
    """The archiver's metrics, its own (two Metrics never share counts).

    Kept in memory: prometheus_client is imported only to render them for a scrape, so a
    run without a metrics port never loads it.
    """

    def __init__(self, *, tenant: str = "", clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.tenant = tenant
        kind = ["tenant", "kind"]
        self._rows = _Family("archiver_rows", "Rows archived.", kind, "counter")
        self._pages = _Family("archiver_pages", "Graph pages fetched.", kind, "counter")
        self._requests = _Family(
            "archiver_graph_requests",
            'Graph requests by HTTP status ("error": no response arrived).',
            ["tenant", "kind", "status"],
            "counter",
        )
        self._throttled = _Family(
            "archiver_throttled", "Graph answers 429 (throttled).", kind, "counter"
        )
        self._retries = _Family("archiver_retries", "Graph requests sent again.", kind, "counter")
        self._windows = _Family(
            "archiver_windows",
            "Windows by state (done, failed, pending).",
            ["tenant", "kind", "state"],
            "gauge",
        )
        self._newest_window_end = _Family(
            "archiver_newest_window_end_timestamp_seconds",
            "End of the newest archived window (Unix time).",
            kind,
            "gauge",
        )
        self._last_success = _Family(
            "archiver_last_success_timestamp_seconds",
            "When a window was last archived (Unix time).",
            kind,
            "gauge",
        )
        self._retention_margin = _Family(
            "archiver_retention_margin_days",
            "Days until Microsoft's retention drops the oldest window not yet archived.",
            kind,
            "gauge",
        )
        self._families = (
            self._rows,
            self._pages,
            self._requests,
            self._throttled,
            self._retries,
            self._windows,
            self._newest_window_end,
            self._last_success,
            self._retention_margin,
        )
        self._registry: CollectorRegistry | None = None
        self._bind(tenant)

    def _bind(self, tenant: str) -> None:
        """Set the families' views for `tenant`, its counters at 0 (so rate() and alerts
        see them from the start)."""
        self.tenant = tenant
        self.rows = _TenantFamily(self._rows, tenant)
        self.pages = _TenantFamily(self._pages, tenant)
        self.requests = _TenantFamily(self._requests, tenant)
        self.throttled = _TenantFamily(self._throttled, tenant)
        self.retries = _TenantFamily(self._retries, tenant)
        self.windows = _TenantFamily(self._windows, tenant)
        self.newest_window_end = _TenantFamily(self._newest_window_end, tenant)
        self.last_success = _TenantFamily(self._last_success, tenant)
        self.retention_margin = _TenantFamily(self._retention_margin, tenant)
        for k in Kind:
            for counter in (self.rows, self.pages, self.throttled, self.retries):
                counter.labels(kind=k.value)
            for state in WINDOW_STATES:
                self.windows.labels(kind=k.value, state=state)

    def for_tenant(self, tenant: str) -> Metrics:
        """The same metrics as `tenant` counts into them: one registry, one scrape."""
        view = copy.copy(self)
        view._bind(tenant)
        return view

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
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
        from prometheus_client.exposition import generate_latest

        if self._registry is None:
            registry = CollectorRegistry()
            registry.register(_Collector(self))
            self._registry = registry
        return generate_latest(self._registry), CONTENT_TYPE_LATEST

    def collect(self) -> Iterator[Any]:
        """The metric families as prometheus_client renders them (for its registry)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        for family in self._families:
            if family.kind == "counter":
                counter = CounterMetricFamily(
                    family.name, family.documentation, labels=family.labelnames
                )
                for labels, series in family.samples():
                    counter.add_metric(labels, series.get(), created=series.created)
                yield counter
            else:
                gauge = GaugeMetricFamily(
                    family.name, family.documentation, labels=family.labelnames
                )
                for labels, series in family.samples():
                    gauge.add_metric(labels, series.get())
                yield gauge
        age = GaugeMetricFamily(
            "archiver_newest_window_age_seconds",
            "Seconds since the end of the newest archived window.",
            labels=["tenant", "kind"],
        )
        now = self._clock()
        for labels, series in self._newest_window_end.samples():
            age.add_metric(list(labels), now - series.get())
        yield age


class _Collector:
    """A prometheus_client collector over one Metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Any]:
        return self._metrics.collect()


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
    from aiohttp import web  # the server only: a run without a metrics port never loads it

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

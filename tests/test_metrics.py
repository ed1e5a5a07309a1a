"""Metrics: what Prometheus scrapes, and the /metrics, /healthz, /readyz server."""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime, timedelta

import aiohttp
import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from archiver.errors import UsageError
from archiver.kinds import Kind
from archiver.metrics import Metrics, serve_metrics


@pytest.fixture
def anyio_backend() -> str:
    """aiohttp runs on asyncio only."""
    return "asyncio"


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a text exposition, keyed by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def kind(value: str, tenant: str = "", **labels: str) -> tuple[tuple[str, str], ...]:
    """A sorted label tuple with `tenant`, `kind` and any other labels."""
    return tuple(sorted({"tenant": tenant, "kind": value, **labels}.items()))


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_counters_exist_at_zero_for_every_kind_and_count() -> None:
    """Counters start at 0 for each kind, the SMS and blocked-users logs included, and add
    what they are given."""
    metrics = Metrics()
    before = samples(metrics.render()[0])
    assert [0.0] * 4 == [before[("archiver_rows_total", kind(k.value))] for k in Kind]
    metrics.rows.labels(kind="pstn").inc(1500)
    metrics.requests.labels(kind="direct_routing", status="429").inc()
    metrics.windows.labels(kind="pstn", state="done").set(7)
    after = samples(metrics.render()[0])
    assert 1500.0 == after[("archiver_rows_total", kind("pstn"))]
    assert 0.0 == after[("archiver_rows_total", kind("direct_routing"))]
    assert 1.0 == after[("archiver_graph_requests_total", kind("direct_routing", status="429"))]
    assert 7.0 == after[("archiver_windows", kind("pstn", state="done"))]


def test_each_tenant_counts_into_its_own_series_of_one_scrape() -> None:
    """A tenant's view adds its tenant label; one scrape serves every tenant's series,
    each tenant's counters at 0 from the start."""
    process = Metrics(tenant="contoso")
    fabrikam = process.for_tenant("fabrikam")
    process.rows.labels(kind="pstn").inc(10)
    fabrikam.rows.labels(kind="pstn").inc(3)
    fabrikam.requests.labels("sms", "429").inc()
    scraped = samples(process.render()[0])
    assert 10.0 == scraped[("archiver_rows_total", kind("pstn", "contoso"))]
    assert 3.0 == scraped[("archiver_rows_total", kind("pstn", "fabrikam"))]
    assert 0.0 == scraped[("archiver_rows_total", kind("sms", "fabrikam"))]
    assert 1.0 == scraped[("archiver_graph_requests_total", kind("sms", "fabrikam", status="429"))]
    assert ("archiver_graph_requests_total", kind("sms", "contoso", status="429")) not in scraped


def test_each_metrics_object_has_its_own_registry() -> None:
    """Two Metrics in one process do not share counts (nor collide in the global registry)."""
    first, second = Metrics(), Metrics()
    first.pages.labels(kind="pstn").inc(3)
    assert 0.0 == samples(second.render()[0])[("archiver_pages_total", kind("pstn"))]


def test_window_age_is_computed_at_scrape_time() -> None:
    """The newest window's age is the scrape time minus its end, and grows with the clock."""
    clock = Clock(1_700_000_000.0)
    metrics = Metrics(clock=clock)
    age = ("archiver_newest_window_age_seconds", kind("pstn"))
    assert age not in samples(metrics.render()[0])
    metrics.newest_window_end.labels(kind="pstn").set(clock.now - 3600)
    assert 3600.0 == samples(metrics.render()[0])[age]
    clock.now += 90
    assert 3690.0 == samples(metrics.render()[0])[age]


def test_window_age_uses_the_wall_clock_by_default() -> None:
    """With the default clock the age lies between the times read before and after the scrape."""
    metrics = Metrics()
    end = time.time() - 7200
    metrics.newest_window_end.labels(kind="direct_routing").set(end)
    before = time.time()
    body, _ = metrics.render()
    after = time.time()
    age = samples(body)[("archiver_newest_window_age_seconds", kind("direct_routing"))]
    assert before - end <= age <= after - end


def test_retention_margin_counts_down_from_the_oldest_pending_window() -> None:
    """The margin is the days left before Microsoft drops the oldest unarchived window's rows."""
    clock = Clock(datetime(2025, 6, 1, tzinfo=UTC).timestamp())
    metrics = Metrics(clock=clock)
    oldest = datetime(2025, 5, 1, tzinfo=UTC)
    metrics.set_oldest_pending(Kind.PSTN, oldest)
    metrics.set_oldest_pending(Kind.DIRECT_ROUTING, None)
    margin = "archiver_retention_margin_days"
    assert 365.0 - 31 == samples(metrics.render()[0])[(margin, kind("pstn"))]
    assert 150.0 == samples(metrics.render()[0])[(margin, kind("direct_routing"))]
    clock.now += timedelta(days=2, hours=12).total_seconds()
    assert 365.0 - 33.5 == samples(metrics.render()[0])[(margin, kind("pstn"))]


@pytest.mark.anyio
async def test_server_serves_metrics_health_and_readiness() -> None:
    """GET /metrics reflects live counters, /healthz answers 200, /readyz 503 until ready."""
    metrics = Metrics()
    ready = False
    async with anyio.create_task_group() as group:
        port = await group.start(serve_metrics, metrics, "127.0.0.1", 0, lambda: ready)
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:

            async def get(path: str) -> tuple[int, str, bytes]:
                async with session.get(base + path) as response:
                    return response.status, response.headers["Content-Type"], await response.read()

            status, content_type, body = await get("/metrics")
            assert (200, metrics.render()[1]) == (status, content_type)
            assert 0.0 == samples(body)[("archiver_rows_total", kind("pstn"))]
            metrics.rows.labels(kind="pstn").inc(42)
            metrics.throttled.labels(kind="pstn").inc()
            body = (await get("/metrics"))[2]
            assert 42.0 == samples(body)[("archiver_rows_total", kind("pstn"))]
            assert 1.0 == samples(body)[("archiver_throttled_total", kind("pstn"))]

            status, _, body = await get("/healthz")
            assert (200, b"ok") == (status, body)
            assert 503 == (await get("/readyz"))[0]
            ready = True
            assert 200 == (await get("/readyz"))[0]
            assert 404 == (await get("/nothing"))[0]
        group.cancel_scope.cancel()


@pytest.mark.anyio
async def test_server_releases_its_port_when_cancelled() -> None:
    """After cancellation the port is free again: the server cleaned up its runner."""
    async with anyio.create_task_group() as group:
        port = await group.start(serve_metrics, Metrics(), "127.0.0.1", 0, lambda: True)
        group.cancel_scope.cancel()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=port)
    await listener.aclose()


@pytest.mark.anyio
async def test_a_taken_port_is_one_line_naming_it() -> None:
    """When the port is taken, serve_metrics raises UsageError naming the address."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(UsageError) as caught, anyio.fail_after(30):
            await serve_metrics(Metrics(), "127.0.0.1", port, lambda: True)
    expected = f"metrics_port: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert expected == str(caught.value)

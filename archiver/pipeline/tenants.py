"""Many tenants from one deployment: a job per tenant, each failing alone.

With `tenants`, each tenant is archived under `<destination>/tenant=<id>/` exactly as a
single-tenant destination is, by its own Archiver: its own token provider, pacers (Graph's
limits are per app per tenant, so tenants run in parallel, each at its full allowance),
store, manifest and claims. What the tenants of a process share is `pipeline.Shared`: one
graceful stop, one metrics registry (a `tenant` label on every series), and `max_windows`
slots bounding the windows in flight in all of them, handed out first come, first served,
so tenants take turns. Every log line a tenant's job writes names the tenant.

A tenant whose consent was revoked (403), whose credential is refused or whose windows
fail does not stop the others; its outcome says why.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio

from archiver.config import Config, Tenant
from archiver.errors import describe
from archiver.log import tenant_scope
from archiver.metrics import Metrics
from archiver.pipeline.run import RunResult, Shared, process_scope
from archiver.pipeline.shutdown import Shutdown

log = logging.getLogger("archiver.tenants")  # the name its lines always carried

Job = Callable[[Config, Shared], Awaitable[RunResult]]


@dataclass
class Outcome:
    """What one tenant's job came to: its result, or the error that stopped it."""

    tenant: Tenant
    result: RunResult | None = None
    error: str | None = None
    refused: bool = False  # stopped before archiving: consent, credentials, destination

    @property
    def failed(self) -> bool:
        """Whether the tenant's job stopped, or some of its windows failed."""
        return self.error is not None or bool(self.result and self.result.failed)


async def for_each_tenant(
    config: Config, job: Job, shutdown: Shutdown | None = None
) -> list[Outcome]:
    """Run `job` for every tenant of this process's share, all at once, in one process
    scope; one outcome per tenant, in the order configured."""
    tenants = config.share()
    if not tenants:
        return []
    shutdown = shutdown or Shutdown(config.grace.total_seconds())
    metrics = Metrics(tenant=tenants[0].tenant_id)
    outcomes = [Outcome(tenant) for tenant in tenants]
    async with process_scope(config, shutdown, metrics) as shared:

        async def one(outcome: Outcome) -> None:
            tenant = outcome.tenant
            with tenant_scope(tenant.tenant_id):
                try:
                    outcome.result = await job(
                        config.for_tenant(tenant), shared.for_tenant(tenant.tenant_id)
                    )
                except Exception as exc:
                    outcome.error, outcome.refused = describe(exc)
                    log.debug("tenant %s stopped", tenant.tenant_id, exc_info=exc)
                    log.error("tenant %s stopped: %s", tenant.tenant_id, outcome.error)

        async with anyio.create_task_group() as group:
            for outcome in outcomes:
                group.start_soon(one, outcome)
    return outcomes

"""Running many windows: wiring one stack per tenant (`tenants`), the workers and
`backfill` (`run`), and graceful stops (`shutdown`).

The names the commands use are importable from here; the tenants' from
`archiver.pipeline.tenants`.
"""

from archiver.pipeline.run import (
    RunResult,
    Shared,
    backfill,
    backfill_tenant,
    open_archive,
    open_destination,
    process_scope,
    run_windows,
    working,
)
from archiver.pipeline.shutdown import Shutdown

__all__ = [
    "RunResult",
    "Shared",
    "Shutdown",
    "backfill",
    "backfill_tenant",
    "open_archive",
    "open_destination",
    "process_scope",
    "run_windows",
    "working",
]

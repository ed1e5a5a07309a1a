"""`archiver run`: the container job that keeps the archive current, forever.

Each round:
1. archives every window that has been closed for `settle` and is not archived yet,
   from `start` (default: as far back as Microsoft still serves the log);
2. re-archives the windows younger than `resweep` whose last archive is older than
   `resweep_interval`, merging by id, to catch rows that arrive late;
3. sleeps — without a Graph request — until the next window has settled or the next
   re-sweep is due.
SIGTERM/SIGINT end it gracefully (exit 0). Windows older than Microsoft's retention
are reported once and never fetched: Graph would only answer with nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import anyio

from archiver.archive import Archiver
from archiver.config import Config
from archiver.kinds import Kind
from archiver.manifest import Manifest
from archiver.metrics import Metrics
from archiver.pipeline import (
    RunResult,
    Shared,
    Shutdown,
    open_destination,
    process_scope,
    run_windows,
    working,
)
from archiver.windows import Window, align_down, format_instant, plan

log = logging.getLogger("archiver.continuous")  # the name its lines always carried

RETENTION_WARNING = timedelta(days=14)  # warn when the backlog comes this close to retention
MAX_SLEEP = timedelta(minutes=10)  # look again at least this often


def retention_cutoff(kind: Kind, now: datetime) -> datetime:
    """The oldest call start Microsoft still serves for `kind` (its default retention)."""
    return now - timedelta(days=kind.retention_days)


class Round:
    """What one round of `run` should archive, worked out from the manifest and the clock."""

    def __init__(self, config: Config, manifest: Manifest, now: datetime) -> None:
        self.config = config
        self.manifest = manifest
        self.now = now

    def first_window(self, kind: Kind) -> datetime:
        """Where the archive of `kind` starts: `start`, or the retention cut-off."""
        first = self.config.start or retention_cutoff(kind, self.now)
        return align_down(first, self.config.window)

    def due(self, kind: Kind) -> tuple[list[Window], list[Window]]:
        """(windows to archive now, windows past retention that were never archived)."""
        settled = self.now - self.config.settle
        cutoff = retention_cutoff(kind, self.now)
        due: list[Window] = []
        lost: list[Window] = []
        written_off = kind.log.retention_documented  # else: asked for, whatever its age
        for window in plan([kind], self.first_window(kind), settled, self.config.window):
            if window.end > settled or self.manifest.is_done(window):
                continue
            past = written_off and window.end <= cutoff  # partly served: take it
            (lost if past else due).append(window)
        return due, lost

    def resweep(self, kind: Kind) -> list[Window]:
        """Archived windows young enough to gain late rows, not re-archived lately."""
        young = self.now - self.config.resweep
        return [
            window
            for window in plan(
                [kind], max(young, self.first_window(kind)), self.now, self.config.window
            )
            if self.manifest.is_done(window) and self.wants(window)
        ]

    def wants(self, window: Window) -> bool:
        """Whether `window` still needs archiving this round, by the manifest as it stands
        now (other workers may have archived or re-swept it since the round was planned):
        not archived yet, or archived but young and not re-swept lately."""
        record = self.manifest.get(window)
        if record is None or not record.done:
            return True
        young = self.now - self.config.resweep
        stale = self.now - self.config.resweep_interval
        return window.end > young and record.recorded_at <= stale

    def next_wake(self) -> datetime:
        """When the next window settles or the next re-sweep falls due."""
        wake = align_down(self.now - self.config.settle, self.config.window)
        wake += self.config.window + self.config.settle
        young = self.now - self.config.resweep
        for record in self.manifest.records.values():
            if record.done and record.end > young:
                wake = min(wake, record.recorded_at + self.config.resweep_interval)
        return max(self.now, min(wake, self.now + MAX_SLEEP))


async def run_forever(
    config: Config,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    shutdown: Shutdown | None = None,
) -> RunResult:
    """Keep the archive current until a signal stops it; what the last round did."""
    shutdown = shutdown or Shutdown(config.grace.total_seconds())
    async with process_scope(config, shutdown) as shared:
        return await keep_current(config, shared, clock)


async def keep_current(
    config: Config, shared: Shared, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
) -> RunResult:
    """`run_forever` of one tenant's destination, inside a process shared with others."""
    store, manifest = await open_destination(config)
    manifest.check_window(config.window, config.table_format)
    shutdown = shared.shutdown
    reported: set[Window] = set()  # windows past retention, reported once
    result = RunResult()
    async with working(config, store, manifest, shared) as archiver:
        while not shutdown.requested.is_set():
            now = Round(config, manifest, clock())
            result = await one_round(archiver, now, reported, shutdown, shared.slots)
            await manifest.compact()
            archiver.show_manifest()
            wake = Round(config, manifest, clock()).next_wake()
            seconds = (wake - clock()).total_seconds()
            log.info(
                "sleeping until %s",
                format_instant(wake),
                extra={"fields": {"seconds": round(seconds)}},
            )
            with anyio.move_on_after(max(0.0, seconds)):
                await shutdown.requested.wait()
    log.info("stopped")
    return result


def plan_round(now: Round, reported: set[Window], metrics: Metrics) -> list[Window]:
    """What a round archives, oldest first; logs windows lost to retention (once each)
    and a backlog close to retention (every round), and sets the retention margins."""
    windows: list[Window] = []
    for kind in now.config.kinds:
        due, lost = now.due(kind)
        fresh = [w for w in lost if w not in reported]
        if fresh:
            reported.update(fresh)
            log.error(
                "%d %s windows (%s .. %s) were never archived and are past Microsoft's "
                "%d-day retention: they cannot be fetched any more",
                len(fresh),
                kind.value,
                format_instant(fresh[0].start),
                format_instant(fresh[-1].end),
                kind.retention_days,
            )
        if due:
            margin = due[0].start - retention_cutoff(kind, now.now)
            if margin < RETENTION_WARNING:
                log.warning(
                    "%s backlog: the oldest window not yet archived (%s) is %.1f days from %s",
                    kind.value,
                    format_instant(due[0].start),
                    margin / timedelta(days=1),
                    "Microsoft's retention cut-off"
                    if kind.log.retention_documented
                    else f"the {kind.retention_days}-day retention assumed for it "
                    "(Microsoft documents none)",
                )
        metrics.set_oldest_pending(kind, due[0].start if due else None)
        windows += due
        windows += now.resweep(kind)
    windows.sort(key=lambda w: (w.start, w.kind.value))
    return windows


async def one_round(
    archiver: Archiver,
    now: Round,
    reported: set[Window],
    shutdown: Shutdown,
    slots: anyio.CapacityLimiter | None = None,
) -> RunResult:
    """Archive what is due and re-sweep what is young."""
    windows = plan_round(now, reported, archiver.metrics)
    result = RunResult(planned=len(windows))
    log.info("round: %d windows to archive", len(windows))
    if windows:
        await run_windows(archiver, windows, result, shutdown, wanted=now.wants, slots=slots)
    return result

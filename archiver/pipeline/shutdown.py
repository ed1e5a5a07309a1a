"""Stopping a run: SIGTERM/SIGINT ask the workers to finish the windows in flight, a
grace time or a second signal cancels them."""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager

import anyio

log = logging.getLogger("archiver.pipeline")  # the name its lines always carried


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

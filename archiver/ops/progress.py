"""A progress line for `backfill` on a terminal: windows, rows, ETA. Never in logs."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from archiver.manifest import Record


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


class Progress:
    """Redraws one line on stderr as windows finish; silent unless stderr is a terminal."""

    def __init__(
        self,
        stream: TextIO = sys.stderr,
        enabled: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._enabled = stream.isatty() if enabled is None else enabled
        self._clock = clock
        self._began = clock()
        self.windows = 0
        self.rows = 0

    def line(self, total: int) -> str:
        """The progress line after `self.windows` of `total` windows."""
        elapsed = self._clock() - self._began
        left = total - self.windows
        eta = _duration(elapsed / self.windows * left) if self.windows else "?"
        return f"{self.windows}/{total} windows  {self.rows:,} rows  ETA {eta}"

    def update(self, record: Record, total: int) -> None:
        """One more window archived, of `total` this run set out to do."""
        self.windows += 1
        self.rows += record.rows or 0
        if self._enabled:
            self._stream.write("\r\033[K" + self.line(total))
            self._stream.flush()

    def close(self) -> None:
        """End the line, so what follows starts on its own."""
        if self._enabled and self.windows:
            self._stream.write("\n")
            self._stream.flush()

"""What a sink is: where a window's reconciled rows go, and where a re-archive finds
the rows archived before. The pipeline works the same whatever the sink; only the
sink knows the output format.

A window's archive has three steps that touch the destination, all blocking (callers
run them in worker threads):

- `previous`: the rows already archived for the window, as a local Parquet file, so
  that reconcile can keep every row once archived (run's re-sweep);
- `publish`: replace the window's rows with the reconciled file, in one step that a
  reader sees whole or not at all; only then is the window recorded done;
- `verify_table`: for a format that is one table per kind, check it against the
  manifest (loose files are checked one object at a time by ops/verify.py instead).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archiver.manifest import Record
from archiver.sinks.parquet import WrittenFile
from archiver.windows import Window

PARQUET = "parquet"
DELTA = "delta"
FORMATS = (PARQUET, DELTA)
INSTALL_DELTA = "pip install 'callrec-archiver[delta]'"


@dataclass(frozen=True)
class Published:
    """Where a window's rows went, for its manifest record."""

    key: str  # the object (loose files) or the table (Delta) holding the window's rows
    sha256: str | None  # hex SHA-256 of the object, where the window is one object
    checksum_sha256: str | None = None  # the store's own checksum of that object
    extra: dict[str, Any] = field(default_factory=dict)  # more fields for the record


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one object or window: `KIND key: text` when printed."""

    kind: str  # MISSING CHECKSUM SIZE ROWS OUTSIDE UNREADABLE ERROR STRAY DUPLICATE
    key: str
    text: str

    def __str__(self) -> str:
        return f"{self.kind} {self.key}: {self.text}"


class Sink(abc.ABC):
    """One output format on one destination."""

    format: str  # "parquet" or "delta"

    @abc.abstractmethod
    def previous(self, window: Window, record: Record, path: Path) -> bool:
        """Write the rows archived for `window` (recorded done by `record`) into the
        Parquet file `path`; False when there are none to keep (nothing written)."""

    @abc.abstractmethod
    def publish(self, window: Window, written: WrittenFile, metadata: dict[str, str]) -> Published:
        """Replace the window's archived rows with the rows of `written`, in one step.

        `metadata` is the window's provenance (kind, window, Graph URL and version,
        archiver version). The file is consumed: gone afterwards, whatever happened.
        """

    def verify_table(self, records: list[Record]) -> list[Problem] | None:
        """Check the destination's tables against the done `records`: the problems, or
        None where each window is an object that ops/verify.py checks itself."""
        return None

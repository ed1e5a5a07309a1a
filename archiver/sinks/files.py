"""Loose Parquet files: one object per window at `<kind>/date=YYYY-MM-DD/<start>.parquet`,
replaced whole by the store (the layout since the first version)."""

from __future__ import annotations

import logging
from pathlib import Path

from archiver.errors import RetryableError, WindowError
from archiver.manifest import Record
from archiver.sinks.base import PARQUET, Published, Sink
from archiver.sinks.parquet import WrittenFile
from archiver.store import Store
from archiver.windows import Window

log = logging.getLogger("archiver.archive")  # its messages read as they always did


class FileSink(Sink):
    """Each window one Parquet object in the store."""

    format = PARQUET

    def __init__(self, store: Store) -> None:
        self.store = store

    def previous(self, window: Window, record: Record, path: Path) -> bool:
        """Download the window's archived object; False when it is gone."""
        assert record.key
        key = record.key
        try:
            self.store.download(key, path)
        except RetryableError:
            raise
        except WindowError:
            if self.store.head(key) is not None:
                raise
            log.warning("%s: its archived object %s is missing; archived anew", window, key)
            return False
        return True

    def publish(self, window: Window, written: WrittenFile, metadata: dict[str, str]) -> Published:
        """Replace the window's object with the file (its metadata is already inside)."""
        try:
            info = self.store.put_file(window.key, written.path, written.sha256)
        finally:
            written.path.unlink(missing_ok=True)
        return Published(info.key, written.sha256, info.checksum_sha256)

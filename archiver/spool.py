"""Spool: this process's folder for Parquet files being written, before they are stored.

Each process works in its own subfolder of the store's spool folder and holds an
exclusive flock on a lock file inside it for as long as it lives. A folder whose
lock nobody holds belongs to a process that died (killed mid-window): the next
process removes it. Workers sharing a destination never touch each other's files.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
import uuid
from pathlib import Path

LOCK_NAME = ".lock"
UNLOCKED_GRACE = 3600.0  # seconds a folder without a lock file may be a process starting up


class Spool:
    """A private, self-cleaning folder for one process's temporary files."""

    def __init__(self, base: Path) -> None:
        base.mkdir(parents=True, exist_ok=True)
        remove_abandoned(base)
        self.dir = base / uuid.uuid4().hex
        self.dir.mkdir()
        self._lock = os.open(self.dir / LOCK_NAME, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def path(self, name: str) -> Path:
        """A path for a new temporary file (callers name it `*.partial`)."""
        return self.dir / name

    def close(self) -> None:
        """Remove the folder and release the lock."""
        shutil.rmtree(self.dir, ignore_errors=True)
        os.close(self._lock)


def remove_abandoned(base: Path) -> None:
    """Remove the spool folders of processes that are gone."""
    for entry in base.iterdir():
        if not entry.is_dir():
            continue
        try:
            fd = os.open(entry / LOCK_NAME, os.O_RDWR)
        except FileNotFoundError:
            if time.time() - entry.stat().st_mtime > UNLOCKED_GRACE:
                shutil.rmtree(entry, ignore_errors=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # its process is alive
        else:
            shutil.rmtree(entry, ignore_errors=True)
        finally:
            os.close(fd)

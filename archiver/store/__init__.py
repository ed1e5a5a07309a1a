"""The object store: one small synchronous interface, a local folder and S3 behind it.

Keys are relative to the store's root and "/"-separated (`pstn/date=2024-01-01/x.parquet`).
Every write replaces an object in one step: a reader sees the old bytes or the new
ones, never a mix. The calls block; the async pipeline runs them in worker threads,
and both stores may be used from several threads at once.

    Store
    ├── LocalStore   a folder: temp file + fsync + rename; exclusive create via link();
    │                compare-and-swap under an flock on `_manifest/.lock`
    └── S3Store      boto3: put_object (multipart above 64 MiB) with SHA-256 checksums;
                     If-None-Match / If-Match conditional writes

botocore and OS exceptions are translated here, at this one boundary: in `check()`
into `UsageError` (one line naming the destination and the cause), afterwards into
`RetryableError` (transient: 5xx, throttling, connection trouble) or `WindowError`,
with messages that name the object.

Modules: `base` (the interface, options, key rules), `local` (LocalStore), `s3` (S3Store
and botocore's translation; boto3 is imported by the first S3Store only). Every name is
re-exported here, so `from archiver.store import X` works as it always did.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from archiver.errors import UsageError
from archiver.store import s3 as _s3
from archiver.store.base import (
    LOCK_MODES,
    MANIFEST_DIR,
    PART_SIZE,
    SINGLE_PUT_LIMIT,
    SPOOL_KEY_PREFIX,
    SSE_CHOICES,
    MiB,
    ObjectInfo,
    Store,
    StoreOptions,
)
from archiver.store.local import LocalStore
from archiver.store.s3 import RETRYABLE_CODES, S3Store

__all__ = [
    "LOCK_MODES",
    "MANIFEST_DIR",
    "PART_SIZE",
    "RETRYABLE_CODES",
    "SINGLE_PUT_LIMIT",
    "SPOOL_KEY_PREFIX",
    "SSE_CHOICES",
    "LocalStore",
    "MiB",
    "ObjectInfo",
    "S3Store",
    "Store",
    "StoreOptions",
    "open_store",
]


def __getattr__(name: str) -> Any:
    """`CLIENT_CONFIG`, `FOREIGN_ERRORS` and the other names made of boto3, on first use."""
    if name in _s3._BOTO_NAMES:
        return getattr(_s3, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_store(destination: str, options: StoreOptions | None = None) -> Store:
    """The store for `destination`: `s3://bucket[/prefix]` or a folder path.

    UsageError for a malformed S3 address, another URL scheme, or S3 options with a
    local folder.
    """
    options = options or StoreOptions()
    if not destination.strip():
        raise UsageError("destination: empty (expected a folder or s3://bucket/prefix)")
    match = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://(.*)", destination, re.DOTALL)
    if match is None:
        if options.any:
            raise UsageError(
                f"destination {destination}: sse and object lock apply only to an s3:// destination"
            )
        return LocalStore(Path(destination).expanduser().resolve())
    scheme, rest = match.groups()
    if scheme.lower() != "s3":
        raise UsageError(
            f"destination {destination}: unsupported scheme {scheme}:// "
            "(expected a folder or s3://bucket/prefix)"
        )
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise UsageError(
            f"destination {destination}: no bucket name (expected s3://bucket or "
            "s3://bucket/prefix)"
        )
    parts = [part for part in prefix.split("/") if part]
    if any(part in (".", "..") for part in parts):
        raise UsageError(f"destination {destination}: '.' and '..' are not allowed in the prefix")
    return S3Store(bucket, "/".join(parts), options)

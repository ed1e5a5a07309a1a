"""The store's interface and what both implementations share: options, object info, keys."""

from __future__ import annotations

import abc
import base64
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from archiver.errors import UsageError

MiB = 1024 * 1024
SINGLE_PUT_LIMIT = 64 * MiB  # larger files go up in parts
PART_SIZE = 16 * MiB
MANIFEST_DIR = "_manifest"
SPOOL_KEY_PREFIX = "_manifest/spool/"
SSE_CHOICES = ("AES256", "aws:kms")
LOCK_MODES = ("GOVERNANCE", "COMPLIANCE")


@dataclass(frozen=True)
class StoreOptions:
    """How data objects are written to S3 (a local folder takes none of these).

    Raises UsageError on construction when a value is out of range.
    """

    sse: str | None = None  # None | "AES256" | "aws:kms"
    sse_kms_key_id: str | None = None  # with aws:kms; none means the AWS-managed key
    object_lock_mode: str | None = None  # None | "GOVERNANCE" | "COMPLIANCE"
    object_lock_days: int | None = None  # retention from the time of each upload

    def __post_init__(self) -> None:
        if self.sse is not None and self.sse not in SSE_CHOICES:
            raise UsageError(f"sse: expected AES256 or aws:kms, not {self.sse!r}")
        if self.sse_kms_key_id and self.sse != "aws:kms":
            raise UsageError("sse_kms_key_id: needs sse = aws:kms")
        if self.object_lock_mode is not None and self.object_lock_mode not in LOCK_MODES:
            raise UsageError(
                f"object_lock_mode: expected GOVERNANCE or COMPLIANCE, "
                f"not {self.object_lock_mode!r}"
            )
        if (self.object_lock_mode is None) != (self.object_lock_days is None):
            raise UsageError("object_lock_mode and object_lock_days must be set together")
        if self.object_lock_days is not None and self.object_lock_days < 1:
            raise UsageError(
                f"object_lock_days: expected a positive number, not {self.object_lock_days}"
            )

    @property
    def any(self) -> bool:
        """True when some option is set."""
        return bool(self.sse or self.sse_kms_key_id or self.object_lock_mode)


@dataclass(frozen=True)
class ObjectInfo:
    """What the store knows about one object."""

    key: str  # relative to the store root, "/"-separated
    size: int
    etag: str | None  # opaque version tag usable with put_bytes_if_match
    checksum_sha256: str | None = None  # base64 SHA-256 of the whole object, when known


class Store(abc.ABC):
    """Objects under one root: a local folder or an S3 bucket and prefix."""

    description: str  # e.g. "s3://bucket/prefix" or "/abs/path/archive", for messages

    @abc.abstractmethod
    def check(self) -> None:
        """Raise UsageError (one line naming the destination and the cause) if unusable."""

    @abc.abstractmethod
    def spool_dir(self) -> Path:
        """A folder for the caller's temporary data files (name them `*.partial`)."""

    @abc.abstractmethod
    def put_file(self, key: str, path: Path, sha256_hex: str) -> ObjectInfo:
        """Replace the object at `key` with the file at `path`, durably and in one step.

        The store takes ownership of `path`: it is gone afterwards, whether or not the
        put succeeded. `sha256_hex` is the file's digest; the store verifies it.
        """

    @abc.abstractmethod
    def put_bytes(self, key: str, data: bytes) -> str:
        """Replace the object at `key` with `data`; return its new etag."""

    @abc.abstractmethod
    def put_bytes_if_absent(self, key: str, data: bytes) -> str | None:
        """Create the object at `key` if none exists: its etag, or None if one existed."""

    @abc.abstractmethod
    def put_bytes_if_match(self, key: str, data: bytes, etag: str) -> str | None:
        """Replace the object only if its etag is `etag`: the new etag, or None if not."""

    @abc.abstractmethod
    def get_bytes(self, key: str) -> tuple[bytes, str] | None:
        """The object's bytes and etag, or None if it does not exist."""

    @abc.abstractmethod
    def head(self, key: str) -> ObjectInfo | None:
        """The object's size, etag and checksum, or None if it does not exist."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix`, at any depth, sorted by key.

        Listing gives keys and sizes; etag and checksum only where they come free (S3).
        """

    @abc.abstractmethod
    def download(self, key: str, path: Path) -> None:
        """Copy the object into the file `path` (WindowError if it does not exist)."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; a missing object is fine."""


def _check_key(key: str) -> str:
    """`key` itself if it is a well-formed relative key; ValueError otherwise."""
    if not key or any(not part or part.startswith(".") for part in key.split("/")):
        raise ValueError(f"bad object key {key!r} (empty segment or one starting with '.')")
    return key


def _one_line(text: object) -> str:
    """`text` with every run of whitespace (newlines too) made one space."""
    return " ".join(str(text).split())


def _b64(hex_digest: str) -> str:
    """The base64 form S3 uses for a digest given in hex."""
    return base64.b64encode(bytes.fromhex(hex_digest)).decode("ascii")

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
"""

from __future__ import annotations

import abc
import base64
import contextlib
import errno
import fcntl
import hashlib
import io
import os
import re
import secrets
import shutil
import ssl
import tempfile
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from archiver.errors import ArchiverError, RetryableError, UsageError, WindowError

MiB = 1024 * 1024
SINGLE_PUT_LIMIT = 64 * MiB  # larger files go up in parts
PART_SIZE = 16 * MiB
MANIFEST_DIR = "_manifest"
SPOOL_KEY_PREFIX = "_manifest/spool/"
SSE_CHOICES = ("AES256", "aws:kms")
LOCK_MODES = ("GOVERNANCE", "COMPLIANCE")

# Error codes that mean "try again later" whatever their HTTP status.
RETRYABLE_CODES = frozenset(
    {
        "ConditionalRequestConflict",
        "InternalError",
        "RequestLimitExceeded",
        "RequestTimeout",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
    }
)

# boto3 and botocore are imported by the first S3Store (`_import_boto`), with the names made
# of them: a process archiving into a local folder never loads them (some 20 MiB and a
# quarter of a second of imports). Other modules find these names here as always.
if TYPE_CHECKING:
    import boto3
    import boto3.exceptions
    import botocore.config
    import botocore.exceptions
    from boto3.s3.transfer import TransferConfig

    # Their types; `_import_boto` makes them. Everything boto3, botocore and the
    # filesystem may raise from a store call:
    FOREIGN_ERRORS: tuple[type[Exception], ...] = ()
    CLIENT_CONFIG: botocore.config.Config = botocore.config.Config()
_BOTO_NAMES = ("boto3", "botocore", "TransferConfig", "FOREIGN_ERRORS", "CLIENT_CONFIG")


def _import_boto() -> None:
    """Import boto3 and botocore into this module, once; and make the names built of them."""
    if "CLIENT_CONFIG" in globals():
        return
    import boto3.exceptions
    import boto3.s3.transfer
    import botocore.config
    import botocore.exceptions

    globals().update(
        boto3=boto3,
        botocore=botocore,
        TransferConfig=boto3.s3.transfer.TransferConfig,
        FOREIGN_ERRORS=(
            botocore.exceptions.BotoCoreError,
            botocore.exceptions.ClientError,
            boto3.exceptions.Boto3Error,
            OSError,
        ),
        CLIENT_CONFIG=botocore.config.Config(
            retries={"mode": "standard", "max_attempts": 5},
            connect_timeout=10,
            read_timeout=120,
        ),
    )


def __getattr__(name: str) -> Any:
    """`archiver.store.CLIENT_CONFIG` and the other names made of boto3, on first use."""
    if name in _BOTO_NAMES:
        _import_boto()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


# ---------------------------------------------------------------------------- local


def _fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _hash_fd(file: io.BufferedReader) -> tuple[str, int]:
    """SHA-256 hex digest and size of an open file, read from its start."""
    file.seek(0)
    digest = hashlib.file_digest(file, "sha256")
    return digest.hexdigest(), file.tell()


class LocalStore(Store):
    """A folder on a local or mounted filesystem.

    The etag of an object is the SHA-256 hex digest of its content: it reads back
    the same from every call and is the digest the manifest records. It changes
    whenever the content changes; rewriting identical bytes keeps it, which is
    harmless for compare-and-swap because the caller's view is then still current.
    head() and list() hash each file they report.

    Writes go to a temp file in the target's folder (a dot-file ending in `.tmp`,
    which list() and `*.parquet` globs skip), are fsynced, then put in place with
    os.replace (or os.link for exclusive create) and the folder fsynced. Every
    change of an object happens under an flock on `_manifest/.lock`, so
    put_bytes_if_match's compare-then-replace is atomic for every process and
    thread that uses this store on that folder.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.description = str(root)
        self._lock_path = root / MANIFEST_DIR / ".lock"

    def check(self) -> None:
        """Create the root folder if needed and make sure a file can be created in it."""
        root = self.root
        if root.exists() and not root.is_dir():
            raise UsageError(f"destination {root}: exists and is not a folder")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(
                f"destination {root}: cannot create the folder ({exc.strerror or exc})"
            ) from exc
        probe = root / f".archiver-check-{secrets.token_hex(6)}.tmp"
        try:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            probe.unlink()
        except OSError as exc:
            raise UsageError(
                f"destination {root}: cannot write to the folder ({exc.strerror or exc})"
            ) from exc

    def spool_dir(self) -> Path:
        """`<root>/_manifest/spool`: on the destination's filesystem, so put_file renames."""
        path = self.root / SPOOL_KEY_PREFIX.rstrip("/")
        with self._errors("create the spool folder", path):
            self._makedirs(path)
        return path

    def put_file(self, key: str, path: Path, sha256_hex: str) -> ObjectInfo:
        """fsync the file, check its digest, os.replace it into place, fsync the folder."""
        target = self._path(key)
        try:
            with self._errors("write", target):
                with path.open("rb") as file:
                    actual, size = _hash_fd(file)
                    os.fsync(file.fileno())
                if actual != sha256_hex.lower():
                    raise WindowError(
                        f"{target}: checksum mismatch: the file's SHA-256 is {actual}, "
                        f"not {sha256_hex}"
                    )
                self._makedirs(target.parent)
                with self._locked():
                    try:
                        os.replace(path, target)
                    except OSError as exc:
                        if exc.errno != errno.EXDEV:
                            raise
                        self._replace_across_filesystems(path, target)
                    _fsync_dir(target.parent)
        finally:
            path.unlink(missing_ok=True)
        return ObjectInfo(key, size, actual, _b64(actual))

    def put_bytes(self, key: str, data: bytes) -> str:
        """Write a temp file, then os.replace it over the object."""
        target = self._path(key)
        with self._errors("write", target):
            temp = self._write_temp(target, data)
            try:
                with self._locked():
                    os.replace(temp, target)
                    _fsync_dir(target.parent)
            finally:
                temp.unlink(missing_ok=True)
        return hashlib.sha256(data).hexdigest()

    def put_bytes_if_absent(self, key: str, data: bytes) -> str | None:
        """Write a temp file, then os.link it to the key: exclusive create, full content."""
        target = self._path(key)
        with self._errors("write", target):
            temp = self._write_temp(target, data)
            try:
                with self._locked():
                    try:
                        os.link(temp, target)
                    except FileExistsError:
                        return None
                    except OSError as exc:  # a filesystem without hard links
                        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.ENOSYS):
                            raise
                        if target.exists():
                            return None
                        os.replace(temp, target)  # safe: every writer holds the lock
                    _fsync_dir(target.parent)
            finally:
                temp.unlink(missing_ok=True)
        return hashlib.sha256(data).hexdigest()

    def put_bytes_if_match(self, key: str, data: bytes, etag: str) -> str | None:
        """Under the lock: compare the current content's digest with `etag`, then replace."""
        target = self._path(key)
        with self._errors("write", target):
            temp = self._write_temp(target, data)
            try:
                with self._locked():
                    try:
                        with target.open("rb") as file:
                            current, _ = _hash_fd(file)
                    except FileNotFoundError:
                        return None
                    if current != etag:
                        return None
                    os.replace(temp, target)
                    _fsync_dir(target.parent)
            finally:
                temp.unlink(missing_ok=True)
        return hashlib.sha256(data).hexdigest()

    def get_bytes(self, key: str) -> tuple[bytes, str] | None:
        """Read the file whole."""
        target = self._path(key)
        with self._errors("read", target):
            try:
                data = target.read_bytes()
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return None
        return data, hashlib.sha256(data).hexdigest()

    def head(self, key: str) -> ObjectInfo | None:
        """Size and digest of the file (reads it)."""
        target = self._path(key)
        with self._errors("read", target):
            try:
                with target.open("rb") as file:
                    digest, size = _hash_fd(file)
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return None
        return ObjectInfo(key, size, digest, _b64(digest))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Walk the folder below `prefix`; skip dot-files, dot-folders and the spool."""
        base = prefix.rpartition("/")[0]
        start = self.root / base if base else self.root
        keys: list[str] = []
        with self._errors("list", start):
            if not start.is_dir():
                return
            for dirpath, dirnames, filenames in os.walk(start):
                rel = Path(dirpath).relative_to(self.root).as_posix()
                rel = "" if rel == "." else rel + "/"
                dirnames[:] = [
                    d
                    for d in dirnames
                    if not d.startswith(".") and not (rel + d + "/").startswith(SPOOL_KEY_PREFIX)
                ]
                keys.extend(
                    rel + name
                    for name in filenames
                    if not name.startswith(".") and (rel + name).startswith(prefix)
                )
        for key in sorted(keys):
            try:  # stat, not head(): listing must not read (and hash) every file
                size = (self.root / key).stat().st_size
            except FileNotFoundError:  # deleted since the walk
                continue
            yield ObjectInfo(key, size, None)

    def download(self, key: str, path: Path) -> None:
        """Copy the file."""
        source = self._path(key)
        with self._errors("download", source):
            try:
                file = source.open("rb")
            except (FileNotFoundError, NotADirectoryError) as exc:
                raise WindowError(f"{source}: download failed: no such object") from exc
            with file, path.open("wb") as out:
                shutil.copyfileobj(file, out)

    def delete(self, key: str) -> None:
        """Unlink the file."""
        target = self._path(key)
        with self._errors("delete", target), self._locked():
            try:
                target.unlink()
            except (FileNotFoundError, NotADirectoryError):
                return
            _fsync_dir(target.parent)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def _makedirs(self, directory: Path) -> None:
        """Create `directory` and missing parents, fsyncing each new entry's parent."""
        if directory.is_dir():
            return
        self._makedirs(directory.parent)
        with contextlib.suppress(FileExistsError):
            directory.mkdir()
            _fsync_dir(directory.parent)

    def _write_temp(self, target: Path, data: bytes) -> Path:
        """`data` in a new, fsynced temp file beside `target`."""
        self._makedirs(target.parent)
        temp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return temp

    def _replace_across_filesystems(self, path: Path, target: Path) -> None:
        """Copy `path` beside `target`, fsync, then rename over it (slow path for EXDEV)."""
        self._makedirs(target.parent)
        temp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
        try:
            shutil.copyfile(path, temp)
            with temp.open("rb") as file:
                os.fsync(file.fileno())
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the store's flock (each call opens the file anew, so threads exclude too)."""
        self._makedirs(self._lock_path.parent)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    @contextlib.contextmanager
    def _errors(self, action: str, where: Path) -> Iterator[None]:
        """Turn OSError into WindowError naming the file."""
        try:
            yield
        except OSError as exc:
            raise WindowError(f"{where}: {action} failed: {exc.strerror or exc}") from exc


# ------------------------------------------------------------------------------- S3


def _status(exc: botocore.exceptions.ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code") or "")


def _describe(exc: botocore.exceptions.ClientError) -> str:
    """`Code (status): message`, from S3's answer (never the request or credentials)."""
    code, status = _code(exc), _status(exc)
    message = _one_line(exc.response.get("Error", {}).get("Message") or "")
    text = f"{code} ({status})" if code and code != str(status) else f"HTTP {status}"
    return f"{text}: {message}" if message and message != code else text


def _cause(exc: BaseException) -> str:
    """A short reason for a connection failure: 'Connection refused', a TLS error, ..."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLError):
            return _one_line(current.reason or current)
        if isinstance(current, OSError) and current.strerror:
            return _one_line(current.strerror)
        if isinstance(current, TimeoutError):
            return "timed out"
        kwargs = getattr(current, "kwargs", None)
        nested = kwargs.get("error") if isinstance(kwargs, dict) else None
        todo.extend(e for e in (nested, current.__cause__, current.__context__) if e)
    if isinstance(
        exc, botocore.exceptions.ConnectTimeoutError | botocore.exceptions.ReadTimeoutError
    ):
        return "timed out"
    return _one_line(exc)


def _whole_checksum(response: dict[str, Any]) -> str | None:
    """The object's SHA-256 (base64), unless S3 reports a per-part composite."""
    value = response.get("ChecksumSHA256")
    if not value or response.get("ChecksumType") == "COMPOSITE" or "-" in value:
        return None
    return str(value)


class S3Store(Store):
    """A bucket and an optional prefix on S3 or an S3-compatible service.

    Endpoint, region and credentials come from the standard AWS chain that boto3
    reads. The etag is S3's ETag as S3 spells it (with quotes). SSE options apply to
    every object written; Object Lock retention only to data objects (put_file).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        options: StoreOptions | None = None,
        *,
        single_put_limit: int = SINGLE_PUT_LIMIT,
        part_size: int = PART_SIZE,
    ) -> None:
        _import_boto()
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.options = options or StoreOptions()
        self.description = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._single_put_limit = single_put_limit
        self._transfer = TransferConfig(
            multipart_threshold=single_put_limit + 1,
            multipart_chunksize=part_size,
            max_concurrency=4,
            preferred_transfer_client="classic",
        )
        self._spool: Path | None = None
        self._spool_lock = threading.Lock()
        try:
            # One client, made once: clients are thread-safe, sessions are not.
            self._client = boto3.session.Session().client("s3", config=CLIENT_CONFIG)
        except (botocore.exceptions.BotoCoreError, ValueError) as exc:
            raise UsageError(
                f"destination {self.description}: cannot set up the S3 client: {_one_line(exc)}"
            ) from exc

    @property
    def endpoint(self) -> str:
        """The S3 endpoint in use, without any user:password part."""
        parts = urlsplit(str(self._client.meta.endpoint_url))
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit((parts.scheme, host, parts.path, "", "")).rstrip("/")

    def check(self) -> None:
        """HeadBucket, and with Object Lock options GetObjectLockConfiguration."""
        where = f"destination {self.description}"
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError as exc:
            if _status(exc) == 404 or _code(exc) == "NoSuchBucket":
                raise UsageError(f"{where}: bucket '{self.bucket}' does not exist") from exc
            if _status(exc) == 403:
                raise UsageError(
                    f"{where}: access denied (check the AWS credentials and the bucket policy)"
                ) from exc
            if _status(exc) >= 500 or _code(exc) in RETRYABLE_CODES:
                raise RetryableError(f"{where}: S3 failed HeadBucket: {_describe(exc)}") from exc
            raise UsageError(f"{where}: S3 refused HeadBucket: {_describe(exc)}") from exc
        except FOREIGN_ERRORS as exc:
            raise self._check_error(exc) from exc
        if self.options.object_lock_mode:
            self._check_object_lock()

    def _check_object_lock(self) -> None:
        where = f"destination {self.description}"
        missing = (
            f"{where}: object_lock_mode is {self.options.object_lock_mode} but bucket "
            f"'{self.bucket}' does not have Object Lock enabled"
        )
        try:
            answer = self._client.get_object_lock_configuration(Bucket=self.bucket)
        except botocore.exceptions.ClientError as exc:
            if _code(exc) == "ObjectLockConfigurationNotFoundError":
                raise UsageError(missing) from exc
            if _status(exc) == 403:
                raise UsageError(
                    f"{where}: access denied reading the bucket's Object Lock configuration "
                    "(needs s3:GetBucketObjectLockConfiguration)"
                ) from exc
            raise UsageError(
                f"{where}: S3 refused GetObjectLockConfiguration: {_describe(exc)}"
            ) from exc
        except FOREIGN_ERRORS as exc:
            raise self._check_error(exc) from exc
        enabled = answer.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled")
        if enabled != "Enabled":
            raise UsageError(missing)

    def _check_error(self, exc: Exception) -> UsageError:
        """check()'s message for a failure that is not an S3 answer."""
        where = f"destination {self.description}"
        if isinstance(exc, botocore.exceptions.NoCredentialsError):
            return UsageError(
                f"{where}: no AWS credentials found (set AWS_PROFILE or "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or use an instance role)"
            )
        if isinstance(
            exc, botocore.exceptions.ConnectionError | botocore.exceptions.HTTPClientError
        ):
            return UsageError(
                f"{where}: cannot reach the S3 endpoint {self.endpoint}: {_cause(exc)}"
            )
        return UsageError(f"{where}: {_one_line(exc)}")

    def spool_dir(self) -> Path:
        """A temp folder of this process, removed when the store is garbage or at exit."""
        with self._spool_lock:
            if self._spool is None or not self._spool.is_dir():
                self._spool = Path(tempfile.mkdtemp(prefix="archiver-spool-"))
                weakref.finalize(self, shutil.rmtree, self._spool, ignore_errors=True)
            return self._spool

    def put_file(self, key: str, path: Path, sha256_hex: str) -> ObjectInfo:
        """One PutObject up to 64 MiB, multipart above; S3 verifies the SHA-256."""
        full = self._full(key)
        checksum = _b64(sha256_hex)
        extra = {**self._sse_args(), **self._lock_args()}
        try:
            with self._errors("upload", key):
                size = path.stat().st_size
                if size <= self._single_put_limit:
                    with path.open("rb") as body:
                        answer = self._client.put_object(
                            Bucket=self.bucket,
                            Key=full,
                            Body=body,
                            ChecksumAlgorithm="SHA256",
                            ChecksumSHA256=checksum,
                            **extra,
                        )
                    return ObjectInfo(key, size, answer["ETag"], _whole_checksum(answer))
                # Parts carry their own SHA-256 (S3 checks each); the object's checksum
                # is then a composite, not the file's digest.
                self._client.upload_file(
                    str(path),
                    self.bucket,
                    full,
                    ExtraArgs={"ChecksumAlgorithm": "SHA256", **extra},
                    Config=self._transfer,
                )
                answer = self._client.head_object(Bucket=self.bucket, Key=full)
                return ObjectInfo(key, size, answer["ETag"], None)
        finally:
            path.unlink(missing_ok=True)

    def put_bytes(self, key: str, data: bytes) -> str:
        """PutObject."""
        with self._errors("write", key):
            answer = self._client.put_object(
                Bucket=self.bucket, Key=self._full(key), Body=data, **self._sse_args()
            )
        return str(answer["ETag"])

    def put_bytes_if_absent(self, key: str, data: bytes) -> str | None:
        """PutObject with If-None-Match: *."""
        return self._put_conditional(key, data, IfNoneMatch="*")

    def put_bytes_if_match(self, key: str, data: bytes, etag: str) -> str | None:
        """PutObject with If-Match: etag."""
        return self._put_conditional(key, data, IfMatch=etag)

    def _put_conditional(self, key: str, data: bytes, **condition: str) -> str | None:
        with self._errors("write", key):
            try:
                answer = self._client.put_object(
                    Bucket=self.bucket,
                    Key=self._full(key),
                    Body=data,
                    **condition,
                    **self._sse_args(),
                )
            except botocore.exceptions.ClientError as exc:
                # 412: the condition failed; 409: a concurrent conditional write won;
                # 404: If-Match on an object that is gone.
                if _status(exc) in (404, 409, 412):
                    return None
                raise
        return str(answer["ETag"])

    def get_bytes(self, key: str) -> tuple[bytes, str] | None:
        """GetObject."""
        with self._errors("read", key):
            try:
                answer = self._client.get_object(Bucket=self.bucket, Key=self._full(key))
            except botocore.exceptions.ClientError as exc:
                if _status(exc) == 404:
                    return None
                raise
            with contextlib.closing(answer["Body"]) as body:
                data = body.read()
        return data, str(answer["ETag"])

    def head(self, key: str) -> ObjectInfo | None:
        """HeadObject with checksum mode enabled."""
        with self._errors("head", key):
            try:
                answer = self._client.head_object(
                    Bucket=self.bucket, Key=self._full(key), ChecksumMode="ENABLED"
                )
            except botocore.exceptions.ClientError as exc:
                if _status(exc) == 404:
                    return None
                raise
        return ObjectInfo(
            key, int(answer["ContentLength"]), answer["ETag"], _whole_checksum(answer)
        )

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """ListObjectsV2, page by page (S3 returns keys in sorted order)."""
        root = f"{self.prefix}/" if self.prefix else ""
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=root + prefix
        )
        with self._errors("list", prefix):
            for page in pages:
                for item in page.get("Contents", []):
                    key = item["Key"][len(root) :]
                    if key and not key.endswith("/"):  # skip "folder" placeholders
                        yield ObjectInfo(key, int(item["Size"]), item.get("ETag"))

    def download(self, key: str, path: Path) -> None:
        """download_file (ranged GETs for large objects)."""
        with self._errors("download", key):
            self._client.download_file(
                self.bucket, self._full(key), str(path), Config=self._transfer
            )

    def delete(self, key: str) -> None:
        """DeleteObject (S3 does not mind a missing key)."""
        with self._errors("delete", key):
            self._client.delete_object(Bucket=self.bucket, Key=self._full(key))

    def _full(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _sse_args(self) -> dict[str, str]:
        args: dict[str, str] = {}
        if self.options.sse:
            args["ServerSideEncryption"] = self.options.sse
        if self.options.sse_kms_key_id:
            args["SSEKMSKeyId"] = self.options.sse_kms_key_id
        return args

    def _lock_args(self) -> dict[str, Any]:
        if not self.options.object_lock_mode or not self.options.object_lock_days:
            return {}
        until = datetime.now(UTC) + timedelta(days=self.options.object_lock_days)
        return {"ObjectLockMode": self.options.object_lock_mode, "ObjectLockRetainUntilDate": until}

    @contextlib.contextmanager
    def _errors(self, action: str, key: str) -> Iterator[None]:
        """Turn botocore, boto3 and OS errors into RetryableError or WindowError — and any
        other library error too: an S3-compatible server that answers unlike S3 (a HEAD
        without Content-Length makes s3transfer raise KeyError) fails one window, in one
        line, not the run."""
        try:
            yield
        except FOREIGN_ERRORS as exc:
            raise self._failure(action, key, exc) from exc
        except (ArchiverError, ValueError):
            raise  # ours, or a key we refuse before asking S3
        except Exception as exc:
            root = f"{self.prefix}/" if self.prefix else ""
            raise WindowError(
                f"s3://{self.bucket}/{root}{key}: {action} failed: the S3 server's answer "
                f"was not understood ({type(exc).__name__}: {_one_line(exc)})"
            ) from exc

    def _failure(self, action: str, key: str, exc: Exception) -> WindowError:
        root = f"{self.prefix}/" if self.prefix else ""
        where = f"s3://{self.bucket}/{root}{key}"
        if isinstance(exc, boto3.exceptions.S3UploadFailedError) and isinstance(
            exc.__context__, botocore.exceptions.ClientError
        ):
            exc = exc.__context__  # boto3 wraps the real answer of a multipart upload
        if isinstance(exc, botocore.exceptions.ClientError):
            status, code = _status(exc), _code(exc)
            text = f"{where}: {action} failed: {_describe(exc)}"
            if status >= 500 or status == 429 or code in RETRYABLE_CODES:
                return RetryableError(text)
            if status == 403:
                text += " (check the AWS credentials and the bucket policy)"
            return WindowError(text)
        if isinstance(exc, botocore.exceptions.NoCredentialsError):
            return WindowError(f"{where}: {action} failed: no AWS credentials found")
        if isinstance(exc, botocore.exceptions.SSLError):
            return WindowError(f"{where}: {action} failed: TLS error: {_cause(exc)}")
        if isinstance(
            exc,
            botocore.exceptions.ConnectionError
            | botocore.exceptions.HTTPClientError
            | boto3.exceptions.RetriesExceededError,
        ):
            return RetryableError(
                f"{where}: {action} failed: cannot reach the S3 endpoint {self.endpoint}: "
                f"{_cause(exc)}"
            )
        if isinstance(exc, OSError):
            return WindowError(f"{where}: {action} failed: {exc.strerror or _one_line(exc)}")
        return WindowError(f"{where}: {action} failed: {_one_line(exc)}")

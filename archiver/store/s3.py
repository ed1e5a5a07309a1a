"""The store on S3 or an S3-compatible service, through boto3 (imported by the first
S3Store, so a local destination never loads it); botocore's errors translated here."""

from __future__ import annotations

import contextlib
import shutil
import ssl
import tempfile
import threading
import weakref
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from archiver.errors import ArchiverError, RetryableError, UsageError, WindowError
from archiver.store.base import (
    PART_SIZE,
    SINGLE_PUT_LIMIT,
    ObjectInfo,
    Store,
    StoreOptions,
    _b64,
    _check_key,
    _one_line,
)

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
    """`CLIENT_CONFIG` and the other names made of boto3, on first use (`archiver.store`
    asks here too)."""
    if name in _BOTO_NAMES:
        _import_boto()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
            self._session = boto3.session.Session()
            self._client = self._session.client("s3", config=CLIENT_CONFIG)
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

    def object_store_options(self) -> dict[str, str]:
        """How another S3 client (delta-rs, whose object_store reads these keys) reaches
        this bucket as boto3 does: the endpoint (unless AWS's own), region, credentials
        (refreshed when temporary ones are about to expire) and SSE settings. Holds the
        secret key: never log it."""
        options = {
            "AWS_REGION": str(self._client.meta.region_name or "us-east-1"),
            # Each PUT carries its SHA-256, which S3 checks (and a bucket with a default
            # Object Lock retention requires some checksum on every PUT).
            "AWS_CHECKSUM_ALGORITHM": "sha256",
        }
        endpoint = self.endpoint
        if not urlsplit(endpoint).hostname or not str(urlsplit(endpoint).hostname).endswith(
            ".amazonaws.com"
        ):
            options["AWS_ENDPOINT_URL"] = endpoint
            if endpoint.startswith("http://"):
                options["AWS_ALLOW_HTTP"] = "true"
        credentials = self._session.get_credentials()
        if credentials is not None:
            frozen = credentials.get_frozen_credentials()
            options["AWS_ACCESS_KEY_ID"] = frozen.access_key
            options["AWS_SECRET_ACCESS_KEY"] = frozen.secret_key
            if frozen.token:
                options["AWS_SESSION_TOKEN"] = frozen.token
        if self.options.sse:
            options["AWS_SERVER_SIDE_ENCRYPTION"] = self.options.sse
        if self.options.sse_kms_key_id:
            options["AWS_SSE_KMS_KEY_ID"] = self.options.sse_kms_key_id
        return options

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

    def retain(self, key: str) -> None:
        """Put the configured Object Lock retention on an object another client wrote
        (delta-rs writes a Delta table's files): PutObjectRetention, from now for
        `object_lock_days`. Nothing without Object Lock options."""
        lock = self._lock_args()
        if not lock:
            return
        retention = {
            "Mode": lock["ObjectLockMode"],
            "RetainUntilDate": lock["ObjectLockRetainUntilDate"],
        }
        with self._errors("retain", key):
            self._client.put_object_retention(
                Bucket=self.bucket, Key=self._full(key), Retention=retention
            )

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

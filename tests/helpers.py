"""Helpers the test modules share (test modules never import one another).

- running the archiver against the emulator: `archiver_env`, `archiver_command`, `backfill`;
- reading an archive back and comparing it, row by row, with the emulator's truth:
  `read_local`, `read_s3`, `s3_keys`, `assert_archive_exact`;
- looking behind a store: `raw_client`, `bucket_of`, `spool_file`, `b64_sha256`,
  `count_up_concurrently`;
- `free_port`.

The expected values of an archive are computed here independently of archiver.schema,
from the JSON the emulator serves, so a conversion bug cannot hide in both places.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import random
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from archiver.cli import main
from archiver.emulator import Emulator
from archiver.kinds import Kind
from archiver.schema import schema_for
from archiver.store import Store

# --- running the archiver ----------------------------------------------------------------


def archiver_env(emu: Emulator, destination: str | Path, **extra: str) -> dict[str, str]:
    """The environment a user would set to point the archiver at the emulator."""
    return {
        "ARCHIVER_TENANT_ID": emu.config.tenant_id,
        "ARCHIVER_CLIENT_ID": emu.config.client_id,
        "ARCHIVER_CLIENT_SECRET": emu.config.client_secret,
        "ARCHIVER_AUTHORITY_HOST": emu.url,
        "ARCHIVER_GRAPH_URL": emu.url,
        "ARCHIVER_CA_BUNDLE": str(emu.ca_file),
        "ARCHIVER_DESTINATION": str(destination),
        "ARCHIVER_REQUESTS_PER_MINUTE": "100000",
        "ARCHIVER_TENANT_REQUESTS_PER_MINUTE": "100000",
        "ARCHIVER_LOG_FORMAT": "json",
        **extra,
    }


def archiver_command(*args: str) -> list[str]:
    """The archiver as a separate process, as a user or a container runs it."""
    return [sys.executable, "-m", "archiver", *args]


def backfill(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], *args: str) -> int:
    """Run `archiver backfill` in-process with `env` set."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return main(["backfill", *args])


def certificate_pem(name: str) -> tuple[bytes, bytes]:
    """A fresh self-signed RSA certificate and its unencrypted key, both PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


# --- reading an archive back -------------------------------------------------------------

_TS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,7}))?(Z|[+-]\d\d:\d\d)$")


def expected_timestamp(text: str | None) -> datetime | None:
    """A Graph timestamp truncated to microseconds; the 0001-01-01 sentinel is None."""
    if text is None or text.startswith("0001-01-01"):
        return None
    match = _TS.match(text)
    assert match, text
    fraction = (match[2] or "")[:6].ljust(6, "0")
    zone = "+00:00" if match[3] == "Z" else match[3]
    return datetime.fromisoformat(f"{match[1]}.{fraction}{zone}")


def expected_value(field: pa.Field, value: Any) -> Any:
    """What a JSON value of a known property becomes in its typed column."""
    if value is None:
        return None
    if pa.types.is_timestamp(field.type):
        return expected_timestamp(value)
    if pa.types.is_decimal(field.type):
        return Decimal(str(value))
    return value


def expected_extra(kind: Kind, row: dict[str, Any]) -> dict[str, Any] | None:
    """The properties the schema does not know, as additionalData should keep them."""
    known = set(schema_for(kind).names)
    extra = {k: v for k, v in row.items() if k not in known}
    return extra or None


def read_local(root: Path, kind: Kind) -> pa.Table:
    """All Parquet objects of one kind under a local destination, as one table."""
    files = sorted((root / kind.value).rglob("*.parquet"))
    return pa.concat_tables([pq.read_table(f, partitioning=None) for f in files])


def s3_keys(destination: str, suffix: str = "") -> list[str]:
    """Keys (relative to the destination) under an s3:// destination."""
    bucket, _, prefix = destination.removeprefix("s3://").partition("/")
    client = boto3.client("s3")
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"][len(prefix) + 1 :] for o in page.get("Contents", [])]
    return sorted(k for k in keys if k.endswith(suffix))


def read_s3(destination: str, kind: Kind, scratch: Path) -> pa.Table:
    """All Parquet objects of one kind under an s3:// destination, as one table."""
    bucket, _, prefix = destination.removeprefix("s3://").partition("/")
    client = boto3.client("s3")
    tables = []
    for i, key in enumerate(s3_keys(destination, ".parquet")):
        if key.startswith(kind.value + "/"):
            path = scratch / f"{kind.value}-{i}.parquet"
            client.download_file(bucket, f"{prefix}/{key}", str(path))
            tables.append(pq.read_table(path, partitioning=None))
    return pa.concat_tables(tables)


def assert_archive_exact(kind: Kind, table: pa.Table, truth: Iterable[dict[str, Any]]) -> None:
    """Every source row exactly once (by the kind's key), every column equal to the
    source, nothing else."""
    key = kind.key
    expected = {row[key]: row for row in truth}
    archived = table.to_pylist()
    ids = [row[key] for row in archived]
    assert len(ids) == len(set(ids)), "a row is archived twice"
    assert sorted(expected) == sorted(ids)
    schema = schema_for(kind)
    assert schema.remove_metadata() == table.schema.remove_metadata()
    for row in archived:
        source = expected[row[key]]
        for field in schema:
            if field.name == "additionalData":
                extra = row["additionalData"]
                assert expected_extra(kind, source) == (json.loads(extra) if extra else None)
            else:
                assert expected_value(field, source.get(field.name)) == row[field.name], (
                    f"{row[key]} {field.name}"
                )


# --- looking behind a store --------------------------------------------------------------


def raw_client() -> Any:
    """A plain boto3 S3 client on the same AWS chain (for looking behind the store)."""
    return boto3.session.Session().client("s3")


def bucket_of(destination: str) -> str:
    """The bucket of an `s3://bucket/prefix` destination."""
    return destination.removeprefix("s3://").split("/")[0]


def spool_file(store: Store, data: bytes) -> tuple[Path, str]:
    """A file in the store's spool holding `data`, and its SHA-256 hex digest."""
    path = store.spool_dir() / f"test-{random.getrandbits(64):x}.partial"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def b64_sha256(data: bytes) -> str:
    """The base64 SHA-256 that S3 reports in x-amz-checksum-sha256."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def count_up_concurrently(store: Store, threads: int, each: int) -> bytes:
    """Threads each add 1 to an object `each` times by read / compare-and-swap; the result."""
    store.put_bytes("counter", b"0")

    def increment_many() -> None:
        for _ in range(each):
            while True:
                got = store.get_bytes("counter")
                assert got is not None
                if store.put_bytes_if_match("counter", str(int(got[0]) + 1).encode(), got[1]):
                    break

    workers = [threading.Thread(target=increment_many) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    got = store.get_bytes("counter")
    assert got is not None
    return got[0]


# --- network -----------------------------------------------------------------------------


def free_port() -> int:
    """A loopback port nothing listens on: free to listen on, or an endpoint that refuses."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], bool], what: str, limit: float = 60) -> None:
    """Poll until `condition` holds (a deadline, not a timing assertion)."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)

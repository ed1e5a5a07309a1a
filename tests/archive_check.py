"""Test helpers: read an archive back and compare it, row by row, with the emulator's truth.

The expected values are computed here independently of archiver.schema, from the
JSON the emulator serves, so a conversion bug cannot hide in both places.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pyarrow as pa
import pyarrow.parquet as pq

from archiver.kinds import Kind
from archiver.schema import schema_for

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
    """Every source row exactly once, every column equal to the source, nothing else."""
    expected = {row["id"]: row for row in truth}
    archived = table.to_pylist()
    ids = [row["id"] for row in archived]
    assert len(ids) == len(set(ids)), "a row is archived twice"
    assert sorted(expected) == sorted(ids)
    schema = schema_for(kind)
    assert schema.remove_metadata() == table.schema.remove_metadata()
    for row in archived:
        source = expected[row["id"]]
        for field in schema:
            if field.name == "additionalData":
                extra = row["additionalData"]
                assert expected_extra(kind, source) == (json.loads(extra) if extra else None)
            else:
                assert expected_value(field, source.get(field.name)) == row[field.name], (
                    f"{row['id']} {field.name}"
                )

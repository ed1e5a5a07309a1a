"""The fault-injecting S3 proxy: traffic passes exactly, faults are S3's, and boto3 copes."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import pytest
from boto3.s3.transfer import TransferConfig
from s3_faults import FaultRates, S3FaultProxy

from archiver.store import CLIENT_CONFIG

MiB = 1024 * 1024
ONE_TRY = botocore.config.Config(retries={"mode": "standard", "total_max_attempts": 1})
# What a client sees of a connection closed without an answer.
CONNECTION_ERRORS = (botocore.exceptions.HTTPClientError, botocore.exceptions.ConnectionError)


@pytest.fixture
def bucket(any_s3_destination: str) -> str:
    """A fresh bucket on moto, then on SeaweedFS; the AWS chain points at that server."""
    return any_s3_destination.removeprefix("s3://").split("/")[0]


@pytest.fixture
def proxy(bucket: str) -> Iterator[S3FaultProxy]:
    """The proxy in front of the server `bucket` lives on, injecting nothing yet."""
    with S3FaultProxy(os.environ["AWS_ENDPOINT_URL_S3"], seed=11) as running:
        yield running


def client(endpoint: str | None = None, config: botocore.config.Config = CLIENT_CONFIG) -> Any:
    """A boto3 S3 client on the AWS chain; through `endpoint` when given."""
    return boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)


def error_of(exc: botocore.exceptions.ClientError) -> tuple[str, int]:
    """S3's error code and HTTP status."""
    return str(exc.response["Error"]["Code"]), int(
        exc.response["ResponseMetadata"]["HTTPStatusCode"]
    )


def force_trailer(params: dict[str, Any], **_: Any) -> None:
    """Make botocore send its checksum as an aws-chunked trailer (it does so only over TLS)."""
    params["context"]["checksum"]["request_algorithm"]["in"] = "trailer"


def test_traffic_passes_byte_for_byte(bucket: str, proxy: S3FaultProxy, tmp_path: Path) -> None:
    """Puts (bytes, file bodies with Expect, aws-chunked with a trailing SHA-256, multipart),
    gets, heads, conditional puts, paged lists and deletes through the proxy land upstream
    exactly as sent, and SeaweedFS accepts every signature."""
    via, direct = client(proxy.url), client()
    body = os.urandom(300_000)
    via.put_object(Bucket=bucket, Key="a/bytes", Body=body)
    via.put_object(Bucket=bucket, Key="a/file", Body=io.BytesIO(body), ChecksumAlgorithm="SHA256")
    sent: list[dict[str, Any]] = []
    via.meta.events.register("before-call.s3.PutObject", force_trailer)
    via.meta.events.register(
        "before-send.s3.PutObject", lambda request, **_: sent.append(dict(request.headers))
    )
    answer = via.put_object(
        Bucket=bucket, Key="a/chunked", Body=io.BytesIO(body), ChecksumAlgorithm="SHA256"
    )
    assert b"aws-chunked" == sent[-1]["Content-Encoding"]
    assert b"x-amz-checksum-sha256" == sent[-1]["X-Amz-Trailer"]
    digest = direct.head_object(Bucket=bucket, Key="a/chunked", ChecksumMode="ENABLED")
    assert answer["ChecksumSHA256"] == digest["ChecksumSHA256"]
    big = tmp_path / "big"
    big.write_bytes(os.urandom(11 * MiB))
    via.upload_file(
        str(big),
        bucket,
        "a/multipart",
        ExtraArgs={"ChecksumAlgorithm": "SHA256"},
        Config=TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB),
    )
    for key, expected in [
        ("a/bytes", body),
        ("a/file", body),
        ("a/chunked", body),
        ("a/multipart", big.read_bytes()),
    ]:
        got = direct.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert hashlib.sha256(expected).hexdigest() == hashlib.sha256(got).hexdigest(), key
        assert expected == via.get_object(Bucket=bucket, Key=key)["Body"].read(), key
    assert 11 * MiB == via.head_object(Bucket=bucket, Key="a/multipart")["ContentLength"]
    ranged = via.get_object(Bucket=bucket, Key="a/bytes", Range="bytes=10-19")["Body"].read()
    assert body[10:20] == ranged

    etag = via.put_object(Bucket=bucket, Key="c", Body=b"one", IfNoneMatch="*")["ETag"]
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        via.put_object(Bucket=bucket, Key="c", Body=b"two", IfNoneMatch="*")
    assert "PreconditionFailed" == error_of(refused.value)[0]
    via.put_object(Bucket=bucket, Key="c", Body=b"three", IfMatch=etag)
    assert b"three" == direct.get_object(Bucket=bucket, Key="c")["Body"].read()

    for i in range(25):
        via.put_object(Bucket=bucket, Key=f"many/{i:03d}", Body=b"x" * i)
    pages = via.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix="many/", PaginationConfig={"PageSize": 10}
    )
    listed = [(o["Key"], o["Size"]) for page in pages for o in page["Contents"]]
    assert [(f"many/{i:03d}", i) for i in range(25)] == listed
    via.delete_object(Bucket=bucket, Key="many/000")
    assert 24 == direct.list_objects_v2(Bucket=bucket, Prefix="many/")["KeyCount"]
    assert (0, {}) == (proxy.injected(), proxy.counts())
    assert proxy.seen("PUT") >= 30


def test_boto3_retries_succeed_under_moderate_faults(bucket: str, proxy: S3FaultProxy) -> None:
    """With 5 % slowdowns, 2 % internal errors and 2 % resets (half before, half after
    forwarding), the archiver's boto3 settings complete every put, conditional put, get
    and list."""
    proxy.rates = FaultRates.moderate(slowdown=0.05, internal=0.02, reset=0.02)
    via = client(proxy.url)
    for i in range(15):
        data = f"object {i}".encode() * (i + 1)
        via.put_object(Bucket=bucket, Key=f"k/{i}", Body=io.BytesIO(data))
        assert data == via.get_object(Bucket=bucket, Key=f"k/{i}")["Body"].read()
    for i in range(10):
        try:
            via.put_object(Bucket=bucket, Key=f"once/{i}", Body=b"x", IfNoneMatch="*")
        except botocore.exceptions.ClientError as exc:
            # a reset after forwarding: the first try wrote it, the retry finds it there
            assert "PreconditionFailed" == error_of(exc)[0]
    assert 10 == client().list_objects_v2(Bucket=bucket, Prefix="once/")["KeyCount"]
    assert 15 == via.list_objects_v2(Bucket=bucket, Prefix="k/")["KeyCount"]
    assert proxy.injected() > 0, "the seed injected nothing: pick another"
    assert proxy.injected() == sum(n for by in proxy.counts().values() for n in by.values())


def test_injected_errors_are_s3_errors(bucket: str, proxy: S3FaultProxy) -> None:
    """An injected slowdown is a 503 SlowDown and an internal error a 500 InternalError, for
    GET, HEAD and PUT (a file body with Expect: 100-continue too); nothing is written."""
    via = client(proxy.url, ONE_TRY)
    client().put_object(Bucket=bucket, Key="there", Body=b"x")
    for rates, expected in [
        (FaultRates(slowdown=1.0), ("SlowDown", 503)),
        (FaultRates(internal=1.0), ("InternalError", 500)),
    ]:
        proxy.rates = rates
        calls = [
            lambda: via.get_object(Bucket=bucket, Key="there"),
            lambda: via.put_object(Bucket=bucket, Key="new", Body=b"y"),
            lambda: via.put_object(Bucket=bucket, Key="new", Body=io.BytesIO(b"y" * 5000)),
        ]
        for call in calls:
            with pytest.raises(botocore.exceptions.ClientError) as caught:
                call()
            assert expected == error_of(caught.value)
        with pytest.raises(botocore.exceptions.ClientError) as caught:
            via.head_object(Bucket=bucket, Key="there")
        assert expected[1] == error_of(caught.value)[1]
    assert {
        "slowdown": {"GET": 1, "HEAD": 1, "PUT": 2},
        "internal": {"GET": 1, "HEAD": 1, "PUT": 2},
    } == (proxy.counts())
    assert 1 == client().list_objects_v2(Bucket=bucket)["KeyCount"]


@pytest.mark.parametrize("body", ["bytes", "file"])
def test_reset_after_forwarding_writes_and_reset_before_does_not(
    bucket: str, proxy: S3FaultProxy, body: str
) -> None:
    """A reset after forwarding leaves the client with a connection error although the
    object was written; a reset before forwarding writes nothing."""
    via = client(proxy.url, ONE_TRY)

    def put(key: str) -> None:
        data: Any = b"payload" if body == "bytes" else io.BytesIO(b"payload" * 1000)
        via.put_object(Bucket=bucket, Key=key, Body=data)

    proxy.rates = FaultRates(reset_after=1.0)
    with pytest.raises(CONNECTION_ERRORS):
        put("after")
    proxy.rates = FaultRates(reset_before=1.0)
    with pytest.raises(CONNECTION_ERRORS):
        put("before")
    keys = [o["Key"] for o in client().list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert ["after"] == keys
    assert {"reset_after": {"PUT": 1}, "reset_before": {"PUT": 1}} == proxy.counts()


def test_faults_can_be_limited_to_some_methods(bucket: str, proxy: S3FaultProxy) -> None:
    """With faults limited to DELETE, puts and gets pass and every delete is refused."""
    proxy.rates = FaultRates(internal=1.0, methods=frozenset({"DELETE"}))
    via = client(proxy.url, ONE_TRY)
    via.put_object(Bucket=bucket, Key="k", Body=b"x")
    assert b"x" == via.get_object(Bucket=bucket, Key="k")["Body"].read()
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        via.delete_object(Bucket=bucket, Key="k")
    assert ("InternalError", 500) == error_of(caught.value)
    assert {"internal": {"DELETE": 1}} == proxy.counts()


def test_same_seed_same_faults(bucket: str) -> None:
    """Two proxies with one seed fault the same requests of one sequential request stream."""
    upstream = os.environ["AWS_ENDPOINT_URL_S3"]
    outcomes: list[list[str]] = []
    for _ in range(2):
        with S3FaultProxy(upstream, FaultRates(slowdown=0.3, internal=0.2), seed=5) as proxy:
            via = client(proxy.url, ONE_TRY)
            seen = []
            for i in range(20):
                try:
                    via.put_object(Bucket=bucket, Key=f"d/{i}", Body=b"x")
                    seen.append("ok")
                except botocore.exceptions.ClientError as exc:
                    seen.append(error_of(exc)[0])
            outcomes.append(seen)
    assert outcomes[0] == outcomes[1]
    assert {"ok", "SlowDown", "InternalError"} == set(outcomes[0])

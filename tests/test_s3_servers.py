"""The S3 store on a real S3-compatible server (SeaweedFS): what moto does not enforce.

moto stores an upload whose SHA-256 does not match its body and fails
GetObjectRetention; SeaweedFS refuses the one and answers the other, and serves
racing conditional writes as a real server does. What SeaweedFS does not do here
(SSE-KMS needs a KMS it is not given) is not tested; README's "S3-compatible servers"
lists what each server supports.
"""

from __future__ import annotations

import hashlib
import random
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import botocore.exceptions
import pytest
from helpers import b64_sha256, bucket_of, count_up_concurrently, raw_client, spool_file

from archiver.errors import RetryableError, WindowError
from archiver.store import S3Store, StoreOptions, open_store

MiB = 1024 * 1024


def error_code(exc: botocore.exceptions.ClientError) -> str:
    """The S3 error code of a refused request."""
    return str(exc.response["Error"]["Code"])


# ------------------------------------------------------------------ checksums


def test_upload_with_wrong_sha256_is_refused(seaweed_destination: str) -> None:
    """A PutObject whose ChecksumSHA256 does not match the body is refused and stores nothing."""
    client, bucket = raw_client(), bucket_of(seaweed_destination)
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        client.put_object(
            Bucket=bucket,
            Key="archive/x.parquet",
            Body=b"the real bytes",
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=b64_sha256(b"other bytes"),
        )
    expected = ("BadDigest", 0)
    listed = client.list_objects_v2(Bucket=bucket)["KeyCount"]
    assert expected == (error_code(caught.value), listed)


def test_put_file_with_wrong_digest_fails_the_window(seaweed_destination: str) -> None:
    """put_file with a digest that is not the file's fails the window (not a retry), stores
    nothing and still consumes the file."""
    store = open_store(seaweed_destination)
    path, _ = spool_file(store, b"parquet bytes")
    with pytest.raises(WindowError) as caught:
        store.put_file("pstn/x.parquet", path, hashlib.sha256(b"other").hexdigest())
    expected = (False, False, None)
    actual = (isinstance(caught.value, RetryableError), path.exists(), store.head("pstn/x.parquet"))
    assert expected == actual
    assert str(caught.value).startswith(
        f"{seaweed_destination}/pstn/x.parquet: upload failed: BadDigest (400)"
    )


def test_put_file_keeps_the_sha256_head_reports(seaweed_destination: str) -> None:
    """The file's SHA-256 is stored as the object's checksum and head() reads it back."""
    store = open_store(seaweed_destination)
    path, sha = spool_file(store, b"parquet bytes")
    info = store.put_file("pstn/x.parquet", path, sha)
    assert b64_sha256(b"parquet bytes") == info.checksum_sha256
    assert info == store.head("pstn/x.parquet")


def test_multipart_part_with_wrong_sha256_is_refused(seaweed_destination: str) -> None:
    """Each part of a multipart upload is checked against its own SHA-256."""
    client, bucket = raw_client(), bucket_of(seaweed_destination)
    upload = client.create_multipart_upload(
        Bucket=bucket, Key="archive/big.parquet", ChecksumAlgorithm="SHA256"
    )
    try:
        with pytest.raises(botocore.exceptions.ClientError) as caught:
            client.upload_part(
                Bucket=bucket,
                Key="archive/big.parquet",
                UploadId=upload["UploadId"],
                PartNumber=1,
                Body=b"part one",
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=b64_sha256(b"something else"),
            )
    finally:
        client.abort_multipart_upload(
            Bucket=bucket, Key="archive/big.parquet", UploadId=upload["UploadId"]
        )
    expected = "BadDigest"
    assert expected == error_code(caught.value)


# ---------------------------------------------------------- conditional writes


def test_if_absent_on_an_existing_key_is_none(seaweed_destination: str) -> None:
    """If-None-Match: * on an existing object writes nothing and returns None."""
    store = open_store(seaweed_destination)
    etag = store.put_bytes_if_absent("_manifest/snapshot.json.gz", b"first")
    assert None is store.put_bytes_if_absent("_manifest/snapshot.json.gz", b"second")
    assert (b"first", etag) == store.get_bytes("_manifest/snapshot.json.gz")


def test_if_match_with_a_stale_etag_is_none(seaweed_destination: str) -> None:
    """If-Match with an etag the object no longer has writes nothing and returns None."""
    store = open_store(seaweed_destination)
    stale = store.put_bytes("_manifest/snapshot.json.gz", b"v1")
    current = store.put_bytes("_manifest/snapshot.json.gz", b"v2")
    assert None is store.put_bytes_if_match("_manifest/snapshot.json.gz", b"v3", stale)
    assert (b"v2", current) == store.get_bytes("_manifest/snapshot.json.gz")
    newest = store.put_bytes_if_match("_manifest/snapshot.json.gz", b"v3", current)
    assert (b"v3", newest) == store.get_bytes("_manifest/snapshot.json.gz")


def test_if_match_on_a_missing_object_is_none(seaweed_destination: str) -> None:
    """If-Match on a key that does not exist (SeaweedFS: 412, AWS: 404) returns None."""
    store = open_store(seaweed_destination)
    etag = store.put_bytes("_manifest/a.json", b"a")
    assert None is store.put_bytes_if_match("_manifest/b.json", b"b", etag)
    assert None is store.get_bytes("_manifest/b.json")


def test_concurrent_compare_and_swap_loses_no_update(seaweed_destination: str) -> None:
    """Threads doing read / If-Match increments on a real server never lose an update."""
    expected = b"18"
    assert expected == count_up_concurrently(open_store(seaweed_destination), threads=3, each=6)


def test_concurrent_if_absent_has_one_winner(seaweed_destination: str) -> None:
    """Of writers racing to create one key, exactly one succeeds and its bytes stay."""
    store = open_store(seaweed_destination)
    results: dict[int, str | None] = {}
    start = threading.Barrier(4)  # SeaweedFS makes contenders wait in 1 s steps: keep it small

    def create(n: int) -> None:
        start.wait()
        results[n] = store.put_bytes_if_absent("_manifest/lease.json", str(n).encode())

    threads = [threading.Thread(target=create, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [n for n, etag in results.items() if etag is not None]
    assert 1 == len(winners)
    got = store.get_bytes("_manifest/lease.json")
    assert (str(winners[0]).encode(), results[winners[0]]) == got


# ------------------------------------------------------------------ Object Lock


@pytest.mark.parametrize("mode", ["GOVERNANCE", "COMPLIANCE"])
def test_object_lock_retention_reads_back(seaweed_locked_destination: str, mode: str) -> None:
    """put_file on a locked bucket gives data objects retention that GetObjectRetention reads
    back, their version cannot be deleted, and manifest objects get none."""
    store = open_store(
        seaweed_locked_destination, StoreOptions(object_lock_mode=mode, object_lock_days=1)
    )
    store.check()
    path, sha = spool_file(store, b"data")
    store.put_file("pstn/x.parquet", path, sha)
    store.put_bytes("_manifest/a.json", b"manifest")
    client, bucket = raw_client(), bucket_of(seaweed_locked_destination)
    retention = client.get_object_retention(Bucket=bucket, Key="archive/pstn/x.parquet")
    until = retention["Retention"]["RetainUntilDate"] - (datetime.now(UTC) + timedelta(days=1))
    assert (mode, True) == (retention["Retention"]["Mode"], abs(until) < timedelta(minutes=5))
    version = client.head_object(Bucket=bucket, Key="archive/pstn/x.parquet")["VersionId"]
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        client.delete_object(Bucket=bucket, Key="archive/pstn/x.parquet", VersionId=version)
    expected = "AccessDenied"
    assert expected == error_code(caught.value)
    manifest = client.head_object(Bucket=bucket, Key="archive/_manifest/a.json")
    assert None is manifest.get("ObjectLockMode")


# -------------------------------------------------------------- multipart, SSE


def test_large_file_goes_up_in_parts_and_round_trips(
    seaweed_destination: str, tmp_path: Path
) -> None:
    """A file above the single-put limit goes up in SHA-256-checked parts with SSE-S3 and
    downloads byte for byte."""
    store = S3Store(
        bucket_of(seaweed_destination),
        "archive",
        StoreOptions(sse="AES256"),
        single_put_limit=5 * MiB,
        part_size=5 * MiB,
    )
    data = random.randbytes(11 * MiB)
    path, sha = spool_file(store, data)
    info = store.put_file("pstn/big.parquet", path, sha)
    store.download("pstn/big.parquet", tmp_path / "copy")
    answer = raw_client().head_object(
        Bucket=store.bucket, Key="archive/pstn/big.parquet", ChecksumMode="ENABLED"
    )
    assert (False, 11 * MiB, None) == (path.exists(), info.size, info.checksum_sha256)
    expected = ('-3"', "AES256", "COMPOSITE")  # an ETag and a checksum of 3 parts
    actual = ((info.etag or "")[-3:], answer["ServerSideEncryption"], answer["ChecksumType"])
    assert expected == actual
    assert info == store.head("pstn/big.parquet")
    assert data == (tmp_path / "copy").read_bytes()


def test_sse_s3_applies_to_every_write(seaweed_destination: str) -> None:
    """With sse = AES256, data objects and manifest objects alike are stored encrypted."""
    store = open_store(seaweed_destination, StoreOptions(sse="AES256"))
    path, sha = spool_file(store, b"data")
    store.put_file("pstn/x.parquet", path, sha)
    store.put_bytes("_manifest/a.json", b"1")
    store.put_bytes_if_absent("_manifest/b.json", b"2")
    client, bucket = raw_client(), bucket_of(seaweed_destination)
    found = [
        client.head_object(Bucket=bucket, Key=f"archive/{key}").get("ServerSideEncryption")
        for key in ("pstn/x.parquet", "_manifest/a.json", "_manifest/b.json")
    ]
    expected = ["AES256"] * 3
    assert expected == found

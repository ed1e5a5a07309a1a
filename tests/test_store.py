"""The object store: a local folder and S3 (a moto server) behave alike."""

from __future__ import annotations

import hashlib
import os
import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest
from helpers import b64_sha256, bucket_of, count_up_concurrently, free_port, raw_client, spool_file

from archiver.errors import RetryableError, UsageError, WindowError
from archiver.store import (
    LocalStore,
    ObjectInfo,
    S3Store,
    Store,
    StoreOptions,
    open_store,
)

MiB = 1024 * 1024


@pytest.fixture(params=["local", "s3"])
def destination(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty destination of each kind."""
    if request.param == "local":
        return str(tmp_path / "archive")
    return str(request.getfixturevalue("s3_destination"))


@pytest.fixture
def store(destination: str) -> Store:
    """A checked store on `destination`."""
    result = open_store(destination)
    result.check()
    return result


# ---------------------------------------------------------------- both stores


def test_put_file_replaces_object_and_removes_source(store: Store) -> None:
    """put_file puts the file's bytes at the key, replacing the old ones, and consumes the file."""
    key = "pstn/date=2024-01-01/2024-01-01T00.parquet"
    first, first_sha = spool_file(store, b"first version")
    store.put_file(key, first, first_sha)
    second, second_sha = spool_file(store, b"second, longer version")
    info = store.put_file(key, second, second_sha)
    gone = (False, False)
    assert gone == (first.exists(), second.exists())
    assert (key, len(b"second, longer version")) == (info.key, info.size)
    assert (b"second, longer version", info.etag) == store.get_bytes(key)
    assert info == store.head(key)


def test_put_bytes_round_trip(store: Store) -> None:
    """put_bytes, get_bytes and head agree on bytes, size and etag."""
    etag = store.put_bytes("_manifest/journal/a.json", b'{"a": 1}')
    assert (b'{"a": 1}', etag) == store.get_bytes("_manifest/journal/a.json")
    head = store.head("_manifest/journal/a.json")
    assert head is not None
    assert ("_manifest/journal/a.json", 8, etag) == (head.key, head.size, head.etag)


def test_missing_object_is_none_and_delete_is_quiet(store: Store) -> None:
    """A missing key reads as None, and deleting it is no error."""
    store.delete("nothing/here.json")
    expected = (None, None)
    assert expected == (store.get_bytes("nothing/here.json"), store.head("nothing/here.json"))


def test_delete_removes_object(store: Store) -> None:
    """After delete the object is gone."""
    store.put_bytes("a/b.json", b"x")
    store.delete("a/b.json")
    assert None is store.get_bytes("a/b.json")


def test_download_copies_object(store: Store, tmp_path: Path) -> None:
    """download writes the object's bytes into the given file."""
    store.put_bytes("pstn/x.parquet", b"parquet bytes")
    target = tmp_path / "copy"
    store.download("pstn/x.parquet", target)
    expected = b"parquet bytes"
    assert expected == target.read_bytes()


def test_download_missing_object_fails_the_window(store: Store, tmp_path: Path) -> None:
    """download of a missing key raises WindowError naming the key."""
    with pytest.raises(WindowError, match=r"pstn/missing\.parquet: download failed"):
        store.download("pstn/missing.parquet", tmp_path / "copy")


def test_etag_changes_when_content_changes(store: Store) -> None:
    """Each write of new content gives a new etag, and reads report the current one."""
    etags = [store.put_bytes("k.json", data) for data in (b"1", b"2", b"3")]
    expected = 3
    assert expected == len(set(etags))
    assert (b"3", etags[-1]) == store.get_bytes("k.json")


def test_put_if_absent_creates_only_once(store: Store) -> None:
    """The first conditional create wins; the second returns None and changes nothing."""
    etag = store.put_bytes_if_absent("_manifest/settings.json", b"first")
    assert etag is not None
    assert None is store.put_bytes_if_absent("_manifest/settings.json", b"second")
    assert (b"first", etag) == store.get_bytes("_manifest/settings.json")


def test_put_if_match_with_current_etag_replaces(store: Store) -> None:
    """A write conditional on the current etag succeeds and returns the new etag."""
    etag = store.put_bytes("_manifest/snapshot.json.gz", b"v1")
    new_etag = store.put_bytes_if_match("_manifest/snapshot.json.gz", b"v2", etag)
    assert new_etag is not None
    assert (b"v2", new_etag) == store.get_bytes("_manifest/snapshot.json.gz")


def test_put_if_match_with_stale_etag_is_refused(store: Store) -> None:
    """A write conditional on an old etag returns None and leaves the object alone."""
    old = store.put_bytes("_manifest/snapshot.json.gz", b"v1")
    current = store.put_bytes("_manifest/snapshot.json.gz", b"v2")
    assert None is store.put_bytes_if_match("_manifest/snapshot.json.gz", b"v3", old)
    assert (b"v2", current) == store.get_bytes("_manifest/snapshot.json.gz")


def test_put_if_match_after_another_writers_update_is_refused(destination: str) -> None:
    """When another worker updated the object first, our conditional write returns None."""
    ours, theirs = open_store(destination), open_store(destination)
    ours.check()
    etag = ours.put_bytes("_manifest/snapshot.json.gz", b"base")
    their_etag = theirs.put_bytes_if_match("_manifest/snapshot.json.gz", b"theirs", etag)
    assert their_etag is not None
    assert None is ours.put_bytes_if_match("_manifest/snapshot.json.gz", b"ours", etag)
    assert (b"theirs", their_etag) == ours.get_bytes("_manifest/snapshot.json.gz")


def test_put_if_match_on_missing_object_is_refused(store: Store) -> None:
    """A write conditional on an etag of an object that is gone returns None."""
    etag = store.put_bytes("k.json", b"v1")
    store.delete("k.json")
    assert None is store.put_bytes_if_match("k.json", b"v2", etag)
    assert None is store.get_bytes("k.json")


def test_list_is_sorted_recursive_and_prefix_filtered(store: Store) -> None:
    """list yields every object under a prefix, at any depth, sorted by key."""
    keys = [
        "pstn/date=2024-01-02/2024-01-02T00.parquet",
        "pstn/date=2024-01-01/2024-01-01T06.parquet",
        "pstn/date=2024-01-01/2024-01-01T00.parquet",
        "pstn/date=2024-01-10/2024-01-10T00.parquet",
        "direct_routing/date=2024-01-01/2024-01-01T00.parquet",
        "pstn-other/x.parquet",
        "_manifest/journal/1.json",
    ]
    for key in random.sample(keys, len(keys)):
        store.put_bytes(key, key.encode())
    assert sorted(keys) == [info.key for info in store.list()]
    assert sorted(k for k in keys if k.startswith("pstn/")) == [
        info.key for info in store.list("pstn/")
    ]
    expected = [
        "pstn/date=2024-01-01/2024-01-01T00.parquet",
        "pstn/date=2024-01-01/2024-01-01T06.parquet",
        "pstn/date=2024-01-02/2024-01-02T00.parquet",
    ]
    assert expected == [info.key for info in store.list("pstn/date=2024-01-0")]
    nothing: list[ObjectInfo] = []
    assert nothing == list(store.list("nothing/"))


def test_list_reports_what_head_reports(store: Store) -> None:
    """Each listed object's key and size are those head() gives; its etag too where the
    listing carries one (S3), never a wrong one."""
    store.put_bytes("a/1.json", b"one")
    store.put_bytes("a/2.json", b"two!")
    expected = [store.head("a/1.json"), store.head("a/2.json")]
    listed = list(store.list("a/"))
    assert [(i.key, i.size) for i in expected if i] == [(i.key, i.size) for i in listed]
    for head, info in zip(expected, listed, strict=True):
        assert info.etag in (None, head.etag if head else None)


def test_list_skips_spool_files(store: Store) -> None:
    """Files waiting in the spool are not objects yet."""
    spool_file(store, b"half written")
    store.put_bytes("pstn/a.parquet", b"done")
    expected = ["pstn/a.parquet"]
    assert expected == [info.key for info in store.list()]


def test_bad_keys_are_refused(store: Store) -> None:
    """Keys with empty, '.' or '..' segments or a leading slash are a programming error."""
    for key in ("", "/a", "a//b", "a/../b", "a/", ".hidden"):
        with pytest.raises(ValueError, match="bad object key"):
            store.put_bytes(key, b"x")


def test_store_is_usable_from_threads(store: Store) -> None:
    """Several threads may write and read through one store at once."""
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            etag = store.put_bytes(f"t/{n}.json", str(n).encode())
            assert (str(n).encode(), etag) == store.get_bytes(f"t/{n}.json")
        except BaseException as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    no_errors: list[BaseException] = []
    assert no_errors == errors
    assert [f"t/{n}.json" for n in range(8)] == [info.key for info in store.list("t/")]


# ------------------------------------------------------------------- open_store


@pytest.mark.parametrize(
    ("destination", "description"),
    [
        ("s3://bkt", "s3://bkt"),
        ("s3://bkt/", "s3://bkt"),
        ("s3://bkt/archive/", "s3://bkt/archive"),
        ("s3://bkt//a//b", "s3://bkt/a/b"),
        ("S3://bkt/x", "s3://bkt/x"),
    ],
)
def test_open_store_parses_s3_destinations(destination: str, description: str) -> None:
    """s3:// destinations become an S3Store with a clean prefix."""
    store = open_store(destination)
    assert (S3Store, description) == (type(store), store.description)


def test_open_store_resolves_local_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Anything that is not a URL is a folder, made absolute."""
    monkeypatch.chdir(tmp_path)
    store = open_store("./archive")
    assert (LocalStore, str(tmp_path / "archive")) == (type(store), store.description)


@pytest.mark.parametrize(
    ("destination", "message"),
    [
        ("s3://", "destination s3://: no bucket name (expected s3://bucket or s3://bucket/prefix)"),
        (
            "s3:///x",
            "destination s3:///x: no bucket name (expected s3://bucket or s3://bucket/prefix)",
        ),
        (
            "gs://bkt/x",
            "destination gs://bkt/x: unsupported scheme gs:// "
            "(expected a folder or s3://bucket/prefix)",
        ),
        ("s3://bkt/../x", "destination s3://bkt/../x: '.' and '..' are not allowed in the prefix"),
        ("", "destination: empty (expected a folder or s3://bucket/prefix)"),
    ],
)
def test_open_store_refuses_bad_destinations(destination: str, message: str) -> None:
    """Malformed destinations are a usage error with one clear line."""
    with pytest.raises(UsageError) as caught:
        open_store(destination)
    assert message == str(caught.value)


def test_local_destination_refuses_s3_options(tmp_path: Path) -> None:
    """Asking for SSE or Object Lock on a local folder is a usage error, not silently ignored."""
    with pytest.raises(UsageError) as caught:
        open_store(str(tmp_path), StoreOptions(object_lock_mode="COMPLIANCE", object_lock_days=7))
    expected = f"destination {tmp_path}: sse and object lock apply only to an s3:// destination"
    assert expected == str(caught.value)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"sse": "aes256"}, "sse: expected AES256 or aws:kms, not 'aes256'"),
        ({"sse_kms_key_id": "k"}, "sse_kms_key_id: needs sse = aws:kms"),
        (
            {"object_lock_mode": "LEGAL", "object_lock_days": 1},
            "object_lock_mode: expected GOVERNANCE or COMPLIANCE, not 'LEGAL'",
        ),
        (
            {"object_lock_mode": "GOVERNANCE"},
            "object_lock_mode and object_lock_days must be set together",
        ),
        (
            {"object_lock_mode": "GOVERNANCE", "object_lock_days": 0},
            "object_lock_days: expected a positive number, not 0",
        ),
    ],
)
def test_store_options_refuse_bad_values(options: dict[str, Any], message: str) -> None:
    """Bad SSE or Object Lock settings are a usage error naming the key."""
    with pytest.raises(UsageError) as caught:
        StoreOptions(**options)
    assert message == str(caught.value)


# ----------------------------------------------------------------- local folder


def test_local_check_creates_the_folder(tmp_path: Path) -> None:
    """check() creates a missing destination folder, parents included, and leaves it empty."""
    root = tmp_path / "a" / "b" / "archive"
    LocalStore(root).check()
    empty_folder: tuple[bool, list[Path]] = (True, [])
    assert empty_folder == (root.is_dir(), list(root.iterdir()))


def test_local_check_refuses_folder_under_a_file(tmp_path: Path) -> None:
    """A destination whose parent is a file cannot be created: one-line usage error."""
    (tmp_path / "file").write_text("x")
    root = tmp_path / "file" / "archive"
    with pytest.raises(UsageError) as caught:
        LocalStore(root).check()
    assert f"destination {root}: cannot create the folder (Not a directory)" == str(caught.value)


def test_local_check_refuses_a_file(tmp_path: Path) -> None:
    """A destination that is a file is a usage error."""
    root = tmp_path / "archive"
    root.write_text("x")
    with pytest.raises(UsageError) as caught:
        LocalStore(root).check()
    assert f"destination {root}: exists and is not a folder" == str(caught.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_local_check_refuses_unwritable_folder(tmp_path: Path) -> None:
    """A folder the process may not write to is a usage error."""
    root = tmp_path / "archive"
    root.mkdir(mode=0o555)
    try:
        with pytest.raises(UsageError) as caught:
            LocalStore(root).check()
    finally:
        root.chmod(0o755)
    assert f"destination {root}: cannot write to the folder (Permission denied)" == str(
        caught.value
    )


def test_local_spool_is_inside_the_destination(tmp_path: Path) -> None:
    """The local spool lives under _manifest/, on the same filesystem, so put_file renames."""
    store = LocalStore(tmp_path / "archive")
    store.check()
    assert tmp_path / "archive" / "_manifest" / "spool" == store.spool_dir()


def test_local_etag_is_the_content_sha256(tmp_path: Path) -> None:
    """A local object's etag is the SHA-256 hex of its bytes (and checksum its base64)."""
    store = LocalStore(tmp_path)
    etag = store.put_bytes("k.json", b"content")
    assert ObjectInfo(
        "k.json", 7, hashlib.sha256(b"content").hexdigest(), b64_sha256(b"content")
    ) == (store.head("k.json"))
    assert hashlib.sha256(b"content").hexdigest() == etag


def test_local_writes_leave_no_temp_files(tmp_path: Path) -> None:
    """After writes of every kind only the objects (and the lock file) are in the folder."""
    store = LocalStore(tmp_path / "archive")
    store.check()
    store.put_bytes("a/1.json", b"1")
    store.put_bytes_if_absent("a/2.json", b"2")
    store.put_bytes_if_absent("a/2.json", b"2 again")
    etag = store.put_bytes("a/3.json", b"3")
    store.put_bytes_if_match("a/3.json", b"3b", etag)
    store.put_bytes_if_match("a/3.json", b"3c", etag)
    path, sha = spool_file(store, b"data")
    store.put_file("pstn/x.parquet", path, sha)
    found = sorted(
        p.relative_to(tmp_path / "archive").as_posix()
        for p in (tmp_path / "archive").rglob("*")
        if p.is_file()
    )
    expected = ["_manifest/.lock", "a/1.json", "a/2.json", "a/3.json", "pstn/x.parquet"]
    assert expected == found


def test_local_list_skips_temp_files(tmp_path: Path) -> None:
    """Temp files a crashed writer left (dot-files) are not listed."""
    store = LocalStore(tmp_path)
    store.put_bytes("pstn/a.parquet", b"a")
    (tmp_path / "pstn" / ".a.parquet.0123.tmp").write_bytes(b"partial")
    expected = ["pstn/a.parquet"]
    assert expected == [info.key for info in store.list()]


def test_local_put_file_refuses_wrong_digest(tmp_path: Path) -> None:
    """put_file verifies the digest: a mismatch fails the window and writes nothing."""
    store = LocalStore(tmp_path)
    path, _ = spool_file(store, b"data")
    with pytest.raises(WindowError, match="checksum mismatch"):
        store.put_file("pstn/x.parquet", path, "00" * 32)
    expected = (False, None)
    assert expected == (path.exists(), store.head("pstn/x.parquet"))


def test_local_write_error_fails_the_window(tmp_path: Path) -> None:
    """An OS error while writing is a WindowError naming the file."""
    store = LocalStore(tmp_path)
    (tmp_path / "a").write_text("a file where a folder should be")
    with pytest.raises(WindowError) as caught:
        store.put_bytes("a/b.json", b"x")
    assert f"{tmp_path / 'a' / 'b.json'}: write failed: Not a directory" == str(caught.value)


def test_local_conditional_writes_lose_no_update(tmp_path: Path) -> None:
    """Threads doing read / compare-and-swap increments never lose one another's updates."""
    expected = b"120"
    assert expected == count_up_concurrently(LocalStore(tmp_path), threads=6, each=20)


# ------------------------------------------------------------------------- S3


def test_s3_keys_are_prefix_slash_key(s3_destination: str) -> None:
    """Objects land at `<prefix>/<key>`, with no leading or doubled slashes."""
    open_store(s3_destination + "/").put_bytes("pstn/a.parquet", b"a")
    open_store(s3_destination.split("/archive")[0]).put_bytes("top.json", b"t")
    listed = raw_client().list_objects_v2(Bucket=bucket_of(s3_destination))["Contents"]
    expected = ["archive/pstn/a.parquet", "top.json"]
    assert expected == [item["Key"] for item in listed]


def test_s3_list_ignores_neighbours_and_folder_markers(s3_destination: str) -> None:
    """list stays inside the prefix and skips console "folder" placeholder objects."""
    client, bucket = raw_client(), bucket_of(s3_destination)
    for key in ("archive2/x.parquet", "other/y.parquet", "archive/pstn/", "archive/pstn/a.parquet"):
        client.put_object(Bucket=bucket, Key=key, Body=b"x")
    expected = ["pstn/a.parquet"]
    assert expected == [info.key for info in open_store(s3_destination).list()]


@pytest.mark.slow
def test_s3_list_pages_through_many_objects(s3_destination: str) -> None:
    """list follows continuation tokens past S3's 1,000-key pages."""
    client, bucket = raw_client(), bucket_of(s3_destination)
    keys = [f"j/{n:05d}.json" for n in range(1005)]
    with ThreadPoolExecutor(16) as pool:
        for key in keys:
            pool.submit(client.put_object, Bucket=bucket, Key=f"archive/{key}", Body=b"")
    assert keys == [info.key for info in open_store(s3_destination).list("j/")]


def test_s3_put_file_stores_sha256_checksum(s3_destination: str) -> None:
    """Data objects carry the file's SHA-256 as S3's checksum, and head() reports it."""
    store = open_store(s3_destination)
    path, sha = spool_file(store, b"parquet bytes")
    info = store.put_file("pstn/x.parquet", path, sha)
    answer = raw_client().head_object(
        Bucket=bucket_of(s3_destination), Key="archive/pstn/x.parquet", ChecksumMode="ENABLED"
    )
    assert b64_sha256(b"parquet bytes") == answer["ChecksumSHA256"]
    assert b64_sha256(b"parquet bytes") == info.checksum_sha256
    assert info == store.head("pstn/x.parquet")


def test_s3_large_file_goes_up_in_parts(s3_destination: str, tmp_path: Path) -> None:
    """Files above the single-put limit are uploaded in parts and read back whole."""
    store = S3Store(
        bucket_of(s3_destination),
        "archive",
        StoreOptions(sse="AES256"),
        single_put_limit=5 * MiB,
        part_size=5 * MiB,
    )
    data = random.randbytes(11 * MiB)
    path, sha = spool_file(store, data)
    info = store.put_file("pstn/big.parquet", path, sha)
    store.download("pstn/big.parquet", tmp_path / "copy")
    answer = raw_client().head_object(Bucket=store.bucket, Key="archive/pstn/big.parquet")
    assert (False, 11 * MiB, None) == (path.exists(), info.size, info.checksum_sha256)
    expected = ('-3"', "AES256")  # an ETag of 3 parts
    assert expected == ((info.etag or "")[-3:], answer["ServerSideEncryption"])
    assert data == (tmp_path / "copy").read_bytes()


def test_s3_sse_applies_to_every_write(s3_destination: str) -> None:
    """SSE settings go with data objects and manifest objects alike."""
    options = StoreOptions(sse="aws:kms", sse_kms_key_id="alias/archive")
    store = open_store(s3_destination, options)
    path, sha = spool_file(store, b"data")
    store.put_file("pstn/x.parquet", path, sha)
    store.put_bytes("_manifest/a.json", b"1")
    store.put_bytes_if_absent("_manifest/b.json", b"2")
    client, bucket = raw_client(), bucket_of(s3_destination)
    found = [
        (answer["ServerSideEncryption"], answer["SSEKMSKeyId"])
        for key in ("pstn/x.parquet", "_manifest/a.json", "_manifest/b.json")
        for answer in [client.head_object(Bucket=bucket, Key=f"archive/{key}")]
    ]
    expected = [("aws:kms", "alias/archive")] * 3
    assert expected == found


@pytest.mark.parametrize("mode", ["GOVERNANCE", "COMPLIANCE"])
def test_s3_object_lock_retains_data_objects(s3_locked_destination: str, mode: str) -> None:
    """On a locked bucket data objects get retention, and their version cannot be deleted."""
    store = open_store(
        s3_locked_destination, StoreOptions(object_lock_mode=mode, object_lock_days=3)
    )
    store.check()
    path, sha = spool_file(store, b"data")
    store.put_file("pstn/x.parquet", path, sha)
    store.put_bytes("_manifest/a.json", b"manifest")
    client, bucket = raw_client(), bucket_of(s3_locked_destination)
    answer = client.head_object(Bucket=bucket, Key="archive/pstn/x.parquet")
    until = answer["ObjectLockRetainUntilDate"] - (datetime.now(UTC) + timedelta(days=3))
    assert (mode, True) == (answer["ObjectLockMode"], abs(until) < timedelta(minutes=5))
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        client.delete_object(
            Bucket=bucket, Key="archive/pstn/x.parquet", VersionId=answer["VersionId"]
        )
    expected = "AccessDenied"
    assert expected == caught.value.response["Error"]["Code"]
    manifest = client.head_object(Bucket=bucket, Key="archive/_manifest/a.json")
    assert None is manifest.get("ObjectLockMode")


def test_s3_check_accepts_a_good_bucket(s3_destination: str) -> None:
    """check() passes on an existing bucket and writes nothing."""
    open_store(s3_destination).check()
    expected = 0
    assert expected == raw_client().list_objects_v2(Bucket=bucket_of(s3_destination))["KeyCount"]


def test_s3_check_refuses_missing_bucket(s3_env: str) -> None:
    """A bucket that does not exist is a one-line usage error."""
    with pytest.raises(UsageError) as caught:
        open_store("s3://no-such-bucket-here/archive").check()
    expected = (
        "destination s3://no-such-bucket-here/archive: bucket 'no-such-bucket-here' does not exist"
    )
    assert expected == str(caught.value)


def test_s3_check_refuses_unreachable_endpoint(
    s3_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An endpoint where nothing listens is a one-line usage error naming it."""
    port = free_port()  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{port}")
    with pytest.raises(UsageError) as caught:
        open_store("s3://bkt/archive").check()
    expected = (
        f"destination s3://bkt/archive: cannot reach the S3 endpoint http://127.0.0.1:{port}: "
        "Connection refused"
    )
    assert expected == str(caught.value)


def test_s3_check_without_credentials(
    s3_env: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No credentials anywhere in the chain is a usage error that says where to set them."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(UsageError) as caught:
        open_store("s3://bkt/archive").check()
    expected = (
        "destination s3://bkt/archive: no AWS credentials found (set AWS_PROFILE or "
        "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or use an instance role)"
    )
    assert expected == str(caught.value)


@pytest.mark.parametrize("mode", ["COMPLIANCE", "GOVERNANCE"])
def test_s3_check_refuses_object_lock_on_unlocked_bucket(
    any_s3_destination: str, mode: str
) -> None:
    """Asking for Object Lock on a bucket without it is a usage error that says so; moto and
    SeaweedFS both answer an unlocked bucket's lock configuration as AWS does."""
    options = StoreOptions(object_lock_mode=mode, object_lock_days=365)
    with pytest.raises(UsageError) as caught:
        open_store(any_s3_destination, options).check()
    bucket = bucket_of(any_s3_destination)
    expected = (
        f"destination {any_s3_destination}: object_lock_mode is {mode} but bucket "
        f"'{bucket}' does not have Object Lock enabled"
    )
    assert expected == str(caught.value)


def test_s3_missing_bucket_later_fails_the_window(s3_env: str) -> None:
    """After check(), an S3 refusal is a WindowError naming the object."""
    with pytest.raises(WindowError) as caught:
        open_store("s3://no-such-bucket-here/archive").put_bytes("a.json", b"x")
    expected = (
        "s3://no-such-bucket-here/archive/a.json: write failed: NoSuchBucket (404): "
        "The specified bucket does not exist"
    )
    assert (False, expected) == (isinstance(caught.value, RetryableError), str(caught.value))


@pytest.mark.parametrize(
    "call",
    [
        lambda store: store.put_bytes("a.json", b"x"),
        lambda store: store.get_bytes("a.json"),
        lambda store: list(store.list()),
    ],
)
def test_s3_unreachable_endpoint_later_is_retryable(
    s3_env: str, monkeypatch: pytest.MonkeyPatch, call: Callable[[Store], object]
) -> None:
    """Connection trouble after boto's own retries is a RetryableError naming the object."""
    port = free_port()  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{port}")
    with pytest.raises(RetryableError, match=r"^s3://bkt/archive/\S*: \w+ failed: cannot reach "):
        call(open_store("s3://bkt/archive"))


def test_s3_spool_is_a_private_temp_folder(s3_destination: str) -> None:
    """The S3 spool is one local temp folder per store, the same on every call."""
    store = open_store(s3_destination)
    assert (True, store.spool_dir()) == (store.spool_dir().is_dir(), store.spool_dir())


def test_clean_environ_clears_cloud_variables() -> None:
    """No ARCHIVER_*, AWS_* or AZURE_* variable from the developer's shell reaches a test."""
    none: list[str] = []
    assert none == [n for n in os.environ if n.startswith(("ARCHIVER_", "AWS_", "AZURE_"))]

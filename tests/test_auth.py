"""Tokens through TokenProvider from the emulator: certificate, federated token, CA bundle,
and no secret in reprs, errors or logs."""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from helpers import certificate_pem

from archiver.config import load
from archiver.emulator import Emulator
from archiver.errors import StopRun, UsageError
from archiver.graph.auth import TokenProvider
from archiver.log import JsonFormatter

SECRET = "wrong-but-secret-value-0xC0FFEE"
FEDERATED_A = "federated-token-A-eyJhbGciOi"
FEDERATED_B = "federated-token-B-eyJhbGciOi"


class Certificate:
    """A self-signed RSA certificate with its key, as PEM."""

    def __init__(self, name: str) -> None:
        self.cert_pem, self.key_pem = certificate_pem(name)
        self.cert = x509.load_pem_x509_certificate(self.cert_pem)


@pytest.fixture(scope="module")
def app_certificate() -> Certificate:
    """The app's certificate, registered with the (emulated) directory in the tests that say so."""
    return Certificate("archiver test app")


def authority_env(emu: Emulator) -> dict[str, str]:
    """Tenant, client, hosts and trust for the emulator; no credential."""
    return {
        "ARCHIVER_TENANT_ID": emu.config.tenant_id,
        "ARCHIVER_CLIENT_ID": emu.config.client_id,
        "ARCHIVER_AUTHORITY_HOST": emu.url,
        "ARCHIVER_GRAPH_URL": emu.url,
        "ARCHIVER_CA_BUNDLE": str(emu.ca_file),
    }


def token_statuses(emu: Emulator) -> list[int]:
    """The statuses of the token requests the emulator answered, in order."""
    return [r.status for r in emu.requests if r.endpoint == "token"]


@pytest.fixture
def sent_forms(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, str]]:
    """The form bodies of the requests MSAL sends (recorded, then sent as usual)."""
    forms: list[dict[str, str]] = []
    original = requests.Session.request

    def request(self: requests.Session, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        if isinstance(kwargs.get("data"), dict):
            data = kwargs["data"].items()
            forms.append({k: v.decode() if isinstance(v, bytes) else str(v) for k, v in data})
        return original(self, method, url, *args, **kwargs)

    monkeypatch.setattr(requests.Session, "request", request)
    return forms


def jwt_header(assertion: str) -> dict[str, Any]:
    """The decoded header of a compact JWT."""
    head = assertion.split(".")[0]
    return dict(json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4))))


@pytest.mark.parametrize("order", ["key, then certificate", "certificate, then key"])
def test_client_certificate_signs_a_ps256_assertion(
    emulator: Emulator,
    app_certificate: Certificate,
    sent_forms: list[dict[str, str]],
    tmp_path: Path,
    order: str,
) -> None:
    """A PEM holding the key and the certificate (either order) gets a token with a PS256
    assertion whose x5t#S256 is the certificate's padded base64url SHA-256 thumbprint."""
    parts = [app_certificate.key_pem, app_certificate.cert_pem]
    pem = tmp_path / "app.pem"
    pem.write_bytes(b"".join(parts if order.startswith("key") else parts[::-1]))
    emulator.config.trusted_certificates = [app_certificate.cert_pem]
    config = load({}, authority_env(emulator) | {"ARCHIVER_CLIENT_CERTIFICATE": str(pem)})
    token = anyio.run(TokenProvider(config).token)
    assert emulator.state.token_valid(token.value)
    assert [200] == token_statuses(emulator)
    [form] = [f for f in sent_forms if "client_assertion" in f]
    assert "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" == form["client_assertion_type"]
    assert "client_secret" not in form
    header = jwt_header(form["client_assertion"])
    thumbprint = base64.urlsafe_b64encode(app_certificate.cert.fingerprint(hashes.SHA256()))
    assert ("PS256", thumbprint.decode()) == (header["alg"], header["x5t#S256"])
    assert "x5t" not in header


def test_untrusted_certificate_stops_the_run_naming_the_cause(
    emulator: Emulator, app_certificate: Certificate, tmp_path: Path
) -> None:
    """A certificate the directory does not know is refused: StopRun with AADSTS700027."""
    pem = tmp_path / "app.pem"
    pem.write_bytes(app_certificate.key_pem + app_certificate.cert_pem)
    emulator.config.trusted_certificates = [Certificate("someone else").cert_pem]
    config = load({}, authority_env(emulator) | {"ARCHIVER_CLIENT_CERTIFICATE": str(pem)})
    with pytest.raises(StopRun) as caught:
        anyio.run(TokenProvider(config).token)
    assert str(caught.value).startswith(
        "token request refused: invalid_client: AADSTS700027: "
        "Client assertion failed signature validation."
    )


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("certificate only", "must hold both the certificate and its private key (PEM)"),
        ("encrypted key", "the private key is encrypted: store it unencrypted"),
        ("another certificate", "the (first) certificate does not belong to the private key"),
    ],
)
def test_unusable_certificate_file_is_a_usage_error(
    emulator: Emulator, app_certificate: Certificate, tmp_path: Path, content: str, why: str
) -> None:
    """A PEM without a key, with an encrypted key or with another key's certificate is
    refused in one line before any request (MSAL would fail later, with a bare TypeError)."""
    key = app_certificate.key_pem
    cert = app_certificate.cert_pem
    if content == "certificate only":
        key = b""
    elif content == "encrypted key":
        key = serialization.load_pem_private_key(key, password=None).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    else:
        cert = Certificate("someone else").cert_pem
    pem = tmp_path / "app.pem"
    pem.write_bytes(key + cert)
    config = load({}, authority_env(emulator) | {"ARCHIVER_CLIENT_CERTIFICATE": str(pem)})
    with pytest.raises(UsageError) as caught:
        TokenProvider(config)
    assert f"configuration: client_certificate {pem}: {why}" == str(caught.value)
    assert [] == emulator.requests


def test_federated_token_file_is_read_again_after_rotation(
    emulator: Emulator, tmp_path: Path
) -> None:
    """With AKS workload identity's variables, the token file is re-read when a fresh token
    is needed, so a rotated file keeps working."""
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text(FEDERATED_A + "\n")
    emulator.config.federated_tokens = [FEDERATED_A]
    env = {
        "AZURE_FEDERATED_TOKEN_FILE": str(token_file),
        "AZURE_CLIENT_ID": emulator.config.client_id,
        "AZURE_TENANT_ID": emulator.config.tenant_id,
        "AZURE_AUTHORITY_HOST": emulator.url,
        "ARCHIVER_GRAPH_URL": emulator.url,
        "ARCHIVER_CA_BUNDLE": str(emulator.ca_file),
    }
    provider = TokenProvider(load({}, env))
    assert [] == emulator.requests  # MSAL's app is built later, in a worker thread
    first = anyio.run(provider.token)
    assert emulator.state.token_valid(first.value)

    # the kubelet writes the new token beside the old one and swaps it in atomically
    rotated = tmp_path / "azure-identity-token.new"
    rotated.write_text(FEDERATED_B + "\n")
    os.replace(rotated, token_file)
    emulator.config.federated_tokens = [FEDERATED_B]
    assert first.value == anyio.run(provider.token).value  # still cached: no request
    assert [200] == token_statuses(emulator)

    provider.invalidate(first)  # Graph answered 401
    second = anyio.run(provider.token)
    assert first.value != second.value
    assert emulator.state.token_valid(second.value)
    assert [200, 200] == token_statuses(emulator)


def test_ca_bundle_wins_over_requests_ca_bundle_and_ssl_cert_file(
    emulator: Emulator,
    app_certificate: Certificate,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """ARCHIVER_CA_BUNDLE is what the token endpoint is verified with, although
    REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE and SSL_CERT_FILE name a bundle that does not
    trust the emulator (without it, that bundle is used and the connection fails)."""
    unrelated = tmp_path / "unrelated-ca.pem"
    unrelated.write_bytes(app_certificate.cert_pem)
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.setenv(name, str(unrelated))
    env = authority_env(emulator) | {"ARCHIVER_CLIENT_SECRET": emulator.config.client_secret}

    without = {k: v for k, v in env.items() if k != "ARCHIVER_CA_BUNDLE"}
    with pytest.raises(UsageError) as caught:
        anyio.run(TokenProvider(load({}, without)).token)
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)

    token = anyio.run(TokenProvider(load({}, env)).token)
    assert emulator.state.token_valid(token.value)
    assert [200] == token_statuses(emulator)


class _Collect(logging.Handler):
    """Keeps every record it is handed, formatted as JSON lines with their fields."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def every_log_line() -> Iterator[list[str]]:
    """Every log line at DEBUG and above, from every logger (archiver's does not propagate)."""
    handler = _Collect()
    loggers = [logging.getLogger(), logging.getLogger("archiver")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    try:
        yield handler.lines
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


def test_no_secret_in_repr_errors_or_logs(
    emulator: Emulator, every_log_line: list[str], tmp_path: Path
) -> None:
    """A refused client secret or federated token appears neither in repr(Config), nor in
    the error, nor in any log line; nor does the access token of a successful request."""
    token_file = tmp_path / "token"
    token_file.write_text(FEDERATED_B)
    emulator.config.federated_tokens = [FEDERATED_A]
    base = authority_env(emulator)
    for credential in (
        {"ARCHIVER_CLIENT_SECRET": SECRET},
        {"AZURE_FEDERATED_TOKEN_FILE": str(token_file)},
    ):
        config = load({}, base | credential)
        with pytest.raises(StopRun) as caught:
            anyio.run(TokenProvider(config).token)
        assert str(caught.value).startswith("token request refused: invalid_client: AADSTS")
        shown = [repr(config), str(config), str(caught.value), repr(caught.value)]
        assert [] == [text for text in shown if SECRET in text or FEDERATED_B in text]

    good = load({}, base | {"ARCHIVER_CLIENT_SECRET": emulator.config.client_secret})
    access_token = anyio.run(TokenProvider(good).token).value
    assert [401, 401, 200] == token_statuses(emulator)
    assert any("oauth2/v2.0/token" in line for line in every_log_line)  # the logs were seen
    secrets = (SECRET, FEDERATED_B, emulator.config.client_secret, access_token)
    leaks = [line for line in every_log_line if any(s in line for s in secrets)]
    assert [] == leaks

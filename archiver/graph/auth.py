"""Bearer tokens for Graph from MSAL (client secret, certificate or federated token).

MSAL blocks, so every call runs in a worker thread — building its app too, which
fetches the authority's OIDC document. MSAL caches the token itself and refreshes it
about five minutes before it expires (a token that lives less than that is fetched
anew each time). A token knows when it runs out, so the Graph client can tell a 401
for a token that expired while its request queued (take a fresh one: no failure)
from a 401 for a fresh token (refuse after one refresh). `invalidate()` drops the
cache after a 401, lazily: the next `token()` — taken after the request's pacing
slot, never before a wait — fetches anew. msal and requests exceptions are
translated here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import msal
import requests

from archiver.config import Config
from archiver.errors import RetryableError, StopRun, UsageError

MICROSOFT_LOGIN_HOSTS = frozenset(
    {
        "login.microsoftonline.com",
        "login.microsoftonline.us",
        "login.chinacloudapi.cn",
        "login.microsoft.com",
        "login.windows.net",
        "sts.windows.net",
    }
)


class _VerifyingSession(requests.Session):
    """A requests session whose CA bundle wins over REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE.

    requests lets those variables override `session.verify` unless each request
    passes `verify=` itself; passing it here keeps proxy settings from the
    environment (HTTPS_PROXY, NO_PROXY) working as before.
    """

    def __init__(self, ca_bundle: Path) -> None:
        super().__init__()
        self._ca_bundle = str(ca_bundle)

    def request(self, method: str, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("verify", self._ca_bundle)
        return super().request(method, url, *args, **kwargs)


def _credential(config: Config) -> Any:
    """MSAL's client_credential for whichever credential is configured."""
    if config.client_secret:
        return config.client_secret
    if config.client_certificate:
        try:
            pem = config.client_certificate.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(
                f"configuration: client_certificate {config.client_certificate}: cannot read: "
                f"{getattr(exc, 'strerror', None) or 'not a PEM text file'}"
            ) from None
        _check_certificate(config.client_certificate, pem)
        # With public_certificate and no thumbprint, MSAL signs PS256 with x5t#S256.
        return {"private_key": pem, "public_certificate": pem}
    token_file = config.federated_token_file
    assert token_file is not None  # Config.require_credentials() ran first

    def assertion() -> str:
        # Re-read on every token request: the kubelet rotates the file.
        return token_file.read_text().strip()

    return {"client_assertion": assertion}


def _check_certificate(path: Path, pem: str) -> None:
    """Raise UsageError unless `pem` holds an unencrypted RSA key and, first, its certificate.

    MSAL would only find out when it signs the first assertion, with a bare TypeError.
    cryptography is imported here, for a certificate only (some 15 MiB a process need not load).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    def refuse(why: str) -> UsageError:
        return UsageError(f"configuration: client_certificate {path}: {why}")

    if "PRIVATE KEY" not in pem or "CERTIFICATE" not in pem:
        raise refuse("must hold both the certificate and its private key (PEM)")
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except TypeError:
        raise refuse("the private key is encrypted: store it unencrypted") from None
    except ValueError:
        raise refuse("the private key cannot be read") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise refuse("the private key is not an RSA key")
    try:
        public = x509.load_pem_x509_certificate(pem.encode()).public_key()
    except ValueError:
        raise refuse("the certificate cannot be read") from None
    if not (
        isinstance(public, rsa.RSAPublicKey)
        and public.public_numbers() == key.public_key().public_numbers()
    ):
        raise refuse("the (first) certificate does not belong to the private key")


EXPIRY_SLACK = 2.0  # seconds: a token this close to its end when sent may be refused as expired


@dataclass(frozen=True)
class Token:
    """A bearer token and when it runs out (wall-clock seconds, by our clock)."""

    value: str = field(repr=False)
    expires_at: float

    def expired_by(self, when: float) -> bool:
        """True when the token had run out (or nearly) at `when`: a 401 is then no failure."""
        return when >= self.expires_at - EXPIRY_SLACK


class TokenProvider:
    """Hands out Graph bearer tokens for one tenant and client."""

    def __init__(self, config: Config) -> None:
        config.require_credentials()
        self._config = config
        self._credential = _credential(config)  # local checks now, before any request
        self._app: msal.ConfidentialClientApplication | None = None  # built in a thread
        self._lock = anyio.Lock()
        self._refused: str | None = None  # a token Graph refused: not to be served again

    async def token(self) -> Token:
        """A valid access token; MSAL serves it from its cache while it is fresh."""
        async with self._lock:  # one thread fetches; the others then hit the cache
            token = await anyio.to_thread.run_sync(self._acquire, False)
            if token.value == self._refused:
                token = await anyio.to_thread.run_sync(self._acquire, True)
            return token

    def invalidate(self, token: Token) -> None:
        """Graph refused `token` (401): the next `token()` fetches a new one."""
        self._refused = token.value

    def _client(self) -> msal.ConfidentialClientApplication:
        """MSAL's app, built on first use: building it fetches the authority's OIDC document."""
        if self._app is None:
            config = self._config
            authority = f"{config.authority_host}/{config.tenant_id}"
            host = urlsplit(config.authority_host).hostname or ""
            http_client = _VerifyingSession(config.ca_bundle) if config.ca_bundle else None
            try:
                self._app = msal.ConfidentialClientApplication(
                    config.client_id,
                    client_credential=self._credential,
                    authority=authority,
                    instance_discovery=host in MICROSOFT_LOGIN_HOSTS,
                    http_client=http_client,
                )
            except ValueError as exc:  # MSAL validates the authority and credential eagerly
                raise UsageError(f"configuration: {exc}") from None
            except requests.RequestException as exc:
                raise UsageError(f"cannot reach the token authority {authority}: {exc}") from None
        return self._app

    def _acquire(self, forget: bool) -> Token:
        """In a worker thread: a token from MSAL's cache or the token endpoint."""
        app = self._client()
        if forget:
            app.remove_tokens_for_client()
        scope = f"{self._config.graph_url}/.default"
        try:
            result = app.acquire_token_for_client(scopes=[scope])
        except requests.RequestException as exc:
            raise RetryableError(f"token endpoint unreachable: {type(exc).__name__}") from None
        except msal.exceptions.MsalServiceError as exc:  # MSAL raises on 5xx answers
            raise RetryableError(f"token endpoint failed: {exc}") from None
        except OSError as exc:  # e.g. the federated token file vanished
            raise StopRun(f"cannot read credential: {exc}") from None
        if "access_token" in result:
            lifetime = float(result.get("expires_in") or 0)
            return Token(str(result["access_token"]), time.time() + lifetime)
        error = result.get("error", "error")
        description = str(result.get("error_description", "")).splitlines()[0:1]
        message = f"token request refused: {error}: {' '.join(description)}".rstrip(": ")
        if error in {"invalid_client", "unauthorized_client", "invalid_request"}:
            raise StopRun(message)
        raise RetryableError(message)

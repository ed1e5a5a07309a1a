"""The Graph emulator: an aiohttp app that plays Entra ID's token endpoint and Graph's
call-log functions, and a runner that serves it over HTTPS from a daemon thread.

Endpoints (any host; the emulator is both the authority and Graph):

    GET  /{tenant}/v2.0/.well-known/openid-configuration     OIDC discovery (what MSAL reads)
    GET  /{tenant}/.well-known/openid-configuration          the v1 spelling, same document
    POST /{tenant}/oauth2/v2.0/token                         client credentials: secret,
                                                             certificate assertion, federated token
    GET  /{version}/communications/callRecords/getPstnCalls(fromDateTime=X,toDateTime=Y)
    GET  /{version}/communications/callRecords/getDirectRoutingCalls(fromDateTime=X,toDateTime=Y)

Each Graph request goes through, in order: log, auth (401), permission (403), rate cap
(429 "cap"), random faults, latency, then parsing and serving.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import email.utils
import json
import math
import random
import re
import secrets
import threading
import time
import urllib.parse
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from archiver.emulator import tls
from archiver.emulator.data import (
    ROW_TYPE,
    TICKS_PER_DAY,
    DataParams,
    Dataset,
    dumps,
    parse_datetime,
    ticks_from_datetime,
)
from archiver.kinds import Kind

FAULT_NAMES = ("throttle", "server_error", "reset", "truncated", "not_json", "no_value")
VERSIONS = ("v1.0", "beta")
PSTN_MAX_DAYS = 90
BUCKET_RETRY_AFTER = 2.0  # seconds: the leaky bucket's Retry-After unless configured
_MAX_RANGE_DAYS = 3660  # the emulator's own guard against walking millennia of days
_JSON_CONTENT_TYPE = (
    "application/json;odata.metadata=minimal;odata.streaming=true;"
    "IEEE754Compatible=false;charset=utf-8"
)
_SERVER_ERRORS = {
    500: ("InternalServerError", "An internal server error occurred."),
    502: ("BadGateway", "The gateway received an invalid response."),
    503: ("ServiceUnavailable", "The service is temporarily unavailable."),
    504: ("GatewayTimeout", "The gateway timed out."),
}
_FUNCTIONS = {"getPstnCalls": Kind.PSTN, "getDirectRoutingCalls": Kind.DIRECT_ROUTING}
_FUNCTION = re.compile(
    r"(?P<name>(?:microsoft\.graph\.callRecords\.)?(?P<function>[A-Za-z]+))\((?P<args>[^()]*)\)"
)
_DISCOVERY = re.compile(r"/([^/]+)(?:/v2\.0)?/\.well-known/openid-configuration")
_TOKEN = re.compile(r"/([^/]+)/oauth2/v2\.0/token")
_GRAPH = re.compile(r"/([^/]+)/communications/callRecords/([^/]+)")
_JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


# --- configuration and records ---------------------------------------------------------


@dataclass
class Faults:
    """Probabilities, per Graph request, of each misbehaviour; drawn from Random(seed)."""

    throttle: float = 0.0  # 429
    retry_after: str = "seconds"  # for those 429s: "seconds" | "date" | "none" | "mixed"
    retry_after_seconds: float = 1.0
    server_error: float = 0.0  # 500/502/503/504, Graph-style error JSON
    reset: float = 0.0  # connection closed without any response
    truncated: float = 0.0  # 200, full Content-Length, part of the body, connection closed
    not_json: float = 0.0  # 200 with an HTML body
    no_value: float = 0.0  # 200 JSON object without "value"
    seed: int = 0


def _default_rows_per_day() -> dict[Kind, int]:
    return {Kind.PSTN: 2000, Kind.DIRECT_ROUTING: 1500}


@dataclass
class EmulatorConfig:
    """How the emulator behaves; handlers read it per request, so it may change at runtime."""

    tenant_id: str = "emulator-tenant"
    client_id: str = "emulator-client"
    client_secret: str = "emulator-secret"  # noqa: S105 - the emulator's well-known test secret
    rows_per_day: dict[Kind, int] = field(default_factory=_default_rows_per_day)
    page_size: int = 1000
    page_overlap: int = 0  # each page after the first repeats this many rows of the last one
    seed: int = 1
    latency: float = 0.0  # seconds added to every Graph page response
    token_lifetime: int = 3600  # expires_in of issued tokens
    rate_cap_per_minute: int | None = None  # per Kind, per `rate_cap_window`; throttled count too
    rate_cap_window: float = 60.0  # seconds the cap counts over (benchmarks shorten it)
    rate_cap_model: str = "window"  # "window": sliding window; "bucket": leaky bucket (below)
    cap_retry_after: str = "seconds"  # "seconds" | "date" | "none"
    cap_retry_after_seconds: float | None = None  # None: until a slot frees (window), 2 (bucket)
    faults: Faults = field(default_factory=Faults)
    permission: bool = True  # False: every Graph request gets 403
    next_link_host: str | None = None  # scheme+host for nextLinks instead of the request's
    unknown_property_every: int = 97  # every Nth row carries a property no schema knows
    token_outages: int = 0  # the next N token requests answer 503 (each one counts down)
    federated_tokens: list[str] = field(default_factory=list)  # accepted client_assertions
    trusted_certificates: list[bytes] = field(default_factory=list)  # PEM; may sign assertions
    cache_rows: int = 0  # keep the texts of up to this many served rows (read at start)


@dataclass(frozen=True)
class RequestRecord:
    """One request as the emulator saw and answered it."""

    at: float  # time.time() when the request arrived
    method: str
    host: str  # Host header as received
    path_qs: str  # raw path and query
    endpoint: str  # "token" | "discovery" | "graph" | "other"
    kind: Kind | None  # for graph requests naming a known function
    status: int  # status sent; 0 for a reset connection
    authorized: bool  # an Authorization header was present
    fault: str | None  # "throttle", "cap", "server_error", "reset", "truncated", ...
    retry_after: str | None  # Retry-After header sent, if any
    rows: int  # rows in the page served, 0 otherwise


# --- shared state ----------------------------------------------------------------------


class EmulatorState:
    """Everything the handlers share: config, data, issued tokens, request log. Thread-safe."""

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config if config is not None else EmulatorConfig()
        self.dataset = Dataset(cache_rows=self.config.cache_rows)
        self._lock = threading.Lock()
        self._log: list[RequestRecord] = []
        self._tokens: dict[str, float] = {}  # access token -> expiry (time.time())
        self._recent: dict[Kind, deque[float]] = {kind: deque() for kind in Kind}
        self._bucket: dict[Kind, tuple[float, float]] = {kind: (0.0, 0.0) for kind in Kind}
        self._fault_rng = random.Random()
        self._fault_source: Faults | None = None
        self._fault_seed: int | None = None
        self._certificates: dict[bytes, list[x509.Certificate]] = {}

    # request log
    def record(self, record: RequestRecord) -> None:
        """Append one record to the log."""
        with self._lock:
            self._log.append(record)

    def requests(self) -> list[RequestRecord]:
        """A copy of the log."""
        with self._lock:
            return list(self._log)

    def clear_requests(self) -> None:
        """Forget the log."""
        with self._lock:
            self._log.clear()

    # tokens
    def issue_token(self) -> str:
        """A fresh opaque access token valid for `token_lifetime` seconds."""
        now = time.time()
        token = secrets.token_urlsafe(32)
        with self._lock:
            for known, expiry in list(self._tokens.items()):
                if expiry <= now:
                    del self._tokens[known]
            self._tokens[token] = now + self.config.token_lifetime
        return token

    def token_valid(self, token: str) -> bool:
        """True when `token` was issued here and has not expired."""
        with self._lock:
            expiry = self._tokens.get(token)
        return expiry is not None and time.time() < expiry

    def expire_tokens(self) -> None:
        """Make every token issued so far expired (Graph then answers 401)."""
        with self._lock:
            for token in self._tokens:
                self._tokens[token] = 0.0

    # throttling
    def over_cap(self, kind: Kind, now: float) -> float | None:
        """Count a request against the cap; seconds the 429's Retry-After names if it is over,
        else None.

        Two models of Graph's per-function limit, both counting throttled requests too:
        "window" allows `rate_cap_per_minute` requests in any `rate_cap_window` seconds and
        names the time until a slot frees; "bucket" is a leaky bucket that drains at
        `rate_cap_per_minute / rate_cap_window` requests a second and holds one second's
        worth (at least one request), and names a fixed wait (`cap_retry_after_seconds`,
        default 2 s). `now` is any monotonic clock, in seconds.
        """
        config = self.config
        cap = config.rate_cap_per_minute
        if cap is None:
            return None
        if config.rate_cap_model == "bucket":
            return self._over_bucket(kind, now, cap / config.rate_cap_window)
        if config.rate_cap_model != "window":
            raise ValueError(f"unknown rate_cap_model {config.rate_cap_model!r}")
        window = config.rate_cap_window
        with self._lock:
            recent = self._recent[kind]
            while recent and recent[0] <= now - window:
                recent.popleft()
            over = len(recent) >= cap
            recent.append(now)
            if not over:
                return None
            if config.cap_retry_after_seconds is not None:
                return config.cap_retry_after_seconds
            if cap <= 0:
                return window
            # A request passes once at most cap-1 of the logged ones are younger than the window.
            return recent[len(recent) - cap] + window - now

    def _over_bucket(self, kind: Kind, now: float, per_second: float) -> float | None:
        """The leaky bucket: every request pours one in; over the brim it is answered 429."""
        depth = max(1.0, per_second)  # one second of burst
        wait = self.config.cap_retry_after_seconds
        with self._lock:
            level, then = self._bucket[kind]
            level = max(0.0, level - (now - then) * per_second) if now > then else level
            over = level + 1 > depth + 1e-9
            self._bucket[kind] = (level + 1, max(now, then))
        if not over:
            return None
        return BUCKET_RETRY_AFTER if wait is None else wait

    def draw_fault(self) -> tuple[str | None, float]:
        """Which random fault, if any, hits this request; and a uniform number for its details."""
        faults = self.config.faults
        with self._lock:
            if faults is not self._fault_source or faults.seed != self._fault_seed:
                self._fault_rng = random.Random(faults.seed)
                self._fault_source, self._fault_seed = faults, faults.seed
            draw, detail = self._fault_rng.random(), self._fault_rng.random()
        total = 0.0
        for name in FAULT_NAMES:
            total += getattr(faults, name)
            if draw < total:
                return name, detail
        return None, detail

    def certificates(self) -> list[x509.Certificate]:
        """The trusted certificates, parsed once each."""
        found: list[x509.Certificate] = []
        for pem in self.config.trusted_certificates:
            with self._lock:
                parsed = self._certificates.get(pem)
            if parsed is None:
                parsed = x509.load_pem_x509_certificates(pem)
                with self._lock:
                    self._certificates[pem] = parsed
            found.extend(parsed)
        return found

    def params(self, kind: Kind) -> DataParams:
        """The data parameters of `kind` under the current config."""
        config = self.config
        return DataParams(
            seed=config.seed,
            rows_per_day=config.rows_per_day.get(kind, 0),
            unknown_property_every=config.unknown_property_every,
        )

    def rows(self, kind: Kind, start: dt.datetime, end: dt.datetime, version: str) -> list[Any]:
        """Every row starting in [start, end), as served in `version`, in served order."""
        if version not in VERSIONS:
            raise ValueError(f"unknown Graph version {version!r}")
        texts, _ = self.dataset.select(
            kind,
            self.params(kind),
            version == "beta",
            ticks_from_datetime(start),
            ticks_from_datetime(end),
        )
        rows: list[Any] = json.loads("[" + ",".join(texts) + "]")
        return rows


# --- responses -------------------------------------------------------------------------


class _Reply:
    """What the Graph handler found out, for the log: the kind, the fault, the rows served."""

    def __init__(self) -> None:
        self.kind: Kind | None = None
        self.fault: str | None = None
        self.rows = 0


def _graph_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    request_id = str(uuid.uuid4())
    body = {
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                "request-id": request_id,
                "client-request-id": request_id,
            },
        }
    }
    all_headers = {"Content-Type": _JSON_CONTENT_TYPE, "request-id": request_id}
    all_headers.update(headers or {})
    return web.Response(status=status, body=dumps(body).encode(), headers=all_headers)


def _aad_error(status: int, error: str, code: int, description: str) -> web.Response:
    trace, correlation = str(uuid.uuid4()), str(uuid.uuid4())
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    body = {
        "error": error,
        "error_description": (
            f"AADSTS{code}: {description} Trace ID: {trace} Correlation ID: {correlation} "
            f"Timestamp: {stamp}"
        ),
        "error_codes": [code],
        "timestamp": stamp,
        "trace_id": trace,
        "correlation_id": correlation,
        "error_uri": f"https://login.microsoftonline.com/error?code={code}",
    }
    return web.json_response(body, status=status)


def _retry_after(mode: str, seconds: float, integral: bool) -> str | None:
    """Retry-After text: delta-seconds, an HTTP-date, or None for no header."""
    if mode == "none":
        return None
    if mode == "date":
        return email.utils.formatdate(time.time() + math.ceil(seconds), usegmt=True)
    if integral:
        return str(max(1, math.ceil(seconds)))
    return str(int(seconds)) if float(seconds).is_integer() else repr(float(seconds))


def _base_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


# --- OIDC discovery and the token endpoint ---------------------------------------------


def _discovery(state: EmulatorState, request: web.Request, tenant: str) -> web.Response:
    if tenant.lower() != state.config.tenant_id.lower():
        return _aad_error(400, "invalid_tenant", 90002, f"Tenant '{tenant}' not found.")
    base = f"{_base_url(request)}/{tenant}"
    document = {
        "token_endpoint": f"{base}/oauth2/v2.0/token",
        "token_endpoint_auth_methods_supported": [
            "client_secret_post",
            "private_key_jwt",
            "client_secret_basic",
        ],
        "jwks_uri": f"{base}/discovery/v2.0/keys",
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": f"{base}/v2.0",
        "request_uri_parameter_supported": False,
        "userinfo_endpoint": f"{base}/openid/userinfo",
        "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
        "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
        "http_logout_supported": True,
        "frontchannel_logout_supported": True,
        "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "tid", "ver"],
        "tenant_region_scope": "NA",
        "cloud_instance_name": "microsoftonline.com",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
    }
    return web.json_response(document)


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _check_assertion(
    state: EmulatorState, assertion: str, audience: str, client_id: str
) -> tuple[int, str] | None:
    """None when `assertion` is a valid client assertion for `client_id`; else (AADSTS, why)."""
    if assertion in state.config.federated_tokens:
        return None
    try:
        head_text, claims_text, signature_text = assertion.split(".")
        header = json.loads(_b64url(head_text))
        claims = json.loads(_b64url(claims_text))
        signature = _b64url(signature_text)
    except (ValueError, binascii.Error):
        if state.config.federated_tokens:
            return 700213, "No matching federated identity record found for presented assertion."
        return 50027, "JWT token is invalid or malformed."
    if not isinstance(header, dict) or not isinstance(claims, dict):
        return 50027, "JWT token is invalid or malformed."
    algorithm = header.get("alg")
    if algorithm not in ("RS256", "PS256"):
        return 5002738, f"Invalid JWT token. '{algorithm}' is not a supported signature algorithm."
    candidates = state.certificates()
    with contextlib.suppress(ValueError, binascii.Error, TypeError):
        if "x5t#S256" in header:
            wanted = _b64url(header["x5t#S256"])
            candidates = [c for c in candidates if c.fingerprint(hashes.SHA256()) == wanted]
        elif "x5t" in header:
            wanted = _b64url(header["x5t"])
            sha1 = hashes.SHA1()  # noqa: S303 - RFC 7515 defines x5t as the SHA-1 thumbprint
            candidates = [c for c in candidates if c.fingerprint(sha1) == wanted]
    signed = f"{head_text}.{claims_text}".encode()
    scheme: padding.AsymmetricPadding = (
        padding.PKCS1v15()
        if algorithm == "RS256"
        else padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
    )
    for certificate in candidates:
        key = certificate.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            continue
        try:
            key.verify(signature, signed, scheme, hashes.SHA256())
        except InvalidSignature:
            continue
        break
    else:
        return 700027, "Client assertion failed signature validation."
    now = time.time()
    audiences = claims.get("aud")
    if audience not in (audiences if isinstance(audiences, list) else [audiences]):
        return 700212, f"Invalid audience '{audiences}'; expected '{audience}'."
    if claims.get("iss") != client_id or claims.get("sub") != client_id:
        return 700021, "Client assertion application identifier doesn't match 'client_id'."
    expiry = claims.get("exp")
    if not isinstance(expiry, int | float) or expiry <= now:
        return 700024, "Client assertion is not within its valid time range."
    not_before = claims.get("nbf")
    if isinstance(not_before, int | float) and not_before > now + 300:
        return 700024, "Client assertion is not within its valid time range."
    return None


async def _token(state: EmulatorState, request: web.Request, tenant: str) -> web.Response:
    config = state.config
    form = await request.post()

    def text(name: str) -> str:
        value = form.get(name)
        return value if isinstance(value, str) else ""

    if config.token_outages > 0:
        config.token_outages -= 1
        outage = _aad_error(
            503, "temporarily_unavailable", 50000, "The service is temporarily unavailable."
        )
        outage.headers["Retry-After"] = "1"  # MSAL replays a 5xx for this long (default 5 s)
        return outage
    if tenant.lower() != config.tenant_id.lower():
        return _aad_error(400, "invalid_request", 90002, f"Tenant '{tenant}' not found.")
    if text("grant_type") != "client_credentials":
        return _aad_error(
            400,
            "unsupported_grant_type",
            70003,
            f"The app requested an unsupported grant type '{text('grant_type')}'.",
        )
    client_id = text("client_id")
    if client_id != config.client_id:
        return _aad_error(
            400,
            "unauthorized_client",
            700016,
            f"Application with identifier '{client_id}' was not found in the directory '{tenant}'.",
        )
    secret, assertion = text("client_secret"), text("client_assertion")
    if secret:
        if not secrets.compare_digest(secret.encode(), config.client_secret.encode()):
            return _aad_error(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request "
                f"is the client secret value, not the client secret ID, for a secret added to "
                f"app '{client_id}'.",
            )
    elif assertion:
        if text("client_assertion_type") != _JWT_BEARER:
            return _aad_error(
                400,
                "invalid_request",
                50027,
                f"client_assertion_type must be '{_JWT_BEARER}'.",
            )
        audience = f"{_base_url(request)}/{tenant}/oauth2/v2.0/token"
        problem = _check_assertion(state, assertion, audience, client_id)
        if problem is not None:
            return _aad_error(401, "invalid_client", *problem)
    else:
        return _aad_error(
            401,
            "invalid_client",
            7000216,
            "'client_assertion', 'client_secret' or 'request' is required for the "
            "'client_credentials' grant type.",
        )
    scopes = text("scope").split()
    resources = [s for s in scopes if s not in ("openid", "profile", "offline_access")]
    if len(resources) != 1 or not resources[0].endswith("/.default"):
        return _aad_error(
            400,
            "invalid_scope",
            1002012,
            f"The provided value for scope {text('scope')} is not valid. Client credential "
            "flows must have a scope value with /.default suffixed to the resource identifier "
            "(application ID URI).",
        )
    lifetime = config.token_lifetime
    return web.json_response(
        {
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": state.issue_token(),
        }
    )


# --- Graph -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Call:
    """A parsed call of one of the two functions."""

    kind: Kind
    version: str
    name: str  # the function as the client spelled it (maybe namespace-qualified)
    from_text: str
    to_text: str
    low: int  # ticks, inclusive
    high: int  # ticks, exclusive
    skip: int


class _BadCall(Exception):
    """Raised when a Graph request cannot be served; carries the error response."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def _bad_request(message: str) -> _BadCall:
    return _BadCall(_graph_error(400, "BadRequest", message))


def _parse_call(request: web.Request, version: str, segment: str) -> _Call:
    if request.method != "GET":
        raise _BadCall(
            _graph_error(405, "Request_BadRequest", f"{request.method} is not allowed here.")
        )
    if version not in VERSIONS:
        raise _bad_request(f"Invalid version: {version}")
    match = _FUNCTION.fullmatch(segment)
    kind = _FUNCTIONS.get(match.group("function")) if match else None
    if match is None or kind is None:
        raise _bad_request(f"Resource not found for the segment '{segment.split('(')[0]}'.")
    names = ("fromDateTime", "toDateTime")
    allowed = {names, ("from", "to")} if kind is Kind.PSTN else {names}
    arguments: dict[str, str] = {}
    for part in match.group("args").split(","):
        name, sep, value = part.partition("=")
        if not sep or name.strip() in arguments:
            raise _bad_request(f"Invalid function arguments '{match.group('args')}'.")
        arguments[name.strip()] = value.strip().strip("'")
    spelling = tuple(arguments)
    if spelling not in allowed:
        raise _bad_request(
            f"The function '{match.group('function')}' takes parameters fromDateTime and "
            f"toDateTime; got '{match.group('args')}'."
        )
    from_text, to_text = arguments[spelling[0]], arguments[spelling[1]]
    try:
        low = parse_datetime(from_text)
    except ValueError:
        raise _bad_request(
            f"Invalid DateTimeOffset value '{from_text}' for fromDateTime."
        ) from None
    try:
        to = parse_datetime(to_text)
    except ValueError:
        raise _bad_request(f"Invalid DateTimeOffset value '{to_text}' for toDateTime.") from None
    if low > to:
        raise _bad_request("fromDateTime must not be later than toDateTime.")
    if kind is Kind.PSTN and to - low > PSTN_MAX_DAYS * TICKS_PER_DAY:
        raise _BadCall(
            _graph_error(
                406,
                "NotAcceptable",
                f"The range between fromDateTime and toDateTime cannot exceed "
                f"{PSTN_MAX_DAYS} days.",
            )
        )
    if to - low > _MAX_RANGE_DAYS * TICKS_PER_DAY:
        raise _bad_request(f"The emulator serves ranges of at most {_MAX_RANGE_DAYS} days.")
    skip_text = request.query.get("$skip", "0")
    if not skip_text.isdigit():
        raise _bad_request(f"Invalid value '{skip_text}' for $skip.")
    return _Call(
        kind=kind,
        version=version,
        name=match.group("name"),
        from_text=from_text,
        to_text=to_text,
        low=low,
        high=to + 1 if kind.end_inclusive else to,
        skip=int(skip_text),
    )


def _next_link(state: EmulatorState, request: web.Request, call: _Call, skip: int) -> str:
    host = state.config.next_link_host
    base = host.rstrip("/") if host else _base_url(request)
    quote = urllib.parse.quote
    x, y = quote(call.from_text, safe=":+-."), quote(call.to_text, safe=":+-.")
    if call.kind is Kind.PSTN:
        function = f"getPstnCalls(from={x},to={y})"
    else:
        function = f"{call.name}(fromDateTime={x},toDateTime={y})"
    return f"{base}/{call.version}/communications/callRecords/{function}?$skip={skip}"


def _page(state: EmulatorState, request: web.Request, call: _Call) -> tuple[bytes, int]:
    """The body of one page, and how many rows it holds."""
    size = max(1, state.config.page_size)
    # Paging over live data: a page may start with rows the previous page already held.
    overlap = min(max(0, state.config.page_overlap), call.skip)
    texts, total = state.dataset.select(
        call.kind,
        state.params(call.kind),
        call.version == "beta",
        call.low,
        call.high,
        call.skip - overlap,
        size + overlap,
    )
    context = f"{_base_url(request)}/{call.version}/$metadata#Collection({ROW_TYPE[call.kind]})"
    head = f'{{"@odata.context":{dumps(context)},"@odata.count":{len(texts)},'
    if call.skip + len(texts) - overlap < total:
        head += f'"@odata.nextLink":{dumps(_next_link(state, request, call, call.skip + size))},'
    return (head + '"value":[' + ",".join(texts) + "]}").encode(), len(texts)


async def _graph(
    state: EmulatorState, request: web.Request, version: str, segment: str, reply: _Reply
) -> web.StreamResponse:
    config = state.config
    match = _FUNCTION.fullmatch(segment)
    reply.kind = _FUNCTIONS.get(match.group("function")) if match else None

    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not state.token_valid(token.strip()):
        return _graph_error(
            401,
            "InvalidAuthenticationToken",
            "Access token has expired or is not yet valid.",
            {"WWW-Authenticate": 'Bearer realm="", error="invalid_token"'},
        )
    if not config.permission:
        return _graph_error(
            403,
            "Forbidden",
            "Missing role permissions on the request. API requires one of "
            "'CallRecords.Read.All, CallRecord-PstnCalls.Read.All'. Roles on the request ''.",
        )
    if reply.kind is not None:
        wait = state.over_cap(reply.kind, time.monotonic())
        if wait is not None:
            reply.fault = "cap"
            value = _retry_after(config.cap_retry_after, wait, integral=True)
            return _graph_error(
                429,
                "TooManyRequests",
                "Too many requests. The application exceeded the rate limit for this function.",
                {"Retry-After": value} if value is not None else None,
            )

    fault, detail = state.draw_fault()
    reply.fault = fault
    faults = config.faults
    if fault == "throttle":
        mode = faults.retry_after
        if mode == "mixed":
            mode = ("seconds", "date", "none")[int(detail * 3) % 3]
        value = _retry_after(mode, faults.retry_after_seconds, integral=False)
        return _graph_error(
            429,
            "TooManyRequests",
            "Too many requests.",
            {"Retry-After": value} if value is not None else None,
        )
    if fault == "server_error":
        status = (500, 502, 503, 504)[int(detail * 4) % 4]
        return _graph_error(status, *_SERVER_ERRORS[status])
    if fault == "reset":
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=200)
    if fault == "not_json":
        return web.Response(
            status=200,
            text="<!DOCTYPE html><html><head><title>Service</title></head>"
            "<body><h1>The service is temporarily unavailable.</h1></body></html>",
            content_type="text/html",
        )

    if config.latency > 0:
        await asyncio.sleep(config.latency)

    try:
        call = _parse_call(request, version, segment)
    except _BadCall as bad:
        response: web.Response = bad.response
    else:
        if fault == "no_value":
            context = f"{_base_url(request)}/{version}/$metadata#Collection({ROW_TYPE[call.kind]})"
            response = web.Response(
                status=200,
                body=dumps({"@odata.context": context}).encode(),
                headers={"Content-Type": _JSON_CONTENT_TYPE},
            )
        else:
            body, rows = _page(state, request, call)
            if fault != "truncated":
                reply.rows = rows
            response = web.Response(
                status=200, body=body, headers={"Content-Type": _JSON_CONTENT_TYPE}
            )
    if fault == "truncated":
        return await _truncate(request, response)
    return response


async def _truncate(request: web.Request, full: web.Response) -> web.StreamResponse:
    """Send `full`'s status, headers and Content-Length, half its body, then hang up."""
    body = full.body if isinstance(full.body, bytes) else b""
    partial = web.StreamResponse(status=full.status)
    partial.headers["Content-Type"] = full.headers.get("Content-Type", "application/json")
    partial.content_length = len(body)
    await partial.prepare(request)
    await partial.write(body[: len(body) // 2])
    if request.transport is not None:
        request.transport.close()
    return partial


# --- the app ---------------------------------------------------------------------------


def build_app(state: EmulatorState) -> web.Application:
    """The emulator as an aiohttp Application over `state`, for use in any event loop."""

    async def handle(request: web.Request) -> web.StreamResponse:
        arrived = time.time()
        raw = request.raw_path
        path = urllib.parse.unquote(raw.split("?", 1)[0])
        reply = _Reply()
        endpoint = "other"
        response: web.StreamResponse
        if (match := _DISCOVERY.fullmatch(path)) and request.method == "GET":
            endpoint = "discovery"
            response = _discovery(state, request, match.group(1))
        elif (match := _TOKEN.fullmatch(path)) and request.method == "POST":
            endpoint = "token"
            response = await _token(state, request, match.group(1))
        elif match := _GRAPH.fullmatch(path):
            endpoint = "graph"
            response = await _graph(state, request, match.group(1), match.group(2), reply)
        else:
            response = _graph_error(404, "NotFound", f"No such endpoint: {request.method} {path}")
        state.record(
            RequestRecord(
                at=arrived,
                method=request.method,
                host=request.headers.get("Host", ""),
                path_qs=raw,
                endpoint=endpoint,
                kind=reply.kind,
                status=0 if reply.fault == "reset" else response.status,
                authorized="Authorization" in request.headers,
                fault=reply.fault,
                retry_after=response.headers.get("Retry-After"),
                rows=reply.rows,
            )
        )
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


# --- the threaded runner ---------------------------------------------------------------


class Emulator:
    """The emulator served over HTTPS on 127.0.0.1 from a daemon thread with its own loop."""

    def __init__(self, config: EmulatorConfig | None = None, *, port: int = 0) -> None:
        self.state = EmulatorState(config)
        self._tls = tls.material()
        self.ca_file: Path = self._tls.ca_file
        self.url = ""
        self._port = port
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None

    @property
    def config(self) -> EmulatorConfig:
        """The live config: changes apply to the next request."""
        return self.state.config

    @config.setter
    def config(self, value: EmulatorConfig) -> None:
        self.state.config = value

    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot of every request seen since start or the last clear_requests()."""
        return self.state.requests()

    def clear_requests(self) -> None:
        """Forget the request log."""
        self.state.clear_requests()

    def expire_tokens(self) -> None:
        """Make every token issued so far expired, as if its lifetime had passed."""
        self.state.expire_tokens()

    def rows(
        self, kind: Kind, start: dt.datetime, end: dt.datetime, version: str = "beta"
    ) -> list[dict[str, Any]]:
        """Ground truth: every row starting in [start, end), exactly as served, in served order."""
        return self.state.rows(kind, start, end, version)

    def add_rows(self, kind: Kind, rows: list[dict[str, Any]]) -> None:
        """Late rows: from now on served, in order, like generated ones."""
        self.state.dataset.add_rows(kind, rows)

    def start(self) -> Emulator:
        """Listen on 127.0.0.1 (HTTPS) and return once ready."""
        if self._thread is not None:
            return self
        ready = threading.Event()
        self._error = None
        thread = threading.Thread(
            target=self._serve, args=(ready,), name="graph-emulator", daemon=True
        )
        thread.start()
        ready.wait()
        if self._error is not None:
            thread.join()
            raise RuntimeError(f"the Graph emulator could not start: {self._error}") from (
                self._error
            )
        self._thread = thread
        return self

    def stop(self) -> None:
        """Shut down cleanly and join the thread; a no-op when not running."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop may already be closed
            loop.call_soon_threadsafe(loop.stop)
        thread.join()
        self._thread = None
        self._loop = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _serve(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(
            build_app(self.state), access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        try:
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(
                runner, "127.0.0.1", self._port, ssl_context=self._tls.server_context()
            )
            loop.run_until_complete(site.start())
            port = runner.addresses[0][1]
            self.url = f"https://127.0.0.1:{port}"
            self._loop = loop
        except BaseException as exc:  # noqa: BLE001 - reported to start()'s caller
            self._error = exc
            with contextlib.suppress(Exception):
                loop.run_until_complete(runner.cleanup())
            loop.close()
            ready.set()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(_shutdown(runner))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


async def _shutdown(runner: web.AppRunner) -> None:
    """Drop every open connection at once (no TLS goodbye to wait for), then clean up."""
    server = runner.server
    for handler in server.connections if server is not None else []:
        if handler.transport is not None:
            handler.transport.abort()
    await asyncio.sleep(0)  # let the aborted transports report connection_lost
    await runner.cleanup()

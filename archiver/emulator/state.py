"""What every handler of the emulator shares: its config, the data, issued tokens, trusted
certificates, the rate caps, the fault draws and the request log (`EmulatorState`).

Tenants: one multi-tenant app consented in `tenant_id` and in each of `tenants` (and in
`revoked_tenants`, whose consent was withdrawn). Tenant ids match case-insensitively, as
Entra's do. Each tenant has its own data (`tenant_seed`), late rows and rate caps; a
token remembers the tenant it was issued for, and Graph serves that tenant's data.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cryptography import x509

from archiver.emulator.data import DataParams, Dataset, ticks_from_datetime
from archiver.emulator.faults import FaultDraws, Faults, RateCaps
from archiver.kinds import Kind

VERSIONS = ("v1.0", "beta")
_T = TypeVar("_T")


def _default_rows_per_day() -> dict[Kind, int]:
    return {
        Kind.PSTN: 2000,
        Kind.DIRECT_ROUTING: 1500,
        Kind.SMS: 500,
        Kind.PSTN_BLOCKED_USERS: 50,
    }


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
    cache_rows: int = 0  # keep the texts of up to this many served rows, per tenant
    # More tenants the app is consented in, besides `tenant_id` (which stays the default).
    tenants: list[str] = field(default_factory=list)
    # Tenants whose admin revoked consent: tokens are still issued (without roles, as
    # Entra does), every Graph call answers 403. Known tenants even if not in `tenants`.
    revoked_tenants: set[str] = field(default_factory=set)
    # Per tenant, rows_per_day for some kinds (the others as `rows_per_day`).
    tenant_rows_per_day: dict[str, dict[Kind, int]] = field(default_factory=dict)
    # Per tenant, its own app registration (client_id, client_secret) instead of the above.
    tenant_clients: dict[str, tuple[str, str]] = field(default_factory=dict)
    # Per tenant, its own rate_cap_per_minute.
    tenant_rate_caps: dict[str, int] = field(default_factory=dict)
    # Call-start ranges (from, to), ISO-8601, that Graph refuses with 400 (every kind, every
    # tenant): a request whose fromDateTime lies in [from, to) fails, so exactly the
    # windows starting there fail and the others are served.
    refused_ranges: list[tuple[str, str]] = field(default_factory=list)


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
    # The token's tenant (graph), or the path's (token, discovery), spelled as configured
    # when known; None without one. Not compared, so records built without it still match.
    tenant: str | None = None  # the token's tenant (graph); the path's (token, discovery)


class EmulatorState:
    """Everything the handlers share: config, data, issued tokens, request log. Thread-safe."""

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config if config is not None else EmulatorConfig()
        self.dataset = Dataset(cache_rows=self.config.cache_rows)  # the default tenant's
        self._datasets: dict[str, Dataset] = {}  # the other tenants', by lower-case id
        self._lock = threading.Lock()
        self._log: list[RequestRecord] = []
        # access token -> (expiry (time.time()), tenant as configured)
        self._tokens: dict[str, tuple[float, str]] = {}
        self._caps = RateCaps()
        self._faults = FaultDraws()
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

    # tenants
    def tenant(self, name: str | None) -> str | None:
        """The known tenant `name` names (case-insensitively), spelled as configured; None
        names the default tenant (`tenant_id`); None when unknown."""
        config = self.config
        if name is None:
            return config.tenant_id
        wanted = name.lower()
        for known in (config.tenant_id, *config.tenants, *sorted(config.revoked_tenants)):
            if known.lower() == wanted:
                return known
        return None

    def _known(self, tenant: str | None) -> str:
        """`tenant` as configured; ValueError when it is unknown."""
        known = self.tenant(tenant)
        if known is None:
            raise ValueError(f"unknown tenant {tenant!r}")
        return known

    def _is_default(self, tenant: str) -> bool:
        return tenant.lower() == self.config.tenant_id.lower()

    def revoked(self, tenant: str) -> bool:
        """True when `tenant`'s admin revoked consent (its Graph calls answer 403)."""
        return any(r.lower() == tenant.lower() for r in self.config.revoked_tenants)

    def client(self, tenant: str) -> tuple[str, str]:
        """(client_id, client_secret) the token endpoint accepts for `tenant`."""
        config = self.config
        own = _lookup(config.tenant_clients, tenant)
        return own if own is not None else (config.client_id, config.client_secret)

    def tenant_seed(self, tenant: str | None = None) -> int:
        """The data seed of `tenant`: `seed` itself for the default tenant (its data as
        without tenants), else a 64-bit hash of (seed, tenant) so ids differ per tenant."""
        config = self.config
        if tenant is None or self._is_default(tenant):
            return config.seed
        digest = hashlib.blake2b(f"tenant/{config.seed}/{tenant.lower()}".encode(), digest_size=8)
        return int.from_bytes(digest.digest(), "big")

    # tokens
    def issue_token(self, tenant: str | None = None) -> str:
        """A fresh opaque access token for `tenant` (None: the default tenant), valid for
        `token_lifetime` seconds."""
        known = self._known(tenant)
        now = time.time()
        token = secrets.token_urlsafe(32)
        with self._lock:
            for issued, (expiry, _) in list(self._tokens.items()):
                if expiry <= now:
                    del self._tokens[issued]
            self._tokens[token] = (now + self.config.token_lifetime, known)
        return token

    def token_tenant(self, token: str) -> str | None:
        """The tenant `token` was issued for, when it was issued here and has not expired;
        else None."""
        with self._lock:
            entry = self._tokens.get(token)
        if entry is None or time.time() >= entry[0]:
            return None
        return entry[1]

    def token_valid(self, token: str) -> bool:
        """True when `token` was issued here and has not expired."""
        return self.token_tenant(token) is not None

    def expire_tokens(self) -> None:
        """Make every token issued so far expired (Graph then answers 401)."""
        with self._lock:
            for token, (_, tenant) in self._tokens.items():
                self._tokens[token] = (0.0, tenant)

    # throttling and faults
    def over_cap(self, kind: Kind, now: float, tenant: str | None = None) -> float | None:
        """Count a request against `tenant`'s cap (None: the default tenant's); seconds the
        429's Retry-After names if it is over, else None. Each tenant counts apart, under
        its `tenant_rate_caps` entry or else `rate_cap_per_minute`.

        Two models of Graph's per-function limit, both counting throttled requests too:
        "window" allows `rate_cap_per_minute` requests in any `rate_cap_window` seconds and
        names the time until a slot frees; "bucket" is a leaky bucket that drains at
        `rate_cap_per_minute / rate_cap_window` requests a second and holds one second's
        worth (at least one request), and names a fixed wait (`cap_retry_after_seconds`,
        default 2 s). `now` is any monotonic clock, in seconds. (See `faults.RateCaps`.)
        """
        config = self.config
        name = config.tenant_id if tenant is None else tenant
        cap = _lookup(config.tenant_rate_caps, name)
        return self._caps.over(
            kind,
            now,
            config.rate_cap_per_minute if cap is None else cap,
            config.rate_cap_window,
            config.rate_cap_model,
            config.cap_retry_after_seconds,
            name.lower(),
        )

    def draw_fault(self) -> tuple[str | None, float]:
        """Which random fault, if any, hits this request; and a uniform number for its details."""
        return self._faults.draw(self.config.faults)

    # certificates
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

    # data
    def params(self, kind: Kind, tenant: str | None = None) -> DataParams:
        """The data parameters of `kind` in `tenant` (None: the default tenant) under the
        current config."""
        config = self.config
        name = config.tenant_id if tenant is None else tenant
        own = _lookup(config.tenant_rows_per_day, name) or {}
        rows_per_day = own.get(kind, config.rows_per_day.get(kind, 0))
        return DataParams(
            seed=self.tenant_seed(tenant),
            rows_per_day=rows_per_day,
            unknown_property_every=config.unknown_property_every,
        )

    def dataset_for(self, tenant: str | None = None) -> Dataset:
        """The rows of `tenant` (None: the default tenant): each tenant keeps its own late
        rows and caches."""
        if tenant is None or self._is_default(tenant):
            return self.dataset
        with self._lock:
            dataset = self._datasets.get(tenant.lower())
            if dataset is None:
                dataset = Dataset(cache_rows=self.config.cache_rows)
                self._datasets[tenant.lower()] = dataset
        return dataset

    def rows(
        self,
        kind: Kind,
        start: dt.datetime,
        end: dt.datetime,
        version: str,
        tenant: str | None = None,
    ) -> list[Any]:
        """Every row of `tenant` (None: the default tenant) whose time (`kind.time_column`)
        lies in [start, end), as served in `version`, in served order."""
        if version not in VERSIONS:
            raise ValueError(f"unknown Graph version {version!r}")
        if version not in kind.versions:
            raise ValueError(f"Graph {version} does not serve {kind.function}")
        known = self._known(tenant)
        texts, _ = self.dataset_for(known).select(
            kind,
            self.params(kind, known),
            version == "beta",
            ticks_from_datetime(start),
            ticks_from_datetime(end),
        )
        rows: list[Any] = json.loads("[" + ",".join(texts) + "]")
        return rows


def _lookup(mapping: dict[str, _T], tenant: str) -> _T | None:
    """`mapping`'s entry for `tenant`, its keys matched case-insensitively."""
    wanted = tenant.lower()
    for key, value in mapping.items():
        if key.lower() == wanted:
            return value
    return None

"""What every handler of the emulator shares: its config, the data, issued tokens, trusted
certificates, the rate caps, the fault draws and the request log (`EmulatorState`)."""

from __future__ import annotations

import datetime as dt
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from archiver.emulator.data import DataParams, Dataset, ticks_from_datetime
from archiver.emulator.faults import FaultDraws, Faults, RateCaps
from archiver.kinds import Kind

VERSIONS = ("v1.0", "beta")


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


class EmulatorState:
    """Everything the handlers share: config, data, issued tokens, request log. Thread-safe."""

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config if config is not None else EmulatorConfig()
        self.dataset = Dataset(cache_rows=self.config.cache_rows)
        self._lock = threading.Lock()
        self._log: list[RequestRecord] = []
        self._tokens: dict[str, float] = {}  # access token -> expiry (time.time())
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

    # throttling and faults
    def over_cap(self, kind: Kind, now: float) -> float | None:
        """Count a request against the cap; seconds the 429's Retry-After names if it is over,
        else None.

        Two models of Graph's per-function limit, both counting throttled requests too:
        "window" allows `rate_cap_per_minute` requests in any `rate_cap_window` seconds and
        names the time until a slot frees; "bucket" is a leaky bucket that drains at
        `rate_cap_per_minute / rate_cap_window` requests a second and holds one second's
        worth (at least one request), and names a fixed wait (`cap_retry_after_seconds`,
        default 2 s). `now` is any monotonic clock, in seconds. (See `faults.RateCaps`.)
        """
        config = self.config
        return self._caps.over(
            kind,
            now,
            config.rate_cap_per_minute,
            config.rate_cap_window,
            config.rate_cap_model,
            config.cap_retry_after_seconds,
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
    def params(self, kind: Kind) -> DataParams:
        """The data parameters of `kind` under the current config."""
        config = self.config
        return DataParams(
            seed=config.seed,
            rows_per_day=config.rows_per_day.get(kind, 0),
            unknown_property_every=config.unknown_property_every,
        )

    def rows(self, kind: Kind, start: dt.datetime, end: dt.datetime, version: str) -> list[Any]:
        """Every row whose time (`kind.time_column`) lies in [start, end), as served in
        `version`, in served order."""
        if version not in VERSIONS:
            raise ValueError(f"unknown Graph version {version!r}")
        if version not in kind.versions:
            raise ValueError(f"Graph {version} does not serve {kind.function}")
        texts, _ = self.dataset.select(
            kind,
            self.params(kind),
            version == "beta",
            ticks_from_datetime(start),
            ticks_from_datetime(end),
        )
        rows: list[Any] = json.loads("[" + ",".join(texts) + "]")
        return rows
